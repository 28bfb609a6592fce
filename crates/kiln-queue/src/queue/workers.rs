//! The worker registry: each worker registers, says it is alive, reports
//! its free disk, and records why it stops; the janitor reads it to find the
//! silent ones, the API to show the workers' disks in `/metrics`. And what a
//! worker asks before it sweeps orphans from its host: the farm's identity,
//! and which of the builds it found there are still held.

use chrono::{DateTime, Utc};
use kiln_domain::WorkerState;

use super::Queue;
use super::rows::{self, WorkerRecord};
use crate::QueueError;

/// A worker process as it registers itself.
#[derive(Debug, Clone)]
pub struct WorkerInfo {
    pub id: String,
    pub host: String,
    /// Recipes it serves; empty means all.
    pub recipes: Vec<String>,
    pub version: String,
}

/// A worker row.
#[derive(Debug, Clone)]
pub struct WorkerRow {
    pub id: String,
    pub host: String,
    pub recipes: Vec<String>,
    pub version: String,
    pub state: WorkerState,
    pub started_at: DateTime<Utc>,
    pub last_seen_at: DateTime<Utc>,
    pub note: Option<String>,
    /// Free space on its work directory's filesystem (MiB), once reported.
    pub disk_free_mb: Option<i64>,
    /// Below its `worker.min_free_disk_mb`: it claims nothing.
    pub disk_low: bool,
}

/// Work of some worker found on a host: a step container or a work
/// directory, by the labels or marker it carries.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HostWork {
    pub worker: String,
    pub key: String,
    /// The attempt row's id, when the labels carry it.
    pub attempt: Option<i64>,
}

/// The columns of a worker row.
const WORKER_COLUMNS: &str =
    "id, host, recipes, version, state::text AS state, started_at, last_seen_at, note, disk_free_mb, disk_low";

impl Queue {
    /// Register (or re-register) a worker as active.
    pub async fn register_worker(&self, w: &WorkerInfo) -> Result<(), QueueError> {
        sqlx::query(
            "INSERT INTO workers (id, host, recipes, version) VALUES ($1, $2, $3, $4)
             ON CONFLICT (id) DO UPDATE SET host = $2, recipes = $3, version = $4, started_at = now(),
                 last_seen_at = now(), state = 'active', note = NULL",
        )
        .bind(&w.id)
        .bind(&w.host)
        .bind(&w.recipes)
        .bind(&w.version)
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    /// The worker is alive.
    pub async fn worker_seen(&self, id: &str) -> Result<(), QueueError> {
        sqlx::query("UPDATE workers SET last_seen_at = now() WHERE id = $1").bind(id).execute(&self.pool).await?;
        Ok(())
    }

    /// Record a worker's state (draining, preempted, stopped) and why.
    pub async fn set_worker_state(&self, id: &str, state: WorkerState, note: Option<&str>) -> Result<(), QueueError> {
        sqlx::query(
            "UPDATE workers SET state = $2::worker_state, note = coalesce($3, note), last_seen_at = now() WHERE id = $1",
        )
        .bind(id)
        .bind(state.as_str())
        .bind(note)
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    /// Record a worker's free disk and whether it is too low to claim.
    pub async fn set_worker_disk(&self, id: &str, free_mb: i64, low: bool) -> Result<(), QueueError> {
        sqlx::query("UPDATE workers SET disk_free_mb = $2, disk_low = $3, last_seen_at = now() WHERE id = $1")
            .bind(id)
            .bind(free_mb)
            .bind(low)
            .execute(&self.pool)
            .await?;
        Ok(())
    }

    /// One worker's row.
    pub async fn worker(&self, id: &str) -> Result<Option<WorkerRow>, QueueError> {
        let record: Option<WorkerRecord> =
            sqlx::query_as(&format!("SELECT {WORKER_COLUMNS} FROM workers WHERE id = $1"))
                .bind(id)
                .fetch_optional(&self.pool)
                .await?;
        record.map(WorkerRow::try_from).transpose()
    }

    /// The rows of workers that are active or draining, by id.
    pub async fn live_workers(&self) -> Result<Vec<WorkerRow>, QueueError> {
        let records: Vec<WorkerRecord> = sqlx::query_as(&format!(
            "SELECT {WORKER_COLUMNS} FROM workers WHERE state IN ('active', 'draining') ORDER BY id"
        ))
        .fetch_all(&self.pool)
        .await?;
        rows::all(records)
    }

    /// This farm's identity: random, made by the first caller, the same
    /// for every later one. Two statements: a racer that lost the insert
    /// reads the winner's row with a fresh snapshot.
    pub async fn farm_id(&self) -> Result<String, QueueError> {
        sqlx::query(
            "INSERT INTO farm (id) VALUES (md5(random()::text || clock_timestamp()::text || pg_backend_pid()::text))
             ON CONFLICT (one) DO NOTHING",
        )
        .execute(&self.pool)
        .await?;
        Ok(sqlx::query_scalar("SELECT id FROM farm").fetch_one(&self.pool).await?)
    }

    /// For each piece of work found on a host, whether it is still held: its
    /// build is `running` under that worker (and attempt, when known) with an
    /// unexpired lease, and the worker is active or draining. Anything else
    /// (the worker is gone, stopped or unknown, or the lease lapsed) is an
    /// orphan. One statement, answers in the order asked.
    pub async fn held(&self, work: &[HostWork]) -> Result<Vec<bool>, QueueError> {
        if work.is_empty() {
            return Ok(Vec::new());
        }
        let workers: Vec<&str> = work.iter().map(|w| w.worker.as_str()).collect();
        let keys: Vec<&str> = work.iter().map(|w| w.key.as_str()).collect();
        let attempts: Vec<Option<i64>> = work.iter().map(|w| w.attempt).collect();
        let held: Vec<(i64, bool)> = sqlx::query_as(
            "SELECT h.i, EXISTS (
                 SELECT 1 FROM builds b JOIN workers w ON w.id = b.lease_holder
                 WHERE b.key = h.key AND b.state = 'running' AND b.lease_holder = h.worker
                   AND (h.attempt IS NULL OR b.lease_attempt = h.attempt)
                   AND b.lease_expires_at > now() AND w.state IN ('active', 'draining'))
             FROM unnest($1::text[], $2::text[], $3::bigint[]) WITH ORDINALITY AS h(worker, key, attempt, i)
             ORDER BY h.i",
        )
        .bind(&workers)
        .bind(&keys)
        .bind(&attempts)
        .fetch_all(&self.pool)
        .await?;
        Ok(held.into_iter().map(|(_, h)| h).collect())
    }
}
