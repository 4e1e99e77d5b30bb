//! The pure part of `wave report`: every container's summary and windows merged into one
//! test-wide view, exactly (counters added, sketches merged bin by bin, gauges summed over
//! containers), over the whole run and per time window. Sets are counts of distinct values
//! per window, summed over containers (docs/load-metrics.md says why).

use std::collections::{BTreeMap, BTreeSet, HashMap};

use crate::load_metrics::{Tags, Window};
use crate::sketch::Sketch;
use crate::summary::Summary;
use crate::supervise::AgentState;

/// What a series is, as the report names it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Kind {
    Counter,
    Gauge,
    /// Timers (`ms`) and histograms (`h`, `d`), in the unit they were sent in.
    Histogram,
    /// Sets (`s`): distinct values per window.
    Set,
}

/// One series of the test: a name (`requests_total` for a counter) and a tag set.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct SeriesKey {
    pub name: String,
    pub kind: Kind,
    pub tags: Tags,
}

impl SeriesKey {
    /// `name{k="v",…}`, or the bare name without tags.
    pub fn label(&self) -> String {
        if self.tags.is_empty() {
            return self.name.clone();
        }
        let tags: Vec<String> = self
            .tags
            .iter()
            .map(|(k, v)| format!("{k}=\"{v}\""))
            .collect();
        format!("{}{{{}}}", self.name, tags.join(","))
    }
}

/// A summary with the fields that the slots work adds (docs/agent-storage.md), each optional.
#[derive(Debug, Clone)]
pub struct SummaryInfo {
    pub summary: Summary,
    pub part: Option<String>,
    /// M: machines of the part.
    pub machines: Option<u64>,
    pub machine_index: Option<u64>,
    /// The reason a stop gave (docs/coordination.md).
    pub stopped: Option<String>,
}

/// Everything the store holds for one container (`<pod>/c<i>/`).
#[derive(Debug, Clone)]
pub struct ContainerInput {
    pub pod: String,
    pub container: u32,
    pub summary: Option<SummaryInfo>,
    pub windows: Vec<Window>,
}

/// One time window of the whole test.
#[derive(Debug, Clone, Default)]
pub struct Bucket {
    pub start_ms: i64,
    pub end_ms: i64,
    pub counters: BTreeMap<SeriesKey, f64>,
    pub histograms: BTreeMap<SeriesKey, Sketch>,
    /// Sum over containers of each one's last value in the window.
    pub gauges: BTreeMap<SeriesKey, f64>,
    /// Sum over containers of each one's distinct values in the window (the largest count
    /// of its windows here, when its windows are shorter than the report's).
    pub sets: BTreeMap<SeriesKey, f64>,
    pub agents_running: u64,
    /// Containers that sent a window.
    pub containers: usize,
}

/// A machine of a part, named for the person reading the report.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct MachineId {
    pub part: String,
    pub index: u64,
}

/// Machines of one part.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct PartMachines {
    pub part: String,
    /// M from the summaries; `None` when they do not say.
    pub expected: Option<u64>,
    pub seen: u64,
    /// Machine indexes in [0, M) with no summary.
    pub missing: Vec<u64>,
}

/// Agent counts of the latest summary of every machine and container.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Agents {
    pub total: u64,
    pub succeeded: u64,
    pub failed: u64,
    /// Agents that were restarted at least once.
    pub restarted: u64,
    /// Agents of containers stopped before they ended on their own.
    pub stopped: u64,
    /// Agents not ended yet when their summary was written.
    pub unfinished: u64,
}

/// The merged test.
#[derive(Debug, Clone, Default)]
pub struct Merged {
    pub test_id: Option<String>,
    pub start_ms: Option<i64>,
    pub end_ms: Option<i64>,
    pub counters: BTreeMap<SeriesKey, f64>,
    pub histograms: BTreeMap<SeriesKey, Sketch>,
    pub timeline: Vec<Bucket>,
    pub parts: Vec<PartMachines>,
    pub pods: BTreeSet<String>,
    pub agents: Agents,
    pub players: u64,
    /// Containers with windows but no summary yet: the test is still running there.
    pub unfinished_containers: Vec<String>,
    pub statsd_lines: u64,
    /// Metric lines the supervisors dropped (every reason but `unsupported`).
    pub statsd_dropped: u64,
    /// DogStatsD events and service checks the supervisors ignored.
    pub statsd_unsupported: u64,
    pub warnings: Vec<String>,
}

