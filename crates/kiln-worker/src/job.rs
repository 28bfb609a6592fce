//! One claimed job, from the first step to the stored, signed artifact.
//!
//! [`run`] takes a [`Claim`], renews its lease in the background
//! ([`fence::heartbeat`]), runs the recipe's steps in fresh containers over
//! a fresh [`WorkDir`], packs `out/` as a deterministic TAR, signs it,
//! uploads the artifact, its signature, the main binary, the log and
//! `build.json` behind the upload fence ([`fence::before_upload`]), and
//! completes the job. Every other ending is reported to the queue as
//! [`crate::failure`] classifies it:
//!
//! - a build failure, final ([`Queue::fail_build`]);
//! - an infrastructure failure, retried with backoff ([`Queue::fail_infra`]);
//! - an administrator cancelled it: [`Queue::acknowledge_cancel`];
//! - preemption or shutdown: [`Queue::hand_back`], no attempt consumed;
//! - the lease was lost: nothing at all, the job is someone else's now.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use chrono::{DateTime, Utc};
use kiln_artifact::{PackedTar, Signer};
use kiln_config::Config;
use kiln_domain::manifest::{FileRecord, StepRecord};
use kiln_domain::{BuildKey, BuildManifest, Recipe};
use kiln_queue::{Claim, EventKind, HandBack, Queue};
use kiln_storage::{ObjectKey, ObjectName, Storage};
use serde_json::json;
use tokio::sync::mpsc;

use crate::control::{JobControl, StopReason};
use crate::disk::{self, DiskPolicy};
use crate::docker::{BuildNetwork, ContainerSpec, Engine, ImageInfo};
use crate::failure::{self, Failure, io_failure};
use crate::fence::{self, Renewal};
use crate::image;
use crate::log::{self, LogRecord, TailBuffer};
use crate::manifest::{self, Facts};
use crate::render::{self, RenderedStep};
use crate::workdir::{Owner, WorkDir};

/// Lines of a failing step's output quoted in the build's error.
const ERROR_TAIL_LINES: usize = 20;

