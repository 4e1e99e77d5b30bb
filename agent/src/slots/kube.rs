//! Kubernetes slots (docs/coordination.md): one `coordination.k8s.io/v1` Lease per slot in the pod's
//! namespace, created by the supervisor with an ownerReference to its pod, so the garbage
//! collector frees the slot with the pod: no renewals, no steady write load. Create is
//! atomic: AlreadyExists means taken. The other objects of a part are Leases too, made only
//! with `create` (the Role grants no update): `<slot>-ready` when the supervisor is ready to
//! start, `<slot>-done` when its agents ended, and the part's start object.

use std::collections::BTreeMap;
use std::time::Duration;

use futures::{StreamExt, TryStreamExt};
use k8s_openapi::api::coordination::v1::{Lease, LeaseSpec};
use k8s_openapi::api::core::v1::Pod;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{MicroTime, ObjectMeta, OwnerReference};
use k8s_openapi::jiff::Timestamp;
use kube::api::{DeleteParams, ListParams, PostParams, Preconditions, WatchEvent, WatchParams};
use kube::{Api, Client};

use super::{
    MACHINES_ANNOTATION, Part, SLOT_LABEL, START_AT_ANNOTATION, STOP_ANNOTATION, probe_order,
};

/// Leases, as RBAC names them.
pub const LEASES: &str = "leases.coordination.k8s.io";
/// Pods, as RBAC names them.
pub const PODS: &str = "pods";
/// Label of the `-ready` and `-done` Leases: what they mark.
pub const MARK_LABEL: &str = "waveloadtest.io/mark";
/// How many free slots a claim round tries before it lists again.
const TRIES_PER_ROUND: usize = 4;
/// How many holders of a full part are checked for a vanished pod per round.
const OWNER_CHECKS_PER_ROUND: usize = 8;

/// A Kubernetes API call that failed.
#[derive(Debug, thiserror::Error)]
pub enum KubeError {
    /// RBAC refused the call: the pod's service account lacks this permission.
    #[error(
        "the pod's service account may not {verb} {resource} in namespace {namespace} \
         (RBAC: apply the Role and RoleBinding of manifests/examples/slots-rbac.yaml)"
    )]
    Forbidden {
        verb: &'static str,
        resource: &'static str,
        namespace: String,
        #[source]
        source: kube::Error,
    },
    /// Any other failure: the API server is unreachable or answered with an error.
    #[error("cannot {verb} {resource} in namespace {namespace}")]
    Api {
        verb: &'static str,
        resource: &'static str,
        namespace: String,
        #[source]
        source: kube::Error,
    },
}

impl KubeError {
    /// The verb and resource RBAC refused, if that is what happened.
    pub fn forbidden(&self) -> Option<(&'static str, &'static str)> {
        match self {
            KubeError::Forbidden { verb, resource, .. } => Some((verb, resource)),
            KubeError::Api { .. } => None,
        }
    }
}

fn status_code(err: &kube::Error) -> Option<u16> {
    match err {
        kube::Error::Api(status) => Some(status.code),
        _ => None,
    }
}

/// How this pod's slot is decided without a Lease.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FixedSlot {
    /// The pod's StatefulSet ordinal.
    Ordinal(u32),
    /// The Indexed Job's `JOB_COMPLETION_INDEX`.
    JobIndex(u32),
}

/// The slots of one test part in one namespace, as seen by one pod.
#[derive(Clone)]
pub struct KubeSlots {
    leases: Api<Lease>,
    pods: Api<Pod>,
    namespace: String,
    part: Part,
    pod: String,
    uid: String,
}

/// Where the API stands on one claim round.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Round {
    /// This pod holds slot m.
    Held(u32),
    /// Every slot is held by a pod that exists; the list's resourceVersion, to watch from.
    Full { resource_version: String },
}

impl KubeSlots {
    pub fn new(client: Client, namespace: &str, part: Part, pod: &str, uid: &str) -> KubeSlots {
        KubeSlots {
            leases: Api::namespaced(client.clone(), namespace),
            pods: Api::namespaced(client, namespace),
            namespace: namespace.to_owned(),
            part,
            pod: pod.to_owned(),
            uid: uid.to_owned(),
        }
    }

