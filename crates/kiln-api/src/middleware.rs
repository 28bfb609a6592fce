//! The per-request layer: request id, the guard ([`crate::guard`]),
//! structured log line, metrics. One layer, so a request pays for one.
//!
//! Each request gets an id: the client's `x-request-id` when it is a short
//! printable token, else a new one. The id is echoed in the response's
//! `x-request-id`, carried by the request's tracing span, and available to
//! error bodies through a task-local ([`current_request_id`]).

use std::sync::Arc;
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
    static CURRENT_ID: Arc<str>;
}

/// The id of the request being handled, inside a handler.
pub fn current_request_id() -> Option<String> {
    CURRENT_ID.try_with(|id| id.to_string()).ok()
}

/// `<seed>-<counter>` in hex: 8 digits of a per-process seed, then at
/// least 6 of a counter.
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
    let n = NEXT.fetch_add(1, Ordering::Relaxed);
    let digits = (64 - n.leading_zeros()).div_ceil(4).max(6);
    let mut id = String::with_capacity(9 + digits as usize);
    push_hex(&mut id, u64::from(seed as u32), 8);
    id.push('-');
    push_hex(&mut id, n, digits);
    id
}

/// The last `digits` hex digits of `n`, zero-padded.
fn push_hex(out: &mut String, n: u64, digits: u32) {
    for i in (0..digits).rev() {
        let nibble = (n >> (4 * i)) & 0xf;
        out.push(char::from_digit(nibble as u32, 16).expect("a nibble"));
    }
}

fn acceptable(id: &str) -> bool {
    !id.is_empty()
        && id.len() <= 128
        && id.bytes().all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b':'))
}

pub async fn per_request(State(state): State<AppState>, req: Request, next: Next) -> Response {
    let start = Instant::now();
    let given = req.headers().get(REQUEST_ID).filter(|v| v.to_str().is_ok_and(acceptable));
    let (id, id_header): (Arc<str>, Option<HeaderValue>) = match given {
        Some(v) => (v.to_str().unwrap_or_default().into(), Some(v.clone())),
        None => {
            let id = new_request_id();
            let header = HeaderValue::from_str(&id).ok();
            (id.into(), header)
        }
    };
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
    let mut resp = CURRENT_ID.scope(id, guarded.instrument(span.clone())).await;
    let status = resp.status();
    if let Some(v) = id_header {
        resp.headers_mut().insert(REQUEST_ID, v);
    }
    state.metrics().request(route_name, &method, status.as_u16());
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn made_ids_are_a_seed_and_a_counter_in_hex() {
        let (a, b) = (new_request_id(), new_request_id());
        assert_ne!(a, b);
        for id in [&a, &b] {
            let (seed, n) = id.split_once('-').expect("a dash");
            assert_eq!(seed.len(), 8, "{id}");
            assert!(n.len() >= 6, "{id}");
            assert!(id.bytes().all(|c| c == b'-' || c.is_ascii_hexdigit() && !c.is_ascii_uppercase()), "{id}");
            assert!(acceptable(id));
        }
        let mut s = String::new();
        push_hex(&mut s, 0x1_2345_6789, 6);
        assert_eq!(s, "456789", "the last digits");
        s.clear();
        push_hex(&mut s, 0xab, 6);
        assert_eq!(s, "0000ab");
    }
}
