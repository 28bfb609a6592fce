//! The API described as OpenAPI 3.1, from the handlers themselves.
//!
//! Every route is registered in [`router`] through utoipa-axum's
//! `OpenApiRouter` and `routes!`, which takes each route's path and methods
//! from its handler's `#[utoipa::path]` annotation: the router and the
//! document are made from the same list, so a route cannot exist
//! undocumented and a documented path cannot be missing. [`finish`] adds
//! what annotations cannot say once for all: the admin token's security
//! scheme, distinct operation ids for `HEAD`, and the links from every
//! answer that carries a build to the operations on that build (so a
//! stateful client such as schemathesis can follow them).
//!
//! The document is served at `GET /api/openapi.json`; `docs/openapi.json`
//! is a rendered copy, and a test fails when it differs from [`document_json`].
//! The OCI registry under `/v2/` speaks the distribution protocol and is not
//! part of this document.

use std::sync::OnceLock;

use axum::http::header;
use axum::response::{IntoResponse, Response};
use utoipa::openapi::link::LinkBuilder;
use utoipa::openapi::path::{HttpMethod, Operation};
use utoipa::openapi::security::{HttpAuthScheme, HttpBuilder, SecurityRequirement, SecurityScheme};
use utoipa::openapi::{ContentBuilder, HeaderBuilder, Ref, ResponseBuilder};
use utoipa::openapi::{OpenApi, RefOr};
use utoipa::{IntoParams, OpenApi as _};
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use crate::AppState;
use crate::routes::{builds, compat, image, live, ops, recipes, tokens};

/// The document's fixed parts; the paths come from [`router`].
#[derive(utoipa::OpenApi)]
#[openapi(
    info(
        title = "Kiln",
        description = "A build farm that makes custom binaries on demand, builds each one once, signs it and \
            serves it to everyone who asks for the same thing again.\n\n\
            Errors are JSON in the Caddy download API's shape with a machine-readable code: \
            `{\"status_code\": 400, \"error\": {\"code\": \"…\", \"message\": \"…\", \"id\": \"<request id>\"}}` \
            (schema `Error`). Every answer carries an `x-request-id` header (a client's own id is kept).\n\n\
            The OCI registry pull API under `/v2/` speaks the OCI distribution protocol and is not described here.",
        license(name = "Apache-2.0", identifier = "Apache-2.0"),
    ),
    tags(
        (name = "builds", description = "Submit a build, read its state, follow its log and events; cancel and retry (admin)."),
        (name = "downloads", description = "The stored files of a succeeded build: immutable, with `ETag`, `Range` and `HEAD`."),
        (name = "compat", description = "The Caddy download API's query shape: one request that waits and downloads."),
        (name = "recipes", description = "What a client asks before it builds: recipes, their versions, and a request resolved to its key."),
        (name = "tokens", description = "A private farm's API tokens (admin): make, list and revoke them, as `kiln-janitor token` does."),
        (name = "operations", description = "The signing key, health, readiness, metrics, the download page and this document."),
    )
)]
struct ApiDoc;

/// The build key in a path.
#[derive(IntoParams)]
#[into_params(parameter_in = Path)]
pub struct KeyParam {
    /// The build key: the SHA-256 of the resolved request, 64 lowercase hex characters.
    #[param(pattern = "^[0-9a-f]{64}$")]
    #[allow(dead_code)]
    key: String,
}

/// The conditional and range headers every stored object honours.
#[derive(IntoParams)]
#[into_params(parameter_in = Header)]
#[allow(dead_code)]
pub struct ObjectHeaders {
    /// One byte range, `bytes=start-end` (several ranges get the whole object).
    #[param(rename = "Range", nullable = false)]
    range: Option<String>,
    /// An `ETag` the client has; a match answers `304`.
    #[param(rename = "If-None-Match", nullable = false)]
    if_none_match: Option<String>,
    /// Send the `Range` only if the object still has this `ETag`.
    #[param(rename = "If-Range", nullable = false)]
    if_range: Option<String>,
}

