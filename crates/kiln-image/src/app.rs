//! The build's own layer: the main binary and the recipe's `oci.files`,
//! read out of the signed artifact TAR (never from the build's directory,
//! so nothing a step left behind, such as a symlink, is ever followed), with
//! their parent directories and the recipe's working directory.

use std::collections::{BTreeMap, BTreeSet};
use std::fs::File;
use std::io::{BufReader, Read, Seek, SeekFrom};
use std::path::Path;

use kiln_domain::{ImagePath, OciSpec};
use tar::{Archive, EntryType};

use crate::ImageError;
use crate::blob::BlobDir;
use crate::layer::{Layer, LayerWriter};

/// The mode of the main binary and of every directory the layer makes.
const EXEC_MODE: u32 = 0o755;

/// One file of the layer: where it goes and which artifact entry it is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PlannedFile {
    pub to: ImagePath,
    /// The entry's path in the artifact TAR (relative to `out/`).
    pub from: String,
    /// Forced to 0755 for the main binary; `None` keeps the artifact's mode.
    pub mode: Option<u32>,
}

/// What the build's layer holds, before any file is read.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AppLayerPlan {
    /// Every directory, parents first (relative, no trailing `/`).
    pub dirs: BTreeSet<String>,
    pub files: Vec<PlannedFile>,
}

impl AppLayerPlan {
    /// Plan the layer of a recipe whose main binary is `binary_file` in `out/`.
    pub fn new(oci: &OciSpec, binary_file: &str) -> Result<Self, ImageError> {
        let invalid = |e: kiln_domain::ValidationError| ImageError::Path(e.to_string());
        oci.check(binary_file).map_err(invalid)?;
        let mut files = vec![PlannedFile {
            to: oci.binary_path(binary_file).map_err(invalid)?,
            from: binary_file.to_owned(),
            mode: Some(EXEC_MODE),
        }];
        files.extend(oci.files.iter().map(|f| PlannedFile { to: f.to.clone(), from: f.from.to_string(), mode: None }));
        let mut dirs = BTreeSet::new();
        let mut add_parents = |path: &str, including_self: bool| {
            let parts: Vec<&str> = path.split('/').collect();
            let end = if including_self { parts.len() } else { parts.len() - 1 };
            for i in 1..=end {
                dirs.insert(parts[..i].join("/"));
            }
        };
        for f in &files {
            add_parents(f.to.relative(), false);
        }
        if let Some(w) = &oci.workdir {
            add_parents(w.relative(), true);
        }
        // `check` keeps files apart from each other; a file may still sit
        // where the working directory (or a parent of it) would.
        if let Some(f) = files.iter().find(|f| dirs.contains(f.to.relative())) {
            return Err(ImageError::Path(format!("{} is a file and also a directory of the image", f.to)));
        }
        files.sort_by(|a, b| a.to.relative().cmp(b.to.relative()));
        Ok(Self { dirs, files })
    }

    /// Write the layer into `blobs`, reading the files from the artifact TAR
    /// at `artifact`. A file the plan names that the artifact lacks (or has
    /// as anything but a regular file) is [`ImageError::MissingFile`].
    pub fn write(&self, artifact: &Path, blobs: &BlobDir) -> Result<Layer, ImageError> {
        let file = File::open(artifact).map_err(ImageError::io(artifact))?;
        let index = index_artifact(&file).map_err(|e| match e {
            ImageError::ReadWrite(source) => ImageError::Io { path: artifact.to_owned(), source },
            e => e,
        })?;

        // Directories and files in one sorted walk: a directory sorts right
        // before what it holds when names are compared component-wise.
        let mut entries: Vec<(Vec<&str>, Option<&PlannedFile>)> =
            self.dirs.iter().map(|d| (d.split('/').collect(), None)).collect();
        entries.extend(self.files.iter().map(|f| (f.to.relative().split('/').collect(), Some(f))));
        entries.sort_by(|a, b| a.0.cmp(&b.0));

        let mut layer = LayerWriter::new(blobs.writer()?);
        let mut reader = BufReader::with_capacity(1 << 20, &file);
        for (parts, planned) in entries {
            let name = parts.join("/");
            let Some(f) = planned else {
                layer.dir(&name, EXEC_MODE)?;
                continue;
            };
            let found = index.get(f.from.as_str()).ok_or_else(|| {
                ImageError::MissingFile(format!("the image needs out/{}, which the build did not make", f.from))
            })?;
            let Found::File { offset, size, mode } = *found else {
                return Err(ImageError::MissingFile(format!("out/{} is not a regular file", f.from)));
            };
            reader.seek(SeekFrom::Start(offset)).map_err(ImageError::io(artifact))?;
            layer.file(&name, f.mode.unwrap_or(mode), size, (&mut reader).take(size))?;
        }
        let (writer, l) = layer.finish(true)?;
        let (digest, size) = writer.finish()?;
        debug_assert_eq!((digest, size), (l.digest.clone(), l.size));
        Ok(l)
    }
}

/// What an artifact entry is, and where a regular file's bytes are.
#[derive(Debug, Clone, Copy)]
enum Found {
    File { offset: u64, size: u64, mode: u32 },
    Other,
}

/// Every entry of the artifact TAR by path.
fn index_artifact(file: &File) -> Result<BTreeMap<String, Found>, ImageError> {
    let mut index = BTreeMap::new();
    let mut archive = Archive::new(BufReader::new(file));
    for entry in archive.entries()? {
        let entry = entry?;
        let path = entry.path()?.to_string_lossy().trim_end_matches('/').to_owned();
        let found = if entry.header().entry_type() == EntryType::Regular {
            let mode = entry.header().mode()? & 0o777;
            Found::File { offset: entry.raw_file_position(), size: entry.size(), mode }
        } else {
            Found::Other
        };
        index.insert(path, found);
    }
    Ok(index)
}
