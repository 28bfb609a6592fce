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
//! The request blocks until the build has ended or `api.compat_timeout_secs`
//! has passed: the binary (`200`), the build's error (`422`), or the key to
//! poll (`504`). Identical requests, however many at once, share one build.

use std::time::{Duration, Instant};

use axum::extract::{RawQuery, State};
use axum::http::{HeaderMap, Method, StatusCode};
use axum::response::Response;
use kiln_domain::request::ReplacementRequest;
use kiln_domain::{BuildRequest, BuildState, PluginRequest};
use kiln_queue::{Build, priority};
use kiln_storage::ObjectName;

use crate::AppState;
use crate::error::{ApiError, ApiResult};
use crate::query::RawQuery as Query;
use crate::routes::builds::{failed, prepare};
use crate::serve::{self, Extra};
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

/// `GET` and `HEAD /api/compat`.
pub async fn compat(
    State(state): State<AppState>,
    RawQuery(q): RawQuery,
    method: Method,
    headers: HeaderMap,
) -> ApiResult<Response> {
    let q = Query::parse(q.as_deref())?;
    let req = request(&state, &q).map_err(compat_field)?;
    let spec = prepare(&state, &req).await.map_err(compat_field)?;
    let key = spec.key();

    // A cache hit: one indexed lookup (or none while the build is hot).
    let build = match state.lookup(&key).await? {
        Some(b) if b.state == BuildState::Succeeded => b,
        _ => {
            let enqueued = state.queue().enqueue(&spec, priority::INTERACTIVE).await?;
            let build = enqueued.build;
            tracing::debug!(build = %key, outcome = ?enqueued.outcome, state = %build.state, "compat request");
            if build.state.is_final() {
                std::sync::Arc::new(build)
            } else {
                let started = Instant::now();
                let timeout = Duration::from_secs(state.config().api.compat_timeout_secs);
                let waited = wait_for(&state, &key, timeout, BuildState::is_final).await?;
                state.metrics().waited("compat", started.elapsed().as_secs_f64());
                match waited {
                    Waited::Done(b) => b,
                    Waited::TimedOut(b) => return Err(timed_out(&state, &b, timeout)),
                }
            }
        }
    };
    match build.state {
        BuildState::Succeeded => {}
        BuildState::Failed => return Err(failed(&state, &build)),
        _ => {
            return Err(ApiError::new(
                StatusCode::UNPROCESSABLE_ENTITY,
                "build_cancelled",
                format!("build {key} was cancelled"),
            )
            .with_key(&key));
        }
    }
    let recipe = state.recipe(&spec.recipe)?;
    let extra = Extra {
        filename: Some(file_name(recipe, &spec.platform)),
        location: (method == Method::HEAD).then(|| state.url(&format!("/api/builds/{key}/binary"))),
        presign: false,
    };
    serve::object(&state, &build, ObjectName::Binary, &method, &headers, extra).await
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
