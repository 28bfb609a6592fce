//! Deterministic TAR packing of a build's `out/` directory, and reading one file back.
//!
//! The archive depends only on the tree's names, contents, permission bits
//! and symlink targets: entries are sorted by name (depth first, bytewise),
//! every mtime is 0, owners are uid/gid 0 with empty user and group names.
//! Symlinks are stored as links and never followed; a link that is absolute
//! or climbs out of the directory, and anything that is not a regular file,
//! a directory or a symlink, makes packing fail. The SHA-256 of the archive
//! is computed while it is written, in the same pass.

use std::fs::File;
use std::io::{self, BufWriter, Read, Write};
use std::path::{Component, Path};

use tar::{Archive, Builder, EntryType, Header};
use walkdir::WalkDir;

use crate::{ArtifactError, HashingWriter};

/// Permission bits kept in the archive; set-id and sticky bits are dropped so
/// that an artifact unpacked by root never grows a set-uid binary.
const MODE_MASK: u32 = 0o777;

/// What kind of file an entry is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EntryKind {
    File,
    Dir,
    Symlink,
}

/// One entry of a packed archive.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PackedEntry {
    /// Path relative to the packed directory, `/`-separated, never absolute, never with `..`.
    pub path: String,
    pub kind: EntryKind,
    /// Content length; 0 for directories and symlinks.
    pub size: u64,
    /// Permission bits as stored.
    pub mode: u32,
    /// Where a symlink points, as stored.
    pub link_target: Option<String>,
}

/// The result of [`pack_dir`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PackedTar {
    /// Lowercase hex SHA-256 of the whole archive file.
    pub sha256: String,
    /// Size of the archive file in bytes.
    pub size: u64,
    /// Entries in archive order.
    pub entries: Vec<PackedEntry>,
}

/// Pack the tree under `dir` into a new TAR file at `dest` (created or truncated).
///
/// `dest` must not lie inside `dir`. The directory itself is not an entry;
/// its contents are, with paths relative to it.
pub fn pack_dir(dir: &Path, dest: &Path) -> Result<PackedTar, ArtifactError> {
    let root = dir.canonicalize().map_err(ArtifactError::io(dir))?;
    if !root.is_dir() {
        return Err(ArtifactError::Unpackable { path: dir.into(), reason: "not a directory".into() });
    }
    let dest_parent = match dest.parent() {
        Some(p) if !p.as_os_str().is_empty() => p.canonicalize().map_err(ArtifactError::io(p))?,
        _ => std::env::current_dir()?,
    };
    if dest_parent.starts_with(&root) {
        return Err(ArtifactError::Unpackable {
            path: dest.into(),
            reason: "the archive may not be written inside the directory being packed".into(),
        });
    }

    let file = File::create(dest).map_err(ArtifactError::io(dest))?;
    let mut builder = Builder::new(HashingWriter::new(BufWriter::with_capacity(1 << 20, file)));
    let mut entries = Vec::new();

    let walk = WalkDir::new(&root).follow_links(false).sort_by_file_name().min_depth(1);
    for item in walk {
        let item = item.map_err(|e| {
            let path = e.path().map(Path::to_path_buf).unwrap_or_else(|| root.clone());
            ArtifactError::Io { path, source: e.into() }
        })?;
        let rel = item.path().strip_prefix(&root).expect("walkdir yields paths under its root");
        let name = entry_name(rel).ok_or_else(|| ArtifactError::Unpackable {
            path: item.path().into(),
            reason: "names must be UTF-8 and relative".into(),
        })?;
        let meta = item.path().symlink_metadata().map_err(ArtifactError::io(item.path()))?;
        let file_type = meta.file_type();

        let mut header = Header::new_gnu();
        header.set_mtime(0);
        header.set_uid(0);
        header.set_gid(0);
        header.set_username("")?;
        header.set_groupname("")?;

        if file_type.is_symlink() {
            let target = std::fs::read_link(item.path()).map_err(ArtifactError::io(item.path()))?;
            let target_str = target
                .to_str()
                .filter(|_| link_stays_inside(rel, &target))
                .filter(|_| item.path().canonicalize().map(|p| p.starts_with(&root)).unwrap_or(true))
                .ok_or_else(|| ArtifactError::Unpackable {
                    path: item.path().into(),
                    reason: format!("symlink to {} leaves the directory", target.display()),
                })?
                .to_owned();
            header.set_entry_type(EntryType::Symlink);
            header.set_mode(0o777);
            header.set_size(0);
            builder.append_link(&mut header, &name, &target)?;
            entries.push(PackedEntry {
                path: name,
                kind: EntryKind::Symlink,
                size: 0,
                mode: 0o777,
                link_target: Some(target_str),
            });
        } else if file_type.is_dir() {
            let mode = mode_of(&meta);
            header.set_entry_type(EntryType::Directory);
            header.set_mode(mode);
            header.set_size(0);
            builder.append_data(&mut header, format!("{name}/"), io::empty())?;
            entries.push(PackedEntry { path: name, kind: EntryKind::Dir, size: 0, mode, link_target: None });
        } else if file_type.is_file() {
            let mode = mode_of(&meta);
            let size = meta.len();
            header.set_entry_type(EntryType::Regular);
            header.set_mode(mode);
            header.set_size(size);
            let f = File::open(item.path()).map_err(ArtifactError::io(item.path()))?;
            let mut exact = ExactReader { inner: f.take(size), left: size };
            builder.append_data(&mut header, &name, &mut exact)?;
            if exact.left != 0 {
                return Err(ArtifactError::Unpackable {
                    path: item.path().into(),
                    reason: "the file shrank while it was packed".into(),
                });
            }
            entries.push(PackedEntry { path: name, kind: EntryKind::File, size, mode, link_target: None });
        } else {
            return Err(ArtifactError::Unpackable {
                path: item.path().into(),
                reason: "only regular files, directories and symlinks can be packed".into(),
            });
        }
    }

    let hashing = builder.into_inner()?;
    let (buffered, sha256, size) = hashing.finish();
    let file = buffered.into_inner().map_err(|e| e.into_error())?;
    file.sync_all().map_err(ArtifactError::io(dest))?;
    Ok(PackedTar { sha256, size, entries })
}

