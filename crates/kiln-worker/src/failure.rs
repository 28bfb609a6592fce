//! Which failures are the build's and which are the farm's.
//!
//! A build failure is deterministic and final: a step exited non-zero, ran
//! out of memory or time, or the steps left an unusable `out/` (a missing
//! main binary, a symlink where a file or directory must be, something
//! that cannot be packed). The same request would fail the same way, so it
//! is not retried ([`kiln_queue::Queue::fail_build`]).
//!
//! An infrastructure failure is the farm's: Docker, storage, the local disk
//! or the database failed. It is retried with backoff
//! ([`kiln_queue::Queue::fail_infra`]).
//!
//! A stopped job (cancelled, preempted, shut down, lease lost) is neither;
//! see [`crate::control::StopReason`].
//!
//! Users read every failure's message (the build's error, its log, the
//! page), so [`Failure::public`] hides the worker's host paths in it: a
//! path inside an attempt's `work/` becomes `/work/…`, as the steps see it,
//! and the worker's directories and files become the name of their key.

use std::path::Path;

use kiln_artifact::ArtifactError;
use kiln_config::{Config, StorageKind};

use crate::docker::{DockerError, Exit};

/// Why an attempt stopped short of success.
#[derive(Debug)]
pub(crate) enum Failure {
    /// The build's own fault: final.
    Build(String),
    /// The farm's fault: retried.
    Infra(String),
    /// Stopped from outside; the job's control says why.
    Stopped,
}

impl Failure {
    /// The same failure with the worker's host paths hidden from its message.
    pub(crate) fn public(self, config: &Config) -> Failure {
        match self {
            Failure::Build(m) => Failure::Build(hide_host_paths(&m, config)),
            Failure::Infra(m) => Failure::Infra(hide_host_paths(&m, config)),
            Failure::Stopped => Failure::Stopped,
        }
    }
}

/// `msg` with the worker's host paths replaced: `<work_dir>/<attempt>/work`
/// by `/work`, any other path under `worker.work_dir`, the local storage and
/// the signing key by the name of their key.
pub(crate) fn hide_host_paths(msg: &str, config: &Config) -> String {
    let mut bases: Vec<(String, &str)> = Vec::new();
    let mut add = |path: &Path, name: &'static str| {
        let canonical = path.canonicalize().ok();
        for p in std::iter::once(path).chain(canonical.as_deref()) {
            let text = p.display().to_string();
            if text.len() > 1 && !bases.iter().any(|(b, _)| *b == text) {
                bases.push((text, name));
            }
        }
    };
    add(&config.worker.work_dir, "[worker.work_dir]");
    if let (StorageKind::Local, Some(local)) = (config.storage.kind, &config.storage.local) {
        add(&local.path, "[storage.local.path]");
    }
    add(&config.signing.secret_key, "[signing.secret_key]");
    // Longest first, so a base inside another is not cut in two.
    bases.sort_by_key(|(b, _)| std::cmp::Reverse(b.len()));
    let mut text = msg.to_owned();
    for (base, name) in &bases {
        let mut out = String::with_capacity(text.len());
        let mut rest = text.as_str();
        while let Some(i) = rest.find(base.as_str()) {
            out.push_str(&rest[..i]);
            rest = &rest[i + base.len()..];
            if *name == "[worker.work_dir]"
                && let Some(after) = inside_work(rest)
            {
                out.push_str("/work");
                rest = after;
            } else {
                out.push_str(name);
            }
        }
        out.push_str(rest);
        text = out;
    }
    text
}

/// After `<work_dir>`: `/<attempt>/work` and what follows it, if that is where it points.
fn inside_work(rest: &str) -> Option<&str> {
    let after = rest.strip_prefix('/')?;
    let end = after.find(|c: char| c == '/' || c.is_whitespace() || ":\"'".contains(c))?;
    let after = after[end..].strip_prefix("/work")?;
    after.chars().next().is_none_or(|c| !(c.is_alphanumeric() || c == '_' || c == '-' || c == '.')).then_some(after)
}

impl From<DockerError> for Failure {
    fn from(e: DockerError) -> Self {
        Failure::Infra(e.to_string())
    }
}

impl From<kiln_storage::StorageError> for Failure {
    fn from(e: kiln_storage::StorageError) -> Self {
        Failure::Infra(format!("storage: {e}"))
    }
}

impl From<ArtifactError> for Failure {
    fn from(e: ArtifactError) -> Self {
        match e {
            // What the steps left in out/ cannot be packed: the build's fault.
            ArtifactError::Unpackable { .. } => Failure::Build(format!("out/ cannot be packed: {e}")),
            e => Failure::Infra(format!("packing or signing: {e}")),
        }
    }
}

/// A local file-system error about `path`: the farm's.
pub(crate) fn io_failure(what: &str, path: &Path) -> impl FnOnce(std::io::Error) -> Failure {
    let msg = format!("{what} {}", path.display());
    move |e| Failure::Infra(format!("{msg}: {e}"))
}

/// How a step's end is recorded: its exit code, and its outcome in the
/// build's manifest and step events.
pub(crate) fn step_outcome(exit: Exit) -> (Option<i64>, &'static str) {
    match exit {
        Exit::Code(0) => (Some(0), "ok"),
        Exit::Code(c) => (Some(c), "failed"),
        Exit::OutOfMemory => (Some(137), "out_of_memory"),
        Exit::TimedOut => (None, "timed_out"),
        Exit::Killed => (None, "stopped"),
    }
}

/// The outcome of a step whose container could not be run.
pub(crate) const STEP_ERROR: &str = "error";
/// The outcome of a step stopped by the build's disk limit.
pub(crate) const DISK_EXCEEDED: &str = "disk_limit_exceeded";

