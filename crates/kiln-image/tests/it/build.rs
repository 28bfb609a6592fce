//! What an image holds: the layer's entries, the config, the manifest, the
//! index and the archive, read back with the tar crate and serde_json.

use std::collections::BTreeMap;
use std::fs;
use std::io::Read;
use std::os::unix::fs::{PermissionsExt, symlink};

use kiln_artifact::pack_dir;
use kiln_domain::{OciDigest, OciSpec};
use kiln_image::{
    ArchivePart, ArchivePlan, BaseDefaults, BaseImage, BlobDir, Descriptor, ImageError, ImageInputs, MEDIA_TYPE_CONFIG,
    MEDIA_TYPE_LAYER, MEDIA_TYPE_MANIFEST, OciPlatform, build_image, image_index,
};
use serde_json::{Value, json};

use crate::{make_hello, shipped_recipe, spec};

/// Every entry of a gzip layer blob: (name, kind, mode, content).
fn layer_entries(blob: &[u8]) -> Vec<(String, char, u32, Vec<u8>)> {
    let mut archive = tar::Archive::new(flate2::read::GzDecoder::new(blob));
    archive
        .entries()
        .unwrap()
        .map(|e| {
            let mut e = e.unwrap();
            let h = e.header().clone();
            assert!(h.as_ustar().is_some(), "plain ustar headers only");
            assert_eq!((h.mtime().unwrap(), h.uid().unwrap(), h.gid().unwrap()), (0, 0, 0));
            assert_eq!((h.username().unwrap(), h.groupname().unwrap()), (Some(""), Some("")));
            let mut data = Vec::new();
            e.read_to_end(&mut data).unwrap();
            let name = e.path().unwrap().to_string_lossy().into_owned();
            (name, h.entry_type().as_byte() as char, h.mode().unwrap(), data)
        })
        .collect()
}

fn json_of(bytes: &[u8]) -> Value {
    serde_json::from_slice(bytes).unwrap()
}

#[test]
fn the_hello_image_runs_the_binary_from_usr_bin() {
    let tmp = tempfile::tempdir().unwrap();
    let oci = shipped_recipe("hello").oci.unwrap();
    let made = make_hello(tmp.path(), "linux/amd64", &oci, None);
    let record = &made.image.record;

    // One layer, the build's own: the binary and its parent directories.
    assert_eq!(record.layers.len(), 1);
    let blob = fs::read(made.blobs.path(&record.layers[0].digest)).unwrap();
    assert_eq!(OciDigest::of(&blob), record.layers[0].digest);
    let entries = layer_entries(&blob);
    let names: Vec<_> = entries.iter().map(|(n, k, m, _)| (n.as_str(), *k, *m)).collect();
    assert_eq!(names, [("usr", '5', 0o755), ("usr/bin", '5', 0o755), ("usr/bin/hello", '0', 0o755)]);
    assert!(String::from_utf8_lossy(&entries[2].3).contains("hello from kiln v1.0.0 linux/amd64"));

    let config = json_of(&made.image.config);
    assert_eq!(config["architecture"], "amd64");
    assert_eq!(config["os"], "linux");
    assert_eq!(config.get("variant"), None);
    assert_eq!(config["created"], "1970-01-01T00:00:00Z");
    assert_eq!(config["config"]["Entrypoint"], json!(["/usr/bin/hello"]));
    assert_eq!(config["config"].get("Cmd"), None);
    let labels = &config["config"]["Labels"];
    assert_eq!(labels["kiln.build"], made.spec.key().to_string());
    assert_eq!(labels["kiln.recipe"], "hello");
    assert_eq!(labels["kiln.plugins"], "example.com/greet@v0.1.0");
    assert_eq!(labels["org.opencontainers.image.version"], "v1.0.0");
    assert_eq!(config["rootfs"], json!({"type": "layers", "diff_ids": [record.layers[0].diff_id]}));
    assert_eq!(
        kiln_image::build_of_config(&serde_json::from_slice(&made.image.config).unwrap()),
        Some(made.spec.key())
    );

    let manifest = json_of(&made.image.manifest);
    assert_eq!(manifest["schemaVersion"], 2);
    assert_eq!(manifest["mediaType"], MEDIA_TYPE_MANIFEST);
    assert_eq!(manifest["config"]["mediaType"], MEDIA_TYPE_CONFIG);
    assert_eq!(manifest["config"]["digest"], OciDigest::of(&made.image.config).to_string());
    assert_eq!(manifest["layers"][0]["mediaType"], MEDIA_TYPE_LAYER);
    assert_eq!(manifest["layers"][0]["size"], blob.len());
    // Fixed field order, no platform inside the manifest itself.
    let text = String::from_utf8(made.image.manifest.clone()).unwrap();
    assert!(
        text.starts_with(
            r#"{"schemaVersion":2,"mediaType":"application/vnd.oci.image.manifest.v1+json","config":{"mediaType""#
        ),
        "{text}"
    );

    assert_eq!(record.manifest.digest, OciDigest::of(&made.image.manifest));
    assert_eq!(record.manifest.size, made.image.manifest.len() as u64);
    assert_eq!(record.manifest.platform.as_ref().unwrap().to_string(), "linux/amd64");
    for d in record.blobs() {
        assert_eq!(OciDigest::of(&fs::read(made.blobs.path(d)).unwrap()), *d, "blob {d} is stored under its digest");
    }
    // The record round-trips through build.json.
    let stored = serde_json::to_string(record).unwrap();
    assert_eq!(&serde_json::from_str::<kiln_image::ImageRecord>(&stored).unwrap(), record);
}

