//! Recipes: how one product is built. Defined in the configuration.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::module::pattern_matches;
use crate::{CataloguePlugin, ModulePath, OciSpec, Platform, Version};

/// One product Kiln can build, e.g. `caddy`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Recipe {
    /// Docker image every step runs in (pinned by digest in production).
    pub image: String,
    /// Pull the image when it is missing (off for locally built images).
    #[serde(default)]
    pub pull: bool,
    /// Where the product's versions come from.
    pub versions: VersionSource,
    /// Which plugins may be added and where their versions come from.
    #[serde(default)]
    pub plugins: PluginRules,
    /// Supported platforms, `os/arch` or `os/arm/N`.
    pub platforms: Vec<Platform>,
    /// The main binary's file name in `out/` (`.exe` is added on windows).
    pub binary: String,
    /// Constants of the recipe that step templates see as `vars.NAME`
    /// (e.g. the server core's module path or the Go proxy URL), so that
    /// recipes differing only in such names can share their steps verbatim.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub vars: BTreeMap<String, String>,
    /// The steps, run in order, each in a fresh container.
    pub steps: Vec<Step>,
    /// A named Docker volume shared between builds of this recipe only.
    #[serde(default)]
    pub cache: Option<CacheVolume>,
    /// How long artifacts are kept; the global default applies when unset.
    #[serde(default)]
    pub artifact_ttl_secs: Option<u64>,
    /// How linux builds become container images; a recipe without it makes
    /// none. Left out of the revision's input when unset, so recipes without
    /// images keep their build keys.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub oci: Option<OciSpec>,
    /// Offered in `GET /api/recipes` and on the download page. An unlisted
    /// recipe (a test or internal one) is still built when asked for by
    /// name. Not part of the [`Recipe::revision`]: listing changes no build.
    #[serde(default = "listed_by_default", skip_serializing)]
    pub listed: bool,
    /// The plugins the download page lists ([`crate::catalogue`]).
    /// Presentation only, like `listed`: editing it keeps build keys.
    #[serde(default, skip_serializing)]
    pub catalogue: Vec<CataloguePlugin>,
}

fn listed_by_default() -> bool {
    true
}

/// Where versions come from.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "source", rename_all = "snake_case", deny_unknown_fields)]
pub enum VersionSource {
    /// A fixed list in the configuration.
    Static { versions: Vec<Version> },
    /// The Go module proxy's list for `module`.
    GoProxy { module: ModulePath },
}

/// Which plugins a recipe accepts.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PluginRules {
    /// Module path patterns: `*` within one element, a trailing `/**` for any depth.
    #[serde(default)]
    pub allow: Vec<String>,
    /// Static version lists per module; modules not listed here are resolved
    /// through the Go module proxy when `go_proxy` is set.
    #[serde(default)]
    pub versions: BTreeMap<String, Vec<Version>>,
    /// Resolve plugin versions through the Go module proxy.
    #[serde(default)]
    pub go_proxy: bool,
    /// Whether requests may replace modules (`r=` in the compat API).
    #[serde(default)]
    pub replacements: bool,
    /// The most plugins one build may have.
    #[serde(default = "default_max_plugins")]
    pub max: usize,
}

fn default_max_plugins() -> usize {
    32
}

impl PluginRules {
    pub fn allows(&self, module: &ModulePath) -> bool {
        self.allow.iter().any(|p| pattern_matches(p, module.as_str()))
    }
}

/// A named volume mounted at `path` in every step of the recipe.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CacheVolume {
    pub name: String,
    pub path: String,
}

/// One build step: an argv list run in a new container. Arguments and env
/// values are templates over the build's parameters.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Step {
    pub name: String,
    /// The argv. No shell is involved unless the recipe names one here.
    pub run: Vec<String>,
    #[serde(default)]
    pub env: BTreeMap<String, String>,
    /// Network access for this step (default: none).
    #[serde(default)]
    pub network: bool,
    /// Wall-clock limit after which the container is killed.
    #[serde(default = "default_step_timeout")]
    pub timeout_secs: u64,
}

fn default_step_timeout() -> u64 {
    600
}

impl Recipe {
    /// A hash of the whole definition: any change to how the recipe builds
    /// makes new keys.
    pub fn revision(&self) -> String {
        let canonical = serde_json::to_vec(self).expect("a recipe always serializes");
        hex::encode(&Sha256::digest(&canonical)[..8])
    }

    /// The main binary's file name in `out/` for a platform.
    pub fn binary_file(&self, platform: &Platform) -> String {
        if platform.os == "windows" { format!("{}.exe", self.binary) } else { self.binary.clone() }
    }
}

/// The smallest valid recipe, for the crate's tests to adjust: one static
/// version, `linux/amd64`, binary `hello`, no steps, no plugins allowed.
#[cfg(test)]
pub(crate) fn test_recipe() -> Recipe {
    Recipe {
        image: "img".into(),
        pull: false,
        versions: VersionSource::Static { versions: vec!["v1.0.0".parse().unwrap()] },
        plugins: PluginRules::default(),
        platforms: vec!["linux/amd64".parse().unwrap()],
        binary: "hello".into(),
        vars: Default::default(),
        steps: vec![],
        cache: None,
        artifact_ttl_secs: None,
        oci: None,
        listed: true,
        catalogue: vec![],
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_unset_oci_section_leaves_the_revision_alone() {
        let mut recipe = test_recipe();
        let json = serde_json::to_string(&recipe).unwrap();
        assert!(!json.contains("oci"), "{json}");
        let before = recipe.revision();
        recipe.oci = Some(OciSpec::default());
        assert_ne!(recipe.revision(), before, "images are part of what a build makes");
    }

    const HELLO: &str = r#"{"image": "img", "versions": {"source": "static", "versions": ["v1.0.0"]},
        "platforms": ["linux/amd64"], "binary": "hello", "steps": [{"name": "build", "run": ["true"]}]}"#;

    #[test]
    fn recipes_are_listed_unless_they_say_not_and_listing_changes_no_build() {
        let listed: Recipe = serde_json::from_str(HELLO).unwrap();
        assert!(listed.listed);
        let mut unlisted: serde_json::Value = serde_json::from_str(HELLO).unwrap();
        unlisted["listed"] = false.into();
        let unlisted: Recipe = serde_json::from_value(unlisted).unwrap();
        assert!(!unlisted.listed);
        assert_eq!(listed.revision(), unlisted.revision());
        let mut other = listed.clone();
        other.binary = "other".into();
        assert_ne!(listed.revision(), other.revision());
    }

    #[test]
    fn the_catalogue_leaves_the_revision_alone() {
        let yaml = r#"{"image": "img", "versions": {"source": "static", "versions": ["v1.0.0"]},
            "plugins": {"allow": ["example.com/*"], "go_proxy": true},
            "platforms": ["linux/amd64"], "binary": "hello", "steps": []}"#;
        let plain: Recipe = serde_json::from_str(yaml).unwrap();
        assert!(plain.listed, "recipes are listed unless they say otherwise");
        let mut shown = plain.clone();
        shown.catalogue.push(CataloguePlugin {
            module: ModulePath::parse("m", "example.com/greet").unwrap(),
            description: "Says hello".into(),
            docs: "https://example.com".into(),
            category: None,
        });
        assert_eq!(shown.revision(), plain.revision(), "presentation is no build input");
    }
}
