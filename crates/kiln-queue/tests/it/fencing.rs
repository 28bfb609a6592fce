//! Leases, rescue and hand-back: a worker whose lease is gone changes nothing.

use kiln_domain::{AttemptOutcome, BuildState, WorkerState};
use kiln_queue::{HandBack, QueueError, WorkerInfo};
use kiln_testkit::TestDb;
use kiln_testkit::rows::manifest;

use crate::support::{settings, spec};

fn is_lost<T: std::fmt::Debug>(r: Result<T, QueueError>) -> bool {
    matches!(r, Err(QueueError::LeaseLost { .. }))
}

#[tokio::test]
async fn a_rescued_worker_cannot_complete_fail_or_heartbeat_the_new_attempt() {
    let db = TestDb::new().await.unwrap();
    let queue = db.queue(settings());
    let s = spec("fence", 1);
    queue.enqueue(&s, 0).await.unwrap();
    let old = queue.claim("old", &[]).await.unwrap().unwrap();

    db.lapse_all_leases().await;
    // Lapsed but not yet rescued: already fenced out.
    assert!(is_lost(queue.heartbeat(&old.lease).await));
    let report = queue.rescue_lapsed().await.unwrap();
    assert_eq!(report.requeued, vec![s.key()]);

    let new = queue.claim("new", &[]).await.unwrap().unwrap();
    assert_ne!(new.lease.attempt_id, old.lease.attempt_id);
    assert!(is_lost(queue.heartbeat(&old.lease).await));
    assert!(is_lost(queue.complete(&old.lease, &manifest(&old.spec, "old")).await));
    assert!(is_lost(queue.fail_build(&old.lease, "old says failed").await));
    assert!(is_lost(queue.fail_infra(&old.lease, "old says infra").await));
    assert!(is_lost(queue.hand_back(&old.lease, HandBack::Preempted, "old").await));
    assert!(is_lost(queue.append_log(&old.lease, "old output\n").await));
    // Even the same worker id with the old token is refused.
    let mut forged = old.lease.clone();
    forged.worker_id = "new".into();
    assert!(is_lost(queue.complete(&forged, &manifest(&old.spec, "new")).await));

    queue.heartbeat(&new.lease).await.unwrap();
    queue.append_log(&new.lease, "new output\n").await.unwrap();
    queue.complete(&new.lease, &manifest(&new.spec, "new")).await.unwrap();
    let b = queue.get(&s.key()).await.unwrap().unwrap();
    assert_eq!(b.state, BuildState::Succeeded);
    assert_eq!(b.artifact, Some(manifest(&new.spec, "new")));
    assert_eq!(queue.log_text(&s.key()).await.unwrap(), "new output\n");
    let outcomes: Vec<_> = queue.attempts(&s.key()).await.unwrap().into_iter().map(|a| a.outcome).collect();
    assert_eq!(outcomes, vec![Some(AttemptOutcome::LeaseLapsed), Some(AttemptOutcome::Succeeded)]);
}

#[tokio::test]
async fn rescue_requeues_lapsed_jobs_and_fails_those_out_of_attempts() {
    let db = TestDb::new().await.unwrap();
    let queue = db.queue(settings());
    let s = spec("rescue", 1);
    queue.enqueue(&s, 0).await.unwrap();
    let healthy = queue.enqueue(&spec("rescue", 2), -1).await.unwrap().build.key;

    for attempt in 1..=3 {
        let claim = queue.claim(&format!("w{attempt}"), &[]).await.unwrap().unwrap();
        assert_eq!(claim.lease.key, s.key());
        assert_eq!(claim.attempts, attempt);
        if attempt == 1 {
            queue.append_log(&claim.lease, "first try\n").await.unwrap();
        }
        db.lapse_all_leases().await;
        let report = queue.rescue_lapsed().await.unwrap();
        if attempt < 3 {
            assert_eq!(report.requeued, vec![s.key()]);
            assert_eq!(queue.get(&s.key()).await.unwrap().unwrap().state, BuildState::Queued);
        } else {
            assert_eq!(report.failed, vec![s.key()]);
        }
    }
    let b = queue.get(&s.key()).await.unwrap().unwrap();
    assert_eq!(b.state, BuildState::Failed);
    let error = b.error.unwrap();
    assert!(error.contains("lease lapsed on worker w3") && error.contains("3 attempts"), "{error}");
    assert_eq!(queue.attempts(&s.key()).await.unwrap().len(), 3);
    // A second pass finds nothing more to do; the other job was never touched.
    assert_eq!(queue.rescue_lapsed().await.unwrap(), Default::default());
    assert_eq!(queue.get(&healthy).await.unwrap().unwrap().state, BuildState::Queued);
}

#[tokio::test]
async fn preemption_hand_back_keeps_the_attempt_count_and_is_claimable_at_once() {
    let db = TestDb::new().await.unwrap();
    let queue = db.queue(settings());
    let s = spec("spot", 1);
    queue.enqueue(&s, 0).await.unwrap();
    let claim = queue.claim("spot-1", &[]).await.unwrap().unwrap();
    assert_eq!(claim.attempts, 1);
    queue.hand_back(&claim.lease, HandBack::Preempted, "instance preempted").await.unwrap();

    let b = queue.get(&s.key()).await.unwrap().unwrap();
    assert_eq!(b.state, BuildState::Queued);
    assert_eq!(b.attempts, 0, "a preemption consumes no build attempt");
    assert_eq!(b.preemptions, 1);
    let again = queue.claim("spot-2", &[]).await.unwrap().expect("claimable at once");
    assert_eq!(again.attempts, 1);
    assert_eq!(again.attempt_no, 2);
    let outcomes: Vec<_> = queue.attempts(&s.key()).await.unwrap().into_iter().map(|a| a.outcome).collect();
    assert_eq!(outcomes, vec![Some(AttemptOutcome::Preempted), None]);
}

