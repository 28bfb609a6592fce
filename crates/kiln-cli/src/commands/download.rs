//! `kiln download KEY [-o FILE] [--artifact] [--key PUB]`: fetch a succeeded
//! build's binary (or artifact), verified like `kiln build` does.

use std::path::PathBuf;
use std::process::ExitCode;

use kiln_domain::BuildKey;

use crate::api;
use crate::fetch::{self, Output};
use crate::progress::Progress;
use crate::server::Server;

/// Where and what to write, and the key to verify with (shared with `kiln build`).
#[derive(Debug, clap::Args)]
pub struct OutputArgs {
    /// Write to FILE (or into FILE when it is a directory). Default:
    /// `<binary>_<os>_<arch>` in the current directory, `.tar` with --artifact.
    #[arg(short, long, value_name = "FILE")]
    output: Option<PathBuf>,
    /// Write the signed TAR artifact and its `.minisig` beside it, not the binary.
    #[arg(long)]
    artifact: bool,
    /// The public key to verify with: a key file's path or the base64 key.
    /// Default: the server's /api/signing-key.
    #[arg(long, value_name = "PUB")]
    key: Option<String>,
}

impl OutputArgs {
    pub fn output(&self) -> Output {
        Output { path: self.output.clone(), artifact: self.artifact }
    }

    pub fn key(&self) -> Option<&str> {
        self.key.as_deref()
    }
}

#[derive(Debug, clap::Args)]
pub struct Args {
    /// The build key (64 hex characters, as `kiln build` prints it).
    #[arg(value_name = "KEY", value_parser = parse_key)]
    build: BuildKey,
    #[command(flatten)]
    out: OutputArgs,
}

/// A build key from the command line.
pub fn parse_key(s: &str) -> Result<BuildKey, String> {
    BuildKey::parse(s.trim()).map_err(|e| e.message)
}

pub async fn run(args: Args, server: Server, json: bool) -> anyhow::Result<ExitCode> {
    let build = api::get(&server, &args.build, std::time::Duration::ZERO).await?;
    fetch::check_ready(&build)?;
    let key = fetch::trusted_key(&server, args.out.key()).await?;
    let progress = Progress::new();
    let written = fetch::fetch(&server, &build, &key, &args.out.output(), &progress).await;
    progress.finish();
    let written = written?;
    if json {
        println!("{}", serde_json::to_string_pretty(&written.to_json(&build))?);
    } else {
        println!("{}", written.describe());
    }
    Ok(ExitCode::SUCCESS)
}
