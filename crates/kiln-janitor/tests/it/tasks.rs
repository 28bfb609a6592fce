//! Each task on crafted rows: rescue, final failure, retry, gone workers,
//! pruning; every run idempotent and recorded for `/metrics`.

use std::time::Duration;

use kiln_domain::{AttemptOutcome, BuildState, WorkerState};
use kiln_janitor::Task;
use kiln_queue::{Channel, Notification, WorkerInfo};
use kiln_storage::ObjectName;
use kiln_testkit::TestDb;

use crate::support::{finished, janitor, local_storage, spec, store_objects};

fn counts(r: &kiln_janitor::TaskReport) -> Vec<(&'static str, i64)> {
    r.counts.iter().collect()
}

#[tokio::test]
async fn rescue_requeues_a_lapsed_job_once_and_records_the_run() {
    let db = TestDb::new().await.unwrap();
    let (storage, _dir) = local_storage();
    let j = janitor(&db, storage);
    let q = j.queue();
    let key = q.enqueue(&spec("r", 1), 0).await.unwrap().build.key;
    let healthy = q.enqueue(&spec("r", 2), 0).await.unwrap().build.key;
    let claim = q.claim("w1", &[]).await.unwrap().unwrap();
    q.claim("w2", &[]).await.unwrap().unwrap();
    // Only the first lease lapses.
    sqlx::query("UPDATE builds SET lease_expires_at = now() - interval '1 second' WHERE key = $1")
        .bind(claim.lease.key.as_str())
        .execute(db.pool())
        .await
        .unwrap();

    let r = j.run(Task::Rescue).await;
    assert!(r.ok, "{r:?}");
    assert_eq!(counts(&r), vec![("requeued", 1), ("failed", 0), ("cancelled", 0)]);
    let lapsed = claim.lease.key.clone();
    let b = q.get(&lapsed).await.unwrap().unwrap();
    assert_eq!((b.state, b.attempts), (BuildState::Queued, 1));
    let attempts = q.attempts(&lapsed).await.unwrap();
    assert_eq!(attempts.len(), 1);
    assert_eq!(attempts[0].outcome, Some(AttemptOutcome::LeaseLapsed));
    assert_eq!(attempts[0].error.as_deref(), Some("lease lapsed on worker w1"));
    let other = if lapsed == key { &healthy } else { &key };
    assert_eq!(q.get(other).await.unwrap().unwrap().state, BuildState::Running, "a live lease is left alone");

    // Idempotent: the second run finds nothing.
    let again = j.run(Task::Rescue).await;
    assert_eq!(counts(&again), vec![("requeued", 0), ("failed", 0), ("cancelled", 0)]);

    let runs = q.janitor_runs().await.unwrap();
    assert_eq!(runs.len(), 1);
    assert_eq!((runs[0].task.as_str(), runs[0].janitor_id.as_str(), runs[0].runs), ("rescue", "test-janitor", 2));
    assert_eq!(runs[0].totals["requeued"], 1);
    assert_eq!(runs[0].counts["requeued"], 0);
}

#[tokio::test]
async fn rescue_fails_a_build_for_good_at_max_attempts() {
    let db = TestDb::new().await.unwrap();
    let (storage, _dir) = local_storage();
    let j = janitor(&db, storage);
    let q = j.queue();
    let key = q.enqueue(&spec("r", 1), 0).await.unwrap().build.key;
    for attempt in 1..=3 {
        let claim = q.claim(&format!("w{attempt}"), &[]).await.unwrap().expect("claimable again at once");
        assert_eq!(claim.attempts, attempt);
        db.lapse_all_leases().await;
        let r = j.run(Task::Rescue).await;
        let want = if attempt < 3 { ("requeued", 1) } else { ("failed", 1) };
        assert!(counts(&r).contains(&want), "attempt {attempt}: {r:?}");
    }
    let b = q.get(&key).await.unwrap().unwrap();
    assert_eq!(b.state, BuildState::Failed);
    assert_eq!(b.failure_kind, Some(kiln_domain::FailureKind::Infrastructure));
    let error = b.error.unwrap();
    assert!(error.contains("gave up after 3 attempts") && error.contains("lease lapsed on worker w3"), "{error}");
    let outcomes: Vec<_> = q.attempts(&key).await.unwrap().into_iter().map(|a| a.outcome).collect();
    assert_eq!(outcomes, vec![Some(AttemptOutcome::LeaseLapsed); 3]);
    assert!(q.claim("w4", &[]).await.unwrap().is_none(), "a failed build is not claimable");
}

