//! A farm of real Kiln processes for end-to-end tests.
//!
//! [`Farm::new`] makes a fresh database, a data directory and a signing
//! key, and an environment that points `config.test.yml` at them (the same
//! file `scripts/dev` uses). [`Farm::spawn`] starts any of the project's
//! binaries in that environment with its output in the data directory;
//! [`Proc`] kills its process when dropped.

use std::collections::BTreeMap;
use std::fs::File;
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use crate::TestDb;

/// Path of a workspace binary (`kiln-api`, `kiln-worker`, …) next to the
/// running test executable. `scripts/test` builds them all first.
pub fn bin(name: &str) -> PathBuf {
    let exe = std::env::current_exe().expect("test executable path");
    // target/debug/deps/<test> → target/debug/<name>
    let dir = exe.parent().and_then(Path::parent).expect("target dir");
    let path = dir.join(name);
    assert!(
        path.exists(),
        "{} is missing: build the binaries first (`cargo build --bins`, as scripts/test does)",
        path.display()
    );
    path
}

/// A free TCP port on 127.0.0.1.
pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

/// The environment and files of one test farm.
#[derive(Debug)]
pub struct Farm {
    pub db: TestDb,
    pub data: tempfile::TempDir,
    pub port: u16,
    env: BTreeMap<String, String>,
}

impl Farm {
    /// A fresh database, data directory, signing key and API port.
    pub async fn new() -> Farm {
        let db = TestDb::new().await.expect("test database");
        let data = tempfile::Builder::new().prefix("kiln-farm-").tempdir().expect("temp dir");
        // Build containers run as an unprivileged user and write into work dirs here.
        set_mode(data.path(), 0o755);
        let port = free_port();
        kiln_artifact::keygen(&data.path().join("kiln.key"), false).expect("signing key");
        let mut env = BTreeMap::new();
        for (k, v) in [
            ("CONFIG_PATH", crate::repo_root().join("config.test.yml").display().to_string()),
            ("DATABASE_URL", db.url().to_owned()),
            ("KILN_DATA_DIR", data.path().display().to_string()),
            ("KILN_LISTEN", format!("127.0.0.1:{port}")),
            ("RUST_LOG", "info".to_owned()),
        ] {
            env.insert(k.to_owned(), v);
        }
        Farm { db, data, port, env }
    }

    /// Set a variable for every process spawned from now on.
    pub fn set(&mut self, key: &str, value: impl Into<String>) -> &mut Self {
        self.env.insert(key.to_owned(), value.into());
        self
    }

    /// The variables the farm's processes get.
    pub fn env(&self) -> &BTreeMap<String, String> {
        &self.env
    }

    /// The API's base URL.
    pub fn url(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    /// The signing key's public half, as `kiln-api` serves it.
    pub fn public_key_path(&self) -> PathBuf {
        self.data.path().join("kiln.key.pub")
    }

    /// Start binary `name` with `args` in the farm's environment. Output
    /// goes to `<data>/<label>.log`.
    pub fn spawn(&self, name: &str, label: &str, args: &[&str]) -> Proc {
        self.spawn_with(name, label, args, &[])
    }

    /// [`Farm::spawn`] with extra variables for this process only.
    pub fn spawn_with(&self, name: &str, label: &str, args: &[&str], extra: &[(&str, &str)]) -> Proc {
        let log_path = self.data.path().join(format!("{label}.log"));
        let mut cmd = Command::new(bin(name));
        cmd.args(args).envs(&self.env).envs(extra.iter().copied());
        Proc::spawn(cmd, label, &log_path)
    }

    /// Run `kiln-janitor migrate` to completion (idempotent).
    pub fn migrate(&self) {
        let mut p = self.spawn("kiln-janitor", "migrate", &["migrate"]);
        let status = p.wait_timeout(Duration::from_secs(60)).expect("migrate finishes");
        assert!(status.success(), "kiln-janitor migrate failed:\n{}", p.output());
    }

    /// Start `kiln-api` and wait until `/readyz` answers.
    pub async fn start_api(&self) -> Proc {
        let mut api = self.spawn("kiln-api", "api", &[]);
        let client = reqwest::Client::new();
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            if let Ok(r) = client.get(format!("{}/readyz", self.url())).send().await
                && r.status().is_success()
            {
                return api;
            }
            if let Ok(Some(status)) = api.child.try_wait() {
                panic!("kiln-api exited with {status}:\n{}", api.output());
            }
            assert!(Instant::now() < deadline, "kiln-api not ready after 60 s:\n{}", api.output());
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Start a `kiln-worker` with its own id.
    pub fn start_worker(&self, id: &str) -> Proc {
        self.spawn_with("kiln-worker", id, &[], &[("KILN_WORKER_ID", id)])
    }
}

/// A spawned process, killed (SIGKILL) when dropped.
#[derive(Debug)]
pub struct Proc {
    child: Child,
    label: String,
    log: PathBuf,
}

impl Proc {
    /// Start `cmd` with its output (stdout and stderr) in `log`.
    pub fn spawn(mut cmd: Command, label: &str, log: &Path) -> Proc {
        let file = File::create(log).expect("log file");
        let child = cmd
            .stdin(Stdio::null())
            .stdout(file.try_clone().expect("log file"))
            .stderr(file)
            .spawn()
            .unwrap_or_else(|e| panic!("spawn {label}: {e}"));
        Proc { child, label: label.to_owned(), log: log.to_owned() }
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Everything it printed so far.
    pub fn output(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// Send a signal by name (`TERM`, `KILL`, `INT`).
    pub fn signal(&self, sig: &str) {
        let _ = Command::new("kill").arg(format!("-{sig}")).arg(self.pid().to_string()).status();
    }

    /// Wait for the process to exit, at most `limit`.
    pub fn wait_timeout(&mut self, limit: Duration) -> Option<ExitStatus> {
        let deadline = Instant::now() + limit;
        loop {
            if let Ok(Some(s)) = self.child.try_wait() {
                return Some(s);
            }
            if Instant::now() > deadline {
                return None;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Its exit status, when it has exited.
    pub fn exited(&mut self) -> Option<ExitStatus> {
        self.child.try_wait().ok().flatten()
    }

    /// SIGKILL and reap.
    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    pub fn label(&self) -> &str {
        &self.label
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        self.kill();
    }
}

pub(crate) fn set_mode(path: &Path, mode: u32) {
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode)).expect("chmod");
}
