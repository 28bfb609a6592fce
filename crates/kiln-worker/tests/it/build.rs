//! Builds end to end: claim, steps in Docker, pack, sign, upload, complete.

use std::io::Cursor;
use std::os::unix::fs::PermissionsExt;

use kiln_domain::{BuildState, FailureKind};
use kiln_storage::ObjectName;
use kiln_worker::Exit;
use kiln_worker::JobEnd;
use serde_json::Value;

use crate::farm::{Farm, containers_of, entries};

fn sha256_hex(data: &[u8]) -> String {
    kiln_artifact::sha256_reader(data).unwrap().0
}

#[tokio::test]
async fn hello_with_two_plugins_is_built_signed_and_stored() {
    let Some(farm) = Farm::new("hello").await else { return };
    // Plugins given out of order: the build lists them in module order.
    let spec = farm.spec("hello", "v1.1.0", &[("example.com/shout", "v1.0.0"), ("example.com/greet", "v0.2.0")]);
    let key = farm.enqueue(&spec).await;

    let id = format!("hello-{}", std::process::id());
    let exit = farm.run_once(&id).await;
    assert_eq!(exit, Exit::Once(JobEnd::Succeeded));
    let build = farm.build(&key).await;
    assert_eq!(build.state, BuildState::Succeeded, "{:?}", build.error);

    // The binary out of the TAR prints exactly what the recipe promises.
    let hello = farm.artifact_file(&key, "hello").await;
    let path = farm.dir.path().join("hello");
    std::fs::write(&path, &hello).unwrap();
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755)).unwrap();
    let out = std::process::Command::new("sh").arg(&path).output().unwrap();
    assert!(out.status.success());
    assert_eq!(
        String::from_utf8(out.stdout).unwrap(),
        "hello from kiln v1.1.0 linux/amd64\nplugin example.com/greet@v0.2.0\nplugin example.com/shout@v1.0.0\n"
    );
    // The stored binary is the same file.
    assert_eq!(farm.object(&key, ObjectName::Binary).await, hello);

    // The signature verifies, over the artifact's SHA-256 and key.
    let tar = farm.object(&key, ObjectName::Artifact).await;
    let sig = String::from_utf8(farm.object(&key, ObjectName::Signature).await).unwrap();
    let verified = kiln_artifact::verify(&farm.public_key, Cursor::new(&tar), &sig).expect("the signature verifies");
    assert_eq!(verified.trusted_comment, kiln_artifact::build_comment(&key, &sha256_hex(&tar)));
    let mut tampered = tar.clone();
    let last = tampered.len() - 1;
    tampered[last] ^= 1;
    assert!(kiln_artifact::verify(&farm.public_key, Cursor::new(&tampered), &sig).is_err());
    // … and with the stock minisign, when it is installed.
    if let Ok(minisign) = which("minisign") {
        let tar_path = farm.dir.path().join("artifact.tar");
        std::fs::write(&tar_path, &tar).unwrap();
        std::fs::write(farm.dir.path().join("artifact.tar.minisig"), &sig).unwrap();
        let ok = std::process::Command::new(minisign)
            .arg("-Vm")
            .arg(&tar_path)
            .arg("-P")
            .arg(farm.public_key.to_base64())
            .output()
            .unwrap();
        assert!(ok.status.success(), "minisign -V: {}", String::from_utf8_lossy(&ok.stderr));
    }

    // build.json says what was built, where, from what, and how long it took.
    let manifest: Value = serde_json::from_slice(&farm.object(&key, ObjectName::Manifest).await).unwrap();
    assert_eq!(manifest["key"], key.as_str());
    assert_eq!(manifest["request"], serde_json::to_value(&spec).unwrap());
    assert_eq!(manifest["version"], "v1.1.0");
    assert_eq!(manifest["plugins"][0]["module"], "example.com/greet");
    assert_eq!(manifest["plugins"][1]["version"], "v1.0.0");
    assert_eq!(manifest["platform"], "linux/amd64");
    assert!(manifest["image"]["id"].as_str().unwrap().starts_with("sha256:"), "{}", manifest["image"]);
    assert_eq!(manifest["image"]["name"], "kiln-test/busybox:latest");
    assert!(manifest["worker"]["id"].as_str().unwrap().starts_with("hello-"));
    assert_eq!(manifest["steps"][0]["name"], "build");
    assert_eq!(manifest["steps"][0]["exit_code"], 0);
    assert!(manifest["steps"][0]["seconds"].as_f64().unwrap() > 0.0);
    assert_eq!(manifest["artifact"]["sha256"], sha256_hex(&tar));
    assert_eq!(manifest["artifact"]["size"], tar.len() as u64);
    assert_eq!(manifest["artifact"]["entries"][0]["path"], "hello");
    assert_eq!(manifest["binary"]["name"], "hello");
    assert_eq!(manifest["binary"]["sha256"], sha256_hex(&hello));
    assert_eq!(manifest["binary"]["size"], hello.len() as u64);
    let log = farm.object(&key, ObjectName::Log).await;
    assert_eq!(manifest["log"]["sha256"], sha256_hex(&log));
    assert_eq!(manifest["signature"]["key_id"], farm.public_key.key_id());
    // The queue recorded the same facts, as the type the API and the CLI read.
    let typed: kiln_domain::BuildManifest = serde_json::from_value(manifest.clone()).unwrap();
    assert_eq!(manifest["schema_version"], kiln_domain::manifest::SCHEMA_VERSION);
    assert_eq!(build.artifact.as_ref(), Some(&typed));

    // The log tells the story; nothing is left behind.
    let log = String::from_utf8(log).unwrap();
    assert!(log.contains("==> [1/1] build"), "{log}");
    assert!(log.contains("build ok in"), "{log}");
    assert_eq!(log, farm.queue.log_text(&key).await.unwrap());
    assert!(containers_of(&key, &id).is_empty());
    assert!(entries(&farm.work_dir()).is_empty(), "{:?}", entries(&farm.work_dir()));
}

