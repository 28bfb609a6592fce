//! `scripts/bench-scale`, part one: builds per second with 1, 2 and 4
//! worker hosts (each of concurrency 1) of a sleep-bound recipe, and the
//! ratio to linear scaling from the one-worker figure of the same run.
//!
//! Each run is a fresh [`HostFarm`]: Postgres, the store, one API and the
//! janitor on hosts of their own, and N worker hosts. The builds are
//! submitted at once through the API; the clock runs from the first submit
//! to the last build's end.
//!
//! `bench_scale [SLEEP_SECS] [BUILDS_PER_WORKER]` (defaults 3 and 4).

use std::time::{Duration, Instant};

use kiln_testkit::hosts::{HostFarm, Layout, client};

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args: Vec<String> = std::env::args().collect();
    let sleep: u64 = args.get(1).map_or(Ok(3), |a| a.parse())?;
    let per_worker: usize = args.get(2).map_or(Ok(4), |a| a.parse())?;
    if kiln_testkit::hosts::unavailable("bench_scale") {
        anyhow::bail!("the multi-host farm cannot run here");
    }
    let dir = tempfile::tempdir()?;
    let config = dir.path().join("config.yml");
    let mut text = std::fs::read_to_string(kiln_testkit::repo_root().join("config.test.yml"))?;
    let versions: Vec<String> = (0..per_worker * 4).map(|i| format!("v1.0.{i}")).collect();
    text.push_str(&format!(
        "
  bench-sleep:
    image: kiln-test/busybox:latest
    versions:
      source: static
      versions: [{}]
    platforms: [linux/amd64]
    binary: slept
    steps:
      - name: sleep
        run: [/bin/sh, -c, \"sleep {sleep}; echo {{{{ version }}}} > /work/out/slept\"]
        timeout_secs: 600
",
        versions.join(", ")
    ));
    std::fs::write(&config, text)?;

    println!("worker hosts  builds  seconds  builds/s  linear b/s  ratio");
    let mut one = None;
    for workers in [1usize, 2, 4] {
        let layout = Layout {
            apis: 1,
            workers,
            edge: false,
            janitor: true,
            start_workers: true,
            config: Some(config.clone()),
            env: vec![],
        };
        let farm = HostFarm::start(layout).await;
        wait_workers(&farm, workers).await?;
        let builds = workers * per_worker;
        let started = Instant::now();
        let http = client();
        for v in &versions[..builds] {
            let body = serde_json::json!({"recipe": "bench-sleep", "version": v, "os": "linux", "arch": "amd64"});
            let r = http.post(format!("{}/api/builds", farm.api_url(0))).json(&body).send().await?;
            anyhow::ensure!(r.status().as_u16() == 202, "submit: {}", r.text().await?);
        }
        let deadline = Instant::now() + Duration::from_secs(600);
        loop {
            let (done, failed): (i64, i64) = sqlx::query_as(
                "SELECT count(*) FILTER (WHERE state IN ('succeeded', 'failed', 'cancelled')),
                        count(*) FILTER (WHERE state <> 'succeeded' AND state IN ('failed', 'cancelled'))
                 FROM builds",
            )
            .fetch_one(farm.pool())
            .await?;
            anyhow::ensure!(failed == 0, "a build failed:\n{}", farm.logs());
            if done as usize == builds {
                break;
            }
            anyhow::ensure!(Instant::now() < deadline, "builds did not end:\n{}", farm.logs());
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        let secs = started.elapsed().as_secs_f64();
        let rate = builds as f64 / secs;
        let base = *one.get_or_insert(rate);
        let linear = base * workers as f64;
        println!("{workers:>12}  {builds:>6}  {secs:>7.1}  {rate:>8.3}  {linear:>10.3}  {:>5.2}", rate / linear);
    }
    println!(
        "(each build: one container that sleeps {sleep} s; the ideal is {:.3} builds/s per worker)",
        1.0 / sleep as f64
    );
    Ok(())
}

/// Wait until `n` workers have registered.
async fn wait_workers(farm: &HostFarm, n: usize) -> anyhow::Result<()> {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let up: i64 =
            sqlx::query_scalar("SELECT count(*) FROM workers WHERE state = 'active'").fetch_one(farm.pool()).await?;
        if up as usize >= n {
            return Ok(());
        }
        anyhow::ensure!(Instant::now() < deadline, "workers did not register:\n{}", farm.logs());
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}
