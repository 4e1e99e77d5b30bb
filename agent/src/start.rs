//! When agents start (SPEC 5.2), the pure part: the start modes as `WAVE_START` gives them,
//! the quorum arithmetic, the start-at a `together` start agrees on, and how long to wait
//! for it. Wall-clock times are passed in, so every decision is testable without a clock.

use std::str::FromStr;
use std::time::{Duration, SystemTime};

use k8s_openapi::jiff::Timestamp;

/// Time between agreeing on a `together` start and the start itself: every supervisor
/// sees the start object well before it is due.
pub const LEAD: Duration = Duration::from_secs(10);

/// `WAVE_START`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StartMode {
    /// As soon as the script is ready.
    Immediately,
    /// At the start-at the part agrees on.
    Together,
    /// At this time.
    At(SystemTime),
}

impl FromStr for StartMode {
    type Err = String;

    fn from_str(value: &str) -> Result<Self, String> {
        match value {
            "immediately" => Ok(Self::Immediately),
            "together" => Ok(Self::Together),
            other => parse_time(other).map(Self::At).ok_or_else(|| {
                format!(
                    "{other:?} is not a start (expected immediately, together or an RFC 3339 time such as 2026-12-02T18:00:00Z)"
                )
            }),
        }
    }
}

/// `WAVE_START_QUORUM`: a percentage of the machines, `1%` to `100%`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Quorum(pub u32);

impl FromStr for Quorum {
    type Err = String;

    fn from_str(value: &str) -> Result<Self, String> {
        match value.strip_suffix('%').and_then(|n| n.parse::<u32>().ok()) {
            Some(p) if (1..=100).contains(&p) => Ok(Quorum(p)),
            _ => Err(format!(
                "{value:?} is not a quorum (expected a percentage from 1% to 100%, e.g. 90%)"
            )),
        }
    }
}

impl Quorum {
    /// Ready machines needed out of `machines`: the percentage rounded up, at least one.
    pub fn of(self, machines: u32) -> u32 {
        (u64::from(machines) * u64::from(self.0))
            .div_ceil(100)
            .max(1)
            .try_into()
            .unwrap_or(u32::MAX)
    }
}

/// An RFC 3339 time (any offset).
pub fn parse_time(text: &str) -> Option<SystemTime> {
    Timestamp::from_str(text).ok().map(SystemTime::from)
}

/// `WAVE_START_AT`'s form: RFC 3339, UTC, milliseconds.
pub fn format_time(time: SystemTime) -> String {
    humantime::format_rfc3339_millis(time).to_string()
}

/// The start-at a supervisor proposes when it creates the start object at `now`.
pub fn proposed_start(now: SystemTime) -> String {
    format_time(now + LEAD)
}

/// What a waiting `together` supervisor does next.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Next {
    /// Enough machines are ready, or the wait reached the timeout: create the start object.
    CreateStart,
    /// Keep waiting for the start object (or more ready machines).
    Wait,
}

/// The decision of a supervisor that has waited `waited` and sees `ready` of `machines` ready.
pub fn together(
    ready: u32,
    machines: u32,
    quorum: Quorum,
    waited: Duration,
    timeout: Duration,
) -> Next {
    if ready >= quorum.of(machines) || waited >= timeout {
        Next::CreateStart
    } else {
        Next::Wait
    }
}

/// How long to sleep at `now` until `start_at`: nothing when it has passed (a late pod
/// starts at once).
pub fn until(start_at: SystemTime, now: SystemTime) -> Duration {
    start_at.duration_since(now).unwrap_or(Duration::ZERO)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_every_start_mode() {
        assert_eq!("immediately".parse(), Ok(StartMode::Immediately));
        assert_eq!("together".parse(), Ok(StartMode::Together));
        let at: StartMode = "2026-12-02T19:00:00.250+01:00".parse().expect("a time");
        let StartMode::At(time) = at else {
            panic!("a time")
        };
        assert_eq!(format_time(time), "2026-12-02T18:00:00.250Z");
        let err = "tomorow".parse::<StartMode>().expect_err("not a start");
        assert!(err.starts_with("\"tomorow\" is not a start"), "{err}");
    }

    #[test]
    fn quorum_rounds_up_and_is_at_least_one() {
        let q = |s: &str| s.parse::<Quorum>().expect("a quorum");
        assert_eq!(q("100%").of(480), 480);
        assert_eq!(q("90%").of(50), 45);
        assert_eq!(q("95%").of(3), 3);
        assert_eq!(q("1%").of(3), 1);
        assert_eq!(q("50%").of(0), 1);
        assert!("0%".parse::<Quorum>().is_err());
        assert!("90".parse::<Quorum>().is_err());
        assert!("101%".parse::<Quorum>().is_err());
    }

    #[test]
    fn together_starts_at_the_quorum_or_the_timeout() {
        let q = Quorum(100);
        let t = Duration::from_secs(600);
        assert_eq!(together(49, 50, q, Duration::from_secs(10), t), Next::Wait);
        assert_eq!(
            together(50, 50, q, Duration::from_secs(10), t),
            Next::CreateStart
        );
        assert_eq!(
            together(45, 50, Quorum(90), Duration::ZERO, t),
            Next::CreateStart
        );
        assert_eq!(together(3, 50, q, t, t), Next::CreateStart, "timeout");
    }

    #[test]
    fn a_start_in_the_past_is_due_at_once() {
        let now = SystemTime::UNIX_EPOCH + Duration::from_secs(1_000);
        assert_eq!(
            until(now + Duration::from_millis(1500), now),
            Duration::from_millis(1500)
        );
        assert_eq!(until(now - Duration::from_secs(5), now), Duration::ZERO);
        let proposed = parse_time(&proposed_start(now)).expect("RFC 3339");
        assert_eq!(proposed, now + LEAD);
    }
}