#[tokio::test]
async fn retry_wakes_workers_once_the_backoff_ran_out() {
    let db = TestDb::new().await.unwrap();
    let (storage, _dir) = local_storage();
    let j = janitor(&db, storage);
    let q = j.queue();
    let notifier = q.notifier(&[Channel::Jobs]);
    let mut rx = notifier.subscribe();
    let key = q.enqueue(&spec("flaky", 1), 0).await.unwrap().build.key;
    let claim = q.claim("w", &[]).await.unwrap().unwrap();
    let kiln_queue::RetryOutcome::WillRetry { .. } = q.fail_infra(&claim.lease, "docker said no").await.unwrap() else {
        panic!("an infrastructure failure is retried");
    };

    // Backing off: nothing due, one waiting, not claimable.
    let r = j.run(Task::Retry).await;
    assert_eq!(counts(&r), vec![("due", 0), ("waiting", 1)]);
    assert!(q.claim("w", &[]).await.unwrap().is_none());

    // The backoff runs out (as the clock would make it): no state changes,
    // so no trigger fires; the janitor's nudge is what wakes workers.
    sqlx::query("UPDATE builds SET run_at = now() - interval '1 second' WHERE key = $1")
        .bind(key.as_str())
        .execute(db.pool())
        .await
        .unwrap();
    drain(&mut rx).await;
    let r = j.run(Task::Retry).await;
    assert_eq!(counts(&r), vec![("due", 1), ("waiting", 0)]);
    let woken = tokio::time::timeout(Duration::from_secs(30), async {
        loop {
            match rx.recv().await.unwrap() {
                Notification::Job { recipe } => return recipe,
                _ => continue,
            }
        }
    })
    .await
    .expect("a worker is woken");
    assert_eq!(woken, "flaky");
    let again = q.claim("w", &[]).await.unwrap().expect("claimable after the backoff");
    assert_eq!((again.lease.key, again.attempts), (key, 2));
}

/// Wait for the listener to be connected, then drop what it has queued.
async fn drain(rx: &mut tokio::sync::broadcast::Receiver<Notification>) {
    tokio::time::timeout(Duration::from_secs(30), async { while rx.recv().await.unwrap() != Notification::Resync {} })
        .await
        .expect("the listener connects");
    while rx.try_recv().is_ok() {}
}

#[tokio::test]
async fn silent_workers_are_marked_gone_and_their_jobs_rescued_in_the_same_run() {
    let db = TestDb::new().await.unwrap();
    let (storage, _dir) = local_storage();
    let j = janitor(&db, storage);
    let q = j.queue();
    for id in ["alive", "silent"] {
        q.register_worker(&WorkerInfo { id: id.into(), host: "h".into(), recipes: vec![], version: "t".into() })
            .await
            .unwrap();
    }
    let lost = q.enqueue(&spec("w", 1), 0).await.unwrap().build.key;
    let kept = q.enqueue(&spec("w", 2), -1).await.unwrap().build.key;
    assert_eq!(q.claim("silent", &[]).await.unwrap().unwrap().lease.key, lost);
    assert_eq!(q.claim("alive", &[]).await.unwrap().unwrap().lease.key, kept);
    // The silent worker's lease is still valid: only its silence gives it away.
    sqlx::query("UPDATE workers SET last_seen_at = now() - interval '5 minutes' WHERE id = 'silent'")
        .execute(db.pool())
        .await
        .unwrap();

    let r = j.run(Task::Workers).await;
    assert!(r.ok, "{r:?}");
    assert_eq!(counts(&r), vec![("gone", 1), ("requeued", 1), ("failed", 0), ("cancelled", 0)]);
    assert_eq!(q.worker("silent").await.unwrap().unwrap().state, WorkerState::Gone);
    assert_eq!(q.worker("alive").await.unwrap().unwrap().state, WorkerState::Active);
    assert_eq!(q.get(&lost).await.unwrap().unwrap().state, BuildState::Queued);
    assert_eq!(q.attempts(&lost).await.unwrap()[0].outcome, Some(AttemptOutcome::LeaseLapsed));
    assert_eq!(q.get(&kept).await.unwrap().unwrap().state, BuildState::Running);

    let again = j.run(Task::Workers).await;
    assert_eq!(counts(&again), vec![("gone", 0), ("requeued", 0), ("failed", 0), ("cancelled", 0)]);
}

