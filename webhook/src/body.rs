//! Reading a request body under the limits that keep slow or hostile clients from taking the
//! webhook down (docs/webhook-server.md, "Slow and hostile clients"): the whole body must
//! arrive within a deadline and no slower than a minimum rate ([`crate::body_rate`]), and the
//! bytes held by all bodies in flight come out of one shared budget.
//!
//! The budget counts the memory actually held, as it grows: a client that announces 3 MiB and
//! trickles holds only what it has sent, so a hundred of them cannot reserve the pod's memory
//! while the API server's own small reviews still get through; and a body cut for its rate
//! gives its share back at once, so trickling clients cannot keep the budget full either.

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::BodyExt;
use hyper::body::Body;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio::time::Instant;

use crate::body_rate::{MinBodyRate, RateMeter, TooSlow};

/// The largest request body read (docs/webhook-server.md); kube-apiserver's own limit for
/// objects is 3 MiB.
pub const MAX_BODY: usize = 3 * 1024 * 1024;

/// A too-large body is still read (and dropped) up to this size, so the client can read the
/// 413 instead of having its connection reset mid-upload.
const DISCARD_LIMIT: usize = 64 * 1024 * 1024;

/// The limits on request bodies.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BodyLimits {
    /// The whole body must arrive within this long of the request's headers (else 408).
    pub timeout: Duration,
    /// Bytes all bodies in flight may hold together.
    pub budget: usize,
    /// How long a body waits for room in the budget before its request gets 503.
    pub budget_wait: Duration,
}

impl Default for BodyLimits {
    fn default() -> Self {
        BodyLimits {
            timeout: Duration::from_secs(10),
            budget: 64 * 1024 * 1024,
            budget_wait: Duration::from_secs(1),
        }
    }
}

/// Why a body was not read.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum BodyError {
    /// Over [`MAX_BODY`] (413).
    #[error("the request body is larger than {MAX_BODY} bytes")]
    TooLarge,
    /// The connection broke or the framing was invalid (400).
    #[error("the request body could not be read")]
    Unreadable,
    /// Not all of it arrived within the deadline (408).
    #[error("the request body did not arrive within {} s", .0.as_secs())]
    TimedOut(Duration),
    /// It arrived slower than the minimum rate (408).
    #[error(transparent)]
    TooSlow(#[from] TooSlow),
    /// The budget stayed full for the whole wait (503).
    #[error("the webhook is holding too many request bodies; retry shortly")]
    Busy,
}

/// The byte budget shared by every request, with [`BodyLimits`].
#[derive(Debug, Clone)]
pub struct BodyBudget {
    bytes: Arc<Semaphore>,
    limits: BodyLimits,
}

/// A body read whole, holding its share of the budget until it is dropped.
#[derive(Debug)]
pub struct HeldBody {
    /// The body.
    pub bytes: Bytes,
    _held: Option<OwnedSemaphorePermit>,
}

impl BodyBudget {
    /// A budget of `limits.budget` bytes.
    pub fn new(limits: BodyLimits) -> Self {
        // Room for the largest body while its pieces are joined; the semaphore's total is
        // bounded.
        let budget = limits.budget.clamp(2 * MAX_BODY, Semaphore::MAX_PERMITS);
        BodyBudget {
            bytes: Arc::new(Semaphore::new(budget)),
            limits,
        }
    }

    /// Bytes of the budget free now.
    pub fn available(&self) -> usize {
        self.bytes.available_permits()
    }

    /// Reads `body` to its end under the deadline, the minimum `rate` (from the config, which
    /// may change between requests) and the budget.
    pub async fn read<B>(&self, body: B, rate: MinBodyRate) -> Result<HeldBody, BodyError>
    where
        B: Body<Data = Bytes> + Unpin,
    {
        let read = self.read_unbounded_in_time(body, RateMeter::start(rate, Instant::now()));
        match tokio::time::timeout(self.limits.timeout, read).await {
            Ok(result) => result,
            Err(_) => Err(BodyError::TimedOut(self.limits.timeout)),
        }
    }

