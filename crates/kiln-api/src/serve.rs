//! Serving stored objects: artifacts, signatures, logs and binaries.
//!
//! Objects are immutable once written, so every answer carries a strong
//! `ETag` (the SHA-256 the worker recorded, else the store's ETag) and
//! `Cache-Control: public, max-age=31536000, immutable`. `HEAD`, single
//! `Range`s (`206`, `416`), `If-Range` and `If-None-Match` (`304`) are
//! honoured; several ranges in one request are answered with the whole
//! object, as RFC 9110 allows. With S3 storage and `storage.s3.presign`,
//! large objects are answered with a `303` to a presigned URL instead.
//! Small objects come from memory (kept with the hot build, `state.rs`);
//! large ones on local storage are sent with `sendfile` over HTTP/1
//! ([`crate::zerocopy`]), others are streamed from the store.

use std::time::Duration;

use axum::body::Body;
use axum::extract::{FromRequest, FromRequestParts, Request};
use axum::http::{HeaderMap, HeaderValue, Method, StatusCode, header};
use axum::response::{IntoResponse, Response};
use futures::TryStreamExt;
use http_range_header::parse_range_header;
use kiln_config::StorageKind;
use kiln_queue::Build;
use kiln_storage::{ByteRange, ObjectInfo, ObjectKey, ObjectName, StorageError};

use crate::AppState;
use crate::error::{ApiError, ApiResult};
use crate::zerocopy::Wire;

pub const IMMUTABLE: &str = "public, max-age=31536000, immutable";
pub const BUILD_KEY_HEADER: &str = "x-kiln-build-key";

/// Extra things an answer carries.
#[derive(Debug, Default)]
pub struct Extra {
    /// `Content-Disposition` ([`disposition`]).
    pub disposition: Option<HeaderValue>,
    /// A `Location` header (the compat `HEAD` names the binary's URL).
    pub location: Option<HeaderValue>,
    /// Replaces the objects' `immutable` caching (compat answers can change).
    pub cache_control: Option<HeaderValue>,
    /// May answer `303` to a presigned URL.
    pub presign: bool,
    /// The connection, for a large local object sent with `sendfile`.
    pub wire: Wire,
}

/// What a download request brings: its method, its headers (`Range`,
/// `If-None-Match`, …) and its connection. It takes the request's headers
/// (no copy), so it is a handler's last argument, as the compiler insists.
#[derive(Debug)]
pub struct Fetch {
    pub method: Method,
    pub headers: HeaderMap,
    pub wire: Wire,
}

impl<S: Send + Sync> FromRequest<S> for Fetch {
    type Rejection = std::convert::Infallible;

    async fn from_request(req: Request, state: &S) -> Result<Self, Self::Rejection> {
        let (mut parts, _body) = req.into_parts();
        let wire = Wire::from_request_parts(&mut parts, state).await?;
        Ok(Fetch { method: parts.method, headers: parts.headers, wire })
    }
}

