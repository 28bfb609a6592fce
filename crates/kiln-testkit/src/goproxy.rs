//! The project's own Go module proxy, for tests of the Go flow (`kilnd`).
//!
//! [`GoProxy::start`] lays out `testdata/go/` as the proxy protocol's static
//! files (`scripts/go-proxy`) and serves the same directory twice:
//! - on loopback, by busybox `httpd` on this machine, for the API's version
//!   resolution (`api.go_proxy`, i.e. `KILN_GO_PROXY`);
//! - as a container from the busybox test image on a build network of its
//!   own, under the name `goproxy`, for the recipe's networked `go get` step
//!   (`worker.build_network`, i.e. `KILN_BUILD_NETWORK`).
//!
//! Several test processes share one Docker engine: the network, the proxy
//! container and the module cache volume (`KILN_GO_CACHE_VOLUME`) are
//! named after this process and a counter, labelled `kiln.test`, and
//! removed when the [`GoProxy`] is dropped, along with nothing else.

use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use crate::farm::{free_port, set_mode};

/// The Go toolchain image `scripts/test-image go` makes.
pub const GO_IMAGE: &str = "kiln-test/go:1.19";
/// The busybox test image that serves the proxy on the build network.
pub const BUSYBOX_IMAGE: &str = "kiln-test/busybox:latest";
/// Options of a build network, as the worker makes one (the worker checks them).
pub const BUILD_NETWORK_ARGS: [&str; 5] = [
    "--internal",
    "-o",
    "com.docker.network.bridge.inhibit_ipv4=true",
    "-o",
    "com.docker.network.bridge.enable_ip_masquerade=false",
];

static COUNTER: AtomicUsize = AtomicUsize::new(0);

/// A running Go module proxy over `testdata/go/`.
#[derive(Debug)]
pub struct GoProxy {
    /// The static layout both servers serve.
    pub dir: tempfile::TempDir,
    /// The loopback URL (for the API).
    pub url: String,
    /// The build network the proxy container is on.
    pub network: String,
    /// The proxy container's name.
    pub container: String,
    /// The module cache volume the recipe's steps use.
    pub cache_volume: String,
    httpd: Child,
}

fn docker(args: &[&str]) -> std::process::Output {
    Command::new("docker").args(args).output().expect("docker runs")
}

fn docker_ok(args: &[&str]) -> String {
    let out = docker(args);
    assert!(out.status.success(), "docker {}: {}", args.join(" "), String::from_utf8_lossy(&out.stderr));
    String::from_utf8_lossy(&out.stdout).into_owned()
}

impl GoProxy {
    /// Lay out the modules and start both servers. Panics (saying what to
    /// run) when the test images are missing; callers check Docker first.
    pub fn start() -> GoProxy {
        for image in [GO_IMAGE, BUSYBOX_IMAGE] {
            assert!(
                docker(&["image", "inspect", image]).status.success(),
                "{image} is missing: run scripts/test-image (scripts/test does)"
            );
        }
        let dir = tempfile::Builder::new().prefix("kiln-goproxy-").tempdir().expect("temp dir");
        set_mode(dir.path(), 0o755);
        let script = crate::repo_root().join("scripts/go-proxy");
        let status = Command::new("python3").arg(&script).arg(dir.path()).status().expect("python3 runs");
        assert!(status.success(), "scripts/go-proxy failed");

        let port = free_port();
        let httpd = Command::new("busybox")
            .args(["httpd", "-f", "-p", &format!("127.0.0.1:{port}"), "-h"])
            .arg(dir.path())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("busybox httpd (busybox-static, installed by scripts/test-image) starts");
        let url = format!("http://127.0.0.1:{port}");

        let name = format!("kiln-test-go-{}-{}", std::process::id(), COUNTER.fetch_add(1, Ordering::Relaxed));
        let label = format!("kiln.test={}", std::process::id());
        let mut create = vec!["network", "create", "--label", &label];
        create.extend(BUILD_NETWORK_ARGS);
        create.push(&name);
        docker_ok(&create);
        let proxy = GoProxy {
            dir,
            url,
            network: name.clone(),
            container: format!("{name}-proxy"),
            cache_volume: format!("{name}-gomod"),
            httpd,
        };
        let volume = format!("{}:/srv:ro", proxy.dir.path().display());
        docker_ok(&[
            "run",
            "-d",
            "--name",
            &proxy.container,
            "--label",
            &label,
            "--network",
            &proxy.network,
            "--network-alias",
            "goproxy",
            "--read-only",
            "--cap-drop",
            "ALL",
            "--user",
            "65534:65534",
            "-v",
            &volume,
            BUSYBOX_IMAGE,
            "httpd",
            "-f",
            "-vv",
            "-p",
            "8080",
            "-h",
            "/srv",
        ]);
        docker_ok(&["volume", "create", "--label", &label, &proxy.cache_volume]);
        proxy.wait_ready();
        proxy
    }

    /// The farm variables that point `config.test.yml` at this proxy.
    pub fn env(&self) -> Vec<(&'static str, String)> {
        vec![
            ("KILN_GO_PROXY", self.url.clone()),
            ("KILN_BUILD_NETWORK", self.network.clone()),
            ("KILN_GO_CACHE_VOLUME", self.cache_volume.clone()),
        ]
    }

    /// The paths the container proxy was asked for, in order (its access log).
    pub fn requests(&self) -> Vec<String> {
        let out = docker(&["logs", &self.container]);
        let text = String::from_utf8_lossy(&out.stderr).into_owned() + &String::from_utf8_lossy(&out.stdout);
        text.lines().filter_map(|l| l.split_once(" url:").map(|(_, path)| path.trim().to_owned())).collect()
    }

    fn wait_ready(&self) {
        let deadline = Instant::now() + Duration::from_secs(30);
        let list = format!("{}/example.com/kilnd/@v/list", self.url);
        loop {
            let loopback = Command::new("curl").args(["-fsS", "-o", "/dev/null", &list]).status();
            let running = docker_ok(&["inspect", "-f", "{{.State.Running}}", &self.container]);
            if loopback.is_ok_and(|s| s.success()) && running.trim() == "true" {
                return;
            }
            assert!(Instant::now() < deadline, "the Go proxy did not come up");
            std::thread::sleep(Duration::from_millis(100));
        }
    }
}

impl Drop for GoProxy {
    fn drop(&mut self) {
        let _ = self.httpd.kill();
        let _ = self.httpd.wait();
        let _ = docker(&["rm", "-f", "-v", &self.container]);
        // Step containers of this test's workers may still be going away.
        for _ in 0..50 {
            if docker(&["network", "rm", &self.network]).status.success() {
                break;
            }
            std::thread::sleep(Duration::from_millis(200));
        }
        let _ = docker(&["volume", "rm", &self.cache_volume]);
    }
}
