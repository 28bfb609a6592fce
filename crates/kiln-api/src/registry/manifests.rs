//! `HEAD`/`GET /v2/<name>/manifests/<reference>`.
//!
//! - `<version>-<os>-<arch>[-v<arm>]`: the name at that version and
//!   platform is resolved like any build request (plugins at their latest
//!   versions), enqueued and waited for like `/api/compat`; the answer is
//!   the build's platform manifest, as stored.
//! - `<version>` and `latest`: the same for every linux platform of the
//!   recipe, concurrently; the answer is the OCI index over their
//!   manifests. An index is made once per set of manifests and kept
//!   (`indexes/<index key>`, and as a blob), so it is served as stored
//!   bytes afterwards.
//! - `bk-<key>`: that build, whatever its plugins' versions (one submitted
//!   with `POST /api/builds`), if it is an image of this name.
//! - `sha256:<hex>`: the stored manifest or index of that digest.
//!
//! A failed build is `404 MANIFEST_UNKNOWN` with its error and its log's
//! URL in the message (clients print it verbatim); a build still running
//! when the wait runs out is `404 MANIFEST_UNKNOWN` saying to pull again
//! (the build goes on). `Accept` is read as a set: when it is given and
//! lacks the manifest's type, the answer is `404 MANIFEST_UNKNOWN`, as the
//! reference registry answers.

use std::sync::Arc;
use std::time::Duration;

use axum::http::{HeaderMap, HeaderValue, Method, StatusCode, header};
use axum::response::{IntoResponse, Response};
use bytes::Bytes;
use kiln_domain::image_ref::{ImageName, Reference, Tag};
use kiln_domain::{BuildKey, BuildState, OciDigest, Platform, VersionWanted};
use kiln_image::{Descriptor, MEDIA_TYPE_INDEX, MEDIA_TYPE_MANIFEST, OciPlatform};
use kiln_queue::Build;
use kiln_storage::ObjectKey;
use serde_json::json;

use super::DIGEST_HEADER;
use super::error::{RegistryError, RegistryResult};
use crate::AppState;
use crate::auth::Caller;
use crate::routes::builds::prepare;
use crate::routes::compat::ended_build;
use crate::serve::Fetch;
use crate::wait::{Waited, wait_for};

/// The largest document served as a manifest (ours are a few KiB).
const MAX_MANIFEST: u64 = 4 << 20;

/// A manifest or index to answer with.
struct Document {
    bytes: Bytes,
    media_type: &'static str,
    digest: OciDigest,
    /// Whether the reference can never name other bytes (a digest).
    immutable: bool,
}

/// Answer a manifest request for `name` (parsed and checked).
pub async fn manifest(
    state: &AppState,
    caller: &Caller,
    name: &ImageName,
    reference: &str,
    fetch: &Fetch,
) -> RegistryResult<Response> {
    let result = document(state, caller, name, reference, fetch).await;
    let outcome = match &result {
        Ok(_) => "served",
        Err(e) if e.detail.get("api_code").is_some_and(|c| c == "build_failed") => "build_failed",
        Err(e) if e.detail.get("api_code").is_some_and(|c| c == "build_pending") => "pending",
        Err(e) if e.status.is_client_error() => "refused",
        Err(_) => "error",
    };
    state.metrics().registry_pull(outcome);
    let doc = result?;
    if !accepts(&fetch.headers, doc.media_type) {
        return Err(RegistryError::manifest_unknown(format!(
            "the manifest is {}, which the request's Accept header does not list",
            doc.media_type
        )));
    }
    let mut h = HeaderMap::new();
    h.insert(header::CONTENT_TYPE, HeaderValue::from_static(doc.media_type));
    h.insert(header::CONTENT_LENGTH, HeaderValue::from(doc.bytes.len() as u64));
    h.insert(DIGEST_HEADER, HeaderValue::from_str(doc.digest.as_str()).expect("a digest is ASCII"));
    h.insert(header::ETAG, HeaderValue::from_str(&format!("\"{}\"", doc.digest)).expect("ASCII"));
    let cache = if doc.immutable { crate::serve::IMMUTABLE } else { "no-cache" };
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static(cache));
    if fetch.method == Method::HEAD {
        return Ok((StatusCode::OK, h).into_response());
    }
    Ok((StatusCode::OK, h, doc.bytes).into_response())
}

async fn document(
    state: &AppState,
    caller: &Caller,
    name: &ImageName,
    reference: &str,
    fetch: &Fetch,
) -> RegistryResult<Document> {
    let host = fetch.headers.get(header::HOST).and_then(|v| v.to_str().ok());
    match Reference::parse(reference)? {
        Reference::Digest(d) => by_digest(state, &d).await,
        Reference::Tag(Tag::Build(key)) => {
            let build = by_key(state, name, &key, host).await?;
            platform_manifest(state, &build).await
        }
        Reference::Tag(tag @ Tag::Version { .. }) => {
            let Tag::Version { version, platform } = &tag else { unreachable!("matched above") };
            let recipe = state.config().recipes.get(name.recipe()).expect("the name was checked");
            let platforms = tag.platforms(name.recipe(), recipe)?;
            if platform.is_some() {
                let build = image_build(state, caller, name, version, &platforms[0], host).await?;
                return platform_manifest(state, &build).await;
            }
            let builds = futures::future::try_join_all(
                platforms.iter().map(|p| image_build(state, caller, name, version, p, host)),
            )
            .await?;
            index(state, &builds).await
        }
    }
}

