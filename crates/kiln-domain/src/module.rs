//! Go module paths, validated by the rules the Go toolchain applies, a little
//! stricter where it keeps shells, URLs and storage paths safe.

use std::fmt;

use serde::{Deserialize, Serialize};

use crate::ValidationError;

/// The longest module path accepted.
pub(crate) const MAX_MODULE_LEN: usize = 256;

/// A validated Go module path such as `github.com/caddy-dns/cloudflare`.
///
/// Rules: 1 to [`MAX_MODULE_LEN`] bytes of ASCII; elements separated by `/`,
/// none empty, none `.` or `..`, none starting with `.` or `-` or ending in
/// `.`; element characters are letters, digits and `-._~`; the first element
/// is a lowercase host name with at least one dot.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize)]
#[serde(transparent)]
pub struct ModulePath(String);

impl ModulePath {
    pub fn parse(field: &str, s: &str) -> Result<Self, ValidationError> {
        let bad = |why: &str| {
            ValidationError::new(
                field,
                "invalid_module",
                format!("{:?} is not a valid Go module path: {why}", truncate(s)),
            )
        };
        if s.is_empty() {
            return Err(bad("it is empty"));
        }
        if s.len() > MAX_MODULE_LEN {
            return Err(bad(&format!("longer than {MAX_MODULE_LEN} characters")));
        }
        for (i, elem) in s.split('/').enumerate() {
            if elem.is_empty() {
                return Err(bad("empty path element"));
            }
            if elem == "." || elem == ".." {
                return Err(bad("'.' and '..' are not allowed"));
            }
            if elem.starts_with('.') || elem.starts_with('-') || elem.ends_with('.') {
                return Err(bad("an element may not start with '.' or '-' or end with '.'"));
            }
            if let Some(c) = elem.chars().find(|c| !(c.is_ascii_alphanumeric() || matches!(c, '-' | '.' | '_' | '~'))) {
                return Err(bad(&format!("character {c:?} is not allowed")));
            }
            if i == 0 {
                if !elem.contains('.') {
                    return Err(bad("the first element must be a host name with a dot"));
                }
                if !elem.chars().all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || matches!(c, '-' | '.')) {
                    return Err(bad("the host name must be lowercase letters, digits, '-' and '.'"));
                }
            }
        }
        Ok(Self(s.to_owned()))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// The path with upper-case letters escaped as the Go module proxy
    /// protocol wants them (`A` becomes `!a`).
    pub fn proxy_escaped(&self) -> String {
        proxy_escape(&self.0)
    }
}

/// Case-escape a module path or version for the Go module proxy protocol:
/// every upper-case letter `A` becomes `!a`.
pub fn proxy_escape(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        if c.is_ascii_uppercase() {
            out.push('!');
            out.push(c.to_ascii_lowercase());
        } else {
            out.push(c);
        }
    }
    out
}

impl fmt::Display for ModulePath {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl<'de> Deserialize<'de> for ModulePath {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        ModulePath::parse("module", &s).map_err(serde::de::Error::custom)
    }
}

/// Shorten user input quoted back in an error message.
pub(crate) fn truncate(s: &str) -> String {
    const MAX: usize = 80;
    if s.len() <= MAX {
        return s.to_owned();
    }
    let mut end = MAX;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}…", &s[..end])
}

/// Does `module` match an allow-list `pattern`? `*` matches within one path
/// element, a trailing `/**` matches any number of further elements.
pub(crate) fn pattern_matches(pattern: &str, module: &str) -> bool {
    if let Some(prefix) = pattern.strip_suffix("/**") {
        return module.strip_prefix(prefix).is_some_and(|rest| rest.starts_with('/'))
            || pattern_matches(prefix, module);
    }
    let pat: Vec<&str> = pattern.split('/').collect();
    let got: Vec<&str> = module.split('/').collect();
    pat.len() == got.len() && pat.iter().zip(&got).all(|(p, g)| glob_element(p, g))
}

fn glob_element(pattern: &str, text: &str) -> bool {
    match pattern.split_once('*') {
        None => pattern == text,
        Some((head, tail)) => {
            let Some(rest) = text.strip_prefix(head) else {
                return false;
            };
            (0..=rest.len()).filter(|i| rest.is_char_boundary(*i)).any(|i| glob_element(tail, &rest[i..]))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accepts_real_module_paths() {
        for ok in [
            "github.com/caddy-dns/cloudflare",
            "github.com/caddyserver/caddy/v2",
            "example.com/greet",
            "github.com/BurntSushi/toml",
            "go.uber.org/zap",
        ] {
            assert!(ModulePath::parse("p", ok).is_ok(), "{ok}");
        }
    }

    #[test]
    fn refuses_nasty_module_paths() {
        let long = format!("example.com/{}", "a".repeat(1000));
        for bad in [
            "",
            "example.com/a b",
            "example.com/a;rm -rf /",
            "example.com/$(id)",
            "example.com/`id`",
            "example.com/../etc",
            "example.com/./x",
            "Example.COM/greet",
            "-example.com/greet",
            "example.com/-x",
            "localhost/x",
            "example.com//x",
            "example.com/x\0",
            "example.com/x\n",
            long.as_str(),
        ] {
            let err = ModulePath::parse("plugins[0].module", bad).unwrap_err();
            assert_eq!(err.field, "plugins[0].module");
            assert_eq!(err.code, "invalid_module");
        }
    }

    #[test]
    fn escapes_upper_case_for_the_proxy() {
        let m = ModulePath::parse("p", "github.com/BurntSushi/toml").unwrap();
        assert_eq!(m.proxy_escaped(), "github.com/!burnt!sushi/toml");
    }

    #[test]
    fn patterns() {
        assert!(pattern_matches("example.com/*", "example.com/greet"));
        assert!(!pattern_matches("example.com/*", "example.com/greet/v2"));
        assert!(pattern_matches("github.com/**", "github.com/a/b/c"));
        assert!(pattern_matches("github.com/caddy-*/*", "github.com/caddy-dns/x"));
        assert!(!pattern_matches("github.com/caddy-*/*", "github.com/other/x"));
        assert!(pattern_matches("example.com/greet", "example.com/greet"));
        assert!(!pattern_matches("example.com/greet", "example.com/shout"));
    }
}
