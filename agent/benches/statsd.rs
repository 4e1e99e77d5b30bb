//! StatsD ingest (docs/load-metrics.md):
//! 1. parse + aggregate on one core: datagrams of 20 lines over 10,000 series (counters,
//!    timers and gauges with tags), lines per second of one thread;
//! 2. the supervisor's resident memory once it holds 10,000 series sent over UDP;
//! 3. loss side by side with Etsy's StatsD (`$WAVE_TOOLS_DIR/statsd`, default
//!    `~/.cache/wave-tools/statsd`, installed by
//!    scripts/install-test-deps.sh): one Python sender pinned to core 1, the daemon to
//!    core 0, 20 lines per datagram, 100k / 200k / 500k / 800k lines/s for 10 s each; lines
//!    received (wave: `wave_statsd_lines_total`; Etsy's: its `statsd.metrics_received`
//!    counter over the console backend's flushes) against lines sent.
//!
//! `cargo bench -p wave-agent --bench statsd` (release build).

mod common;

use std::io::{BufRead, BufReader};
use std::net::UdpSocket;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::{Supervisor, rss_bytes};
use wave_agent::statsd::aggregate::{AggregateConfig, Aggregator};

const SERIES: usize = 10_000;

/// Datagrams of 20 lines cycling over `SERIES` series: 40 % counters, 40 % timers, 20 % gauges.
fn datagrams() -> Vec<Vec<u8>> {
    let lines: Vec<String> = (0..SERIES)
        .map(|i| match i % 5 {
            0 | 1 => format!("game.requests:1|c|#endpoint:e{},region:r{}", i % 97, i / 97),
            2 | 3 => format!(
                "game.latency:{}|ms|#endpoint:e{},region:r{}",
                5 + i % 400,
                i % 97,
                i / 97
            ),
            _ => format!("game.players:{}|g|#shard:s{i}", i % 1000),
        })
        .collect();
    lines
        .chunks(20)
        .map(|chunk| {
            let mut datagram = chunk.join("\n").into_bytes();
            datagram.push(b'\n');
            datagram
        })
        .collect()
}

fn free_udp_port() -> u16 {
    UdpSocket::bind("127.0.0.1:0")
        .and_then(|s| s.local_addr())
        .map(|a| a.port())
        .expect("a free UDP port")
}

/// The sender: `rate` lines/s in datagrams of 20 for `seconds`, paced per millisecond.
const SENDER: &str = r#"
import socket, sys, time
port, rate, seconds = int(sys.argv[1]), int(sys.argv[2]), float(sys.argv[3])
sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 8 << 20)
datagram = "".join("bench.requests:1|c\nbench.latency:%d|ms\n" % (5 + i) for i in range(10)).encode()
per_second = rate // 20
sent, start = 0, time.monotonic()
while True:
    elapsed = time.monotonic() - start
    if elapsed >= seconds:
        break
    due = int(elapsed * per_second) + 1
    while sent < due:
        sock.sendto(datagram, ("127.0.0.1", port))
        sent += 1
print(sent * 20)
"#;

fn send(port: u16, rate: u64, seconds: u64) -> u64 {
    let output = Command::new("taskset")
        .args(["-c", "1", "python3", "-c", SENDER])
        .args([port.to_string(), rate.to_string(), seconds.to_string()])
        .output()
        .expect("python3 sender");
    String::from_utf8_lossy(&output.stdout)
        .trim()
        .parse()
        .expect("lines sent")
}

fn pin_to_core_0(pid: u32) {
    let _ = Command::new("taskset")
        .args(["-p", "-c", "0", &pid.to_string()])
        .stdout(Stdio::null())
        .status();
}

fn wave_received(supervisor: &Supervisor) -> f64 {
    supervisor.metric("wave_statsd_lines_total").unwrap_or(0.0)
}

