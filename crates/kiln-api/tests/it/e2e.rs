//! End-to-end: the real `kiln-api` and `kiln-worker` binaries, real
//! Postgres, Docker, local storage and s3s-fs.

use std::collections::BTreeSet;
use std::time::Duration;

use futures::StreamExt;
use reqwest::StatusCode;
use reqwest::header::HeaderMap;

use crate::farm::ApiFarm;

const TOKEN: &str = "Bearer dev-admin-token";

macro_rules! need_docker {
    ($name:literal) => {
        if !kiln_testkit::docker_available($name) {
            return;
        }
    };
}

fn header<'a>(h: &'a HeaderMap, name: &str) -> &'a str {
    h.get(name).and_then(|v| v.to_str().ok()).unwrap_or_else(|| panic!("no {name} header in {h:?}"))
}

/// Run a downloaded `hello` script and return what it prints.
fn run_script(bytes: &[u8]) -> String {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("hello");
    std::fs::write(&path, bytes).unwrap();
    let out = std::process::Command::new("sh").arg(&path).output().unwrap();
    assert!(out.status.success(), "{out:?}");
    String::from_utf8(out.stdout).unwrap()
}

#[tokio::test]
async fn compat_builds_once_then_serves_from_storage() {
    need_docker!("compat_builds_once_then_serves_from_storage");
    let f = ApiFarm::with_worker(&[]).await;
    let q = "/api/compat?recipe=hello&os=linux&arch=amd64&p=example.com/greet&idempotency=abc";
    let first = f.get(q).await;
    assert_eq!(first.status(), 200, "{}", f.logs());
    let h = first.headers().clone();
    assert_eq!(header(&h, "content-disposition"), "attachment; filename=hello_linux_amd64_custom");
    let key = header(&h, "x-kiln-build-key").to_owned();
    let body = first.bytes().await.unwrap();
    let printed = run_script(&body);
    assert!(printed.contains("hello from kiln v1.1.0 linux/amd64"), "{printed}");
    assert!(printed.contains("plugin example.com/greet@v0.2.0"), "{printed}");

    // Again: the same key, no new build, the same bytes from storage.
    let again = f.get(q).await;
    assert_eq!(again.status(), 200);
    assert_eq!(header(again.headers(), "x-kiln-build-key"), key);
    assert_eq!(again.bytes().await.unwrap(), body);
    assert_eq!(f.build_count().await, 1);
    assert_eq!(f.attempt_count().await, 1);

    // HEAD blocks like GET for a new build, then gives the headers and the binary's URL.
    let head = f.http.head(f.url("/api/compat?recipe=hello&os=windows&arch=amd64")).send().await.unwrap();
    assert_eq!(head.status(), 200, "{}", f.logs());
    let hh = head.headers();
    assert_eq!(header(hh, "content-disposition"), "attachment; filename=hello_windows_amd64_custom.exe");
    let len: usize = header(hh, "content-length").parse().unwrap();
    let location = header(hh, "location").to_owned();
    let wkey = header(hh, "x-kiln-build-key").to_owned();
    assert_eq!(location, format!("/api/builds/{wkey}/binary"));
    let bin = f.get(&location).await;
    assert_eq!(header(bin.headers(), "cache-control"), "public, max-age=31536000, immutable");
    let bin = bin.bytes().await.unwrap();
    assert_eq!(bin.len(), len);
    assert!(run_script(&bin).contains("hello from kiln v1.1.0 windows/amd64"));
    assert_eq!(f.build_count().await, 2);

    // Metrics: requests by route, builds by state, waits, build durations
    // (observed as the API hears builds end, so give it a moment).
    let mut metrics = String::new();
    for _ in 0..100 {
        metrics = f.get("/metrics").await.text().await.unwrap();
        if metrics.contains(r#"kiln_build_duration_seconds_count{recipe="hello",state="succeeded"} 2"#) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    for want in [
        r#"kiln_build_duration_seconds_count{recipe="hello",state="succeeded"} 2"#,
        r#"kiln_builds{state="succeeded"} 2"#,
        r#"kiln_wait_seconds_count{kind="compat"} 2"#,
        r#"kiln_http_requests_total{route="/api/compat",method="GET",status="200"} 2"#,
    ] {
        assert!(metrics.contains(want), "{want} not in\n{metrics}");
    }
}

#[tokio::test]
async fn two_hundred_concurrent_compat_requests_make_one_build() {
    need_docker!("two_hundred_concurrent_compat_requests_make_one_build");
    let f = ApiFarm::with_worker(&[]).await;
    let q = "/api/compat?recipe=hello&os=linux&arch=arm&arm=7&p=example.com/shout&p=example.com/greet@v0.1.0";
    let answers = futures::future::join_all((0..200).map(|_| async {
        let r = f.get(q).await;
        let status = r.status();
        let key = r.headers().get("x-kiln-build-key").map(|v| v.to_str().unwrap().to_owned());
        (status, key, r.bytes().await.unwrap())
    }))
    .await;
    let bodies: BTreeSet<_> = answers.iter().map(|(_, _, b)| b.clone()).collect();
    let keys: BTreeSet<_> = answers.iter().map(|(_, k, _)| k.clone()).collect();
    for (status, _, body) in &answers {
        assert_eq!(*status, 200, "{}\n{}", String::from_utf8_lossy(body), f.logs());
    }
    assert_eq!(bodies.len(), 1);
    assert_eq!(keys.len(), 1);
    assert_eq!(f.build_count().await, 1);
    assert_eq!(f.attempt_count().await, 1);
    let printed = run_script(bodies.first().unwrap());
    assert!(printed.contains("hello from kiln v1.1.0 linux/armv7"), "{printed}");
    assert!(printed.contains("plugin example.com/greet@v0.1.0"), "{printed}");
    assert!(printed.contains("plugin example.com/shout@v1.0.0"), "{printed}");
}

#[tokio::test]
async fn post_long_poll_then_artifact_signature_log_and_ranges() {
    need_docker!("post_long_poll_then_artifact_signature_log_and_ranges");
    let f = ApiFarm::with_worker(&[]).await;
    let r = f
        .http
        .post(f.url("/api/builds"))
        .json(&serde_json::json!({"recipe": "hello", "os": "linux", "arch": "arm64", "plugins": [{"module": "example.com/greet"}]}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 202);
    let build: serde_json::Value = r.json().await.unwrap();
    let key = build["key"].as_str().unwrap().to_owned();
    let done = f.wait_final(&key).await;
    assert_eq!(done["state"], "succeeded", "{done}\n{}", f.logs());
    assert!(done["attempts"].as_i64().unwrap() >= 1);

    // POSTing it again: 200, it already succeeded.
    let r = f
        .http
        .post(f.url("/api/builds"))
        .json(&serde_json::json!({"recipe": "hello", "os": "linux", "arch": "arm64", "plugins": [{"module": "example.com/greet", "version": "v0.2.0"}]}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);

    let art = f.get(&format!("/api/builds/{key}/artifact")).await;
    assert_eq!(art.status(), 200);
    let ah = art.headers().clone();
    assert_eq!(header(&ah, "cache-control"), "public, max-age=31536000, immutable");
    assert_eq!(header(&ah, "accept-ranges"), "bytes");
    let etag = header(&ah, "etag").to_owned();
    let artifact = art.bytes().await.unwrap();
    assert_eq!(header(&ah, "content-length").parse::<usize>().unwrap(), artifact.len());

    let sig = f.get(&format!("/api/builds/{key}/artifact.minisig")).await;
    assert_eq!(sig.status(), 200);
    assert!(header(sig.headers(), "content-type").starts_with("text/plain"));
    let sig = sig.text().await.unwrap();
    let pk = kiln_artifact::PublicKey::parse(&f.get("/api/signing-key").await.text().await.unwrap()).unwrap();
    kiln_artifact::verify(&pk, std::io::Cursor::new(artifact.to_vec()), &sig).expect("the signature verifies");

    let log = f.get(&format!("/api/builds/{key}/log")).await;
    assert_eq!(log.status(), 200);
    assert!(header(log.headers(), "content-type").starts_with("text/plain"));

    // The binary is the artifact's main file.
    let bin = f.get(&format!("/api/builds/{key}/binary")).await.bytes().await.unwrap();
    let inside = kiln_artifact::extract_file(std::io::Cursor::new(artifact.to_vec()), "hello").unwrap();
    assert_eq!(bin.to_vec(), inside);

    // Range, suffix range, unsatisfiable range, conditional GET, HEAD.
    let url = f.url(&format!("/api/builds/{key}/artifact"));
    let part = f.http.get(&url).header("range", "bytes=10-19").send().await.unwrap();
    assert_eq!(part.status(), StatusCode::PARTIAL_CONTENT);
    assert_eq!(header(part.headers(), "content-range"), format!("bytes 10-19/{}", artifact.len()));
    assert_eq!(part.bytes().await.unwrap(), artifact.slice(10..20));
    let tail = f.http.get(&url).header("range", "bytes=-7").send().await.unwrap();
    assert_eq!(tail.status(), StatusCode::PARTIAL_CONTENT);
    assert_eq!(tail.bytes().await.unwrap(), artifact.slice(artifact.len() - 7..));
    let bad = f.http.get(&url).header("range", format!("bytes={}-", artifact.len())).send().await.unwrap();
    assert_eq!(bad.status(), StatusCode::RANGE_NOT_SATISFIABLE);
    assert_eq!(header(bad.headers(), "content-range"), format!("bytes */{}", artifact.len()));
    let cached = f.http.get(&url).header("if-none-match", &etag).send().await.unwrap();
    assert_eq!(cached.status(), StatusCode::NOT_MODIFIED);
    assert!(cached.bytes().await.unwrap().is_empty());
    let head = f.http.head(&url).send().await.unwrap();
    assert_eq!(head.status(), 200);
    assert_eq!(header(head.headers(), "content-length").parse::<usize>().unwrap(), artifact.len());
}

#[tokio::test]
async fn a_failed_build_is_answered_422_until_its_ttl_passes() {
    need_docker!("a_failed_build_is_answered_422_until_its_ttl_passes");
    let ttl = 8;
    let f = ApiFarm::with_worker(&[("KILN_FAILURE_TTL", &ttl.to_string())]).await;
    let q = "/api/compat?recipe=fail&os=linux&arch=amd64";
    let first = f.get(q).await;
    assert_eq!(first.status(), 422, "{}", f.logs());
    let j: serde_json::Value = first.json().await.unwrap();
    assert_eq!(j["status_code"], 422);
    assert_eq!(j["error"]["code"], "build_failed");
    let key = j["error"]["key"].as_str().unwrap().to_owned();
    let log_url = j["error"]["log"].as_str().unwrap().to_owned();
    assert_eq!(log_url, format!("/api/builds/{key}/log"));
    let log = f.get(&log_url).await.text().await.unwrap();
    assert!(log.contains("intentional failure"), "{log}");

    // Answered from the result: no new build, no new attempt; HEAD alike.
    let again = f.get(q).await;
    assert_eq!(again.status(), 422);
    let head = f.http.head(f.url(q)).send().await.unwrap();
    assert_eq!(head.status(), 422);
    assert_eq!(f.build_count().await, 1);
    assert_eq!(f.attempt_count().await, 1);

    // Once the TTL has passed, the same request builds again (and fails again).
    tokio::time::sleep(Duration::from_secs(ttl + 1)).await;
    let later = f.get(q).await;
    assert_eq!(later.status(), 422);
    assert_eq!(f.attempt_count().await, 2);
}

#[tokio::test]
async fn a_compat_wait_runs_out_with_504_and_admins_cancel_queued_and_running_builds() {
    need_docker!("a_compat_wait_runs_out_with_504_and_admins_cancel_queued_and_running_builds");
    let f = ApiFarm::with_worker(&[("KILN_COMPAT_TIMEOUT", "2")]).await;
    let r = f.get("/api/compat?recipe=sleep&version=v30.0.0&os=linux&arch=amd64").await;
    assert_eq!(r.status(), StatusCode::GATEWAY_TIMEOUT, "{}", f.logs());
    let j: serde_json::Value = r.json().await.unwrap();
    assert_eq!(j["error"]["code"], "build_pending");
    let running = j["error"]["key"].as_str().unwrap().to_owned();
    // Wait for it to be claimed by the only worker (concurrency 1).
    let mut state = String::new();
    for _ in 0..30 {
        let b: serde_json::Value = f.get(&format!("/api/builds/{running}?wait=10")).await.json().await.unwrap();
        state = b["state"].as_str().unwrap().to_owned();
        if state == "running" {
            break;
        }
    }
    assert_eq!(state, "running", "{}", f.logs());

    // A second build waits behind it.
    let r = f
        .http
        .post(f.url("/api/builds"))
        .json(&serde_json::json!({"recipe": "sleep", "version": "v300.0.0", "os": "linux", "arch": "amd64"}))
        .send()
        .await
        .unwrap();
    let queued = r.json::<serde_json::Value>().await.unwrap()["key"].as_str().unwrap().to_owned();

    let delete = |key: &str, auth: Option<&str>| {
        let mut r = f.http.delete(f.url(&format!("/api/builds/{key}")));
        if let Some(a) = auth {
            r = r.header("authorization", a);
        }
        r.send()
    };
    assert_eq!(delete(&queued, None).await.unwrap().status(), 401);
    assert_eq!(delete(&queued, Some("Bearer nope")).await.unwrap().status(), 401);
    let c = delete(&queued, Some(TOKEN)).await.unwrap();
    assert_eq!(c.status(), 200);
    assert_eq!(c.json::<serde_json::Value>().await.unwrap()["state"], "cancelled");

    assert_eq!(delete(&running, None).await.unwrap().status(), 401);
    let c = delete(&running, Some(TOKEN)).await.unwrap();
    assert_eq!(c.status(), 202);
    let end = f.wait_final(&running).await;
    assert_eq!(end["state"], "cancelled", "{end}\n{}", f.logs());
}

#[tokio::test]
async fn a_client_that_hangs_up_does_not_cancel_its_build() {
    need_docker!("a_client_that_hangs_up_does_not_cancel_its_build");
    let f = ApiFarm::with_worker(&[]).await;
    let impatient = reqwest::Client::builder().timeout(Duration::from_millis(1500)).build().unwrap();
    let q = "/api/compat?recipe=sleep&version=v5.0.0&os=linux&arch=amd64";
    assert!(impatient.get(f.url(q)).send().await.unwrap_err().is_timeout());
    // The request reached the API before the client gave up (a slow machine may take a moment).
    let mut key = None;
    for _ in 0..300 {
        key = sqlx::query_scalar::<_, String>("SELECT key FROM builds").fetch_optional(f.farm.db.pool()).await.unwrap();
        if key.is_some() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let key = key.expect("the build was queued");
    let end = f.wait_final(&key).await;
    assert_eq!(end["state"], "succeeded", "{end}\n{}", f.logs());
    let again = f.get(q).await;
    assert_eq!(again.status(), 200);
    assert_eq!(again.text().await.unwrap(), "done\n");
}

/// One Server-Sent Event.
#[derive(Debug, Clone, PartialEq)]
struct Sse {
    id: Option<i64>,
    event: String,
    data: String,
}

/// Reads events off a response body.
struct SseReader {
    stream: futures::stream::BoxStream<'static, reqwest::Result<bytes::Bytes>>,
    buf: String,
}

impl SseReader {
    fn new(r: reqwest::Response) -> Self {
        Self { stream: r.bytes_stream().boxed(), buf: String::new() }
    }

    /// The next event; `None` when the stream ended.
    async fn next(&mut self) -> Option<Sse> {
        loop {
            if let Some(end) = self.buf.find("\n\n") {
                let block: String = self.buf.drain(..end + 2).collect();
                let mut ev = Sse { id: None, event: "message".into(), data: String::new() };
                let mut data = Vec::new();
                for line in block.lines() {
                    if let Some(v) = line.strip_prefix("id:") {
                        ev.id = Some(v.trim().parse().unwrap());
                    } else if let Some(v) = line.strip_prefix("event:") {
                        ev.event = v.trim().to_owned();
                    } else if let Some(v) = line.strip_prefix("data:") {
                        data.push(v.strip_prefix(' ').unwrap_or(v).to_owned());
                    }
                }
                ev.data = data.join("\n");
                if ev.id.is_none() && data.is_empty() {
                    continue; // a keep-alive comment
                }
                return Some(ev);
            }
            let chunk = tokio::time::timeout(Duration::from_secs(60), self.stream.next())
                .await
                .expect("an event within 60 s")?;
            self.buf.push_str(std::str::from_utf8(&chunk.unwrap()).unwrap());
        }
    }
}

#[tokio::test]
async fn log_follow_and_events_stream_a_running_build_and_resume_without_gaps() {
    need_docker!("log_follow_and_events_stream_a_running_build_and_resume_without_gaps");
    let f = ApiFarm::with_worker(&[]).await;
    let r = f
        .http
        .post(f.url("/api/builds"))
        .json(&serde_json::json!({"recipe": "sleep", "version": "v30.0.0", "os": "linux", "arch": "amd64"}))
        .send()
        .await
        .unwrap();
    let key = r.json::<serde_json::Value>().await.unwrap()["key"].as_str().unwrap().to_owned();

    // The live log: lines arrive while the build runs.
    let mut log = f.get(&format!("/api/builds/{key}/log?follow=1")).await.bytes_stream();
    let mut text = String::new();
    while !text.contains("slept 1 of 30") {
        let chunk = tokio::time::timeout(Duration::from_secs(60), log.next()).await.expect("log within 60 s");
        text.push_str(&String::from_utf8_lossy(&chunk.expect("the stream goes on").unwrap()));
    }
    let b: serde_json::Value = f.get(&format!("/api/builds/{key}")).await.json().await.unwrap();
    assert_eq!(b["state"], "running", "the log arrived before the end");

    // Events: read some, hang up, resume from Last-Event-ID.
    let events_url = f.url(&format!("/api/builds/{key}/events"));
    let mut first = SseReader::new(f.http.get(&events_url).send().await.unwrap());
    let mut seen = Vec::new();
    while !seen.iter().any(|e: &Sse| e.event == "log" && e.data.contains("slept 2 of 30")) {
        seen.push(first.next().await.expect("events until the build ends"));
    }
    assert!(seen.iter().any(|e| e.event == "state" && e.data.contains("running")), "{seen:?}");
    drop(first);
    let last = seen.last().unwrap().id.unwrap();
    let mut second =
        SseReader::new(f.http.get(&events_url).header("last-event-id", last.to_string()).send().await.unwrap());
    let next = second.next().await.unwrap();
    seen.push(next);

    // Cancel; both streams end after the final state.
    let c = f.http.delete(f.url(&format!("/api/builds/{key}"))).header("authorization", TOKEN).send().await.unwrap();
    assert_eq!(c.status(), 202);
    while let Some(e) = second.next().await {
        seen.push(e);
    }
    let result = seen.last().unwrap();
    assert_eq!(result.event, "result", "{result:?}");
    assert_eq!(result.id, None);
    let result: serde_json::Value = serde_json::from_str(&result.data).unwrap();
    assert_eq!(result["state"], "cancelled");
    assert_eq!(result["key"], key.as_str());
    let end = &seen[seen.len() - 2];
    assert_eq!(end.event, "state", "{end:?}");
    assert!(end.data.contains("cancelled"), "{end:?}");
    while let Some(chunk) = tokio::time::timeout(Duration::from_secs(60), log.next()).await.expect("log ends") {
        text.push_str(&String::from_utf8_lossy(&chunk.unwrap()));
    }
    assert!(text.contains("slept 3 of 30"), "{text}");

    // A full replay has exactly the ids the two connections saw, in order.
    let mut all = SseReader::new(f.http.get(&events_url).send().await.unwrap());
    let mut replay = Vec::new();
    while let Some(e) = all.next().await {
        replay.push(e);
    }
    let ids = |v: &[Sse]| v.iter().filter_map(|e| e.id).collect::<Vec<_>>();
    assert_eq!(ids(&seen), ids(&replay));
    assert!(ids(&seen).windows(2).all(|w| w[0] < w[1]), "{:?}", ids(&seen));
    assert_eq!(seen, replay);
    assert!(replay.iter().any(|e| e.event == "step_started"), "{replay:?}");
}

#[tokio::test]
async fn with_s3_presigning_downloads_redirect_to_the_right_bytes() {
    need_docker!("with_s3_presigning_downloads_redirect_to_the_right_bytes");
    let s3 = kiln_testkit::s3::S3Server::start();
    let mut env: Vec<(&str, String)> = s3.env();
    env.push(("KILN_S3_PRESIGN", "true".into()));
    let env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (*k, v.as_str())).collect();
    let f = ApiFarm::with_worker(&env).await;
    let r = f.get("/api/compat?recipe=hello&os=darwin&arch=arm64").await;
    assert_eq!(r.status(), 200, "{}", f.logs());
    let key = header(r.headers(), "x-kiln-build-key").to_owned();
    let compat = r.bytes().await.unwrap();
    assert!(run_script(&compat).contains("hello from kiln v1.1.0 darwin/arm64"));

    let manual = reqwest::Client::builder().redirect(reqwest::redirect::Policy::none()).build().unwrap();
    for (path, expect) in [("binary", Some(compat.clone())), ("artifact", None)] {
        let r = manual.get(f.url(&format!("/api/builds/{key}/{path}"))).send().await.unwrap();
        assert_eq!(r.status(), StatusCode::SEE_OTHER, "{path}");
        let location = header(r.headers(), "location").to_owned();
        assert!(location.starts_with(s3.endpoint()), "{location}");
        let got = f.http.get(&location).send().await.unwrap();
        assert_eq!(got.status(), 200, "{location}");
        let got = got.bytes().await.unwrap();
        match expect {
            Some(b) => assert_eq!(got, b),
            None => {
                let sig = f.get(&format!("/api/builds/{key}/artifact.minisig")).await.text().await.unwrap();
                let pk =
                    kiln_artifact::PublicKey::parse(&f.get("/api/signing-key").await.text().await.unwrap()).unwrap();
                kiln_artifact::verify(&pk, std::io::Cursor::new(got.to_vec()), &sig).expect("verifies");
            }
        }
    }
}
