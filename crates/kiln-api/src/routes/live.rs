//! Live views of a build: its log (`/log`, `?follow=1`) and its progress
//! as Server-Sent Events (`/events`).
//!
//! Both read the `build_events` table the workers append to and wake on
//! `NOTIFY kiln_events`/`kiln_builds` (subscribed before the first read).
//! A stream ends once the build is in a final state and every event before
//! that has been sent; the event stream then sends a last `result` event,
//! the build as JSON (with no `id`: it is not a row, so a reconnect after it
//! replays nothing and ends with the same `result`). Event ids are the table's ids, so a client that
//! reconnects with `Last-Event-ID` gets exactly what it missed.

use std::convert::Infallible;
use std::time::Duration;

use axum::body::{Body, Bytes};
use axum::extract::{RawQuery, State};
use axum::http::{HeaderMap, HeaderValue, Method, StatusCode, header};
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use futures::stream::{self, Stream};
use kiln_domain::{BuildKey, BuildState};
use kiln_queue::{Notification, Queue};
use kiln_storage::ObjectName;
use tokio::sync::broadcast;

use crate::AppState;
use crate::error::{ApiError, ApiResult, ErrorBody};
use crate::openapi::{KeyParam, ObjectHeaders};
use crate::query::RawQuery as Query;
use crate::routes::builds::KeyPath;
use crate::serve::{self, Extra};
use crate::views::BuildView;
use crate::wait::next_change;

/// Rows read per query while catching up.
const BATCH: i64 = 500;
/// Wake at least this often to look again (a safety net under NOTIFY).
const RECHECK: Duration = Duration::from_secs(15);

/// Read a build's log, or follow it live.
///
/// A finished build's log is served from storage (with `ETag` and `Range`);
/// otherwise the live log is read from the database. With `follow=1` the
/// answer streams until the build ends.
#[utoipa::path(
    get,
    path = "/api/builds/{key}/log",
    operation_id = "getLog",
    tag = "builds",
    params(
        KeyParam,
        ("follow" = Option<bool>, Query, description = "Stream the log until the build ends (`1`; `0`, `false` and `no` turn it off)."),
        ObjectHeaders,
    ),
    responses(
        (status = 200, description = "The log as text (streamed with `follow`).", content(("text/plain; charset=utf-8"))),
        (status = 206, description = "The requested `Range` of a stored log.", content(("text/plain; charset=utf-8"))),
        (status = 304, description = "`If-None-Match` matched the stored log's `ETag`."),
        (status = 400, description = "A malformed key or query.", body = ErrorBody),
        (status = 404, description = "No such build.", body = ErrorBody),
        (status = 416, description = "The `Range` lies outside the stored log.", body = ErrorBody),
        (status = 503, description = "The database or the object store is unreachable.", body = ErrorBody),
    )
)]
pub async fn log(
    State(state): State<AppState>,
    KeyPath(key): KeyPath,
    RawQuery(q): RawQuery,
    method: Method,
    headers: HeaderMap,
) -> ApiResult<Response> {
    let q = Query::parse(q.as_deref())?;
    let follow = q.flag("follow");
    // Subscribe first: nothing the worker writes after the read below is missed.
    let rx = state.subscribe();
    let build = state.build(&key).await?;
    if build.state.is_final() {
        // The worker stores the log of a finished build; older builds may
        // only have the live log left in the database.
        match serve::object(&state, &build, ObjectName::Log, &method, &headers, Extra::default()).await {
            Err(e) if e.status == StatusCode::NOT_FOUND => {}
            Ok(mut resp) if build.state != BuildState::Succeeded => {
                // A failed or cancelled build may be retried, which rewrites its log.
                resp.headers_mut().insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
                return Ok(resp);
            }
            other => return other,
        }
    }
    let text_headers = [
        (header::CONTENT_TYPE, HeaderValue::from_static("text/plain; charset=utf-8")),
        (header::CACHE_CONTROL, HeaderValue::from_static("no-store")),
        (header::HeaderName::from_static("x-content-type-options"), HeaderValue::from_static("nosniff")),
    ];
    if !follow || build.state.is_final() {
        let text = state.queue().log_text(&key).await?;
        let body = if method == Method::HEAD { Body::empty() } else { Body::from(text) };
        return Ok((text_headers, body).into_response());
    }
    let stream = follow_log(state.queue().clone(), key, rx);
    Ok((text_headers, Body::from_stream(stream)).into_response())
}

struct Follow {
    queue: Queue,
    key: BuildKey,
    rx: broadcast::Receiver<Notification>,
    last: i64,
    done: bool,
}

fn follow_log(
    queue: Queue,
    key: BuildKey,
    rx: broadcast::Receiver<Notification>,
) -> impl Stream<Item = Result<Bytes, std::io::Error>> {
    let st = Follow { queue, key, rx, last: 0, done: false };
    stream::unfold(st, |mut st| async move {
        loop {
            if st.done {
                return None;
            }
            let chunks = match st.queue.log_after(&st.key, st.last, BATCH).await {
                Ok(c) => c,
                Err(e) => return Some((Err(std::io::Error::other(e)), Follow { done: true, ..st })),
            };
            if let Some((id, _)) = chunks.last() {
                st.last = *id;
                let text: String = chunks.into_iter().map(|(_, t)| t).collect();
                return Some((Ok(Bytes::from(text)), st));
            }
            match st.queue.state(&st.key).await {
                Ok(Some(s)) if !s.is_final() => {}
                // Final (or gone): one more read catches what raced the state change.
                Ok(_) => st.done = drained(&st.queue, &st.key, st.last).await,
                Err(e) => return Some((Err(std::io::Error::other(e)), Follow { done: true, ..st })),
            }
            if !st.done {
                next_change(&mut st.rx, &st.key, RECHECK).await;
            }
        }
    })
}

