//! What several flows build the same way: the AdmissionReview kube-apiserver sent for a
//! real pod, a webhook answer's patch applied to it, and the owner chain
//! pod → ReplicaSet → Deployment as the controllers write it.

use base64::Engine as _;
use k8s_openapi::api::apps::v1::{Deployment, DeploymentSpec, ReplicaSet, ReplicaSetSpec};
use k8s_openapi::api::core::v1::{Container, Pod};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{ObjectMeta, OwnerReference};
use serde_json::Value;

/// The captured review's text: a ReplicaSet's pod with generateName, no name, no wave
/// annotations, exactly as kube-apiserver sent it.
pub const CAPTURED_REVIEW: &str =
    include_str!("../../../webhook/tests/fixtures/admission-review-pod-create.json");

/// The `testId` label of the captured review's pod.
pub const TEST_ID: &str = "2e9103ae-3268-11ed-b5cf-0242ac110033";

/// The captured review, parsed.
pub fn captured_review() -> Value {
    serde_json::from_str(CAPTURED_REVIEW).expect("the captured review is JSON")
}

/// The pod of `review` with `response`'s JSON Patch applied, read back as a typed Pod.
pub fn patched_pod(review: &Value, response: &Value) -> Pod {
    assert_eq!(response["allowed"], true, "{response}");
    assert_eq!(response["patchType"], "JSONPatch", "{response}");
    let bytes = base64::engine::general_purpose::STANDARD
        .decode(response["patch"].as_str().expect("patch is base64 text"))
        .expect("patch is valid base64");
    let patch: json_patch::Patch = serde_json::from_slice(&bytes).expect("patch is a JSON Patch");
    let mut object = review["request"]["object"].clone();
    json_patch::patch(&mut object, &patch).expect("the patch applies to the pod");
    serde_json::from_value(object).expect("the patched object is a valid Pod")
}

/// The literal value of a container's env entry `name`.
pub fn env_value(container: &Container, name: &str) -> Option<String> {
    container
        .env
        .as_ref()?
        .iter()
        .find(|e| e.name == name)
        .and_then(|e| e.value.clone())
}

/// An `apps/v1` owner reference, blocking owner deletion as the controllers set it.
pub fn owner_reference(
    kind: &str,
    name: &str,
    uid: &str,
    controller: Option<bool>,
) -> OwnerReference {
    OwnerReference {
        api_version: "apps/v1".to_string(),
        kind: kind.to_string(),
        name: name.to_string(),
        uid: uid.to_string(),
        controller,
        block_owner_deletion: Some(true),
    }
}

/// A ReplicaSet with its identity, replicas and (optional) owning Deployment.
pub fn replica_set(
    namespace: &str,
    name: &str,
    uid: &str,
    replicas: Option<i32>,
    owner: Option<OwnerReference>,
) -> ReplicaSet {
    ReplicaSet {
        metadata: ObjectMeta {
            name: Some(name.to_string()),
            namespace: Some(namespace.to_string()),
            uid: Some(uid.to_string()),
            owner_references: owner.map(|o| vec![o]),
            ..Default::default()
        },
        spec: Some(ReplicaSetSpec {
            replicas,
            ..Default::default()
        }),
        status: None,
    }
}

/// A Deployment with its identity and replicas.
pub fn deployment(namespace: &str, name: &str, uid: &str, replicas: Option<i32>) -> Deployment {
    Deployment {
        metadata: ObjectMeta {
            name: Some(name.to_string()),
            namespace: Some(namespace.to_string()),
            uid: Some(uid.to_string()),
            ..Default::default()
        },
        spec: Some(DeploymentSpec {
            replicas,
            ..Default::default()
        }),
        status: None,
    }
}
