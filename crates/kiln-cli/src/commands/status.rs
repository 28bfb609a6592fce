//! `kiln status KEY`: where a build is, as a short summary or (`--json`) the
//! server's JSON.

use std::process::ExitCode;
use std::time::Duration;

use chrono::{DateTime, Utc};
use kiln_domain::BuildKey;

use super::download::parse_key;
use crate::api::{self, Build};
use crate::progress::describe;
use crate::server::Server;

#[derive(Debug, clap::Args)]
pub struct Args {
    /// The build key (64 hex characters, as `kiln build` prints it).
    #[arg(value_name = "KEY", value_parser = parse_key)]
    key: BuildKey,
}

pub async fn run(args: Args, server: Server, json: bool) -> anyhow::Result<ExitCode> {
    let build = api::get(&server, &args.key, Duration::ZERO).await?;
    if json {
        println!("{}", serde_json::to_string_pretty(&build.raw)?);
    } else {
        print!("{}", summary(&build));
    }
    Ok(ExitCode::SUCCESS)
}

/// The human summary, one `name  value` line each.
fn summary(b: &Build) -> String {
    let mut rows: Vec<(&str, String)> = vec![
        ("build", b.key.to_string()),
        ("state", describe(b)),
        ("recipe", format!("{} {}", b.recipe, b.version)),
        ("platform", b.platform.clone()),
    ];
    for p in &b.plugins {
        rows.push(("plugin", format!("{}@{}", p.module, p.version)));
    }
    let time = |t: &Option<DateTime<Utc>>| t.map(|t| t.format("%Y-%m-%d %H:%M:%S UTC").to_string());
    if let Some(t) = time(&b.created_at) {
        rows.push(("created", t));
    }
    if let Some(t) = time(&b.started_at) {
        rows.push(("started", t));
    }
    if let Some(t) = time(&b.finished_at) {
        let took = b.started_at.zip(b.finished_at).map(|(s, f)| (f - s).num_milliseconds() as f64 / 1000.0);
        rows.push(("finished", took.map_or(t.clone(), |secs| format!("{t} (took {secs:.1} s)"))));
    }
    if let Some(error) = &b.error {
        rows.push(("error", error.clone()));
    }
    if let Some(binary) = b.binary_name() {
        rows.push(("binary", binary.to_owned()));
    }
    for (name, link) in [("log", &b.links.log), ("artifact", &b.links.artifact), ("download", &b.links.binary)] {
        if !link.is_empty() && (name == "log" || b.state == kiln_domain::BuildState::Succeeded) {
            rows.push((name, link.clone()));
        }
    }
    let mut out = String::new();
    for (name, value) in rows {
        // Multi-line values (an error with the log's tail) stay aligned.
        let value = value.trim_end().replace('\n', "\n           ");
        out.push_str(&format!("{name:<10} {value}\n"));
    }
    out
}
