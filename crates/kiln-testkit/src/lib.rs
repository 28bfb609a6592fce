//! Helpers for Kiln's tests, which run against real services started by
//! `scripts/test`: a throwaway Postgres cluster (`KILN_TEST_DATABASE_URL`),
//! the Docker engine and s3s-fs.
//!
//! - [`TestDb`]: a fresh database per test, copied from a template that is
//!   migrated once per test run.
//! - [`farm::Farm`]: real `kiln-api`, `kiln-worker` and `kiln-janitor`
//!   processes over `config.test.yml`, a fresh database and data directory.
//! - [`browser::Browser`]: headless Chromium over WebDriver, with
//!   screenshots under `target/page-screenshots/`.
//! - [`goproxy::GoProxy`]: the project's own Go module proxy over
//!   `testdata/go/`, on loopback and on a build network of its own.
//! - [`hosts::HostFarm`]: the same processes on hosts of their own (network
//!   namespaces, [`netns`]), with Postgres, s3s-fs and nginx on theirs; a
//!   host's link can be cut and restored.
//! - [`docker_available`]: whether Docker tests can run; when it cannot, it
//!   prints a loud `SKIPPED` line so a skipped test never passes silently.

pub mod browser;
mod db;
pub mod farm;
pub mod goproxy;
pub mod hosts;
pub mod netns;
pub mod rows;
pub mod s3;

pub use db::TestDb;

/// The repository's root directory.
pub fn repo_root() -> std::path::PathBuf {
    std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../..").canonicalize().expect("repo root exists")
}

/// True when a Docker engine answers. When it does not, prints
/// `SKIPPED: docker unavailable: <test>` to stdout and stderr so the test
/// output says so loudly; the caller then returns early.
pub fn docker_available(test: &str) -> bool {
    let ok = std::process::Command::new("docker")
        .arg("info")
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    if !ok {
        let line = format!("SKIPPED: docker unavailable: {test} did not run (`docker info` failed)");
        println!("{line}");
        eprintln!("{line}");
    }
    ok
}
