//! Running the agents: start, watch, restart with backoff, stop.
//!
//! One owner, [`Supervisor::run`], holds all supervision state and selects over agent exits,
//! restart timers and shutdown requests; nothing wakes while nothing happens. Processes are
//! started and signalled through [`Spawn`] (real process groups in production, scripted exits
//! in tests), and what happens is reported through [`Observe`] (the metrics), so the state
//! machine runs the same with or without an operating system underneath. The decisions
//! (restart or not, how long to wait) are pure functions, tested on their own.

use std::collections::HashMap;
use std::ffi::OsString;
use std::io;
use std::path::PathBuf;
use std::process::ExitStatus;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, SystemTime};

use clap::ValueEnum;
use futures::future::BoxFuture;
use nix::sys::signal::Signal;
use serde::{Deserialize, Serialize};
use tokio::signal::unix::{SignalKind, signal};
use tokio::task::{JoinHandle, JoinSet};
use tokio::time::Instant;
use tracing::{info, warn};

use crate::shutdown::Shutdown;

/// Threads that spawn agents at once when the supervision starts.
const SPAWN_LANES: usize = 8;
/// First restart delay; it doubles with every restart.
const BACKOFF_START: Duration = Duration::from_secs(1);
/// Longest restart delay.
const BACKOFF_MAX: Duration = Duration::from_secs(60);
/// While stopping, how often process groups are checked for leftovers in case no SIGCHLD
/// announces their end (when the supervisor is not their reaper).
const GROUP_RECHECK: Duration = Duration::from_millis(200);
/// How long to wait for agents to go away after SIGKILL.
const KILL_WAIT: Duration = Duration::from_secs(5);
/// How long to wait for agents' output pipes to close once the agents have ended (a daemon
/// they left behind may hold them open forever).
const LOG_DRAIN_WAIT: Duration = Duration::from_secs(5);

/// When an agent that ended is started again (supervisord's `autorestart`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum RestartPolicy {
    /// An ended agent stays ended.
    Never,
    /// Restart after a non-zero exit or a death by signal.
    OnFailure,
    /// Restart after any exit, success included.
    Always,
}

/// The program every agent runs.
#[derive(Debug, Clone)]
pub struct AgentCommand {
    pub program: OsString,
    pub args: Vec<OsString>,
}

/// What to run and how.
#[derive(Debug, Clone)]
pub struct SuperviseConfig {
    pub agents: u32,
    pub command: AgentCommand,
    /// Working directory of the agents (`<work>/script`).
    pub script_dir: PathBuf,
    /// Parent of the agents' output directories (`<work>/results`).
    pub results_dir: PathBuf,
    pub pod: String,
    pub container: u32,
    pub players_per_agent: u64,
    pub restart: RestartPolicy,
    pub max_restarts: u32,
    pub stop_timeout: Duration,
    /// The pod's slot, for each agent's number and player range (docs/coordination.md).
    pub placement: Option<crate::slots::Placement>,
    /// `WAVE_START_AT`, the start the agents were given (docs/coordination.md).
    pub start_at: Option<String>,
    /// Variables every agent gets besides its own (the StatsD address, docs/load-metrics.md).
    pub env: Vec<(String, String)>,
}

impl SuperviseConfig {
    /// `WAVE_AGENT_ID` of agent `index`: `<pod>-c<container>-a<index>`.
    pub fn agent_id(&self, index: u32) -> String {
        format!("{}-c{}-a{}", self.pod, self.container, index)
    }

    /// `WAVE_OUTPUT_DIR` of agent `index`: `<results>/agent-<index>/`.
    pub fn output_dir(&self, index: u32) -> PathBuf {
        self.results_dir.join(format!("agent-{index}"))
    }
}

/// State of one agent, as exposed in `wave_agents{state}` and summary.json.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum AgentState {
    Running,
    /// Ended and waiting for its restart.
    Backoff,
    Succeeded,
    Failed,
}

impl AgentState {
    pub const ALL: [AgentState; 4] = [
        AgentState::Running,
        AgentState::Backoff,
        AgentState::Succeeded,
        AgentState::Failed,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            AgentState::Running => "running",
            AgentState::Backoff => "backoff",
            AgentState::Succeeded => "succeeded",
            AgentState::Failed => "failed",
        }
    }

    /// Succeeded or failed: the agent will not run again.
    pub fn is_final(self) -> bool {
        matches!(self, AgentState::Succeeded | AgentState::Failed)
    }
}

/// How one agent process ended.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "outcome", rename_all = "snake_case")]
pub enum ExitOutcome {
    Success,
    Failure {
        code: i32,
    },
    Signal {
        signal: i32,
    },
    /// The process could not be started at all (missing or non-executable command).
    SpawnFailed {
        error: String,
    },
}

