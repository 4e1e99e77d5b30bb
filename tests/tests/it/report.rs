//! `wave report` on synthetic tests whose exact answer is known: the merged p99 is within
//! the sketch's error of the truth (and far from the average of the pods' p99s), a machine
//! reported by two pods counts once, a missing machine is named, thresholds set the exit
//! code, corrupt input is skipped and said; read from `file://` and from a real S3 server;
//! the HTML page drawn by a real headless Chromium.

use std::path::Path;
use std::process::{Command, Output};

use serde_json::Value;
use wave_agent::sketch::RELATIVE_ERROR;
use wave_tests::s3::S3sFs;
use wave_tests::synthetic::{SyntheticPod, exact_quantile, window};
use wave_tests::{tool, workspace_bin, workspace_root};

const T0: i64 = 1_767_225_600_000;

/// 20 machines of which machine 7 never reports; 19 fast pods (latencies 10–20 ms) and one
/// slow one (1–2 s), so the test-wide p99 lies in the slow pod's range while the average of
/// the pods' p99s is 15× lower. Machine 3 is reported twice: an older pod whose agent
/// failed, then its replacement, whose summary wins. Returns the pods and every latency.
fn synthetic_test() -> (Vec<SyntheticPod>, Vec<f64>) {
    let mut pods = Vec::new();
    let mut all = Vec::new();
    let mut pod_p99s = Vec::new();
    let machines: Vec<u64> = (0..20).filter(|m| *m != 7).collect();
    for (n, &machine) in machines.iter().chain([3].iter()).enumerate() {
        let slow = machine == 0;
        let replaced = n == machines.len();
        let latencies: Vec<f64> = (0..1000)
            .map(|i| {
                let spread = f64::from(i) / 1000.0;
                if slow {
                    1000.0 + 1000.0 * spread
                } else {
                    10.0 + 10.0 * spread
                }
            })
            .collect();
        pod_p99s.push(exact_quantile(&latencies, 0.99));
        all.extend(&latencies);
        let pod = if replaced {
            "wave-m3-old".to_owned()
        } else {
            format!("wave-m{machine}")
        };
        let windows = latencies
            .chunks(500)
            .enumerate()
            .map(|(w, chunk)| window(&pod, T0 + 10_000 * w as i64, 500.0, 2.0, chunk))
            .collect();
        pods.push(SyntheticPod {
            pod,
            machine_index: Some(machine),
            machines: Some(20),
            agents: 2,
            failed_agents: u32::from(replaced),
            ended_at: if replaced {
                "2026-01-01T00:00:10.000Z"
            } else {
                "2026-01-01T00:01:00.000Z"
            }
            .into(),
            windows,
        });
    }
    let truth = exact_quantile(&all, 0.99);
    let average = pod_p99s.iter().sum::<f64>() / pod_p99s.len() as f64;
    assert!(
        truth / average >= 10.0,
        "truth {truth} vs average of p99s {average}"
    );
    (pods, all)
}

fn wave(args: &[&str], env: &[(String, String)]) -> Output {
    Command::new(workspace_bin("wave"))
        .arg("report")
        .args(args)
        .envs(env.iter().map(|(k, v)| (k, v)))
        .output()
        .expect("wave runs")
}

fn file_url(dir: &Path) -> String {
    format!("file://{}/", dir.display())
}

fn metric<'a>(report: &'a Value, series: &str) -> &'a Value {
    report["metrics"]
        .as_array()
        .expect("metrics")
        .iter()
        .find(|m| m["series"] == series)
        .unwrap_or_else(|| panic!("no {series} in {report}"))
}

