//! When agents start (docs/coordination.md), the pure part: the start modes as `WAVE_START` gives them,
//! the quorum arithmetic, the start-at a `together` start agrees on, and how long to wait
//! for it. Wall-clock times are passed in, so every decision is testable without a clock.

use std::str::FromStr;
use std::time::{Duration, SystemTime};

use k8s_openapi::jiff::Timestamp;
use wave_contract::part::{Quorum, Start};

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
    type Err = wave_contract::Invalid;

    /// The webhook's parser (`wave_contract::part::Start`).
    fn from_str(value: &str) -> Result<Self, Self::Err> {
        Ok(match value.parse::<Start>()? {
            Start::Immediately => Self::Immediately,
            Start::Together => Self::Together,
            Start::At(at) => Self::At(SystemTime::from(at)),
        })
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
        assert!(err.0.starts_with("\"tomorow\" is not a start"), "{err}");
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
