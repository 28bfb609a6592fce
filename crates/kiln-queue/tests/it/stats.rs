//! The download page's figures: plugin build counts and the typical build time.

use kiln_domain::{BuildKey, BuildSpec, BuildState, ModulePath, PluginSpec};
use kiln_queue::Queue;
use kiln_testkit::TestDb;

use crate::support::{settings, spec};

fn with_plugins(n: u64, plugins: &[&str]) -> BuildSpec {
    let mut s = spec("page", n);
    s.plugins = plugins
        .iter()
        .map(|m| PluginSpec { module: ModulePath::parse("m", m).unwrap(), version: "v1.0.0".parse().unwrap() })
        .collect();
    s
}

/// Enqueue, claim and end `spec` as `state`, having taken `secs` seconds.
async fn built(db: &TestDb, queue: &Queue, spec: &BuildSpec, state: BuildState, secs: i32) -> BuildKey {
    let key = queue.enqueue(spec, 0).await.unwrap().build.key;
    let claim = queue.claim("w", std::slice::from_ref(&spec.recipe)).await.unwrap().expect("claimable");
    match state {
        BuildState::Succeeded => queue.complete(&claim.lease, &kiln_testkit::rows::manifest(spec, "w")).await.unwrap(),
        _ => queue.fail_build(&claim.lease, "exit 1").await.unwrap(),
    }
    sqlx::query("UPDATE builds SET started_at = finished_at - make_interval(secs => $2) WHERE key = $1")
        .bind(key.as_str())
        .bind(secs)
        .execute(db.pool())
        .await
        .unwrap();
    key
}

#[tokio::test]
async fn counts_succeeded_builds_per_plugin_and_takes_the_median_time() {
    let db = TestDb::new().await.unwrap();
    let queue = db.queue(settings());
    let empty = queue.recipe_stats("page").await.unwrap();
    assert!(empty.plugin_builds.is_empty());
    assert_eq!((empty.typical_secs, empty.recent_builds), (None, 0), "no builds, no typical time");

    built(&db, &queue, &with_plugins(1, &["example.com/a", "example.com/b"]), BuildState::Succeeded, 10).await;
    built(&db, &queue, &with_plugins(2, &["example.com/a"]), BuildState::Succeeded, 30).await;
    built(&db, &queue, &with_plugins(3, &[]), BuildState::Succeeded, 20).await;
    // Failed builds and other recipes do not count; queued ones neither.
    built(&db, &queue, &with_plugins(4, &["example.com/a"]), BuildState::Failed, 500).await;
    let mut other = with_plugins(5, &["example.com/a"]);
    other.recipe = "other".into();
    built(&db, &queue, &other, BuildState::Succeeded, 900).await;
    queue.enqueue(&with_plugins(6, &["example.com/c"]), 0).await.unwrap();

    let stats = queue.recipe_stats("page").await.unwrap();
    let counts: Vec<(&str, i64)> = stats.plugin_builds.iter().map(|(m, n)| (m.as_str(), *n)).collect();
    assert_eq!(counts, [("example.com/a", 2), ("example.com/b", 1)]);
    assert_eq!(stats.recent_builds, 3);
    let typical = stats.typical_secs.expect("a typical time");
    assert!((typical - 20.0).abs() < 0.5, "the median of 10, 20 and 30 s: {typical}");
}