/// What the worker shares with every job it runs.
#[derive(Debug, Clone)]
pub(crate) struct JobContext {
    pub worker_id: String,
    pub host: String,
    pub config: Arc<Config>,
    pub queue: Queue,
    pub storage: Storage,
    pub signer: Arc<Signer>,
    pub engine: Engine,
    /// This farm's identity, on every container and work directory.
    pub farm: String,
    pub disk: DiskPolicy,
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

/// Run the claimed job to its end and report that end to the queue.
pub(crate) async fn run(ctx: &JobContext, claim: Claim, control: Arc<JobControl>) -> JobEnd {
    let lease = claim.lease.clone();
    // Aborted however this future ends, even when it is dropped: a heartbeat
    // that outlived its job would hold the lease forever.
    let _heartbeat = AbortOnDrop(tokio::spawn(fence::heartbeat(
        ctx.queue.clone(),
        lease.clone(),
        Duration::from_secs(ctx.config.worker.heartbeat_secs.max(1)),
        control.clone(),
    )));
    let (log_tx, log_rx) = mpsc::channel::<Bytes>(256);
    let pump = tokio::spawn(log::pump(ctx.queue.clone(), lease.clone(), log_rx));

    let mut attempt = Attempt { ctx, claim: &claim, control: &control, log: Some(log_tx), steps: Vec::new() };
    let result = attempt.execute().await;
    let (end, record) = match result {
        Ok(mut built) => {
            // Held until the build that names the image's objects is recorded.
            let image_lock = built.oci.as_mut().and_then(image::Made::take_lock);
            attempt.say("==> done: uploading the artifact\n").await;
            let record = attempt.close_log(pump).await;
            let end = match attempt.publish(built, &record).await {
                Ok(manifest) => match ctx.queue.complete(&lease, &manifest).await {
                    Ok(()) => JobEnd::Succeeded,
                    Err(e) => fence::report_failed(&lease, e),
                },
                Err(f) => attempt.report(f.public(&ctx.config), &record).await,
            };
            if let Some(lock) = image_lock {
                lock.release().await;
            }
            (end, record)
        }
        Err(f) => {
            let f = f.public(&ctx.config);
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

/// The result of the steps: packed, signed, ready to upload.
#[derive(Debug)]
struct Built {
    dir: WorkDir,
    image: ImageInfo,
    packed: PackedTar,
    tar: PathBuf,
    signature: String,
    binary_path: PathBuf,
    binary: FileRecord,
    /// The build's OCI image, when its recipe makes one.
    oci: Option<image::Made>,
    started_at: DateTime<Utc>,
    steps_finished_at: DateTime<Utc>,
}

struct Attempt<'a> {
    ctx: &'a JobContext,
    claim: &'a Claim,
    control: &'a JobControl,
    log: Option<mpsc::Sender<Bytes>>,
    steps: Vec<StepRecord>,
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
        let owner = Owner {
            farm: self.ctx.farm.clone(),
            worker: self.ctx.worker_id.clone(),
            build: self.key().to_string(),
            attempt: self.claim.lease.attempt_id,
        };
        let worker = &self.ctx.config.worker;
        let dir = WorkDir::create(&worker.work_dir, &owner, &worker.limits.user, self.ctx.disk).await?;
        let total = steps.len();
        for (index, step) in steps.iter().enumerate() {
            if self.control.token().is_cancelled() {
                return Err(Failure::Stopped);
            }
            self.run_step(&recipe, step, index, total, &dir).await?;
        }
        let steps_finished_at = Utc::now();

        // Only now is out/ ours alone: every container is gone.
        let out = dir.out();
        let binary_name = recipe.binary_file(&spec.platform);
        failure::check_output(dir.root(), &out, &binary_name)?;
        let binary_path = out.join(&binary_name);
        self.say("==> packing out/\n").await;
        let tar = dir.artifact_tar();
        let key = self.key().clone();
        let signer = self.ctx.signer.clone();
        let (packed, signature, binary_sha256, binary_size) = {
            let (out, tar, binary) = (out.clone(), tar.clone(), binary_path.clone());
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
        let binary = FileRecord { name: binary_name, size: binary_size, sha256: manifest::digest(&binary_sha256)? };
        let oci = image::make(self.ctx, self.key(), &recipe, &spec, dir.scratch(), &tar).await?;
        if let Some(made) = &oci {
            self.say(&format!("==> image: manifest {}\n", made.record.manifest_digest)).await;
        }
        Ok(Built { dir, image, packed, tar, signature, binary_path, binary, oci, started_at, steps_finished_at })
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
            log::quote_argv(&step.argv)
        ))
        .await;
        self.event(EventKind::StepStarted, json!({"name": step.name, "index": index, "total": total})).await;
        let spec = ContainerSpec {
            image: recipe.image.clone(),
            argv: step.argv.clone(),
            env: step.env.iter().map(|(k, v)| (k.clone(), v.clone())).collect(),
            network: step.network.then(|| BuildNetwork::from_config(&ctx.config.worker)),
            timeout: step.timeout,
            work_dir: dir.root().to_path_buf(),
            cache: recipe.cache.clone(),
            limits: ctx.config.worker.limits.clone(),
            labels: crate::sweep::labels(ctx, &self.claim.lease, &step.name),
        };

        // The step's output goes to the build log; its tail is kept for the error.
        let (step_tx, mut step_rx) = mpsc::channel::<Bytes>(64);
        let started_at = Utc::now();
        let clock = Instant::now();
        // The disk watcher stops the step through a token of its own.
        let step_token = self.control.token().child_token();
        let watch = ctx.disk.watch(dir.root(), &step_token);
        let run = async {
            let r = ctx.engine.run(&spec, &step_tx, &step_token).await;
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
        let over_disk = watch.finish().await;
        let seconds = clock.elapsed().as_secs_f64();
        let record = |exit_code, outcome: &str| StepRecord {
            name: step.name.clone(),
            started_at,
            seconds,
            exit_code,
            outcome: outcome.to_owned(),
        };
        let run = match result {
            Ok(run) => run,
            Err(e) => {
                self.steps.push(record(None, failure::STEP_ERROR));
                return Err(e.into());
            }
        };
        // Stopped from outside, the stop's reason wins over the disk's.
        let over_disk = over_disk.filter(|_| self.control.reason().is_none());
        let (exit_code, outcome) = match over_disk {
            Some(_) => (None, failure::DISK_EXCEEDED),
            None => failure::step_outcome(run.exit),
        };
        self.steps.push(record(exit_code, outcome));
        self.event(
            EventKind::StepFinished,
            json!({"name": step.name, "index": index, "exit_code": exit_code, "outcome": outcome, "seconds": seconds}),
        )
        .await;
        self.say(&format!("==> [{}/{total}] {} {outcome} in {seconds:.1}s\n", index + 1, step.name)).await;
        if let Some(held) = over_disk {
            return Err(Failure::Build(disk::exceeded_message(&step.name, ctx.disk.limit_mb, held)));
        }
        let tail = log::tail(&tail.text(), ERROR_TAIL_LINES);
        let limits = &ctx.config.worker.limits;
        failure::step_result(&step.name, run.exit, &tail, limits.memory_mb, step.timeout.as_secs())
    }

    /// Upload everything, in order: artifact, signature, binary, log,
    /// build.json; the manifest to complete the job with.
    async fn publish(&mut self, built: Built, record: &LogRecord) -> Result<BuildManifest, Failure> {
        fence::before_upload(&self.ctx.queue, &self.claim.lease, self.control).await?;
        let storage = &self.ctx.storage;
        let key = self.key().clone();
        let object = |name| ObjectKey::new(&key, name);
        storage.put_file(&object(ObjectName::Artifact), &built.tar).await?;
        storage.put_bytes(&object(ObjectName::Signature), built.signature.clone().into_bytes()).await?;
        storage.put_file(&object(ObjectName::Binary), &built.binary_path).await?;
        let log_bytes = Bytes::from(record.text.clone().into_bytes());
        let (log_sha256, log_size) =
            kiln_artifact::sha256_reader(&log_bytes[..]).map_err(|e| Failure::Infra(e.to_string()))?;
        storage.put_bytes(&object(ObjectName::Log), log_bytes).await?;
        let facts = Facts {
            image: &built.image,
            packed: &built.packed,
            binary: built.binary.clone(),
            steps: std::mem::take(&mut self.steps),
            started_at: built.started_at,
            steps_finished_at: built.steps_finished_at,
            log: (log_size, manifest::digest(&log_sha256)?, record.dropped),
        };
        if let Some(made) = &built.oci {
            image::publish(storage, &key, made).await?;
        }
        let mut manifest = manifest::manifest(self.ctx, self.claim, facts)?;
        manifest.oci_image = built.oci.map(|made| made.record);
        let text = serde_json::to_vec_pretty(&manifest).expect("a manifest serializes");
        storage.put_bytes(&object(ObjectName::Manifest), text).await?;
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
        reported.unwrap_or_else(|e| fence::report_failed(lease, e))
    }

    /// Keep the log of a failed build beside where its artifact would be:
    /// the live log in the database is pruned after a while. Fenced, best effort.
    async fn store_failed_log(&self, record: &LogRecord) {
        if !Renewal::of(&self.ctx.queue, &self.claim.lease).await.held() {
            return;
        }
        let key = ObjectKey::new(self.key(), ObjectName::Log);
        if let Err(e) = self.ctx.storage.put_bytes(&key, record.text.clone().into_bytes()).await {
            tracing::warn!(build = %self.key(), error = %e, "could not store the log of a failed build");
        }
    }
}
