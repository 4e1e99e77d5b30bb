//! `wave report` of a seed-sized test: 480 pods × 1 hour of 10 s windows (360 each:
//! requests and errors by 5 endpoints, a players gauge, latency_ms timers by 5 endpoints)
//! in a local s3s-fs. Measured: wall time of `wave report s3://… --json` (list, 960
//! downloads, merge) and its peak RSS (`/usr/bin/time -v`), then the same from a `file://`
//! copy of the pods.
//!
//! Every pod gets the same windows under its own name (generated once; the reader does the
//! same work whatever the values). `WAVE_REPORT_BIN` names the `wave` binary to time (default: the one next to
//! this bench), so a release `wave` can be timed without a release build of the tests:
//! (an absolute path: cargo runs benches in the package folder)
//! `cargo build --release -p wave-agent --bin wave &&
//!  WAVE_REPORT_BIN=$PWD/target/release/wave cargo bench --profile dev -p wave-tests --bench report_merge`.

use std::process::Command;
use std::time::Instant;

use futures::StreamExt as _;

use wave_agent::load_metrics::{Dropped, HistogramPoint, Point, SCHEMA_VERSION, Tags, Window};
use wave_agent::sketch::{RELATIVE_ERROR, Sketch};
use wave_tests::s3::S3sFs;
use wave_tests::synthetic::SyntheticPod;
use wave_tests::workspace_bin;

const PODS: usize = 480;
const WINDOWS: i64 = 360;
const ENDPOINTS: [&str; 5] = [
    "login",
    "matchmaking",
    "inventory",
    "leaderboard",
    "store_purchase",
];
const T0: i64 = 1_767_225_600_000;

fn window(pod: &str, w: i64, seed: u64) -> Window {
    let mut state = seed | 1;
    let mut next = move || {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        (state >> 11) as f64 / (1u64 << 53) as f64
    };
    let mut counters = Vec::new();
    let mut histograms = Vec::new();
    for (e, endpoint) in ENDPOINTS.iter().enumerate() {
        let tags = Tags::from([("endpoint".to_owned(), (*endpoint).to_owned())]);
        counters.push(Point {
            name: "requests".into(),
            tags: tags.clone(),
            value: 1000.0,
        });
        counters.push(Point {
            name: "errors".into(),
            tags: tags.clone(),
            value: 3.0,
        });
        let mut sketch = Sketch::default();
        for _ in 0..1000 {
            // Log-normal-ish around 20–100 ms: about 150 bins per window.
            let latency = (20.0 + 20.0 * e as f64) * (-(next().max(1e-9)).ln()).powf(0.8) + 1.0;
            sketch.add(latency, 1.0);
        }
        histograms.push(HistogramPoint {
            name: "latency_ms".into(),
            kind: "ms".into(),
            tags,
            sketch: sketch.to_stored(),
        });
    }
    Window {
        v: SCHEMA_VERSION,
        pod: pod.into(),
        container: 0,
        start_ms: T0 + w * 10_000,
        end_ms: T0 + (w + 1) * 10_000,
        agents_running: 10,
        relative_error: RELATIVE_ERROR,
        lines: 15_000,
        dropped: Dropped::default(),
        counters,
        gauges: vec![Point {
            name: "players".into(),
            tags: Tags::new(),
            value: 1000.0,
        }],
        histograms,
        sets: Vec::new(),
    }
}

