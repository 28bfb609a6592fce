//! The worker registry: each worker registers, says it is alive, and
//! records why it stops; the janitor reads it to find the silent ones.

use chrono::{DateTime, Utc};
use kiln_domain::WorkerState;

use super::Queue;
use super::rows::WorkerRecord;
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
}

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

    /// One worker's row.
    pub async fn worker(&self, id: &str) -> Result<Option<WorkerRow>, QueueError> {
        let record: Option<WorkerRecord> = sqlx::query_as(
            "SELECT id, host, recipes, version, state::text AS state, started_at, last_seen_at, note
             FROM workers WHERE id = $1",
        )
        .bind(id)
        .fetch_optional(&self.pool)
        .await?;
        record.map(WorkerRow::try_from).transpose()
    }
}
