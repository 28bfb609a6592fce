//! The janitor's statements: rescue of lapsed leases and silent workers,
//! the retry nudge, expiry of old builds, pruning, and the record of every
//! task run that `/metrics` reports.

use std::time::Duration;

use chrono::{DateTime, Utc};
use kiln_domain::manifest::OciImageRecord;
use kiln_domain::{BuildKey, BuildState};

use super::rows::{self, ExpirableRecord, JanitorRunRecord};
use super::{Queue, secs};
use crate::QueueError;
use crate::listener::Channel;

/// What a rescue pass did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RescueReport {
    /// Builds put back in the queue.
    pub requeued: Vec<BuildKey>,
    /// Builds that ran out of attempts and failed for good.
    pub failed: Vec<BuildKey>,
    /// Builds whose cancellation was pending and are now cancelled.
    pub cancelled: Vec<BuildKey>,
}

/// How long finished builds are kept, for [`Queue::expirable`].
#[derive(Debug, Clone, Default)]
pub struct ExpiryPolicy {
    /// Artifacts of succeeded builds live this long after success…
    pub artifact_ttl: Duration,
    /// …unless their recipe says otherwise (`recipes.<name>.artifact_ttl_secs`).
    pub recipe_artifact_ttls: Vec<(String, Duration)>,
    /// Failed and cancelled builds are removed this long after they ended
    /// (the queue's failure TTL: after it, the same request builds afresh anyway).
    pub failure_ttl: Duration,
}

/// A finished build past its lifetime: its stored objects and its row may go.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Expirable {
    pub key: BuildKey,
    pub state: BuildState,
    pub finished_at: DateTime<Utc>,
}

/// What [`Queue::remove_expired`] did with one build.
#[derive(Debug)]
pub enum Removal<E> {
    /// The objects were deleted, then the row (attempts and events cascade).
    Removed,
    /// The row changed or another janitor holds it: nothing done.
    Skipped,
    /// Deleting the objects failed: the row stays and is tried again later.
    Kept(E),
}

/// The last run of one janitor task, as `/metrics` reports it.
#[derive(Debug, Clone)]
pub struct JanitorRun {
    pub task: String,
    pub janitor_id: String,
    pub started_at: DateTime<Utc>,
    pub finished_at: DateTime<Utc>,
    pub elapsed_ms: i64,
    pub ok: bool,
    pub error: Option<String>,
    /// What the last run changed, by name.
    pub counts: serde_json::Map<String, serde_json::Value>,
    /// The same counts summed over every run.
    pub totals: serde_json::Map<String, serde_json::Value>,
    pub runs: i64,
    pub failures: i64,
}

