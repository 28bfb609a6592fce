//! `build.json` is one typed contract between processes: written by a real
//! worker, read back the same through the API (the build's JSON, the
//! `ETag`s, `/build.json`) and the CLI (`kiln status`, `kiln download`), and
//! still read when a newer worker has added fields.

use std::time::{Duration, Instant};

use kiln_domain::manifest::SCHEMA_VERSION;
use kiln_domain::{BuildKey, BuildManifest, BuildState};
use kiln_queue::QueueSettings;
use serde_json::json;

use crate::farm::CliFarm;
use crate::text;

const TEST: &str = "build_json_written_by_a_worker_reads_the_same_through_the_api_and_the_cli";

#[tokio::test]
async fn build_json_written_by_a_worker_reads_the_same_through_the_api_and_the_cli() {
    if !kiln_testkit::docker_available(TEST) {
        return;
    }
    let f = CliFarm::start(true).await;
    let http = reqwest::Client::new();
    let queue = f.farm.db.queue(QueueSettings::default());

    // Submit, then wait on the queue itself, so the API reads the build
    // only after the row was given a newer worker's fields below.
    let body = json!({"recipe": "hello", "os": "linux", "arch": "amd64", "plugins": [{"module": "example.com/greet"}]});
    let res = http.post(format!("{}/api/builds", f.farm.url())).json(&body).send().await.unwrap();
    assert_eq!(res.status(), 202);
    let key = BuildKey::parse(res.json::<serde_json::Value>().await.unwrap()["key"].as_str().unwrap()).unwrap();
    let deadline = Instant::now() + Duration::from_secs(180);
    let row = loop {
        let b = queue.get(&key).await.unwrap().expect("the build exists");
        if b.state.is_final() {
            break b;
        }
        assert!(Instant::now() < deadline, "the build did not end:\n{}", f.logs());
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert_eq!(row.state, BuildState::Succeeded, "{:?}\n{}", row.error, f.logs());

    // What the worker wrote, in storage and in the queue: one manifest.
    let file = f.farm.data.path().join("artifacts").join(key.as_str()).join("build.json");
    let stored_bytes = std::fs::read(&file).unwrap();
    let stored: BuildManifest = serde_json::from_slice(&stored_bytes).unwrap();
    assert_eq!(stored.schema_version, SCHEMA_VERSION);
    assert_eq!(
        (&stored.key, stored.binary.name.as_str(), stored.platform.to_string()),
        (&key, "hello", "linux/amd64".into())
    );
    assert_eq!(stored.plugins[0].to_string(), "example.com/greet@v0.2.0");
    assert!(stored.extra.is_empty(), "{:?}", stored.extra);
    assert_eq!(row.artifact.as_ref(), Some(&stored));

    // A newer worker adds fields; this version's readers read past them and pass them on.
    let addition =
        json!({"schema_version": SCHEMA_VERSION + 1, "oci": {"manifest_digest": format!("sha256:{}", "e".repeat(64))}});
    sqlx::query("UPDATE builds SET artifact = artifact || $2 WHERE key = $1")
        .bind(key.as_str())
        .bind(&addition)
        .execute(f.farm.db.pool())
        .await
        .unwrap();

    // The API: the object as stored, the build's JSON carrying the manifest, its digests as ETags.
    let get = |path: String| http.get(format!("{}/api/builds/{key}{path}", f.farm.url())).send();
    let served = get("/build.json".into()).await.unwrap();
    assert_eq!(served.status(), 200);
    assert_eq!(served.bytes().await.unwrap(), stored_bytes);
    let build: serde_json::Value = get(String::new()).await.unwrap().json().await.unwrap();
    assert_eq!(build["artifact"]["oci"], addition["oci"], "{build}");
    let read: BuildManifest = serde_json::from_value(build["artifact"].clone()).unwrap();
    assert_eq!(read.schema_version, SCHEMA_VERSION + 1);
    let mut expected = stored.clone();
    expected.schema_version = read.schema_version;
    expected.extra.insert("oci".into(), addition["oci"].clone());
    assert_eq!(read, expected);
    for (object, sha256) in
        [("artifact", &stored.artifact.sha256), ("binary", &stored.binary.sha256), ("log", &stored.log.sha256)]
    {
        let res = get(format!("/{object}")).await.unwrap();
        assert_eq!(res.status(), 200, "{object}");
        assert_eq!(res.headers()["etag"], format!("\"sha256-{sha256}\"").as_str(), "{object}");
    }

    // The CLI: `status --json` shows the same manifest; `download` names the
    // binary after it, and the bytes are the ones it describes.
    let dir = tempfile::tempdir().unwrap();
    let status = f.kiln_in(dir.path(), &["--json", "status", key.as_str()]);
    assert_eq!(status.status.code(), Some(0), "{}", f.explain(&status));
    let shown: serde_json::Value = serde_json::from_slice(&status.stdout).unwrap();
    assert_eq!(shown["artifact"], build["artifact"]);
    let download = f.kiln_in(dir.path(), &["download", key.as_str()]);
    assert_eq!(download.status.code(), Some(0), "{}", f.explain(&download));
    let binary = std::fs::read(dir.path().join("hello_linux_amd64"))
        .unwrap_or_else(|e| panic!("{e}: {}", text(&download.stderr)));
    assert_eq!(binary.len() as u64, stored.binary.size);
    assert_eq!(kiln_artifact::sha256_reader(&binary[..]).unwrap().0, stored.binary.sha256.as_str());
}