impl ExitOutcome {
    /// How a process that ended with `status` ended.
    pub fn from_status(status: ExitStatus) -> ExitOutcome {
        use std::os::unix::process::ExitStatusExt;
        match (status.code(), status.signal()) {
            (Some(0), _) => ExitOutcome::Success,
            (Some(code), _) => ExitOutcome::Failure { code },
            (None, Some(signal)) => ExitOutcome::Signal { signal },
            (None, None) => ExitOutcome::Failure { code: -1 },
        }
    }

    pub fn is_success(&self) -> bool {
        matches!(self, ExitOutcome::Success)
    }

    /// The state an agent ends in when this was its last run.
    pub fn final_state(&self) -> AgentState {
        if self.is_success() {
            AgentState::Succeeded
        } else {
            AgentState::Failed
        }
    }

    /// The exit code a shell would report: 128 + signal for a killed process, 127 when the
    /// command could not be started.
    pub fn exit_code(&self) -> i32 {
        match self {
            ExitOutcome::Success => 0,
            ExitOutcome::Failure { code } => *code,
            ExitOutcome::Signal { signal } => 128 + signal,
            ExitOutcome::SpawnFailed { .. } => 127,
        }
    }
}

impl std::fmt::Display for ExitOutcome {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ExitOutcome::Success => write!(f, "exited with code 0"),
            ExitOutcome::Failure { code } => write!(f, "exited with code {code}"),
            ExitOutcome::Signal { signal } => match Signal::try_from(*signal) {
                Ok(sig) => write!(f, "was killed by {sig}"),
                Err(_) => write!(f, "was killed by signal {signal}"),
            },
            ExitOutcome::SpawnFailed { error } => write!(f, "could not be started: {error}"),
        }
    }
}

/// One start of an agent process.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct RunRecord {
    pub started_at: SystemTime,
    pub ended_at: Option<SystemTime>,
    pub outcome: Option<ExitOutcome>,
    /// Which start of the supervisor (0 for the first, then one more per restart of the
    /// supervisor on the same work directory) made this run.
    #[serde(default)]
    pub supervisor_start: u32,
}

/// Everything known about one agent.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct AgentRecord {
    pub index: u32,
    pub id: String,
    pub state: AgentState,
    pub restarts: u32,
    pub runs: Vec<RunRecord>,
    /// Ended by a shutdown request rather than on its own: a supervisor started again on
    /// the same work directory runs it again.
    #[serde(default)]
    pub stopped: bool,
}

/// What the supervisor does after an agent process ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Step {
    Restart { after: Duration },
    Finish(AgentState),
}

/// Delay before restart number `restarts_done + 1`: 1s, 2s, 4s, … up to 60s.
pub fn backoff(restarts_done: u32) -> Duration {
    BACKOFF_START
        .checked_mul(2u32.saturating_pow(restarts_done))
        .map_or(BACKOFF_MAX, |d| d.min(BACKOFF_MAX))
}

/// Restart decision after an agent process ended with `outcome`, having been restarted
/// `restarts_done` times already.
pub fn next_step(
    policy: RestartPolicy,
    outcome: &ExitOutcome,
    restarts_done: u32,
    max_restarts: u32,
) -> Step {
    let wants_restart = match policy {
        RestartPolicy::Never => false,
        RestartPolicy::OnFailure => !outcome.is_success(),
        RestartPolicy::Always => true,
    };
    if wants_restart && restarts_done < max_restarts {
        Step::Restart {
            after: backoff(restarts_done),
        }
    } else {
        Step::Finish(outcome.final_state())
    }
}

/// The result of a supervision.
#[derive(Debug, Clone)]
pub struct Supervision {
    pub agents: Vec<AgentRecord>,
    /// True when a shutdown request stopped the agents before they all ended on their own.
    pub stopped: bool,
}

impl Supervision {
    pub fn all_succeeded(&self) -> bool {
        self.agents.iter().all(|a| a.state == AgentState::Succeeded)
    }
}

/// The agents' output directories could not be prepared.
#[derive(Debug, thiserror::Error)]
#[error("failed to prepare {path}")]
pub struct SuperviseError {
    pub path: PathBuf,
    #[source]
    pub source: io::Error,
}

/// Starts and signals agent processes: the supervisor's only contact with the operating
/// system, so that tests can drive the state machine with scripted exits.
pub trait Spawn: Send + Sync + 'static {
    /// Starts agent `index`; blocks until the process runs (or could not be started).
    fn spawn(&self, index: u32) -> io::Result<Spawned>;
    /// Sends `signal` to process group `group` (`None`: only checks it); false when the
    /// group has no process left.
    fn signal_group(&self, group: i32, signal: Option<Signal>) -> bool;
    /// Collects exited processes that are not agents (what the agents left behind), so
    /// that their process groups can empty.
    fn reap_orphans(&self);
}

