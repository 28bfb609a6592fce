//! The command line: global options, one module per subcommand, exit codes.

mod build;
mod download;
mod image;
mod keygen;
mod log;
mod status;
mod verify;

use std::process::ExitCode;

use clap::{Parser, Subcommand};

use crate::server::{DEFAULT_SERVER, Server};

/// Exit status of a check that failed: a bad signature (`verify`), a build
/// that failed or whose files did not verify (`build`, `download`).
pub const EXIT_FAILED: u8 = 1;
/// Exit status of an error that stopped a command from doing its job: bad
/// arguments, a request the server refused (unknown platform, unknown key),
/// an unreadable file; for `verify`, also an unreachable server.
pub const EXIT_ERROR: u8 = 2;
/// Exit status of `build`, `status`, `log` and `download` when the server
/// does not answer (or answers 5xx) or `--timeout` runs out.
pub const EXIT_UNREACHABLE: u8 = 3;

#[derive(Debug, Parser)]
#[command(
    name = "kiln",
    version,
    about = "The client of a Kiln build farm",
    after_help = "Exit status of build, status, log and download: 0 done, 1 the build failed \
                  (or its files did not verify), 2 a bad request (the server's error code and \
                  message are printed), 3 the server is unreachable or the wait timed out."
)]
pub struct Cli {
    /// The Kiln server's base URL.
    #[arg(long, global = true, env = "KILN_SERVER", default_value = DEFAULT_SERVER)]
    pub server: String,

    /// An API token of a private farm (sent as `Authorization: Bearer`).
    #[arg(long, global = true, env = "KILN_TOKEN", hide_env_values = true)]
    pub token: Option<String>,

    /// Machine-readable output: JSON on stdout, errors too.
    #[arg(long, global = true)]
    pub json: bool,

    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Build a binary on the farm, wait for it, verify its signature and write it.
    Build(build::Args),
    /// Show a build's state.
    Status(status::Args),
    /// Print a build's log; with --follow, live until the build ends.
    Log(log::Args),
    /// Download a succeeded build's binary (or artifact), verified.
    Download(download::Args),
    /// Make a signing key pair: the secret key at PATH, the public key at PATH.pub.
    Keygen(keygen::Args),
    /// Check an artifact's minisign signature, or (--image) an image's.
    Verify(verify::Args),
    /// Print the reference to `docker pull` for a recipe's image, and its digest once built.
    Image(image::Args),
}

pub async fn run(cli: Cli) -> anyhow::Result<ExitCode> {
    let json = cli.json;
    match cli.command {
        Command::Build(args) => build::run(args, Server::new(&cli.server, cli.token.as_deref())?, json).await,
        Command::Status(args) => status::run(args, Server::new(&cli.server, cli.token.as_deref())?, json).await,
        Command::Log(args) => log::run(args, Server::new(&cli.server, cli.token.as_deref())?).await,
        Command::Download(args) => download::run(args, Server::new(&cli.server, cli.token.as_deref())?, json).await,
        Command::Keygen(args) => keygen::run(args),
        Command::Verify(args) => verify::run(args, || Server::new(&cli.server, cli.token.as_deref())).await,
        Command::Image(args) => image::run(args, Server::new(&cli.server, cli.token.as_deref())?, json).await,
    }
}

#[cfg(test)]
mod tests {
    use clap::CommandFactory;

    #[test]
    fn the_command_line_is_well_formed() {
        super::Cli::command().debug_assert();
    }
}
