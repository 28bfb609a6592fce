//! From what a user sends to a resolved, content-addressed build.
//!
//! A [`BuildRequest`] is raw input. [`BuildRequest::validate`] checks it
//! against a recipe and gives a [`ValidatedRequest`], whose versions may still
//! say "latest". Once every version is resolved (which may need the network,
//! so it happens outside this crate) a [`BuildSpec`] is made; its
//! [`BuildSpec::key`] is the build key.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::platform;
use crate::{BuildKey, ModulePath, Platform, Recipe, ValidationError, Version, VersionWanted};

/// The most bytes a recipe name may have.
pub(crate) const MAX_RECIPE_NAME: usize = 64;

/// A build as a user asks for it (the body of `POST /api/builds`).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(deny_unknown_fields)]
pub struct BuildRequest {
    /// The recipe's name (`GET /api/recipes` lists them).
    #[cfg_attr(feature = "openapi", schema(example = "caddy"))]
    pub recipe: String,
    /// An absolute version (`v2.8.4`), or `latest`; missing means latest.
    #[serde(default)]
    #[cfg_attr(feature = "openapi", schema(example = "v2.8.4"))]
    pub version: Option<String>,
    /// Target operating system, one of the recipe's platforms.
    #[cfg_attr(feature = "openapi", schema(example = "linux"))]
    pub os: String,
    /// Target architecture, one of the recipe's platforms.
    #[cfg_attr(feature = "openapi", schema(example = "amd64"))]
    pub arch: String,
    /// The ARM version (`6`, `7`) when `arch` is `arm`; a number or a string.
    #[serde(default, deserialize_with = "arm_from_any")]
    #[cfg_attr(feature = "openapi", schema(schema_with = arm_schema))]
    pub arm: Option<String>,
    /// Plugins, in any order; duplicates collapse.
    #[serde(default)]
    pub plugins: Vec<PluginRequest>,
    /// Module replacements, where the recipe allows them.
    #[serde(default)]
    pub replacements: Vec<ReplacementRequest>,
}

/// `arm` as the API document shows it: a string or an integer.
#[cfg(feature = "openapi")]
fn arm_schema() -> utoipa::openapi::schema::Schema {
    use utoipa::openapi::schema::{ObjectBuilder, OneOfBuilder, Schema, Type};
    Schema::OneOf(
        OneOfBuilder::new()
            .item(ObjectBuilder::new().schema_type(Type::String))
            .item(ObjectBuilder::new().schema_type(Type::Integer).minimum(Some(0)))
            .item(ObjectBuilder::new().schema_type(Type::Null))
            .description(Some("The ARM version (`6`, `7`) when `arch` is `arm`; a number or a string."))
            .build(),
    )
}

/// `arm` may be sent as a number or a string.
fn arm_from_any<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Option<String>, D::Error> {
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum Arm {
        N(u64),
        S(String),
    }
    Ok(Option::<Arm>::deserialize(d)?.map(|a| match a {
        Arm::N(n) => n.to_string(),
        Arm::S(s) => s,
    }))
}

/// One plugin of a request: a Go module path, optionally with a version.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(deny_unknown_fields)]
pub struct PluginRequest {
    /// A Go module path the recipe's plugin patterns allow.
    #[cfg_attr(feature = "openapi", schema(example = "github.com/caddy-dns/cloudflare"))]
    pub module: String,
    /// An absolute version, or `latest`; missing means latest.
    #[serde(default)]
    pub version: Option<String>,
}

impl PluginRequest {
    /// Parse `module[@version]` as the compat API's `p` parameter carries it.
    pub fn from_compat(s: &str) -> Self {
        match s.split_once('@') {
            Some((m, v)) => Self { module: m.into(), version: Some(v.into()) },
            None => Self { module: s.into(), version: None },
        }
    }
}

/// `module=target[@version]`: build with `target` in place of `module`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(deny_unknown_fields)]
pub struct ReplacementRequest {
    /// The module to replace.
    pub module: String,
    /// The module used in its place.
    pub with: String,
    /// The version of `with`, if it is not a local path.
    #[serde(default)]
    pub version: Option<String>,
}

