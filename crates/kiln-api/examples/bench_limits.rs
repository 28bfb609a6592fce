//! The figures of private farms, each beside its baseline in the same run
//! (`scripts/bench-limits` starts Postgres and runs this):
//!
//! 1. What a well-behaved client gets while another is being rate-limited:
//!    a client with a token fetches a compat hit over 8 connections as fast
//!    as it is answered, alone; then beside an abuser scraping build states
//!    (`GET /api/builds/<a new key each time>`: a database lookup each) at a
//!    steady 3,000 requests per second over 32 connections from one
//!    address (the same load on the machine in both rows), rate-limited
//!    (`api.limits.per_address`: 20/s, burst 20); then beside the same
//!    abuser with no limit. Requests per second of each.
//! 2. The cost of auth on a compat hit: the same closed loop in an open farm
//!    without a token, and in a private farm with a token (cached after its
//!    first use). Three rounds, alternated; the median of each.
//!
//! Everything runs in this process over loopback HTTP (the API served by
//! `kiln_api::run`, clients with reqwest), so the figures are relative:
//! compare the rows, not the machines.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use kiln_api::AppState;
use kiln_config::{AuthMode, Config, RateLimit};
use kiln_domain::{Scopes, TokenSecret};
use kiln_queue::QueueSettings;
use kiln_storage::{ObjectKey, ObjectName, Storage};
use kiln_testkit::TestDb;

/// What the abuser sends, limited or not: the same load on the machine, so
/// the rows differ only in what the API does with it.
const ABUSE_RATE: u32 = 3000;

const COMPAT: &str = "/api/compat?recipe=hello&os=linux&arch=amd64";

fn secs() -> u64 {
    std::env::var("KILN_BENCH_SECS").ok().and_then(|s| s.parse().ok()).unwrap_or(5)
}

fn config(db: &TestDb, dir: &std::path::Path) -> Config {
    let path = kiln_testkit::repo_root().join("config.test.yml");
    let text = std::fs::read_to_string(&path).unwrap();
    let vars = [("DATABASE_URL", db.url().to_owned()), ("KILN_DATA_DIR", dir.display().to_string())];
    let lookup = |name: &str| vars.iter().find(|(k, _)| *k == name).map(|(_, v)| v.clone());
    Config::parse(&text, &path.display().to_string(), &lookup).unwrap()
}

struct Served {
    url: String,
    _stop: tokio::sync::oneshot::Sender<()>,
}

async fn serve(db: &TestDb, dir: &std::path::Path, edit: impl FnOnce(&mut Config)) -> Served {
    let mut config = config(db, dir);
    config.api.compat_timeout_secs = 1;
    edit(&mut config);
    let storage = Storage::from_config(&config.storage).unwrap();
    let state = AppState::new(config, db.queue(QueueSettings::default()), storage);
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    tokio::spawn(kiln_api::run(listener, state, async {
        let _ = stopped.await;
    }));
    Served { url, _stop: stop }
}

/// Counts of one closed loop.
#[derive(Default)]
struct Loop {
    ok: AtomicU64,
    limited: AtomicU64,
    other: AtomicU64,
    /// Latencies of answered requests, in microseconds.
    micros: std::sync::Mutex<Vec<u64>>,
}

