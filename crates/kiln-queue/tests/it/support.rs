//! Specs and settings for queue tests.

use std::time::Duration;

use kiln_queue::QueueSettings;
pub use kiln_testkit::rows::spec;

pub fn settings() -> QueueSettings {
    kiln_testkit::rows::queue_settings(Duration::from_secs(3600))
}