#[tokio::test]
async fn pruning_removes_old_stored_logs_attempts_and_departed_workers_only() {
    let db = TestDb::new().await.unwrap();
    let (storage, _dir) = local_storage();
    let j = janitor(&db, storage.clone());
    let q = j.queue();
    let log_rows = "SELECT count(*) FROM build_events WHERE build_key = $1 AND kind = 'log'";
    let log_count = |key: kiln_domain::BuildKey| {
        let pool = db.pool().clone();
        async move { sqlx::query_scalar::<_, i64>(log_rows).bind(key.as_str()).fetch_one(&pool).await.unwrap() }
    };

    // Finished 30 h ago, log in storage: its live log goes, its attempts stay (< 48 h).
    let stored = finished(&db, q, "p", 1, BuildState::Succeeded, 30).await;
    store_objects(&storage, &stored, &[ObjectName::Log]).await;
    // Finished 30 h ago, no stored log (a cancelled build): its live log is the only copy.
    let unstored = finished(&db, q, "p", 2, BuildState::Cancelled, 30).await;
    // Finished 3 days ago, log stored: log and attempts go.
    let ancient = finished(&db, q, "p", 3, BuildState::Failed, 72).await;
    store_objects(&storage, &ancient, &[ObjectName::Log]).await;
    // Finished an hour ago: everything stays.
    let recent = finished(&db, q, "p", 4, BuildState::Succeeded, 1).await;
    store_objects(&storage, &recent, &[ObjectName::Log]).await;
    // Running: never touched.
    let running = q.enqueue(&spec("p", 5), 0).await.unwrap().build.key;
    let claim = q.claim("live", &[]).await.unwrap().unwrap();
    q.append_log(&claim.lease, "live output\n").await.unwrap();
    store_objects(&storage, &running, &[ObjectName::Log]).await;

    for id in ["gone-old", "stopped-old", "preempted-old", "gone-new", "active-old"] {
        q.register_worker(&WorkerInfo { id: id.into(), host: "h".into(), recipes: vec![], version: "t".into() })
            .await
            .unwrap();
    }
    for (id, state) in [
        ("gone-old", WorkerState::Gone),
        ("stopped-old", WorkerState::Stopped),
        ("preempted-old", WorkerState::Preempted),
        ("gone-new", WorkerState::Gone),
    ] {
        q.set_worker_state(id, state, None).await.unwrap();
    }
    sqlx::query("UPDATE workers SET last_seen_at = now() - interval '3 days' WHERE id LIKE '%-old'")
        .execute(db.pool())
        .await
        .unwrap();

    let r = j.run(Task::Prune).await;
    assert!(r.ok, "{r:?}");
    assert_eq!(
        counts(&r),
        vec![("log_chunks", 2), ("logs_not_stored", 1), ("storage_errors", 0), ("attempts", 1), ("workers", 3)]
    );
    assert_eq!(log_count(stored.clone()).await, 0);
    assert_eq!(log_count(ancient.clone()).await, 0);
    assert_eq!(log_count(unstored.clone()).await, 1, "the only copy of a log stays");
    assert_eq!(log_count(recent.clone()).await, 1);
    assert_eq!(q.log_text(&running).await.unwrap(), "live output\n");
    assert!(q.attempts(&ancient).await.unwrap().is_empty());
    assert_eq!(q.attempts(&stored).await.unwrap().len(), 1);
    assert_eq!(q.get(&ancient).await.unwrap().unwrap().attempts, 1, "the build row keeps its count");
    for (id, kept) in [
        ("gone-old", false),
        ("stopped-old", false),
        ("preempted-old", false),
        ("gone-new", true),
        ("active-old", true),
    ] {
        assert_eq!(q.worker(id).await.unwrap().is_some(), kept, "worker {id}");
    }

    // Idempotent: only the unstored log is looked at again, and kept.
    let again = j.run(Task::Prune).await;
    assert_eq!(
        counts(&again),
        vec![("log_chunks", 0), ("logs_not_stored", 1), ("storage_errors", 0), ("attempts", 0), ("workers", 0)]
    );
}
