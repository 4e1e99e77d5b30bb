//! StatsD lines summed into series: counters (cumulative for Prometheus, per window for
//! `load-metrics.jsonl`), gauges, timers/histograms (Prometheus buckets since start, a
//! mergeable sketch per window) and sets (distinct values per window, in bounded memory:
//! [`Distinct`]). Series are capped; every line is counted, and every line that is not
//! aggregated is counted by why.
//!
//! The hot path looks a line up by its raw bytes (type, name, tags as sent) in a cache;
//! only a miss sanitizes the name and sorts the tags to find or create the series.

use std::collections::HashMap;
use std::hash::{BuildHasherDefault, Hash as _, Hasher};

use crate::load_metrics::{Dropped, HistogramPoint, Point, Tags};
use crate::sketch::Sketch;

use super::distinct::Distinct;
use super::parse::{self, Kind, ParseError};

/// Prefix of every series made from StatsD lines.
pub const PREFIX: &str = "wave_load_";

/// Prometheus's default buckets: timers in seconds, histograms in their own unit.
pub const DEFAULT_BUCKETS: [f64; 11] = [
    0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
];

/// Why a line was not aggregated (the `reason` label).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DropReason {
    /// It does not parse, or its name already belongs to a series of another type.
    Parse,
    /// It would have made a new series past the cap.
    Cardinality,
    /// Its datagram was longer than the read buffer.
    Overflow,
    /// A DogStatsD event (`_e{…}`) or service check (`_sc|…`): not a metric, and no sign of
    /// a broken client.
    Unsupported,
}

impl DropReason {
    pub const ALL: [DropReason; 4] = [
        DropReason::Parse,
        DropReason::Cardinality,
        DropReason::Overflow,
        DropReason::Unsupported,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            DropReason::Parse => "parse",
            DropReason::Cardinality => "cardinality",
            DropReason::Overflow => "overflow",
            DropReason::Unsupported => "unsupported",
        }
    }
}

/// How series are kept.
#[derive(Debug, Clone, PartialEq)]
pub struct AggregateConfig {
    /// Series past this many are refused (`WAVE_STATSD_MAX_SERIES`).
    pub max_series: usize,
    /// Upper bounds of the Prometheus buckets, ascending (`+Inf` is added).
    pub buckets: Vec<f64>,
}

impl Default for AggregateConfig {
    fn default() -> Self {
        AggregateConfig {
            max_series: 10_000,
            buckets: DEFAULT_BUCKETS.to_vec(),
        }
    }
}

/// What a family of series is; one Prometheus name has one.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Class {
    Counter,
    Gauge,
    /// Timers: milliseconds in, seconds in Prometheus.
    Timer,
    /// Histograms and distributions: values as sent.
    Histogram,
    /// Sets: distinct values per window, a gauge in Prometheus.
    Set,
}

impl Class {
    fn of(kind: Kind) -> Class {
        match kind {
            Kind::Counter => Class::Counter,
            Kind::Gauge => Class::Gauge,
            Kind::Timer => Class::Timer,
            Kind::Histogram | Kind::Distribution => Class::Histogram,
            Kind::Set => Class::Set,
        }
    }
}

/// The series of one name.
#[derive(Debug)]
pub struct Family {
    /// Sanitized name without the prefix.
    pub name: String,
    pub class: Class,
    /// Type letter as first sent (`ms`, `h`, `d` for histograms).
    pub kind: Kind,
    pub series: Vec<usize>,
}

/// One series: a name and tag set.
#[derive(Debug)]
pub struct Series {
    pub family: usize,
    pub tags: Tags,
    pub value: SeriesValue,
    /// The series registered before this one under the same (family, tags) hash.
    same_hash: Option<usize>,
}

#[derive(Debug)]
pub enum SeriesValue {
    Counter {
        total: f64,
        window: f64,
        touched: bool,
    },
    Gauge {
        value: f64,
        touched: bool,
    },
    Histogram {
        /// Weight in each bucket (not cumulative); the last is `+Inf`.
        buckets: Vec<f64>,
        count: f64,
        /// In Prometheus units (seconds for timers).
        sum: f64,
        window: Sketch,
    },
    Set {
        /// The distinct values of the window open now.
        window: Distinct,
        /// Distinct values of the last window that ended (0 before the first): what
        /// Prometheus sees, so a scrape never shows a window half-filled.
        last: f64,
    },
}

