//! The error type of this crate.

use std::path::PathBuf;

/// What went wrong while making, importing or archiving an image.
#[derive(Debug, thiserror::Error)]
pub enum ImageError {
    #[error("{path}: {source}")]
    Io { path: PathBuf, source: std::io::Error },
    #[error("{0}")]
    ReadWrite(#[from] std::io::Error),
    /// The recipe asks for a file the build did not make (or not as a
    /// regular file): the build's fault, final.
    #[error("{0}")]
    MissingFile(String),
    /// The base image's platform is not the build's, and the recipe does not
    /// allow that: a configuration problem, final.
    #[error(
        "base image {base} is {found}, not {wanted}; name a base for each platform (oci.base is rendered like a step argument) or set oci.base_any_platform"
    )]
    BasePlatform { base: String, found: String, wanted: String },
    /// The build's platform has no image (only linux builds do).
    #[error("{0}")]
    Platform(String),
    /// A path or name a plain USTAR header cannot carry.
    #[error("{0}")]
    Path(String),
    /// A `docker save` archive that is not what Docker writes.
    #[error("base image archive: {0}")]
    BadArchive(String),
    /// Bytes that do not hash to the digest they are stored under.
    #[error("{what}: expected {expected}, got {actual}")]
    DigestMismatch { what: String, expected: String, actual: String },
    /// A stored manifest that is not one of ours.
    #[error("manifest: {0}")]
    BadManifest(String),
}

impl ImageError {
    pub(crate) fn io(path: impl Into<PathBuf>) -> impl FnOnce(std::io::Error) -> ImageError {
        let path = path.into();
        move |source| ImageError::Io { path, source }
    }

    /// Whether retrying cannot help: the recipe or the build's output is at
    /// fault (a missing file, a base of the wrong platform, a non-linux
    /// build). Everything else (I/O, a damaged export) is infrastructure.
    pub fn is_build_failure(&self) -> bool {
        matches!(
            self,
            ImageError::MissingFile(_)
                | ImageError::BasePlatform { .. }
                | ImageError::Platform(_)
                | ImageError::Path(_)
        )
    }
}
