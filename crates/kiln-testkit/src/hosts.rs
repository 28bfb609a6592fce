//! A farm of Kiln hosts on one machine: every process on a host of its
//! own (a network namespace, see [`crate::netns`]), as an operator would
//! run them on separate machines.
//!
//! | host | address | runs | reaches |
//! | --- | --- | --- | --- |
//! | `db` | `.2` | Postgres (a cluster of its own) | everyone |
//! | `store` | `.3` | s3s-fs | everyone |
//! | `edge` | `.5` | nginx with `deploy/nginx/kiln.conf.template` | everyone |
//! | `janitor` | `.6` | `kiln-janitor run` | `db`, `store` |
//! | `api-a`, `api-b`, … | `.10`… | `kiln-api` on port 8234 | everyone |
//! | `w1`, `w2`, … | `.21`… | `kiln-worker` | `db`, `store` (and the Docker socket, a file) |
//!
//! The test process reaches the open hosts from `10.213.<n>.1`. Every host
//! reads `config.test.yml` (or [`Layout::config`]) with the farm's
//! addresses in its environment; storage is S3 (the `store` host). Dropping
//! the farm kills its processes, stops Postgres, removes the containers its
//! workers left, and deletes the network and the files.

use std::collections::BTreeMap;
use std::net::{Ipv4Addr, SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};

use crate::farm::{Proc, bin, set_mode};
use crate::netns::{Host, HostSpec, Net};

pub const API_PORT: u16 = 8234;
pub const EDGE_PORT: u16 = 8080;
const PG_PORT: u16 = 5432;
const S3_PORT: u16 = 9000;
const S3_ACCESS: &str = "kiln-test-access";
const S3_SECRET: &str = "kiln-test-secret-key";

/// What to start.
#[derive(Debug, Clone)]
pub struct Layout {
    pub apis: usize,
    pub workers: usize,
    /// nginx on `edge` in front of the APIs.
    pub edge: bool,
    pub janitor: bool,
    /// Start the workers at once (else with [`HostFarm::start_worker`]).
    pub start_workers: bool,
    /// The configuration every host reads (default: `config.test.yml`).
    pub config: Option<PathBuf>,
    /// Extra environment for every process.
    pub env: Vec<(String, String)>,
}

impl Default for Layout {
    fn default() -> Self {
        Layout { apis: 2, workers: 1, edge: true, janitor: true, start_workers: true, config: None, env: Vec::new() }
    }
}

/// Why the host farm cannot run here, if it cannot: not root, no `ip`,
/// nginx, Postgres, s3s-fs or Docker. Prints the loud `SKIPPED` line.
pub fn unavailable(test: &str) -> bool {
    let why = crate::netns::unavailable()
        .or_else(|| nginx_bin().is_none().then(|| "nginx is not installed (scripts/test installs it)".to_owned()))
        .or_else(|| pg_bin().is_err().then(|| "no Postgres server binaries (scripts/test installs them)".to_owned()))
        .or_else(|| {
            std::env::var_os(crate::s3::S3FS_BIN_VAR)
                .is_none()
                .then(|| format!("{} is not set (run through scripts/test)", crate::s3::S3FS_BIN_VAR))
        });
    if let Some(why) = why {
        let line = format!("SKIPPED: multi-host farm unavailable: {test} did not run ({why})");
        println!("{line}");
        eprintln!("{line}");
        return true;
    }
    !crate::docker_available(test)
}

fn nginx_bin() -> Option<PathBuf> {
    ["/usr/sbin/nginx", "/usr/bin/nginx"].iter().map(PathBuf::from).find(|p| p.exists())
}

