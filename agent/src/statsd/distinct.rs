//! The distinct values of a StatsD set in one window, counted in bounded memory: a
//! "k minimum values" sketch (Bar-Yossef et al., "Counting distinct elements in a data
//! stream", 2002). Each value is hashed to 64 bits and only the [`EXACT_UP_TO`] smallest
//! hashes are kept, so a set costs at most 8 KiB whatever its agents send. Up to that many
//! distinct values the count is exact; past it, the k-th smallest hash estimates how many
//! there were, with a relative standard error of about 1/√(k − 2) ≈ 3 %
//! (docs/load-metrics.md).

use std::hash::Hasher as _;

/// Distinct values counted exactly; the sketch's k.
pub const EXACT_UP_TO: usize = 1024;

/// The distinct values of a window.
#[derive(Debug, Default, Clone, PartialEq)]
pub struct Distinct {
    /// The smallest hashes seen, ascending, at most [`EXACT_UP_TO`].
    smallest: Vec<u64>,
    /// Whether a distinct value was left out (the count is then an estimate).
    saturated: bool,
}

impl Distinct {
    /// Counts `value` (the bytes as sent) once, however often it comes.
    pub fn insert(&mut self, value: &[u8]) {
        // SipHash with fixed keys: well mixed in every bit, which the estimate relies on,
        // and the same hash for the same value in every window.
        let mut hasher = std::hash::DefaultHasher::new();
        hasher.write(value);
        let hash = hasher.finish();
        if self.smallest.len() == EXACT_UP_TO && self.smallest.last().is_some_and(|&l| hash > l) {
            self.saturated = true;
            return;
        }
        if let Err(at) = self.smallest.binary_search(&hash) {
            if self.smallest.len() == EXACT_UP_TO {
                // `hash` is below the largest (checked above), so `at` stays in bounds.
                self.smallest.pop();
                self.saturated = true;
            }
            if self.smallest.len() == self.smallest.capacity() {
                // Grown by hand: doubling past the bound would hold twice the memory.
                let grown = (self.smallest.capacity() * 2).clamp(8, EXACT_UP_TO);
                self.smallest.reserve_exact(grown - self.smallest.len());
            }
            self.smallest.insert(at, hash);
        }
    }

    /// Whether nothing was inserted.
    pub fn is_empty(&self) -> bool {
        self.smallest.is_empty()
    }

    /// The number of distinct values: exact up to [`EXACT_UP_TO`], estimated past it.
    pub fn count(&self) -> f64 {
        match self.smallest.last() {
            Some(&largest) if self.saturated => {
                // The k smallest of n uniform hashes reach about k/(n + 1) of the range.
                let fraction = (largest as f64 + 1.0) / 2f64.powi(64);
                ((EXACT_UP_TO - 1) as f64 / fraction).round()
            }
            _ => self.smallest.len() as f64,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn of(values: impl Iterator<Item = String>) -> Distinct {
        let mut distinct = Distinct::default();
        for value in values {
            distinct.insert(value.as_bytes());
        }
        distinct
    }

    #[test]
    fn counts_each_value_once_exactly_up_to_the_bound() {
        assert_eq!(Distinct::default().count(), 0.0);
        assert!(Distinct::default().is_empty());
        let repeated = of((0..5000).map(|i| format!("player-{}", i % 7)));
        assert_eq!(repeated.count(), 7.0);
        let full = of((0..EXACT_UP_TO)
            .chain(0..EXACT_UP_TO)
            .map(|i| i.to_string()));
        assert_eq!(full.count(), EXACT_UP_TO as f64);
        assert!(!full.saturated, "nothing was left out");
    }

    #[test]
    fn estimates_past_the_bound_within_a_few_percent_in_bounded_memory() {
        for n in [1025usize, 5_000, 100_000, 1_000_000] {
            let distinct = of((0..n).map(|i| format!("user-{i}")));
            let error = (distinct.count() - n as f64).abs() / n as f64;
            // Three times the standard error of 1/√(k − 2): fails for a biased estimator.
            assert!(
                error < 0.094,
                "{n} distinct values counted as {}",
                distinct.count()
            );
            assert_eq!(distinct.smallest.len(), EXACT_UP_TO);
            assert_eq!(distinct.smallest.capacity(), EXACT_UP_TO, "8 KiB, not more");
        }
    }
}