/// Checks the JSON report of the synthetic test.
fn check_report(report: &Value, all: &[f64]) {
    assert_eq!(report["schema"], "wave-report/1");
    let latency = metric(report, "latency_ms");
    for (field, q) in [("p50", 0.5), ("p90", 0.9), ("p95", 0.95), ("p99", 0.99)] {
        let truth = exact_quantile(all, q);
        let got = latency[field].as_f64().expect("a percentile");
        assert!(
            (got - truth).abs() <= RELATIVE_ERROR * truth,
            "{field}: report {got}, truth {truth}"
        );
    }
    assert_eq!(latency["count"], all.len() as f64);
    assert_eq!(metric(report, "requests_total")["total"], 500.0 * 40.0);
    assert_eq!(metric(report, "errors_total")["total"], 2.0 * 40.0);
    assert_eq!(report["duration_seconds"], 20.0);
    assert_eq!(metric(report, "requests_total")["rate"], 1000.0);
    let part = &report["machines"]["parts"][0];
    assert_eq!(part["expected"], 20);
    assert_eq!(part["seen"], 19);
    assert_eq!(part["missing"], serde_json::json!([7]));
    let agents = &report["agents"];
    assert_eq!(agents["total"], 38, "machine 3 counted once");
    assert_eq!(agents["failed"], 0, "the replacement's summary wins");
    assert_eq!(report["players"], 3800);
    assert_eq!(report["windows"].as_array().expect("windows").len(), 2);
    assert!(
        report["warnings"]
            .to_string()
            .contains("machine 3 was reported by 2 pods"),
        "{}",
        report["warnings"]
    );
}

#[test]
fn merges_pods_exactly_names_missing_machines_and_sets_the_exit_code() {
    let (pods, all) = synthetic_test();
    let dir = tempfile::tempdir().expect("tempdir");
    for pod in &pods {
        pod.write(dir.path());
    }
    let url = file_url(dir.path());
    let json = dir.path().join("report.json");
    let junit = dir.path().join("junit.xml");
    let passing = wave(
        &[
            &url,
            "--threshold",
            "latency_ms p99 < 5000",
            "--threshold",
            "errors_total rate < 1%",
            "--json",
            json.to_str().expect("UTF-8"),
            "--junit",
            junit.to_str().expect("UTF-8"),
        ],
        &[],
    );
    let table = String::from_utf8_lossy(&passing.stdout);
    assert_eq!(
        passing.status.code(),
        Some(0),
        "{table}{}",
        String::from_utf8_lossy(&passing.stderr)
    );
    assert!(
        table.contains("19 seen of 20; never reported: machine 7"),
        "{table}"
    );
    assert!(table.contains("PASS  errors_total rate < 1%"), "{table}");
    let report: Value =
        serde_json::from_slice(&std::fs::read(&json).expect("json written")).expect("JSON");
    check_report(&report, &all);
    let junit = std::fs::read_to_string(&junit).expect("junit written");
    assert!(junit.contains("tests=\"3\" failures=\"0\""), "{junit}");

    let failing = wave(
        &[
            &url,
            "--threshold",
            "latency_ms p99 < 100",
            "--junit",
            dir.path().join("j2.xml").to_str().expect("UTF-8"),
        ],
        &[],
    );
    let table = String::from_utf8_lossy(&failing.stdout);
    assert_eq!(failing.status.code(), Some(1), "{table}");
    assert!(table.contains("FAIL  latency_ms p99 < 100"), "{table}");
    let junit = std::fs::read_to_string(dir.path().join("j2.xml")).expect("junit written");
    assert!(
        junit.contains("<failure message=\"latency_ms p99 = "),
        "{junit}"
    );

    let unknown = wave(&[&url, "--threshold", "logins_total rate > 1"], &[]);
    assert_eq!(
        unknown.status.code(),
        Some(1),
        "a metric never reported fails its threshold"
    );
}

