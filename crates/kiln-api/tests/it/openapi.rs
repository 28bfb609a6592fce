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