    fn fail(&self, verb: &'static str, resource: &'static str, source: kube::Error) -> KubeError {
        let namespace = self.namespace.clone();
        if status_code(&source) == Some(403) {
            KubeError::Forbidden {
                verb,
                resource,
                namespace,
                source,
            }
        } else {
            KubeError::Api {
                verb,
                resource,
                namespace,
                source,
            }
        }
    }

    /// The slot a StatefulSet pod has by its ordinal (docs/coordination.md), read from the pod itself.
    pub async fn statefulset_ordinal(&self) -> Result<Option<FixedSlot>, KubeError> {
        let pod = self
            .pods
            .get(&self.pod)
            .await
            .map_err(|e| self.fail("get", PODS, e))?;
        let by_statefulset = pod
            .metadata
            .owner_references
            .iter()
            .flatten()
            .any(|r| r.controller == Some(true) && r.kind == "StatefulSet");
        if !by_statefulset {
            return Ok(None);
        }
        let from_label = pod
            .metadata
            .labels
            .as_ref()
            .and_then(|l| l.get("apps.kubernetes.io/pod-index"))
            .and_then(|v| v.parse().ok());
        let from_name = self.pod.rsplit('-').next().and_then(|n| n.parse().ok());
        Ok(from_label.or(from_name).map(FixedSlot::Ordinal))
    }

    fn owner(&self) -> OwnerReference {
        OwnerReference {
            api_version: "v1".into(),
            kind: "Pod".into(),
            name: self.pod.clone(),
            uid: self.uid.clone(),
            controller: None,
            block_owner_deletion: None,
        }
    }

    fn lease(&self, name: String, extra_labels: &[(&str, String)]) -> Lease {
        let mut labels: BTreeMap<String, String> = self
            .part
            .labels()
            .into_iter()
            .map(|(k, v)| (k.to_owned(), v))
            .collect();
        for (k, v) in extra_labels {
            labels.insert((*k).to_owned(), v.clone());
        }
        Lease {
            metadata: ObjectMeta {
                name: Some(name),
                namespace: Some(self.namespace.clone()),
                labels: Some(labels),
                owner_references: Some(vec![self.owner()]),
                ..ObjectMeta::default()
            },
            spec: Some(LeaseSpec {
                holder_identity: Some(self.pod.clone()),
                acquire_time: Some(MicroTime(Timestamp::now())),
                ..LeaseSpec::default()
            }),
        }
    }

    /// Creates `lease`; false when it already exists.
    async fn create(&self, lease: &Lease) -> Result<bool, KubeError> {
        match self.leases.create(&PostParams::default(), lease).await {
            Ok(_) => Ok(true),
            Err(e) if status_code(&e) == Some(409) => Ok(false),
            Err(e) => Err(self.fail("create", LEASES, e)),
        }
    }

    /// One claim round among `machines` slots: list the part's slots; the one owned by this
    /// pod's UID is its slot (a container restart); else create free ones in probe order;
    /// when all are held, reclaim the slot of a pod that no longer exists.
    pub async fn try_claim(&self, machines: u32) -> Result<Round, KubeError> {
        let selector = format!("{},{SLOT_LABEL}", self.part.selector());
        let list = self
            .leases
            .list(&ListParams::default().labels(&selector))
            .await
            .map_err(|e| self.fail("list", LEASES, e))?;
        let resource_version = list.metadata.resource_version.clone().unwrap_or_default();
        let mut taken: BTreeMap<u32, Lease> = BTreeMap::new();
        for lease in list.items {
            let index = lease
                .metadata
                .labels
                .as_ref()
                .and_then(|l| l.get(SLOT_LABEL))
                .and_then(|v| v.parse::<u32>().ok());
            let Some(index) = index else { continue };
            if lease.metadata.deletion_timestamp.is_none() && owner_uid(&lease) == Some(&self.uid) {
                return Ok(Round::Held(index));
            }
            taken.insert(index, lease);
        }
        let free: Vec<u32> = probe_order(&self.uid, machines)
            .filter(|m| !taken.contains_key(m))
            .take(TRIES_PER_ROUND)
            .collect();
        for index in &free {
            if self.create_slot(*index, machines).await? {
                return Ok(Round::Held(*index));
            }
        }
        if !free.is_empty() {
            // Others took them meanwhile: list again.
            return Box::pin(self.try_claim(machines)).await;
        }
        let holders: Vec<u32> = probe_order(&self.uid, machines)
            .filter(|m| taken.contains_key(m))
            .take(OWNER_CHECKS_PER_ROUND)
            .collect();
        for index in holders {
            let lease = &taken[&index];
            if self.owner_vanished(lease).await?
                && self.reclaim(lease).await?
                && self.create_slot(index, machines).await?
            {
                return Ok(Round::Held(index));
            }
        }
        Ok(Round::Full { resource_version })
    }