fn main() {
    // 1. One core, no sockets.
    let datagrams = datagrams();
    let mut aggregator = Aggregator::new(AggregateConfig::default());
    for d in &datagrams {
        aggregator.ingest_datagram(d);
    }
    let rounds = 100;
    let started = Instant::now();
    for _ in 0..rounds {
        for d in &datagrams {
            aggregator.ingest_datagram(d);
        }
    }
    let seconds = started.elapsed().as_secs_f64();
    let lines = (rounds * SERIES) as f64;
    println!(
        "parse + aggregate, one thread: {:.2} M lines/s ({} series held)",
        lines / seconds / 1e6,
        aggregator.series().len()
    );

    // 2. RSS with 10,000 series.
    let port = free_udp_port();
    let supervisor =
        Supervisor::start(1, &["--statsd-port", &port.to_string()], &["sleep", "3600"]);
    supervisor.wait_ready();
    let idle = rss_bytes(supervisor.pid());
    let socket = UdpSocket::bind("127.0.0.1:0").expect("bind");
    for _ in 0..3 {
        for d in &datagrams {
            socket.send_to(d, ("127.0.0.1", port)).expect("send");
            std::thread::sleep(Duration::from_micros(50));
        }
    }
    std::thread::sleep(Duration::from_secs(1));
    println!(
        "supervisor RSS: {:.1} MiB idle, {:.1} MiB holding {} series ({} lines received)",
        idle as f64 / 1048576.0,
        rss_bytes(supervisor.pid()) as f64 / 1048576.0,
        supervisor.metric("wave_statsd_series").unwrap_or(0.0),
        wave_received(&supervisor)
    );
    drop(supervisor);

    // 3. Loss against the reference daemon.
    let rates = [100_000u64, 200_000, 500_000, 800_000];
    let seconds = 10;
    let port = free_udp_port();
    let supervisor =
        Supervisor::start(1, &["--statsd-port", &port.to_string()], &["sleep", "3600"]);
    supervisor.wait_ready();
    pin_to_core_0(supervisor.pid());
    for rate in rates {
        let before = wave_received(&supervisor);
        let sent = send(port, rate, seconds);
        std::thread::sleep(Duration::from_millis(500));
        let received = wave_received(&supervisor) - before;
        println!(
            "wave-agent  {rate:>7} lines/s: sent {sent}, received {received}, lost {:.3} %",
            100.0 * (sent as f64 - received) / sent as f64
        );
    }
    drop(supervisor);

    // The tools folder of scripts/install-test-deps.sh: WAVE_TOOLS_DIR, else its default.
    let tools = std::env::var_os("WAVE_TOOLS_DIR")
        .map(std::path::PathBuf::from)
        .or_else(|| {
            std::env::var_os("HOME").map(|h| std::path::Path::new(&h).join(".cache/wave-tools"))
        });
    let Some(tools) = tools else {
        return;
    };
    let etsy = tools.join("statsd/node_modules/statsd");
    if !etsy.join("stats.js").is_file() {
        println!("Etsy's statsd is not installed (scripts/install-test-deps.sh): skipped");
        return;
    }
    let dir = tempfile::tempdir().expect("tempdir");
    let config = dir.path().join("config.js");
    let port = free_udp_port();
    std::fs::write(
        &config,
        format!(
            "{{ port: {port}, address: \"127.0.0.1\", mgmt_port: {}, backends: [\"./backends/console\"], flushInterval: 1000, deleteCounters: true }}",
            free_udp_port()
        ),
    )
    .expect("config");
    let mut daemon = Command::new("node")
        .current_dir(&etsy)
        .arg("stats.js")
        .arg(&config)
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("node runs");
    pin_to_core_0(daemon.id());
    let received = std::sync::Arc::new(std::sync::atomic::AtomicU64::new(0));
    let counter = received.clone();
    let stdout = daemon.stdout.take().expect("piped");
    std::thread::spawn(move || {
        // The console backend prints `counters: { … }` then `counter_rates: { … }`, both
        // with metrics_received: only the first counts.
        let mut in_counters = false;
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            let line = line.trim();
            if line == "counters: {" {
                in_counters = true;
            } else if line.starts_with('}') {
                in_counters = false;
            }
            if !in_counters {
                continue;
            }
            if let Some(rest) = line.strip_prefix("'statsd.metrics_received': ") {
                let n: u64 = rest.trim_end_matches(',').parse().unwrap_or(0);
                counter.fetch_add(n, std::sync::atomic::Ordering::Relaxed);
            }
        }
    });
    std::thread::sleep(Duration::from_secs(2));
    for rate in rates {
        let before = received.load(std::sync::atomic::Ordering::Relaxed);
        let sent = send(port, rate, seconds);
        std::thread::sleep(Duration::from_millis(2500));
        let got = received.load(std::sync::atomic::Ordering::Relaxed) - before;
        println!(
            "etsy statsd {rate:>7} lines/s: sent {sent}, received {got}, lost {:.3} %",
            100.0 * (sent as f64 - got as f64) / sent as f64
        );
    }
    let _ = daemon.kill();
    let _ = daemon.wait();
}
