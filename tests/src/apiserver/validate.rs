//! Object metadata validation as apimachinery does it: names are DNS-1123 subdomains,
//! label keys are an optional DNS-1123 subdomain prefix and a qualified name, label values
//! are qualified names or empty. Messages are apimachinery's, so clients see the same text.

use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use serde_json::{Value, json};

use super::resources::ResourceType;
use super::status::{ApiError, Cause};

const SUBDOMAIN_MESSAGE: &str = "a lowercase RFC 1123 subdomain must consist of lower case alphanumeric characters, '-' or '.', and must start and end with an alphanumeric character (e.g. 'example.com', regex used for validation is '[a-z0-9]([-a-z0-9]*[a-z0-9])?(\\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*')";
const NAME_PART_MESSAGE: &str = "name part must consist of alphanumeric characters, '-', '_' or '.', and must start and end with an alphanumeric character (e.g. 'MyName',  or 'my.name',  or '123-abc', regex used for validation is '([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9]')";
const LABEL_VALUE_MESSAGE: &str = "a valid label must be an empty string or consist of alphanumeric characters, '-', '_' or '.', and must start and end with an alphanumeric character (e.g. 'MyValue',  or 'my_value',  or '12345', regex used for validation is '(([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9])?')";

/// Whether `s` is a DNS-1123 subdomain (at most 253 characters).
pub fn is_subdomain(s: &str) -> bool {
    let label_ok = |l: &str| {
        let b = l.as_bytes();
        !b.is_empty()
            && b.iter()
                .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || *c == b'-')
            && b[0] != b'-'
            && b[b.len() - 1] != b'-'
    };
    s.len() <= 253 && s.split('.').all(label_ok)
}

/// Whether `s` is a qualified name's name part (at most 63 characters).
fn is_name_part(s: &str) -> bool {
    let b = s.as_bytes();
    !b.is_empty()
        && b.len() <= 63
        && b.iter()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, b'-' | b'_' | b'.'))
        && b[0].is_ascii_alphanumeric()
        && b[b.len() - 1].is_ascii_alphanumeric()
}

fn invalid(field: &str, value: &str, why: &str) -> Cause {
    Cause {
        reason: "FieldValueInvalid",
        field: field.to_string(),
        message: format!("Invalid value: \"{value}\": {why}"),
    }
}

fn name_causes(name: &str) -> Vec<Cause> {
    if is_subdomain(name) {
        Vec::new()
    } else if name.len() > 253 {
        vec![invalid(
            "metadata.name",
            name,
            "must be no more than 253 characters",
        )]
    } else {
        vec![invalid("metadata.name", name, SUBDOMAIN_MESSAGE)]
    }
}

fn label_causes(labels: Option<&Value>) -> Vec<Cause> {
    let Some(labels) = labels else {
        return Vec::new();
    };
    let Some(labels) = labels.as_object() else {
        return vec![invalid(
            "metadata.labels",
            &labels.to_string(),
            "must be a map of strings",
        )];
    };
    let mut causes = Vec::new();
    for (key, value) in labels {
        let (prefix, name) = match key.split_once('/') {
            Some((prefix, name)) => (Some(prefix), name),
            None => (None, key.as_str()),
        };
        if let Some(prefix) = prefix
            && !is_subdomain(prefix)
        {
            causes.push(invalid(
                "metadata.labels",
                key,
                &format!("prefix part {SUBDOMAIN_MESSAGE}"),
            ));
        }
        if !is_name_part(name) {
            causes.push(invalid("metadata.labels", key, NAME_PART_MESSAGE));
        }
        match value.as_str() {
            Some(v) if v.is_empty() || is_name_part(v) => {}
            Some(v) if v.len() > 63 => causes.push(invalid(
                "metadata.labels",
                v,
                "must be no more than 63 characters",
            )),
            Some(v) => causes.push(invalid("metadata.labels", v, LABEL_VALUE_MESSAGE)),
            None => causes.push(invalid(
                "metadata.labels",
                &value.to_string(),
                "label values must be strings",
            )),
        }
    }
    causes
}

