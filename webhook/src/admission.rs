//! From a `POST /mutate` body to the AdmissionReview answer: decoding, choosing which requests
//! are ours, the owner lookup, and encoding the verdict of [`crate::mutate::admit`].
//!
//! Every body gets an answer. A review that cannot be read is answered 400 with an
//! AdmissionReview whose response says why; every readable one is answered 200 with a
//! response built from the request (`AdmissionResponse::from`), so uid and apiVersion always
//! match what the API server sent.

use http::StatusCode;
use k8s_openapi::api::core::v1::Pod;
use kube::core::admission::{AdmissionRequest, AdmissionResponse, AdmissionReview, Operation};
use kube::core::response::StatusSummary;
use kube::core::{DynamicObject, Status};
use serde::{Deserialize as _, Serialize};
use tracing::{debug, info};

use crate::annotations::{Reading, Settings};
use crate::config::Config;
use crate::metrics::Outcome;
use crate::mutate::{self, Verdict};
use crate::owners::OwnerLookup;
use crate::part::OwnerReplicas;
use crate::prune::Pruned;

/// The API version of AdmissionReview this webhook speaks.
const API_VERSION: &str = "admission.k8s.io/v1";

/// What to send back for one body.
#[derive(Debug)]
pub struct Answer {
    /// HTTP status: 200 for every readable review (allowed or denied), 400 otherwise.
    pub status: StatusCode,
    /// JSON body.
    pub body: Vec<u8>,
    /// For the metrics.
    pub outcome: Outcome,
}

/// Answers one AdmissionReview body.
pub async fn review(body: &[u8], config: &Config, owners: &OwnerLookup) -> Answer {
    let request = match decode(body) {
        Ok(request) => request,
        Err(answer) => return answer,
    };
    if !is_pod_create(&request) {
        return skipped(&request, "not a pod CREATE");
    }
    let Some(pod) = request.object.as_ref() else {
        return invalid("the review of a pod CREATE carries no object".to_string());
    };
    let namespace = request
        .namespace
        .as_deref()
        .or(pod.metadata.namespace.as_deref())
        .filter(|ns| !ns.is_empty())
        .unwrap_or("default");
    let reading = Settings::read(pod, config);
    let replicas = match &reading {
        Ok(Reading::Mutate(settings)) if settings.needs_owner_replicas() => {
            owners.replicas(pod, namespace).await
        }
        _ => OwnerReplicas::NoOwner,
    };
    let mut response = AdmissionResponse::from(&request);
    let outcome = match mutate::decide(pod, reading, replicas, config) {
        Verdict::Skip { reason } => {
            debug!(uid = %request.uid, namespace, pod = pod_name(pod), reason, "allowed without patch");
            Outcome::Skipped
        }
        Verdict::Patch { patch, warnings } => {
            if !warnings.is_empty() {
                response.warnings = Some(warnings);
            }
            if patch.is_empty() {
                Outcome::Skipped
            } else {
                response.patch = Some(patch.into_json());
                Outcome::Mutated
            }
        }
        Verdict::Deny(denial) => {
            let reason = denial.to_string();
            info!(uid = %request.uid, namespace, pod = pod_name(pod), %reason, dry_run = request.dry_run, "denied");
            response = response.deny(reason);
            response.result.status = Some(StatusSummary::Failure);
            response.result.code = 400;
            response.result.reason = "BadRequest".to_string();
            Outcome::Denied
        }
    };
    Answer {
        status: StatusCode::OK,
        body: encode(&response),
        outcome,
    }
}

/// Reads a review of a pod, or answers the body at once.
///
/// Pods are parsed into the typed k8s-openapi Pod directly, without their `managedFields`
/// ([`MANAGED_FIELDS`]); anything else (another kind, a pod that does not parse) is looked at
/// as a DynamicObject to tell "not ours" from "broken".
pub fn decode(body: &[u8]) -> Result<AdmissionRequest<Pod>, Answer> {
    match pod_review(body) {
        Ok(review) => into_request(review).map_err(invalid),
        Err(pod_error) => Err(review_not_pod(body, &pod_error)),
    }
}

/// Where a review keeps the pod's managedFields: nothing reads or patches them, and building
/// their field-set trees was a quarter of decoding a review, so they are skipped as they are
/// read. The patch leaves them as the API server sent them.
const MANAGED_FIELDS: &[&str] = &["request", "object", "metadata", "managedFields"];

fn pod_review(body: &[u8]) -> serde_json::Result<AdmissionReview<Pod>> {
    let mut json = serde_json::Deserializer::from_slice(body);
    let review = AdmissionReview::<Pod>::deserialize(Pruned::new(&mut json, MANAGED_FIELDS))?;
    json.end()?;
    Ok(review)
}

