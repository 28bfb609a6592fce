//! A recipe's `oci` section: how a linux build becomes a container image.
//!
//! The image is the optional `base` image's layers (from the worker's Docker
//! engine) with one layer on top holding the main binary at `binary_path`
//! (default `/usr/bin/<binary>`) and the `files` the steps left in `out/`
//! (a CA bundle, a default configuration), with their parent directories.
//! Its config carries `entrypoint` (default: the binary), `cmd`, `env`,
//! `ports`, `workdir` and `user`; what the recipe leaves unset comes from the
//! base image's config (`Env` merged by name, `User`, `WorkingDir`).
//!
//! Every field is checked when the configuration is read. Unset fields are
//! left out of the recipe's serialized form, so adding a field here does not
//! change the revision (and build keys) of recipes that do not use it.

use std::collections::BTreeMap;
use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

use crate::ValidationError;
use crate::module::truncate;

/// The longest path a recipe may place in an image (it must fit a plain
/// USTAR header: a name of up to 100 bytes after a prefix of up to 155).
pub const MAX_IMAGE_PATH: usize = 150;
/// The longest component of such a path.
pub const MAX_PATH_COMPONENT: usize = 99;

/// How a recipe's builds become images. `oci: {}` takes every default.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct OciSpec {
    /// Where the main binary goes; default `/usr/bin/<binary>`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub binary_path: Option<ImagePath>,
    /// The entrypoint; default the binary alone. `[]` sets none.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub entrypoint: Option<Vec<String>>,
    /// The default arguments (`CMD`); none when unset.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cmd: Option<Vec<String>>,
    /// Environment variables; they replace the base image's of the same name.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub env: BTreeMap<String, String>,
    /// Exposed ports: `80`, `"443/tcp"`, `"443/udp"`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub ports: Vec<Port>,
    /// The working directory; the base image's when unset.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub workdir: Option<ImagePath>,
    /// `user`, `uid` or `uid:gid`; the base image's when unset (root without one).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub user: Option<String>,
    /// A base image in the worker's Docker engine whose layers go under the
    /// binary's. Rendered like a step argument (`{{ arch }}`, `{{ arm }}`…),
    /// so each platform can name its own.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub base: Option<String>,
    /// Use the base even when its platform is not the build's (a base of
    /// scripts and static tools for tests). The image's config always names
    /// the build's platform; without this, a mismatch fails the build.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub base_any_platform: bool,
    /// Files from `out/` to place in the image besides the binary.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub files: Vec<OciFile>,
}

/// A file the steps left in `out/`, and where it goes in the image.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct OciFile {
    /// Path relative to `out/` (as named in the artifact TAR).
    pub from: OutPath,
    /// Absolute path in the image.
    pub to: ImagePath,
}

impl OciSpec {
    /// Where the binary `binary_file` (the name in `out/`) goes in the image.
    pub fn binary_path(&self, binary_file: &str) -> Result<ImagePath, ValidationError> {
        match &self.binary_path {
            Some(p) => Ok(p.clone()),
            None => ImagePath::parse("oci.binary_path", &format!("/usr/bin/{binary_file}")),
        }
    }

    /// The entrypoint: as set, or the binary alone.
    pub fn entrypoint(&self, binary_file: &str) -> Result<Vec<String>, ValidationError> {
        match &self.entrypoint {
            Some(e) => Ok(e.clone()),
            None => Ok(vec![self.binary_path(binary_file)?.to_string()]),
        }
    }

