//! The supervisor as its agents' StatsD server (docs/load-metrics.md): lines sent over real UDP and Unix
//! datagram sockets come out of a real Prometheus exactly (counts, buckets, gauges), land in
//! `load-metrics.jsonl`, every line of a flood is accounted for, and two real client
//! libraries (PyPI `statsd`, datadog's DogStatsd) are understood, sets included.

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
    // The set is refused because `requests` is a counter already.
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

/// Two real StatsD client libraries, in rounds until the file `argv[2]` exists; prints the
/// rounds sent. PyPI `statsd` 4.0 (prefix `py`): a counter, a timer, a gauge set then
/// changed, a set of 7 users, and a pipeline (one datagram) with a counter and a set of 2
/// maps. datadog 0.56's `DogStatsd` (namespace `dd`, constant tag `env:test`): a tagged
/// counter and timer, a gauge, a histogram, a distribution, a set of 5 users, an event and a
/// service check. A round sends every value again, so a window that the rounds cover whole
/// holds exactly the distinct values of one round.
const CLIENTS: &str = r#"
import os, sys, time
import statsd
from datadog.dogstatsd import DogStatsd

port, stop = int(sys.argv[1]), sys.argv[2]
plain = statsd.StatsClient("127.0.0.1", port, prefix="py")
dog = DogStatsd(host="127.0.0.1", port=port, namespace="dd", constant_tags=["env:test"])
rounds = 0
while not os.path.exists(stop):
    plain.incr("logins")
    plain.timing("latency", 25)
    plain.gauge("players", 10)
    plain.gauge("players", 5, delta=True)
    for k in range(7):
        plain.set("users", "user-%d" % k)
    with plain.pipeline() as pipe:
        pipe.incr("pipelined")
        pipe.set("maps", "dust2")
        pipe.set("maps", "inferno")
        pipe.set("maps", "dust2")
    dog.increment("logins", tags=["endpoint:login"])
    dog.timing("latency", 30, tags=["endpoint:login"])
    dog.gauge("players", 3)
    dog.histogram("payload", 512)
    dog.distribution("frame", 16.5)
    for k in range(5):
        dog.set("users", "player-%d" % k)
    dog.event("deploy", "build 42\nrolled out", alert_type="info", tags=["stage:canary"])
    dog.service_check("game.up", DogStatsd.OK, message="fine")
    dog.flush()
    rounds += 1
    time.sleep(0.05)
dog.flush()
print(rounds)
"#;