/// Copies the review's apiVersion into the request (so the answer carries it) after checking
/// it is the version this webhook speaks.
fn into_request<T: kube::Resource>(
    review: AdmissionReview<T>,
) -> Result<AdmissionRequest<T>, String> {
    if review.types.api_version != API_VERSION || review.types.kind != "AdmissionReview" {
        return Err(format!(
            "expected an AdmissionReview of apiVersion {API_VERSION}, got kind {:?} apiVersion {:?}",
            review.types.kind, review.types.api_version
        ));
    }
    review
        .try_into()
        .map_err(|_| "the AdmissionReview carries no request".to_string())
}

/// A body that did not parse with a Pod inside: another kind (allowed untouched), a pod that
/// is not a valid Pod, or not an AdmissionReview at all (both answered 400).
fn review_not_pod(body: &[u8], pod_error: &serde_json::Error) -> Answer {
    match serde_json::from_slice::<AdmissionReview<DynamicObject>>(body) {
        Ok(review) => match into_request(review) {
            Ok(request) if is_pod_create(&request) => invalid(format!(
                "the pod in the review is not a valid Pod: {pod_error}"
            )),
            Ok(request) => skipped(&request, "not a pod CREATE"),
            Err(why) => invalid(why),
        },
        Err(e) => invalid(format!("the body is not an AdmissionReview: {e}")),
    }
}

fn is_pod_create<T: kube::Resource>(request: &AdmissionRequest<T>) -> bool {
    request.operation == Operation::Create
        && request.kind.group.is_empty()
        && request.kind.kind == "Pod"
        && request.sub_resource.as_deref().is_none_or(str::is_empty)
}

fn skipped<T: kube::Resource>(request: &AdmissionRequest<T>, reason: &str) -> Answer {
    debug!(uid = %request.uid, kind = %request.kind.kind, operation = ?request.operation, reason, "allowed without patch");
    Answer {
        status: StatusCode::OK,
        body: encode(&AdmissionResponse::from(request)),
        outcome: Outcome::Skipped,
    }
}

/// 400 with an AdmissionReview saying what was wrong with the body.
fn invalid(why: String) -> Answer {
    debug!(reason = %why, "unreadable admission review");
    let mut response = AdmissionResponse::invalid(&why);
    response.result.code = 400;
    Answer {
        status: StatusCode::BAD_REQUEST,
        body: encode(&response),
        outcome: Outcome::Error,
    }
}

/// The pod's name for logs: its name, else its generateName (pods of a ReplicaSet have no
/// name yet when they are admitted).
fn pod_name(pod: &Pod) -> &str {
    pod.metadata
        .name
        .as_deref()
        .or(pod.metadata.generate_name.as_deref())
        .unwrap_or("")
}

/// The answer as kube-apiserver reads it.
///
/// kube-core's own `Serialize` writes `patch` as a JSON array of numbers (kube-rs issue
/// #1781), while the API documents it as base64 text, as Go encodes `[]byte`; so the fields
/// of kube's response are written here, with `patchType` set exactly when a patch is present.
#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct WireReview<'a> {
    api_version: &'a str,
    kind: &'a str,
    response: WireResponse<'a>,
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct WireResponse<'a> {
    uid: &'a str,
    allowed: bool,
    status: &'a Status,
    #[serde(skip_serializing_if = "Option::is_none")]
    patch_type: Option<&'static str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    warnings: Option<&'a [String]>,
}

