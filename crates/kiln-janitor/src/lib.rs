//! The janitor keeps the farm healthy without anyone watching.
//!
//! - `migrate` applies the schema migrations ([`migrate`]);
//! - `run` migrates, then runs the [`Task`]s on their cron schedules
//!   ([`run`], `schedule`) while this process is the leader among
//!   janitors (a Postgres advisory lock, see [`kiln_queue::Leadership`]);
//! - `once` runs every task once and reports ([`once`]);
//! - `token create|list|revoke` manages the API tokens of a private farm
//!   ([`tokens`]).
//!
//! [`execute`] runs one of these [`Command`]s as the binary does, printing
//! what it did on stdout; `src/main.rs` only parses the arguments and loads
//! the configuration.
//!
//! The tasks ([`Janitor`]) are idempotent: rescue of lapsed leases, the
//! retry nudge, gone workers, expiry of old builds (objects, then rows),
//! pruning of old rows, and the sweep of shared image objects no build
//! still names (`sweep`: mark and sweep with a grace period). Each run logs one line
//! (`task=rescue requeued=2 failed=0 elapsed_ms=3`; at INFO only when it
//! changed something, WARN when it failed, else DEBUG) and is recorded in the
//! `janitor_runs` table, which the API exports at `/metrics`. All SQL lives
//! in kiln-queue; all object keys are made by kiln-storage.

mod error;
mod janitor;
mod schedule;
mod sweep;
mod task;
pub mod tokens;

use std::future::Future;
use std::sync::Arc;

use kiln_config::Config;
use kiln_queue::{Queue, QueueSettings};
use kiln_storage::Storage;

pub use error::JanitorError;
pub use janitor::{Janitor, JanitorSettings};
pub use task::{Counts, Task, TaskReport};

/// What `kiln-janitor` is asked to do.
#[derive(Debug, Clone, clap::Subcommand)]
pub enum Command {
    /// Apply the database migrations, then exit.
    Migrate,
    /// Migrate, then run the tasks on their schedules until SIGTERM or SIGINT.
    Run,
    /// Run every task once, print what each did, then exit (1 if any failed).
    Once {
        /// Print JSON instead of a summary.
        #[arg(long)]
        json: bool,
    },
    /// API tokens of a private farm: create (the secret is shown once), list, revoke.
    Token {
        #[command(subcommand)]
        command: tokens::TokenCommand,
    },
}

/// Run `command` as janitor `id`; `shutdown` ends `run`. What `migrate` and
/// `once` did is printed on stdout.
pub async fn execute(
    command: Command,
    config: &Config,
    id: String,
    shutdown: impl Future<Output = ()>,
) -> Result<(), JanitorError> {
    let settings = JanitorSettings::from_config(config, id);
    match command {
        Command::Migrate => {
            let applied = migrate(config).await?;
            let applied = if applied.is_empty() { "none (up to date)".into() } else { applied.join(", ") };
            println!("migrations applied: {applied}");
        }
        Command::Run => run(config, settings, shutdown).await?,
        Command::Token { command } => tokens::execute(command, config).await?,
        Command::Once { json } => {
            let reports = once(config, settings).await?;
            if json {
                println!("{}", serde_json::to_string_pretty(&reports).expect("reports serialize"));
            } else {
                for r in &reports {
                    println!("{}", r.summary());
                }
            }
            let failed: Vec<String> = reports.iter().filter(|r| !r.ok).map(|r| r.task.to_string()).collect();
            if !failed.is_empty() {
                return Err(JanitorError::TasksFailed { failed, total: reports.len() });
            }
        }
    }
    Ok(())
}

/// Apply pending migrations; returns the names of those applied. Safe to
/// run from several processes at once.
pub async fn migrate(config: &Config) -> Result<Vec<String>, JanitorError> {
    Ok(kiln_queue::migrate(config.database.url.expose()).await?)
}

/// Connect to the (migrated) database and the object store.
async fn connect(config: &Config, settings: JanitorSettings) -> Result<Janitor, JanitorError> {
    let storage = Storage::from_config(&config.storage)?;
    let queue = Queue::connect(
        config.database.url.expose(),
        config.database.max_connections,
        QueueSettings::from(&config.queue),
        &format!("kiln-janitor {}", settings.id),
    )
    .await?;
    Ok(Janitor::new(queue, storage, settings))
}

/// `kiln-janitor run`: migrate, then run the schedules until `shutdown`.
pub async fn run(
    config: &Config,
    settings: JanitorSettings,
    shutdown: impl Future<Output = ()>,
) -> Result<(), JanitorError> {
    schedule::check_schedules(config)?;
    let applied = migrate(config).await?;
    tracing::info!(janitor = %settings.id, ?applied, "migrations applied");
    let janitor = Arc::new(connect(config, settings).await?);
    schedule::run_schedules(janitor, &config.janitor.schedules, shutdown).await
}

/// `kiln-janitor once`: every task once, in order; a failed task does not
/// stop the others. Does not take the leader lock (the tasks are safe to
/// run beside a leader's).
pub async fn once(config: &Config, settings: JanitorSettings) -> Result<Vec<TaskReport>, JanitorError> {
    Ok(connect(config, settings).await?.run_all().await)
}