impl Queue {
    /// Rescue running builds whose lease lapsed. Each goes back to the queue
    /// (attempt outcome `lease_lapsed`), or fails for good when out of
    /// attempts, or ends `cancelled` when a cancellation was pending. A lapse
    /// on a worker that said it was preempted counts against the preemption
    /// budget, not the build's attempts.
    pub async fn rescue_lapsed(&self) -> Result<RescueReport, QueueError> {
        let rescued: Vec<(String, String)> = sqlx::query_as(
            "WITH lapsed AS (
                 SELECT b.key, b.lease_attempt, b.lease_holder,
                        coalesce(w.state = 'preempted', false) AS preempted
                 FROM builds b LEFT JOIN workers w ON w.id = b.lease_holder
                 WHERE b.state = 'running' AND b.lease_expires_at <= now()
                 FOR UPDATE OF b SKIP LOCKED
             ), decided AS (
                 SELECT l.*, CASE
                     WHEN b.cancel_requested THEN 'cancelled'
                     WHEN l.preempted AND b.preemptions + 1 > b.max_preemptions THEN 'failed'
                     WHEN NOT l.preempted AND b.attempts >= b.max_attempts THEN 'failed'
                     ELSE 'queued' END::build_state AS next
                 FROM lapsed l JOIN builds b ON b.key = l.key
             ), updated AS (
                 UPDATE builds b SET
                     state = d.next,
                     attempts = CASE WHEN d.preempted THEN greatest(b.attempts - 1, 0) ELSE b.attempts END,
                     preemptions = CASE WHEN d.preempted THEN b.preemptions + 1 ELSE b.preemptions END,
                     run_at = now(),
                     error = CASE d.next
                         WHEN 'failed' THEN 'gave up after ' || b.attempts || ' attempts: lease lapsed on worker '
                             || d.lease_holder || coalesce('; previous error: ' || b.error, '')
                         WHEN 'cancelled' THEN 'cancelled by an administrator'
                         ELSE b.error END,
                     failure_kind = CASE WHEN d.next = 'failed' THEN 'infrastructure' ELSE b.failure_kind END,
                     finished_at = CASE WHEN d.next = 'queued' THEN NULL ELSE now() END,
                     lease_holder = NULL, lease_attempt = NULL, lease_expires_at = NULL,
                     cancel_requested = false, updated_at = now()
                 FROM decided d WHERE b.key = d.key
                 RETURNING b.key, d.next::text AS next, d.lease_attempt, d.preempted, d.lease_holder
             )
             UPDATE build_attempts a SET ended_at = now(),
                 outcome = CASE WHEN u.preempted THEN 'preempted' ELSE 'lease_lapsed' END::attempt_outcome,
                 error = 'lease lapsed on worker ' || u.lease_holder
             FROM updated u WHERE a.id = u.lease_attempt
             RETURNING u.key, u.next",
        )
        .fetch_all(&self.pool)
        .await?;
        let mut report = RescueReport::default();
        for (key, next) in rescued {
            let key = rows::key(key)?;
            let list = match rows::parse(&next, || format!("builds/{key}"))? {
                BuildState::Failed => &mut report.failed,
                BuildState::Cancelled => &mut report.cancelled,
                _ => &mut report.requeued,
            };
            list.push(key);
        }
        Ok(report)
    }

    /// Mark workers silent for longer than `silence` as gone, and make their
    /// leases lapse at once so the next rescue takes their builds back.
    /// Returns the ids of the workers marked gone.
    pub async fn mark_silent_workers_gone(&self, silence: Duration) -> Result<Vec<String>, QueueError> {
        let mut tx = self.pool.begin().await?;
        let gone: Vec<String> = sqlx::query_scalar(
            "UPDATE workers SET state = 'gone', note = 'silent since ' || last_seen_at
             WHERE state IN ('active', 'draining') AND last_seen_at < now() - make_interval(secs => $1)
             RETURNING id",
        )
        .bind(secs(silence))
        .fetch_all(&mut *tx)
        .await?;
        sqlx::query("UPDATE builds SET lease_expires_at = now() WHERE state = 'running' AND lease_holder = ANY($1)")
            .bind(&gone)
            .execute(&mut *tx)
            .await?;
        tx.commit().await?;
        Ok(gone)
    }

    /// Wake idle workers for queued builds whose backoff has run out (a
    /// notification is only sent when a build *becomes* queued, so a build
    /// queued for later needs this nudge once its time comes; workers also
    /// poll). Returns how many builds are claimable now.
    pub async fn notify_due(&self) -> Result<i64, QueueError> {
        let recipes: Vec<(String, i64)> = sqlx::query_as(
            "SELECT recipe, count(*) FROM builds WHERE state = 'queued' AND run_at <= now() GROUP BY recipe",
        )
        .fetch_all(&self.pool)
        .await?;
        for (recipe, _) in &recipes {
            sqlx::query("SELECT pg_notify($1, $2)").bind(Channel::Jobs.name()).bind(recipe).execute(&self.pool).await?;
        }
        Ok(recipes.iter().map(|(_, n)| n).sum())
    }

    /// Queued builds still waiting out a retry backoff (claimable later).
    pub async fn backing_off(&self) -> Result<i64, QueueError> {
        Ok(sqlx::query_scalar("SELECT count(*) FROM builds WHERE state = 'queued' AND run_at > now()")
            .fetch_one(&self.pool)
            .await?)
    }

    /// Finished builds past their lifetime under `policy`, oldest first, at
    /// most `limit`: succeeded builds past their recipe's artifact TTL (or
    /// the default), failed and cancelled ones past the failure TTL. Walks
    /// the `builds_finished` index.
    pub async fn expirable(&self, policy: &ExpiryPolicy, limit: i64) -> Result<Vec<Expirable>, QueueError> {
        let (recipes, ttls): (Vec<&str>, Vec<f64>) =
            policy.recipe_artifact_ttls.iter().map(|(r, ttl)| (r.as_str(), secs(*ttl))).unzip();
        let records: Vec<ExpirableRecord> = sqlx::query_as(
            "WITH ttl (recipe, secs) AS (SELECT * FROM unnest($1::text[], $2::float8[]))
             SELECT b.key, b.state::text AS state, coalesce(b.finished_at, b.updated_at) AS finished_at
             FROM builds b LEFT JOIN ttl t ON t.recipe = b.recipe
             WHERE (b.state = 'succeeded'
                    AND coalesce(b.finished_at, b.updated_at) < now() - make_interval(secs => coalesce(t.secs, $3)))
                OR (b.state IN ('failed', 'cancelled')
                    AND coalesce(b.finished_at, b.updated_at) < now() - make_interval(secs => $4))
             ORDER BY 3, 1
             LIMIT $5",
        )
        .bind(&recipes)
        .bind(&ttls)
        .bind(secs(policy.artifact_ttl))
        .bind(secs(policy.failure_ttl))
        .bind(limit)
        .fetch_all(&self.pool)
        .await?;
        rows::all(records)
    }

    /// Remove an expired build: its row is deleted in a transaction that
    /// commits only once `delete_objects` (the build's objects in storage)
    /// succeeded. While it runs the row is locked, so an identical request
    /// arriving meanwhile waits and then queues a fresh build instead of
    /// pointing at objects that are going away; if it fails the transaction
    /// rolls back and the row stays, to be tried again. A row that changed
    /// since it was listed, or that another janitor holds, is skipped.
    pub async fn remove_expired<F, Fut, E>(
        &self,
        build: &Expirable,
        delete_objects: F,
    ) -> Result<Removal<E>, QueueError>
    where
        F: FnOnce() -> Fut,
        Fut: std::future::Future<Output = Result<(), E>>,
    {
        let mut tx = self.pool.begin().await?;
        let deleted = sqlx::query(
            "DELETE FROM builds WHERE key = (
                 SELECT key FROM builds
                 WHERE key = $1 AND state = $2::build_state AND coalesce(finished_at, updated_at) = $3
                 FOR UPDATE SKIP LOCKED)",
        )
        .bind(build.key.as_str())
        .bind(build.state.as_str())
        .bind(build.finished_at)
        .execute(&mut *tx)
        .await?;
        if deleted.rows_affected() == 0 {
            tx.rollback().await?;
            return Ok(Removal::Skipped);
        }
        match delete_objects().await {
            Ok(()) => {
                tx.commit().await?;
                Ok(Removal::Removed)
            }
            Err(e) => {
                tx.rollback().await?;
                Ok(Removal::Kept(e))
            }
        }
    }

    /// Finished builds that ended before `age` ago and still hold live log
    /// chunks, oldest first, after `after` (keyset paging), at most `limit`.
    /// Returns each key with its end time, the next page's `after`.
    pub async fn builds_with_old_logs(
        &self,
        age: Duration,
        after: Option<(DateTime<Utc>, BuildKey)>,
        limit: i64,
    ) -> Result<Vec<(DateTime<Utc>, BuildKey)>, QueueError> {
        let (after_at, after_key) = match &after {
            Some((at, key)) => (Some(*at), Some(key.as_str())),
            None => (None, None),
        };
        let page: Vec<(DateTime<Utc>, String)> = sqlx::query_as(
            "SELECT b.finished_at, b.key FROM builds b
             WHERE b.state IN ('succeeded', 'failed', 'cancelled')
               AND b.finished_at < now() - make_interval(secs => $1)
               AND ($2::timestamptz IS NULL OR (b.finished_at, b.key) > ($2, $3))
               AND EXISTS (SELECT 1 FROM build_events e WHERE e.build_key = b.key AND e.kind = 'log')
             ORDER BY b.finished_at, b.key
             LIMIT $4",
        )
        .bind(secs(age))
        .bind(after_at)
        .bind(after_key)
        .bind(limit)
        .fetch_all(&self.pool)
        .await?;
        page.into_iter().map(|(at, key)| Ok((at, rows::key(key)?))).collect()
    }

    /// Delete the live log chunks (events of kind `log`) of `keys`, for
    /// builds whose log the caller found in storage. Only builds that are
    /// still finished are touched. Returns the number of chunks deleted.
    pub async fn prune_logs(&self, keys: &[BuildKey]) -> Result<u64, QueueError> {
        let keys: Vec<&str> = keys.iter().map(BuildKey::as_str).collect();
        let done = sqlx::query(
            "DELETE FROM build_events e USING builds b
             WHERE e.build_key = b.key AND b.key = ANY($1) AND e.kind = 'log'
               AND b.state IN ('succeeded', 'failed', 'cancelled')",
        )
        .bind(&keys)
        .execute(&self.pool)
        .await?;
        Ok(done.rows_affected())
    }

    /// Delete attempt rows that ended before `age` ago, of builds that
    /// finished before then (the build row keeps its attempt count).
    pub async fn prune_attempts(&self, age: Duration) -> Result<u64, QueueError> {
        let done = sqlx::query(
            "DELETE FROM build_attempts a USING builds b
             WHERE a.build_key = b.key AND b.state IN ('succeeded', 'failed', 'cancelled')
               AND b.finished_at < now() - make_interval(secs => $1)
               AND a.ended_at < now() - make_interval(secs => $1)",
        )
        .bind(secs(age))
        .execute(&self.pool)
        .await?;
        Ok(done.rows_affected())
    }

    /// Delete rows of workers that left (gone, stopped, preempted) and were
    /// last seen before `age` ago, unless a running build still names them.
    pub async fn prune_workers(&self, age: Duration) -> Result<u64, QueueError> {
        let done = sqlx::query(
            "DELETE FROM workers w
             WHERE w.state IN ('gone', 'stopped', 'preempted')
               AND w.last_seen_at < now() - make_interval(secs => $1)
               AND NOT EXISTS (SELECT 1 FROM builds b WHERE b.state = 'running' AND b.lease_holder = w.id)",
        )
        .bind(secs(age))
        .execute(&self.pool)
        .await?;
        Ok(done.rows_affected())
    }

    /// Record one run of a janitor task for `/metrics`: its row is replaced
    /// by this run's facts, and `counts` (numbers by name) are added to the
    /// task's running totals.
    pub async fn record_janitor_run(
        &self,
        task: &str,
        janitor_id: &str,
        started_at: DateTime<Utc>,
        elapsed_ms: i64,
        error: Option<&str>,
        counts: &serde_json::Map<String, serde_json::Value>,
    ) -> Result<(), QueueError> {
        sqlx::query(
            "INSERT INTO janitor_runs AS r
                 (task, janitor_id, started_at, finished_at, elapsed_ms, ok, error, counts, totals, runs, failures)
             VALUES ($1, $2, $3, now(), $4, $5 IS NULL, $5, $6, $6, 1, CASE WHEN $5 IS NULL THEN 0 ELSE 1 END)
             ON CONFLICT (task) DO UPDATE SET
                 janitor_id = EXCLUDED.janitor_id, started_at = EXCLUDED.started_at,
                 finished_at = EXCLUDED.finished_at, elapsed_ms = EXCLUDED.elapsed_ms, ok = EXCLUDED.ok,
                 error = EXCLUDED.error, counts = EXCLUDED.counts,
                 totals = (SELECT coalesce(jsonb_object_agg(k, coalesce((r.totals ->> k)::numeric, 0)
                                                             + coalesce((EXCLUDED.counts ->> k)::numeric, 0)),
                                           '{}')
                           FROM jsonb_object_keys(r.totals || EXCLUDED.counts) AS k),
                 runs = r.runs + 1, failures = r.failures + EXCLUDED.failures",
        )
        .bind(task)
        .bind(janitor_id)
        .bind(started_at)
        .bind(elapsed_ms)
        .bind(error)
        .bind(serde_json::Value::Object(counts.clone()))
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    /// The last run of every janitor task, by task name.
    pub async fn janitor_runs(&self) -> Result<Vec<JanitorRun>, QueueError> {
        let records: Vec<JanitorRunRecord> = sqlx::query_as(
            "SELECT task, janitor_id, started_at, finished_at, elapsed_ms, ok, error, counts, totals, runs, failures
             FROM janitor_runs ORDER BY task",
        )
        .fetch_all(&self.pool)
        .await?;
        rows::all(records)
    }

    /// The image of every build that still has a row, whatever its state or
    /// age (expiry removes the row only after the build's own objects): what
    /// the sweep of shared image objects must keep. A record that does not
    /// decode is an error, so the sweep deletes nothing on a partial mark.
    pub async fn live_images(&self) -> Result<Vec<(BuildKey, OciImageRecord)>, QueueError> {
        let found: Vec<(String, serde_json::Value)> = sqlx::query_as(
            "SELECT key, artifact -> 'oci_image' FROM builds
             WHERE jsonb_typeof(artifact -> 'oci_image') = 'object' ORDER BY key",
        )
        .fetch_all(&self.pool)
        .await?;
        found
            .into_iter()
            .map(|(key, image)| {
                let image = serde_json::from_value(image).map_err(|e| QueueError::Corrupt {
                    row: format!("builds/{key}"),
                    message: format!("artifact.oci_image: {e}"),
                })?;
                Ok((rows::key(key)?, image))
            })
            .collect()
    }
}
