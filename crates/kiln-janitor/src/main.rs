//! `kiln-janitor`: parse the arguments, load the configuration, run the
//! command ([`kiln_janitor::execute`]).

use std::path::PathBuf;
use std::process::ExitCode;

use clap::Parser;

/// Kiln's janitor: migrations, rescue of lapsed leases, retries, expiry, pruning.
#[derive(Debug, Parser)]
#[command(version, after_help = kiln_process::EXIT_STATUS_HELP)]
struct Cli {
    /// The configuration file (else $CONFIG_PATH, else ./config.yml).
    #[arg(long, global = true)]
    config: Option<PathBuf>,
    /// This janitor's name in logs and the janitor_runs table (default: host and pid).
    #[arg(long, global = true, env = "KILN_JANITOR_ID")]
    id: Option<String>,
    #[command(subcommand)]
    command: kiln_janitor::Command,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    kiln_process::run("kiln-janitor", |shutdown| async move {
        let config = kiln_process::load_config(cli.config.as_deref())?;
        let id = kiln_process::instance_id(cli.id.as_deref());
        kiln_janitor::execute(cli.command, &config, id, shutdown.requested()).await?;
        Ok(())
    })
}
