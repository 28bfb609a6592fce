//! Exit statuses and error messages of the servers.
//!
//! One policy for `kiln-api`, `kiln-worker` and `kiln-janitor`:
//!
//! | status | meaning |
//! | --- | --- |
//! | 0 | stopped cleanly: a shutdown signal, preemption, or the work is done |
//! | 1 | failed while running: the database, Docker, storage, a port in use, an unmigrated schema |
//! | 2 | how it was started needs fixing: the command line, the environment, or the configuration file |
//!
//! 2 matches what clap does with a bad argument and what `kiln` does with a
//! request to fix, so a script can tell "fix the setup" from "try again".

use std::fmt;

/// Stopped cleanly.
pub const EXIT_OK: u8 = 0;
/// Failed while running.
pub const EXIT_FAILED: u8 = 1;
/// The command line, the environment or the configuration needs fixing.
pub const EXIT_CONFIG: u8 = 2;

/// The policy as the servers' `--help` states it.
pub const EXIT_STATUS_HELP: &str = "Exit status: 0 stopped cleanly (SIGTERM or SIGINT, preemption, or the work \
    is done); 1 failed while running (database, Docker, storage, a port in use, an unmigrated schema); 2 the \
    command line, the environment or the configuration file needs fixing (the message names the file and the key).";

/// A problem with how the process was started that is not in the
/// configuration file: an environment variable, say. Exits 2.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StartupError(pub String);

impl fmt::Display for StartupError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for StartupError {}

/// The exit status for an error: [`EXIT_CONFIG`] when a
/// [`kiln_config::ConfigError`] or a [`StartupError`] is anywhere in its
/// chain, else [`EXIT_FAILED`]. A library error that wraps a `ConfigError`
/// must keep it as its source (`#[error("{0}")] Config(#[from] ConfigError)`):
/// `#[error(transparent)]` would hide it from the chain.
pub fn exit_code(e: &anyhow::Error) -> u8 {
    let setup = e.chain().any(|c| c.is::<kiln_config::ConfigError>() || c.is::<StartupError>());
    if setup { EXIT_CONFIG } else { EXIT_FAILED }
}

/// The error and its causes on one line, each said once: many errors
/// already quote their source, which would otherwise print twice.
pub fn error_chain(e: &anyhow::Error) -> String {
    let mut out = e.to_string();
    for cause in e.chain().skip(1) {
        let cause = cause.to_string();
        if !out.contains(&cause) {
            out.push_str(": ");
            out.push_str(&cause);
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug, thiserror::Error)]
    enum LibError {
        #[error("{0}")]
        Config(#[from] kiln_config::ConfigError),
        #[error("database: {0}")]
        Db(std::io::Error),
        #[error("cannot start")]
        Wrapped(#[source] std::io::Error),
    }

    fn config_error() -> kiln_config::ConfigError {
        kiln_config::ConfigError::Invalid { file: "config.yml".into(), key: "api.listen".into(), message: "bad".into() }
    }

    #[test]
    fn configuration_and_startup_errors_exit_2_anywhere_in_the_chain() {
        assert_eq!(exit_code(&anyhow::Error::new(config_error())), EXIT_CONFIG);
        let wrapped = anyhow::Error::new(LibError::from(config_error())).context("starting");
        assert_eq!(exit_code(&wrapped), EXIT_CONFIG);
        assert_eq!(error_chain(&wrapped), "starting: config.yml: api.listen: bad");
        assert_eq!(exit_code(&anyhow::Error::new(StartupError("KILN_LOG_FORMAT".into()))), EXIT_CONFIG);
        let io = || std::io::Error::other("connection refused");
        assert_eq!(exit_code(&anyhow::Error::new(LibError::Db(io()))), EXIT_FAILED);
        assert_eq!(exit_code(&anyhow::anyhow!("anything else")), EXIT_FAILED);
        assert_eq!(exit_code(&anyhow::Error::new(LibError::Wrapped(io()))), EXIT_FAILED);
    }

    #[test]
    fn the_chain_says_each_cause_once() {
        let quoted = anyhow::Error::new(LibError::Db(std::io::Error::other("refused"))).context("connecting");
        assert_eq!(error_chain(&quoted), "connecting: database: refused");
        let unquoted = anyhow::Error::new(LibError::Wrapped(std::io::Error::other("refused")));
        assert_eq!(error_chain(&unquoted), "cannot start: refused");
    }
}
