//! Builds as the API submits and reads them, and the admin's cancel and retry.

use chrono::{DateTime, Utc};
use kiln_domain::{AttemptOutcome, BuildKey, BuildManifest, BuildSpec, BuildState, FailureKind};

use super::rows::{self, AttemptRecord, BUILD_COLUMNS, BuildRecord, UpsertRecord};
use super::{Queue, secs};
use crate::QueueError;

/// Job priorities: higher runs first.
pub mod priority {
    /// Interactive requests (the compat endpoint, the CLI): someone is waiting.
    pub const INTERACTIVE: i32 = 10;
    /// Builds asked for through `POST /api/builds` by programs.
    pub const DEFAULT: i32 = 0;
    /// Pre-warming and other background work.
    pub const BACKGROUND: i32 = -10;
}

/// A build row as the API shows it.
#[derive(Debug, Clone)]
pub struct Build {
    pub key: BuildKey,
    pub recipe: String,
    pub spec: BuildSpec,
    pub state: BuildState,
    pub priority: i32,
    pub attempts: i32,
    pub max_attempts: i32,
    pub preemptions: i32,
    pub run_at: DateTime<Utc>,
    pub lease_holder: Option<String>,
    pub cancel_requested: bool,
    pub error: Option<String>,
    pub failure_kind: Option<FailureKind>,
    /// What the worker stored, once succeeded (the `artifact` column).
    pub artifact: Option<BuildManifest>,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
    pub started_at: Option<DateTime<Utc>>,
    pub finished_at: Option<DateTime<Utc>>,
}

/// A build that existed but is queued again by an enqueue: cancelled, or
/// failed for the farm's reason, or failed for its own longer ago than the
/// failure TTL (`$2`, seconds).
const REQUEUABLE: &str = "builds.state = 'cancelled'
    OR (builds.state = 'failed' AND (builds.failure_kind IS DISTINCT FROM 'build'
        OR builds.finished_at < now() - make_interval(secs => $2)))";

/// Who asks for a build, for [`Queue::enqueue_for`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Submitter {
    /// The token's id (`api_tokens.id`).
    pub token_id: i64,
    /// The most builds it may have queued or running at once; 0: no limit.
    pub max_active: u32,
}

/// What [`Queue::enqueue`] did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EnqueueOutcome {
    /// A new job was queued.
    Created,
    /// A failed or cancelled build was queued again.
    Requeued,
    /// The build already existed; nothing changed.
    Existing,
}

#[derive(Debug, Clone)]
pub struct Enqueued {
    pub build: Build,
    pub outcome: EnqueueOutcome,
}

/// One attempt at a build.
#[derive(Debug, Clone)]
pub struct Attempt {
    pub id: i64,
    pub attempt_no: i32,
    pub worker_id: String,
    pub started_at: DateTime<Utc>,
    pub ended_at: Option<DateTime<Utc>>,
    pub outcome: Option<AttemptOutcome>,
    pub error: Option<String>,
}

/// Counts of builds by state, for metrics.
#[derive(Debug, Clone, Default)]
pub struct StateCounts {
    pub queued: i64,
    pub running: i64,
    pub succeeded: i64,
    pub failed: i64,
    pub cancelled: i64,
}

impl Queue {
    /// Queue `spec` unless it exists. Many concurrent identical enqueues make
    /// one job. A build that failed for an infrastructure reason, or was
    /// cancelled, is queued afresh; one that failed deterministically (a step
    /// exited non-zero) only once its failure TTL has passed.
    pub async fn enqueue(&self, spec: &BuildSpec, priority: i32) -> Result<Enqueued, QueueError> {
        self.enqueue_for(spec, priority, None).await
    }

