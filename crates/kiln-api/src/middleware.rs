//! The per-request layer: request id, the guard ([`crate::guard`]),
//! structured log line, metrics. One layer, so a request pays for one.
//!
//! Each request gets an id: the client's `x-request-id` when it is a short
//! printable token, else a new one. The id is echoed in the response's
//! `x-request-id`, carried by the request's tracing span, and available to
//! error bodies through a task-local ([`current_request_id`]).

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Instant;

use axum::extract::{MatchedPath, Request, State};
use axum::http::HeaderValue;
use axum::middleware::Next;
use axum::response::Response;
use tracing::Instrument;

use crate::{AppState, guard};

pub const REQUEST_ID: &str = "x-request-id";

tokio::task_local! {
    static CURRENT_ID: String;
}

/// The id of the request being handled, inside a handler.
pub fn current_request_id() -> Option<String> {
    CURRENT_ID.try_with(Clone::clone).ok()
}

fn new_request_id() -> String {
    static SEED: std::sync::OnceLock<u64> = std::sync::OnceLock::new();
    static NEXT: AtomicU64 = AtomicU64::new(0);
    let seed = *SEED.get_or_init(|| {
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos() as u64)
            .unwrap_or_default();
        nanos ^ (u64::from(std::process::id()) << 40)
    });
    format!("{:08x}-{:06x}", seed as u32, NEXT.fetch_add(1, Ordering::Relaxed))
}

fn acceptable(id: &str) -> bool {
    !id.is_empty()
        && id.len() <= 128
        && id.bytes().all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b':'))
}

pub async fn per_request(State(state): State<AppState>, req: Request, next: Next) -> Response {
    let start = Instant::now();
    let id = req
        .headers()
        .get(REQUEST_ID)
        .and_then(|v| v.to_str().ok())
        .filter(|v| acceptable(v))
        .map(str::to_owned)
        .unwrap_or_else(new_request_id);
    let route = req.extensions().get::<MatchedPath>().cloned();
    let route_name = route.as_ref().map_or("other", MatchedPath::as_str);
    let method = req.method().clone();
    // `token` is the id of the caller's token, recorded by the guard.
    let span =
        tracing::info_span!("request", id = %id, method = %method, route = %route_name, token = tracing::field::Empty);
    let guarded = async {
        match guard::guard(&state, req, route.as_ref().map(MatchedPath::as_str)).await {
            Ok(req) => next.run(req).await,
            Err(refused) => refused,
        }
    };
    let mut resp = CURRENT_ID.scope(id.clone(), guarded.instrument(span.clone())).await;
    let status = resp.status();
    if let Ok(v) = HeaderValue::from_str(&id) {
        resp.headers_mut().insert(REQUEST_ID, v);
    }
    state.metrics().request(route_name, method.as_str(), status.as_u16());
    let ms = start.elapsed().as_secs_f64() * 1000.0;
    span.in_scope(|| {
        if status.is_server_error() {
            tracing::warn!(status = status.as_u16(), ms, "answered");
        } else {
            tracing::info!(status = status.as_u16(), ms, "answered");
        }
    });
    resp
}
