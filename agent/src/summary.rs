//! `summary.json`: what happened to each agent of a container, written into
//! `<work>/results/` so the ordinary result upload puts it next to the agents' files
//! (docs/agent-storage.md). A supervisor restarted in the same pod reads it back: a completed summary means
//! the test already ran here and must not run again.

use std::io;
use std::path::{Path, PathBuf};
use std::time::SystemTime;

use serde::{Deserialize, Serialize};

use crate::slots::Placement;
use crate::supervise::{AgentRecord, AgentState, ExitOutcome, Supervision};

/// File name of the summary inside the results directory.
pub const SUMMARY_FILE: &str = "summary.json";

/// The summary of one container's run.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Summary {
    pub test_id: String,
    pub pod: String,
    pub container: u32,
    /// True when every agent ended on its own (no shutdown request cut the test short), or
    /// the test part was stopped (`stopped`): either way the test is over for this pod.
    pub completed: bool,
    /// True when every agent succeeded.
    pub succeeded: bool,
    pub total_players: Option<u64>,
    pub players_per_agent: u64,
    /// RFC 3339 time the supervisor started the agents.
    pub started_at: String,
    /// RFC 3339 time the summary was written.
    pub ended_at: String,
    /// The test part (docs/coordination.md); empty for a test of one part.
    #[serde(default)]
    pub part: String,
    /// m, the pod's slot; `null` without coordination.
    #[serde(default)]
    pub machine_index: Option<u32>,
    /// M, the part's machine count.
    #[serde(default)]
    pub machines: Option<u32>,
    /// `WAVE_START_AT`, the start the agents were given.
    #[serde(default)]
    pub start_at: Option<String>,
    /// The reason the test part was stopped (docs/coordination.md), if it was.
    #[serde(default)]
    pub stopped: Option<String>,
    /// RFC 3339 start of each start of the supervisor on this work directory (more than one
    /// when it was restarted mid-test and resumed it); each run names its start by index.
    #[serde(default)]
    pub supervisor_starts: Vec<String>,
    pub agents: Vec<AgentSummary>,
}

/// One agent in the summary.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct AgentSummary {
    pub index: u32,
    pub id: String,
    pub state: AgentState,
    pub players: u64,
    /// g, the agent's number in the test part (docs/coordination.md).
    #[serde(default)]
    pub agent_number: Option<u64>,
    /// The first of its players: it plays `[player_offset, player_offset + players)`.
    #[serde(default)]
    pub player_offset: Option<u64>,
    pub restarts: u32,
    /// Exit code of every run, in order (128 + signal for a killed process, 127 when the
    /// command could not be started; `null` for a run still going when the summary was written).
    pub exit_codes: Vec<Option<i32>>,
    /// RFC 3339 start of the first run.
    pub started_at: Option<String>,
    /// RFC 3339 end of the last run.
    pub ended_at: Option<String>,
    pub runs: Vec<RunSummary>,
}

/// One run (start) of an agent.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RunSummary {
    /// The run's `WAVE_RUN`: 0 for the agent's first start, then 1, 2, …
    #[serde(default)]
    pub run: u32,
    /// Index into `supervisor_starts` of the supervisor that started it.
    #[serde(default)]
    pub supervisor_start: u32,
    pub started_at: String,
    pub ended_at: Option<String>,
    #[serde(flatten)]
    pub outcome: Option<ExitOutcome>,
}

/// What the summary says about the test besides the agents.
#[derive(Debug, Clone)]
pub struct SummaryContext {
    pub test_id: String,
    pub pod: String,
    pub container: u32,
    pub total_players: Option<u64>,
    pub players_per_agent: u64,
    pub started_at: SystemTime,
    pub part: String,
    pub placement: Option<Placement>,
    pub start_at: Option<String>,
    pub stopped: Option<String>,
    /// Every start of the supervisor, this one last.
    pub supervisor_starts: Vec<SystemTime>,
}

/// summary.json could not be written or read.
#[derive(Debug, thiserror::Error)]
pub enum SummaryError {
    #[error("failed to write {path}")]
    Write {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("failed to read {path}")]
    Read {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("{path} is not a valid summary")]
    Parse {
        path: PathBuf,
        #[source]
        source: serde_json::Error,
    },
}

fn rfc3339(time: SystemTime) -> String {
    humantime::format_rfc3339_millis(time).to_string()
}

