//! Everything that is not a build: recipes, the signing key, health,
//! readiness, metrics, the download page, and JSON for unknown routes.

use axum::Json;
use axum::extract::{RawQuery, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{Html, IntoResponse, Response};
use serde::Serialize;
#[allow(unused_imports)] // used by the `example`s of the API document
use serde_json::json;
use utoipa::ToSchema;

use crate::AppState;
use crate::error::{ApiError, ApiResult, ErrorBody};
use crate::page;
use crate::query::RawQuery as Query;
use crate::views::{RecipeList, RecipeView};

/// The answer of the health and readiness probes.
#[derive(Serialize, ToSchema)]
pub struct Status {
    /// `ok` (alive) or `ready`.
    status: &'static str,
}

/// The download page, rendered for the query's choices.
///
/// Links may preselect the form with the compat API's parameters
/// (`recipe`, `os`, `arch`, `arm`, `version`, `p`); a malformed query still
/// gets the page, with nothing preselected.
#[utoipa::path(
    get,
    path = "/",
    operation_id = "downloadPage",
    tag = "operations",
    responses(
        (status = 200, description = "One HTML page over the JSON API.", content(("text/html; charset=utf-8"))),
        (status = 500, description = "The page could not be rendered.", body = ErrorBody),
    )
)]
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

/// List the recipes: their platforms, versions, plugin rules and catalogues.
///
/// Unlisted recipes (`listed: false`) are left out; they answer at
/// `/api/recipes/{name}` and still build when a request names them.
#[utoipa::path(
    get,
    path = "/api/recipes",
    operation_id = "listRecipes",
    tag = "recipes",
    responses((status = 200, description = "The farm's listed recipes.", body = RecipeList))
)]
pub async fn recipes(State(state): State<AppState>) -> Response {
    let recipes = state
        .config()
        .recipes
        .iter()
        .filter(|(_, r)| r.listed)
        .map(|(name, r)| RecipeView::new(name, r, None))
        .collect();
    Json(RecipeList { recipes }).into_response()
}

/// The farm's minisign public key, as a `.pub` file.
#[utoipa::path(
    get,
    path = "/api/signing-key",
    operation_id = "signingKey",
    tag = "operations",
    responses(
        (status = 200, description = "The public key file (an untrusted comment line, then the key).", content(("text/plain; charset=utf-8"))),
        (status = 404, description = "The public key file is not available to the API (`no_signing_key`).", body = ErrorBody),
    )
)]
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

/// Liveness: the process answers.
#[utoipa::path(
    get,
    path = "/healthz",
    operation_id = "healthz",
    tag = "operations",
    responses((status = 200, description = "Alive.", body = Status, example = json!({"status": "ok"})))
)]
pub async fn healthz() -> Response {
    Json(Status { status: "ok" }).into_response()
}

/// Readiness: the database and the object store are reachable.
#[utoipa::path(
    get,
    path = "/readyz",
    operation_id = "readyz",
    tag = "operations",
    responses(
        (status = 200, description = "Ready.", body = Status, example = json!({"status": "ready"})),
        (status = 503, description = "Not ready (`not_ready`); the message says what is unreachable.", body = ErrorBody),
    )
)]
pub async fn readyz(State(state): State<AppState>) -> ApiResult<Response> {
    match state.ready().await {
        Ok(()) => Ok(Json(Status { status: "ready" }).into_response()),
        Err(why) => {
            tracing::warn!(%why, "not ready");
            Err(ApiError::new(StatusCode::SERVICE_UNAVAILABLE, "not_ready", why))
        }
    }
}

/// Metrics in the Prometheus/OpenMetrics text format.
#[utoipa::path(
    get,
    path = "/metrics",
    operation_id = "metrics",
    tag = "operations",
    responses((status = 200, description = "Requests, builds by state, waits, the janitor's runs, the workers' free disk.",
        content(("application/openmetrics-text; version=1.0.0; charset=utf-8"))))
)]
pub async fn metrics(State(state): State<AppState>) -> Response {
    match state.queue().state_counts().await {
        Ok(c) => state.metrics().set_states(&c),
        Err(e) => tracing::warn!(error = %e, "metrics: cannot count builds"),
    }
    match state.queue().janitor_runs().await {
        Ok(runs) => state.metrics().set_janitor(&runs),
        Err(e) => tracing::warn!(error = %e, "metrics: cannot read the janitor's runs"),
    }
    match state.queue().live_workers().await {
        Ok(workers) => state.metrics().set_workers(&workers),
        Err(e) => tracing::warn!(error = %e, "metrics: cannot read the workers"),
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
