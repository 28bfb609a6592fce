//! Limits of a build, the worker's side: disk per build (a per-build
//! filesystem and the watcher), disk backpressure, orphan sweeps while
//! running, and no host paths in what users read.

use std::time::{Duration, Instant};

use kiln_config::{Config, DiskEnforcement};
use kiln_domain::{BuildKey, BuildState, FailureKind};
use kiln_worker::disk::WATCH_EVERY;
use kiln_worker::{Exit, JobEnd};

use crate::farm::{Farm, PATIENCE, containers_of, entries, sigterm, wait_exit};

const MIB: f64 = 1024.0 * 1024.0;
/// The disk limit of these tests, in MiB.
const LIMIT_MB: u64 = 16;

/// Whether this process may loop-mount a filesystem (root, and `mount`
/// works here); prints a loud line when not.
fn can_mount(test: &str) -> bool {
    let root = is_root();
    let tools = ["mkfs.ext4", "mount", "umount"].iter().all(|t| {
        std::process::Command::new("sh")
            .arg("-c")
            .arg(format!("command -v {t}"))
            .output()
            .is_ok_and(|o| o.status.success())
    });
    if !(root && tools) {
        let line = format!(
            "SKIPPED: {test}: the per-build filesystem needs root, mkfs.ext4 and mount; tested the watcher only"
        );
        println!("{line}");
        eprintln!("{line}");
    }
    root && tools
}

fn is_root() -> bool {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| s.lines().find(|l| l.starts_with("Uid:")).map(|l| l.split_whitespace().nth(2) == Some("0")))
        .unwrap_or(false)
}

/// Mounts whose mount point lies under `dir`.
fn mounts_under(dir: &std::path::Path) -> Vec<String> {
    let dir = dir.canonicalize().unwrap_or_else(|_| dir.to_path_buf()).display().to_string();
    std::fs::read_to_string("/proc/self/mountinfo")
        .unwrap()
        .lines()
        .filter_map(|l| l.split_whitespace().nth(4).map(str::to_owned))
        .filter(|m| m.starts_with(&dir))
        .collect()
}

/// The config of these tests: a small disk limit kept by `mode`.
fn limited(farm: &Farm, mode: DiskEnforcement) -> Config {
    let mut config = farm.config.clone();
    config.worker.limits.disk_mb = LIMIT_MB;
    config.worker.limits.disk_enforcement = mode;
    config
}

/// What `/work` held when the step was stopped, from the build's error.
fn held_mib(error: &str) -> f64 {
    let held = error.split("/work held ").nth(1).expect("the error says what /work held");
    held.trim_end_matches(" MiB").parse().expect("a number of MiB")
}

/// The most the step itself says it wrote.
fn step_wrote(log: &str) -> u64 {
    log.lines().filter_map(|l| l.strip_prefix("wrote ")?.strip_suffix(" bytes")?.trim().parse().ok()).max().unwrap_or(0)
}

