//! Crafted builds, a janitor over a test database, and waiting helpers.

use std::path::Path;
use std::time::{Duration, Instant};

use kiln_domain::BuildKey;
use kiln_janitor::{Janitor, JanitorSettings};
use kiln_queue::{ExpiryPolicy, QueueSettings};
use kiln_storage::{ObjectKey, ObjectName, Storage};
use kiln_testkit::TestDb;
pub use kiln_testkit::rows::{finished, spec};

pub const HOUR: Duration = Duration::from_secs(3600);

/// Longest a test waits for something that should happen in seconds: a
/// guard against hangs, not a timing assertion.
pub const PATIENCE: Duration = Duration::from_secs(180);

pub fn queue_settings() -> QueueSettings {
    kiln_testkit::rows::queue_settings(10 * HOUR)
}

/// Settings with round ages: artifacts live a day (recipe `short`: two
/// hours), failures ten hours; logs are pruned after a day, attempts and
/// workers after two.
pub fn settings() -> JanitorSettings {
    JanitorSettings {
        id: "test-janitor".into(),
        worker_gone_after: Duration::from_secs(60),
        expiry: ExpiryPolicy {
            artifact_ttl: 24 * HOUR,
            recipe_artifact_ttls: vec![("short".into(), 2 * HOUR)],
            failure_ttl: 10 * HOUR,
        },
        prune_logs_after: 24 * HOUR,
        prune_attempts_after: 48 * HOUR,
        prune_workers_after: 48 * HOUR,
        storage_timeout: Duration::from_secs(60),
        image_grace: 24 * HOUR,
    }
}

pub fn janitor(db: &TestDb, storage: Storage) -> Janitor {
    janitor_with(db, storage, settings())
}

pub fn janitor_with(db: &TestDb, storage: Storage, settings: JanitorSettings) -> Janitor {
    Janitor::new(db.queue(queue_settings()), storage, settings)
}

/// Local storage in a fresh directory (kept alive by the returned guard).
pub fn local_storage() -> (Storage, tempfile::TempDir) {
    let dir = tempfile::tempdir().unwrap();
    (Storage::local(dir.path()).unwrap(), dir)
}

/// Store every object of build `key`, as a worker would have.
pub async fn store_objects(storage: &Storage, key: &BuildKey, names: &[ObjectName]) {
    for name in names {
        storage.put_bytes(&ObjectKey::new(key, *name), format!("{name} of {key}").into_bytes()).await.unwrap();
    }
}

/// Files under `dir`, relative to it, sorted.
pub fn files_under(dir: &Path) -> Vec<String> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).into_iter().flatten().flatten() {
            let p = e.path();
            if p.is_dir() {
                stack.push(p);
            } else {
                out.push(p.strip_prefix(dir).unwrap().to_string_lossy().into_owned());
            }
        }
    }
    out.sort();
    out
}

/// Files of build `key` among `files` (paths relative to the store's root).
pub fn files_of(files: &[String], key: &BuildKey) -> Vec<String> {
    files.iter().filter(|f| f.contains(key.as_str())).cloned().collect()
}

/// Poll `check` every 100 ms until it returns `Some`, at most [`PATIENCE`];
/// `what` and `context()` explain a hang.
pub async fn wait_for<T, F, Fut>(what: &str, context: impl Fn() -> String, mut check: F) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    let start = Instant::now();
    loop {
        if let Some(v) = check().await {
            return v;
        }
        assert!(start.elapsed() < PATIENCE, "waited {PATIENCE:?} for {what}\n{}", context());
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}
