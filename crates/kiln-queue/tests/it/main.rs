//! The queue against a real Postgres (started by scripts/test).

mod claims;
mod fencing;
mod maintenance;
mod notify;
mod stats;
mod support;
mod tokens;
