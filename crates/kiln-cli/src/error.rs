//! What can go wrong between `kiln` and a farm, and the exit status each gives.
//!
//! Commands return `anyhow` errors; those that carry a [`Failure`] somewhere
//! in their chain exit with its [`Failure::exit_code`], so scripts can tell a
//! failed build (1) from a request to fix (2) and a server that did not
//! answer (3). Every other error is a local one (a file, an argument) and
//! exits 2.

use std::fmt;

use serde::Deserialize;
use serde_json::json;

use crate::commands::{EXIT_ERROR, EXIT_FAILED, EXIT_UNREACHABLE};

/// An error the API answered with: `{"status_code": N, "error": {"code", "message", "id", …}}`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ApiError {
    /// The HTTP status.
    pub status: u16,
    pub code: String,
    pub message: String,
    /// The request id, to find the server's log lines.
    pub id: Option<String>,
    /// The input to fix (on a 400).
    pub field: Option<String>,
    /// The build concerned.
    pub key: Option<String>,
    /// The URL of a failed build's log.
    pub log: Option<String>,
}

#[derive(Deserialize)]
struct Body {
    error: Inner,
}

/// The registry's error shape (`/v2/`): `{"errors": [{"code", "message", "detail"}]}`.
#[derive(Deserialize)]
struct RegistryBody {
    errors: Vec<RegistryInner>,
}

#[derive(Deserialize)]
struct RegistryInner {
    code: String,
    #[serde(default)]
    message: String,
    #[serde(default)]
    detail: serde_json::Value,
}

#[derive(Deserialize)]
struct Inner {
    code: String,
    message: String,
    id: Option<String>,
    field: Option<String>,
    key: Option<String>,
    log: Option<String>,
}

impl ApiError {
    /// Read an error response's body, in the API's shape or the registry's
    /// (`/v2/`); anything else (a proxy's HTML page, say) becomes an error
    /// quoting its first line.
    pub fn from_body(status: u16, body: &[u8]) -> Self {
        if let Ok(RegistryBody { errors }) = serde_json::from_slice::<RegistryBody>(body)
            && let Some(first) = errors.into_iter().next()
        {
            let text = |name: &str| first.detail.get(name).and_then(|v| v.as_str()).map(str::to_owned);
            return Self {
                status,
                code: first.code,
                message: first.message,
                id: text("request_id").filter(|s| !s.is_empty()),
                field: None,
                key: text("key"),
                log: text("log"),
            };
        }
        match serde_json::from_slice::<Body>(body) {
            Ok(Body { error: e }) => Self {
                status,
                code: e.code,
                message: e.message,
                id: e.id.filter(|s| !s.is_empty()),
                field: e.field,
                key: e.key,
                log: e.log,
            },
            Err(_) => {
                let text = String::from_utf8_lossy(body);
                let first = text.lines().find(|l| !l.trim().is_empty()).unwrap_or("").trim();
                let message = if first.is_empty() {
                    format!("the server answered HTTP {status} with no explanation")
                } else {
                    format!("the server answered HTTP {status}: {}", first.chars().take(200).collect::<String>())
                };
                Self { status, code: format!("http_{status}"), message, id: None, field: None, key: None, log: None }
            }
        }
    }
}

impl fmt::Display for ApiError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} [{}, HTTP {}", self.message, self.code, self.status)?;
        if let Some(field) = &self.field {
            write!(f, ", field {field}")?;
        }
        if let Some(id) = &self.id {
            write!(f, ", request {id}")?;
        }
        f.write_str("]")?;
        if let Some(log) = &self.log {
            write!(f, "\nlog: {log}")?;
        }
        Ok(())
    }
}

impl std::error::Error for ApiError {}

/// A failure with a meaning for scripts.
#[derive(Debug, thiserror::Error)]
pub enum Failure {
    /// The server answered with an error.
    #[error("{0}")]
    Api(Box<ApiError>),
    /// No answer: refused, reset, no route, or no bytes for too long.
    #[error("cannot reach the Kiln server at {url}: {reason} (set --server or KILN_SERVER)")]
    Unreachable { url: String, reason: String },
    /// `--timeout` ran out while the build went on.
    #[error(
        "timed out after {secs} s waiting for build {key}; it goes on on the server: `kiln status {key}`, `kiln download {key}`"
    )]
    TimedOut { key: String, secs: u64 },
    /// The build ended failed or cancelled.
    #[error("build {key} {state}: {error}\nlog: {log}")]
    Build { key: String, state: String, error: String, log: String },
    /// The build has not finished yet.
    #[error("build {key} is {state}; its files exist once it has succeeded (`kiln status {key}` shows its progress)")]
    NotReady { key: String, state: String },
    /// What was downloaded does not carry a good signature; nothing was written.
    #[error("{0}; nothing was written")]
    Unverified(String),
    /// The server said something a Kiln server does not say.
    #[error("unexpected answer from the server: {0}")]
    Protocol(String),
}

impl Failure {
    /// The exit status: 1 the build failed (or its files failed
    /// verification), 2 the request needs fixing, 3 no usable answer.
    pub fn exit_code(&self) -> u8 {
        match self {
            Failure::Api(e) if e.status == 422 => EXIT_FAILED,
            Failure::Api(e) if e.status >= 500 => EXIT_UNREACHABLE,
            Failure::Api(_) | Failure::NotReady { .. } => EXIT_ERROR,
            Failure::Unreachable { .. } | Failure::TimedOut { .. } | Failure::Protocol(_) => EXIT_UNREACHABLE,
            Failure::Build { .. } | Failure::Unverified(_) => EXIT_FAILED,
        }
    }

