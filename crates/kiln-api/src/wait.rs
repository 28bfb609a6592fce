//! Waiting for a build on Postgres `NOTIFY`, not by polling.
//!
//! A waiter subscribes to the process's [`kiln_queue::Notifier`] *before*
//! reading the build, so no change can slip between the read and the wait.
//! It re-reads the row only when a notification says the build entered a
//! state it waits for, or when the listener says it may have missed some
//! (`Resync`, or this receiver lagged). Dropping the future (a client that
//! hangs up) stops the wait and nothing else: the build carries on. When
//! the server shuts down every wait ends at once ([`Waited::Stopped`]), so
//! a load balancer can send the request to another API straight away.

use std::sync::Arc;
use std::time::Duration;

use kiln_domain::{BuildKey, BuildState};
use kiln_queue::{Build, Notification};
use tokio::sync::broadcast::error::RecvError;
use tokio::time::Instant;

use crate::AppState;
use crate::error::{ApiError, ApiResult};

/// How a wait ended.
#[derive(Debug)]
pub enum Waited {
    /// The build reached a state `until` accepts.
    Done(Arc<Build>),
    /// Time ran out; the build as last read.
    TimedOut(Arc<Build>),
    /// The server is shutting down; the build as last read.
    Stopped(Arc<Build>),
}

/// Wait up to `timeout` for build `key` to be in a state `until` accepts.
/// 404 when the build does not exist (or vanishes).
pub async fn wait_for(
    state: &AppState,
    key: &BuildKey,
    timeout: Duration,
    until: impl Fn(BuildState) -> bool,
) -> ApiResult<Waited> {
    let deadline = Instant::now() + timeout;
    let mut rx = state.subscribe();
    let stopping = state.stopping();
    tokio::pin!(stopping);
    loop {
        let build = state.build(key).await?;
        if until(build.state) {
            return Ok(Waited::Done(build));
        }
        loop {
            let next = tokio::select! {
                n = tokio::time::timeout_at(deadline, rx.recv()) => n,
                () = &mut stopping => return Ok(Waited::Stopped(build)),
            };
            let n = match next {
                Err(_) => return Ok(Waited::TimedOut(build)),
                Ok(Ok(n)) => n,
                Ok(Err(RecvError::Lagged(_))) => break,
                Ok(Err(RecvError::Closed)) => {
                    return Err(ApiError::internal("the notification listener stopped"));
                }
            };
            match n {
                Notification::Resync => break,
                Notification::Build { key: k, state: s } if k == *key && until(s) => break,
                _ => {}
            }
        }
    }
}

/// Wait for anything new about build `key` (a state change or new events),
/// up to `timeout`. Returns false when time ran out.
pub async fn next_change(
    rx: &mut tokio::sync::broadcast::Receiver<Notification>,
    key: &BuildKey,
    timeout: Duration,
) -> bool {
    let deadline = Instant::now() + timeout;
    loop {
        match tokio::time::timeout_at(deadline, rx.recv()).await {
            Err(_) => return false,
            Ok(Ok(n)) if n.concerns(key) => return true,
            Ok(Ok(_)) => {}
            Ok(Err(RecvError::Lagged(_))) => return true,
            Ok(Err(RecvError::Closed)) => {
                // Cannot happen while the state lives; poll slowly rather than spin.
                tokio::time::sleep(Duration::from_millis(500)).await;
                return true;
            }
        }
    }
}
