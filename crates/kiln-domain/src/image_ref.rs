//! What `docker pull farm:8234/NAME:TAG` means to Kiln: registry names, tags
//! and digests, parsed and checked against a recipe, with the registry error
//! code each mistake deserves.
//!
//! - **Name** `<recipe>[/<plugin>…]`: each plugin is a Go module path with
//!   every `/` written `__` (`caddy/github.com__caddy-dns__cloudflare`). Every
//!   path component follows the reference grammar
//!   (`[a-z0-9]+((\.|_|__|-+)[a-z0-9]+)*`, so lowercase only) and the whole
//!   name is at most [`MAX_NAME_LEN`] characters. Plugins are sorted and
//!   deduplicated, so any order names the same image; they take their latest
//!   versions.
//! - **Tag** ([`Tag`]): `<version>` (an index over the recipe's linux
//!   platforms), `<version>-<os>-<arch>[-v<arm>]` (one platform's manifest),
//!   `latest` (and `latest-<os>-<arch>[-v<arm>]`), or `bk-<build key>`
//!   (exactly that build). A `+` in a version is written `_`.
//! - **Digest** ([`OciDigest`]): `sha256:<64 lowercase hex>` only.
//!
//! Every error is an [`ImageRefError`]: a [`RegistryCode`] (which fixes the
//! HTTP status) and a message that says what to fix, quoting at most a short
//! prefix of the input.

use std::fmt;

use crate::module::truncate;
use crate::platform::Platform;
use crate::request::check_recipe_name;
use crate::{BuildKey, BuildRequest, BuildSpec, ModulePath, OciDigest, PluginRequest, Recipe, Version, VersionWanted};

/// The longest name accepted: docker 20.10 refuses a reference whose host
/// and path together are longer, so a farm at `host:port/` leaves
/// `255 - len("host:port/")` for the name itself.
pub const MAX_NAME_LEN: usize = 255;
/// The longest tag the reference grammar allows.
pub const MAX_TAG_LEN: usize = 128;
/// How a `/` of a module path is written inside one name component.
pub const MODULE_SLASH: &str = "__";
/// The prefix of a tag naming one build by its key.
pub const BUILD_TAG_PREFIX: &str = "bk-";
/// The only operating system images are made for.
pub const IMAGE_OS: &str = "linux";

/// Operating systems a platform tag may name (Go's and containerd's lists),
/// so that `v1.0.0-rc-1` stays a version and `v1.0.0-linux-amd64` is a platform.
const KNOWN_OS: &[&str] = &[
    "aix",
    "android",
    "darwin",
    "dragonfly",
    "freebsd",
    "hurd",
    "illumos",
    "ios",
    "js",
    "linux",
    "nacl",
    "netbsd",
    "openbsd",
    "plan9",
    "solaris",
    "wasip1",
    "windows",
    "zos",
];

/// The registry error codes a reference can earn (the distribution spec's).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum RegistryCode {
    /// `400`: the name is malformed.
    NameInvalid,
    /// `404`: the name is well formed but names nothing here (no such
    /// recipe, a recipe without images, a plugin the recipe does not allow).
    NameUnknown,
    /// `400`: the tag is malformed.
    TagInvalid,
    /// `404`: no such manifest (a platform the recipe lacks, a non-linux
    /// platform, a failed build, an unknown version or digest).
    ManifestUnknown,
    /// `400`: the digest is not `sha256:<64 lowercase hex>`.
    DigestInvalid,
}

impl RegistryCode {
    /// The code as the registry's error body spells it.
    pub fn as_str(self) -> &'static str {
        match self {
            RegistryCode::NameInvalid => "NAME_INVALID",
            RegistryCode::NameUnknown => "NAME_UNKNOWN",
            RegistryCode::TagInvalid => "TAG_INVALID",
            RegistryCode::ManifestUnknown => "MANIFEST_UNKNOWN",
            RegistryCode::DigestInvalid => "DIGEST_INVALID",
        }
    }

    /// The HTTP status the distribution spec gives the code.
    pub fn http_status(self) -> u16 {
        match self {
            RegistryCode::NameInvalid | RegistryCode::TagInvalid | RegistryCode::DigestInvalid => 400,
            RegistryCode::NameUnknown | RegistryCode::ManifestUnknown => 404,
        }
    }
}

