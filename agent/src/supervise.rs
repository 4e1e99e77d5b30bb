//! Running the agents: start, watch, restart with backoff, stop.
//!
//! One owner, [`Supervisor::run`], holds all supervision state and selects over agent exits,
//! restart timers and shutdown requests; nothing wakes while nothing happens. Each agent
//! process runs in its own process group, so stopping an agent reaches everything it started.
//! The decisions (restart or not, how long to wait) are pure functions, tested on their own.

use std::collections::HashMap;
use std::ffi::OsString;
use std::fs::{File, OpenOptions};
use std::io;
use std::path::{Path, PathBuf};
use std::process::{ExitStatus, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, SystemTime};

use nix::sys::signal::{Signal, killpg};
use nix::unistd::Pid;
use serde::{Deserialize, Serialize};
use tokio::signal::unix::{SignalKind, signal};
use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use tokio::time::Instant;
use tracing::{info, warn};

use crate::cli::RestartPolicy;
use crate::logs::{StdoutSink, capture};
use crate::metrics::AgentMetrics;
use crate::reap::{self, Tracked};
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
    fn from_status(status: ExitStatus) -> ExitOutcome {
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
#[derive(Debug, Clone)]
pub struct RunRecord {
    pub started_at: SystemTime,
    pub ended_at: Option<SystemTime>,
    pub outcome: Option<ExitOutcome>,
}

/// Everything known about one agent.
#[derive(Debug, Clone)]
pub struct AgentRecord {
    pub index: u32,
    pub id: String,
    pub state: AgentState,
    pub restarts: u32,
    pub runs: Vec<RunRecord>,
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
    let finished = if outcome.is_success() {
        AgentState::Succeeded
    } else {
        AgentState::Failed
    };
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
        Step::Finish(finished)
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

/// What the supervisor shares with the rest of the process.
#[derive(Debug, Clone)]
pub struct SuperviseContext {
    pub metrics: AgentMetrics,
    /// Pids tokio waits for, which the orphan reaper must leave alone.
    pub tracked: Arc<Tracked>,
    /// The supervisor's stdout, for the prefixed agent lines (`None`: log files only).
    pub stdout: Option<StdoutSink>,
    /// Set once every agent was started (drives `/readyz`).
    pub ready: Arc<AtomicBool>,
}

enum Event {
    Exited {
        index: usize,
        outcome: ExitOutcome,
        at: SystemTime,
    },
    RestartDue {
        index: usize,
    },
}

struct Slot {
    record: AgentRecord,
    /// Process group of the current (or last) process; also its leader's pid.
    group: Option<i32>,
    alive: bool,
    captures: Vec<JoinHandle<io::Result<u64>>>,
}

/// Owner of the supervision state.
pub struct Supervisor {
    config: SuperviseConfig,
    ctx: SuperviseContext,
    slots: Vec<Slot>,
    events_tx: mpsc::UnboundedSender<Event>,
    events: mpsc::UnboundedReceiver<Event>,
}

impl Supervisor {
    /// Prepares the agents' output directories.
    pub fn new(
        config: SuperviseConfig,
        ctx: SuperviseContext,
    ) -> Result<Supervisor, SuperviseError> {
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
                    },
                    group: None,
                    alive: false,
                    captures: Vec::new(),
                })
            })
            .collect::<Result<Vec<_>, _>>()?;
        ctx.metrics
            .set_players_configured(u64::from(config.agents) * config.players_per_agent);
        let (events_tx, events) = mpsc::unbounded_channel();
        Ok(Supervisor {
            config,
            ctx,
            slots,
            events_tx,
            events,
        })
    }

    /// Runs the agents until they have all ended, or until `shutdown` stops them.
    pub async fn run(mut self, mut shutdown: Shutdown) -> Supervision {
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
                Some(event) = self.events.recv() => self.handle(event, false),
                () = shutdown.requested() => break true,
            }
        };
        if stopped {
            self.stop(&mut shutdown).await;
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
        let config = Arc::new(self.config.clone());
        let lanes = SPAWN_LANES.min(self.slots.len().max(1));
        let mut batches = Vec::with_capacity(lanes);
        for lane in 0..lanes {
            let config = config.clone();
            let ctx = self.ctx.clone();
            let shutdown = shutdown.clone();
            let indices: Vec<usize> = (lane..self.slots.len()).step_by(lanes).collect();
            batches.push(tokio::task::spawn_blocking(move || {
                indices
                    .into_iter()
                    .take_while(|_| !shutdown.is_requested())
                    .map(|index| {
                        let started_at = SystemTime::now();
                        (index, started_at, spawn_agent(&config, index as u32, &ctx))
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
        let result = spawn_agent(&self.config, index as u32, &self.ctx);
        self.record_start(index, started_at, result);
    }

    /// Books a start: the agent is running and watched, or its spawn failure is an exit.
    fn record_start(&mut self, index: usize, started_at: SystemTime, result: io::Result<Spawned>) {
        let slot = &mut self.slots[index];
        let k = slot.record.index;
        slot.record.runs.push(RunRecord {
            started_at,
            ended_at: None,
            outcome: None,
        });
        slot.record.state = AgentState::Running;
        self.ctx.metrics.agent_started();

        match result {
            Ok(spawned) => {
                info!("agent-{k} running (pid {})", spawned.pid);
                slot.group = Some(spawned.pid);
                slot.alive = true;
                slot.captures.extend(spawned.captures);
                self.ctx.metrics.processes().set(index, Some(spawned.pid));
                let tx = self.events_tx.clone();
                let tracked = self.ctx.tracked.clone();
                let mut child = spawned.child;
                let pid = spawned.pid;
                tokio::spawn(async move {
                    let outcome = match child.wait().await {
                        Ok(status) => ExitOutcome::from_status(status),
                        Err(err) => ExitOutcome::SpawnFailed {
                            error: format!("lost track of the process: {err}"),
                        },
                    };
                    tracked.untrack(pid);
                    let _ = tx.send(Event::Exited {
                        index,
                        outcome,
                        at: SystemTime::now(),
                    });
                });
            }
            Err(err) => {
                let _ = self.events_tx.send(Event::Exited {
                    index,
                    outcome: ExitOutcome::SpawnFailed {
                        error: err.to_string(),
                    },
                    at: SystemTime::now(),
                });
            }
        }
    }

    fn handle(&mut self, event: Event, stopping: bool) {
        match event {
            Event::Exited { index, outcome, at } => {
                self.ctx.metrics.agent_exited(&outcome);
                self.ctx.metrics.processes().set(index, None);
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
                    Step::Finish(if outcome.is_success() {
                        AgentState::Succeeded
                    } else {
                        AgentState::Failed
                    })
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
                        let tx = self.events_tx.clone();
                        tokio::spawn(async move {
                            tokio::time::sleep(after).await;
                            let _ = tx.send(Event::RestartDue { index });
                        });
                    }
                    Step::Finish(state) => {
                        slot.record.state = state;
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
            }
            Event::RestartDue { index } => {
                if !stopping && self.slots[index].record.state == AgentState::Backoff {
                    self.restart(index);
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
        self.ctx.metrics.set_states(&counts);
    }

    /// SIGTERM to every agent's process group, SIGKILL after the stop timeout (or at a
    /// second request), then SIGKILL to whatever is left in the groups.
    async fn stop(&mut self, shutdown: &mut Shutdown) {
        for slot in &mut self.slots {
            // Agents waiting for a restart, or never started, will not run: they failed.
            let waiting = slot.record.state == AgentState::Backoff;
            let never_started = slot.record.state == AgentState::Running && !slot.alive;
            if waiting || never_started {
                slot.record.state = AgentState::Failed;
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
            reap::reap_orphans(&self.ctx.tracked);
            let leaders_alive = self.slots.iter().any(|s| s.alive);
            if !leaders_alive && (killed || !self.any_group_alive()) {
                break;
            }
            tokio::select! {
                Some(event) = self.events.recv() => self.handle(event, true),
                () = next_signal(&mut sigchld) => {}
                _ = recheck.tick() => {}
                () = tokio::time::sleep_until(deadline), if !killed => {
                    warn!("stop timeout reached: killing the remaining agents");
                    killed = true;
                }
                () = shutdown.forced(), if !killed => killed = true,
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
            .any(|group| killpg(Pid::from_raw(group), None).is_ok())
    }

    fn signal_groups(&self, signal: Signal) {
        for slot in &self.slots {
            if let Some(group) = slot.group {
                // ESRCH: the group is already empty.
                let _ = killpg(Pid::from_raw(group), signal);
            }
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

struct Spawned {
    child: tokio::process::Child,
    pid: i32,
    captures: Vec<JoinHandle<io::Result<u64>>>,
}

/// Starts agent `k`'s process in its own process group with its output captured.
fn spawn_agent(config: &SuperviseConfig, k: u32, ctx: &SuperviseContext) -> io::Result<Spawned> {
    let out_dir = config.output_dir(k);
    let stdout_log = open_log(&out_dir.join("stdout.log"))?;
    let stderr_log = open_log(&out_dir.join("stderr.log"))?;
    let mut out_env: OsString = out_dir.into_os_string();
    out_env.push("/");

    let mut cmd = tokio::process::Command::new(&config.command.program);
    cmd.args(&config.command.args)
        .current_dir(&config.script_dir)
        .env("AGENT_INDEX", k.to_string())
        .env("WAVE_AGENT_ID", config.agent_id(k))
        .env("PLAYERS_PER_AGENT", config.players_per_agent.to_string())
        .env("WAVE_OUTPUT_DIR", out_env)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .process_group(0)
        .kill_on_drop(true);

    // Spawn and record under the reaper's gate, so it never takes this agent for an orphan.
    let mut child = {
        let guard = ctx.tracked.spawning();
        let child = cmd
            .spawn()
            .map_err(|err| spawn_error(&config.command.program, err))?;
        if let Some(pid) = child.id() {
            guard.track(pid as i32);
        }
        child
    };
    let pid = child
        .id()
        .map(|p| p as i32)
        .expect("a child that was just spawned has not been waited for");
    let prefix = format!("[agent-{k}] ").into_bytes();
    let mut captures = Vec::with_capacity(2);
    if let Some(out) = child.stdout.take() {
        captures.push(tokio::spawn(capture(
            out,
            stdout_log,
            prefix.clone(),
            ctx.stdout.clone(),
        )));
    }
    if let Some(err) = child.stderr.take() {
        captures.push(tokio::spawn(capture(
            err,
            stderr_log,
            prefix,
            ctx.stdout.clone(),
        )));
    }
    Ok(Spawned {
        child,
        pid,
        captures,
    })
}

fn open_log(path: &Path) -> io::Result<File> {
    OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)
        .map_err(|err| io::Error::new(err.kind(), format!("cannot open {}: {err}", path.display())))
}

fn spawn_error(program: &OsString, err: io::Error) -> io::Error {
    io::Error::new(
        err.kind(),
        format!("cannot run {}: {err}", Path::new(program).display()),
    )
}

#[cfg(test)]
mod tests {
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
        };
        assert_eq!(config.agent_id(3), "pod-x-c1-a3");
        assert_eq!(config.output_dir(3), Path::new("/w/results/agent-3"));
    }
}
