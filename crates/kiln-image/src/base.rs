//! Base images from the worker's Docker engine, read from a `docker save`
//! archive (what bollard's `export_image` streams) and turned into OCI
//! `tar+gzip` layer blobs.
//!
//! Both archive shapes are read: Docker 20.10's (`manifest.json`, a
//! `<id>.json` config, `<id>/layer.tar` uncompressed, possibly symlinked to
//! one another) and the OCI-layout one newer engines write (`blobs/sha256/…`,
//! layers uncompressed or gzip). Each layer's uncompressed TAR is checked
//! against the config's `rootfs.diff_ids`, then compressed with the pinned
//! settings of [`crate::layer`], so the same base image always gives the
//! same blobs, which every build over it shares. The result, [`BaseImage`],
//! is serializable so a worker can remember it by the image's id and skip
//! the export next time.

use std::collections::BTreeMap;
use std::fs::File;
use std::io::{self, BufReader, Read};
use std::path::Path;

use flate2::read::MultiGzDecoder;
use kiln_domain::OciDigest;
use serde::{Deserialize, Serialize};
use tar::{Archive, EntryType};

use crate::ImageError;
use crate::blob::BlobDir;
use crate::layer::{Layer, LayerWriter};
use crate::manifest::OciPlatform;

/// The largest JSON document read from an archive.
const MAX_JSON: u64 = 16 << 20;
/// Links followed in a row before giving up.
const MAX_LINK_DEPTH: usize = 8;

/// A base image, converted: its layers as blobs and its config's defaults.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct BaseImage {
    /// The name it was exported by (`kiln-test/busybox:latest`).
    pub name: String,
    /// Its id: the digest of its config as Docker stores it.
    pub id: OciDigest,
    /// Its platform, as its config says.
    pub platform: OciPlatform,
    pub defaults: BaseDefaults,
    /// Bottom first.
    pub layers: Vec<Layer>,
}

/// What an image over the base inherits unless the recipe says otherwise.
/// The base's entrypoint and command are not inherited: the image runs the
/// build's binary.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct BaseDefaults {
    pub env: Vec<String>,
    pub user: Option<String>,
    pub working_dir: Option<String>,
    pub exposed_ports: Vec<String>,
    pub labels: BTreeMap<String, String>,
    pub stop_signal: Option<String>,
}

/// Docker's `manifest.json`: one object per saved image.
#[derive(Debug, Deserialize)]
struct SavedImage {
    #[serde(rename = "Config")]
    config: String,
    #[serde(rename = "Layers")]
    layers: Vec<String>,
}

/// The parts of a Docker (or OCI) image config that matter here.
#[derive(Debug, Deserialize)]
struct ConfigIn {
    architecture: String,
    os: String,
    #[serde(default)]
    variant: Option<String>,
    #[serde(default)]
    config: Option<RunConfigIn>,
    rootfs: RootFsIn,
}

#[derive(Debug, Default, Deserialize)]
#[serde(default)]
struct RunConfigIn {
    #[serde(rename = "Env")]
    env: Option<Vec<String>>,
    #[serde(rename = "User")]
    user: Option<String>,
    #[serde(rename = "WorkingDir")]
    working_dir: Option<String>,
    #[serde(rename = "ExposedPorts")]
    exposed_ports: Option<BTreeMap<String, serde_json::Value>>,
    #[serde(rename = "Labels")]
    labels: Option<BTreeMap<String, String>>,
    #[serde(rename = "StopSignal")]
    stop_signal: Option<String>,
}

#[derive(Debug, Deserialize)]
struct RootFsIn {
    diff_ids: Vec<OciDigest>,
}

/// Read a `docker save` archive of one image from `archive`, write its
/// layers into `blobs` (already present ones are kept), and describe it.
/// `scratch` holds the archive's files while it is read; it should be an
/// empty directory on the same disk, and may be removed afterwards.
pub fn import_docker_archive(
    name: &str,
    archive: impl Read,
    scratch: &Path,
    blobs: &BlobDir,
) -> Result<BaseImage, ImageError> {
    let files = unpack(archive, scratch)?;
    let manifest: Vec<SavedImage> = serde_json::from_slice(&files.read_small("manifest.json")?)
        .map_err(|e| ImageError::BadArchive(format!("manifest.json: {e}")))?;
    let [saved] = manifest.as_slice() else {
        return Err(ImageError::BadArchive(format!("{} images in the archive, not one", manifest.len())));
    };
    let config_bytes = files.read_small(&saved.config)?;
    let id = OciDigest::of(&config_bytes);
    let config: ConfigIn = serde_json::from_slice(&config_bytes)
        .map_err(|e| ImageError::BadArchive(format!("{}: not an image config: {e}", saved.config)))?;
    if config.rootfs.diff_ids.len() != saved.layers.len() {
        return Err(ImageError::BadArchive(format!(
            "the config lists {} layers, the archive {}",
            config.rootfs.diff_ids.len(),
            saved.layers.len()
        )));
    }

    let mut layers = Vec::with_capacity(saved.layers.len());
    for (path, diff_id) in saved.layers.iter().zip(&config.rootfs.diff_ids) {
        let layer = recompress(files.open(path)?, blobs)?;
        if &layer.diff_id != diff_id {
            return Err(ImageError::DigestMismatch {
                what: format!("base image layer {path}"),
                expected: diff_id.to_string(),
                actual: layer.diff_id.to_string(),
            });
        }
        layers.push(layer);
    }

    let run = config.config.unwrap_or_default();
    Ok(BaseImage {
        name: name.to_owned(),
        id,
        platform: OciPlatform {
            architecture: config.architecture,
            os: config.os,
            variant: config.variant.filter(|v| !v.is_empty()),
        },
        defaults: BaseDefaults {
            env: run.env.unwrap_or_default(),
            user: run.user.filter(|u| !u.is_empty()),
            working_dir: run.working_dir.filter(|w| !w.is_empty()),
            exposed_ports: run.exposed_ports.unwrap_or_default().into_keys().collect(),
            labels: run.labels.unwrap_or_default(),
            stop_signal: run.stop_signal.filter(|s| !s.is_empty()),
        },
        layers,
    })
}

