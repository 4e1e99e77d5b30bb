//! `admission::review` without sockets: from request bodies to the AdmissionReview answers
//! kube-apiserver reads, including a review captured in the exact shape it sends.

use crate::support::{TEST_ID, captured_review, env_value, patched_pod};
use http::StatusCode;
use k8s_openapi::api::core::v1::Pod;
use serde_json::{Value, json};
use wave_webhook::admission::{self, Answer};
use wave_webhook::config::Config;
use wave_webhook::metrics::Outcome;
use wave_webhook::owners::OwnerLookup;

fn with_annotations(mut review: Value, annotations: Value) -> Value {
    review["request"]["object"]["metadata"]["annotations"] = annotations;
    review
}

async fn answer(review: &Value) -> Answer {
    answer_bytes(&serde_json::to_vec(review).expect("serializes")).await
}

async fn answer_bytes(body: &[u8]) -> Answer {
    admission::review(
        body,
        &Config::default(),
        &OwnerLookup::unavailable("no API server in this test"),
    )
    .await
}

fn response(answer: &Answer) -> Value {
    let body: Value = serde_json::from_slice(&answer.body).expect("answer is JSON");
    assert_eq!(body["apiVersion"], "admission.k8s.io/v1");
    assert_eq!(body["kind"], "AdmissionReview");
    body["response"].clone()
}

fn env(pod: &Pod, name: &str) -> Option<String> {
    env_value(&pod.spec.as_ref()?.containers[0], name)
}

#[tokio::test]
async fn captured_review_without_total_players_is_denied_when_the_owner_lookup_is_unavailable() {
    let answer = answer(&captured_review()).await;
    assert_eq!(answer.status, StatusCode::OK);
    assert_eq!(answer.outcome, Outcome::Denied);
    let response = response(&answer);
    assert_eq!(response["uid"], "4b6c1c1e-7d0a-4c43-9f0e-5c1f7a3b9d21");
    assert_eq!(response["allowed"], false);
    assert_eq!(response["status"]["code"], 400);
    let message = response["status"]["message"].as_str().expect("message");
    assert!(
        message.starts_with("waveloadtest.io/total-players:")
            && message.contains("no API server in this test"),
        "{message}"
    );
    assert!(response.get("patch").is_none());
}

#[tokio::test]
async fn captured_review_with_total_players_is_answered_with_a_patch_that_makes_a_test_machine() {
    let review = with_annotations(
        captured_review(),
        json!({"waveloadtest.io/total-players": "480000"}),
    );
    let answer = answer(&review).await;
    assert_eq!(answer.status, StatusCode::OK);
    assert_eq!(answer.outcome, Outcome::Mutated);
    let response = response(&answer);
    assert_eq!(response["uid"], review["request"]["uid"]);
    assert_eq!(response["allowed"], true);
    let pod = patched_pod(&review, &response);
    assert_eq!(env(&pod, "TEST_ID").as_deref(), Some(TEST_ID));
    assert_eq!(env(&pod, "TOTAL_PLAYERS").as_deref(), Some("480000"));
    assert_eq!(env(&pod, "PLAYERS_PER_AGENT").as_deref(), Some("100"));
    assert_eq!(env(&pod, "WAVE_TEST_PART").as_deref(), Some("p1"));
    let spec = pod.spec.expect("spec");
    let selector = spec.node_selector.expect("nodeSelector");
    assert_eq!(selector["node.kubernetes.io/instance-type"], "r5.xlarge");
    // The fields the API server defaulted before calling us are untouched.
    assert_eq!(spec.service_account_name.as_deref(), Some("default"));
    assert_eq!(spec.tolerations.map(|t| t.len()), Some(2));
    // The webhook does not keep managedFields while it mutates; the patch leaves them as sent.
    let sent: Pod =
        serde_json::from_value(review["request"]["object"].clone()).expect("the sent pod");
    assert!(sent.metadata.managed_fields.is_some());
    assert_eq!(pod.metadata.managed_fields, sent.metadata.managed_fields);
}

#[tokio::test]
async fn dry_run_requests_are_answered_exactly_like_real_ones() {
    let real = with_annotations(
        captured_review(),
        json!({"waveloadtest.io/total-players": "480000"}),
    );
    let mut dry = real.clone();
    dry["request"]["dryRun"] = json!(true);
    assert_eq!(answer(&real).await.body, answer(&dry).await.body);
}

#[tokio::test]
async fn an_already_mutated_pod_gets_no_patch() {
    let review = with_annotations(
        captured_review(),
        json!({"waveloadtest.io/total-players": "480000"}),
    );
    let first = response(&answer(&review).await);
    let pod = patched_pod(&review, &first);
    let mut again = review.clone();
    again["request"]["object"] = serde_json::to_value(&pod).expect("pod serializes");
    let second = answer(&again).await;
    assert_eq!(second.outcome, Outcome::Skipped);
    let response = response(&second);
    assert_eq!(response["allowed"], true);
    assert!(response.get("patch").is_none(), "{response}");
    assert!(response.get("patchType").is_none(), "{response}");
}