#[test]
fn variants_are_true_to_the_platform() {
    let oci = shipped_recipe("hello").oci.unwrap();
    for (platform, arch, variant) in
        [("linux/arm/6", "arm", Some("v6")), ("linux/arm/7", "arm", Some("v7")), ("linux/arm64", "arm64", Some("v8"))]
    {
        let tmp = tempfile::tempdir().unwrap();
        let made = make_hello(tmp.path(), platform, &oci, None);
        let config = json_of(&made.image.config);
        assert_eq!((config["architecture"].as_str(), config["variant"].as_str()), (Some(arch), variant), "{platform}");
        assert_eq!(config["os"], "linux");
    }
}

fn caddy_like() -> OciSpec {
    serde_json::from_value(json!({
        "binary_path": "/usr/bin/caddy",
        "cmd": ["run", "--config", "/etc/caddy/Caddyfile"],
        "env": {"XDG_DATA_HOME": "/data", "SSL_CERT_FILE": "/etc/ssl/certs/ca-certificates.crt"},
        "ports": [80, 443, "443/udp", 2019],
        "workdir": "/srv",
        "user": "1000:1000",
        "files": [
            {"from": "ca-certificates.crt", "to": "/etc/ssl/certs/ca-certificates.crt"},
            {"from": "conf/Caddyfile", "to": "/etc/caddy/Caddyfile"}
        ]
    }))
    .unwrap()
}

/// An artifact with the hello binary and the files `caddy_like` asks for.
fn caddy_artifact(dir: &std::path::Path) -> std::path::PathBuf {
    let out = dir.join("out");
    fs::create_dir_all(out.join("conf")).unwrap();
    fs::write(out.join("hello"), "#!/bin/sh\necho caddy\n").unwrap();
    fs::set_permissions(out.join("hello"), fs::Permissions::from_mode(0o700)).unwrap();
    fs::write(out.join("ca-certificates.crt"), "-----BEGIN CERTIFICATE-----\n").unwrap();
    fs::set_permissions(out.join("ca-certificates.crt"), fs::Permissions::from_mode(0o644)).unwrap();
    fs::write(out.join("conf/Caddyfile"), ":80 {\n}\n").unwrap();
    fs::set_permissions(out.join("conf/Caddyfile"), fs::Permissions::from_mode(0o640)).unwrap();
    pack_dir(&out, &dir.join("artifact.tar")).unwrap();
    dir.join("artifact.tar")
}

