//! `TOTAL_PLAYERS` needs the number of machines in the test: the replicas of the Deployment
//! that owns the pod (through its ReplicaSet), else of the ReplicaSet itself; the replicas of
//! an owning StatefulSet; the `completions` (else `parallelism`) of an owning Job.
//!
//! The owners are kept in watch-backed caches so an admission normally never waits on the API
//! server. The watches select on the `testId` label: a ReplicaSet carries its pod template's
//! labels, so only test ReplicaSets are watched, not the revision history of every Deployment
//! of a shared cluster; an owner without the label is simply not cached. A cache miss (that,
//! or an owner milliseconds old whose watch event has not arrived) falls back to a direct GET
//! before anything is denied (the race amazon-eks-pod-identity-webhook hit: its issues #174
//! and #194).

use std::future::ready;
use std::time::Duration;

use futures::StreamExt;
use k8s_openapi::api::apps::v1::{Deployment, ReplicaSet, StatefulSet};
use k8s_openapi::api::batch::v1::Job;
use k8s_openapi::api::core::v1::Pod;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::OwnerReference;
use kube::runtime::reflector::{self, ObjectRef, Store};
use kube::runtime::{WatchStreamExt, watcher};
use kube::{Api, Client, Resource, ResourceExt};
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};
use wave_contract::names::TEST_ID_LABEL;

use crate::errors::error_chain;
use crate::part::OwnerReplicas;

/// How long an admission may wait on a direct GET after a cache miss; the API server's
/// own webhook timeout (5 s in our manifests) must leave room for the rest.
const GET_TIMEOUT: Duration = Duration::from_secs(2);

/// How the webhook reaches the Kubernetes API for the owner lookup.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum KubeAccess {
    /// In-cluster service account, else `KUBECONFIG` / `~/.kube/config`.
    Infer,
    /// This kubeconfig file.
    Kubeconfig(std::path::PathBuf),
    /// No API access; pods that need the lookup are denied with this reason.
    Disabled(String),
}

/// Why the API client could not be built.
#[derive(Debug, thiserror::Error)]
pub enum ConnectError {
    /// No in-cluster environment and no usable kubeconfig.
    #[error("no Kubernetes API configuration found (in-cluster or kubeconfig)")]
    Infer(#[source] kube::config::InferConfigError),
    /// The kubeconfig file could not be read or used.
    #[error("cannot use kubeconfig {path}")]
    Kubeconfig {
        path: String,
        #[source]
        source: kube::config::KubeconfigError,
    },
    /// The client could not be built from the configuration.
    #[error("cannot build a Kubernetes client")]
    Client(#[source] kube::Error),
}

/// Why an owner could not be read.
#[derive(Debug, thiserror::Error)]
pub enum LookupError {
    /// The API server answered with an error.
    #[error("the API server refused: {0}")]
    Api(#[source] kube::Error),
    /// The API server did not answer in time.
    #[error("the API server did not answer within {}s", GET_TIMEOUT.as_secs())]
    Timeout,
}

/// Objects per page of a watch's initial list.
const PAGE_SIZE: u32 = 500;

/// The pod's controlling ReplicaSet, as named in its ownerReferences.
pub fn owning_replica_set(pod: &Pod) -> Option<&OwnerReference> {
    controller_of_kind(pod.metadata.owner_references.as_deref(), "ReplicaSet")
}

/// The pod's controlling StatefulSet.
pub fn owning_stateful_set(pod: &Pod) -> Option<&OwnerReference> {
    controller_of_kind(pod.metadata.owner_references.as_deref(), "StatefulSet")
}

/// The pod's controlling Job (`batch/v1`).
pub fn owning_job(pod: &Pod) -> Option<&OwnerReference> {
    pod.metadata
        .owner_references
        .as_deref()?
        .iter()
        .find(|r| r.controller == Some(true))
        .filter(|r| r.kind == "Job" && r.api_version.starts_with("batch/"))
}

/// Machines of a StatefulSet test: its replicas (Kubernetes defaults them to 1).
pub fn stateful_set_machines(replicas: Option<i32>) -> u32 {
    replicas.map_or(1, |n| u32::try_from(n).unwrap_or(0))
}

/// Machines of a Job test: the pods that must complete (`completions`, an Indexed Job's
/// index count), else the pods run at once (`parallelism`), else 1 as Kubernetes defaults.
pub fn job_machines(completions: Option<i32>, parallelism: Option<i32>) -> u32 {
    completions
        .or(parallelism)
        .map_or(1, |n| u32::try_from(n).unwrap_or(0))
}

/// The ReplicaSet's controlling Deployment, as named in its ownerReferences.
pub fn owning_deployment(replica_set: &ReplicaSet) -> Option<&OwnerReference> {
    controller_of_kind(
        replica_set.metadata.owner_references.as_deref(),
        "Deployment",
    )
}

/// The owner reference marked `controller: true` if it is an `apps` object of `kind`.
fn controller_of_kind<'a>(
    refs: Option<&'a [OwnerReference]>,
    kind: &str,
) -> Option<&'a OwnerReference> {
    refs?
        .iter()
        .find(|r| r.controller == Some(true))
        .filter(|r| r.kind == kind && r.api_version.starts_with("apps/"))
}

/// The number of machines in the test: the Deployment's desired replicas when it is known,
/// else the ReplicaSet's (Kubernetes defaults both to 1 when unset).
pub fn test_replicas(replica_set: &ReplicaSet, deployment: Option<&Deployment>) -> u32 {
    let desired = match deployment {
        Some(d) => d.spec.as_ref().and_then(|s| s.replicas),
        None => replica_set.spec.as_ref().and_then(|s| s.replicas),
    };
    desired.map_or(1, |n| u32::try_from(n).unwrap_or(0))
}

/// Whether a cached or fetched object is the one a reference points at (a name can be reused
/// by a new object after the old one was deleted).
fn is_referenced<K: Resource>(object: &K, reference: &OwnerReference) -> bool {
    reference.uid.is_empty() || object.meta().uid.as_deref() == Some(reference.uid.as_str())
}

/// Resolves pods to their test's replica count.
#[derive(Clone)]
pub struct OwnerLookup {
    source: Source,
}

#[derive(Clone)]
enum Source {
    Unavailable(String),
    Live {
        client: Client,
        replica_sets: Store<ReplicaSet>,
        deployments: Store<Deployment>,
        stateful_sets: Store<StatefulSet>,
        jobs: Store<Job>,
    },
}

impl std::fmt::Debug for OwnerLookup {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match &self.source {
            Source::Unavailable(why) => f
                .debug_tuple("OwnerLookup::Unavailable")
                .field(why)
                .finish(),
            Source::Live { .. } => f.write_str("OwnerLookup::Live"),
        }
    }
}

