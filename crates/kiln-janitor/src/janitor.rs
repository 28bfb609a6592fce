//! [`Janitor`]: the tasks themselves, each one idempotent, over the queue
//! and the object store.

use std::collections::HashSet;
use std::future::Future;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use chrono::Utc;
use kiln_config::Config;
use kiln_domain::{BuildKey, BuildState};
use kiln_queue::{ExpiryPolicy, Queue, Removal, RescueReport};
use kiln_storage::{ObjectKey, ObjectName, Storage};

use crate::JanitorError;
use crate::task::{Counts, Task, TaskReport};

/// Builds handled per page by expiry and log pruning.
const PAGE: i64 = 500;
/// Expiry handles at most this many pages per run; the next run goes on.
const MAX_PAGES: usize = 20;
/// After this many storage failures in a row a run stops: storage is down,
/// and the next run tries again.
pub(crate) const MAX_STORAGE_FAILURES_IN_A_ROW: u32 = 3;

/// What the janitor does and when things count as old, from the config.
#[derive(Debug, Clone)]
pub struct JanitorSettings {
    /// This process's name in logs and `janitor_runs`.
    pub id: String,
    /// A worker silent this long is marked gone.
    pub worker_gone_after: Duration,
    pub expiry: ExpiryPolicy,
    pub prune_logs_after: Duration,
    pub prune_attempts_after: Duration,
    pub prune_workers_after: Duration,
    /// Longest wait for one storage call (object_store retries within it);
    /// past it the build is kept and tried again at the next run.
    pub storage_timeout: Duration,
    /// The sweep keeps every shared image object younger than this.
    pub image_grace: Duration,
}

impl JanitorSettings {
    pub fn from_config(config: &Config, id: impl Into<String>) -> Self {
        let j = &config.janitor;
        let secs = Duration::from_secs;
        Self {
            id: id.into(),
            worker_gone_after: secs(j.worker_gone_after_secs),
            expiry: ExpiryPolicy {
                artifact_ttl: secs(j.artifact_ttl_secs),
                recipe_artifact_ttls: config
                    .recipes
                    .iter()
                    .filter_map(|(name, r)| r.artifact_ttl_secs.map(|ttl| (name.clone(), secs(ttl))))
                    .collect(),
                failure_ttl: secs(config.queue.failure_ttl_secs),
            },
            prune_logs_after: secs(j.prune_logs_after_secs),
            prune_attempts_after: secs(j.prune_attempts_after_secs),
            prune_workers_after: secs(j.prune_workers_after_secs),
            storage_timeout: secs(120),
            image_grace: secs(j.image_grace_secs),
        }
    }
}

/// The janitor's tasks over one queue and one store. Cheap to share behind an `Arc`.
#[derive(Debug)]
pub struct Janitor {
    pub(crate) queue: Queue,
    pub(crate) storage: Storage,
    pub(crate) settings: JanitorSettings,
}

/// A task run that failed part way: what it had done, and why it stopped.
pub(crate) struct Partial {
    pub(crate) counts: Counts,
    pub(crate) error: String,
}

impl From<kiln_queue::QueueError> for Partial {
    fn from(e: kiln_queue::QueueError) -> Self {
        Partial { counts: Counts::new(), error: e.to_string() }
    }
}

impl Janitor {
    pub fn new(queue: Queue, storage: Storage, settings: JanitorSettings) -> Self {
        Self { queue, storage, settings }
    }

    pub fn queue(&self) -> &Queue {
        &self.queue
    }

    pub fn settings(&self) -> &JanitorSettings {
        &self.settings
    }

    /// Run every task once, in [`Task::ALL`]'s order.
    pub async fn run_all(&self) -> Vec<TaskReport> {
        let mut reports = Vec::with_capacity(Task::ALL.len());
        for task in Task::ALL {
            reports.push(self.run(task).await);
        }
        reports
    }