/// A started agent process.
pub struct Spawned {
    /// Its pid, which is also its process group.
    pub pid: i32,
    /// Resolves with how the process ended.
    pub exit: BoxFuture<'static, ExitOutcome>,
    /// Tasks copying its output to the log files.
    pub captures: Vec<JoinHandle<io::Result<u64>>>,
}

/// Receives what the supervisor does (the metrics, in production).
pub trait Observe: Send + Sync + 'static {
    /// Agent `index` was started: as process group `group`, or `None` when it could not be.
    fn agent_started(&self, index: usize, group: Option<i32>);
    /// Agent `index`'s process ended.
    fn agent_exited(&self, index: usize, outcome: &ExitOutcome);
    /// How many agents are in each state now.
    fn states(&self, counts: &HashMap<AgentState, usize>);
    /// Everything known about the agents, after each change (to keep it across a restart
    /// of the supervisor).
    fn records(&self, _agents: &[AgentRecord]) {}
}

/// What the supervisor shares with the rest of the process.
#[derive(Clone)]
pub struct SuperviseContext {
    pub observer: Arc<dyn Observe>,
    /// Set once every agent was started (drives `/readyz`).
    pub ready: Arc<AtomicBool>,
}

/// An agent process that ended.
struct Exited {
    index: usize,
    outcome: ExitOutcome,
    at: SystemTime,
}

struct Slot {
    record: AgentRecord,
    /// Process group of the current (or last) process; also its leader's pid.
    group: Option<i32>,
    alive: bool,
    captures: Vec<JoinHandle<io::Result<u64>>>,
}

/// Owner of the supervision state.
pub struct Supervisor<S> {
    config: SuperviseConfig,
    spawner: Arc<S>,
    ctx: SuperviseContext,
    slots: Vec<Slot>,
    /// One task per running process, resolving when it ends.
    exits: JoinSet<Exited>,
    /// One timer per agent in backoff, resolving with its index when the restart is due.
    restarts: JoinSet<usize>,
    /// Which start of the supervisor this is (see [`RunRecord::supervisor_start`]).
    supervisor_start: u32,
}

impl<S: Spawn> Supervisor<S> {
    /// Prepares the agents' output directories.
    pub fn new(
        config: SuperviseConfig,
        spawner: Arc<S>,
        ctx: SuperviseContext,
    ) -> Result<Supervisor<S>, SuperviseError> {
        let slots = (0..config.agents)
            .map(|index| {
                let dir = config.output_dir(index);
                std::fs::create_dir_all(&dir)
                    .map_err(|source| SuperviseError { path: dir, source })?;
                Ok(Slot {
                    record: AgentRecord {
                        index,
                        id: config.agent_id(index),
                        state: AgentState::Running,
                        restarts: 0,
                        runs: Vec::new(),
                        stopped: false,
                    },
                    group: None,
                    alive: false,
                    captures: Vec::new(),
                })
            })
            .collect::<Result<Vec<_>, _>>()?;
        Ok(Supervisor {
            config,
            spawner,
            ctx,
            slots,
            exits: JoinSet::new(),
            restarts: JoinSet::new(),
            supervisor_start: 0,
        })
    }

    /// Continues from what an earlier start of the supervisor recorded (see
    /// [`crate::resume`]): agents in a final state are not started again, the others start
    /// as run number `runs.len()` of theirs.
    pub fn resume_from(mut self, history: Vec<AgentRecord>, supervisor_start: u32) -> Self {
        for (slot, record) in self.slots.iter_mut().zip(history) {
            slot.record.state = record.state;
            slot.record.restarts = record.restarts;
            slot.record.runs = record.runs;
        }
        self.supervisor_start = supervisor_start;
        self
    }

    /// Runs the agents until they have all ended, or until `shutdown` stops them.
    pub async fn run(mut self, shutdown: Shutdown) -> Supervision {
        let starting = Instant::now();
        self.start_all(&shutdown).await;
        info!(
            "started {} agents in {} ms",
            self.slots.len(),
            starting.elapsed().as_millis()
        );
        self.ctx.ready.store(true, Ordering::Release);
        self.publish_states();

        let stopped = loop {
            if self.slots.iter().all(|s| s.record.state.is_final()) {
                break false;
            }
            tokio::select! {
                Some(exited) = self.exits.join_next() => {
                    self.on_exit(exited.expect("exit watchers do not panic"), false);
                }
                Some(due) = self.restarts.join_next() => {
                    self.restart(due.expect("restart timers do not panic"));
                }
                () = shutdown.stop.cancelled() => break true,
            }
        };
        if stopped {
            self.stop(&shutdown).await;
        }
        self.drain_logs().await;
        Supervision {
            agents: self.slots.into_iter().map(|s| s.record).collect(),
            stopped,
        }
    }

