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

use std::fmt;
use std::str::FromStr;

use serde::Serialize;

use crate::load_metrics::Tags;

use super::merge::Merged;

/// What of a metric a threshold looks at.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Stat {
    /// A percentile in [0, 100] (`p95` is 95).
    Quantile(f64),
    Min,
    Max,
    Mean,
    Count,
    Total,
    Rate,
    Last,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Op {
    Lt,
    Le,
    Gt,
    Ge,
    Eq,
}

impl Op {
    fn holds(self, left: f64, right: f64) -> bool {
        match self {
            Op::Lt => left < right,
            Op::Le => left <= right,
            Op::Gt => left > right,
            Op::Ge => left >= right,
            Op::Eq => left == right,
        }
    }
}

/// A parsed threshold.
#[derive(Debug, Clone, PartialEq)]
pub struct Threshold {
    pub text: String,
    pub metric: String,
    pub tags: Tags,
    pub stat: Stat,
    pub op: Op,
    pub limit: f64,
    /// For `N%`: the counter the rate is a share of.
    pub percent_of: Option<String>,
}

/// A threshold that does not parse; the message says what is expected.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error(
    "invalid threshold {text:?}: {reason} (expected e.g. 'latency_ms p95 < 250' or 'errors_total rate < 1%')"
)]
pub struct ThresholdError {
    text: String,
    reason: String,
}

impl FromStr for Threshold {
    type Err = ThresholdError;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        let err = |reason: &str| ThresholdError {
            text: text.to_owned(),
            reason: reason.to_owned(),
        };
        let words: Vec<&str> = text.split_whitespace().collect();
        let (metric_word, stat_word, op_word, value_word, rest) = match words.as_slice() {
            [m, s, o, v, rest @ ..] => (*m, *s, *o, *v, rest),
            _ => {
                return Err(err(
                    "it needs a metric, a statistic, a comparison and a number",
                ));
            }
        };
        let (metric, tags) = match metric_word.split_once('{') {
            Some((name, tags)) => {
                let tags = tags
                    .strip_suffix('}')
                    .ok_or_else(|| err("'{' without '}'"))?;
                let tags = tags
                    .split(',')
                    .filter(|t| !t.is_empty())
                    .map(|t| {
                        let (k, v) = t.split_once('=').ok_or_else(|| err("a tag is key=value"))?;
                        Ok((k.to_owned(), v.trim_matches('"').to_owned()))
                    })
                    .collect::<Result<Tags, ThresholdError>>()?;
                (name.to_owned(), tags)
            }
            None => (metric_word.to_owned(), Tags::new()),
        };
        let stat = match stat_word {
            "min" => Stat::Min,
            "max" => Stat::Max,
            "mean" | "avg" => Stat::Mean,
            "count" => Stat::Count,
            "total" => Stat::Total,
            "rate" => Stat::Rate,
            "last" => Stat::Last,
            other => {
                let q = other
                    .strip_prefix('p')
                    .and_then(|n| n.parse::<f64>().ok())
                    .filter(|n| (0.0..=100.0).contains(n))
                    .ok_or_else(|| {
                        err("the statistic is pNN, min, max, mean, count, total, rate or last")
                    })?;
                Stat::Quantile(q)
            }
        };
        let op = match op_word {
            "<" => Op::Lt,
            "<=" => Op::Le,
            ">" => Op::Gt,
            ">=" => Op::Ge,
            "==" => Op::Eq,
            _ => return Err(err("the comparison is <, <=, >, >= or ==")),
        };
        let (number, percent) = match value_word.strip_suffix('%') {
            Some(n) => (n, true),
            None => (value_word, false),
        };
        let limit: f64 = number
            .parse()
            .ok()
            .filter(|n: &f64| n.is_finite())
            .ok_or_else(|| err("the limit is not a number"))?;
        let percent_of = match (percent, rest) {
            (false, []) => None,
            (true, []) => Some("requests_total".to_owned()),
            (true, ["of", base]) => Some((*base).to_owned()),
            _ => return Err(err("only 'N% of COUNTER' may follow the number")),
        };
        if percent && stat != Stat::Rate {
            return Err(err("a percentage goes with 'rate'"));
        }
        Ok(Threshold {
            text: text.to_owned(),
            metric,
            tags,
            stat,
            op,
            limit,
            percent_of,
        })
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

impl fmt::Display for Stat {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Stat::Quantile(p) => write!(f, "p{p}"),
            Stat::Min => f.write_str("min"),
            Stat::Max => f.write_str("max"),
            Stat::Mean => f.write_str("mean"),
            Stat::Count => f.write_str("count"),
            Stat::Total => f.write_str("total"),
            Stat::Rate => f.write_str("rate"),
            Stat::Last => f.write_str("last"),
        }
    }
}

