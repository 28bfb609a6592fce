//! Hosts that fail: a worker cut off mid-build, an API stopped while a
//! request waits on it, Postgres out of reach for 20 s.

use std::time::{Duration, Instant};

use kiln_testkit::hosts::{HostFarm, Layout};

use crate::support::*;

/// `(worker id, outcome)` of each attempt of `key`, in order.
async fn attempts(farm: &HostFarm, key: &str) -> Vec<(String, String)> {
    sqlx::query_as("SELECT worker_id, coalesce(outcome::text, '') FROM build_attempts WHERE build_key = $1 ORDER BY id")
        .bind(key)
        .fetch_all(farm.pool())
        .await
        .unwrap()
}

#[tokio::test]
async fn a_worker_host_cut_off_mid_build_is_fenced_out_and_cleans_up() {
    let layout = Layout { apis: 1, workers: 2, edge: false, start_workers: false, ..Layout::default() };
    let Some(farm) = farm("worker_cut_off", layout).await else { return };
    let api = farm.api_url(0);
    let (first, first_host) = farm.worker(0);
    let (second, second_host) = farm.worker(1);
    farm.start_worker(0);

    // A 5 s build, claimed by the first worker.
    let sub = submit(&api, request("sleep", "v5.0.0", &[])).await;
    let key = sub.json()["key"].as_str().unwrap().to_owned();
    eventually(&farm, "the first worker's step runs", Duration::from_secs(60), || async {
        get(&format!("{api}/api/builds/{key}/log"), &[]).await.body.windows(7).any(|w| w == b"slept 0")
    })
    .await;
    assert_eq!(attempts(&farm, &key).await, [(first.clone(), String::new())]);

    // Cut its host off. Its container runs on (the Docker socket is a
    // file) and ends, but the worker can neither renew its lease nor
    // report: the lease lapses, the janitor puts the build back, and the
    // second worker host builds it.
    farm.cut(&first_host);
    farm.start_worker(1);
    let build = wait_final(&farm, &api, &key, Duration::from_secs(120)).await;
    assert_eq!(build["state"], "succeeded", "{build}");
    let manifest = get(&format!("{api}/api/builds/{key}/build.json"), &[]).await.json();
    assert_eq!(manifest["worker"]["id"], second, "{manifest}");

    // Back on the network, the first worker's late report is refused by
    // the fence: it stores and completes nothing, and keeps no container.
    farm.restore(&first_host);
    eventually(&farm, "the first worker gives the job up", Duration::from_secs(90), || async {
        farm.output(&first_host).contains("LeaseLost")
    })
    .await;
    let output = farm.output(&first_host);
    let said: Vec<&str> = output.lines().filter(|l| l.contains("lease") || l.contains("job ended")).collect();
    eprintln!("the first worker on its lost lease:\n{}", said.join("\n"));
    let tried = attempts(&farm, &key).await;
    assert_eq!(
        tried,
        [(first.clone(), "lease_lapsed".to_owned()), (second.clone(), "succeeded".to_owned())],
        "{}",
        farm.logs()
    );
    let again = get(&format!("{api}/api/builds/{key}/build.json"), &[]).await.json();
    assert_eq!(again, manifest, "the stored build is still the second worker's");
    eventually(&farm, "no container of the first worker is left", Duration::from_secs(30), || async {
        farm.containers_of(&first).is_empty()
    })
    .await;
    let work = farm.dir().join(&first_host).join("work");
    let left: Vec<_> = std::fs::read_dir(&work).map(|d| d.flatten().map(|e| e.path()).collect()).unwrap_or_default();
    assert!(left.is_empty(), "work directories left behind: {left:?}");
    assert!(farm.exited(&first_host).is_none(), "the first worker lives on:\n{}", farm.output(&first_host));

    // And it takes new work again.
    farm.signal(&second_host, "TERM");
    farm.wait_exit(&second_host, Duration::from_secs(30));
    let next = submit(&api, request("hello", "v1.0.0", &[])).await;
    let nkey = next.json()["key"].as_str().unwrap().to_owned();
    let done = wait_final(&farm, &api, &nkey, Duration::from_secs(120)).await;
    assert_eq!(done["state"], "succeeded");
    assert_eq!(attempts(&farm, &nkey).await, [(first, "succeeded".to_owned())]);
}

