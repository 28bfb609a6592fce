//! The rows the queue reads, as `sqlx::FromRow` records, and the one place
//! where their text becomes typed: keys become [`BuildKey`]s, enum columns
//! (read as `::text`) become [`BuildState`] and friends, JSON becomes a
//! [`BuildSpec`]. A value that does not decode (a bug, or a hand-edited row)
//! is a [`QueueError::Corrupt`] that names the row.

use std::str::FromStr;

use chrono::{DateTime, Utc};
use kiln_domain::{BuildKey, BuildSpec};
use sqlx::FromRow;

use super::builds::{Attempt, Build};
use super::leases::{Claim, Lease};
use super::maintenance::{Expirable, JanitorRun};
use super::workers::WorkerRow;
use crate::QueueError;

/// The columns [`BuildRecord`] reads, enums as text.
pub(super) const BUILD_COLUMNS: &str = "key, recipe, spec, state::text AS state, priority, attempts, max_attempts, \
    preemptions, run_at, lease_holder, cancel_requested, error, failure_kind::text AS failure_kind, artifact, \
    created_at, updated_at, started_at, finished_at";

fn corrupt(row: String, message: impl ToString) -> QueueError {
    QueueError::Corrupt { row, message: message.to_string() }
}

/// A build key read from the database.
pub(super) fn key(text: String) -> Result<BuildKey, QueueError> {
    BuildKey::parse(&text).map_err(|e| corrupt(format!("builds/{text}"), e))
}

/// An enum column read as text; `row` names the row for the error.
pub(super) fn parse<T: FromStr<Err = String>>(text: &str, row: impl FnOnce() -> String) -> Result<T, QueueError> {
    text.parse().map_err(|e| corrupt(row(), e))
}

/// A build's spec, stored as JSON.
fn spec(json: serde_json::Value, key: &BuildKey) -> Result<BuildSpec, QueueError> {
    serde_json::from_value(json).map_err(|e| corrupt(format!("builds/{key}"), e))
}

/// A row of `builds` ([`BUILD_COLUMNS`]).
#[derive(FromRow)]
pub(super) struct BuildRecord {
    key: String,
    recipe: String,
    spec: serde_json::Value,
    state: String,
    priority: i32,
    attempts: i32,
    max_attempts: i32,
    preemptions: i32,
    run_at: DateTime<Utc>,
    lease_holder: Option<String>,
    cancel_requested: bool,
    error: Option<String>,
    failure_kind: Option<String>,
    artifact: Option<serde_json::Value>,
    created_at: DateTime<Utc>,
    updated_at: DateTime<Utc>,
    started_at: Option<DateTime<Utc>>,
    finished_at: Option<DateTime<Utc>>,
}

impl TryFrom<BuildRecord> for Build {
    type Error = QueueError;

    fn try_from(r: BuildRecord) -> Result<Build, QueueError> {
        let key = key(r.key)?;
        let row = || format!("builds/{key}");
        Ok(Build {
            recipe: r.recipe,
            spec: spec(r.spec, &key)?,
            state: parse(&r.state, row)?,
            priority: r.priority,
            attempts: r.attempts,
            max_attempts: r.max_attempts,
            preemptions: r.preemptions,
            run_at: r.run_at,
            lease_holder: r.lease_holder,
            cancel_requested: r.cancel_requested,
            error: r.error,
            failure_kind: r.failure_kind.map(|k| parse(&k, row)).transpose()?,
            artifact: r
                .artifact
                .map(serde_json::from_value)
                .transpose()
                .map_err(|e| corrupt(row(), format!("artifact: {e}")))?,
            created_at: r.created_at,
            updated_at: r.updated_at,
            started_at: r.started_at,
            finished_at: r.finished_at,
            key,
        })
    }
}

/// What `enqueue`'s upsert returns: the build, and whether it is new.
#[derive(FromRow)]
pub(super) struct UpsertRecord {
    pub(super) inserted: bool,
    #[sqlx(flatten)]
    pub(super) build: BuildRecord,
}

/// What a claim returns.
#[derive(FromRow)]
pub(super) struct ClaimRecord {
    key: String,
    spec: serde_json::Value,
    attempts: i32,
    attempt_id: i64,
    attempt_no: i32,
}

