//! The registry pull API with real clients: Docker Engine (`docker pull`,
//! `docker run`), skopeo and podman (Debian's), against farms of the real
//! binaries over Postgres, Docker, local storage and s3s-fs.

use std::collections::BTreeSet;
use std::process::Command;

use reqwest::StatusCode;
use serde_json::Value;

use crate::farm::ApiFarm;

const OCI_ACCEPT: &str = "application/vnd.oci.image.index.v1+json, application/vnd.oci.image.manifest.v1+json";

macro_rules! need_docker {
    ($name:literal) => {
        if !kiln_testkit::docker_available($name) {
            return;
        }
    };
}

/// Run a command; its stdout, or a panic with everything it said.
pub fn run(cmd: &mut Command) -> String {
    let out = cmd.output().unwrap_or_else(|e| panic!("{cmd:?}: {e}"));
    assert!(
        out.status.success(),
        "{cmd:?} failed ({}):\n{}\n{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

/// Run a command that should fail; what it printed on stderr.
pub fn run_failing(cmd: &mut Command) -> String {
    let out = cmd.output().unwrap_or_else(|e| panic!("{cmd:?}: {e}"));
    assert!(!out.status.success(), "{cmd:?} should fail:\n{}", String::from_utf8_lossy(&out.stdout));
    String::from_utf8_lossy(&out.stderr).into_owned()
}

/// Images pulled into the engine by a test, removed when it ends.
#[derive(Default)]
pub struct Pulled(Vec<String>);

impl Pulled {
    pub fn pull(&mut self, reference: &str) -> String {
        self.0.push(reference.to_owned());
        run(Command::new("docker").args(["pull", reference]))
    }
}

impl Drop for Pulled {
    fn drop(&mut self) {
        for r in &self.0 {
            let _ = Command::new("docker").args(["rmi", "-f", r]).output();
        }
    }
}

impl ApiFarm {
    /// `127.0.0.1:<port>`, as image references name this registry.
    pub fn registry(&self) -> String {
        format!("127.0.0.1:{}", self.farm.port)
    }

    /// `GET` (or `HEAD`) of a manifest, as an OCI client asks for it.
    pub async fn manifest(&self, method: reqwest::Method, name: &str, reference: &str) -> reqwest::Response {
        self.http
            .request(method, self.url(&format!("/v2/{name}/manifests/{reference}")))
            .header("accept", OCI_ACCEPT)
            .send()
            .await
            .unwrap()
    }
}

fn header(r: &reqwest::Response, name: &str) -> String {
    r.headers().get(name).unwrap_or_else(|| panic!("no {name} in {:?}", r.headers())).to_str().unwrap().to_owned()
}

fn sha256(bytes: &[u8]) -> String {
    format!("sha256:{}", kiln_artifact::sha256_reader(bytes).unwrap().0)
}

#[tokio::test]
async fn docker_pulls_images_built_on_demand_and_runs_them() {
    need_docker!("docker_pulls_images_built_on_demand_and_runs_them");
    let f = ApiFarm::with_worker(&[]).await;
    let mut pulled = Pulled::default();
    let repo = format!("{}/hello/example.com__greet", f.registry());

    // One platform's image by its tag: built on the pull, then run.
    let by_platform = format!("{repo}:v1.1.0-linux-amd64");
    pulled.pull(&by_platform);
    let out = run(Command::new("docker").args(["run", "--rm", &by_platform]));
    assert_eq!(out, "hello from kiln v1.1.0 linux/amd64\nplugin example.com/greet@v0.2.0\n", "{}", f.logs());
    assert_eq!(f.build_count().await, 1);

    // The version's tag is an index over the linux platforms, each built, and
    // docker picks this machine's.
    let by_version = format!("{repo}:v1.1.0");
    pulled.pull(&by_version);
    let out = run(Command::new("docker").args(["run", "--rm", &by_version]));
    assert!(out.starts_with("hello from kiln v1.1.0 linux/amd64\n"), "{out}");
    assert_eq!(f.build_count().await, 4, "amd64, arm64, arm/6, arm/7");
    let index = f.manifest(reqwest::Method::GET, "hello/example.com__greet", "v1.1.0").await;
    assert_eq!(header(&index, "content-type"), "application/vnd.oci.image.index.v1+json");
    let digest = header(&index, "docker-content-digest");
    let index: Value = serde_json::from_slice(&index.bytes().await.unwrap()).unwrap();
    let platforms: BTreeSet<String> = index["manifests"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| {
            let p = &m["platform"];
            format!(
                "{}/{}{}",
                p["os"].as_str().unwrap(),
                p["architecture"].as_str().unwrap(),
                p["variant"].as_str().map(|v| format!("/{v}")).unwrap_or_default()
            )
        })
        .collect();
    let want: BTreeSet<String> =
        ["linux/amd64", "linux/arm/v6", "linux/arm/v7", "linux/arm64/v8"].map(String::from).into();
    assert_eq!(platforms, want);

    // By digest: the same bytes, and docker runs it too.
    let by_digest = format!("{repo}@{digest}");
    pulled.pull(&by_digest);
    let out = run(Command::new("docker").args(["run", "--rm", &by_digest]));
    assert!(out.starts_with("hello from kiln v1.1.0 linux/amd64\n"), "{out}");
    assert_eq!(f.build_count().await, 4, "a pull by digest builds nothing");

    // HEAD: the true length and the digest; a blob's Range is a 206.
    let head = f.manifest(reqwest::Method::HEAD, "hello/example.com__greet", "v1.1.0-linux-amd64").await;
    assert_eq!(head.status(), 200);
    assert_eq!(header(&head, "docker-distribution-api-version"), "registry/2.0");
    let length: usize = header(&head, "content-length").parse().unwrap();
    let manifest_digest = header(&head, "docker-content-digest");
    let body = f.manifest(reqwest::Method::GET, "hello/example.com__greet", &manifest_digest).await;
    let body = body.bytes().await.unwrap();
    assert_eq!((body.len(), sha256(&body)), (length, manifest_digest.clone()));
    let manifest: Value = serde_json::from_slice(&body).unwrap();
    let layer = manifest["layers"].as_array().unwrap().last().unwrap();
    let (layer_digest, layer_size) = (layer["digest"].as_str().unwrap(), layer["size"].as_u64().unwrap());
    let blob_url = f.url(&format!("/v2/hello/example.com__greet/blobs/{layer_digest}"));
    let head = f.http.head(&blob_url).send().await.unwrap();
    assert_eq!(header(&head, "content-length"), layer_size.to_string());
    assert_eq!(header(&head, "docker-content-digest"), layer_digest);
    let whole = f.http.get(&blob_url).send().await.unwrap().bytes().await.unwrap();
    assert_eq!(sha256(&whole), layer_digest);
    let part = f.http.get(&blob_url).header("range", "bytes=10-").send().await.unwrap();
    assert_eq!(part.status(), StatusCode::PARTIAL_CONTENT);
    assert_eq!(header(&part, "content-range"), format!("bytes 10-{}/{layer_size}", layer_size - 1));
    assert_eq!(part.bytes().await.unwrap(), whole.slice(10..));

    let metrics = f.get("/metrics").await.text().await.unwrap();
    for want in [
        r#"kiln_registry_pulls_total{outcome="served"}"#,
        r#"kiln_registry_requests_total{kind="blob",method="GET",status="206"} 1"#,
        "kiln_registry_blob_bytes_total",
        r#"kiln_waiting{kind="registry"} 0"#,
    ] {
        assert!(metrics.contains(want), "{want} not in\n{metrics}");
    }
}

#[tokio::test]
async fn a_failed_build_is_manifest_unknown_with_the_failure_and_the_log() {
    need_docker!("a_failed_build_is_manifest_unknown_with_the_failure_and_the_log");
    let f = ApiFarm::with_worker(&[]).await;
    let reference = format!("{}/fail:v1.0.0-linux-amd64", f.registry());
    let said = run_failing(Command::new("docker").args(["pull", &reference]));
    assert!(said.contains("manifest unknown"), "{said}");
    assert!(said.contains("failed: step \"build\" exited with code 3"), "{said}");
    assert!(said.contains("intentional failure"), "{said}");
    assert!(said.contains(&format!("log: http://{}/api/builds/", f.registry())), "{said}");
    assert_eq!(f.build_count().await, 1);

    let r = f.manifest(reqwest::Method::GET, "fail", "v1.0.0-linux-amd64").await;
    assert_eq!(r.status(), 404);
    let j: Value = r.json().await.unwrap();
    assert_eq!(j["errors"][0]["code"], "MANIFEST_UNKNOWN");
    assert_eq!(j["errors"][0]["detail"]["api_code"], "build_failed");
    let log = j["errors"][0]["detail"]["log"].as_str().unwrap().to_owned();
    let log = f.http.get(&log).send().await.unwrap().text().await.unwrap();
    assert!(log.contains("intentional failure"), "{log}");
    assert_eq!(f.attempt_count().await, 1, "a failed build is not built again");
}

#[tokio::test]
async fn a_hundred_concurrent_pulls_of_a_new_image_make_one_build() {
    need_docker!("a_hundred_concurrent_pulls_of_a_new_image_make_one_build");
    let f = ApiFarm::with_worker(&[]).await;
    let answers = futures::future::join_all((0..100).map(|_| async {
        let r = f.manifest(reqwest::Method::GET, "hello/example.com__wave", "v1.0.0-linux-arm-v6").await;
        (r.status(), r.headers().get("docker-content-digest").cloned(), r.bytes().await.unwrap())
    }))
    .await;
    let digests: BTreeSet<_> = answers.iter().map(|(_, d, _)| d.clone()).collect();
    for (status, _, body) in &answers {
        assert_eq!(*status, 200, "{}\n{}", String::from_utf8_lossy(body), f.logs());
    }
    assert_eq!(digests.len(), 1);
    assert_eq!(f.build_count().await, 1);
    assert_eq!(f.attempt_count().await, 1);
}

#[tokio::test]
async fn image_tar_loads_into_docker_and_runs_and_its_signature_verifies() {
    need_docker!("image_tar_loads_into_docker_and_runs_and_its_signature_verifies");
    let f = ApiFarm::with_worker(&[]).await;
    let (name, tag) = ("hello/example.com__greet/example.com__shout", "v1.0.0-linux-amd64");
    let head = f.manifest(reqwest::Method::HEAD, name, tag).await;
    assert_eq!(head.status(), 200, "{}", f.logs());
    let digest = header(&head, "docker-content-digest");
    let manifest = f.manifest(reqwest::Method::GET, name, &digest).await.bytes().await.unwrap();
    let parsed: Value = serde_json::from_slice(&manifest).unwrap();
    let config = parsed["config"]["digest"].as_str().unwrap();
    let config: Value = f.get(&format!("/v2/{name}/blobs/{config}")).await.json().await.unwrap();
    let key = config["config"]["Labels"]["kiln.build"].as_str().unwrap().to_owned();

    // The build links to its image's archive and signature.
    let build: Value = f.get(&format!("/api/builds/{key}")).await.json().await.unwrap();
    assert_eq!(build["links"]["image_archive"], format!("/api/builds/{key}/image.tar"));
    assert_eq!(build["links"]["image_signature"], format!("/api/builds/{key}/image.minisig"));
    assert_eq!(build["artifact"]["oci_image"]["manifest_digest"], digest);

    // The archive: its announced length, and docker loads it under the registry's name.
    let r = f.get(&format!("/api/builds/{key}/image.tar")).await;
    assert_eq!(r.status(), 200);
    assert_eq!(header(&r, "x-kiln-image-digest"), digest);
    let length: usize = header(&r, "content-length").parse().unwrap();
    let tar = r.bytes().await.unwrap();
    assert_eq!(tar.len(), length);
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("image.tar");
    std::fs::write(&path, &tar).unwrap();
    let named = format!("{}/{name}:{tag}", f.registry());
    let mut pulled = Pulled::default();
    pulled.0.push(named.clone());
    let out = run(Command::new("docker").arg("load").arg("-i").arg(&path));
    assert!(out.contains(&format!("Loaded image: {named}")), "{out}");
    let out = run(Command::new("docker").args(["run", "--rm", &named]));
    assert_eq!(
        out,
        "hello from kiln v1.0.0 linux/amd64\nplugin example.com/greet@v0.2.0\nplugin example.com/shout@v1.0.0\n"
    );

    // The image signature covers the manifest as served, and names the build.
    let sig = f.get(&format!("/api/builds/{key}/image.minisig")).await.text().await.unwrap();
    let pk = kiln_artifact::PublicKey::parse(&f.get("/api/signing-key").await.text().await.unwrap()).unwrap();
    let comment = kiln_artifact::verify_image(&pk, &manifest, &sig).unwrap();
    assert_eq!((comment.key.as_str(), comment.manifest.as_str()), (key.as_str(), digest.as_str()));

    // A build without an image has no archive.
    let r = f.get("/api/compat?recipe=hello&os=darwin&arch=arm64").await;
    let darwin = header(&r, "x-kiln-build-key");
    let build: Value = f.get(&format!("/api/builds/{darwin}")).await.json().await.unwrap();
    assert!(build["links"].get("image_archive").is_none(), "{build}");
    let r = f.get(&format!("/api/builds/{darwin}/image.tar")).await;
    assert_eq!(r.status(), 404);
    let j: Value = r.json().await.unwrap();
    assert_eq!(j["error"]["code"], "no_image");
}
