//! API tokens: stored by hash, revoked with a notification, and the
//! per-token build quota counted race-free at enqueue.

use std::time::Duration;

use kiln_domain::{Scope, Scopes, TokenSecret};
use kiln_queue::{Channel, EnqueueOutcome, Notification, Queue, QueueError, Submitter};
use kiln_testkit::TestDb;

use crate::support::{settings, spec};

#[tokio::test]
async fn a_token_is_found_by_its_hash_until_revoked_and_revoking_notifies() {
    let db = TestDb::new().await.unwrap();
    let queue = Queue::connect(db.url(), 4, settings(), "kiln-test-tokens").await.unwrap();
    let notifier = queue.notifier(&[Channel::Tokens]);
    let mut rx = notifier.subscribe();
    assert_eq!(rx.recv().await.unwrap(), Notification::Resync);

    let secret = TokenSecret::from_random([7; 32]);
    let scopes = Scopes::parse_list("download,submit").unwrap();
    let t = queue.create_token("ci", &scopes, &secret.hash()).await.unwrap();
    assert_eq!(t.scopes, scopes);
    let found = queue.active_token(&secret.hash()).await.unwrap().unwrap();
    assert_eq!(found.id, t.id);
    assert!(found.scopes.contains(Scope::Submit) && !found.scopes.contains(Scope::Admin));
    assert!(queue.active_token(&TokenSecret::from_random([8; 32]).hash()).await.unwrap().is_none());
    // Only the hash is stored.
    let stored: Vec<u8> = sqlx::query_scalar("SELECT secret_hash FROM api_tokens").fetch_one(db.pool()).await.unwrap();
    assert_eq!(stored, secret.hash());

    let revoked = queue.revoke_token(t.id).await.unwrap().unwrap();
    assert!(revoked.revoked_at.is_some());
    let n = tokio::time::timeout(Duration::from_secs(30), rx.recv()).await.unwrap().unwrap();
    assert_eq!(n, Notification::TokenRevoked { id: t.id });
    assert!(queue.active_token(&secret.hash()).await.unwrap().is_none());
    // Revoking again keeps the first time and notifies nothing new.
    assert_eq!(queue.revoke_token(t.id).await.unwrap().unwrap().revoked_at, revoked.revoked_at);
    assert!(queue.revoke_token(9999).await.unwrap().is_none());
    assert_eq!(queue.tokens().await.unwrap().len(), 1);
}

#[tokio::test]
async fn the_build_quota_holds_under_50_parallel_distinct_submits() {
    let db = TestDb::new().await.unwrap();
    let queue = Queue::connect(db.url(), 20, settings(), "kiln-test-quota").await.unwrap();
    let scopes = Scopes::parse_list("submit").unwrap();
    let a = queue.create_token("a", &scopes, &TokenSecret::from_random([1; 32]).hash()).await.unwrap();
    let b = queue.create_token("b", &scopes, &TokenSecret::from_random([2; 32]).hash()).await.unwrap();
    const LIMIT: u32 = 5;
    let limit = LIMIT;
    let by = move |id| Some(Submitter { token_id: id, max_active: LIMIT });

    let tasks: Vec<_> = (0..50)
        .map(|i| {
            let q = queue.clone();
            tokio::spawn(async move { q.enqueue_for(&spec("hello", i), 0, by(a.id)).await })
        })
        .collect();
    let mut accepted = 0;
    let mut refused = 0;
    for t in tasks {
        match t.await.unwrap() {
            Ok(e) => {
                assert_eq!(e.outcome, EnqueueOutcome::Created);
                accepted += 1;
            }
            Err(QueueError::OverQuota { limit: l }) => {
                assert_eq!(l, limit);
                refused += 1;
            }
            Err(e) => panic!("{e}"),
        }
    }
    assert_eq!((accepted, refused), (limit as usize, 50 - limit as usize));
    assert_eq!(queue.active_builds_of(a.id).await.unwrap(), i64::from(limit));

    // Joining a build that exists costs nothing, for this token or another.
    let mut joined = 0;
    for i in 0..50 {
        let s = spec("hello", i);
        if queue.get(&s.key()).await.unwrap().is_some() {
            assert_eq!(queue.enqueue_for(&s, 0, by(a.id)).await.unwrap().outcome, EnqueueOutcome::Existing);
            assert_eq!(queue.enqueue_for(&s, 0, by(b.id)).await.unwrap().outcome, EnqueueOutcome::Existing);
            joined += 1;
        }
    }
    assert_eq!(joined, limit);
    // Another token is not affected; anonymous enqueues have no quota.
    assert_eq!(queue.enqueue_for(&spec("hello", 100), 0, by(b.id)).await.unwrap().outcome, EnqueueOutcome::Created);
    assert_eq!(queue.enqueue(&spec("hello", 101), 0).await.unwrap().outcome, EnqueueOutcome::Created);

    // A build of the token that ends frees a place.
    sqlx::query("UPDATE builds SET state = 'cancelled', finished_at = now() WHERE key IN (SELECT key FROM builds WHERE token_id = $1 LIMIT 1)")
        .bind(a.id)
        .execute(db.pool())
        .await
        .unwrap();
    assert!(queue.enqueue_for(&spec("hello", 200), 0, by(a.id)).await.is_ok());
    assert!(matches!(queue.enqueue_for(&spec("hello", 201), 0, by(a.id)).await, Err(QueueError::OverQuota { .. })));
}