/// `GET /v2/<name>/tags/list`: `latest`, then every version the recipe
/// offers, each alone and for each linux platform, sorted.
pub async fn tags(state: &AppState, name: &ImageName) -> RegistryResult<Response> {
    let recipe = state.config().recipes.get(name.recipe()).expect("the name was checked");
    let versions = state.resolver().offered(recipe, None).await?;
    let platforms = kiln_domain::image_ref::image_platforms(recipe);
    let mut tags = vec!["latest".to_owned()];
    for v in versions.iter() {
        tags.push(Tag::for_version(v));
        tags.extend(platforms.iter().map(|p| Tag::for_platform(v, p)));
    }
    tags.sort();
    let body = json!({"name": name.to_string(), "tags": tags});
    Ok((StatusCode::OK, [(header::CACHE_CONTROL, "no-cache")], axum::Json(body)).into_response())
}

/// The build of `name` at `version` for `platform`, once it has an image.
async fn image_build(
    state: &AppState,
    caller: &Caller,
    name: &ImageName,
    version: &VersionWanted,
    platform: &Platform,
    host: Option<&str>,
) -> RegistryResult<Arc<Build>> {
    let spec = prepare(state, &name.build_request(version, platform)).await?;
    let key = spec.key();
    let build = ended_build(state, caller, &spec, &key, "registry").await.map_err(|e| match e.code {
        "build_pending" => pending(&key, state.config().api.compat_timeout_secs),
        _ => e.into(),
    })?;
    with_image(state, &build, host)
}

/// `bk-<key>`: that build, waited for when it has not ended, if it is an
/// image of `name`.
async fn by_key(state: &AppState, name: &ImageName, key: &BuildKey, host: Option<&str>) -> RegistryResult<Arc<Build>> {
    let unknown = || RegistryError::manifest_unknown(format!("there is no build {key}"));
    let build = state.lookup(key).await.map_err(RegistryError::from)?.ok_or_else(unknown)?;
    name.check_build(key, &build.spec)?;
    let build = if build.state.is_final() {
        build
    } else {
        let secs = state.config().api.compat_timeout_secs;
        match wait_for(state, key, Duration::from_secs(secs), BuildState::is_final).await? {
            Waited::Done(b) => b,
            Waited::TimedOut(_) => return Err(pending(key, secs)),
            Waited::Stopped(_) => return Err(crate::error::ApiError::shutting_down().into()),
        }
    };
    with_image(state, &build, host)
}

/// A build that has ended, if it succeeded with an image; else why not.
fn with_image(state: &AppState, build: &Arc<Build>, host: Option<&str>) -> RegistryResult<Arc<Build>> {
    let key = &build.key;
    let detail = |code: &str| json!({"api_code": code, "key": key.as_str(), "log": log_url(state, key, host)});
    match build.state {
        BuildState::Succeeded if build.artifact.as_ref().is_some_and(|m| m.oci_image.is_some()) => Ok(build.clone()),
        BuildState::Succeeded => Err(RegistryError::manifest_unknown(format!(
            "build {key} ({} {} {}) has no image",
            build.spec.recipe, build.spec.version, build.spec.platform
        ))),
        BuildState::Failed => Err(RegistryError::manifest_unknown(format!(
            "build {key} ({} {} {}) failed: {}; log: {}",
            build.spec.recipe,
            build.spec.version,
            build.spec.platform,
            build.error.as_deref().unwrap_or("the build failed"),
            log_url(state, key, host)
        ))
        .with_detail(detail("build_failed"))),
        _ => Err(RegistryError::manifest_unknown(format!("build {key} was cancelled"))
            .with_detail(detail("build_cancelled"))),
    }
}

/// The log's URL, absolute: `api.public_url`, else the request's host.
fn log_url(state: &AppState, key: &BuildKey, host: Option<&str>) -> String {
    let path = format!("/api/builds/{key}/log");
    match (&state.config().api.public_url, host) {
        (None, Some(h)) if h.bytes().all(|b| b.is_ascii_graphic()) => format!("http://{h}{path}"),
        _ => state.url(&path),
    }
}

fn pending(key: &BuildKey, secs: u64) -> RegistryError {
    RegistryError::manifest_unknown(format!(
        "build {key} is still running after {secs} s; it goes on: pull again to wait for it"
    ))
    .with_detail(json!({"api_code": "build_pending", "key": key.as_str()}))
}

