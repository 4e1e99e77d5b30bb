//! Offline injection (`wave-webhook inject`): the admission mutation applied to the pod
//! templates of YAML manifests, so users can preview what the cluster will run, like
//! `istioctl kube-inject` or `linkerd inject`.

use k8s_openapi::api::core::v1::Pod;
use serde_json::{Map, Value};

use crate::config::Config;
use crate::denial::Denial;
use crate::mutate::{Verdict, admit};
use crate::owners::{job_machines, stateful_set_machines};
use crate::part::OwnerReplicas;

/// A manifest that cannot be injected.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum InjectError {
    /// A document is not YAML.
    #[error("document {document}: not valid YAML: {message}")]
    Yaml {
        /// 1-based position of the document in the input.
        document: usize,
        /// The parser's message.
        message: String,
    },
    /// A workload whose pod template is not a valid pod.
    #[error("document {document} ({kind} {name}): {message}")]
    Shape {
        /// 1-based position of the document in the input.
        document: usize,
        /// `kind` of the document.
        kind: String,
        /// `metadata.name` of the document.
        name: String,
        /// What is wrong with it.
        message: String,
    },
    /// The webhook would deny the pods of this workload.
    #[error("{kind} {name}: {denial}")]
    Denied {
        /// 1-based position of the document in the input.
        document: usize,
        /// `kind` of the document.
        kind: String,
        /// `metadata.name` of the document.
        name: String,
        /// The admission denial, with the same message the cluster would give.
        denial: Denial,
    },
    /// The mutated document could not be written back as YAML.
    #[error("document {document}: cannot write YAML: {message}")]
    Output {
        /// 1-based position of the document in the input.
        document: usize,
        /// The serializer's message.
        message: String,
    },
}

/// Mutates every Pod, Deployment, ReplicaSet, StatefulSet and Job in a (multi-document) YAML
/// stream as the webhook would admit its pods, and returns the stream as YAML. Documents of
/// other kinds, and workloads the webhook skips, are returned exactly as written.
pub fn inject_documents(yaml: &str, config: &Config) -> Result<String, InjectError> {
    let mut out = String::with_capacity(yaml.len() * 2);
    for (i, (separator, text)) in split_documents(yaml).into_iter().enumerate() {
        out.push_str(separator);
        match inject_document(i + 1, text, config)? {
            Some(mutated) => out.push_str(&mutated),
            None => out.push_str(text),
        }
    }
    Ok(out)
}

/// Splits a YAML stream at its `---` lines: (separator line, document text) pairs, where
/// the first separator is empty when the stream does not start with one.
fn split_documents(yaml: &str) -> Vec<(&str, &str)> {
    let mut docs = Vec::new();
    let mut separator = "";
    let mut start = 0;
    let mut pos = 0;
    for line in yaml.split_inclusive('\n') {
        let bare = line.trim_end_matches(['\n', '\r']);
        if bare.trim_end() == "---" || bare.starts_with("--- #") {
            docs.push((separator, &yaml[start..pos]));
            separator = line;
            start = pos + line.len();
        }
        pos += line.len();
    }
    docs.push((separator, &yaml[start..]));
    docs.into_iter()
        .filter(|(sep, text)| !(sep.is_empty() && text.is_empty()))
        .collect()
}

