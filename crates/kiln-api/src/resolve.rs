//! Version resolution: "latest" and missing versions become absolute ones
//! before a build key is computed.
//!
//! Sources: a recipe's `static` list from the configuration, or the Go
//! module proxy (`api.go_proxy`) for `go_proxy` sources and for plugins of
//! recipes with `plugins.go_proxy`. Proxy answers are cached for
//! `api.version_cache_secs`, and concurrent lookups of one module share a
//! single request (so a herd of identical requests makes one proxy call).
//! Failures are cached for a second at most.
//!
//! The proxy protocol (<https://go.dev/ref/mod#goproxy-protocol>):
//! `GET $PROXY/<escaped module>/@v/list` lists tagged versions one per
//! line; `@latest` gives `{"Version": …}` for modules without tags;
//! `@v/<version>.info` confirms one version. Module paths (and versions) are
//! case-escaped (`A` → `!a`).

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::http::StatusCode;
use kiln_domain::recipe::VersionSource;
use kiln_domain::request::ValidatedRequest;
use kiln_domain::{BuildSpec, ModulePath, PluginSpec, Recipe, Version, VersionWanted, version};
use tokio::sync::OnceCell;

use crate::error::ApiError;

/// How long a failed proxy lookup is remembered (keeps a herd off a dead proxy).
const FAILURE_CACHE: Duration = Duration::from_secs(1);
/// One proxy request's time limit.
const PROXY_TIMEOUT: Duration = Duration::from_secs(15);

/// Why versions could not be listed.
#[derive(Debug, Clone, thiserror::Error)]
pub enum ProxyError {
    /// The proxy does not know the module (404/410).
    #[error("the Go module proxy does not know module {0}")]
    UnknownModule(String),
    /// The proxy could not be reached or answered with an error.
    #[error("the Go module proxy failed for {module}: {why}")]
    Unreachable { module: String, why: String },
}

type Listing = Result<Arc<Vec<Version>>, ProxyError>;

struct Entry {
    made: Instant,
    cell: OnceCell<Listing>,
}

/// Resolves versions; cheap to share (hold it in an `Arc`).
pub struct Resolver {
    http: reqwest::Client,
    proxy: String,
    ttl: Duration,
    cache: Mutex<HashMap<String, Arc<Entry>>>,
}

impl std::fmt::Debug for Resolver {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Resolver").field("proxy", &self.proxy).field("ttl", &self.ttl).finish_non_exhaustive()
    }
}

impl Resolver {
    pub fn new(proxy: &str, ttl: Duration) -> Self {
        let http = reqwest::Client::builder()
            .timeout(PROXY_TIMEOUT)
            .connect_timeout(Duration::from_secs(5))
            .user_agent(concat!("kiln-api/", env!("CARGO_PKG_VERSION")))
            .build()
            .expect("a plain reqwest client builds");
        Self { http, proxy: proxy.trim_end_matches('/').to_owned(), ttl, cache: Mutex::new(HashMap::new()) }
    }

    /// Resolve every version of `req` and make the build spec.
    pub async fn spec(&self, recipe: &Recipe, req: &ValidatedRequest) -> Result<BuildSpec, ApiError> {
        Ok(self.spec_until(recipe, req).await?.0)
    }

