//! Version resolution through a stand-in Go module proxy: a directory laid
//! out as the proxy protocol wants, served by a tiny axum server.

use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use axum::extract::State;
use axum::http::{StatusCode, Uri};
use kiln_domain::ModulePath;
use kiln_domain::recipe::VersionSource;
use serde_json::json;

use crate::farm::InProc;

/// A Go module proxy over a directory; counts requests per path.
struct Proxy {
    dir: tempfile::TempDir,
    url: String,
    hits: Arc<std::sync::Mutex<Vec<String>>>,
    _task: tokio::task::JoinHandle<()>,
}

#[derive(Clone)]
struct ProxyState {
    root: PathBuf,
    hits: Arc<std::sync::Mutex<Vec<String>>>,
    served: Arc<AtomicUsize>,
}

async fn serve_file(State(s): State<ProxyState>, uri: Uri) -> Result<Vec<u8>, StatusCode> {
    let path = uri.path().trim_start_matches('/').to_owned();
    s.hits.lock().unwrap().push(path.clone());
    if path.split('/').any(|p| p == ".." || p.is_empty()) {
        return Err(StatusCode::BAD_REQUEST);
    }
    s.served.fetch_add(1, Ordering::Relaxed);
    std::fs::read(s.root.join(&path)).map_err(|_| StatusCode::NOT_FOUND)
}

impl Proxy {
    async fn start() -> Proxy {
        let dir = tempfile::tempdir().unwrap();
        let hits = Arc::new(std::sync::Mutex::new(Vec::new()));
        let state = ProxyState { root: dir.path().to_owned(), hits: hits.clone(), served: Arc::default() };
        let app = axum::Router::new().fallback(serve_file).with_state(state);
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        let task = tokio::spawn(async move {
            axum::serve(listener, app).await.unwrap();
        });
        Proxy { dir, url, hits, _task: task }
    }

    /// Publish `module` (as written; escaped here) with `versions` in its list.
    fn publish(&self, module: &str, listed: &[&str], info_only: &[&str]) {
        let m = ModulePath::parse("m", module).unwrap();
        let dir = self.dir.path().join(m.proxy_escaped()).join("@v");
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(dir.join("list"), listed.iter().map(|v| format!("{v}\n")).collect::<String>()).unwrap();
        for v in listed.iter().chain(info_only) {
            std::fs::write(dir.join(format!("{v}.info")), json!({"Version": v}).to_string()).unwrap();
        }
    }

    fn hits(&self, suffix: &str) -> usize {
        self.hits.lock().unwrap().iter().filter(|h| h.ends_with(suffix)).count()
    }
}

/// An API whose `hello` recipe takes versions and plugin versions from `proxy`.
async fn api_with(proxy_url: &str, plugin_proxy: bool) -> InProc {
    let url = proxy_url.to_owned();
    InProc::with(move |c| {
        c.api.go_proxy = url;
        let hello = c.recipes.get_mut("hello").unwrap();
        hello.versions = VersionSource::GoProxy { module: ModulePath::parse("m", "example.com/Kiln/hello").unwrap() };
        hello.plugins.go_proxy = plugin_proxy;
    })
    .await
}

fn post(version: Option<&str>, plugins: serde_json::Value) -> String {
    let mut b = json!({"recipe": "hello", "os": "linux", "arch": "amd64", "plugins": plugins});
    if let Some(v) = version {
        b["version"] = json!(v);
    }
    b.to_string()
}

#[tokio::test]
async fn latest_comes_from_the_proxy_with_case_escaping_and_a_cache() {
    let proxy = Proxy::start().await;
    proxy.publish("example.com/Kiln/hello", &["v1.0.0", "v1.3.0", "v1.10.0-beta.1", "v1.2.0"], &["v0.9.0"]);
    proxy.publish("example.com/Loud", &["v0.1.0", "v0.3.0", "v0.4.0-rc.1"], &[]);
    let api = api_with(&proxy.url, true).await;

    let a = api.post("/api/builds", post(None, json!([{"module": "example.com/Loud"}]))).await;
    assert_eq!(a.status, 202, "{}", a.text());
    assert_eq!(a.json()["version"], "v1.3.0");
    assert_eq!(a.json()["plugins"][0]["version"], "v0.3.0");
    assert_eq!(proxy.hits("example.com/!kiln/hello/@v/list"), 1, "{:?}", proxy.hits.lock().unwrap());
    assert_eq!(proxy.hits("example.com/!loud/@v/list"), 1);

    // Cached: asking again does not go to the proxy.
    let b = api
        .post("/api/builds", post(Some("latest"), json!([{"module": "example.com/Loud", "version": "latest"}])))
        .await;
    assert_eq!(b.json()["key"], a.json()["key"]);
    assert_eq!(proxy.hits("@v/list"), 2);

    // A prerelease only when asked for exactly; a listed-elsewhere version via .info.
    let pre = api
        .post(
            "/api/builds",
            post(Some("v1.10.0-beta.1"), json!([{"module": "example.com/Loud", "version": "v0.4.0-rc.1"}])),
        )
        .await;
    assert_eq!(pre.status, 202, "{}", pre.text());
    assert_eq!(pre.json()["version"], "v1.10.0-beta.1");
    assert_eq!(pre.json()["plugins"][0]["version"], "v0.4.0-rc.1");
    let old = api.post("/api/builds", post(Some("0.9.0"), json!([]))).await;
    assert_eq!(old.status, 202, "{}", old.text());
    assert_eq!(old.json()["version"], "v0.9.0");

    // Unknown versions and modules are the user's mistake: 400.
    api.post("/api/builds", post(Some("v7.0.0"), json!([]))).await.error(400, "unknown_version");
    let j = api
        .post("/api/builds", post(None, json!([{"module": "example.com/missing"}])))
        .await
        .error(400, "unknown_module");
    assert_eq!(j["error"]["field"], "plugins[0].version");
    let j = api
        .get("/api/compat?recipe=hello&os=linux&arch=amd64&p=example.com/missing")
        .await
        .error(400, "unknown_module");
    assert_eq!(j["error"]["field"], "p");
}