#[tokio::test]
async fn a_failing_step_fails_the_build_for_good() {
    let Some(farm) = Farm::new("fail").await else { return };
    let key = farm.enqueue(&farm.spec("fail", "v1.0.0", &[])).await;

    let id = format!("fail-{}", std::process::id());
    let Exit::Once(JobEnd::Failed(error)) = farm.run_once(&id).await else {
        panic!("the job should fail");
    };
    assert!(error.contains("step \"build\" exited with code 3"), "{error}");
    assert!(error.contains("intentional failure"), "{error}");

    let build = farm.build(&key).await;
    assert_eq!(build.state, BuildState::Failed);
    assert_eq!(build.failure_kind, Some(FailureKind::Build));
    assert_eq!(build.error.as_deref(), Some(error.as_str()));
    assert_eq!(build.attempts, 1);
    let log = farm.queue.log_text(&key).await.unwrap();
    assert!(log.contains("intentional failure"), "{log}");
    // Final: nothing is queued for a retry, and no artifact was stored.
    assert!(farm.queue.claim("nobody", &[]).await.unwrap().is_none());
    assert!(!farm.has_object(&key, ObjectName::Artifact).await);
    assert!(farm.has_object(&key, ObjectName::Log).await);
    assert!(containers_of(&key, &id).is_empty());
    assert!(entries(&farm.work_dir()).is_empty());
}

#[tokio::test]
async fn a_step_past_its_timeout_is_killed() {
    let Some(farm) = Farm::new("timeout").await else { return };
    let mut config = farm.config.clone();
    config.recipes.get_mut("sleep").unwrap().steps[0].timeout_secs = 2;
    // The key must be made from the recipe the worker runs.
    let mut spec = farm.spec("sleep", "v30.0.1", &[]);
    spec.recipe_revision = config.recipes["sleep"].revision();
    let key = farm.enqueue(&spec).await;

    let id = format!("timeout-{}", std::process::id());
    let w = farm.start_worker(&id, Some(config), true).await;
    let exit = tokio::time::timeout(crate::farm::PATIENCE, w).await.unwrap().unwrap().unwrap();
    let Exit::Once(JobEnd::Failed(error)) = exit else { panic!("the job should fail, got {exit:?}") };
    assert!(error.contains("timed out after 2s"), "{error}");
    assert!(error.contains("slept 0 of 30"), "{error}");
    let build = farm.build(&key).await;
    assert_eq!(build.state, BuildState::Failed);
    assert!(!build.error.unwrap().contains("slept 29"), "the step ran to its end");
    assert!(containers_of(&key, &id).is_empty());
}

