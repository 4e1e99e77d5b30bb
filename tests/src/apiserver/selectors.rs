//! `labelSelector` and `fieldSelector` query parameters: parsed as apimachinery's
//! `labels.Parse` and `fields.ParseSelector` read them, matched against an object's labels
//! and its selectable fields.

use std::collections::BTreeMap;

/// One requirement of a label selector.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Requirement {
    Exists(String),
    NotExists(String),
    /// `=`, `==` and `in (...)`.
    In(String, Vec<String>),
    /// `!=` and `notin (...)`: also true when the label is absent.
    NotIn(String, Vec<String>),
    Greater(String, i64),
    Less(String, i64),
}

/// A parsed `labelSelector`; the empty selector matches everything.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct LabelSelector(Vec<Requirement>);

/// Splits on commas outside parentheses (`a in (x,y),b` has two requirements).
fn split_requirements(s: &str) -> Vec<&str> {
    let mut parts = Vec::new();
    let mut depth = 0usize;
    let mut start = 0;
    for (i, c) in s.char_indices() {
        match c {
            '(' => depth += 1,
            ')' => depth = depth.saturating_sub(1),
            ',' if depth == 0 => {
                parts.push(&s[start..i]);
                start = i + 1;
            }
            _ => {}
        }
    }
    parts.push(&s[start..]);
    parts
}

fn check_key(key: &str) -> Result<String, String> {
    let (prefix, name) = match key.split_once('/') {
        Some((p, n)) => (Some(p), n),
        None => (None, key),
    };
    let name_ok = !name.is_empty()
        && name.len() <= 63
        && name
            .bytes()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, b'-' | b'_' | b'.'))
        && name.as_bytes()[0].is_ascii_alphanumeric()
        && name.as_bytes()[name.len() - 1].is_ascii_alphanumeric();
    if name_ok && prefix.is_none_or(super::validate::is_subdomain) {
        Ok(key.to_string())
    } else {
        Err(format!("invalid label key \"{key}\""))
    }
}

fn check_value(value: &str) -> Result<String, String> {
    let value = value.trim();
    let ok = value.is_empty()
        || (value.len() <= 63
            && value
                .bytes()
                .all(|c| c.is_ascii_alphanumeric() || matches!(c, b'-' | b'_' | b'.'))
            && value.as_bytes()[0].is_ascii_alphanumeric()
            && value.as_bytes()[value.len() - 1].is_ascii_alphanumeric());
    if ok {
        Ok(value.to_string())
    } else {
        Err(format!("invalid label value: \"{value}\""))
    }
}

fn parse_requirement(part: &str) -> Result<Requirement, String> {
    let part = part.trim();
    if let Some(key) = part.strip_prefix('!') {
        return Ok(Requirement::NotExists(check_key(key.trim())?));
    }
    if let Some(open) = part.find('(') {
        let close = part
            .rfind(')')
            .filter(|c| *c > open && part[c + 1..].trim().is_empty())
            .ok_or_else(|| format!("found '{part}', expected: ')'"))?;
        let values = part[open + 1..close]
            .split(',')
            .map(check_value)
            .collect::<Result<Vec<_>, _>>()?;
        let head: Vec<&str> = part[..open].split_whitespace().collect();
        return match head.as_slice() {
            [key, "in"] => Ok(Requirement::In(check_key(key)?, values)),
            [key, "notin"] => Ok(Requirement::NotIn(check_key(key)?, values)),
            _ => Err(format!("found '{part}', expected: in, notin")),
        };
    }
    for (op, len) in [("!=", 2), ("==", 2), ("=", 1), (">", 1), ("<", 1)] {
        if let Some(at) = part.find(op) {
            let key = check_key(part[..at].trim())?;
            let value = part[at + len..].trim();
            return match op {
                "!=" => Ok(Requirement::NotIn(key, vec![check_value(value)?])),
                "==" | "=" => Ok(Requirement::In(key, vec![check_value(value)?])),
                _ => {
                    let n: i64 = value
                        .parse()
                        .map_err(|_| format!("for '{op}', '{value}' is not an integer"))?;
                    Ok(if op == ">" {
                        Requirement::Greater(key, n)
                    } else {
                        Requirement::Less(key, n)
                    })
                }
            };
        }
    }
    Ok(Requirement::Exists(check_key(part)?))
}