impl ReplacementRequest {
    /// Parse the compat API's `r` parameter, `module=target[@version]`.
    pub fn from_compat(s: &str) -> Result<Self, ValidationError> {
        let (module, target) = s.split_once('=').ok_or_else(|| {
            ValidationError::new("r", "invalid_replacement", "a replacement is module=target[@version]")
        })?;
        let (with, version) = match target.split_once('@') {
            Some((w, v)) => (w, Some(v.to_owned())),
            None => (target, None),
        };
        Ok(Self { module: module.into(), with: with.into(), version })
    }
}

/// A request checked against its recipe; versions may still be "latest".
#[derive(Debug, Clone, PartialEq)]
pub struct ValidatedRequest {
    pub recipe: String,
    pub version: VersionWanted,
    pub platform: Platform,
    /// Sorted by module, no duplicates.
    pub plugins: Vec<(ModulePath, VersionWanted)>,
    /// Sorted by module, no duplicates.
    pub replacements: Vec<Replacement>,
}

/// A module replaced by another (with a version), as `go mod edit -replace` takes it.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
pub struct Replacement {
    pub module: ModulePath,
    pub with: ModulePath,
    pub version: Option<Version>,
}

impl BuildRequest {
    /// Check every field against `recipe`. The first problem found is returned
    /// with the field that carries it.
    pub fn validate(&self, recipe: &Recipe) -> Result<ValidatedRequest, ValidationError> {
        let platform = platform::select(&recipe.platforms, &self.os, &self.arch, self.arm.as_deref())?;
        let version = VersionWanted::parse("version", self.version.as_deref())?;

        if self.plugins.len() > recipe.plugins.max {
            return Err(ValidationError::new(
                "plugins",
                "too_many_plugins",
                format!(
                    "{} plugins asked for; recipe {} allows at most {}",
                    self.plugins.len(),
                    self.recipe,
                    recipe.plugins.max
                ),
            ));
        }
        let mut plugins: BTreeMap<ModulePath, VersionWanted> = BTreeMap::new();
        for (i, p) in self.plugins.iter().enumerate() {
            let module = ModulePath::parse(&format!("plugins[{i}].module"), &p.module)?;
            if !recipe.plugins.allows(&module) {
                return Err(ValidationError::new(
                    format!("plugins[{i}].module"),
                    "plugin_not_allowed",
                    format!(
                        "plugin {module} is not allowed by recipe {}; allowed: {}",
                        self.recipe,
                        recipe.plugins.allow.join(", ")
                    ),
                ));
            }
            let wanted = VersionWanted::parse(&format!("plugins[{i}].version"), p.version.as_deref())?;
            match plugins.get(&module) {
                Some(prev) if *prev != wanted => {
                    return Err(ValidationError::new(
                        format!("plugins[{i}]"),
                        "conflicting_plugins",
                        format!("plugin {module} is asked for twice with different versions"),
                    ));
                }
                _ => {
                    plugins.insert(module, wanted);
                }
            }
        }

        if !self.replacements.is_empty() && !recipe.plugins.replacements {
            return Err(ValidationError::new(
                "replacements",
                "replacements_not_allowed",
                format!("recipe {} does not allow module replacements", self.recipe),
            ));
        }
        if self.replacements.len() > recipe.plugins.max {
            return Err(ValidationError::new("replacements", "too_many_replacements", "too many replacements"));
        }
        let mut replacements = BTreeMap::new();
        for (i, r) in self.replacements.iter().enumerate() {
            let module = ModulePath::parse(&format!("replacements[{i}].module"), &r.module)?;
            let with = ModulePath::parse(&format!("replacements[{i}].with"), &r.with)?;
            let version =
                r.version.as_deref().map(|v| Version::parse(&format!("replacements[{i}].version"), v)).transpose()?;
            replacements.insert(module.clone(), Replacement { module, with, version });
        }

        Ok(ValidatedRequest {
            recipe: self.recipe.clone(),
            version,
            platform,
            plugins: plugins.into_iter().collect(),
            replacements: replacements.into_values().collect(),
        })
    }
}

/// Check a recipe name before it is looked up or echoed.
pub fn check_recipe_name(name: &str) -> Result<(), ValidationError> {
    let ok = !name.is_empty()
        && name.len() <= MAX_RECIPE_NAME
        && name.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || b == b'_');
    if ok {
        Ok(())
    } else {
        Err(ValidationError::new("recipe", "invalid_recipe", "a recipe name is lowercase letters, digits, '-' and '_'"))
    }
}

/// A plugin with its resolved version.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct PluginSpec {
    pub module: ModulePath,
    pub version: Version,
}