/// What a window holds, ready for `load-metrics.jsonl`.
#[derive(Debug, Default, Clone, PartialEq)]
pub struct WindowContent {
    pub lines: u64,
    pub dropped: Dropped,
    pub counters: Vec<Point>,
    pub gauges: Vec<Point>,
    pub histograms: Vec<HistogramPoint>,
    /// Distinct values of each set the window saw.
    pub sets: Vec<Point>,
}

/// Totals since start, for `wave_statsd_*`.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Totals {
    pub lines: u64,
    pub dropped: [u64; DropReason::ALL.len()],
}

/// A fast non-cryptographic hash (the Fx hash) for the raw-key cache: the input is the
/// container's own agents, and a slow hash would cost most of the per-line budget.
#[derive(Default)]
struct FxHasher(u64);

impl Hasher for FxHasher {
    fn write(&mut self, bytes: &[u8]) {
        let mut chunks = bytes.chunks_exact(8);
        for chunk in &mut chunks {
            let word = u64::from_le_bytes(chunk.try_into().expect("8 bytes"));
            self.0 = (self.0.rotate_left(5) ^ word).wrapping_mul(0x51_7c_c1_b7_27_22_0a_95);
        }
        for &byte in chunks.remainder() {
            self.0 =
                (self.0.rotate_left(5) ^ u64::from(byte)).wrapping_mul(0x51_7c_c1_b7_27_22_0a_95);
        }
    }

    fn finish(&self) -> u64 {
        self.0
    }
}

type FastMap<K, V> = HashMap<K, V, BuildHasherDefault<FxHasher>>;

/// The key of a series once its name and tags are sanitized and sorted.
fn canonical_hash(family: usize, tags: &Tags) -> u64 {
    let mut hasher = std::hash::DefaultHasher::new();
    (family, tags).hash(&mut hasher);
    hasher.finish()
}

/// Every series of a container.
#[derive(Debug)]
pub struct Aggregator {
    config: AggregateConfig,
    /// Raw `type|name|tags` bytes → series.
    raw: FastMap<Box<[u8]>, usize>,
    /// Hash of (family, sorted tags) → the newest series with that hash (the others are
    /// chained through `Series::same_hash`); the tags are kept once, in the series.
    canonical: FastMap<u64, usize>,
    family_index: HashMap<String, usize>,
    families: Vec<Family>,
    series: Vec<Series>,
    totals: Totals,
    window_lines: u64,
    window_dropped: [u64; DropReason::ALL.len()],
    scratch: Vec<u8>,
}

impl Aggregator {
    pub fn new(config: AggregateConfig) -> Aggregator {
        Aggregator {
            config,
            raw: FastMap::default(),
            canonical: FastMap::default(),
            family_index: HashMap::new(),
            families: Vec::new(),
            series: Vec::new(),
            totals: Totals::default(),
            window_lines: 0,
            window_dropped: [0; DropReason::ALL.len()],
            scratch: Vec::with_capacity(256),
        }
    }

    pub fn config(&self) -> &AggregateConfig {
        &self.config
    }

    pub fn families(&self) -> &[Family] {
        &self.families
    }

    pub fn series(&self) -> &[Series] {
        &self.series
    }

    pub fn totals(&self) -> Totals {
        self.totals
    }

    /// Aggregates every line of a datagram (lines end with `\n`; a final line may not).
    pub fn ingest_datagram(&mut self, datagram: &[u8]) {
        for line in datagram.split(|&b| b == b'\n') {
            let line = line.strip_suffix(b"\r").unwrap_or(line);
            if !line.is_empty() {
                self.ingest_line(line);
            }
        }
    }

