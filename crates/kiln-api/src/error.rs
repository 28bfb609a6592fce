//! The one user-facing error type of the API and its JSON shape.
//!
//! Every error leaves the API as JSON in the shape the Caddy download API
//! uses, so the `caddy` CLI can print it, with a machine-readable code:
//! `{"status_code": N, "error": {"code": "…", "message": "…", "id": "<request id>"}}`.
//! A `field` names the input to fix (400), a `key` the build to poll or read
//! (422, 504), a `log` the URL of a failed build's log. Handlers return
//! [`ApiError`]; the request id comes from the task-local the request
//! middleware sets ([`crate::middleware`]).

use axum::Json;
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use kiln_domain::{BuildKey, ValidationError};
use kiln_queue::QueueError;
use kiln_storage::StorageError;
use serde::Serialize;
use utoipa::ToSchema;

use crate::middleware::current_request_id;

/// An error answered to a client.
#[derive(Debug, Clone, thiserror::Error)]
#[error("{status} {code}: {message}")]
pub struct ApiError {
    pub status: StatusCode,
    pub code: &'static str,
    pub message: String,
    pub detail: Box<Detail>,
}

/// The optional parts of an error.
#[derive(Debug, Clone, Default)]
pub struct Detail {
    pub field: Option<String>,
    pub key: Option<String>,
    pub log: Option<String>,
    /// Extra response headers (`WWW-Authenticate`, `Content-Range`).
    pub headers: Vec<(header::HeaderName, HeaderValue)>,
}

impl ApiError {
    pub fn new(status: StatusCode, code: &'static str, message: impl Into<String>) -> Self {
        Self { status, code, message: message.into(), detail: Box::default() }
    }

    /// The input field the error is about.
    pub fn field(&self) -> Option<&str> {
        self.detail.field.as_deref()
    }

    pub fn bad_request(field: impl Into<String>, code: &'static str, message: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, code, message).with_field(field)
    }

    pub fn not_found(code: &'static str, message: impl Into<String>) -> Self {
        Self::new(StatusCode::NOT_FOUND, code, message)
    }

    pub fn internal(message: impl Into<String>) -> Self {
        Self::new(StatusCode::INTERNAL_SERVER_ERROR, "internal", message)
    }

    /// The server is shutting down: try again (another instance may answer).
    pub fn shutting_down() -> Self {
        Self::new(StatusCode::SERVICE_UNAVAILABLE, "shutting_down", "this server is shutting down; try again")
            .with_header(header::RETRY_AFTER, HeaderValue::from_static("1"))
            .with_header(header::CONNECTION, HeaderValue::from_static("close"))
    }

    pub fn unknown_build(key: &BuildKey) -> Self {
        Self::not_found("unknown_build", format!("there is no build {key}")).with_key(key)
    }

    pub fn with_field(mut self, field: impl Into<String>) -> Self {
        self.detail.field = Some(field.into());
        self
    }

    pub fn with_key(mut self, key: &BuildKey) -> Self {
        self.detail.key = Some(key.to_string());
        self
    }

    pub fn with_log(mut self, url: String) -> Self {
        self.detail.log = Some(url);
        self
    }

    pub fn with_header(mut self, name: header::HeaderName, value: HeaderValue) -> Self {
        self.detail.headers.push((name, value));
        self
    }
}

impl From<ValidationError> for ApiError {
    fn from(e: ValidationError) -> Self {
        ApiError::bad_request(e.field, e.code, e.message)
    }
}

impl From<QueueError> for ApiError {
    fn from(e: QueueError) -> Self {
        if e.is_unavailable() {
            tracing::warn!(error = %e, "database unavailable");
            ApiError::new(StatusCode::SERVICE_UNAVAILABLE, "database_unavailable", "the database is unreachable")
        } else {
            tracing::error!(error = %e, "database error");
            ApiError::internal("a database statement failed")
        }
    }
}

impl From<StorageError> for ApiError {
    fn from(e: StorageError) -> Self {
        match e {
            StorageError::NotFound(what) => ApiError::not_found("not_found", format!("{what} does not exist")),
            StorageError::InvalidKey(why) => ApiError::bad_request("key", "invalid_key", why),
            other => {
                tracing::error!(error = %other, "storage error");
                ApiError::new(StatusCode::SERVICE_UNAVAILABLE, "storage_unavailable", "the object store failed")
            }
        }
    }
}

/// Every error the API answers with, in the Caddy download API's shape.
#[derive(Serialize, ToSchema)]
#[schema(as = Error)]
pub struct ErrorBody<'a> {
    /// The HTTP status, repeated.
    status_code: u16,
    error: ErrorDetail<'a>,
}

/// What went wrong and what to fix.
#[derive(Serialize, ToSchema)]
pub struct ErrorDetail<'a> {
    /// A machine-readable code, e.g. `invalid_module`, `unknown_build`, `build_failed`.
    code: &'a str,
    /// A sentence for people that says what to fix.
    message: &'a str,
    /// The request id (also in the `x-request-id` header), for the server's logs.
    id: String,
    /// The input to fix: a query parameter or a JSON path in the body.
    #[serde(skip_serializing_if = "Option::is_none")]
    field: Option<&'a str>,
    /// The build the error is about (poll it, or read its log).
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schema(pattern = "^[0-9a-f]{64}$")]
    key: Option<&'a str>,
    /// The URL of a failed build's log.
    #[serde(skip_serializing_if = "Option::is_none")]
    log: Option<&'a str>,
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let body = ErrorBody {
            status_code: self.status.as_u16(),
            error: ErrorDetail {
                code: self.code,
                message: &self.message,
                id: current_request_id().unwrap_or_default(),
                field: self.detail.field.as_deref(),
                key: self.detail.key.as_deref(),
                log: self.detail.log.as_deref(),
            },
        };
        let mut resp = (self.status, Json(body)).into_response();
        resp.headers_mut().insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
        for (name, value) in self.detail.headers {
            resp.headers_mut().insert(name, value);
        }
        resp
    }
}

pub type ApiResult<T> = Result<T, ApiError>;
