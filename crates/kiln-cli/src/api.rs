//! The farm's HTTP API as the client uses it: a build as JSON and the calls
//! on `/api/builds` and `/api/signing-key`.
//!
//! Paths are made here from a checked [`BuildKey`] and the `--server` base
//! URL, never from the links a server sends (those carry the server's own
//! idea of its public URL, which may not be the one this client reaches).

use std::time::Duration;

use chrono::{DateTime, Utc};
use kiln_artifact::PublicKey;
use kiln_domain::{BuildKey, BuildManifest, BuildRequest, BuildState};
use serde::Deserialize;

use crate::error::Failure;
use crate::server::Server;

/// A build as `GET /api/builds/{key}` shows it (the fields the client reads).
#[derive(Debug, Clone, Deserialize)]
pub struct Build {
    pub key: BuildKey,
    pub state: BuildState,
    #[serde(default)]
    pub recipe: String,
    #[serde(default)]
    pub version: String,
    #[serde(default)]
    pub os: String,
    #[serde(default)]
    pub arch: String,
    #[serde(default)]
    pub arm: Option<String>,
    #[serde(default)]
    pub platform: String,
    #[serde(default)]
    pub plugins: Vec<Plugin>,
    #[serde(default)]
    pub attempts: i64,
    #[serde(default)]
    pub max_attempts: i64,
    #[serde(default)]
    pub error: Option<String>,
    #[serde(default)]
    pub created_at: Option<DateTime<Utc>>,
    #[serde(default)]
    pub started_at: Option<DateTime<Utc>>,
    #[serde(default)]
    pub finished_at: Option<DateTime<Utc>>,
    /// What the worker stored (sizes, SHA-256s, the main binary's name):
    /// the build's manifest, once it succeeded.
    #[serde(default)]
    pub artifact: Option<BuildManifest>,
    #[serde(default)]
    pub links: Links,
    /// The JSON as the server sent it, for `--json`.
    #[serde(skip)]
    pub raw: serde_json::Value,
}

#[derive(Debug, Clone, Deserialize)]
pub struct Plugin {
    pub module: String,
    pub version: String,
}

#[derive(Debug, Clone, Default, Deserialize)]
pub struct Links {
    #[serde(default)]
    pub log: String,
    #[serde(default)]
    pub artifact: String,
    #[serde(default)]
    pub binary: String,
}

impl Build {
    /// The name of the main binary inside the artifact, as the worker recorded it.
    pub fn binary_name(&self) -> Option<&str> {
        self.artifact.as_ref().map(|m| m.binary.name.as_str())
    }

    /// The failure of a build that ended `failed` or `cancelled`.
    pub fn failure(&self) -> Failure {
        let error = self.error.clone().unwrap_or_else(|| match self.state {
            BuildState::Cancelled => "it was cancelled".to_owned(),
            _ => "no reason was recorded".to_owned(),
        });
        Failure::Build { key: self.key.to_string(), state: self.state.to_string(), error, log: self.links.log.clone() }
    }
}

fn build_path(key: &BuildKey, rest: &str) -> String {
    format!("api/builds/{key}{rest}")
}

/// `POST /api/builds`.
pub async fn submit(server: &Server, req: &BuildRequest) -> Result<Build, Failure> {
    let request = server.post_json("api/builds", req)?.timeout(Duration::from_secs(120));
    Ok(typed(server, server.send_json(request).await?))
}

/// `GET /api/builds/{key}`, holding up to `wait` for a change of state.
pub async fn get(server: &Server, key: &BuildKey, wait: Duration) -> Result<Build, Failure> {
    let secs = wait.as_secs();
    let path = if secs == 0 { build_path(key, "") } else { build_path(key, &format!("?wait={secs}")) };
    let request = server.get(&path)?.timeout(wait + Duration::from_secs(60));
    Ok(typed(server, server.send_json(request).await?))
}

/// `GET /api/builds/{key}/log`, streaming live with `follow`.
pub async fn log(server: &Server, key: &BuildKey, follow: bool) -> Result<reqwest::Response, Failure> {
    let path = build_path(key, if follow { "/log?follow=1" } else { "/log" });
    server.send(server.get(&path)?).await
}

/// `GET /api/builds/{key}/artifact` or `/artifact.minisig` (`what`).
pub async fn object(server: &Server, key: &BuildKey, what: &str) -> Result<reqwest::Response, Failure> {
    server.send(server.get(&build_path(key, &format!("/{what}")))?).await
}

/// The server's signing key from `/api/signing-key`.
pub async fn signing_key(server: &Server) -> Result<PublicKey, Failure> {
    let mut res = server.send(server.get("api/signing-key")?.timeout(Duration::from_secs(60))).await?;
    let mut text = Vec::new();
    while let Some(chunk) = crate::server::next_chunk(&mut res).await? {
        text.extend_from_slice(&chunk);
        if text.len() > 64 * 1024 {
            break;
        }
    }
    let text = String::from_utf8_lossy(&text);
    PublicKey::parse(&text).map_err(|e| {
        Failure::Protocol(format!("/api/signing-key did not serve a minisign public key ({e}); pass --key PUB"))
    })
}

/// Keep the raw JSON, and make the links absolute: a server without a
/// configured public URL sends them relative to itself.
fn typed(server: &Server, (mut build, raw): (Build, serde_json::Value)) -> Build {
    build.raw = raw;
    for link in [&mut build.links.log, &mut build.links.artifact, &mut build.links.binary] {
        if let Ok(url) = server.url(link)
            && !link.is_empty()
        {
            *link = url.to_string();
        }
    }
    build
}
