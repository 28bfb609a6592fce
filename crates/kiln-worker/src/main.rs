//! `kiln-worker`: parse the arguments, load the configuration, claim and
//! run builds until SIGTERM or SIGINT ([`kiln_worker::serve`]).

use std::path::PathBuf;
use std::process::ExitCode;

use clap::Parser;
use kiln_worker::RunOptions;

/// Claims Kiln builds and runs them in isolated Docker containers. The first
/// SIGTERM or SIGINT stops claiming and lets running jobs finish within
/// worker.shutdown_grace_secs; a second one hands them back at once.
#[derive(Debug, Parser)]
#[command(version, after_help = kiln_process::EXIT_STATUS_HELP)]
struct Args {
    /// Configuration file (else $CONFIG_PATH, else ./config.yml).
    #[arg(long)]
    config: Option<PathBuf>,
    /// Run one job, then exit.
    #[arg(long)]
    once: bool,
}

fn main() -> ExitCode {
    let args = Args::parse();
    kiln_process::run("kiln-worker", |shutdown| async move {
        let config = kiln_process::load_config(args.config.as_deref())?;
        let options = RunOptions { once: args.once };
        kiln_worker::serve(config, options, shutdown.graceful(), shutdown.immediate()).await?;
        Ok(())
    })
}