    /// Checks across fields, for a recipe whose main binary is `binary_file`:
    /// text without NUL, sane variable and user names, and no two things
    /// placed at one path or under a file.
    pub fn check(&self, binary_file: &str) -> Result<(), ValidationError> {
        let bad = |field: &str, message: String| Err(ValidationError::new(field, "invalid_oci", message));
        for (field, list) in [("oci.entrypoint", &self.entrypoint), ("oci.cmd", &self.cmd)] {
            if list.iter().flatten().any(|a| a.contains('\0')) {
                return bad(field, "arguments may not contain NUL".into());
            }
        }
        for (k, v) in &self.env {
            let name_ok = k.len() <= 128
                && k.bytes()
                    .enumerate()
                    .all(|(i, b)| b == b'_' || b.is_ascii_alphabetic() || (i > 0 && b.is_ascii_digit()))
                && !k.is_empty();
            if !name_ok {
                return bad("oci.env", format!("{:?} is not a variable name (letters, digits, '_')", truncate(k)));
            }
            if v.contains('\0') {
                return bad(&format!("oci.env.{k}"), "values may not contain NUL".into());
            }
        }
        if let Some(user) = &self.user {
            let part = |s: &str| {
                !s.is_empty() && s.bytes().all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'-' | b'.'))
            };
            let ok = user.len() <= 64
                && match user.split_once(':') {
                    Some((u, g)) => part(u) && part(g),
                    None => part(user),
                };
            if !ok {
                return bad("oci.user", format!("{:?} is not user, uid or uid:gid", truncate(user)));
            }
        }
        if let Some(base) = &self.base
            && (base.trim().is_empty() || base.len() > 255 || base.chars().any(|c| c.is_whitespace() || c.is_control()))
        {
            return bad("oci.base", "an image name such as debian:bookworm-slim, without spaces".into());
        }
        let mut placed = vec![("oci.binary_path".to_owned(), self.binary_path(binary_file)?)];
        for (i, f) in self.files.iter().enumerate() {
            placed.push((format!("oci.files[{i}].to"), f.to.clone()));
        }
        for (i, (field, path)) in placed.iter().enumerate() {
            for (other_field, other) in &placed[..i] {
                if path == other {
                    return bad(field, format!("{path} is already placed by {other_field}"));
                }
                if path.is_under(other) || other.is_under(path) {
                    return bad(field, format!("{path} and {other} ({other_field}) would be a file and a directory"));
                }
            }
        }
        Ok(())
    }
}

/// Check a `/`-separated path's components: not empty, not `.` or `..`,
/// plain characters, short enough for a USTAR header.
fn check_components(s: &str) -> Result<(), String> {
    for c in s.split('/') {
        if c.is_empty() {
            return Err("has an empty component (a doubled or trailing '/')".into());
        }
        if c == "." || c == ".." {
            return Err("'.' and '..' are not allowed".into());
        }
        if c.len() > MAX_PATH_COMPONENT {
            return Err(format!("a component is longer than {MAX_PATH_COMPONENT} bytes"));
        }
        if let Some(ch) = c.chars().find(|ch| !(ch.is_ascii_alphanumeric() || "._-+@~=,:".contains(*ch))) {
            return Err(format!("character {ch:?} is not allowed (letters, digits and ._-+@~=,: are)"));
        }
    }
    Ok(())
}

/// An absolute, normalized path inside an image, such as `/usr/bin/caddy`.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize)]
#[serde(transparent)]
pub struct ImagePath(String);