/// Postgres's server binaries: `KILN_TEST_PG_BIN`, else the newest installed.
fn pg_bin() -> anyhow::Result<PathBuf> {
    if let Some(b) = std::env::var_os("KILN_TEST_PG_BIN") {
        return Ok(b.into());
    }
    let mut found: Vec<PathBuf> = std::fs::read_dir("/usr/lib/postgresql")?
        .flatten()
        .map(|e| e.path().join("bin"))
        .filter(|p| p.join("initdb").exists())
        .collect();
    found.sort_by_key(|p| p.to_string_lossy().split('/').nth(4).and_then(|v| v.parse::<u32>().ok()));
    found.pop().context("no /usr/lib/postgresql/*/bin/initdb")
}

/// The running farm.
pub struct HostFarm {
    procs: Mutex<BTreeMap<String, Proc>>,
    pg_data: PathBuf,
    pg_bin: PathBuf,
    net: Net,
    dir: tempfile::TempDir,
    env: BTreeMap<String, String>,
    apis: Vec<Host>,
    workers: Vec<(Host, String)>,
    pool: sqlx::PgPool,
}

impl std::fmt::Debug for HostFarm {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("HostFarm").field("net", &self.net).field("dir", &self.dir.path()).finish_non_exhaustive()
    }
}

impl HostFarm {
    /// Make the network and start everything in `layout`; panics, with the
    /// logs, when something does not come up.
    pub async fn start(layout: Layout) -> HostFarm {
        match Self::try_start(layout).await {
            Ok(f) => f,
            Err(e) => panic!("the multi-host farm did not start: {e:#}"),
        }
    }

    async fn try_start(layout: Layout) -> anyhow::Result<HostFarm> {
        let net = Net::new()?;
        let dir = tempfile::Builder::new().prefix("kiln-hosts-").tempdir()?;
        // Build containers run as an unprivileged user and write into work dirs here.
        set_mode(dir.path(), 0o755);
        let tag = format!("h{}p{}", net.number(), std::process::id());

        let db = net.add(&HostSpec::open("db", 2))?;
        let store = net.add(&HostSpec::open("store", 3))?;
        let apis: Vec<Host> =
            (0..layout.apis).map(|i| net.add(&HostSpec::open(&api_name(i), 10 + i as u8))).collect::<Result<_, _>>()?;
        let edge = if layout.edge { Some(net.add(&HostSpec::open("edge", 5))?) } else { None };
        let janitor =
            if layout.janitor { Some(net.add(&HostSpec::reach("janitor", 6, &["db", "store"]))?) } else { None };
        let workers: Vec<(Host, String)> = (0..layout.workers)
            .map(|i| {
                let h = net.add(&HostSpec::reach(&format!("w{}", i + 1), 21 + i as u8, &["db", "store"]))?;
                anyhow::Ok((h, format!("{tag}-w{}", i + 1)))
            })
            .collect::<Result<_, _>>()?;

        let pg_bin = pg_bin()?;
        let pg_data = dir.path().join("pg");
        let mut farm = HostFarm {
            procs: Mutex::new(BTreeMap::new()),
            pg_data: pg_data.clone(),
            pg_bin,
            net,
            env: BTreeMap::new(),
            apis,
            workers,
            // Replaced once Postgres is up; a lazy pool never connects by itself.
            pool: sqlx::postgres::PgPoolOptions::new().connect_lazy("postgres://localhost/none")?,
            dir,
        };
        let db_url = farm.start_postgres(&db).await?;
        farm.start_store(&store)?;

        let config = layout.config.clone().unwrap_or_else(|| crate::repo_root().join("config.test.yml"));
        let key = farm.dir.path().join("kiln.key");
        kiln_artifact::keygen(&key, false).context("signing key")?;
        let s3 = format!("http://{}:{S3_PORT}", store.addr);
        for (k, v) in [
            ("CONFIG_PATH", config.display().to_string()),
            ("DATABASE_URL", db_url),
            ("KILN_STORAGE", "s3".to_owned()),
            ("KILN_S3_ENDPOINT", s3),
            ("KILN_S3_BUCKET", "kiln".to_owned()),
            ("AWS_REGION", "us-east-1".to_owned()),
            ("AWS_ACCESS_KEY_ID", S3_ACCESS.to_owned()),
            ("AWS_SECRET_ACCESS_KEY", S3_SECRET.to_owned()),
            ("KILN_SIGNING_KEY", key.display().to_string()),
            ("KILN_LISTEN", format!("0.0.0.0:{API_PORT}")),
            ("RUST_LOG", "info,sqlx=warn".to_owned()),
        ] {
            farm.env.insert(k.to_owned(), v);
        }
        farm.env.extend(layout.env.iter().cloned());
        kiln_queue::migrate(&farm.env["DATABASE_URL"]).await.context("migrating the farm's database")?;

        for i in 0..farm.apis.len() {
            farm.start_api(i).await?;
        }
        if let Some(edge) = &edge {
            farm.start_edge(edge).await?;
        }
        if let Some(j) = &janitor {
            farm.spawn_on(j, "janitor", "kiln-janitor", &["run"], &[]);
        }
        if layout.start_workers {
            for i in 0..farm.workers.len() {
                farm.start_worker(i);
            }
        }
        Ok(farm)
    }

