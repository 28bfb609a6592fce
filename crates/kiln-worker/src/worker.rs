//! The worker loop: register, claim, run, stop cleanly.
//!
//! [`Worker::start`] connects to Postgres (refusing an unmigrated database),
//! Docker and the object store, refuses a build network that exists but is
//! not isolated (a missing one is made by the first networked step), loads the signing key,
//! chooses how the disk limit of builds is kept ([`crate::disk`]), removes
//! orphans ([`crate::sweep`]), and registers the worker. [`Worker::run`] then claims up to
//! `worker.concurrency` jobs, sleeping on `NOTIFY kiln_jobs` when idle (with
//! a `worker.poll_secs` poll as the fallback), and keeps its row fresh.
//!
//! Before each claim it checks the free space of `worker.work_dir`'s
//! filesystem: below `worker.min_free_disk_mb` it claims nothing, and says
//! so once in its log and in its worker row, until space returns
//! ([`DiskGate`]). Every `worker.sweep_secs` it removes orphans of other
//! builds from its host ([`crate::sweep`]).
//!
//! Stopping:
//! - `shutdown` (SIGTERM): stop claiming, let running jobs finish within
//!   `worker.shutdown_grace_secs`, then kill and hand back the rest; exit.
//! - preemption (the configured detector fires): stop claiming, kill every
//!   container, hand every job back without consuming an attempt, mark the
//!   worker `preempted`; exit.
//! - `once`: after the first claimed job has ended.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::Duration;

use kiln_artifact::{ArtifactError, Signer};
use kiln_config::Config;
use kiln_domain::WorkerState;
use kiln_queue::{Channel, Queue, QueueError, QueueSettings, WorkerInfo};
use kiln_storage::{Storage, StorageError};
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

use crate::control::{JobControl, StopReason};
use crate::disk::{self, DiskPolicy};
use crate::docker::{BuildNetwork, DockerError, Engine};
use crate::job::{self, JobContext, JobEnd};
use crate::preempt::{self, Detector};
use crate::sweep::{self, SweepError};