    /// [`spec`](Self::spec), and until when its resolution holds: the
    /// earliest expiry of the proxy listings it used, and never later than
    /// `api.version_cache_secs` from now (static lists come from the
    /// configuration, which does not change while the process runs).
    pub async fn spec_until(&self, recipe: &Recipe, req: &ValidatedRequest) -> Result<(BuildSpec, Instant), ApiError> {
        let mut until = Instant::now() + self.ttl;
        let version = match &recipe.versions {
            VersionSource::Static { versions } => version::choose("version", versions, &req.version)?,
            VersionSource::GoProxy { module } => self.choose_proxy("version", module, &req.version, &mut until).await?,
        };
        let mut plugins = Vec::with_capacity(req.plugins.len());
        for (i, (module, wanted)) in req.plugins.iter().enumerate() {
            let field = format!("plugins[{i}].version");
            let version = if let Some(list) = recipe.plugins.versions.get(module.as_str()) {
                version::choose(&field, list, wanted)?
            } else if recipe.plugins.go_proxy {
                self.choose_proxy(&field, module, wanted, &mut until).await?
            } else {
                let known: Vec<&str> = recipe.plugins.versions.keys().map(String::as_str).collect();
                return Err(ApiError::bad_request(
                    format!("plugins[{i}].module"),
                    "unknown_plugin",
                    format!(
                        "recipe {} has no plugin {module}; its plugins: {}",
                        req.recipe,
                        if known.is_empty() { "none".to_owned() } else { known.join(", ") }
                    ),
                ));
            };
            plugins.push(PluginSpec { module: module.clone(), version });
        }
        let spec = BuildSpec {
            recipe: req.recipe.clone(),
            recipe_revision: recipe.revision(),
            version,
            platform: req.platform.clone(),
            plugins,
            replacements: req.replacements.clone(),
        };
        Ok((spec, until))
    }

    async fn choose_proxy(
        &self,
        field: &str,
        module: &ModulePath,
        wanted: &VersionWanted,
        until: &mut Instant,
    ) -> Result<Version, ApiError> {
        let proxy_err = |e: ProxyError| proxy_error(field, e);
        let (listed, expires) = self.listing(module).await;
        *until = (*until).min(expires);
        let listed = listed.map_err(proxy_err)?;
        match wanted {
            // The list may omit versions (retracted or untagged ones); ask for the exact one.
            VersionWanted::Exact(v) if !listed.contains(v) => {
                if self.exists(module, v).await.map_err(proxy_err)? {
                    Ok(v.clone())
                } else {
                    Err(version::choose(field, &listed, wanted).expect_err("not listed").into())
                }
            }
            _ => Ok(version::choose(field, &listed, wanted)?),
        }
    }

    /// The versions a recipe offers for `module` (a plugin) or, when
    /// `module` is `None`, for the product itself, oldest first: the
    /// configuration's static list, else the Go module proxy's.
    pub async fn offered(&self, recipe: &Recipe, module: Option<&ModulePath>) -> Result<Arc<Vec<Version>>, ApiError> {
        let proxied = match (module, &recipe.versions) {
            (None, VersionSource::Static { versions }) => return Ok(Arc::new(sorted(versions))),
            (None, VersionSource::GoProxy { module }) => module,
            (Some(m), _) => match recipe.plugins.versions.get(m.as_str()) {
                Some(list) => return Ok(Arc::new(sorted(list))),
                None if recipe.plugins.go_proxy => m,
                None => {
                    let known: Vec<&str> = recipe.plugins.versions.keys().map(String::as_str).collect();
                    return Err(ApiError::bad_request(
                        "module",
                        "unknown_plugin",
                        format!(
                            "the recipe has no plugin {m}; its plugins: {}",
                            if known.is_empty() { "none".to_owned() } else { known.join(", ") }
                        ),
                    ));
                }
            },
        };
        self.versions(proxied).await.map_err(|e| proxy_error("module", e))
    }

    /// The versions the proxy lists for `module`, cached.
    pub async fn versions(&self, module: &ModulePath) -> Listing {
        self.listing(module).await.0
    }

    /// [`versions`](Self::versions), and when that listing expires.
    async fn listing(&self, module: &ModulePath) -> (Listing, Instant) {
        let entry = {
            let mut cache = self.cache.lock().expect("cache lock");
            let now = Instant::now();
            let fresh = |e: &Entry| match e.cell.get() {
                None => true,
                Some(Ok(_)) => now.duration_since(e.made) < self.ttl,
                Some(Err(_)) => now.duration_since(e.made) < FAILURE_CACHE.min(self.ttl),
            };
            match cache.get(module.as_str()) {
                Some(e) if fresh(e) => e.clone(),
                _ => {
                    if cache.len() > 10_000 {
                        cache.retain(|_, e| fresh(e));
                    }
                    let e = Arc::new(Entry { made: now, cell: OnceCell::new() });
                    cache.insert(module.as_str().to_owned(), e.clone());
                    e
                }
            }
        };
        let listing = entry.cell.get_or_init(|| self.fetch_versions(module)).await.clone();
        let life = if listing.is_ok() { self.ttl } else { FAILURE_CACHE.min(self.ttl) };
        (listing, entry.made + life)
    }