impl Summary {
    /// Builds the summary of a supervision that ended at `ended_at`.
    pub fn new(ctx: &SummaryContext, supervision: &Supervision, ended_at: SystemTime) -> Summary {
        Summary {
            test_id: ctx.test_id.clone(),
            pod: ctx.pod.clone(),
            container: ctx.container,
            completed: !supervision.stopped || ctx.stopped.is_some(),
            succeeded: supervision.all_succeeded(),
            total_players: ctx.total_players,
            players_per_agent: ctx.players_per_agent,
            started_at: rfc3339(ctx.started_at),
            ended_at: rfc3339(ended_at),
            part: ctx.part.clone(),
            machine_index: ctx.placement.as_ref().map(|p| p.machine_index),
            machines: ctx.placement.as_ref().map(|p| p.machines),
            start_at: ctx.start_at.clone(),
            stopped: ctx.stopped.clone(),
            supervisor_starts: ctx.supervisor_starts.iter().copied().map(rfc3339).collect(),
            agents: supervision
                .agents
                .iter()
                .map(|a| agent_summary(a, ctx))
                .collect(),
        }
    }

    /// Writes the summary to `<results_dir>/summary.json` atomically (a temporary file in
    /// `tmp_dir`, outside the uploaded directory, renamed into place).
    pub fn write(&self, results_dir: &Path, tmp_dir: &Path) -> Result<PathBuf, SummaryError> {
        let path = results_dir.join(SUMMARY_FILE);
        let tmp = tmp_dir.join(format!(".{SUMMARY_FILE}.tmp"));
        let write_err = |source| SummaryError::Write {
            path: path.clone(),
            source,
        };
        let mut text = serde_json::to_vec_pretty(self).expect("a summary always serializes");
        text.push(b'\n');
        std::fs::create_dir_all(results_dir).map_err(write_err)?;
        std::fs::write(&tmp, &text).map_err(write_err)?;
        std::fs::rename(&tmp, &path).map_err(write_err)?;
        Ok(path)
    }

    /// Reads `<results_dir>/summary.json`; `Ok(None)` if there is none.
    pub fn load(results_dir: &Path) -> Result<Option<Summary>, SummaryError> {
        let path = results_dir.join(SUMMARY_FILE);
        let text = match std::fs::read(&path) {
            Ok(text) => text,
            Err(err) if err.kind() == io::ErrorKind::NotFound => return Ok(None),
            Err(source) => return Err(SummaryError::Read { path, source }),
        };
        serde_json::from_slice(&text)
            .map(Some)
            .map_err(|source| SummaryError::Parse { path, source })
    }
}

