//! `wave report <results URL>` (docs/report.md): one report of a whole test from every
//! pod's `summary.json` and `load-metrics.jsonl`, read through the agent's [`Store`] (S3 or
//! a local folder), merged exactly ([`merge`]), checked against thresholds ([`thresholds`])
//! into a verdict, then rendered: the terminal [`table`], JSON (schema `wave-report/1`),
//! JUnit ([`junit`]) and a self-contained HTML page ([`html`]).
//!
//! Bad input never becomes a wrong number: an unreadable line or summary is skipped and
//! named in the report's warnings.

pub mod html;
pub mod junit;
pub mod merge;
pub mod table;
pub mod thresholds;

use std::collections::{BTreeMap, BTreeSet};
use std::io::{self, BufRead};
use std::path::PathBuf;
use std::time::{Duration, UNIX_EPOCH};

use clap::Args;
use futures::StreamExt;
use serde::Serialize;

use crate::load_metrics::{self, OLDEST_READ_VERSION, SCHEMA_VERSION, Tags, Window};
use crate::store::{ChecksumMode, S3Options, Store, StoreError, StoreUrl, StoredObject};
use crate::summary::{SUMMARY_FILE, Summary};
use merge::{ContainerInput, Kind, Merged, Merger, Prepared, SummaryInfo};
use thresholds::{Outcome, Threshold};

/// Version of the JSON report schema.
pub const REPORT_SCHEMA: &str = "wave-report/1";

/// Downloads at once.
const PARALLEL_DOWNLOADS: usize = 16;

/// Options of `wave report`.
#[derive(Debug, Clone, Args)]
pub struct ReportArgs {
    /// The test's results: `s3://bucket/results/<TEST_ID>/` or `file:///path/`.
    pub url: StoreUrl,
    /// Pass/fail condition, e.g. 'latency_ms p95 < 250' or 'errors_total rate < 1%'
    /// (repeatable); the exit code is 1 when one fails.
    #[arg(long = "threshold", value_name = "EXPR")]
    pub thresholds: Vec<Threshold>,
    /// Write the report as JSON (schema wave-report/1) to FILE.
    #[arg(long, value_name = "FILE")]
    pub json: Option<PathBuf>,
    /// Write JUnit XML (one testcase per threshold, and one for the agents) to FILE.
    #[arg(long, value_name = "FILE")]
    pub junit: Option<PathBuf>,
    /// Write a self-contained HTML page with charts to FILE.
    #[arg(long, value_name = "FILE")]
    pub html: Option<PathBuf>,
    /// Refresh every INTERVAL while the test runs; ends when every container has reported.
    #[arg(long, value_name = "INTERVAL", num_args = 0..=1, default_missing_value = "5s", value_parser = humantime::parse_duration)]
    pub watch: Option<Duration>,
    /// Use path-style S3 addressing (most S3-compatible servers need it).
    #[arg(long, env = "WAVE_S3_PATH_STYLE", default_value_t = false,
          value_parser = clap::builder::BoolishValueParser::new(), num_args = 0..=1, default_missing_value = "true")]
    pub s3_path_style: bool,
    /// Request checksums of the S3 client (`when-required` for Garage and the like).
    #[arg(long, env = "WAVE_S3_CHECKSUM", default_value = "when-supported")]
    pub s3_checksum: ChecksumMode,
}

