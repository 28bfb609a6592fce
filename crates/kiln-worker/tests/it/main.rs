//! The worker against a real Docker engine and a real Postgres.
//!
//! Every test needs `KILN_TEST_DATABASE_URL` (set by `scripts/test`) and the
//! test image (`scripts/test-image`). Without Docker, each test prints
//! `SKIPPED: docker unavailable: …` and returns.

mod build;
mod farm;
mod isolation;
mod preemption;
mod shutdown;
