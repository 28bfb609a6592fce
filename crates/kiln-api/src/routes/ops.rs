//! Everything that is not a build: recipes, the signing key, health,
//! readiness, metrics, the download page, and JSON for unknown routes.

use axum::Json;
use axum::extract::State;
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{Html, IntoResponse, Response};
use kiln_domain::recipe::VersionSource;
use serde_json::json;

use crate::AppState;
use crate::error::{ApiError, ApiResult};

const PAGE: &str = include_str!("../page.html");

/// `GET /`: the download page.
pub async fn index() -> Response {
    let mut resp = Html(PAGE).into_response();
    resp.headers_mut().insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    resp
}

/// `GET /api/recipes`: the listed recipes, their platforms, versions and
/// plugin rules. Unlisted ones (`listed: false`) are left out; they are
/// still built when a request names them.
pub async fn recipes(State(state): State<AppState>) -> Response {
    let list: Vec<_> = state
        .config()
        .recipes
        .iter()
        .filter(|(_, r)| r.listed)
        .map(|(name, r)| {
            let versions = match &r.versions {
                VersionSource::Static { versions } => {
                    json!({"source": "static", "versions": versions.iter().map(ToString::to_string).collect::<Vec<_>>()})
                }
                VersionSource::GoProxy { module } => json!({"source": "go_proxy", "module": module}),
            };
            json!({
                "name": name,
                "revision": r.revision(),
                "binary": r.binary,
                "platforms": r.platforms.iter().map(ToString::to_string).collect::<Vec<_>>(),
                "versions": versions,
                "plugins": {
                    "allow": r.plugins.allow,
                    "max": r.plugins.max,
                    "versions": r.plugins.versions,
                    "go_proxy": r.plugins.go_proxy,
                    "replacements": r.plugins.replacements,
                },
            })
        })
        .collect();
    Json(json!({ "recipes": list })).into_response()
}

/// `GET /api/signing-key`: the minisign public key file.
pub async fn signing_key(State(state): State<AppState>) -> ApiResult<Response> {
    let path = state.config().signing.public_key();
    let text = tokio::fs::read_to_string(&path).await.map_err(|e| {
        tracing::warn!(path = %path.display(), error = %e, "cannot read the public signing key");
        ApiError::not_found("no_signing_key", "the farm's public signing key is not available")
    })?;
    // Only ever serve a well-formed public key, whatever the file holds.
    let key = kiln_artifact::PublicKey::parse(&text)
        .map_err(|_| ApiError::internal("the configured public signing key is not a minisign public key"))?;
    Ok(([(header::CONTENT_TYPE, "text/plain; charset=utf-8")], key.to_text()).into_response())
}

/// `GET /healthz`: the process answers.
pub async fn healthz() -> Response {
    Json(json!({"status": "ok"})).into_response()
}

/// `GET /readyz`: the database and the object store are reachable.
pub async fn readyz(State(state): State<AppState>) -> ApiResult<Response> {
    match state.ready().await {
        Ok(()) => Ok(Json(json!({"status": "ready"})).into_response()),
        Err(why) => {
            tracing::warn!(%why, "not ready");
            Err(ApiError::new(StatusCode::SERVICE_UNAVAILABLE, "not_ready", why))
        }
    }
}

/// `GET /metrics`: Prometheus text format.
pub async fn metrics(State(state): State<AppState>) -> Response {
    match state.queue().state_counts().await {
        Ok(c) => state.metrics().set_states(&c),
        Err(e) => tracing::warn!(error = %e, "metrics: cannot count builds"),
    }
    match state.queue().janitor_runs().await {
        Ok(runs) => state.metrics().set_janitor(&runs),
        Err(e) => tracing::warn!(error = %e, "metrics: cannot read the janitor's runs"),
    }
    ([(header::CONTENT_TYPE, "application/openmetrics-text; version=1.0.0; charset=utf-8")], state.metrics().encode())
        .into_response()
}

/// Any other path.
pub async fn not_found() -> ApiError {
    ApiError::not_found("no_route", "no such route; see GET /api/recipes and the download page at /")
}

/// A known path with the wrong method.
pub async fn method_not_allowed() -> ApiError {
    ApiError::new(StatusCode::METHOD_NOT_ALLOWED, "method_not_allowed", "this route does not take that method")
}