    /// Starts every agent. Spawning waits for each new process to exec, so several
    /// threads spawn at once: starting 1,000 agents is bound by the kernel, not by one loop.
    async fn start_all(&mut self, shutdown: &Shutdown) {
        let lanes = SPAWN_LANES.min(self.slots.len().max(1));
        let mut batches = Vec::with_capacity(lanes);
        for lane in 0..lanes {
            let spawner = self.spawner.clone();
            let stop = shutdown.stop.clone();
            let indices: Vec<usize> = (lane..self.slots.len())
                .step_by(lanes)
                .filter(|&index| !self.slots[index].record.state.is_final())
                .collect();
            batches.push(tokio::task::spawn_blocking(move || {
                indices
                    .into_iter()
                    .take_while(|_| !stop.is_cancelled())
                    .map(|index| {
                        let started_at = SystemTime::now();
                        (index, started_at, spawner.spawn(index as u32))
                    })
                    .collect::<Vec<_>>()
            }));
        }
        for batch in batches {
            let spawned = batch.await.expect("spawning agents does not panic");
            for (index, started_at, result) in spawned {
                self.record_start(index, started_at, result);
            }
        }
    }

    /// Starts agent `index` again after its backoff.
    fn restart(&mut self, index: usize) {
        let started_at = SystemTime::now();
        let result = self.spawner.spawn(index as u32);
        self.record_start(index, started_at, result);
        self.publish_states();
    }

    /// Books a start: the agent is running and watched, or its spawn failure is an exit.
    fn record_start(&mut self, index: usize, started_at: SystemTime, result: io::Result<Spawned>) {
        let slot = &mut self.slots[index];
        let k = slot.record.index;
        slot.record.runs.push(RunRecord {
            started_at,
            ended_at: None,
            outcome: None,
            supervisor_start: self.supervisor_start,
        });
        slot.record.state = AgentState::Running;

        match result {
            Ok(spawned) => {
                info!("agent-{k} running (pid {})", spawned.pid);
                self.ctx.observer.agent_started(index, Some(spawned.pid));
                slot.group = Some(spawned.pid);
                slot.alive = true;
                slot.captures.extend(spawned.captures);
                let exit = spawned.exit;
                self.exits.spawn(async move {
                    let outcome = exit.await;
                    Exited {
                        index,
                        outcome,
                        at: SystemTime::now(),
                    }
                });
            }
            Err(err) => {
                self.ctx.observer.agent_started(index, None);
                let exited = Exited {
                    index,
                    outcome: ExitOutcome::SpawnFailed {
                        error: err.to_string(),
                    },
                    at: SystemTime::now(),
                };
                self.exits.spawn(async move { exited });
            }
        }
    }

    fn on_exit(&mut self, exited: Exited, stopping: bool) {
        let Exited { index, outcome, at } = exited;
        self.ctx.observer.agent_exited(index, &outcome);
        let policy = self.config.restart;
        let max = self.config.max_restarts;
        let slot = &mut self.slots[index];
        slot.alive = false;
        if let Some(run) = slot.record.runs.last_mut() {
            run.ended_at = Some(at);
            run.outcome = Some(outcome.clone());
        }
        let k = slot.record.index;
        let step = if stopping {
            Step::Finish(outcome.final_state())
        } else {
            next_step(policy, &outcome, slot.record.restarts, max)
        };
        match step {
            Step::Restart { after } => {
                slot.record.state = AgentState::Backoff;
                slot.record.restarts += 1;
                warn!(
                    "agent-{k} {outcome}; restart {} of {max} in {}",
                    slot.record.restarts,
                    humantime::format_duration(after)
                );
                self.restarts.spawn(async move {
                    tokio::time::sleep(after).await;
                    index
                });
            }
            Step::Finish(state) => {
                slot.record.state = state;
                slot.record.stopped = stopping;
                match state {
                    _ if stopping => info!("agent-{k} stopped: {outcome}"),
                    AgentState::Succeeded => info!("agent-{k} succeeded"),
                    _ => warn!(
                        "agent-{k} {outcome}; failed after {} restarts",
                        slot.record.restarts
                    ),
                }
            }
        }
        self.publish_states();
    }

    fn publish_states(&self) {
        let mut counts = HashMap::new();
        for slot in &self.slots {
            *counts.entry(slot.record.state).or_insert(0) += 1;
        }
        self.ctx.observer.states(&counts);
        let records: Vec<AgentRecord> = self.slots.iter().map(|s| s.record.clone()).collect();
        self.ctx.observer.records(&records);
    }

