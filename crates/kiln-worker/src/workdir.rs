//! The per-attempt temporary directory on the host, mounted at `/work`
//! ([`WorkDir`]).
//!
//! Its root belongs to the worker and is not writable by the step user, so a
//! step cannot swap `src/` or `out/` for something else; `src/` and `out/`
//! belong to the step user (when the worker may `chown`, i.e. runs as root)
//! or are world-writable (when it may not). It is removed on every path:
//! explicitly after a successful upload, or when dropped.

use std::io;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use kiln_domain::BuildKey;

use crate::failure::{Failure, io_failure};

/// The attempt's temporary directory: `src/` and `out/` writable by the step
/// user, mounted at `/work`. Removed when dropped.
#[derive(Debug)]
pub(crate) struct WorkDir {
    root: PathBuf,
    guard: Option<tempfile::TempDir>,
}

impl WorkDir {
    /// A new directory for build `key` under `work_dir`, for step user `user`.
    pub(crate) fn create(work_dir: &Path, key: &BuildKey, user: &str) -> Result<WorkDir, Failure> {
        std::fs::create_dir_all(work_dir).map_err(io_failure("creating", work_dir))?;
        let dir = tempfile::Builder::new()
            .prefix(&format!("{}-", key.short()))
            .tempdir_in(work_dir)
            .map_err(io_failure("creating a directory in", work_dir))?;
        let root = dir.path().canonicalize().map_err(io_failure("resolving", dir.path()))?;
        prepare(&root, user).map_err(|e| Failure::Infra(format!("{}: {e}", root.display())))?;
        Ok(WorkDir { root, guard: Some(dir) })
    }

    /// The directory mounted at `/work`.
    pub(crate) fn root(&self) -> &Path {
        &self.root
    }

    pub(crate) fn out(&self) -> PathBuf {
        self.root.join("out")
    }

    /// Remove the directory now, off the async threads.
    pub(crate) async fn remove(mut self) {
        if let Some(dir) = self.guard.take() {
            let _ = tokio::task::spawn_blocking(move || remove(dir)).await;
        }
    }
}

impl Drop for WorkDir {
    fn drop(&mut self) {
        if let Some(dir) = self.guard.take() {
            match tokio::runtime::Handle::try_current() {
                Ok(rt) => drop(rt.spawn_blocking(move || remove(dir))),
                Err(_) => remove(dir),
            }
        }
    }
}

/// Make `root` traversable and create `src/` and `out/` for the step user
/// `user` (`uid[:gid]`).
fn prepare(root: &Path, user: &str) -> io::Result<()> {
    std::fs::set_permissions(root, std::fs::Permissions::from_mode(0o755))?;
    let (uid, gid) = parse_user(user);
    for sub in ["src", "out"] {
        let path = root.join(sub);
        std::fs::create_dir(&path)?;
        let owned = uid.is_some() && std::os::unix::fs::chown(&path, uid, gid.or(uid)).is_ok();
        let mode = if owned { 0o755 } else { 0o777 };
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(mode))?;
    }
    Ok(())
}

/// Numeric `uid[:gid]`; names give `None` (no chown, world-writable instead).
fn parse_user(user: &str) -> (Option<u32>, Option<u32>) {
    let (u, g) = user.split_once(':').map_or((user, None), |(u, g)| (u, Some(g)));
    (u.parse().ok(), g.and_then(|g| g.parse().ok()))
}

/// Delete the directory. Steps may leave read-only directories behind (Go's
/// module cache does), which a non-root worker cannot empty: make everything
/// writable and try again before giving up.
fn remove(dir: tempfile::TempDir) {
    let path = dir.path().to_path_buf();
    if dir.close().is_ok() {
        return;
    }
    for entry in walk(&path) {
        let _ = std::fs::set_permissions(&entry, std::fs::Permissions::from_mode(0o700));
    }
    if let Err(e) = std::fs::remove_dir_all(&path) {
        tracing::warn!(path = %path.display(), error = %e, "could not remove a work directory");
    }
}

/// Every directory under `root` (itself included), without following links.
fn walk(root: &Path) -> Vec<std::path::PathBuf> {
    let mut dirs = vec![root.to_path_buf()];
    let mut i = 0;
    while i < dirs.len() {
        if let Ok(rd) = std::fs::read_dir(&dirs[i]) {
            for e in rd.flatten() {
                if e.file_type().is_ok_and(|t| t.is_dir()) {
                    dirs.push(e.path());
                }
            }
        }
        i += 1;
    }
    dirs
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_numeric_users_only() {
        assert_eq!(parse_user("1000:1000"), (Some(1000), Some(1000)));
        assert_eq!(parse_user("1000"), (Some(1000), None));
        assert_eq!(parse_user("kiln:kiln"), (None, None));
    }

    #[test]
    fn prepares_and_removes_even_read_only_trees() {
        let base = tempfile::tempdir().unwrap();
        let dir = tempfile::tempdir_in(base.path()).unwrap();
        prepare(dir.path(), "1000:1000").unwrap();
        assert!(dir.path().join("src").is_dir() && dir.path().join("out").is_dir());
        let ro = dir.path().join("out/ro");
        std::fs::create_dir(&ro).unwrap();
        std::fs::write(ro.join("f"), "x").unwrap();
        std::fs::set_permissions(&ro, std::fs::Permissions::from_mode(0o555)).unwrap();
        let path = dir.path().to_path_buf();
        remove(dir);
        assert!(!path.exists());
    }
}