impl OwnerLookup {
    /// A lookup that answers every pod needing it with `OwnerReplicas::Unavailable(why)`.
    pub fn unavailable(why: impl Into<String>) -> Self {
        OwnerLookup {
            source: Source::Unavailable(why.into()),
        }
    }

    /// A lookup over given ReplicaSet and Deployment caches (StatefulSets and Jobs by GET),
    /// with `client` for the GET on a miss.
    pub fn from_parts(
        client: Client,
        replica_sets: Store<ReplicaSet>,
        deployments: Store<Deployment>,
    ) -> Self {
        OwnerLookup {
            source: Source::Live {
                client,
                replica_sets,
                deployments,
                stateful_sets: reflector::store::<StatefulSet>().0,
                jobs: reflector::store::<Job>().0,
            },
        }
    }

    /// Connects as `access` says and starts the watches that fill the caches; they run until
    /// `stop` is cancelled. Never fails: without API access the lookup is unavailable (logged),
    /// and the webhook keeps serving every pod that does not need it.
    pub async fn start(access: &KubeAccess, stop: CancellationToken) -> Self {
        let client = match connect(access).await {
            Ok(client) => client,
            Err(why) => {
                warn!(reason = %why, "owner lookup unavailable: pods without waveloadtest.io/total-players will be denied");
                return OwnerLookup::unavailable(why);
            }
        };
        let replica_sets = spawn_cache::<ReplicaSet>(client.clone(), stop.clone(), |rs| {
            if let Some(spec) = rs.spec.as_mut() {
                spec.template = None;
                spec.selector = Default::default();
            }
            rs.status = None;
        });
        let deployments = spawn_cache::<Deployment>(client.clone(), stop.clone(), |d| {
            if let Some(spec) = d.spec.as_mut() {
                spec.template = Default::default();
                spec.selector = Default::default();
            }
            d.status = None;
        });
        let stateful_sets = spawn_cache::<StatefulSet>(client.clone(), stop.clone(), |s| {
            if let Some(spec) = s.spec.as_mut() {
                spec.template = Default::default();
                spec.selector = Default::default();
                spec.volume_claim_templates = None;
            }
            s.status = None;
        });
        let jobs = spawn_cache::<Job>(client.clone(), stop, |j| {
            if let Some(spec) = j.spec.as_mut() {
                spec.template = Default::default();
                spec.selector = None;
            }
            j.status = None;
        });
        info!(
            "owner lookup started: watching ReplicaSets, Deployments, StatefulSets and Jobs labelled testId in all namespaces"
        );
        OwnerLookup {
            source: Source::Live {
                client,
                replica_sets,
                deployments,
                stateful_sets,
                jobs,
            },
        }
    }

