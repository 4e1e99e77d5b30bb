//! Reading a request body under the limits that keep slow or hostile clients from taking the
//! webhook down (SPEC 1.7): the whole body must arrive within a deadline, and the bytes held
//! by all bodies in flight come out of one shared budget.
//!
//! The budget counts the memory actually held, as it grows: a client that announces 3 MiB and
//! trickles holds only what it has sent, so a hundred of them cannot reserve the pod's memory
//! while the API server's own small reviews still get through.

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::BodyExt;
use hyper::body::Body;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

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

    /// Reads `body` to its end under the deadline and the budget.
    pub async fn read<B>(&self, body: B) -> Result<HeldBody, BodyError>
    where
        B: Body<Data = Bytes> + Unpin,
    {
        match tokio::time::timeout(self.limits.timeout, self.read_unbounded_in_time(body)).await {
            Ok(result) => result,
            Err(_) => Err(BodyError::TimedOut(self.limits.timeout)),
        }
    }

    /// Takes `bytes` more of the budget into `held`, waiting at most `budget_wait`.
    async fn take(
        &self,
        held: &mut Option<OwnedSemaphorePermit>,
        bytes: usize,
    ) -> Result<(), BodyError> {
        if bytes == 0 {
            return Ok(());
        }
        let count = u32::try_from(bytes).map_err(|_| BodyError::TooLarge)?;
        let permit = tokio::time::timeout(
            self.limits.budget_wait,
            self.bytes.clone().acquire_many_owned(count),
        )
        .await
        .map_err(|_| BodyError::Busy)?
        .map_err(|_| BodyError::Busy)?;
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
    async fn read_unbounded_in_time<B>(&self, mut body: B) -> Result<HeldBody, BodyError>
    where
        B: Body<Data = Bytes> + Unpin,
    {
        let mut held: Option<OwnedSemaphorePermit> = None;
        let mut pieces: Vec<Bytes> = Vec::new();
        let mut total = 0usize;
        while let Some(frame) = body.frame().await {
            let frame = frame.map_err(|_| BodyError::Unreadable)?;
            let Ok(data) = frame.into_data() else {
                continue;
            };
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
            self.take(&mut held, data.len()).await?;
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
                self.take(&mut held, total).await?;
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
            .read(Full::new(Bytes::from_static(b"{\"a\":1}")))
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
        let body = budget.read(chunks(&[100, 100, 100])).await.expect("read");
        assert_eq!(body.bytes.len(), 300);
        assert_eq!(BUDGET - budget.available(), 300);
        drop(body);
        assert_eq!(budget.available(), BUDGET);
    }

    #[tokio::test]
    async fn one_byte_over_the_limit_is_too_large_and_gives_its_budget_back() {
        let budget = BodyBudget::new(limits(BUDGET));
        let result = budget.read(chunks(&[MAX_BODY, 1])).await;
        assert_eq!(result.unwrap_err(), BodyError::TooLarge);
        assert_eq!(budget.available(), BUDGET);
        let exact = budget.read(chunks(&[MAX_BODY - 1, 1])).await.expect("read");
        assert_eq!(exact.bytes.len(), MAX_BODY);
    }

    #[tokio::test(start_paused = true)]
    async fn a_body_that_does_not_arrive_in_time_is_timed_out() {
        let budget = BodyBudget::new(limits(BUDGET));
        let result = budget.read(Silent).await;
        assert_eq!(
            result.unwrap_err(),
            BodyError::TimedOut(Duration::from_secs(10))
        );
    }

    #[tokio::test(start_paused = true)]
    async fn a_full_budget_makes_the_next_body_wait_then_busy() {
        let budget = BodyBudget::new(limits(BUDGET));
        let first = budget.read(chunks(&[MAX_BODY])).await.expect("read");
        let holder = budget.read(chunks(&[MAX_BODY])).await.expect("read");
        assert_eq!(budget.available(), 0);
        let waiting = budget.read(chunks(&[10])).await;
        assert_eq!(waiting.unwrap_err(), BodyError::Busy);
        drop((first, holder));
        let later = budget.read(chunks(&[10])).await.expect("room again");
        assert_eq!(later.bytes.len(), 10);
    }

    #[tokio::test(start_paused = true)]
    async fn a_body_waiting_for_room_gets_it_when_another_finishes() {
        let budget = BodyBudget::new(limits(BUDGET));
        let holders = (
            budget.read(chunks(&[MAX_BODY])).await.expect("read"),
            budget.read(chunks(&[MAX_BODY - 5])).await.expect("read"),
        );
        let waiter = {
            let budget = budget.clone();
            tokio::spawn(async move { budget.read(chunks(&[10])).await.map(|b| b.bytes.len()) })
        };
        tokio::time::sleep(Duration::from_millis(50)).await;
        drop(holders);
        assert_eq!(waiter.await.expect("task"), Ok(10));
    }
}
