//! The JSON shapes the API answers with, and their schemas in the API
//! document (doc comments become its descriptions).

use std::collections::BTreeMap;

use kiln_domain::recipe::VersionSource;
use kiln_domain::{BuildManifest, BuildState, Recipe};
use kiln_queue::{Build, RecipeStats};
use serde::Serialize;
use utoipa::ToSchema;

use crate::AppState;

/// A build as `GET /api/builds/{key}` shows it.
#[derive(Debug, Serialize, ToSchema)]
#[schema(as = Build)]
pub struct BuildView {
    /// The build key: the SHA-256 of the resolved request, 64 lowercase hex characters.
    #[schema(pattern = "^[0-9a-f]{64}$")]
    pub key: String,
    pub state: BuildState,
    /// The recipe's name.
    pub recipe: String,
    /// The revision of the recipe the build used (part of the key).
    pub recipe_revision: String,
    /// The resolved, absolute version.
    pub version: String,
    /// Target operating system.
    pub os: String,
    /// Target architecture.
    pub arch: String,
    /// The ARM version when `arch` is `arm`.
    pub arm: Option<String>,
    /// `os/arch` or `os/arm/N`.
    pub platform: String,
    /// Plugins with their resolved versions, sorted by module.
    pub plugins: Vec<PluginView>,
    /// Module replacements, sorted by module.
    pub replacements: Vec<ReplacementView>,
    /// Attempts started so far.
    pub attempts: i32,
    /// Attempts allowed before an infrastructure failure is final.
    pub max_attempts: i32,
    /// Times a worker was preempted while running it (not counted as attempts).
    pub preemptions: i32,
    /// A cancel was asked for and the running worker has not stopped yet.
    pub cancel_requested: bool,
    /// Why it failed, when it failed.
    pub error: Option<String>,
    /// `build` (the steps failed: final) or `infrastructure` (retried).
    pub failure_kind: Option<String>,
    /// When the build was first asked for.
    pub created_at: chrono::DateTime<chrono::Utc>,
    /// The last change of its row.
    pub updated_at: chrono::DateTime<chrono::Utc>,
    /// When its current or last attempt started.
    pub started_at: Option<chrono::DateTime<chrono::Utc>>,
    /// When it ended.
    pub finished_at: Option<chrono::DateTime<chrono::Utc>>,
    /// What was stored, once succeeded: the build's manifest, as in `build.json`
    /// (request, resolved versions, image, worker, timings, sizes, SHA-256s).
    #[schema(value_type = Option<Object>)]
    pub artifact: Option<BuildManifest>,
    /// Where to read it, its log and events, and download its files.
    pub links: Links,
}

/// A plugin with its resolved version.
#[derive(Debug, Serialize, ToSchema)]
#[schema(as = Plugin)]
pub struct PluginView {
    /// The Go module path.
    pub module: String,
    /// The resolved, absolute version.
    pub version: String,
}

/// A module replaced by another.
#[derive(Debug, Serialize, ToSchema)]
#[schema(as = Replacement)]
pub struct ReplacementView {
    /// The module replaced.
    pub module: String,
    /// The module used in its place.
    pub with: String,
    /// The version of `with`.
    pub version: Option<String>,
}

/// URLs of the build and its parts: absolute when `api.public_url` is set, else root-relative.
#[derive(Debug, Serialize, ToSchema)]
#[schema(as = BuildLinks)]
pub struct Links {
    /// `GET` the build (`?wait=N` to long-poll).
    #[serde(rename = "self")]
    pub this: String,
    /// Its log (`?follow=1` to stream it).
    pub log: String,
    /// Its Server-Sent Events.
    pub events: String,
    /// The artifact TAR, once succeeded.
    pub artifact: String,
    /// The artifact's minisign signature.
    pub signature: String,
    /// The main binary.
    pub binary: String,
    /// Builds with an image: the image as an OCI layout TAR (`docker load`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub image_archive: Option<String>,
    /// Builds with an image: the image manifest's minisign signature.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub image_signature: Option<String>,
}

impl BuildView {
    pub fn new(state: &AppState, b: &Build) -> Self {
        let spec = &b.spec;
        let base = state.url(&format!("/api/builds/{}", b.key));
        let has_image = b.artifact.as_ref().is_some_and(|m| m.oci_image.is_some());
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
                image_archive: has_image.then(|| format!("{base}/image.tar")),
                image_signature: has_image.then(|| format!("{base}/image.minisig")),
            },
        }
    }
}

