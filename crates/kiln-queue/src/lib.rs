//! The Postgres build queue: Kiln's only coordination point.
//!
//! - [`migrate`] applies the SQL files in the top-level `migrations/` folder
//!   (refinery), under an advisory lock so two janitors may race safely;
//!   [`Queue::connect`] refuses a database whose schema is not current.
//! - [`Queue`] holds every statement on builds, attempts, workers and events
//!   (all of the project's queue SQL lives in this crate), grouped by caller:
//!   the API's builds and admin operations, the worker's leases, the event
//!   stream, the worker registry, the janitor's maintenance and leadership,
//!   API tokens and the per-token build quota ([`Queue::enqueue_for`]).
//! - [`Notifier`] ([`Queue::notifier`]) keeps one `LISTEN` connection per
//!   process and fans typed [`Notification`]s out to any number of
//!   subscribers, reconnecting when the connection drops.
//! - [`Leadership`] lets one of several janitors act at a time (a
//!   session-level advisory lock on a dedicated connection); the download page's figures
//!   (plugin build counts, typical build time) come from `queue/stats.rs`.
//!
//! Fencing: a claim creates an attempt row whose id is the lease's token.
//! Every later write by the worker names that token and only succeeds while
//! the build is `running` under that very attempt with an unexpired lease, so
//! a worker whose lease lapsed changes nothing.

mod error;
mod listener;
mod migrate;
mod queue;

pub use error::QueueError;
pub use listener::{Channel, Notification, Notifier};
pub use migrate::{SCHEMA_VERSION, migrate};
pub use queue::builds::{Attempt, Build, EnqueueOutcome, Enqueued, StateCounts, Submitter, priority};
pub use queue::events::{Event, EventKind};
pub use queue::images::ImageLock;
pub use queue::leadership::Leadership;
pub use queue::leases::{Claim, HandBack, HeartbeatOutcome, Lease, RetryOutcome};
pub use queue::maintenance::{Expirable, ExpiryPolicy, JanitorRun, Removal, RescueReport};
pub use queue::stats::RecipeStats;
pub use queue::tokens::Token;
pub use queue::workers::{HostWork, WorkerInfo, WorkerRow};
pub use queue::{Queue, QueueSettings};
