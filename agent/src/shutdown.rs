//! Shutdown requests as one [`CancellationToken`] tree, so every part of the supervisor
//! stops the same way and the logic is testable without sending signals.
//!
//! `kill` is the root and `stop` its child: the first request cancels `stop` (stop
//! gracefully), a second one cancels `kill` (stop now), and a kill also counts as a stop.
//! Tasks that must end with the run take child tokens of either.

use std::io;

use tokio::signal::unix::{SignalKind, signal};
use tokio_util::sync::CancellationToken;

/// The two levels of a shutdown request; cheap to clone (clones share the tokens).
#[derive(Debug, Clone)]
pub struct Shutdown {
    /// Cancelled by the second request: stop at once.
    pub kill: CancellationToken,
    /// Cancelled by the first request: stop gracefully.
    pub stop: CancellationToken,
}

impl Default for Shutdown {
    fn default() -> Self {
        let kill = CancellationToken::new();
        let stop = kill.child_token();
        Shutdown { kill, stop }
    }
}

impl Shutdown {
    /// Adds one request: the first asks for a graceful stop, the second forces it.
    pub fn request(&self) {
        if self.stop.is_cancelled() {
            self.kill.cancel();
        } else {
            self.stop.cancel();
        }
    }

    /// Turns SIGTERM and SIGINT into requests, for as long as the process runs.
    pub fn on_signals(&self) -> io::Result<()> {
        let mut term = signal(SignalKind::terminate())?;
        let mut int = signal(SignalKind::interrupt())?;
        let shutdown = self.clone();
        tokio::spawn(async move {
            loop {
                let name = tokio::select! {
                    _ = term.recv() => "SIGTERM",
                    _ = int.recv() => "SIGINT",
                };
                let first = !shutdown.stop.is_cancelled();
                shutdown.request();
                if first {
                    tracing::info!("{name} received: stopping agents (again to kill at once)");
                } else {
                    tracing::warn!("{name} received again: killing agents now");
                }
            }
        });
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_first_request_stops_and_the_second_kills() {
        let shutdown = Shutdown::default();
        assert!(!shutdown.stop.is_cancelled());
        shutdown.request();
        assert!(shutdown.stop.is_cancelled());
        assert!(!shutdown.kill.is_cancelled());
        shutdown.request();
        assert!(shutdown.kill.is_cancelled());
    }

    #[test]
    fn a_kill_also_stops() {
        let shutdown = Shutdown::default();
        shutdown.kill.cancel();
        assert!(shutdown.stop.is_cancelled());
    }
}
