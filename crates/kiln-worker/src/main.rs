//! `kiln-worker`: claims builds and runs them in isolated Docker containers.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::Parser;
use kiln_worker::{RunOptions, Worker};
use tokio_util::sync::CancellationToken;

#[derive(Debug, Parser)]
#[command(version, about = "Claims Kiln builds and runs them in isolated Docker containers.")]
struct Args {
    /// Configuration file (else $CONFIG_PATH, else ./config.yml).
    #[arg(long)]
    config: Option<PathBuf>,
    /// Run one job, then exit.
    #[arg(long)]
    once: bool,
}

#[tokio::main]
async fn main() -> ExitCode {
    let args = Args::parse();
    tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into()))
        .with_writer(std::io::stderr)
        .init();
    let path = kiln_config::locate(args.config.as_deref());
    let config = match kiln_config::Config::load(&path) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("kiln-worker: {e}");
            return ExitCode::from(2);
        }
    };
    let (shutdown, hurry) = (CancellationToken::new(), CancellationToken::new());
    tokio::spawn(signals(shutdown.clone(), hurry.clone()));
    let worker = match Worker::start(config).await {
        Ok(w) => w,
        Err(e) => {
            eprintln!("kiln-worker: {e}");
            return ExitCode::FAILURE;
        }
    };
    match worker.run(RunOptions { once: args.once }, shutdown, hurry).await {
        Ok(exit) => {
            tracing::info!(?exit, "worker exiting");
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("kiln-worker: {e}");
            ExitCode::FAILURE
        }
    }
}

/// SIGTERM or SIGINT: shut down gracefully; a second one: hand jobs back now.
async fn signals(shutdown: CancellationToken, hurry: CancellationToken) {
    use tokio::signal::unix::{SignalKind, signal};
    let (Ok(mut term), Ok(mut int)) = (signal(SignalKind::terminate()), signal(SignalKind::interrupt())) else {
        return;
    };
    for token in [shutdown, hurry] {
        tokio::select! {
            _ = term.recv() => {}
            _ = int.recv() => {}
        }
        token.cancel();
    }
}
