//! `GET`/`HEAD /api/compat`: the public Caddy download API's shape.
//!
//! Parameters: `os`, `arch`, `arm`, repeated `p` (`module[@version]`),
//! `version`, repeated `r` (`module=target[@version]`, where the recipe
//! allows replacements), and Kiln's own `recipe` (default `caddy`, where the
//! farm has that recipe; else it must be given) and `platform`
//! (`os/arch[/arm]`, used when `os` is absent: what the download page's form
//! sends when JavaScript is off). Unknown
//! parameters (`idempotency`, …) are ignored; for repeated single-valued
//! parameters the first wins, as Go's `Query().Get` does.
//!
//! In a private farm a hit needs a token with the `download` scope and a
//! miss also `submit` (it starts a build, counted in the token's quota).
//!
//! The request blocks until the build has ended or `api.compat_timeout_secs`
//! has passed: the binary (`200`), the build's error (`422`), or the key to
//! poll (`504`). Identical requests, however many at once, share one build.
//! When the server shuts down, waiting requests are answered `503
//! shutting_down` at once (a load balancer retries them elsewhere).
//!
//! A query string once resolved is remembered ([`crate::resolved`]) for as
//! long as its resolution holds, and the answer says so to caches in front
//! (`Cache-Control: public, max-age=<seconds left>`): unlike a build's own
//! URLs, a compat URL's answer changes when a new version comes out.

use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::extract::{RawQuery, State};
use axum::http::{HeaderValue, Method, StatusCode};
use axum::response::Response;
use kiln_domain::request::ReplacementRequest;
use kiln_domain::{BuildKey, BuildRequest, BuildSpec, BuildState, PluginRequest, Scope};
use kiln_queue::{Build, priority};
use kiln_storage::ObjectName;

use crate::AppState;
use crate::auth::Caller;
use crate::error::{ApiError, ApiResult, ErrorBody};
use crate::openapi::{CompatParams, ObjectHeaders};
use crate::query::RawQuery as Query;
use crate::resolved::Resolved;
use crate::routes::builds::{enqueue, failed, prepare_until};
use crate::serve::{self, Extra, Fetch};
use crate::wait::{Waited, wait_for};

/// The recipe used when a request names none.
pub const DEFAULT_RECIPE: &str = "caddy";

/// The compat query as a build request; without `recipe`, the farm's
/// [`DEFAULT_RECIPE`] when it has one.
pub fn request(state: &AppState, q: &Query) -> ApiResult<BuildRequest> {
    let get = |n: &str| q.first(n).map(str::to_owned);
    let recipe = match get("recipe").filter(|r| !r.is_empty()) {
        Some(r) => r,
        None if state.config().recipes.contains_key(DEFAULT_RECIPE) => DEFAULT_RECIPE.to_owned(),
        None => {
            return Err(ApiError::bad_request(
                "recipe",
                "missing_field",
                format!(
                    "recipe is missing, and this farm has no {DEFAULT_RECIPE:?} recipe to default to; \
                     add recipe=NAME, one of: {}",
                    state.listed_recipes().join(", ")
                ),
            ));
        }
    };
    let replacements =
        q.all("r").filter(|r| !r.is_empty()).map(ReplacementRequest::from_compat).collect::<Result<Vec<_>, _>>()?;
    let (os, arch, arm) = match (get("os"), q.first("platform").filter(|p| !p.is_empty())) {
        (None, Some(platform)) => {
            let mut parts = platform.splitn(3, '/').map(str::to_owned);
            (parts.next().unwrap_or_default(), parts.next().unwrap_or_default(), parts.next())
        }
        (os, _) => (os.unwrap_or_default(), get("arch").unwrap_or_default(), get("arm")),
    };
    Ok(BuildRequest {
        recipe,
        version: get("version").filter(|v| !v.is_empty()),
        os,
        arch,
        arm: arm.filter(|a| !a.is_empty()),
        plugins: q.all("p").filter(|p| !p.is_empty()).map(PluginRequest::from_compat).collect(),
        replacements,
    })
}

/// Name fields as the compat API's parameters: `plugins[3].module` → `p`.
fn compat_field(mut e: ApiError) -> ApiError {
    if let Some(f) = &e.detail.field {
        if f.starts_with("plugins") {
            e.detail.field = Some("p".into());
        } else if f.starts_with("replacements") {
            e.detail.field = Some("r".into());
        }
    }
    e
}