    async fn create_slot(&self, index: u32, machines: u32) -> Result<bool, KubeError> {
        let mut lease = self.lease(
            self.part.slot_name(index),
            &[(SLOT_LABEL, index.to_string())],
        );
        lease.metadata.annotations = Some(BTreeMap::from([(
            MACHINES_ANNOTATION.to_owned(),
            machines.to_string(),
        )]));
        self.create(&lease).await
    }

    /// True when the pod that owns `lease` is gone (or is another pod of the same name).
    async fn owner_vanished(&self, lease: &Lease) -> Result<bool, KubeError> {
        let Some(owner) = lease
            .metadata
            .owner_references
            .iter()
            .flatten()
            .find(|r| r.kind == "Pod")
        else {
            return Ok(true);
        };
        match self.pods.get_opt(&owner.name).await {
            Ok(Some(pod)) => Ok(pod.metadata.uid.as_deref() != Some(owner.uid.as_str())),
            Ok(None) => Ok(true),
            Err(e) => Err(self.fail("get", PODS, e)),
        }
    }

    /// Deletes the Lease of a vanished pod, only if it is still that very Lease.
    async fn reclaim(&self, lease: &Lease) -> Result<bool, KubeError> {
        let name = lease.metadata.name.clone().unwrap_or_default();
        let params = DeleteParams {
            preconditions: Some(Preconditions {
                uid: lease.metadata.uid.clone(),
                resource_version: lease.metadata.resource_version.clone(),
            }),
            ..DeleteParams::default()
        };
        tracing::info!("slot Lease {name} belongs to a pod that no longer exists: reclaiming it");
        match self.leases.delete(&name, &params).await {
            Ok(_) => Ok(true),
            Err(e) if matches!(status_code(&e), Some(404 | 409)) => Ok(false),
            Err(e) => Err(self.fail("delete", LEASES, e)),
        }
    }

    /// Waits until a slot Lease of the part is deleted (or `limit` passes, or the watch
    /// ends), watching from `resource_version`.
    pub async fn wait_for_a_free_slot(
        &self,
        resource_version: &str,
        limit: Duration,
    ) -> Result<(), KubeError> {
        let selector = format!("{},{SLOT_LABEL}", self.part.selector());
        let params = WatchParams::default()
            .labels(&selector)
            .timeout(u32::try_from(limit.as_secs()).unwrap_or(290).clamp(1, 290));
        let stream = self
            .leases
            .watch(&params, resource_version)
            .await
            .map_err(|e| self.fail("watch", LEASES, e))?;
        let mut stream = std::pin::pin!(stream);
        let wait = async {
            while let Ok(Some(event)) = stream.try_next().await {
                match event {
                    WatchEvent::Deleted(_) | WatchEvent::Error(_) => return,
                    WatchEvent::Modified(lease) if lease.metadata.deletion_timestamp.is_some() => {
                        return;
                    }
                    _ => {}
                }
            }
        };
        let _ = tokio::time::timeout(limit, wait).await;
        Ok(())
    }

    /// Marks slot `index` with a `-<mark>` Lease (`ready`, `done`); idempotent.
    pub async fn mark(&self, index: u32, mark: &str) -> Result<(), KubeError> {
        let name = self.part.slot_name_with(index, mark);
        let lease = self.lease(name, &[(MARK_LABEL, mark.to_owned())]);
        self.create(&lease).await.map(drop)
    }

