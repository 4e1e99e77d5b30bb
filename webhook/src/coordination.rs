//! The settings that make one test out of many pods (SPEC 5): how slots are claimed
//! (`waveloadtest.io/coordination`), when agents start (`start`, `start-quorum`,
//! `start-timeout`), where a part's players begin (`player-offset`), and the machine count
//! M the webhook derives for `WAVE_MACHINES`. Pure: parsing and arithmetic only.

use std::fmt;
use std::time::Duration;

use k8s_openapi::jiff::Timestamp;
use serde::Deserialize;

use crate::annotations::{Denial, deny_annotation};
use crate::catalog::closest;
use crate::mutate::OwnerReplicas;

/// How a pod claims its slot (`WAVE_COORDINATION`).
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(try_from = "String")]
pub enum Coordination {
    /// One Lease per slot in the pod's namespace.
    Kubernetes,
    /// No slot: agents get no machine index or player range.
    Off,
    /// Slots are files created exclusively in this folder (`file:///dir/`, local runs).
    File(String),
}

impl Coordination {
    /// Accepted forms, for error messages.
    pub const EXPECTED: &'static str = "kubernetes, off or file:///dir/";

    /// Parses an annotation or config value; the error says what is wrong with it.
    pub fn parse(value: &str) -> Result<Self, String> {
        match value {
            "kubernetes" => Ok(Self::Kubernetes),
            "off" => Ok(Self::Off),
            url if url.starts_with("file://") => {
                if !url.starts_with("file:///") || !url.ends_with('/') || url.len() < 9 {
                    return Err(format!(
                        "{url:?} is not a folder URL (expected file:///dir/, an absolute path ending with /)"
                    ));
                }
                Ok(Self::File(url.to_string()))
            }
            other => {
                let hint = closest(other, ["kubernetes", "off"])
                    .map(|s| format!("; did you mean {s}?"))
                    .unwrap_or_default();
                Err(format!(
                    "unknown coordination {other:?} (expected {}{hint})",
                    Self::EXPECTED
                ))
            }
        }
    }
}

impl TryFrom<String> for Coordination {
    type Error = String;

