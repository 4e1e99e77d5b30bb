//! Reading and checking what a pod asks for: the `testId` label and the `waveloadtest.io/*`
//! annotations (docs/webhook-reference.md), against the webhook config. Every problem becomes
//! a [`Denial`] that names the annotation or label at fault.

use std::time::Duration;

use k8s_openapi::api::core::v1::Pod;
use wave_contract::Annotation;
use wave_contract::names::{OS_SELECTOR, TEST_ID_LABEL};
use wave_contract::part::{Coordination, TestLabel};
use wave_contract::value::{closest, positive, positive_duration};

use crate::catalog::MachineType;
use crate::config::{Config, Os, SupervisorMode, check_bucket};
use crate::denial::{Denial, deny, deny_label, deny_unknown};
use crate::part::{PartSettings, RawPart};
use crate::resources::ResourcePolicy;

fn test_id_label(pod: &Pod) -> Option<&str> {
    pod.metadata
        .labels
        .as_ref()?
        .get(TEST_ID_LABEL)
        .map(String::as_str)
}

/// What the label and annotations say about a pod.
pub enum Reading<'a> {
    /// Allowed unchanged: not a test machine, or opted out; the text says which, for logs.
    Skip(&'static str),
    /// To be mutated with these settings.
    Mutate(Settings<'a>),
}

/// Everything the annotations, label and config decide, checked.
pub struct Settings<'a> {
    pub(crate) test_id: &'a str,
    pub(crate) part: &'a str,
    /// `None`: not annotated, so derived from the owner's replicas.
    pub(crate) total_players: Option<u64>,
    pub(crate) players_per_agent: u32,
    pub(crate) agents: u32,
    pub(crate) machine_type: &'a str,
    pub(crate) machine: &'a MachineType,
    pub(crate) os: Os,
    pub(crate) resources: ResourcePolicy,
    pub(crate) script: String,
    pub(crate) results: String,
    pub(crate) supervisor: SupervisorMode,
    /// The supervisor's stop timeout unless a container sets its own `WAVE_STOP_TIMEOUT`:
    /// the annotation, else the config.
    pub(crate) stop_timeout: Duration,
    /// Slots, start and player offset of the test part (docs/coordination.md).
    pub(crate) part_settings: Box<PartSettings>,
}

/// The raw `waveloadtest.io/*` annotation values of a pod.
#[derive(Default)]
struct Raw<'a> {
    inject: Option<&'a str>,
    total_players: Option<&'a str>,
    players_per_agent: Option<&'a str>,
    agents: Option<&'a str>,
    machine_type: Option<&'a str>,
    os: Option<&'a str>,
    resources: Option<&'a str>,
    script: Option<&'a str>,
    results: Option<&'a str>,
    supervisor: Option<&'a str>,
    stop_timeout: Option<&'a str>,
    part: RawPart<'a>,
}

impl<'a> Raw<'a> {
    fn read(pod: &'a Pod) -> Result<Self, Denial> {
        let mut raw = Self::default();
        let Some(annotations) = pod.metadata.annotations.as_ref() else {
            return Ok(raw);
        };
        for (key, value) in annotations {
            let Some(name) = key.strip_prefix(wave_contract::annotation::PREFIX) else {
                continue;
            };
            let Some(annotation) = Annotation::from_name(name) else {
                return Err(deny_unknown(name));
            };
            let slot = match annotation {
                Annotation::Inject => &mut raw.inject,
                Annotation::TotalPlayers => &mut raw.total_players,
                Annotation::PlayersPerAgent => &mut raw.players_per_agent,
                Annotation::Agents => &mut raw.agents,
                Annotation::MachineType => &mut raw.machine_type,
                Annotation::Os => &mut raw.os,
                Annotation::Resources => &mut raw.resources,
                Annotation::Script => &mut raw.script,
                Annotation::Results => &mut raw.results,
                Annotation::Supervisor => &mut raw.supervisor,
                Annotation::StopTimeout => &mut raw.stop_timeout,
                Annotation::Coordination => &mut raw.part.coordination,
                Annotation::Start => &mut raw.part.start,
                Annotation::StartQuorum => &mut raw.part.start_quorum,
                Annotation::StartTimeout => &mut raw.part.start_timeout,
                Annotation::PlayerOffset => &mut raw.part.player_offset,
            };
            *slot = Some(value.as_str());
        }
        Ok(raw)
    }
}

