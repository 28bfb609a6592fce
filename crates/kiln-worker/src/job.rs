//! One claimed job, from the first step to the stored, signed artifact.
//!
//! [`run`] takes a [`Claim`], renews its lease in the background, runs the
//! recipe's steps in fresh containers over a fresh temporary directory,
//! packs `out/` as a deterministic TAR, signs it, uploads the artifact, its
//! signature, the main binary, the log and `build.json`, and completes the
//! job. Every ending is reported to the queue with the right classification:
//!
//! - a step exited non-zero, ran out of memory or time, or the steps made an
//!   unusable `out/`: a build failure, final ([`Queue::fail_build`]);
//! - Docker, storage or the local disk failed: an infrastructure failure,
//!   retried with backoff ([`Queue::fail_infra`]);
//! - an administrator cancelled it: [`Queue::acknowledge_cancel`];
//! - preemption or shutdown: [`Queue::hand_back`], no attempt consumed;
//! - the lease was lost: nothing at all, the job is someone else's now.
//!
//! Uploads are fenced: the lease is checked just before the first upload, so
//! a worker whose lease lapsed stores nothing over a newer attempt.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use chrono::{DateTime, Utc};
use kiln_artifact::{ArtifactError, PackedTar, Signer};
use kiln_config::Config;
use kiln_domain::{BuildKey, Recipe};
use kiln_queue::{Claim, EventKind, HandBack, HeartbeatOutcome, Lease, Queue, QueueError};
use kiln_storage::{ObjectKey, ObjectName, Storage};
use serde::Serialize;
use serde_json::json;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use crate::docker::{ContainerSpec, Engine, Exit, ImageInfo, LABEL_BUILD, LABEL_STEP, LABEL_WORKER};
use crate::log::{self, LogRecord};
use crate::render::{self, RenderedStep};

/// Lines of a failing step's output quoted in the build's error.
const ERROR_TAIL_LINES: usize = 20;

/// What the worker shares with every job it runs.
#[derive(Debug, Clone)]
pub struct JobContext {
    pub worker_id: String,
    pub host: String,
    pub config: Arc<Config>,
    pub queue: Queue,
    pub storage: Storage,
    pub signer: Arc<Signer>,
    pub engine: Engine,
}

/// Why a job is being stopped from outside.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StopReason {
    /// An administrator cancelled the build.
    Cancelled,
    /// The lease is no longer ours.
    LeaseLost,
    /// The machine is being preempted.
    Preempted,
    /// The worker is shutting down and the grace period ran out.
    Shutdown,
}

/// The handle by which the worker (and the job's own heartbeat) stops a job:
/// the first reason given wins, and every container of the job is killed.
#[derive(Debug, Default)]
pub struct JobControl {
    token: CancellationToken,
    reason: Mutex<Option<StopReason>>,
}

impl JobControl {
    pub fn stop(&self, reason: StopReason) {
        let mut r = self.reason.lock().expect("not poisoned");
        if r.is_none() {
            *r = Some(reason);
        }
        self.token.cancel();
    }

    pub fn reason(&self) -> Option<StopReason> {
        *self.reason.lock().expect("not poisoned")
    }

    pub fn token(&self) -> &CancellationToken {
        &self.token
    }
}

/// How a job ended, as reported to the queue.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum JobEnd {
    Succeeded,
    /// Final build failure, with the error recorded.
    Failed(String),
    /// Infrastructure failure, to be retried.
    Errored(String),
    Cancelled,
    HandedBack(StopReason),
    /// The lease was lost; nothing was reported.
    LeaseLost,
}

/// Why an attempt stopped short of success.
#[derive(Debug)]
enum Failure {
    Build(String),
    Infra(String),
    Stopped,
}

impl From<crate::docker::DockerError> for Failure {
    fn from(e: crate::docker::DockerError) -> Self {
        Failure::Infra(e.to_string())
    }
}

