//! Every SQL statement of the queue, in one place.

use std::time::Duration;

use chrono::{DateTime, Utc};
use kiln_domain::{AttemptOutcome, BuildKey, BuildManifest, BuildSpec, BuildState, WorkerState};
use sqlx::postgres::{PgConnectOptions, PgPoolOptions, PgRow};
use sqlx::{PgPool, Row};

use crate::migrate::applied_version;
use crate::model::*;
use crate::{QueueError, SCHEMA_VERSION};

/// Handle on the queue. Cheap to clone (a pool inside).
#[derive(Debug, Clone)]
pub struct Queue {
    pool: PgPool,
    settings: QueueSettings,
}

/// Seconds as Postgres `interval` input.
fn secs(d: Duration) -> f64 {
    d.as_secs_f64()
}

const BUILD_COLUMNS: &str = "key, recipe, spec, state::text AS state, priority, attempts, max_attempts, \
    preemptions, run_at, lease_holder, cancel_requested, error, failure_kind, artifact, \
    created_at, updated_at, started_at, finished_at";

fn build_from_row(row: &PgRow) -> Result<Build, QueueError> {
    let key: String = row.try_get("key")?;
    let corrupt = |message: String| QueueError::Corrupt { key: key.clone(), message };
    let spec: serde_json::Value = row.try_get("spec")?;
    let state: String = row.try_get("state")?;
    let failure_kind: Option<String> = row.try_get("failure_kind")?;
    let artifact: Option<serde_json::Value> = row.try_get("artifact")?;
    Ok(Build {
        key: BuildKey::parse(&key).map_err(|e| corrupt(e.to_string()))?,
        recipe: row.try_get("recipe")?,
        spec: serde_json::from_value(spec).map_err(|e| corrupt(e.to_string()))?,
        state: state.parse().map_err(corrupt)?,
        priority: row.try_get("priority")?,
        attempts: row.try_get("attempts")?,
        max_attempts: row.try_get("max_attempts")?,
        preemptions: row.try_get("preemptions")?,
        run_at: row.try_get("run_at")?,
        lease_holder: row.try_get("lease_holder")?,
        cancel_requested: row.try_get("cancel_requested")?,
        error: row.try_get("error")?,
        failure_kind: failure_kind.map(|k| k.parse()).transpose().map_err(corrupt)?,
        artifact: artifact.map(serde_json::from_value).transpose().map_err(|e| corrupt(format!("artifact: {e}")))?,
        created_at: row.try_get("created_at")?,
        updated_at: row.try_get("updated_at")?,
        started_at: row.try_get("started_at")?,
        finished_at: row.try_get("finished_at")?,
    })
}

/// The fence every worker write carries: this build, running, under this
/// attempt, held by this worker, lease not lapsed.
macro_rules! fence {
    () => {
        "key = $1 AND state = 'running' AND lease_attempt = $2 AND lease_holder = $3 AND lease_expires_at > now()"
    };
}