/// Download a binary the way the Caddy download API serves one.
///
/// Blocks until the build has ended (at most `api.compat_timeout_secs`),
/// then answers with the binary as an attachment named
/// `<binary>_<os>_<arch>_custom` (`.exe` on windows). A second identical
/// request is served from storage at once. `HEAD` answers with the headers
/// and a `Location` of the build's immutable binary URL. Unknown parameters
/// (`idempotency`, …) are ignored.
#[utoipa::path(
    method(get, head),
    path = "/api/compat",
    operation_id = "compat",
    tag = "compat",
    params(CompatParams, ObjectHeaders),
    responses(
        (status = 200, description = "The binary.", content(("application/octet-stream")),
            headers(
                ("Content-Disposition" = String, description = "`attachment; filename=<binary>_<os>_<arch>_custom`"),
                ("ETag" = String, description = "The binary's SHA-256 as a strong ETag"),
                ("Location" = String, description = "`HEAD` only: the build's binary URL"),
            )),
        (status = 206, description = "The requested `Range` of the binary.", content(("application/octet-stream"))),
        (status = 304, description = "`If-None-Match` matched the `ETag`."),
        (status = 400, description = "An invalid request; `field` names the parameter (`os`, `arch`, `p`, `version`, …).", body = ErrorBody),
        (status = 404, description = "No such recipe.", body = ErrorBody),
        (status = 416, description = "The `Range` lies outside the binary.", body = ErrorBody),
        (status = 422, description = "The build failed (`build_failed`, with `log`) or was cancelled.", body = ErrorBody),
        (status = 502, description = "The Go module proxy could not be asked for a version.", body = ErrorBody),
        (status = 503, description = "The database or the object store is unreachable.", body = ErrorBody),
        (status = 504, description = "The build has not ended in time (`build_pending`); `key` is the build to poll.", body = ErrorBody),
    )
)]
pub async fn compat(
    State(state): State<AppState>,
    caller: Caller,
    RawQuery(q): RawQuery,
    Fetch { method, headers, wire }: Fetch,
) -> ApiResult<Response> {
    let resolved = match state.resolutions().get(q.as_deref().unwrap_or_default()) {
        Some(r) => r,
        None => resolve(&state, q.as_deref()).await?,
    };
    let key = &resolved.key;

    // A cache hit: no parsing or hashing (the resolution is remembered).
    let build = ended_build(&state, &caller, &resolved.spec, key, "compat").await?;
    match build.state {
        BuildState::Succeeded => {}
        BuildState::Failed => return Err(failed(&state, &build)),
        _ => {
            return Err(ApiError::new(
                StatusCode::UNPROCESSABLE_ENTITY,
                "build_cancelled",
                format!("build {key} was cancelled"),
            )
            .with_key(key));
        }
    }
    // Downstream caches may keep the answer as long as the resolution holds.
    let max_age = resolved.secs_left(std::time::Instant::now());
    let cache_control = HeaderValue::from_str(&format!("public, max-age={max_age}")).expect("ASCII");
    let extra = Extra {
        disposition: Some(resolved.disposition.clone()),
        location: if method == Method::HEAD { resolved.binary_url.clone() } else { None },
        cache_control: Some(cache_control),
        presign: false,
        wire,
    };
    serve::object(&state, &build, ObjectName::Binary, &method, &headers, extra).await
}

/// The build of `spec` once it has ended (succeeded, failed or cancelled):
/// at once when it has, else enqueued (identical requests share one build)
/// and waited for, up to `api.compat_timeout_secs` (`504 build_pending`
/// then; `503 shutting_down` when the server stops meanwhile). `kind` names
/// the waiters in the metrics (`compat`, `registry`).
/// `key` is `spec`'s (passed in, as callers have it already).
pub async fn ended_build(
    state: &AppState,
    caller: &Caller,
    spec: &BuildSpec,
    key: &BuildKey,
    kind: &'static str,
) -> ApiResult<Arc<Build>> {
    // A cache hit: one indexed lookup of the build (or none while it is hot).
    if let Some(b) = state.lookup(key).await?
        && b.state == BuildState::Succeeded
    {
        return Ok(b);
    }
    // A miss may start a build: it needs `submit`, within the token's quota.
    caller.require(state.config(), Scope::Submit)?;
    let enqueued = enqueue(state, caller, spec, priority::INTERACTIVE).await?;
    let build = enqueued.build;
    tracing::debug!(build = %key, outcome = ?enqueued.outcome, state = %build.state, kind, "waiting for a build");
    if build.state.is_final() {
        return Ok(Arc::new(build));
    }
    let started = Instant::now();
    let timeout = Duration::from_secs(state.config().api.compat_timeout_secs);
    let waiting = state.metrics().waiting(kind);
    let waited = wait_for(state, key, timeout, BuildState::is_final).await?;
    drop(waiting);
    state.metrics().waited(kind, started.elapsed().as_secs_f64());
    match waited {
        Waited::Done(b) => Ok(b),
        Waited::TimedOut(b) => Err(timed_out(state, &b, timeout)),
        Waited::Stopped(_) => Err(ApiError::shutting_down().with_key(key)),
    }
}

/// Parse, validate and resolve a compat query, and remember the outcome.
async fn resolve(state: &AppState, raw: Option<&str>) -> ApiResult<Arc<Resolved>> {
    let q = Query::parse(raw)?;
    let req = request(state, &q).map_err(compat_field)?;
    let (spec, until) = prepare_until(state, &req).await.map_err(compat_field)?;
    let key = spec.key();
    let recipe = state.recipe(&spec.recipe)?;
    let resolved = Resolved {
        disposition: serve::disposition(&file_name(recipe, &spec.platform)),
        binary_url: HeaderValue::from_str(&state.url(&format!("/api/builds/{key}/binary"))).ok(),
        key,
        spec,
        until,
    };
    Ok(state.resolutions().insert(raw.unwrap_or_default(), resolved))
}

/// The binary's download name, as the Caddy download API gives it:
/// `<binary>_<os>_<arch>[<arm>]_custom`, `.exe` on windows.
pub fn file_name(recipe: &kiln_domain::Recipe, p: &kiln_domain::Platform) -> String {
    let arch = match p.arm {
        Some(v) => format!("{}{v}", p.arch),
        None => p.arch.clone(),
    };
    let mut name = format!("{}_{}_{}_custom", recipe.binary, p.os, arch);
    if p.os == "windows" {
        name.push_str(".exe");
    }
    name
}

fn timed_out(state: &AppState, build: &Build, timeout: Duration) -> ApiError {
    ApiError::new(
        StatusCode::GATEWAY_TIMEOUT,
        "build_pending",
        format!(
            "build {} is still {} after {} s; poll {} for it",
            build.key,
            build.state,
            timeout.as_secs(),
            state.url(&format!("/api/builds/{}?wait=30", build.key))
        ),
    )
    .with_key(&build.key)
}