/// Compress one uncompressed (or gzip) layer TAR as a Kiln layer blob.
fn recompress(file: File, blobs: &BlobDir) -> Result<Layer, ImageError> {
    let mut reader = BufReader::with_capacity(1 << 20, file);
    let magic = {
        let buf = io::BufRead::fill_buf(&mut reader)?;
        buf.get(..4).map(<[u8]>::to_vec).unwrap_or_default()
    };
    let mut layer = LayerWriter::new(blobs.writer()?);
    match magic.as_slice() {
        [0x1f, 0x8b, ..] => layer.raw_tar(MultiGzDecoder::new(reader))?,
        [0x28, 0xb5, 0x2f, 0xfd] => {
            return Err(ImageError::BadArchive("zstd-compressed layers are not supported".into()));
        }
        _ => layer.raw_tar(reader)?,
    }
    let (writer, l) = layer.finish(false)?;
    writer.finish()?;
    Ok(l)
}

/// The archive's entries, unpacked under `scratch` by number (never by the
/// archive's names), with links resolved by name.
struct Unpacked {
    files: BTreeMap<String, std::path::PathBuf>,
    links: BTreeMap<String, String>,
}

fn unpack(archive: impl Read, scratch: &Path) -> Result<Unpacked, ImageError> {
    std::fs::create_dir_all(scratch).map_err(ImageError::io(scratch))?;
    let mut out = Unpacked { files: BTreeMap::new(), links: BTreeMap::new() };
    let mut archive = Archive::new(archive);
    for (n, entry) in archive.entries()?.enumerate() {
        let mut entry = entry?;
        let name = normalize(&entry.path()?.to_string_lossy())
            .ok_or_else(|| ImageError::BadArchive("an entry's name leaves the archive".into()))?;
        match entry.header().entry_type() {
            EntryType::Regular | EntryType::Continuous => {
                let path = scratch.join(n.to_string());
                let mut f = File::create(&path).map_err(ImageError::io(&path))?;
                io::copy(&mut entry, &mut f).map_err(ImageError::io(&path))?;
                out.files.insert(name, path);
            }
            EntryType::Symlink => {
                let target =
                    entry.link_name()?.ok_or_else(|| ImageError::BadArchive(format!("{name}: a link to nothing")))?;
                let parent = name.rsplit_once('/').map_or("", |(p, _)| p);
                let joined = format!("{parent}/{}", target.to_string_lossy());
                let resolved = normalize(&joined)
                    .ok_or_else(|| ImageError::BadArchive(format!("{name}: a link out of the archive")))?;
                out.links.insert(name, resolved);
            }
            EntryType::Link => {
                let target =
                    entry.link_name()?.ok_or_else(|| ImageError::BadArchive(format!("{name}: a link to nothing")))?;
                let resolved = normalize(&target.to_string_lossy())
                    .ok_or_else(|| ImageError::BadArchive(format!("{name}: a link out of the archive")))?;
                out.links.insert(name, resolved);
            }
            _ => {}
        }
    }
    Ok(out)
}

impl Unpacked {
    fn open(&self, name: &str) -> Result<File, ImageError> {
        let mut name = normalize(name).ok_or_else(|| ImageError::BadArchive(format!("{name:?} leaves the archive")))?;
        for _ in 0..MAX_LINK_DEPTH {
            if let Some(path) = self.files.get(&name) {
                return File::open(path).map_err(ImageError::io(path));
            }
            match self.links.get(&name) {
                Some(target) => name = target.clone(),
                None => return Err(ImageError::BadArchive(format!("{name} is not in the archive"))),
            }
        }
        Err(ImageError::BadArchive(format!("{name}: too many links")))
    }

    fn read_small(&self, name: &str) -> Result<Vec<u8>, ImageError> {
        let mut bytes = Vec::new();
        self.open(name)?.take(MAX_JSON + 1).read_to_end(&mut bytes)?;
        if bytes.len() as u64 > MAX_JSON {
            return Err(ImageError::BadArchive(format!("{name} is larger than {MAX_JSON} bytes")));
        }
        Ok(bytes)
    }
}

/// A `/`-separated path made relative and free of `.` and `..`; `None` if
/// it climbs above the root.
fn normalize(path: &str) -> Option<String> {
    let mut parts: Vec<&str> = Vec::new();
    for c in path.split('/') {
        match c {
            "" | "." => {}
            ".." => {
                parts.pop()?;
            }
            c => parts.push(c),
        }
    }
    Some(parts.join("/"))
}

#[cfg(test)]
mod tests {
    use super::normalize;

    #[test]
    fn names_are_normalized_and_kept_inside() {
        assert_eq!(normalize("./a/b/../c").as_deref(), Some("a/c"));
        assert_eq!(normalize("abc/../def/layer.tar").as_deref(), Some("def/layer.tar"));
        assert_eq!(normalize("/manifest.json").as_deref(), Some("manifest.json"));
        assert_eq!(normalize("../x"), None);
        assert_eq!(normalize("a/../../x"), None);
    }
}
