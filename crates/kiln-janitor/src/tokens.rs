//! `kiln-janitor token create|list|revoke`: the API tokens of a private farm.
//!
//! A new token's secret is printed once on stdout and stored only as its
//! SHA-256 ([`Queue::issue_token`]). Revoking fires a notification, so every
//! API refuses the token at once. The API's `/api/tokens` does the same
//! over HTTP for an admin.

use kiln_config::Config;
use kiln_domain::token::check_token_name;
use kiln_domain::{Scopes, TokenSecret};
use kiln_queue::{Queue, QueueSettings, Token};

use crate::JanitorError;

/// `kiln-janitor token …`.
#[derive(Debug, Clone, clap::Subcommand)]
pub enum TokenCommand {
    /// Make a token; its secret is printed once (stdout) and never again.
    Create {
        /// Who or what holds it ("ci", "alice").
        #[arg(long)]
        name: String,
        /// Comma-separated: download, submit, admin.
        #[arg(long)]
        scopes: String,
    },
    /// List the tokens (never their secrets).
    List {
        /// Print JSON instead of a table.
        #[arg(long)]
        json: bool,
    },
    /// Revoke a token by id; every API refuses it from now on.
    Revoke {
        /// The token's id (see `token list`).
        #[arg(value_name = "ID")]
        token: i64,
    },
}

/// Run a token command against the (migrated) database; what it did goes
/// to stdout.
pub async fn execute(command: TokenCommand, config: &Config) -> Result<(), JanitorError> {
    let queue = Queue::connect(
        config.database.url.expose(),
        config.database.max_connections.min(2),
        QueueSettings::from(&config.queue),
        "kiln-janitor token",
    )
    .await?;
    match command {
        TokenCommand::Create { name, scopes } => {
            let (token, secret) = create(&queue, &name, &scopes).await?;
            tracing::info!(id = token.id, name = %token.name, scopes = %token.scopes, "token created");
            println!("token {} ({}) with scopes {}:", token.id, token.name, token.scopes);
            println!("{}", secret.expose());
            eprintln!("This secret is shown once; store it now. Use it as `Authorization: Bearer <token>`.");
        }
        TokenCommand::List { json } => {
            let tokens = queue.tokens().await?;
            if json {
                let rows: Vec<_> = tokens.iter().map(token_json).collect();
                println!("{}", serde_json::to_string_pretty(&rows).expect("JSON"));
            } else {
                println!(
                    "{:>6}  {:<24}  {:<23}  {:<20}  {:<20}  state",
                    "id", "name", "scopes", "created", "last used"
                );
                for t in &tokens {
                    println!("{}", table_row(t));
                }
            }
        }
        TokenCommand::Revoke { token: id } => {
            let token = queue.revoke_token(id).await?.ok_or(JanitorError::NoSuchToken(id))?;
            tracing::info!(id = token.id, name = %token.name, "token revoked");
            println!("token {} ({}) revoked", token.id, token.name);
        }
    }
    Ok(())
}

/// Make and store a token named `name` with `scopes` (`download,submit`).
pub async fn create(queue: &Queue, name: &str, scopes: &str) -> Result<(Token, TokenSecret), JanitorError> {
    check_token_name(name).map_err(|e| invalid(format!("--name: {}", e.message)))?;
    let scopes = Scopes::parse_list(scopes).map_err(|e| invalid(format!("--scopes: {}", e.message)))?;
    Ok(queue.issue_token(name, &scopes).await?)
}

fn invalid(message: String) -> JanitorError {
    JanitorError::Invalid(kiln_process::StartupError(message))
}

fn when(t: Option<chrono::DateTime<chrono::Utc>>) -> String {
    t.map(|t| t.format("%Y-%m-%d %H:%M:%S").to_string()).unwrap_or_else(|| "-".into())
}

fn table_row(t: &Token) -> String {
    let state = if t.revoked_at.is_some() { format!("revoked {}", when(t.revoked_at)) } else { "active".into() };
    format!(
        "{:>6}  {:<24}  {:<23}  {:<20}  {:<20}  {state}",
        t.id,
        t.name,
        t.scopes.to_string(),
        when(Some(t.created_at)),
        when(t.last_used)
    )
}

fn token_json(t: &Token) -> serde_json::Value {
    serde_json::json!({
        "id": t.id,
        "name": t.name,
        "scopes": t.scopes.names(),
        "created_at": t.created_at,
        "revoked_at": t.revoked_at,
        "last_used": t.last_used,
    })
}
