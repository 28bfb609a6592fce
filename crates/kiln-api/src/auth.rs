//! Who is asking, and may they: credentials, callers, scopes.
//!
//! A request may carry a credential as `Authorization: Bearer <token>` or
//! as the password of HTTP Basic auth (`docker login` sends it so; the user
//! name is ignored). The credential is either the configuration's
//! `api.admin_token` (the bootstrap admin: every scope, no rate limit) or an
//! API token made by `kiln-janitor token create`, found by the SHA-256 of
//! its secret. A request without a credential is anonymous; one whose
//! credential is unknown or revoked is refused `401 invalid_token` on every
//! route, so a client learns at once that its token is bad.
//!
//! Known tokens are cached by hash in this process. A revocation is
//! notified by Postgres (`kiln_tokens`) and drops the token from every
//! API's cache at once; after a reconnection of the listener (when a
//! notification may have been missed) the whole cache is dropped. A lookup
//! that raced with a revocation does not re-insert the token (a
//! generation counter).
//!
//! Which scope a route needs is one table, [`required_scope`], applied by
//! the request guard (`guard.rs`) before any handler runs; the API document
//! states it per operation. In `open` mode anonymous callers may do
//! everything but admin; in `tokens` mode every route in the table needs a
//! token with its scope. A compat request also needs `submit` when it is a
//! miss (the handler checks that, [`Caller::require`]).
//!
//! Refusals are [`Rejection`]s, rendered in the API's error shape or, on the
//! OCI registry's routes (`/v2/`), in the registry's
//! (`{"errors":[{"code":"UNAUTHORIZED",…}]}` with `WWW-Authenticate: Basic`).
//! Credentials never reach a log line; a request's span names the token's id.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use axum::extract::FromRequestParts;
use axum::http::request::Parts;
use axum::http::{HeaderMap, HeaderName, HeaderValue, Method, StatusCode, header};
use axum::response::{IntoResponse, Response};
use base64::Engine as _;
use kiln_config::{AuthMode, Config};
use kiln_domain::{Scope, Scopes, TokenSecret};
use kiln_queue::{Queue, Submitter, Token};
use subtle::ConstantTimeEq;

use crate::error::ApiError;

/// How often a token's `last_used` is written, at most, by one API.
const TOUCH_EVERY: Duration = Duration::from_secs(60);
/// The most tokens cached; past it the cache starts afresh.
const CACHE_MAX: usize = 10_000;

/// Who is asking.
#[derive(Debug, Clone, Default)]
pub enum Caller {
    /// No credential.
    #[default]
    Anonymous,
    /// The configuration's `api.admin_token`.
    Admin,
    /// A token made by `kiln-janitor token create`.
    Token(Arc<TokenInfo>),
}

/// What the API keeps of a token (never its secret).
#[derive(Debug)]
pub struct TokenInfo {
    pub id: i64,
    pub name: String,
    pub scopes: Scopes,
}

impl Caller {
    /// May this caller do what `scope` allows, under `mode`?
    pub fn check(&self, mode: AuthMode, scope: Scope) -> Result<(), Rejection> {
        match self {
            Caller::Admin => Ok(()),
            Caller::Token(t) if t.scopes.contains(scope) => Ok(()),
            // In an open farm a token adds to what anyone may do.
            _ if mode == AuthMode::Open && scope != Scope::Admin => Ok(()),
            Caller::Token(t) => Err(Rejection::insufficient_scope(&t.name, scope)),
            Caller::Anonymous => Err(Rejection::unauthorized(scope)),
        }
    }

    /// [`Caller::check`] under the farm's configuration, as an API error.
    pub fn require(&self, config: &Config, scope: Scope) -> Result<(), ApiError> {
        self.check(config.api.auth.mode, scope).map_err(ApiError::from)
    }

    /// Whose quota a build asked for by this caller counts against.
    pub fn submitter(&self, config: &Config) -> Option<Submitter> {
        match self {
            Caller::Token(t) => Some(Submitter { token_id: t.id, max_active: config.api.limits.builds_per_token }),
            _ => None,
        }
    }

    /// For logs and metrics: `anonymous`, `admin` or `token`.
    pub fn kind(&self) -> &'static str {
        match self {
            Caller::Anonymous => "anonymous",
            Caller::Admin => "admin",
            Caller::Token(_) => "token",
        }
    }
}

impl<S: Send + Sync> FromRequestParts<S> for Caller {
    type Rejection = std::convert::Infallible;

    async fn from_request_parts(parts: &mut Parts, _state: &S) -> Result<Self, Self::Rejection> {
        Ok(parts.extensions.get::<Caller>().cloned().unwrap_or_default())
    }
}

