//! Content digests as OCI images name blobs: `sha256:<64 lowercase hex>`.

use std::fmt;

use serde::{Deserialize, Serialize};
use sha2::{Digest as _, Sha256};

use crate::image_ref::{ImageRefError, RegistryCode};
use crate::module::truncate;

/// The only algorithm Kiln makes and accepts.
pub const ALGORITHM: &str = "sha256";

/// A validated `sha256:<64 lowercase hex>` digest.
///
/// Made only by hashing bytes or by [`OciDigest::parse`], so it is always
/// safe as a path segment or an object-store key (`blobs/sha256/<hex>`).
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize)]
#[serde(transparent)]
pub struct OciDigest(String);

impl OciDigest {
    /// The digest of `data`.
    pub fn of(data: &[u8]) -> Self {
        Self::from_sha256(&Sha256::digest(data).into())
    }

    /// The digest whose SHA-256 is `sha256`.
    pub fn from_sha256(sha256: &[u8; 32]) -> Self {
        Self(format!("{ALGORITHM}:{}", hex::encode(sha256)))
    }

    /// A digest from the lowercase hex of a SHA-256, as `kiln_artifact`'s
    /// hashing writers give it.
    pub fn from_hex(hex: &str) -> Result<Self, ImageRefError> {
        Self::parse(&format!("{ALGORITHM}:{hex}"))
    }

    /// Parse `sha256:<64 lowercase hex>`; anything else is `DIGEST_INVALID`.
    pub fn parse(s: &str) -> Result<Self, ImageRefError> {
        let bad = |why: &str| {
            ImageRefError::new(RegistryCode::DigestInvalid, format!("digest {:?} is invalid: {why}", truncate(s)))
        };
        let Some((algorithm, hex)) = s.split_once(':') else {
            return Err(bad("a digest is sha256:<64 lowercase hex digits>"));
        };
        if algorithm != ALGORITHM {
            return Err(bad("only sha256 digests are supported"));
        }
        if hex.len() != 64 {
            return Err(bad(&format!("a sha256 digest has 64 hex digits, not {}", hex.len())));
        }
        if !hex.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f')) {
            return Err(bad("the hex digits must be 0-9 and lowercase a-f"));
        }
        Ok(Self(s.to_owned()))
    }

    /// `sha256:<hex>`.
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// The 64 hex digits alone.
    pub fn hex(&self) -> &str {
        &self.0[ALGORITHM.len() + 1..]
    }
}

impl fmt::Display for OciDigest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl<'de> Deserialize<'de> for OciDigest {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        OciDigest::parse(&s).map_err(|e| serde::de::Error::custom(e.message))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hashes_and_parses_only_lowercase_sha256() {
        let d = OciDigest::of(b"abc");
        assert_eq!(d.as_str(), "sha256:ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad");
        assert_eq!(d.hex(), "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad");
        assert_eq!(OciDigest::parse(d.as_str()).unwrap(), d);
        assert_eq!(OciDigest::from_hex(d.hex()).unwrap(), d);
        let json = serde_json::to_string(&d).unwrap();
        assert_eq!(serde_json::from_str::<OciDigest>(&json).unwrap(), d);
        for bad in [
            String::new(),
            "sha256".into(),
            "sha256:".into(),
            d.hex().to_owned(),
            d.as_str().to_uppercase(),
            format!("sha256:{}", d.hex().to_uppercase()),
            format!("sha512:{}", d.hex()),
            format!("{}0", d.as_str()),
            format!("sha256:{}/../x", &d.hex()[..59]),
            format!("sha256:{}\0", &d.hex()[..63]),
            "sha256:".to_owned() + &"é".repeat(32),
        ] {
            let err = OciDigest::parse(&bad).unwrap_err();
            assert_eq!(err.code, RegistryCode::DigestInvalid, "{bad:?}");
            assert!(err.message.len() < 250, "{}", err.message);
        }
        assert!(serde_json::from_str::<OciDigest>("\"sha256:xyz\"").is_err());
    }
}
