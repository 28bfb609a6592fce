//! A small farm for one test: a fresh database, local storage, a signing
//! key, `config.test.yml` loaded with this test's directories, and helpers
//! to enqueue builds, run workers (in-process or the real binary) and read
//! what they stored.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use kiln_artifact::PublicKey;
use kiln_config::Config;
use kiln_domain::{BuildKey, BuildSpec};
use kiln_queue::{Build, Queue, QueueSettings, priority};
use kiln_storage::{ObjectKey, ObjectName, Storage};
use kiln_testkit::TestDb;
use kiln_worker::{Exit, RunOptions, Worker};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

/// Longest any test waits for something that should happen in seconds.
/// A guard against hangs, not a timing assertion.
pub const PATIENCE: Duration = Duration::from_secs(180);

pub struct Farm {
    /// The test database, kept for as long as the farm lives.
    pub db: TestDb,
    pub dir: tempfile::TempDir,
    pub config: Config,
    pub queue: Queue,
    pub storage: Storage,
    pub public_key: PublicKey,
    env: HashMap<String, String>,
}

/// A worker running in this process.
pub type InProcess = JoinHandle<Result<Exit, kiln_worker::WorkerError>>;

/// A worker running in this process, and the token that shuts it down.
pub struct Stoppable {
    pub task: InProcess,
    pub shutdown: CancellationToken,
}

impl Farm {
    /// `None` (after a loud `SKIPPED` line) when Docker is unavailable.
    pub async fn new(name: &str) -> Option<Farm> {
        Self::with_env(name, &[]).await
    }

    pub async fn with_env(name: &str, extra: &[(&str, &str)]) -> Option<Farm> {
        if !kiln_testkit::docker_available(name) {
            return None;
        }
        let db = TestDb::new().await.expect("a test database");
        let dir = tempfile::Builder::new().prefix("kiln-worker-it-").tempdir().expect("a temp dir");
        let data = dir.path().to_path_buf();
        let key_path = data.join("kiln.key");
        let public_key = kiln_artifact::keygen(&key_path, false).expect("a signing key");
        let mut env: HashMap<String, String> = HashMap::from([
            ("DATABASE_URL".into(), db.url().to_owned()),
            ("KILN_DATA_DIR".into(), data.display().to_string()),
            ("KILN_STORAGE".into(), "local".into()),
            ("KILN_WORKER_ID".into(), format!("{name}-{}", std::process::id())),
        ]);
        for (k, v) in extra {
            env.insert((*k).into(), (*v).into());
        }
        let config = load_config(&env);
        let queue = db.queue(QueueSettings::from(&config.queue));
        let storage = Storage::from_config(&config.storage).expect("local storage");
        Some(Farm { db, dir, config, queue, storage, public_key, env })
    }

    pub fn work_dir(&self) -> PathBuf {
        self.config.worker.work_dir.clone()
    }

    /// A resolved spec for `recipe` as this farm's configuration defines it.
    pub fn spec(&self, recipe: &str, version: &str, plugins: &[(&str, &str)]) -> BuildSpec {
        kiln_testkit::rows::recipe_spec(recipe, &self.config.recipes[recipe], version, plugins)
    }

    pub async fn enqueue(&self, spec: &BuildSpec) -> BuildKey {
        self.queue.enqueue(spec, priority::DEFAULT).await.expect("enqueue").build.key
    }

    pub async fn build(&self, key: &BuildKey) -> Build {
        self.queue.get(key).await.unwrap().expect("the build exists")
    }