/// Length of the report's time windows: the agents' default window (docs/load-metrics.md).
pub const BUCKET_MS: i64 = 10_000;

/// Values by series number (see [`Merger`]); `None` for a series not seen.
type BySeries<T> = Vec<Option<T>>;

/// The place of series `id` in `values`, grown to hold it.
fn slot<T>(values: &mut BySeries<T>, id: usize) -> &mut Option<T> {
    if values.len() <= id {
        values.resize_with(id + 1, || None);
    }
    &mut values[id]
}

/// The value of series `id`, made `T::default()` when first asked for.
fn entry<T: Default>(values: &mut BySeries<T>, id: usize) -> &mut T {
    slot(values, id).get_or_insert_with(T::default)
}

/// Merges `sketch` into series `id` of `into`; the first sketch of a series is moved in.
fn add_sketch(into: &mut BySeries<Sketch>, id: usize, sketch: Sketch) {
    match slot(into, id) {
        Some(have) => have.merge(&sketch),
        slot @ None => *slot = Some(sketch),
    }
}

/// Numbers for series keys, given in the order first seen: a key is compared (and its
/// strings freed) once per container, not once per point of every window.
#[derive(Debug, Default)]
struct SeriesTable {
    ids: HashMap<SeriesKey, usize>,
    keys: Vec<SeriesKey>,
}

impl SeriesTable {
    fn id(&mut self, key: SeriesKey) -> usize {
        if let Some(&id) = self.ids.get(&key) {
            return id;
        }
        let id = self.keys.len();
        self.keys.push(key.clone());
        self.ids.insert(key, id);
        id
    }

    /// `values` keyed by series again, without the series not seen.
    fn keyed<T>(&self, values: BySeries<T>) -> BTreeMap<SeriesKey, T> {
        values
            .into_iter()
            .enumerate()
            .filter_map(|(id, value)| Some((self.keys[id].clone(), value?)))
            .collect()
    }
}

/// One time window of the whole test, by series number.
#[derive(Debug, Default)]
struct OpenBucket {
    end_ms: i64,
    counters: BySeries<f64>,
    histograms: BySeries<Sketch>,
    /// Per container and gauge series: the end of the last window that set it, and its value.
    gauges: HashMap<(usize, usize), (i64, f64)>,
    /// Per container and set series: the largest count of its windows here.
    sets: HashMap<(usize, usize), f64>,
    /// Per container: the end of its last window here, and its agents running then.
    running: HashMap<usize, (i64, u32)>,
}

/// Merges containers one at a time, so a test of 480 pods × hours of windows never has
/// more than one container's windows in memory.
#[derive(Debug, Default)]
pub struct Merger {
    merged: Merged,
    series: SeriesTable,
    counters: BySeries<f64>,
    histograms: BySeries<Sketch>,
    buckets: BTreeMap<i64, OpenBucket>,
    summaries: Vec<ContainerInput>,
}

/// One window of one container, checked, with its series numbered as in its container's
/// [`Prepared`].
#[derive(Debug)]
struct PreparedWindow {
    /// The report's bucket it falls in.
    bucket: i64,
    end_ms: i64,
    agents_running: u32,
    counters: Vec<(usize, f64)>,
    histograms: Vec<(usize, Sketch)>,
    gauges: Vec<(usize, f64)>,
    sets: Vec<(usize, f64)>,
}

/// One container's windows, checked, numbered and totalled: everything of the merge that
/// needs no other container, so `wave report` does it on every core while
/// [`Merger::absorb`] adds the containers up one at a time.
#[derive(Debug)]
pub struct Prepared {
    /// The container's summary; its windows reduced to the first (only whether there were
    /// any matters from here on).
    input: ContainerInput,
    series: SeriesTable,
    windows: Vec<PreparedWindow>,
    counters: BySeries<f64>,
    histograms: BySeries<Sketch>,
    span: Option<(i64, i64)>,
    lines: u64,
    dropped: u64,
    unsupported: u64,
    warnings: Vec<String>,
}

impl Prepared {
    /// Pure and per container: `wave report` runs it on the blocking pool.
    pub fn new(mut input: ContainerInput) -> Prepared {
        let windows = std::mem::take(&mut input.windows);
        input.windows = windows.first().cloned().into_iter().collect();
        let mut prepared = Prepared {
            input,
            series: SeriesTable::default(),
            windows: Vec::with_capacity(windows.len()),
            counters: Vec::new(),
            histograms: Vec::new(),
            span: None,
            lines: 0,
            dropped: 0,
            unsupported: 0,
            warnings: Vec::new(),
        };
        let mut seen_windows = BTreeSet::new();
        for window in windows {
            prepared.window(window, &mut seen_windows);
        }
        prepared
    }

