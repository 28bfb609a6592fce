//! `image.tar`: a build's image as one TAR that both `docker load` and
//! `skopeo copy oci-archive:` read, made from stored blobs as a stream.
//!
//! The archive is an OCI image layout (`oci-layout`, `index.json`,
//! `blobs/sha256/<hex>`) with Docker's `manifest.json` beside it, naming the
//! same blob files as config and layers: Docker Engine 20.10's `docker load`
//! reads only that file (and decompresses gzip layers itself), while
//! containers/image reads only the layout. Entries are sorted (`blobs/…`,
//! `index.json`, `manifest.json`, `oci-layout`), headers are plain USTAR
//! with mtime 0 and owner 0, so the same image and tags give the same bytes.
//!
//! An [`ArchivePlan`] is the archive as a list of parts, literal bytes and
//! blobs by digest, with every length known before a byte is sent: an HTTP
//! handler can announce `Content-Length`, then send the literal parts and
//! stream each blob from storage in turn; [`ArchivePlan::write_to`] does the
//! same into any `io::Write`, checking each blob against its digest.

use std::collections::BTreeMap;
use std::io::{self, Read, Write};

use kiln_artifact::HashingWriter;
use kiln_domain::OciDigest;
use kiln_domain::image_ref::{MAX_NAME_LEN, MAX_TAG_LEN, is_path_component};
use serde::Serialize;

use crate::ImageError;
use crate::manifest::{Descriptor, ImageIndex, ImageManifest, MEDIA_TYPE_INDEX, MEDIA_TYPE_MANIFEST};
use crate::ustar::{self, Kind};

/// The `oci-layout` file.
pub const OCI_LAYOUT: &[u8] = br#"{"imageLayoutVersion":"1.0.0"}"#;
/// The annotation naming an image in an OCI layout's `index.json` (the tag).
pub const ANNOTATION_REF_NAME: &str = "org.opencontainers.image.ref.name";
/// The annotation containerd's import reads for the full name.
pub const ANNOTATION_IMAGE_NAME: &str = "io.containerd.image.name";

const DIR_MODE: u32 = 0o755;
const FILE_MODE: u32 = 0o644;

/// One stretch of the archive.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ArchivePart {
    /// Headers, padding and the small JSON files, literally.
    Bytes(Vec<u8>),
    /// The stored blob `digest`, exactly `size` bytes.
    Blob { digest: OciDigest, size: u64 },
}

impl ArchivePart {
    pub fn len(&self) -> u64 {
        match self {
            ArchivePart::Bytes(b) => b.len() as u64,
            ArchivePart::Blob { size, .. } => *size,
        }
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// The whole archive of one platform's image, as parts.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ArchivePlan {
    parts: Vec<ArchivePart>,
    len: u64,
}

/// One image in Docker's `manifest.json`.
#[derive(Serialize)]
struct DockerManifest<'a> {
    #[serde(rename = "Config")]
    config: String,
    #[serde(rename = "RepoTags")]
    repo_tags: &'a [String],
    #[serde(rename = "Layers")]
    layers: Vec<String>,
}

impl ArchivePlan {
    /// Plan the archive of the image whose manifest is `manifest` (its
    /// bytes as stored) described by `descriptor` (digest, size, platform,
    /// as `build.json` records it). `repo_tags` name the image after
    /// `docker load` (`farm:8234/hello:v1.0.0-linux-amd64`); the first one
    /// also names it in `index.json`. None is fine: the image then loads
    /// untagged.
    pub fn new(manifest: &[u8], descriptor: &Descriptor, repo_tags: &[String]) -> Result<Self, ImageError> {
        let actual = OciDigest::of(manifest);
        if actual != descriptor.digest || manifest.len() as u64 != descriptor.size {
            return Err(ImageError::DigestMismatch {
                what: "stored manifest".into(),
                expected: format!("{} ({} bytes)", descriptor.digest, descriptor.size),
                actual: format!("{actual} ({} bytes)", manifest.len()),
            });
        }
        if descriptor.media_type != MEDIA_TYPE_MANIFEST {
            return Err(ImageError::BadManifest(format!("{} is not an image manifest", descriptor.media_type)));
        }
        for tag in repo_tags {
            check_repo_tag(tag)?;
        }
        let parsed = ImageManifest::parse(manifest)?;
        let blob_path = |d: &OciDigest| format!("blobs/sha256/{}", d.hex());

        let mut blobs: BTreeMap<String, ArchivePart> = BTreeMap::new();
        blobs.insert(actual.hex().to_owned(), ArchivePart::Bytes(manifest.to_vec()));
        for d in std::iter::once(&parsed.config).chain(&parsed.layers) {
            blobs.insert(d.digest.hex().to_owned(), ArchivePart::Blob { digest: d.digest.clone(), size: d.size });
        }

        let mut entry = descriptor.clone();
        if let Some(first) = repo_tags.first() {
            let tag = first.rsplit_once(':').map_or(first.as_str(), |(_, t)| t);
            entry.annotations.insert(ANNOTATION_IMAGE_NAME.into(), first.clone());
            entry.annotations.insert(ANNOTATION_REF_NAME.into(), tag.to_owned());
        }
        let index = ImageIndex { schema_version: 2, media_type: MEDIA_TYPE_INDEX.into(), manifests: vec![entry] };
        let docker = [DockerManifest {
            config: blob_path(&parsed.config.digest),
            repo_tags,
            layers: parsed.layers.iter().map(|l| blob_path(&l.digest)).collect(),
        }];

        let mut plan = Builder::default();
        plan.dir("blobs")?;
        plan.dir("blobs/sha256")?;
        for (hex, part) in blobs {
            plan.file(&format!("blobs/sha256/{hex}"), part)?;
        }
        plan.file("index.json", ArchivePart::Bytes(json(&index)))?;
        plan.file("manifest.json", ArchivePart::Bytes(json(&docker)))?;
        plan.file("oci-layout", ArchivePart::Bytes(OCI_LAYOUT.to_vec()))?;
        plan.bytes(&ustar::END);
        Ok(plan.finish())
    }

