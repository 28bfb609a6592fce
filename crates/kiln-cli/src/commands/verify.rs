//! `kiln verify ARTIFACT SIGNATURE [--key PUB]`: check a minisign signature;
//! `kiln verify --image REF [--key PUB]`: check the signature of every
//! platform manifest REF names (`image.minisig` of its build, from the
//! server).
//!
//! Exit 0 when the signature is good, 1 when it is not (altered artifact,
//! another key, malformed signature), 2 when the check could not run (a
//! missing file or key), 3 when the server's key could not be fetched.

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::Context;
use kiln_artifact::ArtifactError;

use super::EXIT_FAILED;
use crate::server::Server;

#[derive(Debug, clap::Args)]
pub struct Args {
    /// The artifact file.
    #[arg(required_unless_present = "image", conflicts_with = "image")]
    artifact: Option<PathBuf>,
    /// Its `.minisig` signature file.
    #[arg(required_unless_present = "image")]
    signature: Option<PathBuf>,
    /// Check an image instead, pulled from the server's registry:
    /// `[host/]name:tag` or `[host/]name@sha256:…` (an index: each platform).
    #[arg(long, value_name = "REF")]
    image: Option<String>,
    /// The public key: a key file's path or the base64 key itself. Without
    /// it, the key is fetched from the server's /api/signing-key.
    #[arg(long, value_name = "PUB")]
    key: Option<String>,
}

pub async fn run(args: Args, server: impl FnOnce() -> anyhow::Result<Server>) -> anyhow::Result<ExitCode> {
    // The server is only needed (and its URL only checked) without --key.
    if let Some(reference) = &args.image {
        let server = server()?;
        let key = crate::fetch::trusted_key(&server, args.key.as_deref()).await?;
        return super::image::verify(&server, &key, reference).await;
    }
    let (Some(artifact), Some(signature_path)) = (&args.artifact, &args.signature) else {
        anyhow::bail!("give ARTIFACT and SIGNATURE, or --image REF");
    };
    let key = match &args.key {
        Some(k) => crate::fetch::key_from_arg(k)?,
        None => crate::fetch::trusted_key(&server()?, None).await?,
    };
    let signature = read_signature(signature_path)?;
    let open = || std::fs::File::open(artifact).with_context(|| format!("reading the artifact {}", artifact.display()));

    match kiln_artifact::verify(&key, std::io::BufReader::new(open()?), &signature) {
        Ok(good) => {
            println!("Signature and comment signature verified");
            println!("Trusted comment: {}", good.trusted_comment);
            if let Some(build) = kiln_artifact::parse_build_comment(&good.trusted_comment) {
                // The signature covers the comment; the digest in it must be the file's.
                let (sha256, _) = kiln_artifact::sha256_reader(open()?)?;
                if sha256 != build.sha256 {
                    eprintln!("kiln: {}: SHA-256 {sha256} is not the signed {}", artifact.display(), build.sha256);
                    return Ok(ExitCode::from(EXIT_FAILED));
                }
                println!("Build {} (sha256:{sha256}), key {}", build.key, good.key_id);
            }
            Ok(ExitCode::SUCCESS)
        }
        Err(ArtifactError::BadSignature(why)) => {
            eprintln!(
                "kiln: bad signature: {why}\nkiln: {} was altered, or {} was not made for it by key {}",
                artifact.display(),
                signature_path.display(),
                key.key_id()
            );
            Ok(ExitCode::from(EXIT_FAILED))
        }
        Err(e) => Err(e).with_context(|| format!("verifying {}", artifact.display())),
    }
}

/// A `.minisig` file is a few hundred bytes; anything far larger is not one.
const MAX_SIGNATURE_BYTES: u64 = 64 * 1024;

fn read_signature(path: &Path) -> anyhow::Result<String> {
    use std::io::Read;
    let context = || format!("reading the signature {}", path.display());
    let mut text = String::new();
    std::fs::File::open(path)
        .and_then(|f| f.take(MAX_SIGNATURE_BYTES + 1).read_to_string(&mut text))
        .with_context(context)?;
    anyhow::ensure!(text.len() as u64 <= MAX_SIGNATURE_BYTES, "{}: too large for a signature", path.display());
    Ok(text)
}
