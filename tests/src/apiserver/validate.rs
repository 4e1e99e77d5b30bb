//! Object metadata validation as apimachinery does it: names are DNS-1123 subdomains,
//! label keys are an optional DNS-1123 subdomain prefix and a qualified name, label values
//! are qualified names or empty. Messages are apimachinery's, so clients see the same text.

use serde_json::Value;

use super::status::Cause;

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

    #[test]
    fn a_missing_name_is_required() {
        let causes = metadata_causes(&json!({"metadata": {}}));
        assert_eq!(causes[0].reason, "FieldValueRequired");
    }
}