    /// The replicas of the test `pod` (in `namespace`) belongs to.
    pub async fn replicas(&self, pod: &Pod, namespace: &str) -> OwnerReplicas {
        let (rs_ref, sts_ref, job_ref) = (
            owning_replica_set(pod),
            owning_stateful_set(pod),
            owning_job(pod),
        );
        if rs_ref.is_none() && sts_ref.is_none() && job_ref.is_none() {
            return OwnerReplicas::NoOwner;
        }
        let (client, replica_sets, deployments, stateful_sets, jobs) = match &self.source {
            Source::Unavailable(why) => return OwnerReplicas::Unavailable(why.clone()),
            Source::Live {
                client,
                replica_sets,
                deployments,
                stateful_sets,
                jobs,
            } => (client, replica_sets, deployments, stateful_sets, jobs),
        };
        if let Some(sts_ref) = sts_ref {
            return match cached_or_get(client, stateful_sets, namespace, sts_ref).await {
                Ok(Some(sts)) => OwnerReplicas::Known(stateful_set_machines(
                    sts.spec.as_ref().and_then(|s| s.replicas),
                )),
                Ok(None) => not_found("StatefulSet", namespace, &sts_ref.name),
                Err(e) => unreadable("StatefulSet", namespace, &sts_ref.name, &e),
            };
        }
        if let Some(job_ref) = job_ref {
            return match cached_or_get(client, jobs, namespace, job_ref).await {
                Ok(Some(job)) => {
                    let spec = job.spec.as_ref();
                    OwnerReplicas::Known(job_machines(
                        spec.and_then(|s| s.completions),
                        spec.and_then(|s| s.parallelism),
                    ))
                }
                Ok(None) => not_found("Job", namespace, &job_ref.name),
                Err(e) => unreadable("Job", namespace, &job_ref.name, &e),
            };
        }
        let Some(rs_ref) = rs_ref else {
            return OwnerReplicas::NoOwner;
        };
        let replica_set = match cached_or_get(client, replica_sets, namespace, rs_ref).await {
            Ok(Some(rs)) => rs,
            Ok(None) => {
                return OwnerReplicas::Unavailable(format!(
                    "ReplicaSet {namespace}/{} that owns the pod was not found",
                    rs_ref.name
                ));
            }
            Err(e) => {
                return OwnerReplicas::Unavailable(format!(
                    "cannot read ReplicaSet {namespace}/{}: {e}",
                    rs_ref.name
                ));
            }
        };
        let Some(d_ref) = owning_deployment(&replica_set) else {
            return OwnerReplicas::Known(test_replicas(&replica_set, None));
        };
        match cached_or_get(client, deployments, namespace, d_ref).await {
            Ok(deployment) => {
                OwnerReplicas::Known(test_replicas(&replica_set, deployment.as_deref()))
            }
            Err(e) => OwnerReplicas::Unavailable(format!(
                "cannot read Deployment {namespace}/{}: {e}",
                d_ref.name
            )),
        }
    }
}

fn not_found(kind: &str, namespace: &str, name: &str) -> OwnerReplicas {
    OwnerReplicas::Unavailable(format!(
        "{kind} {namespace}/{name} that owns the pod was not found"
    ))
}

fn unreadable(kind: &str, namespace: &str, name: &str, e: &LookupError) -> OwnerReplicas {
    OwnerReplicas::Unavailable(format!("cannot read {kind} {namespace}/{name}: {e}"))
}

/// Builds the API client for `access`; the error says why in one line.
pub(crate) async fn connect(access: &KubeAccess) -> Result<Client, String> {
    let config = match access {
        KubeAccess::Disabled(why) => return Err(why.clone()),
        KubeAccess::Infer => kube::Config::infer().await.map_err(ConnectError::Infer),
        KubeAccess::Kubeconfig(path) => {
            let options = kube::config::KubeConfigOptions::default();
            match kube::config::Kubeconfig::read_from(path) {
                Ok(file) => kube::Config::from_custom_kubeconfig(file, &options).await,
                Err(e) => Err(e),
            }
            .map_err(|source| ConnectError::Kubeconfig {
                path: path.display().to_string(),
                source,
            })
        }
    };
    config
        .and_then(|c| Client::try_from(c).map_err(ConnectError::Client))
        .map_err(|e| error_chain(&e))
}