#[tokio::test]
async fn preemptions_have_their_own_budget() {
    let db = TestDb::new().await.unwrap();
    let queue = db.queue(settings()); // max_preemptions = 5
    let s = spec("bouncy", 1);
    queue.enqueue(&s, 0).await.unwrap();
    for _ in 0..6 {
        let claim = queue.claim("spot", &[]).await.unwrap().unwrap();
        queue.hand_back(&claim.lease, HandBack::Shutdown, "sigterm").await.unwrap();
    }
    let b = queue.get(&s.key()).await.unwrap().unwrap();
    assert_eq!(b.state, BuildState::Failed, "a job cannot bounce forever");
    assert!(b.error.unwrap().contains("handed back too many times"));
}

#[tokio::test]
async fn a_lapse_on_a_preempted_worker_counts_as_a_preemption() {
    let db = TestDb::new().await.unwrap();
    let queue = db.queue(settings());
    let info = WorkerInfo { id: "spot".into(), host: "h".into(), recipes: vec![], version: "t".into() };
    queue.register_worker(&info).await.unwrap();
    let s = spec("spot", 2);
    queue.enqueue(&s, 0).await.unwrap();
    queue.claim("spot", &[]).await.unwrap().unwrap();
    queue.set_worker_state("spot", WorkerState::Preempted, Some("gce preempted")).await.unwrap();
    db.lapse_all_leases().await;
    queue.rescue_lapsed().await.unwrap();
    let b = queue.get(&s.key()).await.unwrap().unwrap();
    assert_eq!((b.state, b.attempts, b.preemptions), (BuildState::Queued, 0, 1));
    assert_eq!(queue.attempts(&s.key()).await.unwrap()[0].outcome, Some(AttemptOutcome::Preempted));
}

#[tokio::test]
async fn silent_workers_are_marked_gone_and_their_jobs_rescued() {
    let db = TestDb::new().await.unwrap();
    let queue = db.queue(settings());
    for id in ["alive", "silent"] {
        let info = WorkerInfo { id: id.into(), host: "h".into(), recipes: vec![], version: "t".into() };
        queue.register_worker(&info).await.unwrap();
    }
    let s = spec("w", 1);
    queue.enqueue(&s, 0).await.unwrap();
    queue.claim("silent", &[]).await.unwrap().unwrap();
    sqlx::query("UPDATE workers SET last_seen_at = now() - interval '10 minutes' WHERE id = 'silent'")
        .execute(db.pool())
        .await
        .unwrap();
    let gone = queue.mark_silent_workers_gone(std::time::Duration::from_secs(60)).await.unwrap();
    assert_eq!(gone, vec!["silent".to_string()]);
    assert_eq!(queue.worker("silent").await.unwrap().unwrap().state, WorkerState::Gone);
    assert_eq!(queue.worker("alive").await.unwrap().unwrap().state, WorkerState::Active);
    assert_eq!(queue.rescue_lapsed().await.unwrap().requeued, vec![s.key()]);
}

#[tokio::test]
async fn held_says_which_work_on_a_host_is_still_leased() {
    let db = TestDb::new().await.unwrap();
    let queue = db.queue(settings());
    let info = |id: &str| WorkerInfo { id: id.into(), host: "h".into(), recipes: vec![], version: "0".into() };
    for id in ["live", "dead"] {
        queue.register_worker(&info(id)).await.unwrap();
    }
    let (a, b) = (spec("held", 1), spec("held", 2));
    queue.enqueue(&a, 0).await.unwrap();
    queue.enqueue(&b, 0).await.unwrap();
    let live = queue.claim("live", &[]).await.unwrap().unwrap();
    let dead = queue.claim("dead", &[]).await.unwrap().unwrap();
    let work = |lease: &kiln_queue::Lease, attempt: Option<i64>| kiln_queue::HostWork {
        worker: lease.worker_id.clone(),
        key: lease.key.to_string(),
        attempt,
    };
    let asked = vec![
        work(&live.lease, Some(live.lease.attempt_id)),
        work(&live.lease, None),
        // Another attempt of the same build, or another worker's: not held.
        work(&live.lease, Some(live.lease.attempt_id + 1000)),
        kiln_queue::HostWork { worker: "dead".into(), ..work(&live.lease, None) },
        work(&dead.lease, Some(dead.lease.attempt_id)),
        kiln_queue::HostWork { worker: "unknown".into(), key: "0".repeat(64), attempt: None },
    ];
    assert_eq!(queue.held(&asked).await.unwrap(), [true, true, false, false, true, false]);
    // A worker gone: its work is no longer held, though its lease has not lapsed yet.
    queue.set_worker_state("dead", WorkerState::Gone, None).await.unwrap();
    assert_eq!(queue.held(&asked[4..5]).await.unwrap(), [false]);
    // A lapsed lease: not held, before any rescue.
    db.lapse_all_leases().await;
    assert_eq!(queue.held(&asked[..1]).await.unwrap(), [false]);
    assert!(queue.held(&[]).await.unwrap().is_empty());
    // The farm has one identity, the same every time it is asked.
    let farm = queue.farm_id().await.unwrap();
    assert_eq!(farm.len(), 32);
    assert_eq!(queue.farm_id().await.unwrap(), farm);
    // The disk report lands in the row.
    queue.set_worker_disk("live", 42, true).await.unwrap();
    let row = queue.worker("live").await.unwrap().unwrap();
    assert_eq!((row.disk_free_mb, row.disk_low), (Some(42), true));
    let ids: Vec<String> = queue.live_workers().await.unwrap().into_iter().map(|w| w.id).collect();
    assert_eq!(ids, ["live"]);
}