impl fmt::Display for RegistryCode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A name, tag or digest that cannot be served, and why.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{code}: {message}")]
pub struct ImageRefError {
    pub code: RegistryCode,
    /// What is wrong and what to write instead; meant to be shown verbatim.
    pub message: String,
}

impl ImageRefError {
    pub fn new(code: RegistryCode, message: impl Into<String>) -> Self {
        Self { code, message: message.into() }
    }
}

fn name_invalid(message: String) -> ImageRefError {
    ImageRefError::new(RegistryCode::NameInvalid, message)
}

fn tag_invalid(tag: &str, why: &str) -> ImageRefError {
    ImageRefError::new(
        RegistryCode::TagInvalid,
        format!(
            "tag {:?} is invalid: {why}; tags are <version>, <version>-<os>-<arch>[-v<arm>], latest or \
             bk-<build key>, e.g. v1.2.3 or v1.2.3-linux-arm-v7",
            truncate(tag)
        ),
    )
}

/// Does `s` match the reference grammar's path component,
/// `[a-z0-9]+((\.|_|__|-+)[a-z0-9]+)*`?
pub fn is_path_component(s: &str) -> bool {
    let b = s.as_bytes();
    let alnum = |c: u8| c.is_ascii_lowercase() || c.is_ascii_digit();
    let mut i = 0;
    loop {
        let start = i;
        while i < b.len() && alnum(b[i]) {
            i += 1;
        }
        if i == start {
            return false;
        }
        if i == b.len() {
            return true;
        }
        match b[i] {
            b'.' => i += 1,
            b'_' if b.get(i + 1) == Some(&b'_') => i += 2,
            b'_' => i += 1,
            b'-' => {
                while b.get(i) == Some(&b'-') {
                    i += 1;
                }
            }
            _ => return false,
        }
    }
}

/// Why `component` does not fit the grammar, in words a user can act on.
fn component_problem(component: &str) -> String {
    if component.bytes().any(|b| b.is_ascii_uppercase()) {
        return format!(
            "{:?} has upper-case letters; names are lowercase (a module path with upper-case letters cannot \
             be named: submit it with POST /api/builds and pull the build's bk-<key> tag)",
            truncate(component)
        );
    }
    if let Some(c) = component.chars().find(|c| !(c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-'))) {
        return format!(
            "{:?} contains {c:?}; a name component is lowercase letters and digits with '.', '_', '__' or '-' \
             between them",
            truncate(component)
        );
    }
    format!(
        "{:?} must start and end with a letter or digit, and '.', '_' and '__' may only stand alone between \
         letters or digits (no '..', '___' or leading '.')",
        truncate(component)
    )
}

/// An image name: a recipe and its plugins, sorted and deduplicated.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct ImageName {
    recipe: String,
    plugins: Vec<ModulePath>,
}

impl ImageName {
    /// Parse a name as it appears in `/v2/<name>/manifests/…`.
    pub fn parse(name: &str) -> Result<Self, ImageRefError> {
        if name.is_empty() {
            return Err(name_invalid(
                "the image name is empty; it is <recipe>[/<plugin>…], e.g. \
                 caddy/github.com__caddy-dns__cloudflare"
                    .into(),
            ));
        }
        if name.len() > MAX_NAME_LEN {
            return Err(name_invalid(format!(
                "the image name is {} characters long; at most {MAX_NAME_LEN} are allowed, the registry's \
                 host included",
                name.len()
            )));
        }
        let mut components = name.split('/');
        let recipe = components.next().unwrap_or_default();
        let mut plugins = Vec::new();
        for (i, component) in std::iter::once(recipe).chain(components).enumerate() {
            if component.is_empty() {
                return Err(name_invalid(format!(
                    "{:?} has an empty path component (a leading, trailing or doubled '/')",
                    truncate(name)
                )));
            }
            if !is_path_component(component) {
                return Err(name_invalid(format!("the image name is invalid: {}", component_problem(component))));
            }
            if i == 0 {
                check_recipe_name(component).map_err(|e| {
                    name_invalid(format!("{:?} is not a recipe name: {}", truncate(component), e.message))
                })?;
                continue;
            }
            let module = component.replace(MODULE_SLASH, "/");
            let module = ModulePath::parse("name", &module).map_err(|e| {
                name_invalid(format!(
                    "plugin {:?} is invalid: {} (write each '/' of the module path as '__', e.g. \
                     github.com__caddy-dns__cloudflare)",
                    truncate(component),
                    e.message
                ))
            })?;
            plugins.push(module);
        }
        plugins.sort();
        plugins.dedup();
        Ok(Self { recipe: recipe.to_owned(), plugins })
    }