impl From<kiln_storage::StorageError> for Failure {
    fn from(e: kiln_storage::StorageError) -> Self {
        Failure::Infra(format!("storage: {e}"))
    }
}

impl From<ArtifactError> for Failure {
    fn from(e: ArtifactError) -> Self {
        match e {
            // What the steps left in out/ cannot be packed: the build's fault.
            ArtifactError::Unpackable { .. } => Failure::Build(format!("out/ cannot be packed: {e}")),
            e => Failure::Infra(format!("packing or signing: {e}")),
        }
    }
}

fn io_failure(what: &str, path: &Path) -> impl FnOnce(std::io::Error) -> Failure {
    let msg = format!("{what} {}", path.display());
    move |e| Failure::Infra(format!("{msg}: {e}"))
}

/// The timing of one step, for `build.json` and the step events.
#[derive(Debug, Clone, Serialize)]
pub struct StepTiming {
    pub name: String,
    pub started_at: DateTime<Utc>,
    pub seconds: f64,
    pub exit_code: Option<i64>,
    pub outcome: &'static str,
}

/// Run the claimed job to its end and report that end to the queue.
pub async fn run(ctx: &JobContext, claim: Claim, control: Arc<JobControl>) -> JobEnd {
    let lease = claim.lease.clone();
    // Aborted however this future ends, even when it is dropped: a heartbeat
    // that outlived its job would hold the lease forever.
    let _heartbeat = AbortOnDrop(tokio::spawn(heartbeat(
        ctx.queue.clone(),
        lease.clone(),
        Duration::from_secs(ctx.config.worker.heartbeat_secs.max(1)),
        control.clone(),
    )));
    let (log_tx, log_rx) = mpsc::channel::<Bytes>(256);
    let pump = tokio::spawn(log::pump(ctx.queue.clone(), lease.clone(), log_rx));

    let mut attempt = Attempt { ctx, claim: &claim, control: &control, log: Some(log_tx), timings: Vec::new() };
    let result = attempt.execute().await;
    let (end, record) = match result {
        Ok(built) => {
            attempt.say("==> done: uploading the artifact\n").await;
            let record = attempt.close_log(pump).await;
            let end = match attempt.publish(built, &record).await {
                Ok(manifest) => match ctx.queue.complete(&lease, &manifest).await {
                    Ok(()) => JobEnd::Succeeded,
                    Err(e) => report_error(&lease, e),
                },
                Err(f) => attempt.report(f, &record).await,
            };
            (end, record)
        }
        Err(f) => {
            match &f {
                Failure::Build(m) | Failure::Infra(m) => attempt.say(&format!("==> failed: {m}\n")).await,
                Failure::Stopped => attempt.say("==> stopped\n").await,
            }
            let record = attempt.close_log(pump).await;
            (attempt.report(f, &record).await, record)
        }
    };
    tracing::info!(build = %lease.key, attempt = lease.attempt_id, end = ?end, log_bytes = record.text.len(), "job ended");
    end
}

/// Aborts the task when dropped.
struct AbortOnDrop<T>(tokio::task::JoinHandle<T>);

