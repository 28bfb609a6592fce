//! What the download page tells about a recipe: how often each plugin has
//! been built on this farm, and how long a build of the recipe typically
//! takes. Both read only the `builds` rows of one recipe.

use std::collections::BTreeMap;

use super::Queue;
use crate::QueueError;

/// How many recent succeeded builds the typical duration is taken over.
pub const RECENT_BUILDS: i64 = 20;

/// A recipe's figures for the download page.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct RecipeStats {
    /// Succeeded builds that included each plugin, by module path.
    pub plugin_builds: BTreeMap<String, i64>,
    /// The median build time, in seconds, of the recipe's last
    /// [`RECENT_BUILDS`] succeeded builds (from first claim to success);
    /// `None` before the first one.
    pub typical_secs: Option<f64>,
    /// How many builds that median is taken over.
    pub recent_builds: i64,
}

impl Queue {
    /// The figures of recipe `recipe` (one pass over its succeeded builds
    /// for the plugin counts, one over its newest ones for the median).
    pub async fn recipe_stats(&self, recipe: &str) -> Result<RecipeStats, QueueError> {
        // Each succeeded build counts once per plugin of its spec
        // (a spec lists a module at most once).
        let counts: Vec<(String, i64)> = sqlx::query_as(
            "SELECT p.plugin->>'module' AS module, count(*) AS builds
             FROM builds b CROSS JOIN LATERAL jsonb_array_elements(b.spec->'plugins') AS p(plugin)
             WHERE b.recipe = $1 AND b.state = 'succeeded' AND p.plugin->>'module' IS NOT NULL
             GROUP BY 1",
        )
        .bind(recipe)
        .fetch_all(&self.pool)
        .await?;
        let plugin_builds = counts.into_iter().collect();
        let (typical_secs, recent_builds): (Option<f64>, i64) = sqlx::query_as(
            "SELECT percentile_cont(0.5) WITHIN GROUP (ORDER BY secs) AS typical, count(*) AS n
             FROM (SELECT extract(epoch FROM finished_at - started_at)::float8 AS secs
                   FROM builds
                   WHERE recipe = $1 AND state = 'succeeded' AND started_at IS NOT NULL
                   ORDER BY finished_at DESC
                   LIMIT $2) recent",
        )
        .bind(recipe)
        .bind(RECENT_BUILDS)
        .fetch_one(&self.pool)
        .await?;
        Ok(RecipeStats { plugin_builds, typical_secs, recent_builds })
    }
}
