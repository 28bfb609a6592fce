//! The error type of the storage layer.

use std::path::PathBuf;

/// What went wrong talking to the object store.
#[derive(Debug, thiserror::Error)]
pub enum StorageError {
    /// Text from outside that does not name an object; refused before any I/O.
    #[error("invalid object key: {0}")]
    InvalidKey(String),
    /// The object does not exist.
    #[error("{0}: no such object")]
    NotFound(String),
    /// The requested byte range lies outside the object.
    #[error("{key}: range not satisfiable for an object of {size} bytes")]
    RangeNotSatisfiable { key: String, size: u64 },
    /// The `storage` configuration cannot be used.
    #[error("storage configuration: {0}")]
    Config(String),
    /// Presigned URLs exist only for S3 storage.
    #[error("presigned URLs need S3 storage")]
    PresignUnsupported,
    /// A local file to upload could not be read.
    #[error("{path}: {source}")]
    Source { path: PathBuf, source: std::io::Error },
    /// The stream being uploaded failed.
    #[error("{key}: reading the upload failed: {source}")]
    Upload { key: String, source: std::io::Error },
    /// The backend failed.
    #[error("{key}: {source}")]
    Backend { key: String, source: object_store::Error },
}

impl StorageError {
    /// Wrap a backend error about `key`, keeping "not found" distinguishable.
    pub(crate) fn backend(key: impl std::fmt::Display) -> impl FnOnce(object_store::Error) -> StorageError {
        let key = key.to_string();
        move |source| match source {
            object_store::Error::NotFound { .. } => StorageError::NotFound(key),
            source => StorageError::Backend { key, source },
        }
    }

    pub fn is_not_found(&self) -> bool {
        matches!(self, StorageError::NotFound(_))
    }
}