/// True when nothing is left after `last` (so the stream may end).
async fn drained(queue: &Queue, key: &BuildKey, last: i64) -> bool {
    queue.log_after(key, last, 1).await.map(|c| c.is_empty()).unwrap_or(true)
}

/// Follow a build as Server-Sent Events.
///
/// Events: `state` (JSON), `step_started` and `step_finished` (JSON), `log` (text),
/// and, once the build has ended and everything before was sent, one
/// `result` event carrying the build as JSON, after which the stream ends.
/// Every event but `result` has an `id`; a client that reconnects with
/// `Last-Event-ID` (or `?after=`) gets exactly what it missed.
#[utoipa::path(
    get,
    path = "/api/builds/{key}/events",
    operation_id = "getEvents",
    tag = "builds",
    params(
        KeyParam,
        ("after" = Option<u64>, Query, description = "Replay events after this id (as `Last-Event-ID`)."),
        ("Last-Event-ID" = Option<u64>, Header, nullable = false, description = "The id of the last event received; the stream resumes after it."),
    ),
    responses(
        (status = 200, description = "The event stream; it ends after the `result` event.", content(("text/event-stream"))),
        (status = 400, description = "A malformed key, query or `Last-Event-ID`.", body = ErrorBody),
        (status = 404, description = "No such build.", body = ErrorBody),
        (status = 503, description = "The database is unreachable.", body = ErrorBody),
    )
)]
pub async fn events(
    State(state): State<AppState>,
    KeyPath(key): KeyPath,
    RawQuery(q): RawQuery,
    headers: HeaderMap,
) -> ApiResult<Response> {
    let q = Query::parse(q.as_deref())?;
    let from_header = headers.get("last-event-id").and_then(|v| v.to_str().ok()).map(str::trim);
    let last = match from_header.filter(|s| !s.is_empty()).or(q.first("after").filter(|s| !s.is_empty())) {
        None => 0,
        Some(s) => s.parse::<i64>().ok().filter(|n| *n >= 0).ok_or_else(|| {
            ApiError::bad_request("Last-Event-ID", "invalid_event_id", "an event id is a non-negative integer")
        })?,
    };
    let rx = state.subscribe();
    state.build(&key).await?;
    let queue = state.queue().clone();
    let st = Events { state, queue, key, rx, last, pending: Vec::new(), done: false };
    let stream = stream::unfold(st, |mut st| async move {
        loop {
            if let Some(ev) = st.pending.pop() {
                return Some((Ok::<Event, Infallible>(ev), st));
            }
            if st.done {
                return None;
            }
            let rows = match st.queue.events_after(&st.key, st.last, BATCH).await {
                Ok(r) => r,
                Err(e) => {
                    tracing::warn!(error = %e, "event stream read failed");
                    st.done = true;
                    st.pending.push(Event::default().event("error").data("reading the events failed"));
                    continue;
                }
            };
            if !rows.is_empty() {
                st.last = rows.last().map_or(st.last, |r| r.id);
                st.pending = rows.into_iter().rev().map(|r| sse_event(r.id, &r.kind, &r.data)).collect();
                continue;
            }
            match st.queue.state(&st.key).await {
                Ok(Some(s)) if !s.is_final() => {}
                Ok(_) => {
                    let more = st.queue.events_after(&st.key, st.last, 1).await.map(|r| !r.is_empty());
                    if !matches!(more, Ok(true)) {
                        st.done = true;
                        // The end: the build as JSON, without an id (it is no row).
                        if let Ok(Some(b)) = st.queue.get(&st.key).await
                            && let Ok(json) = serde_json::to_string(&BuildView::new(&st.state, &b))
                        {
                            st.pending.push(Event::default().event("result").data(json));
                        }
                        continue;
                    }
                }
                Err(e) => {
                    tracing::warn!(error = %e, "event stream read failed");
                    st.done = true;
                    continue;
                }
            }
            next_change(&mut st.rx, &st.key, RECHECK).await;
        }
    });
    let mut resp = Sse::new(stream).keep_alive(KeepAlive::default()).into_response();
    resp.headers_mut().insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    resp.headers_mut().insert("x-accel-buffering", HeaderValue::from_static("no"));
    Ok(resp)
}

struct Events {
    state: AppState,
    queue: Queue,
    key: BuildKey,
    rx: broadcast::Receiver<Notification>,
    last: i64,
    /// Events read but not yet sent, last first.
    pending: Vec<Event>,
    done: bool,
}

/// One row as an SSE event: `id` the row id, `event` its kind, `data` the
/// text (log output, CRLF made LF) or JSON (state, steps, result).
fn sse_event(id: i64, kind: &str, data: &str) -> Event {
    let kind = if kind.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_') { kind } else { "other" };
    let data = data.replace("\r\n", "\n");
    Event::default().id(id.to_string()).event(kind).data(data)
}