    /// Counts the lines of a datagram that was cut by the read buffer as dropped.
    pub fn drop_datagram(&mut self, datagram: &[u8], reason: DropReason) {
        let lines = datagram
            .split(|&b| b == b'\n')
            .filter(|l| !l.is_empty())
            .count() as u64;
        self.totals.lines += lines;
        self.window_lines += lines;
        self.totals.dropped[reason as usize] += lines;
        self.window_dropped[reason as usize] += lines;
    }

    /// Aggregates one line.
    pub fn ingest_line(&mut self, line: &[u8]) {
        self.totals.lines += 1;
        self.window_lines += 1;
        if let Err(reason) = self.apply(line) {
            self.totals.dropped[reason as usize] += 1;
            self.window_dropped[reason as usize] += 1;
        }
    }

    fn apply(&mut self, text: &[u8]) -> Result<(), DropReason> {
        let line = parse::parse_line(text).map_err(|err| match err {
            ParseError::Unsupported => DropReason::Unsupported,
            _ => DropReason::Parse,
        })?;
        self.scratch.clear();
        self.scratch
            .extend_from_slice(line.kind.as_str().as_bytes());
        self.scratch.push(b'|');
        self.scratch.extend_from_slice(line.name);
        self.scratch.push(b'|');
        self.scratch.extend_from_slice(line.tags);
        let index = match self.raw.get(self.scratch.as_slice()) {
            Some(&index) => index,
            None => {
                let index = self.find_or_create(&line)?;
                if self.raw.len() >= 4 * self.config.max_series.max(1) {
                    self.raw.clear();
                }
                self.raw.insert(self.scratch.as_slice().into(), index);
                index
            }
        };
        let weight = 1.0 / line.rate;
        let buckets = &self.config.buckets;
        let series = &mut self.series[index];
        // Values were checked by the parser; a number that fails here cannot happen, and
        // would be a parse drop.
        let numbers = line.values().map(|v| v.map_err(|_| DropReason::Parse));
        match &mut series.value {
            SeriesValue::Counter {
                total,
                window,
                touched,
            } => {
                for value in numbers {
                    let value = value?;
                    *total += value.number * weight;
                    *window += value.number * weight;
                    *touched = true;
                }
            }
            SeriesValue::Gauge {
                value: gauge,
                touched,
            } => {
                for value in numbers {
                    let value = value?;
                    if value.signed {
                        *gauge += value.number;
                    } else {
                        *gauge = value.number;
                    }
                    *touched = true;
                }
            }
            SeriesValue::Histogram {
                buckets: counts,
                count,
                sum,
                window,
            } => {
                for value in numbers {
                    let value = value?;
                    let observed = if line.kind == Kind::Timer {
                        value.number / 1000.0
                    } else {
                        value.number
                    };
                    let at = buckets.partition_point(|&le| le < observed);
                    counts[at] += weight;
                    *count += weight;
                    *sum += observed * weight;
                    window.add(value.number, weight);
                }
            }
            // A set counts values, not their rate: Etsy's daemon ignores `@rate` here too.
            SeriesValue::Set { window, .. } => {
                for value in line.set_values() {
                    window.insert(value);
                }
            }
        }
        Ok(())
    }

    /// The series of a line seen for the first time in this raw form.
    fn find_or_create(&mut self, line: &parse::Line<'_>) -> Result<usize, DropReason> {
        let class = Class::of(line.kind);
        let name = sanitize_name(line.name, class);
        let family = match self.family_index.get(&name) {
            Some(&family) if self.families[family].class == class => family,
            Some(_) => return Err(DropReason::Parse),
            None => {
                if self.series.len() >= self.config.max_series {
                    return Err(DropReason::Cardinality);
                }
                self.families.push(Family {
                    name: name.clone(),
                    class,
                    kind: line.kind,
                    series: Vec::new(),
                });
                self.family_index.insert(name, self.families.len() - 1);
                self.families.len() - 1
            }
        };
        let tags: Tags = line
            .tags()
            .map(|(key, value)| {
                (
                    sanitize_label(key),
                    String::from_utf8_lossy(value).into_owned(),
                )
            })
            .collect();
        let hash = canonical_hash(family, &tags);
        let mut candidate = self.canonical.get(&hash).copied();
        while let Some(index) = candidate {
            let series = &self.series[index];
            if series.family == family && series.tags == tags {
                return Ok(index);
            }
            candidate = series.same_hash;
        }
        if self.series.len() >= self.config.max_series {
            return Err(DropReason::Cardinality);
        }
        let value = match class {
            Class::Counter => SeriesValue::Counter {
                total: 0.0,
                window: 0.0,
                touched: false,
            },
            Class::Gauge => SeriesValue::Gauge {
                value: 0.0,
                touched: false,
            },
            Class::Timer | Class::Histogram => SeriesValue::Histogram {
                buckets: vec![0.0; self.config.buckets.len() + 1],
                count: 0.0,
                sum: 0.0,
                window: Sketch::default(),
            },
            Class::Set => SeriesValue::Set {
                window: Distinct::default(),
                last: 0.0,
            },
        };
        let index = self.series.len();
        let same_hash = self.canonical.insert(hash, index);
        self.series.push(Series {
            family,
            tags,
            value,
            same_hash,
        });
        self.families[family].series.push(index);
        Ok(index)
    }

