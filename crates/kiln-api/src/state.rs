//! What every handler shares: configuration, queue, storage, the notifier,
//! the version resolver, metrics, the token cache and rate limiters, and a
//! small cache of succeeded builds.
//!
//! The cache is what keeps a cache hit cheap: a succeeded build never
//! changes (it can only expire, which deletes its objects and its row), so
//! the build row and the objects' sizes and ETags are kept for
//! [`HOT_TTL`] after one lookup. A download of a hot build touches neither
//! the queue nor the store's metadata; it opens the object and streams it.
//! When the object turns out to be gone, the entry is dropped.
//!
//! A recipe's figures for the download page (plugin build counts, typical
//! build time) are kept for [`STATS_TTL`], so page views cost at most two
//! queries per recipe in that time.
//!
//! Past [`HOT_TTL`] an entry is no longer trusted for serving, but it is
//! kept (up to [`HOT_MAX`] builds) as what this API last *knew*: when the
//! database does not answer within [`DB_LIMIT`], a build once seen
//! succeeded is still served from the store. That is correct because a
//! succeeded build can only expire, and the janitor removes its objects
//! before its row: an expired build's objects are gone and it answers 404.
//! Builds never seen answer 503 while the database is away.

use std::collections::HashMap;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::http::HeaderMap;
use bytes::Bytes;
use kiln_config::Config;
use kiln_domain::{BuildKey, BuildState, Recipe};
use kiln_queue::{Build, Channel, Notification, Notifier, Queue, RecipeStats};
use kiln_storage::{ObjectInfo, ObjectKey, ObjectName, Storage};
use tokio::sync::broadcast;

use crate::auth::Auth;
use crate::error::{ApiError, ApiResult};
use crate::guard::Limits;
use crate::metrics::Metrics;
use crate::resolve::Resolver;
use crate::resolved::Resolutions;

/// How long a succeeded build's row and object facts are reused.
pub const HOT_TTL: Duration = Duration::from_secs(10);
/// How long a recipe's figures for the download page are reused.
pub const STATS_TTL: Duration = Duration::from_secs(10);
/// The most builds kept (hot, or known for a database outage).
const HOT_MAX: usize = 4096;
/// How long a lookup waits for the database before it counts as away.
pub const DB_LIMIT: Duration = Duration::from_secs(3);
/// After the database was found away, lookups answer without waiting on it this long.
const AWAY_RETRY: Duration = Duration::from_secs(2);
/// How long readiness waits for the database and the store.
const READY_LIMIT: Duration = Duration::from_secs(2);
/// Objects up to this size are kept in memory with their hot build.
pub const SMALL_OBJECT: u64 = 64 * 1024;
/// The most bytes of small objects kept in memory (HOT_MAX builds would
/// otherwise allow far more).
const SMALL_BUDGET: usize = 32 * 1024 * 1024;

/// The maps every cache hit reads: a fast hash, seeded per process.
pub type FastMap<K, V> = HashMap<K, V, foldhash::fast::RandomState>;

/// Shared state of the API. Cheap to clone.
#[derive(Clone)]
pub struct AppState(Arc<Inner>);

struct Inner {
    config: Config,
    queue: Queue,
    storage: Storage,
    notifier: Notifier,
    resolver: Resolver,
    metrics: Metrics,
    auth: Auth,
    limits: Limits,
    hot: Mutex<FastMap<BuildKey, Hot>>,
    /// Bytes of small objects held in `hot`.
    hot_bytes: std::sync::atomic::AtomicUsize,
    /// Recipe figures for the page, by recipe, with when they were read.
    stats: Mutex<HashMap<String, (Instant, Arc<RecipeStats>)>>,
    resolutions: Resolutions,
    /// After a lookup found the database away, until when the next ones
    /// do not wait for it again.
    away_until: Mutex<Option<Instant>>,
    /// Set when the server shuts down: waiters answer at once.
    stopping: tokio::sync::watch::Sender<bool>,
    watcher: tokio::task::JoinHandle<()>,
    sweeper: tokio::task::JoinHandle<()>,
}

impl Drop for Inner {
    fn drop(&mut self) {
        self.watcher.abort();
        self.sweeper.abort();
    }
}

#[derive(Clone)]
struct Hot {
    at: Instant,
    build: Arc<Build>,
    objects: FastMap<ObjectName, Arc<ObjectFacts>>,
}

