//! `kiln-janitor`: migrations, then the farm's upkeep on a schedule.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context;
use clap::{Parser, Subcommand};
use kiln_janitor::JanitorSettings;

/// Kiln's janitor: migrations, rescue of lapsed leases, retries, expiry, pruning.
#[derive(Debug, Parser)]
#[command(version)]
struct Cli {
    /// The configuration file (else $CONFIG_PATH, else ./config.yml).
    #[arg(long, global = true)]
    config: Option<PathBuf>,
    /// This janitor's name in logs and the janitor_runs table (default: host and pid).
    #[arg(long, global = true, env = "KILN_JANITOR_ID")]
    id: Option<String>,
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Apply the database migrations, then exit.
    Migrate,
    /// Migrate, then run the tasks on their schedules until SIGTERM.
    Run,
    /// Run every task once, print what each did, then exit (1 if any failed).
    Once {
        /// Print JSON instead of a summary.
        #[arg(long)]
        json: bool,
    },
}

#[tokio::main]
async fn main() -> ExitCode {
    let cli = Cli::parse();
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| "info,sqlx=warn,tokio_cron_scheduler=warn".into()),
        )
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .init();
    match main_with(cli).await {
        Ok(code) => code,
        Err(e) => {
            eprintln!("kiln-janitor: {}", message(&e));
            ExitCode::FAILURE
        }
    }
}

async fn main_with(cli: Cli) -> anyhow::Result<ExitCode> {
    let path = kiln_config::locate(cli.config.as_deref());
    let config = kiln_config::Config::load(&path)?;
    let id = cli.id.unwrap_or_else(default_id);
    let settings = JanitorSettings::from_config(&config, id);
    let ctx = || format!("{}", path.display());
    match cli.command {
        Command::Migrate => {
            let applied = kiln_janitor::migrate(&config).await?;
            println!(
                "migrations applied: {}",
                if applied.is_empty() { "none (up to date)".into() } else { applied.join(", ") }
            );
        }
        Command::Run => kiln_janitor::run(&config, settings, shutdown_signal()).await.with_context(ctx)?,
        Command::Once { json } => {
            let reports = kiln_janitor::once(&config, settings).await?;
            if json {
                println!("{}", serde_json::to_string_pretty(&reports)?);
            } else {
                for r in &reports {
                    println!("{}", r.summary());
                }
            }
            if reports.iter().any(|r| !r.ok) {
                return Ok(ExitCode::FAILURE);
            }
        }
    }
    Ok(ExitCode::SUCCESS)
}

/// The error and its causes, each said once (some errors quote their source).
fn message(e: &anyhow::Error) -> String {
    let mut out = e.to_string();
    for cause in e.chain().skip(1) {
        let cause = cause.to_string();
        if !out.contains(&cause) {
            out.push_str(": ");
            out.push_str(&cause);
        }
    }
    out
}

/// `<host>-<pid>`.
fn default_id() -> String {
    let host = std::fs::read_to_string("/proc/sys/kernel/hostname")
        .ok()
        .map(|h| h.trim().to_owned())
        .filter(|h| !h.is_empty())
        .unwrap_or_else(|| "janitor".into());
    format!("{host}-{}", std::process::id())
}

/// SIGTERM or Ctrl-C.
async fn shutdown_signal() {
    use tokio::signal::unix::{SignalKind, signal};
    let Ok(mut term) = signal(SignalKind::terminate()) else {
        return std::future::pending().await;
    };
    tokio::select! {
        _ = term.recv() => {}
        _ = tokio::signal::ctrl_c() => {}
    }
}
