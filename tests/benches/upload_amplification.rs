//! Upload amplification of a whole `wave-agent run`: bytes sent to the store (counted by a
//! proxy in front of s3s-fs) divided by the bytes the agents wrote, and the supervisor's
//! own CPU seconds, for 10 agents each writing about 100 KB/s to stdout and 100 KB/s to a
//! result file, results every 5 s.
//!
//! Run: `cargo bench -p wave-tests --bench upload_amplification`. Environment:
//! `BENCH_SECONDS` (default 120) is how long the agents write; `WAVE_AGENT_BIN` picks the
//! supervisor binary (default: this workspace's), so an older build can be measured the
//! same way. Prints one line; no assertion.

use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use nix::sys::signal::{self, Signal};
use nix::unistd::Pid;
use wave_tests::proxy::CountingProxy;
use wave_tests::s3::S3sFs;

const AGENTS: u32 = 10;

/// About 100 KB/s to stdout and as much to `result.log`: ten 1 KiB lines each, ten times a
/// second.
const AGENT: &str = r#"
line=$(head -c 1023 /dev/zero | tr '\0' 'x')
while :; do
  i=0
  while [ $i -lt 10 ]; do
    echo "$line"
    echo "$line" >> "$WAVE_OUTPUT_DIR/result.log"
    i=$((i+1))
  done
  sleep 0.1
done
"#;

fn total_size(dir: &Path) -> u64 {
    walk(dir)
        .iter()
        .map(|p| fs::metadata(p).map_or(0, |m| m.len()))
        .sum()
}

fn walk(dir: &Path) -> Vec<PathBuf> {
    let mut files = Vec::new();
    let Ok(entries) = fs::read_dir(dir) else {
        return files;
    };
    for entry in entries.flatten() {
        let path = entry.path();
        if path.is_dir() {
            files.extend(walk(&path));
        } else {
            files.push(path);
        }
    }
    files
}

/// User + system CPU seconds of process `pid` itself (not its children).
fn cpu_seconds(pid: u32) -> f64 {
    let stat = fs::read_to_string(format!("/proc/{pid}/stat")).expect("/proc/<pid>/stat");
    let after_comm = &stat[stat.rfind(')').expect("comm ends with )") + 2..];
    let fields: Vec<&str> = after_comm.split_whitespace().collect();
    let ticks: u64 =
        fields[11].parse::<u64>().expect("utime") + fields[12].parse::<u64>().expect("stime");
    let hz = nix::unistd::sysconf(nix::unistd::SysconfVar::CLK_TCK)
        .ok()
        .flatten()
        .unwrap_or(100) as f64;
    ticks as f64 / hz
}

#[tokio::main]
async fn main() {
    let seconds: u64 = std::env::var("BENCH_SECONDS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(120);
    let bin = std::env::var_os("WAVE_AGENT_BIN")
        .map(PathBuf::from)
        .unwrap_or_else(|| wave_tests::workspace_bin("wave-agent"));
    let s3 = S3sFs::start().await;
    let proxy = CountingProxy::start(s3.address());
    let tmp = tempfile::tempdir().expect("temp dir");
    let work = tmp.path().join("work");
    let script = tmp.path().join("agent.sh");
    fs::write(&script, AGENT).expect("write the agent");
    let log = fs::File::create(tmp.path().join("supervisor.log")).expect("log");
    let mut child = Command::new(&bin)
        .arg("run")
        .envs(s3.agent_env())
        .env("AWS_ENDPOINT_URL", proxy.endpoint())
        .env("TEST_ID", "bench")
        .env("POD_NAME", "pod-b")
        .env("WAVE_AGENTS", AGENTS.to_string())
        .env("PLAYERS_PER_AGENT", "1")
        .env("WAVE_WORK_DIR", &work)
        .env("WAVE_RESULTS_URL", s3.url("results/bench/").to_string())
        .env("WAVE_METRICS_PORT", "0")
        .env("WAVE_UPLOAD_INTERVAL", "5s")
        .env("WAVE_STOP_TIMEOUT", "120s")
        .arg("--")
        .arg("sh")
        .arg(&script)
        .stdin(Stdio::null())
        .stdout(log.try_clone().expect("log"))
        .stderr(log)
        .spawn()
        .expect("start wave-agent");
    let started = Instant::now();
    tokio::time::sleep(Duration::from_secs(seconds)).await;
    let cpu_running = cpu_seconds(child.id());
    signal::kill(Pid::from_raw(child.id() as i32), Signal::SIGTERM).expect("SIGTERM");
    let status = child.wait().expect("wait");
    let elapsed = started.elapsed();
    let written = total_size(&work.join("results"));
    let sent = proxy.sent();
    println!(
        "{} s of writing, {AGENTS} agents: written {:.1} MB, sent {:.1} MB, amplification {:.2}, \
         supervisor CPU {:.1} s until SIGTERM ({:.0} s wall in all, exit {status}), binary {}",
        seconds,
        written as f64 / 1e6,
        sent as f64 / 1e6,
        sent as f64 / written as f64,
        cpu_running,
        elapsed.as_secs_f64(),
        bin.display()
    );
}