    /// Poll until the live log holds `needle`; returns the log.
    pub async fn wait_log(&self, key: &BuildKey, needle: &str) -> String {
        let start = Instant::now();
        loop {
            let log = self.queue.log_text(key).await.unwrap();
            if log.contains(needle) {
                return log;
            }
            assert!(start.elapsed() < PATIENCE, "waited too long for {needle:?} in the log:\n{log}");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// Start a worker in this process with `config` (or the farm's).
    pub async fn start_worker(&self, id: &str, config: Option<Config>, once: bool) -> InProcess {
        let mut config = config.unwrap_or_else(|| self.config.clone());
        config.worker.id = Some(id.to_owned());
        let worker = Worker::start(config).await.expect("the worker starts");
        tokio::spawn(async move {
            worker.run(RunOptions { once }, CancellationToken::new(), CancellationToken::new()).await
        })
    }

    /// Start a worker in this process that runs until shut down.
    pub async fn start_stoppable(&self, id: &str, config: Config) -> Stoppable {
        let mut config = config;
        config.worker.id = Some(id.to_owned());
        let worker = Worker::start(config).await.expect("the worker starts");
        let shutdown = CancellationToken::new();
        let s = shutdown.clone();
        let task = tokio::spawn(async move { worker.run(RunOptions::default(), s, CancellationToken::new()).await });
        Stoppable { task, shutdown }
    }

    /// Run one job on a fresh in-process worker and return how it ended.
    pub async fn run_once(&self, id: &str) -> Exit {
        let w = self.start_worker(id, None, true).await;
        tokio::time::timeout(PATIENCE, w).await.expect("the job ends").unwrap().expect("the worker runs")
    }

    /// Spawn the real `kiln-worker` binary on `config.test.yml` with this
    /// farm's variables plus `extra`.
    pub fn spawn_worker(&self, id: &str, extra: &[(&str, &str)]) -> Child {
        let mut cmd = self.worker_command(id, extra);
        cmd.stdout(Stdio::null()).stderr(Stdio::inherit());
        cmd.spawn().expect("spawn kiln-worker")
    }

    /// The real `kiln-worker` binary on `config.test.yml` with this farm's
    /// variables plus `extra`, and nothing else from this process's environment.
    pub fn worker_command(&self, id: &str, extra: &[(&str, &str)]) -> Command {
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_kiln-worker"));
        cmd.arg("--config").arg(config_path()).env_clear();
        for k in ["PATH", "HOME", "DOCKER_HOST"] {
            if let Ok(v) = std::env::var(k) {
                cmd.env(k, v);
            }
        }
        cmd.envs(&self.env).env("KILN_WORKER_ID", id).env("RUST_LOG", "info");
        for (k, v) in extra {
            cmd.env(k, v);
        }
        cmd
    }

    pub async fn object(&self, key: &BuildKey, name: ObjectName) -> Vec<u8> {
        self.storage.get_bytes(&ObjectKey::new(key, name)).await.unwrap_or_else(|e| panic!("{name}: {e}")).to_vec()
    }

    pub async fn has_object(&self, key: &BuildKey, name: ObjectName) -> bool {
        self.storage.exists(&ObjectKey::new(key, name)).await.unwrap()
    }

    /// The file `name` out of the build's artifact TAR.
    pub async fn artifact_file(&self, key: &BuildKey, name: &str) -> Vec<u8> {
        let tar = self.object(key, ObjectName::Artifact).await;
        kiln_artifact::extract_file(&tar[..], name).unwrap_or_else(|e| panic!("{name} in artifact.tar: {e}"))
    }
}

fn config_path() -> PathBuf {
    kiln_testkit::repo_root().join("config.test.yml")
}

/// `config.test.yml` expanded with `env` only (never this process's environment).
pub fn load_config(env: &HashMap<String, String>) -> Config {
    let path = config_path();
    let text = std::fs::read_to_string(&path).unwrap();
    Config::parse(&text, &path.display().to_string(), &|k| env.get(k).cloned()).expect("config.test.yml loads")
}

/// Containers (running or not) of this build run by this worker. Tests in
/// other processes may build the same key at the same time, on other workers.
pub fn containers_of(key: &BuildKey, worker: &str) -> Vec<String> {
    let out = Command::new("docker")
        .args(["ps", "-aq", "--filter", &format!("label=kiln.build={key}")])
        .args(["--filter", &format!("label=kiln.worker={worker}")])
        .output()
        .expect("docker ps");
    assert!(out.status.success(), "docker ps failed");
    String::from_utf8_lossy(&out.stdout).split_whitespace().map(str::to_owned).collect()
}

/// Entries left in a directory.
pub fn entries(dir: &Path) -> Vec<String> {
    match std::fs::read_dir(dir) {
        Ok(rd) => rd.flatten().map(|e| e.file_name().to_string_lossy().into_owned()).collect(),
        Err(_) => vec![],
    }
}

/// Wait for a spawned process to exit, at most [`PATIENCE`].
pub async fn wait_exit(child: &mut Child) -> Result<std::process::ExitStatus> {
    let start = Instant::now();
    loop {
        if let Some(status) = child.try_wait().context("wait")? {
            return Ok(status);
        }
        if start.elapsed() > PATIENCE {
            let _ = child.kill();
            bail!("the worker did not exit");
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Send SIGTERM to a spawned process.
pub fn sigterm(child: &Child) {
    let ok = Command::new("kill").arg("-TERM").arg(child.id().to_string()).status().unwrap().success();
    assert!(ok, "kill -TERM failed");
}

/// Accept connections on every interface and count them: IPv6 and IPv4
/// (one dual-stack socket) where the host has IPv6, else IPv4.
pub async fn host_listener() -> (u16, Arc<AtomicUsize>) {
    let l = match tokio::net::TcpListener::bind("[::]:0").await {
        Ok(l) => l,
        Err(_) => tokio::net::TcpListener::bind("0.0.0.0:0").await.unwrap(),
    };
    let port = l.local_addr().unwrap().port();
    let count = Arc::new(AtomicUsize::new(0));
    let c = count.clone();
    tokio::spawn(async move {
        while let Ok((sock, _)) = l.accept().await {
            c.fetch_add(1, Ordering::SeqCst);
            drop(sock);
        }
    });
    (port, count)
}
