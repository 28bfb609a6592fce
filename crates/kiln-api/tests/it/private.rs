//! Private farms over real HTTP and a real Postgres: scopes route by route,
//! revocation seen by two APIs at once (NOTIFY), rate limits per token and
//! per address, the build quota under parallel submits, and what a 100 MB
//! body or a slowloris client costs (nothing the others notice).

use std::time::Duration;

use kiln_api::AppState;
use kiln_config::{AuthMode, Config, RateLimit};
use kiln_domain::{BuildKey, Scopes, TokenSecret};
use kiln_queue::{Queue, QueueSettings};
use kiln_storage::{ObjectKey, ObjectName, Storage};
use kiln_testkit::TestDb;
use reqwest::StatusCode;
use serde_json::{Value, json};
use sha2::Digest;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::farm::test_config;

/// An API served on a loopback socket by `kiln_api::run`.
pub struct Served {
    pub url: String,
    pub state: AppState,
    pub addr: std::net::SocketAddr,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
}

impl Drop for Served {
    fn drop(&mut self) {
        if let Some(s) = self.stop.take() {
            let _ = s.send(());
        }
    }
}

/// The configuration of a farm over `db` and `dir`, edited.
pub fn config(db: &TestDb, dir: &std::path::Path, edit: &dyn Fn(&mut Config)) -> Config {
    let mut config =
        test_config(&[("DATABASE_URL", db.url().to_owned()), ("KILN_DATA_DIR", dir.display().to_string())]);
    edit(&mut config);
    config
}

/// Serve an API over `db` and `dir` on a fresh port.
pub async fn serve(db: &TestDb, dir: &std::path::Path, edit: &dyn Fn(&mut Config)) -> Served {
    let config = config(db, dir, edit);
    let storage = Storage::from_config(&config.storage).unwrap();
    let queue = db.queue(QueueSettings::from(&config.queue));
    let state = AppState::new(config, queue, storage);
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    tokio::spawn(kiln_api::run(listener, state.clone(), async {
        let _ = stopped.await;
    }));
    Served { url: format!("http://{addr}"), state, addr, stop: Some(stop) }
}

/// A new token with `scopes`, stored as `kiln-janitor token create` stores it.
pub async fn token(queue: &Queue, name: &str, scopes: &str) -> (i64, String) {
    let nanos = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_nanos();
    let random: [u8; 32] = sha2::Sha256::digest(format!("{name}-{nanos}-{}", std::process::id())).into();
    let secret = TokenSecret::from_random(random);
    let t = queue.create_token(name, &Scopes::parse_list(scopes).unwrap(), &secret.hash()).await.unwrap();
    (t.id, secret.expose().to_owned())
}

fn private(c: &mut Config) {
    c.api.auth.mode = AuthMode::Tokens;
    c.api.compat_timeout_secs = 1;
}

/// Status, `WWW-Authenticate` and the error code (or the JSON).
async fn answer(r: reqwest::RequestBuilder) -> (StatusCode, Option<String>, Value) {
    let r = r.send().await.unwrap();
    let status = r.status();
    let www = r.headers().get("www-authenticate").map(|v| v.to_str().unwrap().to_owned());
    let body = r.bytes().await.unwrap();
    (status, www, serde_json::from_slice(&body).unwrap_or(Value::Null))
}

fn code(j: &Value) -> &str {
    j["error"]["code"].as_str().unwrap_or_default()
}