/// The scope a route needs (`None`: open to anyone, in every mode). `path`
/// is the route's template as registered (`/api/builds/{key}`). The OCI
/// registry (`/v2/…`) needs `download` everywhere, its ping included, so
/// that `docker login` is asked for credentials.
pub fn required_scope(method: &Method, path: &str) -> Option<Scope> {
    match path {
        "/api/builds" if method == Method::POST => Some(Scope::Submit),
        "/api/builds/{key}" if method == Method::DELETE => Some(Scope::Admin),
        "/api/builds/{key}/retry" | "/api/tokens" | "/api/tokens/{id}" => Some(Scope::Admin),
        p if p == "/api/builds/{key}" || p.starts_with("/api/builds/{key}/") => Some(Scope::Download),
        // A miss also needs `submit` (checked by the handler).
        "/api/compat" => Some(Scope::Download),
        // These ask the Go module proxy on the caller's behalf.
        "/api/recipes/{name}/versions" | "/api/resolve" => Some(Scope::Download),
        p if p == "/v2" || p.starts_with("/v2/") => Some(Scope::Download),
        _ => None,
    }
}

/// What a credential was presented as.
enum Presented<'a> {
    None,
    /// Bearer, or the password of Basic.
    Secret(std::borrow::Cow<'a, str>),
}

fn presented(headers: &HeaderMap) -> Presented<'_> {
    let Some(value) = headers.get(header::AUTHORIZATION).and_then(|v| v.to_str().ok()) else {
        return Presented::None;
    };
    let (scheme, rest) = value.trim().split_once(' ').unwrap_or((value.trim(), ""));
    let rest = rest.trim();
    if scheme.eq_ignore_ascii_case("bearer") {
        Presented::Secret(rest.into())
    } else if scheme.eq_ignore_ascii_case("basic") {
        let password = base64::engine::general_purpose::STANDARD
            .decode(rest)
            .ok()
            .and_then(|raw| String::from_utf8(raw).ok())
            .and_then(|pair| pair.split_once(':').map(|(_, p)| p.to_owned()))
            .unwrap_or_default();
        Presented::Secret(password.into())
    } else {
        Presented::None
    }
}

/// The token cache and the farm's bootstrap admin token.
pub struct Auth {
    admin_token: Option<kiln_config::Secret>,
    cache: Mutex<HashMap<[u8; 32], Cached>>,
    /// Bumped by every revocation and resync: a lookup that started before
    /// does not fill the cache.
    generation: AtomicU64,
}

struct Cached {
    token: Arc<TokenInfo>,
    touched: Instant,
}

impl std::fmt::Debug for Auth {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Auth").finish_non_exhaustive()
    }
}

/// What a credential turned out to be.
pub enum Identified {
    Caller(Caller),
    /// A token's shape, not in the cache: look it up (after the caller's
    /// address has paid for the lookup).
    Lookup {
        hash: [u8; 32],
        generation: u64,
    },
}

impl Auth {
    pub fn new(config: &Config) -> Auth {
        Auth {
            admin_token: config.api.admin_token.clone().filter(|t| !t.expose().is_empty()),
            cache: Mutex::new(HashMap::new()),
            generation: AtomicU64::new(0),
        }
    }

    /// Who the headers say is asking, from memory alone (a known token's
    /// `last_used` is written now and then, in the background).
    pub fn identify(&self, headers: &HeaderMap, queue: &Queue) -> Result<Identified, Rejection> {
        let secret = match presented(headers) {
            Presented::None => return Ok(Identified::Caller(Caller::Anonymous)),
            Presented::Secret(s) => s,
        };
        if let Some(admin) = &self.admin_token
            && bool::from(secret.as_bytes().ct_eq(admin.expose().as_bytes()))
        {
            return Ok(Identified::Caller(Caller::Admin));
        }
        let token = TokenSecret::parse(&secret).ok_or_else(Rejection::invalid_token)?;
        let hash = token.hash();
        let generation = self.generation.load(Ordering::SeqCst);
        let mut cache = self.cache.lock().expect("token cache");
        match cache.get_mut(&hash) {
            Some(c) => {
                if c.touched.elapsed() >= TOUCH_EVERY {
                    c.touched = Instant::now();
                    touch(queue, c.token.id);
                }
                Ok(Identified::Caller(Caller::Token(c.token.clone())))
            }
            None => Ok(Identified::Lookup { hash, generation }),
        }
    }

