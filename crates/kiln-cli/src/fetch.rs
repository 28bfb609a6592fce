//! Download a build's artifact and signature, verify them, and only then
//! write the binary or the TAR where the user asked.
//!
//! The TAR goes to a temporary file beside the destination. It must carry a
//! good signature by the trusted key whose trusted comment names this very
//! build and the TAR's SHA-256; then the main binary is extracted from it
//! (or the TAR kept) and renamed into place, so a destination never holds an
//! unverified or half-written file.

use std::fs::File;
use std::io::{BufReader, BufWriter, Seek, Write};
use std::os::unix::fs::PermissionsExt;
use std::path::{Component, Path, PathBuf};

use anyhow::Context;
use kiln_artifact::{ArtifactError, HashingWriter, PublicKey};
use kiln_domain::BuildState;
use serde_json::json;

use crate::api::{self, Build};
use crate::error::Failure;
use crate::progress::Progress;
use crate::server::{Server, next_chunk};

/// The most bytes a signature file may have.
const MAX_SIGNATURE: usize = 16 * 1024;

/// What to write.
#[derive(Debug, Clone)]
pub struct Output {
    /// `-o`: a file, or a directory to put the default file name in.
    pub path: Option<PathBuf>,
    /// Keep the TAR (and its `.minisig` beside it) instead of extracting the binary.
    pub artifact: bool,
}

/// What was written, after verification.
#[derive(Debug)]
pub struct Written {
    pub path: PathBuf,
    pub signature: Option<PathBuf>,
    pub size: u64,
    pub sha256: String,
    pub key_id: String,
    pub trusted_comment: String,
}

impl Written {
    pub fn to_json(&self, build: &Build) -> serde_json::Value {
        json!({
            "key": build.key,
            "state": build.state,
            "path": self.path,
            "signature": self.signature,
            "size": self.size,
            "sha256": self.sha256,
            "verified": {"key_id": self.key_id, "trusted_comment": self.trusted_comment},
            "build": build.raw,
        })
    }

    /// The human summary.
    pub fn describe(&self) -> String {
        let what = if self.signature.is_some() { "artifact" } else { "binary" };
        let mut s = format!(
            "wrote {} ({what}, {} bytes, sha256 {})\nverified: signed by key {}: {}",
            self.path.display(),
            self.size,
            self.sha256,
            self.key_id,
            self.trusted_comment
        );
        if let Some(sig) = &self.signature {
            s.push_str(&format!("\nsignature: {}", sig.display()));
        }
        s
    }
}

/// The key to trust: `--key` (checked before anything is downloaded), else the server's.
pub async fn trusted_key(server: &Server, arg: Option<&str>) -> anyhow::Result<PublicKey> {
    match arg {
        Some(arg) => key_from_arg(arg),
        None => api::signing_key(server).await.context(
            "fetching the server's signing key (pass --key PATH, or --server / KILN_SERVER for another server)",
        ),
    }
}

/// `--key`: the base64 key itself, else the path of a key file.
pub fn key_from_arg(arg: &str) -> anyhow::Result<PublicKey> {
    match PublicKey::parse(arg) {
        Ok(key) => Ok(key),
        Err(_) if Path::new(arg).is_file() => Ok(PublicKey::from_file(Path::new(arg)).context("--key")?),
        Err(_) => anyhow::bail!("--key {arg:?} is neither a minisign public key nor an existing file"),
    }
}

/// Download the files of the succeeded `build`, verify them with `key`, and write them.
pub async fn fetch(
    server: &Server,
    build: &Build,
    key: &PublicKey,
    out: &Output,
    progress: &Progress,
) -> anyhow::Result<Written> {
    check_ready(build)?;
    let dest = destination(build, out)?;
    let dir = match dest.parent() {
        Some(p) if !p.as_os_str().is_empty() => p.to_owned(),
        _ => PathBuf::from("."),
    };
    progress.status(&format!("build {}: downloading the signature", build.key.short()));
    let signature = download_signature(server, build).await?;
    progress.status(&format!("build {}: downloading the artifact", build.key.short()));
    let mut tar = tempfile::Builder::new()
        .prefix(".kiln-")
        .suffix(".tar.part")
        .tempfile_in(&dir)
        .with_context(|| format!("making a temporary file in {}", dir.display()))?;
    let (tar_sha256, tar_size) = download_to(server, build, tar.as_file_mut()).await?;

    progress.status(&format!("build {}: verifying", build.key.short()));
    let file = tar.as_file_mut();
    file.rewind()?;
    let good = match kiln_artifact::verify(key, BufReader::new(&*file), &signature) {
        Ok(good) => good,
        Err(ArtifactError::BadSignature(why)) => {
            return Err(Failure::Unverified(format!(
                "the artifact of build {} does not carry a good signature by key {}: {why}",
                build.key,
                key.key_id()
            ))
            .into());
        }
        Err(e) => return Err(e).context("verifying the artifact"),
    };
    // The signature covers the trusted comment, which names the build and the TAR's digest.
    let Some(signed) = kiln_artifact::parse_build_comment(&good.trusted_comment) else {
        return Err(Failure::Unverified(format!(
            "the signature's trusted comment {:?} does not name a Kiln build",
            good.trusted_comment
        ))
        .into());
    };
    if signed.key != build.key {
        return Err(
            Failure::Unverified(format!("the artifact is signed as build {}, not {}", signed.key, build.key)).into()
        );
    }
    if signed.sha256 != tar_sha256 {
        return Err(Failure::Unverified(format!(
            "the artifact's SHA-256 is {tar_sha256}, the signed one {}",
            signed.sha256
        ))
        .into());
    }

    let written = if out.artifact {
        let sig_path = signature_path(&dest);
        let mut sig = tempfile::Builder::new().prefix(".kiln-").suffix(".minisig.part").tempfile_in(&dir)?;
        sig.write_all(signature.as_bytes())?;
        sig.as_file().set_permissions(std::fs::Permissions::from_mode(0o644))?;
        tar.as_file().set_permissions(std::fs::Permissions::from_mode(0o644))?;
        sig.persist(&sig_path).with_context(|| format!("writing {}", sig_path.display()))?;
        tar.persist(&dest).with_context(|| format!("writing {}", dest.display()))?;
        Written {
            path: dest,
            signature: Some(sig_path),
            size: tar_size,
            sha256: tar_sha256,
            key_id: good.key_id,
            trusted_comment: good.trusted_comment,
        }
    } else {
        let name = binary_name(build)?;
        let bin = tempfile::Builder::new().prefix(".kiln-").suffix(".part").tempfile_in(&dir)?;
        let file = tar.as_file_mut();
        file.rewind()?;
        let mut hashing = HashingWriter::new(BufWriter::new(bin.as_file()));
        kiln_artifact::extract_file_to(BufReader::new(&*file), name, &mut hashing)
            .with_context(|| format!("extracting {name} from the verified artifact"))?;
        let (buffered, sha256, size) = hashing.finish();
        buffered.into_inner().map_err(|e| e.into_error())?.sync_all()?;
        bin.as_file().set_permissions(std::fs::Permissions::from_mode(0o755))?;
        bin.persist(&dest).with_context(|| format!("writing {}", dest.display()))?;
        Written {
            path: dest,
            signature: None,
            size,
            sha256,
            key_id: good.key_id,
            trusted_comment: good.trusted_comment,
        }
    };
    Ok(written)
}

