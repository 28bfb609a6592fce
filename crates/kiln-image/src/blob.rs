//! A local directory of blobs named by digest, laid out as an OCI image
//! layout's (and the object store's) `blobs/sha256/<hex>`.
//!
//! The worker makes one per attempt: layers, config and manifest are written
//! here first, then uploaded to the store under the same names. A blob is
//! written to a temporary file beside its final place, hashed on the way,
//! and renamed to its digest only when complete, so a name always holds the
//! bytes it names.

use std::fs;
use std::io::{self, BufWriter, Write};
use std::path::{Path, PathBuf};

use kiln_artifact::HashingWriter;
use kiln_domain::OciDigest;
use tempfile::NamedTempFile;

use crate::ImageError;

/// A content-addressed directory: `<root>/blobs/sha256/<hex>`.
#[derive(Debug, Clone)]
pub struct BlobDir {
    root: PathBuf,
    blobs: PathBuf,
}

impl BlobDir {
    /// Use (and create if needed) `root/blobs/sha256`.
    pub fn create(root: &Path) -> Result<Self, ImageError> {
        let blobs = root.join("blobs").join(kiln_domain::digest::ALGORITHM);
        fs::create_dir_all(&blobs).map_err(ImageError::io(&blobs))?;
        Ok(Self { root: root.to_owned(), blobs })
    }

    /// The directory holding `blobs/`.
    pub fn root(&self) -> &Path {
        &self.root
    }

    /// Where the blob `digest` is (or would be).
    pub fn path(&self, digest: &OciDigest) -> PathBuf {
        self.blobs.join(digest.hex())
    }

    pub fn contains(&self, digest: &OciDigest) -> bool {
        self.path(digest).is_file()
    }

    /// Store `bytes`; returns their digest and size. Storing the same bytes
    /// twice is harmless.
    pub fn put(&self, bytes: &[u8]) -> Result<(OciDigest, u64), ImageError> {
        let mut w = self.writer()?;
        w.write_all(bytes)?;
        w.finish()
    }

    /// A writer for a new blob whose digest is known once it is finished.
    pub fn writer(&self) -> Result<BlobWriter, ImageError> {
        let tmp = tempfile::Builder::new()
            .prefix(".partial-")
            .tempfile_in(&self.blobs)
            .map_err(ImageError::io(&self.blobs))?;
        Ok(BlobWriter { inner: HashingWriter::new(BufWriter::with_capacity(1 << 20, tmp)), dir: self.clone() })
    }
}

/// A blob being written; [`BlobWriter::finish`] names it by its digest.
/// Dropped unfinished, it leaves nothing behind.
#[derive(Debug)]
pub struct BlobWriter {
    inner: HashingWriter<BufWriter<NamedTempFile>>,
    dir: BlobDir,
}

impl BlobWriter {
    /// Flush, hash and move the blob to `blobs/sha256/<hex>`.
    pub fn finish(self) -> Result<(OciDigest, u64), ImageError> {
        let (buffered, hex, size) = self.inner.finish();
        let tmp = buffered.into_inner().map_err(|e| e.into_error())?;
        let digest = OciDigest::from_hex(&hex).expect("a SHA-256 in hex is a digest");
        let dest = self.dir.path(&digest);
        if dest.is_file() {
            // Content-addressed: the blob is already here, byte for byte.
            return Ok((digest, size));
        }
        tmp.persist(&dest).map_err(|e| ImageError::Io { path: dest, source: e.error })?;
        Ok((digest, size))
    }
}

impl Write for BlobWriter {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.inner.write(buf)
    }

    fn flush(&mut self) -> io::Result<()> {
        self.inner.flush()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn blobs_are_named_by_their_digest_and_stored_once() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = BlobDir::create(tmp.path()).unwrap();
        let (d, n) = dir.put(b"hello").unwrap();
        assert_eq!((d.clone(), n), (OciDigest::of(b"hello"), 5));
        assert_eq!(fs::read(dir.path(&d)).unwrap(), b"hello");
        assert_eq!(dir.path(&d), tmp.path().join("blobs/sha256").join(d.hex()));
        assert_eq!(dir.put(b"hello").unwrap().0, d);
        let mut w = dir.writer().unwrap();
        w.write_all(b"half").unwrap();
        drop(w);
        let names: Vec<_> =
            fs::read_dir(tmp.path().join("blobs/sha256")).unwrap().map(|e| e.unwrap().file_name()).collect();
        assert_eq!(names, [std::ffi::OsString::from(d.hex())], "an unfinished blob leaves nothing");
    }
}
