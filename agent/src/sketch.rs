//! A mergeable histogram with a bounded relative error (the DDSketch idea): values fall in
//! logarithmic bins of ratio γ = (1 + α) / (1 − α), so any quantile read back is within α
//! (1 %) of the true value at that rank, whatever the distribution. Two sketches merge by
//! adding bins, exactly: a test-wide percentile comes from the merged sketch of every pod,
//! never from averaging the pods' percentiles.

use std::fmt;

use serde::de::{self, Deserializer, SeqAccess, Visitor};
use serde::ser::{SerializeSeq, Serializer};
use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;

/// The relative error of every quantile.
pub const RELATIVE_ERROR: f64 = 0.01;

/// Values whose magnitude is below this count as zero (they have no logarithmic bin).
const MIN_MAGNITUDE: f64 = 1e-9;

fn gamma_ln() -> f64 {
    ((1.0 + RELATIVE_ERROR) / (1.0 - RELATIVE_ERROR)).ln()
}

/// Bin indexes a stored sketch may use: far beyond any value a load test sends (γ^100000
/// overflows f64), and small enough that a corrupt index cannot make a reader allocate
/// gigabytes.
const MAX_INDEX: i32 = 100_000;

/// Counts of one sign's bins, dense from `offset`. Stored (schema v2) as
/// `[offset, c0, c1, …]`; the v1 form, sparse `[index, count]` pairs, is read too.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Bins {
    offset: i32,
    counts: Vec<f64>,
}

impl Bins {
    fn add(&mut self, index: i32, weight: f64) {
        self.cover(index, index);
        self.counts[(index - self.offset) as usize] += weight;
    }

    /// Makes room for bins `low..=high` (with `low <= high`) in one allocation.
    fn cover(&mut self, low: i32, high: i32) {
        if self.counts.is_empty() {
            self.offset = low;
            self.counts.resize((high - low) as usize + 1, 0.0);
            return;
        }
        if low < self.offset {
            let grow = (self.offset - low) as usize;
            self.counts.splice(0..0, std::iter::repeat_n(0.0, grow));
            self.offset = low;
        }
        let end = (high - self.offset) as usize + 1;
        if end > self.counts.len() {
            self.counts.resize(end, 0.0);
        }
    }

    /// Adds every bin of `other`: one resize at most, then a sum of two dense runs.
    fn merge(&mut self, other: &Bins) {
        if other.counts.is_empty() {
            return;
        }
        let high = other.offset + other.counts.len() as i32 - 1;
        self.cover(other.offset, high);
        let at = (other.offset - self.offset) as usize;
        for (mine, theirs) in self.counts[at..].iter_mut().zip(&other.counts) {
            *mine += theirs;
        }
    }

    /// Bins from sparse `[index, count]` pairs (indexes within ±[`MAX_INDEX`]), sized once.
    fn from_pairs(pairs: &[(i32, f64)]) -> Bins {
        let mut bins = Bins::default();
        let low = pairs.iter().map(|&(i, _)| i).min();
        let high = pairs.iter().map(|&(i, _)| i).max();
        if let (Some(low), Some(high)) = (low, high) {
            bins.cover(low, high);
            for &(index, count) in pairs {
                bins.counts[(index - low) as usize] += count;
            }
        }
        bins
    }

    pub fn is_empty(&self) -> bool {
        self.counts.iter().all(|&c| c == 0.0)
    }

    /// The same bins without the empty ones at either end.
    fn trimmed(&self) -> Bins {
        let Some(first) = self.counts.iter().position(|&c| c != 0.0) else {
            return Bins::default();
        };
        let last = self.counts.iter().rposition(|&c| c != 0.0).unwrap_or(first);
        Bins {
            offset: self.offset + first as i32,
            counts: self.counts[first..=last].to_vec(),
        }
    }

