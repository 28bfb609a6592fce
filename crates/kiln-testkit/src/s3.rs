//! A real S3-compatible server for tests: `s3s-fs` on a free loopback port.
//!
//! [`S3Server::start`] runs the binary named by `KILN_TEST_S3FS_BIN` (set by
//! `scripts/test`, installed by `scripts/lib/s3fs.sh`) over a fresh temporary
//! directory, with an access key and secret, creates the bucket, waits until
//! it answers, and kills it when dropped. Without the variable it panics with
//! a message saying to run `scripts/test`: an S3 test never passes without S3.

use std::net::{Ipv4Addr, SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use kiln_config::{S3StorageConfig, Secret, StorageConfig, StorageKind};

/// The variable that names the s3s-fs binary.
pub const S3FS_BIN_VAR: &str = "KILN_TEST_S3FS_BIN";

/// A running s3s-fs with one bucket; stopped on drop.
#[derive(Debug)]
pub struct S3Server {
    child: Child,
    dir: tempfile::TempDir,
    endpoint: String,
    bucket: String,
    access_key: String,
    secret_key: String,
}

impl S3Server {
    /// Start a server with an empty bucket named `kiln`. Panics, saying
    /// why, when s3s-fs is not available or does not come up.
    pub fn start() -> S3Server {
        match Self::try_start() {
            Ok(s) => s,
            Err(e) => panic!("{e:#}"),
        }
    }

    pub fn try_start() -> anyhow::Result<S3Server> {
        let bin = std::env::var_os(S3FS_BIN_VAR).with_context(|| {
            format!(
                "{S3FS_BIN_VAR} is not set: S3 tests need a real s3s-fs; run them through scripts/test, \
                 which installs s3s-fs (scripts/lib/s3fs.sh) and sets {S3FS_BIN_VAR}"
            )
        })?;
        let bin = PathBuf::from(bin);
        anyhow::ensure!(bin.is_file(), "{S3FS_BIN_VAR}={} is not a file; run scripts/test", bin.display());

        let dir = tempfile::Builder::new().prefix("kiln-s3s-fs-").tempdir()?;
        let data = dir.path().join("data");
        let bucket = "kiln".to_owned();
        // s3s-fs keeps a bucket as a directory under its root.
        std::fs::create_dir_all(data.join(&bucket))?;
        let access_key = "kiln-test-access".to_owned();
        let secret_key = "kiln-test-secret-key".to_owned();

        // The port is free when probed; another process may take it before
        // s3s-fs binds, so a failed start is tried again on a new port.
        let mut last_err = None;
        for _ in 0..5 {
            let port = TcpListener::bind((Ipv4Addr::LOCALHOST, 0))?.local_addr()?.port();
            let log = std::fs::File::create(dir.path().join(format!("s3s-fs-{port}.log")))?;
            let mut child = Command::new(&bin)
                .args(["--host", "127.0.0.1", "--port", &port.to_string()])
                .args(["--access-key", &access_key, "--secret-key", &secret_key])
                .arg(&data)
                .stdin(Stdio::null())
                .stdout(log.try_clone()?)
                .stderr(log)
                .spawn()
                .with_context(|| format!("starting {}", bin.display()))?;
            match wait_until_listening(&mut child, port) {
                Ok(()) => {
                    let endpoint = format!("http://127.0.0.1:{port}");
                    return Ok(S3Server { child, dir, endpoint, bucket, access_key, secret_key });
                }
                Err(e) => {
                    let _ = child.kill();
                    let _ = child.wait();
                    let log =
                        std::fs::read_to_string(dir.path().join(format!("s3s-fs-{port}.log"))).unwrap_or_default();
                    last_err = Some(e.context(format!("s3s-fs on port {port}; its log:\n{log}")));
                }
            }
        }
        Err(last_err.expect("at least one attempt"))
    }

    /// `http://127.0.0.1:<port>`.
    pub fn endpoint(&self) -> &str {
        &self.endpoint
    }

    pub fn bucket(&self) -> &str {
        &self.bucket
    }

    pub fn access_key(&self) -> &str {
        &self.access_key
    }

    pub fn secret_key(&self) -> &str {
        &self.secret_key
    }

    /// The directory s3s-fs serves; objects are files under `<dir>/<bucket>/`.
    pub fn data_dir(&self) -> PathBuf {
        self.dir.path().join("data")
    }

    /// The bucket's directory on disk.
    pub fn bucket_dir(&self) -> PathBuf {
        self.data_dir().join(&self.bucket)
    }

    /// A `storage` configuration for this server, keys under `prefix`.
    pub fn storage_config(&self, prefix: &str) -> StorageConfig {
        StorageConfig { kind: StorageKind::S3, local: None, s3: Some(self.s3_config(prefix)) }
    }

    pub fn s3_config(&self, prefix: &str) -> S3StorageConfig {
        S3StorageConfig {
            endpoint: Some(self.endpoint.clone()),
            region: "us-east-1".into(),
            bucket: self.bucket.clone(),
            prefix: prefix.into(),
            access_key_id: Some(Secret::new(&self.access_key)),
            secret_access_key: Some(Secret::new(&self.secret_key)),
            path_style: true,
            allow_http: true,
            presign: false,
            presign_ttl_secs: 300,
        }
    }

    /// Environment for a spawned Kiln binary reading `config.test.yml` to use this server.
    pub fn env(&self) -> Vec<(&'static str, String)> {
        vec![
            ("KILN_STORAGE", "s3".into()),
            ("KILN_S3_ENDPOINT", self.endpoint.clone()),
            ("KILN_S3_BUCKET", self.bucket.clone()),
            ("AWS_REGION", "us-east-1".into()),
            ("AWS_ACCESS_KEY_ID", self.access_key.clone()),
            ("AWS_SECRET_ACCESS_KEY", self.secret_key.clone()),
        ]
    }

    /// Regular files in the bucket's directory, relative to it, sorted
    /// (s3s-fs's own bookkeeping files included).
    pub fn files(&self) -> Vec<String> {
        let mut out = Vec::new();
        collect_files(&self.bucket_dir(), &self.bucket_dir(), &mut out);
        out.sort();
        out
    }
}

impl Drop for S3Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn wait_until_listening(child: &mut Child, port: u16) -> anyhow::Result<()> {
    let addr = SocketAddr::from((Ipv4Addr::LOCALHOST, port));
    let deadline = Instant::now() + Duration::from_secs(20);
    while Instant::now() < deadline {
        if let Some(status) = child.try_wait()? {
            bail!("s3s-fs exited with {status}");
        }
        if TcpStream::connect_timeout(&addr, Duration::from_millis(200)).is_ok() {
            return Ok(());
        }
        std::thread::sleep(Duration::from_millis(25));
    }
    bail!("s3s-fs did not listen within 20 s")
}

fn collect_files(root: &Path, dir: &Path, out: &mut Vec<String>) {
    let Ok(entries) = std::fs::read_dir(dir) else { return };
    for e in entries.flatten() {
        let path = e.path();
        if path.is_dir() {
            collect_files(root, &path, out);
        } else if let Ok(rel) = path.strip_prefix(root) {
            out.push(rel.to_string_lossy().into_owned());
        }
    }
}
