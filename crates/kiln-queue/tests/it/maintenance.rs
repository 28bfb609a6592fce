//! The janitor's statements: expiry, pruning, run records and the leader lock.

use std::time::Duration;

use kiln_domain::{BuildKey, BuildState, WorkerState};
use kiln_queue::{ExpiryPolicy, Removal, WorkerInfo};
use kiln_testkit::TestDb;

use crate::support::{settings, spec};
use kiln_testkit::rows::finished;

const HOUR: Duration = Duration::from_secs(3600);

/// Run `sql` with `key` as `$1`.
async fn exec(db: &TestDb, sql: &str, key: &BuildKey) {
    sqlx::query(sql).bind(key.as_str()).execute(db.pool()).await.unwrap();
}

async fn count(db: &TestDb, sql: &str, key: &BuildKey) -> i64 {
    sqlx::query_scalar(sql).bind(key.as_str()).fetch_one(db.pool()).await.unwrap()
}

fn policy() -> ExpiryPolicy {
    ExpiryPolicy {
        artifact_ttl: 24 * HOUR,
        recipe_artifact_ttls: vec![("short".into(), 2 * HOUR)],
        failure_ttl: 10 * HOUR,
    }
}

#[tokio::test]
async fn expirable_follows_recipe_and_default_ttls_and_the_failure_ttl() {
    let db = TestDb::new().await.unwrap();
    let queue = db.queue(settings());
    let short_old = finished(&db, &queue, "short", 1, BuildState::Succeeded, 3).await;
    let short_new = finished(&db, &queue, "short", 2, BuildState::Succeeded, 1).await;
    let default_old = finished(&db, &queue, "long", 1, BuildState::Succeeded, 25).await;
    let default_new = finished(&db, &queue, "long", 2, BuildState::Succeeded, 3).await;
    let failed_old = finished(&db, &queue, "long", 3, BuildState::Failed, 11).await;
    let failed_new = finished(&db, &queue, "long", 4, BuildState::Failed, 9).await;
    let cancelled_old = finished(&db, &queue, "long", 5, BuildState::Cancelled, 12).await;
    // Live builds never expire, however old.
    let queued = queue.enqueue(&spec("short", 9), 0).await.unwrap().build.key;
    exec(&db, "UPDATE builds SET created_at = now() - interval '100 days' WHERE key = $1", &queued).await;

    let found = queue.expirable(&policy(), 100).await.unwrap();
    let keys: Vec<_> = found.iter().map(|e| e.key.clone()).collect();
    // Oldest first.
    assert_eq!(keys, vec![default_old.clone(), cancelled_old.clone(), failed_old.clone(), short_old.clone()]);
    assert_eq!(found[0].state, BuildState::Succeeded);
    assert_eq!(found[1].state, BuildState::Cancelled);
    for young in [&short_new, &default_new, &failed_new, &queued] {
        assert!(!keys.contains(young));
    }
    assert_eq!(queue.expirable(&policy(), 2).await.unwrap().len(), 2, "the limit holds");
}

#[tokio::test]
async fn remove_expired_deletes_row_attempts_and_events_only_when_storage_succeeded() {
    let db = TestDb::new().await.unwrap();
    let queue = db.queue(settings());
    let key = finished(&db, &queue, "short", 1, BuildState::Succeeded, 3).await;
    let build = queue.expirable(&policy(), 10).await.unwrap().remove(0);
    assert_eq!(build.key, key);

    // Storage failed: the row, its attempts and events stay.
    let kept = queue.remove_expired(&build, || async { Err::<(), _>("storage unreachable") }).await.unwrap();
    assert!(matches!(kept, Removal::Kept("storage unreachable")), "{kept:?}");
    assert_eq!(queue.get(&key).await.unwrap().unwrap().state, BuildState::Succeeded);
    assert_eq!(queue.attempts(&key).await.unwrap().len(), 1);

    // Storage succeeded: everything goes.
    let mut called = false;
    let removed = queue
        .remove_expired(&build, || {
            called = true;
            async { Ok::<(), String>(()) }
        })
        .await
        .unwrap();
    assert!(matches!(removed, Removal::Removed) && called);
    assert!(queue.get(&key).await.unwrap().is_none());
    assert_eq!(count(&db, "SELECT count(*) FROM build_attempts WHERE build_key = $1", &key).await, 0);
    assert_eq!(count(&db, "SELECT count(*) FROM build_events WHERE build_key = $1", &key).await, 0);

    // Gone already: skipped, storage not touched.
    let again = queue.remove_expired(&build, || async { panic!("storage must not be touched") }).await.unwrap();
    assert!(matches!(again, Removal::<()>::Skipped));
    // The same request now builds afresh.
    let fresh = queue.enqueue(&spec("short", 1), 0).await.unwrap();
    assert_eq!((fresh.outcome, fresh.build.state), (kiln_queue::EnqueueOutcome::Created, BuildState::Queued));
}