impl ImagePath {
    pub fn parse(field: &str, s: &str) -> Result<Self, ValidationError> {
        let bad = |why: String| {
            ValidationError::new(
                field,
                "invalid_path",
                format!("{:?} is not an absolute path in the image: {why}", truncate(s)),
            )
        };
        let rel = s.strip_prefix('/').ok_or_else(|| bad("it must start with '/'".into()))?;
        if s.len() > MAX_IMAGE_PATH {
            return Err(bad(format!("longer than {MAX_IMAGE_PATH} bytes")));
        }
        check_components(rel).map_err(bad)?;
        Ok(Self(s.to_owned()))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// The path without its leading `/`, as a layer's TAR names it.
    pub fn relative(&self) -> &str {
        &self.0[1..]
    }

    /// Is this path strictly below `dir`?
    pub fn is_under(&self, dir: &ImagePath) -> bool {
        self.0.strip_prefix(&dir.0).is_some_and(|rest| rest.starts_with('/'))
    }
}

impl fmt::Display for ImagePath {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl<'de> Deserialize<'de> for ImagePath {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        ImagePath::parse("path", &s).map_err(|e| serde::de::Error::custom(e.message))
    }
}

/// A relative path inside `out/` (and so inside the artifact TAR), such as
/// `ca-certificates.crt` or `conf/Caddyfile`.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize)]
#[serde(transparent)]
pub struct OutPath(String);

impl OutPath {
    pub fn parse(field: &str, s: &str) -> Result<Self, ValidationError> {
        let bad = |why: String| {
            ValidationError::new(field, "invalid_path", format!("{:?} is not a path inside out/: {why}", truncate(s)))
        };
        if s.starts_with('/') {
            return Err(bad("it must be relative to out/, without a leading '/'".into()));
        }
        if s.len() > MAX_IMAGE_PATH {
            return Err(bad(format!("longer than {MAX_IMAGE_PATH} bytes")));
        }
        check_components(s).map_err(bad)?;
        Ok(Self(s.to_owned()))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for OutPath {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl<'de> Deserialize<'de> for OutPath {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        OutPath::parse("from", &s).map_err(|e| serde::de::Error::custom(e.message))
    }
}

/// A transport protocol of an exposed port.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Protocol {
    Tcp,
    Udp,
}

/// An exposed port, written `80`, `80/tcp` or `443/udp`; printed `80/tcp`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Port {
    pub number: u16,
    pub protocol: Protocol,
}

impl FromStr for Port {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        let (number, protocol) = match s.split_once('/') {
            None => (s, Protocol::Tcp),
            Some((n, "tcp")) => (n, Protocol::Tcp),
            Some((n, "udp")) => (n, Protocol::Udp),
            Some(_) => return Err(format!("{:?}: the protocol is tcp or udp", truncate(s))),
        };
        match number.parse::<u16>() {
            Ok(n) if n > 0 && !number.starts_with('0') => Ok(Port { number: n, protocol }),
            _ => Err(format!("{:?} is not a port: 1 to 65535, optionally /tcp or /udp", truncate(s))),
        }
    }
}

impl fmt::Display for Port {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let proto = match self.protocol {
            Protocol::Tcp => "tcp",
            Protocol::Udp => "udp",
        };
        write!(f, "{}/{proto}", self.number)
    }
}

