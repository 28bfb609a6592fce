//! Enqueue and claim under concurrency.

use std::collections::HashSet;
use std::sync::Arc;

use kiln_domain::BuildState;
use kiln_queue::{EnqueueOutcome, QueueError, priority};
use kiln_testkit::TestDb;
use tokio::sync::Mutex;

use crate::support::{settings, spec};

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn eight_claimers_over_500_jobs_claim_each_exactly_once() {
    let db = TestDb::new().await.unwrap();
    let queue = db.queue(settings());
    for n in 0..500 {
        queue.enqueue(&spec("noop", n), priority::DEFAULT).await.unwrap();
    }
    let seen = Arc::new(Mutex::new(Vec::new()));
    let mut tasks = Vec::new();
    for w in 0..8 {
        let queue = queue.clone();
        let seen = seen.clone();
        tasks.push(tokio::spawn(async move {
            let worker = format!("w{w}");
            while let Some(claim) = queue.claim(&worker, &[]).await.unwrap() {
                seen.lock().await.push(claim.lease.key.to_string());
                queue.complete(&claim.lease, &kiln_testkit::rows::manifest(&claim.spec, &worker)).await.unwrap();
            }
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
    let seen = seen.lock().await;
    let unique: HashSet<_> = seen.iter().collect();
    assert_eq!(seen.len(), 500, "every job claimed once, none twice");
    assert_eq!(unique.len(), 500);
    assert_eq!(queue.state_counts().await.unwrap().succeeded, 500);
    let attempts: i64 = sqlx::query_scalar("SELECT count(*) FROM build_attempts").fetch_one(db.pool()).await.unwrap();
    assert_eq!(attempts, 500);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn fifty_identical_enqueues_make_one_job() {
    let db = TestDb::new().await.unwrap();
    let queue = db.queue(settings());
    let s = spec("noop", 7);
    let tasks: Vec<_> = (0..50)
        .map(|_| {
            let (queue, s) = (queue.clone(), s.clone());
            tokio::spawn(async move { queue.enqueue(&s, priority::DEFAULT).await.unwrap() })
        })
        .collect();
    let mut created = 0;
    for t in tasks {
        let e = t.await.unwrap();
        assert_eq!(e.build.key, s.key());
        created += usize::from(e.outcome == EnqueueOutcome::Created);
    }
    assert_eq!(created, 1);
    let rows: i64 = sqlx::query_scalar("SELECT count(*) FROM builds").fetch_one(db.pool()).await.unwrap();
    assert_eq!(rows, 1);
}

#[tokio::test]
async fn claims_follow_priority_then_age_and_recipe_filter() {
    let db = TestDb::new().await.unwrap();
    let queue = db.queue(settings());
    let low = queue.enqueue(&spec("a", 1), priority::BACKGROUND).await.unwrap().build.key;
    let old = queue.enqueue(&spec("a", 2), priority::DEFAULT).await.unwrap().build.key;
    let new = queue.enqueue(&spec("a", 3), priority::DEFAULT).await.unwrap().build.key;
    let high = queue.enqueue(&spec("a", 4), priority::INTERACTIVE).await.unwrap().build.key;
    let other = queue.enqueue(&spec("b", 5), priority::INTERACTIVE).await.unwrap().build.key;
    let only_a = ["a".to_string()];
    let mut got = Vec::new();
    for _ in 0..4 {
        got.push(queue.claim("w", &only_a).await.unwrap().unwrap().lease.key);
    }
    assert_eq!(got, vec![high, old, new, low]);
    assert!(queue.claim("w", &only_a).await.unwrap().is_none());
    assert_eq!(queue.claim("w", &[]).await.unwrap().unwrap().lease.key, other);
}

#[tokio::test]
async fn a_build_failure_is_final_and_answers_until_its_ttl() {
    let db = TestDb::new().await.unwrap();
    let queue = db.queue(settings());
    let s = spec("fail", 1);
    queue.enqueue(&s, priority::DEFAULT).await.unwrap();
    let claim = queue.claim("w", &[]).await.unwrap().unwrap();
    queue.fail_build(&claim.lease, "step build exited with code 3").await.unwrap();
    let again = queue.enqueue(&s, priority::DEFAULT).await.unwrap();
    assert_eq!(again.outcome, EnqueueOutcome::Existing);
    assert_eq!(again.build.state, BuildState::Failed);
    assert_eq!(again.build.error.as_deref(), Some("step build exited with code 3"));
    assert!(again.build.finished_at.is_some(), "a final state is stamped");
    let attempts = queue.attempts(&s.key()).await.unwrap();
    assert_eq!(attempts[0].outcome, Some(kiln_domain::AttemptOutcome::Failed));
    assert_eq!(attempts[0].error.as_deref(), Some("step build exited with code 3"));
    assert!(queue.claim("w", &[]).await.unwrap().is_none(), "a final failure is not retried");

    // Once the failure TTL has passed, the same request builds afresh.
    sqlx::query("UPDATE builds SET finished_at = now() - interval '2 hours'").execute(db.pool()).await.unwrap();
    let fresh = queue.enqueue(&s, priority::DEFAULT).await.unwrap();
    assert_eq!(fresh.outcome, EnqueueOutcome::Requeued);
    assert_eq!(fresh.build.state, BuildState::Queued);
    assert_eq!(fresh.build.attempts, 0);
}

#[tokio::test]
async fn an_admin_retry_requeues_a_failed_build_at_once() {
    let db = TestDb::new().await.unwrap();
    let queue = db.queue(settings());
    let s = spec("fail", 2);
    queue.enqueue(&s, priority::DEFAULT).await.unwrap();
    let claim = queue.claim("w", &[]).await.unwrap().unwrap();
    queue.fail_build(&claim.lease, "boom").await.unwrap();
    assert!(queue.retry(&s.key()).await.unwrap());
    assert_eq!(queue.get(&s.key()).await.unwrap().unwrap().state, BuildState::Queued);
    assert!(!queue.retry(&s.key()).await.unwrap(), "a queued build is not retried");
}

#[tokio::test]
async fn infrastructure_failures_back_off_then_give_up() {
    let db = TestDb::new().await.unwrap();
    let queue = db.queue(settings());
    let s = spec("flaky", 1);
    queue.enqueue(&s, priority::DEFAULT).await.unwrap();
    for attempt in 1..=3 {
        // Make the backoff pass, as the clock would.
        sqlx::query("UPDATE builds SET run_at = now()").execute(db.pool()).await.unwrap();
        let claim = queue.claim("w", &[]).await.unwrap().unwrap();
        assert_eq!(claim.attempts, attempt);
        let outcome = queue.fail_infra(&claim.lease, &format!("docker said no #{attempt}")).await.unwrap();
        if attempt < 3 {
            let kiln_queue::RetryOutcome::WillRetry { run_at } = outcome else { panic!("should retry") };
            assert!(run_at > chrono::Utc::now(), "retried after a backoff");
            assert!(queue.claim("w", &[]).await.unwrap().is_none(), "not claimable during backoff");
            assert!(queue.get(&s.key()).await.unwrap().unwrap().finished_at.is_none(), "not final yet");
        } else {
            assert_eq!(outcome, kiln_queue::RetryOutcome::GaveUp);
        }
    }
    let b = queue.get(&s.key()).await.unwrap().unwrap();
    assert_eq!(b.state, BuildState::Failed);
    assert_eq!(b.error.as_deref(), Some("docker said no #3"));
    // An infrastructure failure is not the build's fault: asking again rebuilds.
    assert_eq!(queue.enqueue(&s, 0).await.unwrap().outcome, EnqueueOutcome::Requeued);
}

#[tokio::test]
async fn cancel_ends_a_queued_build_and_flags_a_running_one() {
    let db = TestDb::new().await.unwrap();
    let queue = db.queue(settings());
    let queued = queue.enqueue(&spec("c", 1), 0).await.unwrap().build.key;
    let running = queue.enqueue(&spec("c", 2), 10).await.unwrap().build.key;
    let claim = queue.claim("w", &[]).await.unwrap().unwrap();
    assert_eq!(claim.lease.key, running);

    assert_eq!(queue.cancel(&queued).await.unwrap().unwrap().state, BuildState::Cancelled);
    let b = queue.cancel(&running).await.unwrap().unwrap();
    assert_eq!(b.state, BuildState::Running);
    assert!(b.cancel_requested);
    assert_eq!(queue.heartbeat(&claim.lease).await.unwrap(), kiln_queue::HeartbeatOutcome::Cancelled);
    queue.acknowledge_cancel(&claim.lease).await.unwrap();
    assert_eq!(queue.get(&running).await.unwrap().unwrap().state, BuildState::Cancelled);
    let unknown = kiln_domain::BuildKey::parse(&"0".repeat(64)).unwrap();
    assert!(queue.cancel(&unknown).await.unwrap().is_none());
}

#[tokio::test]
async fn a_row_that_does_not_decode_is_reported_corrupt_by_name() {
    let db = TestDb::new().await.unwrap();
    let queue = db.queue(settings());
    let key = queue.enqueue(&spec("hello", 9), 0).await.unwrap().build.key;
    sqlx::query("UPDATE builds SET spec = '{\"recipe\": 7}' WHERE key = $1")
        .bind(key.as_str())
        .execute(db.pool())
        .await
        .unwrap();
    match queue.get(&key).await {
        Err(QueueError::Corrupt { row, .. }) => assert_eq!(row, format!("builds/{key}")),
        other => panic!("a build with an unreadable spec was read as {other:?}"),
    }
    // The state alone still reads (waiters need nothing else).
    assert_eq!(queue.state(&key).await.unwrap(), Some(BuildState::Queued));
}