impl Hot {
    fn small_bytes(&self) -> usize {
        self.objects.values().filter_map(|o| o.small.as_ref()).map(Bytes::len).sum()
    }
}

/// What serving one stored object needs, worked out once per hot build.
#[derive(Debug)]
pub struct ObjectFacts {
    pub info: ObjectInfo,
    /// The strong ETag, quoted.
    pub etag: String,
    /// The headers every answer with the object carries.
    pub headers: HeaderMap,
    /// The whole object, when it is small (and the memory budget allows).
    pub small: Option<Bytes>,
}

impl std::fmt::Debug for AppState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AppState").field("storage", &self.0.storage).finish_non_exhaustive()
    }
}

impl AppState {
    /// Build the state and start the notification listener. Needs a Tokio runtime.
    pub fn new(config: Config, queue: Queue, storage: Storage) -> AppState {
        let notifier = queue.notifier(&[Channel::Builds, Channel::Events, Channel::Tokens]);
        let resolver = Resolver::new(&config.api.go_proxy, Duration::from_secs(config.api.version_cache_secs));
        let metrics = Metrics::new();
        let rx = notifier.subscribe();
        Arc::new_cyclic(|weak: &std::sync::Weak<Inner>| {
            let watcher = tokio::spawn(watch(weak.clone(), rx));
            let sweeper = tokio::spawn(sweep(weak.clone()));
            Inner {
                auth: Auth::new(&config),
                limits: Limits::new(&config.api.limits),
                config,
                queue,
                storage,
                notifier,
                resolver,
                metrics,
                hot: Mutex::new(HashMap::default()),
                hot_bytes: Default::default(),
                stats: Mutex::new(HashMap::new()),
                resolutions: Resolutions::default(),
                away_until: Mutex::new(None),
                stopping: tokio::sync::watch::Sender::new(false),
                watcher,
                sweeper,
            }
        })
        .into()
    }

    pub fn config(&self) -> &Config {
        &self.0.config
    }

    pub fn queue(&self) -> &Queue {
        &self.0.queue
    }

    pub fn storage(&self) -> &Storage {
        &self.0.storage
    }

    pub fn resolver(&self) -> &Resolver {
        &self.0.resolver
    }

    /// Compat requests already resolved.
    pub fn resolutions(&self) -> &Resolutions {
        &self.0.resolutions
    }

    /// The server is shutting down: every waiter stops waiting.
    pub fn stop_waiting(&self) {
        self.0.stopping.send_replace(true);
    }

    /// Resolves once the server is shutting down.
    pub async fn stopping(&self) {
        let mut rx = self.0.stopping.subscribe();
        let _ = rx.wait_for(|s| *s).await;
    }

    pub fn metrics(&self) -> &Metrics {
        &self.0.metrics
    }

    /// Tokens and the bootstrap admin.
    pub fn auth(&self) -> &Auth {
        &self.0.auth
    }

    /// The rate limiters.
    pub fn limits(&self) -> &Limits {
        &self.0.limits
    }

    /// A receiver of build and event notifications, from now on.
    pub fn subscribe(&self) -> broadcast::Receiver<Notification> {
        self.0.notifier.subscribe()
    }

    /// The recipe named `name`: 400 for a malformed name, 404 for an unknown one.
    pub fn recipe(&self, name: &str) -> ApiResult<&Recipe> {
        kiln_domain::request::check_recipe_name(name)?;
        self.0.config.recipes.get(name).ok_or_else(|| {
            let known = self.listed_recipes().join(", ");
            ApiError::not_found("unknown_recipe", format!("there is no recipe {name:?}; available: {known}"))
                .with_field("recipe")
        })
    }

    /// The recipes offered to users (`listed`), by name.
    pub fn listed_recipes(&self) -> Vec<&str> {
        self.0.config.recipes.iter().filter(|(_, r)| r.listed).map(|(name, _)| name.as_str()).collect()
    }

    /// A URL path of the API, absolute when `api.public_url` is set.
    pub fn url(&self, path: &str) -> String {
        match &self.0.config.api.public_url {
            Some(base) => format!("{}{path}", base.trim_end_matches('/')),
            None => path.to_owned(),
        }
    }