/// Copy the bytes of the regular file `name` (a path as listed in
/// [`PackedTar::entries`]) from the archive `reader` into `out`; returns its length.
pub fn extract_file_to(reader: impl Read, name: &str, out: &mut impl Write) -> Result<u64, ArtifactError> {
    let mut archive = Archive::new(reader);
    for entry in archive.entries()? {
        let mut entry = entry?;
        if entry.header().entry_type() == EntryType::Regular && entry.path()?.as_ref() == Path::new(name) {
            return Ok(io::copy(&mut entry, out)?);
        }
    }
    Err(ArtifactError::NotInArchive(name.to_owned()))
}

/// The bytes of the regular file `name` in the archive `reader`.
pub fn extract_file(reader: impl Read, name: &str) -> Result<Vec<u8>, ArtifactError> {
    let mut out = Vec::new();
    extract_file_to(reader, name, &mut out)?;
    Ok(out)
}

fn mode_of(meta: &std::fs::Metadata) -> u32 {
    use std::os::unix::fs::PermissionsExt;
    meta.permissions().mode() & MODE_MASK
}

/// `rel` as a `/`-joined string of normal components, or `None` if it has
/// anything else (root, `..`, `.`) or is not UTF-8.
fn entry_name(rel: &Path) -> Option<String> {
    let mut parts = Vec::new();
    for c in rel.components() {
        match c {
            Component::Normal(s) => parts.push(s.to_str()?),
            _ => return None,
        }
    }
    (!parts.is_empty()).then(|| parts.join("/"))
}

/// Whether a symlink at `link` (relative to the packed root) pointing at
/// `target` resolves, lexically, to a place inside the root. Chains of links
/// can defeat a lexical check, so `pack_dir` also resolves links that exist.
fn link_stays_inside(link: &Path, target: &Path) -> bool {
    let mut depth = link.components().count() as i64 - 1;
    for c in target.components() {
        match c {
            Component::Normal(_) => depth += 1,
            Component::CurDir => {}
            Component::ParentDir => {
                depth -= 1;
                if depth < 0 {
                    return false;
                }
            }
            Component::RootDir | Component::Prefix(_) => return false,
        }
    }
    true
}

/// A reader that remembers how many of the expected bytes it has not yet yielded.
struct ExactReader<R> {
    inner: R,
    left: u64,
}

impl<R: Read> Read for ExactReader<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.left -= n as u64;
        Ok(n)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn links_inside_the_tree_are_accepted_and_escapes_refused() {
        assert!(link_stays_inside(Path::new("a"), Path::new("b")));
        assert!(link_stays_inside(Path::new("d/a"), Path::new("../b")));
        assert!(link_stays_inside(Path::new("d/a"), Path::new("./e/../../b")));
        assert!(!link_stays_inside(Path::new("a"), Path::new("../b")));
        assert!(!link_stays_inside(Path::new("d/a"), Path::new("../../b")));
        assert!(!link_stays_inside(Path::new("a"), Path::new("/etc/passwd")));
    }

    #[test]
    fn entry_names_are_plain_relative_paths() {
        assert_eq!(entry_name(Path::new("a/b")).as_deref(), Some("a/b"));
        assert_eq!(entry_name(Path::new("../a")), None);
        assert_eq!(entry_name(Path::new("/a")), None);
        assert_eq!(entry_name(Path::new("")), None);
    }
}
