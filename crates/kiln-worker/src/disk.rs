//! A build's disk limit (`worker.limits.disk_mb`), and the worker's own
//! free disk (`worker.min_free_disk_mb`).
//!
//! Everything a build's steps write under `/work` counts. [`DiskPolicy`] is
//! chosen once, at start ([`DiskPolicy::choose`]):
//!
//! - **filesystem**: each attempt's `/work` is an ext4 image of `disk_mb`
//!   MiB (sparse, no journal, no reserved blocks), loop-mounted `nosuid,nodev`
//!   on the directory Docker binds at `/work`. Writes past the size fail
//!   with "no space left on device": the limit is hard, the overshoot is
//!   nil. Needs root in the Docker daemon's mount namespace, `mkfs.ext4` and
//!   `mount`; `auto` uses it when a trial mount at start works.
//! - **watcher**: `/work` is measured every [`WATCH_EVERY`] (or four times
//!   as long as the last measurement took, if longer) while a step runs, and
//!   the step is killed once it holds more than the limit. The overshoot is
//!   what the step writes between two measurements plus the kill.
//!
//! In both, a step is stopped as soon as the limit is reached ([`Watch`]),
//! so a step that ignores "no space left" and writes on does not run until
//! its timeout; and after every step the limit is checked again. Files
//! count by the larger of their length and their allocated blocks, so a
//! sparse file cannot hide what packing it would cost.

use std::io;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use kiln_config::{ContainerLimits, DiskEnforcement};
use tokio_util::sync::CancellationToken;

/// How often a running step's `/work` is measured by the watcher.
pub const WATCH_EVERY: Duration = Duration::from_millis(200);
/// How often a mounted `/work` is checked for being full (one `statvfs`).
const FULL_EVERY: Duration = Duration::from_millis(100);
const MIB: u64 = 1024 * 1024;

/// How this worker enforces the disk limit of its builds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// `disk_mb: 0`.
    Off,
    Filesystem,
    Watcher,
}

impl Mode {
    pub fn as_str(self) -> &'static str {
        match self {
            Mode::Off => "off",
            Mode::Filesystem => "filesystem",
            Mode::Watcher => "watcher",
        }
    }
}

/// The limit and how it is enforced.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DiskPolicy {
    pub limit_mb: u64,
    pub mode: Mode,
}

impl DiskPolicy {
    /// Decide how to enforce `limits.disk_mb`, trying a mount in `work_dir`
    /// unless the configuration says `watcher`. `Err` only when
    /// `filesystem` was asked for and cannot work (the reason).
    pub async fn choose(limits: &ContainerLimits, work_dir: &Path) -> Result<DiskPolicy, String> {
        let limit_mb = limits.disk_mb;
        let mode = match limits.disk_enforcement {
            _ if limit_mb == 0 => Mode::Off,
            DiskEnforcement::Watcher => Mode::Watcher,
            wanted => {
                let dir = work_dir.to_path_buf();
                let trial = tokio::task::spawn_blocking(move || trial_mount(&dir))
                    .await
                    .map_err(|e| format!("trial mount: {e}"))?;
                match (trial, wanted) {
                    (Ok(()), _) => Mode::Filesystem,
                    (Err(why), DiskEnforcement::Filesystem) => {
                        return Err(format!("cannot mount a per-build filesystem: {why}"));
                    }
                    (Err(why), _) => {
                        tracing::info!(%why, "no per-build filesystem: the disk limit is kept by a watcher");
                        Mode::Watcher
                    }
                }
            }
        };
        Ok(DiskPolicy { limit_mb, mode })
    }

    pub fn limit_bytes(&self) -> u64 {
        self.limit_mb.saturating_mul(MIB)
    }

    /// Give the empty directory `work` its limit: in filesystem mode, make
    /// `image` and mount it there. Blocking.
    pub(crate) fn attach(&self, image: &Path, work: &Path) -> io::Result<()> {
        if self.mode != Mode::Filesystem {
            return Ok(());
        }
        make_image(image, self.limit_bytes())?;
        run(Command::new("mount").args(["-t", "ext4", "-o", "loop,nosuid,nodev"]).arg(image).arg(work))?;
        // mkfs leaves lost+found; /work starts empty.
        let _ = std::fs::remove_dir(work.join("lost+found"));
        Ok(())
    }

