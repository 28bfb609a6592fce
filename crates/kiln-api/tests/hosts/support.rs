//! What the multi-host tests share: requests from the test process, waits
//! on a build's state, and nginx's access log.

use std::time::{Duration, Instant};

use kiln_testkit::hosts::{HostFarm, Layout};
use reqwest::header::HeaderMap;
use serde_json::{Value, json};

/// A farm for `test`, or `None` (after a loud `SKIPPED` line) where the
/// machine cannot make one.
pub async fn farm(test: &str, layout: Layout) -> Option<HostFarm> {
    if kiln_testkit::hosts::unavailable(test) {
        return None;
    }
    Some(HostFarm::start(layout).await)
}

/// `GET url` through nginx with request id `id`; the answer and nginx's log line.
pub async fn traced(farm: &HostFarm, url: &str, id: &str, headers: &[(&str, &str)]) -> (Answer, LogLine) {
    let mut all = vec![("x-request-id", id)];
    all.extend_from_slice(headers);
    let answer = get(url, &all).await;
    (answer, last_line(farm, id).await)
}

/// An answer, read whole.
#[derive(Debug)]
pub struct Answer {
    pub status: u16,
    pub headers: HeaderMap,
    pub body: bytes::Bytes,
}

impl Answer {
    pub fn json(&self) -> Value {
        serde_json::from_slice(&self.body)
            .unwrap_or_else(|e| panic!("{} is not JSON ({e}): {}", self.status, String::from_utf8_lossy(&self.body)))
    }

    pub fn header(&self, name: &str) -> &str {
        self.headers.get(name).and_then(|v| v.to_str().ok()).unwrap_or("")
    }

    /// nginx's verdict: HIT, MISS, EXPIRED, … (empty when it did not cache).
    pub fn cache(&self) -> &str {
        self.header("x-cache-status")
    }

    pub fn error_code(&self) -> String {
        self.json()["error"]["code"].as_str().unwrap_or_default().to_owned()
    }
}

/// `GET url` with `headers`; panics when no answer comes within 3 minutes.
pub async fn get(url: &str, headers: &[(&str, &str)]) -> Answer {
    send(kiln_testkit::hosts::client().get(url), headers).await.unwrap_or_else(|e| panic!("GET {url}: {e}"))
}

pub async fn send(mut req: reqwest::RequestBuilder, headers: &[(&str, &str)]) -> reqwest::Result<Answer> {
    for (k, v) in headers {
        req = req.header(*k, *v);
    }
    let resp = req.timeout(Duration::from_secs(180)).send().await?;
    let status = resp.status().as_u16();
    let headers = resp.headers().clone();
    let body = resp.bytes().await?;
    Ok(Answer { status, headers, body })
}

/// `POST {base}/api/builds` with `body`.
pub async fn submit(base: &str, body: Value) -> Answer {
    let req = kiln_testkit::hosts::client().post(format!("{base}/api/builds")).json(&body);
    send(req, &[]).await.unwrap_or_else(|e| panic!("POST {base}/api/builds: {e}"))
}

/// A build request body.
pub fn request(recipe: &str, version: &str, plugins: &[&str]) -> Value {
    let plugins: Vec<Value> = plugins.iter().map(|m| json!({"module": m})).collect();
    json!({"recipe": recipe, "version": version, "os": "linux", "arch": "amd64", "plugins": plugins})
}

/// Long-poll `{base}/api/builds/{key}` until it is final; the build.
pub async fn wait_final(farm: &HostFarm, base: &str, key: &str, limit: Duration) -> Value {
    wait_state(farm, base, key, limit, |s| matches!(s, "succeeded" | "failed" | "cancelled")).await
}

