//! `wave status` and `wave stop` (docs/coordination.md): a test's parts as the Kubernetes API shows
//! them, from the Leases the supervisors create (slots, `-ready` and `-done` marks, the
//! start object) and the pods; and the stop of a part, an annotation on its start object.
//! No Prometheus needed.

use std::collections::BTreeMap;
use std::fmt;

use k8s_openapi::api::coordination::v1::{Lease, LeaseSpec};
use k8s_openapi::api::core::v1::Pod;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{MicroTime, ObjectMeta};
use k8s_openapi::jiff::Timestamp;
use kube::api::{ListParams, Patch, PatchParams, PostParams};
use kube::{Api, Client};

use crate::slots::kube::MARK_LABEL;
use crate::slots::{
    MACHINES_ANNOTATION, PART_LABEL, Part, SLOT_LABEL, START_AT_ANNOTATION, STOP_ANNOTATION,
    TEST_ID_LABEL, label_value,
};

/// A call to the Kubernetes API that failed.
#[derive(Debug, thiserror::Error)]
#[error("cannot {verb} {resource} in namespace {namespace}")]
pub struct ControlError {
    verb: &'static str,
    resource: &'static str,
    namespace: String,
    #[source]
    source: kube::Error,
}

/// What the API shows of one test part.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PartStatus {
    /// The part's label value (`<part>`, or its hash when it is not a valid label value).
    pub part: String,
    /// M, as the slot Leases record it.
    pub machines: Option<u32>,
    pub claimed: u32,
    pub ready: u32,
    /// Claimed, started (start-at passed) and not done.
    pub running: u32,
    pub completed: u32,
    pub start_at: Option<String>,
    pub stopped: Option<String>,
    /// Pods of the part by phase.
    pub pods: BTreeMap<String, u32>,
}

impl fmt::Display for PartStatus {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let part = if self.part.is_empty() {
            "(no part)"
        } else {
            &self.part
        };
        let machines = self
            .machines
            .map_or_else(|| "?".to_owned(), |m| m.to_string());
        write!(
            f,
            "part {part}: {machines} machines: {} claimed, {} ready, {} running, {} completed",
            self.claimed, self.ready, self.running, self.completed
        )?;
        match &self.start_at {
            Some(at) => write!(f, "; start-at {at}")?,
            None => write!(f, "; not started together")?,
        }
        if let Some(reason) = &self.stopped {
            write!(f, "; stopped: {reason}")?;
        }
        let pods: Vec<String> = self
            .pods
            .iter()
            .map(|(phase, n)| format!("{n} {phase}"))
            .collect();
        if !pods.is_empty() {
            write!(f, "; pods: {}", pods.join(", "))?;
        }
        Ok(())
    }
}

fn fail(
    verb: &'static str,
    resource: &'static str,
    namespace: &str,
) -> impl FnOnce(kube::Error) -> ControlError {
    let namespace = namespace.to_owned();
    move |source| ControlError {
        verb,
        resource,
        namespace,
        source,
    }
}

fn label<'a>(lease: &'a Lease, key: &str) -> Option<&'a str> {
    lease.metadata.labels.as_ref()?.get(key).map(String::as_str)
}

fn annotation<'a>(lease: &'a Lease, key: &str) -> Option<&'a str> {
    lease
        .metadata
        .annotations
        .as_ref()?
        .get(key)
        .map(String::as_str)
}

