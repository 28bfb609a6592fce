//! The nasty cases of registry names, tags and digests.

use super::*;
use crate::PluginSpec;
use crate::recipe::PluginRules;

fn recipe() -> Recipe {
    Recipe {
        plugins: PluginRules {
            allow: vec!["example.com/*".into(), "github.com/caddy-dns/*".into()],
            max: 3,
            ..Default::default()
        },
        platforms: ["linux/amd64", "linux/arm64", "linux/arm/6", "linux/arm/7", "darwin/arm64", "windows/amd64"]
            .iter()
            .map(|p| p.parse().unwrap())
            .collect(),
        oci: Some(Default::default()),
        ..crate::recipe::test_recipe()
    }
}

fn code(r: Result<impl std::fmt::Debug, ImageRefError>) -> RegistryCode {
    r.unwrap_err().code
}

fn platform(s: &str) -> Platform {
    s.parse().unwrap()
}

#[test]
fn names_decode_plugins_sorted_and_deduplicated() {
    let n = ImageName::parse("caddy/github.com__caddy-dns__cloudflare").unwrap();
    assert_eq!(n.recipe(), "caddy");
    assert_eq!(n.plugins()[0].as_str(), "github.com/caddy-dns/cloudflare");

    let a = ImageName::parse("hello/example.com__shout/example.com__greet/example.com__shout").unwrap();
    let b = ImageName::parse("hello/example.com__greet/example.com__shout").unwrap();
    assert_eq!(a, b);
    assert_eq!(a.to_string(), "hello/example.com__greet/example.com__shout");
    let names: Vec<_> = a.plugins().iter().map(|p| p.as_str()).collect();
    assert_eq!(names, ["example.com/greet", "example.com/shout"]);

    // Single '_', '.', and runs of '-' are part of a module path element.
    let n = ImageName::parse("hello/example.com__a_b--c.d").unwrap();
    assert_eq!(n.plugins()[0].as_str(), "example.com/a_b--c.d");
    assert_eq!(ImageName::parse("hello").unwrap().plugins(), &[] as &[ModulePath]);
}

#[test]
fn malformed_names_are_name_invalid_with_a_reason() {
    let too_long = format!("hello/example.com__{}", "a".repeat(290));
    let cases = [
        ("", "empty"),
        ("Hello", "upper-case"),
        ("hello/github.com__BurntSushi__toml", "upper-case"),
        ("hello/example.com__..__x", "'..'"),
        ("hello/../x", "'..'"),
        ("hello//example.com__a", "empty path component"),
        ("/hello", "empty path component"),
        ("hello/", "empty path component"),
        (too_long.as_str(), "at most 255"),
        ("hello/example.com___x", "'___'"),
        ("hello/-example.com", "start and end"),
        ("hello/example.com__x.", "start and end"),
        ("hello/example.com__a~b", "contains '~'"),
        ("hello/example.com__a b", "contains ' '"),
        ("hello/example.com__$(id)", "contains '$'"),
        ("hello/example.com__x%2f", "contains '%'"),
        ("hello:v1", "contains ':'"),
        ("hello@sha256", "contains '@'"),
        ("hello/exampleco", "not a valid Go module path"),
        ("hello/localhost__x", "host name with a dot"),
        ("hel\0lo", "contains '\\0'"),
        ("hëllo", "contains 'ë'"),
    ];
    for (name, why) in cases {
        let e = ImageName::parse(name).unwrap_err();
        assert_eq!(e.code, RegistryCode::NameInvalid, "{name:?}");
        assert!(e.message.contains(why), "{name:?}: {}", e.message);
        assert!(e.message.len() < 400, "the message quotes too much: {}", e.message);
    }
    // 255 is the limit, not 254.
    let at_limit = format!("hello/example.com__{}", "a".repeat(255 - "hello/example.com__".len()));
    assert_eq!(at_limit.len(), MAX_NAME_LEN);
    assert!(ImageName::parse(&at_limit).is_ok());
    assert!(ImageName::parse(&format!("{at_limit}b")).is_err());
}

#[test]
fn grammar_components() {
    for ok in ["a", "a0", "a.b", "a_b", "a__b", "a-b", "a---b", "a.b-c_d__e"] {
        assert!(is_path_component(ok), "{ok}");
    }
    for bad in ["", ".", "a.", ".a", "a..b", "a___b", "_a", "a_", "-a", "a-", "A", "a/b", "a:b", "a.-b", "a_.b"] {
        assert!(!is_path_component(bad), "{bad}");
    }
}

#[test]
fn names_check_against_the_recipe() {
    let r = recipe();
    assert!(ImageName::parse("hello/example.com__greet").unwrap().check(Some(&r)).is_ok());
    assert_eq!(code(ImageName::parse("hello").unwrap().check(None)), RegistryCode::NameUnknown);
    let e = ImageName::parse("hello/evil.com__x").unwrap().check(Some(&r)).unwrap_err();
    assert_eq!(e.code, RegistryCode::NameUnknown);
    assert!(e.message.contains("evil.com/x is not allowed") && e.message.contains("example.com/*"), "{}", e.message);
    let many = ImageName::parse("hello/example.com__a/example.com__b/example.com__c/example.com__d").unwrap();
    assert_eq!(code(many.check(Some(&r))), RegistryCode::NameInvalid);
    let mut no_images = recipe();
    no_images.oci = None;
    let e = ImageName::parse("hello").unwrap().check(Some(&no_images)).unwrap_err();
    assert_eq!(e.code, RegistryCode::NameUnknown);
    assert!(e.message.contains("no oci section"), "{}", e.message);
}

