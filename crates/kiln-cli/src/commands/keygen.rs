//! `kiln keygen -o PATH`: make the key pair a farm signs artifacts with.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context;

#[derive(Debug, clap::Args)]
pub struct Args {
    /// Where to write the secret key; the public key goes to PATH.pub.
    #[arg(short, long, value_name = "PATH")]
    output: PathBuf,
    /// Replace existing key files.
    #[arg(long)]
    force: bool,
}

pub fn run(args: Args) -> anyhow::Result<ExitCode> {
    let public = kiln_artifact::keygen(&args.output, args.force).context("kiln keygen")?;
    let pub_path = kiln_artifact::public_key_path(&args.output);
    println!("secret key: {} (unencrypted; keep it private)", args.output.display());
    println!("public key: {}", pub_path.display());
    println!("key id:     {}", public.key_id());
    println!("verify with: minisign -Vm artifact.tar -P {}", public.to_base64());
    Ok(ExitCode::SUCCESS)
}