    /// SIGTERM to every agent's process group, SIGKILL after the stop timeout (or at a
    /// second request), then SIGKILL to whatever is left in the groups.
    async fn stop(&mut self, shutdown: &Shutdown) {
        // Agents waiting for a restart (their timers go), or never started, will not run:
        // they failed.
        self.restarts.abort_all();
        for slot in &mut self.slots {
            let waiting = slot.record.state == AgentState::Backoff;
            let never_started = slot.record.state == AgentState::Running && !slot.alive;
            if waiting || never_started {
                slot.record.state = AgentState::Failed;
                slot.record.stopped = true;
            }
        }
        self.publish_states();
        let running = self.slots.iter().filter(|s| s.alive).count();
        info!(
            "stopping {running} agents (SIGKILL in {})",
            humantime::format_duration(self.config.stop_timeout)
        );
        self.signal_groups(Signal::SIGTERM);
        let deadline = Instant::now() + self.config.stop_timeout;
        // Agents' children may outlive them: the grace period lasts until every process
        // group is empty. Its last member is an orphan, so its exit raises SIGCHLD here.
        let mut sigchld = signal(SignalKind::child()).ok();
        let mut recheck = tokio::time::interval(GROUP_RECHECK);
        let mut killed = false;
        let mut kill_deadline = None;
        loop {
            self.spawner.reap_orphans();
            let leaders_alive = self.slots.iter().any(|s| s.alive);
            if !leaders_alive && (killed || !self.any_group_alive()) {
                break;
            }
            tokio::select! {
                Some(exited) = self.exits.join_next() => {
                    self.on_exit(exited.expect("exit watchers do not panic"), true);
                }
                () = next_signal(&mut sigchld) => {}
                _ = recheck.tick() => {}
                () = tokio::time::sleep_until(deadline), if !killed => {
                    warn!("stop timeout reached: killing the remaining agents");
                    killed = true;
                }
                () = shutdown.kill.cancelled(), if !killed => killed = true,
                () = sleep_until_opt(kill_deadline) => {
                    warn!("agents did not go away after SIGKILL; giving up on them");
                    break;
                }
            }
            if killed && kill_deadline.is_none() {
                self.signal_groups(Signal::SIGKILL);
                kill_deadline = Some(Instant::now() + KILL_WAIT);
            }
        }
        // Whatever the agents left behind in their groups goes too.
        self.signal_groups(Signal::SIGKILL);
    }

    fn any_group_alive(&self) -> bool {
        self.slots
            .iter()
            .filter_map(|s| s.group)
            .any(|group| self.spawner.signal_group(group, None))
    }

    fn signal_groups(&self, signal: Signal) {
        for group in self.slots.iter().filter_map(|s| s.group) {
            // False: the group is already empty.
            self.spawner.signal_group(group, Some(signal));
        }
    }

    /// Waits (boundedly) until the agents' output is completely in the log files.
    async fn drain_logs(&mut self) {
        let captures: Vec<_> = self
            .slots
            .iter_mut()
            .flat_map(|s| s.captures.drain(..))
            .collect();
        let all = futures::future::join_all(captures);
        match tokio::time::timeout(LOG_DRAIN_WAIT, all).await {
            Ok(results) => {
                for result in results.into_iter().flatten() {
                    if let Err(err) = result {
                        warn!("agent log capture failed: {err}");
                    }
                }
            }
            Err(_) => warn!(
                "some agent output pipes are still open (processes left behind?); \
                 their output keeps going to the log files"
            ),
        }
    }
}

async fn next_signal(signal: &mut Option<tokio::signal::unix::Signal>) {
    match signal {
        Some(signal) => {
            signal.recv().await;
        }
        None => std::future::pending().await,
    }
}

async fn sleep_until_opt(deadline: Option<Instant>) {
    match deadline {
        Some(deadline) => tokio::time::sleep_until(deadline).await,
        None => std::future::pending().await,
    }
}

#[cfg(test)]
mod tests {
    use std::path::Path;
    use std::sync::Mutex;

    use tokio::sync::mpsc;

    use super::*;

    const FAIL: ExitOutcome = ExitOutcome::Failure { code: 3 };

    #[test]
    fn backoff_doubles_from_one_second_up_to_a_minute() {
        let delays: Vec<u64> = (0..9).map(|n| backoff(n).as_secs()).collect();
        assert_eq!(delays, [1, 2, 4, 8, 16, 32, 60, 60, 60]);
        assert_eq!(backoff(u32::MAX), BACKOFF_MAX);
    }

