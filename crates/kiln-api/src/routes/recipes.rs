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
use kiln_domain::recipe::VersionSource;
use kiln_domain::{BuildSpec, ImageName, ModulePath, Recipe, Tag, VersionWanted};
use kiln_queue::RecipeStats;
use percent_encoding::{AsciiSet, NON_ALPHANUMERIC, utf8_percent_encode};
use serde_json::{Value, json};

use crate::AppState;
use crate::error::{ApiError, ApiResult};
use crate::query::RawQuery as Query;
use crate::routes::builds::prepare;
use crate::routes::compat::{self, file_name};
use crate::views::BuildView;

/// A recipe as `/api/recipes` lists it; with `stats`, its catalogue carries
/// each plugin's build count and the recipe its typical build time.
pub fn recipe_json(name: &str, r: &Recipe, stats: Option<&RecipeStats>) -> Value {
    let versions = match &r.versions {
        VersionSource::Static { versions } => {
            json!({"source": "static", "versions": versions.iter().map(ToString::to_string).collect::<Vec<_>>()})
        }
        VersionSource::GoProxy { module } => json!({"source": "go_proxy", "module": module}),
    };
    let catalogue: Vec<Value> = r
        .catalogue
        .iter()
        .map(|p| {
            let mut entry = json!({
                "module": p.module,
                "description": p.description,
                "docs": p.docs,
                "category": p.category,
            });
            if let Some(s) = stats {
                entry["builds"] = json!(s.plugin_builds.get(p.module.as_str()).copied().unwrap_or(0));
            }
            entry
        })
        .collect();
    let mut out = json!({
        "name": name,
        "revision": r.revision(),
        "binary": r.binary,
        "listed": r.listed,
        "images": r.oci.is_some(),
        "platforms": r.platforms.iter().map(ToString::to_string).collect::<Vec<_>>(),
        "versions": versions,
        "plugins": {
            "allow": r.plugins.allow,
            "max": r.plugins.max,
            "versions": r.plugins.versions,
            "go_proxy": r.plugins.go_proxy,
            "replacements": r.plugins.replacements,
        },
        "catalogue": catalogue,
    });
    if let Some(s) = stats {
        out["typical_secs"] = json!(s.typical_secs.map(f64::round));
        out["recent_builds"] = json!(s.recent_builds);
    }
    out
}

/// `GET /api/recipes/{name}`: one recipe, listed or not, with its figures.
pub async fn recipe(State(state): State<AppState>, Path(name): Path<String>) -> ApiResult<Response> {
    let recipe = state.recipe(&name)?;
    let stats = state.recipe_stats(&name).await?;
    Ok(no_cache(Json(recipe_json(&name, recipe, Some(&stats))).into_response()))
}

/// `GET /api/recipes/{name}/versions[?module=M]`: the versions of the
/// product, or of plugin `M`, newest first, and which one "latest" means.
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
    Ok(Json(json!({
        "recipe": name,
        "module": module,
        "versions": newest_first,
        "latest": latest.map(|v| v.to_string()),
    }))
    .into_response())
}

/// `GET /api/resolve`: the compat API's query, resolved to absolute
/// versions and a build key without queueing anything; with the build's
/// state when it exists, and what to expect when it does not.
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
