//! Everything that is not a build: recipes, the signing key, health,
//! readiness, metrics, the download page, and JSON for unknown routes.

use axum::Json;
use axum::extract::{RawQuery, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{Html, IntoResponse, Response};
use serde_json::json;

use crate::AppState;
use crate::error::{ApiError, ApiResult};
use crate::page;
use crate::query::RawQuery as Query;

/// `GET /`: the download page, rendered for the query's choices.
pub async fn index(State(state): State<AppState>, RawQuery(q): RawQuery, headers: HeaderMap) -> ApiResult<Response> {
    // A malformed query still gets the page, with nothing preselected.
    let q = Query::parse(q.as_deref()).unwrap_or_default();
    let choices = page::Choices::from_query(&q);
    let recipes: Vec<_> = state.config().recipes.iter().map(|(n, r)| (n.as_str(), r)).collect();
    let stats = match page::chosen_recipe(&recipes, &choices) {
        Some((name, _)) => match state.recipe_stats(name).await {
            Ok(s) => Some(s),
            Err(e) => {
                tracing::warn!(error = %e, "download page: no build figures");
                None
            }
        },
        None => None,
    };
    let user_agent = headers.get(header::USER_AGENT).and_then(|v| v.to_str().ok());
    let input = page::PageInput { recipes, choices, user_agent, stats: stats.as_deref() };
    let html = page::render(&input).map_err(|e| {
        tracing::error!(error = %e, "download page: rendering failed");
        ApiError::internal("the download page could not be rendered")
    })?;
    let mut resp = Html(html).into_response();
    resp.headers_mut().insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    // Nothing on the page comes from elsewhere, and nothing may.
    resp.headers_mut().insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static(
            "default-src 'none'; script-src 'unsafe-inline'; style-src 'unsafe-inline'; connect-src 'self'; \
             img-src 'self'; form-action 'self'; base-uri 'none'; frame-ancestors 'none'",
        ),
    );
    Ok(resp)
}

/// `GET /api/recipes`: the listed recipes, their platforms, versions,
/// plugin rules and catalogues (unlisted ones answer at `/api/recipes/{name}`).
pub async fn recipes(State(state): State<AppState>) -> Response {
    let list: Vec<_> = state
        .config()
        .recipes
        .iter()
        .filter(|(_, r)| r.listed)
        .map(|(name, r)| crate::routes::recipes::recipe_json(name, r, None))
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