/// What a step's end means for the build. A failure quotes the step's
/// last output (`tail`); `memory_mb` and `timeout_secs` are its limits.
pub(crate) fn step_result(
    step: &str,
    exit: Exit,
    tail: &str,
    memory_mb: u64,
    timeout_secs: u64,
) -> Result<(), Failure> {
    let with_tail = |msg: String| if tail.is_empty() { msg } else { format!("{msg}; last output:\n{tail}") };
    match exit {
        Exit::Code(0) => Ok(()),
        Exit::Code(c) => Err(Failure::Build(with_tail(format!("step {step:?} exited with code {c}")))),
        Exit::OutOfMemory => Err(Failure::Build(with_tail(format!(
            "step {step:?} was killed: it exceeded the memory limit of {memory_mb} MiB"
        )))),
        Exit::TimedOut => {
            Err(Failure::Build(with_tail(format!("step {step:?} timed out after {timeout_secs}s and was killed"))))
        }
        Exit::Killed => Err(Failure::Stopped),
    }
}

/// Check what the steps left: `root` and `out` still real directories and
/// `out/<binary>` a regular file (a step may have swapped any of them for
/// a symlink). Run only once every container is gone.
pub(crate) fn check_output(root: &Path, out: &Path, binary: &str) -> Result<(), Failure> {
    check_real_dir(root)?;
    check_real_dir(out)?;
    match std::fs::symlink_metadata(out.join(binary)) {
        Ok(m) if m.file_type().is_file() => Ok(()),
        Ok(_) => Err(Failure::Build(format!("out/{binary} is not a regular file"))),
        Err(_) => Err(Failure::Build(format!("the steps did not produce out/{binary}"))),
    }
}

/// Refuse a path the steps may have swapped for a symlink.
fn check_real_dir(path: &Path) -> Result<(), Failure> {
    match std::fs::symlink_metadata(path) {
        Ok(m) if m.file_type().is_dir() => Ok(()),
        Ok(_) => Err(Failure::Build(format!("{} was replaced by something that is not a directory", path.display()))),
        Err(e) => Err(Failure::Infra(format!("{}: {e}", path.display()))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_step_fails_the_build_by_its_own_doing_and_only_then() {
        assert!(step_result("build", Exit::Code(0), "", 256, 60).is_ok());
        let Err(Failure::Build(m)) = step_result("build", Exit::Code(3), "boom", 256, 60) else { panic!() };
        assert_eq!(m, "step \"build\" exited with code 3; last output:\nboom");
        let Err(Failure::Build(m)) = step_result("build", Exit::OutOfMemory, "", 256, 60) else { panic!() };
        assert!(m.contains("memory limit of 256 MiB"), "{m}");
        let Err(Failure::Build(m)) = step_result("build", Exit::TimedOut, "", 256, 60) else { panic!() };
        assert!(m.contains("timed out after 60s"), "{m}");
        assert!(matches!(step_result("build", Exit::Killed, "", 256, 60), Err(Failure::Stopped)));
        assert_eq!(step_outcome(Exit::OutOfMemory), (Some(137), "out_of_memory"));
    }

    #[test]
    fn host_paths_are_hidden() {
        let text = include_str!("../../../config.test.yml");
        let env = |k: &str| match k {
            "DATABASE_URL" => Some("postgres://x/y".to_owned()),
            "KILN_DATA_DIR" => Some("/srv/kiln-data".to_owned()),
            _ => None,
        };
        let config = Config::parse(text, "config.test.yml", &env).unwrap();
        let msg = "out/ cannot be packed: /srv/kiln-data/work/3fd6a1-Xy12/work/out/sub: symlink to /etc leaves \
                   the directory; /srv/kiln-data/work/3fd6a1-Xy12/artifact.tar: no space; \
                   /srv/kiln-data/artifacts/ab/cd: denied; /srv/kiln-data/kiln.key: unreadable; \
                   \"/srv/kiln-data/work/3fd6a1-Xy12/work\"";
        let public = hide_host_paths(msg, &config);
        assert!(!public.contains("/srv/kiln-data"), "{public}");
        assert!(public.contains("packed: /work/out/sub: symlink to /etc"), "{public}");
        assert!(public.contains("[worker.work_dir]/3fd6a1-Xy12/artifact.tar: no space"), "{public}");
        assert!(public.contains("[storage.local.path]/ab/cd"), "{public}");
        assert!(public.contains("[signing.secret_key]: unreadable"), "{public}");
        assert!(public.ends_with("\"/work\""), "{public}");
        let Failure::Build(m) = Failure::Build(msg.into()).public(&config) else { panic!() };
        assert_eq!(m, public);
    }

    #[test]
    fn output_must_be_real_directories_and_a_regular_binary() {
        let dir = tempfile::tempdir().unwrap();
        let (root, out) = (dir.path(), dir.path().join("out"));
        std::fs::create_dir(&out).unwrap();
        assert!(matches!(check_output(root, &out, "hello"), Err(Failure::Build(m)) if m.contains("did not produce")));
        std::os::unix::fs::symlink("/etc/passwd", out.join("hello")).unwrap();
        assert!(
            matches!(check_output(root, &out, "hello"), Err(Failure::Build(m)) if m.contains("not a regular file"))
        );
        std::fs::remove_file(out.join("hello")).unwrap();
        std::fs::write(out.join("hello"), "#!/bin/sh\n").unwrap();
        assert!(check_output(root, &out, "hello").is_ok());
        std::fs::remove_dir_all(&out).unwrap();
        std::os::unix::fs::symlink(root, &out).unwrap();
        assert!(matches!(check_output(root, &out, "hello"), Err(Failure::Build(m)) if m.contains("replaced")));
    }
}
