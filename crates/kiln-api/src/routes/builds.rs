//! `/api/builds`: submit, read (and long-poll), cancel, retry, and the
//! stored objects of a build.

use std::time::{Duration, Instant};

use axum::Json;
use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::extract::{FromRequestParts, RawQuery, State};
use axum::http::request::Parts;
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use kiln_domain::{BuildKey, BuildRequest, BuildSpec, BuildState};
use kiln_queue::{Build, Enqueued, QueueError, priority};
use kiln_storage::ObjectName;

use crate::AppState;
use crate::auth::Caller;
use crate::error::{ApiError, ApiResult, ErrorBody};
use crate::openapi::{KeyParam, ObjectHeaders};
use crate::query::RawQuery as Query;
use crate::serve::{self, Extra, Fetch};
use crate::views::BuildView;
use crate::wait::{Waited, wait_for};

/// A build key from the URL path, checked before any lookup.
pub struct KeyPath(pub BuildKey);

impl<S: Send + Sync> FromRequestParts<S> for KeyPath {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, ApiError> {
        let axum::extract::Path(raw) = axum::extract::Path::<String>::from_request_parts(parts, state)
            .await
            .map_err(|_| ApiError::bad_request("key", "invalid_key", "the build key in the URL is malformed"))?;
        Ok(KeyPath(BuildKey::parse(&raw)?))
    }
}

/// Validate a request against its recipe and resolve its versions.
pub async fn prepare(state: &AppState, req: &BuildRequest) -> ApiResult<BuildSpec> {
    Ok(prepare_until(state, req).await?.0)
}

/// [`prepare`], and until when the resolution holds.
pub async fn prepare_until(state: &AppState, req: &BuildRequest) -> ApiResult<(BuildSpec, std::time::Instant)> {
    let recipe = state.recipe(&req.recipe)?;
    let validated = req.validate(recipe)?;
    state.resolver().spec_until(recipe, &validated).await
}

/// Submit a build.
///
/// The request is validated against its recipe, "latest" and missing versions
/// are resolved to absolute ones, and the resolved request is hashed into the
/// build key. Identical requests share one build: the answer is `202` while it
/// is queued or running, `200` once it has ended.
#[utoipa::path(
    post,
    path = "/api/builds",
    operation_id = "createBuild",
    tag = "builds",
    request_body(content = BuildRequest, content_type = "application/json"),
    responses(
        (status = 202, description = "Queued or running; poll `Location`.", body = BuildView,
            headers(("Location" = String, description = "The build's URL"))),
        (status = 200, description = "The same request has already ended (succeeded, failed or cancelled).", body = BuildView),
        (status = 400, description = "A malformed body or an invalid request (`field` names it): unknown platform, module path, version.", body = ErrorBody),
        (status = 404, description = "No such recipe (`unknown_recipe`).", body = ErrorBody),
        (status = 413, description = "The body is larger than `api.max_body_bytes`.", body = ErrorBody),
        (status = 502, description = "The Go module proxy could not be asked for a version (`proxy_unreachable`).", body = ErrorBody),
        (status = 503, description = "The database is unreachable.", body = ErrorBody),
    )
)]
pub async fn create(
    State(state): State<AppState>,
    caller: Caller,
    body: Result<Bytes, BytesRejection>,
) -> ApiResult<Response> {
    let req: BuildRequest = json_body(&state, body)?;
    let spec = prepare(&state, &req).await?;
    let build = enqueue(&state, &caller, &spec, priority::DEFAULT).await?.build;
    if build.state == BuildState::Succeeded {
        state.remember(std::sync::Arc::new(build.clone()));
    }
    let status = if build.state.is_final() { StatusCode::OK } else { StatusCode::ACCEPTED };
    Ok(build_response(&state, status, &build))
}

/// Queue `spec` for `caller`, within its token's build quota (`429
/// build_quota` past it).
pub async fn enqueue(state: &AppState, caller: &Caller, spec: &BuildSpec, priority: i32) -> ApiResult<Enqueued> {
    match state.queue().enqueue_for(spec, priority, caller.submitter(state.config())).await {
        Err(QueueError::OverQuota { limit }) => {
            state.metrics().rejected("build_quota");
            Err(ApiError::new(
                StatusCode::TOO_MANY_REQUESTS,
                "build_quota",
                format!("this token already has {limit} builds queued or running; retry when one has ended"),
            )
            .with_header(header::RETRY_AFTER, HeaderValue::from_static(QUOTA_RETRY_AFTER)))
        }
        other => Ok(other?),
    }
}