    /// Non-empty bins as `(index, count)`, lowest first.
    pub fn iter(&self) -> impl DoubleEndedIterator<Item = (i32, f64)> + '_ {
        self.counts
            .iter()
            .enumerate()
            .filter(|(_, c)| **c > 0.0)
            .map(|(i, &c)| (self.offset + i as i32, c))
    }
}

/// A histogram of weighted values with quantiles within [`RELATIVE_ERROR`].
#[derive(Debug, Clone, PartialEq)]
pub struct Sketch {
    positive: Bins,
    negative: Bins,
    zero: f64,
    count: f64,
    sum: f64,
    min: f64,
    max: f64,
}

impl Default for Sketch {
    fn default() -> Self {
        Sketch {
            positive: Bins::default(),
            negative: Bins::default(),
            zero: 0.0,
            count: 0.0,
            sum: 0.0,
            min: f64::INFINITY,
            max: f64::NEG_INFINITY,
        }
    }
}

fn bin_of(magnitude: f64) -> i32 {
    (magnitude.ln() / gamma_ln()).ceil() as i32
}

/// The value a bin stands for: the point whose relative distance to both edges is α.
fn value_of(index: i32) -> f64 {
    let gamma = gamma_ln().exp();
    2.0 * (f64::from(index) * gamma_ln()).exp() / (gamma + 1.0)
}

impl Sketch {
    /// Adds `value` seen `weight` times (a sampled line stands for 1 / rate values).
    pub fn add(&mut self, value: f64, weight: f64) {
        if !value.is_finite() || weight.is_nan() || weight <= 0.0 {
            return;
        }
        if value.abs() < MIN_MAGNITUDE {
            self.zero += weight;
        } else if value > 0.0 {
            self.positive.add(bin_of(value), weight);
        } else {
            self.negative.add(bin_of(-value), weight);
        }
        self.count += weight;
        self.sum += value * weight;
        self.min = self.min.min(value);
        self.max = self.max.max(value);
    }

    /// Adds every value of `other`.
    pub fn merge(&mut self, other: &Sketch) {
        self.positive.merge(&other.positive);
        self.negative.merge(&other.negative);
        self.zero += other.zero;
        self.count += other.count;
        self.sum += other.sum;
        self.min = self.min.min(other.min);
        self.max = self.max.max(other.max);
    }

    pub fn count(&self) -> f64 {
        self.count
    }

    pub fn sum(&self) -> f64 {
        self.sum
    }

    /// Smallest value added; `None` when empty.
    pub fn min(&self) -> Option<f64> {
        (self.count > 0.0).then_some(self.min)
    }

    /// Largest value added; `None` when empty.
    pub fn max(&self) -> Option<f64> {
        (self.count > 0.0).then_some(self.max)
    }

    /// The `q`-quantile (0 ≤ q ≤ 1): within [`RELATIVE_ERROR`] of the value of rank
    /// ⌊q × (count − 1)⌋ among the values sorted; `None` when empty.
    pub fn quantile(&self, q: f64) -> Option<f64> {
        if self.count <= 0.0 {
            return None;
        }
        let rank = (q.clamp(0.0, 1.0) * (self.count - 1.0)).floor();
        let mut seen = 0.0;
        let estimate = 'found: {
            for (index, count) in self.negative.iter().rev() {
                seen += count;
                if seen > rank {
                    break 'found -value_of(index);
                }
            }
            seen += self.zero;
            if seen > rank {
                break 'found 0.0;
            }
            for (index, count) in self.positive.iter() {
                seen += count;
                if seen > rank {
                    break 'found value_of(index);
                }
            }
            self.max
        };
        Some(estimate.clamp(self.min, self.max))
    }

    /// The serialized form (see docs/load-metrics.md).
    pub fn to_stored(&self) -> StoredSketch {
        StoredSketch {
            count: self.count,
            sum: self.sum,
            min: self.min().unwrap_or(0.0),
            max: self.max().unwrap_or(0.0),
            zero: self.zero,
            bins: self.positive.trimmed(),
            negative: self.negative.trimmed(),
        }
    }

    /// Reads the serialized form back; `None` if it is inconsistent (counts that do not
    /// add up, negative or non-finite numbers): a corrupt sketch must not become numbers.
    pub fn from_stored(stored: StoredSketch) -> Option<Sketch> {
        let mut total = 0.0;
        let counts = std::iter::once(&stored.zero)
            .chain(&stored.bins.counts)
            .chain(&stored.negative.counts);
        for &count in counts {
            if !(count.is_finite() && count >= 0.0) {
                return None;
            }
            total += count;
        }
        let close = (total - stored.count).abs() <= 1e-6 * stored.count.max(1.0);
        if !close || !stored.sum.is_finite() || !stored.min.is_finite() || !stored.max.is_finite() {
            return None;
        }
        let mut sketch = Sketch {
            zero: stored.zero,
            positive: stored.bins,
            negative: stored.negative,
            count: stored.count,
            sum: stored.sum,
            ..Sketch::default()
        };
        if stored.count > 0.0 {
            if stored.min > stored.max {
                return None;
            }
            sketch.min = stored.min;
            sketch.max = stored.max;
        }
        Some(sketch)
    }
}