    /// The archive's length in bytes.
    pub fn len(&self) -> u64 {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// The parts in order; literal bytes never come twice in a row.
    pub fn parts(&self) -> &[ArchivePart] {
        &self.parts
    }

    /// Write the archive to `out`, reading each blob from what `open`
    /// returns for its digest. A blob shorter than planned or with other
    /// bytes is [`ImageError::DigestMismatch`] (the output is then cut
    /// short: a client sees a broken download, never a wrong image).
    pub fn write_to<W: Write, R: Read>(
        &self,
        mut out: W,
        mut open: impl FnMut(&OciDigest) -> io::Result<R>,
    ) -> Result<W, ImageError> {
        for part in &self.parts {
            match part {
                ArchivePart::Bytes(b) => out.write_all(b)?,
                ArchivePart::Blob { digest, size } => {
                    let mut hashing = HashingWriter::new(&mut out);
                    let copied = io::copy(&mut open(digest)?.take(*size), &mut hashing)?;
                    let (_, hex, _) = hashing.finish();
                    if copied != *size || hex != digest.hex() {
                        return Err(ImageError::DigestMismatch {
                            what: format!("blob {digest}"),
                            expected: format!("{size} bytes"),
                            actual: format!("{copied} bytes hashing to sha256:{hex}"),
                        });
                    }
                }
            }
        }
        Ok(out)
    }
}

/// Accumulates parts, merging literal bytes.
#[derive(Default)]
struct Builder {
    parts: Vec<ArchivePart>,
}

impl Builder {
    fn bytes(&mut self, b: &[u8]) {
        if b.is_empty() {
            return;
        }
        match self.parts.last_mut() {
            Some(ArchivePart::Bytes(last)) => last.extend_from_slice(b),
            _ => self.parts.push(ArchivePart::Bytes(b.to_vec())),
        }
    }

    fn dir(&mut self, name: &str) -> Result<(), ImageError> {
        self.bytes(&ustar::header(name, Kind::Dir, DIR_MODE, 0)?);
        Ok(())
    }

    fn file(&mut self, name: &str, content: ArchivePart) -> Result<(), ImageError> {
        let size = content.len();
        self.bytes(&ustar::header(name, Kind::File, FILE_MODE, size)?);
        match content {
            ArchivePart::Bytes(b) => self.bytes(&b),
            blob => self.parts.push(blob),
        }
        self.bytes(&[0; ustar::BLOCK][..ustar::padding(size)]);
        Ok(())
    }

    fn finish(self) -> ArchivePlan {
        let len = self.parts.iter().map(ArchivePart::len).sum();
        ArchivePlan { parts: self.parts, len }
    }
}

fn json(value: &impl Serialize) -> Vec<u8> {
    serde_json::to_vec(value).expect("archive JSON always serializes")
}

/// A name `docker load` accepts as a repo tag: `[host[:port]/]path:tag`.
fn check_repo_tag(tag: &str) -> Result<(), ImageError> {
    let bad = |why: &str| {
        ImageError::Path(format!("{:?} cannot name a loaded image: {why}", tag.chars().take(80).collect::<String>()))
    };
    let (name, t) = tag.rsplit_once(':').filter(|(_, t)| !t.contains('/')).ok_or_else(|| bad("it needs a :tag"))?;
    let tag_ok = !t.is_empty()
        && t.len() <= MAX_TAG_LEN
        && !t.starts_with(['.', '-'])
        && t.bytes().all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'.' | b'-'));
    if !tag_ok {
        return Err(bad("the tag is letters, digits, '_', '.' and '-'"));
    }
    if name.len() > MAX_NAME_LEN {
        return Err(bad("the name is too long"));
    }
    let mut components = name.split('/').peekable();
    let first = components.next().unwrap_or_default();
    let is_host = components.peek().is_some() && (first.contains(['.', ':']) || first == "localhost");
    let host_ok = |h: &str| {
        let (host, port) = h.split_once(':').unwrap_or((h, "1"));
        !host.is_empty()
            && host.bytes().all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'-'))
            && !port.is_empty()
            && port.bytes().all(|b| b.is_ascii_digit())
    };
    let first_ok = if is_host { host_ok(first) } else { is_path_component(first) };
    if !first_ok || !components.all(is_path_component) {
        return Err(bad("the name is lowercase path components, after an optional host[:port]/"));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn repo_tags_are_what_docker_load_accepts() {
        for ok in [
            "hello:v1",
            "127.0.0.1:8234/hello/example.com__greet:v1.0.0-linux-amd64",
            "localhost/x:y",
            "kiln-test/busybox:latest",
        ] {
            assert!(check_repo_tag(ok).is_ok(), "{ok}");
        }
        for bad in [
            "hello",
            "Hello:v1",
            "hello:",
            "hello:-x",
            "host:99999x/a:b",
            "a//b:c",
            "a b:c",
            "hello:v1/x",
            "hello:v1\n",
        ] {
            assert!(check_repo_tag(bad).is_err(), "{bad}");
        }
    }
}