    async fn start_postgres(&mut self, db: &Host) -> anyhow::Result<String> {
        let data = &self.pg_data;
        std::fs::create_dir_all(data)?;
        let postgres = users_id("postgres")?;
        std::os::unix::fs::chown(data, Some(postgres), Some(postgres))?;
        set_mode(data, 0o700);
        let as_pg = |program: &str| {
            let mut c = db.command("runuser");
            c.args(["-u", "postgres", "--"]).arg(self.pg_bin.join(program));
            c
        };
        let out = as_pg("initdb")
            .args(["-N", "-U", "postgres", "--auth=trust", "-E", "UTF8", "--locale=C", "-D"])
            .arg(data)
            .output()?;
        anyhow::ensure!(out.status.success(), "initdb: {}", String::from_utf8_lossy(&out.stderr));
        std::fs::write(data.join("pg_hba.conf"), "local all all trust\nhost all all 0.0.0.0/0 trust\n")?;
        let opts = format!(
            "-c listen_addresses={} -p {PG_PORT} -k {} -c fsync=off -c synchronous_commit=off \
             -c full_page_writes=off -c max_connections=300",
            db.addr,
            data.display()
        );
        let out = as_pg("pg_ctl")
            .args(["-w", "-t", "60", "-o", &opts, "-l"])
            .arg(data.join("server.log"))
            .arg("-D")
            .arg(data)
            .arg("start")
            .output()?;
        if !out.status.success() {
            let log = std::fs::read_to_string(data.join("server.log")).unwrap_or_default();
            bail!("pg_ctl start: {}\n{log}", String::from_utf8_lossy(&out.stderr));
        }
        let admin = format!("postgres://postgres@{}:{PG_PORT}/postgres", db.addr);
        let pool = sqlx::PgPool::connect(&admin).await.context("connecting to the farm's Postgres")?;
        sqlx::query("CREATE DATABASE kiln").execute(&pool).await?;
        pool.close().await;
        let url = format!("postgres://postgres@{}:{PG_PORT}/kiln", db.addr);
        self.pool = sqlx::postgres::PgPoolOptions::new()
            .max_connections(4)
            .acquire_timeout(Duration::from_secs(60))
            .connect(&url)
            .await?;
        Ok(url)
    }

    fn start_store(&self, store: &Host) -> anyhow::Result<()> {
        let bin = std::env::var_os(crate::s3::S3FS_BIN_VAR).context("s3s-fs")?;
        let data = self.dir.path().join("s3");
        std::fs::create_dir_all(data.join("kiln"))?;
        let mut cmd = store.command(bin);
        cmd.args(["--host", &store.addr.to_string(), "--port", &S3_PORT.to_string()])
            .args(["--access-key", S3_ACCESS, "--secret-key", S3_SECRET])
            .arg(&data);
        let label = "store".to_owned();
        let proc = Proc::spawn(cmd, &label, &self.log_path(&label));
        self.procs.lock().expect("procs").insert(label.clone(), proc);
        wait_tcp(SocketAddr::from((store.addr, S3_PORT)), &label, self)
    }

