//! `scripts/bench-scale`, part two: the latency of one claim with an empty
//! queue (the baseline), with 100,000 jobs queued, and with those still
//! queued after 1,000,000 more went through the table (queued, running,
//! succeeded, deleted by expiry, in batches, as a long-lived farm does).
//! The goal: within 2x of the empty queue.
//!
//! Each sample enqueues nothing extra: it times `Queue::claim` alone, then
//! ends the claimed job with `fail_build` (untimed). The bulk rows are
//! written with set-based SQL here, as a farm's history would be far too
//! slow to replay one claim at a time.
//!
//! Usage: `bench_depth DATABASE_URL [DEPTH] [CHURN] [SAMPLES]` against a
//! migrated, empty database (defaults 100000, 1000000, 500).

use std::time::{Duration, Instant};

use kiln_domain::{BuildSpec, Version};
use kiln_queue::{Queue, QueueSettings};
use sqlx::PgPool;
use sqlx::postgres::PgPoolOptions;

const BATCH: i64 = 100_000;

fn spec(tag: &str, n: u64) -> BuildSpec {
    BuildSpec {
        recipe: "bench".into(),
        recipe_revision: tag.into(),
        version: Version::parse("v", &format!("v1.0.{n}")).unwrap(),
        platform: "linux/amd64".parse().unwrap(),
        plugins: vec![],
        replacements: vec![],
    }
}

/// Insert `n` queued jobs tagged `tag` (distinct keys), in batches.
async fn fill(pool: &PgPool, tag: &str, from: i64, n: i64) -> anyhow::Result<()> {
    let template = serde_json::to_value(spec(tag, 0))?;
    let mut done = 0;
    while done < n {
        let count = BATCH.min(n - done);
        sqlx::query(
            "INSERT INTO builds (key, recipe, spec, max_attempts, max_preemptions)
             SELECT encode(sha256(($1 || '-' || g)::bytea), 'hex'), 'bench',
                    jsonb_set($2::jsonb, '{version}', to_jsonb('v1.0.' || g)), 3, 10
             FROM generate_series($3::bigint, $4::bigint) g",
        )
        .bind(tag)
        .bind(&template)
        .bind(from + done)
        .bind(from + done + count - 1)
        .execute(pool)
        .await?;
        done += count;
    }
    Ok(())
}

/// Take `n` jobs through the table: queued, running, succeeded, deleted.
async fn churn(pool: &PgPool, n: i64) -> anyhow::Result<()> {
    let mut done = 0;
    while done < n {
        let count = BATCH.min(n - done);
        let tag = format!("churn-{done}");
        fill(pool, &tag, 0, count).await?;
        sqlx::query(
            "UPDATE builds SET state = 'running', lease_holder = 'churn', lease_attempt = 0,
                    lease_expires_at = now() + interval '1 minute', attempts = 1, claims = 1, started_at = now()
             WHERE spec->>'recipe_revision' = $1",
        )
        .bind(&tag)
        .execute(pool)
        .await?;
        sqlx::query(
            "UPDATE builds SET state = 'succeeded', lease_holder = NULL, lease_attempt = NULL,
                    lease_expires_at = NULL, finished_at = now()
             WHERE spec->>'recipe_revision' = $1",
        )
        .bind(&tag)
        .execute(pool)
        .await?;
        sqlx::query("DELETE FROM builds WHERE spec->>'recipe_revision' = $1").bind(&tag).execute(pool).await?;
        done += count;
    }
    Ok(())
}

/// Time `samples` claims; each claimed job is then failed (untimed).
async fn claims(queue: &Queue, samples: usize) -> anyhow::Result<Vec<Duration>> {
    let mut took = Vec::with_capacity(samples);
    for _ in 0..samples {
        let t = Instant::now();
        let claim = queue.claim("bench-depth", &[]).await?.expect("a job to claim");
        took.push(t.elapsed());
        queue.fail_build(&claim.lease, "bench").await?;
    }
    took.sort();
    Ok(took)
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

fn line(what: &str, took: &[Duration], base: Option<f64>) -> f64 {
    let p = |q: f64| ms(took[((took.len() as f64 - 1.0) * q).round() as usize]);
    let (p50, p99) = (p(0.5), p(0.99));
    let ratio = base.map_or("1.00".to_owned(), |b| format!("{:.2}", p50 / b));
    println!("{what:<44} {p50:>8.3} {p99:>8.3}  {ratio:>6}");
    p50
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args: Vec<String> = std::env::args().collect();
    let url = args.get(1).expect("usage: bench_depth DATABASE_URL [DEPTH] [CHURN] [SAMPLES]").clone();
    let depth: i64 = args.get(2).map(|s| s.parse()).transpose()?.unwrap_or(100_000);
    let churned: i64 = args.get(3).map(|s| s.parse()).transpose()?.unwrap_or(1_000_000);
    let samples: usize = args.get(4).map(|s| s.parse()).transpose()?.unwrap_or(500);
    let pool = PgPoolOptions::new().max_connections(4).connect(&url).await?;
    let queue = Queue::from_pool(pool.clone(), QueueSettings::default());

    println!("{:<44} {:>8} {:>8}  {:>6}", "claim latency (ms)", "p50", "p99", "x empty");
    // The baseline: one job in an empty table, enqueued before each claim.
    let mut took = Vec::with_capacity(samples);
    for n in 0..samples {
        queue.enqueue(&spec("empty", n as u64), 0).await?;
        let t = Instant::now();
        let claim = queue.claim("bench-depth", &[]).await?.expect("a job to claim");
        took.push(t.elapsed());
        queue.fail_build(&claim.lease, "bench").await?;
    }
    took.sort();
    let base = line("empty queue", &took, None);

    let t = Instant::now();
    fill(&pool, "depth", 0, depth).await?;
    sqlx::query("ANALYZE builds").execute(&pool).await?;
    eprintln!("queued {depth} jobs in {:.1} s", t.elapsed().as_secs_f64());
    line(&format!("{depth} jobs queued"), &claims(&queue, samples).await?, Some(base));

    let t = Instant::now();
    churn(&pool, churned).await?;
    eprintln!("churned {churned} jobs through the table in {:.1} s", t.elapsed().as_secs_f64());
    line(&format!("{depth} queued, {churned} churned"), &claims(&queue, samples).await?, Some(base));
    sqlx::query("VACUUM ANALYZE builds").execute(&pool).await?;
    line(&format!("{depth} queued, {churned} churned, vacuumed"), &claims(&queue, samples).await?, Some(base));
    Ok(())
}
