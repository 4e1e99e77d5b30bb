//! `load-metrics.jsonl`: one line per 10 s window of what a container's agents reported
//! over StatsD (docs/load-metrics.md), written by the supervisor and read back by `wave report`. The
//! schema is versioned (`v`) and documented in docs/load-metrics.md.

use std::collections::BTreeMap;
use std::io::{self, Write};
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::sketch::{Bins, StoredSketch};

/// File name inside the results directory (and so in the store, docs/agent-storage.md).
pub const FILE: &str = "load-metrics.jsonl";

/// Version of the line schema written; a reader refuses lines of a version it does not know.
pub const SCHEMA_VERSION: u32 = 2;

/// The oldest version still read: v1 differs from v2 only in how a sketch's bins are written
/// (sparse pairs, where v2 writes dense runs), and both forms are read.
pub const OLDEST_READ_VERSION: u32 = 1;

/// Tags of a series, sorted by key.
pub type Tags = BTreeMap<String, String>;

/// One window of one container.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Window {
    /// Schema version, [`SCHEMA_VERSION`].
    pub v: u32,
    pub pod: String,
    pub container: u32,
    /// Window start and end, milliseconds since the Unix epoch. Windows are aligned to
    /// multiples of their length on the wall clock, so windows of every pod line up.
    pub start_ms: i64,
    pub end_ms: i64,
    /// Agents of this container running at the end of the window.
    pub agents_running: u32,
    /// Relative error of the histograms' quantiles (the sketch's α).
    pub relative_error: f64,
    /// StatsD lines received in the window (dropped ones included).
    pub lines: u64,
    pub dropped: Dropped,
    pub counters: Vec<Point>,
    pub gauges: Vec<Point>,
    pub histograms: Vec<HistogramPoint>,
    /// Distinct values of each set in the window (absent in files of earlier supervisors).
    #[serde(default)]
    pub sets: Vec<Point>,
}

/// Lines dropped in the window, by reason.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Dropped {
    pub parse: u64,
    pub cardinality: u64,
    pub overflow: u64,
    /// DogStatsD events and service checks (absent in files of earlier supervisors).
    #[serde(default)]
    pub unsupported: u64,
}

impl Dropped {
    /// Metric lines lost: every reason but `unsupported`, whose lines carry no metric.
    pub fn metric_lines(&self) -> u64 {
        self.parse + self.cardinality + self.overflow
    }
}

/// A counter's increase over the window, a gauge's value at its end, or a set's distinct
/// values in the window.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Point {
    /// Sanitized name, without the `wave_load_` prefix (or a counter's `_total`).
    pub name: String,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub tags: Tags,
    pub value: f64,
}

/// The values of a timer, histogram or distribution seen in the window, in the unit they
/// were sent in (timers: milliseconds).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(from = "HistogramLine")]
pub struct HistogramPoint {
    pub name: String,
    /// `ms`, `h` or `d`, as in the StatsD line.
    #[serde(rename = "type")]
    pub kind: String,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub tags: Tags,
    #[serde(flatten)]
    pub sketch: StoredSketch,
}

/// How a [`HistogramPoint`] is read: the same fields, spelled out. Deserializing through
/// `#[serde(flatten)]` buffers every point into serde's generic `Content` first, which made
/// `wave report` parse about ten times slower than serde_json reads a plain struct.
#[derive(Deserialize)]
struct HistogramLine {
    name: String,
    #[serde(rename = "type")]
    kind: String,
    #[serde(default)]
    tags: Tags,
    count: f64,
    sum: f64,
    min: f64,
    max: f64,
    #[serde(default)]
    zero: f64,
    bins: Bins,
    #[serde(default)]
    negative: Bins,
}

impl From<HistogramLine> for HistogramPoint {
    fn from(line: HistogramLine) -> Self {
        HistogramPoint {
            name: line.name,
            kind: line.kind,
            tags: line.tags,
            sketch: StoredSketch {
                count: line.count,
                sum: line.sum,
                min: line.min,
                max: line.max,
                zero: line.zero,
                bins: line.bins,
                negative: line.negative,
            },
        }
    }
}