    /// Takes `bytes` more of the budget into `held`, waiting at most `budget_wait`; the time
    /// it waited is not the client's, so `meter` does not count it.
    async fn take(
        &self,
        held: &mut Option<OwnedSemaphorePermit>,
        bytes: usize,
        meter: &mut RateMeter,
    ) -> Result<(), BodyError> {
        if bytes == 0 {
            return Ok(());
        }
        let count = u32::try_from(bytes).map_err(|_| BodyError::TooLarge)?;
        let permit = match self.bytes.clone().try_acquire_many_owned(count) {
            Ok(permit) => permit,
            Err(_) => {
                let waiting = Instant::now();
                let permit = tokio::time::timeout(
                    self.limits.budget_wait,
                    self.bytes.clone().acquire_many_owned(count),
                )
                .await
                .map_err(|_| BodyError::Busy)?
                .map_err(|_| BodyError::Busy)?;
                meter.paused(waiting.elapsed());
                permit
            }
        };
        match held {
            Some(existing) => existing.merge(permit),
            None => *held = Some(permit),
        }
        Ok(())
    }

    /// Reads the body, keeping at most [`MAX_BODY`] bytes; a larger one is read to its end
    /// (up to [`DISCARD_LIMIT`]) and dropped, so the 413 reaches a client that is still
    /// sending. A body that arrives in one piece (the usual case) is kept without copying;
    /// pieces are copied out of the connection's read buffer (so they do not keep it alive)
    /// and joined once the last one is there, each taken from the budget as it arrives.
    /// At each of `meter`'s deadlines the body must have kept up its rate, else it is cut
    /// and everything it held is given back.
    async fn read_unbounded_in_time<B>(
        &self,
        mut body: B,
        mut meter: RateMeter,
    ) -> Result<HeldBody, BodyError>
    where
        B: Body<Data = Bytes> + Unpin,
    {
        let mut held: Option<OwnedSemaphorePermit> = None;
        let mut pieces: Vec<Bytes> = Vec::new();
        let mut total = 0usize;
        // Never polled (no timer registered) for a body that is there at once.
        let window = tokio::time::sleep_until(meter.deadline().unwrap_or_else(Instant::now));
        tokio::pin!(window);
        loop {
            let frame = tokio::select! {
                biased;
                frame = body.frame() => match frame {
                    Some(frame) => frame,
                    None => break,
                },
                () = &mut window, if meter.deadline().is_some() => {
                    meter.window_ended(Instant::now())?;
                    if let Some(next) = meter.deadline() {
                        window.as_mut().reset(next);
                    }
                    continue;
                }
            };
            let frame = frame.map_err(|_| BodyError::Unreadable)?;
            let Ok(data) = frame.into_data() else {
                continue;
            };
            meter.arrived(data.len());
            total = total.saturating_add(data.len());
            if total > DISCARD_LIMIT {
                return Err(BodyError::TooLarge);
            }
            if total > MAX_BODY {
                // Nothing more is kept: give the memory and its budget back at once.
                pieces = Vec::new();
                held = None;
                continue;
            }
            self.take(&mut held, data.len(), &mut meter).await?;
            if let Some(next) = meter.deadline().filter(|&next| next != window.deadline()) {
                // A wait for room moved the window's end.
                window.as_mut().reset(next);
            }
            if pieces.len() == 1 {
                // The first piece was kept as it came; now that it has company, copy it out too.
                pieces[0] = Bytes::copy_from_slice(&pieces[0]);
            }
            pieces.push(if pieces.is_empty() {
                data
            } else {
                Bytes::copy_from_slice(&data)
            });
        }
        if total > MAX_BODY {
            return Err(BodyError::TooLarge);
        }
        let bytes = match pieces.len() {
            0 => Bytes::new(),
            1 => pieces.swap_remove(0),
            _ => {
                // The joined copy is held beside the pieces for a moment: take it too.
                self.take(&mut held, total, &mut meter).await?;
                let mut joined = Vec::with_capacity(total);
                for piece in pieces {
                    joined.extend_from_slice(&piece);
                }
                // The pieces are gone: give their share back.
                if let Some(held) = held.as_mut() {
                    drop(held.split(total));
                }
                Bytes::from(joined)
            }
        };
        Ok(HeldBody { bytes, _held: held })
    }
}

#[cfg(test)]
mod tests {
    use std::convert::Infallible;
    use std::pin::Pin;
    use std::task::{Context, Poll};

    use http_body_util::{Full, StreamBody};
    use hyper::body::Frame;

    use super::*;

    /// The smallest budget: the largest body, twice.
    const BUDGET: usize = 2 * MAX_BODY;

    /// No minimum rate: only the deadline and the budget.
    const OFF: MinBodyRate = MinBodyRate {
        grace: Duration::ZERO,
        bytes_per_second: 0,
        window: Duration::ZERO,
    };

    fn limits(budget: usize) -> BodyLimits {
        BodyLimits {
            timeout: Duration::from_secs(10),
            budget,
            budget_wait: Duration::from_millis(200),
        }
    }

