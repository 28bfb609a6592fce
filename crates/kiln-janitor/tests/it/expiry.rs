//! Expiry removes both the stored objects and the rows, on a local directory
//! and on s3s-fs; with storage unreachable it keeps the row for next time.

use std::path::PathBuf;
use std::time::Duration;

use kiln_domain::{BuildKey, BuildState};
use kiln_janitor::Task;
use kiln_queue::EnqueueOutcome;
use kiln_storage::{ObjectName, Storage};
use kiln_testkit::TestDb;
use kiln_testkit::s3::S3Server;

use crate::support::{
    files_of, files_under, finished, janitor, janitor_with, local_storage, settings, spec, store_objects,
};

/// The builds of one expiry scenario.
struct Crafted {
    /// Succeeded 25 h ago (default TTL a day): expires.
    old: BuildKey,
    /// Recipe `short` (TTL two hours), succeeded 3 h ago: expires.
    short_old: BuildKey,
    /// Succeeded 3 h ago under the default TTL: stays.
    young: BuildKey,
    /// Failed 11 h ago (failure TTL ten hours): removed.
    failed_old: BuildKey,
    /// Failed 2 h ago: stays.
    failed_young: BuildKey,
}

async fn craft(db: &TestDb, storage: &Storage) -> Crafted {
    let q = db.queue(crate::support::queue_settings());
    let c = Crafted {
        old: finished(db, &q, "long", 1, BuildState::Succeeded, 25).await,
        short_old: finished(db, &q, "short", 1, BuildState::Succeeded, 3).await,
        young: finished(db, &q, "long", 2, BuildState::Succeeded, 3).await,
        failed_old: finished(db, &q, "long", 3, BuildState::Failed, 11).await,
        failed_young: finished(db, &q, "long", 4, BuildState::Failed, 2).await,
    };
    for key in [&c.old, &c.short_old, &c.young] {
        store_objects(storage, key, &ObjectName::ALL).await;
    }
    for key in [&c.failed_old, &c.failed_young] {
        store_objects(storage, key, &[ObjectName::Log]).await;
    }
    c
}

/// Run expiry over `c`, with `files()` listing what the store holds, and
/// check objects and rows of exactly the expired builds are gone.
async fn expiry_removes_objects_and_rows(db: &TestDb, storage: Storage, files: impl Fn() -> Vec<String>) {
    let c = craft(db, &storage).await;
    let before = files();
    for key in [&c.old, &c.short_old, &c.young] {
        assert_eq!(files_of(&before, key).len(), ObjectName::ALL.len(), "{key} stored: {before:?}");
    }
    let j = janitor(db, storage);
    let q = j.queue();

    let r = j.run(Task::Expiry).await;
    assert!(r.ok, "{r:?}");
    let counts: Vec<_> = r.counts.iter().collect();
    // Every object of the two expired builds, and the failed build's log.
    let deleted = 2 * ObjectName::ALL.len() as i64 + 1;
    assert_eq!(
        counts,
        vec![
            ("expired", 2),
            ("removed_failed", 1),
            ("objects_deleted", deleted),
            ("storage_errors", 0),
            ("skipped", 0)
        ]
    );
    let after = files();
    for gone in [&c.old, &c.short_old, &c.failed_old] {
        assert!(files_of(&after, gone).is_empty(), "objects of {gone} remain: {after:?}");
        assert!(q.get(gone).await.unwrap().is_none(), "row of {gone} remains");
        let events: i64 = sqlx::query_scalar("SELECT count(*) FROM build_events WHERE build_key = $1")
            .bind(gone.as_str())
            .fetch_one(db.pool())
            .await
            .unwrap();
        let attempts: i64 = sqlx::query_scalar("SELECT count(*) FROM build_attempts WHERE build_key = $1")
            .bind(gone.as_str())
            .fetch_one(db.pool())
            .await
            .unwrap();
        assert_eq!((events, attempts), (0, 0), "the cascade removed events and attempts of {gone}");
    }
    assert_eq!(files_of(&after, &c.young).len(), ObjectName::ALL.len());
    assert_eq!(files_of(&after, &c.failed_young).len(), 1);
    assert_eq!(q.get(&c.young).await.unwrap().unwrap().state, BuildState::Succeeded);
    assert_eq!(q.get(&c.failed_young).await.unwrap().unwrap().state, BuildState::Failed);

    // The same request now builds afresh instead of pointing at nothing.
    let again = q.enqueue(&spec("long", 1), 0).await.unwrap();
    assert_eq!((again.build.key, again.outcome), (c.old.clone(), EnqueueOutcome::Created));

    // Idempotent.
    let r = j.run(Task::Expiry).await;
    assert_eq!(r.counts.get("expired") + r.counts.get("removed_failed") + r.counts.get("objects_deleted"), 0);
    assert_eq!(q.janitor_runs().await.unwrap()[0].totals["expired"], 2);
}

#[tokio::test]
async fn expiry_on_a_local_directory() {
    let db = TestDb::new().await.unwrap();
    let (storage, dir) = local_storage();
    let root: PathBuf = dir.path().to_path_buf();
    expiry_removes_objects_and_rows(&db, storage, || files_under(&root)).await;
    // Emptied build directories go too.
    let dirs: Vec<_> = std::fs::read_dir(dir.path()).unwrap().flatten().map(|e| e.file_name()).collect();
    assert_eq!(dirs.len(), 2, "only the two kept builds' directories remain: {dirs:?}");
}

#[tokio::test]
async fn expiry_on_s3() {
    let db = TestDb::new().await.unwrap();
    let s3 = S3Server::start();
    let storage = Storage::from_config(&s3.storage_config("farm")).unwrap();
    expiry_removes_objects_and_rows(&db, storage, || s3.files()).await;
}

#[tokio::test]
async fn expiry_with_storage_unreachable_keeps_the_row_for_the_next_run() {
    let db = TestDb::new().await.unwrap();
    // A real S3 configuration whose server has stopped: nothing answers.
    let s3 = S3Server::start();
    let config = s3.storage_config("farm");
    drop(s3);
    let unreachable = Storage::from_config(&config).unwrap();
    let mut s = settings();
    s.storage_timeout = Duration::from_secs(5);
    let j = janitor_with(&db, unreachable, s);
    let q = j.queue();
    let mut keys = Vec::new();
    for n in 0..4 {
        keys.push(finished(&db, q, "long", n, BuildState::Succeeded, 25).await);
    }

    let r = j.run(Task::Expiry).await;
    assert!(!r.ok, "a storage failure makes the run fail: {r:?}");
    // Three failures in a row: storage is down, the run stops there.
    assert_eq!((r.counts.get("expired"), r.counts.get("storage_errors")), (0, 3));
    assert!(r.error.as_deref().unwrap().contains("storage"), "{r:?}");
    for key in &keys {
        let b = q.get(key).await.unwrap().expect("the row stays");
        assert_eq!(b.state, BuildState::Succeeded);
        assert_eq!(q.attempts(key).await.unwrap().len(), 1, "and so do its attempts");
    }
    let runs = q.janitor_runs().await.unwrap();
    assert_eq!((runs[0].ok, runs[0].failures), (false, 1), "the failure is visible to /metrics");

    // Storage is back: the next run removes it.
    let (storage, _dir) = local_storage();
    let j = janitor(&db, storage);
    let r = j.run(Task::Expiry).await;
    assert!(r.ok, "{r:?}");
    assert_eq!(r.counts.get("expired"), 4);
    for key in &keys {
        assert!(q.get(key).await.unwrap().is_none());
    }
}
