//! The supervisor as its agents' StatsD server (SPEC 6): lines sent over real UDP and Unix
//! datagram sockets come out of a real Prometheus exactly (counts, buckets, gauges), land in
//! `load-metrics.jsonl`, and every line of a flood is accounted for.

use std::collections::BTreeMap;
use std::net::UdpSocket;
use std::os::unix::net::UnixDatagram;
use std::path::Path;
use std::process::Command;
use std::time::Duration;

use serde_json::Value;
use wave_tests::process::Running;
use wave_tests::prometheus::Prometheus;
use wave_tests::{http_get, poll_blocking, workspace_bin};

/// A supervisor whose agent sleeps, with StatsD on a free port and windows of `window`.
fn supervisor(work: &Path, extra: &[(&str, &str)]) -> Running {
    let mut command = Command::new(workspace_bin("wave-agent"));
    command
        .arg("run")
        .env("TEST_ID", "statsd-test")
        .env("WAVE_METRICS_PORT", "0")
        .env("WAVE_METRICS_ADDRESS", "127.0.0.1")
        .env("WAVE_STATSD_PORT", "0")
        .env("WAVE_WORK_DIR", work)
        .env("WAVE_STOP_TIMEOUT", "2s")
        .env("POD_NAME", "statsd-pod")
        .envs(extra.iter().copied())
        .args(["--", "sleep", "3600"]);
    Running::spawn(&mut command, work.with_extension("log"))
}

/// The value of the exposition line that starts with `series` (name and labels).
fn scraped(port: u16, series: &str) -> Option<f64> {
    let body = http_get(port, "/metrics")?.body;
    body.lines()
        .find_map(|l| l.strip_prefix(series)?.strip_prefix(' ')?.parse().ok())
}

fn wait_scraped(port: u16, series: &str, want: f64) {
    let seen = poll_blocking(Duration::from_secs(30), || {
        scraped(port, series).filter(|v| *v == want)
    });
    assert_eq!(
        seen,
        Some(want),
        "{series} never reached {want}; /metrics:\n{}",
        http_get(port, "/metrics")
            .map(|r| r.body)
            .unwrap_or_default()
    );
}

fn one_value(prometheus: &Prometheus, promql: &str) -> f64 {
    let result = prometheus.query(promql);
    let series = result
        .as_array()
        .filter(|a| a.len() == 1)
        .unwrap_or_else(|| panic!("{promql} did not return one series: {result}"));
    series[0]["value"][1]
        .as_str()
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| panic!("no value in {result}"))
}