#[test]
fn names_are_made_from_module_paths_and_round_trip() {
    let m = |s: &str| ModulePath::parse("m", s).unwrap();
    let n = ImageName::new("caddy", &[m("github.com/caddy-dns/cloudflare"), m("example.com/a")]).unwrap();
    assert_eq!(n.to_string(), "caddy/example.com__a/github.com__caddy-dns__cloudflare");
    assert_eq!(ImageName::parse(&n.to_string()).unwrap(), n);
    assert_eq!(code(ImageName::new("caddy", &[m("github.com/BurntSushi/toml")])), RegistryCode::NameInvalid);
    assert_eq!(code(ImageName::new("caddy", &[m("example.com/a__b")])), RegistryCode::NameInvalid);
    assert_eq!(code(ImageName::new("caddy", &[m("example.com/a~b")])), RegistryCode::NameInvalid);
}

#[test]
fn tags_parse_versions_platforms_latest_and_build_keys() {
    let v = |s: &str| VersionWanted::Exact(s.parse().unwrap());
    let t = |s: &str| Tag::parse(s).unwrap();
    assert_eq!(t("v1.2.3"), Tag::Version { version: v("v1.2.3"), platform: None });
    assert_eq!(t("1.2.3"), Tag::Version { version: v("v1.2.3"), platform: None });
    assert_eq!(t("latest"), Tag::Version { version: VersionWanted::Latest, platform: None });
    assert_eq!(t("v1.2.3-linux-amd64"), Tag::Version { version: v("v1.2.3"), platform: Some(platform("linux/amd64")) });
    assert_eq!(
        t("v1.2.3-linux-arm-v7"),
        Tag::Version { version: v("v1.2.3"), platform: Some(platform("linux/arm/7")) }
    );
    assert_eq!(
        t("latest-linux-arm64"),
        Tag::Version { version: VersionWanted::Latest, platform: Some(platform("linux/arm64")) }
    );
    // Prereleases keep their dashes; '_' stands for '+'.
    assert_eq!(
        t("v1.2.0-beta.1-linux-arm-v6"),
        Tag::Version { version: v("v1.2.0-beta.1"), platform: Some(platform("linux/arm/6")) }
    );
    assert_eq!(t("v1.2.0-rc-1"), Tag::Version { version: v("v1.2.0-rc-1"), platform: None });
    assert_eq!(t("v1.2.0-rc-v7"), Tag::Version { version: v("v1.2.0-rc-v7"), platform: None });
    assert_eq!(t("v2.0.0_build.5"), Tag::Version { version: v("v2.0.0+build.5"), platform: None });
    // A platform that exists nowhere still parses; the recipe refuses it.
    assert_eq!(
        t("v1.0.0-windows-amd64"),
        Tag::Version { version: v("v1.0.0"), platform: Some(platform("windows/amd64")) }
    );
    let key = "ab".repeat(32);
    assert_eq!(t(&format!("bk-{key}")), Tag::Build(BuildKey::parse(&key).unwrap()));

    for s in ["v1.2.3", "v1.2.0-beta.1-linux-arm-v6", "latest-linux-arm64", "v2.0.0_build.5-linux-amd64"] {
        assert_eq!(t(s).to_string(), s);
    }
    assert_eq!(t("1.2.3").to_string(), "v1.2.3");
}

#[test]
fn malformed_tags_are_tag_invalid_with_a_reason() {
    let cases = [
        (String::new(), "1 to 128"),
        ("a".repeat(129), "1 to 128"),
        (".v1".into(), "not starting with"),
        ("-v1".into(), "not starting with"),
        ("v1.0.0+x".into(), "'_'"),
        ("v1/0".into(), "1 to 128"),
        ("v1.0.0 ".into(), "1 to 128"),
        ("v1.0".into(), "not a version"),
        ("V1.0.0".into(), "not a version"),
        ("nope".into(), "not a version"),
        ("v1.0.0-linux-arm".into(), "linux-arm-v6"),
        ("v1.0.0-linux-amd64-v3".into(), "only for arm"),
        ("v1.0.0-linux-arm-v999".into(), "small number"),
        (format!("bk-{}", "AB".repeat(32)), "64 lowercase hex"),
        (format!("bk-{}", "ab".repeat(31)), "64 lowercase hex"),
        ("bk-".into(), "64 lowercase hex"),
        ("-linux-amd64".into(), "not starting with"),
        ("x--linux-amd64".into(), "not a version"),
    ];
    for (tag, why) in cases {
        let e = Tag::parse(&tag).unwrap_err();
        assert_eq!(e.code, RegistryCode::TagInvalid, "{tag:?}");
        assert!(e.message.contains(why), "{tag:?}: {}", e.message);
        assert!(e.message.contains("e.g. v1.2.3"), "{}", e.message);
    }
}