/// The compat API's query, as `/api/compat` and `/api/resolve` take it.
#[derive(IntoParams)]
#[into_params(parameter_in = Query)]
#[allow(dead_code)]
pub struct CompatParams {
    /// Target operating system (or give `platform`).
    #[param(nullable = false, example = "linux")]
    os: Option<String>,
    /// Target architecture.
    #[param(nullable = false, example = "amd64")]
    arch: Option<String>,
    /// The ARM version when `arch` is `arm`.
    #[param(nullable = false)]
    arm: Option<String>,
    /// `os/arch[/arm]`, used when `os` is absent (the download page's form).
    #[param(nullable = false)]
    platform: Option<String>,
    /// The product's version; latest when missing.
    #[param(nullable = false)]
    version: Option<String>,
    /// A plugin, `module[@version]`; repeat for more.
    #[param(nullable = false, explode)]
    p: Option<Vec<String>>,
    /// A replacement, `module=target[@version]`, where the recipe allows them; repeat for more.
    #[param(nullable = false, explode)]
    r: Option<Vec<String>>,
    /// The recipe; `caddy` when missing, if the farm has one (else `400 missing_field`).
    #[param(nullable = false)]
    recipe: Option<String>,
}

/// Every documented route of the API, and nothing else.
pub fn router() -> OpenApiRouter<AppState> {
    OpenApiRouter::with_openapi(ApiDoc::openapi())
        .routes(routes!(builds::create))
        .routes(routes!(builds::get, builds::cancel))
        .routes(routes!(builds::retry))
        .routes(routes!(live::log))
        .routes(routes!(live::events))
        .routes(routes!(builds::artifact))
        .routes(routes!(builds::signature))
        .routes(routes!(builds::binary))
        .routes(routes!(builds::manifest))
        .routes(routes!(builds::image_signature))
        .routes(routes!(image::image_tar))
        .routes(routes!(compat::compat))
        .routes(routes!(ops::recipes))
        .routes(routes!(recipes::recipe))
        .routes(routes!(recipes::versions))
        .routes(routes!(recipes::resolve))
        .routes(routes!(tokens::list, tokens::create))
        .routes(routes!(tokens::revoke))
        .routes(routes!(ops::signing_key))
        .routes(routes!(openapi_json))
        .routes(routes!(ops::healthz))
        .routes(routes!(ops::readyz))
        .routes(routes!(ops::metrics))
        .routes(routes!(ops::index))
}

/// The finished document.
pub fn document() -> &'static OpenApi {
    static DOC: OnceLock<OpenApi> = OnceLock::new();
    DOC.get_or_init(|| finish(router().into_openapi()))
}

/// The document as pretty JSON with a final newline, as `docs/openapi.json` holds it.
pub fn document_json() -> &'static str {
    static JSON: OnceLock<String> = OnceLock::new();
    JSON.get_or_init(|| {
        let mut s = serde_json::to_string_pretty(document()).expect("the document serializes");
        s.push('\n');
        s
    })
}

/// This API's description as OpenAPI 3.1.
#[utoipa::path(
    get,
    path = "/api/openapi.json",
    operation_id = "openapi",
    tag = "operations",
    responses((status = 200, description = "This document.", content(("application/json"))))
)]
pub async fn openapi_json() -> Response {
    ([(header::CONTENT_TYPE, "application/json"), (header::CACHE_CONTROL, "no-cache")], document_json()).into_response()
}

