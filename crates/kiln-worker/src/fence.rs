//! The lease as a job sees it, and the fence it puts around every write.
//!
//! A job holds its build under a lease that it renews ([`heartbeat`]); the
//! queue refuses any write by a worker whose lease lapsed. Every answer a
//! renewal can get is read here and nowhere else ([`Renewal`]):
//!
//! - held: go on;
//! - held, but an administrator asked to cancel: stop the job, then
//!   acknowledge the cancellation;
//! - lost (lapsed, rescued, taken by another attempt): stop the job and
//!   report nothing, the build is someone else's now;
//! - no answer: the lease may still be ours; the heartbeat tries again,
//!   an upload does not start.
//!
//! The upload fence ([`before_upload`]) renews the lease once more just
//! before the first object is stored, so a worker whose lease lapsed while
//! it packed stores nothing over a newer attempt's objects.

use std::sync::Arc;
use std::time::Duration;

use kiln_queue::{HeartbeatOutcome, Lease, Queue, QueueError};

use crate::control::{JobControl, StopReason};
use crate::failure::Failure;
use crate::job::JobEnd;

/// What renewing the lease said.
#[derive(Debug)]
pub(crate) enum Renewal {
    /// Ours for another lease period.
    Held,
    /// Still ours, but the build is to be cancelled.
    CancelRequested,
    /// No longer ours.
    Lost,
    /// The database did not answer.
    Unknown(QueueError),
}

impl Renewal {
    /// Renew `lease` now.
    pub(crate) async fn of(queue: &Queue, lease: &Lease) -> Renewal {
        match queue.heartbeat(lease).await {
            Ok(HeartbeatOutcome::Continue) => Renewal::Held,
            Ok(HeartbeatOutcome::Cancelled) => Renewal::CancelRequested,
            Err(QueueError::LeaseLost { .. }) => Renewal::Lost,
            Err(e) => Renewal::Unknown(e),
        }
    }

    /// The lease is ours: fenced writes will be accepted.
    pub(crate) fn held(&self) -> bool {
        matches!(self, Renewal::Held | Renewal::CancelRequested)
    }

    /// The stop this answer calls for, if any.
    pub(crate) fn stop_reason(&self) -> Option<StopReason> {
        match self {
            Renewal::CancelRequested => Some(StopReason::Cancelled),
            Renewal::Lost => Some(StopReason::LeaseLost),
            Renewal::Held | Renewal::Unknown(_) => None,
        }
    }
}

/// Renew the lease every `every`; stop the job when it is cancelled or lost.
pub(crate) async fn heartbeat(queue: Queue, lease: Lease, every: Duration, control: Arc<JobControl>) {
    let mut tick = tokio::time::interval(every);
    tick.tick().await;
    loop {
        tick.tick().await;
        let renewal = Renewal::of(&queue, &lease).await;
        if let Some(reason) = renewal.stop_reason() {
            tracing::info!(build = %lease.key, ?reason, "stopping the job");
            control.stop(reason);
            return;
        }
        if let Renewal::Unknown(e) = renewal {
            // Keep trying: the lease may still be renewed before it lapses.
            tracing::warn!(build = %lease.key, error = %e, "heartbeat failed");
        }
    }
}

/// The upload fence: uploads may start only while the lease is held and
/// nothing asked the job to stop.
pub(crate) async fn before_upload(queue: &Queue, lease: &Lease, control: &JobControl) -> Result<(), Failure> {
    let renewal = Renewal::of(queue, lease).await;
    if let Some(reason) = renewal.stop_reason() {
        control.stop(reason);
        return Err(Failure::Stopped);
    }
    if let Renewal::Unknown(e) = renewal {
        return Err(Failure::Infra(format!("checking the lease before upload: {e}")));
    }
    if let Some(reason @ (StopReason::Preempted | StopReason::Shutdown)) = control.reason() {
        tracing::info!(build = %lease.key, ?reason, "stopping before upload");
        return Err(Failure::Stopped);
    }
    Ok(())
}

/// How the job ended when the fenced write that reports its end failed.
pub(crate) fn report_failed(lease: &Lease, e: QueueError) -> JobEnd {
    match e {
        QueueError::LeaseLost { .. } => JobEnd::LeaseLost,
        e => {
            // The lease will lapse and the janitor will rescue the job.
            tracing::error!(build = %lease.key, error = %e, "could not report the end of a job");
            JobEnd::Errored(e.to_string())
        }
    }
}
