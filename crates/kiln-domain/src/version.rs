//! Versions: semver with an optional leading `v`, and how "latest" is chosen.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

use crate::ValidationError;
use crate::module::truncate;

/// A semantic version, always printed with a leading `v` as Go does.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Version(pub semver::Version);

impl Version {
    pub fn parse(field: &str, s: &str) -> Result<Self, ValidationError> {
        s.parse().map_err(|why| {
            ValidationError::new(
                field,
                "invalid_version",
                format!("{:?} is not a semantic version like v1.2.3: {why}", truncate(s)),
            )
        })
    }

    pub(crate) fn is_prerelease(&self) -> bool {
        !self.0.pre.is_empty()
    }
}

impl FromStr for Version {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        if s.len() > 128 {
            return Err("too long".into());
        }
        let bare = s.strip_prefix('v').unwrap_or(s);
        semver::Version::parse(bare).map(Version).map_err(|e| e.to_string())
    }
}

impl fmt::Display for Version {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "v{}", self.0)
    }
}

impl Serialize for Version {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for Version {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        String::deserialize(d)?.parse().map_err(serde::de::Error::custom)
    }
}

/// What a user asked for: the newest release, or one exact version.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum VersionWanted {
    Latest,
    Exact(Version),
}

impl VersionWanted {
    /// `None`, `""` and `"latest"` mean the newest release.
    pub fn parse(field: &str, s: Option<&str>) -> Result<Self, ValidationError> {
        match s.map(str::trim) {
            None | Some("") | Some("latest") => Ok(Self::Latest),
            Some(v) => Version::parse(field, v).map(Self::Exact),
        }
    }
}

/// Choose a version out of `available`: for `Latest` the highest release
/// (non-prerelease), or the highest prerelease when there is no release;
/// for `Exact`, the version itself if it is listed.
pub fn choose(field: &str, available: &[Version], wanted: &VersionWanted) -> Result<Version, ValidationError> {
    match wanted {
        VersionWanted::Exact(v) => {
            if available.contains(v) {
                Ok(v.clone())
            } else {
                Err(ValidationError::new(
                    field,
                    "unknown_version",
                    format!("version {v} does not exist; known versions: {}", list(available)),
                ))
            }
        }
        VersionWanted::Latest => available
            .iter()
            .filter(|v| !v.is_prerelease())
            .max()
            .or_else(|| available.iter().max())
            .cloned()
            .ok_or_else(|| ValidationError::new(field, "unknown_version", "no versions are available")),
    }
}

fn list(vs: &[Version]) -> String {
    let mut v: Vec<_> = vs.iter().map(|v| v.to_string()).collect();
    v.truncate(20);
    v.join(", ")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn vs(list: &[&str]) -> Vec<Version> {
        list.iter().map(|s| s.parse().unwrap()).collect()
    }

    #[test]
    fn parses_with_and_without_v() {
        assert_eq!(Version::parse("version", "1.2.3").unwrap().to_string(), "v1.2.3");
        assert_eq!(Version::parse("version", "v1.2.3-beta.1").unwrap().to_string(), "v1.2.3-beta.1");
        for bad in ["", "v", "1.2", "v1.2.3; rm", "vv1.2.3", "01.2.3", "1.2.3\n"] {
            assert_eq!(Version::parse("version", bad).unwrap_err().code, "invalid_version", "{bad:?}");
        }
    }

    #[test]
    fn latest_skips_prereleases_unless_asked_exactly() {
        let av = vs(&["v1.0.0", "v1.1.0", "v1.2.0-beta.1"]);
        assert_eq!(choose("v", &av, &VersionWanted::Latest).unwrap().to_string(), "v1.1.0");
        let pre = VersionWanted::parse("v", Some("v1.2.0-beta.1")).unwrap();
        assert_eq!(choose("v", &av, &pre).unwrap().to_string(), "v1.2.0-beta.1");
        let missing = VersionWanted::parse("v", Some("v9.9.9")).unwrap();
        assert_eq!(choose("v", &av, &missing).unwrap_err().code, "unknown_version");
        assert_eq!(choose("v", &vs(&["v2.0.0-rc.1"]), &VersionWanted::Latest).unwrap().to_string(), "v2.0.0-rc.1");
    }
}