/// A positive decimal integer, digits only.
fn positive_u64(annotation: Annotation, value: &str) -> Result<u64, Denial> {
    positive(value).map_err(|e| deny(annotation, e.0))
}

fn positive_u32(annotation: Annotation, value: &str) -> Result<u32, Denial> {
    let n = positive_u64(annotation, value)?;
    u32::try_from(n).map_err(|_| deny(annotation, format!("{value} is too large")))
}

/// Checks an `s3://bucket/prefix/` URL given in an annotation.
fn store_url(annotation: Annotation, url: &str) -> Result<String, Denial> {
    let Some(rest) = url.strip_prefix("s3://") else {
        return Err(deny(
            annotation,
            format!("{url:?} is not an s3:// URL (expected s3://bucket/prefix/)"),
        ));
    };
    let bucket = rest.split('/').next().unwrap_or_default();
    check_bucket(bucket).map_err(|problem| deny(annotation, problem))?;
    if !url.ends_with('/') {
        return Err(deny(
            annotation,
            format!("{url:?} must end with / (it is a prefix: s3://bucket/prefix/)"),
        ));
    }
    Ok(url.to_string())
}

impl<'a> Settings<'a> {
    /// Reads and checks the label and every annotation. Pure: the owner's replicas, the one
    /// input that needs the API server, are asked for by [`Self::needs_owner_replicas`].
    pub fn read(pod: &'a Pod, config: &'a Config) -> Result<Reading<'a>, Denial> {
        let Some(label) = test_id_label(pod) else {
            return Ok(Reading::Skip("no testId label"));
        };
        // An opted-out pod is allowed whatever its other annotations say.
        if pod
            .metadata
            .annotations
            .as_ref()
            .and_then(|a| a.get(Annotation::Inject.key()))
            .is_some_and(|v| v == "false")
        {
            return Ok(Reading::Skip(
                "opted out with waveloadtest.io/inject: \"false\"",
            ));
        }
        let raw = Raw::read(pod)?;
        match raw.inject {
            Some("false") => {
                return Ok(Reading::Skip(
                    "opted out with waveloadtest.io/inject: \"false\"",
                ));
            }
            None | Some("true") => {}
            Some(other) => {
                return Err(deny(
                    Annotation::Inject,
                    format!("{other:?} is neither \"true\" nor \"false\""),
                ));
            }
        }
        let TestLabel { test_id, part } = TestLabel::parse(label).map_err(|e| deny_label(e.0))?;

