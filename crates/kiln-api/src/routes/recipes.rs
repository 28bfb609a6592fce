//! What the download page asks before it builds: a recipe with its plugin
//! catalogue and figures (`GET /api/recipes/{name}`), the versions on offer
//! (`GET /api/recipes/{name}/versions[?module=M]`), and whether an exact
//! combination is already built (`GET /api/resolve?<compat query>`), which
//! validates and resolves like a build request and computes its key, but
//! never enqueues.

use axum::Json;
use axum::extract::{Path, RawQuery, State};
use axum::http::{HeaderValue, header};
use axum::response::{IntoResponse, Response};
use kiln_domain::image_ref::IMAGE_OS;
use kiln_domain::{BuildSpec, ImageName, ModulePath, Recipe, Tag, VersionWanted};
use kiln_queue::RecipeStats;
use percent_encoding::{AsciiSet, NON_ALPHANUMERIC, utf8_percent_encode};
use serde_json::{Value, json};

use crate::AppState;
use crate::error::{ApiError, ApiResult, ErrorBody};
use crate::openapi::CompatParams;
use crate::query::RawQuery as Query;
use crate::routes::builds::prepare;
use crate::routes::compat::{self, file_name};
use crate::views::{BuildView, RecipeView};

/// A recipe as `/api/recipes` lists it; with `stats`, its catalogue carries
/// each plugin's build count and the recipe its typical build time.
pub fn recipe_json(name: &str, r: &Recipe, stats: Option<&RecipeStats>) -> Value {
    serde_json::to_value(RecipeView::new(name, r, stats)).expect("a recipe view serializes")
}

/// The versions of a recipe's product or plugin, newest first.
#[derive(serde::Serialize, utoipa::ToSchema)]
pub struct VersionList {
    /// The recipe's name.
    recipe: String,
    /// The plugin asked about, if any.
    module: Option<String>,
    /// Absolute versions, newest first.
    versions: Vec<String>,
    /// The one "latest" resolves to.
    latest: Option<String>,
}

/// Read one recipe, listed or not, with its figures.
#[utoipa::path(
    get,
    path = "/api/recipes/{name}",
    operation_id = "getRecipe",
    tag = "recipes",
    params(("name" = String, Path, description = "The recipe's name.")),
    responses(
        (status = 200, description = "The recipe, with `typical_secs`, `recent_builds` and each catalogue plugin's `builds`.", body = RecipeView),
        (status = 400, description = "A malformed recipe name (`invalid_recipe`).", body = ErrorBody),
        (status = 404, description = "No such recipe (`unknown_recipe`).", body = ErrorBody),
        (status = 503, description = "The database is unreachable.", body = ErrorBody),
    )
)]
pub async fn recipe(State(state): State<AppState>, Path(name): Path<String>) -> ApiResult<Response> {
    let recipe = state.recipe(&name)?;
    let stats = state.recipe_stats(&name).await?;
    Ok(no_cache(Json(recipe_json(&name, recipe, Some(&stats))).into_response()))
}

/// The versions on offer, of the product or of one plugin.
///
/// Newest first, and which one "latest" means.
#[utoipa::path(
    get,
    path = "/api/recipes/{name}/versions",
    operation_id = "listVersions",
    tag = "recipes",
    params(
        ("name" = String, Path, description = "The recipe's name."),
        ("module" = Option<String>, Query, description = "A plugin's module path; the product's versions when missing."),
    ),
    responses(
        (status = 200, description = "The versions.", body = VersionList),
        (status = 400, description = "A malformed recipe name, query or module path, or a plugin the recipe does not allow.", body = ErrorBody),
        (status = 404, description = "No such recipe (`unknown_recipe`).", body = ErrorBody),
        (status = 502, description = "The Go module proxy could not be asked (`proxy_unreachable`).", body = ErrorBody),
    )
)]
pub async fn versions(
    State(state): State<AppState>,
    Path(name): Path<String>,
    RawQuery(q): RawQuery,
) -> ApiResult<Response> {
    let q = Query::parse(q.as_deref())?;
    let recipe = state.recipe(&name)?;
    let module = match q.first("module").filter(|m| !m.is_empty()) {
        None => None,
        Some(m) => {
            let module = ModulePath::parse("module", m)?;
            if !recipe.plugins.allows(&module) {
                return Err(ApiError::bad_request(
                    "module",
                    "plugin_not_allowed",
                    format!(
                        "recipe {name} does not allow plugin {module}; allowed: {}",
                        recipe.plugins.allow.join(", ")
                    ),
                ));
            }
            Some(module)
        }
    };
    let list = state.resolver().offered(recipe, module.as_ref()).await?;
    let latest = kiln_domain::version::choose("version", &list, &VersionWanted::Latest).ok();
    let newest_first: Vec<String> = list.iter().rev().map(ToString::to_string).collect();
    let module = module.map(|m| m.to_string());
    Ok(Json(VersionList { recipe: name, module, versions: newest_first, latest: latest.map(|v| v.to_string()) })
        .into_response())
}