#[test]
fn files_ports_env_user_and_workdir_go_where_the_recipe_says() {
    let tmp = tempfile::tempdir().unwrap();
    let recipe = shipped_recipe("hello");
    let spec = spec(&recipe, "linux/arm64", &[]);
    let oci = caddy_like();
    let blobs = BlobDir::create(&tmp.path().join("layout")).unwrap();
    let artifact = caddy_artifact(tmp.path());
    let image =
        build_image(&ImageInputs { spec: &spec, oci: &oci, binary_file: "hello", base: None }, &artifact, &blobs)
            .unwrap();

    let blob = fs::read(blobs.path(&image.record.layers[0].digest)).unwrap();
    let entries: Vec<_> =
        layer_entries(&blob).into_iter().map(|(n, k, m, d)| (n, k, format!("{m:o}"), d.len())).collect();
    let expect = |n: &str, k: char, m: &str, len: usize| (n.to_owned(), k, m.to_owned(), len);
    assert_eq!(
        entries,
        [
            expect("etc", '5', "755", 0),
            expect("etc/caddy", '5', "755", 0),
            expect("etc/caddy/Caddyfile", '0', "640", 8),
            expect("etc/ssl", '5', "755", 0),
            expect("etc/ssl/certs", '5', "755", 0),
            expect("etc/ssl/certs/ca-certificates.crt", '0', "644", 28),
            expect("srv", '5', "755", 0),
            expect("usr", '5', "755", 0),
            expect("usr/bin", '5', "755", 0),
            expect("usr/bin/caddy", '0', "755", 21),
        ]
    );

    let c = &json_of(&image.config)["config"];
    assert_eq!(c["Entrypoint"], json!(["/usr/bin/caddy"]));
    assert_eq!(c["Cmd"], json!(["run", "--config", "/etc/caddy/Caddyfile"]));
    assert_eq!(c["Env"], json!(["SSL_CERT_FILE=/etc/ssl/certs/ca-certificates.crt", "XDG_DATA_HOME=/data"]));
    let ports: Vec<&String> = c["ExposedPorts"].as_object().unwrap().keys().collect();
    assert_eq!(ports, ["2019/tcp", "443/tcp", "443/udp", "80/tcp"]);
    assert_eq!(c["ExposedPorts"]["80/tcp"], json!({}));
    assert_eq!((c["WorkingDir"].as_str(), c["User"].as_str()), (Some("/srv"), Some("1000:1000")));
    assert_eq!(c["Labels"].get("kiln.plugins"), None);
}

#[test]
fn the_base_gives_defaults_the_recipe_overrides() {
    let tmp = tempfile::tempdir().unwrap();
    let recipe = shipped_recipe("hello");
    let spec = spec(&recipe, "linux/amd64", &[]);
    let blobs = BlobDir::create(&tmp.path().join("layout")).unwrap();
    let artifact = caddy_artifact(tmp.path());
    let base = BaseImage {
        name: "debian:bookworm-slim".into(),
        id: OciDigest::of(b"config"),
        platform: OciPlatform { architecture: "amd64".into(), os: "linux".into(), variant: None },
        defaults: BaseDefaults {
            env: vec!["PATH=/usr/bin:/bin".into(), "XDG_DATA_HOME=/base".into(), "LANG=C.UTF-8".into()],
            user: Some("nobody".into()),
            working_dir: Some("/base".into()),
            exposed_ports: vec!["8080/tcp".into()],
            labels: BTreeMap::from([("maintainer".into(), "someone".into()), ("kiln.plugins".into(), "stale".into())]),
            stop_signal: Some("SIGQUIT".into()),
        },
        layers: vec![],
    };
    let oci: OciSpec =
        serde_json::from_value(json!({"env": {"XDG_DATA_HOME": "/data", "A": "1"}, "ports": [80]})).unwrap();
    let image = build_image(
        &ImageInputs { spec: &spec, oci: &oci, binary_file: "hello", base: Some(&base) },
        &artifact,
        &blobs,
    )
    .unwrap();
    let c = &json_of(&image.config)["config"];
    assert_eq!(c["Env"], json!(["PATH=/usr/bin:/bin", "XDG_DATA_HOME=/data", "LANG=C.UTF-8", "A=1"]));
    assert_eq!((c["User"].as_str(), c["WorkingDir"].as_str()), (Some("nobody"), Some("/base")));
    assert_eq!(c["StopSignal"], "SIGQUIT");
    let ports: Vec<&String> = c["ExposedPorts"].as_object().unwrap().keys().collect();
    assert_eq!(ports, ["80/tcp", "8080/tcp"]);
    assert_eq!(c["Labels"]["maintainer"], "someone");
    assert_eq!(c["Labels"].get("kiln.plugins"), None, "a label of the base never claims plugins");
    let record = image.record.base.unwrap();
    assert_eq!((record.name.as_str(), record.id), ("debian:bookworm-slim", OciDigest::of(b"config")));

    // A base of another platform is refused unless the recipe allows it.
    let arm = spec_for(&recipe, "linux/arm64");
    let err =
        build_image(&ImageInputs { spec: &arm, oci: &oci, binary_file: "hello", base: Some(&base) }, &artifact, &blobs)
            .unwrap_err();
    assert!(matches!(err, ImageError::BasePlatform { .. }) && err.is_build_failure(), "{err}");
    assert!(err.to_string().contains("base_any_platform"), "{err}");
    let mut any = oci.clone();
    any.base_any_platform = true;
    let image =
        build_image(&ImageInputs { spec: &arm, oci: &any, binary_file: "hello", base: Some(&base) }, &artifact, &blobs)
            .unwrap();
    assert_eq!(json_of(&image.config)["architecture"], "arm64", "the config names the build's platform");
}

