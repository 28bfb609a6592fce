//! The `hello` build end to end through Kiln beside the same step with raw
//! `docker run` and plain `tar`. Run by `scripts/bench-build`, which starts
//! Postgres and builds the test image first.
//!
//! Kiln: a warm worker waits on `NOTIFY`; each run enqueues a new build
//! (distinct platform, version and plugins, so nothing is served from an
//! earlier run) and ends when the build is `succeeded`: the step ran in its
//! locked-down container, `out/` was packed, signed and uploaded with the
//! log and `build.json`, and the job completed.
//!
//! Raw: the same rendered argv in `docker run --rm` with the same isolation
//! flags over a fresh directory, then `tar -cf` of `out/`.
//!
//! Prints each median and the ratio. Environment: `KILN_BENCH_DATABASE_URL`
//! (an admin URL), `BENCH_RUNS` (default 15).

use std::collections::HashMap;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail, ensure};
use kiln_config::Config;
use kiln_domain::{BuildSpec, BuildState, ModulePath, PluginSpec};
use kiln_queue::{Channel, Notification, Queue, QueueSettings, priority};
use kiln_worker::{RunOptions, Worker};
use tokio_util::sync::CancellationToken;

#[tokio::main]
async fn main() -> Result<()> {
    let admin = std::env::var("KILN_BENCH_DATABASE_URL").context("KILN_BENCH_DATABASE_URL is not set")?;
    let runs: usize = std::env::var("BENCH_RUNS").ok().and_then(|n| n.parse().ok()).unwrap_or(15);

    // A fresh database and data directory.
    let db = format!("kiln_bench_{}", std::process::id());
    exec(&admin, &format!("CREATE DATABASE {db}")).await?;
    let url = format!("{}/{db}", &admin[..admin.rfind('/').context("a database URL")?]);
    kiln_queue::migrate(&url).await?;
    let data = tempfile::Builder::new().prefix("kiln-bench-").tempdir()?;
    kiln_artifact::keygen(&data.path().join("kiln.key"), false)?;
    let env: HashMap<&str, String> = HashMap::from([
        ("DATABASE_URL", url.clone()),
        ("KILN_DATA_DIR", data.path().display().to_string()),
        ("KILN_STORAGE", "local".into()),
        ("KILN_WORKER_ID", "bench".into()),
    ]);
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../config.test.yml");
    let config = Config::parse(&std::fs::read_to_string(&path)?, "config.test.yml", &|k| env.get(k).cloned())?;

    let specs = hello_specs(&config, runs + 1)?;
    let kiln = bench_kiln(&config, &url, &specs).await?;
    let raw = bench_raw(&config, &specs, data.path())?;

    let (k, r) = (median(&kiln[1..]), median(&raw[1..]));
    println!("hello build, {runs} runs each (after one warm-up):");
    println!("  kiln (enqueue -> artifact stored): median {:7.1} ms", ms(k));
    println!("  raw  (docker run + tar):           median {:7.1} ms", ms(r));
    println!("  ratio kiln/raw: {:.3}", k.as_secs_f64() / r.as_secs_f64());
    exec(&admin, &format!("DROP DATABASE {db} WITH (FORCE)")).await?;
    Ok(())
}

async fn bench_kiln(config: &Config, url: &str, specs: &[BuildSpec]) -> Result<Vec<Duration>> {
    let queue = Queue::connect(url, 4, QueueSettings::from(&config.queue), "kiln-bench").await?;
    let notifier = queue.notifier(&[Channel::Builds]);
    let mut events = notifier.subscribe();
    let worker = Worker::start(config.clone()).await?;
    let shutdown = CancellationToken::new();
    let s = shutdown.clone();
    let task = tokio::spawn(async move { worker.run(RunOptions::default(), s, CancellationToken::new()).await });
    // Let the listeners connect before the first run.
    tokio::time::sleep(Duration::from_millis(500)).await;

    let mut times = Vec::new();
    for spec in specs {
        let start = Instant::now();
        let key = queue.enqueue(spec, priority::DEFAULT).await?.build.key;
        loop {
            match tokio::time::timeout(Duration::from_secs(1), events.recv()).await {
                Ok(Ok(Notification::Build { key: k, state })) if k == key => match state {
                    BuildState::Succeeded => break,
                    s if s.is_final() => bail!("build {key} {s}: {:?}", queue.get(&key).await?),
                    _ => {}
                },
                Ok(_) => {}
                // No news for a second (or we fell behind): look.
                Err(_) => {
                    if queue.state(&key).await? == Some(BuildState::Succeeded) {
                        break;
                    }
                }
            }
        }
        times.push(start.elapsed());
    }
    shutdown.cancel();
    task.await??;
    Ok(times)
}