#[test]
fn references_are_tags_or_sha256_digests() {
    let d = OciDigest::of(b"x");
    assert_eq!(Reference::parse(d.as_str()).unwrap(), Reference::Digest(d.clone()));
    assert!(matches!(Reference::parse("v1.0.0").unwrap(), Reference::Tag(_)));
    for bad in ["sha256:abc", "sha512:00", &d.as_str().to_uppercase(), "md5:x", ":", "v1:0"] {
        assert_eq!(code(Reference::parse(bad)), RegistryCode::DigestInvalid, "{bad:?}");
    }
}

#[test]
fn tags_ask_for_the_recipes_linux_platforms() {
    let r = recipe();
    let index = Tag::parse("v1.0.0").unwrap().platforms("hello", &r).unwrap();
    let names: Vec<_> = index.iter().map(|p| p.to_string()).collect();
    assert_eq!(names, ["linux/amd64", "linux/arm/6", "linux/arm/7", "linux/arm64"]);
    assert_eq!(Tag::parse("v1.0.0-linux-arm-v6").unwrap().platforms("hello", &r).unwrap(), [platform("linux/arm/6")]);

    for tag in ["v1.0.0-windows-amd64", "v1.0.0-darwin-arm64", "v1.0.0-linux-s390x", "v1.0.0-linux-arm-v5"] {
        let e = Tag::parse(tag).unwrap().platforms("hello", &r).unwrap_err();
        assert_eq!(e.code, RegistryCode::ManifestUnknown, "{tag}");
        assert!(e.message.contains("linux/amd64, linux/arm/6"), "{tag}: {}", e.message);
    }
    let e = Tag::parse("v1.0.0-windows-amd64").unwrap().platforms("hello", &r).unwrap_err();
    assert!(e.message.contains("linux only"), "{}", e.message);

    let mut no_linux = recipe();
    no_linux.platforms.retain(|p| p.os != "linux");
    assert_eq!(code(Tag::parse("latest").unwrap().platforms("hello", &no_linux)), RegistryCode::ManifestUnknown);
}

#[test]
fn canonical_tags_parse_back() {
    let v: Version = "v1.2.0-rc.1+meta.2".parse().unwrap();
    for p in ["linux/amd64", "linux/arm/7", "linux/arm64"] {
        let tag = Tag::for_platform(&v, &platform(p));
        let Tag::Version { version: VersionWanted::Exact(back), platform: Some(pp) } = Tag::parse(&tag).unwrap() else {
            panic!("{tag} did not parse as a platform tag");
        };
        assert_eq!((back, pp.to_string()), (v.clone(), p.to_owned()), "{tag}");
    }
    assert_eq!(Tag::for_platform(&v, &platform("linux/arm/7")), "v1.2.0-rc.1_meta.2-linux-arm-v7");
    assert_eq!(Tag::for_version(&v), "v1.2.0-rc.1_meta.2");
}

#[test]
fn build_requests_and_bk_checks() {
    let n = ImageName::parse("hello/example.com__greet").unwrap();
    let req = n.build_request(&VersionWanted::Latest, &platform("linux/arm/7"));
    assert_eq!((req.os.as_str(), req.arch.as_str(), req.arm.as_deref()), ("linux", "arm", Some("7")));
    assert_eq!(req.version, None);
    let validated = req.validate(&recipe()).unwrap();
    assert_eq!(validated.plugins.len(), 1);

    let spec = BuildSpec {
        recipe: "hello".into(),
        recipe_revision: "r".into(),
        version: "v1.0.0".parse().unwrap(),
        platform: platform("linux/amd64"),
        plugins: vec![PluginSpec {
            module: ModulePath::parse("m", "example.com/greet").unwrap(),
            version: "v0.1.0".parse().unwrap(),
        }],
        replacements: vec![],
    };
    let key = spec.key();
    assert!(n.check_build(&key, &spec).is_ok());
    let e = ImageName::parse("hello").unwrap().check_build(&key, &spec).unwrap_err();
    assert_eq!(e.code, RegistryCode::ManifestUnknown);
    assert!(e.message.contains(&format!("hello/example.com__greet:bk-{key}")), "{}", e.message);
    let mut windows = spec.clone();
    windows.platform = platform("windows/amd64");
    assert_eq!(code(n.check_build(&windows.key(), &windows)), RegistryCode::ManifestUnknown);
}

#[test]
fn codes_map_to_statuses() {
    assert_eq!(RegistryCode::NameInvalid.http_status(), 400);
    assert_eq!(RegistryCode::TagInvalid.http_status(), 400);
    assert_eq!(RegistryCode::DigestInvalid.http_status(), 400);
    assert_eq!(RegistryCode::NameUnknown.http_status(), 404);
    assert_eq!(RegistryCode::ManifestUnknown.http_status(), 404);
    assert_eq!(RegistryCode::ManifestUnknown.to_string(), "MANIFEST_UNKNOWN");
}
