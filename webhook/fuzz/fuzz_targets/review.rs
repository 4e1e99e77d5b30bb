//! Any bytes as a `POST /mutate` body: decoding, the mutation and encoding together.
//!
//! Invariants: nothing panics; every answer is 200 with an AdmissionReview or a 4xx with
//! JSON; a returned patch applies to the pod that was sent (json-patch), and reviewing the
//! patched pod again yields no further patch (the API server re-invokes webhooks).

#![no_main]

use base64::Engine as _;
use libfuzzer_sys::fuzz_target;
use serde_json::Value;
use wave_webhook::admission;
use wave_webhook::config::Config;
use wave_webhook::owners::OwnerLookup;

fn answer(body: &[u8]) -> (u16, Value) {
    let config = Config::default();
    let owners = OwnerLookup::unavailable("no API server while fuzzing");
    let answer = futures::executor::block_on(admission::review(body, &config, &owners));
    let status = answer.status.as_u16();
    assert!(
        status == 200 || (400..500).contains(&status),
        "status {status}"
    );
    let json: Value = serde_json::from_slice(&answer.body).expect("every answer is JSON");
    (status, json)
}

fn patch_of(response: &Value) -> Option<json_patch::Patch> {
    let encoded = response["patch"].as_str()?;
    let bytes = base64::engine::general_purpose::STANDARD
        .decode(encoded)
        .expect("the patch is base64");
    Some(serde_json::from_slice(&bytes).expect("the patch is a JSON Patch"))
}

fuzz_target!(|body: &[u8]| {
    let (status, json) = answer(body);
    if status != 200 {
        return;
    }
    assert_eq!(json["kind"], "AdmissionReview", "{json}");
    let response = &json["response"];
    let Some(patch) = patch_of(response) else {
        return;
    };
    assert_eq!(response["allowed"], true, "{json}");
    let mut review: Value = serde_json::from_slice(body).expect("a patched review was JSON");
    let pod = &mut review["request"]["object"];
    json_patch::patch(pod, &patch).expect("a returned patch applies to the pod");
    let again = serde_json::to_vec(&review).expect("serializes");
    let (status, json) = answer(&again);
    assert_eq!(status, 200, "{json}");
    let response = &json["response"];
    assert_eq!(
        response["allowed"], true,
        "the patched pod is admitted: {json}"
    );
    if let Some(second) = patch_of(response) {
        assert!(second.0.is_empty(), "not idempotent: {second:?}");
    }
});
