//! The registry with containers/image clients (skopeo, podman), on S3
//! storage, and across farms: the same image has the same digest anywhere.

use std::path::Path;
use std::process::Command;

use reqwest::StatusCode;
use serde_json::Value;

use crate::farm::ApiFarm;
use crate::registry::{Pulled, run};

macro_rules! need_docker {
    ($name:literal) => {
        if !kiln_testkit::docker_available($name) {
            return;
        }
    };
}

/// skopeo, or a loud SKIPPED line.
fn skopeo(test: &str) -> Option<String> {
    match which("skopeo") {
        Some(s) => Some(s),
        None => {
            let line = format!("SKIPPED: skopeo unavailable: {test} did not run (scripts/test installs it)");
            println!("{line}");
            eprintln!("{line}");
            None
        }
    }
}

fn which(tool: &str) -> Option<String> {
    let out = Command::new("sh").args(["-c", &format!("command -v {tool}")]).output().ok()?;
    out.status.success().then(|| String::from_utf8_lossy(&out.stdout).trim().to_owned())
}

fn sha256(bytes: &[u8]) -> String {
    format!("sha256:{}", kiln_artifact::sha256_reader(bytes).unwrap().0)
}

/// Every blob of an OCI layout holds what its name says; its index.json.
fn check_layout(dir: &Path) -> Value {
    let blobs = dir.join("blobs/sha256");
    let mut n = 0;
    for entry in std::fs::read_dir(&blobs).unwrap() {
        let entry = entry.unwrap();
        let bytes = std::fs::read(entry.path()).unwrap();
        assert_eq!(sha256(&bytes), format!("sha256:{}", entry.file_name().to_string_lossy()));
        n += 1;
    }
    assert!(n >= 3, "a manifest, a config and layers: {n} blobs");
    serde_json::from_slice(&std::fs::read(dir.join("index.json")).unwrap()).unwrap()
}

async fn digest_of(f: &ApiFarm, name: &str, reference: &str) -> String {
    let r = f.manifest(reqwest::Method::HEAD, name, reference).await;
    assert_eq!(r.status(), 200, "{}", f.logs());
    r.headers()["docker-content-digest"].to_str().unwrap().to_owned()
}

#[tokio::test]
async fn skopeo_copies_indexes_and_manifests_and_sees_each_platform() {
    need_docker!("skopeo_copies_indexes_and_manifests_and_sees_each_platform");
    let Some(skopeo) = skopeo("skopeo_copies_indexes_and_manifests_and_sees_each_platform") else { return };
    let f = ApiFarm::with_worker(&[]).await;
    let dir = tempfile::tempdir().unwrap();
    let src = |tag: &str| format!("docker://{}/hello:{tag}", f.registry());

    // An index with every platform, digests kept.
    let all = dir.path().join("all");
    run(Command::new(&skopeo)
        .args(["copy", "--all", "--src-tls-verify=false", &src("v1.0.0")])
        .arg(format!("oci:{}:v1.0.0", all.display())));
    let index = check_layout(&all);
    assert_eq!(index["manifests"][0]["digest"].as_str().unwrap(), digest_of(&f, "hello", "v1.0.0").await);
    let hex = &index["manifests"][0]["digest"].as_str().unwrap()["sha256:".len()..];
    let copied: Value = serde_json::from_slice(&std::fs::read(all.join("blobs/sha256").join(hex)).unwrap()).unwrap();
    assert_eq!(copied["manifests"].as_array().unwrap().len(), 4);

    // One platform's manifest.
    let one = dir.path().join("one");
    run(Command::new(&skopeo)
        .args(["copy", "--src-tls-verify=false", &src("v1.0.0-linux-arm64")])
        .arg(format!("oci:{}:x", one.display())));
    let index = check_layout(&one);
    assert_eq!(index["manifests"][0]["digest"].as_str().unwrap(), digest_of(&f, "hello", "v1.0.0-linux-arm64").await);

    // What each platform's config says is true.
    for (tag, arch, variant) in [
        ("v1.0.0-linux-arm-v6", "arm", "v6"),
        ("v1.0.0-linux-arm-v7", "arm", "v7"),
        ("v1.0.0-linux-arm64", "arm64", "v8"),
    ] {
        let out = run(Command::new(&skopeo).args(["inspect", "--tls-verify=false", &src(tag)]));
        let j: Value = serde_json::from_str(&out).unwrap();
        assert_eq!((j["Os"].as_str(), j["Architecture"].as_str()), (Some("linux"), Some(arch)), "{tag}: {j}");
        // skopeo 1.9 leaves the variant out of its summary: read the config.
        let out = run(Command::new(&skopeo).args(["inspect", "--config", "--tls-verify=false", &src(tag)]));
        let j: Value = serde_json::from_str(&out).unwrap();
        assert_eq!((j["os"].as_str(), j["architecture"].as_str()), (Some("linux"), Some(arch)), "{tag}: {j}");
        assert_eq!(j["variant"].as_str(), Some(variant), "{tag}: {j}");
    }
    assert_eq!(f.build_count().await, 4, "the index's builds served the platform tags");
}