/// A sketch as stored in `load-metrics.jsonl`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct StoredSketch {
    pub count: f64,
    pub sum: f64,
    pub min: f64,
    pub max: f64,
    #[serde(default)]
    pub zero: f64,
    pub bins: Bins,
    #[serde(default, skip_serializing_if = "Bins::is_empty")]
    pub negative: Bins,
}

impl Serialize for Bins {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        if self.counts.is_empty() {
            return serializer.serialize_seq(Some(0))?.end();
        }
        let mut seq = serializer.serialize_seq(Some(self.counts.len() + 1))?;
        seq.serialize_element(&self.offset)?;
        for &count in &self.counts {
            // Whole counts (every unsampled value is one) as integers: `3`, not `3.0`,
            // shorter to store and quicker to read.
            if count.fract() == 0.0 && count.abs() < 9.0e15 {
                seq.serialize_element(&(count as i64))?;
            } else {
                seq.serialize_element(&count)?;
            }
        }
        seq.end()
    }
}

impl<'de> Deserialize<'de> for Bins {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Bins, D::Error> {
        // Taken as raw text and read by hand in v2's usual form: serde's element-by-element
        // reading of ~150 counts per sketch was a quarter of `wave report`'s time.
        let raw = <Box<RawValue>>::deserialize(deserializer)?;
        match whole_counts(raw.get()) {
            Some(bins) => Ok(bins),
            None => serde_json::from_str::<SeqBins>(raw.get())
                .map(|SeqBins(bins)| bins)
                .map_err(de::Error::custom),
        }
    }
}

/// `[offset, c0, c1, …]` with whole counts, read straight from the text; `None` for every
/// other form (v1 pairs, fractional counts, malformed or out-of-range input), which
/// [`SeqBins`] then reads or refuses with a message.
fn whole_counts(text: &str) -> Option<Bins> {
    let inner = text.as_bytes().trim_ascii().strip_prefix(b"[")?;
    let mut rest = inner.trim_ascii_start();
    if rest == b"]" {
        return Some(Bins::default());
    }
    let (sign, digits) = match rest.strip_prefix(b"-") {
        Some(digits) => (-1, digits),
        None => (1, rest),
    };
    let (offset, after) = integer(digits)?;
    if sign < 0 && offset == 0 {
        // serde_json reads `-0` as a float, which is no offset.
        return None;
    }
    let offset = sign * i64::try_from(offset).ok()?;
    rest = after;
    let mut counts = Vec::with_capacity(inner.iter().filter(|&&b| b == b',').count());
    loop {
        rest = rest.trim_ascii_start();
        match rest.split_first()? {
            (b']', []) => break,
            (b',', tail) => {
                let (count, after) = integer(tail.trim_ascii_start())?;
                counts.push(count as f64);
                rest = after;
            }
            _ => return None,
        }
    }
    let high = offset + counts.len() as i64 - 1;
    checked_index::<serde_json::Error>(high).ok()?;
    Some(Bins {
        offset: checked_index::<serde_json::Error>(offset).ok()?,
        counts,
    })
}