/// Serializes `response` in an AdmissionReview of the version the request used.
///
/// The patch goes in last, base64-encoded straight into the body: base64 text never needs
/// JSON escaping, and it is most of an answer's bytes.
pub fn encode(response: &AdmissionResponse) -> Vec<u8> {
    let wire = WireReview {
        api_version: if response.types.api_version.is_empty() {
            API_VERSION
        } else {
            &response.types.api_version
        },
        kind: "AdmissionReview",
        response: WireResponse {
            uid: &response.uid,
            allowed: response.allowed,
            status: &response.result,
            patch_type: response.patch.as_ref().map(|_| "JSONPatch"),
            warnings: response.warnings.as_deref(),
        },
    };
    let patch_len = response
        .patch
        .as_ref()
        .map_or(0, |p| base64_simd::STANDARD.encoded_length(p.len()));
    let mut body = Vec::with_capacity(patch_len + 512);
    serde_json::to_writer(&mut body, &wire).expect("an admission response always serializes");
    if let Some(patch) = &response.patch {
        // Compact JSON: the response and the review both close on the last two bytes.
        body.truncate(body.len() - 2);
        body.extend_from_slice(br#","patch":""#);
        base64_simd::STANDARD.encode_append(patch, &mut body);
        body.extend_from_slice(br#""}}"#);
    }
    body
}

/// A Kubernetes `Status` body for HTTP-level errors that are not about a review (wrong path,
/// wrong method, body too large).
pub fn status_body(code: StatusCode, reason: &str, message: &str) -> Vec<u8> {
    serde_json::to_vec(&serde_json::json!({
        "kind": "Status",
        "apiVersion": "v1",
        "metadata": {},
        "status": "Failure",
        "message": message,
        "reason": reason,
        "code": code.as_u16(),
    }))
    .expect("a JSON value always serializes")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn response(patch: Option<&[u8]>, warnings: Option<Vec<String>>) -> AdmissionResponse {
        let review: AdmissionReview<DynamicObject> = serde_json::from_value(serde_json::json!({
            "apiVersion": API_VERSION,
            "kind": "AdmissionReview",
            "request": {
                "uid": "705ab4f5-6393-11e8-b7cc-42010a800002",
                "kind": {"group": "", "version": "v1", "kind": "Pod"},
                "resource": {"group": "", "version": "v1", "resource": "pods"},
                "operation": "CREATE",
                "userInfo": {},
                "object": {"apiVersion": "v1", "kind": "Pod", "metadata": {}},
            }
        }))
        .expect("a valid review");
        let request: AdmissionRequest<DynamicObject> =
            review.try_into().expect("the review has a request");
        let mut response = AdmissionResponse::from(&request);
        response.patch = patch.map(<[u8]>::to_vec);
        response.warnings = warnings;
        response
    }

    fn decoded(body: &[u8]) -> serde_json::Value {
        serde_json::from_slice(body).expect("the answer is JSON")
    }

    #[test]
    fn a_decoded_review_is_the_review_serde_json_reads_without_the_managed_fields() {
        let body = include_bytes!("../tests/fixtures/admission-review-pod-create.json");
        let plain: AdmissionReview<Pod> = serde_json::from_slice(body).expect("the fixture");
        let plain: AdmissionRequest<Pod> = plain.try_into().expect("a request");
        let mut expected = plain.object.clone().expect("a pod");
        assert!(expected.metadata.managed_fields.is_some());
        expected.metadata.managed_fields = None;
        let decoded = decode(body).expect("a pod review");
        assert_eq!(decoded.object, Some(expected));
        assert_eq!(decoded.uid, plain.uid);
        assert_eq!(decoded.operation, plain.operation);
        assert_eq!(decoded.user_info, plain.user_info);
        assert_eq!(decoded.namespace, plain.namespace);
        assert_eq!(decoded.types, plain.types);
    }

    #[test]
    fn encodes_the_patch_as_base64_text_beside_its_type() {
        let patch = br#"[{"op":"add","path":"/metadata/labels/a\u00e9","value":"\"x\""}]"#;
        let answer = decoded(&encode(&response(Some(patch), Some(vec!["w".into()]))));
        let text = answer["response"]["patch"]
            .as_str()
            .expect("patch is a string");
        assert_eq!(
            base64_simd::STANDARD.decode_to_vec(text).expect("base64"),
            patch
        );
        assert_eq!(answer["response"]["patchType"], "JSONPatch");
        assert_eq!(answer["response"]["warnings"], serde_json::json!(["w"]));
        assert_eq!(
            answer["response"]["uid"],
            "705ab4f5-6393-11e8-b7cc-42010a800002"
        );
        assert_eq!(answer["response"]["allowed"], true);
        assert_eq!(answer["apiVersion"], API_VERSION);
        assert_eq!(answer["kind"], "AdmissionReview");
    }

    #[test]
    fn encodes_no_patch_fields_without_a_patch() {
        let answer = decoded(&encode(&response(None, None)));
        let fields = answer["response"]
            .as_object()
            .expect("response is an object");
        assert!(!fields.contains_key("patch"), "{answer}");
        assert!(!fields.contains_key("patchType"), "{answer}");
        assert!(!fields.contains_key("warnings"), "{answer}");
        assert_eq!(answer["response"]["allowed"], true);
    }

    #[test]
    fn encodes_an_empty_patch_as_empty_text() {
        let answer = decoded(&encode(&response(Some(b""), None)));
        assert_eq!(answer["response"]["patch"], "");
        assert_eq!(answer["response"]["patchType"], "JSONPatch");
    }
}
