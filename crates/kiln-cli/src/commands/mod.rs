//! The command line: global options, one module per subcommand, exit codes.

mod keygen;
mod verify;

use std::process::ExitCode;

use clap::{Parser, Subcommand};

use crate::server::{DEFAULT_SERVER, Server};

/// Exit status of a check that failed (for `verify`: a bad signature).
pub const EXIT_FAILED: u8 = 1;
/// Exit status of an error that stopped a command from doing its job
/// (unreadable file, unreachable server, bad arguments).
pub const EXIT_ERROR: u8 = 2;

#[derive(Debug, Parser)]
#[command(name = "kiln", version, about = "The client of a Kiln build farm")]
pub struct Cli {
    /// The Kiln server's base URL.
    #[arg(long, global = true, env = "KILN_SERVER", default_value = DEFAULT_SERVER)]
    pub server: String,

    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Make a signing key pair: the secret key at PATH, the public key at PATH.pub.
    Keygen(keygen::Args),
    /// Check an artifact's minisign signature.
    Verify(verify::Args),
}

pub async fn run(cli: Cli) -> anyhow::Result<ExitCode> {
    match cli.command {
        Command::Keygen(args) => keygen::run(args),
        Command::Verify(args) => verify::run(args, || Server::new(&cli.server)).await,
    }
}
