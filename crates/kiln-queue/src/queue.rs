//! [`Queue`]: the handle every process holds, and its settings.
//!
//! Its statements are grouped by who calls them, one module each:
//! - [`builds`]: the API's submit and read, and the admin's cancel and retry;
//! - [`leases`]: a worker's claim and the fenced life of an attempt;
//! - [`events`]: the live log and progress of a build (workers write, the
//!   API reads);
//! - [`workers`]: the worker registry;
//! - [`maintenance`]: the janitor's rescue, expiry, pruning and run records;
//! - [`leadership`]: the janitors' leader lock;
//! - [`images`]: the lock between workers using shared image objects and
//!   the janitor's sweep of them;
//! - [`stats`]: the download page's figures (build counts, typical times);
//! - [`tokens`]: API tokens (the janitor's commands, the API's lookup).
//!
//! Rows are decoded in [`rows`], the one place where text from the database
//! becomes a [`kiln_domain`] type.

pub(crate) mod builds;
pub(crate) mod events;
pub(crate) mod images;
pub(crate) mod leadership;
pub(crate) mod leases;
pub(crate) mod maintenance;
mod rows;
pub(crate) mod stats;
pub(crate) mod tokens;
pub(crate) mod workers;

use std::time::Duration;

use sqlx::PgPool;
use sqlx::postgres::{PgConnectOptions, PgPoolOptions};

use crate::listener::{Channel, Notifier};
use crate::migrate::applied_version;
use crate::{QueueError, SCHEMA_VERSION};

/// Timing and budgets of the queue, from `kiln_config::QueueConfig`.
#[derive(Debug, Clone)]
pub struct QueueSettings {
    pub lease: Duration,
    pub max_attempts: i32,
    pub max_preemptions: i32,
    pub backoff_base: Duration,
    pub backoff_max: Duration,
    pub failure_ttl: Duration,
}

impl From<&kiln_config::QueueConfig> for QueueSettings {
    fn from(c: &kiln_config::QueueConfig) -> Self {
        Self {
            lease: Duration::from_secs(c.lease_secs),
            max_attempts: c.max_attempts,
            max_preemptions: c.max_preemptions,
            backoff_base: Duration::from_secs(c.backoff_base_secs),
            backoff_max: Duration::from_secs(c.backoff_max_secs),
            failure_ttl: Duration::from_secs(c.failure_ttl_secs),
        }
    }
}

impl Default for QueueSettings {
    fn default() -> Self {
        (&kiln_config::QueueConfig::default()).into()
    }
}

/// Handle on the queue. Cheap to clone (a pool inside).
#[derive(Debug, Clone)]
pub struct Queue {
    pool: PgPool,
    settings: QueueSettings,
}

/// Seconds as Postgres `interval` input (`make_interval(secs => $n)`).
fn secs(d: Duration) -> f64 {
    d.as_secs_f64()
}

impl Queue {
    /// Connect and check the schema is current: a database that was never
    /// migrated, or is older than this build, is refused with a message
    /// saying to run `kiln-janitor migrate`.
    pub async fn connect(
        url: &str,
        max_connections: u32,
        settings: QueueSettings,
        application_name: &str,
    ) -> Result<Queue, QueueError> {
        let options: PgConnectOptions = url.parse()?;
        let pool = PgPoolOptions::new()
            .max_connections(max_connections)
            .acquire_timeout(Duration::from_secs(10))
            .connect_with(options.application_name(application_name))
            .await?;
        let found = applied_version(&pool).await?;
        if found < SCHEMA_VERSION {
            return Err(QueueError::NotMigrated { found, wanted: SCHEMA_VERSION });
        }
        Ok(Queue { pool, settings })
    }

    /// Wrap a pool whose schema the caller has checked. For tests, which
    /// share one pool between the queue and their own inspection of rows.
    pub fn from_pool(pool: PgPool, settings: QueueSettings) -> Queue {
        Queue { pool, settings }
    }

    /// Start this process's listener on `channels`, over a dedicated
    /// connection made with the pool's options (so it carries the same
    /// application name). Keep one per process and subscribe to it.
    pub fn notifier(&self, channels: &[Channel]) -> Notifier {
        Notifier::start(self.pool.clone(), channels)
    }

    /// Is the database reachable?
    pub async fn ping(&self) -> Result<(), QueueError> {
        sqlx::query("SELECT 1").execute(&self.pool).await?;
        Ok(())
    }
}
