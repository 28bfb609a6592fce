//! `GET /api/builds/{key}/image.tar`: a build's image as one archive that
//! `docker load` and `skopeo copy oci-archive:` both read, for machines
//! that cannot reach the registry.
//!
//! The archive is planned from the stored manifest ([`ArchivePlan`]), so
//! its length is known before a byte is sent; its literal parts come from
//! memory and its blobs are streamed from the store. The loaded image is
//! named `<host>/<name>:<version>-<os>-<arch>[-v<arm>]`, as the registry
//! would serve it (the host from `api.public_url`, else the request's).

use axum::body::Body;
use axum::extract::State;
use axum::http::{HeaderMap, HeaderValue, Method, StatusCode, header};
use axum::response::{IntoResponse, Response};
use futures::{StreamExt, TryStreamExt, stream};
use kiln_domain::BuildState;
use kiln_domain::image_ref::{ImageName, Tag};
use kiln_image::{ArchivePart, ArchivePlan, Descriptor, OciPlatform};
use kiln_storage::ObjectKey;

use crate::AppState;
use crate::error::{ApiError, ApiResult, ErrorBody};
use crate::openapi::KeyParam;
use crate::routes::builds::{KeyPath, not_succeeded};
use crate::serve::{self, Fetch};

/// Download the build's image as an OCI layout TAR (with Docker's `manifest.json`).
///
/// `docker load -i image.tar` and `skopeo copy oci-archive:image.tar …`
/// both read it. The image is named as the registry serves it.
#[utoipa::path(
    method(get, head),
    path = "/api/builds/{key}/image.tar",
    operation_id = "getImageArchive",
    tag = "downloads",
    params(KeyParam),
    responses(
        (status = 200, description = "The archive; `Content-Length` is exact.", content(("application/x-tar")),
            headers(
                ("Content-Disposition" = String, description = "`attachment; filename=<name>_<tag>.tar`"),
                ("x-kiln-image-digest" = String, description = "The image manifest's digest"),
            )),
        (status = 400, description = "A malformed key.", body = ErrorBody),
        (status = 404, description = "No such build (`unknown_build`), a build without an image (`no_image`), or its image is no longer stored (`not_stored`).", body = ErrorBody),
        (status = 409, description = "The build is still queued or running (`not_ready`), or was cancelled (`build_cancelled`).", body = ErrorBody),
        (status = 422, description = "The build failed (`build_failed`); `log` is the URL of its log.", body = ErrorBody),
        (status = 503, description = "The database or the object store is unreachable.", body = ErrorBody),
    )
)]
pub async fn image_tar(State(state): State<AppState>, KeyPath(key): KeyPath, f: Fetch) -> ApiResult<Response> {
    let build = state.build(&key).await?;
    if build.state != BuildState::Succeeded {
        return Err(not_succeeded(&state, &build));
    }
    let Some(image) = build.artifact.as_ref().and_then(|m| m.oci_image.as_ref()) else {
        return Err(ApiError::not_found(
            "no_image",
            format!("build {key} has no image: its recipe has no oci section, or it is not a linux build"),
        )
        .with_key(&key));
    };
    let gone =
        || ApiError::not_found("not_stored", format!("the image of build {key} is no longer stored")).with_key(&key);
    let manifest = match state.storage().get_bytes(&ObjectKey::blob(&image.manifest_digest)).await {
        Ok(b) => b,
        Err(e) if e.is_not_found() => return Err(gone()),
        Err(e) => return Err(e.into()),
    };
    let mut descriptor = Descriptor::new(&image.media_type, image.manifest_digest.clone(), image.manifest_size);
    descriptor.platform = OciPlatform::of(&build.spec.platform).ok();
    let name = ImageName::of_spec(&build.spec);
    let tag = Tag::for_platform(&build.spec.version, &build.spec.platform);
    let named = match registry_host(&state, &f.headers) {
        Some(host) => format!("{host}/{name}:{tag}"),
        None => format!("{name}:{tag}"),
    };
    let plan = ArchivePlan::new(&manifest, &descriptor, std::slice::from_ref(&named))
        .or_else(|_| ArchivePlan::new(&manifest, &descriptor, &[]))
        .map_err(|e| {
            tracing::error!(build = %key, error = %e, "a stored image cannot be archived");
            ApiError::internal("the stored image cannot be archived")
        })?;

    let mut h = HeaderMap::new();
    h.insert(header::CONTENT_TYPE, HeaderValue::from_static("application/x-tar"));
    h.insert(header::CONTENT_LENGTH, HeaderValue::from(plan.len()));
    h.insert(
        header::CONTENT_DISPOSITION,
        serve::disposition(&format!("{}_{tag}.tar", name.to_string().replace('/', "_"))),
    );
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    h.insert("x-kiln-image-digest", HeaderValue::from_str(image.manifest_digest.as_str()).expect("ASCII"));
    if f.method == Method::HEAD {
        return Ok((StatusCode::OK, h).into_response());
    }
    let storage = state.storage().clone();
    let parts = plan.parts().to_vec();
    let body = stream::iter(parts)
        .then(move |part| {
            let storage = storage.clone();
            async move {
                type Chunks = futures::stream::BoxStream<'static, std::io::Result<bytes::Bytes>>;
                let chunks: std::io::Result<Chunks> = match part {
                    ArchivePart::Bytes(b) => Ok(stream::once(async { Ok(bytes::Bytes::from(b)) }).boxed()),
                    ArchivePart::Blob { digest, .. } => {
                        let object =
                            storage.get(&ObjectKey::blob(&digest), None).await.map_err(std::io::Error::other)?;
                        Ok(object.into_stream().map_err(std::io::Error::other).boxed())
                    }
                };
                chunks
            }
        })
        .try_flatten();
    Ok((StatusCode::OK, h, Body::from_stream(body)).into_response())
}

/// The registry's `host[:port]` as clients name it: `api.public_url`'s
/// authority, else the request's `Host`.
fn registry_host(state: &AppState, headers: &HeaderMap) -> Option<String> {
    let from_url = state.config().api.public_url.as_deref().and_then(|u| {
        let rest = u.split_once("://").map_or(u, |(_, r)| r);
        rest.split('/').next().map(str::to_owned)
    });
    let host = from_url.or_else(|| headers.get(header::HOST)?.to_str().ok().map(str::to_owned))?;
    let ok = !host.is_empty() && host.bytes().all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'-' | b':'));
    ok.then_some(host)
}
