//! Deterministic `tar+gzip` layers: the TAR hashed for its diff_id, then
//! compressed with pinned settings and hashed again for its digest, in one
//! pass.
//!
//! Compression is flate2 over miniz_oxide only (no zlib a feature elsewhere
//! could switch in), both at pinned versions, level [`GZIP_LEVEL`], with a
//! gzip header of mtime 0, no file name and OS 255 ("unknown"); the same TAR
//! always gives the same blob.

use std::io::{self, Read, Write};

use flate2::write::GzEncoder;
use flate2::{Compression, GzBuilder};
use kiln_artifact::HashingWriter;
use kiln_domain::OciDigest;
use serde::{Deserialize, Serialize};

use crate::ImageError;
use crate::ustar::{self, Kind};

/// The gzip level of every layer Kiln writes.
pub const GZIP_LEVEL: u32 = 6;

/// One layer blob: its digest and size as stored (compressed), and its
/// diff_id (the digest of the uncompressed TAR, as the config lists it).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Layer {
    pub digest: OciDigest,
    pub size: u64,
    pub diff_id: OciDigest,
}

/// A gzip encoder with Kiln's pinned settings.
pub fn gzip<W: Write>(out: W) -> GzEncoder<W> {
    GzBuilder::new().mtime(0).operating_system(255).write(out, Compression::new(GZIP_LEVEL))
}

type Pipeline<W> = HashingWriter<GzEncoder<HashingWriter<W>>>;

/// Writes a layer: TAR entries in, a gzip blob out.
#[derive(Debug)]
pub struct LayerWriter<W: Write> {
    out: Pipeline<W>,
}

impl<W: Write> LayerWriter<W> {
    pub fn new(out: W) -> Self {
        Self { out: HashingWriter::new(gzip(HashingWriter::new(out))) }
    }

    /// A directory entry.
    pub fn dir(&mut self, name: &str, mode: u32) -> Result<(), ImageError> {
        self.out.write_all(&ustar::header(name, Kind::Dir, mode, 0)?)?;
        Ok(())
    }

    /// A regular file of exactly `size` bytes read from `data`.
    pub fn file(&mut self, name: &str, mode: u32, size: u64, data: impl Read) -> Result<(), ImageError> {
        self.out.write_all(&ustar::header(name, Kind::File, mode, size)?)?;
        let copied = io::copy(&mut data.take(size), &mut self.out)?;
        if copied != size {
            return Err(ImageError::MissingFile(format!("{name}: {copied} of {size} bytes could be read")));
        }
        self.out.write_all(&[0; ustar::BLOCK][..ustar::padding(size)])?;
        Ok(())
    }

    /// A whole uncompressed TAR stream, copied as it is (a base image's layer).
    pub fn raw_tar(&mut self, mut tar: impl Read) -> Result<(), ImageError> {
        io::copy(&mut tar, &mut self.out)?;
        Ok(())
    }

    /// End the archive (unless `raw_tar` wrote a whole one) and the gzip
    /// stream; returns the inner writer and the layer's digests.
    pub fn finish(self, end_archive: bool) -> Result<(W, Layer), ImageError> {
        let mut out = self.out;
        if end_archive {
            out.write_all(&ustar::END)?;
        }
        let (gz, diff_hex, _) = out.finish();
        let (hashing, digest_hex, size) = gz.finish()?.finish();
        let layer = Layer {
            digest: OciDigest::from_hex(&digest_hex).expect("hex of a SHA-256"),
            size,
            diff_id: OciDigest::from_hex(&diff_hex).expect("hex of a SHA-256"),
        };
        Ok((hashing, layer))
    }
}

#[cfg(test)]
mod tests {
    use std::io::Read;

    use super::*;

    fn layer() -> (Vec<u8>, Layer) {
        let mut w = LayerWriter::new(Vec::new());
        w.dir("usr", 0o755).unwrap();
        w.file("usr/x", 0o644, 3, &b"abc"[..]).unwrap();
        w.finish(true).unwrap()
    }

    #[test]
    fn digests_are_of_the_blob_and_of_the_tar_inside() {
        let (blob, l) = layer();
        assert_eq!(l.digest, OciDigest::of(&blob));
        assert_eq!(l.size, blob.len() as u64);
        let mut tar = Vec::new();
        flate2::read::GzDecoder::new(&blob[..]).read_to_end(&mut tar).unwrap();
        assert_eq!(l.diff_id, OciDigest::of(&tar));
        assert_eq!(tar.len(), 512 + 512 + 512 + 1024);
        // The gzip header: magic, deflate, no flags, mtime 0, XFL, OS 255.
        assert_eq!(&blob[..10], &[0x1f, 0x8b, 8, 0, 0, 0, 0, 0, 0, 255]);
    }

    #[test]
    fn the_compressor_is_the_pinned_one() {
        // Fixed input, fixed output: a different deflate backend, version or
        // level would change this layer's digest, and every published one.
        let mut w = LayerWriter::new(Vec::new());
        let text: Vec<u8> = (0..20_000u32).flat_map(|i| format!("line {i} of a pinned layer\n").into_bytes()).collect();
        w.file("data.txt", 0o644, text.len() as u64, &text[..]).unwrap();
        let (_, l) = w.finish(true).unwrap();
        assert_eq!(l.diff_id.as_str(), "sha256:78136f332611d21f89165275fcc8095efce47a8bcf01fc2fde2bd9eb5576ef69");
        assert_eq!(l.digest.as_str(), "sha256:c4956c6d568747b5974aaffa545d4476a50fa482179d5906b2800ec0b83b1d23");
    }

    #[test]
    fn a_short_file_is_an_error() {
        let mut w = LayerWriter::new(Vec::new());
        assert!(w.file("x", 0o644, 10, &b"abc"[..]).is_err());
    }
}