#[tokio::test]
async fn the_live_log_is_readable_while_the_build_runs() {
    let Some(farm) = Farm::new("live-log").await else { return };
    let key = farm.enqueue(&farm.spec("sleep", "v5.0.1", &[])).await;
    let w = farm.start_worker(&format!("live-{}", std::process::id()), None, true).await;

    let log = farm.wait_log(&key, "slept 1 of 5").await;
    // Read before the end: the build is still running.
    assert_eq!(farm.build(&key).await.state, BuildState::Running, "{log}");

    let exit = tokio::time::timeout(crate::farm::PATIENCE, w).await.unwrap().unwrap().unwrap();
    assert_eq!(exit, Exit::Once(JobEnd::Succeeded));
    assert_eq!(farm.artifact_file(&key, "slept").await, b"done\n");
    let log = farm.queue.log_text(&key).await.unwrap();
    assert!(log.contains("slept 4 of 5"), "{log}");
}

fn which(name: &str) -> Result<std::path::PathBuf, ()> {
    std::env::var_os("PATH")
        .and_then(|paths| std::env::split_paths(&paths).map(|p| p.join(name)).find(|p| p.is_file()))
        .ok_or(())
}

#[tokio::test]
async fn a_worker_that_lost_its_lease_stores_and_reports_nothing() {
    let Some(farm) = Farm::new("lease-lost").await else { return };
    let key = farm.enqueue(&farm.spec("sleep", "v5.0.2", &[])).await;
    let id = format!("lease-lost-{}", std::process::id());
    let w = farm.start_worker(&id, None, true).await;
    farm.wait_log(&key, "slept 1 of 5").await;

    // The lease lapses, as if the worker had been cut off, and the janitor rescues the job.
    farm.db.lapse_all_leases().await;
    let rescued = farm.queue.rescue_lapsed().await.unwrap();
    assert_eq!(rescued.requeued, std::slice::from_ref(&key));

    let exit = tokio::time::timeout(crate::farm::PATIENCE, w).await.unwrap().unwrap().unwrap();
    assert_eq!(exit, Exit::Once(JobEnd::LeaseLost));
    assert_eq!(farm.build(&key).await.state, BuildState::Queued);
    for name in ObjectName::ALL {
        assert!(!farm.has_object(&key, name).await, "{name} was stored by a worker without a lease");
    }
    assert!(containers_of(&key, &id).is_empty());
}

#[tokio::test]
async fn a_docker_failure_is_retried_not_final() {
    let Some(farm) = Farm::new("infra").await else { return };
    let mut config = farm.config.clone();
    // The image is not there and the recipe may not pull it: the farm's
    // fault, not the build's.
    config.recipes.get_mut("fail").unwrap().image = "kiln-test/absent:latest".into();
    let mut spec = farm.spec("fail", "v1.0.0", &[]);
    spec.recipe_revision = config.recipes["fail"].revision();
    let key = farm.enqueue(&spec).await;

    let id = format!("infra-{}", std::process::id());
    let w = farm.start_worker(&id, Some(config), true).await;
    let exit = tokio::time::timeout(crate::farm::PATIENCE, w).await.unwrap().unwrap().unwrap();
    let Exit::Once(JobEnd::Errored(error)) = exit else { panic!("an infrastructure failure, got {exit:?}") };
    assert!(error.contains("kiln-test/absent:latest"), "{error}");
    let build = farm.build(&key).await;
    assert_eq!(build.state, BuildState::Queued, "queued again for a retry");
    assert_eq!(build.failure_kind, Some(FailureKind::Infrastructure));
    assert_eq!(build.attempts, 1);
}

