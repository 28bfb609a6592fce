//! `kiln`: parse the command line and run it ([`kiln_cli::run`]).

use std::process::ExitCode;

use clap::Parser;

#[tokio::main]
async fn main() -> ExitCode {
    kiln_cli::run(kiln_cli::Cli::parse()).await
}
