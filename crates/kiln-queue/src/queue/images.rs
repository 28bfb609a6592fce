//! The lock between the workers that use shared image objects and the
//! janitor's sweep of them.
//!
//! A worker making an image finds a blob (or a base record) already stored
//! and skips its upload; its build names the blob only once the build is
//! completed. A sweep that marked before that completion and deletes after
//! the worker looked would leave the image naming a missing blob. So the
//! two hold one Postgres advisory lock ("kilnimgs"): every worker shares it
//! from its first look at the shared objects until its build is recorded
//! ([`Queue::use_images`]), and the sweep holds it alone from its mark to its
//! last delete ([`Queue::sweep_images`]). Each holds it on a connection of its
//! own, outside the pool (a held lock must not starve heartbeats of
//! connections), and a session-level lock ends with its session: a worker or
//! janitor that dies, or whose connection does, releases it.

use std::time::Duration;

use sqlx::Connection as _;

use super::Queue;
use crate::QueueError;

/// The advisory lock of the shared image objects ("kilnimgs").
const IMAGE_LOCK: i64 = 0x6b696c6e_696d6773;

/// How long the sweep waits for workers to finish what they are doing with
/// shared objects before it gives up for this run (deleting nothing).
const SWEEP_WAIT: Duration = Duration::from_secs(60);

/// The lock of the shared image objects, held while this value lives (or
/// until [`ImageLock::release`]).
#[derive(Debug)]
pub struct ImageLock {
    conn: Option<sqlx::PgConnection>,
}

impl Queue {
    /// A worker's share of the image lock: while any is held the sweep
    /// deletes nothing. Waits while a sweep is deleting.
    pub async fn use_images(&self) -> Result<ImageLock, QueueError> {
        self.image_lock("kiln-worker images", "SELECT pg_advisory_lock_shared($1)", None).await
    }

    /// The sweep's hold of the image lock, alone: once no worker uses the
    /// shared objects, and until released. Gives up with an error after a
    /// minute of waiting, so a worker that never lets go cannot stall the
    /// janitor.
    pub async fn sweep_images(&self) -> Result<ImageLock, QueueError> {
        self.image_lock("kiln-janitor sweep", "SELECT pg_advisory_lock($1)", Some(SWEEP_WAIT)).await
    }

    async fn image_lock(&self, name: &str, take: &str, wait: Option<Duration>) -> Result<ImageLock, QueueError> {
        let options = (*self.pool.connect_options()).clone().application_name(name);
        let mut conn = sqlx::PgConnection::connect_with(&options).await?;
        if let Some(wait) = wait {
            sqlx::query(&format!("SET lock_timeout = {}", wait.as_millis())).execute(&mut conn).await?;
        }
        sqlx::query(take).bind(IMAGE_LOCK).execute(&mut conn).await?;
        Ok(ImageLock { conn: Some(conn) })
    }
}

impl ImageLock {
    /// Let go of the lock now (dropping it does too, when the connection closes).
    pub async fn release(mut self) {
        if let Some(conn) = self.conn.take()
            && let Err(e) = conn.close().await
        {
            // The session ends with the connection either way.
            tracing::debug!(error = %e, "closing the image lock's connection");
        }
    }
}
