//! Two APIs behind nginx as load balancer and pull-through cache, and a
//! waiter on one API woken by a build another API accepted.

use std::time::Duration;

use kiln_testkit::hosts::{Layout, client};
use sha2::{Digest, Sha256};

use crate::support::*;

#[tokio::test]
async fn a_build_submitted_to_one_api_is_downloaded_from_the_other_and_then_from_nginx() {
    let Some(farm) = farm("through_nginx", Layout::default()).await else { return };
    let edge = farm.edge_url();
    let a = farm.api_addr(0).to_string();
    let b = farm.api_addr(1).to_string();

    // Submitted through nginx; nginx's log names the API that took it.
    let sub = submit(&edge, request("hello", "v1.1.0", &["example.com/greet"])).await;
    assert_eq!(sub.status, 202, "{}", String::from_utf8_lossy(&sub.body));
    let key = sub.json()["key"].as_str().unwrap().to_owned();
    let took = last_line(&farm, "POST /api/builds").await.upstreams;
    assert_eq!(took.len(), 1, "{took:?}");
    let submitted_to = took[0].clone();
    assert!(submitted_to == a || submitted_to == b, "{submitted_to} is neither API");

    let build = wait_final(&farm, &edge, &key, Duration::from_secs(120)).await;
    assert_eq!(build["state"], "succeeded", "{build}");

    // nginx goes round the APIs in turn (shared by its workers through
    // `zone`): after a probe answered by the API that took the submit, the
    // download goes to the other one.
    for n in 0.. {
        let (_, probe) = traced(&farm, &format!("{edge}/healthz"), &format!("probe-{n}"), &[]).await;
        if probe.upstreams == [submitted_to.clone()] {
            break;
        }
        assert!(n < 3, "nginx does not alternate: {}", farm.edge_log());
    }
    let binary = format!("{edge}/api/builds/{key}/binary");
    let (first, served) = traced(&farm, &binary, "download-1", &[]).await;
    assert_eq!(first.status, 200, "{}", String::from_utf8_lossy(&first.body));
    assert_eq!(first.cache(), "MISS");
    assert_eq!(served.upstreams.len(), 1, "{served:?}");
    assert_ne!(served.upstreams[0], submitted_to, "the download should come from the other API: {served:?}");
    let text = String::from_utf8_lossy(&first.body).into_owned();
    assert!(text.contains("hello from kiln v1.1.0 linux/amd64"), "{text}");
    assert!(text.contains("plugin example.com/greet@v0.2.0"), "{text}");
    let etag = first.header("etag").to_owned();
    assert_eq!(etag, format!("\"sha256-{}\"", hex::encode(Sha256::digest(&first.body))));

    // Again: from nginx's cache, the same bytes, no API asked.
    let (second, hit) = traced(&farm, &binary, "download-2", &[]).await;
    assert_eq!(second.status, 200);
    assert_eq!(second.cache(), "HIT");
    assert_eq!(second.body, first.body);
    assert!(hit.upstreams.is_empty(), "a hit asks no API: {hit:?}");

    // A range and a conditional request, answered from the cache.
    let part = get(&binary, &[("range", "bytes=5-20")]).await;
    assert_eq!(part.status, 206);
    assert_eq!(part.cache(), "HIT");
    assert_eq!(part.header("content-range"), format!("bytes 5-20/{}", first.body.len()));
    assert_eq!(part.body, first.body.slice(5..21));
    let same = get(&binary, &[("if-none-match", &etag)]).await;
    assert_eq!(same.status, 304);

    // A range of a file not cached yet: nginx fetches it whole, keeps it,
    // and cuts the range out; the next range is a hit.
    let artifact = format!("{edge}/api/builds/{key}/artifact");
    let whole = get(&format!("{}/api/builds/{key}/artifact", farm.api_url(0)), &[]).await;
    assert_eq!(whole.status, 200);
    let size = whole.body.len();
    let tail = get(&artifact, &[("range", "bytes=-100")]).await;
    assert_eq!(tail.status, 206, "{}", String::from_utf8_lossy(&tail.body));
    assert_eq!(tail.cache(), "MISS");
    assert_eq!(tail.header("content-range"), format!("bytes {}-{}/{size}", size - 100, size - 1));
    assert_eq!(tail.body, whole.body.slice(size - 100..));
    let head = get(&artifact, &[("range", "bytes=0-511")]).await;
    assert_eq!((head.status, head.cache()), (206, "HIT"));
    assert_eq!(head.body, whole.body.slice(..512));

    // A failed build: its 422 is never cached, by path or by compat URL.
    let failed = submit(&edge, request("fail", "v1.0.0", &[])).await;
    let fkey = failed.json()["key"].as_str().unwrap().to_owned();
    let fb = wait_final(&farm, &edge, &fkey, Duration::from_secs(120)).await;
    assert_eq!(fb["state"], "failed", "{fb}");
    for url in
        [format!("{edge}/api/builds/{fkey}/binary"), format!("{edge}/api/compat?recipe=fail&os=linux&arch=amd64")]
    {
        for _ in 0..2 {
            let ans = get(&url, &[]).await;
            assert_eq!(ans.status, 422, "{url}: {}", String::from_utf8_lossy(&ans.body));
            assert_eq!(ans.error_code(), "build_failed");
            assert_ne!(ans.cache(), "HIT", "{url}");
            assert_eq!(ans.header("cache-control"), "no-store");
        }
    }

    // Compat answers are cached only as long as the API says.
    let compat = format!("{edge}/api/compat?recipe=hello&os=linux&arch=amd64&p=example.com/greet");
    let c1 = get(&compat, &[]).await;
    assert_eq!(c1.status, 200);
    assert_eq!(c1.body, first.body);
    let max_age = c1
        .header("cache-control")
        .split(',')
        .find_map(|d| d.trim().strip_prefix("max-age="))
        .and_then(|v| v.parse::<u64>().ok())
        .unwrap_or_else(|| panic!("compat answers carry a max-age: {:?}", c1.headers));
    assert!(max_age <= 60, "no longer than api.version_cache_secs (60 s): {max_age}");
    assert!(!c1.header("cache-control").contains("immutable"));
    let c2 = get(&compat, &[]).await;
    assert_eq!(c2.body, first.body);
    if max_age > 1 {
        assert_eq!(c2.cache(), "HIT");
    }
    // HEAD is passed on as HEAD: it names the immutable binary URL.
    let head = send(client().head(&compat), &[]).await.unwrap();
    assert_eq!(head.status, 200);
    assert_eq!(head.header("location"), format!("/api/builds/{key}/binary"));
}