#[tokio::test]
async fn a_herd_makes_one_proxy_request() {
    let proxy = Proxy::start().await;
    proxy.publish("example.com/Kiln/hello", &["v2.0.0", "v2.1.0"], &[]);
    let api = api_with(&proxy.url, false).await;
    let answers = futures::future::join_all((0..50).map(|_| api.post("/api/builds", post(None, json!([]))))).await;
    for a in &answers {
        assert_eq!(a.status, 202, "{}", a.text());
        assert_eq!(a.json()["version"], "v2.1.0");
    }
    assert_eq!(proxy.hits("@v/list"), 1);
}

#[tokio::test]
async fn an_unreachable_proxy_is_a_502() {
    // A port nothing listens on.
    let port = kiln_testkit::farm::free_port();
    let api = api_with(&format!("http://127.0.0.1:{port}"), true).await;
    let j = api.post("/api/builds", post(None, json!([]))).await.error(502, "proxy_unreachable");
    assert_eq!(j["error"]["field"], "version");
    api.get("/api/compat?recipe=hello&os=linux&arch=amd64").await.error(502, "proxy_unreachable");
}

#[tokio::test]
async fn static_plugin_lists_win_over_the_proxy() {
    let proxy = Proxy::start().await;
    proxy.publish("example.com/Kiln/hello", &["v1.0.0"], &[]);
    proxy.publish("example.com/greet", &["v9.0.0"], &[]);
    let api = api_with(&proxy.url, true).await;
    let a = api.post("/api/builds", post(None, json!([{"module": "example.com/greet"}]))).await;
    assert_eq!(a.json()["plugins"][0]["version"], "v0.2.0", "{}", a.text());
    assert_eq!(proxy.hits("example.com/greet/@v/list"), 0);
}

#[tokio::test]
async fn a_remembered_compat_resolution_never_outlives_the_version_listing() {
    let proxy = Proxy::start().await;
    proxy.publish("example.com/Kiln/hello", &["v1.0.0"], &[]);
    let url = proxy.url.clone();
    let api = InProc::with(move |c| {
        c.api.go_proxy = url;
        c.api.version_cache_secs = 1;
        // No worker runs here: the build stays queued, and the 504 names its key.
        c.api.compat_timeout_secs = 0;
        let hello = c.recipes.get_mut("hello").unwrap();
        hello.versions = VersionSource::GoProxy { module: ModulePath::parse("m", "example.com/Kiln/hello").unwrap() };
    })
    .await;
    let compat = "/api/compat?recipe=hello&os=linux&arch=amd64";
    let key_of = |j: serde_json::Value| j["error"]["key"].as_str().unwrap().to_owned();
    let first = key_of(api.get(compat).await.error(504, "build_pending"));
    let again = key_of(api.get(compat).await.error(504, "build_pending"));
    assert_eq!(again, first);
    assert_eq!(api.get(&format!("/api/builds/{first}")).await.json()["version"], "v1.0.0");

    // A new "latest": once the listing's lifetime is over, the same query
    // string resolves to it, however recently it was answered.
    proxy.publish("example.com/Kiln/hello", &["v1.0.0", "v1.1.0"], &[]);
    tokio::time::sleep(std::time::Duration::from_millis(1100)).await;
    let newer = key_of(api.get(compat).await.error(504, "build_pending"));
    assert_ne!(newer, first);
    assert_eq!(api.get(&format!("/api/builds/{newer}")).await.json()["version"], "v1.1.0");
}
