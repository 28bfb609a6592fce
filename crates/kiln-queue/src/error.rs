//! What can go wrong with the queue, and which failures mean "unavailable".

use thiserror::Error;

#[derive(Debug, Error)]
pub enum QueueError {
    /// The database is not reachable or a statement failed.
    #[error("database error: {0}")]
    Database(#[from] sqlx::Error),
    /// The schema is missing or older than this build expects.
    #[error("the database schema is at version {found}, this build of Kiln needs {wanted}: run `kiln-janitor migrate`")]
    NotMigrated { found: i64, wanted: i64 },
    /// Applying migrations failed.
    #[error("migration failed: {0}")]
    Migration(String),
    /// The lease is no longer ours: it lapsed, was rescued, or the build was
    /// cancelled or finished by someone else. The caller must stop the job.
    #[error("lease lost on build {key}")]
    LeaseLost { key: String },
    /// The token already has this many builds queued or running
    /// ([`Queue::enqueue_for`](crate::Queue::enqueue_for)); nothing was queued.
    #[error("the token already has {limit} builds queued or running")]
    OverQuota { limit: u32 },
    /// The operating system's random generator failed, so no token secret
    /// could be made ([`Queue::issue_token`](crate::Queue::issue_token)).
    #[error("no random bytes for a token secret: {0}")]
    NoRandomness(String),
    /// A stored row that does not decode (a bug or a hand-edited row);
    /// `row` names it as `table/id`.
    #[error("corrupt row {row}: {message}")]
    Corrupt { row: String, message: String },
}

impl QueueError {
    /// True when the database could not be reached at all (503 material).
    pub fn is_unavailable(&self) -> bool {
        matches!(
            self,
            QueueError::Database(
                sqlx::Error::Io(_) | sqlx::Error::PoolTimedOut | sqlx::Error::PoolClosed | sqlx::Error::Tls(_)
            )
        )
    }
}