/// Starts a reflector of every `K` labelled `testId` in the cluster, listed in pages and
/// trimmed, of the metadata no lookup reads and then by `trim`, to keep the cache small.
fn spawn_cache<K>(
    client: Client,
    stop: CancellationToken,
    mut trim: impl FnMut(&mut K) + Send + 'static,
) -> Store<K>
where
    K: Resource<DynamicType = (), Scope = k8s_openapi::NamespaceResourceScope>
        + Clone
        + std::fmt::Debug
        + serde::de::DeserializeOwned
        + Send
        + Sync
        + 'static,
{
    let (reader, writer) = reflector::store::<K>();
    let api: Api<K> = Api::all(client);
    let config = watcher::Config::default()
        .labels(TEST_ID_LABEL)
        .page_size(PAGE_SIZE);
    let stream = watcher(api, config)
        .default_backoff()
        .modify(move |object: &mut K| {
            // No lookup reads these; dropping them keeps the cache small.
            object.managed_fields_mut().clear();
            object.annotations_mut().clear();
            object.labels_mut().clear();
            trim(object);
        })
        .reflect(writer)
        .for_each(|event| {
            if let Err(e) = event {
                warn!(kind = %K::kind(&()), error = %error_chain(&e), "watch failed; retrying with backoff");
            }
            ready(())
        });
    tokio::spawn(async move {
        tokio::select! {
            () = stream => {}
            () = stop.cancelled() => {}
        }
    });
    reader
}

/// The object `reference` names in `namespace`: from the cache, else by a GET.
async fn cached_or_get<K>(
    client: &Client,
    cache: &Store<K>,
    namespace: &str,
    reference: &OwnerReference,
) -> Result<Option<std::sync::Arc<K>>, LookupError>
where
    K: Resource<DynamicType = (), Scope = k8s_openapi::NamespaceResourceScope>
        + Clone
        + std::fmt::Debug
        + serde::de::DeserializeOwned,
{
    let key = ObjectRef::<K>::new(&reference.name).within(namespace);
    if let Some(hit) = cache
        .get(&key)
        .filter(|o| is_referenced(o.as_ref(), reference))
    {
        return Ok(Some(hit));
    }
    let api: Api<K> = Api::namespaced(client.clone(), namespace);
    let fetched = tokio::time::timeout(GET_TIMEOUT, api.get_opt(&reference.name))
        .await
        .map_err(|_| LookupError::Timeout)?
        .map_err(LookupError::Api)?;
    Ok(fetched
        .filter(|o| is_referenced(o, reference))
        .map(std::sync::Arc::new))
}

#[cfg(test)]
mod tests {
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;

    use super::*;

    fn owned_by(api_version: &str, kind: &str) -> Pod {
        Pod {
            metadata: ObjectMeta {
                owner_references: Some(vec![OwnerReference {
                    api_version: api_version.to_string(),
                    kind: kind.to_string(),
                    name: "owner".to_string(),
                    uid: "u1".to_string(),
                    controller: Some(true),
                    block_owner_deletion: Some(true),
                }]),
                ..ObjectMeta::default()
            },
            ..Pod::default()
        }
    }

    #[test]
    fn a_job_counts_its_completions_else_its_parallelism_else_one() {
        assert_eq!(job_machines(Some(12), Some(6)), 12);
        assert_eq!(job_machines(None, Some(6)), 6);
        assert_eq!(job_machines(None, None), 1);
    }

    #[test]
    fn a_stateful_set_counts_its_replicas_else_one() {
        assert_eq!(stateful_set_machines(Some(4)), 4);
        assert_eq!(stateful_set_machines(None), 1);
    }

    #[test]
    fn stateful_set_and_job_owners_are_found_by_kind_and_group() {
        assert!(owning_stateful_set(&owned_by("apps/v1", "StatefulSet")).is_some());
        assert!(owning_job(&owned_by("batch/v1", "Job")).is_some());
        assert!(owning_job(&owned_by("example.com/v1", "Job")).is_none());
        assert!(owning_stateful_set(&owned_by("batch/v1", "Job")).is_none());
    }
}