impl<T> Drop for AbortOnDrop<T> {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// A queue error while reporting the end of a job.
fn report_error(lease: &Lease, e: QueueError) -> JobEnd {
    match e {
        QueueError::LeaseLost { .. } => JobEnd::LeaseLost,
        e => {
            // The lease will lapse and the janitor will rescue the job.
            tracing::error!(build = %lease.key, error = %e, "could not report the end of a job");
            JobEnd::Errored(e.to_string())
        }
    }
}

/// Renew the lease every `every`; stop the job when it is cancelled or lost.
async fn heartbeat(queue: Queue, lease: Lease, every: Duration, control: Arc<JobControl>) {
    let mut tick = tokio::time::interval(every);
    tick.tick().await;
    loop {
        tick.tick().await;
        match queue.heartbeat(&lease).await {
            Ok(HeartbeatOutcome::Continue) => {}
            Ok(HeartbeatOutcome::Cancelled) => {
                tracing::info!(build = %lease.key, "build cancelled; stopping it");
                control.stop(StopReason::Cancelled);
                return;
            }
            Err(QueueError::LeaseLost { .. }) => {
                tracing::warn!(build = %lease.key, "lease lost; stopping the job");
                control.stop(StopReason::LeaseLost);
                return;
            }
            // Keep trying: the lease may still be renewed before it lapses.
            Err(e) => tracing::warn!(build = %lease.key, error = %e, "heartbeat failed"),
        }
    }
}

/// The result of the steps: packed, signed, ready to upload.
#[derive(Debug)]
struct Built {
    dir: WorkDir,
    image: ImageInfo,
    packed: PackedTar,
    tar: PathBuf,
    signature: String,
    binary: PathBuf,
    binary_name: String,
    binary_sha256: String,
    binary_size: u64,
    started_at: DateTime<Utc>,
    steps_done_at: DateTime<Utc>,
}

struct Attempt<'a> {
    ctx: &'a JobContext,
    claim: &'a Claim,
    control: &'a JobControl,
    log: Option<mpsc::Sender<Bytes>>,
    timings: Vec<StepTiming>,
}