/// The parts no annotation can say once for all operations.
fn finish(mut doc: OpenApi) -> OpenApi {
    let components = doc.components.get_or_insert_with(Default::default);
    components.add_security_scheme(
        "admin_token",
        SecurityScheme::Http(
            HttpBuilder::new()
                .scheme(HttpAuthScheme::Bearer)
                .description(Some("`api.admin_token` from the farm's configuration: the bootstrap admin, every scope"))
                .build(),
        ),
    );
    components.add_security_scheme(
        "token",
        SecurityScheme::Http(
            HttpBuilder::new()
                .scheme(HttpAuthScheme::Bearer)
                .description(Some(
                    "An API token from `kiln-janitor token create` (`kiln_` and 64 hex digits), also accepted as \
                     the password of HTTP Basic auth. The requirement's list names the scope it needs: \
                     `download`, `submit` or `admin`. In an open farm (`api.auth.mode: open`) only `admin` \
                     needs one.",
                ))
                .build(),
        ),
    );
    // The operations that take a build key, to link to from every build.
    let mut on_a_build: Vec<String> = Vec::new();
    for (path, item) in doc.paths.paths.iter_mut() {
        // `method(get, head)` gives both methods one operation id; HEAD's gets its own.
        if let Some(head) = item.head.as_mut() {
            let id = head.operation_id.take().unwrap_or_default();
            head.operation_id = Some(match id.strip_prefix("get") {
                Some(rest) => format!("head{rest}"),
                None => format!("{id}Head"),
            });
        }
        if path.contains("{key}") {
            on_a_build.extend(operations(item).filter_map(|(_, op)| op.operation_id.clone()));
        }
    }
    for (path, item) in doc.paths.paths.iter_mut() {
        for (method, op) in operations_mut(item) {
            guarded(path, &method, op);
        }
    }
    for item in doc.paths.paths.values_mut() {
        for (_, op) in operations_mut(item) {
            for (status, resp) in op.responses.responses.iter_mut() {
                let RefOr::T(resp) = resp else { continue };
                let carries = |schema: &str| {
                    let wanted = format!("#/components/schemas/{schema}");
                    resp.content.values().any(|c| {
                        matches!(c, RefOr::T(c) if matches!(&c.schema, Some(RefOr::Ref(r)) if r.ref_location == wanted))
                    })
                };
                let links: Vec<(String, &str)> = if carries("Build") {
                    on_a_build.iter().map(|id| (id.clone(), "$response.body#/key")).collect()
                } else if carries("Error") && status == "504" {
                    vec![("getBuild".to_owned(), "$response.body#/error/key")]
                } else {
                    continue;
                };
                for (id, key) in links {
                    let link = LinkBuilder::new()
                        .operation_id(&id)
                        .parameter("key", key)
                        .description(format!("`{id}` on the build this answer names"))
                        .build();
                    resp.links.insert(id, RefOr::T(link));
                }
            }
        }
    }
    doc
}

/// The security and the refusals of the request guard on one operation:
/// which token it needs ([`crate::auth::required_scope`]), and the `401`,
/// `403` and `429` any operation may answer.
fn guarded(path: &str, method: &HttpMethod, op: &mut Operation) {
    let method = match method {
        HttpMethod::Get => axum::http::Method::GET,
        HttpMethod::Head => axum::http::Method::HEAD,
        HttpMethod::Post => axum::http::Method::POST,
        HttpMethod::Delete => axum::http::Method::DELETE,
        _ => return,
    };
    let scope = crate::auth::required_scope(&method, path);
    if let Some(scope) = scope {
        let mut any = vec![
            SecurityRequirement::new("token", [scope.as_str()]),
            SecurityRequirement::new("admin_token", Vec::<String>::new()),
        ];
        if scope != kiln_domain::Scope::Admin {
            // Open farms need no token for this.
            any.insert(0, SecurityRequirement::default());
        }
        op.security = Some(any);
    }
    let error = || ContentBuilder::new().schema(Some(Ref::from_schema_name("Error"))).build();
    let responses = &mut op.responses.responses;
    responses.entry("401".into()).or_insert_with(|| {
        ResponseBuilder::new()
            .description(
                "No token where the farm needs one (`unauthorized`), or an unknown or revoked token \
                 (`invalid_token`).",
            )
            .content("application/json", error())
            .header("WWW-Authenticate", HeaderBuilder::new().description(Some("`Bearer`")).build())
            .into()
    });
    if scope.is_some() {
        responses.entry("403".into()).or_insert_with(|| {
            ResponseBuilder::new()
                .description("The token lacks the scope (`insufficient_scope`).")
                .content("application/json", error())
                .into()
        });
    }
    responses.entry("429".into()).or_insert_with(|| {
        ResponseBuilder::new()
            .description("Too many requests from this token or address (`rate_limited`); for a build, the token's build quota is full (`build_quota`).")
            .content("application/json", error())
            .header("Retry-After", HeaderBuilder::new().description(Some("Seconds to wait")).build())
            .into()
    });
}

