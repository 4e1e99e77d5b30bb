//! The Grafana dashboard and the alerts of manifests/: every panel's query returns data from a
//! real Prometheus scraping a real supervisor (agents sending StatsD) and a real webhook;
//! the PrometheusRule passes `promtool check rules` and its unit tests.

use std::process::{Command, Stdio};
use std::time::Duration;

use serde_json::Value;
use wave_tests::process::{Running, wait_for_webhook_addresses};
use wave_tests::prometheus::Prometheus;
use wave_tests::tls::TlsFiles;
use wave_tests::{poll_blocking, workspace_bin, workspace_root};

/// The alert groups of the PrometheusRule as a plain rule file.
fn rule_file(dir: &std::path::Path) -> std::path::PathBuf {
    let text =
        std::fs::read_to_string(workspace_root().join("manifests/prometheus/wave-alerts.yaml"))
            .expect("the PrometheusRule");
    let rule: Value = serde_saphyr::from_str(&text).expect("YAML");
    assert_eq!(rule["kind"], "PrometheusRule");
    let path = dir.join("wave-alerts.rules.yml");
    let groups = serde_json::json!({ "groups": rule["spec"]["groups"] });
    std::fs::write(&path, serde_json::to_vec(&groups).expect("JSON")).expect("write rules");
    path
}

fn promtool(args: &[&std::ffi::OsStr]) -> String {
    let output = Command::new(wave_tests::tool("promtool"))
        .args(args)
        .output()
        .expect("promtool runs");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    assert!(output.status.success(), "promtool {args:?}:\n{text}");
    text
}

#[test]
fn alert_rules_pass_promtool_check_and_their_unit_tests() {
    let dir = tempfile::tempdir().expect("tempdir");
    let rules = rule_file(dir.path());
    let checked = promtool(&["check".as_ref(), "rules".as_ref(), rules.as_os_str()]);
    assert!(checked.contains("SUCCESS: 5 rules found"), "{checked}");
    for alert in [
        "WaveAgentsFailed",
        "WaveResultsNotReachingStore",
        "WaveWebhookDenials",
        "WaveWebhookCertificateExpiring",
    ] {
        assert!(
            std::fs::read_to_string(&rules)
                .expect("rules")
                .contains(alert),
            "{alert}"
        );
    }
    let tests = dir.path().join("wave-alerts.test.yml");
    std::fs::copy(
        workspace_root().join("manifests/prometheus/wave-alerts.test.yml"),
        &tests,
    )
    .expect("copy the unit tests");
    let tested = promtool(&["test".as_ref(), "rules".as_ref(), tests.as_os_str()]);
    assert!(tested.contains("SUCCESS"), "{tested}");
}

/// An agent that plays a few requests a second and reports them over StatsD (bash's
/// /dev/udp), with latencies and errors.
const AGENT: &str = r#"i=0
while true; do
  i=$((i + 1))
  for endpoint in login shop; do
    echo -n "requests:1|c|#endpoint:$endpoint
latency_ms:$((20 + i % 50))|ms|#endpoint:$endpoint" > /dev/udp/$STATSD_HOST/$STATSD_PORT
  done
  if [ $((i % 5)) -eq 0 ]; then echo -n "errors:1|c" > /dev/udp/$STATSD_HOST/$STATSD_PORT; fi
  sleep 0.05
done"#;

#[test]
fn every_dashboard_query_returns_data_from_a_real_run() {
    let dir = tempfile::tempdir().expect("tempdir");
    let store = dir.path().join("store");
    std::fs::create_dir_all(&store).expect("store");
    let mut command = Command::new(workspace_bin("wave-agent"));
    command
        .arg("run")
        .env("TEST_ID", "dash-test")
        .env("WAVE_AGENTS", "2")
        .env("WAVE_METRICS_PORT", "0")
        .env("WAVE_METRICS_ADDRESS", "127.0.0.1")
        .env("WAVE_STATSD_PORT", "0")
        .env("WAVE_WORK_DIR", dir.path().join("work"))
        .env("WAVE_RESULTS_URL", format!("file://{}/", store.display()))
        .env("WAVE_UPLOAD_INTERVAL", "1s")
        .env("WAVE_STOP_TIMEOUT", "2s")
        .env("POD_NAME", "dash-pod")
        .args(["--", "bash", "-c", AGENT]);
    let supervisor = Running::spawn(&mut command, dir.path().join("agent.log"));
    let agent_target = format!(
        "127.0.0.1:{}",
        supervisor.metrics_port(Duration::from_secs(30))
    );

    let tls = TlsFiles::new();
    let log = dir.path().join("webhook.log");
    let mut webhook = Command::new(workspace_bin("wave-webhook"));
    webhook
        .arg("serve")
        .args(["--listen", "127.0.0.1:0", "--metrics-listen", "127.0.0.1:0"])
        .env("WAVE_WEBHOOK_TLS_CERT", tls.cert_path())
        .env("WAVE_WEBHOOK_TLS_KEY", tls.key_path())
        .env("KUBECONFIG", dir.path().join("no-kubeconfig"))
        .stderr(Stdio::null());
    let _webhook = Running::spawn(&mut webhook, log.clone());
    let (_, metrics) = wait_for_webhook_addresses(&log, Duration::from_secs(30));
    let webhook_target = format!("127.0.0.1:{}", metrics.port());

    let prometheus = Prometheus::start(&[agent_target.clone(), webhook_target.clone()]);
    prometheus.wait_target_up(&agent_target);
    prometheus.wait_target_up(&webhook_target);

    let dashboard: Value = serde_json::from_str(
        &std::fs::read_to_string(workspace_root().join("manifests/grafana/wave-test.json"))
            .expect("the dashboard"),
    )
    .expect("JSON");
    let variables = dashboard["templating"]["list"]
        .as_array()
        .expect("variables");
    assert!(
        variables.iter().any(|v| v["name"] == "test_id"),
        "template variable test_id"
    );
    let panels = dashboard["panels"].as_array().expect("panels");
    assert!(
        panels.len() >= 10,
        "players, agents, load metrics, results, webhook"
    );
    let mut checked = 0;
    for panel in panels {
        for target in panel["targets"].as_array().expect("targets") {
            let expr = target["expr"].as_str().expect("a PromQL expression");
            let promql = expr
                .replace("$test_id", "dash-test")
                .replace("$__rate_interval", "30s");
            let data = poll_blocking(Duration::from_secs(60), || {
                let result = prometheus.query(&promql);
                let values: Vec<f64> = result
                    .as_array()?
                    .iter()
                    .filter_map(|s| s["value"][1].as_str()?.parse().ok())
                    .collect();
                (!values.is_empty() && values.iter().all(|v| v.is_finite())).then_some(values)
            });
            assert!(
                data.is_some(),
                "panel {:?}: {promql} returned no data: {}",
                panel["title"],
                prometheus.query(&promql)
            );
            checked += 1;
        }
    }
    assert!(checked >= 15, "{checked} queries checked");
    drop(supervisor);
}
