//! `kiln image` and `kiln verify --image` against a farm of real processes.

use crate::farm::CliFarm;
use crate::text;

macro_rules! need_docker {
    ($name:literal) => {
        if !kiln_testkit::docker_available($name) {
            return;
        }
    };
}

#[tokio::test]
async fn image_prints_the_reference_then_the_digest_and_verify_checks_every_platform() {
    need_docker!("image_prints_the_reference_then_the_digest_and_verify_checks_every_platform");
    let f = CliFarm::start(true).await;
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let registry = format!("127.0.0.1:{}", f.farm.port);
    let reference = format!("{registry}/hello/example.com__greet:v1.0.0");

    // Nothing built yet: the reference, and how many platforms are built.
    let out = f.kiln_in(d, &["image", "hello", "--version", "v1.0.0", "--with", "example.com/greet"]);
    assert_eq!(out.status.code(), Some(0), "{}", f.explain(&out));
    assert_eq!(text(&out.stdout), format!("{reference}\n"));
    assert!(text(&out.stderr).contains("0 of 4 platforms built"), "{}", f.explain(&out));

    // A pull builds them (here an OCI client's GET of the index).
    let http = reqwest::Client::new();
    let r = http
        .get(format!("{}/v2/hello/example.com__greet/manifests/v1.0.0", f.farm.url()))
        .header("accept", "application/vnd.oci.image.index.v1+json")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200, "{}", f.logs());
    let digest = r.headers()["docker-content-digest"].to_str().unwrap().to_owned();

    let out = f.kiln_in(d, &["--json", "image", "hello", "--version", "v1.0.0", "--with", "example.com/greet"]);
    assert_eq!(out.status.code(), Some(0), "{}", f.explain(&out));
    let j: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!((j["reference"].as_str(), j["digest"].as_str()), (Some(reference.as_str()), Some(digest.as_str())));
    assert_eq!(j["platforms"].as_array().unwrap().len(), 4);
    let out = f.kiln_in(d, &["image", "hello", "--version", "v1.0.0", "--with", "example.com/greet"]);
    assert_eq!(text(&out.stdout), format!("{reference}\n{registry}/hello/example.com__greet@{digest}\n"));

    // Every platform's manifest is signed by the farm's key.
    let by_digest = format!("{registry}/hello/example.com__greet@{digest}");
    let out = f.kiln_in(d, &["verify", "--image", &by_digest]);
    assert_eq!(out.status.code(), Some(0), "{}", f.explain(&out));
    let said = text(&out.stdout);
    assert_eq!(said.matches("signature verified").count(), 4, "{said}");
    for platform in ["linux/amd64", "linux/arm64", "linux/arm/6", "linux/arm/7"] {
        assert!(said.contains(&format!(" {platform} of build ")), "{platform}: {said}");
    }
    let out = f.kiln_in(d, &["verify", "--image", &format!("{registry}/hello/example.com__greet:v1.0.0-linux-arm-v7")]);
    assert_eq!(out.status.code(), Some(0), "{}", f.explain(&out));
    assert_eq!(text(&out.stdout).matches("signature verified").count(), 1);

    // Another key does not verify them.
    let other = d.join("other.key");
    kiln_artifact::keygen(&other, false).unwrap();
    let other_pub = format!("{}.pub", other.display());
    let out = f.kiln_in(d, &["verify", "--image", &by_digest, "--key", &other_pub]);
    assert_eq!(out.status.code(), Some(1), "{}", f.explain(&out));
    assert!(text(&out.stderr).contains("bad signature"), "{}", f.explain(&out));

    // The registry's errors are read and printed; pinned plugins are refused.
    let out = f.kiln_in(d, &["verify", "--image", &format!("{registry}/hello:v1.0.0-linux-riscv64")]);
    assert_eq!(out.status.code(), Some(2), "{}", f.explain(&out));
    assert!(text(&out.stderr).contains("[MANIFEST_UNKNOWN, HTTP 404"), "{}", f.explain(&out));
    let out = f.kiln_in(d, &["image", "hello", "--with", "example.com/greet@v0.1.0"]);
    assert_eq!(out.status.code(), Some(2), "{}", f.explain(&out));
    assert!(text(&out.stderr).contains("bk-<key>"), "{}", f.explain(&out));
}