    /// The name of a recipe's image with `plugins`, as `kiln image` prints it.
    /// Refuses module paths the grammar cannot carry (upper case, `~`, `__`).
    pub fn new(recipe: &str, plugins: &[ModulePath]) -> Result<Self, ImageRefError> {
        let mut name = recipe.to_owned();
        for p in plugins {
            if p.as_str().contains(MODULE_SLASH) {
                return Err(name_invalid(format!(
                    "plugin {p} contains '__', which a name reads as '/'; pull it by its bk-<key> tag"
                )));
            }
            name.push('/');
            name.push_str(&p.as_str().replace('/', MODULE_SLASH));
        }
        let parsed = Self::parse(&name)?;
        // `parse` sorts and deduplicates; it must read back exactly these plugins.
        let mut wanted = plugins.to_vec();
        wanted.sort();
        wanted.dedup();
        if parsed.plugins != wanted {
            return Err(name_invalid(format!("the plugins of {name:?} cannot be written as an image name")));
        }
        Ok(parsed)
    }

    pub fn recipe(&self) -> &str {
        &self.recipe
    }

    /// Sorted, no duplicates.
    pub fn plugins(&self) -> &[ModulePath] {
        &self.plugins
    }

    /// Check the name against its recipe (`None`: no recipe by that name).
    pub fn check(&self, recipe: Option<&Recipe>) -> Result<(), ImageRefError> {
        let unknown = |m: String| ImageRefError::new(RegistryCode::NameUnknown, m);
        let Some(recipe) = recipe else {
            return Err(unknown(format!(
                "there is no recipe {:?}; GET /api/recipes lists the recipes",
                truncate(&self.recipe)
            )));
        };
        if recipe.oci.is_none() {
            return Err(unknown(format!(
                "recipe {} makes no images (it has no oci section); download its binary from /api/compat",
                self.recipe
            )));
        }
        if self.plugins.len() > recipe.plugins.max {
            return Err(name_invalid(format!(
                "{} plugins named; recipe {} allows at most {}",
                self.plugins.len(),
                self.recipe,
                recipe.plugins.max
            )));
        }
        if let Some(p) = self.plugins.iter().find(|p| !recipe.plugins.allows(p)) {
            return Err(unknown(format!(
                "plugin {p} is not allowed by recipe {}; allowed: {}",
                self.recipe,
                recipe.plugins.allow.join(", ")
            )));
        }
        Ok(())
    }

    /// Check that a build found by a `bk-` tag is an image of this name.
    pub fn check_build(&self, key: &BuildKey, spec: &BuildSpec) -> Result<(), ImageRefError> {
        let mut modules: Vec<&ModulePath> = spec.plugins.iter().map(|p| &p.module).collect();
        modules.sort();
        modules.dedup();
        let same = spec.recipe == self.recipe && modules.iter().copied().eq(self.plugins.iter());
        if !same {
            return Err(ImageRefError::new(
                RegistryCode::ManifestUnknown,
                format!("build {key} is not an image of {self}; pull it as {}:bk-{key}", Self::of_spec(spec)),
            ));
        }
        check_image_platform(&spec.platform)
    }

    /// The name a build's image is pulled by (falls back to the bare recipe
    /// when a plugin cannot be written in a name).
    pub fn of_spec(spec: &BuildSpec) -> String {
        let modules: Vec<ModulePath> = spec.plugins.iter().map(|p| p.module.clone()).collect();
        Self::new(&spec.recipe, &modules).map(|n| n.to_string()).unwrap_or_else(|_| spec.recipe.clone())
    }

