//! Test pods shared by the unit tests of the mutation: the seed's pod and builders around it.
//! Written against the contract (docs/webhook-reference.md's names), not the crate's own constants.

use std::collections::BTreeMap;

use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::{Container, Pod, ResourceRequirements};
use k8s_openapi::apimachinery::pkg::api::resource::Quantity;

const SEED: &str = include_str!("../tests/fixtures/seed-deployment.yaml");
/// The test id in the seed's `testId` label.
pub(crate) const TEST_ID: &str = "2e9103ae-3268-11ed-b5cf-0242ac110033";

pub(crate) fn seed_deployment() -> Deployment {
    serde_saphyr::from_str(SEED).expect("the seed fixture is a Deployment")
}

/// The pod the seed's Deployment creates, as its ReplicaSet sends it.
pub(crate) fn seed_pod() -> Pod {
    let template = seed_deployment().spec.expect("spec").template;
    Pod {
        metadata: template.metadata.expect("template metadata"),
        spec: template.spec,
        status: None,
    }
}

/// The seed's pod with `n` agent containers (`...-c1`..`-cn`) that set nothing wave sets,
/// and a termination grace period long enough for the supervisor (60 s).
pub(crate) fn mk_pod(n: usize) -> Pod {
    let mut pod = seed_pod();
    let spec = pod.spec.as_mut().expect("spec");
    spec.termination_grace_period_seconds = Some(60);
    let template = spec.containers[0].clone();
    spec.containers = (1..=n)
        .map(|i| Container {
            name: format!("All-service-ltystore-10k-p1-c{i}"),
            env: None,
            resources: None,
            ..template.clone()
        })
        .collect();
    pod
}

pub(crate) fn annotate(mut pod: Pod, key: &str, value: &str) -> Pod {
    pod.metadata
        .annotations
        .get_or_insert_with(BTreeMap::new)
        .insert(key.to_string(), value.to_string());
    pod
}

pub(crate) fn wave(pod: Pod, name: &str, value: &str) -> Pod {
    annotate(pod, &format!("waveloadtest.io/{name}"), value)
}

pub(crate) fn apply_patch(pod: &Pod, patch: &crate::patch::Patch) -> Pod {
    let mut value = serde_json::to_value(pod).expect("pod to json");
    json_patch::patch(&mut value, &patch.operations()).expect("patch applies to the pod");
    serde_json::from_value(value).expect("patched pod is still a Pod")
}

pub(crate) fn env<'a>(c: &'a Container, name: &str) -> Option<&'a str> {
    c.env
        .as_ref()?
        .iter()
        .find(|e| e.name == name)?
        .value
        .as_deref()
}

pub(crate) fn containers(pod: &Pod) -> &[Container] {
    &pod.spec.as_ref().expect("spec").containers
}

pub(crate) fn quantity<'a>(c: &'a Container, which: &str, resource: &str) -> &'a str {
    let r = c.resources.as_ref().expect("resources");
    let map = if which == "requests" {
        &r.requests
    } else {
        &r.limits
    };
    map.as_ref()
        .and_then(|m| m.get(resource))
        .map(|q| q.0.as_str())
        .unwrap_or_else(|| panic!("{} has no {which} {resource}", c.name))
}

pub(crate) fn selector(pod: &Pod) -> &BTreeMap<String, String> {
    pod.spec
        .as_ref()
        .and_then(|s| s.node_selector.as_ref())
        .expect("nodeSelector")
}

pub(crate) fn with_command(mut pod: Pod, command: Option<&[&str]>, args: Option<&[&str]>) -> Pod {
    let c = &mut pod.spec.as_mut().expect("spec").containers[0];
    let own = |v: &[&str]| v.iter().map(|s| s.to_string()).collect();
    c.command = command.map(own);
    c.args = args.map(own);
    pod
}

pub(crate) fn with_container(mut pod: Pod, name: &str, cpu: &str, memory: &str) -> Pod {
    let requests = BTreeMap::from([
        ("cpu".to_string(), Quantity(cpu.to_string())),
        ("memory".to_string(), Quantity(memory.to_string())),
    ]);
    pod.spec.as_mut().expect("spec").containers.push(Container {
        name: name.to_string(),
        image: Some("proxy:1".to_string()),
        resources: Some(ResourceRequirements {
            requests: Some(requests),
            ..ResourceRequirements::default()
        }),
        ..Container::default()
    });
    pod
}
