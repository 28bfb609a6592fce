//! Leadership among janitors: one acts, the others stand by.

use std::time::Duration;

use sqlx::postgres::PgConnectOptions;

use super::Queue;
use crate::QueueError;

impl Queue {
    /// The janitors' leader lock for the janitor `holder` (see [`Leadership`]).
    pub fn leadership(&self, holder: &str) -> Leadership {
        let options = (*self.pool.connect_options())
            .clone()
            .application_name(&format!("kiln-janitor-leader {holder}"))
            // The server probes an idle peer after 10 s, every 5 s, 3 times.
            .options([("tcp_keepalives_idle", "10"), ("tcp_keepalives_interval", "5"), ("tcp_keepalives_count", "3")]);
        Leadership { options, conn: None, leader: false }
    }
}

/// The advisory lock that makes one janitor the leader ("kilnjani").
const JANITOR_LEADER_LOCK: i64 = 0x6b696c6e_6a616e69;

/// Limit on each statement of the leader lock's connection, so a dead
/// network cannot hold a schedule tick.
const LEADER_STATEMENT_LIMIT: Duration = Duration::from_secs(10);

/// Leadership among janitors: a Postgres session-level advisory lock held on
/// a dedicated connection for as long as this process leads. When the
/// process or its connection dies, Postgres ends the session and releases
/// the lock; a standby that calls [`Leadership::check`] on its next tick
/// takes it. TCP keepalives on the session make the server notice a dead
/// peer within about half a minute even when no packet says so.
#[derive(Debug)]
pub struct Leadership {
    options: PgConnectOptions,
    conn: Option<sqlx::PgConnection>,
    leader: bool,
}

impl Leadership {
    /// Are we the leader now? A leader checks its connection is alive (the
    /// lock lives exactly as long as it); a standby, or a leader whose
    /// connection died, tries to take the lock. Errors mean "not leader".
    pub async fn check(&mut self) -> Result<bool, QueueError> {
        if self.leader {
            match self.on_conn(sqlx::query_scalar("SELECT true")).await {
                Ok(_) => return Ok(true),
                Err(e) => {
                    tracing::warn!(error = %e, "the leader lock's connection died: the lock is gone");
                    self.conn = None;
                    self.leader = false;
                }
            }
        }
        if self.conn.is_none() {
            use sqlx::Connection as _;
            let conn = tokio::time::timeout(LEADER_STATEMENT_LIMIT, sqlx::PgConnection::connect_with(&self.options))
                .await
                .map_err(|_| timed_out("connecting for the leader lock"))??;
            self.conn = Some(conn);
        }
        match self.on_conn(sqlx::query_scalar("SELECT pg_try_advisory_lock($1)").bind(JANITOR_LEADER_LOCK)).await {
            Ok(got) => {
                self.leader = got;
                Ok(got)
            }
            Err(e) => {
                self.conn = None;
                Err(e)
            }
        }
    }

    /// Whether the last [`check`](Self::check) found us leading.
    pub fn is_leader(&self) -> bool {
        self.leader
    }

    /// Step down: unlock (so a standby's next check wins), then close the
    /// connection (which would release the lock anyway, a moment later).
    pub async fn release(&mut self) {
        use sqlx::Connection as _;
        if self.leader {
            let unlock = sqlx::query_scalar("SELECT pg_advisory_unlock($1)").bind(JANITOR_LEADER_LOCK);
            if let Err(e) = self.on_conn(unlock).await {
                tracing::warn!(error = %e, "unlocking the leader lock failed; closing its connection releases it");
            }
        }
        self.leader = false;
        if let Some(conn) = self.conn.take() {
            let _ = conn.close().await;
        }
    }

    /// Run a one-boolean statement on the lock's connection, within the limit.
    async fn on_conn(
        &mut self,
        query: sqlx::query::QueryScalar<'static, sqlx::Postgres, bool, sqlx::postgres::PgArguments>,
    ) -> Result<bool, QueueError> {
        let Some(conn) = self.conn.as_mut() else { return Err(QueueError::Database(sqlx::Error::PoolClosed)) };
        match tokio::time::timeout(LEADER_STATEMENT_LIMIT, query.fetch_one(conn)).await {
            Ok(r) => Ok(r?),
            Err(_) => Err(timed_out("a statement on the leader lock's connection")),
        }
    }
}

fn timed_out(what: &str) -> QueueError {
    let message = format!("{what} took longer than {} s", LEADER_STATEMENT_LIMIT.as_secs());
    QueueError::Database(sqlx::Error::Io(std::io::Error::new(std::io::ErrorKind::TimedOut, message)))
}