    fn try_from(value: String) -> Result<Self, String> {
        Self::parse(&value)
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

/// When a pod starts its agents (`WAVE_START`).
#[derive(Debug, Clone, PartialEq, Eq)]
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

    fn parse(value: &str) -> Result<Self, Denial> {
        match value {
            "immediately" => Ok(Self::Immediately),
            "together" => Ok(Self::Together),
            other => other.parse::<Timestamp>().map(Self::At).map_err(|_| {
                let hint = closest(other, ["immediately", "together"])
                    .map(|s| format!("; did you mean {s}?"))
                    .unwrap_or_default();
                deny_annotation(
                    "start",
                    format!(
                        "{other:?} is not a start (expected {}{hint})",
                        Self::EXPECTED
                    ),
                )
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

/// The SPEC 5 settings of a pod, checked.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PartSettings {
    pub coordination: Coordination,
    pub start: Start,
    /// Percent of M (1–100) that must be ready before a `together` start.
    pub start_quorum: u32,
    /// How long a `together` start waits for the quorum, as written (e.g. `10m`).
    pub start_timeout: String,
    /// First player number of this test part.
    pub player_offset: u64,
}

/// The raw annotation values this module reads.
#[derive(Debug, Default)]
pub struct RawPart<'a> {
    pub coordination: Option<&'a str>,
    pub start: Option<&'a str>,
    pub start_quorum: Option<&'a str>,
    pub start_timeout: Option<&'a str>,
    pub player_offset: Option<&'a str>,
}

impl PartSettings {
    /// Checks the annotations, with `default_coordination` from the webhook config.
    pub fn read(raw: &RawPart<'_>, default_coordination: &Coordination) -> Result<Self, Denial> {
        let coordination = match raw.coordination {
            Some(v) => Coordination::parse(v).map_err(|p| deny_annotation("coordination", p))?,
            None => default_coordination.clone(),
        };
        let start = raw.start.map_or(Ok(Start::Immediately), Start::parse)?;
        let start_quorum = match raw.start_quorum {
            Some(v) => quorum(v)?,
            None => 100,
        };
        let start_timeout = match raw.start_timeout {
            Some(v) => timeout(v)?,
            None => "10m".to_string(),
        };
        let player_offset = match raw.player_offset {
            Some(v) if !v.is_empty() && v.bytes().all(|b| b.is_ascii_digit()) => v
                .parse()
                .map_err(|_| deny_annotation("player-offset", format!("{v} is too large")))?,
            Some(v) => {
                return Err(deny_annotation(
                    "player-offset",
                    format!("{v:?} is not a player number (a decimal integer, 0 or more)"),
                ));
            }
            None => 0,
        };
        Ok(Self {
            coordination,
            start,
            start_quorum,
            start_timeout,
            player_offset,
        })
    }
}

/// `start-quorum`: a percentage of M, `1%` to `100%`.
fn quorum(value: &str) -> Result<u32, Denial> {
    let number = value
        .strip_suffix('%')
        .filter(|n| !n.is_empty() && n.len() <= 3 && n.bytes().all(|b| b.is_ascii_digit()));
    match number.and_then(|n| n.parse::<u32>().ok()) {
        Some(p) if (1..=100).contains(&p) => Ok(p),
        _ => Err(deny_annotation(
            "start-quorum",
            format!(
                "{value:?} is not a quorum (expected a percentage of the machines from 1% to 100%, e.g. 90%)"
            ),
        )),
    }
}

/// `start-timeout`: a positive duration such as `90s` or `10m`.
fn timeout(value: &str) -> Result<String, Denial> {
    match humantime::parse_duration(value) {
        Ok(d) if d > Duration::ZERO => Ok(value.to_string()),
        _ => Err(deny_annotation(
            "start-timeout",
            format!(
                "{value:?} is not a duration (expected a positive duration such as 90s, 10m or 1h)"
            ),
        )),
    }
}

/// `WAVE_MACHINES`: the owner's replicas; with no owner (or none that can be read, or one
/// scaled to 0 while its pods still arrive) ⌈total-players ÷ (agents × players-per-agent)⌉.
/// `total_players` is the annotated or derived value; a warning says when M was derived from
/// it because the owner could not be read.
pub fn machines(
    replicas: &OwnerReplicas,
    total_players: u64,
    agents: u32,
    players_per_agent: u32,
) -> (u64, Option<String>) {
    let per_machine = u64::from(agents) * u64::from(players_per_agent);
    let derived = total_players.div_ceil(per_machine.max(1)).max(1);
    match replicas {
        OwnerReplicas::Known(r) if *r > 0 => (u64::from(*r), None),
        OwnerReplicas::Unavailable(why) => (
            derived,
            Some(format!(
                "WAVE_MACHINES={derived} is derived from total-players because the owner's replicas could not be read: {why}"
            )),
        ),
        _ => (derived, None),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn read(pairs: &[(&str, &str)]) -> Result<PartSettings, String> {
        let mut raw = RawPart::default();
        for &(name, value) in pairs {
            let slot = match name {
                "coordination" => &mut raw.coordination,
                "start" => &mut raw.start,
                "start-quorum" => &mut raw.start_quorum,
                "start-timeout" => &mut raw.start_timeout,
                "player-offset" => &mut raw.player_offset,
                other => panic!("not a part annotation: {other}"),
            };
            *slot = Some(value);
        }
        PartSettings::read(&raw, &Coordination::Kubernetes).map_err(|d| d.to_string())
    }

    #[test]
    fn defaults_are_kubernetes_immediately_full_quorum_ten_minutes_offset_zero() {
        let s = read(&[]).expect("defaults");
        assert_eq!(s.coordination, Coordination::Kubernetes);
        assert_eq!(s.start, Start::Immediately);
        assert_eq!(s.start_quorum, 100);
        assert_eq!(s.start_timeout, "10m");
        assert_eq!(s.player_offset, 0);
    }

    #[test]
    fn reads_every_accepted_form() {
        let s = read(&[
            ("coordination", "file:///tmp/slots/"),
            ("start", "2026-12-02T19:00:00+01:00"),
            ("start-quorum", "90%"),
            ("start-timeout", "90s"),
            ("player-offset", "480000"),
        ])
        .expect("valid");
        assert_eq!(
            s.coordination,
            Coordination::File("file:///tmp/slots/".into())
        );
        assert_eq!(s.start.to_string(), "2026-12-02T18:00:00.000Z");
        assert_eq!(s.start_quorum, 90);
        assert_eq!(s.start_timeout, "90s");
        assert_eq!(s.player_offset, 480_000);
        assert_eq!(
            read(&[("coordination", "off"), ("start", "together")])
                .expect("valid")
                .start,
            Start::Together
        );
    }

    #[test]
    fn denies_a_start_that_is_not_a_time_naming_the_accepted_forms() {
        assert_eq!(
            read(&[("start", "tomorow")]).expect_err("invalid"),
            "waveloadtest.io/start: \"tomorow\" is not a start (expected immediately, together or an RFC 3339 time such as 2026-12-02T18:00:00Z)"
        );
        let msg = read(&[("start", "togther")]).expect_err("invalid");
        assert!(msg.ends_with("; did you mean together?)"), "{msg}");
    }

    #[test]
    fn denies_bad_coordination_quorum_timeout_and_offset() {
        for (name, value, problem) in [
            (
                "coordination",
                "kubernets",
                "unknown coordination \"kubernets\" (expected kubernetes, off or file:///dir/; did you mean kubernetes?)",
            ),
            (
                "coordination",
                "file://slots/",
                "\"file://slots/\" is not a folder URL (expected file:///dir/, an absolute path ending with /)",
            ),
            (
                "coordination",
                "file:///tmp/slots",
                "\"file:///tmp/slots\" is not a folder URL (expected file:///dir/, an absolute path ending with /)",
            ),
            (
                "start-quorum",
                "90",
                "\"90\" is not a quorum (expected a percentage of the machines from 1% to 100%, e.g. 90%)",
            ),
            (
                "start-quorum",
                "0%",
                "\"0%\" is not a quorum (expected a percentage of the machines from 1% to 100%, e.g. 90%)",
            ),
            (
                "start-quorum",
                "101%",
                "\"101%\" is not a quorum (expected a percentage of the machines from 1% to 100%, e.g. 90%)",
            ),
            (
                "start-timeout",
                "10",
                "\"10\" is not a duration (expected a positive duration such as 90s, 10m or 1h)",
            ),
            (
                "start-timeout",
                "0s",
                "\"0s\" is not a duration (expected a positive duration such as 90s, 10m or 1h)",
            ),
            (
                "player-offset",
                "-1",
                "\"-1\" is not a player number (a decimal integer, 0 or more)",
            ),
        ] {
            assert_eq!(
                read(&[(name, value)]).expect_err(value),
                format!("waveloadtest.io/{name}: {problem}")
            );
        }
    }

    #[test]
    fn machines_are_the_owners_replicas_else_derived_from_total_players() {
        assert_eq!(
            machines(&OwnerReplicas::Known(480), 1, 10, 100),
            (480, None)
        );
        assert_eq!(
            machines(&OwnerReplicas::NoOwner, 480_000, 10, 100),
            (480, None)
        );
        assert_eq!(
            machines(&OwnerReplicas::NoOwner, 480_001, 10, 100),
            (481, None)
        );
        assert_eq!(machines(&OwnerReplicas::NoOwner, 5, 10, 100), (1, None));
        assert_eq!(machines(&OwnerReplicas::Known(0), 3000, 10, 100), (3, None));
        let (m, warning) = machines(&OwnerReplicas::Unavailable("down".into()), 3000, 10, 100);
        assert_eq!(m, 3);
        assert!(
            warning
                .expect("a warning")
                .ends_with("could not be read: down")
        );
    }
}