impl Attempt<'_> {
    fn key(&self) -> &BuildKey {
        &self.claim.lease.key
    }

    /// A line of the worker's own in the build log.
    async fn say(&self, text: &str) {
        if let Some(tx) = &self.log {
            let _ = tx.send(Bytes::copy_from_slice(text.as_bytes())).await;
        }
    }

    async fn event(&self, kind: EventKind, data: serde_json::Value) {
        if let Err(e) = self.ctx.queue.append_event(&self.claim.lease, kind, &data.to_string()).await {
            tracing::debug!(build = %self.key(), error = %e, "could not append an event");
        }
    }

    async fn close_log(&mut self, pump: tokio::task::JoinHandle<LogRecord>) -> LogRecord {
        self.log = None;
        pump.await.unwrap_or_default()
    }

    fn recipe(&self) -> Result<&Recipe, Failure> {
        let spec = &self.claim.spec;
        let recipe = self.ctx.config.recipes.get(&spec.recipe).ok_or_else(|| {
            Failure::Infra(format!(
                "worker {} has no recipe {:?} in its configuration",
                self.ctx.worker_id, spec.recipe
            ))
        })?;
        // The key was made from another definition of the recipe: building
        // this one would store something the key does not describe.
        if recipe.revision() != spec.recipe_revision {
            return Err(Failure::Infra(format!(
                "recipe {} is at revision {} on worker {}, the build wants {}",
                spec.recipe,
                recipe.revision(),
                self.ctx.worker_id,
                spec.recipe_revision
            )));
        }
        Ok(recipe)
    }

    async fn execute(&mut self) -> Result<Built, Failure> {
        let started_at = Utc::now();
        let spec = self.claim.spec.clone();
        self.say(&format!(
            "==> kiln: build {} ({} {} {}) attempt {} on worker {}\n",
            self.key(),
            spec.recipe,
            spec.version,
            spec.platform,
            self.claim.attempt_no,
            self.ctx.worker_id
        ))
        .await;
        let recipe = self.recipe()?.clone();
        let steps = render::render_steps(&spec.recipe, &recipe, &spec).map_err(|e| Failure::Build(e.to_string()))?;
        let image = self.ctx.engine.ensure_image(&recipe.image, recipe.pull).await?;
        self.say(&format!("==> image {} ({})\n", image.name, image.id)).await;

        if let Some(cache) = &recipe.cache {
            self.ctx.engine.prepare_cache(&recipe.image, cache, &self.ctx.config.worker.limits.user).await?;
        }
        let dir = WorkDir::create(&self.ctx.config.worker.work_dir, self.key(), &self.ctx.config.worker.limits.user)?;
        let total = steps.len();
        for (index, step) in steps.iter().enumerate() {
            if self.control.token().is_cancelled() {
                return Err(Failure::Stopped);
            }
            self.run_step(&recipe, step, index, total, &dir).await?;
        }
        let steps_done_at = Utc::now();

        // Only now is out/ ours alone: every container is gone.
        let out = dir.out();
        let binary_name = recipe.binary_file(&spec.platform);
        let binary = out.join(&binary_name);
        check_real_dir(&dir.root)?;
        check_real_dir(&out)?;
        match std::fs::symlink_metadata(&binary) {
            Ok(m) if m.file_type().is_file() => {}
            Ok(_) => return Err(Failure::Build(format!("out/{binary_name} is not a regular file"))),
            Err(_) => return Err(Failure::Build(format!("the steps did not produce out/{binary_name}"))),
        }
        self.say("==> packing out/\n").await;
        let tar = dir.root.join("artifact.tar");
        let key = self.key().clone();
        let signer = self.ctx.signer.clone();
        let (packed, signature, binary_sha256, binary_size) = {
            let (out, tar, binary) = (out.clone(), tar.clone(), binary.clone());
            tokio::task::spawn_blocking(move || -> Result<_, Failure> {
                let packed = kiln_artifact::pack_dir(&out, &tar)?;
                let comment = kiln_artifact::build_comment(&key, &packed.sha256);
                let signature = signer.sign_file(&tar, &comment)?;
                let f = std::fs::File::open(&binary).map_err(io_failure("reading", &binary))?;
                let (sha, size) = kiln_artifact::sha256_reader(f).map_err(io_failure("hashing", &binary))?;
                Ok((packed, signature, sha, size))
            })
            .await
            .map_err(|e| Failure::Infra(format!("packing task: {e}")))??
        };
        self.say(&format!(
            "==> artifact.tar: {} bytes, {} entries, sha256 {}\n",
            packed.size,
            packed.entries.len(),
            packed.sha256
        ))
        .await;
        Ok(Built {
            dir,
            image,
            packed,
            tar,
            signature,
            binary,
            binary_name,
            binary_sha256,
            binary_size,
            started_at,
            steps_done_at,
        })
    }

    async fn run_step(
        &mut self,
        recipe: &Recipe,
        step: &RenderedStep,
        index: usize,
        total: usize,
        dir: &WorkDir,
    ) -> Result<(), Failure> {
        let ctx = self.ctx;
        self.say(&format!(
            "==> [{}/{total}] {}{}: {}\n",
            index + 1,
            step.name,
            if step.network { " (network)" } else { "" },
            quote_argv(&step.argv)
        ))
        .await;
        self.event(EventKind::StepStarted, json!({"name": step.name, "index": index, "total": total})).await;
        let spec = ContainerSpec {
            image: recipe.image.clone(),
            argv: step.argv.clone(),
            env: step.env.iter().map(|(k, v)| (k.clone(), v.clone())).collect(),
            network: step.network,
            timeout: step.timeout,
            work_dir: dir.root.clone(),
            cache: recipe.cache.clone(),
            limits: ctx.config.worker.limits.clone(),
            labels: HashMap::from([
                (LABEL_BUILD.to_owned(), self.key().to_string()),
                (LABEL_WORKER.to_owned(), ctx.worker_id.clone()),
                (LABEL_STEP.to_owned(), step.name.clone()),
            ]),
        };

        // The step's output goes to the build log; its tail is kept for the error.
        let (step_tx, mut step_rx) = mpsc::channel::<Bytes>(64);
        let started_at = Utc::now();
        let clock = Instant::now();
        let run = async {
            let r = ctx.engine.run(&spec, &step_tx, self.control.token()).await;
            drop(step_tx);
            r
        };
        let log = self.log.clone();
        let forward = async {
            let mut tail = TailBuffer::default();
            while let Some(chunk) = step_rx.recv().await {
                tail.push(&chunk);
                if let Some(tx) = &log {
                    let _ = tx.send(chunk).await;
                }
            }
            tail
        };
        let (result, tail) = tokio::join!(run, forward);
        let seconds = clock.elapsed().as_secs_f64();
        let run = match result {
            Ok(run) => run,
            Err(e) => {
                self.timings.push(StepTiming {
                    name: step.name.clone(),
                    started_at,
                    seconds,
                    exit_code: None,
                    outcome: "error",
                });
                return Err(e.into());
            }
        };
        let (exit_code, outcome) = match run.exit {
            Exit::Code(0) => (Some(0), "ok"),
            Exit::Code(c) => (Some(c), "failed"),
            Exit::OutOfMemory => (Some(137), "out_of_memory"),
            Exit::TimedOut => (None, "timed_out"),
            Exit::Killed => (None, "stopped"),
        };
        self.timings.push(StepTiming { name: step.name.clone(), started_at, seconds, exit_code, outcome });
        self.event(
            EventKind::StepFinished,
            json!({"name": step.name, "index": index, "exit_code": exit_code, "outcome": outcome, "seconds": seconds}),
        )
        .await;
        self.say(&format!("==> [{}/{total}] {} {outcome} in {seconds:.1}s\n", index + 1, step.name)).await;
        let tail = log::tail(&tail.text(), ERROR_TAIL_LINES);
        let with_tail = |msg: String| if tail.is_empty() { msg } else { format!("{msg}; last output:\n{tail}") };
        match run.exit {
            Exit::Code(0) => Ok(()),
            Exit::Code(c) => Err(Failure::Build(with_tail(format!("step {:?} exited with code {c}", step.name)))),
            Exit::OutOfMemory => Err(Failure::Build(with_tail(format!(
                "step {:?} was killed: it exceeded the memory limit of {} MiB",
                step.name, ctx.config.worker.limits.memory_mb
            )))),
            Exit::TimedOut => Err(Failure::Build(with_tail(format!(
                "step {:?} timed out after {}s and was killed",
                step.name,
                step.timeout.as_secs()
            )))),
            Exit::Killed => Err(Failure::Stopped),
        }
    }

    /// Upload everything, in order: artifact, signature, binary, log, build.json.
    async fn publish(&mut self, built: Built, record: &LogRecord) -> Result<serde_json::Value, Failure> {
        let lease = &self.claim.lease;
        // The fence: a worker whose lease lapsed uploads nothing.
        match self.ctx.queue.heartbeat(lease).await {
            Ok(HeartbeatOutcome::Continue) => {}
            Ok(HeartbeatOutcome::Cancelled) => {
                self.control.stop(StopReason::Cancelled);
                return Err(Failure::Stopped);
            }
            Err(QueueError::LeaseLost { .. }) => {
                self.control.stop(StopReason::LeaseLost);
                return Err(Failure::Stopped);
            }
            Err(e) => return Err(Failure::Infra(format!("checking the lease before upload: {e}"))),
        }
        if let Some(reason @ (StopReason::Preempted | StopReason::Shutdown)) = self.control.reason() {
            tracing::info!(build = %self.key(), ?reason, "stopping before upload");
            return Err(Failure::Stopped);
        }
        let storage = &self.ctx.storage;
        let key = self.key().clone();
        let object = |name| ObjectKey::new(&key, name);
        storage.put_file(&object(ObjectName::Artifact), &built.tar).await?;
        storage.put_bytes(&object(ObjectName::Signature), built.signature.clone().into_bytes()).await?;
        storage.put_file(&object(ObjectName::Binary), &built.binary).await?;
        let log_bytes = Bytes::from(record.text.clone().into_bytes());
        let (log_sha256, _) =
            kiln_artifact::sha256_reader(&log_bytes[..]).map_err(|e| Failure::Infra(e.to_string()))?;
        storage.put_bytes(&object(ObjectName::Log), log_bytes.clone()).await?;
        let manifest = self.manifest(&built, record, &log_sha256);
        let manifest_text = serde_json::to_vec_pretty(&manifest).expect("a manifest serializes");
        storage.put_bytes(&object(ObjectName::Manifest), manifest_text).await?;
        built.dir.remove().await;
        Ok(manifest)
    }

    /// Report a failed or stopped attempt to the queue.
    async fn report(&self, failure: Failure, record: &LogRecord) -> JobEnd {
        let queue = &self.ctx.queue;
        let lease = &self.claim.lease;
        // Whatever went wrong while the job was being stopped is the stop's doing.
        let failure = if self.control.reason().is_some() { Failure::Stopped } else { failure };
        let reported = match failure {
            Failure::Build(msg) => {
                self.store_failed_log(record).await;
                queue.fail_build(lease, &msg).await.map(|()| JobEnd::Failed(msg))
            }
            Failure::Infra(msg) => queue.fail_infra(lease, &msg).await.map(|_| JobEnd::Errored(msg)),
            Failure::Stopped => match self.control.reason() {
                Some(StopReason::Cancelled) => queue.acknowledge_cancel(lease).await.map(|()| JobEnd::Cancelled),
                Some(reason @ (StopReason::Preempted | StopReason::Shutdown)) => {
                    let (why, note) = match reason {
                        StopReason::Preempted => (HandBack::Preempted, "preempted"),
                        _ => (HandBack::Shutdown, "shut down before the build finished"),
                    };
                    let note = format!("worker {} {note}", self.ctx.worker_id);
                    queue.hand_back(lease, why, &note).await.map(|()| JobEnd::HandedBack(reason))
                }
                Some(StopReason::LeaseLost) | None => Ok(JobEnd::LeaseLost),
            },
        };
        reported.unwrap_or_else(|e| report_error(lease, e))
    }

    /// Keep the log of a failed build beside where its artifact would be:
    /// the live log in the database is pruned after a while. Fenced, best effort.
    async fn store_failed_log(&self, record: &LogRecord) {
        if self.ctx.queue.heartbeat(&self.claim.lease).await.is_err() {
            return;
        }
        let key = ObjectKey::new(self.key(), ObjectName::Log);
        if let Err(e) = self.ctx.storage.put_bytes(&key, record.text.clone().into_bytes()).await {
            tracing::warn!(build = %self.key(), error = %e, "could not store the log of a failed build");
        }
    }

    fn manifest(&self, b: &Built, record: &LogRecord, log_sha256: &str) -> serde_json::Value {
        let spec = &self.claim.spec;
        let signature = kiln_artifact::build_comment(self.key(), &b.packed.sha256);
        let mut plugins = spec.plugins.clone();
        plugins.sort();
        let mut replacements = spec.replacements.clone();
        replacements.sort();
        json!({
            "key": self.key(),
            "request": spec,
            "recipe": spec.recipe,
            "recipe_revision": spec.recipe_revision,
            "version": spec.version,
            "platform": spec.platform,
            "os": spec.platform.os,
            "arch": spec.platform.arch,
            "arm": spec.platform.arm.map(|a| a.to_string()).unwrap_or_default(),
            "plugins": plugins,
            "replacements": replacements,
            "image": b.image,
            "worker": {"id": self.ctx.worker_id, "host": self.ctx.host, "version": env!("CARGO_PKG_VERSION")},
            "attempt": {"id": self.claim.lease.attempt_id, "number": self.claim.attempt_no},
            "started_at": b.started_at,
            "steps_finished_at": b.steps_done_at,
            "finished_at": Utc::now(),
            "steps": self.timings,
            "artifact": {
                "name": ObjectName::Artifact.file_name(),
                "size": b.packed.size,
                "sha256": b.packed.sha256,
                "entries": b.packed.entries.iter().map(|e| json!({
                    "path": e.path,
                    "kind": format!("{:?}", e.kind).to_lowercase(),
                    "size": e.size,
                    "mode": format!("{:o}", e.mode),
                    "link_target": e.link_target,
                })).collect::<Vec<_>>(),
            },
            "binary": {"name": b.binary_name, "size": b.binary_size, "sha256": b.binary_sha256},
            "signature": {
                "name": ObjectName::Signature.file_name(),
                "key_id": self.ctx.signer.public_key().key_id(),
                "trusted_comment": signature,
            },
            "log": {
                "name": ObjectName::Log.file_name(),
                "size": record.text.len(),
                "sha256": log_sha256,
                "dropped_bytes": record.dropped,
            },
        })
    }
}

