//! The API document against the router: every documented operation is
//! routed, and the document is what `/api/openapi.json` serves.

use axum::body::Body;
use axum::http::{Method, Request, StatusCode};

use crate::farm::InProc;

const KEY: &str = "0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef";

#[tokio::test]
async fn every_documented_operation_is_routed() {
    let api = InProc::new().await;
    let doc = serde_json::to_value(kiln_api::openapi::document()).unwrap();
    let mut seen = 0;
    for (path, item) in doc["paths"].as_object().unwrap() {
        for method in item.as_object().unwrap().keys() {
            let method = Method::from_bytes(method.to_uppercase().as_bytes()).unwrap();
            let uri = path.replace("{key}", KEY);
            let a = api.call(Request::builder().method(method.clone()).uri(&uri).body(Body::empty()).unwrap()).await;
            assert_ne!(a.status, StatusCode::METHOD_NOT_ALLOWED, "{method} {path} is documented but not routed");
            if a.status == StatusCode::NOT_FOUND && method != Method::HEAD {
                assert_ne!(a.json()["error"]["code"], "no_route", "{method} {path} is documented but not routed");
            }
            seen += 1;
        }
    }
    assert!(seen >= 20, "only {seen} operations documented");
    // And something undocumented is not routed.
    let a = api.get("/api/undocumented").await;
    a.error(404, "no_route");
}

#[tokio::test]
async fn the_served_document_is_the_one_the_code_makes() {
    let api = InProc::new().await;
    let a = api.get("/api/openapi.json").await;
    assert_eq!(a.status, StatusCode::OK);
    assert_eq!(a.headers["content-type"], "application/json");
    assert_eq!(a.text(), kiln_api::openapi::document_json());
    let doc = a.json();
    assert_eq!(doc["openapi"], "3.1.0");
    // The links a stateful client follows from a submitted build.
    let links = &doc["paths"]["/api/builds"]["post"]["responses"]["202"]["links"];
    for op in ["getBuild", "getLog", "getEvents", "getArtifact", "getSignature", "getBinary", "cancelBuild"] {
        assert_eq!(links[op]["operationId"], op, "{links}");
        assert_eq!(links[op]["parameters"]["key"], "$response.body#/key", "{links}");
    }
}

/// The argument at `index` of the call that starts at `text` (just after
/// its `(`), when it is a string literal.
fn literal_arg(text: &str, index: usize) -> Option<String> {
    let (mut depth, mut arg, mut start, mut in_str, mut escaped) = (0usize, 0usize, 0usize, false, false);
    for (i, c) in text.char_indices() {
        if in_str {
            match (escaped, c) {
                (true, _) => escaped = false,
                (false, '\\') => escaped = true,
                (false, '"') => in_str = false,
                _ => {}
            }
            continue;
        }
        match c {
            '"' => in_str = true,
            '(' | '[' | '{' => depth += 1,
            ')' | ']' | '}' if depth == 0 => return (arg == index).then(|| unquote(&text[start..i])).flatten(),
            ')' | ']' | '}' => depth -= 1,
            ',' if depth == 0 => {
                if arg == index {
                    return unquote(&text[start..i]);
                }
                arg += 1;
                start = i + 1;
            }
            _ => {}
        }
    }
    None
}

fn unquote(s: &str) -> Option<String> {
    let s = s.trim();
    let inner = s.strip_prefix('"')?.strip_suffix('"')?;
    inner.bytes().all(|b| b.is_ascii_lowercase() || b == b'_').then(|| inner.to_owned())
}

/// Every error code the API can answer with is in docs/api.md's table.
#[test]
fn every_error_code_is_documented() {
    let root = kiln_testkit::repo_root();
    let calls = [
        ("ApiError::new(", 1),
        ("ApiError::bad_request(", 1),
        ("ApiError::not_found(", 0),
        ("ValidationError::new(", 1),
        // The guard's refusals (`Rejection { code: "…", … }`).
        ("code: ", 0),
    ];
    let mut codes = std::collections::BTreeSet::new();
    // The API's own sources, and the domain modules that validate its requests
    // (the registry's names and the recipes' image sections answer otherwise).
    let domain = ["key.rs", "module.rs", "platform.rs", "request.rs", "token.rs", "version.rs"];
    let mut files: Vec<_> = domain.iter().map(|f| root.join("crates/kiln-domain/src").join(f)).collect();
    let mut stack = vec![root.join("crates/kiln-api/src")];
    while let Some(d) = stack.pop() {
        for entry in std::fs::read_dir(&d).unwrap() {
            let path = entry.unwrap().path();
            if path.is_dir() {
                stack.push(path);
            } else if path.extension().is_some_and(|e| e == "rs") {
                files.push(path);
            }
        }
    }
    for path in files {
        let text = std::fs::read_to_string(&path).unwrap();
        for (call, index) in calls {
            for (at, _) in text.match_indices(call) {
                codes.extend(literal_arg(&text[at + call.len()..], index));
            }
        }
    }
    assert!(codes.len() > 20, "found only {codes:?}");
    let doc = std::fs::read_to_string(root.join("docs/api.md")).unwrap();
    let missing: Vec<_> = codes.iter().filter(|c| !doc.contains(&format!("`{c}`"))).collect();
    assert!(missing.is_empty(), "error codes missing from docs/api.md's table: {missing:?}");
}
