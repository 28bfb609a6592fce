//! The queue's rows and the values its operations take and return.

use std::time::Duration;

use chrono::{DateTime, Utc};
use kiln_domain::{AttemptOutcome, BuildKey, BuildManifest, BuildSpec, BuildState, FailureKind, WorkerState};
use serde::Serialize;

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
#[derive(Debug, Clone, Serialize)]
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

/// What [`crate::Queue::enqueue`] did.
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
    pub fn outcome(self) -> AttemptOutcome {
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

/// Kinds of entries in a build's event stream. The stream's closing
/// `result` is not stored: the API derives it from the final build row.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum EventKind {
    /// A chunk of build output (text).
    Log,
    /// A state change (JSON, written by the database trigger).
    State,
    /// A step started (JSON: name, index).
    StepStarted,
    /// A step ended (JSON: name, index, exit code, seconds).
    StepFinished,
}

impl EventKind {
    pub fn as_str(self) -> &'static str {
        match self {
            EventKind::Log => "log",
            EventKind::State => "state",
            EventKind::StepStarted => "step_started",
            EventKind::StepFinished => "step_finished",
        }
    }
}

/// One entry of a build's event stream.
#[derive(Debug, Clone, Serialize)]
pub struct Event {
    pub id: i64,
    pub attempt_id: Option<i64>,
    pub kind: String,
    pub data: String,
    pub created_at: DateTime<Utc>,
}

/// One attempt at a build.
#[derive(Debug, Clone, Serialize)]
pub struct Attempt {
    pub id: i64,
    pub attempt_no: i32,
    pub worker_id: String,
    pub started_at: DateTime<Utc>,
    pub ended_at: Option<DateTime<Utc>>,
    pub outcome: Option<AttemptOutcome>,
    pub error: Option<String>,
}

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
#[derive(Debug, Clone, Serialize)]
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

/// What a rescue pass did.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct RescueReport {
    /// Builds put back in the queue.
    pub requeued: Vec<String>,
    /// Builds that ran out of attempts and failed for good.
    pub failed: Vec<String>,
    /// Builds whose cancellation was pending and are now cancelled.
    pub cancelled: Vec<String>,
}

/// Counts of builds by state, for metrics.
#[derive(Debug, Clone, Default, Serialize)]
pub struct StateCounts {
    pub queued: i64,
    pub running: i64,
    pub succeeded: i64,
    pub failed: i64,
    pub cancelled: i64,
}

// ---- Maintenance (the janitor) ---------------------------------------------------

/// How long finished builds are kept, for [`crate::Queue::expirable`].
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

/// What [`crate::Queue::remove_expired`] did with one build.
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
#[derive(Debug, Clone, Serialize)]
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