    fn window(&mut self, window: Window, seen: &mut BTreeSet<(i64, i64)>) {
        if !seen.insert((window.start_ms, window.end_ms)) {
            self.warnings.push(format!(
                "{}/c{}: the window starting at {} appears twice; counted once",
                self.input.pod, self.input.container, window.start_ms
            ));
            return;
        }
        self.span = Some(
            self.span
                .map_or((window.start_ms, window.end_ms), |(s, e)| {
                    (s.min(window.start_ms), e.max(window.end_ms))
                }),
        );
        self.lines += window.lines;
        self.dropped += window.dropped.metric_lines();
        self.unsupported += window.dropped.unsupported;
        let mut prepared = PreparedWindow {
            bucket: window.start_ms.div_euclid(BUCKET_MS) * BUCKET_MS,
            end_ms: window.end_ms,
            agents_running: window.agents_running,
            counters: Vec::with_capacity(window.counters.len()),
            histograms: Vec::with_capacity(window.histograms.len()),
            gauges: Vec::with_capacity(window.gauges.len()),
            sets: Vec::with_capacity(window.sets.len()),
        };
        for point in window.counters {
            let id = self.series.id(SeriesKey {
                name: format!("{}_total", point.name),
                kind: Kind::Counter,
                tags: point.tags,
            });
            *entry(&mut self.counters, id) += point.value;
            prepared.counters.push((id, point.value));
        }
        for point in window.histograms {
            let Some(sketch) = Sketch::from_stored(point.sketch) else {
                self.warnings.push(format!(
                    "{}/c{}: histogram {} of the window starting at {} is inconsistent; skipped",
                    self.input.pod, self.input.container, point.name, window.start_ms
                ));
                continue;
            };
            let id = self.series.id(SeriesKey {
                name: point.name,
                kind: Kind::Histogram,
                tags: point.tags,
            });
            entry(&mut self.histograms, id).merge(&sketch);
            prepared.histograms.push((id, sketch));
        }
        for point in window.gauges {
            let id = self.series.id(SeriesKey {
                name: point.name,
                kind: Kind::Gauge,
                tags: point.tags,
            });
            prepared.gauges.push((id, point.value));
        }
        for point in window.sets {
            let id = self.series.id(SeriesKey {
                name: point.name,
                kind: Kind::Set,
                tags: point.tags,
            });
            prepared.sets.push((id, point.value));
        }
        self.windows.push(prepared);
    }
}

impl Merger {
    /// Adds one container's windows (and keeps its summary for [`Merger::finish`]).
    pub fn add(&mut self, input: ContainerInput) {
        self.absorb(Prepared::new(input));
    }

    /// Adds one container prepared by [`Prepared::new`].
    pub fn absorb(&mut self, prepared: Prepared) {
        let container_no = self.summaries.len();
        let merged = &mut self.merged;
        merged.warnings.extend(prepared.warnings);
        if let Some((start, end)) = prepared.span {
            merged.start_ms = Some(merged.start_ms.map_or(start, |s| s.min(start)));
            merged.end_ms = Some(merged.end_ms.map_or(end, |e| e.max(end)));
        }
        merged.statsd_lines += prepared.lines;
        merged.statsd_dropped += prepared.dropped;
        merged.statsd_unsupported += prepared.unsupported;
        // The container's series numbers → the test's.
        let ids: Vec<usize> = prepared
            .series
            .keys
            .into_iter()
            .map(|key| self.series.id(key))
            .collect();
        for (local, total) in prepared.counters.into_iter().enumerate() {
            if let Some(total) = total {
                *entry(&mut self.counters, ids[local]) += total;
            }
        }
        for (local, sketch) in prepared.histograms.into_iter().enumerate() {
            if let Some(sketch) = sketch {
                add_sketch(&mut self.histograms, ids[local], sketch);
            }
        }
        for window in prepared.windows {
            let bucket = self
                .buckets
                .entry(window.bucket)
                .or_insert_with(|| OpenBucket {
                    end_ms: window.end_ms,
                    ..OpenBucket::default()
                });
            bucket.end_ms = bucket.end_ms.max(window.end_ms);
            for (local, value) in window.counters {
                *entry(&mut bucket.counters, ids[local]) += value;
            }
            for (local, sketch) in window.histograms {
                add_sketch(&mut bucket.histograms, ids[local], sketch);
            }
            for (local, value) in window.gauges {
                let slot = bucket
                    .gauges
                    .entry((container_no, ids[local]))
                    .or_insert((i64::MIN, 0.0));
                if window.end_ms >= slot.0 {
                    *slot = (window.end_ms, value);
                }
            }
            for (local, count) in window.sets {
                let slot = bucket.sets.entry((container_no, ids[local])).or_default();
                *slot = slot.max(count);
            }
            let slot = bucket.running.entry(container_no).or_insert((i64::MIN, 0));
            if window.end_ms >= slot.0 {
                *slot = (window.end_ms, window.agents_running);
            }
        }
        self.summaries.push(prepared.input);
    }