#[tokio::test]
async fn remove_expired_skips_a_build_that_changed_since_it_was_listed() {
    let db = TestDb::new().await.unwrap();
    let queue = db.queue(settings());
    let key = finished(&db, &queue, "long", 1, BuildState::Failed, 11).await;
    let build = queue.expirable(&policy(), 10).await.unwrap().remove(0);
    // An admin retried it meanwhile.
    assert!(queue.retry(&key).await.unwrap());
    let r = queue.remove_expired(&build, || async { panic!("storage must not be touched") }).await.unwrap();
    assert!(matches!(r, Removal::<()>::Skipped));
    assert_eq!(queue.get(&key).await.unwrap().unwrap().state, BuildState::Queued);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_request_during_expiry_waits_and_then_builds_afresh() {
    let db = TestDb::new().await.unwrap();
    let queue = db.queue(settings());
    let key = finished(&db, &queue, "short", 1, BuildState::Succeeded, 3).await;
    let build = queue.expirable(&policy(), 10).await.unwrap().remove(0);
    let (deleting_tx, deleting_rx) = tokio::sync::oneshot::channel::<()>();
    let (release_tx, release_rx) = tokio::sync::oneshot::channel::<()>();
    let expiry = {
        let queue = queue.clone();
        tokio::spawn(async move {
            queue
                .remove_expired(&build, || async move {
                    deleting_tx.send(()).unwrap();
                    release_rx.await.unwrap();
                    Ok::<(), ()>(())
                })
                .await
                .unwrap()
        })
    };
    deleting_rx.await.unwrap();
    // The objects are being deleted; a request for the same build arrives.
    let enqueue = {
        let queue = queue.clone();
        tokio::spawn(async move { queue.enqueue(&spec("short", 1), 0).await.unwrap() })
    };
    // It waits on the row lock rather than answering "succeeded".
    tokio::time::timeout(Duration::from_secs(30), async {
        loop {
            let waiting: i64 = sqlx::query_scalar(
                "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database() AND wait_event_type = 'Lock'",
            )
            .fetch_one(db.pool())
            .await
            .unwrap();
            if waiting > 0 {
                break;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await
    .expect("the request blocks on the expiring row");
    assert!(!enqueue.is_finished(), "the request waits for the expiry to commit");
    release_tx.send(()).unwrap();
    assert!(matches!(expiry.await.unwrap(), Removal::Removed));
    let e = enqueue.await.unwrap();
    assert_eq!(e.build.key, key);
    assert_eq!((e.outcome, e.build.state), (kiln_queue::EnqueueOutcome::Created, BuildState::Queued));
}

#[tokio::test]
async fn old_logs_are_listed_in_pages_and_pruned_only_for_finished_builds() {
    let db = TestDb::new().await.unwrap();
    let queue = db.queue(settings());
    let mut old = Vec::new();
    for n in 0..5 {
        old.push(finished(&db, &queue, "logs", n, BuildState::Succeeded, 30 - n as u32).await);
    }
    let recent = finished(&db, &queue, "logs", 10, BuildState::Succeeded, 1).await;
    // A running build's live log is never pruned.
    let running = queue.enqueue(&spec("logs", 11), 0).await.unwrap().build.key;
    let claim = queue.claim("w", &[]).await.unwrap().unwrap();
    queue.append_log(&claim.lease, "live\n").await.unwrap();

    let mut seen = Vec::new();
    let mut after = None;
    loop {
        let page = queue.builds_with_old_logs(24 * HOUR, after.clone(), 2).await.unwrap();
        if page.is_empty() {
            break;
        }
        after = page.last().cloned();
        seen.extend(page.into_iter().map(|(_, k)| k));
    }
    assert_eq!(seen, old, "every old build once, oldest first");

    // The caller found logs in storage for the first three only.
    assert_eq!(queue.prune_logs(&old[..3]).await.unwrap(), 3);
    let log_rows = "SELECT count(*) FROM build_events WHERE build_key = $1 AND kind = 'log'";
    assert_eq!(count(&db, log_rows, &old[0]).await, 0);
    assert_eq!(count(&db, log_rows, &old[3]).await, 1);
    // Other events (state changes) stay.
    assert!(count(&db, "SELECT count(*) FROM build_events WHERE build_key = $1", &old[0]).await > 0);
    // Pruning the running one does nothing.
    assert_eq!(queue.prune_logs(std::slice::from_ref(&running)).await.unwrap(), 0);
    assert_eq!(queue.log_text(&running).await.unwrap(), "live\n");
    assert_eq!(count(&db, log_rows, &recent).await, 1);
    let next: Vec<_> = queue.builds_with_old_logs(24 * HOUR, None, 10).await.unwrap();
    assert_eq!(next.into_iter().map(|(_, k)| k).collect::<Vec<_>>(), old[3..].to_vec());
}

#[tokio::test]
async fn old_attempts_and_departed_workers_are_pruned() {
    let db = TestDb::new().await.unwrap();
    let queue = db.queue(settings());
    let old = finished(&db, &queue, "a", 1, BuildState::Succeeded, 48).await;
    let recent = finished(&db, &queue, "a", 2, BuildState::Failed, 1).await;
    assert_eq!(queue.prune_attempts(24 * HOUR).await.unwrap(), 1);
    assert!(queue.attempts(&old).await.unwrap().is_empty());
    assert_eq!(queue.get(&old).await.unwrap().unwrap().attempts, 1, "the build keeps its count");
    assert_eq!(queue.attempts(&recent).await.unwrap().len(), 1);

    for id in ["active", "gone-old", "stopped-old", "gone-new", "gone-holding"] {
        let info = WorkerInfo { id: id.into(), host: "h".into(), recipes: vec![], version: "t".into() };
        queue.register_worker(&info).await.unwrap();
    }
    queue.enqueue(&spec("a", 3), 0).await.unwrap();
    queue.claim("gone-holding", &[]).await.unwrap().unwrap();
    for id in ["gone-old", "gone-new", "gone-holding"] {
        queue.set_worker_state(id, WorkerState::Gone, Some("silent")).await.unwrap();
    }
    queue.set_worker_state("stopped-old", WorkerState::Stopped, None).await.unwrap();
    sqlx::query("UPDATE workers SET last_seen_at = now() - interval '3 days' WHERE id <> 'gone-new'")
        .execute(db.pool())
        .await
        .unwrap();
    assert_eq!(queue.prune_workers(24 * HOUR).await.unwrap(), 2);
    for (id, kept) in [("active", true), ("gone-old", false), ("stopped-old", false), ("gone-new", true)] {
        assert_eq!(queue.worker(id).await.unwrap().is_some(), kept, "{id}");
    }
    assert!(queue.worker("gone-holding").await.unwrap().is_some(), "a worker named by a running lease stays");
}

#[tokio::test]
async fn janitor_runs_keep_the_last_counts_and_the_totals() {
    let db = TestDb::new().await.unwrap();
    let queue = db.queue(settings());
    let counts = |r: i64, f: i64| {
        let v = serde_json::json!({"requeued": r, "failed": f});
        v.as_object().unwrap().clone()
    };
    let now = chrono::Utc::now();
    queue.record_janitor_run("rescue", "j1", now, 3, None, &counts(2, 0)).await.unwrap();
    queue.record_janitor_run("rescue", "j2", now, 4, None, &counts(1, 1)).await.unwrap();
    queue.record_janitor_run("retry", "j2", now, 1, Some("database down"), &serde_json::Map::new()).await.unwrap();
    let runs = queue.janitor_runs().await.unwrap();
    assert_eq!(runs.len(), 2);
    let rescue = &runs[0];
    assert_eq!((rescue.task.as_str(), rescue.janitor_id.as_str()), ("rescue", "j2"));
    assert_eq!(rescue.counts, counts(1, 1));
    assert_eq!(rescue.totals, counts(3, 1));
    assert_eq!((rescue.runs, rescue.failures, rescue.ok), (2, 0, true));
    let retry = &runs[1];
    assert_eq!((retry.ok, retry.failures, retry.error.as_deref()), (false, 1, Some("database down")));
}

#[tokio::test]
async fn backing_off_counts_builds_waiting_for_their_retry() {
    let db = TestDb::new().await.unwrap();
    let queue = db.queue(settings());
    queue.enqueue(&spec("b", 1), 0).await.unwrap();
    let claim = queue.claim("w", &[]).await.unwrap().unwrap();
    queue.fail_infra(&claim.lease, "docker said no").await.unwrap();
    assert_eq!(queue.backing_off().await.unwrap(), 1);
    assert_eq!(queue.notify_due().await.unwrap(), 0);
    sqlx::query("UPDATE builds SET run_at = now()").execute(db.pool()).await.unwrap();
    assert_eq!(queue.backing_off().await.unwrap(), 0);
    assert_eq!(queue.notify_due().await.unwrap(), 1);
}

#[tokio::test]
async fn one_leader_at_a_time_and_a_dead_leaders_lock_passes_on() {
    let db = TestDb::new().await.unwrap();
    let queue = db.queue(settings());
    let mut a = queue.leadership(&format!("a-{}", db.name()));
    let mut b = queue.leadership(&format!("b-{}", db.name()));
    assert!(a.check().await.unwrap());
    assert!(!b.check().await.unwrap());
    assert!(a.check().await.unwrap(), "a leader stays leader");
    assert!(!b.check().await.unwrap());

    // A clean step-down hands over at the other's next check.
    a.release().await;
    assert!(b.check().await.unwrap());
    assert!(!a.check().await.unwrap());

    // The leader's connection dies: the lock goes with it.
    let killed: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM (SELECT pg_terminate_backend(pid, 10000) FROM pg_stat_activity WHERE application_name = $1) t",
    )
    .bind(format!("kiln-janitor-leader b-{}", db.name()))
    .fetch_one(db.pool())
    .await
    .unwrap();
    assert_eq!(killed, 1);
    assert!(a.check().await.unwrap(), "the standby takes over");
    assert!(!b.check().await.unwrap(), "the old leader notices and stands by");
    assert!(!b.is_leader());
}