/// `connections` tasks sending `GET url` until `stop`, each as fast as it is
/// answered or, with `per_second`, at most that many per second in all; a
/// `{n}` in `url` becomes a new 64-hex-digit key for each request.
fn closed_loop(
    url: String,
    connections: usize,
    headers: Vec<(&'static str, String)>,
    stop: Arc<AtomicBool>,
    per_second: Option<u32>,
) -> (Arc<Loop>, Vec<tokio::task::JoinHandle<()>>) {
    let counts = Arc::new(Loop::default());
    let client = reqwest::Client::builder().pool_max_idle_per_host(connections).build().unwrap();
    let tasks = (0..connections)
        .map(|_| {
            let (client, url, headers, stop, counts) =
                (client.clone(), url.clone(), headers.clone(), stop.clone(), counts.clone());
            tokio::spawn(async move {
                let mut mine = Vec::new();
                let mut n = 0u64;
                let mut pace = per_second.map(|r| {
                    let mut i = tokio::time::interval(Duration::from_secs_f64(connections as f64 / f64::from(r)));
                    i.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
                    i
                });
                while !stop.load(Ordering::Relaxed) {
                    if let Some(p) = pace.as_mut() {
                        p.tick().await;
                    }
                    n += 1;
                    let target = if url.contains("{n}") {
                        url.replace("{n}", &format!("{:064x}", (n << 20) ^ (std::ptr::addr_of!(n) as u64)))
                    } else {
                        url.clone()
                    };
                    let mut r = client.get(&target);
                    for (k, v) in &headers {
                        r = r.header(*k, v);
                    }
                    let t = Instant::now();
                    match r.send().await {
                        Ok(resp) => {
                            let status = resp.status().as_u16();
                            let _ = resp.bytes().await;
                            match status {
                                200 => {
                                    counts.ok.fetch_add(1, Ordering::Relaxed);
                                    mine.push(t.elapsed().as_micros() as u64);
                                }
                                // The abuser's unknown builds are answered.
                                404 => {
                                    counts.ok.fetch_add(1, Ordering::Relaxed);
                                }
                                429 => {
                                    counts.limited.fetch_add(1, Ordering::Relaxed);
                                }
                                _ => {
                                    counts.other.fetch_add(1, Ordering::Relaxed);
                                }
                            }
                        }
                        Err(_) => {
                            counts.other.fetch_add(1, Ordering::Relaxed);
                        }
                    }
                }
                counts.micros.lock().unwrap().extend(mine);
            })
        })
        .collect();
    (counts, tasks)
}

#[derive(Default)]
struct Figures {
    rps: f64,
    p50_ms: f64,
    limited_rps: f64,
    other: u64,
}

/// Run the `good` loop for the bench's duration, with `abuser` beside it.
async fn measure(
    good: (String, Vec<(&'static str, String)>),
    abuser: Option<(String, Vec<(&'static str, String)>)>,
) -> (Figures, Option<Figures>) {
    let stop = Arc::new(AtomicBool::new(false));
    let (a_counts, a_tasks) = match abuser {
        Some((url, headers)) => {
            let (c, t) = closed_loop(url, 32, headers, stop.clone(), Some(ABUSE_RATE));
            (Some(c), t)
        }
        None => (None, Vec::new()),
    };
    let (g_counts, g_tasks) = closed_loop(good.0, 8, good.1, stop.clone(), None);
    let secs = secs();
    let started = Instant::now();
    tokio::time::sleep(Duration::from_secs(secs)).await;
    stop.store(true, Ordering::Relaxed);
    let elapsed = started.elapsed().as_secs_f64();
    for t in g_tasks.into_iter().chain(a_tasks) {
        let _ = t.await;
    }
    let figures = |c: &Loop| {
        let mut m = c.micros.lock().unwrap().clone();
        m.sort_unstable();
        Figures {
            rps: c.ok.load(Ordering::Relaxed) as f64 / elapsed,
            p50_ms: m.get(m.len() / 2).copied().unwrap_or_default() as f64 / 1000.0,
            limited_rps: c.limited.load(Ordering::Relaxed) as f64 / elapsed,
            other: c.other.load(Ordering::Relaxed),
        }
    };
    (figures(&g_counts), a_counts.as_deref().map(figures))
}

/// A succeeded `hello` build for the compat query, with its binary stored.
async fn built(db: &TestDb, url: &str, storage: &Storage) {
    let r = reqwest::get(format!("{url}{COMPAT}")).await.unwrap();
    assert_eq!(r.status(), 504, "the compat miss queues the build");
    let queue = db.queue(QueueSettings::default());
    let claim = queue.claim("bench", &[]).await.unwrap().expect("the queued build");
    storage.put_bytes(&ObjectKey::new(&claim.lease.key, ObjectName::Binary), vec![7u8; 512]).await.unwrap();
    queue.complete(&claim.lease, &kiln_testkit::rows::manifest(&claim.spec, "bench")).await.unwrap();
}

#[tokio::main]
async fn main() {
    let db = TestDb::new().await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    let storage = Storage::from_config(&config(&db, dir.path()).storage).unwrap();
    let queue = db.queue(QueueSettings::default());
    let secret = TokenSecret::from_random(*b"bench-bench-bench-bench-bench-32");
    queue.create_token("bench", &Scopes::parse_list("download,submit").unwrap(), &secret.hash()).await.unwrap();
    let bearer = ("authorization", format!("Bearer {}", secret.expose()));
    let from = |addr: &str| ("x-forwarded-for", addr.to_owned());

    let open = serve(&db, dir.path(), |_| {}).await;
    built(&db, &open.url, &storage).await;
    let limited = serve(&db, dir.path(), |c| {
        c.api.limits.per_address = RateLimit { requests_per_second: 20, burst: 20 };
        c.api.limits.trusted_proxies = vec!["127.0.0.1".into()];
    })
    .await;
    let private = serve(&db, dir.path(), |c| c.api.auth.mode = AuthMode::Tokens).await;
    println!("each row: {} s of closed-loop GET {COMPAT} (a compat hit, 512-byte binary)", secs());

    println!(
        "\n1. a well-behaved client (token, 8 connections, compat hits) beside an abuser \
         (one address, {ABUSE_RATE} req/s over 32 connections, GET /api/builds/<unknown key>: a database lookup each)"
    );
    let good = |s: &Served| (format!("{}{COMPAT}", s.url), vec![bearer.clone(), from("198.51.100.1")]);
    let abuser = |s: &Served| (format!("{}/api/builds/{{n}}", s.url), vec![from("203.0.113.66")]);
    let (alone, _) = measure(good(&limited), None).await;
    let (beside, a) = measure(good(&limited), Some(abuser(&limited))).await;
    let a = a.unwrap();
    let (unlimited, u) = measure(good(&open), Some(abuser(&open))).await;
    let u = u.unwrap();
    println!("   alone (baseline)                  : {:8.0} req/s  p50 {:6.2} ms", alone.rps, alone.p50_ms);
    println!(
        "   abuser rate-limited (20/s)         : {:8.0} req/s  p50 {:6.2} ms  ({:.0}% of alone; abuser served {:.0}/s, refused 429 {:.0}/s)",
        beside.rps,
        beside.p50_ms,
        100.0 * beside.rps / alone.rps,
        a.rps,
        a.limited_rps
    );
    println!(
        "   abuser not limited                 : {:8.0} req/s  p50 {:6.2} ms  ({:.0}% of alone; abuser served {:.0}/s)",
        unlimited.rps,
        unlimited.p50_ms,
        100.0 * unlimited.rps / alone.rps,
        u.rps
    );

    println!("\n2. the cost of auth on a compat hit (8 connections, one client; median of 3 alternated rounds)");
    let mut rounds: [Vec<Figures>; 3] = Default::default();
    for _ in 0..3 {
        rounds[0].push(measure((format!("{}{COMPAT}", open.url), vec![]), None).await.0);
        rounds[1].push(measure((format!("{}{COMPAT}", private.url), vec![bearer.clone()]), None).await.0);
        rounds[2].push(measure((format!("{}{COMPAT}", open.url), vec![bearer.clone()]), None).await.0);
    }
    let [anon, token, open_token] = rounds.map(|mut r| {
        r.sort_by(|a, b| a.rps.total_cmp(&b.rps));
        r.swap_remove(1)
    });
    println!("   open farm, no token (baseline)     : {:8.0} req/s  p50 {:6.2} ms", anon.rps, anon.p50_ms);
    println!(
        "   private farm, bearer token         : {:8.0} req/s  p50 {:6.2} ms  ({:+.1}% req/s)",
        token.rps,
        token.p50_ms,
        100.0 * (token.rps / anon.rps - 1.0)
    );
    println!(
        "   open farm, bearer token            : {:8.0} req/s  p50 {:6.2} ms  ({:+.1}% req/s)",
        open_token.rps,
        open_token.p50_ms,
        100.0 * (open_token.rps / anon.rps - 1.0)
    );
    let errors = [alone.other, beside.other, unlimited.other, anon.other, token.other, open_token.other];
    if errors.iter().any(|e| *e > 0) {
        println!("\nunexpected answers (neither 200 nor 429) per row: {errors:?}");
    }
}
