//! The settings that make one test out of many pods (docs/coordination.md): how slots are
//! claimed (`waveloadtest.io/coordination`), when agents start (`start`, `start-quorum`,
//! `start-timeout`), where a part's players begin (`player-offset`), and the part's totals:
//! `TOTAL_PLAYERS` and the machine count M for `WAVE_MACHINES`, from the owner's replicas.
//! Pure: parsing (with the shared parsers of `wave_contract::part`) and arithmetic only.

use wave_contract::part::{Coordination, DEFAULT_QUORUM, DEFAULT_START_TIMEOUT, Quorum, Start};
use wave_contract::value::{non_negative, positive_duration};
use wave_contract::{Annotation, Invalid};

use crate::denial::{Denial, deny};

/// What the server knows about the replicas of the pod's owner (for `TOTAL_PLAYERS`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum OwnerReplicas {
    /// Replicas of the owning Deployment (or ReplicaSet when it has no Deployment).
    Known(u32),
    /// The pod has no ReplicaSet or Deployment owner.
    NoOwner,
    /// The owner could not be read; the text says why.
    Unavailable(String),
}

/// The coordination and start settings of a pod, checked.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PartSettings {
    pub coordination: Coordination,
    pub start: Start,
    /// Share of M that must be ready before a `together` start.
    pub start_quorum: Quorum,
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

/// `value` parsed, or a denial naming `annotation`.
fn read<T>(
    annotation: Annotation,
    value: &str,
    parse: impl FnOnce(&str) -> Result<T, Invalid>,
) -> Result<T, Denial> {
    parse(value).map_err(|e| deny(annotation, e.0))
}

impl PartSettings {
    /// Checks the annotations, with `default_coordination` from the webhook config.
    pub fn read(raw: &RawPart<'_>, default_coordination: &Coordination) -> Result<Self, Denial> {
        let coordination = match raw.coordination {
            Some(v) => read(Annotation::Coordination, v, str::parse)?,
            None => default_coordination.clone(),
        };
        let start = match raw.start {
            Some(v) => read(Annotation::Start, v, str::parse)?,
            None => Start::Immediately,
        };
        let start_quorum = match raw.start_quorum {
            Some(v) => read(Annotation::StartQuorum, v, str::parse)?,
            None => DEFAULT_QUORUM,
        };
        let start_timeout = match raw.start_timeout {
            Some(v) => {
                read(Annotation::StartTimeout, v, positive_duration).map(|_| v.to_string())?
            }
            None => DEFAULT_START_TIMEOUT.to_string(),
        };
        let player_offset = match raw.player_offset {
            Some(v) => read(Annotation::PlayerOffset, v, |v| {
                non_negative(v, "a player number")
            })?,
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

/// The test part's totals: `TOTAL_PLAYERS` and `WAVE_MACHINES`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Totals {
    pub players: u64,
    pub machines: u64,
}

impl Totals {
    /// The totals of a pod's part: `total-players` as annotated or derived from the owner's
    /// replicas, and M; the warning says when M was derived because the owner could not be
    /// read.
    pub fn of(
        annotated_players: Option<u64>,
        replicas: &OwnerReplicas,
        agents: u32,
        players_per_agent: u32,
    ) -> Result<(Self, Option<String>), Denial> {
        let players = match annotated_players {
            Some(n) => n,
            None => derive_total_players(replicas, agents, players_per_agent)?,
        };
        let (machines, warning) = machines(replicas, players, agents, players_per_agent);
        Ok((Self { players, machines }, warning))
    }
}

/// `TOTAL_PLAYERS` when not annotated: replicas × agents × players-per-agent.
fn derive_total_players(
    replicas: &OwnerReplicas,
    agents: u32,
    players_per_agent: u32,
) -> Result<u64, Denial> {
    match replicas {
        OwnerReplicas::Known(0) => Err(deny(
            Annotation::TotalPlayers,
            "not set, and the owner has 0 replicas to derive it from; set the annotation",
        )),
        OwnerReplicas::Known(r) => u64::from(*r)
            .checked_mul(u64::from(agents))
            .and_then(|n| n.checked_mul(u64::from(players_per_agent)))
            .ok_or_else(|| deny(Annotation::TotalPlayers, "derived value is too large")),
        OwnerReplicas::NoOwner => Err(deny(
            Annotation::TotalPlayers,
            "not set, and the pod has no Deployment, ReplicaSet, StatefulSet or Job owner to derive it from \
             (replicas × agents × players-per-agent); set the annotation",
        )),
        OwnerReplicas::Unavailable(why) => Err(deny(
            Annotation::TotalPlayers,
            format!(
                "not set, and the owner's replicas could not be read: {why}; set the annotation or retry"
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
        assert_eq!(s.start_quorum, Quorum(100));
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
        assert_eq!(s.start_quorum, Quorum(90));
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
