//! Object names under a build, the shared objects of images, and the keys
//! made from them.

use std::fmt;

use kiln_domain::{BuildKey, OciDigest};

use crate::StorageError;

/// The objects a build may have ([`ObjectName::ALL`]), and the kinds of
/// shared, content-addressed objects images are made of (`Blob`, `Index`,
/// `Base`, named by a digest, never under a build). The set is closed:
/// callers cannot name any other object, so no caller-supplied text ever
/// becomes part of a key.
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
    /// `image.minisig`: the minisign signature of the build's image manifest.
    ImageSignature,
    /// `blobs/sha256/<hex>`: a layer, config, manifest or index of an image,
    /// shared by every build whose image holds it.
    Blob,
    /// `indexes/<hex>`: the image index over a set of platform manifests.
    Index,
    /// `bases/<hex>.json`: a base image, converted, by its Docker image id.
    Base,
}

impl ObjectName {
    /// The objects a build may have under its prefix.
    pub const ALL: [ObjectName; 6] = [
        ObjectName::Artifact,
        ObjectName::Signature,
        ObjectName::Log,
        ObjectName::Manifest,
        ObjectName::Binary,
        ObjectName::ImageSignature,
    ];

    /// The object's file name under its build's prefix (for the shared
    /// kinds, a word that names the kind).
    pub fn file_name(self) -> &'static str {
        match self {
            ObjectName::Artifact => "artifact.tar",
            ObjectName::Signature => "artifact.tar.minisig",
            ObjectName::Log => "log.txt",
            ObjectName::Manifest => "build.json",
            ObjectName::Binary => "binary",
            ObjectName::ImageSignature => "image.minisig",
            ObjectName::Blob => "blob",
            ObjectName::Index => "index",
            ObjectName::Base => "base.json",
        }
    }

    /// The `Content-Type` the object is stored and served with.
    pub fn content_type(self) -> &'static str {
        match self {
            ObjectName::Artifact => "application/x-tar",
            ObjectName::Signature | ObjectName::Log | ObjectName::ImageSignature => "text/plain; charset=utf-8",
            ObjectName::Manifest | ObjectName::Base => "application/json",
            ObjectName::Binary | ObjectName::Blob => "application/octet-stream",
            ObjectName::Index => "application/vnd.oci.image.index.v1+json",
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

/// One object: a build and a name, displayed as `<key>/<file name>`; or a
/// shared object of images named by its digest, displayed as its relative
/// key (`blobs/sha256/<hex>`, `indexes/<hex>`, `bases/<hex>.json`).
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ObjectKey {
    place: Place,
    name: ObjectName,
}

#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
enum Place {
    Build(BuildKey),
    Shared(OciDigest),
}

impl ObjectKey {
    /// Object `name` of a build. `name` must be one of [`ObjectName::ALL`].
    pub fn new(build: &BuildKey, name: ObjectName) -> Self {
        debug_assert!(ObjectName::ALL.contains(&name), "{name:?} is not an object of a build");
        Self { place: Place::Build(build.clone()), name }
    }

    /// The blob `digest` (`blobs/sha256/<hex>`).
    pub fn blob(digest: &OciDigest) -> Self {
        Self { place: Place::Shared(digest.clone()), name: ObjectName::Blob }
    }

    /// The stored index whose key is `digest` (`indexes/<hex>`).
    pub fn index(digest: &OciDigest) -> Self {
        Self { place: Place::Shared(digest.clone()), name: ObjectName::Index }
    }

    /// The converted base image whose Docker id is `id` (`bases/<hex>.json`).
    pub fn base(id: &OciDigest) -> Self {
        Self { place: Place::Shared(id.clone()), name: ObjectName::Base }
    }

    /// The key relative to the store's root, as segments.
    pub(crate) fn segments(&self) -> Vec<String> {
        match &self.place {
            Place::Build(b) => vec![b.as_str().to_owned(), self.name.file_name().to_owned()],
            Place::Shared(d) => match self.name {
                ObjectName::Index => vec!["indexes".into(), d.hex().to_owned()],
                ObjectName::Base => vec!["bases".into(), format!("{}.json", d.hex())],
                _ => vec!["blobs".into(), kiln_domain::digest::ALGORITHM.into(), d.hex().to_owned()],
            },
        }
    }

    /// An object named by text from outside (a URL segment, a CLI argument).
    /// Anything but a well-formed build key and a known file name is refused
    /// here, before any I/O; the error quotes at most a short, escaped prefix.
    pub fn parse(build: &str, name: &str) -> Result<Self, StorageError> {
        let key =
            BuildKey::parse(build).map_err(|e| StorageError::InvalidKey(format!("{}: {}", quote(build), e.message)))?;
        let name = ObjectName::from_file_name(name)
            .ok_or_else(|| StorageError::InvalidKey(format!("{}: not an object of a build", quote(name))))?;
        Ok(Self { place: Place::Build(key), name })
    }

    /// The build the object belongs to; `None` for a shared object.
    pub fn build(&self) -> Option<&BuildKey> {
        match &self.place {
            Place::Build(b) => Some(b),
            Place::Shared(_) => None,
        }
    }

    pub(crate) fn name(&self) -> ObjectName {
        self.name
    }

    /// The kind and digest of a shared object; `None` for a build's object.
    pub fn shared(&self) -> Option<(ObjectName, &OciDigest)> {
        match &self.place {
            Place::Build(_) => None,
            Place::Shared(d) => Some((self.name, d)),
        }
    }

    /// The shared object at `segments` (relative to the store's root), the
    /// inverse of [`segments`](Self::segments); `None` for anything else.
    pub(crate) fn parse_shared(segments: &[&str]) -> Option<Self> {
        let digest = |hex: &str| OciDigest::parse(&format!("{}:{hex}", kiln_domain::digest::ALGORITHM)).ok();
        match segments {
            ["blobs", alg, hex] if *alg == kiln_domain::digest::ALGORITHM => digest(hex).map(|d| Self::blob(&d)),
            ["indexes", hex] => digest(hex).map(|d| Self::index(&d)),
            ["bases", file] => file.strip_suffix(".json").and_then(digest).map(|d| Self::base(&d)),
            _ => None,
        }
    }
}

impl fmt::Display for ObjectKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.segments().join("/"))
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
        assert_eq!(ObjectName::from_file_name("blob"), None, "shared kinds are no build's objects");
    }

    #[test]
    fn shared_objects_are_named_by_digest() {
        let d = OciDigest::of(b"x");
        assert_eq!(ObjectKey::blob(&d).to_string(), format!("blobs/sha256/{}", d.hex()));
        assert_eq!(ObjectKey::index(&d).to_string(), format!("indexes/{}", d.hex()));
        assert_eq!(ObjectKey::base(&d).to_string(), format!("bases/{}.json", d.hex()));
        assert_eq!(ObjectKey::blob(&d).build(), None);
        for key in [ObjectKey::blob(&d), ObjectKey::index(&d), ObjectKey::base(&d)] {
            let segments = key.segments();
            let segments: Vec<&str> = segments.iter().map(String::as_str).collect();
            assert_eq!(ObjectKey::parse_shared(&segments), Some(key.clone()));
            assert_eq!(key.shared().map(|(_, d)| d), Some(&d));
        }
        for bad in [&["blobs", "md5", d.hex()][..], &["bases", d.hex()], &["indexes", "XYZ"], &["blobs", "sha256"]] {
            assert_eq!(ObjectKey::parse_shared(bad), None, "{bad:?}");
        }
    }

    #[test]
    fn error_messages_quote_little_of_long_input() {
        let err = ObjectKey::parse(&"x".repeat(10 * 1024), "binary").unwrap_err().to_string();
        assert!(err.len() < 300, "{err}");
        let err = ObjectKey::parse("a\0b", "binary").unwrap_err().to_string();
        assert!(err.contains("\\0"), "{err}");
    }
}
