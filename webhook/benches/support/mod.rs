//! What the webhook's benchmarks share.

const FIXTURE: &str = include_str!("../../tests/fixtures/admission-review-pod-create.json");

/// The captured pod CREATE review with `waveloadtest.io/total-players`, so it is answered
/// with a patch and needs no owner lookup.
pub fn review_body() -> Vec<u8> {
    let mut review: serde_json::Value = serde_json::from_str(FIXTURE).expect("fixture");
    review["request"]["object"]["metadata"]["annotations"] =
        serde_json::json!({"waveloadtest.io/total-players": "480000"});
    serde_json::to_vec(&review).expect("serializes")
}
