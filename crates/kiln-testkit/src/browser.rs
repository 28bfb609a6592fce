//! A real headless Chromium driven over WebDriver, for the download page.
//!
//! [`Browser::start`] runs Debian's `chromedriver` (from `chromium-driver`,
//! installed by `scripts/lib/tools.sh`'s `ensure_chromium`) on a free
//! loopback port and opens a session of `chromium` in headless mode with a
//! fresh profile and download directory. The WebDriver client is
//! `fantoccini` over a plain-HTTP hyper connector: the driver is on
//! loopback, so no TLS stack is linked for it. When the browser cannot be
//! found or does not start, `start` prints a loud `SKIPPED: <reason>` line
//! and gives `None`, so a browser test never passes silently.
//!
//! [`Browser::shot`] writes a PNG screenshot under
//! `target/page-screenshots/`, for people to look at what the tests saw.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
pub use fantoccini::{self, Locator};
use fantoccini::{Client, ClientBuilder};
use hyper_util::client::legacy::connect::HttpConnector;
use serde_json::json;

/// Variables that name the binaries (`scripts/test` sets them).
pub const CHROMIUM_VAR: &str = "KILN_TEST_CHROMIUM";
pub const CHROMEDRIVER_VAR: &str = "KILN_TEST_CHROMEDRIVER";

/// How long a wait for the page may take before the test fails.
pub const PAGE_WAIT: Duration = Duration::from_secs(90);

/// Options of a browser session.
#[derive(Debug, Clone)]
pub struct Options {
    /// Viewport width and height in CSS pixels. Below Chromium's smallest
    /// window (500 px wide) the page is shown as on a phone of that size.
    pub size: (u32, u32),
    /// A `User-Agent` to send instead of Chromium's.
    pub user_agent: Option<String>,
}

impl Default for Options {
    fn default() -> Self {
        Options { size: (1100, 1500), user_agent: None }
    }
}

/// A headless Chromium session; the driver and the browser end on drop.
#[derive(Debug)]
pub struct Browser {
    pub client: Client,
    driver: Child,
    profile: tempfile::TempDir,
    downloads: tempfile::TempDir,
    test: String,
}

fn find(var: &str, names: &[&str]) -> Option<PathBuf> {
    if let Some(p) = std::env::var_os(var) {
        return Some(PathBuf::from(p));
    }
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path).flat_map(|dir| names.iter().map(move |n| dir.join(n))).find(|p| p.is_file())
}

impl Browser {
    /// Start a browser for `test`, or print `SKIPPED: …` and give `None`.
    pub async fn start(test: &str, options: Options) -> Option<Browser> {
        match Self::try_start(test, options).await {
            Ok(b) => Some(b),
            Err(e) => {
                let line = format!("SKIPPED: chromium unavailable: {test} did not run ({e:#})");
                println!("{line}");
                eprintln!("{line}");
                None
            }
        }
    }

