//! The janitor's error type: what stops a command, as opposed to a task run
//! that failed (which is reported, logged and recorded, and tried again at
//! its next tick).

use kiln_queue::QueueError;
use kiln_storage::StorageError;

#[derive(Debug, thiserror::Error)]
pub enum JanitorError {
    /// The database refused or failed (migrations included).
    #[error(transparent)]
    Queue(#[from] QueueError),
    /// The object store could not be set up.
    #[error(transparent)]
    Storage(#[from] StorageError),
    /// A schedule in `janitor.schedules` is not a cron expression.
    #[error(
        "{key}: {expr:?} is not a cron expression with seconds \
         (six fields: sec min hour day-of-month month day-of-week)"
    )]
    Schedule { key: String, expr: String },
    /// The scheduler itself failed.
    #[error("the scheduler failed: {0}")]
    Scheduler(String),
    /// A storage call took longer than the janitor allows.
    #[error("{what}: no answer from storage within {secs} s")]
    StorageTimeout { what: String, secs: u64 },
}