    /// Run one task: do it, log one line saying what changed (at INFO when
    /// something did, WARN when it failed, else DEBUG: see
    /// [`TaskReport::is_news`]), and record the run in `janitor_runs` for
    /// `/metrics`. A failure is reported, not returned: the next tick tries
    /// again.
    pub async fn run(&self, task: Task) -> TaskReport {
        let started_at = Utc::now();
        let clock = Instant::now();
        let result = match task {
            Task::Rescue => self.rescue().await,
            Task::Retry => self.retry().await,
            Task::Workers => self.workers().await,
            Task::Expiry => self.expiry().await,
            Task::Prune => self.prune().await,
            Task::Sweep => self.sweep().await,
        };
        let (counts, error) = match result {
            Ok(counts) => (counts, None),
            Err(p) => (p.counts, Some(p.error)),
        };
        let report = TaskReport {
            task,
            ok: error.is_none(),
            counts,
            started_at,
            elapsed_ms: i64::try_from(clock.elapsed().as_millis()).unwrap_or(i64::MAX),
            error,
        };
        match (report.ok, report.is_news()) {
            (false, _) => tracing::warn!(janitor = %self.settings.id, "{}", report.log_line()),
            (true, true) => tracing::info!(janitor = %self.settings.id, "{}", report.log_line()),
            (true, false) => tracing::debug!(janitor = %self.settings.id, "{}", report.log_line()),
        }
        if let Err(e) = self
            .queue
            .record_janitor_run(
                task.name(),
                &self.settings.id,
                started_at,
                report.elapsed_ms,
                report.error.as_deref(),
                &report.counts.to_json(),
            )
            .await
        {
            tracing::warn!(task = task.name(), error = %e, "could not record the run in janitor_runs");
        }
        report
    }

    /// Jobs whose lease lapsed: back to the queue (attempt `lease_lapsed`),
    /// failed when out of attempts, cancelled when a cancel was pending.
    async fn rescue(&self) -> Result<Counts, Partial> {
        let mut counts = Counts::new();
        add_rescue(&mut counts, &self.queue.rescue_lapsed().await?);
        Ok(counts)
    }

    /// Infrastructure failures wait out a backoff as `queued` builds with a
    /// later `run_at`; once due, idle workers are woken for them.
    async fn retry(&self) -> Result<Counts, Partial> {
        let mut counts = Counts::new();
        counts.set("due", self.queue.notify_due().await?);
        counts.set("waiting", self.queue.backing_off().await?);
        Ok(counts)
    }

    /// Silent workers are marked gone, their leases made to lapse, and their
    /// jobs rescued in the same run.
    async fn workers(&self) -> Result<Counts, Partial> {
        let mut counts = Counts::new();
        let gone = self.queue.mark_silent_workers_gone(self.settings.worker_gone_after).await?;
        if !gone.is_empty() {
            tracing::info!(workers = ?gone, "workers marked gone");
        }
        counts.set("gone", gone.len() as i64);
        let rescued =
            self.queue.rescue_lapsed().await.map_err(|e| Partial { counts: counts.clone(), error: e.to_string() })?;
        add_rescue(&mut counts, &rescued);
        Ok(counts)
    }

    /// Builds past their lifetime: the objects under their prefix are
    /// deleted, then their rows (attempts and events cascade), so the same
    /// request later builds afresh. A storage failure keeps the row.
    async fn expiry(&self) -> Result<Counts, Partial> {
        let mut counts = Counts::new();
        for name in ["expired", "removed_failed", "objects_deleted", "storage_errors", "skipped"] {
            counts.set(name, 0);
        }
        let mut failures_in_a_row = 0;
        let mut first_error = None;
        // Builds this run already tried and could not remove: not tried again
        // until the next run (each page lists the oldest expirable builds).
        let mut passed_over = HashSet::new();
        for _ in 0..MAX_PAGES {
            let page = self
                .queue
                .expirable(&self.settings.expiry, PAGE)
                .await
                .map_err(|e| Partial { counts: counts.clone(), error: e.to_string() })?;
            let mut progress = false;
            for build in &page {
                if passed_over.contains(&build.key) {
                    continue;
                }
                let deleted = AtomicUsize::new(0);
                let removal = self
                    .queue
                    .remove_expired(build, || async {
                        let n =
                            self.in_time(&build.key, "deleting objects", self.storage.delete_build(&build.key)).await?;
                        deleted.store(n, Ordering::Relaxed);
                        Ok::<(), JanitorError>(())
                    })
                    .await
                    .map_err(|e| Partial { counts: counts.clone(), error: e.to_string() })?;
                match removal {
                    Removal::Removed => {
                        progress = true;
                        failures_in_a_row = 0;
                        counts.add(if build.state == BuildState::Succeeded { "expired" } else { "removed_failed" }, 1);
                        counts.add("objects_deleted", deleted.load(Ordering::Relaxed) as i64);
                        tracing::debug!(key = %build.key, state = %build.state.as_str(), objects = deleted.load(Ordering::Relaxed), "build expired");
                    }
                    Removal::Skipped => {
                        passed_over.insert(build.key.clone());
                        counts.add("skipped", 1);
                    }
                    Removal::Kept(e) => {
                        passed_over.insert(build.key.clone());
                        counts.add("storage_errors", 1);
                        failures_in_a_row += 1;
                        tracing::warn!(key = %build.key, error = %e, "expiry: storage failed; the build is kept for the next run");
                        first_error.get_or_insert_with(|| e.to_string());
                        if failures_in_a_row >= MAX_STORAGE_FAILURES_IN_A_ROW {
                            break;
                        }
                    }
                }
            }
            if (page.len() as i64) < PAGE || !progress || failures_in_a_row >= MAX_STORAGE_FAILURES_IN_A_ROW {
                break;
            }
        }
        match first_error {
            None => Ok(counts),
            Some(e) => {
                let n = counts.get("storage_errors");
                Err(Partial { error: format!("{n} build(s) kept after storage errors, first: {e}"), counts })
            }
        }
    }