    /// Watch `work` while a step runs: once the limit is reached, cancel
    /// `step` (the step's own token). Stopped by [`Watch::finish`].
    pub(crate) fn watch(&self, work: &Path, step: &CancellationToken) -> Watch {
        let exceeded = Arc::new(AtomicBool::new(false));
        let task = (self.mode != Mode::Off).then(|| {
            let (policy, work, step, flag) = (*self, work.to_path_buf(), step.clone(), exceeded.clone());
            tokio::spawn(async move {
                let mut every = if policy.mode == Mode::Filesystem { FULL_EVERY } else { WATCH_EVERY };
                loop {
                    tokio::time::sleep(every).await;
                    let (p, w) = (policy, work.clone());
                    let Ok((over, took)) = tokio::task::spawn_blocking(move || {
                        let started = Instant::now();
                        (p.over(&w), started.elapsed())
                    })
                    .await
                    else {
                        return;
                    };
                    if over {
                        flag.store(true, Ordering::SeqCst);
                        step.cancel();
                        return;
                    }
                    if policy.mode == Mode::Watcher {
                        every = WATCH_EVERY.max(took * 4);
                    }
                }
            })
        });
        Watch { policy: *self, work: work.to_path_buf(), exceeded, task }
    }

    /// Whether `work` is at or past the limit.
    fn over(&self, work: &Path) -> bool {
        match self.mode {
            Mode::Off => false,
            // Full: less free than a sixteenth of the limit or 1 MiB.
            Mode::Filesystem => free_bytes(work).is_ok_and(|free| free < (self.limit_bytes() / 16).min(MIB)),
            Mode::Watcher => usage(work) > self.limit_bytes(),
        }
    }
}

/// A step's watcher.
#[derive(Debug)]
pub(crate) struct Watch {
    policy: DiskPolicy,
    work: PathBuf,
    exceeded: Arc<AtomicBool>,
    task: Option<tokio::task::JoinHandle<()>>,
}

impl Watch {
    /// Stop watching once the step's container is gone. `Some(bytes held
    /// under /work)` when the limit was reached, during the step or now.
    pub(crate) async fn finish(mut self) -> Option<u64> {
        if let Some(task) = self.task.take() {
            task.abort();
        }
        let (policy, work, flagged) = (self.policy, self.work.clone(), self.exceeded.load(Ordering::SeqCst));
        tokio::task::spawn_blocking(move || (flagged || policy.over(&work)).then(|| usage(&work))).await.unwrap_or(None)
    }
}

impl Drop for Watch {
    fn drop(&mut self) {
        if let Some(task) = self.task.take() {
            task.abort();
        }
    }
}

/// The message of a build stopped by its disk limit.
pub(crate) fn exceeded_message(step: &str, limit_mb: u64, held: u64) -> String {
    format!(
        "step {step:?} was stopped: disk limit exceeded (limit {limit_mb} MiB); /work held {:.1} MiB",
        held as f64 / MIB as f64
    )
}

/// Bytes held under `root`: every file by the larger of its length and its
/// allocated blocks, directories by their blocks; symlinks are not followed.
pub fn usage(root: &Path) -> u64 {
    let mut total = 0u64;
    let mut dirs = vec![root.to_path_buf()];
    while let Some(dir) = dirs.pop() {
        let Ok(entries) = std::fs::read_dir(&dir) else { continue };
        for entry in entries.flatten() {
            let Ok(meta) = entry.metadata() else { continue };
            let blocks = meta.blocks().saturating_mul(512);
            if meta.is_dir() {
                total = total.saturating_add(blocks);
                dirs.push(entry.path());
            } else {
                total = total.saturating_add(blocks.max(meta.len()));
            }
        }
    }
    total
}

/// Free bytes for unprivileged writers on the filesystem holding `path`.
pub fn free_bytes(path: &Path) -> io::Result<u64> {
    let s = rustix::fs::statvfs(path)?;
    Ok(s.f_bavail.saturating_mul(s.f_frsize))
}

/// Whether something is mounted at `path` (it lies on another device than
/// its parent).
pub(crate) fn is_mount(path: &Path) -> bool {
    let parent = path.parent().unwrap_or(path);
    match (std::fs::symlink_metadata(path), std::fs::metadata(parent)) {
        (Ok(m), Ok(p)) => m.is_dir() && m.dev() != p.dev(),
        _ => false,
    }
}

