//! Talking to a Kiln server: its base URL and one HTTP client.

use anyhow::{Context, bail};
use reqwest::Url;

/// Where `kiln` finds the server when neither `--server` nor `$KILN_SERVER` says.
pub const DEFAULT_SERVER: &str = "http://127.0.0.1:8234";

/// A Kiln server's base URL and the client that talks to it.
#[derive(Debug, Clone)]
pub struct Server {
    base: Url,
    http: reqwest::Client,
}

impl Server {
    /// `base` must be an `http` or `https` URL.
    pub fn new(base: &str) -> anyhow::Result<Self> {
        let mut base = Url::parse(base).with_context(|| format!("--server {base:?} is not a URL"))?;
        if !matches!(base.scheme(), "http" | "https") || base.host().is_none() {
            bail!("--server {base} must be an http:// or https:// URL");
        }
        if !base.path().ends_with('/') {
            let path = format!("{}/", base.path());
            base.set_path(&path);
        }
        let http = reqwest::Client::builder()
            .user_agent(concat!("kiln/", env!("CARGO_PKG_VERSION")))
            .connect_timeout(std::time::Duration::from_secs(10))
            .build()?;
        Ok(Self { base, http })
    }

    /// The absolute URL of `path` (relative, e.g. `api/signing-key`) on this server.
    pub fn url(&self, path: &str) -> anyhow::Result<Url> {
        Ok(self.base.join(path.trim_start_matches('/'))?)
    }

    /// `GET path` as text; a non-success status is an error that quotes the body.
    pub async fn get_text(&self, path: &str) -> anyhow::Result<String> {
        let url = self.url(path)?;
        let res = self.http.get(url.clone()).send().await.with_context(|| format!("GET {url}"))?;
        let status = res.status();
        let body = res.text().await.with_context(|| format!("GET {url}"))?;
        if !status.is_success() {
            bail!("GET {url}: {status}: {}", body.trim());
        }
        Ok(body)
    }
}
