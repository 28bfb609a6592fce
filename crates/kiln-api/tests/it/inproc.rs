//! In-process tests: validation, errors, admin auth, resolution of static
//! versions, and the operational routes. No build runs here.

use axum::body::Body;
use axum::http::Request;
use serde_json::json;

use crate::farm::InProc;

const HELLO: &str = "/api/compat?recipe=hello&os=linux&arch=amd64";

fn enc(s: &str) -> String {
    percent_encoding::utf8_percent_encode(s, percent_encoding::NON_ALPHANUMERIC).to_string()
}

#[tokio::test]
async fn bad_compat_requests_are_400_json_naming_the_field() {
    let api = InProc::new().await;
    let long = format!("example.com/{}", "a".repeat(1000));
    let cases: Vec<(String, &str, &str)> = vec![
        ("/api/compat?recipe=hello&os=plan9&arch=amd64".into(), "os", "unknown_platform"),
        ("/api/compat?recipe=hello&os=linux&arch=mips".into(), "arch", "unknown_platform"),
        ("/api/compat?recipe=hello&os=linux&arch=amd64&arm=7".into(), "arm", "unknown_platform"),
        ("/api/compat?recipe=hello&os=linux&arch=arm&arm=5".into(), "arm", "unknown_platform"),
        ("/api/compat?recipe=hello&arch=amd64".into(), "os", "missing_field"),
        ("/api/compat?recipe=hello&os=linux".into(), "arch", "missing_field"),
        ("/api/compat?os=linux&arch=amd64".into(), "recipe", "missing_field"),
        (format!("{HELLO}&p={}", enc("example.com/a b")), "p", "invalid_module"),
        (format!("{HELLO}&p={}", enc("example.com/a;rm -rf /")), "p", "invalid_module"),
        (format!("{HELLO}&p={}", enc("example.com/$(id)")), "p", "invalid_module"),
        (format!("{HELLO}&p={}", enc("example.com/`id`")), "p", "invalid_module"),
        (format!("{HELLO}&p={}", enc("example.com/../etc")), "p", "invalid_module"),
        (format!("{HELLO}&p={}", enc("Example.COM/greet")), "p", "invalid_module"),
        (format!("{HELLO}&p={}", enc("-example.com/greet")), "p", "invalid_module"),
        (format!("{HELLO}&p={}", enc(&long)), "p", "invalid_module"),
        (format!("{HELLO}&p=evil.com/greet"), "p", "plugin_not_allowed"),
        (format!("{HELLO}&p=example.com/greet@banana"), "p", "invalid_version"),
        (format!("{HELLO}&p=example.com/greet@v9.9.9"), "p", "unknown_version"),
        (format!("{HELLO}&p=example.com/other"), "p", "unknown_plugin"),
        (format!("{HELLO}&version=v1.2"), "version", "invalid_version"),
        (format!("{HELLO}&version={}", enc("v1.0.0;id")), "version", "invalid_version"),
        (format!("{HELLO}&version=v9.9.9"), "version", "unknown_version"),
        (format!("{HELLO}&p=example.com/greet@v0.1.0&p=example.com/greet@v0.2.0"), "p", "conflicting_plugins"),
        (format!("{HELLO}&r=example.com/greet=example.com/shout"), "r", "replacements_not_allowed"),
        (format!("{HELLO}&r=nonsense"), "r", "invalid_replacement"),
        (format!("{HELLO}&p=example.com/greet&x=%FF%FE"), "x", "invalid_encoding"),
        (format!("{HELLO}&p=%C3%28"), "p", "invalid_encoding"),
        // 10,000 plugins (short ones: a URI has at most 64 KiB).
        (format!("{HELLO}{}", "&p=a.b".repeat(10_000)), "p", "too_many_plugins"),
        ("/api/compat?recipe=Bad%20Name&os=linux&arch=amd64".into(), "recipe", "invalid_recipe"),
    ];
    for (uri, field, code) in cases {
        let a = api.get(&uri).await;
        let j = a.error(400, code);
        assert_eq!(j["error"]["field"], field, "{uri}: {j}");
        assert!(a.headers.get("x-request-id").is_some());
        assert_eq!(j["error"]["id"], a.headers["x-request-id"].to_str().unwrap());
    }
    // Nothing was queued by any of it.
    let n: i64 = sqlx::query_scalar("SELECT count(*) FROM builds").fetch_one(api.db.pool()).await.unwrap();
    assert_eq!(n, 0);
}

