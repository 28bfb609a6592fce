//! A worker's side of the queue: the claim, and the fenced life of an
//! attempt (heartbeat, completion, failure, hand-back, cancellation).
//!
//! The fence: a claim creates an attempt row whose id is the lease's token.
//! Every later write names that token and only succeeds while the build is
//! `running` under that very attempt, held by that worker, with an unexpired
//! lease; otherwise it fails with [`QueueError::LeaseLost`] and changes nothing.

use chrono::{DateTime, Utc};
use kiln_domain::{AttemptOutcome, BuildKey, BuildManifest, BuildSpec, BuildState};

use super::rows::{self, ClaimRecord};
use super::{Queue, secs};
use crate::QueueError;

/// The right to work on one attempt of one build. Every fenced operation
/// takes it; it stops working the moment the lease lapses or is taken.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Lease {
    pub key: BuildKey,
    /// The attempt row's id: the fencing token.
    pub attempt_id: i64,
    pub worker_id: String,
}

/// A job a worker has claimed.
#[derive(Debug, Clone)]
pub struct Claim {
    pub lease: Lease,
    pub spec: BuildSpec,
    /// 1 for the first attempt at this build, counting every claim.
    pub attempt_no: i32,
    /// Build attempts consumed, this one included.
    pub attempts: i32,
}

/// What a heartbeat learnt.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HeartbeatOutcome {
    /// Lease renewed; carry on.
    Continue,
    /// An admin cancelled the build: stop it and call `acknowledge_cancel`.
    Cancelled,
}

/// Why a worker gives a job back unfinished. Neither consumes a build
/// attempt; both count against the preemption budget.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HandBack {
    /// The VM is being preempted.
    Preempted,
    /// The worker is shutting down (SIGTERM) and the grace period ran out.
    Shutdown,
}

impl HandBack {
    fn outcome(self) -> AttemptOutcome {
        match self {
            HandBack::Preempted => AttemptOutcome::Preempted,
            HandBack::Shutdown => AttemptOutcome::HandedBack,
        }
    }
}

/// What happened to a retryable failure.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RetryOutcome {
    /// Queued again, claimable from `run_at`.
    WillRetry { run_at: DateTime<Utc> },
    /// Out of attempts: the build failed for good.
    GaveUp,
}

/// The fence every worker write carries: this build, running, under this
/// attempt, held by this worker, lease not lapsed. Parameters `$1..$3` are
/// the lease's key, attempt id and worker id.
macro_rules! fence {
    () => {
        "key = $1 AND state = 'running' AND lease_attempt = $2 AND lease_holder = $3 AND lease_expires_at > now()"
    };
}

/// The one statement that ends an attempt: `$set` and `$finished` (the
/// `finished_at` of a final state, else NULL) applied to the build under the
/// fence, the lease cleared, and the attempt row closed with outcome `$4`
/// and error `$5`. `$set` may use `$5` and further parameters from `$6`.
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

type EndQuery<'q> = sqlx::query::QueryAs<'q, sqlx::Postgres, (String, DateTime<Utc>), sqlx::postgres::PgArguments>;

pub(super) fn lost(lease: &Lease) -> QueueError {
    QueueError::LeaseLost { key: lease.key.to_string() }
}

impl Queue {
    /// Claim the next claimable job for one of `recipes` (all when empty).
    ///
    /// The inner `SELECT … FOR UPDATE SKIP LOCKED` picks one queued row by
    /// priority then age, skipping rows other claimers have locked, so
    /// concurrent claimers never wait on each other or take the same job.
    /// `LIMIT 1` inside the locking CTE fences the claim to a single row;
    /// the attempt row is created in the same statement and its id becomes
    /// the lease's fencing token.
    pub async fn claim(&self, worker_id: &str, recipes: &[String]) -> Result<Option<Claim>, QueueError> {
        let record: Option<ClaimRecord> = sqlx::query_as(
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
        record.map(|r| r.into_claim(worker_id)).transpose()
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
        Ok(if state == BuildState::Failed { RetryOutcome::GaveUp } else { RetryOutcome::WillRetry { run_at } })
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
        bind: impl FnOnce(EndQuery<'q>) -> EndQuery<'q>,
    ) -> Result<(BuildState, DateTime<Utc>), QueueError> {
        let query = sqlx::query_as(sql)
            .bind(lease.key.as_str())
            .bind(lease.attempt_id)
            .bind(&lease.worker_id)
            .bind(outcome.as_str())
            .bind(error);
        let ended: Option<(String, DateTime<Utc>)> = bind(query).fetch_optional(&self.pool).await?;
        let (state, run_at) = ended.ok_or_else(|| lost(lease))?;
        Ok((rows::parse(&state, || format!("builds/{}", lease.key))?, run_at))
    }
}