/// Why no report could be made.
#[derive(Debug, thiserror::Error)]
pub enum ReportError {
    #[error("failed to read the results")]
    Store(#[from] StoreError),
    #[error(
        "no test results under {url}: expected <pod>/c<container>/summary.json or load-metrics.jsonl below it (is this the results/<TEST_ID>/ prefix?)"
    )]
    NoTest { url: StoreUrl },
    #[error("failed to make a temporary folder for the downloads")]
    TempDir(#[source] io::Error),
    #[error("failed to read the downloaded {0}")]
    Read(String, #[source] io::Error),
    #[error("failed to write {}", .0.display())]
    Write(PathBuf, #[source] io::Error),
}

/// The objects of one container under the results URL.
#[derive(Debug, Default)]
struct ContainerObjects {
    summary: Option<StoredObject>,
    windows: Option<StoredObject>,
}

/// `<pod>/c<i>/<file>` → (pod, i, file).
fn container_of(rel: &str) -> Option<(String, u32, &str)> {
    let mut parts = rel.split('/');
    let (pod, container, file) = (parts.next()?, parts.next()?, parts.next()?);
    if parts.next().is_some() {
        return None;
    }
    let index = container.strip_prefix('c')?.parse().ok()?;
    Some((pod.to_owned(), index, file))
}

/// Reads every container's results under `url` and merges them.
pub async fn load(store: &Store, url: &StoreUrl) -> Result<Merged, ReportError> {
    let mut containers: BTreeMap<(String, u32), ContainerObjects> = BTreeMap::new();
    for object in store.list(url).await? {
        let Some((pod, index, file)) = container_of(&object.rel) else {
            continue;
        };
        let entry = containers.entry((pod, index)).or_default();
        match file {
            SUMMARY_FILE => entry.summary = Some(object),
            load_metrics::FILE => entry.windows = Some(object),
            _ => {}
        }
    }
    containers.retain(|_, c| c.summary.is_some() || c.windows.is_some());
    if containers.is_empty() {
        return Err(ReportError::NoTest { url: url.clone() });
    }
    let tmp = tempfile::tempdir().map_err(ReportError::TempDir)?;
    let downloads = containers
        .into_iter()
        .enumerate()
        .map(|(n, ((pod, container), objects))| {
            let dir = tmp.path().join(n.to_string());
            async move { read_container(store, pod, container, objects, dir).await }
        });
    let mut merger = Merger::default();
    let mut warnings = Vec::new();
    let mut results = futures::stream::iter(downloads).buffer_unordered(PARALLEL_DOWNLOADS);
    while let Some(result) = results.next().await {
        let (prepared, mut found) = result?;
        warnings.append(&mut found);
        merger.absorb(prepared);
    }
    let mut merged = merger.finish();
    warnings.append(&mut merged.warnings);
    merged.warnings = warnings;
    Ok(merged)
}

async fn read_container(
    store: &Store,
    pod: String,
    container: u32,
    objects: ContainerObjects,
    dir: PathBuf,
) -> Result<(Prepared, Vec<String>), ReportError> {
    std::fs::create_dir_all(&dir).map_err(ReportError::TempDir)?;
    let name = format!("{pod}/c{container}");
    let mut warnings = Vec::new();
    let summary = match &objects.summary {
        Some(object) => {
            let path = dir.join(SUMMARY_FILE);
            store.get(object, &path).await?;
            let bytes =
                std::fs::read(&path).map_err(|e| ReportError::Read(object.url.to_string(), e))?;
            match parse_summary(&bytes) {
                Ok(info) => Some(info),
                Err(err) => {
                    warnings.push(format!("{name}/{SUMMARY_FILE} is not a valid summary ({err}); its agents are not counted"));
                    None
                }
            }
        }
        None => None,
    };
    let input = ContainerInput {
        pod,
        container,
        summary,
        windows: Vec::new(),
    };
    let Some(object) = &objects.windows else {
        return Ok((Prepared::new(input), warnings));
    };
    let path = dir.join(load_metrics::FILE);
    store.get(object, &path).await?;
    // Parsed and prepared on the blocking pool: the containers' files are read on every core
    // while the next ones download and the merge adds up those already prepared.
    let prepare = tokio::task::spawn_blocking(move || {
        let parsed = std::fs::File::open(&path)
            .and_then(|file| read_windows(io::BufReader::new(file), &name));
        let _ = std::fs::remove_file(&path);
        parsed.map(|(windows, found)| (Prepared::new(ContainerInput { windows, ..input }), found))
    });
    let (prepared, mut found) = prepare
        .await
        .map_err(|e| ReportError::Read(object.url.to_string(), io::Error::other(e)))?
        .map_err(|e| ReportError::Read(object.url.to_string(), e))?;
    warnings.append(&mut found);
    Ok((prepared, warnings))
}

/// A summary with its optional fields (part, machine index and count; docs/report.md).
pub fn parse_summary(bytes: &[u8]) -> Result<SummaryInfo, serde_json::Error> {
    let value: serde_json::Value = serde_json::from_slice(bytes)?;
    let text = |key: &str| value.get(key).and_then(|v| v.as_str()).map(str::to_owned);
    let number = |key: &str| value.get(key).and_then(serde_json::Value::as_u64);
    Ok(SummaryInfo {
        part: text("part"),
        machines: number("machines"),
        machine_index: number("machine_index"),
        stopped: text("stopped"),
        summary: serde_json::from_value::<Summary>(value.clone())?,
    })
}

/// The windows of one `load-metrics.jsonl`; lines that are not windows of a known schema
/// are skipped, each counted in a warning.
pub fn read_windows(reader: impl BufRead, name: &str) -> io::Result<(Vec<Window>, Vec<String>)> {
    let mut windows = Vec::new();
    let mut bad = Vec::new();
    let mut newer = 0;
    for (number, line) in reader.split(b'\n').enumerate() {
        let line = line?;
        if line.iter().all(u8::is_ascii_whitespace) {
            continue;
        }
        match serde_json::from_slice::<Window>(&line) {
            Ok(window) if (OLDEST_READ_VERSION..=SCHEMA_VERSION).contains(&window.v) => {
                windows.push(window)
            }
            Ok(_) => newer += 1,
            Err(_) => bad.push(number + 1),
        }
    }
    let mut warnings = Vec::new();
    if !bad.is_empty() {
        let shown: Vec<String> = bad.iter().take(5).map(usize::to_string).collect();
        warnings.push(format!(
            "{name}/{}: {} corrupt line(s) skipped (line {}{})",
            load_metrics::FILE,
            bad.len(),
            shown.join(", "),
            if bad.len() > 5 { ", …" } else { "" }
        ));
    }
    if newer > 0 {
        warnings.push(format!(
            "{name}/{}: {newer} line(s) of another schema version skipped (this wave reads v{OLDEST_READ_VERSION} to v{SCHEMA_VERSION})",
            load_metrics::FILE
        ));
    }
    Ok((windows, warnings))
}

/// The report, as written by `--json`.
#[derive(Debug, Clone, Serialize)]
pub struct Report {
    pub schema: &'static str,
    pub url: String,
    pub test_id: Option<String>,
    /// `complete`, or `running` while some container has not written its summary.
    pub status: &'static str,
    pub start: Option<String>,
    pub end: Option<String>,
    pub duration_seconds: Option<f64>,
    pub machines: Machines,
    pub agents: AgentCounts,
    pub players: u64,
    pub metrics: Vec<Metric>,
    pub windows: Vec<WindowRow>,
    pub thresholds: Vec<Outcome>,
    pub statsd: StatsdCounts,
    pub warnings: Vec<String>,
    /// No threshold failed and no agent failed.
    pub passed: bool,
}

#[derive(Debug, Clone, Serialize)]
pub struct Machines {
    pub pods: usize,
    pub parts: Vec<Part>,
    /// Containers with load metrics but no summary yet.
    pub unfinished: Vec<String>,
}

#[derive(Debug, Clone, Serialize)]
pub struct Part {
    pub part: String,
    /// `null` when the summaries do not say how many machines the part has.
    pub expected: Option<u64>,
    pub seen: u64,
    pub missing: Vec<u64>,
}

#[derive(Debug, Clone, Copy, Serialize)]
pub struct AgentCounts {
    pub total: u64,
    pub succeeded: u64,
    pub failed: u64,
    pub restarted: u64,
    pub stopped: u64,
    pub unfinished: u64,
}

#[derive(Debug, Clone, Copy, Serialize)]
pub struct StatsdCounts {
    pub lines: u64,
    /// Metric lines dropped (malformed, past the series cap, in an oversized datagram).
    pub dropped: u64,
    /// DogStatsD events and service checks: not metrics, so not in `dropped`.
    pub unsupported: u64,
}

/// One metric over the whole test (a series, or every series of a name merged: `tags` {}).
#[derive(Debug, Clone, Default, Serialize)]
pub struct Metric {
    pub name: String,
    /// `name{tag="v"}`; the bare name for all of a name's series merged.
    pub series: String,
    #[serde(rename = "type")]
    pub kind: &'static str,
    pub tags: Tags,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub total: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub count: Option<f64>,
    /// Per second over the test.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub rate: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub min: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub mean: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub p50: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub p90: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub p95: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub p99: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub max: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub last: Option<f64>,
}

/// One time window of the test.
#[derive(Debug, Clone, Serialize)]
pub struct WindowRow {
    pub start_ms: i64,
    pub end_ms: i64,
    pub agents_running: u64,
    pub containers: usize,
    pub metrics: Vec<Metric>,
}

fn rfc3339(ms: i64) -> String {
    let time = UNIX_EPOCH + Duration::from_millis(u64::try_from(ms).unwrap_or(0));
    humantime::format_rfc3339_millis(time).to_string()
}

fn histogram_metric(
    name: &str,
    tags: &Tags,
    sketch: &crate::sketch::Sketch,
    seconds: Option<f64>,
) -> Metric {
    let count = sketch.count();
    Metric {
        name: name.to_owned(),
        series: label(name, tags),
        kind: "histogram",
        tags: tags.clone(),
        count: Some(count),
        rate: seconds.map(|s| count / s),
        min: sketch.min(),
        mean: (count > 0.0).then(|| sketch.sum() / count),
        p50: sketch.quantile(0.5),
        p90: sketch.quantile(0.9),
        p95: sketch.quantile(0.95),
        p99: sketch.quantile(0.99),
        max: sketch.max(),
        ..Metric::default()
    }
}

fn counter_metric(name: &str, tags: &Tags, total: f64, seconds: Option<f64>) -> Metric {
    Metric {
        name: name.to_owned(),
        series: label(name, tags),
        kind: "counter",
        tags: tags.clone(),
        total: Some(total),
        rate: seconds.map(|s| total / s),
        ..Metric::default()
    }
}

fn label(name: &str, tags: &Tags) -> String {
    merge::SeriesKey {
        name: name.to_owned(),
        kind: Kind::Counter,
        tags: tags.clone(),
    }
    .label()
}

/// Every name's row (all its series merged), then one row per tag set of a name that has
/// tags: a name with one tagged series still gets its own row, and untagged lines of a
/// tagged name are only in that row.
fn metrics_of(merged: &Merged) -> Vec<Metric> {
    let seconds = merged.duration_seconds();
    let all = Tags::new();
    let mut out = Vec::new();
    let names: BTreeSet<&str> = merged.counters.keys().map(|k| k.name.as_str()).collect();
    for name in names {
        let total = merged.counter(name, &all).unwrap_or(0.0);
        out.push(counter_metric(name, &all, total, seconds));
        for (key, total) in merged.counters.iter().filter(|(k, _)| k.name == name) {
            if !key.tags.is_empty() {
                out.push(counter_metric(name, &key.tags, *total, seconds));
            }
        }
    }
    let names: BTreeSet<&str> = merged.histograms.keys().map(|k| k.name.as_str()).collect();
    for name in names {
        if let Some(sketch) = merged.histogram(name, &all) {
            out.push(histogram_metric(name, &all, &sketch, seconds));
        }
        for (key, sketch) in merged.histograms.iter().filter(|(k, _)| k.name == name) {
            if !key.tags.is_empty() {
                out.push(histogram_metric(name, &key.tags, sketch, seconds));
            }
        }
    }
    // Gauges and sets: a reading per window, shown as the last and the peak.
    for kind in ["gauge", "set"] {
        let keys = match kind {
            "gauge" => merged.gauge_keys(),
            _ => merged.set_keys(),
        };
        let names: BTreeSet<&str> = keys.iter().map(|k| k.name.as_str()).collect();
        for name in names {
            let tagged = keys.iter().filter(|k| k.name == name && !k.tags.is_empty());
            for tags in std::iter::once(&all).chain(tagged.map(|k| &k.tags)) {
                let reading = match kind {
                    "gauge" => merged.gauge(name, tags),
                    _ => merged.set(name, tags),
                };
                if let Some((last, peak)) = reading {
                    out.push(Metric {
                        name: name.to_owned(),
                        series: label(name, tags),
                        kind,
                        tags: tags.clone(),
                        last: Some(last),
                        max: Some(peak),
                        ..Metric::default()
                    });
                }
            }
        }
    }
    out
}

fn window_rows(merged: &Merged) -> Vec<WindowRow> {
    merged
        .timeline
        .iter()
        .map(|bucket| {
            let seconds = Some(((bucket.end_ms - bucket.start_ms).max(1)) as f64 / 1000.0);
            let mut metrics = Vec::new();
            let mut counters: BTreeMap<&str, f64> = BTreeMap::new();
            for (key, value) in &bucket.counters {
                *counters.entry(&key.name).or_default() += value;
            }
            for (name, total) in counters {
                metrics.push(counter_metric(name, &Tags::new(), total, seconds));
            }
            let mut histograms: BTreeMap<&str, crate::sketch::Sketch> = BTreeMap::new();
            for (key, sketch) in &bucket.histograms {
                histograms.entry(&key.name).or_default().merge(sketch);
            }
            for (name, sketch) in histograms {
                metrics.push(histogram_metric(name, &Tags::new(), &sketch, seconds));
            }
            for (kind, values) in [("gauge", &bucket.gauges), ("set", &bucket.sets)] {
                let mut by_name: BTreeMap<&str, f64> = BTreeMap::new();
                for (key, value) in values {
                    *by_name.entry(&key.name).or_default() += value;
                }
                for (name, value) in by_name {
                    metrics.push(Metric {
                        name: name.to_owned(),
                        series: name.to_owned(),
                        kind,
                        last: Some(value),
                        ..Metric::default()
                    });
                }
            }
            WindowRow {
                start_ms: bucket.start_ms,
                end_ms: bucket.end_ms,
                agents_running: bucket.agents_running,
                containers: bucket.containers,
                metrics,
            }
        })
        .collect()
}

impl Report {
    /// The report of a merged test against `thresholds`.
    pub fn new(url: &StoreUrl, merged: &Merged, thresholds: &[Threshold]) -> Report {
        let outcomes: Vec<Outcome> = thresholds.iter().map(|t| t.evaluate(merged)).collect();
        let agents = merged.agents;
        let passed = outcomes.iter().all(|o| o.passed) && agents.failed == 0;
        Report {
            schema: REPORT_SCHEMA,
            url: url.to_string(),
            test_id: merged.test_id.clone(),
            status: if merged.unfinished_containers.is_empty() {
                "complete"
            } else {
                "running"
            },
            start: merged.start_ms.map(rfc3339),
            end: merged.end_ms.map(rfc3339),
            duration_seconds: merged.duration_seconds(),
            machines: Machines {
                pods: merged.pods.len(),
                parts: merged
                    .parts
                    .iter()
                    .map(|p| Part {
                        part: p.part.clone(),
                        expected: p.expected,
                        seen: p.seen,
                        missing: p.missing.clone(),
                    })
                    .collect(),
                unfinished: merged.unfinished_containers.clone(),
            },
            agents: AgentCounts {
                total: agents.total,
                succeeded: agents.succeeded,
                failed: agents.failed,
                restarted: agents.restarted,
                stopped: agents.stopped,
                unfinished: agents.unfinished,
            },
            players: merged.players,
            metrics: metrics_of(merged),
            windows: window_rows(merged),
            thresholds: outcomes,
            statsd: StatsdCounts {
                lines: merged.statsd_lines,
                dropped: merged.statsd_dropped,
                unsupported: merged.statsd_unsupported,
            },
            warnings: merged.warnings.clone(),
            passed,
        }
    }

    /// Exit code of `wave report`: 1 when a threshold or an agent failed.
    pub fn exit_code(&self) -> u8 {
        u8::from(!self.passed)
    }

    /// `PASSED` or `FAILED`.
    pub fn verdict(&self) -> &'static str {
        if self.passed { "PASSED" } else { "FAILED" }
    }

    /// Why the verdict is what it is, in words: agents, then thresholds (docs/report.md).
    pub fn verdict_reason(&self) -> String {
        let a = &self.agents;
        let agents = match a.failed {
            0 => "no agent failed".to_owned(),
            n => format!("{n} of {} failed", plural(a.total, "agent")),
        };
        let given = self.thresholds.len() as u64;
        let failed = self.thresholds.iter().filter(|t| !t.passed).count();
        let thresholds = match (given, failed) {
            (0, _) => "no thresholds given".to_owned(),
            (n, 0) => format!("{} passed", plural(n, "threshold")),
            (n, f) => format!("{f} of {} failed", plural(n, "threshold")),
        };
        let running = if self.status == "running" {
            " (so far: the test is still running)"
        } else {
            ""
        };
        format!("{agents}; {thresholds}{running}")
    }
}

/// `1 agent`, `30 agents`.
fn plural(n: u64, word: &str) -> String {
    if n == 1 {
        format!("{n} {word}")
    } else {
        format!("{n} {word}s")
    }
}

/// Loads, merges and writes the report once; returns it.
pub async fn report_once(args: &ReportArgs, store: &Store) -> Result<Report, ReportError> {
    let merged = load(store, &args.url).await?;
    let report = Report::new(&args.url, &merged, &args.thresholds);
    if let Some(path) = &args.json {
        let mut text = serde_json::to_vec_pretty(&report).expect("a report always serializes");
        text.push(b'\n');
        std::fs::write(path, text).map_err(|e| ReportError::Write(path.clone(), e))?;
    }
    if let Some(path) = &args.junit {
        std::fs::write(path, junit::render(&report))
            .map_err(|e| ReportError::Write(path.clone(), e))?;
    }
    if let Some(path) = &args.html {
        std::fs::write(path, html::render(&report))
            .map_err(|e| ReportError::Write(path.clone(), e))?;
    }
    Ok(report)
}

/// `wave report`: prints the table (refreshed with `--watch` until the test is complete)
/// and returns the exit code.
pub async fn run(args: &ReportArgs) -> Result<u8, ReportError> {
    let options = S3Options {
        path_style: args.s3_path_style,
        checksum: args.s3_checksum,
        ..S3Options::default()
    };
    let store = Store::open(&args.url, &options).await?;
    loop {
        let report = report_once(args, &store).await?;
        let Some(interval) = args.watch else {
            print!("{}", table::render(&report));
            return Ok(report.exit_code());
        };
        // Clear the screen between refreshes, as `watch(1)` does.
        print!("\x1b[2J\x1b[H{}", table::render(&report));
        if report.status == "complete" {
            return Ok(report.exit_code());
        }
        println!(
            "\n  refreshing every {}; Ctrl-C to stop",
            humantime::format_duration(interval)
        );
        tokio::time::sleep(interval).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_the_container_of_a_result_file() {
        assert_eq!(
            container_of("pod-a/c1/summary.json"),
            Some(("pod-a".into(), 1, "summary.json"))
        );
        assert_eq!(container_of("pod-a/c1/agent-0/stdout.log"), None);
        assert_eq!(container_of("pod-a/x1/summary.json"), None);
    }

    #[test]
    fn corrupt_and_foreign_lines_are_skipped_and_counted() {
        let v1 = r#"{"v":1,"pod":"p","container":0,"start_ms":0,"end_ms":10000,"agents_running":1,"relative_error":0.01,"lines":1,"dropped":{"parse":0,"cardinality":0,"overflow":0},"counters":[{"name":"r","value":1.0}],"gauges":[],"histograms":[{"name":"h","type":"ms","count":3.0,"sum":9.0,"min":2.0,"max":4.0,"bins":[[50,1.0],[52,2.0]]}]}"#;
        let v2 = v1
            .replace("{\"v\":1,", "{\"v\":2,")
            .replace("[[50,1.0],[52,2.0]]", "[50,1,0,2]");
        let newer = v1.replace("{\"v\":1,", "{\"v\":3,");
        let text = format!("{v1}\n{{broken\n\n{newer}\n{v2}\n{}", &v1[..40]);
        let (windows, warnings) = read_windows(text.as_bytes(), "p/c0").expect("reads");
        assert_eq!(windows.len(), 2, "v1 and v2 are read");
        assert_eq!(windows[0].histograms, windows[1].histograms);
        assert_eq!(warnings.len(), 2, "{warnings:?}");
        assert!(
            warnings[0].contains("2 corrupt line(s) skipped (line 2, 6)"),
            "{warnings:?}"
        );
        assert!(
            warnings[1].contains("another schema version"),
            "{warnings:?}"
        );
    }

    #[test]
    fn a_set_is_a_row_of_its_own_and_dogstatsd_extras_are_not_dropped_metrics() {
        let line = r#"{"v":2,"pod":"p","container":0,"start_ms":0,"end_ms":10000,"agents_running":1,"relative_error":0.01,"lines":10,"dropped":{"parse":1,"cardinality":0,"overflow":0,"unsupported":6},"counters":[],"gauges":[],"histograms":[],"sets":[{"name":"users","value":2.0}]}"#;
        let (windows, warnings) = read_windows(line.as_bytes(), "p/c0").expect("reads");
        assert!(warnings.is_empty(), "{warnings:?}");
        let merged = merge::merge(&[ContainerInput {
            pod: "p".into(),
            container: 0,
            summary: None,
            windows,
        }]);
        let url: StoreUrl = "file:///results/".parse().expect("a URL");
        let report = Report::new(&url, &merged, &[]);
        let users = report.metrics.iter().find(|m| m.name == "users");
        assert_eq!(
            users.map(|m| (m.kind, m.last, m.max)),
            Some(("set", Some(2.0), Some(2.0)))
        );
        assert_eq!(report.windows[0].metrics[0].kind, "set");
        assert_eq!((report.statsd.dropped, report.statsd.unsupported), (1, 6));
        let table = table::render(&report);
        assert!(
            table.contains("  statsd    1 of 10 lines dropped by the supervisors")
                && table.contains(
                    "\n  statsd    6 DogStatsD events and service checks ignored (not metrics)\n"
                ),
            "{table}"
        );
    }
}
