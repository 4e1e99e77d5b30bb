//! Helpers shared by the supervisor benchmarks: start the release `wave-agent`, read its
//! CPU time and memory from /proc, talk to its metrics port.

#![allow(
    dead_code,
    reason = "each bench binary uses its own part of the helpers"
)]

use std::fs::File;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use wave_agent::procfs::{self, MemoryStatus, ProcStat};

pub const BIN: &str = env!("CARGO_BIN_EXE_wave-agent");

/// A running supervisor in its own temp work dir; stopped with SIGTERM on Drop.
pub struct Supervisor {
    pub child: Child,
    pub port: u16,
    pub work: tempfile::TempDir,
}

impl Supervisor {
    /// Starts `wave-agent run` with `agents` agents running `command`, stdout to /dev/null.
    pub fn start(agents: u32, extra: &[&str], command: &[&str]) -> Supervisor {
        let work = tempfile::tempdir().expect("work dir");
        let log = work.path().join("supervisor.err");
        let child = Command::new(BIN)
            .arg("run")
            .args(["--agents", &agents.to_string()])
            .args(["--metrics-port", "0"])
            .args(["--metrics-address", "127.0.0.1"])
            .arg("--work-dir")
            .arg(work.path())
            .args(["--pod-name", "bench", "--stop-timeout", "10s"])
            .args(extra)
            .arg("--")
            .args(command)
            // Warnings, and the line naming the metrics address.
            .env("WAVE_LOG", "warn,wave_agent::run=info")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(File::create(&log).expect("log file"))
            .spawn()
            .expect("start wave-agent");
        let port = metrics_port(&log);
        Supervisor { child, port, work }
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    pub fn results(&self) -> PathBuf {
        self.work.path().join("results")
    }

    /// Waits until `/readyz` answers 200 (every agent was started).
    pub fn wait_ready(&self) {
        wait_until("readyz", || {
            http_get(self.port, "/readyz").is_some_and(|(s, _)| s == 200)
        });
    }

    /// Waits until summary.json exists (every agent ended).
    pub fn wait_complete(&self) {
        let summary = self.results().join("summary.json");
        wait_until("summary.json", || summary.exists());
    }

    /// The value of an unlabelled-by-agent series in /metrics, e.g. `wave_agent_starts_total`.
    pub fn metric(&self, name: &str) -> Option<f64> {
        let (_, body) = http_get(self.port, "/metrics")?;
        body.lines()
            .find(|l| l.starts_with(name))?
            .rsplit(' ')
            .next()?
            .parse()
            .ok()
    }
}

impl Drop for Supervisor {
    fn drop(&mut self) {
        let _ = Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status();
        let _ = self.child.wait();
    }
}

/// CPU seconds (user + system) a process has used, from /proc/<pid>/stat.
pub fn cpu_seconds(pid: u32) -> f64 {
    let stat = ProcStat::read(pid as i32).expect("stat");
    stat.own_cpu_ticks as f64 / procfs::clock_ticks()
}

/// Resident set size in bytes, from /proc/<pid>/status (VmRSS).
pub fn rss_bytes(pid: u32) -> u64 {
    MemoryStatus::read(pid as i32).expect("VmRSS").rss
}

pub fn wait_until(what: &str, mut done: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(300);
    while !done() {
        assert!(Instant::now() < deadline, "gave up waiting for {what}");
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// The port in the supervisor's `serving metrics on <address>` log line.
fn metrics_port(log: &Path) -> u16 {
    let mut port = None;
    wait_until("the metrics address in the log", || {
        let text = std::fs::read_to_string(log).unwrap_or_default();
        port = text.lines().find_map(|line| {
            let address = line.split_once("serving metrics on ")?.1;
            Some(address.trim().parse::<SocketAddr>().ok()?.port())
        });
        port.is_some()
    });
    port.expect("found above")
}

pub fn http_get(port: u16, path: &str) -> Option<(u16, String)> {
    let mut stream = TcpStream::connect(("127.0.0.1", port)).ok()?;
    write!(stream, "GET {path} HTTP/1.0\r\nHost: localhost\r\n\r\n").ok()?;
    let mut response = String::new();
    stream.read_to_string(&mut response).ok()?;
    let status = response.split(' ').nth(1)?.parse().ok()?;
    Some((status, response.split_once("\r\n\r\n")?.1.to_owned()))
}

/// Total size of the files under `dir` whose name is `name`.
pub fn bytes_in(dir: &Path, name: &str) -> u64 {
    walk(dir)
        .into_iter()
        .filter(|p| p.file_name().is_some_and(|n| n == name))
        .filter_map(|p| std::fs::metadata(p).ok())
        .map(|m| m.len())
        .sum()
}

fn walk(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    if let Ok(entries) = std::fs::read_dir(dir) {
        for entry in entries.flatten() {
            let path = entry.path();
            if path.is_dir() {
                out.extend(walk(&path));
            } else {
                out.push(path);
            }
        }
    }
    out
}