#[tokio::test]
async fn stopping_an_api_while_compat_requests_wait_on_it() {
    let layout = Layout { start_workers: false, ..Layout::default() };
    let Some(farm) = farm("api_stopped", layout).await else { return };
    let edge = farm.edge_url();
    let addrs = [farm.api_addr(0).to_string(), farm.api_addr(1).to_string()];

    // Through nginx: the request goes to the API after the one that
    // answered the probe (round robin), which is then stopped.
    let (probe, line) = traced(&farm, &format!("{edge}/healthz"), "probe", &[]).await;
    assert_eq!(probe.status, 200);
    let probed = line.upstreams[0].clone();
    let held_by = usize::from(addrs[0] == probed);
    let query = "/api/compat?recipe=hello&os=linux&arch=arm64&p=example.com/greet";
    let url = format!("{edge}{query}");
    let through = tokio::spawn(async move { get(&url, &[]).await });
    let holder = farm.api_url(held_by);
    eventually(&farm, "the compat request waits on the API", Duration::from_secs(30), || async {
        waiting(&holder).await == 1
    })
    .await;
    farm.signal(&farm.api_label(held_by), "TERM");
    // nginx tries the other API, which waits for the build in turn.
    let other = farm.api_url(1 - held_by);
    eventually(&farm, "the other API holds the retried request", Duration::from_secs(30), || async {
        waiting(&other).await == 1
    })
    .await;
    let status = farm.wait_exit(&farm.api_label(held_by), Duration::from_secs(30));
    assert!(status.is_some_and(|s| s.success()), "the stopped API exits cleanly: {status:?}");
    farm.start_worker(0);
    let answer = tokio::time::timeout(Duration::from_secs(120), through).await.expect("an answer").unwrap();
    assert_eq!(answer.status, 200, "{}\n{}", String::from_utf8_lossy(&answer.body), farm.logs());
    assert!(String::from_utf8_lossy(&answer.body).contains("hello from kiln"));
    let line = last_line(&farm, query).await;
    assert_eq!(line.upstreams, [addrs[held_by].clone(), addrs[1 - held_by].clone()], "{line:?}");
    assert_eq!(line.upstream_statuses, ["503", "200"], "{line:?}");
    let key = answer.header("x-kiln-build-key").to_owned();
    assert_eq!(attempts(&farm, &key).await.len(), 1);

    // Directly: the client of the stopped API gets a clean error at once,
    // and the build goes on without it.
    farm.start_api(held_by).await.unwrap();
    farm.signal(&farm.worker(0).1, "TERM");
    farm.wait_exit(&farm.worker(0).1, Duration::from_secs(30));
    let api = farm.api_url(held_by);
    let url = format!("{api}/api/compat?recipe=hello&os=linux&arch=arm64&p=example.com/shout");
    let direct = tokio::spawn(async move { get(&url, &[]).await });
    eventually(&farm, "the direct request waits", Duration::from_secs(30), || async { waiting(&api).await == 1 }).await;
    let stopped_at = Instant::now();
    farm.signal(&farm.api_label(held_by), "TERM");
    let answer = tokio::time::timeout(Duration::from_secs(60), direct).await.expect("an answer").unwrap();
    assert_eq!(answer.status, 503, "{}", String::from_utf8_lossy(&answer.body));
    assert_eq!(answer.error_code(), "shutting_down");
    assert!(!answer.header("retry-after").is_empty());
    let key = answer.json()["error"]["key"].as_str().unwrap().to_owned();
    eprintln!("the stopped API answered after {:?}", stopped_at.elapsed());
    farm.start_worker(0);
    let build = wait_final(&farm, &other, &key, Duration::from_secs(120)).await;
    assert_eq!(build["state"], "succeeded", "{build}");
    assert_eq!(build["attempts"], 1);
}

