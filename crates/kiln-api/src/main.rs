//! `kiln-api`: parse the arguments, load the configuration, serve until
//! SIGTERM or SIGINT ([`kiln_api::serve`]).

use std::path::PathBuf;
use std::process::ExitCode;

use clap::Parser;

#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// Kiln's HTTP API and download page.
#[derive(Debug, Parser)]
#[command(version, after_help = kiln_process::EXIT_STATUS_HELP)]
struct Cli {
    /// The configuration file (else $CONFIG_PATH, else ./config.yml).
    #[arg(long)]
    config: Option<PathBuf>,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    kiln_process::run("kiln-api", |shutdown| async move {
        let config = kiln_process::load_config(cli.config.as_deref())?;
        kiln_api::serve(config, shutdown.requested()).await?;
        Ok(())
    })
}