impl ClaimRecord {
    pub(super) fn into_claim(self, worker_id: &str) -> Result<Claim, QueueError> {
        let key = key(self.key)?;
        Ok(Claim {
            spec: spec(self.spec, &key)?,
            lease: Lease { key, attempt_id: self.attempt_id, worker_id: worker_id.to_owned() },
            attempt_no: self.attempt_no,
            attempts: self.attempts,
        })
    }
}

/// A row of `build_attempts`.
#[derive(FromRow)]
pub(super) struct AttemptRecord {
    id: i64,
    attempt_no: i32,
    worker_id: String,
    started_at: DateTime<Utc>,
    ended_at: Option<DateTime<Utc>>,
    outcome: Option<String>,
    error: Option<String>,
}

impl TryFrom<AttemptRecord> for Attempt {
    type Error = QueueError;

    fn try_from(r: AttemptRecord) -> Result<Attempt, QueueError> {
        let row = || format!("build_attempts/{}", r.id);
        Ok(Attempt {
            outcome: r.outcome.as_deref().map(|o| parse(o, row)).transpose()?,
            id: r.id,
            attempt_no: r.attempt_no,
            worker_id: r.worker_id,
            started_at: r.started_at,
            ended_at: r.ended_at,
            error: r.error,
        })
    }
}

/// A row of `workers`.
#[derive(FromRow)]
pub(super) struct WorkerRecord {
    id: String,
    host: String,
    recipes: Vec<String>,
    version: String,
    state: String,
    started_at: DateTime<Utc>,
    last_seen_at: DateTime<Utc>,
    note: Option<String>,
    disk_free_mb: Option<i64>,
    disk_low: bool,
}

impl TryFrom<WorkerRecord> for WorkerRow {
    type Error = QueueError;

    fn try_from(r: WorkerRecord) -> Result<WorkerRow, QueueError> {
        Ok(WorkerRow {
            state: parse(&r.state, || format!("workers/{}", r.id))?,
            id: r.id,
            host: r.host,
            recipes: r.recipes,
            version: r.version,
            started_at: r.started_at,
            last_seen_at: r.last_seen_at,
            note: r.note,
            disk_free_mb: r.disk_free_mb,
            disk_low: r.disk_low,
        })
    }
}

/// A finished build past its lifetime.
#[derive(FromRow)]
pub(super) struct ExpirableRecord {
    key: String,
    state: String,
    finished_at: DateTime<Utc>,
}

impl TryFrom<ExpirableRecord> for Expirable {
    type Error = QueueError;

    fn try_from(r: ExpirableRecord) -> Result<Expirable, QueueError> {
        let key = key(r.key)?;
        Ok(Expirable { state: parse(&r.state, || format!("builds/{key}"))?, key, finished_at: r.finished_at })
    }
}

/// A row of `janitor_runs`.
#[derive(FromRow)]
pub(super) struct JanitorRunRecord {
    task: String,
    janitor_id: String,
    started_at: DateTime<Utc>,
    finished_at: DateTime<Utc>,
    elapsed_ms: i64,
    ok: bool,
    error: Option<String>,
    counts: serde_json::Value,
    totals: serde_json::Value,
    runs: i64,
    failures: i64,
}

impl TryFrom<JanitorRunRecord> for JanitorRun {
    type Error = QueueError;

    fn try_from(r: JanitorRunRecord) -> Result<JanitorRun, QueueError> {
        let object = |v: serde_json::Value, column: &str| match v {
            serde_json::Value::Object(m) => Ok(m),
            other => Err(corrupt(format!("janitor_runs/{}", r.task), format!("{column} is not an object: {other}"))),
        };
        Ok(JanitorRun {
            counts: object(r.counts, "counts")?,
            totals: object(r.totals, "totals")?,
            task: r.task,
            janitor_id: r.janitor_id,
            started_at: r.started_at,
            finished_at: r.finished_at,
            elapsed_ms: r.elapsed_ms,
            ok: r.ok,
            error: r.error,
            runs: r.runs,
            failures: r.failures,
        })
    }
}

/// Decode every record of a result set.
pub(super) fn all<R, T: TryFrom<R, Error = QueueError>>(records: Vec<R>) -> Result<Vec<T>, QueueError> {
    records.into_iter().map(T::try_from).collect()
}
