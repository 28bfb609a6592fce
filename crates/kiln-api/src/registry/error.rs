//! The registry's own error shape, which docker, skopeo and podman print:
//! `{"errors":[{"code":"…","message":"…","detail":…}]}` with the status the
//! distribution spec gives each code. The API's own errors ([`ApiError`])
//! are translated: what the request got wrong keeps its 4xx, the farm's
//! troubles keep their 5xx.

use axum::Json;
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use kiln_domain::image_ref::{ImageRefError, RegistryCode};
use serde_json::{Value, json};

use crate::error::ApiError;

/// What a registry client is asked for when it needs a token: the token
/// as the password of Basic auth.
pub const BASIC_CHALLENGE: &str = "Basic realm=\"kiln\", charset=\"UTF-8\"";

/// An error answered on `/v2/`.
#[derive(Debug, Clone)]
pub struct RegistryError {
    pub status: StatusCode,
    /// `MANIFEST_UNKNOWN`, `NAME_INVALID`, … (the distribution spec's codes,
    /// and `UNAVAILABLE` for a farm that cannot answer now).
    pub code: &'static str,
    /// Meant to be shown verbatim.
    pub message: String,
    /// Facts for programs: the request id, the build key, its log.
    pub detail: Value,
    /// Extra response headers (`Retry-After`).
    pub headers: Vec<(header::HeaderName, HeaderValue)>,
}

pub type RegistryResult<T> = Result<T, RegistryError>;

impl RegistryError {
    pub fn new(status: StatusCode, code: &'static str, message: impl Into<String>) -> Self {
        Self { status, code, message: message.into(), detail: Value::Null, headers: Vec::new() }
    }

    pub fn of(code: RegistryCode, message: impl Into<String>) -> Self {
        let status = StatusCode::from_u16(code.http_status()).expect("the spec's statuses are valid");
        Self::new(status, code.as_str(), message)
    }

    pub fn manifest_unknown(message: impl Into<String>) -> Self {
        Self::of(RegistryCode::ManifestUnknown, message)
    }

    pub fn blob_unknown(message: impl Into<String>) -> Self {
        Self::new(StatusCode::NOT_FOUND, "BLOB_UNKNOWN", message)
    }

    /// `405 UNSUPPORTED`: pushes, deletes and the routes a pull never needs.
    pub fn unsupported(message: impl Into<String>) -> Self {
        Self::new(StatusCode::METHOD_NOT_ALLOWED, "UNSUPPORTED", message)
    }

    pub fn with_detail(mut self, detail: Value) -> Self {
        self.detail = detail;
        self
    }
}

impl From<ImageRefError> for RegistryError {
    fn from(e: ImageRefError) -> Self {
        Self::of(e.code, e.message)
    }
}

impl From<ApiError> for RegistryError {
    /// A request the API refused keeps its meaning: an invalid version or
    /// a plugin the recipe lacks names no manifest (404), a malformed one is
    /// the tag's fault (400); the farm's troubles stay 5xx.
    fn from(e: ApiError) -> Self {
        let field = e.field().unwrap_or_default().to_owned();
        let (status, code) = match e.status.as_u16() {
            400 if field == "version" => (StatusCode::NOT_FOUND, "MANIFEST_UNKNOWN"),
            400 if field.starts_with("plugins") => (StatusCode::NOT_FOUND, "NAME_UNKNOWN"),
            400 if matches!(field.as_str(), "os" | "arch" | "arm") => (StatusCode::NOT_FOUND, "MANIFEST_UNKNOWN"),
            400 => (StatusCode::BAD_REQUEST, "TAG_INVALID"),
            401 => (StatusCode::UNAUTHORIZED, "UNAUTHORIZED"),
            403 => (StatusCode::FORBIDDEN, "DENIED"),
            404 => (StatusCode::NOT_FOUND, "MANIFEST_UNKNOWN"),
            429 => (StatusCode::TOO_MANY_REQUESTS, "TOOMANYREQUESTS"),
            s if s >= 500 => (e.status, "UNAVAILABLE"),
            _ => (e.status, "UNSUPPORTED"),
        };
        let mut detail = serde_json::Map::new();
        detail.insert("api_code".into(), json!(e.code));
        if let Some(k) = &e.detail.key {
            detail.insert("key".into(), json!(k));
        }
        if let Some(l) = &e.detail.log {
            detail.insert("log".into(), json!(l));
        }
        let mut r = RegistryError::new(status, code, e.message.clone()).with_detail(Value::Object(detail));
        // `Retry-After` and friends survive the translation; a registry
        // client is asked for Basic credentials (docker login), not Bearer.
        r.headers = e.detail.headers.iter().filter(|(n, _)| n != header::WWW_AUTHENTICATE).cloned().collect();
        if e.status == StatusCode::UNAUTHORIZED {
            r.headers.push((header::WWW_AUTHENTICATE, HeaderValue::from_static(BASIC_CHALLENGE)));
        }
        r
    }
}

impl IntoResponse for RegistryError {
    fn into_response(self) -> Response {
        let id = crate::middleware::current_request_id().unwrap_or_default();
        let mut detail = self.detail;
        if detail.is_null() {
            detail = json!({});
        }
        if let Some(d) = detail.as_object_mut() {
            d.insert("request_id".into(), json!(id));
        }
        let body = json!({"errors": [{"code": self.code, "message": self.message, "detail": detail}]});
        let mut resp = (self.status, Json(body)).into_response();
        resp.headers_mut().insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
        for (name, value) in self.headers {
            resp.headers_mut().insert(name, value);
        }
        resp
    }
}