/// The `Retry-After` of a refusal by the build quota: builds take minutes,
/// so a client need not ask again sooner.
const QUOTA_RETRY_AFTER: &str = "30";

/// A JSON request body as `T`, or the error that says what to fix: the
/// body too large, not JSON, or the field (`plugins[1].module`) that is wrong.
pub(crate) fn json_body<T: serde::de::DeserializeOwned>(
    state: &AppState,
    body: Result<Bytes, BytesRejection>,
) -> ApiResult<T> {
    let body = body.map_err(|e| {
        if e.status() == StatusCode::PAYLOAD_TOO_LARGE {
            ApiError::new(
                StatusCode::PAYLOAD_TOO_LARGE,
                "body_too_large",
                format!("the body may have at most {} bytes", state.config().api.max_body_bytes),
            )
            .with_field("body")
        } else {
            ApiError::bad_request("body", "invalid_body", e.body_text())
        }
    })?;
    let de = &mut serde_json::Deserializer::from_slice(&body);
    serde_path_to_error::deserialize(de).map_err(|e| {
        let path = e.path().to_string();
        let field = if matches!(path.as_str(), "." | "?" | "") { "body".to_owned() } else { path };
        let inner = e.into_inner();
        let message = if inner.is_syntax() || inner.is_eof() {
            format!("the body is not valid JSON: {inner}")
        } else {
            inner.to_string()
        };
        ApiError::bad_request(field, "invalid_body", message)
    })
}

pub fn build_response(state: &AppState, status: StatusCode, build: &Build) -> Response {
    let mut resp = (status, Json(BuildView::new(state, build))).into_response();
    resp.headers_mut().insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    if status == StatusCode::ACCEPTED
        && let Ok(v) = HeaderValue::from_str(&state.url(&format!("/api/builds/{}", build.key)))
    {
        resp.headers_mut().insert(header::LOCATION, v);
    }
    resp
}

/// Read a build, optionally waiting for its state to change.
///
/// With `wait=N` the answer is held until the state differs from the one at
/// the time of the request, or N seconds (at most `api.max_wait_secs`) pass.
#[utoipa::path(
    get,
    path = "/api/builds/{key}",
    operation_id = "getBuild",
    tag = "builds",
    params(
        KeyParam,
        ("wait" = Option<u64>, Query, description = "Seconds to wait for a change of state (capped by the server).", minimum = 0),
    ),
    responses(
        (status = 200, description = "The build.", body = BuildView),
        (status = 400, description = "A malformed key or `wait`.", body = ErrorBody),
        (status = 404, description = "No such build (`unknown_build`).", body = ErrorBody),
        (status = 503, description = "The database is unreachable.", body = ErrorBody),
    )
)]
pub async fn get(State(state): State<AppState>, KeyPath(key): KeyPath, RawQuery(q): RawQuery) -> ApiResult<Response> {
    let q = Query::parse(q.as_deref())?;
    let wait = match q.first("wait").filter(|w| !w.is_empty()) {
        None => 0,
        Some(w) => w
            .parse::<u64>()
            .map_err(|_| ApiError::bad_request("wait", "invalid_wait", "wait is a number of seconds, e.g. wait=30"))?,
    }
    .min(state.config().api.max_wait_secs);
    let build = state.build(&key).await?;
    if wait == 0 || build.state.is_final() {
        return Ok(build_response(&state, StatusCode::OK, &build));
    }
    let started = Instant::now();
    let first = build.state;
    let waiting = state.metrics().waiting("poll");
    let waited = wait_for(&state, &key, Duration::from_secs(wait), |s| s != first).await?;
    drop(waiting);
    state.metrics().waited("poll", started.elapsed().as_secs_f64());
    let build = match waited {
        Waited::Done(b) | Waited::TimedOut(b) | Waited::Stopped(b) => b,
    };
    Ok(build_response(&state, StatusCode::OK, &build))
}