    async fn try_start(test: &str, options: Options) -> anyhow::Result<Browser> {
        let chromium = find(CHROMIUM_VAR, &["chromium", "chromium-browser"])
            .context("no chromium binary (install Debian's chromium; scripts/test does)")?;
        let driver_bin = find(CHROMEDRIVER_VAR, &["chromedriver"])
            .context("no chromedriver binary (install Debian's chromium-driver; scripts/test does)")?;
        let profile = tempfile::Builder::new().prefix("kiln-chromium-").tempdir()?;
        let downloads = tempfile::Builder::new().prefix("kiln-downloads-").tempdir()?;
        let port = crate::farm::free_port();
        let log = std::fs::File::create(profile.path().join("chromedriver.log"))?;
        let mut driver = Command::new(&driver_bin)
            .arg(format!("--port={port}"))
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log)
            .spawn()
            .with_context(|| format!("cannot run {}", driver_bin.display()))?;
        let url = format!("http://127.0.0.1:{port}");
        if let Err(e) = wait_ready(&url, &mut driver).await {
            let _ = driver.kill();
            let _ = driver.wait();
            return Err(e);
        }
        let mut args = vec![
            "--headless=new".to_owned(),
            // Tests run as root in containers, where Chromium's sandbox cannot start.
            "--no-sandbox".to_owned(),
            "--disable-dev-shm-usage".to_owned(),
            "--disable-gpu".to_owned(),
            "--no-first-run".to_owned(),
            "--hide-scrollbars".to_owned(),
            format!("--window-size={},{}", options.size.0, options.size.1),
            format!("--user-data-dir={}", profile.path().join("profile").display()),
        ];
        if let Some(ua) = &options.user_agent {
            args.push(format!("--user-agent={ua}"));
        }
        let mut chrome = json!({
            "binary": chromium,
            "args": args,
            "prefs": {
                "download.default_directory": downloads.path(),
                "download.prompt_for_download": false,
                "download.directory_upgrade": true,
            },
        });
        if options.size.0 < 500 {
            chrome["mobileEmulation"] = json!({
                "deviceMetrics": {"width": options.size.0, "height": options.size.1, "pixelRatio": 1.0, "touch": true},
            });
        }
        let caps = json!({ "browserName": "chrome", "goog:chromeOptions": chrome });
        let caps = match caps {
            serde_json::Value::Object(m) => m,
            _ => unreachable!("an object"),
        };
        let client = ClientBuilder::new(HttpConnector::new()).capabilities(caps).connect(&url).await;
        let client = match client {
            Ok(c) => c,
            Err(e) => {
                let _ = driver.kill();
                let _ = driver.wait();
                let log = std::fs::read_to_string(profile.path().join("chromedriver.log")).unwrap_or_default();
                bail!("chromium did not start: {e}\n{}", tail(&log, 20));
            }
        };
        Ok(Browser { client, driver, profile, downloads, test: test.to_owned() })
    }

    /// Where the browser saves downloads.
    pub fn downloads(&self) -> &Path {
        self.downloads.path()
    }

    /// Write a screenshot as `target/page-screenshots/<test>-<name>.png`
    /// and return its path.
    pub async fn shot(&self, name: &str) -> PathBuf {
        let png = self.client.screenshot().await.expect("a screenshot");
        let dir = screenshot_dir();
        std::fs::create_dir_all(&dir).expect("screenshot directory");
        let path = dir.join(format!("{}-{name}.png", self.test));
        std::fs::write(&path, png).expect("write the screenshot");
        println!("screenshot: {}", path.display());
        path
    }

    /// The text of the first element matching `css` ("" when there is none).
    pub async fn text(&self, css: &str) -> String {
        match self.client.find(Locator::Css(css)).await {
            Ok(e) => e.text().await.unwrap_or_default(),
            Err(_) => String::new(),
        }
    }

    /// Run `script` (a function body; `arguments` holds `args`) in the page.
    pub async fn js(&self, script: &str, args: Vec<serde_json::Value>) -> serde_json::Value {
        self.client.execute(script, args).await.unwrap_or_else(|e| panic!("script failed: {e}\n{script}"))
    }

    /// Wait until `script` returns something truthy, which it returns;
    /// panics with `what` and the page's text after [`PAGE_WAIT`].
    pub async fn until(&self, what: &str, script: &str) -> serde_json::Value {
        let deadline = Instant::now() + PAGE_WAIT;
        loop {
            let v = self.client.execute(script, vec![]).await.unwrap_or(serde_json::Value::Null);
            let truthy = match &v {
                serde_json::Value::Null | serde_json::Value::Bool(false) => false,
                serde_json::Value::String(s) => !s.is_empty(),
                serde_json::Value::Number(n) => n.as_f64() != Some(0.0),
                _ => true,
            };
            if truthy {
                return v;
            }
            if Instant::now() > deadline {
                let body = self.text("body").await;
                let path = self.shot(&format!("timeout-{}", what.replace(' ', "-"))).await;
                panic!("waited {PAGE_WAIT:?} for {what}; screenshot {}; the page says:\n{body}", path.display());
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// Wait for a finished download in the download directory and read it.
    pub async fn downloaded(&self, name: &str) -> Vec<u8> {
        let path = self.downloads.path().join(name);
        let deadline = Instant::now() + PAGE_WAIT;
        loop {
            let partial = std::fs::read_dir(self.downloads.path())
                .map(|d| d.flatten().any(|e| e.file_name().to_string_lossy().ends_with(".crdownload")))
                .unwrap_or(false);
            if path.is_file() && !partial {
                return std::fs::read(&path).expect("read the download");
            }
            if Instant::now() > deadline {
                let found: Vec<String> = std::fs::read_dir(self.downloads.path())
                    .map(|d| d.flatten().map(|e| e.file_name().to_string_lossy().into_owned()).collect())
                    .unwrap_or_default();
                panic!("no download {name} after {PAGE_WAIT:?}; the directory holds {found:?}");
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// The driver's log so far, for failure messages.
    pub fn driver_log(&self) -> String {
        std::fs::read_to_string(self.profile.path().join("chromedriver.log")).unwrap_or_default()
    }
}

impl Drop for Browser {
    fn drop(&mut self) {
        let _ = self.driver.kill();
        let _ = self.driver.wait();
        // The browser's processes outlive a killed driver; they are ours,
        // known by the profile directory made for this session alone.
        let marker = format!("--user-data-dir={}", self.profile.path().join("profile").display());
        for entry in std::fs::read_dir("/proc").into_iter().flatten().flatten() {
            let Ok(pid) = entry.file_name().to_string_lossy().parse::<i32>() else { continue };
            let cmdline = std::fs::read(entry.path().join("cmdline")).unwrap_or_default();
            if cmdline.split(|b| *b == 0).any(|arg| arg == marker.as_bytes()) {
                let _ = Command::new("kill").arg("-KILL").arg(pid.to_string()).status();
            }
        }
    }
}

/// `target/page-screenshots`, beside the test executables' `debug/`.
pub fn screenshot_dir() -> PathBuf {
    let exe = std::env::current_exe().expect("test executable path");
    // target/debug/deps/<test> → target/page-screenshots
    exe.ancestors().nth(3).expect("the target directory").join("page-screenshots")
}

async fn wait_ready(url: &str, driver: &mut Child) -> anyhow::Result<()> {
    let http = reqwest::Client::new();
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        if let Ok(r) = http.get(format!("{url}/status")).send().await
            && r.status().is_success()
        {
            return Ok(());
        }
        if let Some(status) = driver.try_wait()? {
            bail!("chromedriver exited with {status}");
        }
        if Instant::now() > deadline {
            bail!("chromedriver did not answer on {url} within 30 s");
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

fn tail(text: &str, lines: usize) -> String {
    let all: Vec<&str> = text.lines().collect();
    all[all.len().saturating_sub(lines)..].join("\n")
}