#[tokio::test]
async fn a_cancelled_build_is_stopped() {
    let Some(farm) = Farm::new("cancel").await else { return };
    let key = farm.enqueue(&farm.spec("sleep", "v30.0.2", &[])).await;
    let id = format!("cancel-{}", std::process::id());
    let w = farm.start_worker(&id, None, true).await;
    farm.wait_log(&key, "slept 1 of 30").await;

    farm.queue.cancel(&key).await.unwrap();
    let exit = tokio::time::timeout(crate::farm::PATIENCE, w).await.unwrap().unwrap().unwrap();
    assert_eq!(exit, Exit::Once(JobEnd::Cancelled));
    assert_eq!(farm.build(&key).await.state, BuildState::Cancelled);
    assert!(!farm.has_object(&key, ObjectName::Artifact).await);
    assert!(containers_of(&key, &id).is_empty());
}

#[tokio::test]
async fn hello_is_stored_in_s3() {
    let Some(farm) = Farm::new("hello-s3").await else { return };
    let s3 = kiln_testkit::s3::S3Server::start();
    let mut config = farm.config.clone();
    config.storage = s3.storage_config("builds/");
    let spec = farm.spec("hello", "v1.2.0-beta.1", &[("example.com/greet", "v0.1.0")]);
    let key = farm.enqueue(&spec).await;

    let w = farm.start_worker(&format!("hello-s3-{}", std::process::id()), Some(config.clone()), true).await;
    let exit = tokio::time::timeout(crate::farm::PATIENCE, w).await.unwrap().unwrap().unwrap();
    assert_eq!(exit, Exit::Once(JobEnd::Succeeded));

    let storage = kiln_storage::Storage::from_config(&config.storage).unwrap();
    let get = async |name| storage.get_bytes(&kiln_storage::ObjectKey::new(&key, name)).await.unwrap().to_vec();
    let tar = get(ObjectName::Artifact).await;
    let sig = String::from_utf8(get(ObjectName::Signature).await).unwrap();
    kiln_artifact::verify(&farm.public_key, Cursor::new(&tar), &sig).expect("the signature verifies");
    let hello = get(ObjectName::Binary).await;
    assert_eq!(kiln_artifact::extract_file(&tar[..], "hello").unwrap(), hello);
    let text = String::from_utf8(hello).unwrap();
    assert!(text.contains("hello from kiln v1.2.0-beta.1 linux/amd64"), "{text}");
    assert!(text.contains("plugin example.com/greet@v0.1.0"), "{text}");
    let manifest: Value = serde_json::from_slice(&get(ObjectName::Manifest).await).unwrap();
    assert_eq!(manifest["artifact"]["sha256"], sha256_hex(&tar));
    assert!(String::from_utf8(get(ObjectName::Log).await).unwrap().contains("==> [1/1] build"));
    // Nothing went to the local directory.
    assert!(!farm.has_object(&key, ObjectName::Artifact).await);
}

#[tokio::test]
async fn a_worker_runs_up_to_its_concurrency_at_once() {
    let Some(farm) = Farm::new("concurrency").await else { return };
    let mut config = farm.config.clone();
    config.worker.concurrency = 2;
    let keys = [
        farm.enqueue(&farm.spec("sleep", "v5.0.5", &[])).await,
        farm.enqueue(&farm.spec("sleep", "v5.0.6", &[])).await,
    ];
    let id = format!("concurrency-{}", std::process::id());
    let w = farm.start_stoppable(&id, config).await;

    // Both run at the same time on the one worker.
    for key in &keys {
        farm.wait_log(key, "slept 1 of 5").await;
    }
    for key in &keys {
        let b = farm.build(key).await;
        assert_eq!((b.state, b.lease_holder.as_deref()), (BuildState::Running, Some(id.as_str())));
    }
    for key in &keys {
        farm.wait_log(key, "==> done").await;
    }
    w.shutdown.cancel();
    let exit = tokio::time::timeout(crate::farm::PATIENCE, w.task).await.unwrap().unwrap().unwrap();
    assert_eq!(exit, Exit::Stopped);
    for key in &keys {
        assert_eq!(farm.build(key).await.state, BuildState::Succeeded);
    }
    assert_eq!(farm.queue.worker(&id).await.unwrap().unwrap().state, kiln_domain::WorkerState::Stopped);
}