#[test]
fn prometheus_sees_exactly_the_lines_sent_over_udp_and_the_unix_socket() {
    let dir = tempfile::tempdir().expect("tempdir");
    let work = dir.path().join("work");
    let socket = dir.path().join("statsd.sock");
    let socket_env = socket.to_str().expect("UTF-8 temp path");
    let running = supervisor(
        &work,
        &[
            ("WAVE_STATSD_SOCKET", socket_env),
            ("WAVE_STATSD_MAX_SERIES", "20"),
            ("WAVE_LOAD_WINDOW", "1s"),
        ],
    );
    let metrics_port = running.metrics_port(Duration::from_secs(30));
    let statsd = ("127.0.0.1", running.statsd_port(Duration::from_secs(30)));

    // Over UDP: 1,000 logins with latencies 1..=1000 ms, 20 lines to a datagram.
    let udp = UdpSocket::bind("127.0.0.1:0").expect("bind");
    let mut sent = 0u64;
    for chunk in (1..=1000).collect::<Vec<u32>>().chunks(10) {
        let datagram: String = chunk
            .iter()
            .map(|ms| format!("requests:1|c|#endpoint:login\nlatency:{ms}|ms|#endpoint:login\n"))
            .collect();
        udp.send_to(datagram.as_bytes(), statsd).expect("send");
        sent += 20;
        // Loopback does not drop, but a burst can fill the buffer of a busy machine.
        std::thread::sleep(Duration::from_micros(200));
    }
    wait_scraped(
        metrics_port,
        "wave_statsd_lines_total{test_id=\"statsd-test\"}",
        sent as f64,
    );
    // Over the Unix socket: gauges with deltas, a sampled counter, garbage, and 30 new
    // series of which only 15 fit under the cap of 20.
    let unix = UnixDatagram::unbound().expect("socket");
    let mut send_unix = |text: &str| {
        unix.send_to(text.as_bytes(), &socket).expect("send");
        sent += text.lines().count() as u64;
    };
    send_unix(
        "players:100|g\nplayers:+20|g\nplayers:-5|g\nerrors:1|c|@0.5\nerrors:1|c|@0.5\nrequests:3|c|#endpoint:shop",
    );
    send_unix("this is not statsd\nlatency:12|ms|@7\nrequests:1|s");
    let series: String = (0..30).map(|i| format!("card:1|c|#id:{i}\n")).collect();
    send_unix(&series);

    wait_scraped(
        metrics_port,
        "wave_statsd_lines_total{test_id=\"statsd-test\"}",
        sent as f64,
    );
    let target = format!("127.0.0.1:{metrics_port}");
    let prometheus = Prometheus::start(std::slice::from_ref(&target));
    prometheus.wait_target_up(&target);

    let q = |promql: &str| one_value(&prometheus, promql);
    assert_eq!(
        q(r#"wave_load_requests_total{test_id="statsd-test",endpoint="login"}"#),
        1000.0
    );
    assert_eq!(q(r#"wave_load_requests_total{endpoint="shop"}"#), 3.0);
    assert_eq!(q("wave_load_errors_total"), 4.0, "two lines sampled at 0.5");
    assert_eq!(q("wave_load_players"), 115.0);
    assert_eq!(q(r#"wave_load_latency_count{endpoint="login"}"#), 1000.0);
    let sum = q(r#"wave_load_latency_sum{endpoint="login"}"#);
    assert!(
        (sum - 500.5).abs() < 1e-9,
        "sum of 1..=1000 ms in seconds: {sum}"
    );
    // Bucket bounds are inclusive: le=0.1 holds 1..=100 ms exactly.
    for (le, want) in [
        ("0.005", 5.0),
        ("0.01", 10.0),
        ("0.025", 25.0),
        ("0.05", 50.0),
        ("0.1", 100.0),
        ("0.25", 250.0),
        ("0.5", 500.0),
        ("1.0", 1000.0),
        ("+Inf", 1000.0),
    ] {
        let promql = format!(r#"wave_load_latency_bucket{{endpoint="login",le="{le}"}}"#);
        assert_eq!(q(&promql), want, "{promql}");
    }
    assert_eq!(q(r#"wave_statsd_dropped_lines_total{reason="parse"}"#), 3.0);
    assert_eq!(
        q(r#"wave_statsd_dropped_lines_total{reason="cardinality"}"#),
        15.0
    );
    assert_eq!(
        q(r#"wave_statsd_dropped_lines_total{reason="overflow"}"#),
        0.0
    );
    assert_eq!(q("wave_statsd_series"), 20.0);
    assert_eq!(q("count(wave_load_card_total)"), 15.0);
    assert_eq!(q("wave_statsd_kernel_dropped_datagrams_total"), 0.0);

    // Stopping the supervisor writes the last window; the windows add up to what was sent.
    drop(running);
    let text = std::fs::read_to_string(work.join("results/load-metrics.jsonl"))
        .expect("load-metrics.jsonl was written");
    let mut counters: BTreeMap<String, f64> = BTreeMap::new();
    let (mut latencies, mut lines) = (0.0, 0.0);
    for line in text.lines() {
        let window: Value = serde_json::from_str(line).expect("each line is JSON");
        assert_eq!(window["v"], wave_agent::load_metrics::SCHEMA_VERSION);
        assert_eq!(window["pod"], "statsd-pod");
        lines += window["lines"].as_f64().expect("lines");
        for c in window["counters"].as_array().expect("counters") {
            let key = format!("{}{}", c["name"].as_str().expect("name"), c["tags"]);
            *counters.entry(key).or_default() += c["value"].as_f64().expect("value");
        }
        for h in window["histograms"].as_array().expect("histograms") {
            latencies += h["count"].as_f64().expect("count");
        }
    }
    assert_eq!(lines, sent as f64);
    assert_eq!(counters[r#"requests{"endpoint":"login"}"#], 1000.0);
    assert_eq!(counters["errorsnull"], 4.0);
    assert_eq!(latencies, 1000.0);
}

/// The sender of the loss test: `lines_per_second` lines in datagrams of 20 for `seconds`,
/// paced every 10 ms; prints how many lines it sent.
const SENDER: &str = r#"
import socket, sys, time
port, rate, seconds, me = int(sys.argv[1]), int(sys.argv[2]), float(sys.argv[3]), sys.argv[4]
sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
datagram = "".join("load.requests:1|c|#sender:%s\nload.latency:%d|ms|#sender:%s\n" % (me, 5 + i, me) for i in range(10)).encode()
per_tick = max(1, rate // 20 // 100)
sent, start = 0, time.monotonic()
tick = 0
while True:
    now = time.monotonic()
    if now - start >= seconds:
        break
    for _ in range(per_tick):
        sock.sendto(datagram, ("127.0.0.1", port))
        sent += 20
    tick += 1
    delay = start + tick * 0.01 - time.monotonic()
    if delay > 0:
        time.sleep(delay)
print(sent)
"#;

/// 200,000 lines/s from 4 sender processes for 30 s: every line sent is either counted as
/// received or among the datagrams the kernel reports dropped.
#[test]
fn every_line_of_a_flood_is_received_or_counted_as_dropped() {
    let dir = tempfile::tempdir().expect("tempdir");
    let work = dir.path().join("work");
    let running = supervisor(&work, &[]);
    let metrics_port = running.metrics_port(Duration::from_secs(30));
    let port = running.statsd_port(Duration::from_secs(30)).to_string();
    let script = dir.path().join("sender.py");
    std::fs::write(&script, SENDER).expect("write the sender");
    let senders: Vec<_> = (0..4)
        .map(|i| {
            Command::new("python3")
                .arg(&script)
                .args([port.as_str(), "50000", "30", &i.to_string()])
                .stdout(std::process::Stdio::piped())
                .spawn()
                .expect("python3 runs")
        })
        .collect();
    let sent: u64 = senders
        .into_iter()
        .map(|child| {
            let output = child.wait_with_output().expect("the sender ends");
            assert!(output.status.success(), "sender failed: {output:?}");
            String::from_utf8_lossy(&output.stdout)
                .trim()
                .parse::<u64>()
                .expect("the sender prints its count")
        })
        .sum();
    assert!(sent >= 4 * 1_200_000, "the senders sent only {sent} lines");

    let accounted = poll_blocking(Duration::from_secs(30), || {
        let lines = scraped(
            metrics_port,
            "wave_statsd_lines_total{test_id=\"statsd-test\"}",
        )?;
        let drops = scraped(
            metrics_port,
            "wave_statsd_kernel_dropped_datagrams_total{test_id=\"statsd-test\"}",
        )?;
        let accounted = lines + 20.0 * drops;
        (accounted == sent as f64).then_some((lines, drops))
    });
    let (lines, drops) = accounted.unwrap_or_else(|| {
        panic!(
            "received + dropped never matched the {sent} lines sent; /metrics:\n{}",
            http_get(metrics_port, "/metrics")
                .map(|r| r.body)
                .unwrap_or_default()
        )
    });
    eprintln!("sent {sent} lines: {lines} received, {drops} datagrams dropped by the kernel");
    assert_eq!(
        scraped(
            metrics_port,
            "wave_statsd_dropped_lines_total{test_id=\"statsd-test\",reason=\"parse\"}"
        ),
        Some(0.0)
    );
}