/// A JSON integer without sign of at most 15 digits (so exact as an f64) at the start of
/// `bytes`, and the bytes after it; `None` unless a delimiter follows (`1.5`, `1e3` and
/// `01` are left to serde).
fn integer(bytes: &[u8]) -> Option<(u64, &[u8])> {
    let len = bytes
        .iter()
        .take(16)
        .take_while(|b| b.is_ascii_digit())
        .count();
    if len == 0 || len > 15 || (len > 1 && bytes[0] == b'0') {
        return None;
    }
    let (digits, rest) = bytes.split_at(len);
    if !matches!(
        rest.first(),
        Some(b',' | b']' | b' ' | b'\t' | b'\n' | b'\r')
    ) {
        return None;
    }
    let value = digits
        .iter()
        .fold(0, |n: u64, d| n * 10 + u64::from(d - b'0'));
    Some((value, rest))
}

/// `bins` read element by element through serde: v1 pairs, fractional counts, and the
/// refusals of malformed ones.
struct SeqBins(Bins);

impl<'de> Deserialize<'de> for SeqBins {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<SeqBins, D::Error> {
        deserializer.deserialize_seq(BinsVisitor).map(SeqBins)
    }
}

/// A bin index read from a line, refused beyond ±[`MAX_INDEX`].
fn checked_index<E: de::Error>(index: i64) -> Result<i32, E> {
    i32::try_from(index)
        .ok()
        .filter(|i| i.unsigned_abs() <= MAX_INDEX.unsigned_abs())
        .ok_or_else(|| E::custom(format_args!("bin index {index} is out of range")))
}

struct BinsVisitor;

impl<'de> Visitor<'de> for BinsVisitor {
    type Value = Bins;

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("bins as [offset, count, …] or [[index, count], …]")
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Bins, A::Error> {
        match seq.next_element::<FirstBin>()? {
            None => Ok(Bins::default()),
            Some(FirstBin::Offset(offset)) => {
                let mut counts = Vec::with_capacity(seq.size_hint().unwrap_or(0));
                while let Some(count) = seq.next_element::<f64>()? {
                    counts.push(count);
                }
                checked_index(i64::from(offset) + counts.len() as i64 - 1)?;
                Ok(Bins { offset, counts })
            }
            Some(FirstBin::Pair(index, count)) => {
                let mut pairs = vec![(index, count)];
                while let Some((index, count)) = seq.next_element::<(i64, f64)>()? {
                    pairs.push((checked_index(index)?, count));
                }
                Ok(Bins::from_pairs(&pairs))
            }
        }
    }
}

/// The first element of `bins` says its form: a number is v2's offset, a pair is v1's
/// first `[index, count]`.
enum FirstBin {
    Offset(i32),
    Pair(i32, f64),
}

impl<'de> Deserialize<'de> for FirstBin {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<FirstBin, D::Error> {
        deserializer.deserialize_any(FirstBinVisitor)
    }
}

struct FirstBinVisitor;