/// How many compat requests API `base` holds (its `/metrics`).
async fn waiting(base: &str) -> u64 {
    let Ok(m) = send(kiln_testkit::hosts::client().get(format!("{base}/metrics")), &[]).await else { return 0 };
    String::from_utf8_lossy(&m.body)
        .lines()
        .find_map(|l| l.strip_prefix("kiln_waiting{kind=\"compat\"} "))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or(0)
}

#[tokio::test]
async fn postgres_out_of_reach_for_20_seconds() {
    let Some(farm) = farm("postgres_cut_off", Layout::default()).await else { return };
    let edge = farm.edge_url();
    let apis = [farm.api_url(0), farm.api_url(1)];

    // A build downloaded through nginx (cached there), one both APIs have
    // served directly, and a 5 s build running when Postgres goes.
    let compat = "/api/compat?recipe=hello&os=linux&arch=amd64&p=example.com/greet";
    let cached = get(&format!("{edge}{compat}"), &[]).await;
    assert_eq!(cached.status, 200);
    let key = cached.header("x-kiln-build-key").to_owned();
    let binary = format!("/api/builds/{key}/binary");
    let through_edge = get(&format!("{edge}{binary}"), &[]).await;
    assert_eq!(through_edge.body, cached.body);
    for api in &apis {
        assert_eq!(get(&format!("{api}{compat}"), &[]).await.body, cached.body);
    }
    let running = submit(&apis[0], request("sleep", "v5.0.0", &[])).await;
    let running_key = running.json()["key"].as_str().unwrap().to_owned();
    wait_state(&farm, &apis[0], &running_key, Duration::from_secs(60), |s| s == "running").await;

    farm.cut("db");
    let cut_at = Instant::now();
    for api in &apis {
        let ready = get(&format!("{api}/readyz"), &[]).await;
        assert_eq!(ready.status, 503, "{}", String::from_utf8_lossy(&ready.body));
        assert_eq!(ready.error_code(), "not_ready");
    }
    // Past the API's 10 s hot cache: what it knows has succeeded still
    // comes from the store, through nginx and directly.
    tokio::time::sleep(Duration::from_secs(12).saturating_sub(cut_at.elapsed())).await;
    for api in &apis {
        for path in [compat, binary.as_str()] {
            let a = get(&format!("{api}{path}"), &[]).await;
            assert_eq!(a.status, 200, "{api}{path} while Postgres is away: {}", String::from_utf8_lossy(&a.body));
            assert_eq!(a.body, cached.body);
        }
    }
    let hit = get(&format!("{edge}{binary}"), &[]).await;
    assert_eq!((hit.status, hit.cache()), (200, "HIT"));
    // Something that needs the database is refused cleanly.
    let refused = submit(&apis[1], request("hello", "v1.0.0", &["example.com/shout"])).await;
    assert_eq!(refused.status, 503, "{}", String::from_utf8_lossy(&refused.body));
    tokio::time::sleep(Duration::from_secs(20).saturating_sub(cut_at.elapsed())).await;
    farm.restore("db");

    // Everything resumes, and nothing was lost.
    for api in &apis {
        eventually(&farm, "the API is ready again", Duration::from_secs(60), || async {
            get(&format!("{api}/readyz"), &[]).await.status == 200
        })
        .await;
    }
    let build = wait_final(&farm, &apis[1], &running_key, Duration::from_secs(180)).await;
    assert_eq!(build["state"], "succeeded", "{build}\n{}", farm.logs());
    let after = submit(&apis[1], request("hello", "v1.0.0", &["example.com/shout"])).await;
    let after_key = after.json()["key"].as_str().unwrap().to_owned();
    let done = wait_final(&farm, &apis[0], &after_key, Duration::from_secs(120)).await;
    assert_eq!(done["state"], "succeeded");
    let lost: i64 = sqlx::query_scalar("SELECT count(*) FROM builds WHERE state NOT IN ('succeeded')")
        .fetch_one(farm.pool())
        .await
        .unwrap();
    assert_eq!(lost, 0, "{}", farm.logs());
}