    /// The merged test.
    pub fn finish(mut self) -> Merged {
        let series = &self.series;
        self.merged.counters = series.keyed(self.counters);
        self.merged.histograms = series.keyed(self.histograms);
        self.merged.timeline = self
            .buckets
            .into_iter()
            .map(|(start_ms, open)| {
                let mut gauges = BTreeMap::new();
                for ((_, id), (_, value)) in open.gauges {
                    *gauges.entry(series.keys[id].clone()).or_default() += value;
                }
                let mut sets = BTreeMap::new();
                for ((_, id), count) in open.sets {
                    *sets.entry(series.keys[id].clone()).or_default() += count;
                }
                Bucket {
                    start_ms,
                    end_ms: open.end_ms,
                    counters: series.keyed(open.counters),
                    histograms: series.keyed(open.histograms),
                    gauges,
                    sets,
                    agents_running: open.running.values().map(|&(_, n)| u64::from(n)).sum(),
                    containers: open.running.len(),
                }
            })
            .collect();
        merge_summaries(&self.summaries, &mut self.merged);
        self.merged
    }
}

/// Merges every container's windows and summaries.
pub fn merge(inputs: &[ContainerInput]) -> Merged {
    let mut merger = Merger::default();
    for input in inputs {
        merger.add(input.clone());
    }
    merger.finish()
}

/// Machines, agents and players from the summaries; a machine reported by several pods (a
/// replacement pod took its slot) counts once, with its latest summary.
fn merge_summaries(inputs: &[ContainerInput], merged: &mut Merged) {
    // (part, machine or pod, container) → the latest summary.
    let mut latest: BTreeMap<(String, String, u32), &ContainerInput> = BTreeMap::new();
    let mut expected: BTreeMap<String, Option<u64>> = BTreeMap::new();
    let mut seen: BTreeMap<String, BTreeSet<u64>> = BTreeMap::new();
    let mut reporters: BTreeMap<(String, u64), BTreeSet<String>> = BTreeMap::new();
    for input in inputs {
        merged.pods.insert(input.pod.clone());
        let Some(info) = &input.summary else {
            if !input.windows.is_empty() {
                merged
                    .unfinished_containers
                    .push(format!("{}/c{}", input.pod, input.container));
            }
            continue;
        };
        if merged.test_id.is_none() {
            merged.test_id = Some(info.summary.test_id.clone());
        }
        let part = info.part.clone().unwrap_or_default();
        let entry = expected.entry(part.clone()).or_insert(None);
        if let Some(m) = info.machines {
            *entry = Some(entry.map_or(m, |e| e.max(m)));
        }
        let machine = match info.machine_index {
            Some(index) => {
                seen.entry(part.clone()).or_default().insert(index);
                reporters
                    .entry((part.clone(), index))
                    .or_default()
                    .insert(input.pod.clone());
                format!("machine {index}")
            }
            None => format!("pod {}", input.pod),
        };
        let key = (part, machine, input.container);
        let newer = latest.get(&key).is_none_or(|have| {
            let have = &have.summary.as_ref().expect("kept with a summary").summary;
            info.summary.ended_at >= have.ended_at
        });
        if newer {
            latest.insert(key, input);
        }
    }
    for ((part, index), pods) in &reporters {
        if pods.len() > 1 {
            let names: Vec<&str> = pods.iter().map(String::as_str).collect();
            merged.warnings.push(format!(
                "machine {index}{} was reported by {} pods ({}): counted once, with its latest summary",
                part_suffix(part),
                pods.len(),
                names.join(", ")
            ));
        }
    }
    for input in latest.values() {
        let info = input.summary.as_ref().expect("kept with a summary");
        let stopped = info.stopped.is_some() || !info.summary.completed;
        for agent in &info.summary.agents {
            let agents = &mut merged.agents;
            agents.total += 1;
            match agent.state {
                AgentState::Succeeded => agents.succeeded += 1,
                AgentState::Failed => agents.failed += 1,
                AgentState::Running | AgentState::Backoff => agents.unfinished += 1,
            }
            if agent.restarts > 0 {
                agents.restarted += 1;
            }
            if stopped {
                agents.stopped += 1;
            }
            merged.players += agent.players;
        }
    }
    let parts: BTreeSet<String> = expected.keys().cloned().collect();
    for part in parts {
        let seen_here = seen.get(&part).cloned().unwrap_or_default();
        let expected_here = expected.get(&part).copied().flatten();
        let machines_seen = if seen_here.is_empty() {
            // No machine indexes: each pod is a machine.
            latest
                .keys()
                .filter(|(p, _, _)| *p == part)
                .map(|(_, m, _)| m.clone())
                .collect::<BTreeSet<_>>()
                .len() as u64
        } else {
            seen_here.len() as u64
        };
        merged.parts.push(PartMachines {
            missing: expected_here
                .map(|m| (0..m).filter(|i| !seen_here.contains(i)).collect())
                .unwrap_or_default(),
            part,
            expected: expected_here,
            seen: machines_seen,
        });
    }
}

