//! `--threshold 'EXPR'`: pass/fail conditions on the merged test, in the spirit of k6's
//! thresholds. `METRIC[{tag=value,…}] STAT OP NUMBER[%] [of BASE]`:
//! - `latency_ms p95 < 250`, `latency_ms{endpoint=login} p99.9 <= 800`, `latency_ms max < 5000`
//! - `requests_total rate > 100` (per second over the test), `requests_total total >= 1e6`
//! - `errors_total rate < 1%`: errors as a share of `requests_total` (another base with
//!   `of NAME`, e.g. `errors_total rate < 0.5% of logins_total`)
//! - `players last >= 1000`, `players max >= 1000` for gauges.
//!
//! A metric that was never reported fails its threshold (a silent pass would hide a
//! broken test).

use std::str::FromStr;

use serde::Serialize;
use wave_contract::threshold::{self, Stat, ThresholdError};

use super::merge::Merged;

/// A threshold of the shared grammar, evaluated on a merged test.
#[derive(Debug, Clone, PartialEq)]
pub struct Threshold(pub threshold::Threshold);

impl FromStr for Threshold {
    type Err = ThresholdError;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        text.parse().map(Self)
    }
}

/// How a threshold came out.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Outcome {
    pub threshold: String,
    pub passed: bool,
    /// The value compared, when the metric was found.
    pub value: Option<f64>,
    /// What was compared, or why it could not be.
    pub detail: String,
}

impl Threshold {
    /// Evaluates the threshold on the merged test.
    pub fn evaluate(&self, merged: &Merged) -> Outcome {
        let t = &self.0;
        match self.value(merged) {
            Ok((value, shown)) => Outcome {
                threshold: t.text.clone(),
                passed: t.op.holds(value, t.limit),
                value: Some(value),
                detail: format!("{} {} = {shown}", t.metric, t.stat),
            },
            Err(detail) => Outcome {
                threshold: t.text.clone(),
                passed: false,
                value: None,
                detail,
            },
        }
    }

    fn value(&self, merged: &Merged) -> Result<(f64, String), String> {
        let t = &self.0;
        let missing = || format!("{} was never reported", t.metric);
        if let Some(sketch) = merged.histogram(&t.metric, &t.tags) {
            let value = match t.stat {
                Stat::Quantile(p) => sketch.quantile(p / 100.0),
                Stat::Min => sketch.min(),
                Stat::Max => sketch.max(),
                Stat::Mean => (sketch.count() > 0.0).then(|| sketch.sum() / sketch.count()),
                Stat::Count => Some(sketch.count()),
                Stat::Rate => merged.duration_seconds().map(|d| sketch.count() / d),
                Stat::Total | Stat::Last => {
                    return Err(format!(
                        "{} is a histogram: use pNN, min, max, mean, count or rate",
                        t.metric
                    ));
                }
            };
            let value = value.ok_or_else(missing)?;
            return Ok((value, format!("{value:.3}")));
        }
        if let Some(total) = merged.counter(&t.metric, &t.tags) {
            return match (t.stat, &t.percent_of) {
                (Stat::Total | Stat::Count, _) => Ok((total, format!("{total}"))),
                (Stat::Rate, None) => {
                    let duration = merged
                        .duration_seconds()
                        .ok_or_else(|| "the test has no duration yet".to_owned())?;
                    let rate = total / duration;
                    Ok((rate, format!("{rate:.3}/s")))
                }
                (Stat::Rate, Some(base)) => {
                    let base_total = merged
                        .counter(base, &t.tags)
                        .filter(|b| *b > 0.0)
                        .ok_or_else(|| format!("no {base} to take a percentage of"))?;
                    let percent = 100.0 * total / base_total;
                    Ok((percent, format!("{percent:.3}% of {base}")))
                }
                _ => Err(format!(
                    "{} is a counter: use total, count or rate",
                    t.metric
                )),
            };
        }
        if let Some((last, max)) = merged.gauge(&t.metric, &t.tags) {
            return match t.stat {
                Stat::Last => Ok((last, format!("{last}"))),
                Stat::Max => Ok((max, format!("{max}"))),
                _ => Err(format!("{} is a gauge: use last or max", t.metric)),
            };
        }
        Err(missing())
    }
}
