//! One `LISTEN` connection per process, fanned out to every subscriber.
//!
//! Workers wait for `kiln_jobs`; API waiters for `kiln_builds` and
//! `kiln_events`. The [`Notifier`] owns a dedicated connection, reconnects
//! with backoff when it drops, and after every (re)connection sends
//! [`Notification::Resync`] so subscribers re-read what they wait on:
//! notifications sent while disconnected are lost, state in the table is not.

use std::time::Duration;

use sqlx::PgPool;
use sqlx::postgres::PgListener;
use tokio::sync::broadcast;
use tokio::task::JoinHandle;

/// The notification channels (see the migrations' triggers).
pub mod channels {
    /// Payload: the recipe of a build that became claimable.
    pub const JOBS: &str = "kiln_jobs";
    /// Payload: `"<key> <state>"` when a build changes state.
    pub const BUILDS: &str = "kiln_builds";
    /// Payload: the key of a build with new events (log lines, steps).
    pub const EVENTS: &str = "kiln_events";
}

/// What subscribers receive.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Notification {
    /// A job for `recipe` became claimable.
    Job { recipe: String },
    /// Build `key` entered `state`.
    Build { key: String, state: String },
    /// Build `key` has new events.
    Events { key: String },
    /// The listener (re)connected or a subscriber fell behind: anything may
    /// have changed, re-read the database.
    Resync,
}

impl Notification {
    fn parse(channel: &str, payload: &str) -> Option<Self> {
        match channel {
            channels::JOBS => Some(Self::Job { recipe: payload.to_owned() }),
            channels::BUILDS => {
                let (key, state) = payload.split_once(' ')?;
                Some(Self::Build { key: key.to_owned(), state: state.to_owned() })
            }
            channels::EVENTS => Some(Self::Events { key: payload.to_owned() }),
            _ => None,
        }
    }

    /// Does this notification concern build `key` (or possibly everything)?
    pub fn concerns(&self, key: &str) -> bool {
        match self {
            Self::Build { key: k, .. } | Self::Events { key: k } => k == key,
            Self::Resync => true,
            Self::Job { .. } => false,
        }
    }
}

/// The fan-out hub. Dropping it stops the listener task.
#[derive(Debug)]
pub struct Notifier {
    tx: broadcast::Sender<Notification>,
    task: JoinHandle<()>,
}

impl Notifier {
    /// Start listening on `channels` with a connection from `pool`'s options.
    pub fn start(pool: PgPool, channels: &[&'static str]) -> Notifier {
        let (tx, _) = broadcast::channel(4096);
        let task = tokio::spawn(run(pool, channels.to_vec(), tx.clone()));
        Notifier { tx, task }
    }

    /// A new subscriber sees every notification from now on. A subscriber
    /// that falls more than 4096 behind gets `Lagged` from the receiver,
    /// which it must treat as [`Notification::Resync`].
    pub fn subscribe(&self) -> broadcast::Receiver<Notification> {
        self.tx.subscribe()
    }
}

impl Drop for Notifier {
    fn drop(&mut self) {
        self.task.abort();
    }
}

async fn run(pool: PgPool, channels: Vec<&'static str>, tx: broadcast::Sender<Notification>) {
    let mut backoff = Duration::from_millis(100);
    loop {
        match listen(&pool, &channels, &tx).await {
            Ok(()) => backoff = Duration::from_millis(100),
            Err(e) => {
                tracing::warn!(error = %e, retry_in_ms = backoff.as_millis() as u64, "notification listener lost its connection");
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(Duration::from_secs(5));
            }
        }
    }
}

/// Listen until the connection drops. `Ok` after a clean drop noticed by
/// sqlx (so reconnect at once), `Err` when (re)connecting failed.
async fn listen(
    pool: &PgPool,
    channels: &[&'static str],
    tx: &broadcast::Sender<Notification>,
) -> Result<(), sqlx::Error> {
    let mut listener = PgListener::connect_with(pool).await?;
    listener.ignore_pool_close_event(true);
    listener.listen_all(channels.iter().copied()).await?;
    let _ = tx.send(Notification::Resync);
    loop {
        // `try_recv` returns `None` when the connection was lost; sqlx then
        // reconnects on the next call, but we start over to LISTEN afresh
        // and tell subscribers to resync.
        match listener.try_recv().await? {
            Some(n) => {
                if let Some(n) = Notification::parse(n.channel(), n.payload()) {
                    let _ = tx.send(n);
                }
            }
            None => return Ok(()),
        }
    }
}
