//! Shutdown requests: SIGTERM and SIGINT become counted requests that the rest of the
//! supervisor waits on, so the logic is testable without sending signals. The first request
//! stops gracefully; a second one means "now".

use std::io;

use tokio::signal::unix::{SignalKind, signal};
use tokio::sync::watch;

/// Receives shutdown requests; cheap to clone.
#[derive(Debug, Clone)]
pub struct Shutdown {
    requests: watch::Receiver<u32>,
}

/// Sends shutdown requests (the signal task, or a test).
#[derive(Debug)]
pub struct ShutdownTrigger {
    requests: watch::Sender<u32>,
}

impl ShutdownTrigger {
    /// Adds one request: the first asks for a graceful stop, the second forces it.
    pub fn request(&self) {
        self.requests.send_modify(|n| *n += 1);
    }
}

impl Shutdown {
    /// A pair not tied to any signal.
    pub fn channel() -> (ShutdownTrigger, Shutdown) {
        let (tx, rx) = watch::channel(0);
        (ShutdownTrigger { requests: tx }, Shutdown { requests: rx })
    }

    /// Requests arriving as SIGTERM or SIGINT.
    pub fn from_signals() -> io::Result<Shutdown> {
        let mut term = signal(SignalKind::terminate())?;
        let mut int = signal(SignalKind::interrupt())?;
        let (trigger, shutdown) = Shutdown::channel();
        tokio::spawn(async move {
            loop {
                let name = tokio::select! {
                    _ = term.recv() => "SIGTERM",
                    _ = int.recv() => "SIGINT",
                };
                trigger.request();
                let count = *trigger.requests.borrow();
                if count == 1 {
                    tracing::info!("{name} received: stopping agents (again to kill at once)");
                } else {
                    tracing::warn!("{name} received again: killing agents now");
                }
            }
        });
        Ok(shutdown)
    }

    /// True once a stop was requested.
    pub fn is_requested(&self) -> bool {
        *self.requests.borrow() >= 1
    }

    /// Resolves once a stop was requested.
    pub async fn requested(&mut self) {
        self.at_least(1).await;
    }

    /// Resolves once a second request asked to stop at once.
    pub async fn forced(&mut self) {
        self.at_least(2).await;
    }

    async fn at_least(&mut self, count: u32) {
        if self.requests.wait_for(|&n| n >= count).await.is_err() {
            // No trigger left: no request can come any more.
            std::future::pending::<()>().await;
        }
    }
}