#[tokio::test]
async fn a_compat_request_held_by_one_api_wakes_when_a_build_accepted_by_another_ends() {
    let layout = Layout { edge: false, start_workers: false, ..Layout::default() };
    let Some(farm) = farm("cross_api_wake", layout).await else { return };
    let (api_a, api_b) = (farm.api_url(0), farm.api_url(1));

    // B accepts the build; no worker runs yet, so it stays queued.
    let sub = submit(&api_b, request("hello", "v1.0.0", &["example.com/shout"])).await;
    assert_eq!(sub.status, 202, "{}", String::from_utf8_lossy(&sub.body));
    let key = sub.json()["key"].as_str().unwrap().to_owned();

    // A holds a compat request for the same build.
    let url = format!("{api_a}/api/compat?recipe=hello&version=v1.0.0&os=linux&arch=amd64&p=example.com/shout");
    let held = tokio::spawn(async move { get(&url, &[]).await });
    eventually(&farm, "the compat request waits on API A", Duration::from_secs(30), || async {
        let m = get(&format!("{api_a}/metrics"), &[]).await;
        String::from_utf8_lossy(&m.body).lines().any(|l| l.starts_with("kiln_waiting{kind=\"compat\"} 1"))
    })
    .await;
    assert!(!held.is_finished());

    // A worker host builds it; only Postgres tells API A.
    farm.start_worker(0);
    let answer = tokio::time::timeout(Duration::from_secs(120), held).await.expect("A answers").unwrap();
    assert_eq!(answer.status, 200, "{}\n{}", String::from_utf8_lossy(&answer.body), farm.logs());
    assert_eq!(answer.header("x-kiln-build-key"), key);
    let text = String::from_utf8_lossy(&answer.body).into_owned();
    assert!(text.contains("hello from kiln v1.0.0") && text.contains("plugin example.com/shout@v1.0.0"), "{text}");
    let (worker, _) = farm.worker(0);
    let manifest = get(&format!("{api_b}/api/builds/{key}/build.json"), &[]).await.json();
    assert_eq!(manifest["worker"]["id"], worker);
}
