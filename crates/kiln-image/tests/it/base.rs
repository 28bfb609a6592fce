//! Base images: the real test image through `docker save`, and archives of
//! the other shapes (OCI layout, gzip layers, links) and broken ones made
//! here.

use std::fs;
use std::io::{Read, Write};
use std::process::Command;

use kiln_domain::OciDigest;
use kiln_image::{BlobDir, ImageError, LayerWriter, import_docker_archive};
use serde_json::json;

use crate::{BUSYBOX, import_base};

fn docker_inspect(format: &str) -> String {
    let out = Command::new("docker").args(["image", "inspect", "--format", format, BUSYBOX]).output().unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8(out.stdout).unwrap().trim().to_owned()
}

#[test]
fn docker_save_of_the_test_image_becomes_gzip_layers_of_its_diff_ids() {
    if !kiln_testkit::docker_available("docker_save_of_the_test_image_becomes_gzip_layers_of_its_diff_ids") {
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let blobs = BlobDir::create(&tmp.path().join("layout")).unwrap();
    let base = import_base(BUSYBOX, tmp.path(), &blobs);

    assert_eq!(base.id.to_string(), docker_inspect("{{.Id}}"), "the id is Docker's image id");
    let diff_ids: Vec<String> = serde_json::from_str(&docker_inspect("{{json .RootFS.Layers}}")).unwrap();
    assert_eq!(base.layers.iter().map(|l| l.diff_id.to_string()).collect::<Vec<_>>(), diff_ids);
    assert_eq!(
        base.platform.to_string(),
        format!("{}/{}", docker_inspect("{{.Os}}"), docker_inspect("{{.Architecture}}"))
    );
    assert!(base.defaults.env.iter().any(|e| e.starts_with("PATH=")), "{:?}", base.defaults.env);
    assert_eq!(base.defaults.working_dir.as_deref(), Some("/work"));

    for layer in &base.layers {
        let blob = fs::read(blobs.path(&layer.digest)).unwrap();
        assert_eq!((OciDigest::of(&blob), blob.len() as u64), (layer.digest.clone(), layer.size));
        let mut tar = Vec::new();
        flate2::read::GzDecoder::new(&blob[..]).read_to_end(&mut tar).unwrap();
        assert_eq!(OciDigest::of(&tar), layer.diff_id);
        let names: Vec<String> = tar::Archive::new(&tar[..])
            .entries()
            .unwrap()
            .map(|e| e.unwrap().path().unwrap().to_string_lossy().into_owned())
            .collect();
        assert!(names.iter().any(|n| n.trim_start_matches("./") == "bin/busybox"), "{names:?}");
    }

    // Exported again into another directory: the same blobs, byte for byte.
    let again_dir = tempfile::tempdir().unwrap();
    let again_blobs = BlobDir::create(again_dir.path()).unwrap();
    let again = import_base(BUSYBOX, again_dir.path(), &again_blobs);
    assert_eq!(again, base);
    for layer in &base.layers {
        assert!(fs::read(blobs.path(&layer.digest)).unwrap() == fs::read(again_blobs.path(&layer.digest)).unwrap());
    }
    // It can be remembered (by id) and read back.
    let text = serde_json::to_string(&base).unwrap();
    assert_eq!(serde_json::from_str::<kiln_image::BaseImage>(&text).unwrap(), base);
}

/// A TAR archive of `entries`: (name, content) files, or (name, "-> target") symlinks.
fn archive(entries: &[(&str, Vec<u8>)]) -> Vec<u8> {
    let mut b = tar::Builder::new(Vec::new());
    for (name, data) in entries {
        let mut h = tar::Header::new_gnu();
        h.set_mode(0o644);
        if let Some(target) = data.strip_prefix(b"-> ") {
            h.set_entry_type(tar::EntryType::Symlink);
            h.set_size(0);
            b.append_link(&mut h, name, std::str::from_utf8(target).unwrap()).unwrap();
        } else {
            h.set_size(data.len() as u64);
            h.set_cksum();
            b.append_data(&mut h, name, &data[..]).unwrap();
        }
    }
    b.into_inner().unwrap()
}

/// A small uncompressed layer TAR.
fn layer_tar(content: &str) -> Vec<u8> {
    archive(&[("etc/motd", content.as_bytes().to_vec())])
}

fn config(diff_ids: &[OciDigest]) -> Vec<u8> {
    serde_json::to_vec(&json!({
        "architecture": "arm64",
        "variant": "v8",
        "os": "linux",
        "config": {"Env": ["A=1"], "Cmd": ["sh"], "User": "", "ExposedPorts": {"53/udp": {}}, "Labels": null},
        "rootfs": {"type": "layers", "diff_ids": diff_ids}
    }))
    .unwrap()
}

fn import(bytes: &[u8]) -> Result<(kiln_image::BaseImage, BlobDir, tempfile::TempDir), ImageError> {
    let tmp = tempfile::tempdir().unwrap();
    let blobs = BlobDir::create(&tmp.path().join("layout")).unwrap();
    import_docker_archive("made-here:1", bytes, &tmp.path().join("scratch"), &blobs).map(|b| (b, blobs, tmp))
}

#[test]
fn oci_shaped_archives_gzip_layers_and_linked_layers_are_read() {
    let (one, two) = (layer_tar("one\n"), layer_tar("two\n"));
    let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    gz.write_all(&two).unwrap();
    let two_gz = gz.finish().unwrap();
    let cfg = config(&[OciDigest::of(&one), OciDigest::of(&two), OciDigest::of(&one)]);
    let blob = |b: &[u8]| format!("blobs/sha256/{}", OciDigest::of(b).hex());
    let manifest = json!([{
        "Config": blob(&cfg),
        "RepoTags": ["made-here:1"],
        // The third layer is Docker 20.10's symlink to an identical layer saved before.
        "Layers": [blob(&one), blob(&two_gz), "dup/layer.tar"]
    }]);
    let bytes = archive(&[
        (&blob(&one), one.clone()),
        (&blob(&two_gz), two_gz.clone()),
        ("dup/layer.tar", format!("-> ../{}", blob(&one)).into_bytes()),
        (&blob(&cfg), cfg.clone()),
        ("oci-layout", br#"{"imageLayoutVersion":"1.0.0"}"#.to_vec()),
        ("manifest.json", serde_json::to_vec(&manifest).unwrap()),
    ]);
    let (base, blobs, _tmp) = import(&bytes).unwrap();

    assert_eq!(base.id, OciDigest::of(&cfg));
    assert_eq!(base.platform.to_string(), "linux/arm64/v8");
    assert_eq!(base.defaults.env, ["A=1"]);
    assert_eq!(base.defaults.user, None, "an empty User is no user");
    assert_eq!(base.defaults.exposed_ports, ["53/udp"]);
    assert_eq!(base.layers.len(), 3);
    assert_eq!(base.layers[0], base.layers[2], "one layer, stored once");
    // The gzip layer was decompressed and compressed again with Kiln's settings.
    let mut ours = LayerWriter::new(Vec::new());
    ours.raw_tar(&two[..]).unwrap();
    let (expected, layer) = ours.finish(false).unwrap();
    assert_eq!(base.layers[1], layer);
    assert_eq!(fs::read(blobs.path(&layer.digest)).unwrap(), expected);
    assert_ne!(expected, two_gz);
}

#[test]
fn damaged_and_hostile_archives_are_refused() {
    let one = layer_tar("one\n");
    let cfg = config(&[OciDigest::of(b"not the layer")]);
    let good_manifest = |layer: &str| serde_json::to_vec(&json!([{"Config": "c.json", "Layers": [layer]}])).unwrap();

    let cases: Vec<(&str, Vec<u8>, &str)> = vec![
        ("no manifest", archive(&[("c.json", cfg.clone())]), "manifest.json is not in the archive"),
        (
            "a layer that is not the config's",
            archive(&[
                ("c.json", cfg.clone()),
                ("l/layer.tar", one.clone()),
                ("manifest.json", good_manifest("l/layer.tar")),
            ]),
            "expected sha256:",
        ),
        (
            "a layer path out of the archive",
            archive(&[("c.json", cfg.clone()), ("manifest.json", good_manifest("../../etc/passwd"))]),
            "leaves the archive",
        ),
        (
            "a link out of the archive",
            archive(&[
                ("c.json", cfg.clone()),
                ("l/layer.tar", b"-> ../../../etc/passwd".to_vec()),
                ("manifest.json", good_manifest("l/layer.tar")),
            ]),
            "out of the archive",
        ),
        (
            "a loop of links",
            archive(&[
                ("c.json", cfg.clone()),
                ("a/layer.tar", b"-> ../b/layer.tar".to_vec()),
                ("b/layer.tar", b"-> ../a/layer.tar".to_vec()),
                ("manifest.json", good_manifest("a/layer.tar")),
            ]),
            "too many links",
        ),
        (
            "two images",
            archive(&[(
                "manifest.json",
                serde_json::to_vec(&json!([{"Config": "a", "Layers": []}, {"Config": "b", "Layers": []}])).unwrap(),
            )]),
            "2 images",
        ),
        (
            "more layers than the config lists",
            archive(&[
                ("c.json", cfg.clone()),
                ("manifest.json", serde_json::to_vec(&json!([{"Config": "c.json", "Layers": ["x", "y"]}])).unwrap()),
            ]),
            "lists 1 layers",
        ),
        ("not a tar", b"garbage that is not an archive at all".repeat(20), ""),
    ];
    for (what, bytes, why) in cases {
        let err = import(&bytes).map(|_| ()).unwrap_err();
        assert!(err.to_string().contains(why), "{what}: {err}");
        assert!(!err.is_build_failure(), "{what}: a damaged export is retried");
    }
}