    #[test]
    fn on_failure_restarts_failures_until_the_cap() {
        let policy = RestartPolicy::OnFailure;
        assert_eq!(
            next_step(policy, &FAIL, 0, 2),
            Step::Restart {
                after: Duration::from_secs(1)
            }
        );
        assert_eq!(
            next_step(policy, &FAIL, 1, 2),
            Step::Restart {
                after: Duration::from_secs(2)
            }
        );
        assert_eq!(
            next_step(policy, &FAIL, 2, 2),
            Step::Finish(AgentState::Failed)
        );
    }

    #[test]
    fn on_failure_does_not_restart_a_success() {
        assert_eq!(
            next_step(RestartPolicy::OnFailure, &ExitOutcome::Success, 0, 5),
            Step::Finish(AgentState::Succeeded)
        );
    }

    #[test]
    fn signal_deaths_count_as_failures() {
        let killed = ExitOutcome::Signal { signal: 9 };
        assert!(matches!(
            next_step(RestartPolicy::OnFailure, &killed, 0, 1),
            Step::Restart { .. }
        ));
        assert_eq!(killed.exit_code(), 137);
    }

    #[test]
    fn never_keeps_the_outcome() {
        assert_eq!(
            next_step(RestartPolicy::Never, &FAIL, 0, 5),
            Step::Finish(AgentState::Failed)
        );
    }

    #[test]
    fn always_restarts_successes_too_and_ends_with_the_last_outcome() {
        let policy = RestartPolicy::Always;
        assert!(matches!(
            next_step(policy, &ExitOutcome::Success, 0, 1),
            Step::Restart { .. }
        ));
        assert_eq!(
            next_step(policy, &ExitOutcome::Success, 1, 1),
            Step::Finish(AgentState::Succeeded)
        );
    }

    #[test]
    fn agent_ids_and_output_dirs_follow_the_layout() {
        let config = SuperviseConfig {
            agents: 2,
            command: AgentCommand {
                program: "run".into(),
                args: vec![],
            },
            script_dir: "/w/script".into(),
            results_dir: "/w/results".into(),
            pod: "pod-x".into(),
            container: 1,
            players_per_agent: 100,
            restart: RestartPolicy::OnFailure,
            max_restarts: 5,
            stop_timeout: Duration::from_secs(20),
            placement: None,
            start_at: None,
            env: Vec::new(),
        };
        assert_eq!(config.agent_id(3), "pod-x-c1-a3");
        assert_eq!(config.output_dir(3), Path::new("/w/results/agent-3"));
    }

    /// How one scripted agent process behaves.
    #[derive(Debug, Clone)]
    enum Script {
        /// Ends with `outcome` after `after`, or earlier by SIGTERM or SIGKILL.
        Exit {
            after: Duration,
            outcome: ExitOutcome,
        },
        /// Runs until SIGKILL, ignoring SIGTERM.
        IgnoreTerm,
    }

    /// What the scripted spawner saw, in virtual milliseconds since the test started.
    #[derive(Debug, Clone, PartialEq, Eq)]
    enum Seen {
        Spawn(u32),
        Signal(u32, Signal),
    }

    struct Fake {
        alive: Arc<AtomicBool>,
        index: u32,
        signals: mpsc::UnboundedSender<Signal>,
    }

    /// A [`Spawn`] whose processes follow a script: start number `n` of any agent runs
    /// `scripts[n]` (the last one repeats).
    struct Scripted {
        t0: Instant,
        scripts: Vec<Script>,
        starts: Mutex<usize>,
        processes: Mutex<HashMap<i32, Fake>>,
        seen: Mutex<Vec<(u64, Seen)>>,
    }

    impl Scripted {
        fn new(scripts: Vec<Script>) -> Arc<Scripted> {
            Arc::new(Scripted {
                t0: Instant::now(),
                scripts,
                starts: Mutex::new(0),
                processes: Mutex::new(HashMap::new()),
                seen: Mutex::new(Vec::new()),
            })
        }

        fn note(&self, seen: Seen) {
            let ms = self.t0.elapsed().as_millis() as u64;
            self.seen.lock().expect("not poisoned").push((ms, seen));
        }

        fn seen(&self) -> Vec<(u64, Seen)> {
            self.seen.lock().expect("not poisoned").clone()
        }
    }

