//! `kiln-api`: load the configuration, connect, serve until SIGTERM.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context;
use clap::Parser;
use kiln_api::AppState;
use kiln_queue::{Queue, QueueSettings};
use kiln_storage::Storage;

/// Kiln's HTTP API and download page.
#[derive(Debug, Parser)]
#[command(version)]
struct Cli {
    /// The configuration file (else $CONFIG_PATH, else ./config.yml).
    #[arg(long)]
    config: Option<PathBuf>,
}

#[tokio::main]
async fn main() -> ExitCode {
    let cli = Cli::parse();
    let filter = tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info,sqlx=warn".into());
    let logs = tracing_subscriber::fmt().with_env_filter(filter).with_writer(std::io::stderr);
    // KILN_LOG_FORMAT=json: one JSON object per line, for log collectors.
    if std::env::var("KILN_LOG_FORMAT").is_ok_and(|f| f == "json") {
        logs.json().init();
    } else {
        logs.init();
    }
    match serve(cli).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            // The chain, leaving out causes a message already quotes.
            let mut text = e.to_string();
            for cause in e.chain().skip(1) {
                let c = cause.to_string();
                if !text.contains(&c) {
                    text = format!("{text}: {c}");
                }
            }
            eprintln!("kiln-api: {text}");
            ExitCode::FAILURE
        }
    }
}

async fn serve(cli: Cli) -> anyhow::Result<()> {
    let path = kiln_config::locate(cli.config.as_deref());
    let config = kiln_config::Config::load(&path)?;
    let queue = Queue::connect(
        config.database.url.expose(),
        config.database.max_connections,
        QueueSettings::from(&config.queue),
        "kiln-api",
    )
    .await?;
    let storage = Storage::from_config(&config.storage)?;
    let listener = tokio::net::TcpListener::bind(&config.api.listen)
        .await
        .with_context(|| format!("cannot listen on {}", config.api.listen))?;
    tracing::info!(addr = %listener.local_addr()?, "kiln-api listening");
    let state = AppState::new(config, queue, storage);
    kiln_api::run(listener, state, shutdown_signal()).await?;
    Ok(())
}

/// SIGTERM or Ctrl-C.
async fn shutdown_signal() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    tokio::select! {
        () = ctrl_c => {}
        () = term => {}
    }
}
