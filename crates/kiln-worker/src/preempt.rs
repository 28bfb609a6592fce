//! Preemption detectors: does this machine know it is about to go away?
//!
//! One detector per worker, from `worker.preemption`:
//! - `gce`: `GET {url}/computeMetadata/v1/instance/preempted` with
//!   `Metadata-Flavor: Google` answers `TRUE`;
//! - `aws`: IMDSv2: `PUT {url}/latest/api/token` for a session token, then
//!   `GET {url}/latest/meta-data/spot/instance-action` answers 200 (404 means
//!   no interruption is scheduled);
//! - `azure`: Scheduled Events,
//!   `GET {url}/metadata/scheduledevents?api-version=2020-07-01` with
//!   `Metadata: true` lists an event whose `EventType` is `Preempt`;
//! - `file`: a path appears;
//! - `none`.
//!
//! The base URLs default to the clouds' own metadata addresses and are
//! configurable, so tests can stand in for them. A detector that cannot reach
//! its service reports "not preempted": a flaky metadata server must not stop
//! a healthy worker.

use std::path::PathBuf;
use std::time::{Duration, Instant};

use kiln_config::{PreemptionConfig, PreemptionDetector};
use serde::Deserialize;
use tokio::sync::Mutex;
use tokio_util::sync::CancellationToken;

/// GCE's metadata server.
pub const GCE_URL: &str = "http://metadata.google.internal";
/// The link-local instance metadata address of AWS and Azure.
pub const LINK_LOCAL_URL: &str = "http://169.254.169.254";

/// How long one metadata request may take.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(2);
/// Lifetime asked for an IMDSv2 token; it is renewed a minute before it ends.
const AWS_TOKEN_TTL_SECS: u64 = 21600;

#[derive(Debug, thiserror::Error)]
pub enum PreemptError {
    #[error("{url}: {source}")]
    Http { url: String, source: reqwest::Error },
    #[error("{url}: unexpected status {status}")]
    Status { url: String, status: u16 },
}

/// A configured detector.
#[derive(Debug)]
pub struct Detector {
    kind: Kind,
    http: reqwest::Client,
    aws_token: Mutex<Option<(String, Instant)>>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum Kind {
    None,
    File(PathBuf),
    Gce(String),
    Aws(String),
    Azure(String),
}

#[derive(Deserialize)]
struct AzureEvents {
    #[serde(rename = "Events", default)]
    events: Vec<AzureEvent>,
}

#[derive(Deserialize)]
struct AzureEvent {
    #[serde(rename = "EventType", default)]
    event_type: String,
}

impl Detector {
    pub fn from_config(c: &PreemptionConfig) -> Detector {
        let url = |default: &str| {
            c.url.as_deref().filter(|u| !u.trim().is_empty()).unwrap_or(default).trim_end_matches('/').to_owned()
        };
        let kind = match c.detector {
            PreemptionDetector::None => Kind::None,
            PreemptionDetector::File => c.path.clone().map_or(Kind::None, Kind::File),
            PreemptionDetector::Gce => Kind::Gce(url(GCE_URL)),
            PreemptionDetector::Aws => Kind::Aws(url(LINK_LOCAL_URL)),
            PreemptionDetector::Azure => Kind::Azure(url(LINK_LOCAL_URL)),
        };
        let http = reqwest::Client::builder()
            .timeout(REQUEST_TIMEOUT)
            // Metadata servers are local; never go through a proxy.
            .no_proxy()
            .build()
            .expect("a plain HTTP client builds");
        Detector { kind, http, aws_token: Mutex::new(None) }
    }

    pub fn is_none(&self) -> bool {
        self.kind == Kind::None
    }

