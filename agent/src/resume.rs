//! Resuming a test after a restart of the supervisor (docs/agent-supervisor.md).
//!
//! A container that crashes mid-test is restarted by the kubelet with its emptyDir work
//! directory intact. The [`Journal`] kept there (every agent's runs, after each start and
//! exit, written atomically) tells the new supervisor what already happened: agents that
//! had ended stay ended, those that were running when the supervisor died count as killed
//! and are restarted as after an agent crash (against `WAVE_MAX_RESTARTS`), and every
//! start keeps its own `WAVE_RUN` number.

use std::io;
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::SystemTime;

use serde::{Deserialize, Serialize};

use crate::supervise::{
    AgentRecord, AgentState, ExitOutcome, Observe, RestartPolicy, Step, next_step,
};

/// What the supervisors of this work directory did so far.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct Journal {
    /// When each start of the supervisor began.
    pub supervisor_starts: Vec<SystemTime>,
    /// Every agent with its runs.
    pub agents: Vec<AgentRecord>,
}

/// Why the journal could not be read or written.
#[derive(Debug, thiserror::Error)]
pub enum JournalError {
    #[error("failed to write the agent journal {}", path.display())]
    Write {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("failed to read the agent journal {}", path.display())]
    Read {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("the agent journal {} is not valid", path.display())]
    Parse {
        path: PathBuf,
        #[source]
        source: serde_json::Error,
    },
}

impl Journal {
    /// The journal at `path`; `Ok(None)` when this is the first start.
    pub fn load(path: &Path) -> Result<Option<Journal>, JournalError> {
        let text = match std::fs::read(path) {
            Ok(text) => text,
            Err(err) if err.kind() == io::ErrorKind::NotFound => return Ok(None),
            Err(source) => {
                return Err(JournalError::Read {
                    path: path.to_owned(),
                    source,
                });
            }
        };
        serde_json::from_slice(&text)
            .map(Some)
            .map_err(|source| JournalError::Parse {
                path: path.to_owned(),
                source,
            })
    }

    /// Writes the journal to `path` through a temporary file and a rename.
    pub fn save(&self, path: &Path) -> Result<(), JournalError> {
        let err = |source| JournalError::Write {
            path: path.to_owned(),
            source,
        };
        if let Some(parent) = path.parent() {
            std::fs::create_dir_all(parent).map_err(err)?;
        }
        let tmp = path.with_extension("json.tmp");
        let text = serde_json::to_vec(self).expect("a journal always serializes");
        std::fs::write(&tmp, text).map_err(err)?;
        std::fs::rename(&tmp, path).map_err(err)
    }

    /// How many runs each of the first `agents` agents already had.
    pub fn earlier_runs(&self, agents: u32) -> Vec<u32> {
        (0..agents as usize)
            .map(|k| {
                self.agents
                    .get(k)
                    .map_or(0, |a| u32::try_from(a.runs.len()).unwrap_or(u32::MAX))
            })
            .collect()
    }
}

/// The agents as a new supervisor takes them over: one that had ended on its own keeps its
/// state; one stopped by a shutdown request runs again (as a restart, while restarts are
/// left); one
/// that was running or waiting for a restart when the supervisor died was killed with it
/// (its last run, if unfinished, ends as killed by SIGKILL) and goes on as `policy` and
/// `max_restarts` say for such an exit: restarted (counted as a restart) or failed.
pub fn take_over(
    mut agents: Vec<AgentRecord>,
    policy: RestartPolicy,
    max_restarts: u32,
) -> Vec<AgentRecord> {
    const KILLED: ExitOutcome = ExitOutcome::Signal { signal: 9 };
    for agent in &mut agents {
        if agent.stopped {
            // Ended by a shutdown request, not on its own: it runs again.
            agent.stopped = false;
            if agent.restarts < max_restarts {
                agent.restarts += 1;
                agent.state = AgentState::Running;
            } else {
                agent.state = AgentState::Failed;
            }
            continue;
        }
        if agent.state.is_final() {
            continue;
        }
        if agent.state == AgentState::Backoff {
            // Its restart was already decided and counted.
            agent.state = AgentState::Running;
            continue;
        }
        let outcome = match agent.runs.last_mut() {
            Some(run) if run.outcome.is_none() => {
                run.outcome = Some(KILLED);
                KILLED
            }
            Some(run) => run.outcome.clone().unwrap_or(KILLED),
            None => KILLED,
        };
        if agent.runs.is_empty() {
            // Never started: it starts now, as a first start.
            agent.state = AgentState::Running;
            continue;
        }
        match next_step(policy, &outcome, agent.restarts, max_restarts) {
            Step::Restart { .. } => {
                agent.restarts += 1;
                agent.state = AgentState::Running;
            }
            Step::Finish(state) => agent.state = state,
        }
    }
    agents
}