/// ` of part p1`, or nothing for the unnamed part.
pub fn part_suffix(part: &str) -> String {
    if part.is_empty() {
        String::new()
    } else {
        format!(" of part {part}")
    }
}

impl Merged {
    /// Length of the test in seconds, from the first window's start to the last one's end.
    pub fn duration_seconds(&self) -> Option<f64> {
        Some((self.end_ms? - self.start_ms?) as f64 / 1000.0).filter(|d| *d > 0.0)
    }

    /// Every histogram series with `name` whose tags include `tags`, merged.
    pub fn histogram(&self, name: &str, tags: &Tags) -> Option<Sketch> {
        let mut found = None::<Sketch>;
        for (key, sketch) in &self.histograms {
            if key.name == name && tags.iter().all(|(k, v)| key.tags.get(k) == Some(v)) {
                found.get_or_insert_with(Sketch::default).merge(sketch);
            }
        }
        found
    }

    /// The total of every counter series with `name` whose tags include `tags`.
    pub fn counter(&self, name: &str, tags: &Tags) -> Option<f64> {
        let mut found = None::<f64>;
        for (key, total) in &self.counters {
            if key.name == name && tags.iter().all(|(k, v)| key.tags.get(k) == Some(v)) {
                *found.get_or_insert(0.0) += total;
            }
        }
        found
    }

    /// Gauge series with `name` (and `tags`): the last and the largest test-wide value.
    pub fn gauge(&self, name: &str, tags: &Tags) -> Option<(f64, f64)> {
        self.last_and_max(|bucket| &bucket.gauges, name, tags)
    }

    /// Set series with `name` (and `tags`): distinct values in the last window that had
    /// any, and the most of any window.
    pub fn set(&self, name: &str, tags: &Tags) -> Option<(f64, f64)> {
        self.last_and_max(|bucket| &bucket.sets, name, tags)
    }

    /// The last and the largest value over the timeline of the series of `name` (and
    /// `tags`) in the windows' map `of`, its series summed in each window.
    fn last_and_max(
        &self,
        of: impl Fn(&Bucket) -> &BTreeMap<SeriesKey, f64>,
        name: &str,
        tags: &Tags,
    ) -> Option<(f64, f64)> {
        let values: Vec<f64> = self
            .timeline
            .iter()
            .filter_map(|bucket| {
                let matching: Vec<f64> = of(bucket)
                    .iter()
                    .filter(|(key, _)| {
                        key.name == name && tags.iter().all(|(k, v)| key.tags.get(k) == Some(v))
                    })
                    .map(|(_, v)| *v)
                    .collect();
                (!matching.is_empty()).then(|| matching.iter().sum())
            })
            .collect();
        let last = *values.last()?;
        Some((
            last,
            values.iter().copied().fold(f64::NEG_INFINITY, f64::max),
        ))
    }

    /// Gauge series names and tag sets seen in any window.
    pub fn gauge_keys(&self) -> BTreeSet<SeriesKey> {
        self.timeline
            .iter()
            .flat_map(|b| b.gauges.keys().cloned())
            .collect()
    }

