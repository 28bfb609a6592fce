//! The HTTP API and download page.
//!
//! [`app`] builds the router over an [`AppState`] (so tests drive it with
//! `tower::ServiceExt::oneshot`, no socket); [`run`] serves it on a listener
//! until a shutdown signal, then lets open requests finish for a short grace.
//! [`serve`] is the whole process: it connects to the database and the
//! object store, listens on `api.listen` and calls [`run`]; the binary
//! (`src/main.rs`) only parses its arguments and loads the configuration.
//!
//! Map of the crate (its modules are private but `openapi`; [`app`], [`run`], [`serve`]
//! and [`AppState`] are the interface):
//! - `routes`: the handlers (`builds`, `compat`, `live` logs and events,
//!   `recipes` with their versions and dry-run resolution, `ops`);
//! - `page`: the download page at `/` (server-rendered, a little JS);
//! - `resolve`: "latest" to absolute versions (static lists, Go module proxy);
//! - `wait`: waiting on Postgres `NOTIFY` for a build to change;
//! - `serve`: objects from storage with `Range`, `ETag`, presigned `303`s,
//!   large local ones with `sendfile` (`zerocopy`);
//! - `resolved`: compat query strings already resolved, until they expire;
//! - `query`: raw query strings (repeated keys, non-UTF-8 refused);
//! - `registry`: the OCI registry pull API under `/v2/` (images built on
//!   demand), outside the OpenAPI document;
//! - `error`: the one error type and its Caddy-compatible JSON;
//! - [`openapi`]: the route list and the OpenAPI document made from it
//!   (public, so tests and tools can read the document);
//! - `auth`: callers, credentials and scopes, the token cache, refusals in
//!   the API's or the registry's shape; `guard`: the request guard (body
//!   limit, caller, scope, rate limits) before every handler;
//! - `state`, `middleware`, `metrics`, `views`.
//!
//! [`run`] serves with hyper directly (not `axum::serve`) to limit what a
//! client may cost before a handler runs: a request's line and headers must
//! arrive within `api.limits.header_read_timeout_secs` and fit in
//! `api.limits.max_header_bytes`, so a slowloris client holds a connection
//! for a few seconds at most.

pub mod auth;
mod error;
mod guard;
mod metrics;
mod middleware;
pub mod openapi;
mod page;
mod query;
mod registry;
mod resolve;
mod resolved;
mod routes;
mod serve;
mod state;
mod views;
mod wait;
mod zerocopy;

use std::future::Future;
use std::time::Duration;

use axum::Router;
use axum::extract::DefaultBodyLimit;
use axum::extract::connect_info::ConnectInfo;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use hyper_util::service::TowerToHyperService;
use kiln_config::Config;
use kiln_queue::{Queue, QueueError, QueueSettings};
use kiln_storage::{Storage, StorageError};
use tokio::net::TcpListener;

pub use error::ApiError;
pub use state::AppState;

use routes::ops;

/// How long open requests may go on after a shutdown signal.
pub const SHUTDOWN_GRACE: Duration = Duration::from_secs(10);

/// The API's router: every documented route ([`openapi::router`]), the OCI
/// registry under `/v2/`, and the JSON answers for unknown routes and methods. No server-wide timeout:
/// compat requests wait for builds and downloads may be slow; each wait has
/// its own limit.
pub fn app(state: AppState) -> Router {
    let body_limit = state.config().api.max_body_bytes;
    let (router, _document) = openapi::router().split_for_parts();
    router
        .merge(registry::router(state.clone()))
        .fallback(ops::not_found)
        .method_not_allowed_fallback(ops::method_not_allowed)
        .layer(DefaultBodyLimit::max(body_limit))
        .layer(axum::middleware::from_fn_with_state(state.clone(), middleware::per_request))
        .with_state(state)
}