impl Serialize for Port {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for Port {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        #[derive(Deserialize)]
        #[serde(untagged)]
        enum Raw {
            N(u64),
            S(String),
        }
        let text = match Raw::deserialize(d)? {
            Raw::N(n) => n.to_string(),
            Raw::S(s) => s,
        };
        text.parse().map_err(serde::de::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(yaml_json: serde_json::Value) -> OciSpec {
        serde_json::from_value(yaml_json).unwrap()
    }

    #[test]
    fn defaults_put_the_binary_in_usr_bin_as_the_entrypoint() {
        let s = OciSpec::default();
        assert_eq!(s.binary_path("hello").unwrap().as_str(), "/usr/bin/hello");
        assert_eq!(s.entrypoint("hello").unwrap(), ["/usr/bin/hello"]);
        assert!(s.check("hello").is_ok());
        let s = spec(serde_json::json!({"binary_path": "/opt/x/bin/x", "entrypoint": []}));
        assert_eq!(s.entrypoint("hello").unwrap(), Vec::<String>::new());
        assert_eq!(s.binary_path("hello").unwrap().relative(), "opt/x/bin/x");
    }

    #[test]
    fn unset_fields_stay_out_of_the_serialized_form() {
        assert_eq!(serde_json::to_string(&OciSpec::default()).unwrap(), "{}");
        let s = spec(serde_json::json!({"ports": [80, "443/udp"], "base_any_platform": true}));
        assert_eq!(serde_json::to_string(&s).unwrap(), r#"{"ports":["80/tcp","443/udp"],"base_any_platform":true}"#);
    }

    #[test]
    fn paths_are_absolute_plain_and_short() {
        for ok in ["/usr/bin/caddy", "/etc/ssl/certs/ca-certificates.crt", "/a", "/x/y+z@1~2=3,4:5"] {
            assert!(ImagePath::parse("p", ok).is_ok(), "{ok}");
        }
        let long = format!("/{}", "a/".repeat(80));
        let long_component = format!("/{}", "a".repeat(100));
        for bad in [
            "",
            "/",
            "usr/bin/x",
            "/usr//bin",
            "/usr/bin/",
            "/usr/../etc",
            "/./x",
            "/a b",
            "/a\0b",
            "/a\nb",
            "/a$(id)",
            "/ä",
            &long,
            &long_component,
        ] {
            let e = ImagePath::parse("oci.binary_path", bad).unwrap_err();
            assert_eq!((e.field.as_str(), e.code), ("oci.binary_path", "invalid_path"), "{bad:?}");
        }
        assert!(OutPath::parse("f", "conf/Caddyfile").is_ok());
        for bad in ["", "/etc/passwd", "../x", "a/../../x", "a//b", "."] {
            assert!(OutPath::parse("f", bad).is_err(), "{bad:?}");
        }
        let usr = ImagePath::parse("p", "/usr").unwrap();
        assert!(ImagePath::parse("p", "/usr/bin").unwrap().is_under(&usr));
        assert!(!ImagePath::parse("p", "/usrx").unwrap().is_under(&usr));
        assert!(!usr.is_under(&usr));
    }

    #[test]
    fn ports_parse_numbers_and_protocols() {
        assert_eq!("80".parse::<Port>().unwrap().to_string(), "80/tcp");
        assert_eq!("443/udp".parse::<Port>().unwrap().to_string(), "443/udp");
        for bad in ["", "0", "65536", "080", "80/sctp", "x", "-1", "80/"] {
            assert!(bad.parse::<Port>().is_err(), "{bad:?}");
        }
        assert!(serde_json::from_value::<Port>(serde_json::json!(70000)).is_err());
    }

    #[test]
    fn check_refuses_clashes_and_bad_names() {
        let clash = spec(serde_json::json!({"files": [{"from": "a", "to": "/usr/bin/hello"}]}));
        assert_eq!(clash.check("hello").unwrap_err().field, "oci.files[0].to");
        let under = spec(serde_json::json!({"binary_path": "/app", "files": [{"from": "a", "to": "/app/conf"}]}));
        assert!(under.check("hello").unwrap_err().message.contains("file and a directory"));
        let twice = spec(serde_json::json!({"files": [{"from": "a", "to": "/x"}, {"from": "b", "to": "/x"}]}));
        assert_eq!(twice.check("hello").unwrap_err().field, "oci.files[1].to");
        let env = spec(serde_json::json!({"env": {"1X": "y"}}));
        assert_eq!(env.check("hello").unwrap_err().field, "oci.env");
        let env = spec(serde_json::json!({"env": {"X": "a\u{0}b"}}));
        assert_eq!(env.check("hello").unwrap_err().field, "oci.env.X");
        for user in ["", "a b", "1:2:3", "root;id", ":1"] {
            assert_eq!(spec(serde_json::json!({"user": user})).check("hello").unwrap_err().field, "oci.user");
        }
        for user in ["root", "1000", "1000:1000", "www-data"] {
            assert!(spec(serde_json::json!({"user": user})).check("hello").is_ok(), "{user}");
        }
        assert_eq!(spec(serde_json::json!({"base": "a b"})).check("hello").unwrap_err().field, "oci.base");
        assert_eq!(spec(serde_json::json!({"cmd": ["a\u{0}"]})).check("hello").unwrap_err().field, "oci.cmd");
        // A binary whose name cannot be a path gets no default path.
        assert_eq!(OciSpec::default().check("a b").unwrap_err().field, "oci.binary_path");
        assert!(serde_json::from_value::<OciSpec>(serde_json::json!({"entrypont": []})).is_err());
    }
}
