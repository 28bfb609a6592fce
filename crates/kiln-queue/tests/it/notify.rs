//! LISTEN/NOTIFY wake-ups, typed notifications, and a listener that
//! survives losing its connection and malformed payloads.

use std::time::Duration;

use kiln_domain::BuildState;
use kiln_queue::{Channel, Notification, Notifier, Queue};
use kiln_testkit::TestDb;
use tokio::sync::broadcast::Receiver;

use crate::support::{settings, spec};

/// Wait for the first notification matching `want`; fail after a generous
/// limit (a hang guard, not a timing assertion).
async fn expect(rx: &mut Receiver<Notification>, want: impl Fn(&Notification) -> bool) -> Notification {
    tokio::time::timeout(Duration::from_secs(30), async {
        loop {
            let n = rx.recv().await.expect("notifier alive");
            if want(&n) {
                return n;
            }
        }
    })
    .await
    .expect("notification arrived")
}

/// A queue whose connections carry the application name `app`, and its
/// notifier on every channel, connected.
async fn started(db: &TestDb, app: &str) -> (Queue, Notifier, Receiver<Notification>) {
    let queue = Queue::connect(db.url(), 2, settings(), app).await.unwrap();
    let notifier = queue.notifier(&[Channel::Jobs, Channel::Builds, Channel::Events]);
    let mut rx = notifier.subscribe();
    expect(&mut rx, |n| *n == Notification::Resync).await;
    (queue, notifier, rx)
}

#[tokio::test]
async fn a_waiter_is_woken_when_its_key_changes_state() {
    let db = TestDb::new().await.unwrap();
    let (queue, _notifier, mut rx) = started(&db, "kiln-test-listener").await;
    let s = spec("hello", 1);
    let key = s.key();

    queue.enqueue(&s, 0).await.unwrap();
    assert_eq!(
        expect(&mut rx, |n| matches!(n, Notification::Job { .. })).await,
        Notification::Job { recipe: "hello".into() }
    );
    let claim = queue.claim("w", &[]).await.unwrap().unwrap();
    let running = Notification::Build { key: key.clone(), state: BuildState::Running };
    assert_eq!(expect(&mut rx, |n| n.concerns(&key) && matches!(n, Notification::Build { .. })).await, running);
    queue.append_log(&claim.lease, "line\n").await.unwrap();
    expect(&mut rx, |n| *n == Notification::Events { key: key.clone() }).await;
    queue.complete(&claim.lease, &kiln_testkit::rows::manifest(&claim.spec, "w")).await.unwrap();
    expect(&mut rx, |n| *n == Notification::Build { key: key.clone(), state: BuildState::Succeeded }).await;

    // The state changes are in the event stream too, in order.
    let kinds: Vec<_> = queue
        .events_after(&key, 0, 100)
        .await
        .unwrap()
        .into_iter()
        .map(|e| if e.kind == "state" { e.data } else { e.kind })
        .collect();
    assert!(kinds[0].contains("\"queued\"") && kinds[1].contains("\"running\""), "{kinds:?}");
    assert_eq!(kinds[2], "log");
    assert!(kinds[3].contains("\"succeeded\""), "{kinds:?}");
}

#[tokio::test]
async fn a_malformed_payload_becomes_a_resync_and_the_listener_carries_on() {
    let db = TestDb::new().await.unwrap();
    let (queue, _notifier, mut rx) = started(&db, "kiln-test-malformed").await;
    let s = spec("hello", 3);
    let key = s.key();

    for (channel, payload) in [
        (Channel::Builds, format!("{key} exploded")),
        (Channel::Builds, "not-a-key running".to_owned()),
        (Channel::Events, "../../etc/passwd".to_owned()),
    ] {
        sqlx::query("SELECT pg_notify($1, $2)").bind(channel.name()).bind(&payload).execute(db.pool()).await.unwrap();
        let n = tokio::time::timeout(Duration::from_secs(30), rx.recv()).await.expect("a notification").unwrap();
        assert_eq!(n, Notification::Resync, "{channel:?} {payload:?}");
    }
    // Well-formed notifications still arrive, typed.
    queue.enqueue(&s, 0).await.unwrap();
    expect(&mut rx, |n| *n == Notification::Build { key: key.clone(), state: BuildState::Queued }).await;
}

#[tokio::test]
async fn the_listener_survives_losing_its_backend_and_wakes_again() {
    let db = TestDb::new().await.unwrap();
    let app = format!("kiln-listener-{}", db.name());
    let (queue, _notifier, mut rx) = started(&db, &app).await;

    let killed: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM (SELECT pg_terminate_backend(pid) FROM pg_stat_activity
                               WHERE application_name = $1 AND query ILIKE 'LISTEN%') t",
    )
    .bind(&app)
    .fetch_one(db.pool())
    .await
    .unwrap();
    assert!(killed >= 1, "the listener's backend was found and terminated");

    // It reconnects and says so…
    expect(&mut rx, |n| *n == Notification::Resync).await;
    // …and wakes on the next change.
    queue.enqueue(&spec("hello", 2), 0).await.unwrap();
    expect(&mut rx, |n| matches!(n, Notification::Job { .. })).await;
}