    type Chunks =
        StreamBody<futures::stream::Iter<std::vec::IntoIter<Result<Frame<Bytes>, Infallible>>>>;

    fn chunks(sizes: &[usize]) -> Chunks {
        let frames: Vec<_> = sizes
            .iter()
            .map(|&n| Ok(Frame::data(Bytes::from(vec![b'x'; n]))))
            .collect();
        StreamBody::new(futures::stream::iter(frames))
    }

    /// A body whose pieces of the given sizes become ready at the given times after now, the
    /// way a client's bytes arrive.
    fn paced(pieces: &[(u64, usize)]) -> impl Body<Data = Bytes, Error = Infallible> + Unpin {
        let start = tokio::time::Instant::now();
        let pieces: Vec<_> = pieces
            .iter()
            .map(|&(ms, n)| (start + Duration::from_millis(ms), n))
            .collect();
        let frames = futures::stream::unfold(pieces.into_iter(), |mut rest| async move {
            let (at, n) = rest.next()?;
            tokio::time::sleep_until(at).await;
            Some((Ok(Frame::data(Bytes::from(vec![b'x'; n]))), rest))
        });
        StreamBody::new(Box::pin(frames))
    }

    /// `n` pieces of `size` bytes, one every `every_ms`, the first after `every_ms`.
    fn every(n: u64, every_ms: u64, size: usize) -> Vec<(u64, usize)> {
        (1..=n).map(|i| (i * every_ms, size)).collect()
    }

    /// A body that never sends anything.
    struct Silent;

    impl Body for Silent {
        type Data = Bytes;
        type Error = Infallible;
        fn poll_frame(
            self: Pin<&mut Self>,
            _cx: &mut Context<'_>,
        ) -> Poll<Option<Result<Frame<Bytes>, Infallible>>> {
            Poll::Pending
        }
    }

    #[tokio::test]
    async fn a_body_in_one_piece_is_kept_and_holds_its_size_until_dropped() {
        let budget = BodyBudget::new(limits(BUDGET));
        let body = budget
            .read(Full::new(Bytes::from_static(b"{\"a\":1}")), OFF)
            .await
            .expect("read");
        assert_eq!(&body.bytes[..], b"{\"a\":1}");
        assert_eq!(budget.available(), BUDGET - 7);
        drop(body);
        assert_eq!(budget.available(), BUDGET);
    }

    #[tokio::test]
    async fn a_body_in_pieces_is_joined_and_holds_the_pieces_and_the_joined_copy() {
        let budget = BodyBudget::new(limits(BUDGET));
        let body = budget
            .read(chunks(&[100, 100, 100]), OFF)
            .await
            .expect("read");
        assert_eq!(body.bytes.len(), 300);
        assert_eq!(BUDGET - budget.available(), 300);
        drop(body);
        assert_eq!(budget.available(), BUDGET);
    }

    #[tokio::test]
    async fn one_byte_over_the_limit_is_too_large_and_gives_its_budget_back() {
        let budget = BodyBudget::new(limits(BUDGET));
        let result = budget.read(chunks(&[MAX_BODY, 1]), OFF).await;
        assert_eq!(result.unwrap_err(), BodyError::TooLarge);
        assert_eq!(budget.available(), BUDGET);
        let exact = budget
            .read(chunks(&[MAX_BODY - 1, 1]), OFF)
            .await
            .expect("read");
        assert_eq!(exact.bytes.len(), MAX_BODY);
    }

    #[tokio::test(start_paused = true)]
    async fn a_body_that_does_not_arrive_in_time_is_timed_out() {
        let budget = BodyBudget::new(limits(BUDGET));
        let result = budget.read(Silent, OFF).await;
        assert_eq!(
            result.unwrap_err(),
            BodyError::TimedOut(Duration::from_secs(10))
        );
    }

    #[tokio::test(start_paused = true)]
    async fn a_full_budget_makes_the_next_body_wait_then_busy() {
        let budget = BodyBudget::new(limits(BUDGET));
        let first = budget.read(chunks(&[MAX_BODY]), OFF).await.expect("read");
        let holder = budget.read(chunks(&[MAX_BODY]), OFF).await.expect("read");
        assert_eq!(budget.available(), 0);
        let waiting = budget.read(chunks(&[10]), OFF).await;
        assert_eq!(waiting.unwrap_err(), BodyError::Busy);
        drop((first, holder));
        let later = budget.read(chunks(&[10]), OFF).await.expect("room again");
        assert_eq!(later.bytes.len(), 10);
    }