    /// How many slots of the part carry the `-<mark>` Lease.
    pub async fn count_marked(&self, mark: &str) -> Result<u32, KubeError> {
        let selector = format!("{},{MARK_LABEL}={mark}", self.part.selector());
        let list = self
            .leases
            .list(&ListParams::default().labels(&selector))
            .await
            .map_err(|e| self.fail("list", LEASES, e))?;
        Ok(u32::try_from(list.items.len()).unwrap_or(u32::MAX))
    }

    /// Creates the part's start object with `start_at` unless it exists; returns the start-at
    /// every supervisor of the part agrees on (the first writer's).
    pub async fn create_start(&self, start_at: &str) -> Result<String, KubeError> {
        let mut lease = self.lease(self.part.start_name(), &[]);
        // The start object outlives any one pod: no owner, `wave stop` or a new test
        // run removes it.
        lease.metadata.owner_references = None;
        lease.metadata.annotations = Some(BTreeMap::from([(
            START_AT_ANNOTATION.to_owned(),
            start_at.to_owned(),
        )]));
        if self.create(&lease).await? {
            return Ok(start_at.to_owned());
        }
        match self.start().await? {
            Some(Start {
                start_at: Some(at), ..
            }) => Ok(at),
            _ => Ok(start_at.to_owned()),
        }
    }

    /// The part's start object, if it exists.
    pub async fn start(&self) -> Result<Option<Start>, KubeError> {
        let lease = self
            .leases
            .get_opt(&self.part.start_name())
            .await
            .map_err(|e| self.fail("get", LEASES, e))?;
        Ok(lease.map(|l| Start::of(&l)))
    }

    /// Watches the start object until `done` says what it waited for, or `limit` passes.
    /// Returns the last state seen.
    pub async fn watch_start(
        &self,
        limit: Duration,
        done: impl Fn(&Start) -> bool,
    ) -> Result<Option<Start>, KubeError> {
        let name = self.part.start_name();
        let deadline = tokio::time::Instant::now() + limit;
        let mut last = None;
        loop {
            let list = self
                .leases
                .list(&ListParams::default().fields(&format!("metadata.name={name}")))
                .await
                .map_err(|e| self.fail("list", LEASES, e))?;
            if let Some(lease) = list.items.first() {
                let start = Start::of(lease);
                if done(&start) {
                    return Ok(Some(start));
                }
                last = Some(start);
            }
            let left = deadline.saturating_duration_since(tokio::time::Instant::now());
            if left.is_zero() {
                return Ok(last);
            }
            let params = WatchParams::default()
                .fields(&format!("metadata.name={name}"))
                .timeout(u32::try_from(left.as_secs()).unwrap_or(290).clamp(1, 290));
            let rv = list.metadata.resource_version.unwrap_or_default();
            let stream = self
                .leases
                .watch(&params, &rv)
                .await
                .map_err(|e| self.fail("watch", LEASES, e))?;
            let mut stream = std::pin::pin!(stream.boxed());
            let seen = tokio::time::timeout(left, async {
                while let Ok(Some(event)) = stream.try_next().await {
                    match event {
                        WatchEvent::Added(lease) | WatchEvent::Modified(lease) => {
                            let start = Start::of(&lease);
                            if done(&start) {
                                return Some(start);
                            }
                        }
                        WatchEvent::Error(_) => return None,
                        _ => {}
                    }
                }
                None
            })
            .await;
            if let Ok(Some(start)) = seen {
                return Ok(Some(start));
            }
        }
    }
}

/// What the start object says.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Start {
    pub start_at: Option<String>,
    pub stop: Option<String>,
}

impl Start {
    fn of(lease: &Lease) -> Start {
        let annotation = |key: &str| {
            lease
                .metadata
                .annotations
                .as_ref()
                .and_then(|a| a.get(key))
                .cloned()
        };
        Start {
            start_at: annotation(START_AT_ANNOTATION),
            stop: annotation(STOP_ANNOTATION),
        }
    }
}

fn owner_uid(lease: &Lease) -> Option<&String> {
    lease
        .metadata
        .owner_references
        .iter()
        .flatten()
        .find(|r| r.kind == "Pod")
        .map(|r| &r.uid)
}
