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

pub use worker::{Exit, RunOptions, Worker, WorkerError};