fn agent_summary(agent: &AgentRecord, ctx: &SummaryContext) -> AgentSummary {
    AgentSummary {
        index: agent.index,
        id: agent.id.clone(),
        state: agent.state,
        players: ctx.players_per_agent,
        agent_number: ctx.placement.as_ref().map(|p| p.agent_number(agent.index)),
        player_offset: ctx.placement.as_ref().map(|p| p.player_offset(agent.index)),
        restarts: agent.restarts,
        exit_codes: agent
            .runs
            .iter()
            .map(|r| r.outcome.as_ref().map(ExitOutcome::exit_code))
            .collect(),
        started_at: agent.runs.first().map(|r| rfc3339(r.started_at)),
        ended_at: agent.runs.last().and_then(|r| r.ended_at).map(rfc3339),
        runs: agent
            .runs
            .iter()
            .zip(0..)
            .map(|(r, run)| RunSummary {
                run,
                supervisor_start: r.supervisor_start,
                started_at: rfc3339(r.started_at),
                ended_at: r.ended_at.map(rfc3339),
                outcome: r.outcome.clone(),
            })
            .collect(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::supervise::RunRecord;
    use std::time::Duration;

    fn ctx() -> SummaryContext {
        SummaryContext {
            test_id: "t1".into(),
            pod: "pod-a".into(),
            container: 0,
            total_players: Some(200),
            players_per_agent: 100,
            started_at: SystemTime::UNIX_EPOCH + Duration::from_secs(1_700_000_000),
            part: String::new(),
            placement: None,
            start_at: None,
            stopped: None,
            supervisor_starts: vec![SystemTime::UNIX_EPOCH + Duration::from_secs(1_700_000_000)],
        }
    }

    fn supervision() -> Supervision {
        let t = SystemTime::UNIX_EPOCH + Duration::from_secs(1_700_000_000);
        let run = |outcome| RunRecord {
            started_at: t,
            ended_at: Some(t + Duration::from_secs(5)),
            outcome: Some(outcome),
            supervisor_start: 0,
        };
        Supervision {
            agents: vec![
                AgentRecord {
                    index: 0,
                    id: "pod-a-c0-a0".into(),
                    state: AgentState::Succeeded,
                    restarts: 0,
                    runs: vec![run(ExitOutcome::Success)],
                    stopped: false,
                },
                AgentRecord {
                    index: 1,
                    id: "pod-a-c0-a1".into(),
                    state: AgentState::Failed,
                    restarts: 1,
                    runs: vec![
                        run(ExitOutcome::Failure { code: 2 }),
                        run(ExitOutcome::Signal { signal: 9 }),
                    ],
                    stopped: false,
                },
            ],
            stopped: false,
        }
    }

    #[test]
    fn records_exit_codes_restarts_and_times() {
        let summary = Summary::new(&ctx(), &supervision(), SystemTime::UNIX_EPOCH);
        assert!(summary.completed);
        assert!(!summary.succeeded);
        let failed = &summary.agents[1];
        assert_eq!(failed.exit_codes, [Some(2), Some(137)]);
        assert_eq!(failed.restarts, 1);
        assert_eq!(failed.state, AgentState::Failed);
        assert_eq!(
            failed.started_at.as_deref(),
            Some("2023-11-14T22:13:20.000Z")
        );
        assert_eq!(failed.ended_at.as_deref(), Some("2023-11-14T22:13:25.000Z"));
        let json = serde_json::to_value(&summary).expect("serializes");
        assert_eq!(json["agents"][1]["runs"][1]["outcome"], "signal");
        assert_eq!(json["agents"][1]["runs"][1]["signal"], 9);
        assert_eq!(json["agents"][0]["state"], "succeeded");
    }

    #[test]
    fn records_the_part_slot_start_stop_and_agent_numbers() {
        let mut ctx = ctx();
        ctx.part = "p1".into();
        ctx.placement = Some(Placement {
            machine_index: 2,
            machines: 3,
            pod_agents: 2,
            earlier_agents: 0,
            part_player_offset: 1000,
            players_per_agent: 100,
        });
        ctx.start_at = Some("2026-12-02T01:00:00.000Z".into());
        ctx.stopped = Some("enough load".into());
        let mut stopped = supervision();
        stopped.stopped = true;
        let json = serde_json::to_value(Summary::new(&ctx, &stopped, SystemTime::UNIX_EPOCH))
            .expect("serializes");
        assert_eq!(json["part"], "p1");
        assert_eq!(json["machine_index"], 2);
        assert_eq!(json["machines"], 3);
        assert_eq!(json["start_at"], "2026-12-02T01:00:00.000Z");
        assert_eq!(json["stopped"], "enough load");
        assert_eq!(
            json["completed"], true,
            "a stopped part is over for this pod"
        );
        assert_eq!(json["agents"][1]["agent_number"], 5);
        assert_eq!(json["agents"][1]["player_offset"], 1500);
    }

    #[test]
    fn a_summary_written_before_coordination_still_reads() {
        let dir = tempfile::tempdir().expect("tempdir");
        let summary = Summary::new(&ctx(), &supervision(), SystemTime::UNIX_EPOCH);
        let mut json = serde_json::to_value(&summary).expect("serializes");
        for key in ["part", "machine_index", "machines", "start_at", "stopped"] {
            json.as_object_mut().expect("an object").remove(key);
        }
        for agent in json["agents"].as_array_mut().expect("agents") {
            let agent = agent.as_object_mut().expect("an object");
            agent.remove("agent_number");
            agent.remove("player_offset");
        }
        std::fs::write(dir.path().join(SUMMARY_FILE), json.to_string()).expect("write");
        assert_eq!(Summary::load(dir.path()).expect("reads"), Some(summary));
    }

    #[test]
    fn round_trips_through_the_file() {
        let dir = tempfile::tempdir().expect("tempdir");
        let results = dir.path().join("results");
        let summary = Summary::new(&ctx(), &supervision(), SystemTime::UNIX_EPOCH);
        summary.write(&results, dir.path()).expect("writes");
        let loaded = Summary::load(&results).expect("reads");
        assert_eq!(loaded, Some(summary));
        assert!(!dir.path().join(".summary.json.tmp").exists());
    }

    #[test]
    fn a_missing_summary_is_none_and_a_broken_one_an_error() {
        let dir = tempfile::tempdir().expect("tempdir");
        assert_eq!(Summary::load(dir.path()).expect("no file is fine"), None);
        std::fs::write(dir.path().join(SUMMARY_FILE), b"{not json").expect("write");
        let err = Summary::load(dir.path()).expect_err("broken file");
        assert!(
            err.to_string()
                .contains("summary.json is not a valid summary"),
            "{err}"
        );
    }
}