    #[tokio::test(start_paused = true)]
    async fn a_body_waiting_for_room_gets_it_when_another_finishes() {
        let budget = BodyBudget::new(limits(BUDGET));
        let holders = (
            budget.read(chunks(&[MAX_BODY]), OFF).await.expect("read"),
            budget
                .read(chunks(&[MAX_BODY - 5]), OFF)
                .await
                .expect("read"),
        );
        let waiter = {
            let budget = budget.clone();
            tokio::spawn(
                async move { budget.read(chunks(&[10]), OFF).await.map(|b| b.bytes.len()) },
            )
        };
        tokio::time::sleep(Duration::from_millis(50)).await;
        drop(holders);
        assert_eq!(waiter.await.expect("task"), Ok(10));
    }

    #[tokio::test(start_paused = true)]
    async fn a_body_trickling_below_the_rate_is_cut_as_too_slow_and_gives_its_budget_back() {
        let budget = BodyBudget::new(limits(BUDGET));
        let started = tokio::time::Instant::now();
        // 100 KB/s for what would be 3 MB, against the default 256 KiB/s.
        let result = budget
            .read(paced(&every(300, 100, 10_000)), MinBodyRate::default())
            .await;
        assert_eq!(
            result.unwrap_err(),
            BodyError::TooSlow(TooSlow(MinBodyRate::default()))
        );
        assert_eq!(
            started.elapsed(),
            Duration::from_secs(2),
            "grace, then one window"
        );
        assert_eq!(budget.available(), BUDGET);
    }

    #[tokio::test(start_paused = true)]
    async fn a_silent_body_is_cut_for_its_rate_before_the_deadline() {
        let budget = BodyBudget::new(limits(BUDGET));
        let result = budget.read(Silent, MinBodyRate::default()).await;
        assert_eq!(
            result.unwrap_err(),
            BodyError::TooSlow(TooSlow(MinBodyRate::default()))
        );
    }

    #[tokio::test(start_paused = true)]
    async fn a_large_body_above_the_rate_is_read_whole() {
        let budget = BodyBudget::new(limits(BUDGET));
        // 3 MiB at 512 KiB/s: 6 s, within the 10 s deadline.
        let body = budget
            .read(paced(&every(48, 125, 64 * 1024)), MinBodyRate::default())
            .await
            .expect("fast enough");
        assert_eq!(body.bytes.len(), MAX_BODY);
    }

    #[tokio::test(start_paused = true)]
    async fn a_body_that_stalls_after_a_fast_start_is_cut() {
        let budget = BodyBudget::new(limits(BUDGET));
        let mut pieces = every(4, 100, 256 * 1024);
        pieces.push((9_000, 1));
        let result = budget.read(paced(&pieces), MinBodyRate::default()).await;
        assert!(
            matches!(result, Err(BodyError::TooSlow(_))),
            "{:?}",
            result.map(|b| b.bytes.len())
        );
        assert_eq!(budget.available(), BUDGET);
    }

    #[tokio::test(start_paused = true)]
    async fn time_spent_waiting_for_room_in_the_budget_does_not_count_against_the_rate() {
        let budget = BodyBudget::new(BodyLimits {
            budget_wait: Duration::from_secs(5),
            ..limits(BUDGET)
        });
        let holder = (
            budget.read(chunks(&[MAX_BODY]), OFF).await.expect("read"),
            budget
                .read(chunks(&[MAX_BODY - 30]), OFF)
                .await
                .expect("read"),
        );
        assert_eq!(budget.available(), 30);
        let release = tokio::spawn(async move {
            tokio::time::sleep(Duration::from_secs(3)).await;
            drop(holder);
        });
        // 100 bytes a window asked from the start: the second piece waits for room from
        // 200 ms to 3 s, and the first window has brought only its 50 bytes when reading
        // resumes; the window is as much longer as the wait, and the third piece completes it.
        let rate = MinBodyRate {
            grace: Duration::ZERO,
            bytes_per_second: 100,
            window: Duration::from_secs(1),
        };
        let body = budget
            .read(paced(&[(0, 10), (200, 50), (3500, 60)]), rate)
            .await
            .expect("the wait was the webhook's, not the client's");
        assert_eq!(body.bytes.len(), 120);
        release.await.expect("release task");
    }

    #[tokio::test(start_paused = true)]
    async fn with_the_rate_off_a_trickle_runs_until_the_deadline() {
        let budget = BodyBudget::new(limits(BUDGET));
        let result = budget.read(paced(&every(300, 100, 10_000)), OFF).await;
        assert_eq!(
            result.unwrap_err(),
            BodyError::TimedOut(Duration::from_secs(10))
        );
    }
}
