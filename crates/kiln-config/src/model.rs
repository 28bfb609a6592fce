//! The typed configuration. Every struct refuses unknown keys.

use std::collections::BTreeMap;
use std::path::PathBuf;

use kiln_domain::Recipe;
use serde::Deserialize;

use crate::Secret;

/// The whole configuration file.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    pub database: DatabaseConfig,
    pub storage: StorageConfig,
    pub signing: SigningConfig,
    #[serde(default)]
    pub api: ApiConfig,
    #[serde(default)]
    pub worker: WorkerConfig,
    #[serde(default)]
    pub queue: QueueConfig,
    #[serde(default)]
    pub janitor: JanitorConfig,
    /// Recipes by name.
    pub recipes: BTreeMap<String, Recipe>,
    /// The file this was read from, for errors found after loading.
    #[serde(skip)]
    pub(crate) file: String,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DatabaseConfig {
    /// `postgres://user:password@host:port/db`. Secret: it may hold a password.
    pub url: Secret,
    #[serde(default = "d_max_connections")]
    pub max_connections: u32,
}

/// Which object store holds artifacts.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum StorageKind {
    Local,
    S3,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StorageConfig {
    pub kind: StorageKind,
    /// Settings for `kind: local`.
    #[serde(default)]
    pub local: Option<LocalStorageConfig>,
    /// Settings for `kind: s3`.
    #[serde(default)]
    pub s3: Option<S3StorageConfig>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LocalStorageConfig {
    /// The directory artifacts live under.
    pub path: PathBuf,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct S3StorageConfig {
    /// Endpoint URL for S3-compatible services; unset means AWS.
    #[serde(default)]
    pub endpoint: Option<String>,
    #[serde(default = "d_region")]
    pub region: String,
    pub bucket: String,
    /// A key prefix inside the bucket, e.g. `kiln/`.
    #[serde(default)]
    pub prefix: String,
    /// Credentials; when unset, the usual AWS environment variables apply.
    #[serde(default)]
    pub access_key_id: Option<Secret>,
    #[serde(default)]
    pub secret_access_key: Option<Secret>,
    /// Path-style addressing (`endpoint/bucket/key`), needed by most non-AWS services.
    #[serde(default = "d_true")]
    pub path_style: bool,
    /// Allow plain-HTTP endpoints (local test servers).
    #[serde(default)]
    pub allow_http: bool,
    /// Answer artifact downloads with a `303` to a presigned URL.
    #[serde(default)]
    pub presign: bool,
    #[serde(default = "d_presign_ttl")]
    pub presign_ttl_secs: u64,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SigningConfig {
    /// Path of the minisign secret key (unencrypted); the public key is `<path>.pub`.
    pub secret_key: PathBuf,
}

impl SigningConfig {
    pub fn public_key(&self) -> PathBuf {
        let mut p = self.secret_key.clone().into_os_string();
        p.push(".pub");
        p.into()
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ApiConfig {
    /// Address to listen on.
    pub listen: String,
    /// The URL users reach the API at, for absolute links; links are root-relative paths when unset.
    pub public_url: Option<String>,
    /// Bearer token for admin routes (cancel, retry). Admin routes are off when unset.
    pub admin_token: Option<Secret>,
    /// How long `/api/compat` waits for a build before answering `504`.
    pub compat_timeout_secs: u64,
    /// The longest `?wait=N` honoured.
    pub max_wait_secs: u64,
    /// The largest request body accepted.
    pub max_body_bytes: usize,
    /// The Go module proxy for `go_proxy` version sources.
    pub go_proxy: String,
    /// How long resolved version lists are cached.
    pub version_cache_secs: u64,
    /// Threads that serve connections, each with its own event loop; 0: one per CPU.
    pub io_threads: usize,
    /// Who may use the API: anyone (`open`) or holders of tokens (`tokens`).
    pub auth: AuthConfig,
    /// Rate limits, the per-token build quota, and the limits of a request.
    pub limits: ApiLimits,
}

/// `api.auth`.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct AuthConfig {
    pub mode: AuthMode,
}

/// `api.auth.mode`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum AuthMode {
    /// Anyone may submit and download; admin routes need a token with the
    /// `admin` scope or `api.admin_token`.
    #[default]
    Open,
    /// Every build-related request needs a token with the right scope.
    Tokens,
}

/// Requests per second with a burst; 0 requests per second: no limit.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RateLimit {
    pub requests_per_second: u32,
    /// Requests allowed at once above the steady rate.
    pub burst: u32,
}

impl RateLimit {
    pub fn is_on(&self) -> bool {
        self.requests_per_second > 0
    }
}

/// `api.limits`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ApiLimits {
    /// Requests of each token (by token).
    pub per_token: RateLimit,
    /// Requests without a token, and requests with an unknown token (by client address).
    pub per_address: RateLimit,
    /// Uncached builds (queued or running) one token may have at once; 0: no limit.
    pub builds_per_token: u32,
    /// Peers whose `X-Forwarded-For` is believed: addresses or CIDR blocks.
    pub trusted_proxies: Vec<String>,
    /// A client must send a request's headers within this long.
    pub header_read_timeout_secs: u64,
    /// The most bytes of a request's line and headers.
    pub max_header_bytes: usize,
}

impl Default for ApiLimits {
    fn default() -> Self {
        Self {
            per_token: RateLimit::default(),
            per_address: RateLimit::default(),
            builds_per_token: 0,
            trusted_proxies: Vec::new(),
            header_read_timeout_secs: 10,
            max_header_bytes: 128 * 1024,
        }
    }
}

/// An IP address or a CIDR block (`10.0.0.0/8`, `::1`), as
/// `api.limits.trusted_proxies` holds them.
pub fn parse_ip_net(text: &str) -> Option<ipnet::IpNet> {
    let text = text.trim();
    text.parse::<ipnet::IpNet>().ok().or_else(|| text.parse::<std::net::IpAddr>().ok().map(ipnet::IpNet::from))
}

impl Default for ApiConfig {
    fn default() -> Self {
        Self {
            listen: "127.0.0.1:8234".into(),
            public_url: None,
            admin_token: None,
            compat_timeout_secs: 900,
            max_wait_secs: 120,
            max_body_bytes: 64 * 1024,
            go_proxy: "https://proxy.golang.org".into(),
            version_cache_secs: 60,
            io_threads: 0,
            auth: AuthConfig::default(),
            limits: ApiLimits::default(),
        }
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct WorkerConfig {
    /// This worker's id; defaults to `<hostname>-<pid>`.
    pub id: Option<String>,
    /// Jobs run at once.
    pub concurrency: u32,
    /// Where per-attempt temporary directories are made.
    pub work_dir: PathBuf,
    /// Recipes this worker serves; empty means all.
    pub recipes: Vec<String>,
    /// How often the lease is renewed.
    pub heartbeat_secs: u64,
    /// Idle poll period when no notification arrives.
    pub poll_secs: u64,
    /// On SIGTERM, how long running jobs may take to finish before they are handed back.
    pub shutdown_grace_secs: u64,
    /// Resource limits of every build container.
    pub limits: ContainerLimits,
    /// The Docker network that steps with `network: true` join (created,
    /// internal and without a gateway address on the host, when missing).
    pub build_network: String,
    /// An image with `sleep` and `ip` (busybox): it holds each networked
    /// step's network namespace and removes its default route. Pulled when
    /// missing.
    pub network_helper_image: String,
    pub preemption: PreemptionConfig,
    /// Below this much free space on `work_dir`'s filesystem the worker
    /// stops claiming (0: never).
    pub min_free_disk_mb: u64,
    /// How often the worker removes containers, work directories and mounts
    /// of builds it does not hold whose worker is gone or lease has lapsed.
    pub sweep_secs: u64,
}

impl Default for WorkerConfig {
    fn default() -> Self {
        Self {
            id: None,
            concurrency: 1,
            work_dir: std::env::temp_dir().join("kiln-work"),
            recipes: Vec::new(),
            heartbeat_secs: 5,
            poll_secs: 10,
            shutdown_grace_secs: 30,
            limits: ContainerLimits::default(),
            build_network: "kiln-build".into(),
            network_helper_image: "busybox:1.36".into(),
            preemption: PreemptionConfig::default(),
            min_free_disk_mb: 1024,
            sweep_secs: 60,
        }
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ContainerLimits {
    pub memory_mb: u64,
    pub cpus: f64,
    pub pids: i64,
    /// `uid:gid` the steps run as; never root.
    pub user: String,
    /// Size of the tmpfs at `/tmp`.
    pub tmpfs_mb: u64,
    /// Everything a build's steps may write under `/work`, in MiB (0: no limit).
    pub disk_mb: u64,
    /// How `disk_mb` is enforced.
    pub disk_enforcement: DiskEnforcement,
}

impl Default for ContainerLimits {
    fn default() -> Self {
        Self {
            memory_mb: 2048,
            cpus: 2.0,
            pids: 512,
            user: "65534:65534".into(),
            tmpfs_mb: 256,
            disk_mb: 4096,
            disk_enforcement: DiskEnforcement::Auto,
        }
    }
}

/// How a build's disk limit is enforced.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Default)]
#[serde(rename_all = "snake_case")]
pub enum DiskEnforcement {
    /// `filesystem` when the worker can mount one, else `watcher`.
    #[default]
    Auto,
    /// A loop-mounted ext4 image of `disk_mb` per build: a hard size.
    /// The worker refuses to start when it cannot mount one.
    Filesystem,
    /// The worker measures `/work` while steps run and kills a step past the
    /// limit (a bounded overshoot).
    Watcher,
}

/// Which preemption detector a worker runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Default)]
#[serde(rename_all = "snake_case")]
pub enum PreemptionDetector {
    #[default]
    None,
    File,
    Gce,
    Aws,
    Azure,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct PreemptionConfig {
    pub detector: PreemptionDetector,
    /// Base URL of the metadata service (cloud detectors); the cloud's own when unset.
    pub url: Option<String>,
    /// The file whose appearance means preemption (`file` detector).
    pub path: Option<PathBuf>,
    pub poll_secs: u64,
}

impl Default for PreemptionConfig {
    fn default() -> Self {
        Self { detector: PreemptionDetector::None, url: None, path: None, poll_secs: 5 }
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct QueueConfig {
    /// How long a claim is held without a heartbeat.
    pub lease_secs: u64,
    /// Build attempts (infrastructure failures, lapsed leases) before a build fails for good.
    pub max_attempts: i32,
    /// Preemption hand-backs before a build fails for good (its own, larger budget).
    pub max_preemptions: i32,
    /// Retry backoff: `base * 2^(attempt-1)`, at most `max`.
    pub backoff_base_secs: u64,
    pub backoff_max_secs: u64,
    /// How long a failed build answers for the same request before it may be rebuilt.
    pub failure_ttl_secs: u64,
}

impl Default for QueueConfig {
    fn default() -> Self {
        Self {
            lease_secs: 60,
            max_attempts: 3,
            max_preemptions: 20,
            backoff_base_secs: 10,
            backoff_max_secs: 600,
            failure_ttl_secs: 3600,
        }
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct JanitorConfig {
    /// Cron expressions (with seconds) per task.
    pub schedules: JanitorSchedules,
    /// A worker silent this long is marked gone and its jobs rescued.
    pub worker_gone_after_secs: u64,
    /// Default artifact lifetime; recipes may override it.
    pub artifact_ttl_secs: u64,
    /// Log chunks of finished builds are pruned after this long.
    pub prune_logs_after_secs: u64,
    /// Attempt rows of finished builds are pruned after this long.
    pub prune_attempts_after_secs: u64,
    /// Rows of gone or stopped workers are pruned after this long.
    pub prune_workers_after_secs: u64,
    /// The sweep of shared image objects keeps every object younger than
    /// this, referenced or not (the uploads of builds still running).
    pub image_grace_secs: u64,
}

impl Default for JanitorConfig {
    fn default() -> Self {
        Self {
            schedules: JanitorSchedules::default(),
            worker_gone_after_secs: 120,
            artifact_ttl_secs: 30 * 24 * 3600,
            prune_logs_after_secs: 24 * 3600,
            prune_attempts_after_secs: 30 * 24 * 3600,
            prune_workers_after_secs: 7 * 24 * 3600,
            image_grace_secs: 24 * 3600,
        }
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct JanitorSchedules {
    pub rescue: String,
    pub retry: String,
    pub workers: String,
    pub expiry: String,
    pub prune: String,
    pub sweep: String,
}

impl Default for JanitorSchedules {
    fn default() -> Self {
        Self {
            rescue: "*/15 * * * * *".into(),
            retry: "*/15 * * * * *".into(),
            workers: "*/30 * * * * *".into(),
            expiry: "0 17 * * * *".into(),
            prune: "0 47 3 * * *".into(),
            sweep: "0 27 4 * * *".into(),
        }
    }
}

/// Docker's rule for container and network names.
fn is_docker_name(name: &str) -> bool {
    let mut chars = name.chars();
    chars.next().is_some_and(|c| c.is_ascii_alphanumeric())
        && chars.all(|c| c.is_ascii_alphanumeric() || "_.-".contains(c))
        && name.len() <= 128
}

fn d_max_connections() -> u32 {
    10
}
fn d_region() -> String {
    "us-east-1".into()
}
fn d_true() -> bool {
    true
}
fn d_presign_ttl() -> u64 {
    300
}

impl Config {
    /// Checks serde cannot express. On error, the key and why.
    pub(crate) fn check(&self) -> Result<(), (String, String)> {
        match self.storage.kind {
            StorageKind::Local if self.storage.local.is_none() => {
                return Err(("storage.local".into(), "kind is local but storage.local.path is not set".into()));
            }
            StorageKind::S3 => match &self.storage.s3 {
                None => return Err(("storage.s3".into(), "kind is s3 but storage.s3 is not set".into())),
                Some(s3) if s3.bucket.is_empty() => {
                    return Err(("storage.s3.bucket".into(), "must not be empty".into()));
                }
                _ => {}
            },
            _ => {}
        }
        let limits = &self.api.limits;
        for (key, rate) in [("per_token", limits.per_token), ("per_address", limits.per_address)] {
            if rate.is_on() && rate.burst == 0 {
                return Err((
                    format!("api.limits.{key}.burst"),
                    "must be at least 1 when requests_per_second is set".into(),
                ));
            }
        }
        if let Some(bad) = limits.trusted_proxies.iter().find(|p| parse_ip_net(p).is_none()) {
            return Err(("api.limits.trusted_proxies".into(), format!("{bad:?} is not an IP address or a CIDR block")));
        }
        if limits.header_read_timeout_secs == 0 {
            return Err(("api.limits.header_read_timeout_secs".into(), "must be at least 1".into()));
        }
        if limits.max_header_bytes < 8192 {
            return Err(("api.limits.max_header_bytes".into(), "must be at least 8192".into()));
        }
        if let Some(id) = &self.worker.id
            && (id.len() > 200 || id.chars().any(char::is_control))
        {
            return Err(("worker.id".into(), "at most 200 printable characters".into()));
        }
        if let Some(r) = self.worker.recipes.iter().find(|r| !self.recipes.contains_key(*r)) {
            return Err(("worker.recipes".into(), format!("{r:?} is not a recipe in this configuration")));
        }
        if self.worker.concurrency == 0 {
            return Err(("worker.concurrency".into(), "must be at least 1".into()));
        }
        if self.queue.max_attempts < 1 {
            return Err(("queue.max_attempts".into(), "must be at least 1".into()));
        }
        if self.queue.lease_secs < 2 * self.worker.heartbeat_secs {
            return Err((
                "queue.lease_secs".into(),
                format!("must be at least twice worker.heartbeat_secs ({})", self.worker.heartbeat_secs),
            ));
        }
        if self.worker.limits.user.starts_with("0:")
            || self.worker.limits.user == "0"
            || self.worker.limits.user == "root"
        {
            return Err(("worker.limits.user".into(), "build steps never run as root".into()));
        }
        if self.worker.sweep_secs == 0 {
            return Err(("worker.sweep_secs".into(), "must be at least 1".into()));
        }
        if self.worker.limits.disk_mb > 0 && self.worker.limits.disk_mb < 8 {
            return Err(("worker.limits.disk_mb".into(), "at least 8 (MiB), or 0 for no limit".into()));
        }
        if !is_docker_name(&self.worker.build_network) {
            return Err((
                "worker.build_network".into(),
                "a Docker network name: letters, digits, '_', '.', '-', starting with a letter or digit".into(),
            ));
        }
        if self.worker.network_helper_image.trim().is_empty() {
            return Err(("worker.network_helper_image".into(), "must not be empty".into()));
        }
        let detector = self.worker.preemption.detector;
        if detector == PreemptionDetector::File && self.worker.preemption.path.is_none() {
            return Err(("worker.preemption.path".into(), "the file detector needs a path".into()));
        }
        for (name, recipe) in &self.recipes {
            let key = |k: &str| format!("recipes.{name}.{k}");
            kiln_domain::request::check_recipe_name(name).map_err(|e| (format!("recipes.{name}"), e.message))?;
            if recipe.platforms.is_empty() {
                return Err((key("platforms"), "at least one platform is needed".into()));
            }
            if recipe.steps.is_empty() {
                return Err((key("steps"), "at least one step is needed".into()));
            }
            for (i, step) in recipe.steps.iter().enumerate() {
                if step.run.is_empty() {
                    return Err((key(&format!("steps.{i}.run")), "the argv must not be empty".into()));
                }
            }
            if recipe.binary.is_empty() || recipe.binary.contains('/') || recipe.binary.starts_with('.') {
                return Err((key("binary"), "a plain file name in out/".into()));
            }
            kiln_domain::catalogue::check(recipe).map_err(|(k, why)| (key(&k), why))?;
            if let Some(oci) = &recipe.oci {
                if !kiln_domain::image_ref::is_path_component(name) {
                    return Err((
                        key("oci"),
                        "a recipe with images needs a name fit for a registry: lowercase letters and digits, \
                         with single '-', '_' or '.' between them"
                            .into(),
                    ));
                }
                if kiln_domain::image_ref::image_platforms(recipe).is_empty() {
                    return Err((
                        key("oci"),
                        "images are made for linux only, and the recipe has no linux platform".into(),
                    ));
                }
                oci.check(&recipe.binary).map_err(|e| (key(&e.field), e.message))?;
            }
        }
        Ok(())
    }
}
