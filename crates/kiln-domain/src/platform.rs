//! Target platforms: `os/arch`, or `os/arm/N` for 32-bit ARM.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

use crate::ValidationError;

/// A target platform. `arm` is set exactly when `arch` is `arm`.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Platform {
    pub os: String,
    pub arch: String,
    pub arm: Option<u8>,
}

impl Platform {
    /// `linux/armv7` style, as the `hello` recipe prints it.
    pub fn arch_label(&self) -> String {
        match self.arm {
            Some(v) => format!("{}v{v}", self.arch),
            None => self.arch.clone(),
        }
    }
}

impl fmt::Display for Platform {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.arm {
            Some(v) => write!(f, "{}/{}/{v}", self.os, self.arch),
            None => write!(f, "{}/{}", self.os, self.arch),
        }
    }
}

fn is_word(s: &str) -> bool {
    !s.is_empty() && s.len() <= 32 && s.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit())
}

impl FromStr for Platform {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        let parts: Vec<&str> = s.split('/').collect();
        let (os, arch, arm) = match parts.as_slice() {
            [os, arch] => (*os, *arch, None),
            [os, arch, arm] => (*os, *arch, Some(*arm)),
            _ => return Err(format!("{s:?} is not os/arch or os/arm/N")),
        };
        if !is_word(os) || !is_word(arch) {
            return Err(format!("{s:?}: os and arch are lowercase words"));
        }
        let arm = match (arch, arm) {
            ("arm", Some(v)) => Some(v.parse::<u8>().map_err(|_| format!("{s:?}: bad arm version"))?),
            ("arm", None) => return Err(format!("{s:?}: arm needs a version, e.g. linux/arm/7")),
            (_, Some(_)) => return Err(format!("{s:?}: only arch arm takes a version")),
            (_, None) => None,
        };
        Ok(Platform { os: os.into(), arch: arch.into(), arm })
    }
}

impl Serialize for Platform {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for Platform {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        String::deserialize(d)?.parse().map_err(serde::de::Error::custom)
    }
}

/// Pick the platform a user asked for out of the ones a recipe supports.
/// `arm` may be given as `7` or `v7`; an empty `arm` is no arm.
pub fn select(supported: &[Platform], os: &str, arch: &str, arm: Option<&str>) -> Result<Platform, ValidationError> {
    let names = || supported.iter().map(|p| p.to_string()).collect::<Vec<_>>().join(", ");
    if os.is_empty() {
        return Err(ValidationError::new(
            "os",
            "missing_field",
            format!("os is missing: name the target system; supported platforms: {}", names()),
        ));
    }
    if !supported.iter().any(|p| p.os == os) {
        return Err(ValidationError::new(
            "os",
            "unknown_platform",
            format!("os {:?} is not supported; supported platforms: {}", crate::module::truncate(os), names()),
        ));
    }
    if arch.is_empty() {
        let mut archs: Vec<&str> = Vec::new();
        for p in supported.iter().filter(|p| p.os == os) {
            if !archs.contains(&p.arch.as_str()) {
                archs.push(&p.arch);
            }
        }
        return Err(ValidationError::new(
            "arch",
            "missing_field",
            format!("arch is missing: name the target processor; for {os}: {}", archs.join(", ")),
        ));
    }
    if !supported.iter().any(|p| p.os == os && p.arch == arch) {
        return Err(ValidationError::new(
            "arch",
            "unknown_platform",
            format!(
                "arch {:?} is not supported for {os}; supported platforms: {}",
                crate::module::truncate(arch),
                names()
            ),
        ));
    }
    let arm = match arm.map(|a| a.trim_start_matches('v')).filter(|a| !a.is_empty()) {
        None => None,
        Some(a) => match a.parse::<u8>() {
            Ok(v) => Some(v),
            Err(_) => {
                return Err(ValidationError::new(
                    "arm",
                    "unknown_platform",
                    format!("arm {:?} is not a number such as 6 or 7", crate::module::truncate(a)),
                ));
            }
        },
    };
    if arm.is_some() && arch != "arm" {
        return Err(ValidationError::new(
            "arm",
            "unknown_platform",
            format!("arm is only valid with arch=arm, not arch={arch}"),
        ));
    }
    let wanted = Platform { os: os.into(), arch: arch.into(), arm };
    if supported.contains(&wanted) {
        return Ok(wanted);
    }
    // arch=arm without a version: take the highest one supported.
    if arch == "arm"
        && arm.is_none()
        && let Some(p) = supported.iter().filter(|p| p.os == os && p.arch == "arm").max()
    {
        return Ok(p.clone());
    }
    Err(ValidationError::new(
        "arm",
        "unknown_platform",
        format!("{wanted} is not supported; supported platforms: {}", names()),
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn supported() -> Vec<Platform> {
        ["linux/amd64", "linux/arm64", "linux/arm/6", "linux/arm/7", "windows/amd64"]
            .iter()
            .map(|s| s.parse().unwrap())
            .collect()
    }

    #[test]
    fn parses_and_prints() {
        let p: Platform = "linux/arm/7".parse().unwrap();
        assert_eq!(p.arm, Some(7));
        assert_eq!(p.to_string(), "linux/arm/7");
        assert_eq!(p.arch_label(), "armv7");
        assert!("linux/arm".parse::<Platform>().is_err());
        assert!("linux/amd64/7".parse::<Platform>().is_err());
        assert!("Linux/amd64".parse::<Platform>().is_err());
    }

    #[test]
    fn select_validates_each_field() {
        let s = supported();
        assert_eq!(select(&s, "linux", "amd64", None).unwrap().to_string(), "linux/amd64");
        assert_eq!(select(&s, "linux", "arm", Some("v6")).unwrap().to_string(), "linux/arm/6");
        assert_eq!(select(&s, "linux", "arm", None).unwrap().to_string(), "linux/arm/7");
        assert_eq!(select(&s, "plan9", "amd64", None).unwrap_err().field, "os");
        assert_eq!(select(&s, "linux", "mips", None).unwrap_err().field, "arch");
        assert_eq!(select(&s, "linux", "amd64", Some("7")).unwrap_err().field, "arm");
        assert_eq!(select(&s, "linux", "arm", Some("5")).unwrap_err().field, "arm");
        assert_eq!(select(&s, "linux", "arm", Some("x")).unwrap_err().field, "arm");
    }

    #[test]
    fn a_missing_os_or_arch_is_said_so_with_what_is_available() {
        let s = supported();
        let e = select(&s, "", "amd64", None).unwrap_err();
        assert_eq!((e.field.as_str(), e.code), ("os", "missing_field"));
        assert!(e.message.starts_with("os is missing") && e.message.contains("linux/arm64, linux/arm/6"), "{e}");
        let e = select(&s, "linux", "", None).unwrap_err();
        assert_eq!((e.field.as_str(), e.code), ("arch", "missing_field"));
        assert!(e.message.ends_with("for linux: amd64, arm64, arm"), "{e}");
    }
}
