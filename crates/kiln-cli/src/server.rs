//! Talking to a Kiln server: its base URL and one HTTP client.
//!
//! [`Server::send`] is the one place where an answer becomes a [`Failure`]:
//! no answer is [`Failure::Unreachable`], an error status is the API's
//! [`ApiError`].

use std::time::Duration;

use anyhow::{Context, bail};
use reqwest::{RequestBuilder, Response, Url};
use serde::de::DeserializeOwned;

use crate::error::{ApiError, Failure};

/// The most bytes of an error body that are read.
const MAX_ERROR_BODY: usize = 64 * 1024;
/// A body that sends nothing for this long is given up on.
pub const READ_TIMEOUT: Duration = Duration::from_secs(120);

/// Where `kiln` finds the server when neither `--server` nor `$KILN_SERVER` says.
pub const DEFAULT_SERVER: &str = "http://127.0.0.1:8234";

/// A Kiln server's base URL and the client that talks to it.
#[derive(Debug, Clone)]
pub struct Server {
    base: Url,
    http: reqwest::Client,
}

impl Server {
    /// `base` must be an `http` or `https` URL; `token`, when given, goes
    /// with every request as `Authorization: Bearer` (marked sensitive, so
    /// it never shows in a debug print of a request).
    pub fn new(base: &str, token: Option<&str>) -> anyhow::Result<Self> {
        let mut base = Url::parse(base).with_context(|| format!("--server {base:?} is not a URL"))?;
        if !matches!(base.scheme(), "http" | "https") || base.host().is_none() {
            bail!("--server {base} must be an http:// or https:// URL");
        }
        if !base.path().ends_with('/') {
            let path = format!("{}/", base.path());
            base.set_path(&path);
        }
        let mut headers = reqwest::header::HeaderMap::new();
        if let Some(token) = token.map(str::trim).filter(|t| !t.is_empty()) {
            let mut value = reqwest::header::HeaderValue::from_str(&format!("Bearer {token}"))
                .map_err(|_| anyhow::anyhow!("--token holds characters a header cannot carry"))?;
            value.set_sensitive(true);
            headers.insert(reqwest::header::AUTHORIZATION, value);
        }
        let http = reqwest::Client::builder()
            .default_headers(headers)
            .user_agent(concat!("kiln/", env!("CARGO_PKG_VERSION")))
            .connect_timeout(std::time::Duration::from_secs(10))
            .build()?;
        Ok(Self { base, http })
    }

    /// The absolute URL of `path` (relative, e.g. `api/signing-key`) on this server.
    pub fn url(&self, path: &str) -> anyhow::Result<Url> {
        Ok(self.base.join(path.trim_start_matches('/'))?)
    }

    /// A `GET` of `path` (relative, e.g. `api/signing-key`), to be sent with [`Server::send`].
    pub fn get(&self, path: &str) -> Result<RequestBuilder, Failure> {
        Ok(self.http.get(self.url(path).map_err(|e| Failure::Protocol(format!("{e:#}")))?))
    }

    /// A `POST` of `body` as JSON to `path`.
    pub fn post_json(&self, path: &str, body: &impl serde::Serialize) -> Result<RequestBuilder, Failure> {
        Ok(self.http.post(self.url(path).map_err(|e| Failure::Protocol(format!("{e:#}")))?).json(body))
    }

    /// Send `req`: no answer is [`Failure::Unreachable`], a status other than
    /// 2xx is [`Failure::Api`] with the error the server explained.
    pub async fn send(&self, req: RequestBuilder) -> Result<Response, Failure> {
        let (client, req) = req.build_split();
        let req = req.map_err(|e| Failure::Protocol(reason(&e)))?;
        let url = req.url().clone();
        let res = client.execute(req).await.map_err(|e| unreachable(&url, &e))?;
        let status = res.status();
        if status.is_success() {
            return Ok(res);
        }
        let body = read_capped(res, MAX_ERROR_BODY).await.unwrap_or_default();
        Err(Failure::Api(Box::new(ApiError::from_body(status.as_u16(), &body))))
    }

    /// Send `req` and read its JSON answer, also as a raw value (for `--json`).
    pub async fn send_json<T: DeserializeOwned>(&self, req: RequestBuilder) -> Result<(T, serde_json::Value), Failure> {
        let res = self.send(req).await?;
        let url = res.url().clone();
        let raw: serde_json::Value = res.json().await.map_err(|e| {
            if e.is_decode() { Failure::Protocol(format!("{url}: {}", reason(&e))) } else { unreachable(&url, &e) }
        })?;
        let typed = serde_json::from_value(raw.clone()).map_err(|e| Failure::Protocol(format!("{url}: {e}")))?;
        Ok((typed, raw))
    }
}

/// The next chunk of `res`'s body, or `None` at its end; a connection that
/// drops or stays silent for [`READ_TIMEOUT`] is [`Failure::Unreachable`].
pub async fn next_chunk(res: &mut Response) -> Result<Option<bytes::Bytes>, Failure> {
    next_chunk_within(res, READ_TIMEOUT).await
}

/// [`next_chunk`] with another limit on silence (a live log may be quiet for long).
pub async fn next_chunk_within(res: &mut Response, silence: Duration) -> Result<Option<bytes::Bytes>, Failure> {
    let url = res.url().clone();
    match tokio::time::timeout(silence, res.chunk()).await {
        Ok(Ok(chunk)) => Ok(chunk),
        Ok(Err(e)) => Err(unreachable(&url, &e)),
        Err(_) => Err(Failure::Unreachable {
            url: url.to_string(),
            reason: format!("nothing received for {} s", silence.as_secs()),
        }),
    }
}

/// At most `max` bytes of `res`'s body.
async fn read_capped(mut res: Response, max: usize) -> Result<Vec<u8>, Failure> {
    let mut out = Vec::new();
    while out.len() < max
        && let Some(chunk) = next_chunk(&mut res).await?
    {
        out.extend_from_slice(&chunk[..chunk.len().min(max - out.len())]);
    }
    Ok(out)
}

/// What really happened behind a `reqwest` error: its causes ("client
/// error (Connect): tcp connect error: Connection refused"), without the
/// URL it repeats.
pub fn reason(e: &reqwest::Error) -> String {
    let mut parts: Vec<String> = Vec::new();
    let mut source = std::error::Error::source(e);
    while let Some(s) = source {
        let text = s.to_string();
        if !parts.iter().any(|p| p.contains(&text)) {
            parts.push(text);
        }
        source = s.source();
    }
    if parts.is_empty() { e.to_string() } else { parts.join(": ") }
}

fn unreachable(url: &Url, e: &reqwest::Error) -> Failure {
    Failure::Unreachable { url: url.to_string(), reason: reason(e) }
}
