//! API tokens of a private farm: their scopes and their secret's shape.
//!
//! A token is `kiln_` followed by 64 lowercase hex digits (256 random bits,
//! made by the caller: this crate does no I/O). Only its SHA-256
//! ([`TokenSecret::hash`]) is stored; the secret itself is shown once, when
//! it is made, and never printed again ([`TokenSecret`]'s `Debug` is
//! redacted).

use std::collections::BTreeSet;
use std::fmt;
use std::str::FromStr;

use sha2::{Digest, Sha256};

use crate::ValidationError;

/// What a token may do. Each scope stands alone: `admin` does not imply
/// the others (the configuration's admin token has all three).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Scope {
    /// Read builds and download what they made: compat hits, artifacts,
    /// logs, image pulls.
    Download,
    /// Anything that may start a build: `POST /api/builds`, a compat miss,
    /// a pull of an image not built yet.
    Submit,
    /// Cancel and retry builds.
    Admin,
}

impl Scope {
    pub const ALL: [Scope; 3] = [Scope::Download, Scope::Submit, Scope::Admin];

    pub fn as_str(self) -> &'static str {
        match self {
            Scope::Download => "download",
            Scope::Submit => "submit",
            Scope::Admin => "admin",
        }
    }
}

impl fmt::Display for Scope {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for Scope {
    type Err = ValidationError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Scope::ALL.into_iter().find(|c| c.as_str() == s).ok_or_else(|| {
            ValidationError::new(
                "scopes",
                "invalid_scope",
                format!("unknown scope {s:?}; scopes are download, submit, admin"),
            )
        })
    }
}

/// A set of scopes, parsed from `submit,download`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Scopes(BTreeSet<Scope>);

impl Scopes {
    pub fn all() -> Scopes {
        Scopes(Scope::ALL.into_iter().collect())
    }

    pub fn contains(&self, scope: Scope) -> bool {
        self.0.contains(&scope)
    }

    pub fn iter(&self) -> impl Iterator<Item = Scope> + '_ {
        self.0.iter().copied()
    }

    /// The scopes as their names, in a fixed order.
    pub fn names(&self) -> Vec<&'static str> {
        self.iter().map(Scope::as_str).collect()
    }

    /// Parse a comma-separated list (at least one scope).
    pub fn parse_list(list: &str) -> Result<Scopes, ValidationError> {
        Scopes::from_names(list.split(',').map(str::trim).filter(|s| !s.is_empty()))
    }

    /// Parse scope names, one each (at least one scope; repeats count once).
    pub fn from_names<'a>(names: impl IntoIterator<Item = &'a str>) -> Result<Scopes, ValidationError> {
        let scopes: BTreeSet<Scope> = names.into_iter().map(Scope::from_str).collect::<Result<_, _>>()?;
        if scopes.is_empty() {
            return Err(ValidationError::new(
                "scopes",
                "invalid_scope",
                "give at least one of download, submit, admin",
            ));
        }
        Ok(Scopes(scopes))
    }
}

impl FromIterator<Scope> for Scopes {
    fn from_iter<I: IntoIterator<Item = Scope>>(iter: I) -> Self {
        Scopes(iter.into_iter().collect())
    }
}

impl fmt::Display for Scopes {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.names().join(","))
    }
}

/// The prefix every token starts with (so scanners and people recognise one).
pub const TOKEN_PREFIX: &str = "kiln_";
const SECRET_HEX: usize = 64;

/// A token's secret. `Debug` never shows it; [`TokenSecret::expose`] does.
#[derive(Clone, PartialEq, Eq)]
pub struct TokenSecret(String);

impl TokenSecret {
    /// A new secret from 32 random bytes.
    pub fn from_random(bytes: [u8; 32]) -> TokenSecret {
        TokenSecret(format!("{TOKEN_PREFIX}{}", hex::encode(bytes)))
    }

    /// Text a client presented, if it has a token's shape.
    pub fn parse(text: &str) -> Option<TokenSecret> {
        let hex = text.strip_prefix(TOKEN_PREFIX)?;
        (hex.len() == SECRET_HEX && hex.bytes().all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b)))
            .then(|| TokenSecret(text.to_owned()))
    }

    /// The SHA-256 stored for the token.
    pub fn hash(&self) -> [u8; 32] {
        Sha256::digest(self.0.as_bytes()).into()
    }

    /// The secret itself, to show once.
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for TokenSecret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("TokenSecret([redacted])")
    }
}

/// A token's name: 1 to 100 printable characters.
pub fn check_token_name(name: &str) -> Result<(), ValidationError> {
    if name.trim().is_empty() || name.chars().count() > 100 || name.chars().any(char::is_control) {
        return Err(ValidationError::new("name", "invalid_name", "a token's name is 1 to 100 printable characters"));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn scopes_parse_and_print_in_a_fixed_order() {
        let s = Scopes::parse_list("submit, download").unwrap();
        assert!(s.contains(Scope::Submit) && s.contains(Scope::Download) && !s.contains(Scope::Admin));
        assert_eq!(s.to_string(), "download,submit");
        assert_eq!(Scopes::parse_list("admin,nuke").unwrap_err().code, "invalid_scope");
        assert!(Scopes::parse_list(" , ").is_err());
    }

    #[test]
    fn secrets_have_one_shape_and_never_print() {
        let t = TokenSecret::from_random([0xab; 32]);
        assert_eq!(t.expose().len(), TOKEN_PREFIX.len() + 64);
        assert_eq!(TokenSecret::parse(t.expose()), Some(t.clone()));
        assert!(!format!("{t:?}").contains("abab"));
        for bad in ["", "kiln_", "kiln_xyz", &t.expose().to_uppercase(), &format!("{}0", t.expose())] {
            assert!(TokenSecret::parse(bad).is_none(), "{bad}");
        }
        assert_ne!(t.hash(), TokenSecret::from_random([0xac; 32]).hash());
    }
}
