//! Test helpers: an in-process API ([`InProc`]) and a farm of real
//! processes ([`ApiFarm`]) over `config.test.yml`.

use std::time::Duration;

use axum::Router;
use axum::body::Body;
use axum::http::{HeaderMap, Request, StatusCode};
use bytes::Bytes;
use kiln_api::AppState;
use kiln_config::Config;
use kiln_queue::QueueSettings;
use kiln_storage::Storage;
use kiln_testkit::TestDb;
use kiln_testkit::farm::{Farm, Proc};
use tower::ServiceExt;

/// `config.test.yml` read with `vars` as the environment.
pub fn test_config(vars: &[(&str, String)]) -> Config {
    let path = kiln_testkit::repo_root().join("config.test.yml");
    let text = std::fs::read_to_string(&path).unwrap();
    let lookup = |name: &str| vars.iter().find(|(k, _)| *k == name).map(|(_, v)| v.clone());
    Config::parse(&text, &path.display().to_string(), &lookup).unwrap()
}

/// The API in this process over a fresh database and a temporary local store.
pub struct InProc {
    pub db: TestDb,
    pub dir: tempfile::TempDir,
    pub state: AppState,
    pub app: Router,
}

/// An answer: status, headers, body.
#[derive(Debug)]
pub struct Answer {
    pub status: StatusCode,
    pub headers: HeaderMap,
    pub body: Bytes,
}

impl Answer {
    pub fn json(&self) -> serde_json::Value {
        serde_json::from_slice(&self.body)
            .unwrap_or_else(|e| panic!("{} is not JSON ({e}): {}", self.status, String::from_utf8_lossy(&self.body)))
    }

    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }

    /// Assert a JSON error of `status` with `code`; returns the body.
    pub fn error(&self, status: u16, code: &str) -> serde_json::Value {
        assert_eq!(self.status.as_u16(), status, "{}", self.text());
        let j = self.json();
        assert_eq!(j["status_code"], status, "{j}");
        assert_eq!(j["error"]["code"], code, "{j}");
        assert!(j["error"]["message"].as_str().is_some_and(|m| !m.is_empty()), "{j}");
        assert!(j["error"]["id"].as_str().is_some_and(|m| !m.is_empty()), "{j}");
        j
    }
}

impl InProc {
    pub async fn new() -> InProc {
        Self::with(|_| {}).await
    }

    pub async fn with(edit: impl FnOnce(&mut Config)) -> InProc {
        let db = TestDb::new().await.unwrap();
        let dir = tempfile::tempdir().unwrap();
        let mut config =
            test_config(&[("DATABASE_URL", db.url().to_owned()), ("KILN_DATA_DIR", dir.path().display().to_string())]);
        edit(&mut config);
        let storage = Storage::from_config(&config.storage).unwrap();
        let queue = db.queue(QueueSettings::from(&config.queue));
        let state = AppState::new(config, queue, storage);
        let app = kiln_api::app(state.clone());
        InProc { db, dir, state, app }
    }

    pub async fn call(&self, req: Request<Body>) -> Answer {
        let resp = self.app.clone().oneshot(req).await.unwrap();
        let status = resp.status();
        let headers = resp.headers().clone();
        let body = axum::body::to_bytes(resp.into_body(), usize::MAX).await.unwrap();
        Answer { status, headers, body }
    }

    pub async fn get(&self, uri: &str) -> Answer {
        self.call(Request::get(uri).body(Body::empty()).unwrap()).await
    }

    pub async fn post(&self, uri: &str, body: impl Into<Body>) -> Answer {
        self.call(Request::post(uri).header("content-type", "application/json").body(body.into()).unwrap()).await
    }
}

/// A farm of real processes: `kiln-api` and `kiln-worker`s.
pub struct ApiFarm {
    pub farm: Farm,
    pub api: Option<Proc>,
    pub workers: Vec<Proc>,
    pub http: reqwest::Client,
}

impl ApiFarm {
    /// A farm with `env` set for every process, the API started, no worker yet.
    pub async fn start(env: &[(&str, &str)]) -> ApiFarm {
        let mut farm = Farm::new().await;
        for (k, v) in env {
            farm.set(k, *v);
        }
        let api = farm.start_api().await;
        let http = reqwest::Client::builder().timeout(Duration::from_secs(120)).build().unwrap();
        ApiFarm { farm, api: Some(api), workers: Vec::new(), http }
    }

    /// A farm with the API and one worker running.
    pub async fn with_worker(env: &[(&str, &str)]) -> ApiFarm {
        let mut f = Self::start(env).await;
        f.add_worker();
        f
    }

    /// Start a worker. Its id is unique on this machine: a worker removes
    /// containers left by an earlier worker of the same id, and farms of
    /// tests running in parallel share the Docker engine.
    pub fn add_worker(&mut self) {
        let id = format!("api-test-{}-{}", self.farm.port, self.workers.len());
        let w = self.farm.start_worker(&id);
        self.workers.push(w);
    }

    pub fn url(&self, path: &str) -> String {
        format!("{}{path}", self.farm.url())
    }

    pub async fn get(&self, path: &str) -> reqwest::Response {
        self.http.get(self.url(path)).send().await.unwrap()
    }

    /// Every process's output, for failure messages.
    pub fn logs(&self) -> String {
        let mut s = String::new();
        for p in self.api.iter().chain(&self.workers) {
            s.push_str(&format!("----- {} -----\n{}\n", p.label(), p.output()));
        }
        s
    }

    /// How many builds exist in the database.
    pub async fn build_count(&self) -> i64 {
        sqlx::query_scalar("SELECT count(*) FROM builds").fetch_one(self.farm.db.pool()).await.unwrap()
    }

    /// How many attempts were made at all builds.
    pub async fn attempt_count(&self) -> i64 {
        sqlx::query_scalar("SELECT count(*) FROM build_attempts").fetch_one(self.farm.db.pool()).await.unwrap()
    }

    /// Wait until `GET /api/builds/{key}` reports a final state; returns the JSON.
    pub async fn wait_final(&self, key: &str) -> serde_json::Value {
        for _ in 0..20 {
            let j: serde_json::Value = self.get(&format!("/api/builds/{key}?wait=30")).await.json().await.unwrap();
            if matches!(j["state"].as_str(), Some("succeeded" | "failed" | "cancelled")) {
                return j;
            }
        }
        panic!("build {key} did not end\n{}", self.logs());
    }
}