    /// The build `key`, from the hot cache when it has succeeded recently.
    pub async fn build(&self, key: &BuildKey) -> ApiResult<Arc<Build>> {
        self.lookup(key).await?.ok_or_else(|| ApiError::unknown_build(key))
    }

    /// Like [`build`](Self::build), `None` for an unknown key.
    /// When the database is away (no answer within [`DB_LIMIT`]), a build
    /// this API once saw succeed, else `503 database_unavailable`.
    pub async fn lookup(&self, key: &BuildKey) -> ApiResult<Option<Arc<Build>>> {
        let known = {
            let hot = self.0.hot.lock().expect("hot lock");
            match hot.get(key) {
                Some(h) if h.at.elapsed() < HOT_TTL => return Ok(Some(h.build.clone())),
                Some(h) => Some(h.build.clone()),
                None => None,
            }
        };
        let recently_away = self.0.away_until.lock().expect("away lock").is_some_and(|t| t > Instant::now());
        let away = if recently_away {
            database_away()
        } else {
            match tokio::time::timeout(DB_LIMIT, self.0.queue.get(key)).await {
                Ok(Ok(Some(build))) => {
                    let build = Arc::new(build);
                    self.remember(build.clone());
                    return Ok(Some(build));
                }
                Ok(Ok(None)) => {
                    self.forget(key);
                    return Ok(None);
                }
                Ok(Err(e)) if e.is_unavailable() => ApiError::from(e),
                Ok(Err(e)) => return Err(e.into()),
                Err(_) => database_away(),
            }
        };
        if !recently_away {
            *self.0.away_until.lock().expect("away lock") = Some(Instant::now() + AWAY_RETRY);
        }
        match known {
            Some(b) => {
                tracing::debug!(build = %key, "database away: serving a build known to have succeeded");
                Ok(Some(b))
            }
            None => Err(away),
        }
    }

    /// Keep a succeeded build hot.
    pub fn remember(&self, build: Arc<Build>) {
        if build.state != BuildState::Succeeded {
            return;
        }
        let mut hot = self.0.hot.lock().expect("hot lock");
        if hot.len() >= HOT_MAX {
            // Keep the newer half.
            let mut ages: Vec<Instant> = hot.values().map(|h| h.at).collect();
            ages.sort_unstable();
            let cut = ages[ages.len() / 2];
            hot.retain(|_, h| h.at > cut);
            self.recount(&hot);
        }
        let old = hot.insert(build.key.clone(), Hot { at: Instant::now(), build, objects: FastMap::default() });
        if let Some(old) = old {
            self.0.hot_bytes.fetch_sub(old.small_bytes(), Ordering::Relaxed);
        }
    }

    fn recount(&self, hot: &FastMap<BuildKey, Hot>) {
        self.0.hot_bytes.store(hot.values().map(Hot::small_bytes).sum(), Ordering::Relaxed);
    }

    /// Forget a build whose objects are gone.
    pub fn forget(&self, key: &BuildKey) {
        let mut hot = self.0.hot.lock().expect("hot lock");
        if let Some(old) = hot.remove(key) {
            self.0.hot_bytes.fetch_sub(old.small_bytes(), Ordering::Relaxed);
        }
    }

    /// Size, ETag, headers (and for small objects the bytes) of an object
    /// of a succeeded build, cached with the build.
    pub async fn object_facts(&self, build: &Build, name: ObjectName) -> ApiResult<Arc<ObjectFacts>> {
        let key = &build.key;
        {
            let hot = self.0.hot.lock().expect("hot lock");
            if let Some(f) = hot.get(key).filter(|h| h.at.elapsed() < HOT_TTL).and_then(|h| h.objects.get(&name)) {
                return Ok(f.clone());
            }
        }
        let object = ObjectKey::new(key, name);
        let not_found = |e: kiln_storage::StorageError| {
            if e.is_not_found() {
                self.forget(key);
            }
            ApiError::from(e)
        };
        let info = self.0.storage.head(&object).await.map_err(not_found)?;
        let small = if info.size <= SMALL_OBJECT
            && self.0.hot_bytes.load(Ordering::Relaxed) + info.size as usize <= SMALL_BUDGET
        {
            let bytes = self.0.storage.get_bytes(&object).await.map_err(not_found)?;
            (bytes.len() as u64 == info.size).then_some(bytes)
        } else {
            None
        };
        let etag = crate::serve::etag(build, name, &info);
        let headers = crate::serve::object_headers(build, &info, &etag);
        let facts = Arc::new(ObjectFacts { info, etag, headers, small });
        let mut hot = self.0.hot.lock().expect("hot lock");
        if let Some(h) = hot.get_mut(key)
            && !h.objects.contains_key(&name)
        {
            if let Some(b) = &facts.small {
                self.0.hot_bytes.fetch_add(b.len(), Ordering::Relaxed);
            }
            h.objects.insert(name, facts.clone());
        }
        Ok(facts)
    }