#[test]
fn corrupt_lines_are_skipped_and_named_never_counted() {
    let (pods, all) = synthetic_test();
    let dir = tempfile::tempdir().expect("tempdir");
    for pod in &pods {
        pod.write(dir.path());
    }
    let windows = dir.path().join("wave-m5/c0/load-metrics.jsonl");
    let mut text = std::fs::read(&windows).expect("windows");
    text.extend(b"{\"v\":1,\"pod\":\"wave-m5\",\"counters\":[{\"name\":\"requests\",\"value\":1e9}]\n{\"v\":1,\"pod\":\"cut mid-upl");
    std::fs::write(&windows, text).expect("corrupt the file");
    let json = dir.path().join("report.json");
    let output = wave(
        &[
            &file_url(dir.path()),
            "--json",
            json.to_str().expect("UTF-8"),
        ],
        &[],
    );
    assert_eq!(
        output.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let report: Value = serde_json::from_slice(&std::fs::read(&json).expect("json")).expect("JSON");
    check_report(&report, &all);
    assert!(
        report["warnings"]
            .to_string()
            .contains("wave-m5/c0/load-metrics.jsonl: 2 corrupt line(s) skipped (line 3, 4)"),
        "{}",
        report["warnings"]
    );

    let empty = tempfile::tempdir().expect("tempdir");
    let output = wave(&[&file_url(empty.path())], &[]);
    assert_eq!(output.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("no test results under file://"), "{stderr}");
}

#[tokio::test]
async fn reads_the_results_from_s3() {
    let (pods, all) = synthetic_test();
    let s3 = S3sFs::start().await;
    for pod in &pods {
        s3.put(
            &format!("results/synthetic/{}/c0/summary.json", pod.pod),
            pod.summary(),
        )
        .await;
        s3.put(
            &format!("results/synthetic/{}/c0/load-metrics.jsonl", pod.pod),
            pod.load_metrics(),
        )
        .await;
        s3.put(
            &format!("results/synthetic/{}/c0/agent-0/stdout.log", pod.pod),
            b"x".to_vec(),
        )
        .await;
    }
    let dir = tempfile::tempdir().expect("tempdir");
    let json = dir.path().join("report.json");
    let url = format!("s3://{}/results/synthetic/", s3.bucket());
    let output = wave(
        &[&url, "--json", json.to_str().expect("UTF-8")],
        &s3.agent_env(),
    );
    assert_eq!(
        output.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let report: Value = serde_json::from_slice(&std::fs::read(&json).expect("json")).expect("JSON");
    check_report(&report, &all);
}

/// Headless Debian Chromium as TESTING.md runs it.
fn chromium(profile: &Path, args: &[&str]) -> Output {
    Command::new(tool("chromium"))
        .args([
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
            "--no-first-run",
            "--enable-logging=stderr",
            "--v=0",
        ])
        .arg(format!("--user-data-dir={}", profile.display()))
        .args(args)
        .output()
        .expect("chromium runs")
}

#[test]
fn the_html_report_draws_every_chart_in_chromium() {
    let (pods, _) = synthetic_test();
    let dir = tempfile::tempdir().expect("tempdir");
    for pod in &pods {
        pod.write(dir.path());
    }
    let html = dir.path().join("report.html");
    let output = wave(
        &[
            &file_url(dir.path()),
            "--html",
            html.to_str().expect("UTF-8"),
        ],
        &[],
    );
    assert_eq!(
        output.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let page = std::fs::read_to_string(&html).expect("html written");
    assert!(
        !page.contains("http://") && !page.contains("https://"),
        "the page loads nothing from elsewhere"
    );
    let page_url = format!("file://{}", html.display());

    let dump = chromium(&dir.path().join("profile-dom"), &["--dump-dom", &page_url]);
    let dom = String::from_utf8_lossy(&dump.stdout);
    let log = String::from_utf8_lossy(&dump.stderr);
    assert!(dump.status.success(), "{log}");
    for bad in [":CONSOLE(", "Uncaught", "Failed to load resource"] {
        assert!(!log.contains(bad), "console error in Chromium's log: {log}");
    }
    let charts: Vec<&str> = dom.split("<svg class=\"chart\"").skip(1).collect();
    assert_eq!(
        charts.len(),
        4,
        "throughput, latency, errors, agents:\n{dom}"
    );
    for chart in &charts {
        let chart = &chart[..chart.find("</svg>").expect("a closed svg")];
        assert!(
            !chart.contains("nothing reported"),
            "an empty chart: {chart}"
        );
        let points = chart
            .split("points=\"")
            .skip(1)
            .map(|p| p[..p.find('"').expect("closed")].split(' ').count());
        assert!(
            points.clone().count() >= 1 && points.clone().all(|n| n == 2),
            "each line has a point per window: {chart}"
        );
    }
    for id in ["throughput", "latency-latency_ms", "errors", "agents"] {
        assert!(dom.contains(&format!("id=\"{id}\"")), "no chart {id}");
    }

    let screenshot = workspace_root().join("target/wave-report.png");
    let shot = chromium(
        &dir.path().join("profile-shot"),
        &[
            &format!("--screenshot={}", screenshot.display()),
            "--window-size=1280,2000",
            &page_url,
        ],
    );
    assert!(
        shot.status.success(),
        "{}",
        String::from_utf8_lossy(&shot.stderr)
    );
    let png = std::fs::read(&screenshot).expect("the screenshot was written");
    assert!(
        png.starts_with(b"\x89PNG") && png.len() > 10_000,
        "a real screenshot"
    );
}