    /// [`enqueue`](Self::enqueue) on behalf of a token, whose builds are
    /// counted: when this would queue a build (not join an existing one) and
    /// the token already has `max_active` builds queued or running, nothing
    /// happens and the answer is [`QueueError::OverQuota`].
    ///
    /// Race-free: the token's row is locked (`FOR UPDATE`) for the
    /// transaction, so one token's enqueues are counted one after the other,
    /// while other tokens' and anonymous enqueues do not wait.
    pub async fn enqueue_for(
        &self,
        spec: &BuildSpec,
        priority: i32,
        by: Option<Submitter>,
    ) -> Result<Enqueued, QueueError> {
        let key = spec.key();
        let upserted = match by {
            None => self.upsert(&self.pool, spec, priority, None).await?,
            Some(by) => {
                let mut tx = self.pool.begin().await?;
                sqlx::query("SELECT 1 FROM api_tokens WHERE id = $1 FOR UPDATE")
                    .bind(by.token_id)
                    .execute(&mut *tx)
                    .await?;
                if by.max_active > 0 {
                    // Joining a build that is queued, running, succeeded or
                    // failed for good costs the token nothing.
                    let sql = format!("SELECT NOT EXISTS (SELECT 1 FROM builds WHERE key = $1 AND NOT ({REQUEUABLE}))");
                    let would_queue: bool = sqlx::query_scalar(&sql)
                        .bind(key.as_str())
                        .bind(secs(self.settings.failure_ttl))
                        .fetch_one(&mut *tx)
                        .await?;
                    if would_queue {
                        let active: i64 = sqlx::query_scalar(
                            "SELECT count(*) FROM builds WHERE token_id = $1 AND state IN ('queued', 'running')",
                        )
                        .bind(by.token_id)
                        .fetch_one(&mut *tx)
                        .await?;
                        if active >= i64::from(by.max_active) {
                            return Err(QueueError::OverQuota { limit: by.max_active });
                        }
                    }
                }
                let r = self.upsert(&mut *tx, spec, priority, Some(by.token_id)).await?;
                tx.commit().await?;
                r
            }
        };
        if let Some(r) = upserted {
            let outcome = if r.inserted { EnqueueOutcome::Created } else { EnqueueOutcome::Requeued };
            return Ok(Enqueued { build: r.build.try_into()?, outcome });
        }
        let build = self.get(&key).await?.ok_or_else(|| QueueError::Corrupt {
            row: format!("builds/{key}"),
            message: "conflicting row vanished during enqueue".into(),
        })?;
        Ok(Enqueued { build, outcome: EnqueueOutcome::Existing })
    }

    /// Insert `spec`, or queue its cancelled or requeuable failed row again;
    /// `None` when the row exists and stays as it is.
    async fn upsert(
        &self,
        db: impl sqlx::PgExecutor<'_>,
        spec: &BuildSpec,
        priority: i32,
        token_id: Option<i64>,
    ) -> Result<Option<UpsertRecord>, QueueError> {
        let spec_json = serde_json::to_value(spec).expect("a spec always serializes");
        let sql = format!(
            "INSERT INTO builds (key, recipe, spec, priority, max_attempts, max_preemptions, token_id)
             VALUES ($1, $3, $4, $5, $6, $7, $8)
             ON CONFLICT (key) DO UPDATE SET
                 state = 'queued', attempts = 0, preemptions = 0, run_at = now(), error = NULL,
                 failure_kind = NULL, artifact = NULL, started_at = NULL, finished_at = NULL,
                 cancel_requested = false, updated_at = now(), token_id = EXCLUDED.token_id,
                 priority = greatest(builds.priority, EXCLUDED.priority),
                 max_attempts = EXCLUDED.max_attempts, max_preemptions = EXCLUDED.max_preemptions
             WHERE {REQUEUABLE}
             RETURNING (xmax = 0) AS inserted, {BUILD_COLUMNS}"
        );
        Ok(sqlx::query_as(&sql)
            .bind(spec.key().as_str())
            .bind(secs(self.settings.failure_ttl))
            .bind(&spec.recipe)
            .bind(&spec_json)
            .bind(priority)
            .bind(self.settings.max_attempts)
            .bind(self.settings.max_preemptions)
            .bind(token_id)
            .fetch_optional(db)
            .await?)
    }

