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
    /// The configuration is wrong (a schedule that is not a cron expression).
    /// A source, not `transparent`: the process exits 2 when it finds a
    /// `ConfigError` in the chain.
    #[error("{0}")]
    Config(#[from] kiln_config::ConfigError),
    /// The scheduler itself failed.
    #[error("the scheduler failed: {0}")]
    Scheduler(String),
    /// `once`: these tasks failed (each said why in its report).
    #[error("{} of {total} tasks failed: {}", failed.len(), failed.join(", "))]
    TasksFailed { failed: Vec<String>, total: usize },
    /// A command-line value is not acceptable (`token create --scopes`).
    /// A source, so the process exits 2.
    #[error("{0}")]
    Invalid(#[source] kiln_process::StartupError),
    /// `token revoke`: no token has this id.
    #[error("there is no token {0}; see `kiln-janitor token list`")]
    NoSuchToken(i64),
    /// A storage call took longer than the janitor allows.
    #[error("{what}: no answer from storage within {secs} s")]
    StorageTimeout { what: String, secs: u64 },
}

impl JanitorError {
    /// The object asked for is not stored (another run deleted it meanwhile).
    pub fn is_not_found(&self) -> bool {
        matches!(self, JanitorError::Storage(e) if e.is_not_found())
    }
}
