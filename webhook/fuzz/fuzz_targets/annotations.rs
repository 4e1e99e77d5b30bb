//! Any `testId` label and `waveloadtest.io/*` annotations on the seed's pod: the annotation
//! parser and the mutation.
//!
//! The input is split at zero bytes: the label value, then key/value pairs (a key without the
//! prefix gets it). Invariants: nothing panics; a patch applies to the pod and the mutation
//! of the patched pod is empty; a denial names an annotation or the label.

#![no_main]

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::{Container, Pod, PodSpec};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use libfuzzer_sys::fuzz_target;
use wave_webhook::config::Config;
use wave_webhook::mutate::{Verdict, admit};
use wave_webhook::part::OwnerReplicas;

fn pod(input: &[u8]) -> Pod {
    let mut fields = input
        .split(|b| *b == 0)
        .map(|f| String::from_utf8_lossy(f).into_owned());
    let label = fields.next().unwrap_or_default();
    let mut annotations = BTreeMap::new();
    while let (Some(key), Some(value)) = (fields.next(), fields.next()) {
        let key = if key.contains('/') {
            key
        } else {
            format!("waveloadtest.io/{key}")
        };
        annotations.insert(key, value);
    }
    Pod {
        metadata: ObjectMeta {
            generate_name: Some("game-".to_string()),
            namespace: Some("loadtest".to_string()),
            labels: Some(BTreeMap::from([("testId".to_string(), label)])),
            annotations: Some(annotations),
            ..ObjectMeta::default()
        },
        spec: Some(PodSpec {
            containers: vec![
                Container {
                    name: "game-1".to_string(),
                    image: Some("game:1".to_string()),
                    command: Some(vec!["/game".to_string()]),
                    ..Container::default()
                },
                Container {
                    name: "game-2".to_string(),
                    image: Some("game:1".to_string()),
                    command: Some(vec!["/game".to_string()]),
                    args: Some(vec!["--fast".to_string()]),
                    ..Container::default()
                },
            ],
            ..PodSpec::default()
        }),
        status: None,
    }
}

fuzz_target!(|input: &[u8]| {
    let pod = pod(input);
    let config = Config::default();
    match admit(&pod, OwnerReplicas::Known(3), &config) {
        Verdict::Skip { .. } => {}
        Verdict::Deny(denial) => {
            let subject = denial.to_string();
            assert!(
                subject.starts_with("waveloadtest.io/")
                    || subject.starts_with("label testId")
                    || subject.starts_with("spec."),
                "{subject}"
            );
        }
        Verdict::Patch { patch, .. } => {
            let mut value = serde_json::to_value(&pod).expect("pod to JSON");
            json_patch::patch(&mut value, &patch.operations()).expect("the patch applies to the pod");
            let patched: Pod = serde_json::from_value(value).expect("the patched pod is a Pod");
            match admit(&patched, OwnerReplicas::Known(3), &config) {
                Verdict::Patch { patch, .. } => {
                    assert!(patch.is_empty(), "not idempotent: {patch:?}")
                }
                other => panic!("the patched pod is not admitted again: {other:?}"),
            }
        }
    }
});
