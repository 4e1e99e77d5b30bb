//! Synthetic test results in the docs/agent-storage.md layout (`<pod>/c0/summary.json` and
//! `load-metrics.jsonl`), with latencies chosen by the test, so a report's merged answer
//! can be checked against the exact one.

use std::path::Path;

use serde_json::json;
use wave_agent::load_metrics::{Dropped, HistogramPoint, Point, SCHEMA_VERSION, Tags, Window};
use wave_agent::sketch::{RELATIVE_ERROR, Sketch};

/// One pod of a synthetic test (one container).
#[derive(Debug, Clone)]
pub struct SyntheticPod {
    pub pod: String,
    pub machine_index: Option<u64>,
    pub machines: Option<u64>,
    pub agents: u32,
    pub failed_agents: u32,
    /// RFC 3339; the latest summary of a machine wins.
    pub ended_at: String,
    pub windows: Vec<Window>,
}

/// A 10 s window of `pod` starting at `start_ms`: `requests` and `errors` counted, one
/// `latency_ms` timer value per element of `latencies`, a `players` gauge.
pub fn window(pod: &str, start_ms: i64, requests: f64, errors: f64, latencies: &[f64]) -> Window {
    let mut sketch = Sketch::default();
    for &l in latencies {
        sketch.add(l, 1.0);
    }
    let point = |name: &str, value| Point {
        name: name.into(),
        tags: Tags::new(),
        value,
    };
    Window {
        v: SCHEMA_VERSION,
        pod: pod.into(),
        container: 0,
        start_ms,
        end_ms: start_ms + 10_000,
        agents_running: 2,
        relative_error: RELATIVE_ERROR,
        lines: (requests + errors) as u64 + latencies.len() as u64,
        dropped: Dropped::default(),
        counters: vec![point("requests", requests), point("errors", errors)],
        gauges: vec![point("players", 200.0)],
        histograms: vec![HistogramPoint {
            name: "latency_ms".into(),
            kind: "ms".into(),
            tags: Tags::new(),
            sketch: sketch.to_stored(),
        }],
        sets: Vec::new(),
    }
}

impl SyntheticPod {
    /// The pod's summary.json, with the optional machine fields of docs/agent-storage.md.
    pub fn summary(&self) -> Vec<u8> {
        let agents: Vec<_> = (0..self.agents)
            .map(|k| {
                let failed = k < self.failed_agents;
                json!({
                    "index": k, "id": format!("{}-c0-a{k}", self.pod),
                    "state": if failed { "failed" } else { "succeeded" },
                    "players": 100, "restarts": 0, "exit_codes": [if failed { 1 } else { 0 }],
                    "started_at": "2026-01-01T00:00:00.000Z", "ended_at": self.ended_at,
                    "runs": [],
                })
            })
            .collect();
        let mut summary = json!({
            "test_id": "synthetic", "pod": self.pod, "container": 0,
            "completed": true, "succeeded": self.failed_agents == 0,
            "total_players": 100 * self.agents, "players_per_agent": 100,
            "started_at": "2026-01-01T00:00:00.000Z", "ended_at": self.ended_at,
            "agents": agents,
        });
        if let Some(m) = self.machines {
            summary["machines"] = json!(m);
        }
        if let Some(i) = self.machine_index {
            summary["machine_index"] = json!(i);
        }
        serde_json::to_vec_pretty(&summary).expect("serializes")
    }

    /// The pod's load-metrics.jsonl.
    pub fn load_metrics(&self) -> Vec<u8> {
        let mut text = Vec::new();
        for window in &self.windows {
            text.extend(serde_json::to_vec(window).expect("serializes"));
            text.push(b'\n');
        }
        text
    }

    /// Writes both files under `root/<pod>/c0/`.
    pub fn write(&self, root: &Path) {
        let dir = root.join(&self.pod).join("c0");
        std::fs::create_dir_all(&dir).expect("create the pod's folder");
        std::fs::write(dir.join("summary.json"), self.summary()).expect("write summary");
        std::fs::write(dir.join("load-metrics.jsonl"), self.load_metrics()).expect("write windows");
    }
}

/// The exact `q`-quantile of `values` as the sketch defines it (rank ⌊q (n − 1)⌋).
pub fn exact_quantile(values: &[f64], q: f64) -> f64 {
    let mut sorted = values.to_vec();
    sorted.sort_by(f64::total_cmp);
    sorted[(q * (sorted.len() - 1) as f64).floor() as usize]
}