    /// The download page's figures of recipe `name`, at most [`STATS_TTL`] old.
    pub async fn recipe_stats(&self, name: &str) -> ApiResult<Arc<RecipeStats>> {
        {
            let stats = self.0.stats.lock().expect("stats lock");
            if let Some((_, s)) = stats.get(name).filter(|(at, _)| at.elapsed() < STATS_TTL) {
                return Ok(s.clone());
            }
        }
        let fresh = Arc::new(self.0.queue.recipe_stats(name).await?);
        let mut stats = self.0.stats.lock().expect("stats lock");
        stats.retain(|_, (at, _)| at.elapsed() < STATS_TTL);
        stats.insert(name.to_owned(), (Instant::now(), fresh.clone()));
        Ok(fresh)
    }

    /// Are the database and the object store reachable?
    /// Each has [`READY_LIMIT`] to answer.
    pub async fn ready(&self) -> Result<(), String> {
        let late = |what: &str| format!("{what}: no answer within {} s", READY_LIMIT.as_secs());
        tokio::time::timeout(READY_LIMIT, self.0.queue.ping())
            .await
            .map_err(|_| late("database"))?
            .map_err(|e| format!("database: {e}"))?;
        // A HEAD of an object that never exists: reachable stores say "no".
        let probe = ObjectKey::new(&BuildKey::from_digest(&[0; 32]), ObjectName::Manifest);
        tokio::time::timeout(READY_LIMIT, self.0.storage.exists(&probe))
            .await
            .map_err(|_| late("storage"))?
            .map_err(|e| format!("storage: {e}"))?;
        Ok(())
    }
}

/// The database did not answer in time.
pub fn database_away() -> ApiError {
    ApiError::new(
        axum::http::StatusCode::SERVICE_UNAVAILABLE,
        "database_unavailable",
        format!("the database did not answer within {} s; try again shortly", DB_LIMIT.as_secs()),
    )
}

impl From<Arc<Inner>> for AppState {
    fn from(inner: Arc<Inner>) -> Self {
        AppState(inner)
    }
}

/// Sweep the rate limiters' idle keys every minute.
async fn sweep(state: std::sync::Weak<Inner>) {
    let mut tick = tokio::time::interval(Duration::from_secs(60));
    loop {
        tick.tick().await;
        let Some(inner) = state.upgrade() else { return };
        inner.limits.sweep();
    }
}

/// Drop revoked tokens (all of them after a resync), and observe build
/// durations as builds end (one row read per ended build).
async fn watch(state: std::sync::Weak<Inner>, mut rx: broadcast::Receiver<Notification>) {
    loop {
        let n = match rx.recv().await {
            Ok(n) => n,
            Err(broadcast::error::RecvError::Lagged(_)) => Notification::Resync,
            Err(broadcast::error::RecvError::Closed) => return,
        };
        let (key, s) = match n {
            Notification::Build { key, state } => (key, state),
            Notification::TokenRevoked { id } => {
                let Some(inner) = state.upgrade() else { return };
                inner.auth.revoked(id);
                continue;
            }
            Notification::Resync => {
                let Some(inner) = state.upgrade() else { return };
                inner.auth.resync();
                continue;
            }
            _ => continue,
        };
        if !s.is_final() {
            continue;
        }
        let Some(inner) = state.upgrade() else { return };
        if let Ok(Some(b)) = inner.queue.get(&key).await
            && let (Some(start), Some(end)) = (b.started_at, b.finished_at)
        {
            let secs = (end - start).num_milliseconds() as f64 / 1000.0;
            inner.metrics.build_finished(&b.recipe, b.state.as_str(), secs.max(0.0));
        }
    }
}