/// Refuse a path the steps may have swapped for a symlink.
fn check_real_dir(path: &Path) -> Result<(), Failure> {
    match std::fs::symlink_metadata(path) {
        Ok(m) if m.file_type().is_dir() => Ok(()),
        Ok(_) => Err(Failure::Build(format!("{} was replaced by something that is not a directory", path.display()))),
        Err(e) => Err(Failure::Infra(format!("{}: {e}", path.display()))),
    }
}

/// An argv as one readable line for the log (not for any shell).
fn quote_argv(argv: &[String]) -> String {
    let quote = |a: &String| {
        let plain = !a.is_empty() && a.chars().all(|c| c.is_ascii_alphanumeric() || "-_./=:@,+%".contains(c));
        if plain { a.clone() } else { format!("{a:?}") }
    };
    argv.iter().map(quote).collect::<Vec<_>>().join(" ")
}

/// The last bytes of a step's output.
#[derive(Debug, Default)]
struct TailBuffer {
    bytes: std::collections::VecDeque<u8>,
}

impl TailBuffer {
    const MAX: usize = 8 * 1024;

    fn push(&mut self, chunk: &[u8]) {
        let chunk = &chunk[chunk.len().saturating_sub(Self::MAX)..];
        let overflow = (self.bytes.len() + chunk.len()).saturating_sub(Self::MAX);
        self.bytes.drain(..overflow);
        self.bytes.extend(chunk);
    }