/// A window could not be appended.
#[derive(Debug, thiserror::Error)]
#[error("failed to append a window to {}", path.display())]
pub struct AppendError {
    path: PathBuf,
    #[source]
    source: io::Error,
}

/// Appends `window` as one line to `<results_dir>/load-metrics.jsonl` (one `write` call, so
/// an upload that copies the file mid-write sees whole lines or a cut last line, which a
/// reader skips).
pub fn append(results_dir: &Path, window: &Window) -> Result<(), AppendError> {
    let path = results_dir.join(FILE);
    let mut line = serde_json::to_vec(window).expect("a window always serializes");
    line.push(b'\n');
    std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(&path)
        .and_then(|mut file| file.write_all(&line))
        .map_err(|source| AppendError { path, source })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_histogram_point_reads_back_as_written() {
        let mut sketch = crate::sketch::Sketch::default();
        for v in [-3.0, 0.0, 2.5, 40.0, 41.0] {
            sketch.add(v, 1.0);
        }
        let point = HistogramPoint {
            name: "latency_ms".into(),
            kind: "ms".into(),
            tags: Tags::from([("endpoint".into(), "login".into())]),
            sketch: sketch.to_stored(),
        };
        let json = serde_json::to_string(&point).expect("serializes");
        assert!(
            json.contains(r#""bins":[46,1,0,0,"#) && json.contains(r#",0,1,1],"negative":[55,1]}"#),
            "bins are an offset and whole counts: {json}"
        );
        let back: HistogramPoint = serde_json::from_str(&json).expect("parses");
        assert_eq!(back, point);
        let bare: HistogramPoint = serde_json::from_str(
            r#"{"name":"n","type":"h","count":1.0,"sum":2.0,"min":2.0,"max":2.0,"bins":[35,1]}"#,
        )
        .expect("tags, zero and negative are optional");
        assert!(bare.tags.is_empty() && bare.sketch.negative.is_empty());
        assert_eq!(bare.sketch.zero, 0.0);
    }

    #[test]
    fn appends_one_parsable_line_per_window() {
        let dir = tempfile::tempdir().expect("tempdir");
        let mut window = Window {
            v: SCHEMA_VERSION,
            pod: "p".into(),
            container: 0,
            start_ms: 10_000,
            end_ms: 20_000,
            agents_running: 2,
            relative_error: crate::sketch::RELATIVE_ERROR,
            lines: 3,
            dropped: Dropped::default(),
            counters: vec![Point {
                name: "requests".into(),
                tags: Tags::from([("endpoint".into(), "login".into())]),
                value: 2.0,
            }],
            gauges: Vec::new(),
            histograms: Vec::new(),
            sets: vec![Point {
                name: "users".into(),
                tags: Tags::new(),
                value: 2.0,
            }],
        };
        append(dir.path(), &window).expect("appends");
        window.start_ms = 20_000;
        append(dir.path(), &window).expect("appends");
        let text = std::fs::read_to_string(dir.path().join(FILE)).expect("file");
        let lines: Vec<Window> = text
            .lines()
            .map(|l| serde_json::from_str(l).expect("a window"))
            .collect();
        assert_eq!(lines.len(), 2);
        assert_eq!(lines[1], window);
        assert!(text.starts_with("{\"v\":2,"), "{text}");
    }

    #[test]
    fn a_window_of_an_earlier_supervisor_reads_without_sets_or_unsupported() {
        let line = r#"{"v":2,"pod":"p","container":0,"start_ms":0,"end_ms":10000,"agents_running":1,"relative_error":0.01,"lines":1,"dropped":{"parse":1,"cardinality":0,"overflow":0},"counters":[],"gauges":[],"histograms":[]}"#;
        let window: Window = serde_json::from_str(line).expect("reads");
        assert!(window.sets.is_empty());
        assert_eq!(window.dropped.unsupported, 0);
        assert_eq!(window.dropped.metric_lines(), 1);
    }
}