/// Send `probe` until it is refused `401 invalid_token`: a revocation
/// reaches an API's token cache through a notification, so not at once.
/// Fails after 30 s, naming `who` as still accepting the token.
async fn until_refused(probe: impl Fn() -> reqwest::RequestBuilder, who: &str) {
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    loop {
        let (s, _, j) = answer(probe()).await;
        if s == StatusCode::UNAUTHORIZED {
            assert_eq!(code(&j), "invalid_token");
            return;
        }
        assert!(std::time::Instant::now() < deadline, "{who} still accepts a revoked token");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

/// Take every queued build to `succeeded` with `binary` in storage, as a worker would.
pub async fn succeed_all(queue: &Queue, storage: &Storage, binary: &'static [u8]) -> Vec<BuildKey> {
    let mut keys = Vec::new();
    while let Some(claim) = queue.claim("w", &[]).await.unwrap() {
        let key = claim.lease.key.clone();
        storage.put_bytes(&ObjectKey::new(&key, ObjectName::Binary), binary).await.unwrap();
        queue.complete(&claim.lease, &kiln_testkit::rows::manifest(&claim.spec, "w")).await.unwrap();
        keys.push(key);
    }
    keys
}

#[tokio::test]
async fn each_scope_is_allowed_and_refused_where_it_should_be() {
    let db = TestDb::new().await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    let api = serve(&db, dir.path(), &private).await;
    let queue = api.state.queue();
    let (_, download) = token(queue, "reader", "download").await;
    let (_, submit) = token(queue, "submitter", "submit").await;
    let (_, both) = token(queue, "ci", "download,submit").await;
    let (_, admin) = token(queue, "ops", "admin").await;
    let http = reqwest::Client::new();
    let url = |p: &str| format!("{}{p}", api.url);
    let body = json!({"recipe": "hello", "os": "linux", "arch": "amd64"});
    let post = |t: Option<&str>| {
        let r = http.post(url("/api/builds")).json(&body);
        match t {
            Some(t) => r.bearer_auth(t),
            None => r,
        }
    };

    // submit: only a token with `submit` queues a build.
    let (s, www, j) = answer(post(None)).await;
    assert_eq!((s, www.as_deref(), code(&j)), (StatusCode::UNAUTHORIZED, Some("Bearer"), "unauthorized"), "{j}");
    let (s, _, j) = answer(post(Some(&download))).await;
    assert_eq!((s, code(&j)), (StatusCode::FORBIDDEN, "insufficient_scope"), "{j}");
    assert!(j["error"]["message"].as_str().unwrap().contains("submit"), "{j}");
    let (s, _, j) = answer(post(Some(&submit))).await;
    assert_eq!(s, StatusCode::ACCEPTED, "{j}");
    let key = j["key"].as_str().unwrap().to_owned();

    // download: reading the build.
    let get = |p: String, t: Option<&str>| {
        let r = http.get(url(&p));
        match t {
            Some(t) => r.bearer_auth(t),
            None => r,
        }
    };
    let (s, _, j) = answer(get(format!("/api/builds/{key}"), None)).await;
    assert_eq!((s, code(&j)), (StatusCode::UNAUTHORIZED, "unauthorized"));
    let (s, _, j) = answer(get(format!("/api/builds/{key}"), Some(&submit))).await;
    assert_eq!((s, code(&j)), (StatusCode::FORBIDDEN, "insufficient_scope"));
    let (s, _, j) = answer(get(format!("/api/builds/{key}"), Some(&download))).await;
    assert_eq!((s, j["state"].as_str()), (StatusCode::OK, Some("queued")), "{j}");
    let (s, _, _) = answer(get(format!("/api/builds/{key}/log"), None)).await;
    assert_eq!(s, StatusCode::UNAUTHORIZED);

    // A compat miss needs download and submit; a hit download alone.
    let compat = "/api/compat?recipe=hello&os=linux&arch=arm64".to_owned();
    let (s, _, j) = answer(get(compat.clone(), Some(&download))).await;
    assert_eq!((s, code(&j)), (StatusCode::FORBIDDEN, "insufficient_scope"), "{j}");
    assert!(j["error"]["message"].as_str().unwrap().contains("submit"), "{j}");
    let (s, _, j) = answer(get(compat.clone(), Some(&submit))).await;
    assert_eq!((s, code(&j)), (StatusCode::FORBIDDEN, "insufficient_scope"), "{j}");
    let (s, _, j) = answer(get(compat.clone(), Some(&both))).await;
    assert_eq!((s, code(&j)), (StatusCode::GATEWAY_TIMEOUT, "build_pending"), "a miss starts the build: {j}");
    let compat_key = BuildKey::parse(j["error"]["key"].as_str().unwrap()).unwrap();
    assert_eq!(succeed_all(queue, api.state.storage(), b"hello binary").await.len(), 2);
    let r = get(compat.clone(), Some(&download)).send().await.unwrap();
    assert_eq!(r.status(), StatusCode::OK);
    assert_eq!(r.bytes().await.unwrap().as_ref(), b"hello binary");
    let (s, _, j) = answer(get(compat.clone(), None)).await;
    assert_eq!((s, code(&j)), (StatusCode::UNAUTHORIZED, "unauthorized"), "a hit still needs a token: {j}");
    let r = get(format!("/api/builds/{compat_key}/binary"), Some(&download)).send().await.unwrap();
    assert_eq!(r.status(), StatusCode::OK);

    // admin: cancel and retry; scopes stand alone.
    let del = |t: &str| http.delete(url(&format!("/api/builds/{key}"))).bearer_auth(t);
    let (s, _, j) = answer(del(&both)).await;
    assert_eq!((s, code(&j)), (StatusCode::FORBIDDEN, "insufficient_scope"));
    let (s, _, j) = answer(del(&admin)).await;
    assert_eq!((s, code(&j)), (StatusCode::CONFLICT, "already_finished"), "admin passes the guard: {j}");
    let (s, _, _) = answer(get(format!("/api/builds/{key}"), Some(&admin))).await;
    assert_eq!(s, StatusCode::FORBIDDEN, "admin does not imply download");
    let retry = http.post(url(&format!("/api/builds/{key}/retry"))).bearer_auth(&download);
    assert_eq!(answer(retry).await.0, StatusCode::FORBIDDEN);

    // The bootstrap admin (the configuration's admin token) may do anything.
    let (s, _, _) = answer(get(format!("/api/builds/{key}"), Some("dev-admin-token"))).await;
    assert_eq!(s, StatusCode::OK);
    // A token as the password of Basic auth, as docker login sends it.
    let r = http.get(url(&format!("/api/builds/{key}"))).basic_auth("anyone", Some(&download));
    assert_eq!(answer(r).await.0, StatusCode::OK);
    // An unknown token is refused everywhere, even where none is needed.
    let forged = TokenSecret::from_random([9; 32]);
    let (s, www, j) = answer(get("/api/recipes".into(), Some(forged.expose()))).await;
    assert_eq!((s, code(&j)), (StatusCode::UNAUTHORIZED, "invalid_token"));
    assert_eq!(www.as_deref(), Some("Bearer error=\"invalid_token\""));
    // Open routes stay open.
    for open in ["/api/recipes", "/api/recipes/hello", "/healthz", "/readyz", "/api/openapi.json", "/"] {
        assert_eq!(get(open.into(), None).send().await.unwrap().status(), StatusCode::OK, "{open}");
    }
    let metrics = get("/metrics".into(), None).send().await.unwrap().text().await.unwrap();
    for reason in ["unauthorized", "insufficient_scope", "invalid_token"] {
        assert!(metrics.contains(&format!("kiln_http_rejections_total{{reason=\"{reason}\"}}")), "{reason}\n{metrics}");
    }
    // last_used is recorded.
    let used: i64 = sqlx::query_scalar("SELECT count(*) FROM api_tokens WHERE last_used IS NOT NULL")
        .fetch_one(db.pool())
        .await
        .unwrap();
    assert!(used >= 3, "{used}");
}

#[tokio::test]
async fn an_open_farm_needs_tokens_for_admin_only() {
    let db = TestDb::new().await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    let api = serve(&db, dir.path(), &|c| c.api.admin_token = None).await;
    let (_, reader) = token(api.state.queue(), "reader", "download").await;
    let (_, ops) = token(api.state.queue(), "ops", "admin").await;
    let http = reqwest::Client::new();
    let body = json!({"recipe": "hello", "os": "linux", "arch": "amd64"});
    let (s, _, j) = answer(http.post(format!("{}/api/builds", api.url)).json(&body)).await;
    assert_eq!(s, StatusCode::ACCEPTED);
    let key = j["key"].as_str().unwrap().to_owned();
    let (s, _, _) = answer(http.post(format!("{}/api/builds", api.url)).json(&body).bearer_auth(&reader)).await;
    assert!(s == StatusCode::OK || s == StatusCode::ACCEPTED, "a token adds to what anyone may do: {s}");
    let del = |t: Option<&str>| {
        let r = http.delete(format!("{}/api/builds/{key}", api.url));
        if let Some(t) = t { r.bearer_auth(t) } else { r }
    };
    assert_eq!(code(&answer(del(None)).await.2), "unauthorized");
    assert_eq!(code(&answer(del(Some(&reader))).await.2), "insufficient_scope");
    let (s, _, j) = answer(del(Some(&ops))).await;
    assert_eq!((s, j["state"].as_str()), (StatusCode::OK, Some("cancelled")), "{j}");
}

#[tokio::test]
async fn a_revoked_token_is_refused_by_every_api_at_once() {
    let db = TestDb::new().await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    let one = serve(&db, dir.path(), &private).await;
    let two = serve(&db, dir.path(), &private).await;
    let (id, secret) = token(one.state.queue(), "leaky", "download").await;
    let http = reqwest::Client::new();
    let probe = |api: &Served| http.get(format!("{}/api/builds/{}", api.url, "0".repeat(64))).bearer_auth(&secret);
    // Both APIs know (and cache) the token: an unknown build, not a refusal.
    for api in [&one, &two] {
        let (s, _, j) = answer(probe(api)).await;
        assert_eq!((s, code(&j)), (StatusCode::NOT_FOUND, "unknown_build"), "{j}");
    }
    // Revoked in the database (as `kiln-janitor token revoke` does): the
    // caches would accept it forever; only the notification can end it.
    assert!(one.state.queue().revoke_token(id).await.unwrap().is_some());
    for api in [&one, &two] {
        until_refused(|| probe(api), &api.url).await;
    }
}

/// An admin makes, lists and revokes tokens over HTTP, as `kiln-janitor
/// token` does: only `admin` may; a new secret works on another API with its
/// scopes and no more; the list never shows a secret; a revocation through
/// one API is refused by the other at once; bad input makes nothing and says
/// what to fix.
#[tokio::test]
async fn an_admin_makes_lists_and_revokes_tokens_over_http() {
    let db = TestDb::new().await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    let one = serve(&db, dir.path(), &private).await;
    let two = serve(&db, dir.path(), &private).await;
    let (_, ops) = token(one.state.queue(), "ops", "admin").await;
    let (_, reader) = token(one.state.queue(), "reader", "download,submit").await;
    let bootstrap = one.state.config().api.admin_token.as_ref().expect("config.test.yml has one").expose().to_owned();
    let http = reqwest::Client::new();
    let tokens = format!("{}/api/tokens", one.url);
    let new = |name: &str, scopes: &[&str]| json!({"name": name, "scopes": scopes});

    // Only an admin.
    let (s, www, j) = answer(http.get(&tokens)).await;
    assert_eq!((s, code(&j)), (StatusCode::UNAUTHORIZED, "unauthorized"), "{j}");
    assert!(www.is_some());
    for r in [
        http.get(&tokens).bearer_auth(&reader),
        http.post(&tokens).bearer_auth(&reader).json(&new("me", &["admin"])),
        http.delete(format!("{tokens}/1")).bearer_auth(&reader),
    ] {
        let (s, _, j) = answer(r).await;
        assert_eq!((s, code(&j)), (StatusCode::FORBIDDEN, "insufficient_scope"), "{j}");
    }

    // Made by an admin token and by the configuration's admin token.
    let (s, _, made) = answer(http.post(&tokens).bearer_auth(&ops).json(&new("ci", &["submit", "download"]))).await;
    assert_eq!(s, StatusCode::CREATED, "{made}");
    let secret = made["secret"].as_str().unwrap().to_owned();
    assert!(TokenSecret::parse(&secret).is_some(), "{secret}");
    assert_eq!(made["token"]["name"], "ci");
    assert_eq!(made["token"]["scopes"], json!(["download", "submit"]));
    assert!(made["token"]["revoked_at"].is_null());
    let id = made["token"]["id"].as_i64().unwrap();
    let (s, _, other) = answer(http.post(&tokens).bearer_auth(&bootstrap).json(&new("ops 2", &["admin"]))).await;
    assert_eq!(s, StatusCode::CREATED, "{other}");
    assert_ne!(other["secret"], made["secret"]);

    // The new token works on the other API, with its scopes and no more.
    let build = json!({"recipe": "hello", "os": "linux", "arch": "amd64"});
    let (s, _, j) = answer(http.post(format!("{}/api/builds", two.url)).bearer_auth(&secret).json(&build)).await;
    assert!(s == StatusCode::ACCEPTED || s == StatusCode::OK, "{s} {j}");
    let (s, _, j) = answer(http.get(format!("{}/api/tokens", two.url)).bearer_auth(&secret)).await;
    assert_eq!((s, code(&j)), (StatusCode::FORBIDDEN, "insufficient_scope"), "{j}");

    // Listed, oldest first, never with a secret.
    let listed = http.get(&tokens).bearer_auth(&ops).send().await.unwrap();
    assert_eq!(listed.headers()["cache-control"], "no-store");
    let text = listed.text().await.unwrap();
    assert!(!text.contains(&secret[5..]) && !text.contains("kiln_"), "a secret in the list: {text}");
    let list: Value = serde_json::from_str(&text).unwrap();
    let names: Vec<&str> = list.as_array().unwrap().iter().map(|t| t["name"].as_str().unwrap()).collect();
    assert_eq!(names, ["ops", "reader", "ci", "ops 2"]);

    // Revoked through one API: the other refuses it at once (its cache holds it).
    let (s, _, j) = answer(http.delete(format!("{tokens}/{id}")).bearer_auth(&ops)).await;
    assert_eq!(s, StatusCode::OK, "{j}");
    assert!(j["revoked_at"].is_string(), "{j}");
    until_refused(|| http.get(format!("{}/api/recipes/hello", two.url)).bearer_auth(&secret), "the other API").await;
    let (s, _, again) = answer(http.delete(format!("{tokens}/{id}")).bearer_auth(&ops)).await;
    assert_eq!((s, &again["revoked_at"]), (StatusCode::OK, &j["revoked_at"]), "revoking twice keeps the first time");

    // Bad input: the field and what to fix; nothing is made.
    let cases = [
        (new("", &["download"]), "name", "invalid_name"),
        (new(&"x".repeat(101), &["download"]), "name", "invalid_name"),
        (new("a\nb", &["download"]), "name", "invalid_name"),
        (new("x", &[]), "scopes", "invalid_scope"),
        (new("x", &["root"]), "scopes", "invalid_scope"),
        (new("x", &["admin'; DROP TABLE api_tokens; --"]), "scopes", "invalid_scope"),
        (json!({"name": "x", "scopes": "admin"}), "scopes", "invalid_body"),
        (json!({"name": "x"}), "body", "invalid_body"),
        (json!({"name": "x", "scopes": ["admin"], "secret": format!("kiln_{}", "0".repeat(64))}), "", "invalid_body"),
    ];
    for (body, field, want) in cases {
        let (s, _, j) = answer(http.post(&tokens).bearer_auth(&ops).json(&body)).await;
        assert_eq!((s, code(&j)), (StatusCode::BAD_REQUEST, want), "{body}: {j}");
        if !field.is_empty() {
            assert_eq!(j["error"]["field"].as_str(), Some(field), "{body}: {j}");
        }
        assert!(!j["error"]["message"].as_str().unwrap_or_default().is_empty(), "{j}");
    }
    let (s, _, j) =
        answer(http.post(&tokens).bearer_auth(&ops).body("{").header("content-type", "application/json")).await;
    assert_eq!((s, code(&j)), (StatusCode::BAD_REQUEST, "invalid_body"), "{j}");
    for (id, status, want) in [
        ("abc", StatusCode::BAD_REQUEST, "invalid_token_id"),
        ("0", StatusCode::BAD_REQUEST, "invalid_token_id"),
        ("-1", StatusCode::BAD_REQUEST, "invalid_token_id"),
        ("+1", StatusCode::BAD_REQUEST, "invalid_token_id"),
        ("99999999999999999999", StatusCode::BAD_REQUEST, "invalid_token_id"),
        ("999999", StatusCode::NOT_FOUND, "unknown_token"),
    ] {
        let (s, _, j) = answer(http.delete(format!("{tokens}/{id}")).bearer_auth(&ops)).await;
        assert_eq!((s, code(&j)), (status, want), "{id}: {j}");
    }
    assert_eq!(one.state.queue().tokens().await.unwrap().len(), 4, "a refused request made a token");
}

fn limited(c: &mut Config) {
    private(c);
    c.api.limits.per_token = RateLimit { requests_per_second: 1, burst: 5 };
    c.api.limits.per_address = RateLimit { requests_per_second: 1, burst: 5 };
    c.api.limits.trusted_proxies = vec!["127.0.0.1".into()];
}

#[tokio::test]
async fn a_burst_gets_429_with_retry_after_while_another_token_is_unaffected() {
    let db = TestDb::new().await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    let api = serve(&db, dir.path(), &limited).await;
    let (_, noisy) = token(api.state.queue(), "noisy", "download").await;
    let (_, quiet) = token(api.state.queue(), "quiet", "download").await;
    let http = reqwest::Client::new();
    let path = format!("{}/api/builds/{}", api.url, "0".repeat(64));

    let mut refused = 0;
    for _ in 0..30 {
        let r = http.get(&path).bearer_auth(&noisy).send().await.unwrap();
        if r.status() == StatusCode::TOO_MANY_REQUESTS {
            let after: u64 = r.headers()["retry-after"].to_str().unwrap().parse().unwrap();
            assert!(after >= 1, "{after}");
            let j: Value = r.json().await.unwrap();
            assert_eq!(j["error"]["code"], "rate_limited", "{j}");
            assert_eq!(j["status_code"], 429);
            refused += 1;
        } else {
            assert_eq!(r.status(), StatusCode::NOT_FOUND);
        }
    }
    assert!(refused >= 20, "a burst of 5 at 1/s lets few of 30 quick requests through, {refused} refused");
    // Another token has its own budget: its burst is whole (4 now, 1 below).
    for _ in 0..4 {
        assert_eq!(http.get(&path).bearer_auth(&quiet).send().await.unwrap().status(), StatusCode::NOT_FOUND);
    }

    // Anonymous requests are limited per client address; behind a trusted
    // proxy (127.0.0.1 here) the address is X-Forwarded-For's.
    let recipes = format!("{}/api/recipes", api.url);
    let anon = |addr: &str| http.get(&recipes).header("x-forwarded-for", addr).send();
    let mut statuses = Vec::new();
    for _ in 0..15 {
        statuses.push(anon("203.0.113.7").await.unwrap().status());
    }
    assert!(statuses.contains(&StatusCode::TOO_MANY_REQUESTS), "{statuses:?}");
    for _ in 0..5 {
        assert_eq!(anon("203.0.113.8").await.unwrap().status(), StatusCode::OK, "another address is unaffected");
    }
    // The noisy token, not its address, was limited: the quiet one still passes.
    assert_eq!(http.get(&path).bearer_auth(&quiet).send().await.unwrap().status(), StatusCode::NOT_FOUND);
    let metrics = http.get(format!("{}/metrics", api.url)).bearer_auth("dev-admin-token").send().await.unwrap();
    let metrics = metrics.text().await.unwrap();
    assert!(metrics.contains("kiln_http_rejections_total{reason=\"rate_token\"}"), "{metrics}");
    assert!(metrics.contains("kiln_http_rejections_total{reason=\"rate_address\"}"), "{metrics}");
}

#[tokio::test]
async fn the_build_quota_holds_under_50_parallel_distinct_submits() {
    let db = TestDb::new().await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    const QUOTA: u32 = 4;
    let api = serve(&db, dir.path(), &|c| {
        private(c);
        c.api.limits.builds_per_token = QUOTA;
    })
    .await;
    let (id, ci) = token(api.state.queue(), "ci", "submit,download").await;
    let (_, other) = token(api.state.queue(), "other", "submit").await;
    let http = reqwest::Client::new();
    let mut bodies = Vec::new();
    for version in ["v1.0.0", "v1.1.0", "v1.2.0-beta.1"] {
        for (os, arch) in [("linux", "amd64"), ("linux", "arm64"), ("darwin", "arm64"), ("windows", "amd64")] {
            for plugins in [
                json!([]),
                json!([{"module": "example.com/greet", "version": "v0.1.0"}]),
                json!([{"module": "example.com/shout"}]),
                json!([{"module": "example.com/wave", "version": "v0.3.0"}]),
                json!([{"module": "example.com/whisper", "version": "v2.0.0"}]),
            ] {
                bodies.push(json!({"recipe": "hello", "version": version, "os": os, "arch": arch, "plugins": plugins}));
            }
        }
    }
    bodies.truncate(50);
    let posts = bodies.iter().map(|b| http.post(format!("{}/api/builds", api.url)).bearer_auth(&ci).json(b).send());
    let answers = futures::future::join_all(posts).await;
    let mut accepted = 0;
    let mut refused = 0;
    for r in answers {
        let r = r.unwrap();
        match r.status() {
            StatusCode::ACCEPTED => accepted += 1,
            StatusCode::TOO_MANY_REQUESTS => {
                assert!(r.headers().contains_key("retry-after"));
                let j: Value = r.json().await.unwrap();
                assert_eq!(j["error"]["code"], "build_quota", "{j}");
                refused += 1;
            }
            s => panic!("{s}: {}", r.text().await.unwrap()),
        }
    }
    assert_eq!((accepted, refused), (QUOTA, 50 - QUOTA));
    assert_eq!(api.state.queue().active_builds_of(id).await.unwrap(), i64::from(QUOTA));
    let n: i64 = sqlx::query_scalar("SELECT count(*) FROM builds").fetch_one(db.pool()).await.unwrap();
    assert_eq!(n, i64::from(QUOTA), "nothing else was queued");
    // Another token's quota is its own.
    let r = http.post(format!("{}/api/builds", api.url)).bearer_auth(&other).json(&bodies[49]).send().await.unwrap();
    assert_eq!(r.status(), StatusCode::ACCEPTED);
}

#[tokio::test]
async fn a_100_mb_body_and_a_slowloris_are_cut_off_while_others_are_served() {
    let db = TestDb::new().await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    let api = serve(&db, dir.path(), &|c| c.api.limits.header_read_timeout_secs = 2).await;
    let addr = api.addr;
    let http = reqwest::Client::new();
    const HUNDRED_MB: usize = 100 * 1024 * 1024;

    // Announced: refused at the headers, the body never read.
    let mut conn = tokio::net::TcpStream::connect(addr).await.unwrap();
    let head = format!(
        "POST /api/builds HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: {HUNDRED_MB}\r\n\r\n"
    );
    conn.write_all(head.as_bytes()).await.unwrap();
    let answer = read_head(&mut conn).await;
    assert!(answer.starts_with("HTTP/1.1 413"), "{answer}");
    assert!(answer.contains("body_too_large"), "{answer}");

    // Chunked (no length announced), on a route that reads no body and on
    // one that does: cut off at api.max_body_bytes, the rest never read.
    for path in ["/api/builds", "/api/recipes"] {
        let method = if path == "/api/builds" { "POST" } else { "GET" };
        let mut conn = tokio::net::TcpStream::connect(addr).await.unwrap();
        let head = format!("{method} {path} HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n");
        conn.write_all(head.as_bytes()).await.unwrap();
        let chunk = format!("{:x}\r\n{}\r\n", 64 * 1024, "a".repeat(64 * 1024));
        let mut sent = 0;
        while sent < HUNDRED_MB {
            match tokio::time::timeout(Duration::from_secs(5), conn.write_all(chunk.as_bytes())).await {
                Ok(Ok(())) => sent += 64 * 1024,
                // The server stopped reading (a full window) or closed.
                _ => break,
            }
        }
        assert!(sent < HUNDRED_MB / 4, "{path}: the server read {sent} bytes of a 100 MB body");
        if path == "/api/builds" {
            let answer = read_head(&mut conn).await;
            assert!(answer.starts_with("HTTP/1.1 413"), "{answer}");
        }
    }

    // Slowloris: 50 connections trickling their headers a byte at a time.
    let trickle = b"GET /healthz HTTP/1.1\r\nHost: x\r\nX-Slow: ".to_vec();
    let slow: Vec<_> = (0..50)
        .map(|_| {
            let trickle = trickle.clone();
            tokio::spawn(async move {
                let mut conn = tokio::net::TcpStream::connect(addr).await.unwrap();
                let started = std::time::Instant::now();
                for byte in trickle.iter().chain(std::iter::repeat(&b'a')) {
                    if conn.write_all(&[*byte]).await.is_err() {
                        break;
                    }
                    // Closed by the server?
                    let mut buf = [0u8; 256];
                    if let Ok(r) = tokio::time::timeout(Duration::from_millis(100), conn.read(&mut buf)).await {
                        match r {
                            Ok(0) | Err(_) => break,
                            Ok(n) => assert!(!String::from_utf8_lossy(&buf[..n]).contains("200 OK")),
                        }
                    }
                    assert!(started.elapsed() < Duration::from_secs(60), "a slowloris connection was never closed");
                }
                started.elapsed()
            })
        })
        .collect();
    // Meanwhile everyone else is served.
    for _ in 0..40 {
        let r = http.get(format!("{}/healthz", api.url)).send().await.unwrap();
        assert_eq!(r.status(), StatusCode::OK);
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    for s in slow {
        let held = s.await.unwrap();
        assert!(held >= Duration::from_secs(1), "closed by the header timeout, not at once: {held:?}");
    }
    assert_eq!(http.get(format!("{}/readyz", api.url)).send().await.unwrap().status(), StatusCode::OK);
}

/// The status line and headers of an answer (and what body came with them).
async fn read_head(conn: &mut tokio::net::TcpStream) -> String {
    let mut out = Vec::new();
    let mut buf = [0u8; 4096];
    loop {
        let n =
            tokio::time::timeout(Duration::from_secs(30), conn.read(&mut buf)).await.expect("an answer").unwrap_or(0);
        out.extend_from_slice(&buf[..n]);
        if n == 0 || out.windows(4).any(|w| w == b"\r\n\r\n") && out.len() > 200 {
            return String::from_utf8_lossy(&out).into_owned();
        }
    }
}

/// The real binaries: `kiln-janitor token create` prints the secret once,
/// `kiln-api` (logging at debug) never writes it, whatever it is used for,
/// and the `kiln` CLI sends it from `$KILN_TOKEN` or `--token`.
#[tokio::test]
async fn a_token_never_appears_in_logs_and_the_cli_sends_it() {
    let mut farm = kiln_testkit::farm::Farm::new().await;
    farm.set("KILN_AUTH_MODE", "tokens").set("RUST_LOG", "debug").set("KILN_COMPAT_TIMEOUT", "1");
    farm.set("KILN_ADMIN_TOKEN", "log-test-admin");
    farm.migrate();
    let mut create =
        farm.spawn("kiln-janitor", "create", &["token", "create", "--name", "ci", "--scopes", "download,submit"]);
    assert!(create.wait_timeout(Duration::from_secs(60)).unwrap().success(), "{}", create.output());
    let secret = create.output().lines().find(|l| l.starts_with("kiln_")).unwrap().to_owned();
    let api = farm.start_api().await;
    let http = reqwest::Client::new();
    let url = |p: &str| format!("{}{p}", farm.url());

    let body = json!({"recipe": "hello", "os": "linux", "arch": "amd64"});
    let r = http.post(url("/api/builds")).bearer_auth(&secret).json(&body).send().await.unwrap();
    assert_eq!(r.status(), StatusCode::ACCEPTED);
    let key = r.json::<Value>().await.unwrap()["key"].as_str().unwrap().to_owned();
    // Used as Basic, mangled, on open routes and refused ones.
    let mangled = format!("{}0", &secret[..secret.len() - 1]);
    for auth in [format!("Bearer {secret}"), format!("Bearer {mangled}"), format!("Bearer {secret} extra")] {
        for path in ["/api/recipes", "/api/compat?recipe=hello&os=linux&arch=amd64", "/nope"] {
            let _ = http.get(url(path)).header("authorization", &auth).send().await.unwrap();
        }
    }
    let _ = http.get(url(&format!("/api/builds/{key}"))).basic_auth("docker", Some(&secret)).send().await.unwrap();
    // A token made over HTTP: its secret is in the answer and nowhere else.
    let r = http.post(url("/api/tokens")).bearer_auth("log-test-admin");
    let made: Value =
        r.json(&json!({"name": "web", "scopes": ["download"]})).send().await.unwrap().json().await.unwrap();
    let made = made["secret"].as_str().expect("a secret").to_owned();
    let _ = http.get(url("/api/tokens")).bearer_auth("log-test-admin").send().await.unwrap();

    // The CLI: refused without a token, served with one.
    let kiln = |token: Option<(&str, &str)>| {
        let mut cmd = std::process::Command::new(kiln_testkit::farm::bin("kiln"));
        cmd.args(["--server", &farm.url(), "status", &key]).env_remove("KILN_TOKEN");
        match token {
            Some(("env", t)) => {
                cmd.env("KILN_TOKEN", t);
            }
            Some((_, t)) => {
                cmd.args(["--token", t]);
            }
            None => {}
        }
        cmd.output().unwrap()
    };
    let refused = kiln(None);
    assert_eq!(refused.status.code(), Some(2), "{}", String::from_utf8_lossy(&refused.stderr));
    assert!(String::from_utf8_lossy(&refused.stderr).contains("unauthorized"), "{refused:?}");
    for how in ["env", "flag"] {
        let ok = kiln(Some((how, &secret)));
        assert!(ok.status.success(), "{how}: {}", String::from_utf8_lossy(&ok.stderr));
        assert!(String::from_utf8_lossy(&ok.stdout).contains("queued"), "{ok:?}");
    }

    let log = api.output();
    assert!(log.contains("token="), "the request spans name the token's id:\n{log}");
    for needle in [&secret[..], &secret[5..], &mangled[5..], &made[5..], "log-test-admin"] {
        assert!(!log.contains(needle), "the API logged a token:\n{log}");
    }
    assert_eq!(create.output().matches(&secret).count(), 1);
}

/// `docker login` with a token, then `docker pull` and `docker run`, against
/// a private farm; an anonymous pull is refused with `401` in the registry's
/// shape and a Basic challenge.
#[tokio::test]
async fn docker_logs_in_with_a_token_and_pulls_from_a_private_farm() {
    use std::process::{Command, Stdio};

    use crate::registry::{run, run_failing};

    if !kiln_testkit::docker_available("docker_logs_in_with_a_token_and_pulls_from_a_private_farm") {
        return;
    }
    let f = crate::farm::ApiFarm::with_worker(&[("KILN_AUTH_MODE", "tokens")]).await;
    let queue = f.farm.db.queue(QueueSettings::default());
    let (_, puller) = token(&queue, "puller", "download,submit").await;
    let (_, reader) = token(&queue, "reader", "download").await;
    let registry = f.registry();
    let reference = format!("{registry}/hello/example.com__greet:v1.1.0-linux-amd64");

    // Anonymous: 401 in the registry's shape, asking for Basic credentials.
    for path in ["/v2/", "/v2/hello/manifests/v1.1.0-linux-amd64", "/v2/hello/tags/list"] {
        let r = f.http.get(f.url(path)).send().await.unwrap();
        assert_eq!(r.status(), StatusCode::UNAUTHORIZED, "{path}");
        assert_eq!(r.headers()["www-authenticate"], "Basic realm=\"kiln\", charset=\"UTF-8\"", "{path}");
        assert_eq!(r.headers()["docker-distribution-api-version"], "registry/2.0");
        let j: Value = r.json().await.unwrap();
        assert_eq!(j["errors"][0]["code"], "UNAUTHORIZED", "{j}");
    }
    // A token without `submit` may not start the image's build.
    let r = f
        .http
        .get(f.url("/v2/hello/manifests/v1.1.0-linux-amd64"))
        .basic_auth("ci", Some(&reader))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::FORBIDDEN);
    assert_eq!(r.json::<Value>().await.unwrap()["errors"][0]["code"], "DENIED");
    assert_eq!(f.build_count().await, 0);

    // docker, with a configuration of this test's own.
    let config = tempfile::tempdir().unwrap();
    let docker = |args: &[&str]| {
        let mut cmd = Command::new("docker");
        cmd.env("DOCKER_CONFIG", config.path()).args(args);
        cmd
    };
    let refused = run_failing(&mut docker(&["pull", &reference]));
    assert!(
        refused.to_lowercase().contains("unauthorized") || refused.contains("no basic auth credentials"),
        "{refused}"
    );

    let mut login = docker(&["login", "--username", "kiln", "--password-stdin", &registry])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    std::io::Write::write_all(&mut login.stdin.take().unwrap(), puller.as_bytes()).unwrap();
    let out = login.wait_with_output().unwrap();
    assert!(out.status.success(), "docker login: {}", String::from_utf8_lossy(&out.stderr));
    assert!(String::from_utf8_lossy(&out.stdout).contains("Login Succeeded"), "{out:?}");

    let _cleanup = Removed(reference.clone());
    run(&mut docker(&["pull", &reference]));
    let said = run(&mut docker(&["run", "--rm", &reference]));
    assert!(said.contains("hello from kiln v1.1.0 linux/amd64"), "{said}\n{}", f.logs());
    assert!(!f.logs().contains(&puller[5..]), "a token reached a log");

    // Once built, a download-only token pulls it too. (A new client: the
    // blocking docker commands kept this runtime from noticing that the
    // API closed the old one's idle connections.)
    let r = reqwest::Client::new()
        .get(f.url("/v2/hello/example.com__greet/manifests/v1.1.0-linux-amd64"))
        .basic_auth("ci", Some(&reader))
        .header("accept", "application/vnd.oci.image.manifest.v1+json")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::OK);
}

/// An image removed from the engine when the test ends.
struct Removed(String);

impl Drop for Removed {
    fn drop(&mut self) {
        let _ = std::process::Command::new("docker").args(["rmi", "-f", &self.0]).output();
    }
}