#[tokio::main]
async fn main() {
    let s3 = S3sFs::start().await;
    let started = Instant::now();
    // One pod's windows, generated once; each pod stores them under its own name.
    let template: Vec<Window> = (0..WINDOWS)
        .map(|w| window("template", w, (w as u64) << 20 | 1))
        .collect();
    let pods: Vec<SyntheticPod> = (0..PODS)
        .map(|p| {
            let name = format!("wave-{p:03}");
            SyntheticPod {
                pod: name.clone(),
                machine_index: Some(p as u64),
                machines: Some(PODS as u64),
                agents: 10,
                failed_agents: 0,
                ended_at: "2026-01-01T01:00:00.000Z".into(),
                windows: template
                    .iter()
                    .map(|w| Window {
                        pod: name.clone(),
                        ..w.clone()
                    })
                    .collect(),
            }
        })
        .collect();
    // Uploads 8 at a time: the store's side of the setup, not what is measured.
    let bytes: usize = futures::stream::iter(&pods)
        .map(|pod| {
            let s3 = &s3;
            async move {
                let lines = pod.load_metrics();
                let size = lines.len();
                let prefix = format!("results/bench/{}/c0", pod.pod);
                s3.put(&format!("{prefix}/summary.json"), pod.summary())
                    .await;
                s3.put(&format!("{prefix}/load-metrics.jsonl"), lines).await;
                size
            }
        })
        .buffer_unordered(8)
        .collect::<Vec<_>>()
        .await
        .into_iter()
        .sum();
    println!(
        "stored {PODS} pods × {WINDOWS} windows: {:.0} MiB of load-metrics.jsonl in {:.1} s",
        bytes as f64 / 1048576.0,
        started.elapsed().as_secs_f64()
    );
    let wave = std::env::var_os("WAVE_REPORT_BIN")
        .map_or_else(|| workspace_bin("wave"), std::path::PathBuf::from);
    let dir = tempfile::tempdir().expect("tempdir");
    let json = dir.path().join("report.json");
    let url = format!("s3://{}/results/bench/", s3.bucket());
    for run in 1..=3 {
        time_report(
            &wave,
            &url,
            s3.agent_env(),
            &json,
            &format!("s3s-fs run {run}"),
        );
    }
    // The same pods as files, for the reader's cost without a server sharing the cores.
    // `REPORT_MERGE_FILE_DIR` keeps that copy (e.g. for `perf record`).
    let copy = match std::env::var_os("REPORT_MERGE_FILE_DIR") {
        Some(path) => std::path::PathBuf::from(path),
        None => dir.path().join("files"),
    };
    for pod in &pods {
        pod.write(&copy);
    }
    let url = format!("file://{}/", copy.display());
    for run in 1..=3 {
        let no_env: [(&str, &str); 0] = [];
        time_report(&wave, &url, no_env, &json, &format!("file:// run {run}"));
    }
}

/// Runs `wave report URL --json JSON` under `/usr/bin/time -v` and prints its wall time, peak
/// RSS and the latency row of its table.
fn time_report<K, V>(
    wave: &std::path::Path,
    url: &str,
    envs: impl IntoIterator<Item = (K, V)>,
    json: &std::path::Path,
    label: &str,
) where
    K: AsRef<std::ffi::OsStr>,
    V: AsRef<std::ffi::OsStr>,
{
    let started = Instant::now();
    let output = Command::new("/usr/bin/time")
        .arg("-v")
        .arg(wave)
        .args(["report", url, "--json"])
        .arg(json)
        .envs(envs)
        .output()
        .expect("wave report runs");
    let seconds = started.elapsed().as_secs_f64();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(output.status.success(), "{stderr}");
    let time_field = |name: &str| -> f64 {
        stderr
            .lines()
            .find_map(|l| l.trim().strip_prefix(name))
            .and_then(|v| v.trim().trim_end_matches('%').parse().ok())
            .unwrap_or(f64::NAN)
    };
    let peak_kib = time_field("Maximum resident set size (kbytes):");
    let cpu = time_field("Percent of CPU this job got:");
    let table = String::from_utf8_lossy(&output.stdout);
    let latency = table
        .lines()
        .find(|l| l.trim_start().starts_with("latency_ms "))
        .unwrap_or("");
    println!(
        "{label}: wave report in {seconds:.2} s at {cpu:.0} % CPU, peak RSS {:.0} MiB\n  {}",
        peak_kib / 1024.0,
        latency.trim()
    );
}
