//! Agent processes on the machine, the production [`Spawn`]: each agent runs in its own
//! process group (so a signal reaches everything it started), with its output captured to
//! its log files and the supervisor's stdout, and its pid tracked so the orphan reaper
//! leaves its exit status to tokio.

use std::ffi::OsString;
use std::fs::{File, OpenOptions};
use std::io;
use std::path::Path;
use std::process::Stdio;
use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::SystemTime;

use futures::FutureExt;
use nix::sys::signal::{Signal, killpg};
use nix::unistd::Pid;

use crate::logs::{StdoutSink, capture};
use crate::reap::{self, Tracked};
use crate::supervise::{ExitOutcome, Spawn, Spawned, SuperviseConfig};

/// Spawns the agents of `config` as real processes.
pub struct ProcessSpawner {
    config: SuperviseConfig,
    /// Pids tokio waits for, which the orphan reaper must leave alone.
    tracked: Arc<Tracked>,
    /// The supervisor's stdout, for the prefixed agent lines (`None`: log files only).
    stdout: Option<StdoutSink>,
    /// Per agent, the `WAVE_RUN` of its next start.
    runs: Vec<AtomicU32>,
}

impl ProcessSpawner {
    pub fn new(
        config: SuperviseConfig,
        tracked: Arc<Tracked>,
        stdout: Option<StdoutSink>,
    ) -> ProcessSpawner {
        let runs = (0..config.agents).map(|_| AtomicU32::new(0)).collect();
        ProcessSpawner {
            config,
            tracked,
            stdout,
            runs,
        }
    }

    /// Starts numbering each agent's runs after the `earlier[k]` runs it already had (a
    /// supervisor resuming a test).
    pub fn with_earlier_runs(self, earlier: &[u32]) -> ProcessSpawner {
        for (next, &count) in self.runs.iter().zip(earlier) {
            next.store(count, Ordering::Relaxed);
        }
        self
    }
}

/// The line written into an agent's log files before each start but its first, so the
/// output of every run stays apart in the one appended file.
fn run_marker(k: u32, run: u32) -> String {
    format!(
        "--- wave: agent-{k} start {run} (WAVE_RUN={run}) at {}; the output above is from earlier runs ---\n",
        humantime::format_rfc3339_millis(SystemTime::now())
    )
}

impl Spawn for ProcessSpawner {
    /// Starts agent `k`'s process in its own process group with its output captured.
    fn spawn(&self, k: u32) -> io::Result<Spawned> {
        let config = &self.config;
        let out_dir = config.output_dir(k);
        let run = self.runs[k as usize].fetch_add(1, Ordering::Relaxed);
        let mut stdout_log = open_log(&out_dir.join("stdout.log"))?;
        let mut stderr_log = open_log(&out_dir.join("stderr.log"))?;
        if run > 0 {
            let marker = run_marker(k, run);
            for log in [&mut stdout_log, &mut stderr_log] {
                io::Write::write_all(log, marker.as_bytes())?;
            }
        }
        let mut out_env: OsString = out_dir.into_os_string();
        out_env.push("/");

        let mut cmd = tokio::process::Command::new(&config.command.program);
        cmd.args(&config.command.args)
            .current_dir(&config.script_dir)
            .env("AGENT_INDEX", k.to_string())
            .env("WAVE_AGENT_ID", config.agent_id(k))
            .env("PLAYERS_PER_AGENT", config.players_per_agent.to_string())
            .env("WAVE_OUTPUT_DIR", out_env)
            .envs(config.placement.iter().flat_map(|p| p.agent_env(k)))
            .envs(config.start_at.iter().map(|at| ("WAVE_START_AT", at)))
            .env("WAVE_RUN", run.to_string())
            .envs(config.env.iter().map(|(k, v)| (k, v)))
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .process_group(0)
            .kill_on_drop(true);

        // Spawn and record under the reaper's gate, so it never takes this agent for an orphan.
        let mut child = {
            let guard = self.tracked.spawning();
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
                self.stdout.clone(),
            )));
        }
        if let Some(err) = child.stderr.take() {
            captures.push(tokio::spawn(capture(
                err,
                stderr_log,
                prefix,
                self.stdout.clone(),
            )));
        }
        let tracked = self.tracked.clone();
        let exit = async move {
            let outcome = match child.wait().await {
                Ok(status) => ExitOutcome::from_status(status),
                Err(err) => ExitOutcome::SpawnFailed {
                    error: format!("lost track of the process: {err}"),
                },
            };
            tracked.untrack(pid);
            outcome
        }
        .boxed();
        Ok(Spawned {
            pid,
            exit,
            captures,
        })
    }

    fn signal_group(&self, group: i32, signal: Option<Signal>) -> bool {
        // ESRCH: the group is empty.
        killpg(Pid::from_raw(group), signal).is_ok()
    }

    fn reap_orphans(&self) {
        reap::reap_orphans(&self.tracked);
    }
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