/// A supervisor's start on a work directory: the journal read (or a new one), this start
/// added to it, the agents taken over, and the journal saved again at once so even a start
/// that dies before its first agent runs is counted.
pub struct Resumption {
    path: PathBuf,
    journal: Journal,
    /// The agents as this start takes them over (see [`take_over`]).
    pub history: Vec<AgentRecord>,
    /// Index of this start (0 for the first).
    pub supervisor_start: u32,
    /// Runs each agent already had (its next `WAVE_RUN`).
    pub earlier_runs: Vec<u32>,
}

impl Resumption {
    pub fn begin(
        path: PathBuf,
        policy: RestartPolicy,
        max_restarts: u32,
        agents: u32,
    ) -> Resumption {
        let mut journal = match Journal::load(&path) {
            Ok(journal) => journal.unwrap_or_default(),
            Err(err) => {
                tracing::warn!(
                    "{}; starting every agent afresh",
                    crate::error_chain::ErrorChain(&err)
                );
                Journal::default()
            }
        };
        let supervisor_start = u32::try_from(journal.supervisor_starts.len()).unwrap_or(u32::MAX);
        journal.supervisor_starts.push(SystemTime::now());
        let history = take_over(std::mem::take(&mut journal.agents), policy, max_restarts);
        if supervisor_start > 0 {
            let ended = history.iter().filter(|a| a.state.is_final()).count();
            tracing::info!(
                "resuming the test (supervisor start {supervisor_start}): {ended} agents had ended and stay ended, {} start again",
                history.len() - ended
            );
        }
        journal.agents = history.clone();
        if let Err(err) = journal.save(&path) {
            tracing::warn!("{}", crate::error_chain::ErrorChain(&err));
        }
        let earlier_runs = journal.earlier_runs(agents);
        Resumption {
            path,
            journal,
            history,
            supervisor_start,
            earlier_runs,
        }
    }

    /// Every start of the supervisor so far, this one last.
    pub fn supervisor_starts(&self) -> Vec<SystemTime> {
        self.journal.supervisor_starts.clone()
    }

    /// An observer that forwards to `inner` and keeps the journal up to date.
    pub fn observe<O>(self, inner: O) -> Journaled<O> {
        Journaled {
            inner,
            path: self.path,
            journal: Mutex::new(self.journal),
        }
    }
}

/// Forwards to `inner` and keeps the journal up to date at every change.
pub struct Journaled<O> {
    inner: O,
    path: PathBuf,
    journal: Mutex<Journal>,
}

impl<O: Observe> Observe for Journaled<O> {
    fn agent_started(&self, index: usize, group: Option<i32>) {
        self.inner.agent_started(index, group);
    }

    fn agent_exited(&self, index: usize, outcome: &ExitOutcome) {
        self.inner.agent_exited(index, outcome);
    }

    fn states(&self, counts: &std::collections::HashMap<AgentState, usize>) {
        self.inner.states(counts);
    }