/// The one statement that ends an attempt: `$set` and `$finished` (the
/// `finished_at` of a final state, else NULL) applied to the build under the
/// fence, the lease cleared, and the attempt row closed with outcome `$4`
/// and error `$5`. Parameters `$1..$3` are the lease's; `$set` may use `$5`
/// and further ones from `$6`.
macro_rules! end_attempt_sql {
    ($set:literal, finished = $finished:literal) => {
        concat!(
            "WITH ended AS (UPDATE builds SET ",
            $set,
            ", finished_at = ",
            $finished,
            ", lease_holder = NULL, lease_attempt = NULL, lease_expires_at = NULL, cancel_requested = false, \
             updated_at = now() WHERE ",
            fence!(),
            " RETURNING state, run_at), \
             closed AS (UPDATE build_attempts SET ended_at = now(), outcome = $4::attempt_outcome, error = $5 \
             WHERE id = $2 AND EXISTS (SELECT 1 FROM ended)) \
             SELECT state::text, run_at FROM ended"
        )
    };
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

    /// Wrap a pool whose schema the caller has checked (tests, tools).
    pub fn from_pool(pool: PgPool, settings: QueueSettings) -> Queue {
        Queue { pool, settings }
    }

    pub fn pool(&self) -> &PgPool {
        &self.pool
    }

    pub fn settings(&self) -> &QueueSettings {
        &self.settings
    }

    /// Is the database reachable?
    pub async fn ping(&self) -> Result<(), QueueError> {
        sqlx::query("SELECT 1").execute(&self.pool).await?;
        Ok(())
    }

    // ---- Builds: submit and read -------------------------------------------------

    /// Queue `spec` unless it exists. Many concurrent identical enqueues make
    /// one job. A build that failed for an infrastructure reason, or was
    /// cancelled, is queued afresh; one that failed deterministically (a step
    /// exited non-zero) only once its failure TTL has passed.
    pub async fn enqueue(&self, spec: &BuildSpec, priority: i32) -> Result<Enqueued, QueueError> {
        let key = spec.key();
        let spec_json = serde_json::to_value(spec).expect("a spec always serializes");
        let sql = format!(
            "INSERT INTO builds (key, recipe, spec, priority, max_attempts, max_preemptions)
             VALUES ($1, $2, $3, $4, $5, $6)
             ON CONFLICT (key) DO UPDATE SET
                 state = 'queued', attempts = 0, preemptions = 0, run_at = now(), error = NULL,
                 failure_kind = NULL, artifact = NULL, started_at = NULL, finished_at = NULL,
                 cancel_requested = false, updated_at = now(),
                 priority = greatest(builds.priority, EXCLUDED.priority),
                 max_attempts = EXCLUDED.max_attempts, max_preemptions = EXCLUDED.max_preemptions
             WHERE builds.state = 'cancelled'
                OR (builds.state = 'failed' AND (builds.failure_kind IS DISTINCT FROM 'build'
                    OR builds.finished_at < now() - make_interval(secs => $7)))
             RETURNING (xmax = 0) AS inserted, {BUILD_COLUMNS}"
        );
        let row = sqlx::query(&sql)
            .bind(key.as_str())
            .bind(&spec.recipe)
            .bind(&spec_json)
            .bind(priority)
            .bind(self.settings.max_attempts)
            .bind(self.settings.max_preemptions)
            .bind(secs(self.settings.failure_ttl))
            .fetch_optional(&self.pool)
            .await?;
        if let Some(row) = row {
            let inserted: bool = row.try_get("inserted")?;
            let outcome = if inserted { EnqueueOutcome::Created } else { EnqueueOutcome::Requeued };
            return Ok(Enqueued { build: build_from_row(&row)?, outcome });
        }
        let build = self.get(&key).await?.ok_or_else(|| QueueError::Corrupt {
            key: key.to_string(),
            message: "conflicting row vanished during enqueue".into(),
        })?;
        Ok(Enqueued { build, outcome: EnqueueOutcome::Existing })
    }

    /// One build by key: a single primary-key lookup.
    pub async fn get(&self, key: &BuildKey) -> Result<Option<Build>, QueueError> {
        let sql = format!("SELECT {BUILD_COLUMNS} FROM builds WHERE key = $1");
        let row = sqlx::query(&sql).bind(key.as_str()).fetch_optional(&self.pool).await?;
        row.as_ref().map(build_from_row).transpose()
    }

    /// Only the state of a build (for waiters).
    pub async fn state(&self, key: &BuildKey) -> Result<Option<BuildState>, QueueError> {
        let s: Option<String> = sqlx::query_scalar("SELECT state::text FROM builds WHERE key = $1")
            .bind(key.as_str())
            .fetch_optional(&self.pool)
            .await?;
        s.map(|s| s.parse().map_err(|m| QueueError::Corrupt { key: key.to_string(), message: m })).transpose()
    }

    /// The attempts at a build, oldest first.
    pub async fn attempts(&self, key: &BuildKey) -> Result<Vec<Attempt>, QueueError> {
        let rows = sqlx::query(
            "SELECT id, attempt_no, worker_id, started_at, ended_at, outcome::text AS outcome, error
             FROM build_attempts WHERE build_key = $1 ORDER BY id",
        )
        .bind(key.as_str())
        .fetch_all(&self.pool)
        .await?;
        rows.iter()
            .map(|r| {
                let outcome: Option<String> = r.try_get("outcome")?;
                Ok(Attempt {
                    id: r.try_get("id")?,
                    attempt_no: r.try_get("attempt_no")?,
                    worker_id: r.try_get("worker_id")?,
                    started_at: r.try_get("started_at")?,
                    ended_at: r.try_get("ended_at")?,
                    outcome: outcome
                        .map(|o| o.parse::<AttemptOutcome>())
                        .transpose()
                        .map_err(|m| QueueError::Corrupt { key: key.to_string(), message: m })?,
                    error: r.try_get("error")?,
                })
            })
            .collect()
    }

    /// Builds by state, for metrics and `/readyz`.
    pub async fn state_counts(&self) -> Result<StateCounts, QueueError> {
        let rows = sqlx::query("SELECT state::text AS state, count(*) AS n FROM builds GROUP BY state")
            .fetch_all(&self.pool)
            .await?;
        let mut c = StateCounts::default();
        for r in rows {
            let n: i64 = r.try_get("n")?;
            match r.try_get::<String, _>("state")?.as_str() {
                "queued" => c.queued = n,
                "running" => c.running = n,
                "succeeded" => c.succeeded = n,
                "failed" => c.failed = n,
                _ => c.cancelled = n,
            }
        }
        Ok(c)
    }

    // ---- Admin ---------------------------------------------------------------------

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

    // ---- Workers: claim and the fenced life of an attempt ------------------------

    /// Claim the next claimable job for one of `recipes` (all when empty).
    ///
    /// The inner `SELECT … FOR UPDATE SKIP LOCKED` picks one queued row by
    /// priority then age, skipping rows other claimers have locked, so
    /// concurrent claimers never wait on each other or take the same job.
    /// `LIMIT 1` inside the locking CTE fences the claim to a single row;
    /// the attempt row is created in the same statement and its id becomes
    /// the lease's fencing token.
    pub async fn claim(&self, worker_id: &str, recipes: &[String]) -> Result<Option<Claim>, QueueError> {
        let row = sqlx::query(
            "WITH next AS (
                 SELECT key, claims FROM builds
                 WHERE state = 'queued' AND run_at <= now()
                   AND (cardinality($2::text[]) = 0 OR recipe = ANY($2))
                 ORDER BY priority DESC, run_at, created_at
                 LIMIT 1
                 FOR UPDATE SKIP LOCKED
             ), attempt AS (
                 INSERT INTO build_attempts (build_key, attempt_no, worker_id)
                 SELECT key, claims + 1, $1 FROM next
                 RETURNING id, build_key, attempt_no
             )
             UPDATE builds b SET
                 state = 'running', lease_holder = $1, lease_attempt = attempt.id,
                 lease_expires_at = now() + make_interval(secs => $3),
                 attempts = b.attempts + 1, claims = b.claims + 1,
                 started_at = coalesce(b.started_at, now()), updated_at = now(), cancel_requested = false
             FROM attempt WHERE b.key = attempt.build_key
             RETURNING b.key, b.spec, b.attempts, attempt.id AS attempt_id, attempt.attempt_no",
        )
        .bind(worker_id)
        .bind(recipes)
        .bind(secs(self.settings.lease))
        .fetch_optional(&self.pool)
        .await?;
        let Some(row) = row else { return Ok(None) };
        let key: String = row.try_get("key")?;
        let spec: serde_json::Value = row.try_get("spec")?;
        let corrupt = |message: String| QueueError::Corrupt { key: key.clone(), message };
        Ok(Some(Claim {
            lease: Lease {
                key: BuildKey::parse(&key).map_err(|e| corrupt(e.to_string()))?,
                attempt_id: row.try_get("attempt_id")?,
                worker_id: worker_id.to_owned(),
            },
            spec: serde_json::from_value(spec).map_err(|e| corrupt(e.to_string()))?,
            attempt_no: row.try_get("attempt_no")?,
            attempts: row.try_get("attempts")?,
        }))
    }

    /// Renew the lease. Tells the worker when the build was cancelled;
    /// fails with [`QueueError::LeaseLost`] when the lease is no longer ours.
    pub async fn heartbeat(&self, lease: &Lease) -> Result<HeartbeatOutcome, QueueError> {
        let sql = concat!(
            "UPDATE builds SET lease_expires_at = now() + make_interval(secs => $4) WHERE ",
            fence!(),
            " RETURNING cancel_requested"
        );
        let cancelled: Option<bool> = sqlx::query_scalar(sql)
            .bind(lease.key.as_str())
            .bind(lease.attempt_id)
            .bind(&lease.worker_id)
            .bind(secs(self.settings.lease))
            .fetch_optional(&self.pool)
            .await?;
        match cancelled {
            None => Err(lost(lease)),
            Some(true) => Ok(HeartbeatOutcome::Cancelled),
            Some(false) => Ok(HeartbeatOutcome::Continue),
        }
    }

    /// The build succeeded: record what was stored. Fenced.
    pub async fn complete(&self, lease: &Lease, manifest: &BuildManifest) -> Result<(), QueueError> {
        let artifact = sqlx::types::Json(manifest);
        let sql = end_attempt_sql!(
            "state = 'succeeded', artifact = $6, error = NULL, failure_kind = NULL",
            finished = "now()"
        );
        self.end_attempt(lease, sql, AttemptOutcome::Succeeded, None, move |q| q.bind(artifact)).await.map(drop)
    }

    /// The build failed deterministically (a step exited non-zero): final,
    /// not retried; the same request is answered from this result until the
    /// failure TTL passes. Fenced.
    pub async fn fail_build(&self, lease: &Lease, error: &str) -> Result<(), QueueError> {
        let sql = end_attempt_sql!("state = 'failed', error = $5, failure_kind = 'build'", finished = "now()");
        self.end_attempt(lease, sql, AttemptOutcome::Failed, Some(error), |q| q).await.map(drop)
    }

    /// An infrastructure failure (Docker, storage, network): queued again
    /// after an exponential backoff, or failed for good when out of attempts.
    /// Fenced.
    pub async fn fail_infra(&self, lease: &Lease, error: &str) -> Result<RetryOutcome, QueueError> {
        let sql = end_attempt_sql!(
            "state = CASE WHEN attempts >= max_attempts THEN 'failed' ELSE 'queued' END::build_state,
             run_at = now() + least(make_interval(secs => $7),
                                    make_interval(secs => $6) * power(2, greatest(attempts - 1, 0))),
             error = $5, failure_kind = 'infrastructure'",
            finished = "CASE WHEN attempts >= max_attempts THEN now() END"
        );
        let base = secs(self.settings.backoff_base);
        let max = secs(self.settings.backoff_max);
        let (state, run_at) =
            self.end_attempt(lease, sql, AttemptOutcome::Errored, Some(error), |q| q.bind(base).bind(max)).await?;
        Ok(if state == "failed" { RetryOutcome::GaveUp } else { RetryOutcome::WillRetry { run_at } })
    }

    /// Give the job back unfinished (preemption or shutdown): claimable again
    /// at once, the build attempt is not consumed, the preemption budget is.
    /// Fenced.
    pub async fn hand_back(&self, lease: &Lease, why: HandBack, note: &str) -> Result<(), QueueError> {
        let sql = end_attempt_sql!(
            "attempts = greatest(attempts - 1, 0), preemptions = preemptions + 1, run_at = now(),
             state = CASE WHEN preemptions + 1 > max_preemptions THEN 'failed' ELSE 'queued' END::build_state,
             error = CASE WHEN preemptions + 1 > max_preemptions
                          THEN 'handed back too many times (preemption or shutdown): ' || $5 ELSE error END,
             failure_kind = CASE WHEN preemptions + 1 > max_preemptions THEN 'infrastructure' ELSE failure_kind END",
            finished = "CASE WHEN preemptions + 1 > max_preemptions THEN now() END"
        );
        self.end_attempt(lease, sql, why.outcome(), Some(note), |q| q).await.map(drop)
    }

    /// The worker stopped a build whose cancellation it learnt of. Fenced.
    pub async fn acknowledge_cancel(&self, lease: &Lease) -> Result<(), QueueError> {
        let sql = end_attempt_sql!("state = 'cancelled', error = 'cancelled by an administrator'", finished = "now()");
        self.end_attempt(lease, sql, AttemptOutcome::Cancelled, Some("cancelled"), |q| q).await.map(drop)
    }

    /// End the current attempt with `sql` (from `end_attempt_sql!`): one
    /// statement, one round trip. `bind` adds its parameters from `$6` on.
    /// Returns the build's new state and `run_at`.
    async fn end_attempt<'q>(
        &self,
        lease: &'q Lease,
        sql: &'static str,
        outcome: AttemptOutcome,
        error: Option<&'q str>,
        bind: impl FnOnce(
            sqlx::query::Query<'q, sqlx::Postgres, sqlx::postgres::PgArguments>,
        ) -> sqlx::query::Query<'q, sqlx::Postgres, sqlx::postgres::PgArguments>,
    ) -> Result<(String, DateTime<Utc>), QueueError> {
        let query = sqlx::query(sql)
            .bind(lease.key.as_str())
            .bind(lease.attempt_id)
            .bind(&lease.worker_id)
            .bind(outcome.as_str())
            .bind(error);
        let row = bind(query).fetch_optional(&self.pool).await?.ok_or_else(|| lost(lease))?;
        Ok((row.try_get(0)?, row.try_get(1)?))
    }

    // ---- The event stream (live log and progress) --------------------------------

    /// Append a chunk of build output. Fenced on the attempt (not on the
    /// lease's expiry: late output of a live attempt is still worth keeping).
    pub async fn append_log(&self, lease: &Lease, text: &str) -> Result<i64, QueueError> {
        self.append_event(lease, EventKind::Log, text).await
    }

    /// Append an event to the build's stream; returns its id.
    pub async fn append_event(&self, lease: &Lease, kind: EventKind, data: &str) -> Result<i64, QueueError> {
        let id: Option<i64> = sqlx::query_scalar(
            "INSERT INTO build_events (build_key, attempt_id, kind, data)
             SELECT $1, $2, $3, $4
             WHERE EXISTS (SELECT 1 FROM builds WHERE key = $1 AND lease_attempt = $2 AND state = 'running')
             RETURNING id",
        )
        .bind(lease.key.as_str())
        .bind(lease.attempt_id)
        .bind(kind.as_str())
        .bind(data)
        .fetch_optional(&self.pool)
        .await?;
        id.ok_or_else(|| lost(lease))
    }

    /// Events of a build after `after_id`, oldest first, at most `limit`.
    pub async fn events_after(&self, key: &BuildKey, after_id: i64, limit: i64) -> Result<Vec<Event>, QueueError> {
        let rows = sqlx::query(
            "SELECT id, attempt_id, kind, data, created_at FROM build_events
             WHERE build_key = $1 AND id > $2 ORDER BY id LIMIT $3",
        )
        .bind(key.as_str())
        .bind(after_id)
        .bind(limit)
        .fetch_all(&self.pool)
        .await?;
        rows.iter()
            .map(|r| {
                Ok(Event {
                    id: r.try_get("id")?,
                    attempt_id: r.try_get("attempt_id")?,
                    kind: r.try_get("kind")?,
                    data: r.try_get("data")?,
                    created_at: r.try_get("created_at")?,
                })
            })
            .collect()
    }

    /// Log chunks after `after_id` (id, text), oldest first, at most `limit`.
    pub async fn log_after(&self, key: &BuildKey, after_id: i64, limit: i64) -> Result<Vec<(i64, String)>, QueueError> {
        let rows = sqlx::query(
            "SELECT id, data FROM build_events WHERE build_key = $1 AND kind = 'log' AND id > $2 ORDER BY id LIMIT $3",
        )
        .bind(key.as_str())
        .bind(after_id)
        .bind(limit)
        .fetch_all(&self.pool)
        .await?;
        rows.iter().map(|r| Ok((r.try_get(0)?, r.try_get(1)?))).collect()
    }

    /// The whole live log of a build so far, every attempt in order.
    pub async fn log_text(&self, key: &BuildKey) -> Result<String, QueueError> {
        let text: Option<String> = sqlx::query_scalar(
            "SELECT string_agg(data, '' ORDER BY id) FROM build_events WHERE build_key = $1 AND kind = 'log'",
        )
        .bind(key.as_str())
        .fetch_one(&self.pool)
        .await?;
        Ok(text.unwrap_or_default())
    }

    // ---- Worker registry ---------------------------------------------------------

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
        let row = sqlx::query(
            "SELECT id, host, recipes, version, state::text AS state, started_at, last_seen_at, note
             FROM workers WHERE id = $1",
        )
        .bind(id)
        .fetch_optional(&self.pool)
        .await?;
        row.map(|r| {
            let state: String = r.try_get("state")?;
            Ok(WorkerRow {
                id: r.try_get("id")?,
                host: r.try_get("host")?,
                recipes: r.try_get("recipes")?,
                version: r.try_get("version")?,
                state: state.parse().map_err(|m| QueueError::Corrupt { key: id.to_owned(), message: m })?,
                started_at: r.try_get("started_at")?,
                last_seen_at: r.try_get("last_seen_at")?,
                note: r.try_get("note")?,
            })
        })
        .transpose()
    }

    // ---- Maintenance (the janitor) -----------------------------------------------

    /// Rescue running builds whose lease lapsed. Each goes back to the queue
    /// (attempt outcome `lease_lapsed`), or fails for good when out of
    /// attempts, or ends `cancelled` when a cancellation was pending. A lapse
    /// on a worker that said it was preempted counts against the preemption
    /// budget, not the build's attempts.
    pub async fn rescue_lapsed(&self) -> Result<RescueReport, QueueError> {
        let rows = sqlx::query(
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
        for r in rows {
            let key: String = r.try_get(0)?;
            match r.try_get::<String, _>(1)?.as_str() {
                "queued" => report.requeued.push(key),
                "failed" => report.failed.push(key),
                _ => report.cancelled.push(key),
            }
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
            sqlx::query("SELECT pg_notify('kiln_jobs', $1)").bind(recipe).execute(&self.pool).await?;
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
        let rows = sqlx::query(
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
        rows.iter()
            .map(|r| {
                let key: String = r.try_get("key")?;
                let corrupt = |message: String| QueueError::Corrupt { key: key.clone(), message };
                let state: String = r.try_get("state")?;
                Ok(Expirable {
                    key: BuildKey::parse(&key).map_err(|e| corrupt(e.to_string()))?,
                    state: state.parse().map_err(corrupt)?,
                    finished_at: r.try_get("finished_at")?,
                })
            })
            .collect()
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
        let rows: Vec<(DateTime<Utc>, String)> = sqlx::query_as(
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
        rows.into_iter()
            .map(|(at, key)| {
                let parsed = BuildKey::parse(&key)
                    .map_err(|e| QueueError::Corrupt { key: key.clone(), message: e.to_string() })?;
                Ok((at, parsed))
            })
            .collect()
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
        let rows = sqlx::query(
            "SELECT task, janitor_id, started_at, finished_at, elapsed_ms, ok, error, counts, totals, runs, failures
             FROM janitor_runs ORDER BY task",
        )
        .fetch_all(&self.pool)
        .await?;
        let object = |v: serde_json::Value| match v {
            serde_json::Value::Object(m) => m,
            _ => serde_json::Map::new(),
        };
        rows.iter()
            .map(|r| {
                Ok(JanitorRun {
                    task: r.try_get("task")?,
                    janitor_id: r.try_get("janitor_id")?,
                    started_at: r.try_get("started_at")?,
                    finished_at: r.try_get("finished_at")?,
                    elapsed_ms: r.try_get("elapsed_ms")?,
                    ok: r.try_get("ok")?,
                    error: r.try_get("error")?,
                    counts: object(r.try_get("counts")?),
                    totals: object(r.try_get("totals")?),
                    runs: r.try_get("runs")?,
                    failures: r.try_get("failures")?,
                })
            })
            .collect()
    }

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

fn lost(lease: &Lease) -> QueueError {
    QueueError::LeaseLost { key: lease.key.to_string() }
}