impl LabelSelector {
    /// Parses a `labelSelector` value; the error is the reason for a 400 answer.
    pub fn parse(s: &str) -> Result<Self, String> {
        if s.trim().is_empty() {
            return Ok(Self::default());
        }
        split_requirements(s)
            .into_iter()
            .map(|p| {
                parse_requirement(p).map_err(|why| format!("unable to parse requirement: {why}"))
            })
            .collect::<Result<Vec<_>, _>>()
            .map(LabelSelector)
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    pub fn matches(&self, labels: &BTreeMap<String, String>) -> bool {
        self.0.iter().all(|r| match r {
            Requirement::Exists(k) => labels.contains_key(k),
            Requirement::NotExists(k) => !labels.contains_key(k),
            Requirement::In(k, vs) => labels.get(k).is_some_and(|v| vs.contains(v)),
            Requirement::NotIn(k, vs) => labels.get(k).is_none_or(|v| !vs.contains(v)),
            Requirement::Greater(k, n) => labels
                .get(k)
                .and_then(|v| v.parse::<i64>().ok())
                .is_some_and(|v| v > *n),
            Requirement::Less(k, n) => labels
                .get(k)
                .and_then(|v| v.parse::<i64>().ok())
                .is_some_and(|v| v < *n),
        })
    }
}

/// A parsed `fieldSelector`: `field=value`, `field==value` and `field!=value` terms.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct FieldSelector(Vec<(String, bool, String)>);

impl FieldSelector {
    /// Parses a `fieldSelector` value, accepting only the fields in `supported`.
    pub fn parse(s: &str, supported: &[&str]) -> Result<Self, String> {
        let mut terms = Vec::new();
        for term in s.split(',').map(str::trim).filter(|t| !t.is_empty()) {
            let (field, equal, value) = if let Some((f, v)) = term.split_once("!=") {
                (f, false, v)
            } else if let Some((f, v)) = term.split_once("==") {
                (f, true, v)
            } else if let Some((f, v)) = term.split_once('=') {
                (f, true, v)
            } else {
                return Err(format!(
                    "invalid selector: '{s}'; can't understand '{term}'"
                ));
            };
            let field = field.trim();
            if !supported.contains(&field) {
                return Err(format!("field label not supported: {field}"));
            }
            terms.push((field.to_string(), equal, value.trim().to_string()));
        }
        Ok(FieldSelector(terms))
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// `fields` holds every selectable field of the object (absent ones as "").
    pub fn matches(&self, fields: &BTreeMap<String, String>) -> bool {
        self.0.iter().all(|(field, equal, value)| {
            let actual = fields.get(field).map(String::as_str).unwrap_or_default();
            (actual == value) == *equal
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn labels(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    fn matches(selector: &str, pairs: &[(&str, &str)]) -> bool {
        LabelSelector::parse(selector)
            .expect("valid selector")
            .matches(&labels(pairs))
    }

    #[test]
    fn equality_requirements() {
        assert!(matches("app=game", &[("app", "game")]));
        assert!(matches("app==game", &[("app", "game")]));
        assert!(!matches("app=game", &[("app", "db")]));
        assert!(matches("app!=game", &[("app", "db")]));
        assert!(matches("app!=game", &[]), "!= holds without the label");
        assert!(matches("", &[]));
    }

    #[test]
    fn set_requirements() {
        let rs = [("tier", "b"), ("testId", "t1")];
        assert!(matches("tier in (a, b),testId", &rs));
        assert!(!matches("tier notin (a,b)", &rs));
        assert!(matches("tier notin (a,b)", &[]));
        assert!(matches("!missing,testId", &rs));
        assert!(!matches("!testId", &rs));
        assert!(matches("n>3,n<5", &[("n", "4")]));
    }

    #[test]
    fn malformed_selectors_are_rejected() {
        for bad in [
            "tier in (a",
            "bad key=x",
            "a=b c",
            "tier between (a)",
            "n>x",
        ] {
            assert!(LabelSelector::parse(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn field_selectors_accept_only_known_fields() {
        let known = ["metadata.name", "spec.nodeName"];
        let selector =
            FieldSelector::parse("metadata.name=a,spec.nodeName!=n1", &known).expect("valid");
        assert!(selector.matches(&labels(&[("metadata.name", "a"), ("spec.nodeName", "n2")])));
        assert!(!selector.matches(&labels(&[("metadata.name", "a"), ("spec.nodeName", "n1")])));
        let unscheduled = FieldSelector::parse("spec.nodeName=", &known).expect("valid");
        assert!(unscheduled.matches(&labels(&[])));
        assert_eq!(
            FieldSelector::parse("status.phase=Running", &known),
            Err("field label not supported: status.phase".to_string())
        );
    }
}
