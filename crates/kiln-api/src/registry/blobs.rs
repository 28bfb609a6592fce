//! `HEAD`/`GET /v2/<name>/blobs/<digest>`: layers, configs and manifests
//! from the store's `blobs/sha256/<hex>`.
//!
//! A `HEAD` is always answered here, with the true `Content-Length` (a
//! URL presigned for `GET` fails on `HEAD`). A `GET` on S3 with
//! `storage.s3.presign` is a `307` to a presigned URL, which docker, skopeo
//! and podman follow; otherwise the blob is sent from here: one `Range`
//! gives `206` with `Content-Range` (docker resumes downloads so), a large
//! local blob goes out with `sendfile`. Blobs are named by their content,
//! so every answer is immutable.

use std::time::Duration;

use axum::body::Body;
use axum::http::{HeaderMap, HeaderValue, Method, StatusCode, header};
use axum::response::{IntoResponse, Response};
use futures::TryStreamExt;
use kiln_domain::OciDigest;
use kiln_storage::{ByteRange, ObjectKey};

use super::DIGEST_HEADER;
use super::error::{RegistryError, RegistryResult};
use crate::AppState;
use crate::error::ApiError;
use crate::serve::{self, Fetch, RangeWanted};

/// Answer a blob request; the name was checked by the caller.
pub async fn blob(state: &AppState, digest: &str, fetch: Fetch) -> RegistryResult<Response> {
    let digest = OciDigest::parse(digest)?;
    let key = ObjectKey::blob(&digest);
    let storage = state.storage();
    let unknown = || RegistryError::blob_unknown(format!("there is no blob {digest} here"));
    let info = match storage.head(&key).await {
        Ok(info) => info,
        Err(e) if e.is_not_found() => return Err(unknown()),
        Err(e) => return Err(ApiError::from(e).into()),
    };
    let size = info.size;
    let etag = format!("\"{digest}\"");
    let mut h = HeaderMap::new();
    h.insert(header::CONTENT_TYPE, HeaderValue::from_static("application/octet-stream"));
    h.insert(DIGEST_HEADER, HeaderValue::from_str(digest.as_str()).expect("a digest is ASCII"));
    h.insert(header::ETAG, HeaderValue::from_str(&etag).expect("a digest is ASCII"));
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static(serve::IMMUTABLE));
    h.insert(header::ACCEPT_RANGES, HeaderValue::from_static("bytes"));

    if fetch.method == Method::GET && serve::presigning(state) {
        let ttl = Duration::from_secs(state.config().storage.s3.as_ref().map_or(300, |s| s.presign_ttl_secs));
        let url = storage.presigned_get(&key, ttl).await.map_err(ApiError::from)?;
        let mut h = HeaderMap::new();
        let location = HeaderValue::from_str(&url).map_err(|_| ApiError::internal("bad presigned URL"))?;
        h.insert(header::LOCATION, location);
        h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
        h.insert(DIGEST_HEADER, HeaderValue::from_str(digest.as_str()).expect("ASCII"));
        return Ok((StatusCode::TEMPORARY_REDIRECT, h).into_response());
    }

    let (status, range) = match serve::wanted_range(&fetch.headers, &etag, size) {
        RangeWanted::Whole => (StatusCode::OK, 0..size),
        RangeWanted::Part(r) => {
            let v = format!("bytes {}-{}/{size}", r.start, r.end - 1);
            h.insert(header::CONTENT_RANGE, HeaderValue::from_str(&v).expect("ASCII"));
            (StatusCode::PARTIAL_CONTENT, r)
        }
        RangeWanted::Unsatisfiable => {
            let v = HeaderValue::from_str(&format!("bytes */{size}")).expect("ASCII");
            let mut e = RegistryError::new(
                StatusCode::RANGE_NOT_SATISFIABLE,
                "BLOB_UNKNOWN",
                format!("blob {digest} has {size} bytes; the requested range is outside it"),
            );
            e.headers.push((header::CONTENT_RANGE, v));
            return Err(e);
        }
    };
    let len = range.end - range.start;
    h.insert(header::CONTENT_LENGTH, HeaderValue::from(len));
    if fetch.method == Method::HEAD || range.is_empty() {
        return Ok((status, h).into_response());
    }
    state.metrics().registry_blob_bytes(len);
    if let (Some(conn), Some(path)) = (fetch.wire.conn(), storage.local_path(&key)) {
        match std::fs::File::open(&path) {
            Ok(file) => return Ok((status, h, conn.file_body(file, range.start, len)).into_response()),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Err(unknown()),
            Err(e) => tracing::warn!(%digest, error = %e, "cannot open a stored blob; streaming it"),
        }
    }
    let partial = status == StatusCode::PARTIAL_CONTENT;
    let stream = match storage.get(&key, partial.then(|| ByteRange::Bounded(range.clone()))).await {
        Ok(s) => s,
        Err(e) if e.is_not_found() => return Err(unknown()),
        Err(e) => return Err(ApiError::from(e).into()),
    };
    let body = Body::from_stream(stream.into_stream().map_err(std::io::Error::other));
    Ok((status, h, body).into_response())
}
