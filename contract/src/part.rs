//! What makes one test out of many pods (docs/coordination.md): the `testId` label split into
//! test id and part, how slots are claimed, when agents start, the quorum, and their
//! defaults. The webhook checks the annotations with these parsers; the supervisor parses the
//! variables they become with the same ones.

use std::fmt;
use std::str::FromStr;
use std::time::Duration;

use jiff::Timestamp;

use crate::value::{Invalid, hint};

/// `start-quorum`'s default: every machine.
pub const DEFAULT_QUORUM: Quorum = Quorum(100);
/// `start-timeout`'s default, as written in `WAVE_START_TIMEOUT`.
pub const DEFAULT_START_TIMEOUT: &str = "10m";
/// [`DEFAULT_START_TIMEOUT`] as a duration.
pub const DEFAULT_START_TIMEOUT_DURATION: Duration = Duration::from_secs(600);

/// A `testId` label split at its first `--`: `TEST_ID` and the test part (may be empty).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TestLabel<'a> {
    pub test_id: &'a str,
    pub part: &'a str,
}

impl<'a> TestLabel<'a> {
    /// Splits and checks a label value; the test id becomes part of S3 keys and Lease names.
    pub fn parse(label: &'a str) -> Result<Self, Invalid> {
        let (test_id, part) = label.split_once("--").unwrap_or((label, ""));
        if test_id.is_empty() {
            return Err(Invalid::new(
                "the test id (the text before the first \"--\") is empty",
            ));
        }
        if !test_id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'))
        {
            return Err(Invalid(format!(
                "test id {test_id:?} has characters outside [A-Za-z0-9._-] (it becomes part of S3 keys)"
            )));
        }
        Ok(Self { test_id, part })
    }
}

/// How a pod claims its slot (`waveloadtest.io/coordination`, `WAVE_COORDINATION`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Coordination {
    /// One Lease per slot in the pod's namespace.
    Kubernetes,
    /// No slot: agents get no machine index or player range.
    Off,
    /// Slots are files created exclusively in this folder (`file:///dir/`, local runs); the
    /// URL as written.
    File(String),
}

impl Coordination {
    /// Accepted forms, for error messages.
    pub const EXPECTED: &'static str = "kubernetes, off or file:///dir/";

    /// The folder of a `file://` coordination.
    pub fn folder(&self) -> Option<&str> {
        match self {
            Self::File(url) => url.strip_prefix("file://"),
            _ => None,
        }
    }
}

impl FromStr for Coordination {
    type Err = Invalid;

    fn from_str(value: &str) -> Result<Self, Invalid> {
        match value {
            "kubernetes" => Ok(Self::Kubernetes),
            "off" => Ok(Self::Off),
            url if url.starts_with("file://") => {
                if !url.starts_with("file:///") || !url.ends_with('/') || url.len() < 9 {
                    return Err(Invalid(format!(
                        "{url:?} is not a folder URL (expected file:///dir/, an absolute path ending with /)"
                    )));
                }
                Ok(Self::File(url.to_string()))
            }
            other => Err(Invalid(format!(
                "unknown coordination {other:?} (expected {}{})",
                Self::EXPECTED,
                hint(other, ["kubernetes", "off"])
            ))),
        }
    }
}

impl fmt::Display for Coordination {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Kubernetes => f.write_str("kubernetes"),
            Self::Off => f.write_str("off"),
            Self::File(url) => f.write_str(url),
        }
    }
}

/// When a pod starts its agents (`waveloadtest.io/start`, `WAVE_START`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Start {
    /// As soon as the script is ready.
    Immediately,
    /// At the start-at the part's supervisors agree on.
    Together,
    /// At this time.
    At(Timestamp),
}

impl Start {
    /// Accepted forms, for error messages.
    pub const EXPECTED: &'static str =
        "immediately, together or an RFC 3339 time such as 2026-12-02T18:00:00Z";
}

impl FromStr for Start {
    type Err = Invalid;

    fn from_str(value: &str) -> Result<Self, Invalid> {
        match value {
            "immediately" => Ok(Self::Immediately),
            "together" => Ok(Self::Together),
            other => other.parse::<Timestamp>().map(Self::At).map_err(|_| {
                Invalid(format!(
                    "{other:?} is not a start (expected {}{})",
                    Self::EXPECTED,
                    hint(other, ["immediately", "together"])
                ))
            }),
        }
    }
}