async fn wait_state(farm: &Farm, key: &BuildKey, done: impl Fn(BuildState) -> bool) -> kiln_queue::Build {
    let start = Instant::now();
    loop {
        let b = farm.build(key).await;
        if done(b.state) {
            return b;
        }
        assert!(start.elapsed() < PATIENCE, "build {key} stayed {:?}", b.state);
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// A step writing without end is stopped at the limit; the build fails as
/// the build's failure with the disk message; the worker carries on and
/// its next build succeeds; nothing is left mounted or on disk.
async fn writes_until_stopped(name: &str, mode: DiskEnforcement, patch: u32) {
    let Some(farm) = Farm::new(name).await else { return };
    let id = format!("{name}-{}", std::process::id());
    let worker = farm.start_stoppable(&id, limited(&farm, mode)).await;
    let key = farm.enqueue(&farm.spec("hostile", &format!("v1.0.{patch}"), &[])).await;
    let b = wait_state(&farm, &key, |s| s.is_final()).await;
    assert_eq!(b.state, BuildState::Failed, "{:?}", b.error);
    assert_eq!(b.failure_kind, Some(FailureKind::Build));
    let error = b.error.unwrap();
    assert!(error.contains(&format!("disk limit exceeded (limit {LIMIT_MB} MiB)")), "{error}");
    let log = farm.queue.log_text(&key).await.unwrap();
    assert!(log.contains("disk limit exceeded"), "{log}");

    // What /work held after the step was killed, and what the step says it wrote.
    let held = held_mib(&error);
    let wrote = step_wrote(&log) as f64 / MIB;
    assert!(wrote <= held + 0.1, "the step wrote {wrote:.1} MiB, /work held {held:.1} MiB");
    let limit = LIMIT_MB as f64;
    match mode {
        // A hard size: nothing past the limit can be written.
        DiskEnforcement::Filesystem => assert!(held <= limit, "{held:.1} MiB held under a {limit} MiB filesystem"),
        // README "Disk per build": the step's rate times one period, the
        // measurement and the kill. This step writes 1 MiB at a time; its
        // pace here stays well under 256 MiB/s.
        _ => {
            let bound = limit + 256.0 * (WATCH_EVERY.as_secs_f64() + 0.5);
            // (`held` is rounded to a tenth.)
            assert!(held >= limit - 0.05, "the watcher stops a step only past the limit: {held:.1}");
            assert!(held <= bound, "{held:.1} MiB held, bound {bound:.1} MiB");
        }
    }
    println!("{name}: limit {limit} MiB, /work held {held:.1} MiB when the step was stopped");

    // The same worker goes on: the next build succeeds.
    let next = farm.enqueue(&farm.spec("hello", "v1.0.0", &[("example.com/wave", "v0.3.0")])).await;
    let b = wait_state(&farm, &next, |s| s.is_final()).await;
    assert_eq!(b.state, BuildState::Succeeded, "{:?}", b.error);
    worker.shutdown.cancel();
    worker.task.await.unwrap().unwrap();
    assert!(containers_of(&key, &id).is_empty());
    assert!(entries(&farm.work_dir()).is_empty(), "{:?}", entries(&farm.work_dir()));
    assert!(mounts_under(farm.dir.path()).is_empty(), "{:?}", mounts_under(farm.dir.path()));
    // No host path in what users read.
    let data = farm.dir.path().display().to_string();
    assert!(!error.contains(&data) && !log.contains(&data), "{error}\n{log}");
}

#[tokio::test]
async fn a_step_writing_without_end_is_stopped_by_the_per_build_filesystem() {
    if can_mount("disk-fs") {
        writes_until_stopped("disk-fs", DiskEnforcement::Filesystem, 11).await;
    }
}

#[tokio::test]
async fn a_step_writing_without_end_is_stopped_by_the_watcher() {
    writes_until_stopped("disk-watch", DiskEnforcement::Watcher, 12).await;
}

#[tokio::test]
async fn builds_failing_in_packing_or_a_step_show_no_host_path() {
    let Some(farm) = Farm::new("hostpaths").await else { return };
    let data = farm.dir.path().display().to_string();
    let canonical = farm.dir.path().canonicalize().unwrap().display().to_string();

    let packing = farm.enqueue(&farm.spec("hostile", "v2.0.0", &[])).await;
    let Exit::Once(JobEnd::Failed(error)) = farm.run_once(&format!("hostpaths-a-{}", std::process::id())).await else {
        panic!("a symlink out of out/ fails the build");
    };
    assert!(error.contains("out/ cannot be packed: /work/out/sub/passwd: symlink to /etc/passwd leaves"), "{error}");
    let step = farm.enqueue(&farm.spec("fail", "v1.0.0", &[])).await;
    let Exit::Once(JobEnd::Failed(step_error)) = farm.run_once(&format!("hostpaths-b-{}", std::process::id())).await
    else {
        panic!("the fail recipe fails");
    };
    for (key, error) in [(packing, error), (step, step_error)] {
        let b = farm.build(&key).await;
        assert_eq!(b.error.as_deref(), Some(error.as_str()));
        let log = farm.queue.log_text(&key).await.unwrap();
        let stored = String::from_utf8(farm.object(&key, kiln_storage::ObjectName::Log).await).unwrap();
        for text in [&error, &log, &stored] {
            assert!(!text.contains(&data) && !text.contains(&canonical), "a host path in:\n{text}");
        }
    }
}

/// Below `min_free_disk_mb` the worker claims nothing and says so (log,
/// row); with the limit lowered, it claims again.
#[tokio::test]
async fn a_worker_short_of_disk_claims_nothing_until_the_limit_is_lowered() {
    let Some(farm) = Farm::new("diskfull").await else { return };
    let key = farm.enqueue(&farm.spec("hello", "v1.0.0", &[("example.com/whisper", "v2.1.0")])).await;
    let id = format!("diskfull-{}", std::process::id());
    let log_path = farm.dir.path().join("worker-low.log");
    // More free space than any disk has.
    let mut cmd = farm.worker_command(&id, &[("KILN_MIN_FREE_DISK_MB", "1000000000000")]);
    cmd.stdout(std::process::Stdio::null()).stderr(std::fs::File::create(&log_path).unwrap());
    let mut child = cmd.spawn().unwrap();

    let start = Instant::now();
    let row = loop {
        if let Some(row) = farm.queue.worker(&id).await.unwrap()
            && row.disk_low
        {
            break row;
        }
        assert!(start.elapsed() < PATIENCE, "the worker never said its disk is low");
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert!(row.disk_free_mb.is_some_and(|mb| mb > 0), "{row:?}");
    // Several claim rounds pass (a notification and a poll).
    farm.queue.enqueue(&farm.spec("hello", "v1.0.0", &[]), 0).await.unwrap();
    tokio::time::sleep(Duration::from_secs(6)).await;
    assert_eq!(farm.build(&key).await.state, BuildState::Queued, "a worker short of disk claimed");
    sigterm(&child);
    assert!(wait_exit(&mut child).await.unwrap().success());
    let log = std::fs::read_to_string(&log_path).unwrap();
    let said = log.matches("not claiming builds: free disk space of worker.work_dir is below").count();
    assert_eq!(said, 1, "said once per change, not at every claim round:\n{log}");

    // Lowered: it claims again and builds.
    let mut child = farm.spawn_worker(&id, &[("KILN_MIN_FREE_DISK_MB", "1")]);
    let b = wait_state(&farm, &key, |s| s.is_final()).await;
    assert_eq!(b.state, BuildState::Succeeded, "{:?}", b.error);
    assert!(!farm.queue.worker(&id).await.unwrap().unwrap().disk_low);
    sigterm(&child);
    assert!(wait_exit(&mut child).await.unwrap().success());
}

/// A worker whose disk fills up while it runs stops claiming, and claims
/// again once space returns, saying so once each time. Its work directory
/// is a small tmpfs of its own.
#[tokio::test]
async fn a_worker_claims_again_when_space_returns() {
    let Some(farm) = Farm::new("diskback").await else { return };
    if !can_mount("diskback") {
        return;
    }
    let work = farm.work_dir();
    std::fs::create_dir_all(&work).unwrap();
    let mounted = std::process::Command::new("mount")
        .args(["-t", "tmpfs", "-o", "size=64m,mode=755", "tmpfs"])
        .arg(&work)
        .status()
        .unwrap();
    assert!(mounted.success());
    struct Unmount(std::path::PathBuf);
    impl Drop for Unmount {
        fn drop(&mut self) {
            let _ = std::process::Command::new("umount").arg("-l").arg(&self.0).status();
        }
    }
    let _unmount = Unmount(work.clone());
    let ballast = work.join("ballast");
    std::fs::write(&ballast, vec![7u8; 48 << 20]).unwrap();

    let id = format!("diskback-{}", std::process::id());
    let log_path = farm.dir.path().join("worker.log");
    let extra = [("KILN_MIN_FREE_DISK_MB", "32"), ("KILN_DISK_ENFORCEMENT", "watcher"), ("KILN_DISK_MB", "16")];
    let mut cmd = farm.worker_command(&id, &extra);
    cmd.stdout(std::process::Stdio::null()).stderr(std::fs::File::create(&log_path).unwrap());
    let mut child = cmd.spawn().unwrap();
    let key = farm.enqueue(&farm.spec("hello", "v1.0.0", &[("example.com/whisper", "v2.0.0")])).await;
    let start = Instant::now();
    while !farm.queue.worker(&id).await.unwrap().is_some_and(|r| r.disk_low) {
        assert!(start.elapsed() < PATIENCE, "the worker never said its disk is low");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(farm.build(&key).await.state, BuildState::Queued);

    std::fs::remove_file(&ballast).unwrap();
    let b = wait_state(&farm, &key, |s| s.is_final()).await;
    assert_eq!(b.state, BuildState::Succeeded, "{:?}", b.error);
    sigterm(&child);
    assert!(wait_exit(&mut child).await.unwrap().success());
    assert!(!farm.queue.worker(&id).await.unwrap().unwrap().disk_low);
    let log = std::fs::read_to_string(&log_path).unwrap();
    assert_eq!(log.matches("not claiming builds").count(), 1, "{log}");
    assert_eq!(log.matches("claiming builds: enough free disk space").count(), 1, "{log}");
}

/// A worker killed with SIGKILL mid-build and replaced by one with another
/// id: the new worker's sweep removes the dead one's container and work
/// directory (and mount) once its lease has lapsed, and finishes the build.
#[tokio::test]
async fn a_killed_worker_leaves_nothing_behind_its_replacement() {
    let Some(farm) = Farm::new("sweep").await else { return };
    let key = farm.enqueue(&farm.spec("sleep", "v5.0.17", &[])).await;
    let dead = format!("sweep-dead-{}", std::process::id());
    let mut child = farm.spawn_worker(&dead, &[]);
    farm.wait_log(&key, "slept 1 of 5").await;
    assert!(!containers_of(&key, &dead).is_empty());
    assert_eq!(entries(&farm.work_dir()).len(), 1);
    child.kill().unwrap();
    child.wait().unwrap();
    // The killed worker cleaned nothing up.
    assert!(!containers_of(&key, &dead).is_empty());
    let left = entries(&farm.work_dir());
    assert_eq!(left.len(), 1);

    let mut config = farm.config.clone();
    config.worker.sweep_secs = 1;
    let new = format!("sweep-new-{}", std::process::id());
    let worker = farm.start_stoppable(&new, config).await;
    // Nobody runs a janitor here: rescue the lapsed lease as it would.
    let mut gone_at = None;
    let start = Instant::now();
    let b = loop {
        farm.queue.rescue_lapsed().await.unwrap();
        let dead_dirs = entries(&farm.work_dir()).into_iter().filter(|e| left.contains(e)).count();
        if gone_at.is_none() && containers_of(&key, &dead).is_empty() && dead_dirs == 0 {
            gone_at = Some(Instant::now());
        }
        let b = farm.build(&key).await;
        if b.state.is_final() {
            break b;
        }
        assert!(start.elapsed() < PATIENCE, "the build was not finished: {:?}", b.state);
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    assert_eq!(b.state, BuildState::Succeeded, "{:?}", b.error);
    let attempts = farm.queue.attempts(&key).await.unwrap();
    assert_eq!(attempts.last().unwrap().worker_id, new, "the new worker finished the build");
    // Gone while the new worker was still building (a run of 5 s, sweeps every second).
    assert!(gone_at.is_some(), "the dead worker's container or directory outlived the build");
    assert!(containers_of(&key, &dead).is_empty());
    worker.shutdown.cancel();
    worker.task.await.unwrap().unwrap();
    assert!(entries(&farm.work_dir()).is_empty(), "{:?}", entries(&farm.work_dir()));
    assert!(mounts_under(farm.dir.path()).is_empty(), "{:?}", mounts_under(farm.dir.path()));
}
