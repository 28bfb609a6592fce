//! `kiln build RECIPE --os OS --arch ARCH [--with MODULE[@VERSION]]…`:
//! submit a build, wait for it with a progress display, then download,
//! verify and write its binary (or artifact).
//!
//! Exit 0 written, 1 the build failed (or its files did not verify),
//! 2 the server refused the request, 3 no answer or `--timeout` ran out.

use std::process::ExitCode;
use std::time::{Duration, Instant};

use kiln_domain::{BuildKey, BuildRequest, PluginRequest};

use super::download::OutputArgs;
use crate::api::{self, Build};
use crate::error::Failure;
use crate::fetch;
use crate::progress::Progress;
use crate::server::{Server, next_chunk_within};

/// The longest single long-poll (the server may cap it lower).
const POLL: Duration = Duration::from_secs(30);
/// How many times in a row an unanswered poll is tried again.
const RETRIES: u32 = 8;
/// How long the live log may go on after the build has ended.
const LOG_DRAIN: Duration = Duration::from_secs(15);

#[derive(Debug, clap::Args)]
pub struct Args {
    /// The recipe to build, e.g. `caddy` (the server's /api/recipes lists them).
    recipe: String,
    /// The product's version, e.g. v2.8.4. Default: the newest release.
    #[arg(long = "version", value_name = "V")]
    product_version: Option<String>,
    /// Target operating system, e.g. linux, darwin, windows.
    #[arg(long, value_name = "OS")]
    os: String,
    /// Target architecture, e.g. amd64, arm64, arm.
    #[arg(long, value_name = "ARCH")]
    arch: String,
    /// ARM version with --arch arm, e.g. 7.
    #[arg(long, value_name = "N")]
    arm: Option<String>,
    /// A plugin to build in; repeat for more. Without @VERSION, its newest release.
    #[arg(long = "with", value_name = "MODULE[@VERSION]")]
    with: Vec<String>,
    #[command(flatten)]
    out: OutputArgs,
    /// Show the build's log live while it runs (on stderr).
    #[arg(long)]
    log: bool,
    /// Stop waiting for the build after SECS seconds (exit 3); it goes on on the server.
    #[arg(long, value_name = "SECS")]
    timeout: Option<u64>,
}

impl Args {
    fn request(&self) -> BuildRequest {
        BuildRequest {
            recipe: self.recipe.clone(),
            version: self.product_version.clone(),
            os: self.os.clone(),
            arch: self.arch.clone(),
            arm: self.arm.clone(),
            plugins: self.with.iter().map(|w| PluginRequest::from_compat(w)).collect(),
            replacements: Vec::new(),
        }
    }
}

pub async fn run(args: Args, server: Server, json: bool) -> anyhow::Result<ExitCode> {
    let key = fetch::trusted_key(&server, args.out.key()).await?;
    let deadline = args.timeout.map(|s| Instant::now() + Duration::from_secs(s));
    let progress = Progress::new();
    let result = build(&server, &args, deadline, &progress).await;
    let written = match result {
        Ok(build) => fetch::fetch(&server, &build, &key, &args.out.output(), &progress).await.map(|w| (build, w)),
        Err(e) => Err(e),
    };
    progress.finish();
    let (build, written) = written?;
    if json {
        println!("{}", serde_json::to_string_pretty(&written.to_json(&build))?);
    } else {
        println!("{}", written.describe());
    }
    Ok(ExitCode::SUCCESS)
}

/// Submit, wait until the build has succeeded, and return it.
async fn build(server: &Server, args: &Args, deadline: Option<Instant>, progress: &Progress) -> anyhow::Result<Build> {
    let submitted = api::submit(server, &args.request()).await?;
    let plugins: Vec<String> = submitted.plugins.iter().map(|p| format!("{}@{}", p.module, p.version)).collect();
    progress.line(&format!(
        "build {}: {} {} for {}{}",
        submitted.key,
        submitted.recipe,
        submitted.version,
        submitted.platform,
        if plugins.is_empty() { String::new() } else { format!(" with {}", plugins.join(", ")) }
    ));
    let log = args.log.then(|| tokio::spawn(follow_log(server.clone(), submitted.key.clone(), progress.clone())));
    let waited = wait(server, submitted, deadline, progress).await;
    if let Some(log) = log {
        // The live log ends by itself shortly after the build; don't hang on it.
        let drain = if waited.is_ok() { LOG_DRAIN } else { Duration::ZERO };
        let abort = log.abort_handle();
        if tokio::time::timeout(drain, log).await.is_err() {
            abort.abort();
        }
    }
    let build = waited?;
    progress.build(&build);
    fetch::check_ready(&build)?;
    Ok(build)
}

/// Long-poll until `build` is final or the deadline passes; a server that
/// does not answer is asked again a few times with backoff.
async fn wait(
    server: &Server,
    mut build: Build,
    deadline: Option<Instant>,
    progress: &Progress,
) -> anyhow::Result<Build> {
    let mut failures = 0;
    // The server holds a poll until the state differs from the one it sees
    // when the poll arrives, so a change between two polls would only show
    // at the next: after each change, look once without waiting.
    let mut changed = true;
    loop {
        if build.state.is_final() {
            return Ok(build);
        }
        progress.build(&build);
        let left = deadline.map(|d| d.saturating_duration_since(Instant::now()));
        if left.is_some_and(|l| l.is_zero()) {
            return Err(timed_out(&build.key, progress).into());
        }
        let poll =
            if changed { Duration::ZERO } else { left.map_or(POLL, |l| l.min(POLL)).max(Duration::from_secs(1)) };
        match api::get(server, &build.key, poll).await {
            Ok(b) => {
                changed = b.state != build.state;
                build = b;
                failures = 0;
            }
            Err(e) if e.is_transient() && failures < RETRIES => {
                failures += 1;
                let pause = Duration::from_secs(1 << failures.min(4));
                progress.line(&format!("kiln: {e}; asking again in {} s", pause.as_secs()));
                match deadline {
                    Some(d) if Instant::now() + pause >= d => return Err(timed_out(&build.key, progress).into()),
                    _ => tokio::time::sleep(pause).await,
                }
            }
            Err(e) => return Err(e.into()),
        }
    }
}

fn timed_out(key: &BuildKey, progress: &Progress) -> Failure {
    Failure::TimedOut { key: key.to_string(), secs: progress.elapsed().as_secs() }
}

/// Print the build's live log, line by line, above the progress display.
async fn follow_log(server: Server, key: BuildKey, progress: Progress) {
    let mut res = match api::log(&server, &key, true).await {
        Ok(res) => res,
        Err(e) => return progress.line(&format!("kiln: no live log: {e}")),
    };
    let mut pending: Vec<u8> = Vec::new();
    // A step may print nothing for long; the build's state is watched elsewhere.
    let silence = Duration::from_secs(24 * 3600);
    loop {
        match next_chunk_within(&mut res, silence).await {
            Ok(Some(chunk)) => {
                pending.extend_from_slice(&chunk);
                while let Some(end) = pending.iter().position(|b| *b == b'\n') {
                    let line: Vec<u8> = pending.drain(..=end).collect();
                    progress.line(String::from_utf8_lossy(&line).trim_end_matches(['\n', '\r']));
                }
            }
            Ok(None) => break,
            Err(e) => {
                progress.line(&format!("kiln: the live log stopped: {e}"));
                break;
            }
        }
    }
    if !pending.is_empty() {
        progress.line(&String::from_utf8_lossy(&pending));
    }
}