/// Unmount whatever is mounted at `path`, lazily if it is busy. Blocking.
pub(crate) fn detach(path: &Path) -> io::Result<()> {
    if !is_mount(path) {
        return Ok(());
    }
    if run(Command::new("umount").arg(path)).is_ok() {
        return Ok(());
    }
    run(Command::new("umount").arg("-l").arg(path))
}

/// A sparse file of `size` bytes formatted as ext4 for one build: no
/// journal (it is thrown away), no blocks reserved for root, owned by root.
fn make_image(image: &Path, size: u64) -> io::Result<()> {
    std::fs::File::create(image)?.set_len(size)?;
    run(Command::new("mkfs.ext4")
        .args(["-q", "-F", "-m", "0", "-O", "^has_journal", "-E", "root_owner=0:0,nodiscard"])
        .arg(image))
}

/// Make, mount, write to and remove a small filesystem in `work_dir`.
fn trial_mount(work_dir: &Path) -> Result<(), String> {
    if !rustix::process::geteuid().is_root() {
        return Err("the worker is not root".into());
    }
    shares_docker_mounts()?;
    std::fs::create_dir_all(work_dir).map_err(|e| format!("worker.work_dir: {e}"))?;
    let dir = tempfile::Builder::new().prefix(".disk-trial-").tempdir_in(work_dir).map_err(|e| e.to_string())?;
    let (image, work) = (dir.path().join("disk.img"), dir.path().join("work"));
    std::fs::create_dir(&work).map_err(|e| e.to_string())?;
    let policy = DiskPolicy { limit_mb: 8, mode: Mode::Filesystem };
    let result = policy.attach(&image, &work).map_err(|e| e.to_string()).and_then(|()| {
        if !is_mount(&work) {
            return Err("mount reported success but nothing is mounted".into());
        }
        std::fs::write(work.join("probe"), b"kiln").map_err(|e| e.to_string())
    });
    let _ = detach(&work);
    result
}

/// Where the Docker daemon writes its pid (dockerd's default `--pidfile`).
const DOCKER_PID_FILES: [&str; 2] = ["/run/docker.pid", "/var/run/docker.pid"];

/// A loop mount is seen by the step's container only if the worker mounts
/// it in the Docker daemon's own mount namespace. A worker started with
/// `ip netns exec`, in a container, or beside a remote engine does not:
/// Docker would bind the empty directory under the mount.
fn shares_docker_mounts() -> Result<(), String> {
    let pid = DOCKER_PID_FILES
        .iter()
        .find_map(|f| std::fs::read_to_string(f).ok())
        .and_then(|p| p.trim().parse::<u32>().ok())
        .ok_or("the Docker daemon's pid file is not readable here (a remote or containerised engine)")?;
    let ns = |who: &str| std::fs::read_link(format!("/proc/{who}/ns/mnt")).map_err(|e| format!("{who}: {e}"));
    if ns(&pid.to_string())? != ns("self")? {
        return Err("the worker is not in the Docker daemon's mount namespace".into());
    }
    Ok(())
}

/// Run a command to success; its stderr is the error otherwise.
fn run(cmd: &mut Command) -> io::Result<()> {
    let out = cmd.output()?;
    if out.status.success() {
        return Ok(());
    }
    let program = cmd.get_program().to_string_lossy().into_owned();
    Err(io::Error::other(format!("{program}: {} ({})", String::from_utf8_lossy(&out.stderr).trim(), out.status)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn usage_counts_sparse_files_by_their_length() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("a"), vec![1u8; 100_000]).unwrap();
        std::fs::create_dir(dir.path().join("sub")).unwrap();
        let sparse = std::fs::File::create(dir.path().join("sub/sparse")).unwrap();
        sparse.set_len(50 * MIB).unwrap();
        let used = usage(dir.path());
        assert!(used >= 50 * MIB + 100_000, "{used}");
        assert!(used < 51 * MIB, "{used}");
    }

    #[test]
    fn the_message_names_the_limit() {
        let m = exceeded_message("fill", 16, 17 * MIB);
        assert!(m.contains("disk limit exceeded (limit 16 MiB)"), "{m}");
        assert!(m.ends_with("/work held 17.0 MiB"), "{m}");
    }
}