fn spec_for(recipe: &kiln_domain::Recipe, platform: &str) -> kiln_domain::BuildSpec {
    spec(recipe, platform, &[])
}

#[test]
fn missing_linked_and_non_linux_fail_the_build() {
    let tmp = tempfile::tempdir().unwrap();
    let recipe = shipped_recipe("hello");
    let linux = spec(&recipe, "linux/amd64", &[]);
    let blobs = BlobDir::create(&tmp.path().join("layout")).unwrap();
    let out = tmp.path().join("out");
    fs::create_dir_all(&out).unwrap();
    fs::write(out.join("hello"), "x").unwrap();
    symlink("hello", out.join("ca-certificates.crt")).unwrap();
    pack_dir(&out, &tmp.path().join("a.tar")).unwrap();
    let artifact = tmp.path().join("a.tar");
    let build = |oci: &OciSpec, spec: &kiln_domain::BuildSpec| {
        build_image(&ImageInputs { spec, oci, binary_file: "hello", base: None }, &artifact, &blobs).unwrap_err()
    };

    let missing: OciSpec = serde_json::from_value(json!({"files": [{"from": "nope", "to": "/x"}]})).unwrap();
    let err = build(&missing, &linux);
    assert!(matches!(err, ImageError::MissingFile(_)) && err.is_build_failure(), "{err}");
    assert!(err.to_string().contains("out/nope"), "{err}");

    let linked: OciSpec =
        serde_json::from_value(json!({"files": [{"from": "ca-certificates.crt", "to": "/etc/ca.crt"}]})).unwrap();
    let err = build(&linked, &linux);
    assert!(err.to_string().contains("out/ca-certificates.crt is not a regular file"), "{err}");

    let inputs = ImageInputs { spec: &linux, oci: &OciSpec::default(), binary_file: "absent", base: None };
    let no_binary = build_image(&inputs, &artifact, &blobs).unwrap_err();
    assert!(no_binary.to_string().contains("out/absent"), "{no_binary}");

    let workdir_clash: OciSpec = serde_json::from_value(json!({"binary_path": "/srv", "workdir": "/srv/www"})).unwrap();
    assert!(matches!(build(&workdir_clash, &linux), ImageError::Path(_)));

    let err = build(&OciSpec::default(), &spec(&recipe, "windows/amd64", &[]));
    assert!(matches!(err, ImageError::Platform(_)) && err.is_build_failure(), "{err}");
}

#[test]
fn an_index_lists_each_platforms_manifest() {
    let oci = shipped_recipe("hello").oci.unwrap();
    let dirs: Vec<_> = (0..4).map(|_| tempfile::tempdir().unwrap()).collect();
    let platforms = ["linux/arm64", "linux/amd64", "linux/arm/7", "linux/arm/6"];
    let children: Vec<Descriptor> =
        dirs.iter().zip(platforms).map(|(d, p)| make_hello(d.path(), p, &oci, None).image.record.manifest).collect();
    let index = image_index(&children).unwrap();
    let v = json_of(&index.bytes);
    let listed: Vec<String> = v["manifests"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| {
            let p = &m["platform"];
            assert_eq!(m["mediaType"], MEDIA_TYPE_MANIFEST);
            format!(
                "{}/{}/{}",
                p["os"].as_str().unwrap(),
                p["architecture"].as_str().unwrap(),
                p["variant"].as_str().unwrap_or("-")
            )
        })
        .collect();
    assert_eq!(listed, ["linux/amd64/-", "linux/arm/v6", "linux/arm/v7", "linux/arm64/v8"]);
    assert_eq!(index.descriptor.digest, OciDigest::of(&index.bytes));
}

