//! The Postgres build queue: Kiln's only coordination point.
//!
//! - [`migrate`] applies the SQL files in the top-level `migrations/` folder
//!   (refinery), under an advisory lock so two janitors may race safely;
//!   [`Queue::connect`] refuses a database whose schema is not current.
//! - [`Queue`] holds every statement on builds, attempts, workers and events
//!   (all of the project's queue SQL lives in `queue.rs`): idempotent
//!   enqueue, `SKIP LOCKED` claims under a lease, fenced completion, failure
//!   classification with backoff, preemption hand-back, cancellation, rescue.
//! - [`Notifier`] keeps one `LISTEN` connection per process and fans
//!   notifications out to any number of subscribers, reconnecting when the
//!   connection drops.
//! - [`Leadership`] lets one of several janitors act at a time (a
//!   session-level advisory lock on a dedicated connection); the janitor's
//!   statements (expiry, pruning, run records) sit in `queue.rs` too.
//!
//! Fencing: a claim creates an attempt row whose id is the lease's token.
//! Every later write by the worker names that token and only succeeds while
//! the build is `running` under that very attempt with an unexpired lease, so
//! a worker whose lease lapsed changes nothing.

mod error;
mod listener;
mod migrate;
mod model;
mod queue;

pub use error::QueueError;
pub use listener::{Notification, Notifier, channels};
pub use migrate::{SCHEMA_VERSION, migrate};
pub use model::*;
pub use queue::{Leadership, Queue};