/// The platform manifest of a build with an image, as stored.
async fn platform_manifest(state: &AppState, build: &Build) -> RegistryResult<Document> {
    let image = build.artifact.as_ref().and_then(|m| m.oci_image.as_ref()).expect("checked by with_image");
    let bytes = stored(state, &ObjectKey::blob(&image.manifest_digest)).await?.ok_or_else(|| {
        state.forget(&build.key);
        RegistryError::manifest_unknown(format!("the image of build {} is no longer stored", build.key))
    })?;
    Ok(Document { bytes, media_type: MEDIA_TYPE_MANIFEST, digest: image.manifest_digest.clone(), immutable: false })
}

/// The index over the builds' manifests: stored the first time, then
/// served as stored.
async fn index(state: &AppState, builds: &[Arc<Build>]) -> RegistryResult<Document> {
    let children: Vec<Descriptor> = builds
        .iter()
        .map(|b| {
            let image = b.artifact.as_ref().and_then(|m| m.oci_image.as_ref()).expect("checked by with_image");
            let mut d = Descriptor::new(&image.media_type, image.manifest_digest.clone(), image.manifest_size);
            d.platform = OciPlatform::of(&b.spec.platform).ok();
            d
        })
        .collect();
    let key = kiln_image::index_key(&children);
    let record = ObjectKey::index(&key);
    let bytes = match stored(state, &record).await? {
        Some(bytes) => bytes,
        None => {
            let made = kiln_image::image_index(&children).map_err(|e| {
                tracing::error!(error = %e, "an index cannot be made");
                RegistryError::new(StatusCode::INTERNAL_SERVER_ERROR, "UNAVAILABLE", "the index cannot be made")
            })?;
            let blob = ObjectKey::blob(&made.descriptor.digest);
            let storage = state.storage();
            if !storage.exists(&blob).await.map_err(api)? {
                storage.put_bytes(&blob, made.bytes.clone()).await.map_err(api)?;
            }
            storage.put_bytes(&record, made.bytes.clone()).await.map_err(api)?;
            Bytes::from(made.bytes)
        }
    };
    let digest = OciDigest::of(&bytes);
    Ok(Document { bytes, media_type: MEDIA_TYPE_INDEX, digest, immutable: false })
}

/// A stored manifest or index by its digest.
async fn by_digest(state: &AppState, digest: &OciDigest) -> RegistryResult<Document> {
    let unknown = || RegistryError::manifest_unknown(format!("there is no manifest {digest} here"));
    let bytes = stored(state, &ObjectKey::blob(digest)).await?.ok_or_else(unknown)?;
    #[derive(serde::Deserialize)]
    struct Typed {
        #[serde(rename = "mediaType")]
        media_type: String,
    }
    let media_type = match serde_json::from_slice::<Typed>(&bytes).map(|t| t.media_type) {
        Ok(t) if t == MEDIA_TYPE_MANIFEST => MEDIA_TYPE_MANIFEST,
        Ok(t) if t == MEDIA_TYPE_INDEX => MEDIA_TYPE_INDEX,
        _ => return Err(unknown()),
    };
    Ok(Document { bytes, media_type, digest: digest.clone(), immutable: true })
}

/// A small stored object, `None` when it is not there (or too large to be a manifest).
async fn stored(state: &AppState, key: &ObjectKey) -> RegistryResult<Option<Bytes>> {
    let storage = state.storage();
    match storage.head(key).await {
        Ok(info) if info.size > MAX_MANIFEST => return Ok(None),
        Ok(_) => {}
        Err(e) if e.is_not_found() => return Ok(None),
        Err(e) => return Err(api(e)),
    }
    match storage.get_bytes(key).await {
        Ok(b) => Ok(Some(b)),
        Err(e) if e.is_not_found() => Ok(None),
        Err(e) => Err(api(e)),
    }
}

fn api(e: kiln_storage::StorageError) -> RegistryError {
    crate::error::ApiError::from(e).into()
}

/// Does the `Accept` header (a set, over one or more lines) allow `media_type`?
/// No header allows everything.
fn accepts(headers: &HeaderMap, media_type: &str) -> bool {
    let mut any = false;
    for v in headers.get_all(header::ACCEPT) {
        let Ok(v) = v.to_str() else { continue };
        for t in v.split(',') {
            let t = t.split(';').next().unwrap_or_default().trim();
            if t.is_empty() {
                continue;
            }
            any = true;
            if t == media_type || t == "*/*" || t == "application/*" {
                return true;
            }
        }
    }
    !any
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accept_is_a_set_over_lines() {
        let mut h = HeaderMap::new();
        assert!(accepts(&h, MEDIA_TYPE_INDEX), "no Accept: anything");
        h.append(header::ACCEPT, HeaderValue::from_static("application/vnd.docker.distribution.manifest.v2+json"));
        assert!(!accepts(&h, MEDIA_TYPE_INDEX));
        h.append(header::ACCEPT, HeaderValue::from_static("application/vnd.oci.image.index.v1+json; q=0.5, x/y"));
        assert!(accepts(&h, MEDIA_TYPE_INDEX));
        assert!(!accepts(&h, MEDIA_TYPE_MANIFEST));
        h.append(header::ACCEPT, HeaderValue::from_static("*/*"));
        assert!(accepts(&h, MEDIA_TYPE_MANIFEST));
    }
}