/// Why [`serve`] could not start or stopped serving.
#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    #[error(transparent)]
    Queue(#[from] QueueError),
    #[error(transparent)]
    Storage(#[from] StorageError),
    #[error("cannot listen on {addr}: {source}")]
    Listen { addr: String, source: std::io::Error },
    #[error("serving: {0}")]
    Io(#[from] std::io::Error),
}

/// Connect to the (migrated) database and the object store, listen on
/// `api.listen`, and serve until `shutdown` resolves.
pub async fn serve(config: Config, shutdown: impl Future<Output = ()> + Send + 'static) -> Result<(), ServeError> {
    let queue = Queue::connect(
        config.database.url.expose(),
        config.database.max_connections,
        QueueSettings::from(&config.queue),
        "kiln-api",
    )
    .await?;
    let storage = Storage::from_config(&config.storage)?;
    let addr = config.api.listen.clone();
    let listener = TcpListener::bind(&addr).await.map_err(|source| ServeError::Listen { addr, source })?;
    tracing::info!(addr = %listener.local_addr()?, "kiln-api listening");
    run(listener, AppState::new(config, queue, storage), shutdown).await?;
    Ok(())
}

/// Serve [`app`] on `listener` until `shutdown` resolves; then stop
/// accepting, answer waiting requests `503 shutting_down` at once, and give
/// open requests [`SHUTDOWN_GRACE`] to finish.
pub async fn run(
    listener: TcpListener,
    state: AppState,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    serve_router(listener, app(state.clone()), state, shutdown).await
}

/// [`run`] with a router of the caller's (the API's, with more routes
/// layered on).
///
/// Connections are served by `api.io_threads` threads (one per CPU when 0),
/// each with a single-threaded Tokio runtime of its own, all accepting on
/// the one listening socket, as nginx's worker processes do: a busy thread
/// is slower to accept, so idle ones take the new connections. A
/// connection stays on the thread that accepted it, and so do its requests
/// and the tasks they spawn: no work-stealing and no waking of another
/// thread per request, which makes a cache hit markedly cheaper than on one
/// multi-threaded runtime (`scripts/bench-api`). The state's own tasks
/// (notifications, sweeps) stay on the caller's runtime.
pub async fn serve_router(
    listener: TcpListener,
    router: Router,
    state: AppState,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    let api = &state.config().api;
    let builder = connection_builder(&api.limits);
    let threads = match api.io_threads {
        0 => std::thread::available_parallelism().map_or(1, usize::from),
        n => n,
    };
    let listener = listener.into_std()?;
    // Set, or dropped when this future is: every thread stops accepting.
    let (stop, stopped) = tokio::sync::watch::channel(false);
    let mut serving = Vec::with_capacity(threads);
    for i in 0..threads {
        let (listener, router, builder, stopped) =
            (listener.try_clone()?, router.clone(), builder.clone(), stopped.clone());
        let (started_tx, started) = tokio::sync::oneshot::channel();
        let thread = std::thread::Builder::new().name(format!("kiln-api-io-{i}")).spawn(move || {
            let runtime = match tokio::runtime::Builder::new_current_thread().enable_all().build() {
                Ok(r) => r,
                Err(e) => {
                    let _ = started_tx.send(Err(e));
                    return Ok(());
                }
            };
            let _ = started_tx.send(Ok(()));
            // The runtime, and with it every connection's task, is dropped
            // before the thread ends.
            runtime.block_on(serve_connections(listener, router, builder, stopped))
        })?;
        started.await.map_err(|_| std::io::Error::other("a serving thread died at start"))??;
        serving.push(thread);
    }
    drop(listener);
    shutdown.await;
    tracing::info!("shutting down: no new connections; waiting requests are answered 503");
    stop.send_replace(true);
    state.stop_waiting();
    for thread in serving {
        let joined = tokio::task::spawn_blocking(move || thread.join()).await.map_err(std::io::Error::other)?;
        joined.map_err(|_| std::io::Error::other("a serving thread panicked"))??;
    }
    Ok(())
}

/// HTTP/1 and HTTP/2 with the header limits of `api.limits`.
fn connection_builder(limits: &kiln_config::ApiLimits) -> auto::Builder<TokioExecutor> {
    let mut builder = auto::Builder::new(TokioExecutor::new());
    builder
        .http1()
        .timer(TokioTimer::new())
        .header_read_timeout(Duration::from_secs(limits.header_read_timeout_secs))
        .max_buf_size(limits.max_header_bytes);
    builder
        .http2()
        .timer(TokioTimer::new())
        .max_header_list_size(u32::try_from(limits.max_header_bytes).unwrap_or(u32::MAX));
    builder
}

/// One serving thread: accept connections on `listener` and serve them
/// until `stopped`; then give open requests [`SHUTDOWN_GRACE`] to finish.
async fn serve_connections(
    listener: std::net::TcpListener,
    router: Router,
    builder: auto::Builder<TokioExecutor>,
    mut stopped: tokio::sync::watch::Receiver<bool>,
) -> std::io::Result<()> {
    use axum::serve::Listener as _;
    use tower::ServiceExt as _;

    let mut listener = zerocopy::Listener::new(TcpListener::from_std(listener)?);
    let graceful = hyper_util::server::graceful::GracefulShutdown::new();
    loop {
        tokio::select! {
            (stream, peer) = listener.accept() => {
                let conn = zerocopy::Conn::of(&stream, peer);
                let service = router.clone().map_request(move |mut req: axum::http::Request<hyper::body::Incoming>| {
                    req.extensions_mut().insert(ConnectInfo(conn.clone()));
                    req
                });
                let connection = builder.serve_connection(TokioIo::new(stream), TowerToHyperService::new(service));
                let connection = graceful.watch(connection.into_owned());
                tokio::spawn(async move {
                    if let Err(e) = connection.await {
                        tracing::debug!(error = %e, "connection ended with an error");
                    }
                });
            }
            // Set, or the server's future was dropped.
            _ = stopped.wait_for(|s| *s) => break,
        }
    }
    drop(listener);
    tokio::select! {
        () = graceful.shutdown() => {}
        () = tokio::time::sleep(SHUTDOWN_GRACE) => tracing::warn!("grace period over; dropping open requests"),
    }
    Ok(())
}
