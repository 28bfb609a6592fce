//! Queue throughput and wake-up latency, printed as figures (see
//! `scripts/bench-queue`, which also runs pgbench as the ceiling).
//!
//! Usage: `bench_queue DATABASE_URL JOBS` against a migrated, empty database.

use std::time::{Duration, Instant};

use kiln_domain::{BuildSpec, Version};
use kiln_queue::{Channel, Notification, Queue, QueueSettings};
use sqlx::postgres::PgPoolOptions;

fn spec(run: usize, n: usize) -> BuildSpec {
    BuildSpec {
        recipe: "noop".into(),
        recipe_revision: format!("bench-{run}"),
        version: Version::parse("v", &format!("v1.0.{n}")).unwrap(),
        platform: "linux/amd64".parse().unwrap(),
        plugins: vec![],
        replacements: vec![],
    }
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    sorted[((sorted.len() as f64 - 1.0) * p).round() as usize]
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args: Vec<String> = std::env::args().collect();
    let url = args.get(1).expect("usage: bench_queue DATABASE_URL JOBS").clone();
    let jobs: usize = args.get(2).map(|s| s.parse()).transpose()?.unwrap_or(2000);
    let queue = Queue::connect(&url, 40, QueueSettings::default(), "kiln-bench-queue").await?;
    // Emptying the tables between runs is the benchmark's own business.
    let pool = PgPoolOptions::new().max_connections(1).connect(&url).await?;

    for (run, workers) in [1usize, 4, 16].into_iter().enumerate() {
        sqlx::query("TRUNCATE builds CASCADE").execute(&pool).await?;
        let t = Instant::now();
        let per = jobs.div_ceil(workers);
        let mut tasks = Vec::new();
        for w in 0..workers {
            let queue = queue.clone();
            tasks.push(tokio::spawn(async move {
                for n in (w * per)..((w + 1) * per).min(jobs) {
                    queue.enqueue(&spec(run, n), 0).await.unwrap();
                }
            }));
        }
        for t in tasks {
            t.await?;
        }
        let enqueue = t.elapsed();

        let t = Instant::now();
        let mut tasks = Vec::new();
        for w in 0..workers {
            let queue = queue.clone();
            tasks.push(tokio::spawn(async move {
                let id = format!("bench-{w}");
                let mut done = 0usize;
                while let Some(c) = queue.claim(&id, &[]).await.unwrap() {
                    queue.complete(&c.lease, &kiln_testkit::rows::manifest(&c.spec, &id)).await.unwrap();
                    done += 1;
                }
                done
            }));
        }
        let mut done = 0;
        for t in tasks {
            done += t.await?;
        }
        let drain = t.elapsed();
        assert_eq!(done, jobs, "every job claimed and completed once");
        println!(
            "kiln workers={workers:<2} enqueue={:>8.0} jobs/s  claim+complete={:>8.0} jobs/s",
            jobs as f64 / enqueue.as_secs_f64(),
            jobs as f64 / drain.as_secs_f64()
        );
    }

    // Wake-up latency: an idle worker sleeping on NOTIFY, one job at a time.
    sqlx::query("TRUNCATE builds CASCADE").execute(&pool).await?;
    let notifier = queue.notifier(&[Channel::Jobs]);
    let mut rx = notifier.subscribe();
    while rx.recv().await? != Notification::Resync {}
    let mut latencies = Vec::new();
    for n in 0..300 {
        let t = Instant::now();
        queue.enqueue(&spec(99, n), 0).await?;
        loop {
            if let Notification::Job { .. } = rx.recv().await? {
                break;
            }
        }
        let c = queue.claim("idle", &[]).await?.expect("a job after its notification");
        latencies.push(t.elapsed());
        queue.complete(&c.lease, &kiln_testkit::rows::manifest(&c.spec, "idle")).await?;
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    latencies.sort();
    println!(
        "kiln enqueue->claim via NOTIFY: p50={:.2} ms  p99={:.2} ms  (n={})",
        percentile(&latencies, 0.50).as_secs_f64() * 1e3,
        percentile(&latencies, 0.99).as_secs_f64() * 1e3,
        latencies.len()
    );
    Ok(())
}