#[tokio::test]
async fn two_farms_make_the_same_image_with_the_same_digest() {
    need_docker!("two_farms_make_the_same_image_with_the_same_digest");
    let keys = tempfile::tempdir().unwrap();
    let key = keys.path().join("kiln.key");
    kiln_artifact::keygen(&key, false).unwrap();
    let key = key.display().to_string();
    let a = ApiFarm::with_worker(&[("KILN_SIGNING_KEY", &key)]).await;
    let b = ApiFarm::with_worker(&[("KILN_SIGNING_KEY", &key)]).await;
    let name = "hello/example.com__shout";
    for tag in ["v1.0.0-linux-arm-v7", "v1.0.0-linux-amd64"] {
        let (da, db) = (digest_of(&a, name, tag).await, digest_of(&b, name, tag).await);
        assert_eq!(da, db, "{tag}");
        let ma = a.manifest(reqwest::Method::GET, name, &da).await.bytes().await.unwrap();
        let mb = b.manifest(reqwest::Method::GET, name, &db).await.bytes().await.unwrap();
        assert_eq!(ma, mb);
    }
}

#[tokio::test]
async fn on_s3_blob_gets_redirect_to_presigned_urls_that_clients_follow() {
    need_docker!("on_s3_blob_gets_redirect_to_presigned_urls_that_clients_follow");
    let s3 = kiln_testkit::s3::S3Server::start();
    let mut env: Vec<(&str, String)> = s3.env();
    env.push(("KILN_S3_PRESIGN", "true".into()));
    let env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (*k, v.as_str())).collect();
    let f = ApiFarm::with_worker(&env).await;
    let reference = format!("{}/hello:v1.2.0-beta.1-linux-amd64", f.registry());

    let mut pulled = Pulled::default();
    pulled.pull(&reference);
    let out = run(Command::new("docker").args(["run", "--rm", &reference]));
    assert_eq!(out, "hello from kiln v1.2.0-beta.1 linux/amd64\n", "{}", f.logs());

    let digest = digest_of(&f, "hello", "v1.2.0-beta.1-linux-amd64").await;
    let manifest: Value = f.manifest(reqwest::Method::GET, "hello", &digest).await.json().await.unwrap();
    let layer = manifest["layers"][0]["digest"].as_str().unwrap().to_owned();
    let url = f.url(&format!("/v2/hello/blobs/{layer}"));
    let manual = reqwest::Client::builder().redirect(reqwest::redirect::Policy::none()).build().unwrap();
    let r = manual.get(&url).send().await.unwrap();
    assert_eq!(r.status(), StatusCode::TEMPORARY_REDIRECT);
    let location = r.headers()["location"].to_str().unwrap().to_owned();
    assert!(location.starts_with(s3.endpoint()), "{location}");
    let bytes = f.http.get(&location).send().await.unwrap().bytes().await.unwrap();
    assert_eq!(sha256(&bytes), layer);
    let head = manual.head(&url).send().await.unwrap();
    assert_eq!(head.status(), 200, "HEAD is answered here");
    assert_eq!(head.headers()["content-length"].to_str().unwrap(), bytes.len().to_string());

    if let Some(skopeo) = which("skopeo") {
        let dir = tempfile::tempdir().unwrap();
        run(Command::new(skopeo)
            .args(["copy", "--src-tls-verify=false", &format!("docker://{reference}")])
            .arg(format!("oci:{}:x", dir.path().display())));
        check_layout(dir.path());
    }
}

/// podman, if it is installed and runs here; else a loud SKIPPED line.
fn podman(test: &str) -> Option<String> {
    let skip = |why: &str| {
        let line = format!("SKIPPED: podman unavailable: {test} did not run ({why})");
        println!("{line}");
        eprintln!("{line}");
        None
    };
    let Some(podman) = which("podman") else { return skip("not installed: apt-get install podman") };
    match Command::new(&podman).arg("--version").output() {
        Ok(o) if o.status.success() => Some(podman),
        Ok(o) => skip(&format!("`podman --version` failed: {}", String::from_utf8_lossy(&o.stderr).trim())),
        Err(e) => skip(&format!("`podman --version`: {e}")),
    }
}

#[tokio::test]
async fn podman_pulls_an_image() {
    need_docker!("podman_pulls_an_image");
    let Some(podman) = podman("podman_pulls_an_image") else { return };
    let f = ApiFarm::with_worker(&[]).await;
    // Its own storage, so the test leaves nothing in the machine's.
    let store = tempfile::tempdir().unwrap();
    let podman = |args: &[&str]| {
        let mut cmd = Command::new(&podman);
        cmd.arg("--root")
            .arg(store.path().join("root"))
            .arg("--runroot")
            .arg(store.path().join("run"))
            .args(["--storage-driver", "vfs"])
            .args(args);
        cmd
    };
    let reference = format!("{}/hello/example.com__whisper:v1.0.0-linux-amd64", f.registry());
    run(&mut podman(&["pull", "--tls-verify=false", &reference]));
    let digest = digest_of(&f, "hello/example.com__whisper", "v1.0.0-linux-amd64").await;
    let out = run(&mut podman(&["image", "inspect", "--format", "{{.Digest}} {{.Os}}/{{.Architecture}}", &reference]));
    assert_eq!(out.trim(), format!("{digest} linux/amd64"));
}
