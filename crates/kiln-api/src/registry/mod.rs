//! The OCI registry pull API under `/v2/`: Kiln as a registry that builds
//! what is pulled (DESIGN.md, "Images on demand").
//!
//! - `GET /v2/` answers `200 {}` (docker and skopeo probe it first).
//! - `HEAD`/`GET /v2/<name>/manifests/<tag|digest>` ([`manifests`]): a tag
//!   is resolved to builds, which are enqueued and waited for like
//!   `/api/compat` (deduplicated, up to `api.compat_timeout_secs`); a
//!   `<version>` or `latest` tag is an OCI index over the recipe's linux
//!   platforms, built concurrently; a digest is served from the store.
//! - `HEAD`/`GET /v2/<name>/blobs/<digest>` ([`blobs`]): with `Range`
//!   (`206`), `sendfile` on local storage, a `307` to a presigned URL on S3
//!   with `storage.s3.presign` (a `HEAD` is always answered here).
//! - `GET /v2/<name>/tags/list`: the recipe's versions, each as `<version>`
//!   and per linux platform, and `latest` (skopeo lists them before it
//!   inspects).
//! - Pushes, deletes, uploads and the catalogue: `405 UNSUPPORTED`.
//!
//! Every answer carries `Docker-Distribution-API-Version: registry/2.0`;
//! errors are in the registry's shape ([`error`]). Paths are read raw, not
//! percent-decoded: a `%` is never part of a valid name, tag or digest.
//! Nothing here compresses: a manifest's bytes and length are the stored
//! ones. [`router`] is the one place these routes are made.
//!
//! In a private farm every route here needs a token with the `download`
//! scope (the ping included, so `docker login` asks for one), and a pull
//! that has to start a build also `submit`; refusals come in this shape with
//! `WWW-Authenticate: Basic realm="kiln"` (see [`crate::auth`]).

mod blobs;
pub mod error;
mod manifests;

use axum::Router;
use axum::extract::{Request, State};
use axum::http::{HeaderValue, Method, StatusCode, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::routing::any;
use kiln_domain::image_ref::ImageName;

use crate::AppState;
use crate::auth::Caller;
use crate::serve::Fetch;
use error::{RegistryError, RegistryResult};

/// The header every registry answer carries.
pub const API_VERSION_HEADER: &str = "docker-distribution-api-version";
/// The digest of a served manifest or blob.
pub const DIGEST_HEADER: &str = "docker-content-digest";

/// The registry's routes, with the layer that marks every answer and
/// counts it. Merged into the API's router by [`crate::app`].
pub fn router(state: AppState) -> Router<AppState> {
    Router::new()
        .route("/v2", any(base))
        .route("/v2/", any(base))
        .route("/v2/{*path}", any(dispatch))
        .layer(axum::middleware::from_fn_with_state(state, mark))
}

/// `GET /v2/`: this is a registry. In a private farm the guard
/// ([`crate::auth`]) has already asked for a token (`401` with
/// `WWW-Authenticate: Basic`), which is how `docker login` learns to send one.
async fn base(method: Method) -> Response {
    if method != Method::GET && method != Method::HEAD {
        return RegistryError::unsupported("this registry only serves pulls").into_response();
    }
    let mut resp = (StatusCode::OK, [(header::CONTENT_TYPE, "application/json")], "{}").into_response();
    resp.headers_mut().insert(header::CONTENT_LENGTH, HeaderValue::from(2u64));
    resp
}

/// What a path under `/v2/` asks for.
#[derive(Debug, PartialEq, Eq)]
enum Route<'a> {
    Manifest {
        name: &'a str,
        reference: &'a str,
    },
    Blob {
        name: &'a str,
        digest: &'a str,
    },
    Tags {
        name: &'a str,
    },
    /// Uploads, tag lists, the catalogue, referrers: not served.
    Unsupported(&'static str),
}

/// Split a raw path (after `/v2/`) at its last `/manifests/` or `/blobs/`.
fn route(path: &str) -> RegistryResult<Route<'_>> {
    if path.contains('%') {
        return Err(RegistryError::of(
            kiln_domain::image_ref::RegistryCode::NameInvalid,
            "the path is percent-encoded; names, tags and digests never need escaping",
        ));
    }
    if let Some(name) = path.strip_suffix("/tags/list") {
        return Ok(Route::Tags { name });
    }
    if path == "_catalog" {
        return Ok(Route::Unsupported("the catalogue is not listed: GET /api/recipes lists the recipes"));
    }
    if path.contains("/blobs/uploads") {
        return Ok(Route::Unsupported("this registry builds its images itself; pushes are not accepted"));
    }
    if path.contains("/referrers/") {
        return Ok(Route::Unsupported("referrers are not supported"));
    }
    let split = |marker: &str| path.rfind(marker).map(|at| (&path[..at], &path[at + marker.len()..]));
    match (split("/manifests/"), split("/blobs/")) {
        (Some((name, reference)), b) if b.is_none_or(|(n, _)| n.len() < name.len()) => {
            Ok(Route::Manifest { name, reference })
        }
        (_, Some((name, digest))) => Ok(Route::Blob { name, digest }),
        _ => Err(RegistryError::new(
            StatusCode::NOT_FOUND,
            "NAME_UNKNOWN",
            "not a registry route: /v2/<name>/manifests/<tag or digest> or /v2/<name>/blobs/<digest>",
        )),
    }
}

