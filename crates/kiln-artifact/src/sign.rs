//! minisign-compatible signing keys, signatures and their verification.
//!
//! Keys are made by [`keygen`]: an unencrypted secret key at `PATH` (mode
//! 0600; a build farm signs unattended, so there is no password to type) and
//! the public key at `PATH.pub` in minisign's own format. Signatures are
//! minisign's pre-hashed (`ED`) kind, so `minisign -Vm FILE -P KEY` accepts
//! them; their trusted comment names the build and the artifact's SHA-256
//! ([`build_comment`]), which the signature covers too.
//!
//! A linux build's container image has a signature of its own, made by the
//! same key when the build is made: over the bytes of its platform manifest,
//! with the trusted comment `kiln image <key> <platform> sha256:<manifest>`
//! ([`image_comment`], checked by [`verify_image`]). The artifact's signature
//! is left as it always was, so existing signatures and clients keep working;
//! see `kiln_image` for where it is stored and how a user checks an image.

use std::fmt;
use std::fs::OpenOptions;
use std::io::{self, Read, Seek, SeekFrom, Write};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

use kiln_domain::{BuildKey, OciDigest, Platform};
use minisign::{KeyPair, SecretKeyBox, SignatureBox};

use crate::ArtifactError;

/// The untrusted comment of Kiln's signatures (not covered by the signature).
const UNTRUSTED_COMMENT: &str = "signature from kiln secret key";
/// The comment line of Kiln's secret key files.
const SECRET_KEY_COMMENT: &str = "kiln secret key (unencrypted)";
/// minisign reads trusted comments of up to 8 KiB.
const MAX_TRUSTED_COMMENT: usize = 8192;

/// Where the public key of the secret key at `secret` lives: `<secret>.pub`.
pub fn public_key_path(secret: &Path) -> PathBuf {
    let mut p = secret.as_os_str().to_owned();
    p.push(".pub");
    p.into()
}

/// A minisign public key.
#[derive(Clone)]
pub struct PublicKey(minisign::PublicKey);

impl PublicKey {
    /// Parse a public key file's content (an `untrusted comment:` line, then
    /// the key) or the bare base64 key as `minisign -P` takes it.
    pub fn parse(text: &str) -> Result<Self, ArtifactError> {
        let line = text
            .lines()
            .map(str::trim)
            .rfind(|l| !l.is_empty() && !l.starts_with("untrusted comment:"))
            .ok_or_else(|| ArtifactError::InvalidKey("no public key found".into()))?;
        minisign::PublicKey::from_base64(line)
            .map(Self)
            .map_err(|e| ArtifactError::InvalidKey(format!("not a minisign public key: {e}")))
    }

    /// Read a public key file.
    pub fn from_file(path: &Path) -> Result<Self, ArtifactError> {
        let text = std::fs::read_to_string(path).map_err(ArtifactError::io(path))?;
        Self::parse(&text).map_err(|e| ArtifactError::InvalidKey(format!("{}: {e}", path.display())))
    }

    /// The key as one base64 line, the form `minisign -P` takes.
    pub fn to_base64(&self) -> String {
        self.0.to_base64()
    }

    /// The key in minisign's file format, as served at `/api/signing-key`.
    pub fn to_text(&self) -> String {
        format!("untrusted comment: minisign public key {}\n{}\n", self.key_id(), self.to_base64())
    }

    /// minisign's key id: 16 uppercase hex digits.
    pub fn key_id(&self) -> String {
        key_id(self.0.keynum())
    }
}

impl fmt::Debug for PublicKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "PublicKey({})", self.key_id())
    }
}

impl PartialEq for PublicKey {
    fn eq(&self, other: &Self) -> bool {
        self.to_base64() == other.to_base64()
    }
}

impl Eq for PublicKey {}

fn key_id(keynum: &[u8]) -> String {
    let mut id = [0u8; 8];
    id.copy_from_slice(&keynum[..8]);
    format!("{:016X}", u64::from_le_bytes(id))
}

/// Make a new key pair: the secret key at `secret` (mode 0600) and the public
/// key at `secret.pub`. Refuses to replace existing files unless `overwrite`.
pub fn keygen(secret: &Path, overwrite: bool) -> Result<PublicKey, ArtifactError> {
    let public = public_key_path(secret);
    if !overwrite {
        for p in [secret, public.as_path()] {
            if p.symlink_metadata().is_ok() {
                return Err(ArtifactError::KeyExists(p.to_path_buf()));
            }
        }
    }
    // An empty password leaves the key unencrypted but, unlike
    // `generate_unencrypted_keypair`, writes the checksum that loading checks.
    let KeyPair { pk, sk } =
        KeyPair::generate_encrypted_keypair(Some(String::new())).map_err(|e| ArtifactError::Sign(e.to_string()))?;
    let sk_text = sk.to_box(Some(SECRET_KEY_COMMENT)).map_err(|e| ArtifactError::Sign(e.to_string()))?.into_string();
    let pk = PublicKey(pk);

    let mut opts = OpenOptions::new();
    opts.write(true).mode(0o600);
    if overwrite {
        opts.create(true).truncate(true);
    } else {
        opts.create_new(true);
    }
    let mut f = opts.open(secret).map_err(ArtifactError::io(secret))?;
    f.write_all(sk_text.as_bytes()).and_then(|()| f.sync_all()).map_err(ArtifactError::io(secret))?;
    std::fs::write(&public, pk.to_text()).map_err(ArtifactError::io(&public))?;
    Ok(pk)
}