    /// Look a token up in the database and remember it; `invalid_token`
    /// when it is unknown or revoked.
    pub async fn lookup(&self, queue: &Queue, hash: [u8; 32], generation: u64) -> Result<Caller, Rejection> {
        let token = queue.active_token(&hash).await.map_err(|e| Rejection::from_api(ApiError::from(e)))?;
        let Some(token) = token else { return Err(Rejection::invalid_token()) };
        let info = Arc::new(info(token));
        let mut cache = self.cache.lock().expect("token cache");
        if self.generation.load(Ordering::SeqCst) == generation {
            if cache.len() >= CACHE_MAX {
                cache.clear();
            }
            cache.insert(hash, Cached { token: info.clone(), touched: Instant::now() });
        }
        drop(cache);
        touch(queue, info.id);
        Ok(Caller::Token(info))
    }

    /// Token `id` was revoked: forget it.
    pub fn revoked(&self, id: i64) {
        self.generation.fetch_add(1, Ordering::SeqCst);
        self.cache.lock().expect("token cache").retain(|_, c| c.token.id != id);
        tracing::info!(token = id, "token revoked; no longer accepted");
    }

    /// Notifications may have been missed: forget every token.
    pub fn resync(&self) {
        self.generation.fetch_add(1, Ordering::SeqCst);
        self.cache.lock().expect("token cache").clear();
    }
}

fn info(t: Token) -> TokenInfo {
    TokenInfo { id: t.id, name: t.name, scopes: t.scopes }
}

fn touch(queue: &Queue, id: i64) {
    let queue = queue.clone();
    tokio::spawn(async move {
        if let Err(e) = queue.touch_token(id).await {
            tracing::debug!(token = id, error = %e, "cannot record a token's use");
        }
    });
}

/// The two error shapes a refusal can take.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Shape {
    /// `{"status_code", "error": {"code", "message", "id"}}`.
    Api,
    /// The OCI distribution spec's `{"errors": [{"code", "message", "detail"}]}`.
    Registry,
}

impl Shape {
    /// The shape of errors on `path`.
    pub fn of(path: &str) -> Shape {
        if path == "/v2" || path.starts_with("/v2/") { Shape::Registry } else { Shape::Api }
    }
}

/// A refusal by the guard or a scope check, in either shape.
#[derive(Debug, Clone)]
pub struct Rejection {
    pub status: StatusCode,
    pub code: &'static str,
    pub message: String,
    /// Why, for `kiln_http_rejections_total{reason}`.
    pub reason: &'static str,
    pub retry_after: Option<u64>,
    /// Whether to ask for credentials, and with which error (RFC 6750).
    pub challenge: Option<Option<&'static str>>,
}

impl Rejection {
    pub fn unauthorized(scope: Scope) -> Rejection {
        Rejection {
            status: StatusCode::UNAUTHORIZED,
            code: "unauthorized",
            message: format!(
                "this farm is private: send a token with the {scope} scope as Authorization: Bearer <token> \
                 (or as the password of Basic auth)"
            ),
            reason: "unauthorized",
            retry_after: None,
            challenge: Some(None),
        }
    }

    pub fn invalid_token() -> Rejection {
        Rejection {
            status: StatusCode::UNAUTHORIZED,
            code: "invalid_token",
            message: "the token is unknown or revoked".into(),
            reason: "invalid_token",
            retry_after: None,
            challenge: Some(Some("invalid_token")),
        }
    }

    pub fn insufficient_scope(name: &str, scope: Scope) -> Rejection {
        Rejection {
            status: StatusCode::FORBIDDEN,
            code: "insufficient_scope",
            message: format!("token {name:?} lacks the {scope} scope"),
            reason: "insufficient_scope",
            retry_after: None,
            challenge: None,
        }
    }

    pub fn rate_limited(reason: &'static str, what: &str, retry_after: u64) -> Rejection {
        Rejection {
            status: StatusCode::TOO_MANY_REQUESTS,
            code: "rate_limited",
            message: format!("too many requests from this {what}; retry after {retry_after} s"),
            reason,
            retry_after: Some(retry_after),
            challenge: None,
        }
    }

    pub fn body_too_large(max: usize) -> Rejection {
        Rejection {
            status: StatusCode::PAYLOAD_TOO_LARGE,
            code: "body_too_large",
            message: format!("the body may have at most {max} bytes"),
            reason: "body_too_large",
            retry_after: None,
            challenge: None,
        }
    }

    fn from_api(e: ApiError) -> Rejection {
        Rejection {
            status: e.status,
            code: e.code,
            message: e.message,
            reason: "unavailable",
            retry_after: None,
            challenge: None,
        }
    }