/// PyPI `statsd` 4.0 and datadog 0.56's DogStatsd against a running supervisor: every metric
/// type arrives (sets as their distinct values per window, on `/metrics`, in
/// `load-metrics.jsonl` and in `wave report`), the events and service checks are counted as
/// `unsupported`, and not one line is a parse drop.
#[test]
fn real_statsd_and_dogstatsd_clients_are_understood_sets_and_extras_included() {
    let dir = tempfile::tempdir().expect("tempdir");
    let work = dir.path().join("work");
    let running = supervisor(&work, &[("WAVE_LOAD_WINDOW", "1s")]);
    let metrics_port = running.metrics_port(Duration::from_secs(30));
    let port = running.statsd_port(Duration::from_secs(30)).to_string();
    let script = dir.path().join("clients.py");
    std::fs::write(&script, CLIENTS).expect("write the clients' script");
    let stop = dir.path().join("stop");
    let clients = Command::new(wave_tests::tools_python())
        .arg(&script)
        .arg(&port)
        .arg(&stop)
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("the tools' python runs");

    // A set's gauge is the last window that ended: once the rounds covered one whole, it
    // shows one round's distinct values, whatever the repeats.
    let series = |name: &str, labels: &str| format!("{name}{{test_id=\"statsd-test\"{labels}}}");
    wait_scraped(metrics_port, &series("wave_load_py_users", ""), 7.0);
    wait_scraped(metrics_port, &series("wave_load_py_maps", ""), 2.0);
    wait_scraped(
        metrics_port,
        &series("wave_load_dd_users", ",env=\"test\""),
        5.0,
    );
    std::fs::write(&stop, b"").expect("stop the clients");
    let output = clients.wait_with_output().expect("the clients end");
    assert!(
        output.status.success(),
        "the clients failed (are `statsd` and `datadog` in the tools' venv? run \
         scripts/install-test-deps.sh): {}",
        String::from_utf8_lossy(&output.stderr)
    );
    let rounds: f64 = String::from_utf8_lossy(&output.stdout)
        .trim()
        .parse()
        .expect("the clients print their rounds");

    // Every round's event and service check, once the last datagrams are read.
    let unsupported = series("wave_statsd_dropped_lines_total", ",reason=\"unsupported\"");
    wait_scraped(metrics_port, &unsupported, 2.0 * rounds);
    for (name, labels, want) in [
        ("wave_statsd_dropped_lines_total", ",reason=\"parse\"", 0.0),
        (
            "wave_statsd_dropped_lines_total",
            ",reason=\"cardinality\"",
            0.0,
        ),
        (
            "wave_statsd_dropped_lines_total",
            ",reason=\"overflow\"",
            0.0,
        ),
        ("wave_load_py_logins_total", "", rounds),
        ("wave_load_py_pipelined_total", "", rounds),
        ("wave_load_py_players", "", 15.0),
        ("wave_load_py_latency_count", "", rounds),
        (
            "wave_load_dd_logins_total",
            ",endpoint=\"login\",env=\"test\"",
            rounds,
        ),
        (
            "wave_load_dd_latency_count",
            ",endpoint=\"login\",env=\"test\"",
            rounds,
        ),
        ("wave_load_dd_players", ",env=\"test\"", 3.0),
        ("wave_load_dd_payload_count", ",env=\"test\"", rounds),
        ("wave_load_dd_frame_count", ",env=\"test\"", rounds),
    ] {
        let id = series(name, labels);
        assert_eq!(scraped(metrics_port, &id), Some(want), "{id}");
    }
    let latency_sum = scraped(metrics_port, &series("wave_load_py_latency_sum", ""));
    assert!(
        latency_sum.is_some_and(|s| (s - 0.025 * rounds).abs() < 1e-6),
        "25 ms a round, in seconds: {latency_sum:?}"
    );
    let frames = scraped(
        metrics_port,
        &series("wave_load_dd_frame_sum", ",env=\"test\""),
    );
    assert_eq!(frames, Some(16.5 * rounds));

    // In the windows: each set at most one round's distinct values, exactly that in a window
    // the rounds covered whole; the extras as unsupported, no parse drop.
    drop(running);
    let text = std::fs::read_to_string(work.join("results/load-metrics.jsonl"))
        .expect("load-metrics.jsonl was written");
    let mut most: BTreeMap<String, f64> = BTreeMap::new();
    let (mut unsupported, mut parse, mut logins) = (0.0, 0.0, 0.0);
    for line in text.lines() {
        let window: Value = serde_json::from_str(line).expect("each line is JSON");
        unsupported += window["dropped"]["unsupported"]
            .as_f64()
            .expect("unsupported");
        parse += window["dropped"]["parse"].as_f64().expect("parse");
        for c in window["counters"].as_array().expect("counters") {
            if c["name"] == "py_logins" {
                logins += c["value"].as_f64().expect("value");
            }
        }
        for set in window["sets"].as_array().expect("sets") {
            let key = format!("{}{}", set["name"].as_str().expect("name"), set["tags"]);
            let count = set["value"].as_f64().expect("value");
            let most = most.entry(key).or_default();
            *most = most.max(count);
        }
    }
    assert_eq!((unsupported, parse, logins), (2.0 * rounds, 0.0, rounds));
    let expected: BTreeMap<String, f64> = [
        ("py_usersnull", 7.0),
        ("py_mapsnull", 2.0),
        (r#"dd_users{"env":"test"}"#, 5.0),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_owned(), v))
    .collect();
    assert_eq!(most, expected);

    // `wave report` over the container's results: each set a count per window.
    let results = dir.path().join("store");
    let container = results.join("statsd-pod/c0");
    std::fs::create_dir_all(&container).expect("mkdir");
    std::fs::copy(
        work.join("results/load-metrics.jsonl"),
        container.join("load-metrics.jsonl"),
    )
    .expect("copy the windows");
    let json = dir.path().join("report.json");
    let report = Command::new(wave_tests::workspace_bin("wave"))
        .arg("report")
        .arg(format!("file://{}/", results.display()))
        .arg("--json")
        .arg(&json)
        .output()
        .expect("wave runs");
    assert!(report.status.success(), "{report:?}");
    let report: Value =
        serde_json::from_slice(&std::fs::read(&json).expect("the JSON report")).expect("JSON");
    assert_eq!(report["statsd"]["unsupported"], 2.0 * rounds);
    assert_eq!(report["statsd"]["dropped"], 0);
    let row = report["metrics"]
        .as_array()
        .expect("metrics")
        .iter()
        .find(|m| m["series"] == "py_users")
        .unwrap_or_else(|| panic!("no py_users row in {report}"));
    assert_eq!(row["type"], "set");
    assert_eq!(row["max"], 7.0);
    let windows = report["windows"].as_array().expect("windows");
    assert!(
        windows.iter().all(|w| w["metrics"]
            .as_array()
            .expect("metrics")
            .iter()
            .filter(|m| m["name"] == "py_users")
            .all(|m| m["type"] == "set" && m["last"].as_f64() <= Some(7.0))),
        "{report}"
    );
}