/// The answer of `GET /api/recipes`.
#[derive(Debug, Serialize, ToSchema)]
#[schema(as = RecipeList)]
pub struct RecipeList {
    /// By name.
    pub recipes: Vec<RecipeView>,
}

/// What a recipe builds and what a request for it may ask.
#[derive(Debug, Serialize, ToSchema)]
#[schema(as = Recipe)]
pub struct RecipeView {
    /// The name requests use.
    pub name: String,
    /// A hash of the recipe's definition; part of every build key.
    pub revision: String,
    /// The main binary's file name.
    pub binary: String,
    /// Offered by `/api/recipes` and the download page.
    pub listed: bool,
    /// Its linux builds are also container images (`/v2/`).
    pub images: bool,
    /// `os/arch` or `os/arm/N`.
    pub platforms: Vec<String>,
    /// Where its versions come from.
    pub versions: VersionsView,
    /// Which plugins a request may add.
    pub plugins: PluginRulesView,
    /// Plugins the farm suggests, with what they do.
    pub catalogue: Vec<CatalogueView>,
    /// With the recipe's figures (`/api/recipes/{name}`): the median build
    /// time of its recent succeeded builds, in seconds.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub typical_secs: Option<Option<f64>>,
    /// With the figures: how many builds that median is taken over.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub recent_builds: Option<i64>,
}

/// A plugin of a recipe's catalogue.
#[derive(Debug, Serialize, ToSchema)]
#[schema(as = CataloguePlugin)]
pub struct CatalogueView {
    /// The plugin's Go module path.
    pub module: String,
    /// What it does, in one line.
    pub description: String,
    /// Where its documentation is.
    pub docs: String,
    /// A group on the page (`dns`, `http`, …).
    pub category: Option<String>,
    /// With the figures: succeeded builds that included it.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub builds: Option<i64>,
}

/// Where the recipe's versions come from.
#[derive(Debug, Serialize, ToSchema)]
#[serde(tag = "source", rename_all = "snake_case")]
#[schema(as = RecipeVersions)]
pub enum VersionsView {
    /// A fixed list.
    Static { versions: Vec<String> },
    /// The Go module proxy's list for `module`.
    GoProxy { module: String },
}

/// Which plugins the recipe accepts.
#[derive(Debug, Serialize, ToSchema)]
#[schema(as = PluginRules)]
pub struct PluginRulesView {
    /// Module path patterns: `*` within one element, a trailing `/**` for any depth.
    pub allow: Vec<String>,
    /// The most plugins one build may have.
    pub max: usize,
    /// Static version lists per module.
    pub versions: BTreeMap<String, Vec<String>>,
    /// Plugin versions not listed come from the Go module proxy.
    pub go_proxy: bool,
    /// Requests may replace modules (`r=` in the compat API).
    pub replacements: bool,
}

impl RecipeView {
    /// The recipe `name`; with `stats`, its figures too.
    pub fn new(name: &str, r: &Recipe, stats: Option<&RecipeStats>) -> Self {
        let strings = |vs: &[kiln_domain::Version]| vs.iter().map(ToString::to_string).collect::<Vec<_>>();
        RecipeView {
            name: name.to_owned(),
            revision: r.revision(),
            binary: r.binary.clone(),
            listed: r.listed,
            images: r.oci.is_some(),
            platforms: r.platforms.iter().map(ToString::to_string).collect(),
            versions: match &r.versions {
                VersionSource::Static { versions } => VersionsView::Static { versions: strings(versions) },
                VersionSource::GoProxy { module } => VersionsView::GoProxy { module: module.to_string() },
            },
            plugins: PluginRulesView {
                allow: r.plugins.allow.clone(),
                max: r.plugins.max,
                versions: r.plugins.versions.iter().map(|(m, vs)| (m.clone(), strings(vs))).collect(),
                go_proxy: r.plugins.go_proxy,
                replacements: r.plugins.replacements,
            },
            catalogue: r
                .catalogue
                .iter()
                .map(|p| CatalogueView {
                    module: p.module.to_string(),
                    description: p.description.clone(),
                    docs: p.docs.clone(),
                    category: p.category.clone(),
                    builds: stats.map(|s| s.plugin_builds.get(p.module.as_str()).copied().unwrap_or(0)),
                })
                .collect(),
            typical_secs: stats.map(|s| s.typical_secs.map(f64::round)),
            recent_builds: stats.map(|s| s.recent_builds),
        }
    }
}