/// The status of every part of `test_id` in `namespace` (or only `part`).
pub async fn status(
    client: Client,
    namespace: &str,
    test_id: &str,
    part: Option<&str>,
) -> Result<Vec<PartStatus>, ControlError> {
    let leases: Api<Lease> = Api::namespaced(client.clone(), namespace);
    let mut selector = format!("{TEST_ID_LABEL}={}", label_value(test_id));
    if let Some(part) = part {
        selector.push_str(&format!(",{PART_LABEL}={}", label_value(part)));
    }
    let list = leases
        .list(&ListParams::default().labels(&selector))
        .await
        .map_err(fail("list", "leases.coordination.k8s.io", namespace))?;
    let now = Timestamp::now();
    let mut parts: BTreeMap<String, PartStatus> = BTreeMap::new();
    let mut started = BTreeMap::new();
    for lease in &list.items {
        let key = label(lease, PART_LABEL).unwrap_or_default().to_owned();
        let status = parts.entry(key.clone()).or_insert_with(|| PartStatus {
            part: key.clone(),
            ..PartStatus::default()
        });
        if label(lease, SLOT_LABEL).is_some() {
            status.claimed += 1;
            status.machines = status
                .machines
                .or_else(|| annotation(lease, MACHINES_ANNOTATION)?.parse().ok());
        } else if let Some(mark) = label(lease, MARK_LABEL) {
            match mark {
                "ready" => status.ready += 1,
                "done" => status.completed += 1,
                _ => {}
            }
        } else {
            status.start_at = annotation(lease, START_AT_ANNOTATION).map(str::to_owned);
            status.stopped = annotation(lease, STOP_ANNOTATION).map(str::to_owned);
            let due = status
                .start_at
                .as_deref()
                .and_then(|a| a.parse::<Timestamp>().ok())
                .is_some_and(|at| at <= now);
            started.insert(key.clone(), due);
        }
    }
    let pods: Api<Pod> = Api::namespaced(client, namespace);
    for (key, status) in &mut parts {
        // Without a start object the agents started on their own schedule.
        let due = started.get(key).copied().unwrap_or(true);
        if due {
            status.running = status.claimed.saturating_sub(status.completed);
        }
        let pod_label = if key.is_empty() {
            test_id.to_owned()
        } else {
            format!("{test_id}--{key}")
        };
        if label_value(&pod_label) != pod_label {
            continue;
        }
        let list = pods
            .list(&ListParams::default().labels(&format!("testId={pod_label}")))
            .await
            .map_err(fail("list", "pods", namespace))?;
        for pod in list.items {
            let phase = pod
                .status
                .and_then(|s| s.phase)
                .unwrap_or_else(|| "Unknown".to_owned());
            let phase = if pod.metadata.deletion_timestamp.is_some() {
                "Terminating".to_owned()
            } else {
                phase
            };
            *status.pods.entry(phase).or_default() += 1;
        }
    }
    Ok(parts.into_values().collect())
}

/// Stops a test part (docs/coordination.md): annotates its start object `waveloadtest.io/stop: reason`,
/// creating the object when the part never started together. Returns the start object's name.
pub async fn stop(
    client: Client,
    namespace: &str,
    part: &Part,
    reason: &str,
) -> Result<String, ControlError> {
    let leases: Api<Lease> = Api::namespaced(client, namespace);
    let name = part.start_name();
    let lease = Lease {
        metadata: ObjectMeta {
            name: Some(name.clone()),
            namespace: Some(namespace.to_owned()),
            labels: Some(
                part.labels()
                    .into_iter()
                    .map(|(k, v)| (k.to_owned(), v))
                    .collect(),
            ),
            annotations: Some(BTreeMap::from([(
                STOP_ANNOTATION.to_owned(),
                reason.to_owned(),
            )])),
            ..ObjectMeta::default()
        },
        spec: Some(LeaseSpec {
            holder_identity: Some("wave stop".to_owned()),
            acquire_time: Some(MicroTime(Timestamp::now())),
            ..LeaseSpec::default()
        }),
    };
    match leases.create(&PostParams::default(), &lease).await {
        Ok(_) => return Ok(name),
        Err(kube::Error::Api(status)) if status.code == 409 => {}
        Err(e) => return Err(fail("create", "leases.coordination.k8s.io", namespace)(e)),
    }
    let patch = serde_json::json!({"metadata": {"annotations": {STOP_ANNOTATION: reason}}});
    leases
        .patch(&name, &PatchParams::default(), &Patch::Merge(&patch))
        .await
        .map_err(fail("patch", "leases.coordination.k8s.io", namespace))?;
    Ok(name)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_part_reads_as_one_line() {
        let status = PartStatus {
            part: "p1".into(),
            machines: Some(480),
            claimed: 480,
            ready: 480,
            running: 470,
            completed: 10,
            start_at: Some("2026-12-02T01:00:00.000Z".into()),
            stopped: Some("enough".into()),
            pods: BTreeMap::from([("Running".into(), 480)]),
        };
        assert_eq!(
            status.to_string(),
            "part p1: 480 machines: 480 claimed, 480 ready, 470 running, 10 completed; \
             start-at 2026-12-02T01:00:00.000Z; stopped: enough; pods: 480 Running"
        );
    }
}