        let players_per_agent = match raw.players_per_agent {
            Some(v) => positive_u32(Annotation::PlayersPerAgent, v)?,
            None => config.players_per_agent,
        };
        let agents = match raw.agents {
            Some(v) => positive_u32(Annotation::Agents, v)?,
            None => config.agents,
        };
        let total_players = raw
            .total_players
            .map(|v| positive_u64(Annotation::TotalPlayers, v))
            .transpose()?;
        let machine_type = raw.machine_type.unwrap_or(&config.machine_type);
        let Some(machine) = config.catalog.get(machine_type) else {
            let hint = config
                .catalog
                .suggest(machine_type)
                .map(|s| format!(" (did you mean {s}?)"))
                .unwrap_or_default();
            return Err(deny(
                Annotation::MachineType,
                format!("unknown machine type {machine_type:?}{hint}"),
            ));
        };
        let os = match raw.os {
            Some(v) => Os::parse(v).ok_or_else(|| {
                let hint = closest(v, ["linux", "windows"])
                    .map(|s| format!("; did you mean {s}?"))
                    .unwrap_or_default();
                deny(
                    Annotation::Os,
                    format!("unknown OS {v:?} (expected linux or windows{hint})"),
                )
            })?,
            None => node_selector(pod, OS_SELECTOR)
                .and_then(Os::parse)
                .unwrap_or(Os::Linux),
        };
        let resources = match raw.resources {
            Some(v) => v.parse().map_err(|()| {
                deny(
                    Annotation::Resources,
                    format!(
                        "unknown resources policy {v:?} (expected {})",
                        ResourcePolicy::EXPECTED
                    ),
                )
            })?,
            None => config.resources,
        };
        let supervisor = match raw.supervisor {
            Some(v) => SupervisorMode::parse(v).ok_or_else(|| {
                deny(
                    Annotation::Supervisor,
                    format!(
                        "unknown supervisor mode {v:?} (expected {})",
                        SupervisorMode::EXPECTED
                    ),
                )
            })?,
            // wave-agent is Linux-only (process groups, signals, /proc).
            None if os == Os::Windows => SupervisorMode::Off,
            None => config.supervisor,
        };
        if os == Os::Windows && supervisor != SupervisorMode::Off {
            return Err(deny(
                Annotation::Supervisor,
                format!(
                    "{:?} is not possible on a Windows pod: wave-agent is Linux-only; \
                     remove the annotation (Windows pods run unsupervised) or set it to off",
                    raw.supervisor.unwrap_or_default()
                ),
            ));
        }
        let script = match raw.script {
            Some(v) => store_url(Annotation::Script, v)?,
            None => format!("s3://{}/scripts/{test_id}/", config.bucket),
        };
        let results = match raw.results {
            Some(v) => store_url(Annotation::Results, v)?,
            None => format!("s3://{}/results/{test_id}/", config.bucket),
        };
        let stop_timeout = match raw.stop_timeout {
            Some(v) => positive_duration(v).map_err(|e| deny(Annotation::StopTimeout, e.0))?,
            None => config.stop_timeout,
        };
        let part_settings = Box::new(PartSettings::read(&raw.part, &config.coordination)?);
        Ok(Reading::Mutate(Self {
            test_id,
            part,
            total_players,
            players_per_agent,
            agents,
            machine_type,
            machine,
            os,
            resources,
            script,
            results,
            supervisor,
            stop_timeout,
            part_settings,
        }))
    }

    /// True when `TOTAL_PLAYERS` is not annotated or the pod claims a slot (its
    /// `WAVE_MACHINES` is the owner's replicas), so the server has to look up the owner;
    /// false means it never asks the API server about this pod.
    pub fn needs_owner_replicas(&self) -> bool {
        self.total_players.is_none() || self.part_settings.coordination != Coordination::Off
    }
}

