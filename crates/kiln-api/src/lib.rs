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
//! - `state`, `middleware`, `metrics`, `views`.

mod error;
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

use std::future::{Future, IntoFuture};
use std::time::Duration;

use axum::Router;
use axum::extract::DefaultBodyLimit;
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
    let (tx, rx) = tokio::sync::watch::channel(false);
    let waiters = state.clone();
    let signal = async move {
        shutdown.await;
        tracing::info!("shutting down: no new connections; waiting requests are answered 503");
        waiters.stop_waiting();
        let _ = tx.send(true);
    };
    let listener = zerocopy::Listener::new(listener);
    let service = app(state).into_make_service_with_connect_info::<zerocopy::Conn>();
    let server = axum::serve(listener, service).with_graceful_shutdown(signal).into_future();
    tokio::pin!(server);
    let mut rx = rx;
    tokio::select! {
        res = &mut server => res,
        _ = async { let _ = rx.wait_for(|s| *s).await; tokio::time::sleep(SHUTDOWN_GRACE).await } => {
            tracing::warn!("grace period over; dropping open requests");
            Ok(())
        }
    }
}