impl std::fmt::Display for PluginSpec {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}@{}", self.module, self.version)
    }
}

/// A fully resolved build: absolute versions only. Its hash is the build key.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct BuildSpec {
    pub recipe: String,
    /// [`Recipe::revision`] of the recipe at resolution time.
    pub recipe_revision: String,
    pub version: Version,
    pub platform: Platform,
    /// Sorted by module.
    pub plugins: Vec<PluginSpec>,
    /// Sorted by module.
    #[serde(default)]
    pub replacements: Vec<Replacement>,
}

impl BuildSpec {
    /// The content address: SHA-256 of the canonical JSON of the spec.
    /// Plugins and replacements are sorted first, so order never matters.
    pub fn key(&self) -> BuildKey {
        let mut canonical = self.clone();
        canonical.plugins.sort();
        canonical.replacements.sort();
        let bytes = serde_json::to_vec(&canonical).expect("a spec always serializes");
        BuildKey::from_digest(&Sha256::digest(&bytes).into())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::recipe::PluginRules;

    fn recipe() -> Recipe {
        Recipe {
            plugins: PluginRules { allow: vec!["example.com/*".into()], max: 4, ..Default::default() },
            platforms: vec!["linux/amd64".parse().unwrap(), "linux/arm/7".parse().unwrap()],
            ..crate::recipe::test_recipe()
        }
    }

    fn req(plugins: &[(&str, Option<&str>)]) -> BuildRequest {
        BuildRequest {
            recipe: "hello".into(),
            os: "linux".into(),
            arch: "amd64".into(),
            plugins: plugins
                .iter()
                .map(|(m, v)| PluginRequest { module: (*m).into(), version: v.map(Into::into) })
                .collect(),
            ..Default::default()
        }
    }

    #[test]
    fn plugins_are_sorted_and_deduplicated() {
        let v = req(&[("example.com/b", None), ("example.com/a", Some("v1.0.0")), ("example.com/b", None)])
            .validate(&recipe())
            .unwrap();
        let names: Vec<_> = v.plugins.iter().map(|(m, _)| m.as_str()).collect();
        assert_eq!(names, ["example.com/a", "example.com/b"]);
    }

    #[test]
    fn rejects_disallowed_conflicting_and_too_many_plugins() {
        let r = recipe();
        assert_eq!(req(&[("evil.com/x", None)]).validate(&r).unwrap_err().code, "plugin_not_allowed");
        let e = req(&[("example.com/a", Some("v1.0.0")), ("example.com/a", Some("v2.0.0"))]).validate(&r).unwrap_err();
        assert_eq!(e.code, "conflicting_plugins");
        let many: Vec<_> = (0..5).map(|_| ("example.com/a", None)).collect();
        assert_eq!(req(&many).validate(&r).unwrap_err().code, "too_many_plugins");
        assert_eq!(req(&[("example.com/$(id)", None)]).validate(&r).unwrap_err().field, "plugins[0].module");
    }

    #[test]
    fn replacements_need_the_recipe_to_allow_them() {
        let mut q = req(&[]);
        q.replacements.push(ReplacementRequest::from_compat("example.com/a=example.com/b@v1.0.0").unwrap());
        assert_eq!(q.validate(&recipe()).unwrap_err().code, "replacements_not_allowed");
        let mut r = recipe();
        r.plugins.replacements = true;
        assert_eq!(q.validate(&r).unwrap().replacements.len(), 1);
    }

    #[test]
    fn key_ignores_plugin_order_and_changes_with_anything_else() {
        let p = |m: &str| PluginSpec { module: ModulePath::parse("m", m).unwrap(), version: "v1.0.0".parse().unwrap() };
        let spec = BuildSpec {
            recipe: "hello".into(),
            recipe_revision: "r1".into(),
            version: "v1.0.0".parse().unwrap(),
            platform: "linux/amd64".parse().unwrap(),
            plugins: vec![p("example.com/a"), p("example.com/b")],
            replacements: vec![],
        };
        let mut swapped = spec.clone();
        swapped.plugins.reverse();
        assert_eq!(spec.key(), swapped.key());
        let mut other = spec.clone();
        other.recipe_revision = "r2".into();
        assert_ne!(spec.key(), other.key());
        let mut arm = spec.clone();
        arm.platform = "linux/arm/7".parse().unwrap();
        assert_ne!(spec.key(), arm.key());
    }
}