/// Signs artifacts with a secret key made by [`keygen`].
pub struct Signer {
    secret: minisign::SecretKey,
    public: PublicKey,
}

impl fmt::Debug for Signer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Signer({})", self.public.key_id())
    }
}

impl Signer {
    /// Load the unencrypted secret key at `path`. When `path.pub` exists it
    /// must hold the matching public key, so the key served to users is the
    /// one that signs.
    pub fn load(path: &Path) -> Result<Self, ArtifactError> {
        let text = std::fs::read_to_string(path).map_err(ArtifactError::io(path))?;
        let secret =
            SecretKeyBox::from_string(&text).and_then(|b| b.into_secret_key(Some(String::new()))).map_err(|e| {
                ArtifactError::InvalidKey(format!(
                    "{}: not an unencrypted minisign secret key ({e}); make one with `kiln keygen -o PATH`",
                    path.display()
                ))
            })?;
        let public = minisign::PublicKey::from_secret_key(&secret)
            .map(PublicKey)
            .map_err(|e| ArtifactError::InvalidKey(format!("{}: {e}", path.display())))?;
        let pub_path = public_key_path(path);
        if pub_path.exists() {
            let on_disk = PublicKey::from_file(&pub_path)?;
            if on_disk != public {
                return Err(ArtifactError::InvalidKey(format!(
                    "{} does not belong to the secret key {}",
                    pub_path.display(),
                    path.display()
                )));
            }
        }
        Ok(Self { secret, public })
    }

    pub fn public_key(&self) -> &PublicKey {
        &self.public
    }

    /// The public key in minisign's file format.
    pub fn public_key_text(&self) -> String {
        self.public.to_text()
    }

    /// Sign everything `data` yields; returns the `.minisig` file's text.
    /// `trusted_comment` is one line, covered by the signature.
    pub fn sign(&self, data: impl Read, trusted_comment: &str) -> Result<String, ArtifactError> {
        if trusted_comment.contains(['\n', '\r', '\0']) || trusted_comment.len() > MAX_TRUSTED_COMMENT {
            return Err(ArtifactError::InvalidComment(format!("one line of at most {MAX_TRUSTED_COMMENT} bytes")));
        }
        let mut data = ErrorKeepingReader { inner: data, error: None };
        let signed = minisign::sign(
            Some(&self.public.0),
            &self.secret,
            &mut data,
            Some(trusted_comment),
            Some(UNTRUSTED_COMMENT),
        );
        if let Some(e) = data.error {
            return Err(ArtifactError::ReadWrite(e));
        }
        Ok(signed.map_err(|e| ArtifactError::Sign(e.to_string()))?.into_string())
    }

    /// Sign the file at `path`.
    pub fn sign_file(&self, path: &Path, trusted_comment: &str) -> Result<String, ArtifactError> {
        let f = std::fs::File::open(path).map_err(ArtifactError::io(path))?;
        self.sign(io::BufReader::with_capacity(1 << 20, f), trusted_comment)
    }
}

/// What a good signature tells.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VerifiedSignature {
    /// The trusted comment, covered by the signature.
    pub trusted_comment: String,
    /// The id of the key that made it.
    pub key_id: String,
}

/// Check that `signature` (a `.minisig` file's text) was made by `key` over
/// exactly the bytes of `data`, trusted comment included.
///
/// A malformed signature, one made by another key, or one that does not
/// match is [`ArtifactError::BadSignature`]; a failure to read `data` is an
/// I/O error.
pub fn verify(key: &PublicKey, data: impl Read + Seek, signature: &str) -> Result<VerifiedSignature, ArtifactError> {
    let sig = SignatureBox::from_string(signature)
        .map_err(|e| ArtifactError::BadSignature(format!("not a minisign signature: {e}")))?;
    let mut data = ErrorKeepingReader { inner: data, error: None };
    let checked = minisign::verify(&key.0, &sig, &mut data, true, false, false);
    if let Some(e) = data.error {
        return Err(ArtifactError::ReadWrite(e));
    }
    checked.map_err(|e| ArtifactError::BadSignature(e.to_string()))?;
    let trusted_comment = sig.trusted_comment().map_err(|e| ArtifactError::BadSignature(e.to_string()))?;
    Ok(VerifiedSignature { trusted_comment, key_id: key.key_id() })
}

/// The trusted comment of a build's artifact signature:
/// `kiln build <key> sha256:<hex>`.
pub fn build_comment(key: &BuildKey, sha256_hex: &str) -> String {
    format!("kiln build {key} sha256:{sha256_hex}")
}