impl Threshold {
    /// Evaluates the threshold on the merged test.
    pub fn evaluate(&self, merged: &Merged) -> Outcome {
        match self.value(merged) {
            Ok((value, shown)) => Outcome {
                threshold: self.text.clone(),
                passed: self.op.holds(value, self.limit),
                value: Some(value),
                detail: format!("{} {} = {shown}", self.metric, self.stat),
            },
            Err(detail) => Outcome {
                threshold: self.text.clone(),
                passed: false,
                value: None,
                detail,
            },
        }
    }

    fn value(&self, merged: &Merged) -> Result<(f64, String), String> {
        let missing = || format!("{} was never reported", self.metric);
        if let Some(sketch) = merged.histogram(&self.metric, &self.tags) {
            let value = match self.stat {
                Stat::Quantile(p) => sketch.quantile(p / 100.0),
                Stat::Min => sketch.min(),
                Stat::Max => sketch.max(),
                Stat::Mean => (sketch.count() > 0.0).then(|| sketch.sum() / sketch.count()),
                Stat::Count => Some(sketch.count()),
                Stat::Rate => merged.duration_seconds().map(|d| sketch.count() / d),
                Stat::Total | Stat::Last => {
                    return Err(format!(
                        "{} is a histogram: use pNN, min, max, mean, count or rate",
                        self.metric
                    ));
                }
            };
            let value = value.ok_or_else(missing)?;
            return Ok((value, format!("{value:.3}")));
        }
        if let Some(total) = merged.counter(&self.metric, &self.tags) {
            return match (self.stat, &self.percent_of) {
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
                        .counter(base, &self.tags)
                        .filter(|b| *b > 0.0)
                        .ok_or_else(|| format!("no {base} to take a percentage of"))?;
                    let percent = 100.0 * total / base_total;
                    Ok((percent, format!("{percent:.3}% of {base}")))
                }
                _ => Err(format!(
                    "{} is a counter: use total, count or rate",
                    self.metric
                )),
            };
        }
        if let Some((last, max)) = merged.gauge(&self.metric, &self.tags) {
            return match self.stat {
                Stat::Last => Ok((last, format!("{last}"))),
                Stat::Max => Ok((max, format!("{max}"))),
                _ => Err(format!("{} is a gauge: use last or max", self.metric)),
            };
        }
        Err(missing())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_quantiles_rates_percentages_and_tags() {
        let t: Threshold = "latency_ms{endpoint=login} p99.9 <= 800"
            .parse()
            .expect("valid");
        assert_eq!(t.metric, "latency_ms");
        assert_eq!(t.tags.get("endpoint").map(String::as_str), Some("login"));
        assert_eq!(t.stat, Stat::Quantile(99.9));
        assert_eq!(t.op, Op::Le);
        let t: Threshold = "errors_total rate < 1%".parse().expect("valid");
        assert_eq!(t.percent_of.as_deref(), Some("requests_total"));
        assert_eq!(t.limit, 1.0);
        let t: Threshold = "errors_total rate < 0.5% of logins_total"
            .parse()
            .expect("valid");
        assert_eq!(t.percent_of.as_deref(), Some("logins_total"));
    }

    #[test]
    fn refuses_malformed_thresholds_saying_why() {
        for (text, why) in [
            ("latency_ms p95", "needs a metric"),
            ("latency_ms p950 < 3", "statistic"),
            ("latency_ms p95 ~ 3", "comparison"),
            ("latency_ms p95 < fast", "not a number"),
            ("latency_ms p95 < 5%", "percentage"),
            ("errors_total rate < 1% from x", "only 'N% of COUNTER'"),
        ] {
            let err = text.parse::<Threshold>().expect_err(text).to_string();
            assert!(err.contains(why), "{text}: {err}");
        }
    }
}