    impl Spawn for Scripted {
        fn spawn(&self, index: u32) -> io::Result<Spawned> {
            let start = {
                let mut starts = self.starts.lock().expect("not poisoned");
                *starts += 1;
                *starts
            };
            let script = self.scripts[(start - 1).min(self.scripts.len() - 1)].clone();
            let pid = 1000 + start as i32;
            let (signals, mut received) = mpsc::unbounded_channel();
            let alive = Arc::new(AtomicBool::new(true));
            self.processes.lock().expect("not poisoned").insert(
                pid,
                Fake {
                    alive: alive.clone(),
                    index,
                    signals,
                },
            );
            self.note(Seen::Spawn(index));
            let exit = async move {
                let (after, outcome, ignores_term) = match script {
                    Script::Exit { after, outcome } => (Some(after), outcome, false),
                    Script::IgnoreTerm => (None, ExitOutcome::Success, true),
                };
                let ends = async {
                    match after {
                        Some(after) => tokio::time::sleep(after).await,
                        None => std::future::pending().await,
                    }
                };
                tokio::pin!(ends);
                let outcome = loop {
                    tokio::select! {
                        () = &mut ends => break outcome,
                        Some(signal) = received.recv() => {
                            if signal == Signal::SIGKILL || !ignores_term {
                                break ExitOutcome::Signal { signal: signal as i32 };
                            }
                        }
                    }
                };
                alive.store(false, Ordering::Release);
                outcome
            };
            Ok(Spawned {
                pid,
                exit: Box::pin(exit),
                captures: Vec::new(),
            })
        }

        fn signal_group(&self, group: i32, signal: Option<Signal>) -> bool {
            let processes = self.processes.lock().expect("not poisoned");
            let Some(fake) = processes.get(&group) else {
                return false;
            };
            if !fake.alive.load(Ordering::Acquire) {
                return false;
            }
            if let Some(signal) = signal {
                self.note(Seen::Signal(fake.index, signal));
                let _ = fake.signals.send(signal);
            }
            true
        }

        fn reap_orphans(&self) {}
    }

    struct Unobserved;

    impl Observe for Unobserved {
        fn agent_started(&self, _: usize, _: Option<i32>) {}
        fn agent_exited(&self, _: usize, _: &ExitOutcome) {}
        fn states(&self, _: &HashMap<AgentState, usize>) {}
    }

    fn config(results: &Path, restart: RestartPolicy, max_restarts: u32) -> SuperviseConfig {
        SuperviseConfig {
            agents: 1,
            command: AgentCommand {
                program: "scripted".into(),
                args: vec![],
            },
            script_dir: results.to_owned(),
            results_dir: results.to_owned(),
            pod: "pod".into(),
            container: 0,
            players_per_agent: 1,
            restart,
            max_restarts,
            stop_timeout: Duration::from_secs(20),
            placement: None,
            start_at: None,
            env: Vec::new(),
        }
    }

    /// Supervises one scripted agent, sending shutdown requests at `requests` (virtual ms).
    async fn supervise(
        config: SuperviseConfig,
        spawner: Arc<Scripted>,
        requests: &[u64],
    ) -> Supervision {
        let ctx = SuperviseContext {
            observer: Arc::new(Unobserved),
            ready: Arc::new(AtomicBool::new(false)),
        };
        let supervisor = Supervisor::new(config, spawner, ctx).expect("output dirs");
        let shutdown = Shutdown::default();
        let requester = shutdown.clone();
        let times = requests.to_vec();
        tokio::spawn(async move {
            let t0 = Instant::now();
            for ms in times {
                tokio::time::sleep_until(t0 + Duration::from_millis(ms)).await;
                requester.request();
            }
        });
        supervisor.run(shutdown).await
    }

    fn fails_after(ms: u64) -> Script {
        Script::Exit {
            after: Duration::from_millis(ms),
            outcome: FAIL,
        }
    }

    fn spawn_times(seen: &[(u64, Seen)]) -> Vec<u64> {
        seen.iter()
            .filter(|(_, s)| matches!(s, Seen::Spawn(_)))
            .map(|&(ms, _)| ms)
            .collect()
    }

    #[tokio::test(start_paused = true)]
    async fn restarts_wait_one_two_four_eight_seconds_after_each_failure() {
        let dir = tempfile::tempdir().expect("tempdir");
        let spawner = Scripted::new(vec![fails_after(100)]);
        let supervision = supervise(
            config(dir.path(), RestartPolicy::OnFailure, 4),
            spawner.clone(),
            &[],
        )
        .await;
        // Each run lasts 100 ms; then 1 s, 2 s, 4 s, 8 s of backoff.
        assert_eq!(
            spawn_times(&spawner.seen()),
            [0, 1_100, 3_200, 7_300, 15_400]
        );
        assert!(!supervision.stopped);
    }

