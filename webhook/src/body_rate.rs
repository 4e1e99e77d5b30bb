//! The slowest a request body may arrive: after a grace period, at least a number of bytes in
//! every window, or the body is cut (docs/webhook-server.md, "Slow and hostile clients").
//!
//! A body that trickles holds its share of the shared byte budget for as long as it is let
//! trickle; cut early, a hundred such clients hold a few hundred KiB each instead of filling
//! the budget every other request then waits for (nginx's `client_body_timeout` and Go's
//! `ReadTimeout` bound the same thing). Pure logic over [`Instant`]s: the reading loop in
//! `body.rs` feeds it the bytes and sleeps until [`RateMeter::deadline`].

use std::time::Duration;

use serde::Deserialize;
use tokio::time::Instant;

/// The minimum rate of a request body (config key `body-min-rate`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(default, deny_unknown_fields, rename_all = "kebab-case")]
pub struct MinBodyRate {
    /// From the request's headers, how long a body may take before the rate counts.
    #[serde(deserialize_with = "duration")]
    pub grace: Duration,
    /// The rate, in bytes per second; 0 turns the check off (the whole-body deadline,
    /// `--body-timeout`, still holds).
    pub bytes_per_second: u64,
    /// After the grace, every window of this length must bring `bytes_per_second × window`
    /// bytes.
    #[serde(deserialize_with = "duration")]
    pub window: Duration,
}

impl Default for MinBodyRate {
    /// 256 KiB/s (2 Mbit/s) in every 1 s after the first 1 s: kube-apiserver sends a review
    /// at once, and even a 3 MiB one over a slow link passes, while a body that trickles is
    /// cut holding a fraction of the largest body.
    fn default() -> Self {
        MinBodyRate {
            grace: Duration::from_secs(1),
            bytes_per_second: 256 * 1024,
            window: Duration::from_secs(1),
        }
    }
}

impl MinBodyRate {
    /// Whether bodies are checked at all.
    pub fn is_on(&self) -> bool {
        self.bytes_per_second > 0
    }

    /// Bytes every window must bring (at least 1 while the check is on).
    pub fn per_window(&self) -> u64 {
        let bytes = u128::from(self.bytes_per_second) * self.window.as_nanos() / 1_000_000_000;
        u64::try_from(bytes).unwrap_or(u64::MAX).max(1)
    }

    /// Why this setting cannot be used, for the config's error message.
    pub fn problem(&self) -> Option<&'static str> {
        (self.is_on() && self.window.is_zero())
            .then_some("must be longer than 0s while bytes-per-second is above 0")
    }
}

/// A body came slower than [`MinBodyRate`] allows.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error(
    "the request body arrived slower than {} bytes/s (fewer than {} bytes in {})",
    .0.bytes_per_second,
    .0.per_window(),
    humantime::format_duration(.0.window)
)]
pub struct TooSlow(pub MinBodyRate);

/// One body's progress against a [`MinBodyRate`]: the grace is the first window, with
/// nothing required of it; each window after it must bring [`MinBodyRate::per_window`].
#[derive(Debug, Clone)]
pub struct RateMeter {
    rate: MinBodyRate,
    /// When the current window ends.
    window_end: Instant,
    /// Bytes the current window must bring.
    needed: u64,
    /// Bytes it brought so far.
    arrived: u64,
}

impl RateMeter {
    /// A body whose headers arrived at `now`.
    pub fn start(rate: MinBodyRate, now: Instant) -> Self {
        RateMeter {
            rate,
            window_end: now + rate.grace,
            needed: 0,
            arrived: 0,
        }
    }

    /// When [`RateMeter::window_ended`] must be called next; `None` when the check is off.
    pub fn deadline(&self) -> Option<Instant> {
        self.rate.is_on().then_some(self.window_end)
    }

    /// `bytes` more of the body arrived.
    pub fn arrived(&mut self, bytes: usize) {
        self.arrived = self
            .arrived
            .saturating_add(u64::try_from(bytes).unwrap_or(u64::MAX));
    }