/// The worker could not start, or lost something it cannot do without.
#[derive(Debug, thiserror::Error)]
pub enum WorkerError {
    #[error("database: {0}")]
    Queue(#[from] QueueError),
    #[error("{0} (is the Docker daemon running and reachable?)")]
    Docker(#[from] DockerError),
    #[error("storage: {0}")]
    Storage(#[from] StorageError),
    #[error("signing key: {0}")]
    Signing(#[from] ArtifactError),
    #[error("worker.work_dir: {0}")]
    WorkDir(String),
    #[error("worker.limits.disk_enforcement: {0}")]
    Disk(String),
    #[error("orphan sweep: {0}")]
    Sweep(#[from] SweepError),
}

/// Options of one run.
#[derive(Debug, Clone, Copy, Default)]
pub struct RunOptions {
    /// Run one job, then exit.
    pub once: bool,
}

/// Why [`Worker::run`] returned.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Exit {
    /// Shut down on request.
    Stopped,
    /// The machine is being preempted; every job was handed back.
    Preempted(String),
    /// `--once`: the job ended like this.
    Once(JobEnd),
}

/// A started worker.
#[derive(Debug)]
pub struct Worker {
    ctx: JobContext,
    recipes: Vec<String>,
}

impl Worker {
    /// Connect to everything, clean up after a previous life, register.
    pub async fn start(config: Config) -> Result<Worker, WorkerError> {
        let host = kiln_process::host_name();
        let worker_id = kiln_process::instance_id(config.worker.id.as_deref());
        let recipes = served_recipes(&config);

        let queue = Queue::connect(
            config.database.url.expose(),
            config.database.max_connections,
            QueueSettings::from(&config.queue),
            "kiln-worker",
        )
        .await?;
        let engine = Engine::connect().await?;
        // Refuse a build network that is not isolated now; a missing one is
        // created by the first networked step.
        engine.ensure_build_network(&BuildNetwork::from_config(&config.worker), false).await?;
        let storage = Storage::from_config(&config.storage)?;
        let signer = Arc::new(Signer::load(&config.signing.secret_key)?);
        std::fs::create_dir_all(&config.worker.work_dir)
            .map_err(|e| WorkerError::WorkDir(format!("{}: {e}", config.worker.work_dir.display())))?;

        let disk =
            DiskPolicy::choose(&config.worker.limits, &config.worker.work_dir).await.map_err(WorkerError::Disk)?;
        tracing::info!(mode = disk.mode.as_str(), limit_mb = disk.limit_mb, "disk limit of builds");
        let farm = queue.farm_id().await?;
        let config = Arc::new(config);
        let ctx = JobContext { worker_id, host, config, queue, storage, signer, engine, farm, disk };
        sweep::sweep(&ctx, &HashSet::new()).await?;
        ctx.queue
            .register_worker(&WorkerInfo {
                id: ctx.worker_id.clone(),
                host: ctx.host.clone(),
                recipes: recipes.clone(),
                version: env!("CARGO_PKG_VERSION").into(),
            })
            .await?;
        tracing::info!(worker = %ctx.worker_id, recipes = ?recipes, "worker registered");
        Ok(Worker { ctx, recipes })
    }

    pub fn id(&self) -> &str {
        &self.ctx.worker_id
    }

    /// Claim and run jobs until `shutdown` fires, preemption is detected, or
    /// (with `once`) one job has ended. `hurry` cuts the shutdown grace short.
    pub async fn run(
        self,
        options: RunOptions,
        shutdown: CancellationToken,
        hurry: CancellationToken,
    ) -> Result<Exit, WorkerError> {
        let ctx = Arc::new(self.ctx);
        let wc = &ctx.config.worker;
        let concurrency = wc.concurrency.max(1) as usize;
        let poll = Duration::from_secs(wc.poll_secs.max(1));
        let grace = Duration::from_secs(wc.shutdown_grace_secs);

        let notifier = ctx.queue.notifier(&[Channel::Jobs]);
        let mut wake = notifier.subscribe();
        let preempted = CancellationToken::new();
        let stop_watch = CancellationToken::new();
        let watcher = tokio::spawn(preempt::watch(
            Detector::from_config(&wc.preemption),
            Duration::from_secs(wc.preemption.poll_secs.max(1)),
            preempted.clone(),
            stop_watch.clone(),
        ));
        let _stop_watch = stop_watch.drop_guard();

        let mut jobs: JoinSet<JobEnd> = JoinSet::new();
        let mut controls: HashMap<tokio::task::Id, Arc<JobControl>> = HashMap::new();
        let mut attempts: HashMap<tokio::task::Id, i64> = HashMap::new();
        let mut gate = DiskGate::new(wc.min_free_disk_mb);
        let mut sweeps = tokio::time::interval(Duration::from_secs(wc.sweep_secs.max(1)));
        sweeps.tick().await;
        let mut claimed = 0usize;
        let mut last_end: Option<JobEnd> = None;
        let mut draining = false;
        let mut grace_ends: Option<tokio::time::Instant> = None;
        let mut seen = tokio::time::interval(Duration::from_secs(wc.heartbeat_secs.max(1)));

        loop {
            // Claim while there is room.
            let may_claim = !(draining || preempted.is_cancelled()) && gate.open(&ctx).await;
            while may_claim && jobs.len() < concurrency && !(options.once && claimed > 0) {
                match ctx.queue.claim(&ctx.worker_id, &self.recipes).await {
                    Ok(Some(claim)) => {
                        claimed += 1;
                        tracing::info!(build = %claim.lease.key, attempt = claim.attempt_no, recipe = %claim.spec.recipe, "claimed");
                        let control = Arc::new(JobControl::default());
                        let (c, k) = (ctx.clone(), control.clone());
                        let attempt = claim.lease.attempt_id;
                        let handle = jobs.spawn(async move { job::run(&c, claim, k).await });
                        controls.insert(handle.id(), control);
                        attempts.insert(handle.id(), attempt);
                    }
                    Ok(None) => break,
                    Err(e) => {
                        tracing::warn!(error = %e, "claiming failed; retrying later");
                        break;
                    }
                }
            }
            if jobs.is_empty() {
                if options.once && claimed > 0 {
                    break;
                }
                if draining {
                    break;
                }
            }

            tokio::select! {
                biased;
                _ = preempted.cancelled() => {
                    let why = watcher.await.ok().flatten().unwrap_or_else(|| "preempted".into());
                    tracing::warn!(jobs = jobs.len(), %why, "preempted: handing every job back");
                    for control in controls.values() {
                        control.stop(StopReason::Preempted);
                    }
                    while let Some(done) = jobs.join_next().await {
                        log_join(done);
                    }
                    set_state(&ctx, WorkerState::Preempted, &why).await;
                    return Ok(Exit::Preempted(why));
                }
                Some(done) = jobs.join_next_with_id(), if !jobs.is_empty() => {
                    match done {
                        Ok((id, end)) => {
                            controls.remove(&id);
                            attempts.remove(&id);
                            last_end = Some(end);
                        }
                        Err(e) => {
                            controls.remove(&e.id());
                            attempts.remove(&e.id());
                            tracing::error!(error = %e, "a job task failed; its lease will lapse and be rescued");
                            last_end = Some(JobEnd::Errored(e.to_string()));
                        }
                    }
                }
                _ = shutdown.cancelled(), if !draining => {
                    draining = true;
                    tracing::info!(jobs = jobs.len(), grace_secs = grace.as_secs(), "shutting down: no new jobs");
                    set_state(&ctx, WorkerState::Draining, "shutting down").await;
                    grace_ends = Some(tokio::time::Instant::now() + grace);
                }
                _ = wait_until(grace_ends), if grace_ends.is_some() => {
                    hand_back_all(&controls);
                    grace_ends = None;
                }
                _ = hurry.cancelled(), if draining && grace_ends.is_some() => {
                    hand_back_all(&controls);
                    grace_ends = None;
                }
                _ = seen.tick() => {
                    if let Err(e) = ctx.queue.worker_seen(&ctx.worker_id).await {
                        tracing::warn!(error = %e, "could not record that this worker is alive");
                    }
                    gate.report(&ctx).await;
                }
                _ = sweeps.tick() => {
                    let running: HashSet<i64> = attempts.values().copied().collect();
                    if let Err(e) = sweep::sweep(&ctx, &running).await {
                        tracing::warn!(error = %e, "the orphan sweep failed; trying again at the next");
                    }
                }
                _ = wake.recv() => {}
                _ = tokio::time::sleep(poll) => {}
            }
        }

        set_state(&ctx, WorkerState::Stopped, "stopped").await;
        Ok(if options.once { Exit::Once(last_end.unwrap_or(JobEnd::LeaseLost)) } else { Exit::Stopped })
    }
}

fn hand_back_all(controls: &HashMap<tokio::task::Id, Arc<JobControl>>) {
    if !controls.is_empty() {
        tracing::warn!(jobs = controls.len(), "shutdown grace is over: handing the remaining jobs back");
    }
    for control in controls.values() {
        control.stop(StopReason::Shutdown);
    }
}

async fn wait_until(at: Option<tokio::time::Instant>) {
    match at {
        Some(at) => tokio::time::sleep_until(at).await,
        None => std::future::pending().await,
    }
}

fn log_join(done: Result<JobEnd, tokio::task::JoinError>) {
    if let Err(e) = done {
        tracing::error!(error = %e, "a job task failed");
    }
}

async fn set_state(ctx: &JobContext, state: WorkerState, note: &str) {
    if let Err(e) = ctx.queue.set_worker_state(&ctx.worker_id, state, Some(note)).await {
        tracing::warn!(error = %e, %state, "could not record the worker's state");
    }
}

/// The recipes this worker claims: `worker.recipes` (checked against the
/// configured recipes when the configuration was loaded), or every one.
fn served_recipes(config: &Config) -> Vec<String> {
    if config.worker.recipes.is_empty() {
        config.recipes.keys().cloned().collect()
    } else {
        config.worker.recipes.clone()
    }
}

/// Backpressure on the worker's own disk: no claims while the free space
/// of `worker.work_dir`'s filesystem is below `worker.min_free_disk_mb`.
#[derive(Debug)]
struct DiskGate {
    min_free_mb: u64,
    /// The last answer: free MiB, and whether that was too low.
    last: Option<(u64, bool)>,
}

impl DiskGate {
    fn new(min_free_mb: u64) -> Self {
        DiskGate { min_free_mb, last: None }
    }

    /// Measure; on a change between enough and too little, say so in the
    /// log and the worker row. Whether the worker may claim.
    async fn open(&mut self, ctx: &JobContext) -> bool {
        let dir = ctx.config.worker.work_dir.clone();
        let free = match tokio::task::spawn_blocking(move || disk::free_bytes(&dir)).await {
            Ok(Ok(bytes)) => bytes / (1024 * 1024),
            Ok(Err(e)) => {
                tracing::warn!(error = %e, "cannot measure the free space of worker.work_dir");
                return true;
            }
            Err(_) => return true,
        };
        let low = self.min_free_mb > 0 && free < self.min_free_mb;
        let changed = self.last.is_none_or(|(_, was)| was != low);
        self.last = Some((free, low));
        if changed {
            if low {
                tracing::warn!(
                    free_mb = free,
                    min_free_disk_mb = self.min_free_mb,
                    "not claiming builds: free disk space of worker.work_dir is below worker.min_free_disk_mb"
                );
            } else if self.min_free_mb > 0 {
                tracing::info!(
                    free_mb = free,
                    min_free_disk_mb = self.min_free_mb,
                    "claiming builds: enough free disk space"
                );
            }
            self.report(ctx).await;
        }
        !low
    }

    /// Record the last measurement in the worker row.
    async fn report(&self, ctx: &JobContext) {
        if let Some((free, low)) = self.last {
            let free = i64::try_from(free).unwrap_or(i64::MAX);
            if let Err(e) = ctx.queue.set_worker_disk(&ctx.worker_id, free, low).await {
                tracing::warn!(error = %e, "could not record the worker's free disk");
            }
        }
    }
}
