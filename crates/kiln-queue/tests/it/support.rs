//! Specs and settings for queue tests.

use std::time::Duration;

use kiln_domain::{BuildSpec, Version};
use kiln_queue::QueueSettings;

/// A distinct resolved spec per `n`.
pub fn spec(recipe: &str, n: u64) -> BuildSpec {
    BuildSpec {
        recipe: recipe.into(),
        recipe_revision: "test".into(),
        version: Version::parse("version", &format!("v1.0.{n}")).unwrap(),
        platform: "linux/amd64".parse().unwrap(),
        plugins: vec![],
        replacements: vec![],
    }
}

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

/// Make every running lease lapse now, as if time had passed.
pub async fn lapse_all(pool: &sqlx::PgPool) {
    sqlx::query("UPDATE builds SET lease_expires_at = now() - interval '1 second' WHERE state = 'running'")
        .execute(pool)
        .await
        .unwrap();
}
