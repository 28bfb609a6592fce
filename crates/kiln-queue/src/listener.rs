//! One `LISTEN` connection per process, fanned out to every subscriber.
//!
//! Workers wait for [`Channel::Jobs`]; API waiters for [`Channel::Builds`]
//! and [`Channel::Events`], the API's token cache for [`Channel::Tokens`]. The [`Notifier`] (made by
//! [`Queue::notifier`](crate::Queue::notifier)) owns a dedicated
//! connection, reconnects with backoff when it drops, and after every
//! (re)connection sends [`Notification::Resync`] so subscribers re-read what
//! they wait on: notifications sent while disconnected are lost, state in
//! the table is not.
//!
//! Payloads are parsed here, once, into typed [`Notification`]s. One that
//! does not parse (a bug, or a `NOTIFY` by hand) is logged and becomes a
//! `Resync`: subscribers re-read rather than miss a change.

use std::time::Duration;

use kiln_domain::{BuildKey, BuildState};
use sqlx::PgPool;
use sqlx::postgres::PgListener;
use tokio::sync::broadcast;
use tokio::task::JoinHandle;

/// The notification channels (see the migrations' triggers).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Channel {
    /// `kiln_jobs`, payload: the recipe of a build that became claimable.
    Jobs,
    /// `kiln_builds`, payload: `"<key> <state>"` when a build changes state.
    Builds,
    /// `kiln_events`, payload: the key of a build with new events (log
    /// lines, steps).
    Events,
    /// `kiln_tokens`, payload: the id of an API token that was revoked or
    /// removed.
    Tokens,
}

impl Channel {
    const ALL: [Channel; 4] = [Channel::Jobs, Channel::Builds, Channel::Events, Channel::Tokens];

    /// The channel's name in SQL (`LISTEN`, `pg_notify`).
    pub fn name(self) -> &'static str {
        match self {
            Channel::Jobs => "kiln_jobs",
            Channel::Builds => "kiln_builds",
            Channel::Events => "kiln_events",
            Channel::Tokens => "kiln_tokens",
        }
    }
}

/// What subscribers receive.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Notification {
    /// A job for `recipe` became claimable.
    Job { recipe: String },
    /// Build `key` entered `state`.
    Build { key: BuildKey, state: BuildState },
    /// Build `key` has new events.
    Events { key: BuildKey },
    /// API token `id` was revoked or removed: stop accepting it.
    TokenRevoked { id: i64 },
    /// The listener (re)connected, a payload did not parse, or a subscriber
    /// fell behind: anything may have changed, re-read the database.
    Resync,
}

impl Notification {
    /// Parse a payload from `channel` (a channel's SQL name). The error says
    /// what is wrong, for the log.
    fn parse(channel: &str, payload: &str) -> Result<Self, String> {
        let key = |text: &str| BuildKey::parse(text).map_err(|e| format!("{e}: {text:?}"));
        match Channel::ALL.into_iter().find(|c| c.name() == channel) {
            Some(Channel::Jobs) if !payload.is_empty() => Ok(Self::Job { recipe: payload.to_owned() }),
            Some(Channel::Jobs) => Err("an empty recipe".into()),
            Some(Channel::Builds) => {
                let (k, s) = payload.split_once(' ').ok_or("not \"<key> <state>\"")?;
                Ok(Self::Build { key: key(k)?, state: s.parse()? })
            }
            Some(Channel::Events) => Ok(Self::Events { key: key(payload)? }),
            Some(Channel::Tokens) => match payload.parse::<i64>() {
                Ok(id) if id > 0 && !payload.starts_with('+') => Ok(Self::TokenRevoked { id }),
                _ => Err(format!("not a token id: {payload:?}")),
            },
            None => Err(format!("unknown channel {channel:?}")),
        }
    }

    /// Does this notification concern build `key` (or possibly everything)?
    pub fn concerns(&self, key: &BuildKey) -> bool {
        match self {
            Self::Build { key: k, .. } | Self::Events { key: k } => k == key,
            Self::Resync => true,
            Self::Job { .. } | Self::TokenRevoked { .. } => false,
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
    pub(crate) fn start(pool: PgPool, channels: &[Channel]) -> Notifier {
        let (tx, _) = broadcast::channel(4096);
        let names = channels.iter().map(|c| c.name()).collect();
        let task = tokio::spawn(run(pool, names, tx.clone()));
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
        let Some(n) = listener.try_recv().await? else { return Ok(()) };
        let parsed = Notification::parse(n.channel(), n.payload()).unwrap_or_else(|error| {
            tracing::warn!(channel = n.channel(), payload = n.payload(), %error, "malformed notification; resyncing");
            Notification::Resync
        });
        let _ = tx.send(parsed);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const KEY: &str = "0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef";

    fn key() -> BuildKey {
        BuildKey::parse(KEY).unwrap()
    }

    #[test]
    fn payloads_parse_into_typed_notifications() {
        assert_eq!(Notification::parse("kiln_jobs", "caddy"), Ok(Notification::Job { recipe: "caddy".into() }));
        assert_eq!(
            Notification::parse("kiln_builds", &format!("{KEY} succeeded")),
            Ok(Notification::Build { key: key(), state: BuildState::Succeeded })
        );
        assert_eq!(Notification::parse("kiln_events", KEY), Ok(Notification::Events { key: key() }));
        assert_eq!(Notification::parse("kiln_tokens", "42"), Ok(Notification::TokenRevoked { id: 42 }));
        for state in BuildState::ALL {
            let n = Notification::parse("kiln_builds", &format!("{KEY} {state}")).unwrap();
            assert_eq!(n, Notification::Build { key: key(), state: *state });
        }
    }

    #[test]
    fn malformed_payloads_are_errors_not_panics() {
        let upper = KEY.to_uppercase();
        let cases = [
            ("kiln_jobs", String::new()),
            ("kiln_builds", KEY.to_owned()),
            ("kiln_builds", format!("{KEY} exploded")),
            ("kiln_builds", format!("{KEY}  running")),
            ("kiln_builds", format!("{upper} running")),
            ("kiln_builds", "../../etc/passwd running".to_owned()),
            ("kiln_builds", " ".to_owned()),
            ("kiln_events", format!("{KEY} ")),
            ("kiln_events", "é".repeat(64)),
            ("kiln_events", String::new()),
            ("kiln_other", KEY.to_owned()),
            ("kiln_tokens", String::new()),
            ("kiln_tokens", "-1".to_owned()),
            ("kiln_tokens", "+1".to_owned()),
            ("kiln_tokens", "1 ".to_owned()),
        ];
        for (channel, payload) in cases {
            let parsed = Notification::parse(channel, &payload);
            assert!(parsed.is_err(), "{channel} {payload:?} parsed as {parsed:?}");
        }
    }

    #[test]
    fn a_notification_concerns_its_own_build_and_resync_concerns_all() {
        let other = BuildKey::from_digest(&[7; 32]);
        let build = Notification::Build { key: key(), state: BuildState::Running };
        assert!(build.concerns(&key()) && !build.concerns(&other));
        assert!(Notification::Events { key: key() }.concerns(&key()));
        assert!(Notification::Resync.concerns(&other));
        assert!(!Notification::Job { recipe: "caddy".into() }.concerns(&key()));
    }

    #[test]
    fn channel_names_are_those_of_the_triggers() {
        let triggers = [
            include_str!("../../../migrations/V1__initial.sql"),
            include_str!("../../../migrations/V3__api_tokens.sql"),
        ]
        .concat();
        for c in Channel::ALL {
            assert!(triggers.contains(&format!("pg_notify('{}'", c.name())), "{c:?}");
        }
    }
}