    async fn fetch_versions(&self, module: &ModulePath) -> Listing {
        let base = format!("{}/{}/@v/list", self.proxy, module.proxy_escaped());
        let text = self.get_text(module, &base).await?;
        let mut versions: Vec<Version> = text.lines().filter_map(|l| l.trim().parse().ok()).collect();
        if versions.is_empty() {
            // No tagged versions: the proxy's @latest may still name one.
            let latest = format!("{}/{}/@latest", self.proxy, module.proxy_escaped());
            let text = self.get_text(module, &latest).await?;
            #[derive(serde::Deserialize)]
            struct Info {
                #[serde(rename = "Version")]
                version: String,
            }
            if let Ok(info) = serde_json::from_str::<Info>(&text)
                && let Ok(v) = info.version.parse()
            {
                versions.push(v);
            }
        }
        versions.sort();
        versions.dedup();
        Ok(Arc::new(versions))
    }

    async fn exists(&self, module: &ModulePath, v: &Version) -> Result<bool, ProxyError> {
        let url = format!(
            "{}/{}/@v/{}.info",
            self.proxy,
            module.proxy_escaped(),
            kiln_domain::module::proxy_escape(&v.to_string())
        );
        match self.get_text(module, &url).await {
            Ok(_) => Ok(true),
            Err(ProxyError::UnknownModule(_)) => Ok(false),
            Err(e) => Err(e),
        }
    }

    async fn get_text(&self, module: &ModulePath, url: &str) -> Result<String, ProxyError> {
        let unreachable = |why: String| ProxyError::Unreachable { module: module.to_string(), why };
        let resp = self.http.get(url).send().await.map_err(|e| unreachable(without_url(&e)))?;
        match resp.status() {
            s if s.is_success() => resp.text().await.map_err(|e| unreachable(without_url(&e))),
            StatusCode::NOT_FOUND | StatusCode::GONE => Err(ProxyError::UnknownModule(module.to_string())),
            s => Err(unreachable(format!("it answered {s}"))),
        }
    }
}

fn sorted(list: &[Version]) -> Vec<Version> {
    let mut v = list.to_vec();
    v.sort();
    v.dedup();
    v
}

/// A proxy failure as the API's error on `field`.
fn proxy_error(field: &str, e: ProxyError) -> ApiError {
    match e {
        ProxyError::UnknownModule(_) => ApiError::bad_request(field, "unknown_module", e.to_string()),
        ProxyError::Unreachable { .. } => {
            tracing::warn!(error = %e, "Go module proxy lookup failed");
            ApiError::new(StatusCode::BAD_GATEWAY, "proxy_unreachable", e.to_string()).with_field(field)
        }
    }
}

/// A reqwest error in words, without the URL (which names the proxy).
fn without_url(e: &reqwest::Error) -> String {
    use std::error::Error;
    let kind = if e.is_timeout() {
        "timed out"
    } else if e.is_connect() {
        "cannot connect"
    } else {
        "request failed"
    };
    let mut s = kind.to_owned();
    let mut src = e.source();
    while let Some(inner) = src {
        s.push_str(": ");
        s.push_str(&inner.to_string());
        src = inner.source();
    }
    s
}

#[cfg(test)]
mod tests {
    #[test]
    fn escapes_upper_case() {
        assert_eq!(kiln_domain::module::proxy_escape("v1.0.0-RC.1"), "v1.0.0-!r!c.1");
    }
}