    /// Set series names and tag sets seen in any window.
    pub fn set_keys(&self) -> BTreeSet<SeriesKey> {
        self.timeline
            .iter()
            .flat_map(|b| b.sets.keys().cloned())
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::load_metrics::{Dropped, HistogramPoint, Point, SCHEMA_VERSION};

    fn window(start_ms: i64, requests: f64, latencies: &[f64]) -> Window {
        let mut sketch = Sketch::default();
        for &l in latencies {
            sketch.add(l, 1.0);
        }
        Window {
            v: SCHEMA_VERSION,
            pod: "p".into(),
            container: 0,
            start_ms,
            end_ms: start_ms + 10_000,
            agents_running: 2,
            relative_error: crate::sketch::RELATIVE_ERROR,
            lines: 0,
            dropped: Dropped::default(),
            counters: vec![Point {
                name: "requests".into(),
                tags: Tags::new(),
                value: requests,
            }],
            gauges: vec![Point {
                name: "players".into(),
                tags: Tags::new(),
                value: 100.0,
            }],
            histograms: vec![HistogramPoint {
                name: "latency_ms".into(),
                kind: "ms".into(),
                tags: Tags::new(),
                sketch: sketch.to_stored(),
            }],
            sets: Vec::new(),
        }
    }

    fn container(pod: &str, windows: Vec<Window>) -> ContainerInput {
        ContainerInput {
            pod: pod.into(),
            container: 0,
            summary: None,
            windows,
        }
    }

    #[test]
    fn adds_counters_and_merges_histograms_over_pods_and_windows() {
        let merged = merge(&[
            container(
                "a",
                vec![window(0, 5.0, &[1.0, 2.0]), window(10_000, 5.0, &[3.0])],
            ),
            container("b", vec![window(0, 7.0, &[100.0])]),
        ]);
        assert_eq!(merged.counter("requests_total", &Tags::new()), Some(17.0));
        let latency = merged
            .histogram("latency_ms", &Tags::new())
            .expect("merged");
        assert_eq!(latency.count(), 4.0);
        assert_eq!(latency.max(), Some(100.0));
        assert_eq!(merged.timeline.len(), 2);
        assert_eq!(merged.timeline[0].agents_running, 4);
        assert_eq!(merged.timeline[0].gauges.values().sum::<f64>(), 200.0);
        assert_eq!(merged.gauge("players", &Tags::new()), Some((100.0, 200.0)));
        assert_eq!(merged.duration_seconds(), Some(20.0));
        assert_eq!(merged.unfinished_containers, ["a/c0", "b/c0"]);
    }

    #[test]
    fn a_window_reported_twice_counts_once_with_a_warning() {
        let merged = merge(&[container(
            "a",
            vec![window(0, 5.0, &[1.0]), window(0, 5.0, &[1.0])],
        )]);
        assert_eq!(merged.counter("requests_total", &Tags::new()), Some(5.0));
        assert_eq!(merged.warnings.len(), 1, "{:?}", merged.warnings);
    }

    fn set_window(start_ms: i64, end_ms: i64, users: f64, unsupported: u64) -> Window {
        Window {
            end_ms,
            dropped: Dropped {
                parse: 1,
                unsupported,
                ..Dropped::default()
            },
            sets: vec![Point {
                name: "users".into(),
                tags: Tags::new(),
                value: users,
            }],
            ..window(start_ms, 1.0, &[1.0])
        }
    }

    #[test]
    fn sets_are_distinct_counts_per_window_summed_over_containers() {
        let merged = merge(&[
            container(
                "a",
                vec![
                    set_window(0, 5_000, 3.0, 2),
                    set_window(5_000, 10_000, 5.0, 0),
                    set_window(10_000, 20_000, 2.0, 0),
                ],
            ),
            container("b", vec![set_window(0, 10_000, 4.0, 1)]),
        ]);
        let users = SeriesKey {
            name: "users".into(),
            kind: Kind::Set,
            tags: Tags::new(),
        };
        // a's two 5 s windows in the first 10 s: at least 5 distinct values, not 3 + 5.
        assert_eq!(merged.timeline[0].sets.get(&users), Some(&9.0));
        assert_eq!(merged.timeline[1].sets.get(&users), Some(&2.0));
        assert_eq!(merged.set("users", &Tags::new()), Some((2.0, 9.0)));
        assert_eq!(merged.set_keys().into_iter().collect::<Vec<_>>(), [users]);
        assert_eq!(
            merged.gauge("users", &Tags::new()),
            None,
            "a set is not a gauge"
        );
        assert_eq!(merged.statsd_dropped, 4, "parse drops only");
        assert_eq!(merged.statsd_unsupported, 3);
    }
}
