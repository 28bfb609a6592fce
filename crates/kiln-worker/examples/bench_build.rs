//! Builds end to end through Kiln beside the same steps run by hand with
//! `docker run`. Run by `scripts/bench-build`, which starts Postgres and
//! builds the test images first.
//!
//! 1. `hello` (one tiny step) beside raw `docker run` + `tar`: Kiln's own
//!    overhead per build.
//! 2. `kilnd`, the real Go flow (config.example.yml's `caddy` recipe on the
//!    local Go image and the project's module proxy): cold (an empty module
//!    cache), warm (the cache filled, a new plugin set each run), and a
//!    cache hit (the same build again), beside the same five steps run by
//!    hand with `docker run` on the same image, proxy and a module cache
//!    filled the same way. The hand-run `go get` joins the build network
//!    directly; Kiln's goes through its network sandbox.
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
//! Prints each median and the ratios. Environment: `KILN_BENCH_DATABASE_URL`
//! (an admin URL), `BENCH_RUNS` (hello runs, default 15).

use std::collections::HashMap;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail, ensure};
use kiln_config::Config;
use kiln_domain::{BuildSpec, BuildState, ModulePath, PluginSpec};
use kiln_queue::{Channel, Notification, Notifier, Queue, QueueSettings, priority};
use kiln_testkit::goproxy::GoProxy;
use kiln_worker::render::RenderedStep;
use kiln_worker::{RunOptions, Worker};
use tokio::sync::broadcast;
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
    // The step user (uid 1000) works in directories under it.
    std::fs::set_permissions(data.path(), std::os::unix::fs::PermissionsExt::from_mode(0o755))?;
    kiln_artifact::keygen(&data.path().join("kiln.key"), false)?;
    let proxy = GoProxy::start();
    let mut env: HashMap<&str, String> = HashMap::from([
        ("DATABASE_URL", url.clone()),
        ("KILN_DATA_DIR", data.path().display().to_string()),
        ("KILN_STORAGE", "local".into()),
        ("KILN_WORKER_ID", "bench".into()),
    ]);
    env.extend(proxy.env());
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../config.test.yml");
    let config = Config::parse(&std::fs::read_to_string(&path)?, "config.test.yml", &|k| env.get(k).cloned())?;
    let mut kiln = Kiln::start(&config, &url).await?;

    // 1. hello: one tiny step, Kiln against raw docker run + tar.
    let specs = hello_specs(&config, runs + 1)?;
    let mut kiln_times = Vec::new();
    for spec in &specs {
        kiln_times.push(kiln.build(spec).await?);
    }
    let raw = bench_raw(&config, &specs, data.path())?;
    let (k, r) = (median(&kiln_times[1..]), median(&raw[1..]));
    println!("hello build, {runs} runs each (after one warm-up):");
    println!("  kiln (enqueue -> artifact stored): median {:7.1} ms", ms(k));
    println!("  raw  (docker run + tar):           median {:7.1} ms", ms(r));
    println!("  ratio kiln/raw: {:.3}", k.as_secs_f64() / r.as_secs_f64());

    // 2. kilnd: the Go flow, Kiln against the same steps run by hand.
    bench_kilnd(&config, &mut kiln, &proxy, data.path()).await?;

    kiln.stop().await?;
    drop(proxy);
    exec(&admin, &format!("DROP DATABASE {db} WITH (FORCE)")).await?;
    Ok(())
}

/// A warm worker in this process and a way to time one build through it.
struct Kiln {
    queue: Queue,
    _notifier: Notifier,
    events: broadcast::Receiver<Notification>,
    shutdown: CancellationToken,
    task: tokio::task::JoinHandle<Result<kiln_worker::Exit, kiln_worker::WorkerError>>,
}

impl Kiln {
    async fn start(config: &Config, url: &str) -> Result<Kiln> {
        let queue = Queue::connect(url, 4, QueueSettings::from(&config.queue), "kiln-bench").await?;
        let notifier = queue.notifier(&[Channel::Builds]);
        let events = notifier.subscribe();
        let worker = Worker::start(config.clone()).await?;
        let shutdown = CancellationToken::new();
        let s = shutdown.clone();
        let task = tokio::spawn(async move { worker.run(RunOptions::default(), s, CancellationToken::new()).await });
        // Let the listeners connect before the first run.
        tokio::time::sleep(Duration::from_millis(500)).await;
        Ok(Kiln { queue, _notifier: notifier, events, shutdown, task })
    }

    /// Enqueue `spec` and wait until it has succeeded (at once when it had).
    async fn build(&mut self, spec: &BuildSpec) -> Result<Duration> {
        let start = Instant::now();
        let build = self.queue.enqueue(spec, priority::DEFAULT).await?.build;
        let key = build.key;
        if build.state == BuildState::Succeeded {
            return Ok(start.elapsed());
        }
        loop {
            match tokio::time::timeout(Duration::from_secs(1), self.events.recv()).await {
                Ok(Ok(Notification::Build { key: k, state })) if k == key => match state {
                    BuildState::Succeeded => break,
                    s if s.is_final() => bail!("build {key} {s}: {:?}", self.queue.get(&key).await?),
                    _ => {}
                },
                Ok(_) => {}
                // No news for a second (or we fell behind): look.
                Err(_) => match self.queue.state(&key).await? {
                    Some(BuildState::Succeeded) => break,
                    Some(s) if s.is_final() => bail!("build {key} {s}: {:?}", self.queue.get(&key).await?),
                    _ => {}
                },
            }
        }
        Ok(start.elapsed())
    }

    async fn stop(self) -> Result<()> {
        self.shutdown.cancel();
        self.task.await??;
        Ok(())
    }
}