    /// Worth asking again: the server was away or said it is (5xx).
    pub fn is_transient(&self) -> bool {
        match self {
            Failure::Unreachable { .. } => true,
            Failure::Api(e) => matches!(e.status, 502..=504),
            _ => false,
        }
    }

    /// A machine-readable code, the API's own where it gave one.
    pub fn code(&self) -> &str {
        match self {
            Failure::Api(e) => &e.code,
            Failure::Unreachable { .. } => "unreachable",
            Failure::TimedOut { .. } => "timed_out",
            Failure::Build { state, .. } if state == "cancelled" => "build_cancelled",
            Failure::Build { .. } => "build_failed",
            Failure::NotReady { .. } => "not_ready",
            Failure::Unverified(_) => "bad_signature",
            Failure::Protocol(_) => "unexpected_answer",
        }
    }
}

/// The exit status of a command's error.
pub fn exit_code(e: &anyhow::Error) -> u8 {
    e.chain().find_map(|c| c.downcast_ref::<Failure>()).map_or(EXIT_ERROR, Failure::exit_code)
}

/// An error as `--json` prints it: the API's error shape plus the exit status.
pub fn error_json(e: &anyhow::Error) -> serde_json::Value {
    let code = exit_code(e);
    let failure = e.chain().find_map(|c| c.downcast_ref::<Failure>());
    let mut error = json!({
        "code": failure.map_or("error", Failure::code),
        "message": kiln_process::error_chain(e),
    });
    let mut status = serde_json::Value::Null;
    match failure {
        Some(Failure::Api(api)) => {
            status = json!(api.status);
            error["message"] = json!(api.message);
            for (name, value) in [("id", &api.id), ("field", &api.field), ("key", &api.key), ("log", &api.log)] {
                if let Some(v) = value {
                    error[name] = json!(v);
                }
            }
        }
        Some(Failure::Build { key, state, error: why, log }) => {
            error["message"] = json!(format!("build {key} {state}: {why}"));
            error["key"] = json!(key);
            error["log"] = json!(log);
        }
        Some(Failure::TimedOut { key, .. } | Failure::NotReady { key, .. }) => error["key"] = json!(key),
        _ => {}
    }
    json!({"status_code": status, "error": error, "exit_code": code})
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_the_api_error_shape() {
        let body =
            br#"{"status_code":400,"error":{"code":"invalid_platform","message":"no plan9","id":"r1","field":"os"}}"#;
        let e = ApiError::from_body(400, body);
        assert_eq!(
            (e.code.as_str(), e.message.as_str(), e.field.as_deref()),
            ("invalid_platform", "no plan9", Some("os"))
        );
        assert_eq!(e.to_string(), "no plan9 [invalid_platform, HTTP 400, field os, request r1]");
        assert_eq!(Failure::Api(Box::new(e)).exit_code(), EXIT_ERROR);
    }

    #[test]
    fn reads_the_registry_error_shape() {
        let body = br#"{"errors":[{"code":"MANIFEST_UNKNOWN","message":"build k failed","detail":
            {"api_code":"build_failed","key":"k","log":"http://farm/api/builds/k/log","request_id":"r2"}}]}"#;
        let e = ApiError::from_body(404, body);
        assert_eq!((e.code.as_str(), e.message.as_str()), ("MANIFEST_UNKNOWN", "build k failed"));
        assert_eq!((e.key.as_deref(), e.id.as_deref()), (Some("k"), Some("r2")));
        assert_eq!(
            e.to_string(),
            "build k failed [MANIFEST_UNKNOWN, HTTP 404, request r2]\nlog: http://farm/api/builds/k/log"
        );
        let bare =
            ApiError::from_body(405, br#"{"errors":[{"code":"UNSUPPORTED","message":"pulls only","detail":null}]}"#);
        assert_eq!((bare.code.as_str(), bare.key), ("UNSUPPORTED", None));
    }

    #[test]
    fn a_body_that_is_not_the_api_shape_is_quoted() {
        let e = ApiError::from_body(502, b"\n<html>Bad Gateway</html>\n");
        assert_eq!(e.code, "http_502");
        assert!(e.message.contains("<html>Bad Gateway</html>"), "{}", e.message);
        let f = Failure::Api(Box::new(e));
        assert!(f.is_transient());
        assert_eq!(f.exit_code(), EXIT_UNREACHABLE);
    }

    #[test]
    fn exit_codes_for_scripts() {
        let api = |status| Failure::Api(Box::new(ApiError::from_body(status, b"")));
        assert_eq!(api(422).exit_code(), EXIT_FAILED);
        assert_eq!(api(404).exit_code(), EXIT_ERROR);
        assert_eq!(api(503).exit_code(), EXIT_UNREACHABLE);
        assert_eq!(Failure::TimedOut { key: "k".into(), secs: 1 }.exit_code(), EXIT_UNREACHABLE);
        assert_eq!(Failure::Unverified("x".into()).exit_code(), EXIT_FAILED);
        let wrapped = anyhow::Error::new(Failure::Unreachable { url: "u".into(), reason: "r".into() }).context("doing");
        assert_eq!(exit_code(&wrapped), EXIT_UNREACHABLE);
        assert_eq!(error_json(&wrapped)["error"]["code"], "unreachable");
        assert_eq!(exit_code(&anyhow::anyhow!("local")), EXIT_ERROR);
    }
}
