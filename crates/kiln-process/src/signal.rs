//! SIGTERM and SIGINT, read the same way by every binary.

use std::sync::Arc;
use std::sync::atomic::{AtomicI32, Ordering};

use tokio::signal::unix::{SignalKind, signal};
use tokio_util::sync::CancellationToken;

/// The shutdown requests a process receives. The first SIGTERM or SIGINT
/// cancels [`Shutdown::graceful`]: stop taking work, finish what is open.
/// A second one cancels [`Shutdown::immediate`]: stop now (the worker hands
/// its jobs back at once). Cheap to clone.
#[derive(Debug, Clone)]
pub struct Shutdown {
    graceful: CancellationToken,
    immediate: CancellationToken,
    /// The number of the first signal, 0 before one arrives.
    first: Arc<AtomicI32>,
}

impl Shutdown {
    /// Take over SIGTERM and SIGINT from now on (their default action, to
    /// end the process, no longer applies). Needs a Tokio runtime.
    pub fn listen() -> std::io::Result<Shutdown> {
        let mut term = signal(SignalKind::terminate())?;
        let mut int = signal(SignalKind::interrupt())?;
        let shutdown = Shutdown::manual();
        let s = shutdown.clone();
        tokio::spawn(async move {
            for token in [&s.graceful, &s.immediate] {
                let signo = tokio::select! {
                    _ = term.recv() => SignalKind::terminate().as_raw_value(),
                    _ = int.recv() => SignalKind::interrupt().as_raw_value(),
                };
                let _ = s.first.compare_exchange(0, signo, Ordering::SeqCst, Ordering::SeqCst);
                tracing::debug!(signal = signo, "shutdown signal");
                token.cancel();
            }
        });
        Ok(shutdown)
    }

    /// Requests that only code triggers (tests, embedding).
    pub fn manual() -> Shutdown {
        Shutdown {
            graceful: CancellationToken::new(),
            immediate: CancellationToken::new(),
            first: Arc::new(AtomicI32::new(0)),
        }
    }

    /// Cancelled by the first signal.
    pub fn graceful(&self) -> CancellationToken {
        self.graceful.clone()
    }

    /// Cancelled by the second signal.
    pub fn immediate(&self) -> CancellationToken {
        self.immediate.clone()
    }

    /// Resolves at the first signal.
    pub async fn requested(self) {
        self.graceful.cancelled().await;
    }

    /// The conventional status of a process ended by the first signal
    /// (128 + its number: 130 for SIGINT, 143 for SIGTERM); 1 before one arrived.
    pub fn signal_exit_code(&self) -> u8 {
        match self.first.load(Ordering::SeqCst) {
            n @ 1..=127 => 128 + n as u8,
            _ => 1,
        }
    }
}
