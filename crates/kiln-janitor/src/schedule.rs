//! `kiln-janitor run`: the tasks on their cron schedules, acting only while
//! this process holds the leader lock.
//!
//! Every tick of every task first asks [`kiln_queue::Leadership`] whether
//! this janitor leads: a leader checks that its lock's connection is alive, a
//! standby tries to take the lock. So when a leader dies (and Postgres ends
//! its session), a standby takes over at its next tick, within one period of
//! the shortest schedule. A task whose previous run is still going skips the
//! tick. Shutdown stops the schedules, waits for runs in flight, then steps
//! down.

use std::future::Future;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use kiln_config::{Config, ConfigError, JanitorSchedules};
use kiln_queue::Leadership;
use tokio::sync::Mutex;
use tokio_cron_scheduler::{Job, JobScheduler, JobSchedulerError};

use crate::task::Task;
use crate::{Janitor, JanitorError};

/// Check every schedule of `janitor.schedules` parses; the error names the
/// file and the key of the first that does not.
pub fn check_schedules(config: &Config) -> Result<(), ConfigError> {
    let schedules = &config.janitor.schedules;
    for task in Task::ALL {
        job(task, schedules, |_| async {}).map_err(|_| {
            config.invalid(
                format!("janitor.schedules.{}", task.name()),
                format!(
                    "{:?} is not a cron expression with seconds \
                     (six fields: sec min hour day-of-month month day-of-week)",
                    task.schedule(schedules)
                ),
            )
        })?;
    }
    Ok(())
}

/// A cron job for `task` that calls `tick(task)`.
fn job<F, Fut>(task: Task, schedules: &JanitorSchedules, tick: F) -> Result<Job, JobSchedulerError>
where
    F: Fn(Task) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = ()> + Send + 'static,
{
    let expr = task.schedule(schedules);
    let tick = Arc::new(tick);
    Job::new_async(expr, move |_, _| {
        let tick = tick.clone();
        Box::pin(async move { tick(task).await })
    })
}

/// Whether we lead, and whether we said so.
#[derive(Debug)]
struct Role {
    leadership: Leadership,
    /// What the log last said: `None` before the first check.
    announced: Option<bool>,
}

#[derive(Debug)]
struct Scheduled {
    janitor: Arc<Janitor>,
    role: Mutex<Role>,
    /// One per task (by its index in [`Task::ALL`]): held while it runs.
    running: Vec<Mutex<()>>,
    /// Set at shutdown: a tick that fires late does nothing.
    stopping: AtomicBool,
}

impl Scheduled {
    async fn tick(&self, task: Task) {
        let slot = &self.running[Task::ALL.iter().position(|t| *t == task).expect("every task is in ALL")];
        let Ok(_running) = slot.try_lock() else {
            tracing::debug!(task = task.name(), "the previous run is still going; tick skipped");
            return;
        };
        if !self.stopping.load(Ordering::SeqCst) && self.lead().await {
            self.janitor.run(task).await;
        }
    }

    /// Are we the leader now? Logs changes of role.
    async fn lead(&self) -> bool {
        let mut role = self.role.lock().await;
        let id = &self.janitor.settings().id;
        let leader = match role.leadership.check().await {
            Ok(leader) => leader,
            Err(e) => {
                tracing::warn!(janitor = %id, error = %e, "cannot reach the database for the leader lock; not acting");
                false
            }
        };
        match (role.announced, leader) {
            (Some(true), true) | (Some(false), false) => {}
            (_, true) => tracing::info!(janitor = %id, "leader: this janitor runs the tasks"),
            (None, false) => tracing::info!(janitor = %id, "standby: another janitor is the leader"),
            (Some(true), false) => tracing::warn!(janitor = %id, "lost the leader lock; standing by"),
        }
        role.announced = Some(leader);
        leader
    }
}

/// Run the tasks on `schedules` (see [`check_schedules`]) until `shutdown` completes.
pub async fn run_schedules(
    janitor: Arc<Janitor>,
    schedules: &JanitorSchedules,
    shutdown: impl Future<Output = ()>,
) -> Result<(), JanitorError> {
    let leadership = janitor.queue().leadership(&janitor.settings().id);
    let scheduled = Arc::new(Scheduled {
        janitor,
        role: Mutex::new(Role { leadership, announced: None }),
        running: Task::ALL.iter().map(|_| Mutex::new(())).collect(),
        stopping: AtomicBool::new(false),
    });
    let sched_err = |e: tokio_cron_scheduler::JobSchedulerError| JanitorError::Scheduler(e.to_string());
    let mut sched = JobScheduler::new().await.map_err(sched_err)?;
    for task in Task::ALL {
        let s = scheduled.clone();
        let job = job(task, schedules, move |task| {
            let s = s.clone();
            async move { s.tick(task).await }
        })
        .map_err(sched_err)?;
        sched.add(job).await.map_err(sched_err)?;
        tracing::info!(task = task.name(), schedule = task.schedule(schedules), "scheduled");
    }
    sched.start().await.map_err(sched_err)?;
    shutdown.await;
    tracing::info!("shutting down: no new runs; waiting for runs in flight");
    scheduled.stopping.store(true, Ordering::SeqCst);
    sched.shutdown().await.map_err(sched_err)?;
    for slot in &scheduled.running {
        let _ = slot.lock().await;
    }
    scheduled.role.lock().await.leadership.release().await;
    tracing::info!("stopped; the leader lock is released");
    Ok(())
}