    async fn start_edge(&self, edge: &Host) -> anyhow::Result<()> {
        let nginx = nginx_bin().context("nginx")?;
        let dir = self.dir.path().join("edge");
        std::fs::create_dir_all(dir.join("cache"))?;
        let servers: String =
            self.apis.iter().map(|h| format!("server {}:{API_PORT} max_fails=1 fail_timeout=5s; ", h.addr)).collect();
        let site = render_template(
            &std::fs::read_to_string(crate::repo_root().join("deploy/nginx/kiln.conf.template"))?,
            &[
                ("KILN_NGINX_LISTEN", format!("{}:{EDGE_PORT}", edge.addr)),
                ("KILN_API_SERVERS", servers),
                ("KILN_NGINX_CACHE", dir.join("cache").display().to_string()),
                ("KILN_NGINX_LOG", self.edge_log_path().display().to_string()),
            ],
        )?;
        std::fs::write(dir.join("kiln.conf"), site)?;
        let d = dir.display();
        // The daemon's own settings (Debian keeps these in /etc/nginx/nginx.conf).
        let main = format!(
            "daemon off;\nuser root;\nworker_processes 2;\npid {d}/nginx.pid;\nerror_log {d}/error.log;\n\
             events {{ worker_connections 4096; }}\n\
             http {{\n  default_type application/octet-stream;\n  sendfile on;\n  tcp_nopush on;\n\
             client_body_temp_path {d}/client_body;\n  proxy_temp_path {d}/proxy;\n\
             fastcgi_temp_path {d}/fastcgi;\n  uwsgi_temp_path {d}/uwsgi;\n  scgi_temp_path {d}/scgi;\n\
             include {d}/kiln.conf;\n}}\n"
        );
        std::fs::write(dir.join("nginx.conf"), main)?;
        let mut cmd = edge.command(nginx);
        cmd.arg("-c").arg(dir.join("nginx.conf")).arg("-p").arg(&dir);
        let proc = Proc::spawn(cmd, "edge", &self.log_path("edge"));
        self.procs.lock().expect("procs").insert("edge".into(), proc);
        let url = format!("{}/healthz", self.edge_url());
        self.wait_http(&url, "edge").await
    }

    /// Start `program` on `host` in the farm's environment, as `label`.
    pub fn spawn_on(&self, host: &Host, label: &str, program: &str, args: &[&str], extra: &[(&str, &str)]) {
        let data = self.dir.path().join(&host.name);
        std::fs::create_dir_all(&data).expect("host dir");
        set_mode(&data, 0o755);
        let mut cmd = host.command(bin(program));
        cmd.args(args)
            .envs(&self.env)
            .env("KILN_DATA_DIR", &data)
            .env("HOSTNAME", &host.name)
            .envs(extra.iter().copied());
        let proc = Proc::spawn(cmd, label, &self.log_path(label));
        if let Some(mut old) = self.procs.lock().expect("procs").insert(label.to_owned(), proc) {
            old.kill();
        }
    }

    /// Start (or start again) API `i` and wait until it is ready.
    pub async fn start_api(&self, i: usize) -> anyhow::Result<()> {
        let host = self.apis[i].clone();
        self.spawn_on(&host, &host.name, "kiln-api", &[], &[]);
        self.wait_http(&format!("{}/readyz", self.api_url(i)), &host.name).await
    }

    /// Start (or start again) worker `i` (0-based) on its host.
    pub fn start_worker(&self, i: usize) {
        let (host, id) = self.workers[i].clone();
        self.spawn_on(&host, &host.name, "kiln-worker", &[], &[("KILN_WORKER_ID", &id)]);
    }