#[test]
fn the_archive_is_an_oci_layout_with_a_docker_manifest_beside_it() {
    let tmp = tempfile::tempdir().unwrap();
    let oci = shipped_recipe("hello").oci.unwrap();
    let made = make_hello(tmp.path(), "linux/amd64", &oci, None);
    let tag = "127.0.0.1:8234/hello/example.com__greet:v1.0.0-linux-amd64".to_owned();
    let bytes = made.archive(std::slice::from_ref(&tag));

    let mut files = BTreeMap::new();
    let mut order = Vec::new();
    for e in tar::Archive::new(&bytes[..]).entries().unwrap() {
        let mut e = e.unwrap();
        assert!(e.header().as_ustar().is_some());
        assert_eq!(e.header().mtime().unwrap(), 0);
        let name = e.path().unwrap().to_string_lossy().into_owned();
        let mut data = Vec::new();
        e.read_to_end(&mut data).unwrap();
        order.push(name.clone());
        files.insert(name, data);
    }
    let record = &made.image.record;
    let mut blobs: Vec<String> = record.blobs().iter().map(|d| format!("blobs/sha256/{}", d.hex())).collect();
    blobs.sort();
    let mut expected = vec!["blobs".to_owned(), "blobs/sha256".to_owned()];
    expected.extend(blobs);
    expected.extend(["index.json", "manifest.json", "oci-layout"].map(String::from));
    assert_eq!(order, expected);
    for (name, data) in &files {
        if let Some(hex) = name.strip_prefix("blobs/sha256/").filter(|h| !h.is_empty()) {
            assert_eq!(OciDigest::of(data).hex(), hex, "{name}");
        }
    }

    assert_eq!(json_of(&files["oci-layout"]), json!({"imageLayoutVersion": "1.0.0"}));
    let index = json_of(&files["index.json"]);
    assert_eq!(index["manifests"][0]["digest"], record.manifest.digest.to_string());
    assert_eq!(index["manifests"][0]["platform"]["architecture"], "amd64");
    assert_eq!(index["manifests"][0]["annotations"]["org.opencontainers.image.ref.name"], "v1.0.0-linux-amd64");
    assert_eq!(index["manifests"][0]["annotations"]["io.containerd.image.name"], tag);
    let docker = json_of(&files["manifest.json"]);
    assert_eq!(docker[0]["Config"], format!("blobs/sha256/{}", record.config.digest.hex()));
    assert_eq!(docker[0]["RepoTags"], json!([tag]));
    assert_eq!(docker[0]["Layers"], json!([format!("blobs/sha256/{}", record.layers[0].digest.hex())]));

    // The parts: literal bytes and the stored blobs, nothing else.
    let plan = ArchivePlan::new(&made.image.manifest, &record.manifest, &[]).unwrap();
    let blob_parts: Vec<_> = plan.parts().iter().filter(|p| matches!(p, ArchivePart::Blob { .. })).collect();
    assert_eq!(blob_parts.len(), 2, "config and layer come from storage; the manifest is given");
    assert!(plan.parts().windows(2).all(|w| !matches!(w, [ArchivePart::Bytes(_), ArchivePart::Bytes(_)])));
    let untagged = json_of(&files_of(&made.archive(&[]))["manifest.json"]);
    assert_eq!(untagged[0]["RepoTags"], json!([]));
}

fn files_of(archive: &[u8]) -> BTreeMap<String, Vec<u8>> {
    tar::Archive::new(archive)
        .entries()
        .unwrap()
        .map(|e| {
            let mut e = e.unwrap();
            let mut d = Vec::new();
            e.read_to_end(&mut d).unwrap();
            (e.path().unwrap().to_string_lossy().into_owned(), d)
        })
        .collect()
}

#[test]
fn the_archive_refuses_damaged_blobs_and_mismatched_manifests() {
    let tmp = tempfile::tempdir().unwrap();
    let oci = shipped_recipe("hello").oci.unwrap();
    let made = make_hello(tmp.path(), "linux/amd64", &oci, None);
    let record = &made.image.record;

    let mut other = record.manifest.clone();
    other.digest = OciDigest::of(b"another manifest");
    assert!(matches!(ArchivePlan::new(&made.image.manifest, &other, &[]), Err(ImageError::DigestMismatch { .. })));
    assert!(ArchivePlan::new(&made.image.manifest, &record.manifest, &["Not A Tag".into()]).is_err());
    let mut as_config = record.manifest.clone();
    as_config.media_type = MEDIA_TYPE_CONFIG.into();
    assert!(ArchivePlan::new(&made.image.manifest, &as_config, &[]).is_err());

    let plan = ArchivePlan::new(&made.image.manifest, &record.manifest, &[]).unwrap();
    let layer = made.blobs.path(&record.layers[0].digest);
    let mut damaged = fs::read(&layer).unwrap();
    let last = damaged.len() - 1;
    damaged[last] ^= 1;
    fs::write(&layer, &damaged).unwrap();
    let err = plan.write_to(Vec::new(), |d| fs::File::open(made.blobs.path(d))).unwrap_err();
    assert!(matches!(err, ImageError::DigestMismatch { .. }), "{err}");
    damaged.truncate(10);
    fs::write(&layer, &damaged).unwrap();
    let err = plan.write_to(Vec::new(), |d| fs::File::open(made.blobs.path(d))).unwrap_err();
    assert!(err.to_string().contains("10 bytes"), "{err}");
}