fn operations(item: &utoipa::openapi::PathItem) -> impl Iterator<Item = (HttpMethod, &Operation)> {
    [
        (HttpMethod::Get, &item.get),
        (HttpMethod::Head, &item.head),
        (HttpMethod::Post, &item.post),
        (HttpMethod::Delete, &item.delete),
    ]
    .into_iter()
    .filter_map(|(m, op)| op.as_ref().map(|op| (m, op)))
}

fn operations_mut(item: &mut utoipa::openapi::PathItem) -> impl Iterator<Item = (HttpMethod, &mut Operation)> {
    [
        (HttpMethod::Get, &mut item.get),
        (HttpMethod::Head, &mut item.head),
        (HttpMethod::Post, &mut item.post),
        (HttpMethod::Delete, &mut item.delete),
    ]
    .into_iter()
    .filter_map(|(m, op)| op.as_mut().map(|op| (m, op)))
}

#[cfg(test)]
mod reference;

#[cfg(test)]
mod tests {
    use super::*;

    const DOCS: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../../docs");
    const REGENERATE: &str = "KILN_UPDATE_DOCS=1 cargo test -p kiln-api --lib openapi";

    /// Compare `docs/<name>` with `fresh`; with `KILN_UPDATE_DOCS` set, write it first.
    fn checked_in(name: &str, fresh: &str) {
        let path = format!("{DOCS}/{name}");
        if std::env::var_os("KILN_UPDATE_DOCS").is_some() {
            std::fs::write(&path, fresh).unwrap_or_else(|e| panic!("write {path}: {e}"));
        }
        let stored = std::fs::read_to_string(&path).unwrap_or_default();
        assert!(
            stored == fresh,
            "docs/{name} differs from what the code produces; regenerate it with\n    {REGENERATE}\nand commit the result"
        );
    }

    #[test]
    fn docs_openapi_json_is_what_the_code_produces() {
        checked_in("openapi.json", document_json());
    }

    #[test]
    fn docs_api_reference_is_the_document_rendered() {
        let doc = serde_json::to_value(document()).unwrap();
        checked_in("api-reference.md", &reference::render(&doc, REGENERATE));
    }

    /// Routes outside [`router`] would be undocumented: only the OCI
    /// registry under `/v2/`, which speaks its own protocol, may be added so.
    #[test]
    fn no_route_is_registered_around_the_document() {
        let src = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
        let mut offending = Vec::new();
        let mut stack = vec![src];
        while let Some(dir) = stack.pop() {
            for entry in std::fs::read_dir(&dir).unwrap() {
                let path = entry.unwrap().path();
                if path.is_dir() {
                    stack.push(path);
                    continue;
                }
                if path.extension().is_none_or(|e| e != "rs") {
                    continue;
                }
                let text = std::fs::read_to_string(&path).unwrap();
                // Test modules may build routers of their own.
                let text = text.split("#[cfg(test)]").next().unwrap_or_default();
                // Spelled in pieces, so that this test does not find itself.
                for name in ["route", "route_service", "nest", "nest_service"] {
                    let call = format!(".{name}(");
                    for (at, _) in text.match_indices(&call) {
                        let rest = text[at + call.len()..].trim_start();
                        if !rest.starts_with("\"/v2") {
                            let line = text[..at].lines().count();
                            offending.push(format!("{}:{line}: {call}", path.display()));
                        }
                    }
                }
            }
        }
        assert!(
            offending.is_empty(),
            "register API routes in openapi::router() with routes!() and a #[utoipa::path] on the handler, \
             so that they are documented (only the OCI registry under /v2/ is outside the document):\n{}",
            offending.join("\n")
        );
    }
}