fn node_selector<'a>(pod: &'a Pod, key: &str) -> Option<&'a str> {
    pod.spec
        .as_ref()?
        .node_selector
        .as_ref()?
        .get(key)
        .map(String::as_str)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::test_pods::{mk_pod, wave};

    fn denied(pod: &Pod) -> String {
        match Settings::read(pod, &Config::default()) {
            Err(d) => d.to_string(),
            Ok(_) => panic!("expected a denial"),
        }
    }

    /// Whether the server has to look up the owner: `None` when the pod is skipped.
    fn needs_owner_replicas(pod: &Pod) -> Option<bool> {
        match Settings::read(pod, &Config::default()).expect("valid") {
            Reading::Mutate(settings) => Some(settings.needs_owner_replicas()),
            Reading::Skip(_) => None,
        }
    }

    #[test]
    fn owner_replicas_are_needed_unless_total_players_is_set_and_coordination_is_off() {
        assert_eq!(needs_owner_replicas(&mk_pod(1)), Some(true));
        let annotated = wave(mk_pod(1), "total-players", "1234");
        assert_eq!(
            needs_owner_replicas(&annotated),
            Some(true),
            "WAVE_MACHINES is the owner's replicas"
        );
        assert_eq!(
            needs_owner_replicas(&wave(annotated, "coordination", "off")),
            Some(false)
        );
        assert_eq!(
            needs_owner_replicas(&wave(mk_pod(1), "inject", "false")),
            None
        );
        let mut unlabelled = mk_pod(1);
        unlabelled.metadata.labels = None;
        assert_eq!(needs_owner_replicas(&unlabelled), None);
    }

    fn with_label(value: &str) -> Pod {
        let mut pod = mk_pod(1);
        pod.metadata
            .labels
            .as_mut()
            .expect("labels")
            .insert(TEST_ID_LABEL.into(), value.into());
        pod
    }

    #[test]
    fn denies_a_script_url_that_is_not_s3() {
        let msg = denied(&wave(mk_pod(1), "script", "https://example.com/x/"));
        assert!(
            msg.starts_with(
                "waveloadtest.io/script: \"https://example.com/x/\" is not an s3:// URL"
            ),
            "{msg}"
        );
    }

    #[test]
    fn denies_a_results_url_without_trailing_slash() {
        let msg = denied(&wave(mk_pod(1), "results", "s3://bucket/results"));
        assert!(
            msg.starts_with("waveloadtest.io/results: \"s3://bucket/results\" must end with /"),
            "{msg}"
        );
    }

    #[test]
    fn denies_an_empty_test_id() {
        let msg = denied(&with_label("--p1"));
        assert_eq!(
            msg,
            "label testId: the test id (the text before the first \"--\") is empty"
        );
    }

    #[test]
    fn denies_a_test_id_with_characters_outside_the_allowed_set() {
        let msg = denied(&with_label("a/b--p1"));
        assert!(
            msg.starts_with("label testId: test id \"a/b\" has characters outside [A-Za-z0-9._-]"),
            "{msg}"
        );
    }

    #[test]
    fn denies_an_unknown_machine_type_with_a_suggestion() {
        let msg = denied(&wave(mk_pod(1), "machine-type", "r5.xlarg"));
        assert_eq!(
            msg,
            "waveloadtest.io/machine-type: unknown machine type \"r5.xlarg\" (did you mean r5.xlarge?)"
        );
    }

    #[test]
    fn denies_an_unknown_os() {
        let msg = denied(&wave(mk_pod(1), "os", "widows"));
        assert_eq!(
            msg,
            "waveloadtest.io/os: unknown OS \"widows\" (expected linux or windows; did you mean windows?)"
        );
    }

    #[test]
    fn denies_an_unknown_resources_policy() {
        let msg = denied(&wave(mk_pod(1), "resources", "max"));
        assert_eq!(
            msg,
            "waveloadtest.io/resources: unknown resources policy \"max\" (expected fit, nominal or none)"
        );
    }

    #[test]
    fn denies_an_unknown_supervisor_mode() {
        let msg = denied(&wave(mk_pod(1), "supervisor", "sidecar"));
        assert_eq!(
            msg,
            "waveloadtest.io/supervisor: unknown supervisor mode \"sidecar\" (expected inject, image or off)"
        );
    }

    #[test]
    fn denies_an_unknown_annotation_with_a_suggestion() {
        let msg = denied(&wave(mk_pod(1), "player-per-agent", "100"));
        assert_eq!(
            msg,
            "waveloadtest.io/player-per-agent: unknown annotation (did you mean waveloadtest.io/players-per-agent?)"
        );
    }

    #[test]
    fn denies_non_numeric_zero_and_negative_numbers() {
        for (name, value, problem) in [
            ("agents", "ten", "\"ten\" is not a positive integer"),
            ("agents", "0", "must be a positive integer, got \"0\""),
            (
                "players-per-agent",
                "-5",
                "\"-5\" is not a positive integer",
            ),
            ("total-players", "1.5", "\"1.5\" is not a positive integer"),
            ("total-players", "+7", "\"+7\" is not a positive integer"),
            ("agents", "99999999999", "99999999999 is too large"),
        ] {
            let msg = denied(&wave(mk_pod(1), name, value));
            assert_eq!(msg, format!("waveloadtest.io/{name}: {problem}"));
        }
    }

    #[test]
    fn denies_an_inject_value_other_than_true_or_false() {
        let msg = denied(&wave(mk_pod(1), "inject", "no"));
        assert_eq!(
            msg,
            "waveloadtest.io/inject: \"no\" is neither \"true\" nor \"false\""
        );
    }
}
