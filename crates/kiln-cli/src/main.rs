//! `kiln`: the command-line client of a Kiln build farm.
//!
//! This file only parses the command line and maps the outcome to an exit
//! status ([`error::exit_code`]); each subcommand lives in its own module
//! under `commands/`.

mod api;
mod commands;
mod error;
mod fetch;
mod progress;
mod server;

use std::process::ExitCode;

use clap::Parser;

#[tokio::main]
async fn main() -> ExitCode {
    let cli = commands::Cli::parse();
    let json = cli.json;
    let outcome = tokio::select! {
        outcome = commands::run(cli) => outcome,
        // Dropping the command's future removes its temporary files.
        _ = tokio::signal::ctrl_c() => {
            eprintln!("kiln: interrupted (a submitted build goes on on the server)");
            return ExitCode::from(130);
        }
    };
    match outcome {
        Ok(code) => code,
        Err(e) => {
            eprintln!("kiln: {e:#}");
            if json {
                println!("{}", error::error_json(&e));
            }
            ExitCode::from(error::exit_code(&e))
        }
    }
}
