//! `/api/tokens`: a private farm's API tokens over HTTP, for an admin (a
//! token with the `admin` scope, or the configuration's admin token). The
//! same tokens `kiln-janitor token create|list|revoke` manages: a new
//! secret is in the answer that made it and nowhere else, and a revocation
//! reaches every API at once through the queue's notification. The `401`,
//! `403` and `429` of the request guard are documented for every operation
//! by the API document itself.

use axum::Json;
use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::extract::{FromRequestParts, State};
use axum::http::request::Parts;
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use chrono::{DateTime, Utc};
use kiln_domain::Scopes;
use kiln_domain::token::check_token_name;
use kiln_queue::Token;
use serde::{Deserialize, Serialize};
use utoipa::{IntoParams, ToSchema};

use crate::AppState;
use crate::auth::Caller;
use crate::error::{ApiError, ApiResult, ErrorBody};
use crate::routes::builds::json_body;

/// A scope: what a token may do. Each stands alone: `admin` does not imply
/// the others.
#[derive(Serialize, ToSchema)]
#[serde(rename_all = "lowercase")]
#[allow(dead_code)] // the scopes' names for the API document, never built
pub enum ScopeName {
    /// Read builds and download what they made (compat hits, pulls).
    Download,
    /// Anything that may start a build.
    Submit,
    /// Cancel and retry builds; make, list and revoke tokens.
    Admin,
}

/// A token as the API shows it: never its secret.
#[derive(Debug, Serialize, ToSchema)]
#[schema(as = Token)]
pub struct TokenView {
    /// The token's id (what revoking takes).
    pub id: i64,
    /// Who or what holds it.
    pub name: String,
    /// What it may do.
    #[schema(value_type = Vec<ScopeName>)]
    pub scopes: Vec<&'static str>,
    pub created_at: DateTime<Utc>,
    /// When it was revoked; it is refused from then on.
    pub revoked_at: Option<DateTime<Utc>>,
    /// When an API last accepted it (recorded at most once a minute per API).
    pub last_used: Option<DateTime<Utc>>,
}

impl From<&Token> for TokenView {
    fn from(t: &Token) -> Self {
        TokenView {
            id: t.id,
            name: t.name.clone(),
            scopes: t.scopes.names(),
            created_at: t.created_at,
            revoked_at: t.revoked_at,
            last_used: t.last_used,
        }
    }
}

/// A token to make.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct NewToken {
    /// Who or what will hold it ("ci", "alice"): 1 to 100 printable characters.
    #[schema(min_length = 1, max_length = 100, example = "ci")]
    pub name: String,
    /// At least one scope.
    #[schema(value_type = Vec<ScopeName>, min_items = 1, example = json!(["download", "submit"]))]
    pub scopes: Vec<String>,
}

/// A token just made, with its secret: shown in this answer only.
#[derive(Debug, Serialize, ToSchema)]
#[schema(as = CreatedToken)]
pub struct CreatedView {
    pub token: TokenView,
    /// The secret (`kiln_` and 64 hex digits), for `Authorization: Bearer`
    /// or as the password of HTTP Basic auth. Kiln keeps only its SHA-256.
    #[schema(pattern = "^kiln_[0-9a-f]{64}$")]
    pub secret: String,
}

/// A token id from the URL path.
#[derive(IntoParams)]
#[into_params(parameter_in = Path)]
#[allow(dead_code)]
pub struct IdParam {
    /// The token's id, as `GET /api/tokens` lists it.
    #[param(minimum = 1)]
    id: i64,
}

/// A token id from the URL path, checked before any lookup.
pub struct TokenId(i64);

impl<S: Send + Sync> FromRequestParts<S> for TokenId {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, ApiError> {
        let bad =
            || ApiError::bad_request("id", "invalid_token_id", "a token id is a positive number; see GET /api/tokens");
        let axum::extract::Path(raw) =
            axum::extract::Path::<String>::from_request_parts(parts, state).await.map_err(|_| bad())?;
        match raw.parse::<i64>() {
            Ok(id) if id > 0 && raw.bytes().all(|b| b.is_ascii_digit()) => Ok(TokenId(id)),
            _ => Err(bad()),
        }
    }
}

fn no_store(status: StatusCode, body: impl Serialize) -> Response {
    let mut resp = (status, Json(body)).into_response();
    resp.headers_mut().insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    resp
}

/// List the tokens (admin).
///
/// Every token, revoked ones included, oldest first; never a secret.
#[utoipa::path(
    get,
    path = "/api/tokens",
    operation_id = "listTokens",
    tag = "tokens",
    responses(
        (status = 200, description = "The tokens.", body = Vec<TokenView>),
        (status = 503, description = "The database is unreachable.", body = ErrorBody),
    )
)]
pub async fn list(State(state): State<AppState>) -> ApiResult<Response> {
    let tokens = state.queue().tokens().await?;
    Ok(no_store(StatusCode::OK, tokens.iter().map(TokenView::from).collect::<Vec<_>>()))
}

/// Make a token (admin).
///
/// The answer holds the secret, the only time it is shown; store it then.
#[utoipa::path(
    post,
    path = "/api/tokens",
    operation_id = "createToken",
    tag = "tokens",
    request_body(content = NewToken, content_type = "application/json"),
    responses(
        (status = 201, description = "Made; the secret is in this answer only.", body = CreatedView),
        (status = 400, description = "A malformed body (`invalid_body`), a name that is empty, too long or has control \
            characters (`invalid_name`), or no or an unknown scope (`invalid_scope`).", body = ErrorBody),
        (status = 413, description = "The body is larger than `api.max_body_bytes`.", body = ErrorBody),
        (status = 503, description = "The database is unreachable.", body = ErrorBody),
    )
)]
pub async fn create(
    State(state): State<AppState>,
    caller: Caller,
    body: Result<Bytes, BytesRejection>,
) -> ApiResult<Response> {
    let new: NewToken = json_body(&state, body)?;
    check_token_name(&new.name)?;
    let scopes = Scopes::from_names(new.scopes.iter().map(String::as_str))?;
    let (token, secret) = state.queue().issue_token(&new.name, &scopes).await?;
    tracing::info!(id = token.id, name = %token.name, scopes = %token.scopes, by = caller.kind(), "token created");
    Ok(no_store(
        StatusCode::CREATED,
        CreatedView { token: TokenView::from(&token), secret: secret.expose().to_owned() },
    ))
}

/// Revoke a token (admin).
///
/// Every API refuses it from now on. Revoking twice keeps the first time.
#[utoipa::path(
    delete,
    path = "/api/tokens/{id}",
    operation_id = "revokeToken",
    tag = "tokens",
    params(IdParam),
    responses(
        (status = 200, description = "Revoked; the token as it now is.", body = TokenView),
        (status = 400, description = "The id is not a positive number (`invalid_token_id`).", body = ErrorBody),
        (status = 404, description = "No token has this id (`unknown_token`).", body = ErrorBody),
        (status = 503, description = "The database is unreachable.", body = ErrorBody),
    )
)]
pub async fn revoke(State(state): State<AppState>, caller: Caller, TokenId(id): TokenId) -> ApiResult<Response> {
    let token =
        state.queue().revoke_token(id).await?.ok_or_else(|| {
            ApiError::not_found("unknown_token", format!("there is no token {id}; see GET /api/tokens"))
        })?;
    tracing::info!(id = token.id, name = %token.name, by = caller.kind(), "token revoked");
    Ok(no_store(StatusCode::OK, TokenView::from(&token)))
}
