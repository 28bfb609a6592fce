//! The JSON shapes the API answers with.

use kiln_domain::{BuildManifest, BuildState};
use kiln_queue::Build;
use serde::Serialize;

use crate::AppState;

/// A build as `GET /api/builds/{key}` shows it.
#[derive(Debug, Serialize)]
pub struct BuildView {
    pub key: String,
    pub state: BuildState,
    pub recipe: String,
    pub recipe_revision: String,
    pub version: String,
    pub os: String,
    pub arch: String,
    pub arm: Option<String>,
    pub platform: String,
    pub plugins: Vec<PluginView>,
    pub replacements: Vec<ReplacementView>,
    pub attempts: i32,
    pub max_attempts: i32,
    pub preemptions: i32,
    pub cancel_requested: bool,
    pub error: Option<String>,
    pub failure_kind: Option<String>,
    pub created_at: chrono::DateTime<chrono::Utc>,
    pub updated_at: chrono::DateTime<chrono::Utc>,
    pub started_at: Option<chrono::DateTime<chrono::Utc>>,
    pub finished_at: Option<chrono::DateTime<chrono::Utc>>,
    /// What was stored (sizes, SHA-256s), once succeeded: the build's manifest.
    pub artifact: Option<BuildManifest>,
    pub links: Links,
}

#[derive(Debug, Serialize)]
pub struct PluginView {
    pub module: String,
    pub version: String,
}

#[derive(Debug, Serialize)]
pub struct ReplacementView {
    pub module: String,
    pub with: String,
    pub version: Option<String>,
}

#[derive(Debug, Serialize)]
pub struct Links {
    #[serde(rename = "self")]
    pub this: String,
    pub log: String,
    pub events: String,
    pub artifact: String,
    pub signature: String,
    pub binary: String,
}

impl BuildView {
    pub fn new(state: &AppState, b: &Build) -> Self {
        let spec = &b.spec;
        let base = state.url(&format!("/api/builds/{}", b.key));
        BuildView {
            key: b.key.to_string(),
            state: b.state,
            recipe: b.recipe.clone(),
            recipe_revision: spec.recipe_revision.clone(),
            version: spec.version.to_string(),
            os: spec.platform.os.clone(),
            arch: spec.platform.arch.clone(),
            arm: spec.platform.arm.map(|a| a.to_string()),
            platform: spec.platform.to_string(),
            plugins: spec
                .plugins
                .iter()
                .map(|p| PluginView { module: p.module.to_string(), version: p.version.to_string() })
                .collect(),
            replacements: spec
                .replacements
                .iter()
                .map(|r| ReplacementView {
                    module: r.module.to_string(),
                    with: r.with.to_string(),
                    version: r.version.as_ref().map(ToString::to_string),
                })
                .collect(),
            attempts: b.attempts,
            max_attempts: b.max_attempts,
            preemptions: b.preemptions,
            cancel_requested: b.cancel_requested,
            error: b.error.clone(),
            failure_kind: b.failure_kind.map(|k| k.to_string()),
            created_at: b.created_at,
            updated_at: b.updated_at,
            started_at: b.started_at,
            finished_at: b.finished_at,
            artifact: b.artifact.clone(),
            links: Links {
                this: base.clone(),
                log: format!("{base}/log"),
                events: format!("{base}/events"),
                artifact: format!("{base}/artifact"),
                signature: format!("{base}/artifact.minisig"),
                binary: format!("{base}/binary"),
            },
        }
    }
}
