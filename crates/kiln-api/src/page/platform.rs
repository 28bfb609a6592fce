//! Platforms in words ("Linux ARMv7"), and the visitor's platform guessed
//! from the `User-Agent` header, so the page can preselect it. The script
//! refines the architecture with `navigator.userAgentData` where the browser
//! offers it (a `User-Agent` never tells an ARM Mac from an Intel one).

use kiln_domain::Platform;

/// A platform as the page names it: `Linux x86-64`, `macOS ARM64`, `Linux ARMv7`.
pub fn label(p: &Platform) -> String {
    let os = match p.os.as_str() {
        "linux" => "Linux",
        "darwin" => "macOS",
        "windows" => "Windows",
        "freebsd" => "FreeBSD",
        "openbsd" => "OpenBSD",
        "netbsd" => "NetBSD",
        other => other,
    };
    let arch = match (p.arch.as_str(), p.arm) {
        ("arm", Some(v)) => format!("ARMv{v}"),
        ("amd64", _) => "x86-64".to_owned(),
        ("arm64", _) => "ARM64".to_owned(),
        ("386", _) => "x86 (32-bit)".to_owned(),
        (other, _) => other.to_owned(),
    };
    format!("{os} {arch}")
}

/// The visitor's platform among `supported`, from a `User-Agent` string;
/// `None` when it cannot be told or is not built.
pub fn infer_platform(user_agent: &str, supported: &[Platform]) -> Option<Platform> {
    let ua = user_agent.to_ascii_lowercase();
    let has = |s: &str| ua.contains(s);
    let os = if has("windows") {
        "windows"
    } else if has("iphone") || has("ipad") {
        return None;
    } else if has("mac os x") || has("macintosh") {
        "darwin"
    } else if has("freebsd") {
        "freebsd"
    } else if has("linux") || has("android") || has("cros") || has("x11") {
        "linux"
    } else {
        return None;
    };
    // Most likely first: the User-Agent's word for the CPU, else the
    // usual one for the system (Macs have been ARM since 2020).
    let arches: &[(&str, Option<u8>)] = if has("aarch64") || has("arm64") || has("android") {
        &[("arm64", None), ("arm", Some(7))]
    } else if has("armv7") {
        &[("arm", Some(7)), ("arm", Some(6))]
    } else if has("armv6") {
        &[("arm", Some(6))]
    } else if os == "darwin" {
        &[("arm64", None), ("amd64", None)]
    } else if has("i686") || has("i386") {
        &[("386", None)]
    } else {
        &[("amd64", None)]
    };
    arches
        .iter()
        .find_map(|(arch, arm)| supported.iter().find(|p| p.os == os && p.arch == *arch && p.arm == *arm).cloned())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn all() -> Vec<Platform> {
        ["linux/amd64", "linux/arm64", "linux/arm/6", "linux/arm/7", "darwin/amd64", "darwin/arm64", "windows/amd64"]
            .iter()
            .map(|p| p.parse().unwrap())
            .collect()
    }

    fn guess(ua: &str) -> Option<String> {
        infer_platform(ua, &all()).map(|p| p.to_string())
    }

    #[test]
    fn real_user_agents() {
        let cases = [
            (
                "Mozilla/5.0 (X11; Linux x86_64) AppleWebKit/537.36 (KHTML, like Gecko) HeadlessChrome/156.0.0.0 Safari/537.36",
                Some("linux/amd64"),
            ),
            ("Mozilla/5.0 (X11; Linux aarch64; rv:128.0) Gecko/20100101 Firefox/128.0", Some("linux/arm64")),
            (
                "Mozilla/5.0 (X11; Linux armv7l) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/120.0 Safari/537.36",
                Some("linux/arm/7"),
            ),
            (
                "Mozilla/5.0 (Windows NT 10.0; Win64; x64) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/126.0 Safari/537.36",
                Some("windows/amd64"),
            ),
            (
                "Mozilla/5.0 (Macintosh; Intel Mac OS X 10_15_7) AppleWebKit/605.1.15 (KHTML, like Gecko) Version/17.5 Safari/605.1.15",
                Some("darwin/arm64"),
            ),
            (
                "Mozilla/5.0 (Linux; Android 14; Pixel 8) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/126.0 Mobile Safari/537.36",
                Some("linux/arm64"),
            ),
            ("Mozilla/5.0 (iPhone; CPU iPhone OS 17_5 like Mac OS X) AppleWebKit/605.1.15", None),
            ("curl/8.5.0", None),
        ];
        for (ua, want) in cases {
            assert_eq!(guess(ua).as_deref(), want, "{ua}");
        }
    }

    #[test]
    fn only_supported_platforms_are_guessed() {
        let linux_only: Vec<Platform> = vec!["linux/amd64".parse().unwrap()];
        assert_eq!(infer_platform("Mozilla/5.0 (Windows NT 10.0; Win64; x64)", &linux_only), None);
        let intel_macs: Vec<Platform> = vec!["darwin/amd64".parse().unwrap()];
        let mac = infer_platform("Mozilla/5.0 (Macintosh; Intel Mac OS X 10_15_7)", &intel_macs);
        assert_eq!(mac.map(|p| p.to_string()).as_deref(), Some("darwin/amd64"));
    }

    #[test]
    fn labels() {
        let l: Vec<String> = all().iter().map(label).collect();
        assert_eq!(l[0], "Linux x86-64");
        assert_eq!(l[3], "Linux ARMv7");
        assert_eq!(l[5], "macOS ARM64");
    }
}
