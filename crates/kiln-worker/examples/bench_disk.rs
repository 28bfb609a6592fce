//! The disk limit of a build, measured. Run by `scripts/bench-disk`, which
//! starts Postgres and builds the test image first.
//!
//! 1. Overshoot: the `hostile` recipe writes under `/work` until it is
//!    stopped, 1 MiB at a time (v1: a fork per MiB) and as fast as `dd` can
//!    (v3). For each enforcement (the per-build filesystem where this
//!    machine can mount one, and the watcher), runs of each under a limit
//!    of `BENCH_LIMIT_MB` (default 128): what `/work` held once the step was
//!    stopped, beside the limit. Beside it, the writer's rate: the same
//!    writer in a raw `docker run` writing as much.
//! 2. Cost: the `hello` build end to end (enqueue → artifact stored, a warm
//!    worker) with the per-build filesystem, with the watcher, and with no
//!    disk limit, `BENCH_RUNS` (default 15) builds each, in the same run.
//!
//! Environment: `KILN_BENCH_DATABASE_URL` (an admin URL), `BENCH_RUNS`,
//! `BENCH_LIMIT_MB`.

use std::collections::HashMap;
use std::process::Command;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use kiln_config::{Config, DiskEnforcement};
use kiln_domain::{BuildKey, BuildSpec, BuildState, ModulePath, PluginSpec};
use kiln_queue::{Queue, QueueSettings, priority};
use kiln_worker::{RunOptions, Worker};
use tokio_util::sync::CancellationToken;

