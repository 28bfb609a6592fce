//! The error type of this crate.

use std::path::PathBuf;

/// What went wrong while packing, extracting, signing or verifying.
#[derive(Debug, thiserror::Error)]
pub enum ArtifactError {
    #[error("{path}: {source}")]
    Io { path: PathBuf, source: std::io::Error },
    #[error("{0}")]
    ReadWrite(#[from] std::io::Error),
    /// The directory holds something a TAR artifact must not carry.
    #[error("{path}: {reason}")]
    Unpackable { path: PathBuf, reason: String },
    /// The file asked for is not a regular file in the archive.
    #[error("{0}: no such regular file in the archive")]
    NotInArchive(String),
    /// A key file could not be read or parsed.
    #[error("invalid key: {0}")]
    InvalidKey(String),
    /// The key file already exists and overwriting was not asked for.
    #[error("{0}: already exists")]
    KeyExists(PathBuf),
    /// A trusted comment that minisign cannot carry.
    #[error("invalid trusted comment: {0}")]
    InvalidComment(String),
    /// The signature is malformed, made by another key, or does not match the data.
    #[error("bad signature: {0}")]
    BadSignature(String),
    #[error("signing failed: {0}")]
    Sign(String),
}

impl ArtifactError {
    pub(crate) fn io(path: impl Into<PathBuf>) -> impl FnOnce(std::io::Error) -> ArtifactError {
        let path = path.into();
        move |source| ArtifactError::Io { path, source }
    }
}
