//! Specs and settings for queue tests.

use std::time::Duration;

use kiln_queue::QueueSettings;
pub use kiln_testkit::rows::spec;

pub fn settings() -> QueueSettings {
    QueueSettings {
        lease: Duration::from_secs(30),
        max_attempts: 3,
        max_preemptions: 5,
        backoff_base: Duration::from_secs(60),
        backoff_max: Duration::from_secs(600),
        failure_ttl: Duration::from_secs(3600),
    }
}