/// The failure of a build whose files cannot be downloaded (yet).
pub fn check_ready(build: &Build) -> Result<(), Failure> {
    match build.state {
        BuildState::Succeeded => Ok(()),
        BuildState::Failed | BuildState::Cancelled => Err(build.failure()),
        state => Err(Failure::NotReady { key: build.key.to_string(), state: state.to_string() }),
    }
}

async fn download_signature(server: &Server, build: &Build) -> anyhow::Result<String> {
    let mut res = api::object(server, &build.key, "artifact.minisig").await?;
    let mut bytes = Vec::new();
    while let Some(chunk) = next_chunk(&mut res).await? {
        bytes.extend_from_slice(&chunk);
        if bytes.len() > MAX_SIGNATURE {
            return Err(Failure::Unverified(format!("the signature is over {MAX_SIGNATURE} bytes")).into());
        }
    }
    String::from_utf8(bytes).map_err(|_| Failure::Unverified("the signature is not text".into()).into())
}

/// Stream the artifact into `file`; returns its SHA-256 and size.
async fn download_to(server: &Server, build: &Build, file: &mut File) -> anyhow::Result<(String, u64)> {
    let mut res = api::object(server, &build.key, "artifact").await?;
    let mut hashing = HashingWriter::new(BufWriter::with_capacity(1 << 20, file));
    while let Some(chunk) = next_chunk(&mut res).await? {
        hashing.write_all(&chunk).context("writing the downloaded artifact")?;
    }
    let (buffered, sha256, size) = hashing.finish();
    buffered.into_inner().map_err(|e| e.into_error())?.sync_all()?;
    Ok((sha256, size))
}

/// The main binary's name in the artifact: one plain file name.
fn binary_name(build: &Build) -> anyhow::Result<&str> {
    let name = build.binary_name().ok_or_else(|| {
        Failure::Protocol(format!("build {} does not name its main binary (artifact.binary.name)", build.key))
    })?;
    let mut parts = Path::new(name).components();
    let plain = matches!((parts.next(), parts.next()), (Some(Component::Normal(_)), None));
    if !plain || name.starts_with('.') || name.len() > 255 {
        return Err(Failure::Protocol(format!("build {} names its binary {name:?}, not a file name", build.key)).into());
    }
    Ok(name)
}

/// `-o`, a directory in it, or the default name in the current directory.
fn destination(build: &Build, out: &Output) -> anyhow::Result<PathBuf> {
    match &out.path {
        Some(p) if p.is_dir() => Ok(p.join(default_name(build, out.artifact)?)),
        Some(p) => Ok(p.clone()),
        None => Ok(PathBuf::from(default_name(build, out.artifact)?)),
    }
}

/// `<binary>_<os>_<arch>[<arm>]` as the compat API names it (without its
/// `_custom`), `.exe` on windows; `.tar` for the artifact.
pub fn default_name(build: &Build, artifact: bool) -> anyhow::Result<String> {
    let name = binary_name(build)?;
    let stem = name.strip_suffix(".exe").unwrap_or(name);
    let word = |s: &str| !s.is_empty() && s.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_');
    let arm = build.arm.as_deref().unwrap_or("");
    if !word(&build.os) || !word(&build.arch) || !(arm.is_empty() || word(arm)) {
        return Err(Failure::Protocol(format!("build {} has an odd platform {:?}", build.key, build.platform)).into());
    }
    let base = format!("{stem}_{}_{}{arm}", build.os, build.arch);
    Ok(if artifact {
        format!("{base}.tar")
    } else if build.os == "windows" {
        format!("{base}.exe")
    } else {
        base
    })
}

/// `<artifact>.minisig`.
fn signature_path(artifact: &Path) -> PathBuf {
    let mut s = artifact.as_os_str().to_owned();
    s.push(".minisig");
    PathBuf::from(s)
}
