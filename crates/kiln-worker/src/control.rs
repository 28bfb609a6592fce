//! How a running job is stopped from outside: by the worker (preemption,
//! shutdown) or by its own heartbeat (cancellation, a lost lease).

use std::sync::Mutex;

use tokio_util::sync::CancellationToken;

/// Why a job is being stopped from outside.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StopReason {
    /// An administrator cancelled the build.
    Cancelled,
    /// The lease is no longer ours.
    LeaseLost,
    /// The machine is being preempted.
    Preempted,
    /// The worker is shutting down and the grace period ran out.
    Shutdown,
}

/// The handle by which the worker (and the job's own heartbeat) stops a job:
/// the first reason given wins, and every container of the job is killed.
#[derive(Debug, Default)]
pub(crate) struct JobControl {
    token: CancellationToken,
    reason: Mutex<Option<StopReason>>,
}

impl JobControl {
    pub(crate) fn stop(&self, reason: StopReason) {
        let mut r = self.reason.lock().expect("not poisoned");
        if r.is_none() {
            *r = Some(reason);
        }
        self.token.cancel();
    }

    pub(crate) fn reason(&self) -> Option<StopReason> {
        *self.reason.lock().expect("not poisoned")
    }

    pub(crate) fn token(&self) -> &CancellationToken {
        &self.token
    }
}