    /// The build request for this name at one version and platform: plugins
    /// at their latest versions. It still goes through
    /// [`BuildRequest::validate`] and version resolution like any other.
    pub fn build_request(&self, version: &VersionWanted, platform: &Platform) -> BuildRequest {
        BuildRequest {
            recipe: self.recipe.clone(),
            version: match version {
                VersionWanted::Latest => None,
                VersionWanted::Exact(v) => Some(v.to_string()),
            },
            os: platform.os.clone(),
            arch: platform.arch.clone(),
            arm: platform.arm.map(|a| a.to_string()),
            plugins: self.plugins.iter().map(|m| PluginRequest { module: m.to_string(), version: None }).collect(),
            replacements: Vec::new(),
        }
    }
}

impl fmt::Display for ImageName {
    /// The canonical name: the recipe, then the sorted plugins.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.recipe)?;
        for p in &self.plugins {
            write!(f, "/{}", p.as_str().replace('/', MODULE_SLASH))?;
        }
        Ok(())
    }
}

/// What follows the name in a manifest request: a tag or a digest.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Reference {
    Tag(Tag),
    Digest(OciDigest),
}

impl Reference {
    /// Anything with a `:` is a digest (`DIGEST_INVALID` when malformed),
    /// anything else a tag.
    pub fn parse(s: &str) -> Result<Self, ImageRefError> {
        if s.contains(':') { OciDigest::parse(s).map(Self::Digest) } else { Tag::parse(s).map(Self::Tag) }
    }
}

/// A tag, parsed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Tag {
    /// `<version>` or `latest` (`platform: None`, an index over the recipe's
    /// linux platforms), or with `-<os>-<arch>[-v<arm>]` one platform's manifest.
    Version { version: VersionWanted, platform: Option<Platform> },
    /// `bk-<key>`: exactly that build.
    Build(BuildKey),
}

impl Tag {
    pub fn parse(tag: &str) -> Result<Self, ImageRefError> {
        let grammar_ok = !tag.is_empty()
            && tag.len() <= MAX_TAG_LEN
            && tag.bytes().all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'.' | b'-'))
            && !tag.starts_with(['.', '-']);
        if !grammar_ok {
            return Err(tag_invalid(
                tag,
                "a tag is 1 to 128 letters, digits, '_', '.' and '-', not starting with '.' or '-'",
            ));
        }
        if let Some(key) = tag.strip_prefix(BUILD_TAG_PREFIX) {
            return BuildKey::parse(key)
                .map(Self::Build)
                .map_err(|_| tag_invalid(tag, "bk- is followed by a build key of 64 lowercase hex digits"));
        }
        let (version, platform) = split_platform(tag)?;
        let version = if version == "latest" {
            VersionWanted::Latest
        } else {
            let v: Version = version.replace('_', "+").parse().map_err(|why: String| {
                tag_invalid(
                    tag,
                    &format!(
                        "{:?} is not a version like v1.2.3 ({why}; a '+' in a version is written '_')",
                        truncate(version)
                    ),
                )
            })?;
            VersionWanted::Exact(v)
        };
        Ok(Self::Version { version, platform })
    }

    /// The platforms this tag asks for, checked against `recipe`: the one
    /// platform of a platform tag, or every linux platform of the recipe for
    /// an index. A `bk-` tag's platform is the build's, so it has none here.
    pub fn platforms(&self, recipe_name: &str, recipe: &Recipe) -> Result<Vec<Platform>, ImageRefError> {
        let images = image_platforms(recipe);
        let list = || images.iter().map(|p| p.to_string()).collect::<Vec<_>>().join(", ");
        match self {
            Tag::Build(_) => Ok(Vec::new()),
            Tag::Version { platform: None, .. } if images.is_empty() => Err(ImageRefError::new(
                RegistryCode::ManifestUnknown,
                format!("recipe {recipe_name} has no linux platform, and images are made for linux only"),
            )),
            Tag::Version { platform: None, .. } => Ok(images),
            Tag::Version { platform: Some(p), .. } => {
                check_image_platform(p)
                    .map_err(|e| ImageRefError::new(e.code, format!("{}: {}", e.message, list())))?;
                if !images.contains(p) {
                    return Err(ImageRefError::new(
                        RegistryCode::ManifestUnknown,
                        format!("recipe {recipe_name} is not built for {p}; its images: {}", list()),
                    ));
                }
                Ok(vec![p.clone()])
            }
        }
    }

    /// The canonical tag of one platform's image: `v1.2.3-linux-arm-v7`
    /// (`+` written `_`).
    pub fn for_platform(version: &Version, platform: &Platform) -> String {
        let mut tag = format!("{}-{}-{}", Self::for_version(version), platform.os, platform.arch);
        if let Some(arm) = platform.arm {
            tag.push_str(&format!("-v{arm}"));
        }
        tag
    }

    /// The canonical tag of a version's index: `v1.2.3` (`+` written `_`).
    pub fn for_version(version: &Version) -> String {
        version.to_string().replace('+', "_")
    }
}