/// Resolve a compat query to a build key, without building anything.
///
/// The compat API's query, validated and resolved to absolute versions and
/// a build key like a build request, but never enqueued; with the build's
/// state and JSON when it exists (`ready` once it has succeeded), its
/// typical build time, the compat file name and URL, and the image it
/// would be pulled as.
#[utoipa::path(
    get,
    path = "/api/resolve",
    operation_id = "resolve",
    tag = "recipes",
    params(CompatParams),
    responses(
        (status = 200, description = "The resolved request: `key`, `recipe`, `version`, `platform`, `os`, `arch`, `arm`, `plugins`, `state`, `ready`, `build`, `typical_secs`, `file_name`, `compat`, `image`.", body = Object),
        (status = 400, description = "An invalid request; `field` names the parameter.", body = ErrorBody),
        (status = 404, description = "No such recipe.", body = ErrorBody),
        (status = 502, description = "The Go module proxy could not be asked for a version.", body = ErrorBody),
        (status = 503, description = "The database is unreachable.", body = ErrorBody),
    )
)]
pub async fn resolve(State(state): State<AppState>, RawQuery(q): RawQuery) -> ApiResult<Response> {
    let q = Query::parse(q.as_deref())?;
    let req = compat::request(&state, &q)?;
    let spec = prepare(&state, &req).await?;
    let recipe = state.recipe(&spec.recipe)?;
    let key = spec.key();
    let build = state.lookup(&key).await?;
    let stats = state.recipe_stats(&spec.recipe).await?;
    let unpinned =
        req.plugins.iter().all(|p| VersionWanted::parse("p", p.version.as_deref()) == Ok(VersionWanted::Latest));
    let body = json!({
        "key": key,
        "recipe": spec.recipe,
        "version": spec.version.to_string(),
        "platform": spec.platform.to_string(),
        "os": spec.platform.os,
        "arch": spec.platform.arch,
        "arm": spec.platform.arm.map(|a| a.to_string()),
        "plugins": spec.plugins.iter().map(|p| json!({"module": p.module, "version": p.version.to_string()})).collect::<Vec<_>>(),
        "state": build.as_ref().map(|b| b.state),
        "ready": build.as_ref().is_some_and(|b| b.state == kiln_domain::BuildState::Succeeded),
        "build": build.as_ref().map(|b| BuildView::new(&state, b)),
        "typical_secs": stats.typical_secs.map(f64::round),
        "file_name": file_name(recipe, &spec.platform),
        "compat": state.url(&compat_path(&spec)),
        "image": image_ref(recipe, &spec, unpinned),
    });
    Ok(no_cache(Json(body).into_response()))
}

fn no_cache(mut resp: Response) -> Response {
    resp.headers_mut().insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    resp
}

/// Query values keep letters, digits and `-._~/@`; the rest is escaped.
const QUERY_VALUE: &AsciiSet =
    &NON_ALPHANUMERIC.remove(b'-').remove(b'.').remove(b'_').remove(b'~').remove(b'/').remove(b'@');

/// `/api/compat?…` for exactly this build: every version pinned.
pub fn compat_path(spec: &BuildSpec) -> String {
    let enc = |s: &str| utf8_percent_encode(s, QUERY_VALUE).to_string();
    let p = &spec.platform;
    let mut path = format!("/api/compat?recipe={}&os={}&arch={}", enc(&spec.recipe), enc(&p.os), enc(&p.arch));
    if let Some(arm) = p.arm {
        path.push_str(&format!("&arm={arm}"));
    }
    path.push_str(&format!("&version={}", enc(&spec.version.to_string())));
    for plugin in &spec.plugins {
        path.push_str(&format!("&p={}", enc(&plugin.to_string())));
    }
    for r in &spec.replacements {
        let mut value = format!("{}={}", r.module, r.with);
        if let Some(v) = &r.version {
            value.push_str(&format!("@{v}"));
        }
        path.push_str(&format!("&r={}", enc(&value)));
    }
    path
}

/// The `docker pull` name and tag of a build, for recipes with images and
/// linux builds: `<recipe>[/<plugin>…]:<version>` when the plugins were
/// asked for at their latest versions (what such a name pulls), else the
/// build's own `bk-<key>` tag. `None` when no image is made.
fn image_ref(recipe: &Recipe, spec: &BuildSpec, unpinned: bool) -> Option<String> {
    if recipe.oci.is_none() || spec.platform.os != IMAGE_OS || !spec.replacements.is_empty() {
        return None;
    }
    let modules: Vec<ModulePath> = spec.plugins.iter().map(|p| p.module.clone()).collect();
    let name = ImageName::new(&spec.recipe, &modules).ok()?;
    let tag = if unpinned { Tag::for_version(&spec.version) } else { Tag::Build(spec.key()).to_string() };
    Some(format!("{name}:{tag}"))
}