    /// `Some(why)` when the machine is being preempted.
    pub async fn check(&self) -> Result<Option<String>, PreemptError> {
        match &self.kind {
            Kind::None => Ok(None),
            Kind::File(path) => {
                Ok(tokio::fs::try_exists(path).await.unwrap_or(false).then(|| format!("{} appeared", path.display())))
            }
            Kind::Gce(base) => {
                let url = format!("{base}/computeMetadata/v1/instance/preempted");
                let body = self.get_text(&url, &[("Metadata-Flavor", "Google")]).await?;
                Ok((body.as_deref().map(str::trim) == Some("TRUE"))
                    .then(|| "GCE reports instance/preempted TRUE".into()))
            }
            Kind::Aws(base) => self.check_aws(base).await,
            Kind::Azure(base) => {
                let url = format!("{base}/metadata/scheduledevents?api-version=2020-07-01");
                let Some(body) = self.get_text(&url, &[("Metadata", "true")]).await? else { return Ok(None) };
                let events: AzureEvents = serde_json::from_str(&body).unwrap_or(AzureEvents { events: vec![] });
                Ok(events
                    .events
                    .iter()
                    .any(|e| e.event_type == "Preempt")
                    .then(|| "Azure scheduled a Preempt event".into()))
            }
        }
    }

    async fn check_aws(&self, base: &str) -> Result<Option<String>, PreemptError> {
        let token = self.aws_token(base).await?;
        let url = format!("{base}/latest/meta-data/spot/instance-action");
        let body = self.get_text(&url, &[("X-aws-ec2-metadata-token", &token)]).await?;
        Ok(body.map(|b| format!("AWS spot instance-action: {}", b.trim())))
    }

    async fn aws_token(&self, base: &str) -> Result<String, PreemptError> {
        let mut cached = self.aws_token.lock().await;
        if let Some((token, until)) = cached.as_ref()
            && Instant::now() < *until
        {
            return Ok(token.clone());
        }
        let url = format!("{base}/latest/api/token");
        let http = |source| PreemptError::Http { url: url.clone(), source };
        let resp = self
            .http
            .put(&url)
            .header("X-aws-ec2-metadata-token-ttl-seconds", AWS_TOKEN_TTL_SECS.to_string())
            .send()
            .await
            .map_err(http)?;
        if !resp.status().is_success() {
            return Err(PreemptError::Status { url, status: resp.status().as_u16() });
        }
        let token = resp.text().await.map_err(http)?.trim().to_owned();
        let until = Instant::now() + Duration::from_secs(AWS_TOKEN_TTL_SECS - 60);
        *cached = Some((token.clone(), until));
        Ok(token)
    }

    /// The body of a `GET`, `None` on 404.
    async fn get_text(&self, url: &str, headers: &[(&str, &str)]) -> Result<Option<String>, PreemptError> {
        let http = |source| PreemptError::Http { url: url.to_owned(), source };
        let mut req = self.http.get(url);
        for (k, v) in headers {
            req = req.header(*k, *v);
        }
        let resp = req.send().await.map_err(http)?;
        match resp.status().as_u16() {
            404 => Ok(None),
            s if (200..300).contains(&s) => Ok(Some(resp.text().await.map_err(http)?)),
            // An expired IMDSv2 token: forget it so the next check asks anew.
            401 => {
                *self.aws_token.lock().await = None;
                Err(PreemptError::Status { url: url.to_owned(), status: 401 })
            }
            status => Err(PreemptError::Status { url: url.to_owned(), status }),
        }
    }
}

/// Ask `detector` every `every` until it reports preemption (then cancel
/// `preempted` and return why) or `stop` fires (then return `None`).
pub async fn watch(
    detector: Detector,
    every: Duration,
    preempted: CancellationToken,
    stop: CancellationToken,
) -> Option<String> {
    if detector.is_none() {
        return None;
    }
    let mut failing = false;
    loop {
        match detector.check().await {
            Ok(Some(why)) => {
                tracing::warn!(%why, "preemption detected");
                preempted.cancel();
                return Some(why);
            }
            Ok(None) => failing = false,
            Err(e) => {
                if !failing {
                    tracing::warn!(error = %e, "preemption detector cannot reach its metadata service");
                }
                failing = true;
            }
        }
        tokio::select! {
            _ = tokio::time::sleep(every) => {}
            _ = stop.cancelled() => return None,
        }
    }
}
