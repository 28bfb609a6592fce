//! What the registry answers to names, tags, digests and methods it
//! cannot serve: the registry's error shape with the spec's codes, before
//! any build is made (in process, no worker).

use axum::body::Body;
use axum::http::Request;

use crate::farm::{Answer, InProc};

/// Assert a registry error with `status` and `code`; returns its message.
fn registry_error(a: &Answer, status: u16, code: &str) -> String {
    assert_eq!(a.status.as_u16(), status, "{}", a.text());
    assert_eq!(a.headers["docker-distribution-api-version"], "registry/2.0");
    assert_eq!(a.headers["content-type"], "application/json");
    let j = a.json();
    assert_eq!(j["errors"][0]["code"], code, "{j}");
    let message = j["errors"][0]["message"].as_str().unwrap().to_owned();
    assert!(!message.is_empty() && message.len() < 600, "{message}");
    message
}

#[tokio::test]
async fn the_base_route_says_this_is_a_registry() {
    let api = InProc::new().await;
    for path in ["/v2/", "/v2"] {
        let a = api.get(path).await;
        assert_eq!(a.status, 200);
        assert_eq!(a.text(), "{}");
        assert_eq!(a.headers["docker-distribution-api-version"], "registry/2.0");
    }
}

#[tokio::test]
async fn hostile_names_tags_and_digests_get_registry_errors() {
    let api = InProc::new().await;
    let long = "a".repeat(300);
    let long_tag = "v".repeat(200);
    let zeros = format!("sha256:{}", "0".repeat(64));
    let cases: Vec<(String, u16, &str, &str)> = vec![
        ("/v2/Hello/manifests/v1.1.0".into(), 400, "NAME_INVALID", "lowercase"),
        ("/v2/hello/../x/manifests/v1.1.0".into(), 400, "NAME_INVALID", ""),
        ("/v2/hello//x/manifests/v1.1.0".into(), 400, "NAME_INVALID", "empty path component"),
        (format!("/v2/{long}/manifests/v1.1.0"), 400, "NAME_INVALID", "at most 255"),
        ("/v2/hello%2fx/manifests/v1.1.0".into(), 400, "NAME_INVALID", "percent-encoded"),
        ("/v2/nope/manifests/v1.1.0".into(), 404, "NAME_UNKNOWN", "no recipe"),
        ("/v2/sleep/manifests/v5.0.0".into(), 404, "NAME_UNKNOWN", "no oci section"),
        ("/v2/hello/evil.org__x/manifests/v1.1.0".into(), 404, "NAME_UNKNOWN", "not allowed"),
        ("/v2/hello/manifests/.v1".into(), 400, "TAG_INVALID", ""),
        (format!("/v2/hello/manifests/{long_tag}"), 400, "TAG_INVALID", "1 to 128"),
        ("/v2/hello/manifests/v1.1.0-linux-arm".into(), 400, "TAG_INVALID", "arm-v6 or"),
        ("/v2/hello/manifests/bk-1234".into(), 400, "TAG_INVALID", "build key"),
        ("/v2/hello/manifests/v1.1.0-windows-amd64".into(), 404, "MANIFEST_UNKNOWN", "linux only"),
        ("/v2/hello/manifests/v1.1.0-linux-riscv64".into(), 404, "MANIFEST_UNKNOWN", "not built for"),
        ("/v2/hello/manifests/v9.9.9-linux-amd64".into(), 404, "MANIFEST_UNKNOWN", "v9.9.9"),
        (format!("/v2/hello/manifests/bk-{}", "a".repeat(64)), 404, "MANIFEST_UNKNOWN", "no build"),
        ("/v2/hello/manifests/sha256:abc".into(), 400, "DIGEST_INVALID", "64 hex"),
        ("/v2/hello/manifests/md5:abc".into(), 400, "DIGEST_INVALID", "only sha256"),
        (format!("/v2/hello/manifests/sha256:{}", "A".repeat(64)), 400, "DIGEST_INVALID", "lowercase"),
        (format!("/v2/hello/manifests/{zeros}"), 404, "MANIFEST_UNKNOWN", "no manifest"),
        ("/v2/hello/blobs/sha256:xyz".into(), 400, "DIGEST_INVALID", ""),
        (format!("/v2/hello/blobs/{zeros}"), 404, "BLOB_UNKNOWN", "no blob"),
        (format!("/v2/nope/blobs/{zeros}"), 404, "NAME_UNKNOWN", ""),
        ("/v2/nope/tags/list".into(), 404, "NAME_UNKNOWN", ""),
        ("/v2/_catalog".into(), 405, "UNSUPPORTED", ""),
        ("/v2/hello".into(), 404, "NAME_UNKNOWN", "not a registry route"),
    ];
    for (path, status, code, says) in &cases {
        let a = api.get(path).await;
        let message = registry_error(&a, *status, code);
        assert!(message.contains(says), "{path}: {message:?} does not say {says:?}");
    }
    let counts = api.state.queue().state_counts().await.unwrap();
    assert_eq!(counts.queued + counts.running, 0, "no refused pull made a build");
}

#[tokio::test]
async fn tags_are_listed_for_each_version_and_platform() {
    let api = InProc::new().await;
    let a = api.get("/v2/hello/example.com__greet/tags/list").await;
    assert_eq!(a.status, 200, "{}", a.text());
    let j = a.json();
    assert_eq!(j["name"], "hello/example.com__greet");
    let tags: Vec<&str> = j["tags"].as_array().unwrap().iter().map(|t| t.as_str().unwrap()).collect();
    for want in ["latest", "v1.1.0", "v1.1.0-linux-arm-v7", "v1.2.0-beta.1-linux-arm64", "v1.0.0-linux-amd64"] {
        assert!(tags.contains(&want), "{want} not in {tags:?}");
    }
    assert!(!tags.iter().any(|t| t.contains("windows") || t.contains("darwin")), "{tags:?}");
}

#[tokio::test]
async fn pushes_and_deletes_are_unsupported() {
    let api = InProc::new().await;
    for (method, path) in [
        ("PUT", "/v2/hello/manifests/v1.1.0"),
        ("DELETE", "/v2/hello/manifests/v1.1.0"),
        ("POST", "/v2/hello/blobs/uploads/"),
        ("PATCH", "/v2/hello/blobs/uploads/1234"),
        ("PUT", "/v2/hello/blobs/uploads/1234?digest=sha256:00"),
        ("POST", "/v2/"),
    ] {
        let a = api.call(Request::builder().method(method).uri(path).body(Body::from("x")).unwrap()).await;
        registry_error(&a, 405, "UNSUPPORTED");
    }
}
