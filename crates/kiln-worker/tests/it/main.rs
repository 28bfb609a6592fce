//! The worker against a real Docker engine and a real Postgres.
//!
//! Every test needs `KILN_TEST_DATABASE_URL` (set by `scripts/test`) and the
//! test image (`scripts/test-image`). Without Docker, each test prints
//! `SKIPPED: docker unavailable: …` and returns.
//!
//! Builds are content-addressed, and other test processes share the Docker
//! engine: each test builds its own key (the `sleep` recipe reads only the
//! major version, so tests use their own patch numbers) and looks only at
//! containers of its own workers.

mod build;
mod farm;
mod image;
mod isolation;
mod limits;
mod network;
mod preemption;
mod recipes;
mod shutdown;