#[tokio::test]
async fn bad_post_bodies_are_400_or_413_json() {
    let api = InProc::new().await;
    let ok = |extra: serde_json::Value| {
        let mut b = json!({"recipe": "hello", "os": "linux", "arch": "amd64"});
        b.as_object_mut().unwrap().extend(extra.as_object().unwrap().clone());
        b.to_string()
    };
    let cases: Vec<(String, &str, &str)> = vec![
        ("{".into(), "body", "invalid_body"),
        ("[]".into(), "body", "invalid_body"),
        (ok(json!({"colour": "red"})), "colour", "invalid_body"),
        (ok(json!({"plugins": [{"module": "example.com/$(id)"}]})), "plugins[0].module", "invalid_module"),
        (
            ok(json!({"plugins": [{"module": "example.com/greet", "version": "1"}]})),
            "plugins[0].version",
            "invalid_version",
        ),
        (ok(json!({"os": "plan9"})), "os", "unknown_platform"),
        (ok(json!({"arm": 7})), "arm", "unknown_platform"),
        (ok(json!({"version": "vv1"})), "version", "invalid_version"),
    ];
    for (body, field, code) in cases {
        let j = api.post("/api/builds", body.clone()).await.error(400, code);
        assert_eq!(j["error"]["field"], field, "{body}: {j}");
    }
    // 10,000 plugins: over the body limit, or over the plugin limit.
    let many: Vec<_> = (0..10_000).map(|i| json!({"module": format!("example.com/p{i}")})).collect();
    let a = api.post("/api/builds", ok(json!({"plugins": many}))).await;
    assert!(matches!(a.status.as_u16(), 400 | 413), "{}", a.text());
    assert_eq!(a.json()["status_code"], a.status.as_u16());
    let compact: Vec<_> = (0..1_000).map(|_| json!({"module": "a.b/c"})).collect();
    api.post("/api/builds", ok(json!({"plugins": compact}))).await.error(400, "too_many_plugins");
    // 10 MiB.
    let huge = format!("{{\"recipe\": \"{}\"}}", "x".repeat(10 * 1024 * 1024));
    api.post("/api/builds", huge).await.error(413, "body_too_large");
    // Unknown recipe: 404.
    let j = api
        .post("/api/builds", r#"{"recipe": "nope", "os": "linux", "arch": "amd64"}"#)
        .await
        .error(404, "unknown_recipe");
    assert_eq!(j["error"]["field"], "recipe");
    api.get("/api/compat?recipe=nope&os=linux&arch=amd64").await.error(404, "unknown_recipe");
}

#[tokio::test]
async fn errors_say_what_is_missing_and_what_is_available() {
    let api = InProc::new().await;
    let message = |j: serde_json::Value| j["error"]["message"].as_str().unwrap().to_owned();
    // Only the listed recipes are offered; the test-only ones are not.
    let offered = |m: &str| m.contains("hello") && !["escape", "fail", "sleep"].iter().any(|r| m.contains(r));

    // config.test.yml has no `caddy`, the compat API's default recipe.
    let m = message(api.get("/api/compat?os=linux&arch=amd64").await.error(400, "missing_field"));
    assert!(m.contains("recipe is missing") && m.contains("\"caddy\"") && offered(&m), "{m}");
    let m = message(api.get("/api/compat?recipe=nope&os=linux&arch=amd64").await.error(404, "unknown_recipe"));
    assert!(m.contains("\"nope\"") && offered(&m), "{m}");
    // Unlisted recipes are not offered, yet built when named.
    for unlisted in ["escape", "fail", "sleep"] {
        let body = format!(r#"{{"recipe": "{unlisted}", "os": "linux", "arch": "amd64"}}"#);
        assert_eq!(api.post("/api/builds", body).await.status, 202, "{unlisted}");
    }

    let m = message(api.get("/api/compat?recipe=hello&arch=amd64").await.error(400, "missing_field"));
    assert!(m.starts_with("os is missing") && m.contains("linux/amd64, linux/arm64"), "{m}");
    assert!(!m.contains("\"\""), "no empty value is quoted back: {m}");
    let m = message(api.get("/api/compat?recipe=hello&os=windows").await.error(400, "missing_field"));
    assert!(m.starts_with("arch is missing") && m.ends_with("for windows: amd64"), "{m}");
    let body = r#"{"recipe": "hello", "os": "", "arch": "amd64"}"#;
    let j = api.post("/api/builds", body).await.error(400, "missing_field");
    assert_eq!(j["error"]["field"], "os");

    // A plugin the recipe has no versions of is unknown, not a bad version.
    let j = api.get(&format!("{HELLO}&p=example.com/other")).await.error(400, "unknown_plugin");
    let m = message(j);
    assert!(m.contains("example.com/other") && m.contains("example.com/greet, example.com/shout"), "{m}");
    let body = r#"{"recipe": "hello", "os": "linux", "arch": "amd64", "plugins": [{"module": "example.com/other"}]}"#;
    assert_eq!(api.post("/api/builds", body).await.error(400, "unknown_plugin")["error"]["field"], "plugins[0].module");
}

#[tokio::test]
async fn unknown_and_malformed_keys_and_routes() {
    let api = InProc::new().await;
    let unknown = "a".repeat(64);
    for path in ["", "/log", "/events", "/artifact", "/artifact.minisig", "/binary"] {
        api.get(&format!("/api/builds/{unknown}{path}")).await.error(404, "unknown_build");
        for bad in ["AAAA".repeat(16), "..".into(), "%FF".into(), "a".repeat(65), format!("{}%2F..", "a".repeat(60))] {
            api.get(&format!("/api/builds/{bad}{path}")).await.error(400, "invalid_key");
        }
    }
    api.get("/nope").await.error(404, "no_route");
    // A client's request id is echoed, in the header and in error bodies.
    let a = api
        .call(
            Request::get(format!("/api/builds/{unknown}"))
                .header("x-request-id", "trace-42")
                .body(Body::empty())
                .unwrap(),
        )
        .await;
    assert_eq!(a.headers["x-request-id"], "trace-42");
    assert_eq!(a.error(404, "unknown_build")["error"]["id"], "trace-42");
    let a = api
        .call(Request::get("/healthz").header("x-request-id", "no spaces allowed").body(Body::empty()).unwrap())
        .await;
    assert_ne!(a.headers["x-request-id"], "no spaces allowed");
    api.call(Request::put("/api/recipes").body(Body::empty()).unwrap()).await.error(405, "method_not_allowed");
    api.get(&format!("/api/builds/{unknown}?wait=x")).await.error(400, "invalid_wait");
}

#[tokio::test]
async fn submitting_dedupes_normalizes_and_resolves_static_versions() {
    let api = InProc::new().await;
    let a = api
        .post(
            "/api/builds",
            r#"{"recipe": "hello", "os": "linux", "arch": "amd64",
                "plugins": [{"module": "example.com/shout"}, {"module": "example.com/greet"}, {"module": "example.com/shout", "version": "latest"}]}"#,
        )
        .await;
    assert_eq!(a.status, 202, "{}", a.text());
    let first = a.json();
    assert_eq!(first["state"], "queued");
    assert_eq!(first["version"], "v1.1.0", "latest skips the prerelease");
    let plugins: Vec<_> = first["plugins"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| format!("{}@{}", p["module"].as_str().unwrap(), p["version"].as_str().unwrap()))
        .collect();
    assert_eq!(plugins, ["example.com/greet@v0.2.0", "example.com/shout@v1.0.0"]);
    assert!(a.headers["location"].to_str().unwrap().ends_with(first["key"].as_str().unwrap()));

    // The same build asked differently: order, explicit versions, `v`-less.
    let b = api
        .post(
            "/api/builds",
            r#"{"recipe": "hello", "version": "1.1.0", "os": "linux", "arch": "amd64",
                "plugins": [{"module": "example.com/greet", "version": "v0.2.0"}, {"module": "example.com/shout", "version": "1.0.0"}]}"#,
        )
        .await;
    assert_eq!(b.status, 202);
    assert_eq!(b.json()["key"], first["key"]);

    // A prerelease only when asked for exactly.
    let pre = api
        .post(
            "/api/builds",
            r#"{"recipe": "hello", "version": "v1.2.0-beta.1", "os": "linux", "arch": "arm", "arm": "v6"}"#,
        )
        .await;
    assert_eq!(pre.status, 202, "{}", pre.text());
    assert_eq!(pre.json()["version"], "v1.2.0-beta.1");
    assert_eq!(pre.json()["platform"], "linux/arm/6");

    let n: i64 = sqlx::query_scalar("SELECT count(*) FROM builds").fetch_one(api.db.pool()).await.unwrap();
    assert_eq!(n, 2);

    let got = api.get(&format!("/api/builds/{}", first["key"].as_str().unwrap())).await;
    assert_eq!(got.status, 200);
    assert_eq!(got.json()["key"], first["key"]);
    assert_eq!(got.json()["links"]["binary"], format!("/api/builds/{}/binary", first["key"].as_str().unwrap()));
    // Its files do not exist yet.
    api.get(&format!("/api/builds/{}/artifact", first["key"].as_str().unwrap())).await.error(409, "not_ready");
}