impl fmt::Display for Tag {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Tag::Build(key) => write!(f, "{BUILD_TAG_PREFIX}{key}"),
            Tag::Version { version, platform } => {
                let v = match version {
                    VersionWanted::Latest => "latest".to_owned(),
                    VersionWanted::Exact(v) => Self::for_version(v),
                };
                f.write_str(&v)?;
                if let Some(p) = platform {
                    write!(f, "-{}-{}", p.os, p.arch)?;
                    if let Some(arm) = p.arm {
                        write!(f, "-v{arm}")?;
                    }
                }
                Ok(())
            }
        }
    }
}

/// Split `<version>-<os>-<arch>[-v<arm>]` into the version text and the
/// platform; a tag whose third-to-last (or fourth-to-last) field is no known
/// operating system is a bare version.
fn split_platform(tag: &str) -> Result<(&str, Option<Platform>), ImageRefError> {
    let word = |s: &str| !s.is_empty() && s.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit());
    let fields: Vec<&str> = tag.rsplitn(4, '-').collect();
    // fields are reversed: [last, second to last, …, rest].
    let arm = fields
        .first()
        .and_then(|f| f.strip_prefix('v'))
        .filter(|n| !n.is_empty() && n.bytes().all(|b| b.is_ascii_digit()));
    if let (Some(arm), [_, arch, os, version]) = (arm, fields.as_slice())
        && KNOWN_OS.contains(os)
        && word(arch)
    {
        if *arch != "arm" {
            return Err(tag_invalid(tag, &format!("-v{arm} is only for arm, not {arch}")));
        }
        let arm: u8 = arm.parse().map_err(|_| tag_invalid(tag, "the ARM version is a small number such as 6 or 7"))?;
        return Ok((version, Some(Platform { os: (*os).into(), arch: (*arch).into(), arm: Some(arm) })));
    }
    let fields: Vec<&str> = tag.rsplitn(3, '-').collect();
    if let [arch, os, version] = fields.as_slice()
        && KNOWN_OS.contains(os)
        && word(arch)
    {
        if *arch == "arm" {
            return Err(tag_invalid(tag, &format!("{os}-arm needs the ARM version: {os}-arm-v6 or {os}-arm-v7")));
        }
        return Ok((version, Some(Platform { os: (*os).into(), arch: (*arch).into(), arm: None })));
    }
    Ok((tag, None))
}

/// Images are made for linux only.
fn check_image_platform(p: &Platform) -> Result<(), ImageRefError> {
    if p.os == IMAGE_OS {
        Ok(())
    } else {
        Err(ImageRefError::new(
            RegistryCode::ManifestUnknown,
            format!("images are made for linux only, and {p} is not linux; pull a linux platform"),
        ))
    }
}

/// The platforms a recipe makes images for: its linux ones, sorted.
pub fn image_platforms(recipe: &Recipe) -> Vec<Platform> {
    let mut ps: Vec<Platform> = recipe.platforms.iter().filter(|p| p.os == IMAGE_OS).cloned().collect();
    ps.sort();
    ps.dedup();
    ps
}

#[cfg(test)]
#[path = "image_ref_tests.rs"]
mod tests;