    /// One build by key: a single primary-key lookup.
    pub async fn get(&self, key: &BuildKey) -> Result<Option<Build>, QueueError> {
        let sql = format!("SELECT {BUILD_COLUMNS} FROM builds WHERE key = $1");
        let record: Option<BuildRecord> = sqlx::query_as(&sql).bind(key.as_str()).fetch_optional(&self.pool).await?;
        record.map(Build::try_from).transpose()
    }

    /// Only the state of a build (for waiters).
    pub async fn state(&self, key: &BuildKey) -> Result<Option<BuildState>, QueueError> {
        let s: Option<String> = sqlx::query_scalar("SELECT state::text FROM builds WHERE key = $1")
            .bind(key.as_str())
            .fetch_optional(&self.pool)
            .await?;
        s.map(|s| rows::parse(&s, || format!("builds/{key}"))).transpose()
    }

    /// The attempts at a build, oldest first.
    pub async fn attempts(&self, key: &BuildKey) -> Result<Vec<Attempt>, QueueError> {
        let records: Vec<AttemptRecord> = sqlx::query_as(
            "SELECT id, attempt_no, worker_id, started_at, ended_at, outcome::text AS outcome, error
             FROM build_attempts WHERE build_key = $1 ORDER BY id",
        )
        .bind(key.as_str())
        .fetch_all(&self.pool)
        .await?;
        rows::all(records)
    }

    /// Builds by state, for metrics and `/readyz`.
    pub async fn state_counts(&self) -> Result<StateCounts, QueueError> {
        let counts: Vec<(String, i64)> =
            sqlx::query_as("SELECT state::text, count(*) FROM builds GROUP BY state").fetch_all(&self.pool).await?;
        let mut c = StateCounts::default();
        for (state, n) in counts {
            let slot = match rows::parse(&state, || format!("builds (state {state:?})"))? {
                BuildState::Queued => &mut c.queued,
                BuildState::Running => &mut c.running,
                BuildState::Succeeded => &mut c.succeeded,
                BuildState::Failed => &mut c.failed,
                BuildState::Cancelled => &mut c.cancelled,
            };
            *slot = n;
        }
        Ok(c)
    }

    /// Cancel a build. A queued build ends `cancelled` at once; a running one
    /// is flagged and its worker stops it at its next heartbeat. Returns the
    /// build as it now is, `None` for an unknown key.
    pub async fn cancel(&self, key: &BuildKey) -> Result<Option<Build>, QueueError> {
        sqlx::query(
            "UPDATE builds SET
                 state = CASE WHEN state = 'queued' THEN 'cancelled'::build_state ELSE state END,
                 finished_at = CASE WHEN state = 'queued' THEN now() ELSE finished_at END,
                 error = CASE WHEN state = 'queued' THEN 'cancelled by an administrator' ELSE error END,
                 cancel_requested = (state = 'running'),
                 updated_at = now()
             WHERE key = $1 AND state IN ('queued', 'running')",
        )
        .bind(key.as_str())
        .execute(&self.pool)
        .await?;
        self.get(key).await
    }

    /// Queue a failed or cancelled build again now, whatever its TTL.
    /// Returns false when the build is unknown or not in a final failed state.
    pub async fn retry(&self, key: &BuildKey) -> Result<bool, QueueError> {
        let done = sqlx::query(
            "UPDATE builds SET state = 'queued', attempts = 0, preemptions = 0, run_at = now(),
                 error = NULL, failure_kind = NULL, started_at = NULL, finished_at = NULL,
                 cancel_requested = false, updated_at = now()
             WHERE key = $1 AND state IN ('failed', 'cancelled')",
        )
        .bind(key.as_str())
        .execute(&self.pool)
        .await?;
        Ok(done.rows_affected() == 1)
    }
}
