//! `kiln log KEY [--follow]`: a build's log on stdout; with `--follow`, live
//! until the build ends.

use std::io::Write;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::Context;
use kiln_domain::BuildKey;

use super::download::parse_key;
use crate::api;
use crate::server::{Server, next_chunk_within};

#[derive(Debug, clap::Args)]
pub struct Args {
    /// The build key (64 hex characters, as `kiln build` prints it).
    #[arg(value_name = "KEY", value_parser = parse_key)]
    key: BuildKey,
    /// Keep streaming new lines until the build ends.
    #[arg(short, long)]
    follow: bool,
}

pub async fn run(args: Args, server: Server) -> anyhow::Result<ExitCode> {
    let mut res = api::log(&server, &args.key, args.follow).await?;
    // A followed build may print nothing for long while a step works.
    let silence = if args.follow { Duration::from_secs(24 * 3600) } else { crate::server::READ_TIMEOUT };
    let mut stdout = std::io::stdout();
    while let Some(chunk) = next_chunk_within(&mut res, silence).await? {
        match stdout.write_all(&chunk).and_then(|()| stdout.flush()) {
            Ok(()) => {}
            // The reader has had enough (`kiln log KEY | head`).
            Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => break,
            Err(e) => return Err(e).context("writing the log to stdout"),
        }
    }
    Ok(ExitCode::SUCCESS)
}
