//! The process plumbing every Kiln binary shares, so that `kiln-api`,
//! `kiln-worker`, `kiln-janitor` and `kiln` behave alike at their edges:
//!
//! - [`run`]: a server's `main` after argument parsing: the Tokio runtime,
//!   logging ([`logging`]), the shutdown signals ([`Shutdown`]), and the
//!   error and exit status of the body;
//! - [`logging`]: `RUST_LOG` filters, `KILN_LOG_FORMAT=text|json`, colours
//!   only on a terminal;
//! - [`Shutdown`]: SIGTERM and SIGINT; the first asks for a graceful stop, a
//!   second for an immediate one;
//! - [`exit`]: the exit-status policy and the error chain as one line;
//! - [`host_name`] and [`instance_id`]: how a process names itself.
//!
//! This crate is an edge: it deals in `anyhow` errors; libraries return
//! their own error types and are classified here only by what they carry
//! (a [`kiln_config::ConfigError`] anywhere in the chain means exit 2).

pub mod exit;
pub mod logging;
mod signal;

use std::future::Future;
use std::path::Path;
use std::process::ExitCode;

pub use exit::{EXIT_CONFIG, EXIT_FAILED, EXIT_OK, EXIT_STATUS_HELP, StartupError, error_chain, exit_code};
pub use logging::LogFormat;
pub use signal::Shutdown;

/// Run a server binary's body: start the runtime, set up logging, listen
/// for shutdown signals, run `body` with them, and turn its result into the
/// exit status ([`exit`]). The error, if any, is the last thing printed:
/// `<name>: <what went wrong>` on stderr (a JSON log line with
/// `KILN_LOG_FORMAT=json`).
pub fn run<F, Fut>(name: &'static str, body: F) -> ExitCode
where
    F: FnOnce(Shutdown) -> Fut,
    Fut: Future<Output = anyhow::Result<()>>,
{
    let format = match LogFormat::from_env() {
        Ok(f) => f,
        Err(e) => {
            eprintln!("{name}: {e}");
            return ExitCode::from(EXIT_CONFIG);
        }
    };
    logging::init(format);
    let runtime = match tokio::runtime::Builder::new_multi_thread().enable_all().build() {
        Ok(rt) => rt,
        Err(e) => return report(name, format, &anyhow::Error::new(e).context("cannot start the async runtime")),
    };
    let result = runtime.block_on(async {
        let shutdown = Shutdown::listen().map_err(|e| anyhow::Error::new(e).context("cannot listen for signals"))?;
        body(shutdown).await
    });
    match result {
        Ok(()) => ExitCode::from(EXIT_OK),
        Err(e) => report(name, format, &e),
    }
}

/// Say why the process stops, and with which status.
fn report(name: &str, format: LogFormat, e: &anyhow::Error) -> ExitCode {
    let code = exit_code(e);
    let message = error_chain(e);
    match format {
        LogFormat::Text => eprintln!("{name}: {message}"),
        LogFormat::Json => tracing::error!(exit_code = code, "{name}: {message}"),
    }
    ExitCode::from(code)
}

/// The configuration: `--config PATH` (`cli`), else `$CONFIG_PATH`, else
/// `./config.yml`. Its errors name the file and the key, and exit 2.
pub fn load_config(cli: Option<&Path>) -> Result<kiln_config::Config, kiln_config::ConfigError> {
    kiln_config::Config::load(&kiln_config::locate(cli))
}

/// This machine's host name (`/proc/sys/kernel/hostname`), or `localhost`.
pub fn host_name() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .ok()
        .map(|h| h.trim().to_owned())
        .filter(|h| !h.is_empty())
        .unwrap_or_else(|| "localhost".into())
}

/// The name of this process among its peers (in logs, the workers table,
/// `janitor_runs`): `configured` when it is set and not blank, else
/// `<host>-<pid>`.
pub fn instance_id(configured: Option<&str>) -> String {
    match configured.map(str::trim).filter(|id| !id.is_empty()) {
        Some(id) => id.to_owned(),
        None => format!("{}-{}", host_name(), std::process::id()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_instance_is_named_by_its_configuration_or_its_host_and_pid() {
        assert_eq!(instance_id(Some("worker-7")), "worker-7");
        let default = format!("{}-{}", host_name(), std::process::id());
        assert_eq!(instance_id(Some("  ")), default);
        assert_eq!(instance_id(None), default);
        assert!(!host_name().is_empty());
    }
}