/// What is wrong with an object's name and labels, empty when nothing is.
pub fn metadata_causes(object: &Value) -> Vec<Cause> {
    let metadata = &object["metadata"];
    let mut causes = match metadata["name"].as_str() {
        Some(name) => name_causes(name),
        None => vec![Cause {
            reason: "FieldValueRequired",
            field: "metadata.name".to_string(),
            message: "Required value: name or generateName is required".to_string(),
        }],
    };
    causes.extend(label_causes(metadata.get("labels")));
    causes
}

/// The real pod validation's answer to a spec change it does not allow.
pub fn pod_update_forbidden() -> Cause {
    Cause {
        reason: "FieldValueForbidden",
        field: "spec".to_string(),
        message: "Forbidden: pod updates may not change fields other than `spec.containers[*].image`,`spec.initContainers[*].image`,`spec.activeDeadlineSeconds`,`spec.tolerations` (only additions to existing tolerations),`spec.terminationGracePeriodSeconds` (allow it to be set to 1 if it was previously negative)".to_string(),
    }
}

const CONFIG_KEY_MESSAGE: &str = "a valid config key must consist of alphanumeric characters, '-', '_' or '.' (e.g. 'key.name',  or 'KEY_NAME',  or 'key-name', regex used for validation is '[-._a-zA-Z0-9]+')";