    /// What the window since the last call holds; starts the next one. Gauges are in
    /// every window once set (their value lasts); counters, histograms and sets only when
    /// something arrived.
    pub fn take_window(&mut self) -> WindowContent {
        let mut content = WindowContent {
            lines: std::mem::take(&mut self.window_lines),
            dropped: Dropped {
                parse: self.window_dropped[DropReason::Parse as usize],
                cardinality: self.window_dropped[DropReason::Cardinality as usize],
                overflow: self.window_dropped[DropReason::Overflow as usize],
                unsupported: self.window_dropped[DropReason::Unsupported as usize],
            },
            ..WindowContent::default()
        };
        self.window_dropped = [0; DropReason::ALL.len()];
        for series in &mut self.series {
            let family = &self.families[series.family];
            let name = family.name.clone();
            let tags = series.tags.clone();
            match &mut series.value {
                SeriesValue::Counter {
                    window, touched, ..
                } => {
                    if std::mem::take(touched) {
                        content.counters.push(Point {
                            name,
                            tags,
                            value: std::mem::take(window),
                        });
                    }
                }
                SeriesValue::Gauge { value, touched } => {
                    if *touched {
                        content.gauges.push(Point {
                            name,
                            tags,
                            value: *value,
                        });
                    }
                }
                SeriesValue::Histogram { window, .. } => {
                    if window.count() > 0.0 {
                        content.histograms.push(HistogramPoint {
                            name,
                            kind: family.kind.as_str().to_owned(),
                            tags,
                            sketch: std::mem::take(window).to_stored(),
                        });
                    }
                }
                SeriesValue::Set { window, last } => {
                    let window = std::mem::take(window);
                    *last = window.count();
                    if !window.is_empty() {
                        content.sets.push(Point {
                            name,
                            tags,
                            value: *last,
                        });
                    }
                }
            }
        }
        content
    }
}

/// A StatsD name as a Prometheus name part: `[a-zA-Z0-9_]`, anything else `_`; a
/// counter's trailing `_total` is dropped (the exposition adds it back).
pub fn sanitize_name(name: &[u8], class: Class) -> String {
    let mut out: String = name
        .iter()
        .map(|&b| {
            if b.is_ascii_alphanumeric() {
                b as char
            } else {
                '_'
            }
        })
        .collect();
    if class == Class::Counter && out.len() > "_total".len() && out.ends_with("_total") {
        out.truncate(out.len() - "_total".len());
    }
    out
}