impl fmt::Display for Start {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Immediately => f.write_str("immediately"),
            Self::Together => f.write_str("together"),
            // UTC with milliseconds, the form agents get in WAVE_START_AT.
            Self::At(at) => write!(f, "{}", at.strftime("%Y-%m-%dT%H:%M:%S%.3fZ")),
        }
    }
}

/// `start-quorum`, `WAVE_START_QUORUM`: a percentage of the machines, `1%` to `100%`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Quorum(pub u32);

impl Quorum {
    /// Ready machines needed out of `machines`: the percentage rounded up, at least one.
    pub fn of(self, machines: u32) -> u32 {
        (u64::from(machines) * u64::from(self.0))
            .div_ceil(100)
            .max(1)
            .try_into()
            .unwrap_or(u32::MAX)
    }
}

impl FromStr for Quorum {
    type Err = Invalid;

    fn from_str(value: &str) -> Result<Self, Invalid> {
        let number = value
            .strip_suffix('%')
            .filter(|n| !n.is_empty() && n.len() <= 3 && n.bytes().all(|b| b.is_ascii_digit()));
        match number.and_then(|n| n.parse::<u32>().ok()) {
            Some(p) if (1..=100).contains(&p) => Ok(Self(p)),
            _ => Err(Invalid(format!(
                "{value:?} is not a quorum (expected a percentage of the machines from 1% to 100%, e.g. 90%)"
            ))),
        }
    }
}

impl fmt::Display for Quorum {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}%", self.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_label_splits_at_the_first_double_dash() {
        let l = TestLabel::parse("2e9103ae--p1--eu").expect("valid");
        assert_eq!((l.test_id, l.part), ("2e9103ae", "p1--eu"));
        let l = TestLabel::parse("t1").expect("valid");
        assert_eq!((l.test_id, l.part), ("t1", ""));
    }

    #[test]
    fn a_label_with_an_empty_or_unsafe_test_id_is_refused() {
        assert!(
            TestLabel::parse("--p1")
                .expect_err("empty")
                .0
                .contains("empty")
        );
        assert!(
            TestLabel::parse("a/b")
                .expect_err("slash")
                .0
                .contains("[A-Za-z0-9._-]")
        );
    }

    #[test]
    fn coordination_folders_must_be_absolute_and_end_with_a_slash() {
        assert_eq!("kubernetes".parse(), Ok(Coordination::Kubernetes));
        assert_eq!("off".parse(), Ok(Coordination::Off));
        let file: Coordination = "file:///var/wave/".parse().expect("valid");
        assert_eq!(file.folder(), Some("/var/wave/"));
        for bad in ["file:///var/wave", "file://var/wave/", "file:///"] {
            let err = bad.parse::<Coordination>().expect_err(bad);
            assert!(err.0.contains("file:///dir/"), "{err}");
        }
        let err = "kubernets".parse::<Coordination>().expect_err("typo");
        assert!(err.0.ends_with("; did you mean kubernetes?)"), "{err}");
    }

    #[test]
    fn starts_parse_and_print_back_the_same() {
        for text in ["immediately", "together", "2026-12-02T18:00:00.000Z"] {
            let start: Start = text.parse().expect(text);
            assert_eq!(start.to_string(), text);
        }
        let offset: Start = "2026-12-02T19:00:00+01:00".parse().expect("offset");
        assert_eq!(offset.to_string(), "2026-12-02T18:00:00.000Z");
        let err = "togther".parse::<Start>().expect_err("typo");
        assert!(err.0.contains("did you mean together?"), "{err}");
    }

    #[test]
    fn quorum_is_a_percentage_from_one_to_a_hundred() {
        assert_eq!("90%".parse(), Ok(Quorum(90)));
        assert_eq!(Quorum(90).to_string(), "90%");
        for bad in ["0%", "101%", "90", "%", "+5%", "0090%", "9 0%"] {
            assert!(bad.parse::<Quorum>().is_err(), "{bad:?} must be refused");
        }
    }

    #[test]
    fn a_quorum_of_machines_rounds_up_and_is_at_least_one() {
        assert_eq!(Quorum(100).of(480), 480);
        assert_eq!(Quorum(90).of(50), 45);
        assert_eq!(Quorum(95).of(3), 3);
        assert_eq!(Quorum(1).of(3), 1);
        assert_eq!(Quorum(50).of(0), 1);
    }

    #[test]
    fn the_default_start_timeout_text_and_duration_agree() {
        assert_eq!(
            crate::value::positive_duration(DEFAULT_START_TIMEOUT),
            Ok(DEFAULT_START_TIMEOUT_DURATION)
        );
    }
}