    /// The webhook itself did not read for `waited` (the body waited for room in the byte
    /// budget; the client could not send meanwhile): the window is that much longer.
    pub fn paused(&mut self, waited: Duration) {
        self.window_end += waited;
    }

    /// At the deadline: an error if the window brought too little, else the next window
    /// starts at `now`.
    pub fn window_ended(&mut self, now: Instant) -> Result<(), TooSlow> {
        if !self.rate.is_on() || now < self.window_end {
            return Ok(());
        }
        if self.arrived < self.needed {
            return Err(TooSlow(self.rate));
        }
        self.window_end = now + self.rate.window;
        self.needed = self.rate.per_window();
        self.arrived = 0;
        Ok(())
    }
}

/// A duration such as `1s` or `500ms`.
fn duration<'de, D: serde::Deserializer<'de>>(value: D) -> Result<Duration, D::Error> {
    let text = String::deserialize(value)?;
    humantime::parse_duration(&text)
        .map_err(|e| serde::de::Error::custom(format!("{text:?} is not a duration (e.g. 1s): {e}")))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rate(grace_ms: u64, bytes_per_second: u64, window_ms: u64) -> MinBodyRate {
        MinBodyRate {
            grace: Duration::from_millis(grace_ms),
            bytes_per_second,
            window: Duration::from_millis(window_ms),
        }
    }

    /// Drives a meter the way `body.rs` does: `chunk` bytes every `every`, the deadline
    /// checked whenever it passes; returns when it was cut, or `None` if it never was
    /// before `until`.
    async fn trickle(
        rate: MinBodyRate,
        chunk: usize,
        every: Duration,
        until: Duration,
    ) -> Option<Duration> {
        let started = Instant::now();
        let mut meter = RateMeter::start(rate, started);
        let mut next_chunk = started + every;
        while started.elapsed() < until {
            let deadline = meter.deadline().unwrap_or(started + until);
            if next_chunk <= deadline {
                tokio::time::sleep_until(next_chunk).await;
                meter.arrived(chunk);
                next_chunk += every;
            } else {
                tokio::time::sleep_until(deadline).await;
                if meter.window_ended(Instant::now()).is_err() {
                    return Some(started.elapsed());
                }
            }
        }
        None
    }

    #[test]
    fn the_default_asks_256_kib_in_every_second_after_the_first() {
        let default = MinBodyRate::default();
        assert_eq!(default, rate(1000, 262_144, 1000));
        assert_eq!(default.per_window(), 262_144);
        assert_eq!(default.problem(), None);
    }

    #[test]
    fn per_window_scales_with_the_window_and_is_never_zero() {
        assert_eq!(rate(0, 1000, 250).per_window(), 250);
        assert_eq!(rate(0, 1000, 3000).per_window(), 3000);
        assert_eq!(rate(0, 1, 1).per_window(), 1);
    }

    #[test]
    fn a_zero_window_is_refused_unless_the_check_is_off() {
        assert!(rate(1000, 1000, 0).problem().is_some());
        assert_eq!(rate(1000, 0, 0).problem(), None);
    }

    #[tokio::test(start_paused = true)]
    async fn a_trickle_below_the_rate_is_cut_at_the_end_of_the_first_window_after_the_grace() {
        // 100 KB/s against 256 KiB/s: the grace passes, the first window does not.
        let cut = trickle(
            MinBodyRate::default(),
            10_000,
            Duration::from_millis(100),
            Duration::from_secs(30),
        )
        .await;
        assert_eq!(cut, Some(Duration::from_secs(2)));
    }

    #[tokio::test(start_paused = true)]
    async fn a_body_at_the_rate_or_above_is_never_cut() {
        let just_enough = trickle(
            rate(1000, 100_000, 1000),
            10_000,
            Duration::from_millis(100),
            Duration::from_secs(30),
        )
        .await;
        assert_eq!(just_enough, None);
    }

    #[tokio::test(start_paused = true)]
    async fn nothing_is_asked_during_the_grace() {
        let mut meter = RateMeter::start(rate(5000, 1000, 1000), Instant::now());
        tokio::time::sleep(Duration::from_millis(4999)).await;
        assert_eq!(meter.window_ended(Instant::now()), Ok(()));
        tokio::time::sleep(Duration::from_millis(1)).await;
        assert_eq!(
            meter.window_ended(Instant::now()),
            Ok(()),
            "the grace ends: the first window starts with nothing arrived and nothing asked"
        );
        tokio::time::sleep(Duration::from_secs(1)).await;
        assert!(meter.window_ended(Instant::now()).is_err());
    }

    #[tokio::test(start_paused = true)]
    async fn bytes_sent_early_buy_no_credit_for_a_later_stall() {
        let mut meter = RateMeter::start(rate(1000, 1000, 1000), Instant::now());
        meter.arrived(1_000_000);
        tokio::time::sleep(Duration::from_secs(1)).await;
        assert_eq!(meter.window_ended(Instant::now()), Ok(()));
        meter.arrived(999);
        tokio::time::sleep(Duration::from_secs(1)).await;
        assert_eq!(
            meter.window_ended(Instant::now()),
            Err(TooSlow(rate(1000, 1000, 1000)))
        );
    }

    #[tokio::test(start_paused = true)]
    async fn a_deadline_checked_early_changes_nothing() {
        let mut meter = RateMeter::start(rate(0, 1000, 1000), Instant::now());
        assert_eq!(meter.window_ended(Instant::now()), Ok(()));
        let deadline = meter.deadline().expect("on");
        tokio::time::sleep(Duration::from_millis(500)).await;
        assert_eq!(meter.window_ended(Instant::now()), Ok(()));
        assert_eq!(meter.deadline(), Some(deadline));
    }

    #[tokio::test(start_paused = true)]
    async fn time_the_webhook_spent_not_reading_lengthens_the_window() {
        let started = Instant::now();
        let mut meter = RateMeter::start(rate(0, 1000, 1000), started);
        assert_eq!(meter.window_ended(started), Ok(()));
        meter.arrived(500);
        meter.paused(Duration::from_millis(1500));
        assert_eq!(
            meter.deadline(),
            Some(started + Duration::from_millis(2500))
        );
        tokio::time::sleep(Duration::from_secs(2)).await;
        assert_eq!(meter.window_ended(Instant::now()), Ok(()), "not over yet");
        meter.arrived(500);
        tokio::time::sleep(Duration::from_millis(500)).await;
        assert_eq!(meter.window_ended(Instant::now()), Ok(()));
    }

    #[tokio::test(start_paused = true)]
    async fn with_the_check_off_there_is_no_deadline_and_nothing_is_cut() {
        let off = rate(0, 0, 0);
        let mut meter = RateMeter::start(off, Instant::now());
        assert_eq!(meter.deadline(), None);
        tokio::time::sleep(Duration::from_secs(3600)).await;
        assert_eq!(meter.window_ended(Instant::now()), Ok(()));
    }

    #[test]
    fn the_message_says_the_rate_and_the_window() {
        assert_eq!(
            TooSlow(rate(1000, 262_144, 2000)).to_string(),
            "the request body arrived slower than 262144 bytes/s (fewer than 524288 bytes in 2s)"
        );
    }

    #[test]
    fn the_setting_reads_from_kebab_case_yaml_with_defaults_for_missing_keys() {
        let read: MinBodyRate =
            serde_saphyr::from_str("bytes-per-second: 65536\nwindow: 500ms\n").expect("valid");
        assert_eq!(read, rate(1000, 65_536, 500));
        let typo = serde_saphyr::from_str::<MinBodyRate>("bytes-per-sec: 1\n");
        assert!(typo.is_err());
        let bad = serde_saphyr::from_str::<MinBodyRate>("grace: soon\n").expect_err("bad");
        assert!(bad.to_string().contains("not a duration"), "{bad}");
    }
}
