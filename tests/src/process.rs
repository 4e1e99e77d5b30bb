//! A workspace binary run as a child process by a test: its stdout and stderr go to one log
//! file the test can show, and Drop stops it the way the kubelet stops a container (SIGTERM,
//! a grace period, SIGKILL), so a failing test leaves no supervisor or agent behind.

use std::fs::File;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;

use crate::poll_blocking;

/// How long Drop waits after SIGTERM before it kills.
const GRACE: Duration = Duration::from_secs(10);

/// A running child whose output is captured in `log`.
pub struct Running {
    child: Child,
    log: PathBuf,
}

impl Running {
    /// Starts `command` with standard input closed and stdout and stderr both sent to `log`.
    pub fn spawn(command: &mut Command, log: PathBuf) -> Running {
        let out = File::create(&log).expect("the test can create its log file");
        let err = out.try_clone().expect("a log file handle can be cloned");
        let child = command
            .stdin(Stdio::null())
            .stdout(out)
            .stderr(err)
            .spawn()
            .expect("the workspace binary starts");
        Running { child, log }
    }

    /// The child's pid, for signals.
    pub fn pid(&self) -> Pid {
        Pid::from_raw(i32::try_from(self.child.id()).expect("pids fit in i32"))
    }

    /// Everything the child printed so far.
    pub fn output(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// The exit status if the child has exited.
    pub fn try_wait(&mut self) -> Option<ExitStatus> {
        self.child.try_wait().expect("the child can be waited for")
    }

    /// The port a `wave-agent` started with `WAVE_METRICS_PORT=0` serves metrics on, once
    /// its log says; fails the test with its output after `limit`.
    pub fn metrics_port(&self, limit: Duration) -> u16 {
        poll_blocking(limit, || metrics_address(&self.output()))
            .unwrap_or_else(|| {
                panic!(
                    "no `serving metrics on` line after {limit:?}:\n{}",
                    self.output()
                )
            })
            .port()
    }

    /// The UDP port of the StatsD server of a `wave-agent` started with
    /// `WAVE_STATSD_PORT=0`, once its log names it; fails the test after `limit`.
    pub fn statsd_port(&self, limit: Duration) -> u16 {
        poll_blocking(limit, || statsd_address(&self.output()))
            .unwrap_or_else(|| {
                panic!(
                    "no `StatsD on udp://` line after {limit:?}:\n{}",
                    self.output()
                )
            })
            .port()
    }

    /// `try_wait` for Drop, which must not panic while a test is already failing.
    fn try_wait_quietly(&mut self) -> Option<ExitStatus> {
        self.child.try_wait().ok().flatten()
    }

    /// Waits for the child to exit on its own; fails the test with its output after `limit`.
    pub async fn wait(&mut self, limit: Duration) -> ExitStatus {
        let started = Instant::now();
        loop {
            if let Some(status) = self.try_wait() {
                return status;
            }
            if started.elapsed() > limit {
                let _ = self.child.kill();
                panic!("still running after {limit:?}:\n{}", self.output());
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

/// The address a `wave-agent` started with `WAVE_METRICS_PORT=0` bound, from the
/// `serving metrics on <address>` line of its log.
pub fn metrics_address(log: &str) -> Option<SocketAddr> {
    log.lines().find_map(|line| {
        line.split_once("serving metrics on ")?
            .1
            .trim()
            .parse()
            .ok()
    })
}

/// The UDP address of a `wave-agent`'s StatsD server, from its `StatsD on udp://<address>`
/// log line.
pub fn statsd_address(log: &str) -> Option<SocketAddr> {
    log.lines().find_map(|line| {
        line.split_once("StatsD on udp://")?
            .1
            .split_whitespace()
            .next()?
            .parse()
            .ok()
    })
}

/// The admission and metrics addresses a `wave-webhook serve` started on port 0 bound, from
/// the `serving` line of its JSON log.
pub fn webhook_addresses(log: &str) -> Option<(SocketAddr, SocketAddr)> {
    log.lines().find_map(|line| {
        let line: serde_json::Value = serde_json::from_str(line).ok()?;
        let fields = &line["fields"];
        if fields["message"] != "serving" {
            return None;
        }
        Some((
            fields["admission"].as_str()?.parse().ok()?,
            fields["metrics"].as_str()?.parse().ok()?,
        ))
    })
}

/// Waits until `log` names the addresses a `wave-webhook serve` on port 0 bound; fails the
/// test with the log after `limit`.
pub fn wait_for_webhook_addresses(log: &Path, limit: Duration) -> (SocketAddr, SocketAddr) {
    let read = || std::fs::read_to_string(log).unwrap_or_default();
    poll_blocking(limit, || webhook_addresses(&read()))
        .unwrap_or_else(|| panic!("no `serving` line after {limit:?}:\n{}", read()))
}

impl Drop for Running {
    fn drop(&mut self) {
        if self.try_wait_quietly().is_some() {
            return;
        }
        let _ = kill(self.pid(), Signal::SIGTERM);
        let deadline = Instant::now() + GRACE;
        while Instant::now() < deadline {
            if self.try_wait_quietly().is_some() {
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