    #[tokio::test(start_paused = true)]
    async fn after_max_restarts_the_agent_is_failed_and_not_started_again() {
        for max_restarts in [0, 2] {
            let dir = tempfile::tempdir().expect("tempdir");
            let spawner = Scripted::new(vec![fails_after(10)]);
            let supervision = supervise(
                config(dir.path(), RestartPolicy::OnFailure, max_restarts),
                spawner.clone(),
                &[],
            )
            .await;
            let agent = &supervision.agents[0];
            assert_eq!(agent.state, AgentState::Failed);
            assert_eq!(agent.restarts, max_restarts);
            assert_eq!(agent.runs.len(), 1 + max_restarts as usize);
            assert_eq!(
                spawn_times(&spawner.seen()).len(),
                1 + max_restarts as usize
            );
        }
    }

    #[tokio::test(start_paused = true)]
    async fn with_always_the_cap_ends_a_succeeding_agent_as_succeeded() {
        let dir = tempfile::tempdir().expect("tempdir");
        let succeeds = Script::Exit {
            after: Duration::from_millis(10),
            outcome: ExitOutcome::Success,
        };
        let spawner = Scripted::new(vec![succeeds]);
        let supervision = supervise(
            config(dir.path(), RestartPolicy::Always, 2),
            spawner.clone(),
            &[],
        )
        .await;
        assert_eq!(spawn_times(&spawner.seen()), [0, 1_010, 3_020]);
        assert_eq!(supervision.agents[0].state, AgentState::Succeeded);
    }

    #[tokio::test(start_paused = true)]
    async fn stop_sends_sigterm_then_sigkill_once_the_stop_timeout_has_passed() {
        let dir = tempfile::tempdir().expect("tempdir");
        let spawner = Scripted::new(vec![Script::IgnoreTerm]);
        let started = Instant::now();
        let supervision = supervise(
            config(dir.path(), RestartPolicy::OnFailure, 5),
            spawner.clone(),
            &[500],
        )
        .await;
        assert_eq!(
            spawner.seen(),
            [
                (0, Seen::Spawn(0)),
                (500, Seen::Signal(0, Signal::SIGTERM)),
                (20_500, Seen::Signal(0, Signal::SIGKILL)),
            ]
        );
        assert_eq!(started.elapsed(), Duration::from_millis(20_500));
        assert!(supervision.stopped);
        let agent = &supervision.agents[0];
        assert_eq!(agent.state, AgentState::Failed);
        assert_eq!(
            agent.runs[0].outcome,
            Some(ExitOutcome::Signal { signal: 9 })
        );
    }

    #[tokio::test(start_paused = true)]
    async fn an_agent_that_ends_on_sigterm_is_not_killed_and_stop_returns_at_once() {
        let dir = tempfile::tempdir().expect("tempdir");
        let spawner = Scripted::new(vec![fails_after(60_000)]);
        let started = Instant::now();
        let supervision = supervise(
            config(dir.path(), RestartPolicy::OnFailure, 5),
            spawner.clone(),
            &[500],
        )
        .await;
        assert_eq!(
            spawner.seen(),
            [(0, Seen::Spawn(0)), (500, Seen::Signal(0, Signal::SIGTERM)),]
        );
        assert_eq!(started.elapsed(), Duration::from_millis(500));
        assert_eq!(
            supervision.agents[0].runs[0].outcome,
            Some(ExitOutcome::Signal { signal: 15 })
        );
    }

    #[tokio::test(start_paused = true)]
    async fn a_second_shutdown_request_kills_at_once() {
        let dir = tempfile::tempdir().expect("tempdir");
        let spawner = Scripted::new(vec![Script::IgnoreTerm]);
        let supervision = supervise(
            config(dir.path(), RestartPolicy::OnFailure, 5),
            spawner.clone(),
            &[500, 800],
        )
        .await;
        assert_eq!(
            spawner.seen(),
            [
                (0, Seen::Spawn(0)),
                (500, Seen::Signal(0, Signal::SIGTERM)),
                (800, Seen::Signal(0, Signal::SIGKILL)),
            ]
        );
        assert!(supervision.stopped);
    }

    #[tokio::test(start_paused = true)]
    async fn an_agent_in_backoff_at_shutdown_is_failed_and_never_restarted() {
        let dir = tempfile::tempdir().expect("tempdir");
        let spawner = Scripted::new(vec![fails_after(100)]);
        let started = Instant::now();
        let supervision = supervise(
            config(dir.path(), RestartPolicy::OnFailure, 5),
            spawner.clone(),
            &[500],
        )
        .await;
        // Stopped during its 1 s backoff: the restart timer is gone with the supervisor.
        tokio::time::sleep(Duration::from_secs(5)).await;
        assert_eq!(spawner.seen(), [(0, Seen::Spawn(0))]);
        assert_eq!(started.elapsed(), Duration::from_millis(5_500));
        assert_eq!(supervision.agents[0].state, AgentState::Failed);
        assert_eq!(supervision.agents[0].restarts, 1);
    }
}