    /// The answer, in `shape`.
    pub fn render(self, shape: Shape) -> Response {
        match shape {
            Shape::Api => ApiError::from(self).into_response(),
            Shape::Registry => self.registry(),
        }
    }

    fn registry(self) -> Response {
        let mut resp = crate::registry::error::RegistryError::from(ApiError::from(self)).into_response();
        resp.headers_mut().insert(
            HeaderName::from_static(crate::registry::API_VERSION_HEADER),
            HeaderValue::from_static("registry/2.0"),
        );
        resp
    }
}

impl From<Rejection> for ApiError {
    fn from(r: Rejection) -> ApiError {
        let mut e = ApiError::new(r.status, r.code, r.message);
        match r.challenge {
            Some(None) => e = e.with_header(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer")),
            Some(Some(error)) => {
                let v = HeaderValue::from_str(&format!("Bearer error=\"{error}\"")).expect("ASCII");
                e = e.with_header(header::WWW_AUTHENTICATE, v);
            }
            None => {}
        }
        if let Some(s) = r.retry_after {
            e = e.with_header(header::RETRY_AFTER, HeaderValue::from(s));
        }
        e
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(auth: &str) -> HeaderMap {
        let mut h = HeaderMap::new();
        h.insert(header::AUTHORIZATION, HeaderValue::from_str(auth).unwrap());
        h
    }

    fn secret(h: &HeaderMap) -> Option<String> {
        match presented(h) {
            Presented::None => None,
            Presented::Secret(s) => Some(s.into_owned()),
        }
    }

    #[test]
    fn credentials_come_as_bearer_or_as_the_basic_password() {
        assert_eq!(secret(&headers("Bearer abc")), Some("abc".into()));
        assert_eq!(secret(&headers("bearer  abc ")), Some("abc".into()));
        // "docker:abc:def" — the password may hold colons.
        let basic = base64::engine::general_purpose::STANDARD.encode("docker:abc:def");
        assert_eq!(secret(&headers(&format!("Basic {basic}"))), Some("abc:def".into()));
        assert_eq!(secret(&headers("Basic !!!")), Some(String::new()));
        assert_eq!(secret(&headers("Digest x")), None);
        assert_eq!(secret(&HeaderMap::new()), None);
    }

    #[test]
    fn scopes_by_route() {
        let s = |m: Method, p: &str| required_scope(&m, p);
        assert_eq!(s(Method::POST, "/api/builds"), Some(Scope::Submit));
        assert_eq!(s(Method::GET, "/api/builds/{key}"), Some(Scope::Download));
        assert_eq!(s(Method::DELETE, "/api/builds/{key}"), Some(Scope::Admin));
        assert_eq!(s(Method::POST, "/api/builds/{key}/retry"), Some(Scope::Admin));
        assert_eq!(s(Method::GET, "/api/builds/{key}/artifact"), Some(Scope::Download));
        assert_eq!(s(Method::GET, "/api/compat"), Some(Scope::Download));
        assert_eq!(s(Method::GET, "/v2/"), Some(Scope::Download));
        assert_eq!(s(Method::GET, "/v2/{*rest}"), Some(Scope::Download));
        for open in ["/", "/healthz", "/readyz", "/metrics", "/api/recipes", "/api/signing-key", "/api/openapi.json"] {
            assert_eq!(s(Method::GET, open), None, "{open}");
        }
    }

    #[test]
    fn open_farms_ask_tokens_only_for_admin() {
        let t = Caller::Token(Arc::new(TokenInfo {
            id: 1,
            name: "ci".into(),
            scopes: Scopes::parse_list("download").unwrap(),
        }));
        assert!(t.check(AuthMode::Open, Scope::Submit).is_ok());
        assert_eq!(t.check(AuthMode::Open, Scope::Admin).unwrap_err().code, "insufficient_scope");
        assert_eq!(t.check(AuthMode::Tokens, Scope::Submit).unwrap_err().code, "insufficient_scope");
        assert!(t.check(AuthMode::Tokens, Scope::Download).is_ok());
        assert!(Caller::Anonymous.check(AuthMode::Open, Scope::Submit).is_ok());
        assert_eq!(Caller::Anonymous.check(AuthMode::Tokens, Scope::Download).unwrap_err().code, "unauthorized");
        assert_eq!(Caller::Anonymous.check(AuthMode::Open, Scope::Admin).unwrap_err().code, "unauthorized");
        assert!(Caller::Admin.check(AuthMode::Tokens, Scope::Admin).is_ok());
    }
}
