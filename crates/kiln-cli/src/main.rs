//! `kiln`: the command-line client of a Kiln build farm.
//!
//! This file only parses the command line and maps the outcome to an exit
//! status; each subcommand lives in its own module under `commands/`.

mod commands;
mod server;

use std::process::ExitCode;

use clap::Parser;

#[tokio::main]
async fn main() -> ExitCode {
    let cli = commands::Cli::parse();
    match commands::run(cli).await {
        Ok(code) => code,
        Err(e) => {
            eprintln!("kiln: {e:#}");
            ExitCode::from(commands::EXIT_ERROR)
        }
    }
}