impl<'de> Visitor<'de> for FirstBinVisitor {
    type Value = FirstBin;

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("a bin offset or an [index, count] pair")
    }

    fn visit_i64<E: de::Error>(self, offset: i64) -> Result<FirstBin, E> {
        checked_index(offset).map(FirstBin::Offset)
    }

    fn visit_u64<E: de::Error>(self, offset: u64) -> Result<FirstBin, E> {
        checked_index(i64::try_from(offset).unwrap_or(i64::MAX)).map(FirstBin::Offset)
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<FirstBin, A::Error> {
        let index: i64 = seq
            .next_element()?
            .ok_or_else(|| de::Error::invalid_length(0, &self))?;
        let count: f64 = seq
            .next_element()?
            .ok_or_else(|| de::Error::invalid_length(1, &self))?;
        if seq.next_element::<de::IgnoredAny>()?.is_some() {
            return Err(de::Error::invalid_length(3, &self));
        }
        Ok(FirstBin::Pair(checked_index(index)?, count))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn exact(sorted: &[f64], q: f64) -> f64 {
        sorted[(q * (sorted.len() - 1) as f64).floor() as usize]
    }

    fn within(estimate: f64, truth: f64) -> bool {
        (estimate - truth).abs() <= RELATIVE_ERROR * truth.abs() + 1e-12
    }

    #[test]
    fn quantiles_stay_within_the_relative_error() {
        let mut values: Vec<f64> = (1..=20_000)
            .map(|i| (f64::from(i) * 0.37).powf(1.7))
            .collect();
        let mut sketch = Sketch::default();
        for &v in &values {
            sketch.add(v, 1.0);
        }
        values.sort_by(f64::total_cmp);
        for q in [0.0, 0.01, 0.5, 0.9, 0.95, 0.99, 0.999, 1.0] {
            let (estimate, truth) = (sketch.quantile(q).expect("values"), exact(&values, q));
            assert!(within(estimate, truth), "q{q}: {estimate} vs {truth}");
        }
        assert_eq!(sketch.count(), 20_000.0);
        assert_eq!(sketch.max(), Some(values[19_999]));
    }

    #[test]
    fn merging_equals_adding_everything_to_one_sketch() {
        let (mut a, mut b, mut all) = (Sketch::default(), Sketch::default(), Sketch::default());
        for i in 0..1000 {
            let v = f64::from(i) - 300.0;
            if i % 3 == 0 { &mut a } else { &mut b }.add(v, 1.0);
            all.add(v, 1.0);
        }
        a.merge(&b);
        for q in [0.0, 0.1, 0.3, 0.5, 0.99] {
            assert_eq!(a.quantile(q), all.quantile(q), "q{q}");
        }
        assert_eq!(a.count(), all.count());
        assert_eq!(a.sum(), all.sum());
    }

    #[test]
    fn merging_ranges_below_above_and_inside_keeps_every_bin() {
        let values = |range: std::ops::Range<i32>| range.map(|i| 1.5f64.powi(i));
        let mut merged = Sketch::default();
        let mut all = Sketch::default();
        for range in [10..20, 0..5, 30..40, 12..35, -8..-2] {
            let mut part = Sketch::default();
            for v in values(range.clone()).chain(values(range).map(|v| -v)) {
                part.add(v, 2.0);
                all.add(v, 2.0);
            }
            let stored = Sketch::from_stored(part.to_stored()).expect("consistent");
            merged.merge(&stored);
        }
        let (merged, all) = (merged.to_stored(), all.to_stored());
        assert_eq!(merged.bins, all.bins);
        assert_eq!(merged.negative, all.negative);
        assert_eq!(merged.count, all.count);
    }

    #[test]
    fn handles_negative_values_and_zero() {
        let mut sketch = Sketch::default();
        for v in [-100.0, -1.0, 0.0, 0.0, 5.0] {
            sketch.add(v, 1.0);
        }
        assert!(within(sketch.quantile(0.0).expect("values"), -100.0));
        assert_eq!(sketch.quantile(0.5), Some(0.0));
        assert!(within(sketch.quantile(1.0).expect("values"), 5.0));
        assert_eq!(Sketch::default().quantile(0.5), None);
    }

    #[test]
    fn round_trips_through_the_stored_form_and_refuses_corrupt_ones() {
        let mut sketch = Sketch::default();
        for i in 1..500 {
            sketch.add(f64::from(i), 2.0);
        }
        let stored = sketch.to_stored();
        let json = serde_json::to_string(&stored).expect("serializes");
        let back: StoredSketch = serde_json::from_str(&json).expect("parses");
        assert_eq!(Sketch::from_stored(back), Some(sketch));
        let mut bad = stored.clone();
        bad.count += 5.0;
        assert_eq!(Sketch::from_stored(bad), None);
        let negative = r#"{"count":0.0,"sum":0.0,"min":0.0,"max":0.0,"bins":[3,1,-1]}"#;
        let bad: StoredSketch = serde_json::from_str(negative).expect("parses");
        assert_eq!(Sketch::from_stored(bad), None);
    }

    fn stored(json: &str) -> Result<StoredSketch, serde_json::Error> {
        serde_json::from_str(&format!(
            r#"{{"count":4.5,"sum":20.0,"min":1.0,"max":9.0,"bins":{json}}}"#
        ))
    }

    #[test]
    fn stores_dense_bins_with_whole_counts_as_integers() {
        let mut sketch = Sketch::default();
        sketch.add(value_of(20), 1.0);
        sketch.add(value_of(20), 2.0);
        sketch.add(value_of(23), 2.5);
        sketch.add(-value_of(7), 1.0);
        let json = serde_json::to_string(&sketch.to_stored()).expect("serializes");
        assert!(
            json.contains(r#""bins":[20,3,0,0,2.5],"negative":[7,1]"#),
            "{json}"
        );
    }

    #[test]
    fn reads_schema_v1_pairs_and_v2_runs_to_the_same_sketch() {
        let v1 = stored("[[10,1.0],[13,3.5]]").expect("v1 pairs");
        let v2 = stored("[10,1,0,0,3.5]").expect("v2 run");
        assert_eq!(v1, v2);
        let sketch = Sketch::from_stored(v2).expect("consistent");
        assert_eq!(
            sketch.to_stored().bins.iter().collect::<Vec<_>>(),
            [(10, 1.0), (13, 3.5)]
        );
        assert_eq!(stored("[]").expect("empty").bins, Bins::default());
    }

    #[test]
    fn reads_by_hand_exactly_what_serde_reads() {
        for json in [
            "[]",
            " [ ] ",
            "[5]",
            "[20,3,0,0,2]",
            "[ -3 , 1,\n2 ]",
            "[-0,1]",
            "[0,123456789012345]",
            "[0,1234567890123456]",
            "[99999,1,1]",
            "[-100000,1]",
            "[-100001,1]",
            "[100000,1,1]",
            "[5,1.5]",
            "[5,1e2]",
            "[5,-1]",
            "[01,1]",
            "[5,01]",
            "[5,]",
            "[5 1]",
            "[5,1]]",
            "[[10,1.0],[13,3.5]]",
            "[1.5,1]",
            "[5,\"1\"]",
        ] {
            let by_hand: Result<Bins, _> = serde_json::from_str(json);
            let by_serde = serde_json::from_str::<SeqBins>(json).map(|SeqBins(bins)| bins);
            match (&by_hand, &by_serde) {
                (Ok(hand), Ok(serde)) => assert_eq!(hand, serde, "{json}"),
                (Err(_), Err(_)) => {}
                _ => panic!("{json}: by hand {by_hand:?}, by serde {by_serde:?}"),
            }
        }
        assert!(
            whole_counts("[20,3,0,0,2]").is_some(),
            "the usual form is read by hand"
        );
        assert!(whole_counts("[5,1.5]").is_none(), "fractions are serde's");
    }

    #[test]
    fn refuses_bin_indexes_out_of_range_before_allocating() {
        for json in [
            "[[2000000000,1.0]]",
            "[[1,1.0],[-4000000000,1.0]]",
            "[99999999999,1]",
            "[100000,1,1]",
            "[1.5,1]",
            "[[1,1.0,7]]",
            "[[1]]",
        ] {
            let err = stored(json).expect_err(json).to_string();
            assert!(
                err.contains("out of range") || err.contains("invalid"),
                "{json}: {err}"
            );
        }
        assert!(stored("[100000,1]").is_ok());
    }
}
