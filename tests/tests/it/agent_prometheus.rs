//! A real Prometheus scrapes a running `wave-agent` and sees its agents through PromQL.

use std::process::Command;
use std::time::{Duration, Instant};

use serde_json::Value;
use wave_tests::process::Running;
use wave_tests::prometheus::Prometheus;
use wave_tests::workspace_bin;

/// A supervisor serving metrics on a port of its choosing, stopped with SIGTERM on Drop so its agents go
/// with it; the work dir lives as long as it does.
fn start_supervisor(test_id: &str, agents: u32) -> (Running, tempfile::TempDir) {
    let work = tempfile::tempdir().expect("work dir");
    let mut command = Command::new(workspace_bin("wave-agent"));
    command
        .arg("run")
        .env("TEST_ID", test_id)
        .env("WAVE_AGENTS", agents.to_string())
        .env("WAVE_METRICS_PORT", "0")
        .env("WAVE_METRICS_ADDRESS", "127.0.0.1")
        .env("WAVE_WORK_DIR", work.path())
        .env("WAVE_STOP_TIMEOUT", "5s")
        .env("POD_NAME", "prom-pod")
        .args(["--", "sleep", "3600"]);
    let log = work.path().with_extension("log");
    (Running::spawn(&mut command, log), work)
}

fn value_of(series: &Value) -> f64 {
    series["value"][1]
        .as_str()
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| panic!("no sample value in {series}"))
}

/// Queries until the single series the query returns has `want` (a scrape may predate the
/// agents' start), then returns it.
fn query_until(prometheus: &Prometheus, promql: &str, want: f64) -> Value {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let result = prometheus.query(promql);
        if let Some([series]) = result.as_array().map(Vec::as_slice)
            && value_of(series) == want
        {
            return series.clone();
        }
        assert!(
            Instant::now() < deadline,
            "{promql} never returned one series at {want}: {result}"
        );
        std::thread::sleep(Duration::from_millis(250));
    }
}

#[test]
fn prometheus_scrapes_the_running_agents_with_their_test_id() {
    let supervisor = start_supervisor("prom-test", 3);
    let port = supervisor.0.metrics_port(Duration::from_secs(30));
    let target = format!("127.0.0.1:{port}");
    let prometheus = Prometheus::start(std::slice::from_ref(&target));
    prometheus.wait_target_up(&target);

    let running = query_until(&prometheus, r#"wave_agents{state="running"}"#, 3.0);
    assert_eq!(running["metric"]["test_id"], "prom-test");
    assert_eq!(running["metric"]["instance"], target.as_str());

    let failed = query_until(&prometheus, r#"wave_agents{state="failed"}"#, 0.0);
    assert_eq!(failed["metric"]["test_id"], "prom-test");
    query_until(
        &prometheus,
        r#"count(wave_agent_resident_memory_bytes{test_id="prom-test"} > 0)"#,
        3.0,
    );
    query_until(
        &prometheus,
        r#"wave_players_configured{test_id="prom-test"}"#,
        300.0,
    );
}