/// Long-poll until the build's state satisfies `until`.
pub async fn wait_state(
    farm: &HostFarm,
    base: &str,
    key: &str,
    limit: Duration,
    until: impl Fn(&str) -> bool,
) -> Value {
    let deadline = Instant::now() + limit;
    loop {
        let a = send(kiln_testkit::hosts::client().get(format!("{base}/api/builds/{key}?wait=5")), &[]).await;
        if let Ok(a) = a
            && a.status == 200
        {
            let b = a.json();
            if until(b["state"].as_str().unwrap_or_default()) {
                return b;
            }
        }
        assert!(Instant::now() < deadline, "build {key} did not get there within {limit:?}\n{}", farm.logs());
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// Wait until `check` holds, polling every 200 ms, at most `limit`.
pub async fn eventually<F: std::future::Future<Output = bool>>(
    farm: &HostFarm,
    what: &str,
    limit: Duration,
    mut check: impl FnMut() -> F,
) {
    let deadline = Instant::now() + limit;
    while !check().await {
        assert!(Instant::now() < deadline, "{what}: not within {limit:?}\n{}", farm.logs());
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// One line of nginx's access log in `deploy/nginx`'s `kiln` format.
#[derive(Debug, Clone)]
pub struct LogLine {
    pub request: String,
    pub status: u16,
    pub cache: String,
    /// The APIs tried, in order (`upstream=a, b` after a retry).
    pub upstreams: Vec<String>,
    pub upstream_statuses: Vec<String>,
    /// The request id (`x-request-id` from the client, else nginx's own).
    pub id: String,
}

pub fn edge_log(farm: &HostFarm) -> Vec<LogLine> {
    farm.edge_log().lines().filter_map(parse_line).collect()
}

fn parse_line(line: &str) -> Option<LogLine> {
    let q1 = line.find('"')?;
    let q2 = q1 + 1 + line[q1 + 1..].find('"')?;
    let request = line[q1 + 1..q2].to_owned();
    let rest = &line[q2 + 1..];
    let status = rest.split_whitespace().next()?.parse().ok()?;
    let field = |name: &str| -> String {
        let Some(pos) = rest.find(&format!(" {name}=")) else { return String::new() };
        let tail = &rest[pos + name.len() + 2..];
        // Values are lists like "a, b"; the next field starts with " word=".
        let next = tail.match_indices(' ').map(|(i, _)| i).find(|&i| {
            let after = &tail[i + 1..];
            after.split_once('=').is_some_and(|(k, _)| k.bytes().all(|b| b.is_ascii_lowercase() || b == b'_'))
        });
        tail[..next.unwrap_or(tail.len())].to_owned()
    };
    let list = |s: String| s.split(", ").filter(|x| !x.is_empty() && *x != "-").map(str::to_owned).collect();
    Some(LogLine {
        request,
        status,
        cache: field("cache"),
        upstreams: list(field("upstream")),
        upstream_statuses: list(field("upstream_status")),
        id: field("id"),
    })
}

/// The last log line whose request line contains `needle`, or whose id is
/// `needle` (nginx writes it just after the answer, so it may take a moment).
pub async fn last_line(farm: &HostFarm, needle: &str) -> LogLine {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        if let Some(l) = edge_log(farm).into_iter().rev().find(|l| l.request.contains(needle) || l.id == needle) {
            return l;
        }
        assert!(Instant::now() < deadline, "no request with {needle:?} in nginx's log:\n{}", farm.edge_log());
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[test]
fn parses_the_kiln_log_format() {
    let l = parse_line(
        "10.0.0.1 [01/Jan/2025:00:00:00 +0000] \"GET /api/compat?os=linux HTTP/1.1\" 200 12 cache=MISS \
         upstream=10.0.0.10:8234, 10.0.0.11:8234 upstream_status=503, 200 time=0.5 id=abc",
    )
    .unwrap();
    assert_eq!(l.request, "GET /api/compat?os=linux HTTP/1.1");
    assert_eq!(l.status, 200);
    assert_eq!(l.cache, "MISS");
    assert_eq!(l.upstreams, ["10.0.0.10:8234", "10.0.0.11:8234"]);
    assert_eq!(l.upstream_statuses, ["503", "200"]);
    let hit = parse_line("x [t] \"GET /a HTTP/1.1\" 200 1 cache=HIT upstream=- upstream_status=- time=0 id=x").unwrap();
    assert!(hit.upstreams.is_empty());
    assert_eq!(hit.cache, "HIT");
    assert_eq!(hit.id, "x");
}
