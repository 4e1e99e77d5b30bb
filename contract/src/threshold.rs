//! The threshold grammar of `wave report --threshold 'EXPR'` (docs/report.md), in the spirit
//! of k6's thresholds; shared so that a condition the webhook accepts is one the report and
//! the supervisor read the same way. `METRIC[{tag=value,…}] STAT OP NUMBER[%] [of BASE]`:
//! - `latency_ms p95 < 250`, `latency_ms{endpoint=login} p99.9 <= 800`, `latency_ms max < 5000`
//! - `requests_total rate > 100` (per second over the test), `requests_total total >= 1e6`
//! - `errors_total rate < 1%`: errors as a share of `requests_total` (another base with
//!   `of NAME`, e.g. `errors_total rate < 0.5% of logins_total`)
//! - `players last >= 1000`, `players max >= 1000` for gauges.
//!
//! A metric that was never reported fails its threshold (a silent pass would hide a
//! broken test).

use std::collections::BTreeMap;
use std::fmt;
use std::str::FromStr;

/// A threshold's tag selector: every tag must match.
pub type Tags = BTreeMap<String, String>;

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
    /// Whether `left OP right`.
    pub fn holds(self, left: f64, right: f64) -> bool {
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
