//! The real clients read what Kiln writes: `docker load` and `docker run`
//! of `image.tar` (Docker Engine 20.10 reads only its `manifest.json`), and
//! `skopeo inspect`/`skopeo copy` of it as an `oci-archive:`.

use std::fs;
use std::path::Path;
use std::process::{Command, Output};

use kiln_domain::OciDigest;
use serde_json::Value;

use crate::{BUSYBOX, import_base, make_hello, shipped_recipe, tool_available};

fn run(cmd: &mut Command) -> Output {
    let out = cmd.output().unwrap();
    assert!(
        out.status.success(),
        "{cmd:?} failed: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

fn stdout(cmd: &mut Command) -> String {
    String::from_utf8(run(cmd).stdout).unwrap()
}

/// Removes the image tag this test loaded, however the test ends.
struct Loaded(String);

impl Drop for Loaded {
    fn drop(&mut self) {
        let _ = Command::new("docker").args(["image", "rm", &self.0]).output();
    }
}

#[test]
fn docker_load_of_image_tar_runs_the_hello_binary_over_busybox() {
    let test = "docker_load_of_image_tar_runs_the_hello_binary_over_busybox";
    if !kiln_testkit::docker_available(test) {
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let oci = shipped_recipe("hello").oci.unwrap();
    assert_eq!(oci.base.as_deref(), Some(BUSYBOX));
    let blobs = kiln_image::BlobDir::create(&tmp.path().join("layout")).unwrap();
    let base = import_base(BUSYBOX, tmp.path(), &blobs);
    let made = make_hello(tmp.path(), "linux/amd64", &oci, Some(&base));
    assert_eq!(made.image.record.layers.len(), base.layers.len() + 1);

    let tag = format!("kiln-image-test/hello:load-{}-{}", std::process::id(), made.image.record.manifest.digest.hex());
    let tar = tmp.path().join("image.tar");
    fs::write(&tar, made.archive(std::slice::from_ref(&tag))).unwrap();
    let loaded = Loaded(tag.clone());
    let said = stdout(Command::new("docker").arg("load").arg("-i").arg(&tar));
    assert!(said.contains(&tag), "{said}");

    let out = stdout(Command::new("docker").args(["run", "--rm", "--network", "none", &tag]));
    assert_eq!(out, crate::hello_lines(&made.spec));

    let inspect: Value =
        serde_json::from_str(&stdout(Command::new("docker").args(["image", "inspect", &tag]))).unwrap();
    let image = &inspect[0];
    assert_eq!(image["Id"], made.image.record.config.digest.to_string(), "docker's id is our config's digest");
    assert_eq!(image["Architecture"], "amd64");
    assert_eq!(image["Config"]["Entrypoint"], serde_json::json!(["/usr/bin/hello"]));
    assert_eq!(image["Config"]["WorkingDir"], "/work", "the base's working directory");
    assert_eq!(image["Config"]["Labels"]["kiln.build"], made.spec.key().to_string());
    let diff_ids: Vec<String> = made.image.record.layers.iter().map(|l| l.diff_id.to_string()).collect();
    assert_eq!(image["RootFS"]["Layers"], serde_json::json!(diff_ids));
    drop(loaded);
    let gone = Command::new("docker").args(["image", "inspect", &tag]).output().unwrap();
    assert!(!gone.status.success(), "the test's image was removed");
}

fn skopeo(args: &[&str]) -> String {
    stdout(Command::new("skopeo").arg("--insecure-policy").args(args))
}

#[test]
fn skopeo_reads_the_archive_with_true_platforms_and_keeps_its_digests() {
    let test = "skopeo_reads_the_archive_with_true_platforms_and_keeps_its_digests";
    if !kiln_testkit::docker_available(test) || !tool_available("skopeo", test) {
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let oci = shipped_recipe("hello").oci.unwrap();
    let shared = kiln_image::BlobDir::create(&tmp.path().join("base")).unwrap();
    let base = import_base(BUSYBOX, tmp.path(), &shared);

    for (platform, arch, variant) in [
        ("linux/arm/6", "arm", Some("v6")),
        ("linux/arm/7", "arm", Some("v7")),
        ("linux/arm64", "arm64", Some("v8")),
        ("linux/amd64", "amd64", None),
    ] {
        let dir = tmp.path().join(platform.replace('/', "-"));
        fs::create_dir_all(dir.join("layout/blobs/sha256")).unwrap();
        for l in &base.layers {
            fs::copy(shared.path(&l.digest), dir.join("layout/blobs/sha256").join(l.digest.hex())).unwrap();
        }
        let made = make_hello(&dir, platform, &oci, Some(&base));
        let tag = format!("kiln/hello:{}", platform.replace('/', "-"));
        let archive = dir.join("image.tar");
        fs::write(&archive, made.archive(std::slice::from_ref(&tag))).unwrap();
        let src = format!("oci-archive:{}", archive.display());

        let info: Value = serde_json::from_str(&skopeo(&["inspect", &src])).unwrap();
        assert_eq!(info["Os"], "linux", "{platform}");
        assert_eq!(info["Architecture"], arch, "{platform}");
        // skopeo 1.9's summary has no variant; its reading of the config does.
        let config: Value = serde_json::from_str(&skopeo(&["inspect", "--config", &src])).unwrap();
        assert_eq!(config["architecture"], arch, "{platform}");
        assert_eq!(config["variant"].as_str(), variant, "{platform}: {config}");
        assert_eq!(info["Digest"], made.image.record.manifest.digest.to_string(), "{platform}");
        assert_eq!(skopeo(&["inspect", "--raw", &src]).as_bytes(), made.image.manifest, "{platform}: the stored bytes");
        assert_eq!(skopeo(&["inspect", "--config", "--raw", &src]).as_bytes(), made.image.config, "{platform}");

        let layout = dir.join("copied");
        skopeo(&["copy", &src, &format!("oci:{}", layout.display())]);
        check_layout(&layout, &made.image.record);
    }
}

/// The OCI layout skopeo wrote holds our manifest, unchanged, and our blobs.
fn check_layout(layout: &Path, record: &kiln_image::ImageRecord) {
    let index: Value = serde_json::from_slice(&fs::read(layout.join("index.json")).unwrap()).unwrap();
    assert_eq!(index["manifests"][0]["digest"], record.manifest.digest.to_string(), "skopeo kept the digest");
    let mut found: Vec<String> = fs::read_dir(layout.join("blobs/sha256"))
        .unwrap()
        .map(|e| {
            let e = e.unwrap();
            let name = e.file_name().into_string().unwrap();
            assert_eq!(OciDigest::of(&fs::read(e.path()).unwrap()).hex(), name, "a blob under another name");
            name
        })
        .collect();
    found.sort();
    let mut ours: Vec<String> = record.blobs().iter().map(|d| d.hex().to_owned()).collect();
    ours.sort();
    assert_eq!(found, ours);
}
