//! API tokens: made, listed and revoked by `kiln-janitor token` and by
//! the API's `/api/tokens` (admin), and the API's lookup of a presented
//! token by the SHA-256 of its secret.
//!
//! A new token's secret is 32 bytes from the operating system's generator,
//! handed to the caller once ([`Queue::issue_token`]) and stored only as its
//! SHA-256 (see `migrations/V3__api_tokens.sql` for why a fast hash is
//! right for it).
//!
//! Revoking (or deleting) a token fires `kiln_tokens` with its id (a
//! trigger, see `migrations/V3__api_tokens.sql`), so every API drops it from
//! its cache at once ([`Notification::TokenRevoked`](crate::Notification)).

use chrono::{DateTime, Utc};
use kiln_domain::{Scope, Scopes, TokenSecret};
use sqlx::FromRow;

use super::Queue;
use crate::QueueError;

/// A token as stored (never its secret).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Token {
    pub id: i64,
    pub name: String,
    pub scopes: Scopes,
    pub created_at: DateTime<Utc>,
    pub revoked_at: Option<DateTime<Utc>>,
    pub last_used: Option<DateTime<Utc>>,
}

const TOKEN_COLUMNS: &str = "id, name, scopes, created_at, revoked_at, last_used";

#[derive(FromRow)]
struct TokenRecord {
    id: i64,
    name: String,
    scopes: Vec<String>,
    created_at: DateTime<Utc>,
    revoked_at: Option<DateTime<Utc>>,
    last_used: Option<DateTime<Utc>>,
}

impl TryFrom<TokenRecord> for Token {
    type Error = QueueError;

    fn try_from(r: TokenRecord) -> Result<Self, QueueError> {
        let scopes = r
            .scopes
            .iter()
            .map(|s| s.parse::<Scope>())
            .collect::<Result<Scopes, _>>()
            .map_err(|e| QueueError::Corrupt { row: format!("api_tokens/{}", r.id), message: e.message })?;
        Ok(Token {
            id: r.id,
            name: r.name,
            scopes,
            created_at: r.created_at,
            revoked_at: r.revoked_at,
            last_used: r.last_used,
        })
    }
}

impl Queue {
    /// Make a token named `name` (checked by the caller) with `scopes`: its
    /// secret, which exists nowhere else from now on, and the token as stored.
    pub async fn issue_token(&self, name: &str, scopes: &Scopes) -> Result<(Token, TokenSecret), QueueError> {
        let mut bytes = [0u8; 32];
        getrandom::fill(&mut bytes).map_err(|e| QueueError::NoRandomness(e.to_string()))?;
        let secret = TokenSecret::from_random(bytes);
        let token = self.create_token(name, scopes, &secret.hash()).await?;
        Ok((token, secret))
    }

    /// Store a new token by the SHA-256 of its secret.
    pub async fn create_token(&self, name: &str, scopes: &Scopes, secret_hash: &[u8; 32]) -> Result<Token, QueueError> {
        let sql =
            format!("INSERT INTO api_tokens (name, scopes, secret_hash) VALUES ($1, $2, $3) RETURNING {TOKEN_COLUMNS}");
        let r: TokenRecord = sqlx::query_as(&sql)
            .bind(name)
            .bind(scopes.names())
            .bind(secret_hash.as_slice())
            .fetch_one(&self.pool)
            .await?;
        r.try_into()
    }

    /// Every token, revoked ones included, oldest first.
    pub async fn tokens(&self) -> Result<Vec<Token>, QueueError> {
        let sql = format!("SELECT {TOKEN_COLUMNS} FROM api_tokens ORDER BY id");
        let rows: Vec<TokenRecord> = sqlx::query_as(&sql).fetch_all(&self.pool).await?;
        rows.into_iter().map(Token::try_from).collect()
    }

    /// Revoke token `id`; the token as it now is, `None` when there is none.
    /// Revoking twice keeps the first time.
    pub async fn revoke_token(&self, id: i64) -> Result<Option<Token>, QueueError> {
        let sql = format!(
            "UPDATE api_tokens SET revoked_at = coalesce(revoked_at, now()) WHERE id = $1 RETURNING {TOKEN_COLUMNS}"
        );
        let r: Option<TokenRecord> = sqlx::query_as(&sql).bind(id).fetch_optional(&self.pool).await?;
        r.map(Token::try_from).transpose()
    }

    /// The unrevoked token whose secret hashes to `secret_hash`.
    pub async fn active_token(&self, secret_hash: &[u8; 32]) -> Result<Option<Token>, QueueError> {
        let sql = format!("SELECT {TOKEN_COLUMNS} FROM api_tokens WHERE secret_hash = $1 AND revoked_at IS NULL");
        let r: Option<TokenRecord> =
            sqlx::query_as(&sql).bind(secret_hash.as_slice()).fetch_optional(&self.pool).await?;
        r.map(Token::try_from).transpose()
    }

    /// Record that token `id` was used now.
    pub async fn touch_token(&self, id: i64) -> Result<(), QueueError> {
        sqlx::query("UPDATE api_tokens SET last_used = now() WHERE id = $1").bind(id).execute(&self.pool).await?;
        Ok(())
    }

    /// How many builds token `id` has queued or running.
    pub async fn active_builds_of(&self, id: i64) -> Result<i64, QueueError> {
        Ok(sqlx::query_scalar("SELECT count(*) FROM builds WHERE token_id = $1 AND state IN ('queued', 'running')")
            .bind(id)
            .fetch_one(&self.pool)
            .await?)
    }
}