    /// Old live-log chunks of finished builds whose log is in storage, old
    /// attempt rows of finished builds, rows of workers long departed.
    async fn prune(&self) -> Result<Counts, Partial> {
        let mut counts = Counts::new();
        for name in ["log_chunks", "logs_not_stored", "storage_errors", "attempts", "workers"] {
            counts.set(name, 0);
        }
        let fail =
            |counts: &Counts, e: &dyn std::fmt::Display| Partial { counts: counts.clone(), error: e.to_string() };
        let mut failures_in_a_row = 0;
        let mut first_error = None;
        let mut after = None;
        'pages: loop {
            let page = self
                .queue
                .builds_with_old_logs(self.settings.prune_logs_after, after.clone(), PAGE)
                .await
                .map_err(|e| fail(&counts, &e))?;
            let Some(last) = page.last().cloned() else { break };
            let mut stored: Vec<BuildKey> = Vec::new();
            for (_, key) in &page {
                let log = ObjectKey::new(key, ObjectName::Log);
                match self.in_time(key, "looking for the stored log", self.storage.exists(&log)).await {
                    Ok(true) => {
                        failures_in_a_row = 0;
                        stored.push(key.clone());
                    }
                    Ok(false) => {
                        failures_in_a_row = 0;
                        counts.add("logs_not_stored", 1);
                    }
                    Err(e) => {
                        counts.add("storage_errors", 1);
                        failures_in_a_row += 1;
                        tracing::warn!(%key, error = %e, "prune: cannot tell whether the log is stored; its chunks stay");
                        first_error.get_or_insert_with(|| e.to_string());
                        if failures_in_a_row >= MAX_STORAGE_FAILURES_IN_A_ROW {
                            let n = self.queue.prune_logs(&stored).await.map_err(|e| fail(&counts, &e))?;
                            counts.add("log_chunks", n as i64);
                            break 'pages;
                        }
                    }
                }
            }
            let n = self.queue.prune_logs(&stored).await.map_err(|e| fail(&counts, &e))?;
            counts.add("log_chunks", n as i64);
            if (page.len() as i64) < PAGE {
                break;
            }
            after = Some(last);
        }
        let n = self.queue.prune_attempts(self.settings.prune_attempts_after).await.map_err(|e| fail(&counts, &e))?;
        counts.set("attempts", n as i64);
        let n = self.queue.prune_workers(self.settings.prune_workers_after).await.map_err(|e| fail(&counts, &e))?;
        counts.set("workers", n as i64);
        match first_error {
            None => Ok(counts),
            Some(e) => Err(Partial { error: format!("storage errors while pruning logs, first: {e}"), counts }),
        }
    }

    /// A storage call under the janitor's time limit; `what` names it in a time-out.
    pub(crate) async fn in_time_shared<T>(
        &self,
        what: &str,
        call: impl Future<Output = Result<T, kiln_storage::StorageError>>,
    ) -> Result<T, JanitorError> {
        match tokio::time::timeout(self.settings.storage_timeout, call).await {
            Ok(r) => Ok(r?),
            Err(_) => Err(JanitorError::StorageTimeout {
                what: what.to_owned(),
                secs: self.settings.storage_timeout.as_secs(),
            }),
        }
    }

    /// A storage call about build `key` under the janitor's time limit.
    async fn in_time<T>(
        &self,
        key: &BuildKey,
        what: &str,
        call: impl Future<Output = Result<T, kiln_storage::StorageError>>,
    ) -> Result<T, JanitorError> {
        self.in_time_shared(&format!("{key}: {what}"), call).await
    }
}

fn add_rescue(counts: &mut Counts, r: &RescueReport) {
    if !r.requeued.is_empty() || !r.failed.is_empty() || !r.cancelled.is_empty() {
        let keys = |keys: &[BuildKey]| keys.iter().map(BuildKey::as_str).collect::<Vec<_>>().join(",");
        tracing::info!(
            requeued = keys(&r.requeued),
            failed = keys(&r.failed),
            cancelled = keys(&r.cancelled),
            "lapsed leases rescued"
        );
    }
    counts.add("requeued", r.requeued.len() as i64);
    counts.add("failed", r.failed.len() as i64);
    counts.add("cancelled", r.cancelled.len() as i64);
}