/// The answers every admin route may give besides its own.
#[derive(utoipa::IntoResponses)]
#[allow(dead_code)] // a description for the API document, never built
pub enum AdminErrors<'a> {
    /// A malformed key.
    #[response(status = 400)]
    BadKey(ErrorBody<'a>),
    /// No token (`unauthorized`), or an unknown or revoked one (`invalid_token`).
    #[response(status = 401, headers(("WWW-Authenticate" = String, description = "`Bearer`")))]
    Unauthorized(ErrorBody<'a>),
    /// The token lacks the `admin` scope (`insufficient_scope`).
    #[response(status = 403)]
    Forbidden(ErrorBody<'a>),
    /// Too many requests from this token or address (`rate_limited`).
    #[response(status = 429, headers(("Retry-After" = String, description = "Seconds")))]
    RateLimited(ErrorBody<'a>),
    /// No such build.
    #[response(status = 404)]
    UnknownBuild(ErrorBody<'a>),
    /// The database is unreachable.
    #[response(status = 503)]
    Unavailable(ErrorBody<'a>),
}

/// Cancel a build (admin).
///
/// A queued build ends `cancelled` at once (`200`); a running one is
/// stopped by its worker at its next heartbeat (`202`, `cancel_requested`).
#[utoipa::path(
    delete,
    path = "/api/builds/{key}",
    operation_id = "cancelBuild",
    tag = "builds",
    params(KeyParam),
    security(("admin_token" = [])),
    responses(
        (status = 200, description = "Cancelled.", body = BuildView),
        (status = 202, description = "Running: its worker stops it shortly.", body = BuildView),
        AdminErrors,
        (status = 409, description = "The build has already ended (`already_finished`).", body = ErrorBody),
    )
)]
pub async fn cancel(State(state): State<AppState>, KeyPath(key): KeyPath) -> ApiResult<Response> {
    let before = state.queue().get(&key).await?.ok_or_else(|| ApiError::unknown_build(&key))?;
    if before.state.is_final() {
        return Err(ApiError::new(
            StatusCode::CONFLICT,
            "already_finished",
            format!("build {key} has already ended {}", before.state),
        )
        .with_key(&key));
    }
    let build = state.queue().cancel(&key).await?.ok_or_else(|| ApiError::unknown_build(&key))?;
    tracing::info!(build = %key, state = %build.state, "cancel requested");
    let status = if build.state.is_final() { StatusCode::OK } else { StatusCode::ACCEPTED };
    Ok(build_response(&state, status, &build))
}

/// Retry a failed or cancelled build now (admin).
#[utoipa::path(
    post,
    path = "/api/builds/{key}/retry",
    operation_id = "retryBuild",
    tag = "builds",
    params(KeyParam),
    security(("admin_token" = [])),
    responses(
        (status = 202, description = "Queued again.", body = BuildView),
        AdminErrors,
        (status = 409, description = "The build is queued, running or succeeded (`not_retryable`).", body = ErrorBody),
    )
)]
pub async fn retry(State(state): State<AppState>, KeyPath(key): KeyPath) -> ApiResult<Response> {
    if !state.queue().retry(&key).await? {
        let build = state.queue().get(&key).await?.ok_or_else(|| ApiError::unknown_build(&key))?;
        return Err(ApiError::new(
            StatusCode::CONFLICT,
            "not_retryable",
            format!("build {key} is {}; only failed or cancelled builds are retried", build.state),
        )
        .with_key(&key));
    }
    state.forget(&key);
    let build = state.queue().get(&key).await?.ok_or_else(|| ApiError::unknown_build(&key))?;
    tracing::info!(build = %key, "retry requested");
    Ok(build_response(&state, StatusCode::ACCEPTED, &build))
}

/// The error for an object of a build that has not succeeded.
pub fn not_succeeded(state: &AppState, build: &Build) -> ApiError {
    let key = &build.key;
    match build.state {
        BuildState::Queued | BuildState::Running => ApiError::new(
            StatusCode::CONFLICT,
            "not_ready",
            format!("build {key} is {}; its files exist once it has succeeded", build.state),
        ),
        BuildState::Failed => failed(state, build),
        _ => ApiError::new(StatusCode::CONFLICT, "build_cancelled", format!("build {key} was cancelled")),
    }
    .with_key(key)
}

/// `422` for a failed build: its error and a link to its log.
pub fn failed(state: &AppState, build: &Build) -> ApiError {
    let error = build.error.as_deref().unwrap_or("the build failed");
    ApiError::new(StatusCode::UNPROCESSABLE_ENTITY, "build_failed", format!("build {} failed: {error}", build.key))
        .with_key(&build.key)
        .with_log(state.url(&format!("/api/builds/{}/log", build.key)))
}

async fn stored(state: AppState, key: BuildKey, name: ObjectName, f: Fetch) -> ApiResult<Response> {
    let build = state.build(&key).await?;
    if build.state != BuildState::Succeeded {
        return Err(not_succeeded(&state, &build));
    }
    let presign = matches!(name, ObjectName::Artifact | ObjectName::Binary);
    let extra = Extra { presign, wire: f.wire, ..Default::default() };
    serve::object(&state, &build, name, &f.method, &f.headers, extra).await
}

/// A handler for one stored object of a succeeded build (`GET` and `HEAD`),
/// and its entry in the API document.
macro_rules! stored_object {
    // `presigned`: may answer `303` to a presigned URL (S3 with `presign`).
    (
        $(#[$doc:meta])*
        $name:ident, $path:tt, $id:tt, $object:expr, $content_type:tt, presigned
    ) => {
        stored_object! {
            $(#[$doc])*
            $name, $path, $id, $object, $content_type,
            (status = 303, description = "With S3 storage and `storage.s3.presign`: a presigned URL of the object.",
                headers(("Location" = String, description = "The presigned URL")))
        }
    };
    (
        $(#[$doc:meta])*
        $name:ident, $path:tt, $id:tt, $object:expr, $content_type:tt $(, $extra:tt)*
    ) => {
        $(#[$doc])*
        #[utoipa::path(
            method(get, head),
            path = $path,
            operation_id = $id,
            tag = "downloads",
            params(KeyParam, ObjectHeaders),
            responses(
                (status = 200, description = "The object. Immutable: strong `ETag`, cached for a year.",
                    content(($content_type)),
                    headers(
                        ("ETag" = String, description = "`\"sha256-<hex>\"` where the manifest records the SHA-256"),
                        ("Cache-Control" = String, description = "`public, max-age=31536000, immutable`"),
                        ("x-kiln-build-key" = String, description = "The build key"),
                    )),
                (status = 206, description = "The requested `Range`.", content(($content_type)),
                    headers(("Content-Range" = String, description = "`bytes start-end/size`"))),
                $($extra,)*
                (status = 304, description = "`If-None-Match` matched the `ETag`."),
                (status = 400, description = "A malformed key.", body = ErrorBody),
                (status = 404, description = "No such build (`unknown_build`), or the object has expired (`not_stored`).", body = ErrorBody),
                (status = 409, description = "The build is still queued or running (`not_ready`), or was cancelled (`build_cancelled`).", body = ErrorBody),
                (status = 416, description = "The `Range` lies outside the object.", body = ErrorBody,
                    headers(("Content-Range" = String, description = "`bytes */size`"))),
                (status = 422, description = "The build failed (`build_failed`); `log` is the URL of its log.", body = ErrorBody),
                (status = 503, description = "The database or the object store is unreachable.", body = ErrorBody),
            )
        )]
        pub async fn $name(State(s): State<AppState>, KeyPath(k): KeyPath, f: Fetch) -> ApiResult<Response> {
            stored(s, k, $object, f).await
        }
    };
}

stored_object! {
    /// Download the artifact: the TAR of `out/`, deterministic and signed.
    artifact, "/api/builds/{key}/artifact", "getArtifact", ObjectName::Artifact,
    "application/x-tar", presigned
}

stored_object! {
    /// Download the artifact's minisign signature.
    ///
    /// `minisign -Vm artifact.tar -P <key>` verifies it; its trusted comment
    /// names the build key and the artifact's SHA-256.
    signature, "/api/builds/{key}/artifact.minisig", "getSignature", ObjectName::Signature,
    "text/plain; charset=utf-8"
}

stored_object! {
    /// Download the recipe's main binary, taken out of the artifact.
    binary, "/api/builds/{key}/binary", "getBinary", ObjectName::Binary,
    "application/octet-stream", presigned
}

stored_object! {
    /// Download the build's manifest (`build.json`): request, resolved versions, sizes, SHA-256s.
    manifest, "/api/builds/{key}/build.json", "getManifest", ObjectName::Manifest,
    "application/json"
}

stored_object! {
    /// Download the build's image signature (builds with an image only).
    ///
    /// A minisign signature over the image manifest's bytes as the registry
    /// serves them; its trusted comment is `kiln image <key> <platform>
    /// sha256:<manifest>`.
    image_signature, "/api/builds/{key}/image.minisig", "getImageSignature", ObjectName::ImageSignature,
    "text/plain; charset=utf-8"
}