#[tokio::test]
async fn many_identical_posts_at_once_make_one_build() {
    let api = InProc::new().await;
    let body = r#"{"recipe": "hello", "os": "windows", "arch": "amd64", "plugins": [{"module": "example.com/greet"}]}"#;
    let answers = futures::future::join_all((0..100).map(|_| api.post("/api/builds", body))).await;
    let keys: std::collections::BTreeSet<_> = answers
        .iter()
        .map(|a| {
            assert_eq!(a.status, 202, "{}", a.text());
            a.json()["key"].as_str().unwrap().to_owned()
        })
        .collect();
    assert_eq!(keys.len(), 1);
    let n: i64 = sqlx::query_scalar("SELECT count(*) FROM builds").fetch_one(api.db.pool()).await.unwrap();
    assert_eq!(n, 1);
}

#[tokio::test]
async fn cancel_needs_the_admin_token_and_ends_a_queued_build() {
    let api = InProc::new().await;
    let a = api.post("/api/builds", r#"{"recipe": "hello", "os": "linux", "arch": "arm64"}"#).await;
    let key = a.json()["key"].as_str().unwrap().to_owned();
    let del = |auth: Option<&str>| {
        let mut r = Request::delete(format!("/api/builds/{key}"));
        if let Some(a) = auth {
            r = r.header("authorization", a);
        }
        r.body(Body::empty()).unwrap()
    };
    let no = api.call(del(None)).await;
    no.error(401, "unauthorized");
    assert_eq!(no.headers["www-authenticate"], "Bearer");
    // A credential that is neither the admin token nor a known API token.
    let wrong = api.call(del(Some("Bearer wrong-token"))).await;
    wrong.error(401, "invalid_token");
    assert_eq!(wrong.headers["www-authenticate"], "Bearer error=\"invalid_token\"");
    // The same as the password of Basic auth (dev:dev).
    api.call(del(Some("Basic ZGV2OmRldg=="))).await.error(401, "invalid_token");
    let ok = api.call(del(Some("Bearer dev-admin-token"))).await;
    assert_eq!(ok.status, 200, "{}", ok.text());
    assert_eq!(ok.json()["state"], "cancelled");
    api.call(del(Some("Bearer dev-admin-token"))).await.error(409, "already_finished");

    // Retry needs the token too, and queues it again.
    let retry = |auth: &str| {
        Request::post(format!("/api/builds/{key}/retry")).header("authorization", auth).body(Body::empty()).unwrap()
    };
    api.call(retry("Bearer nope")).await.error(401, "invalid_token");
    let again = api.call(retry("Bearer dev-admin-token")).await;
    assert_eq!(again.status, 202, "{}", again.text());
    assert_eq!(again.json()["state"], "queued");
}

#[tokio::test]
async fn long_poll_returns_on_a_state_change_through_notify() {
    let api = InProc::new().await;
    let a = api.post("/api/builds", r#"{"recipe": "hello", "os": "darwin", "arch": "arm64"}"#).await;
    let key = a.json()["key"].as_str().unwrap().to_owned();
    let uri = format!("/api/builds/{key}?wait=60");
    let poll = api.get(&uri);
    let cancel = async {
        tokio::time::sleep(std::time::Duration::from_millis(300)).await;
        api.call(
            Request::delete(format!("/api/builds/{key}"))
                .header("authorization", "Bearer dev-admin-token")
                .body(Body::empty())
                .unwrap(),
        )
        .await
    };
    let (polled, cancelled) = tokio::join!(poll, cancel);
    assert_eq!(cancelled.status, 200);
    assert_eq!(polled.status, 200);
    assert_eq!(polled.json()["state"], "cancelled", "the long-poll saw the change");
    let metrics = api.get("/metrics").await.text();
    assert!(metrics.contains(r#"kiln_wait_seconds_count{kind="poll"} 1"#), "{metrics}");
}

#[tokio::test]
async fn recipes_health_metrics_page_and_signing_key() {
    let api = InProc::new().await;
    let r = api.get("/api/recipes").await;
    assert_eq!(r.status, 200);
    let names: Vec<_> =
        r.json()["recipes"].as_array().unwrap().iter().map(|r| r["name"].as_str().unwrap().to_owned()).collect();
    // The test-only recipes are `listed: false` (hidden; see
    // errors_say_what_is_missing_and_what_is_available for building them).
    assert_eq!(names, ["hello"]);
    let hello = r.json()["recipes"].as_array().unwrap().iter().find(|r| r["name"] == "hello").unwrap().clone();
    assert!(hello["platforms"].as_array().unwrap().contains(&json!("linux/arm/7")));
    assert_eq!(hello["plugins"]["allow"], json!(["example.com/*"]));

    assert_eq!(api.get("/healthz").await.status, 200);
    assert_eq!(api.get("/readyz").await.status, 200);
    let page = api.get("/").await;
    assert_eq!(page.status, 200);
    assert!(page.text().contains("/api/recipes"));

    api.get("/api/signing-key").await.error(404, "no_signing_key");
    let pk = kiln_artifact::keygen(&api.dir.path().join("kiln.key"), false).unwrap();
    let k = api.get("/api/signing-key").await;
    assert_eq!(k.status, 200);
    assert_eq!(kiln_artifact::PublicKey::parse(&k.text()).unwrap(), pk);

    api.post("/api/builds", r#"{"recipe": "hello", "os": "linux", "arch": "amd64"}"#).await;
    // What the janitor recorded shows up too.
    let queue = api.db.queue(kiln_queue::QueueSettings::default());
    let counts = json!({"requeued": 2, "failed": 1}).as_object().unwrap().clone();
    for _ in 0..2 {
        queue.record_janitor_run("rescue", "jan-1", chrono::Utc::now(), 3, None, &counts).await.unwrap();
    }
    let worker =
        |id: &str| kiln_queue::WorkerInfo { id: id.into(), host: "h".into(), recipes: vec![], version: "0".into() };
    for id in ["w-full", "w-fine", "w-gone"] {
        queue.register_worker(&worker(id)).await.unwrap();
    }
    queue.set_worker_disk("w-full", 3, true).await.unwrap();
    queue.set_worker_disk("w-fine", 5000, false).await.unwrap();
    queue.set_worker_state("w-gone", kiln_domain::WorkerState::Gone, None).await.unwrap();
    let m = api.get("/metrics").await;
    assert_eq!(m.status, 200);
    let text = m.text();
    assert!(text.contains(r#"kiln_worker_disk_low{worker="w-full"} 1"#), "{text}");
    assert!(text.contains(r#"kiln_worker_disk_free_bytes{worker="w-full"} 3145728"#), "{text}");
    assert!(text.contains(r#"kiln_worker_disk_low{worker="w-fine"} 0"#), "{text}");
    assert!(!text.contains("w-gone"), "a worker that left is not shown: {text}");
    assert!(text.contains(r#"kiln_builds{state="queued"} 1"#), "{text}");
    assert!(text.contains("kiln_queue_depth 1"), "{text}");
    assert!(text.contains(r#"route="/api/builds""#) && text.contains(r#"status="202""#), "{text}");
    assert!(text.contains(r#"kiln_janitor_changes{task="rescue",janitor="jan-1",what="requeued"} 4"#), "{text}");
    assert!(text.contains(r#"kiln_janitor_runs{task="rescue",janitor="jan-1"} 2"#), "{text}");
}

#[tokio::test]
async fn an_unreachable_database_is_a_503() {
    let api = InProc::new().await;
    api.db.pool().close().await;
    let key = "b".repeat(64);
    api.get(&format!("/api/builds/{key}")).await.error(503, "database_unavailable");
    api.get("/readyz").await.error(503, "not_ready");
    api.post("/api/builds", r#"{"recipe": "hello", "os": "linux", "arch": "amd64"}"#)
        .await
        .error(503, "database_unavailable");
}

/// `api`'s state served by [`kiln_api::run`] on a loopback socket.
struct Served {
    addr: std::net::SocketAddr,
    stop: tokio::sync::oneshot::Sender<()>,
    server: tokio::task::JoinHandle<std::io::Result<()>>,
}

impl Served {
    async fn start(api: &InProc) -> Served {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let server = tokio::spawn(kiln_api::run(listener, api.state.clone(), async {
            let _ = stopped.await;
        }));
        Served { addr, stop, server }
    }

    /// Signal shutdown; `run` must return, without error, within 15 s.
    async fn stop(self) {
        let _ = self.stop.send(());
        tokio::time::timeout(std::time::Duration::from_secs(15), self.server).await.unwrap().unwrap().unwrap();
    }
}

#[tokio::test]
async fn run_serves_a_socket_and_stops_on_shutdown() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let api = InProc::new().await;
    let served = Served::start(&api).await;
    let addr = served.addr;
    let raw = |request: &'static [u8]| async move {
        let mut conn = tokio::net::TcpStream::connect(addr).await.unwrap();
        conn.write_all(request).await.unwrap();
        let mut answer = Vec::new();
        conn.read_to_end(&mut answer).await.unwrap();
        String::from_utf8_lossy(&answer).into_owned()
    };
    // Raw bytes that are not even ASCII in the request line: hyper refuses
    // the URI itself (400, before any handler); the server lives on.
    let answer = raw(
        b"GET /api/compat?recipe=hello&os=linux&arch=amd64&p=\xff\xfe HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
    )
    .await;
    assert!(answer.starts_with("HTTP/1.1 400"), "{answer}");
    // Percent-encoded, they reach the handler: 400 JSON naming the parameter.
    let answer = raw(
        b"GET /api/compat?recipe=hello&os=linux&arch=amd64&p=%ff%fe HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
    )
    .await;
    assert!(answer.starts_with("HTTP/1.1 400"), "{answer}");
    assert!(answer.contains(r#""code":"invalid_encoding""#) && answer.contains(r#""field":"p""#), "{answer}");
    served.stop().await;
}

/// This process's threads named `kiln-api-io-*` (Linux keeps a thread's
/// name in `/proc/self/task/<id>/comm`; nextest runs each test in a
/// process of its own).
fn io_threads() -> usize {
    std::fs::read_dir("/proc/self/task")
        .unwrap()
        .filter_map(|t| std::fs::read_to_string(t.unwrap().path().join("comm")).ok())
        .filter(|name| name.starts_with("kiln-api-io-"))
        .count()
}

#[tokio::test]
async fn run_serves_on_api_io_threads_and_ends_them_on_shutdown() {
    let api = InProc::with(|c| c.api.io_threads = 3).await;
    let served = Served::start(&api).await;
    let addr = served.addr;
    // Many connections at once, each answered, whichever thread takes it.
    let clients = (0..12).map(|_| {
        tokio::spawn(async move {
            let http = reqwest::Client::new();
            let url = format!("http://{addr}/healthz");
            (0..5).map(|_| http.get(&url).send()).collect::<futures::future::JoinAll<_>>().await
        })
    });
    for answers in futures::future::join_all(clients).await {
        for answer in answers.unwrap() {
            assert_eq!(answer.unwrap().status(), 200);
        }
    }
    assert_eq!(io_threads(), 3, "api.io_threads threads serve");
    served.stop().await;
    // run has joined its threads: none of them still holds the socket.
    assert!(tokio::net::TcpStream::connect(addr).await.is_err(), "nothing listens once run has returned");
    // The kernel drops a joined thread's task an instant after the join.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
    while io_threads() > 0 {
        assert!(std::time::Instant::now() < deadline, "serving threads outlive the server");
        tokio::time::sleep(std::time::Duration::from_millis(10)).await;
    }
}
