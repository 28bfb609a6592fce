//! The build worker: claims jobs, runs isolated Docker steps, uploads signed artifacts.
//!
//! - [`render`]: a recipe's step templates rendered for one build (pure).
//! - [`docker`]: one step in a fresh, locked-down container.
//! - [`log`]: the live log, batched into Postgres and kept for `log.txt`.
//! - [`job`]: one claimed job from the first step to the completed build.
//! - [`preempt`]: the preemption detectors (GCE, AWS, Azure, a file).
//! - [`worker`]: the loop that registers, claims, and stops cleanly.

pub mod docker;
pub mod job;
pub mod log;
pub mod preempt;
pub mod render;
mod workdir;
pub mod worker;

use kiln_config::Config;
use tokio_util::sync::CancellationToken;

pub use worker::{Exit, RunOptions, Worker, WorkerError};

/// The whole `kiln-worker` process: [`Worker::start`], then [`Worker::run`]
/// until `shutdown` (the first SIGTERM or SIGINT), preemption, or with
/// `once` the end of one job. `hurry` (a second signal) hands running jobs
/// back at once instead of waiting out `worker.shutdown_grace_secs`.
pub async fn serve(
    config: Config,
    options: RunOptions,
    shutdown: CancellationToken,
    hurry: CancellationToken,
) -> Result<Exit, WorkerError> {
    let exit = Worker::start(config).await?.run(options, shutdown, hurry).await?;
    tracing::info!(?exit, "worker exiting");
    Ok(exit)
}