#[tokio::main]
async fn main() -> Result<()> {
    let admin = std::env::var("KILN_BENCH_DATABASE_URL").context("KILN_BENCH_DATABASE_URL is not set")?;
    let number = |name: &str, default: u64| std::env::var(name).ok().and_then(|n| n.parse().ok()).unwrap_or(default);
    let runs = number("BENCH_RUNS", 15) as usize;
    let limit_mb = number("BENCH_LIMIT_MB", 128);

    let db = format!("kiln_bench_disk_{}", std::process::id());
    exec(&admin, &format!("CREATE DATABASE {db}")).await?;
    let url = format!("{}/{db}", &admin[..admin.rfind('/').context("a database URL")?]);
    kiln_queue::migrate(&url).await?;
    let data = tempfile::Builder::new().prefix("kiln-bench-disk-").tempdir()?;
    std::fs::set_permissions(data.path(), std::os::unix::fs::PermissionsExt::from_mode(0o755))?;
    kiln_artifact::keygen(&data.path().join("kiln.key"), false)?;
    let env: HashMap<&str, String> = HashMap::from([
        ("DATABASE_URL", url.clone()),
        ("KILN_DATA_DIR", data.path().display().to_string()),
        ("KILN_STORAGE", "local".into()),
        ("KILN_WORKER_ID", "bench-disk".into()),
        ("KILN_MIN_FREE_DISK_MB", "0".into()),
    ]);
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../config.test.yml");
    let base = Config::parse(&std::fs::read_to_string(&path)?, "config.test.yml", &|k| env.get(k).cloned())?;
    let queue = Queue::connect(&url, 4, QueueSettings::from(&base.queue), "kiln-bench").await?;
    let with = |mb: u64, mode: DiskEnforcement| {
        let mut c = base.clone();
        (c.worker.limits.disk_mb, c.worker.limits.disk_enforcement) = (mb, mode);
        c
    };
    let can_mount =
        kiln_worker::disk::DiskPolicy::choose(&with(8, DiskEnforcement::Filesystem).worker.limits, data.path())
            .await
            .map_err(|why| println!("no per-build filesystem on this machine ({why}): the watcher only"))
            .is_ok();
    let mut modes = vec![("watcher", DiskEnforcement::Watcher)];
    if can_mount {
        modes.insert(0, ("filesystem", DiskEnforcement::Filesystem));
    }

    // 1. Overshoot, for a slow writer (a fork per MiB) and dd.
    // The raw baseline writes enough to take seconds: the limit for the slow writer, 2 GiB for dd.
    let writers = [("1 MiB at a time", 1, LOOP, limit_mb), ("dd bs=1M", 3, DD, 2048)];
    let mut patch = 100;
    for (writer, major, script, raw_mb) in writers {
        let rate = raw_write_rate(&base, data.path(), raw_mb, script)?;
        println!("overshoot: the hostile step writing {writer}, limit {limit_mb} MiB, 5 runs each");
        println!("  baseline: the same writer in raw docker run: {rate:.0} MiB/s");
        for (name, mode) in &modes {
            let kiln = Kiln::start(&with(limit_mb, *mode), &queue).await?;
            let mut held = Vec::new();
            for _ in 0..5 {
                patch += 1;
                let spec = spec(&base, "hostile", &format!("v{major}.0.{patch}"), "linux/amd64", &[]);
                let (state, error) = kiln.build(&spec).await?;
                if state != BuildState::Failed || !error.contains("disk limit exceeded") {
                    bail!("the hostile build ended {state}: {error}");
                }
                let mib = error.rsplit("/work held ").next().and_then(|t| t.trim_end_matches(" MiB").parse().ok());
                held.push(mib.context("what /work held")?);
            }
            kiln.stop().await?;
            held.sort_by(f64::total_cmp);
            let (limit, max) = (limit_mb as f64, held[held.len() - 1]);
            println!(
                "  {name:<10} /work held min {:6.1}  median {:6.1}  max {max:6.1} MiB; overshoot at most {:+.1} MiB ({:+.1}% of the limit)",
                held[0],
                held[held.len() / 2],
                max - limit,
                (max - limit) / limit * 100.0
            );
        }
    }

    // 2. Cost on a build.
    let specs = hello_specs(&base, (runs + 1) * 3);
    let mut chunks = specs.chunks(runs + 1);
    let mut cases = vec![("no disk limit", with(0, DiskEnforcement::Auto))];
    cases.extend(modes.iter().map(|(name, mode)| (*name, with(base.worker.limits.disk_mb, *mode))));
    println!(
        "cost: the hello build end to end, {runs} runs each (after one warm-up), disk_mb {}",
        base.worker.limits.disk_mb
    );
    let mut baseline = None;
    for (name, config) in cases {
        let kiln = Kiln::start(&config, &queue).await?;
        let mut times = Vec::new();
        for spec in chunks.next().context("specs")? {
            let start = Instant::now();
            let (state, error) = kiln.build(spec).await?;
            if state != BuildState::Succeeded {
                bail!("hello ended {state}: {error}");
            }
            times.push(start.elapsed());
        }
        kiln.stop().await?;
        let m = median(&mut times[1..].to_vec());
        let base_ms = *baseline.get_or_insert(m);
        println!("  {name:<14} median {m:7.1} ms  ({:.3}x no limit)", m / base_ms);
    }

    drop(queue);
    exec(&admin, &format!("DROP DATABASE {db} WITH (FORCE)")).await?;
    Ok(())
}

/// A worker in this process, and a way to run one build through it.
struct Kiln<'a> {
    queue: &'a Queue,
    shutdown: CancellationToken,
    task: tokio::task::JoinHandle<Result<kiln_worker::Exit, kiln_worker::WorkerError>>,
}