/// `attachment; filename=<name>`, the name reduced to safe characters.
pub fn disposition(filename: &str) -> HeaderValue {
    let safe: String = filename
        .chars()
        .map(|c| if c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-') { c } else { '_' })
        .collect();
    HeaderValue::from_str(&format!("attachment; filename={safe}")).expect("ASCII by construction")
}

/// Answer a request for object `name` of the succeeded build `build`.
pub async fn object(
    state: &AppState,
    build: &Build,
    name: ObjectName,
    method: &Method,
    headers: &HeaderMap,
    extra: Extra,
) -> ApiResult<Response> {
    let key = &build.key;
    let facts = state.object_facts(build, name).await.map_err(|e| gone(e, build, name))?;
    let etag = &facts.etag;
    let mut resp_headers = facts.headers.clone();
    // Room for what this answer adds, in one allocation.
    resp_headers.reserve(6);
    if let Some(v) = extra.disposition {
        resp_headers.insert(header::CONTENT_DISPOSITION, v);
    }
    if let Some(v) = extra.location {
        resp_headers.insert(header::LOCATION, v);
    }
    if let Some(v) = extra.cache_control {
        resp_headers.insert(header::CACHE_CONTROL, v);
    }

    if let Some(inm) = headers.get(header::IF_NONE_MATCH).and_then(|v| v.to_str().ok())
        && etag_list_matches(inm, etag)
    {
        return Ok(answer(StatusCode::NOT_MODIFIED, resp_headers, Body::empty()));
    }

    if extra.presign && presigning(state) {
        let ttl = Duration::from_secs(state.config().storage.s3.as_ref().map_or(300, |s| s.presign_ttl_secs));
        let url = state.storage().presigned_get(&ObjectKey::new(key, name), ttl).await?;
        let mut h = HeaderMap::new();
        h.insert(header::LOCATION, HeaderValue::from_str(&url).map_err(|_| ApiError::internal("bad presigned URL"))?);
        h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
        h.insert(BUILD_KEY_HEADER, HeaderValue::from_str(key.as_str()).expect("a key is ASCII"));
        return Ok((StatusCode::SEE_OTHER, h).into_response());
    }

    let size = facts.info.size;
    let range = wanted_range(headers, etag, size);
    let (status, range) = match range {
        RangeWanted::Whole => (StatusCode::OK, 0..size),
        RangeWanted::Part(r) => {
            let v = format!("bytes {}-{}/{size}", r.start, r.end - 1);
            resp_headers.insert(header::CONTENT_RANGE, HeaderValue::from_str(&v).expect("ASCII"));
            (StatusCode::PARTIAL_CONTENT, r)
        }
        RangeWanted::Unsatisfiable => {
            let v = HeaderValue::from_str(&format!("bytes */{size}")).expect("ASCII");
            return Err(ApiError::new(
                StatusCode::RANGE_NOT_SATISFIABLE,
                "range_not_satisfiable",
                format!("the object has {size} bytes; the requested range is outside it"),
            )
            .with_header(header::CONTENT_RANGE, v));
        }
    };
    resp_headers.insert(header::CONTENT_LENGTH, HeaderValue::from(range.end - range.start));
    if method == Method::HEAD || range.is_empty() {
        return Ok(answer(status, resp_headers, Body::empty()));
    }
    if let Some(bytes) = &facts.small {
        let part = bytes.slice(range.start as usize..range.end as usize);
        return Ok(answer(status, resp_headers, Body::from(part)));
    }
    let object = ObjectKey::new(key, name);
    if let (Some(conn), Some(path)) = (extra.wire.conn(), state.storage().local_path(&object)) {
        match std::fs::File::open(&path) {
            Ok(file) => {
                let body = conn.file_body(file, range.start, range.end - range.start);
                return Ok(answer(status, resp_headers, body));
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                state.forget(key);
                return Err(gone(ApiError::not_found("not_found", "gone"), build, name));
            }
            Err(e) => tracing::warn!(build = %key, error = %e, "cannot open a stored object; streaming it"),
        }
    }
    let partial = status == StatusCode::PARTIAL_CONTENT;
    let stream = state
        .storage()
        .get(&ObjectKey::new(key, name), partial.then(|| ByteRange::Bounded(range.clone())))
        .await
        .map_err(|e: StorageError| {
            if e.is_not_found() {
                state.forget(key);
            }
            gone(e.into(), build, name)
        })?;
    let body = Body::from_stream(stream.into_stream().map_err(std::io::Error::other));
    Ok(answer(status, resp_headers, body))
}

/// A response of exactly these parts (building one from a tuple would
/// insert every header again).
fn answer(status: StatusCode, headers: HeaderMap, body: Body) -> Response {
    let mut resp = Response::new(body);
    *resp.status_mut() = status;
    *resp.headers_mut() = headers;
    resp
}

/// A failed read: a missing object of a succeeded build has expired.
fn gone(e: ApiError, build: &Build, name: ObjectName) -> ApiError {
    if e.status == StatusCode::NOT_FOUND {
        ApiError::not_found("not_stored", format!("{} of build {} is no longer stored", name.file_name(), build.key))
            .with_key(&build.key)
    } else {
        e
    }
}

pub fn presigning(state: &AppState) -> bool {
    state.storage().kind() == StorageKind::S3
        && state.storage().can_presign()
        && state.config().storage.s3.as_ref().is_some_and(|s| s.presign)
}

/// The headers of every answer with an object (not the per-request ones).
pub fn object_headers(build: &Build, info: &ObjectInfo, etag: &str) -> HeaderMap {
    let mut h = HeaderMap::with_capacity(12);
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static(IMMUTABLE));
    h.insert(header::ETAG, HeaderValue::from_str(etag).expect("an ETag is ASCII"));
    h.insert(BUILD_KEY_HEADER, HeaderValue::from_str(build.key.as_str()).expect("a key is ASCII"));
    h.insert(header::CONTENT_TYPE, content_type(info));
    h.insert(header::ACCEPT_RANGES, HeaderValue::from_static("bytes"));
    h.insert(header::LAST_MODIFIED, http_date(info.last_modified));
    h
}

