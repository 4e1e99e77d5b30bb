//! Shared value grammars: positive integers and durations, and the "did you mean" hint.

use std::time::Duration;

/// Why a value was refused, written for the person reading `kubectl` output or a pod log;
/// the caller says which annotation or variable it came from.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct Invalid(pub String);

impl Invalid {
    pub(crate) fn new(problem: impl Into<String>) -> Self {
        Self(problem.into())
    }
}

/// The closest known name to a misspelt one, for "did you mean" hints.
pub fn closest<'a>(given: &str, candidates: impl IntoIterator<Item = &'a str>) -> Option<&'a str> {
    candidates
        .into_iter()
        .map(|c| (strsim::jaro_winkler(given, c), c))
        .filter(|(score, _)| *score >= 0.8)
        .max_by(|a, b| a.0.total_cmp(&b.0))
        .map(|(_, c)| c)
}

/// `; did you mean X?` when one of `candidates` is close to `given`, else nothing.
pub(crate) fn hint<'a>(given: &str, candidates: impl IntoIterator<Item = &'a str>) -> String {
    closest(given, candidates)
        .map(|s| format!("; did you mean {s}?"))
        .unwrap_or_default()
}

/// A positive decimal integer, digits only (no sign, no spaces, no `0`).
pub fn positive(value: &str) -> Result<u64, Invalid> {
    if value.is_empty() || !value.bytes().all(|b| b.is_ascii_digit()) {
        return Err(Invalid(format!("{value:?} is not a positive integer")));
    }
    match value.parse::<u64>() {
        Ok(0) => Err(Invalid::new("must be a positive integer, got \"0\"")),
        Ok(n) => Ok(n),
        Err(_) => Err(Invalid(format!("{value} is too large"))),
    }
}

/// A decimal integer, 0 or more, digits only.
pub fn non_negative(value: &str, what: &str) -> Result<u64, Invalid> {
    if value.is_empty() || !value.bytes().all(|b| b.is_ascii_digit()) {
        return Err(Invalid(format!(
            "{value:?} is not {what} (a decimal integer, 0 or more)"
        )));
    }
    value
        .parse()
        .map_err(|_| Invalid(format!("{value} is too large")))
}

/// A duration longer than zero, such as `90s`, `10m` or `1h 30m` (humantime's grammar).
pub fn positive_duration(value: &str) -> Result<Duration, Invalid> {
    match humantime::parse_duration(value) {
        Ok(d) if d > Duration::ZERO => Ok(d),
        _ => Err(Invalid(format!(
            "{value:?} is not a duration (expected a positive duration such as 90s, 10m or 1h)"
        ))),
    }
}

/// A duration as `WAVE_*` variables carry it: the shortest humantime form (`1m 30s`).
pub fn format_duration(duration: Duration) -> String {
    humantime::format_duration(duration).to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn positive_refuses_zero_signs_spaces_and_overflow() {
        assert_eq!(positive("12"), Ok(12));
        for bad in ["0", "-1", "+1", " 1", "1.5", "", "99999999999999999999"] {
            assert!(positive(bad).is_err(), "{bad:?} must be refused");
        }
    }

    #[test]
    fn positive_duration_refuses_zero_and_words() {
        assert_eq!(positive_duration("90s"), Ok(Duration::from_secs(90)));
        assert_eq!(positive_duration("1h 30m"), Ok(Duration::from_secs(5400)));
        for bad in ["0s", "soon", "", "-5s", "10"] {
            let err = positive_duration(bad).expect_err(bad);
            assert!(err.0.contains("positive duration"), "{err}");
        }
    }

    #[test]
    fn a_formatted_duration_parses_back_to_itself() {
        for secs in [1, 20, 60, 90, 3600, 5400] {
            let d = Duration::from_secs(secs);
            assert_eq!(positive_duration(&format_duration(d)), Ok(d));
        }
    }

    #[test]
    fn closest_suggests_only_near_names() {
        assert_eq!(
            closest("kubernets", ["kubernetes", "off"]),
            Some("kubernetes")
        );
        assert_eq!(closest("zzz", ["kubernetes", "off"]), None);
    }
}