    fn records(&self, agents: &[AgentRecord]) {
        self.inner.records(agents);
        let mut journal = self
            .journal
            .lock()
            .expect("the journal lock is not poisoned");
        journal.agents = agents.to_vec();
        if let Err(err) = journal.save(&self.path) {
            tracing::warn!(
                "{} (a restarted supervisor would not know what ran)",
                crate::error_chain::ErrorChain(&err)
            );
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::supervise::RunRecord;

    fn agent(
        index: u32,
        state: AgentState,
        restarts: u32,
        outcomes: &[Option<ExitOutcome>],
    ) -> AgentRecord {
        AgentRecord {
            index,
            id: format!("p-c0-a{index}"),
            state,
            restarts,
            runs: outcomes
                .iter()
                .map(|outcome| RunRecord {
                    started_at: SystemTime::UNIX_EPOCH,
                    ended_at: None,
                    outcome: outcome.clone(),
                    supervisor_start: 0,
                })
                .collect(),
            stopped: false,
        }
    }

    #[test]
    fn finished_agents_stay_finished_and_running_ones_restart_as_killed() {
        let taken = take_over(
            vec![
                agent(0, AgentState::Succeeded, 0, &[Some(ExitOutcome::Success)]),
                agent(1, AgentState::Running, 0, &[None]),
                agent(
                    2,
                    AgentState::Failed,
                    5,
                    &[Some(ExitOutcome::Failure { code: 1 })],
                ),
            ],
            RestartPolicy::OnFailure,
            5,
        );
        assert_eq!(taken[0].state, AgentState::Succeeded);
        assert_eq!(taken[0].restarts, 0);
        assert_eq!(taken[1].state, AgentState::Running);
        assert_eq!(taken[1].restarts, 1, "the restart counts");
        assert_eq!(
            taken[1].runs[0].outcome,
            Some(ExitOutcome::Signal { signal: 9 })
        );
        assert_eq!(taken[2].state, AgentState::Failed);
    }

    #[test]
    fn a_killed_agent_out_of_restarts_fails_and_a_waiting_one_restarts() {
        let out_of_restarts = take_over(
            vec![agent(0, AgentState::Running, 2, &[None, None, None])],
            RestartPolicy::OnFailure,
            2,
        );
        assert_eq!(out_of_restarts[0].state, AgentState::Failed);
        let never = take_over(
            vec![agent(0, AgentState::Running, 0, &[None])],
            RestartPolicy::Never,
            5,
        );
        assert_eq!(never[0].state, AgentState::Failed);
        let waiting = take_over(
            vec![agent(
                0,
                AgentState::Backoff,
                1,
                &[Some(ExitOutcome::Failure { code: 3 })],
            )],
            RestartPolicy::OnFailure,
            5,
        );
        assert_eq!(waiting[0].state, AgentState::Running);
        assert_eq!(
            waiting[0].restarts, 1,
            "its restart was counted when it failed"
        );
    }

    #[test]
    fn an_agent_stopped_by_a_shutdown_request_runs_again() {
        let mut stopped = agent(0, AgentState::Succeeded, 0, &[Some(ExitOutcome::Success)]);
        stopped.stopped = true;
        let taken = take_over(vec![stopped], RestartPolicy::OnFailure, 5);
        assert_eq!(taken[0].state, AgentState::Running);
        assert_eq!(taken[0].restarts, 1);
        assert!(!taken[0].stopped);
    }

    #[test]
    fn a_journal_reads_back_what_was_saved() {
        let dir = tempfile::tempdir().expect("temp dir");
        let path = dir.path().join("state/agents.json");
        assert!(Journal::load(&path).expect("no journal").is_none());
        let journal = Journal {
            supervisor_starts: vec![SystemTime::UNIX_EPOCH],
            agents: vec![agent(0, AgentState::Running, 0, &[None, None])],
        };
        journal.save(&path).expect("save");
        let read = Journal::load(&path).expect("read").expect("saved");
        assert_eq!(read.earlier_runs(2), [2, 0]);
        std::fs::write(&path, b"{").expect("write");
        assert!(Journal::load(&path).is_err());
    }
}