/// Run one rendered step with `docker run` and the worker's isolation flags.
/// `network` is `none` or a network to join; `cache` is `volume:path`.
fn raw_step(
    config: &Config,
    image: &str,
    step: &RenderedStep,
    dir: &Path,
    network: &str,
    cache: Option<&str>,
) -> Result<()> {
    let limits = &config.worker.limits;
    let status = Command::new("docker")
        .args(["run", "--rm", "--network", network, "--cap-drop", "ALL"])
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
        .args(cache.into_iter().flat_map(|c| ["-v", c]))
        .args(["-w", "/work", "--entrypoint", ""])
        .args(step.env.iter().flat_map(|(k, v)| ["-e".to_owned(), format!("{k}={v}")]))
        .arg(image)
        .args(&step.argv)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()?;
    ensure!(status.success(), "docker run of step {:?} failed: {status}", step.name);
    Ok(())
}

/// A fresh `src/` and `out/` for the step user, as the worker makes them.
fn work_dir(dir: &Path) -> Result<()> {
    for sub in ["src", "out"] {
        std::fs::create_dir_all(dir.join(sub))?;
        std::os::unix::fs::chown(dir.join(sub), Some(1000), Some(1000))?;
    }
    Ok(())
}

fn bench_raw(config: &Config, specs: &[BuildSpec], data: &Path) -> Result<Vec<Duration>> {
    let recipe = &config.recipes["hello"];
    let mut times = Vec::new();
    for (i, spec) in specs.iter().enumerate() {
        let steps = kiln_worker::render::render_steps("hello", recipe, spec)?;
        let start = Instant::now();
        let dir = data.join(format!("raw-{i}"));
        work_dir(&dir)?;
        for step in &steps {
            raw_step(config, &recipe.image, step, &dir, "none", None)?;
        }
        tar(&dir)?;
        times.push(start.elapsed());
        std::fs::remove_dir_all(&dir)?;
    }
    Ok(times)
}

fn tar(dir: &Path) -> Result<()> {
    let status = Command::new("tar")
        .arg("-C")
        .arg(dir.join("out"))
        .arg("-cf")
        .arg(dir.join("artifact.tar"))
        .arg(".")
        .status()?;
    ensure!(status.success(), "tar failed");
    Ok(())
}

/// The kilnd builds: cold, warm (alternating with the hand-run ones), hit.
async fn bench_kilnd(config: &Config, kiln: &mut Kiln, proxy: &GoProxy, data: &Path) -> Result<()> {
    let recipe = &config.recipes["kilnd"];
    let spec = |plugins: &[(&str, &str)]| kiln_testkit::rows::recipe_spec("kilnd", recipe, "v1.1.0", plugins);
    let first = spec(&[("example.com/plugins/echo", "v1.0.0")]);
    let warm_sets = [
        spec(&[("example.com/plugins/greet", "v1.1.0")]),
        spec(&[("example.com/plugins/echo", "v1.1.0"), ("example.com/plugins/greet", "v1.0.0")]),
        spec(&[("example.com/plugins/shout", "v1.0.0")]),
    ];

    // The hand-run builds get a module cache of their own, filled like Kiln's.
    let volume = format!("{}-bench-raw", proxy.cache_volume);
    let cache = format!("{volume}:/go/pkg/mod");
    let status = Command::new("docker")
        .args(["run", "--rm", "--network", "none", "-v", &cache, &recipe.image, "chown", "1000:1000", "/go/pkg/mod"])
        .status()?;
    ensure!(status.success(), "preparing the hand-run module cache failed");
    let by_hand = |spec: &BuildSpec, i: usize| -> Result<Duration> {
        let steps = kiln_worker::render::render_steps("kilnd", recipe, spec)?;
        let dir = data.join(format!("kilnd-raw-{i}"));
        let start = Instant::now();
        work_dir(&dir)?;
        for step in &steps {
            let network = if step.network { proxy.network.as_str() } else { "none" };
            raw_step(config, &recipe.image, step, &dir, network, Some(&cache))?;
        }
        tar(&dir)?;
        let elapsed = start.elapsed();
        let _ = Command::new("chmod").arg("-R").arg("u+w").arg(&dir).status();
        std::fs::remove_dir_all(&dir)?;
        Ok(elapsed)
    };

    let cold = kiln.build(&first).await?;
    let raw_cold = by_hand(&first, 0)?;
    let (mut warm, mut raw_warm) = (Vec::new(), Vec::new());
    for (i, s) in warm_sets.iter().enumerate() {
        warm.push(kiln.build(s).await?);
        raw_warm.push(by_hand(s, i + 1)?);
    }
    let hit = kiln.build(&warm_sets[0]).await?;
    let _ = Command::new("docker").args(["volume", "rm", &volume]).output();

    let (w, r) = (median(&warm), median(&raw_warm));
    println!("kilnd build (Go, linux/amd64, {} warm runs each, alternating):", warm.len());
    println!("  kiln cold (empty module cache):         {:8.1} ms", ms(cold));
    println!("  by hand cold (docker run x5):           {:8.1} ms", ms(raw_cold));
    println!(
        "  kiln warm (cache filled, new plugins):  median {:8.1} ms  {:?}",
        ms(w),
        warm.iter().map(|d| ms(*d).round()).collect::<Vec<_>>()
    );
    println!(
        "  by hand warm (docker run x5 + tar):     median {:8.1} ms  {:?}",
        ms(r),
        raw_warm.iter().map(|d| ms(*d).round()).collect::<Vec<_>>()
    );
    println!("  kiln cache hit (the same build again):  {:8.1} ms", ms(hit));
    println!("  ratio kiln warm / by hand warm: {:.3} (goal <= 1.15)", w.as_secs_f64() / r.as_secs_f64());
    Ok(())
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
