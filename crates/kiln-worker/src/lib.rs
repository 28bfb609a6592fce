//! The build worker: claims jobs, runs isolated Docker steps, uploads signed artifacts.
//!
//! - `worker`: the loop that registers, claims, and stops cleanly.
//! - `job`: one claimed job from the first step to the completed build,
//!   with its parts: `fence` (the lease: renewal, and the fence before any
//!   upload), `failure` (build failures vs infrastructure failures),
//!   `workdir` (the per-attempt directory mounted at `/work`), `manifest`
//!   (the `build.json` it records), `control` (stopping a job from outside),
//!   `image` (the build's OCI image: made, signed and uploaded with it).
//! - [`render`]: a recipe's step templates rendered for one build (pure).
//! - [`docker`]: one step in a fresh, locked-down container.
//! - `log`: the live log, batched into Postgres and kept for `log.txt`.
//! - `preempt`: the preemption detectors (GCE, AWS, Azure, a file).
//! - [`disk`]: the disk limit of a build (a per-build filesystem or a
//!   watcher) and the worker's own free disk.
//! - `sweep`: removing other builds' orphans (containers, directories,
//!   mounts) from the host.
//!
//! [`render`] and [`docker`] are public for the recipe tests, which run
//! rendered steps in real containers, [`disk`] for the disk benchmark; the
//! rest is the crate's own.

mod control;
pub mod disk;
pub mod docker;
mod failure;
mod fence;
mod image;
mod job;
mod log;
mod manifest;
mod preempt;
pub mod render;
mod sweep;
mod workdir;
mod worker;

use kiln_config::Config;
use tokio_util::sync::CancellationToken;

pub use control::StopReason;
pub use job::JobEnd;
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