impl<'a> Kiln<'a> {
    async fn start(config: &Config, queue: &'a Queue) -> Result<Kiln<'a>> {
        let worker = Worker::start(config.clone()).await?;
        let shutdown = CancellationToken::new();
        let s = shutdown.clone();
        let task = tokio::spawn(async move { worker.run(RunOptions::default(), s, CancellationToken::new()).await });
        Ok(Kiln { queue, shutdown, task })
    }

    /// Enqueue `spec` and wait for its end (polling every 2 ms, the same
    /// for every case).
    async fn build(&self, spec: &BuildSpec) -> Result<(BuildState, String)> {
        let key: BuildKey = self.queue.enqueue(spec, priority::DEFAULT).await?.build.key;
        let start = Instant::now();
        loop {
            let b = self.queue.get(&key).await?.context("the build exists")?;
            if b.state.is_final() {
                return Ok((b.state, b.error.unwrap_or_default()));
            }
            if start.elapsed() > Duration::from_secs(600) {
                bail!("build {key} did not end");
            }
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
    }

    async fn stop(self) -> Result<()> {
        self.shutdown.cancel();
        self.task.await??;
        Ok(())
    }
}

/// The hostile step's writers (v1 and v3), writing `$1` MiB into /work.
const LOOP: &str = "i=0; while [ $i -lt $1 ]; do head -c 1048576 /dev/zero >> /work/fill; \
                    echo \"wrote $(wc -c < /work/fill) bytes\" >/dev/null; i=$((i+1)); done";
const DD: &str = "dd if=/dev/zero of=/work/fill bs=1M count=$1 2>/dev/null";

/// MiB/s of `script` in a raw `docker run` writing `mb` MiB, less the time
/// of a `docker run` that writes nothing.
fn raw_write_rate(config: &Config, dir: &std::path::Path, mb: u64, script: &str) -> Result<f64> {
    let run = |count: u64| -> Result<Duration> {
        let work = tempfile::tempdir_in(dir)?;
        let start = Instant::now();
        let ok = Command::new("docker")
            .args(["run", "--rm", "--network", "none", "-v"])
            .arg(format!("{}:/work", work.path().display()))
            .args([&config.recipes["hostile"].image, "sh", "-c", script, "writer", &count.to_string()])
            .status()?
            .success();
        if !ok {
            bail!("docker run failed");
        }
        Ok(start.elapsed())
    };
    let (empty, full) = (run(0)?, run(mb)?);
    Ok(mb as f64 / full.saturating_sub(empty).as_secs_f64().max(1e-3))
}

fn spec(config: &Config, recipe: &str, version: &str, platform: &str, plugins: &[(&str, &str)]) -> BuildSpec {
    BuildSpec {
        recipe: recipe.into(),
        recipe_revision: config.recipes[recipe].revision(),
        version: version.parse().expect("a version"),
        platform: platform.parse().expect("a platform"),
        plugins: plugins
            .iter()
            .map(|(m, v)| PluginSpec {
                module: ModulePath::parse("m", m).expect("a module"),
                version: v.parse().expect("a version"),
            })
            .collect(),
        replacements: vec![],
    }
}

/// `n` distinct hello builds: versions × platforms × plugin sets.
fn hello_specs(config: &Config, n: usize) -> Vec<BuildSpec> {
    let platforms = ["linux/amd64", "linux/arm64", "linux/arm/6", "linux/arm/7", "darwin/arm64", "windows/amd64"];
    let plugins: [&[(&str, &str)]; 6] = [
        &[],
        &[("example.com/greet", "v0.1.0")],
        &[("example.com/greet", "v0.2.0")],
        &[("example.com/shout", "v1.0.0")],
        &[("example.com/wave", "v0.3.0")],
        &[("example.com/whisper", "v2.1.0")],
    ];
    let mut out = Vec::new();
    'all: for p in plugins {
        for platform in platforms {
            for version in ["v1.0.0", "v1.1.0"] {
                if out.len() == n {
                    break 'all;
                }
                out.push(spec(config, "hello", version, platform, p));
            }
        }
    }
    out
}

fn median(times: &mut [Duration]) -> f64 {
    times.sort();
    times[times.len() / 2].as_secs_f64() * 1000.0
}

async fn exec(url: &str, sql: &str) -> Result<()> {
    use sqlx::Connection;
    let mut conn = sqlx::PgConnection::connect(url).await?;
    sqlx::query(sql).execute(&mut conn).await?;
    Ok(())
}