fn content_type(info: &ObjectInfo) -> HeaderValue {
    HeaderValue::from_str(&info.content_type).unwrap_or_else(|_| HeaderValue::from_static("application/octet-stream"))
}

/// The strong ETag of an object: its SHA-256 when the worker recorded one.
pub fn etag(build: &Build, name: ObjectName, info: &ObjectInfo) -> String {
    let sha = build.artifact.as_ref().and_then(|m| match name {
        ObjectName::Artifact => Some(&m.artifact.sha256),
        ObjectName::Binary => Some(&m.binary.sha256),
        ObjectName::Log => Some(&m.log.sha256),
        _ => None,
    });
    match (sha, &info.etag) {
        (Some(h), _) => format!("\"sha256-{h}\""),
        (None, Some(e)) => {
            let bare: String = e
                .trim_start_matches("W/")
                .trim_matches('"')
                .chars()
                .filter(|c| c.is_ascii_graphic() && *c != '"')
                .collect();
            format!("\"{bare}\"")
        }
        (None, None) => format!("\"{}-{}\"", info.size, info.last_modified.timestamp_millis()),
    }
}

/// Does an `If-None-Match` list match `etag` (weak comparison)?
pub fn etag_list_matches(list: &str, etag: &str) -> bool {
    let bare = |t: &str| t.trim().trim_start_matches("W/").to_owned();
    let mine = bare(etag);
    list.split(',').any(|t| t.trim() == "*" || bare(t) == mine)
}

/// What a request's `Range` (and `If-Range`) asks of an object.
pub enum RangeWanted {
    Whole,
    Part(std::ops::Range<u64>),
    Unsatisfiable,
}

/// The range a request wants of an object of `size` bytes whose ETag is `etag`.
pub fn wanted_range(headers: &HeaderMap, etag: &str, size: u64) -> RangeWanted {
    let Some(range) = headers.get(header::RANGE).and_then(|v| v.to_str().ok()) else {
        return RangeWanted::Whole;
    };
    // If-Range with another validator: the client's copy is stale, send it all.
    if let Some(if_range) = headers.get(header::IF_RANGE).and_then(|v| v.to_str().ok())
        && if_range.trim() != etag
    {
        return RangeWanted::Whole;
    }
    let parsed = match parse_range_header(range) {
        Ok(p) => p,
        // A malformed Range header is ignored (RFC 9110 §14.2).
        Err(http_range_header::RangeUnsatisfiableError::Invalid(_)) => return RangeWanted::Whole,
        Err(_) => return RangeWanted::Unsatisfiable,
    };
    match parsed.validate(size) {
        Ok(ranges) if ranges.len() == 1 => {
            let r = &ranges[0];
            RangeWanted::Part(*r.start()..r.end() + 1)
        }
        Ok(_) => RangeWanted::Whole,
        Err(_) => RangeWanted::Unsatisfiable,
    }
}

/// An HTTP date (IMF-fixdate).
fn http_date(t: chrono::DateTime<chrono::Utc>) -> HeaderValue {
    HeaderValue::from_str(&t.format("%a, %d %b %Y %H:%M:%S GMT").to_string()).expect("ASCII")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn if_none_match_lists() {
        assert!(etag_list_matches("\"a\"", "\"a\""));
        assert!(etag_list_matches("W/\"a\", \"b\"", "\"a\""));
        assert!(etag_list_matches("*", "\"a\""));
        assert!(!etag_list_matches("\"b\"", "\"a\""));
    }

    #[test]
    fn ranges() {
        let mut h = HeaderMap::new();
        h.insert(header::RANGE, HeaderValue::from_static("bytes=2-4"));
        assert!(matches!(wanted_range(&h, "\"e\"", 10), RangeWanted::Part(r) if r == (2..5)));
        h.insert(header::RANGE, HeaderValue::from_static("bytes=-3"));
        assert!(matches!(wanted_range(&h, "\"e\"", 10), RangeWanted::Part(r) if r == (7..10)));
        h.insert(header::RANGE, HeaderValue::from_static("bytes=20-30"));
        assert!(matches!(wanted_range(&h, "\"e\"", 10), RangeWanted::Unsatisfiable));
        h.insert(header::RANGE, HeaderValue::from_static("pages=1"));
        assert!(matches!(wanted_range(&h, "\"e\"", 10), RangeWanted::Whole));
        h.insert(header::RANGE, HeaderValue::from_static("bytes=0-1"));
        h.insert(header::IF_RANGE, HeaderValue::from_static("\"old\""));
        assert!(matches!(wanted_range(&h, "\"e\"", 10), RangeWanted::Whole));
    }
}