fn bench_raw(config: &Config, specs: &[BuildSpec], data: &std::path::Path) -> Result<Vec<Duration>> {
    let recipe = &config.recipes["hello"];
    let limits = &config.worker.limits;
    let mut times = Vec::new();
    for (i, spec) in specs.iter().enumerate() {
        let steps = kiln_worker::render::render_steps("hello", recipe, spec)?;
        let start = Instant::now();
        let dir = data.join(format!("raw-{i}"));
        for sub in ["src", "out"] {
            std::fs::create_dir_all(dir.join(sub))?;
            std::os::unix::fs::chown(dir.join(sub), Some(1000), Some(1000))?;
        }
        for step in &steps {
            let status = Command::new("docker")
                .args(["run", "--rm", "--network", "none", "--cap-drop", "ALL"])
                .args(["--security-opt", "no-new-privileges", "--read-only"])
                .arg("--tmpfs")
                .arg(format!("/tmp:rw,nosuid,nodev,size={}m,mode=1777", limits.tmpfs_mb))
                .args(["--user", &limits.user])
                .arg(format!("--memory={}m", limits.memory_mb))
                .arg(format!("--memory-swap={}m", limits.memory_mb))
                .arg(format!("--cpus={}", limits.cpus))
                .arg(format!("--pids-limit={}", limits.pids))
                .arg("-v")
                .arg(format!("{}:/work", dir.display()))
                .args(["-w", "/work", "--entrypoint", ""])
                .args(step.env.iter().flat_map(|(k, v)| ["-e".to_owned(), format!("{k}={v}")]))
                .arg(&recipe.image)
                .args(&step.argv)
                .stdout(Stdio::null())
                .status()?;
            ensure!(status.success(), "docker run failed: {status}");
        }
        let status = Command::new("tar")
            .arg("-C")
            .arg(dir.join("out"))
            .arg("-cf")
            .arg(dir.join("artifact.tar"))
            .arg(".")
            .status()?;
        ensure!(status.success(), "tar failed");
        times.push(start.elapsed());
        std::fs::remove_dir_all(&dir)?;
    }
    Ok(times)
}

/// `n` distinct `hello` builds: every platform, version and plugin set.
fn hello_specs(config: &Config, n: usize) -> Result<Vec<BuildSpec>> {
    let recipe = &config.recipes["hello"];
    let kiln_domain::recipe::VersionSource::Static { versions } = &recipe.versions else {
        bail!("hello has static versions")
    };
    let plugin =
        |m: &str, v: &str| PluginSpec { module: ModulePath::parse("m", m).unwrap(), version: v.parse().unwrap() };
    let plugin_sets = [
        vec![],
        vec![plugin("example.com/greet", "v0.2.0")],
        vec![plugin("example.com/greet", "v0.2.0"), plugin("example.com/shout", "v1.0.0")],
        vec![plugin("example.com/greet", "v0.1.0"), plugin("example.com/shout", "v1.0.0")],
        vec![plugin("example.com/shout", "v1.0.0")],
        vec![plugin("example.com/greet", "v0.1.0")],
    ];
    let mut specs = Vec::new();
    for plugins in &plugin_sets {
        for version in versions {
            for platform in &recipe.platforms {
                specs.push(BuildSpec {
                    recipe: "hello".into(),
                    recipe_revision: recipe.revision(),
                    version: version.clone(),
                    platform: platform.clone(),
                    plugins: plugins.clone(),
                    replacements: vec![],
                });
            }
        }
    }
    ensure!(specs.len() >= n, "at most {} distinct hello builds", specs.len());
    specs.truncate(n);
    Ok(specs)
}

fn median(times: &[Duration]) -> Duration {
    let mut t = times.to_vec();
    t.sort();
    t[t.len() / 2]
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

async fn exec(url: &str, sql: &str) -> Result<()> {
    use sqlx::Connection;
    let mut conn = sqlx::PgConnection::connect(url).await?;
    sqlx::query(sql).execute(&mut conn).await?;
    Ok(())
}
