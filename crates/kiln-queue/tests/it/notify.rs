//! LISTEN/NOTIFY wake-ups and a listener that survives losing its connection.

use std::time::Duration;

use kiln_queue::{Notification, Notifier, channels};
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

async fn started(db: &TestDb, app: &str) -> (Notifier, Receiver<Notification>) {
    let options = db.url().parse::<sqlx::postgres::PgConnectOptions>().unwrap().application_name(app);
    let pool = sqlx::postgres::PgPoolOptions::new().max_connections(2).connect_with(options).await.unwrap();
    let notifier = Notifier::start(pool, &[channels::JOBS, channels::BUILDS, channels::EVENTS]);
    let mut rx = notifier.subscribe();
    expect(&mut rx, |n| *n == Notification::Resync).await;
    (notifier, rx)
}

#[tokio::test]
async fn a_waiter_is_woken_when_its_key_changes_state() {
    let db = TestDb::new().await.unwrap();
    let queue = db.queue(settings());
    let (_notifier, mut rx) = started(&db, "kiln-test-listener").await;
    let s = spec("hello", 1);
    let key = s.key().to_string();

    queue.enqueue(&s, 0).await.unwrap();
    assert_eq!(
        expect(&mut rx, |n| matches!(n, Notification::Job { .. })).await,
        Notification::Job { recipe: "hello".into() }
    );
    let claim = queue.claim("w", &[]).await.unwrap().unwrap();
    let n =
        expect(&mut rx, |n| n.concerns(&key) && matches!(n, Notification::Build { state, .. } if state == "running"))
            .await;
    assert_eq!(n, Notification::Build { key: key.clone(), state: "running".into() });
    queue.append_log(&claim.lease, "line\n").await.unwrap();
    expect(&mut rx, |n| *n == Notification::Events { key: key.clone() }).await;
    queue.complete(&claim.lease, &kiln_testkit::rows::manifest(&claim.spec, "w")).await.unwrap();
    expect(&mut rx, |n| *n == Notification::Build { key: key.clone(), state: "succeeded".into() }).await;

    // The state changes are in the event stream too, in order.
    let kinds: Vec<_> = queue
        .events_after(&s.key(), 0, 100)
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
async fn the_listener_survives_losing_its_backend_and_wakes_again() {
    let db = TestDb::new().await.unwrap();
    let queue = db.queue(settings());
    let app = format!("kiln-listener-{}", db.name());
    let (_notifier, mut rx) = started(&db, &app).await;

    let killed: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM (SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE application_name = $1) t",
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