    fn text(&self) -> String {
        let (a, b) = self.bytes.as_slices();
        String::from_utf8_lossy(&[a, b].concat()).into_owned()
    }
}

/// The attempt's temporary directory: `src/` and `out/` writable by the step
/// user, mounted at `/work`. Removed when dropped.
#[derive(Debug)]
struct WorkDir {
    root: PathBuf,
    guard: Option<tempfile::TempDir>,
}

impl WorkDir {
    fn create(work_dir: &Path, key: &BuildKey, user: &str) -> Result<WorkDir, Failure> {
        std::fs::create_dir_all(work_dir).map_err(io_failure("creating", work_dir))?;
        let dir = tempfile::Builder::new()
            .prefix(&format!("{}-", key.short()))
            .tempdir_in(work_dir)
            .map_err(io_failure("creating a directory in", work_dir))?;
        let root = dir.path().canonicalize().map_err(io_failure("resolving", dir.path()))?;
        crate::workdir::prepare(&root, user).map_err(|e| Failure::Infra(format!("{}: {e}", root.display())))?;
        Ok(WorkDir { root, guard: Some(dir) })
    }

    fn out(&self) -> PathBuf {
        self.root.join("out")
    }

    /// Remove the directory now, off the async threads.
    async fn remove(mut self) {
        if let Some(dir) = self.guard.take() {
            let _ = tokio::task::spawn_blocking(move || crate::workdir::remove(dir)).await;
        }
    }
}

impl Drop for WorkDir {
    fn drop(&mut self) {
        if let Some(dir) = self.guard.take() {
            match tokio::runtime::Handle::try_current() {
                Ok(rt) => drop(rt.spawn_blocking(move || crate::workdir::remove(dir))),
                Err(_) => crate::workdir::remove(dir),
            }
        }
    }
}