/// A Secret as the real server stores it: `stringData` folded into `data` (base64) and
/// dropped, `data` values checked as base64 (a bad one fails decoding: 400), keys checked,
/// `type` defaulted to `Opaque`, and `kubernetes.io/tls` Secrets holding `tls.crt` and
/// `tls.key`.
pub fn normalize_secret(r: &ResourceType, value: &mut Value) -> Result<(), ApiError> {
    let name = value["metadata"]["name"]
        .as_str()
        .unwrap_or_default()
        .to_string();
    let undecodable = |why: String| {
        ApiError::bad_request(format!(
            "Secret in version \"v1\" cannot be handled as a Secret: {why}"
        ))
    };
    if value
        .get("data")
        .is_some_and(|d| !d.is_null() && !d.is_object())
    {
        return Err(undecodable(
            "data must be a map of base64 strings".to_string(),
        ));
    }
    if let Some(data) = value.get("data").and_then(Value::as_object) {
        for encoded in data.values() {
            let text = encoded
                .as_str()
                .ok_or_else(|| undecodable("data values must be base64 strings".to_string()))?;
            if let Err(e) = STANDARD.decode(text) {
                let at = match e {
                    base64::DecodeError::InvalidByte(at, _)
                    | base64::DecodeError::InvalidLastSymbol(at, _) => at,
                    _ => text.len(),
                };
                return Err(undecodable(format!(
                    "illegal base64 data at input byte {at}"
                )));
            }
        }
    }
    if let Some(plain) = value.as_object_mut().and_then(|m| m.remove("stringData")) {
        let plain = plain
            .as_object()
            .ok_or_else(|| undecodable("stringData must be a map of strings".to_string()))?
            .clone();
        if !value["data"].is_object() {
            value["data"] = json!({});
        }
        for (key, text) in plain {
            let text = text
                .as_str()
                .ok_or_else(|| undecodable("stringData values must be strings".to_string()))?;
            value["data"][key] = json!(STANDARD.encode(text));
        }
    }
    if value["type"].as_str().is_none_or(str::is_empty) {
        value["type"] = json!("Opaque");
    }
    let mut causes = Vec::new();
    let keys: Vec<String> = value["data"]
        .as_object()
        .map(|d| d.keys().cloned().collect())
        .unwrap_or_default();
    for key in &keys {
        let ok = !key.is_empty()
            && key.len() <= 253
            && key
                .bytes()
                .all(|c| c.is_ascii_alphanumeric() || matches!(c, b'-' | b'_' | b'.'));
        if !ok {
            causes.push(invalid(&format!("data[{key}]"), key, CONFIG_KEY_MESSAGE));
        }
    }
    if value["type"] == "kubernetes.io/tls" {
        for required in ["tls.crt", "tls.key"] {
            if !keys.iter().any(|k| k == required) {
                causes.push(Cause {
                    reason: "FieldValueRequired",
                    field: format!("data[{required}]"),
                    message: "Required value".to_string(),
                });
            }
        }
    }
    if causes.is_empty() {
        Ok(())
    } else {
        Err(ApiError::invalid(r, &name, causes))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn subdomains_are_lowercase_dotted_labels() {
        assert!(is_subdomain("game-7d9f.example"));
        assert!(is_subdomain("a"));
        for bad in [
            "",
            "Upper",
            "-lead",
            "trail-",
            "a..b",
            "under_score",
            "a.",
            &"x".repeat(254),
        ] {
            assert!(!is_subdomain(bad), "{bad}");
        }
    }

    #[test]
    fn a_bad_name_says_what_a_subdomain_is() {
        let causes = metadata_causes(&json!({"metadata": {"name": "Bad_Name"}}));
        assert_eq!(causes.len(), 1);
        assert_eq!(causes[0].field, "metadata.name");
        assert!(
            causes[0]
                .message
                .starts_with("Invalid value: \"Bad_Name\": a lowercase RFC 1123 subdomain"),
            "{}",
            causes[0].message
        );
    }

    #[test]
    fn labels_are_checked_key_and_value() {
        let ok = json!({"metadata": {"name": "a", "labels": {"example.com/test-id": "T_1.x", "empty": ""}}});
        assert_eq!(metadata_causes(&ok), Vec::new());
        let bad = json!({"metadata": {"name": "a", "labels": {"bad key": "v", "k": "-v", "Up.Per/k": "v"}}});
        let causes = metadata_causes(&bad);
        let fields: Vec<&str> = causes
            .iter()
            .map(|c| c.message.split(':').nth(1).unwrap_or_default().trim())
            .map(|v| v.trim_matches('"'))
            .collect();
        assert_eq!(fields, ["Up.Per/k", "bad key", "-v"]);
    }

    fn secrets() -> &'static ResourceType {
        use crate::apiserver::resources::{RESOURCES, by_kind};
        &RESOURCES[by_kind("v1", "Secret").expect("secrets")]
    }

    #[test]
    fn string_data_is_stored_as_base64_data() {
        let mut secret = json!({"metadata": {"name": "s"}, "data": {"a": "eA=="},
                                "stringData": {"b": "hello"}});
        normalize_secret(secrets(), &mut secret).expect("valid");
        assert_eq!(secret["data"], json!({"a": "eA==", "b": "aGVsbG8="}));
        assert!(secret.get("stringData").is_none());
        assert_eq!(secret["type"], "Opaque");
    }

    #[test]
    fn bad_base64_and_incomplete_tls_secrets_are_refused() {
        let mut bad = json!({"metadata": {"name": "s"}, "data": {"a": "not base64!"}});
        let error = normalize_secret(secrets(), &mut bad).expect_err("refused");
        assert_eq!(error.code, 400);
        assert!(
            error
                .message
                .contains("illegal base64 data at input byte 3"),
            "{}",
            error.message
        );
        let mut tls = json!({"metadata": {"name": "s"}, "type": "kubernetes.io/tls",
                             "data": {"tls.crt": "eA=="}});
        let error = normalize_secret(secrets(), &mut tls).expect_err("refused");
        assert_eq!(error.code, 422);
        assert_eq!(
            error.message,
            "Secret \"s\" is invalid: data[tls.key]: Required value"
        );
    }

    #[test]
    fn a_missing_name_is_required() {
        let causes = metadata_causes(&json!({"metadata": {}}));
        assert_eq!(causes[0].reason, "FieldValueRequired");
    }
}