    async fn wait_http(&self, url: &str, label: &str) -> anyhow::Result<()> {
        let client = client();
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            if let Ok(r) = client.get(url).timeout(Duration::from_secs(2)).send().await
                && r.status().is_success()
            {
                return Ok(());
            }
            if let Some(status) = self.exited(label) {
                bail!("{label} exited with {status}:\n{}", self.output(label));
            }
            if Instant::now() > deadline {
                bail!("{label} did not answer {url} within 60 s:\n{}", self.output(label));
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// The exit status of the process `label`, when it has exited.
    pub fn exited(&self, label: &str) -> Option<std::process::ExitStatus> {
        self.procs.lock().expect("procs").get_mut(label).and_then(Proc::exited)
    }

    /// Wait up to `limit` for process `label` to exit.
    pub fn wait_exit(&self, label: &str, limit: Duration) -> Option<std::process::ExitStatus> {
        let deadline = Instant::now() + limit;
        loop {
            if let Some(s) = self.exited(label) {
                return Some(s);
            }
            if Instant::now() > deadline {
                return None;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Send signal `sig` (`TERM`, `KILL`, …) to process `label`.
    pub fn signal(&self, label: &str, sig: &str) {
        if let Some(p) = self.procs.lock().expect("procs").get(label) {
            p.signal(sig);
        }
    }

    /// Everything process `label` printed so far.
    pub fn output(&self, label: &str) -> String {
        std::fs::read_to_string(self.log_path(label)).unwrap_or_default()
    }

    fn log_path(&self, label: &str) -> PathBuf {
        self.dir.path().join(format!("{label}.log"))
    }

    /// The last lines of every process's log, for a failing assertion.
    pub fn logs(&self) -> String {
        let labels: Vec<String> = self.procs.lock().expect("procs").keys().cloned().collect();
        let mut out = String::new();
        for l in labels {
            let text = self.output(&l);
            let tail: Vec<&str> = text.lines().rev().take(40).collect();
            out.push_str(&format!("--- {l} (last {} lines)\n", tail.len()));
            for line in tail.iter().rev() {
                out.push_str(line);
                out.push('\n');
            }
        }
        out
    }

    /// `http://<api i>:8234`.
    pub fn api_url(&self, i: usize) -> String {
        format!("http://{}:{API_PORT}", self.apis[i].addr)
    }

    /// The label (and host name) of API `i`: `api-a`, `api-b`, …
    pub fn api_label(&self, i: usize) -> String {
        self.apis[i].name.clone()
    }

    /// `http://<edge>:8080`, nginx in front of the APIs.
    pub fn edge_url(&self) -> String {
        format!("http://{}:{EDGE_PORT}", self.net.addr(5))
    }

    fn edge_log_path(&self) -> PathBuf {
        self.dir.path().join("edge").join("access.log")
    }

    /// nginx's access log (`deploy/nginx`'s `kiln` format).
    pub fn edge_log(&self) -> String {
        std::fs::read_to_string(self.edge_log_path()).unwrap_or_default()
    }

    /// The address of API `i` as nginx names it in `upstream=`.
    pub fn api_addr(&self, i: usize) -> SocketAddr {
        SocketAddr::from((self.apis[i].addr, API_PORT))
    }

    /// Worker `i`'s id (0-based) and the label of its process and host.
    pub fn worker(&self, i: usize) -> (String, String) {
        let (h, id) = &self.workers[i];
        (id.clone(), h.name.clone())
    }

    /// A pool on the farm's database, from the test process.
    pub fn pool(&self) -> &sqlx::PgPool {
        &self.pool
    }

    /// The farm's database URL.
    pub fn database_url(&self) -> &str {
        &self.env["DATABASE_URL"]
    }

    /// Take `host`'s link down (`db`, `store`, `api-a`, `w1`, …).
    pub fn cut(&self, host: &str) {
        self.net.cut(host).expect("link down");
    }

    /// Bring `host`'s link back.
    pub fn restore(&self, host: &str) {
        self.net.restore(host).expect("link up");
    }

    /// The network's number: hosts are `10.213.<n>.X`, namespaces `kiln<n>-<host>`.
    pub fn network(&self) -> u8 {
        self.net.number()
    }

    /// The address of a host.
    pub fn addr(&self, host: &str) -> Ipv4Addr {
        self.net.host(host).addr
    }

    /// The environment every process gets.
    pub fn env(&self) -> &BTreeMap<String, String> {
        &self.env
    }

    /// The farm's directory (logs, host data, Postgres, the store).
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// Ids of the containers labelled as worker `id`'s.
    pub fn containers_of(&self, id: &str) -> Vec<String> {
        let out = Command::new("docker")
            .args(["ps", "-aq", "--filter", &format!("label=kiln.worker={id}")])
            .output()
            .map(|o| String::from_utf8_lossy(&o.stdout).into_owned())
            .unwrap_or_default();
        out.split_whitespace().map(str::to_owned).collect()
    }
}

impl Drop for HostFarm {
    fn drop(&mut self) {
        let procs = std::mem::take(&mut *self.procs.lock().unwrap_or_else(|e| e.into_inner()));
        drop(procs);
        let _ = Command::new("runuser")
            .args(["-u", "postgres", "--"])
            .arg(self.pg_bin.join("pg_ctl"))
            .args(["-m", "immediate", "-w", "-D"])
            .arg(&self.pg_data)
            .arg("stop")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status();
        for (_, id) in &self.workers {
            let ids = self.containers_of(id);
            if !ids.is_empty() {
                let _ = Command::new("docker").args(["rm", "-f"]).args(&ids).stdout(Stdio::null()).status();
            }
        }
        // The network (and anything still running in it) goes with `net`.
    }
}

/// A client that never uses a proxy from the environment.
pub fn client() -> reqwest::Client {
    reqwest::Client::builder().no_proxy().build().expect("a plain client builds")
}

fn api_name(i: usize) -> String {
    format!("api-{}", (b'a' + i as u8) as char)
}

/// Replace each `${NAME}` of `vars` in `text`; any other `${…}` is an error.
pub fn render_template(text: &str, vars: &[(&str, String)]) -> anyhow::Result<String> {
    let mut out = text.to_owned();
    for (name, value) in vars {
        out = out.replace(&format!("${{{name}}}"), value);
    }
    // Only comment lines may still name variables (the envsubst example).
    if let Some(line) = out.lines().find(|l| l.contains("${") && !l.trim_start().starts_with('#')) {
        bail!("the template still has a variable: {line}");
    }
    Ok(out)
}

fn users_id(name: &str) -> anyhow::Result<u32> {
    let out = Command::new("id").args(["-u", name]).output()?;
    anyhow::ensure!(out.status.success(), "no user {name}");
    Ok(String::from_utf8_lossy(&out.stdout).trim().parse()?)
}

fn wait_tcp(addr: SocketAddr, label: &str, farm: &HostFarm) -> anyhow::Result<()> {
    let deadline = Instant::now() + Duration::from_secs(30);
    while Instant::now() < deadline {
        if TcpStream::connect_timeout(&addr, Duration::from_millis(200)).is_ok() {
            return Ok(());
        }
        if let Some(status) = farm.exited(label) {
            bail!("{label} exited with {status}:\n{}", farm.output(label));
        }
        std::thread::sleep(Duration::from_millis(25));
    }
    bail!("{label} did not listen on {addr} within 30 s:\n{}", farm.output(label))
}

#[cfg(test)]
mod tests {
    #[test]
    fn templates_fill_every_variable() {
        let t = "# ${A} in a comment stays\nlisten ${A};\nroot ${B};\n";
        let out = super::render_template(t, &[("A", "80".into()), ("B", "/x".into())]).unwrap();
        assert_eq!(out, "# 80 in a comment stays\nlisten 80;\nroot /x;\n");
        assert!(super::render_template("listen ${A}; ${C}", &[("A", "1".into())]).is_err());
    }
}