/// The parts of a trusted comment made by [`build_comment`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BuildComment {
    pub key: BuildKey,
    /// Lowercase hex SHA-256 of the signed artifact.
    pub sha256: String,
}

/// Read a trusted comment made by [`build_comment`]; `None` for any other text.
pub fn parse_build_comment(comment: &str) -> Option<BuildComment> {
    let rest = comment.strip_prefix("kiln build ")?;
    let (key, sha) = rest.split_once(" sha256:")?;
    let key = BuildKey::parse(key).ok()?;
    let ok = sha.len() == 64 && sha.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'));
    ok.then(|| BuildComment { key, sha256: sha.to_owned() })
}

/// The trusted comment of a build's image signature:
/// `kiln image <key> <platform> sha256:<manifest hex>`. The signature is made
/// over the bytes of the platform's image manifest exactly as the registry
/// serves them, so it covers the config and every layer by their digests.
pub fn image_comment(key: &BuildKey, platform: &Platform, manifest: &OciDigest) -> String {
    format!("kiln image {key} {platform} {manifest}")
}

/// The parts of a trusted comment made by [`image_comment`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ImageComment {
    pub key: BuildKey,
    pub platform: Platform,
    /// The digest of the signed manifest.
    pub manifest: OciDigest,
}

/// Read a trusted comment made by [`image_comment`]; `None` for any other text.
pub fn parse_image_comment(comment: &str) -> Option<ImageComment> {
    let mut words = comment.strip_prefix("kiln image ")?.split(' ');
    let key = BuildKey::parse(words.next()?).ok()?;
    let platform = words.next()?.parse().ok()?;
    let manifest = OciDigest::parse(words.next()?).ok()?;
    words.next().is_none().then_some(ImageComment { key, platform, manifest })
}

/// Check a build's image signature: `signature` was made by `key` over
/// exactly `manifest` (the manifest's bytes as served), its trusted comment
/// is an [`image_comment`], and the digest it names is the digest of those
/// bytes. Returns what the comment says; the caller compares the build key
/// and the digest it expected.
pub fn verify_image(key: &PublicKey, manifest: &[u8], signature: &str) -> Result<ImageComment, ArtifactError> {
    let verified = verify(key, io::Cursor::new(manifest), signature)?;
    let comment = parse_image_comment(&verified.trusted_comment).ok_or_else(|| {
        ArtifactError::BadSignature(format!(
            "the trusted comment {:?} is not a Kiln image signature's",
            verified.trusted_comment.chars().take(120).collect::<String>()
        ))
    })?;
    let actual = OciDigest::of(manifest);
    if comment.manifest != actual {
        return Err(ArtifactError::BadSignature(format!(
            "the signature names manifest {} but the manifest is {actual}",
            comment.manifest
        )));
    }
    Ok(comment)
}

/// Passes reads through and keeps the first I/O error, which minisign would
/// otherwise fold into its own error type.
struct ErrorKeepingReader<R> {
    inner: R,
    error: Option<io::Error>,
}

impl<R: Read> Read for ErrorKeepingReader<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        self.inner.read(buf).inspect_err(|e| {
            self.error.get_or_insert_with(|| io::Error::new(e.kind(), e.to_string()));
        })
    }
}

impl<R: Seek> Seek for ErrorKeepingReader<R> {
    fn seek(&mut self, pos: SeekFrom) -> io::Result<u64> {
        self.inner.seek(pos)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn image_comments_round_trip_and_reject_other_text() {
        let key = BuildKey::parse(&"ab".repeat(32)).unwrap();
        let platform: Platform = "linux/arm/7".parse().unwrap();
        let digest = OciDigest::of(b"{}");
        let c = image_comment(&key, &platform, &digest);
        assert_eq!(c, format!("kiln image {key} linux/arm/7 {digest}"));
        let parsed = parse_image_comment(&c).unwrap();
        assert_eq!((parsed.key, parsed.platform, parsed.manifest), (key.clone(), platform, digest.clone()));
        for bad in [
            format!("kiln image {key} linux/arm/7 {digest} extra"),
            format!("kiln image {key} linux/arm/7"),
            format!("kiln image {key} Linux/amd64 {digest}"),
            format!("kiln image {key} linux/amd64 sha256:{}", "A".repeat(64)),
            format!("kiln build {key} {digest}"),
            build_comment(&key, digest.hex()),
        ] {
            assert_eq!(parse_image_comment(&bad), None, "{bad}");
        }
        assert_eq!(parse_build_comment(&c), None, "an image comment is no artifact comment");
    }

    #[test]
    fn build_comments_round_trip_and_reject_other_text() {
        let key = BuildKey::parse(&"ab".repeat(32)).unwrap();
        let sha = "0f".repeat(32);
        let c = build_comment(&key, &sha);
        assert_eq!(parse_build_comment(&c), Some(BuildComment { key, sha256: sha }));
        assert_eq!(parse_build_comment("timestamp:1234"), None);
        assert_eq!(parse_build_comment(&format!("kiln build {} sha256:xyz", "ab".repeat(32))), None);
    }
}
