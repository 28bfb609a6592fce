//! The orphan sweep: what builds leave on a host when their worker dies.
//!
//! A worker killed with SIGKILL (or a machine that lost its database)
//! leaves step containers running and attempt directories (with their
//! mounted filesystems) on its host. Every worker, at start and then every
//! `worker.sweep_secs`, removes from its host what belongs to its farm and
//! to builds it does not hold itself:
//!
//! - its own id's work whose attempt it is not running (a previous process
//!   with the same id);
//! - another worker's, once Postgres says that work is no longer held: the
//!   build is not `running` under that worker and attempt with an unexpired
//!   lease, or that worker is not active or draining ([`Queue::held`]).
//!
//! Step containers are found by their labels (`kiln.farm`, `kiln.worker`,
//! `kiln.build`, `kiln.attempt`), attempt directories in `worker.work_dir`
//! by their `owner.json`. Another farm's containers and directories (another
//! database, same Docker daemon or directory) are left alone; so are
//! containers of older versions without a farm label whose worker this
//! database does not know.

use std::collections::{HashMap, HashSet};
use std::path::PathBuf;

use kiln_queue::{HostWork, Lease, QueueError};

use crate::docker::{DockerError, LABEL_ATTEMPT, LABEL_BUILD, LABEL_FARM, LABEL_STEP, LABEL_WORKER};
use crate::job::JobContext;
use crate::workdir;

/// The sweep could not ask Docker or Postgres.
#[derive(Debug, thiserror::Error)]
pub enum SweepError {
    #[error("database: {0}")]
    Queue(#[from] QueueError),
    #[error("{0}")]
    Docker(#[from] DockerError),
}

/// What one sweep removed.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Swept {
    pub containers: usize,
    pub dirs: usize,
}

/// The labels of a step container of `lease`.
pub(crate) fn labels(ctx: &JobContext, lease: &Lease, step: &str) -> HashMap<String, String> {
    HashMap::from([
        (LABEL_FARM.to_owned(), ctx.farm.clone()),
        (LABEL_WORKER.to_owned(), ctx.worker_id.clone()),
        (LABEL_BUILD.to_owned(), lease.key.to_string()),
        (LABEL_ATTEMPT.to_owned(), lease.attempt_id.to_string()),
        (LABEL_STEP.to_owned(), step.to_owned()),
    ])
}

/// Remove every orphan of this farm on this host; `running` are the
/// attempts this worker holds now.
pub(crate) async fn sweep(ctx: &JobContext, running: &HashSet<i64>) -> Result<Swept, SweepError> {
    let containers = containers(ctx, running).await?;
    let dirs = dirs(ctx, running).await?;
    let swept = Swept { containers, dirs };
    if containers + dirs > 0 {
        tracing::warn!(containers, dirs, "removed orphans of builds this worker does not hold");
    }
    Ok(swept)
}

async fn containers(ctx: &JobContext, running: &HashSet<i64>) -> Result<usize, SweepError> {
    let mut mine = Vec::new();
    let mut theirs = Vec::new();
    let mut known: HashMap<String, bool> = HashMap::new();
    for (id, labels) in ctx.engine.labelled(LABEL_BUILD).await? {
        let (Some(worker), Some(key)) = (labels.get(LABEL_WORKER), labels.get(LABEL_BUILD)) else { continue };
        match labels.get(LABEL_FARM) {
            Some(farm) if *farm != ctx.farm => continue,
            Some(_) => {}
            // Made before containers carried the farm: this farm's only if
            // its database knows the worker.
            None => {
                if !known.contains_key(worker) {
                    known.insert(worker.clone(), ctx.queue.worker(worker).await?.is_some());
                }
                if !known[worker] {
                    continue;
                }
            }
        }
        let attempt = labels.get(LABEL_ATTEMPT).and_then(|a| a.parse::<i64>().ok());
        if *worker == ctx.worker_id {
            if !attempt.is_some_and(|a| running.contains(&a)) {
                mine.push(id);
            }
        } else {
            theirs.push((id, HostWork { worker: worker.clone(), key: key.clone(), attempt }));
        }
    }
    let work: Vec<HostWork> = theirs.iter().map(|(_, w)| w.clone()).collect();
    let held = ctx.queue.held(&work).await?;
    let orphans: Vec<String> =
        mine.into_iter().chain(theirs.into_iter().zip(held).filter(|(_, h)| !h).map(|((id, _), _)| id)).collect();
    Ok(ctx.engine.remove_ids(&orphans).await?)
}

async fn dirs(ctx: &JobContext, running: &HashSet<i64>) -> Result<usize, SweepError> {
    let work_dir = ctx.config.worker.work_dir.clone();
    let found: Vec<(PathBuf, workdir::Owner)> = tokio::task::spawn_blocking(move || {
        let Ok(entries) = std::fs::read_dir(&work_dir) else { return Vec::new() };
        entries.flatten().filter_map(|e| Some((e.path(), workdir::owner_of(&e.path())?))).collect()
    })
    .await
    .unwrap_or_default();
    let mut orphans = Vec::new();
    let mut theirs = Vec::new();
    for (path, owner) in found.into_iter().filter(|(_, o)| o.farm == ctx.farm) {
        if owner.worker == ctx.worker_id {
            if !running.contains(&owner.attempt) {
                orphans.push(path);
            }
        } else {
            theirs.push((path, HostWork { worker: owner.worker, key: owner.build, attempt: Some(owner.attempt) }));
        }
    }
    let work: Vec<HostWork> = theirs.iter().map(|(_, w)| w.clone()).collect();
    let held = ctx.queue.held(&work).await?;
    orphans.extend(theirs.into_iter().zip(held).filter(|(_, h)| !h).map(|((path, _), _)| path));
    let removed = orphans.len();
    if removed > 0 {
        let _ = tokio::task::spawn_blocking(move || orphans.into_iter().for_each(workdir::remove)).await;
    }
    Ok(removed)
}
