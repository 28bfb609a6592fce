//! `kiln`, the command-line client of a Kiln build farm.
//!
//! [`run`] runs a parsed [`Cli`] to its exit status ([`error::exit_code`]);
//! each subcommand lives in its own module under `commands/`, the farm's
//! API as the client uses it in `api` and `server`, verified downloads in
//! `fetch`. The binary (`src/main.rs`) only parses the command line.

mod api;
mod commands;
mod error;
mod fetch;
mod progress;
mod server;

use std::process::ExitCode;

use kiln_process::Shutdown;

pub use commands::Cli;

/// Run the command line `cli`; its exit status. Ctrl-C or SIGTERM stops the
/// command at once (dropping its future removes its temporary files) and
/// exits 128 + the signal's number.
pub async fn run(cli: Cli) -> ExitCode {
    let json = cli.json;
    let shutdown = match Shutdown::listen() {
        Ok(s) => s,
        Err(e) => {
            eprintln!("kiln: cannot listen for signals: {e}");
            return ExitCode::from(commands::EXIT_ERROR);
        }
    };
    let outcome = tokio::select! {
        outcome = commands::run(cli) => outcome,
        () = shutdown.clone().requested() => {
            eprintln!("kiln: interrupted (a submitted build goes on on the server)");
            return ExitCode::from(shutdown.signal_exit_code());
        }
    };
    match outcome {
        Ok(code) => code,
        Err(e) => {
            eprintln!("kiln: {}", kiln_process::error_chain(&e));
            if json {
                println!("{}", error::error_json(&e));
            }
            ExitCode::from(error::exit_code(&e))
        }
    }
}
