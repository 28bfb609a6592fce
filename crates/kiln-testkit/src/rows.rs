//! Crafted queue rows for tests of the queue and the janitor.

use kiln_domain::{BuildSpec, Version};

use crate::TestDb;

/// A distinct resolved spec of `recipe` per `n` (version `v1.0.<n>`).
pub fn spec(recipe: &str, n: u64) -> BuildSpec {
    BuildSpec {
        recipe: recipe.into(),
        recipe_revision: "test".into(),
        version: Version::parse("version", &format!("v1.0.{n}")).expect("a valid version"),
        platform: "linux/amd64".parse().expect("a valid platform"),
        plugins: vec![],
        replacements: vec![],
    }
}

impl TestDb {
    /// Make every running lease lapse now, as if time had passed.
    pub async fn lapse_all_leases(&self) {
        sqlx::query("UPDATE builds SET lease_expires_at = now() - interval '1 second' WHERE state = 'running'")
            .execute(self.pool())
            .await
            .expect("lapse leases");
    }
}