/// A tag key as a label name: `[a-zA-Z0-9_]`, not starting with a digit, and never one of
/// the names wave sets itself or Prometheus reserves (those get `exported_` in front).
pub fn sanitize_label(key: &[u8]) -> String {
    let mut out: String = key
        .iter()
        .map(|&b| {
            if b.is_ascii_alphanumeric() {
                b as char
            } else {
                '_'
            }
        })
        .collect();
    if out.is_empty() || out.as_bytes()[0].is_ascii_digit() {
        out.insert_str(0, "tag_");
    }
    if out == "test_id" || out == "le" || out.starts_with("__") {
        out.insert_str(0, "exported_");
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn aggregator(max_series: usize) -> Aggregator {
        Aggregator::new(AggregateConfig {
            max_series,
            ..AggregateConfig::default()
        })
    }

    fn value<'a>(agg: &'a Aggregator, name: &str) -> &'a SeriesValue {
        let family = agg
            .families
            .iter()
            .position(|f| f.name == name)
            .expect("family");
        &agg.series[agg.families[family].series[0]].value
    }

    #[test]
    fn sums_counters_with_sample_rates_and_applies_gauge_deltas() {
        let mut agg = aggregator(100);
        agg.ingest_datagram(b"req:1|c\nreq:2|c|@0.5\nplayers:10|g\nplayers:+5|g\nplayers:-3|g\n");
        match value(&agg, "req") {
            SeriesValue::Counter { total, .. } => assert_eq!(*total, 5.0),
            other => panic!("{other:?}"),
        }
        match value(&agg, "players") {
            SeriesValue::Gauge { value, .. } => assert_eq!(*value, 12.0),
            other => panic!("{other:?}"),
        }
        assert_eq!(agg.totals().lines, 5);
    }

    #[test]
    fn puts_timers_in_second_buckets() {
        let mut agg = aggregator(100);
        agg.ingest_datagram(b"lat:5|ms\nlat:100|ms\nlat:100.5|ms\nlat:20000|ms");
        match value(&agg, "lat") {
            SeriesValue::Histogram {
                buckets,
                count,
                sum,
                ..
            } => {
                // le 0.005 takes 5 ms (bounds are inclusive), le 0.1 takes 100 ms, +Inf 20 s.
                assert_eq!(buckets[0], 1.0);
                assert_eq!(buckets[4], 1.0);
                assert_eq!(buckets[5], 1.0);
                assert_eq!(buckets[11], 1.0);
                assert_eq!(*count, 4.0);
                assert!((sum - 20.2055).abs() < 1e-9, "{sum}");
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn one_series_per_tag_set_whatever_the_tag_order() {
        let mut agg = aggregator(100);
        agg.ingest_datagram(b"r:1|c|#a:1,b:2\nr:1|c|#b:2,a:1\nr:1|c|#a:2");
        assert_eq!(agg.series().len(), 2);
    }

    #[test]
    fn caps_series_and_counts_what_is_dropped() {
        let mut agg = aggregator(3);
        for i in 0..10 {
            agg.ingest_line(format!("m:1|c|#id:{i}").as_bytes());
        }
        agg.ingest_line(b"m:1|c|#id:0");
        assert_eq!(agg.series().len(), 3);
        let totals = agg.totals();
        assert_eq!(totals.lines, 11);
        assert_eq!(totals.dropped[DropReason::Cardinality as usize], 7);
    }

    #[test]
    fn a_name_keeps_its_first_type() {
        let mut agg = aggregator(100);
        agg.ingest_datagram(b"x:1|c\nx:1|g\ny:1|ms\ny:1|h\nx:1|s\nbad line\n");
        assert_eq!(agg.totals().dropped[DropReason::Parse as usize], 4);
        assert_eq!(agg.series().len(), 2);
    }

    #[test]
    fn windows_hold_what_arrived_since_the_last_one() {
        let mut agg = aggregator(100);
        agg.ingest_datagram(b"req:3|c\nplayers:7|g\nlat:10|ms\nlat:20|ms\nnope\n");
        let first = agg.take_window();
        assert_eq!(first.lines, 5);
        assert_eq!(first.dropped.parse, 1);
        assert_eq!(first.counters[0].value, 3.0);
        assert_eq!(first.gauges[0].value, 7.0);
        assert_eq!(first.histograms[0].sketch.count, 2.0);
        assert_eq!(first.histograms[0].kind, "ms");
        let second = agg.take_window();
        assert!(second.counters.is_empty() && second.histograms.is_empty());
        assert_eq!(second.gauges[0].value, 7.0, "a gauge lasts");
        assert_eq!(second.lines, 0);
    }

    fn set_last(agg: &Aggregator, name: &str) -> f64 {
        match value(agg, name) {
            SeriesValue::Set { last, .. } => *last,
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn sets_count_distinct_values_per_window_whatever_the_rate() {
        let mut agg = aggregator(100);
        agg.ingest_datagram(
            b"users:alice|s\nusers:bob|s|@0.1\nusers:alice|s\nusers:carol:dave:carol|s|#x:1\n",
        );
        assert_eq!(set_last(&agg, "users"), 0.0, "no window ended yet");
        let first = agg.take_window();
        let counts: Vec<(Tags, f64)> = first
            .sets
            .iter()
            .map(|p| (p.tags.clone(), p.value))
            .collect();
        assert_eq!(
            counts,
            [
                (Tags::new(), 2.0),
                (Tags::from([("x".into(), "1".into())]), 2.0)
            ]
        );
        assert!(first.counters.is_empty() && first.gauges.is_empty());
        assert_eq!(
            set_last(&agg, "users"),
            2.0,
            "Prometheus sees the window that ended"
        );
        agg.ingest_line(b"users:alice|s");
        let second = agg.take_window();
        assert_eq!(second.sets.len(), 1, "only the set that got values");
        assert_eq!(
            second.sets[0].value, 1.0,
            "values do not carry over windows"
        );
        let third = agg.take_window();
        assert!(third.sets.is_empty());
        assert_eq!(
            set_last(&agg, "users"),
            0.0,
            "nothing arrived in the last window"
        );
        assert_eq!(agg.totals().dropped, [0; DropReason::ALL.len()]);
    }

    #[test]
    fn a_set_keeps_its_series_bounded() {
        let mut agg = aggregator(100);
        for i in 0..50_000 {
            agg.ingest_line(format!("users:u{i}|s").as_bytes());
        }
        match value(&agg, "users") {
            SeriesValue::Set { window, .. } => {
                let error = (window.count() - 50_000.0).abs() / 50_000.0;
                assert!(error < 0.094, "{}", window.count());
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn dogstatsd_events_and_service_checks_are_unsupported_not_parse_drops() {
        let mut agg = aggregator(100);
        agg.ingest_datagram(
            b"_e{6,4}:deploy|done|t:info|#x:y\n_sc|game.up|0|#env:test|m:fine\nreq:1|c\nbroken\n",
        );
        let totals = agg.totals();
        assert_eq!(totals.lines, 4);
        assert_eq!(totals.dropped[DropReason::Unsupported as usize], 2);
        assert_eq!(totals.dropped[DropReason::Parse as usize], 1);
        let window = agg.take_window();
        assert_eq!(window.dropped.unsupported, 2);
        assert_eq!(window.dropped.parse, 1);
        assert_eq!(agg.series().len(), 1);
    }

    #[test]
    fn sanitizes_names_and_labels() {
        assert_eq!(
            sanitize_name(b"game.login-latency", Class::Timer),
            "game_login_latency"
        );
        assert_eq!(sanitize_name(b"requests_total", Class::Counter), "requests");
        assert_eq!(
            sanitize_name(b"requests_total", Class::Gauge),
            "requests_total"
        );
        assert_eq!(sanitize_label(b"9lives"), "tag_9lives");
        assert_eq!(sanitize_label(b"test_id"), "exported_test_id");
        assert_eq!(sanitize_label(b"__name__"), "exported___name__");
        assert_eq!(sanitize_label(b"a.b"), "a_b");
    }

    #[test]
    fn garbage_datagrams_are_counted_never_panic() {
        let mut agg = aggregator(50);
        let mut state = 0x9e37_79b9_7f4a_7c15u64;
        let alphabet = b"ab:|@#,.-+019\nmsgcdh\xff_{";
        for _ in 0..20_000 {
            let datagram: Vec<u8> = (0..(state % 64))
                .map(|_| {
                    state ^= state << 13;
                    state ^= state >> 7;
                    state ^= state << 17;
                    alphabet[(state % alphabet.len() as u64) as usize]
                })
                .collect();
            agg.ingest_datagram(&datagram);
        }
        assert!(agg.series().len() <= 50);
        let _ = agg.take_window();
    }
}
