//! The content address of a build.

use std::fmt;

use serde::{Deserialize, Serialize};

use crate::ValidationError;

/// Length of a build key in hex characters (a SHA-256 truncated to 128 bits
/// would do, but the full digest costs nothing and never collides).
pub(crate) const KEY_LEN: usize = 64;

/// A build key: the lowercase hex SHA-256 of a resolved [`crate::BuildSpec`].
///
/// A `BuildKey` can only be made from a digest or by [`BuildKey::parse`],
/// which accepts exactly 64 lowercase hex characters. It is therefore always
/// safe to use as a path segment, an object-store prefix or a SQL parameter.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize)]
#[serde(transparent)]
pub struct BuildKey(String);

impl BuildKey {
    pub fn from_digest(digest: &[u8; 32]) -> Self {
        Self(hex::encode(digest))
    }

    pub fn parse(s: &str) -> Result<Self, ValidationError> {
        if is_sha256_hex(s) {
            Ok(Self(s.to_owned()))
        } else {
            Err(ValidationError::new(
                "key",
                "invalid_key",
                format!("a build key is {KEY_LEN} lowercase hex characters"),
            ))
        }
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// A short form for logs and file names.
    pub fn short(&self) -> &str {
        &self.0[..12]
    }
}

/// Exactly 64 lowercase hex characters.
pub(crate) fn is_sha256_hex(s: &str) -> bool {
    s.len() == KEY_LEN && s.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'))
}

impl fmt::Display for BuildKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl<'de> Deserialize<'de> for BuildKey {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        BuildKey::parse(&s).map_err(serde::de::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parse_accepts_only_lowercase_hex_of_the_right_length() {
        let good = "a".repeat(64);
        assert!(BuildKey::parse(&good).is_ok());
        for bad in [
            "".to_string(),
            "A".repeat(64),
            "a".repeat(63),
            "a".repeat(65),
            format!("{}/..", "a".repeat(61)),
            format!("{}\0", "a".repeat(63)),
            "../".repeat(30),
        ] {
            assert!(BuildKey::parse(&bad).is_err(), "accepted {bad:?}");
        }
    }
}
