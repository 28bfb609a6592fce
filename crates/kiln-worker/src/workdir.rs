//! The per-attempt directory on the host ([`WorkDir`]): `work/` is
//! mounted at `/work`; beside it, out of the steps' reach, the attempt's
//! owner (`owner.json`: farm, worker, build, attempt; what the orphan sweep
//! reads), its disk image when the disk limit is a filesystem
//! ([`crate::disk`]), the packed artifact and the image made from it.
//!
//! The root of `work/` belongs to the worker and is not writable by the step
//! user, so a step cannot swap `src/` or `out/` for something else; `src/`
//! and `out/` belong to the step user (when the worker may `chown`, i.e.
//! runs as root) or are world-writable (when it may not). Everything is
//! unmounted and removed on every path: explicitly after a successful
//! upload, or when dropped (and by a later sweep if the worker died).

use std::io;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::disk::{self, DiskPolicy};
use crate::failure::Failure;

/// The file in an attempt's directory that says whose it is.
const OWNER_FILE: &str = "owner.json";

/// Whose an attempt's directory is.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct Owner {
    pub farm: String,
    pub worker: String,
    pub build: String,
    pub attempt: i64,
}

/// The attempt's directory. Unmounted and removed when dropped.
#[derive(Debug)]
pub(crate) struct WorkDir {
    root: PathBuf,
    guard: Option<tempfile::TempDir>,
}

impl WorkDir {
    /// A new directory under `work_dir` for `owner`'s attempt, for step user
    /// `user`, with `disk`'s limit on `work/`.
    pub(crate) async fn create(
        work_dir: &Path,
        owner: &Owner,
        user: &str,
        disk: DiskPolicy,
    ) -> Result<WorkDir, Failure> {
        let (work_dir, owner, user) = (work_dir.to_path_buf(), owner.clone(), user.to_owned());
        tokio::task::spawn_blocking(move || Self::create_blocking(&work_dir, &owner, &user, disk))
            .await
            .map_err(|e| Failure::Infra(format!("creating the work directory: {e}")))?
    }

    fn create_blocking(work_dir: &Path, owner: &Owner, user: &str, disk: DiskPolicy) -> Result<WorkDir, Failure> {
        // Errors name worker.work_dir, never the host path: build errors are public.
        fn fail(what: &'static str) -> impl FnOnce(io::Error) -> Failure {
            move |e| Failure::Infra(format!("{what} in worker.work_dir: {e}"))
        }
        std::fs::create_dir_all(work_dir).map_err(fail("creating the directory"))?;
        let short = owner.build.get(..12).unwrap_or(&owner.build);
        let dir = tempfile::Builder::new()
            .prefix(&format!("{short}-"))
            .tempdir_in(work_dir)
            .map_err(fail("creating an attempt's directory"))?;
        let text = serde_json::to_vec(owner).expect("an owner serializes");
        std::fs::write(dir.path().join(OWNER_FILE), text).map_err(fail("writing the attempt's owner"))?;
        let work = dir.path().join("work");
        std::fs::create_dir(&work).map_err(fail("creating work/"))?;
        // From here on, dropping `this` unmounts and removes everything.
        let mut this = WorkDir { root: work.clone(), guard: Some(dir) };
        disk.attach(&this.base().join("disk.img"), &work).map_err(fail("making the build's filesystem"))?;
        this.root = work.canonicalize().map_err(fail("resolving work/"))?;
        prepare(&this.root, user).map_err(fail("preparing /work"))?;
        Ok(this)
    }

    /// The directory holding `work/` and the attempt's other files.
    fn base(&self) -> &Path {
        self.guard.as_ref().map_or(&self.root, |d| d.path())
    }

    /// The directory mounted at `/work`.
    pub(crate) fn root(&self) -> &Path {
        &self.root
    }

    pub(crate) fn out(&self) -> PathBuf {
        self.root.join("out")
    }

    /// Where the artifact is packed: beside `work/`, so it does not count
    /// against the build's disk limit a second time.
    pub(crate) fn artifact_tar(&self) -> PathBuf {
        self.scratch().join("artifact.tar")
    }

    /// The worker's own files of this attempt (what it makes from `out/`),
    /// beside `work/`: out of the steps' reach and of the disk limit.
    pub(crate) fn scratch(&self) -> &Path {
        self.base()
    }

    /// Unmount and remove the directory now, off the async threads.
    pub(crate) async fn remove(mut self) {
        if let Some(dir) = self.guard.take() {
            let _ = tokio::task::spawn_blocking(move || remove(dir.keep())).await;
        }
    }
}

impl Drop for WorkDir {
    fn drop(&mut self) {
        if let Some(dir) = self.guard.take() {
            let path = dir.keep();
            match tokio::runtime::Handle::try_current() {
                Ok(rt) => drop(rt.spawn_blocking(move || remove(path))),
                Err(_) => remove(path),
            }
        }
    }
}

/// The owner of an attempt's directory, when `dir` is one.
pub(crate) fn owner_of(dir: &Path) -> Option<Owner> {
    serde_json::from_slice(&std::fs::read(dir.join(OWNER_FILE)).ok()?).ok()
}

/// Unmount an attempt's `work/` and delete its directory. Blocking.
pub(crate) fn remove(base: PathBuf) {
    let work = base.join("work");
    if let Err(e) = disk::detach(&work) {
        tracing::warn!(path = %work.display(), error = %e, "could not unmount a build's filesystem");
    }
    remove_tree(&base);
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
fn remove_tree(path: &Path) {
    if std::fs::remove_dir_all(path).is_ok() || !path.exists() {
        return;
    }
    for entry in walk(path) {
        let _ = std::fs::set_permissions(&entry, std::fs::Permissions::from_mode(0o700));
    }
    if let Err(e) = std::fs::remove_dir_all(path) {
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
        let path = dir.keep();
        remove_tree(&path);
        assert!(!path.exists());
    }
}
