//! Object names under a build and the keys made from them.

use std::fmt;

use kiln_domain::BuildKey;

use crate::StorageError;

/// The objects a build may have. The set is closed: callers cannot name any
/// other object, so no caller-supplied text ever becomes part of a key.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum ObjectName {
    /// `artifact.tar`: the deterministic TAR of the build's `out/`.
    Artifact,
    /// `artifact.tar.minisig`: the minisign signature of the artifact.
    Signature,
    /// `log.txt`: the build log.
    Log,
    /// `build.json`: request, resolved versions, image digest, timings, sizes, hashes.
    Manifest,
    /// `binary`: the recipe's main binary, stored on its own so it can be
    /// served with `Range` and `ETag` without unpacking the TAR.
    Binary,
}

impl ObjectName {
    pub const ALL: [ObjectName; 5] =
        [ObjectName::Artifact, ObjectName::Signature, ObjectName::Log, ObjectName::Manifest, ObjectName::Binary];

    /// The object's file name under its build's prefix.
    pub fn file_name(self) -> &'static str {
        match self {
            ObjectName::Artifact => "artifact.tar",
            ObjectName::Signature => "artifact.tar.minisig",
            ObjectName::Log => "log.txt",
            ObjectName::Manifest => "build.json",
            ObjectName::Binary => "binary",
        }
    }

    /// The `Content-Type` the object is stored and served with.
    pub fn content_type(self) -> &'static str {
        match self {
            ObjectName::Artifact => "application/x-tar",
            ObjectName::Signature | ObjectName::Log => "text/plain; charset=utf-8",
            ObjectName::Manifest => "application/json",
            ObjectName::Binary => "application/octet-stream",
        }
    }

    /// The name whose [`file_name`](Self::file_name) is exactly `s`.
    pub(crate) fn from_file_name(s: &str) -> Option<ObjectName> {
        Self::ALL.into_iter().find(|n| n.file_name() == s)
    }
}

impl fmt::Display for ObjectName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.file_name())
    }
}

/// One object: a build and a name. Displayed as `<key>/<file name>`.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ObjectKey {
    build: BuildKey,
    name: ObjectName,
}

impl ObjectKey {
    pub fn new(build: &BuildKey, name: ObjectName) -> Self {
        Self { build: build.clone(), name }
    }

    /// An object named by text from outside (a URL segment, a CLI argument).
    /// Anything but a well-formed build key and a known file name is refused
    /// here, before any I/O; the error quotes at most a short, escaped prefix.
    pub fn parse(build: &str, name: &str) -> Result<Self, StorageError> {
        let key =
            BuildKey::parse(build).map_err(|e| StorageError::InvalidKey(format!("{}: {}", quote(build), e.message)))?;
        let name = ObjectName::from_file_name(name)
            .ok_or_else(|| StorageError::InvalidKey(format!("{}: not an object of a build", quote(name))))?;
        Ok(Self { build: key, name })
    }

    pub fn build(&self) -> &BuildKey {
        &self.build
    }

    pub(crate) fn name(&self) -> ObjectName {
        self.name
    }
}

impl fmt::Display for ObjectKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.build, self.name)
    }
}

/// A short, escaped rendering of untrusted text for error messages.
fn quote(s: &str) -> String {
    const MAX: usize = 80;
    let mut out: String = s.chars().take(MAX).flat_map(char::escape_debug).collect();
    if s.chars().count() > MAX {
        out.push('…');
    }
    format!("\"{out}\"")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn file_names_round_trip() {
        for n in ObjectName::ALL {
            assert_eq!(ObjectName::from_file_name(n.file_name()), Some(n));
        }
        assert_eq!(ObjectName::from_file_name("artifact.tar/../x"), None);
    }

    #[test]
    fn error_messages_quote_little_of_long_input() {
        let err = ObjectKey::parse(&"x".repeat(10 * 1024), "binary").unwrap_err().to_string();
        assert!(err.len() < 300, "{err}");
        let err = ObjectKey::parse("a\0b", "binary").unwrap_err().to_string();
        assert!(err.contains("\\0"), "{err}");
    }
}