fn inject_document(
    document: usize,
    text: &str,
    config: &Config,
) -> Result<Option<String>, InjectError> {
    let parsed: Option<Value> = serde_saphyr::from_str(text).map_err(|e| InjectError::Yaml {
        document,
        message: e.to_string(),
    })?;
    let Some(mut doc) = parsed else {
        return Ok(None);
    };
    let kind = doc
        .get("kind")
        .and_then(Value::as_str)
        .unwrap_or_default()
        .to_string();
    let name = doc
        .pointer("/metadata/name")
        .and_then(Value::as_str)
        .unwrap_or("(unnamed)")
        .to_string();
    let shape = |message: String| InjectError::Shape {
        document,
        kind: kind.clone(),
        name: name.clone(),
        message,
    };
    let replicas = |field: &str| match doc.pointer(&format!("/spec/{field}")) {
        None | Some(Value::Null) => Ok(1),
        Some(v) => v
            .as_u64()
            .and_then(|n| u32::try_from(n).ok())
            .ok_or_else(|| shape(format!("spec.{field} is not a number of replicas"))),
    };
    let count = |field: &str| match doc.pointer(&format!("/spec/{field}")) {
        None | Some(Value::Null) => Ok(None),
        Some(v) => v
            .as_i64()
            .and_then(|n| i32::try_from(n).ok())
            .filter(|n| *n >= 0)
            .map(Some)
            .ok_or_else(|| shape(format!("spec.{field} is not a number of pods"))),
    };
    // The same derivation as the cluster's owner lookup (crate::owners).
    let owner = match kind.as_str() {
        "Pod" => None,
        "Deployment" | "ReplicaSet" => Some(replicas("replicas")?),
        "StatefulSet" => Some(stateful_set_machines(count("replicas")?)),
        "Job" => Some(job_machines(count("completions")?, count("parallelism")?)),
        _ => return Ok(None),
    };

    let mut pod_json = match owner {
        None => doc.clone(),
        Some(_) => {
            let template = doc
                .pointer("/spec/template")
                .and_then(Value::as_object)
                .ok_or_else(|| shape("spec.template is missing".to_string()))?;
            let mut pod = Map::new();
            pod.insert("apiVersion".into(), Value::from("v1"));
            pod.insert("kind".into(), Value::from("Pod"));
            for field in ["metadata", "spec"] {
                if let Some(v) = template.get(field) {
                    pod.insert(field.into(), v.clone());
                }
            }
            Value::Object(pod)
        }
    };
    let pod: Pod = serde_json::from_value(pod_json.clone())
        .map_err(|e| shape(format!("not a valid pod: {e}")))?;
    let replicas = match owner {
        Some(n) => OwnerReplicas::Known(n),
        None => OwnerReplicas::NoOwner,
    };
    let patch = match admit(&pod, replicas, config) {
        Verdict::Skip { .. } => return Ok(None),
        Verdict::Deny(denial) => {
            return Err(InjectError::Denied {
                document,
                kind,
                name,
                denial,
            });
        }
        Verdict::Patch { patch, .. } => patch,
    };
    if patch.is_empty() {
        return Ok(None);
    }
    json_patch::patch(&mut pod_json, &patch.operations())
        .map_err(|e| shape(format!("patch failed: {e}")))?;
    match owner {
        None => doc = pod_json,
        Some(_) => {
            if let Some(template) = doc.pointer_mut("/spec/template") {
                for field in ["metadata", "spec"] {
                    if let Some(v) = pod_json.get_mut(field) {
                        template[field] = v.take();
                    }
                }
            }
        }
    }
    serde_saphyr::to_string(&doc)
        .map(Some)
        .map_err(|e| InjectError::Output {
            document,
            message: e.to_string(),
        })
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::api::apps::v1::Deployment;
    use k8s_openapi::api::batch::v1::Job;

    const SEED: &str = include_str!("../tests/fixtures/seed-deployment.yaml");

    const SERVICE: &str = "# kept as written\napiVersion: v1\nkind: Service\nmetadata:\n  name: svc   # odd spacing\nspec:\n  ports: [{port: 80}]\n";

    fn env_of(pod_spec: &Value, container: usize, name: &str) -> Option<String> {
        pod_spec["containers"][container]["env"]
            .as_array()?
            .iter()
            .find(|e| e["name"] == name)?["value"]
            .as_str()
            .map(str::to_string)
    }

    #[test]
    fn injects_the_seed_deployment_using_its_replicas() {
        let out = inject_documents(SEED, &Config::default()).expect("injects");
        let deployment: Deployment = serde_saphyr::from_str(&out).expect("output is a Deployment");
        assert_eq!(deployment.spec.as_ref().and_then(|s| s.replicas), Some(480));
        let doc: Value = serde_saphyr::from_str(&out).expect("yaml");
        let spec = &doc["spec"]["template"]["spec"];
        assert_eq!(env_of(spec, 0, "TOTAL_PLAYERS").as_deref(), Some("480000"));
        assert_eq!(env_of(spec, 0, "WAVE_AGENTS").as_deref(), Some("10"));
        assert_eq!(spec["initContainers"][0]["name"], "wave-install");
        assert_eq!(
            doc["spec"]["template"]["metadata"]["annotations"]["prometheus.io/scrape"],
            "true"
        );
    }

    #[test]
    fn other_kinds_pass_through_exactly_as_written() {
        let input = format!("{SERVICE}---\n{SEED}");
        let out = inject_documents(&input, &Config::default()).expect("injects");
        assert!(out.starts_with(&format!("{SERVICE}---\n")), "{out}");
        assert!(out.len() > input.len());
    }

    #[test]
    fn injecting_its_own_output_changes_nothing() {
        let once = inject_documents(SEED, &Config::default()).expect("injects");
        let twice = inject_documents(&once, &Config::default()).expect("injects again");
        assert_eq!(once, twice);
    }

    #[test]
    fn job_uses_parallelism_as_replicas() {
        let job = "apiVersion: batch/v1\nkind: Job\nmetadata:\n  name: burst\nspec:\n  parallelism: 3\n  template:\n    metadata:\n      labels:\n        testId: t1\n    spec:\n      restartPolicy: Never\n      containers:\n        - name: agent\n          image: game:1\n";
        let out = inject_documents(job, &Config::default()).expect("injects");
        let parsed: Job = serde_saphyr::from_str(&out).expect("output is a Job");
        let doc = serde_json::to_value(&parsed).expect("json");
        let spec = &doc["spec"]["template"]["spec"];
        assert_eq!(env_of(spec, 0, "TOTAL_PLAYERS").as_deref(), Some("3000"));
    }

    #[test]
    fn an_indexed_job_counts_its_completions_not_its_parallelism() {
        let job = "apiVersion: batch/v1\nkind: Job\nmetadata:\n  name: burst\nspec:\n  completionMode: Indexed\n  completions: 12\n  parallelism: 6\n  template:\n    metadata:\n      labels:\n        testId: t1\n    spec:\n      restartPolicy: Never\n      containers:\n        - name: agent\n          image: game:1\n";
        let out = inject_documents(job, &Config::default()).expect("injects");
        let doc: Value = serde_saphyr::from_str(&out).expect("yaml");
        let spec = &doc["spec"]["template"]["spec"];
        assert_eq!(env_of(spec, 0, "TOTAL_PLAYERS").as_deref(), Some("12000"));
    }

    #[test]
    fn statefulset_without_replicas_counts_one() {
        let sts = "apiVersion: apps/v1\nkind: StatefulSet\nmetadata:\n  name: s\nspec:\n  serviceName: s\n  selector:\n    matchLabels: {app: s}\n  template:\n    metadata:\n      labels: {app: s, testId: t2}\n    spec:\n      containers:\n        - name: agent\n          image: game:1\n";
        let out = inject_documents(sts, &Config::default()).expect("injects");
        let doc: Value = serde_saphyr::from_str(&out).expect("yaml");
        let spec = &doc["spec"]["template"]["spec"];
        assert_eq!(env_of(spec, 0, "TOTAL_PLAYERS").as_deref(), Some("1000"));
    }

    #[test]
    fn bare_pod_needs_total_players() {
        let pod = "apiVersion: v1\nkind: Pod\nmetadata:\n  name: p\n  labels: {testId: t3}\nspec:\n  containers:\n    - name: agent\n      image: game:1\n";
        let err = inject_documents(pod, &Config::default()).expect_err("no owner");
        let InjectError::Denied { kind, denial, .. } = &err else {
            panic!("expected a denial, got {err:?}")
        };
        assert_eq!(kind, "Pod");
        assert_eq!(denial.subject, "waveloadtest.io/total-players");
        let annotated = pod.replace(
            "  name: p\n",
            "  name: p\n  annotations: {waveloadtest.io/total-players: \"500\"}\n",
        );
        let out = inject_documents(&annotated, &Config::default()).expect("injects");
        let doc: Value = serde_saphyr::from_str(&out).expect("yaml");
        assert_eq!(
            env_of(&doc["spec"], 0, "TOTAL_PLAYERS").as_deref(),
            Some("500")
        );
    }

    #[test]
    fn denial_carries_the_admission_message() {
        let bad = SEED.replace(
            "    metadata:\n      labels:",
            "    metadata:\n      annotations:\n        waveloadtest.io/machine-type: r5.xlarg\n      labels:",
        );
        let err = inject_documents(&bad, &Config::default()).expect_err("denied");
        assert_eq!(
            err.to_string(),
            "Deployment eks-sample-linux-deployment: waveloadtest.io/machine-type: unknown machine type \"r5.xlarg\" (did you mean r5.xlarge?)"
        );
    }

    #[test]
    fn unlabelled_workloads_pass_through() {
        let plain = SEED.replace(
            "        testId: 2e9103ae-3268-11ed-b5cf-0242ac110033--p1\n",
            "",
        );
        assert_eq!(inject_documents(&plain, &Config::default()), Ok(plain));
    }

    #[test]
    fn invalid_yaml_names_the_document() {
        let input = format!("{SERVICE}---\nkind: Pod\nmetadata: [unclosed\n");
        let err = inject_documents(&input, &Config::default()).expect_err("bad yaml");
        assert!(
            matches!(err, InjectError::Yaml { document: 2, .. }),
            "{err}"
        );
    }

    #[test]
    fn a_template_that_is_not_a_pod_is_an_error() {
        let input = "apiVersion: apps/v1\nkind: Deployment\nmetadata:\n  name: d\nspec:\n  template:\n    spec:\n      containers: 5\n";
        let err = inject_documents(input, &Config::default()).expect_err("not a pod");
        assert!(
            matches!(err, InjectError::Shape { document: 1, .. }),
            "{err}"
        );
    }
}
