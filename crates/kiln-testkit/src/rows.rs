//! Crafted queue rows for tests of the queue and the janitor.

use kiln_domain::{BuildKey, BuildManifest, BuildSpec, BuildState, Version};
use kiln_queue::{Queue, QueueSettings};

use crate::TestDb;

/// A distinct resolved spec of `recipe` per `n` (version `v1.0.<n>`).
pub fn spec(recipe: &str, n: u64) -> BuildSpec {
    BuildSpec {
        recipe: recipe.into(),
        recipe_revision: "test".into(),
        version: Version::parse("version", &format!("v1.0.{n}")).expect("a valid version"),
        platform: "linux/amd64".parse().expect("a valid platform"),
        plugins: vec![],
        replacements: vec![],
    }
}

/// A resolved linux/amd64 spec of the configured `recipe` with pinned
/// `(module, version)` plugins, as the API would make it.
pub fn recipe_spec(name: &str, recipe: &kiln_domain::Recipe, version: &str, plugins: &[(&str, &str)]) -> BuildSpec {
    BuildSpec {
        recipe: name.into(),
        recipe_revision: recipe.revision(),
        version: Version::parse("version", version).expect("a valid version"),
        platform: "linux/amd64".parse().expect("a valid platform"),
        plugins: plugins
            .iter()
            .map(|(m, v)| kiln_domain::PluginSpec {
                module: kiln_domain::ModulePath::parse("module", m).expect("a valid module path"),
                version: Version::parse("version", v).expect("a valid version"),
            })
            .collect(),
        replacements: vec![],
    }
}

/// A manifest for `spec` as worker `worker` would record it, with made-up
/// sizes, digests and times.
pub fn manifest(spec: &BuildSpec, worker: &str) -> BuildManifest {
    let key = spec.key();
    let sha = "0".repeat(64);
    let p = &spec.platform;
    let at = "2025-01-01T00:00:00Z";
    serde_json::from_value(serde_json::json!({
        "schema_version": kiln_domain::manifest::SCHEMA_VERSION,
        "key": key, "request": spec, "recipe": spec.recipe, "recipe_revision": spec.recipe_revision,
        "version": spec.version, "platform": p, "os": p.os, "arch": p.arch,
        "arm": p.arm.map(|a| a.to_string()).unwrap_or_default(),
        "plugins": spec.plugins, "replacements": spec.replacements,
        "image": {"name": "kiln-test/busybox:latest", "id": format!("sha256:{sha}"), "repo_digests": []},
        "worker": {"id": worker, "host": "test", "version": "0"},
        "attempt": {"id": 1, "number": 1},
        "started_at": at, "steps_finished_at": at, "finished_at": at, "steps": [],
        "artifact": {"name": "artifact.tar", "size": 0, "sha256": sha, "entries": []},
        "binary": {"name": "binary", "size": 0, "sha256": sha},
        "signature": {"name": "artifact.tar.minisig", "key_id": "0", "trusted_comment": format!("kiln build {key}")},
        "log": {"name": "log.txt", "size": 0, "sha256": sha, "dropped_bytes": 0},
    }))
    .expect("a well-formed manifest")
}

impl TestDb {
    /// Make every running lease lapse now, as if time had passed.
    pub async fn lapse_all_leases(&self) {
        sqlx::query("UPDATE builds SET lease_expires_at = now() - interval '1 second' WHERE state = 'running'")
            .execute(self.pool())
            .await
            .expect("lapse leases");
    }
}

/// A build of `recipe` (spec `n`) taken through the queue to the final
/// `state` by worker `w`, with one live-log chunk, then aged so that it
/// ended `hours_ago`.
pub async fn finished(db: &TestDb, queue: &Queue, recipe: &str, n: u64, state: BuildState, hours_ago: u32) -> BuildKey {
    let spec = spec(recipe, n);
    let key = queue.enqueue(&spec, 0).await.expect("enqueue").build.key;
    let claim = queue.claim("w", &[recipe.to_owned()]).await.expect("claim").expect("a claimable build");
    assert_eq!(claim.lease.key, key);
    queue.append_log(&claim.lease, &format!("output of {recipe} {n}\n")).await.expect("append log");
    match state {
        BuildState::Succeeded => queue.complete(&claim.lease, &manifest(&spec, "w")).await.expect("complete"),
        BuildState::Failed => queue.fail_build(&claim.lease, "exit 1").await.expect("fail"),
        BuildState::Cancelled => {
            queue.cancel(&key).await.expect("cancel");
            queue.acknowledge_cancel(&claim.lease).await.expect("acknowledge cancel");
        }
        other => panic!("not a final state: {other:?}"),
    }
    for sql in [
        "UPDATE builds SET finished_at = now() - make_interval(hours => $2) WHERE key = $1",
        "UPDATE build_attempts SET ended_at = now() - make_interval(hours => $2) WHERE build_key = $1",
    ] {
        sqlx::query(sql).bind(key.as_str()).bind(hours_ago as i32).execute(db.pool()).await.expect("age the build");
    }
    key
}

/// Queue settings with round numbers for tests: a 30 s lease, three
/// attempts, five preemptions, back-off from a minute to ten, and failed
/// builds kept for `failure_ttl`.
pub fn queue_settings(failure_ttl: std::time::Duration) -> QueueSettings {
    QueueSettings {
        lease: std::time::Duration::from_secs(30),
        max_attempts: 3,
        max_preemptions: 5,
        backoff_base: std::time::Duration::from_secs(60),
        backoff_max: std::time::Duration::from_secs(600),
        failure_ttl,
    }
}