#[tokio::test]
async fn values_the_user_set_are_kept_with_a_warning() {
    let mut review = with_annotations(
        captured_review(),
        json!({"waveloadtest.io/total-players": "480000"}),
    );
    review["request"]["object"]["spec"]["containers"][0]["env"] =
        json!([{"name": "TOTAL_PLAYERS", "value": "1"}]);
    let response = response(&answer(&review).await);
    let warnings = response["warnings"].as_array().expect("warnings");
    assert!(
        warnings
            .iter()
            .any(|w| w.as_str().is_some_and(|w| w.contains("TOTAL_PLAYERS"))),
        "{warnings:?}"
    );
    assert_eq!(
        env(&patched_pod(&review, &response), "TOTAL_PLAYERS").as_deref(),
        Some("1")
    );
}

#[tokio::test]
async fn a_denial_carries_status_code_400_and_the_message_naming_the_annotation() {
    let review = with_annotations(
        captured_review(),
        json!({"waveloadtest.io/total-players": "480000", "waveloadtest.io/machine-type": "r5.xlarg"}),
    );
    let answer = answer(&review).await;
    assert_eq!(answer.outcome, Outcome::Denied);
    let response = response(&answer);
    assert_eq!(response["allowed"], false);
    assert_eq!(response["status"]["code"], 400);
    assert_eq!(response["status"]["status"], "Failure");
    assert_eq!(
        response["status"]["message"],
        "waveloadtest.io/machine-type: unknown machine type \"r5.xlarg\" (did you mean r5.xlarge?)"
    );
}

#[tokio::test]
async fn an_unlabelled_pod_is_allowed_without_patch() {
    let mut review = captured_review();
    review["request"]["object"]["metadata"]["labels"] = json!({"app": "web"});
    let answer = answer(&review).await;
    assert_eq!(answer.outcome, Outcome::Skipped);
    let response = response(&answer);
    assert_eq!(response["allowed"], true);
    assert!(response.get("patch").is_none());
}

#[tokio::test]
async fn other_operations_and_kinds_are_allowed_without_patch() {
    let mut update = captured_review();
    update["request"]["operation"] = json!("UPDATE");
    update["request"]["oldObject"] = update["request"]["object"].clone();
    let mut deployment = captured_review();
    deployment["request"]["kind"] = json!({"group": "apps", "version": "v1", "kind": "Deployment"});
    deployment["request"]["resource"] =
        json!({"group": "apps", "version": "v1", "resource": "deployments"});
    deployment["request"]["object"] = json!({
        "apiVersion": "apps/v1", "kind": "Deployment",
        "metadata": {"name": "d", "namespace": "eks-sample-app", "labels": {"testId": "t"}},
        "spec": {"selector": {}, "template": {}}
    });
    let mut binding = captured_review();
    binding["request"]["subResource"] = json!("binding");
    for review in [update, deployment, binding] {
        let answer = answer(&review).await;
        assert_eq!(answer.status, StatusCode::OK);
        assert_eq!(answer.outcome, Outcome::Skipped);
        let response = response(&answer);
        assert_eq!(response["uid"], review["request"]["uid"]);
        assert_eq!(response["allowed"], true);
        assert!(response.get("patch").is_none());
    }
}

async fn assert_bad_request(body: &[u8], expected: &str) {
    let answer = answer_bytes(body).await;
    assert_eq!(answer.status, StatusCode::BAD_REQUEST);
    assert_eq!(answer.outcome, Outcome::Error);
    let response = response(&answer);
    assert_eq!(response["allowed"], false);
    assert_eq!(response["status"]["code"], 400);
    let message = response["status"]["message"].as_str().expect("message");
    assert!(
        message.contains(expected),
        "{message:?} should contain {expected:?}"
    );
}

#[tokio::test]
async fn bodies_that_are_not_admission_reviews_are_answered_400_with_a_json_review() {
    assert_bad_request(b"", "not an AdmissionReview").await;
    assert_bad_request(b"not json at all", "not an AdmissionReview").await;
    assert_bad_request(b"\xff\xfe\x00", "not an AdmissionReview").await;
    assert_bad_request(br#"{"hello": "world"}"#, "").await;
    assert_bad_request(br#"[1, 2, 3]"#, "not an AdmissionReview").await;
    assert_bad_request(
        br#"{"kind": "AdmissionReview", "apiVersion": "admission.k8s.io/v1"}"#,
        "no request",
    )
    .await;
}

#[tokio::test]
async fn an_admission_review_of_another_version_is_refused() {
    let mut review = captured_review();
    review["apiVersion"] = json!("admission.k8s.io/v1beta1");
    assert_bad_request(
        &serde_json::to_vec(&review).expect("json"),
        "admission.k8s.io/v1",
    )
    .await;
}

#[tokio::test]
async fn a_pod_create_whose_object_is_not_a_pod_is_refused() {
    let mut review = captured_review();
    review["request"]["object"]["spec"]["containers"] = json!("not a list");
    assert_bad_request(
        &serde_json::to_vec(&review).expect("json"),
        "not a valid Pod",
    )
    .await;
    let mut missing = captured_review();
    missing["request"]["object"] = Value::Null;
    assert_bad_request(&serde_json::to_vec(&missing).expect("json"), "no object").await;
}