/// Every `/v2/<…>` request.
async fn dispatch(State(state): State<AppState>, caller: Caller, uri: axum::http::Uri, fetch: Fetch) -> Response {
    let path = uri.path().strip_prefix("/v2/").unwrap_or_default();
    let answer = async {
        let route = route(path)?;
        let read = fetch.method == Method::GET || fetch.method == Method::HEAD;
        match route {
            Route::Unsupported(why) => Err(RegistryError::unsupported(why)),
            _ if !read => Err(RegistryError::unsupported(format!(
                "{} is not supported: this registry only serves pulls (GET and HEAD)",
                fetch.method
            ))),
            Route::Manifest { name, reference } => {
                let name = checked_name(&state, name)?;
                manifests::manifest(&state, &caller, &name, reference, &fetch).await
            }
            Route::Blob { name, digest } => {
                checked_name(&state, name)?;
                blobs::blob(&state, digest, fetch).await
            }
            Route::Tags { name } => {
                let name = checked_name(&state, name)?;
                manifests::tags(&state, &name).await
            }
        }
    }
    .await;
    answer.unwrap_or_else(IntoResponse::into_response)
}

/// A name, parsed and checked against its recipe.
fn checked_name(state: &AppState, raw: &str) -> RegistryResult<ImageName> {
    let name = ImageName::parse(raw)?;
    name.check(state.config().recipes.get(name.recipe()))?;
    Ok(name)
}

/// Mark every answer as the registry's, and count it.
async fn mark(State(state): State<AppState>, req: Request, next: Next) -> Response {
    let method = req.method().clone();
    let kind = match req.uri().path() {
        p if p.contains("/manifests/") => "manifest",
        p if p.contains("/blobs/") => "blob",
        p if p.ends_with("/tags/list") => "tags",
        _ => "base",
    };
    let mut resp = next.run(req).await;
    resp.headers_mut().insert(API_VERSION_HEADER, HeaderValue::from_static("registry/2.0"));
    state.metrics().registry_request(kind, &method, resp.status().as_u16());
    resp
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths_split_at_their_last_marker() {
        assert_eq!(route("hello/manifests/v1.0.0").unwrap(), Route::Manifest { name: "hello", reference: "v1.0.0" });
        assert_eq!(
            route("caddy/github.com__a__b/blobs/sha256:00").unwrap(),
            Route::Blob { name: "caddy/github.com__a__b", digest: "sha256:00" }
        );
        // A plugin may be called `blobs`; the last marker wins.
        assert_eq!(route("hello/blobs/manifests/x").unwrap(), Route::Manifest { name: "hello/blobs", reference: "x" });
        assert_eq!(route("hello/manifests/blobs/x").unwrap(), Route::Blob { name: "hello/manifests", digest: "x" });
        assert!(matches!(route("hello/blobs/uploads/").unwrap(), Route::Unsupported(_)));
        assert_eq!(route("hello/x/tags/list").unwrap(), Route::Tags { name: "hello/x" });
        assert!(matches!(route("_catalog").unwrap(), Route::Unsupported(_)));
        assert_eq!(route("hello/manifests/v1%2e0").unwrap_err().code, "NAME_INVALID");
        assert_eq!(route("hello").unwrap_err().code, "NAME_UNKNOWN");
    }
}
