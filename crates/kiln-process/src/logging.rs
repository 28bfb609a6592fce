//! Logging, the same in every server: to stderr, filtered by `RUST_LOG`
//! (default [`DEFAULT_FILTER`]), as text or, with `KILN_LOG_FORMAT=json`,
//! one JSON object per line for log collectors. Text has colours only when
//! stderr is a terminal and `NO_COLOR` is unset, so log files stay plain.

use std::io::IsTerminal;

use tracing_subscriber::EnvFilter;

use crate::StartupError;

/// What is logged when `RUST_LOG` is unset: Kiln's own lines at `info`,
/// the chattier libraries at `warn`.
pub const DEFAULT_FILTER: &str = "info,sqlx=warn,tokio_postgres=warn,refinery_core=warn,tokio_cron_scheduler=warn";

/// The variable that picks the format.
pub const FORMAT_VAR: &str = "KILN_LOG_FORMAT";

/// How log lines look.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LogFormat {
    /// Human-readable lines (the default).
    Text,
    /// One JSON object per line.
    Json,
}

impl LogFormat {
    /// `KILN_LOG_FORMAT`: `text` (or unset, or empty) or `json`.
    pub fn from_env() -> Result<LogFormat, StartupError> {
        Self::parse(std::env::var(FORMAT_VAR).ok().as_deref())
    }

    fn parse(value: Option<&str>) -> Result<LogFormat, StartupError> {
        match value.map(str::trim) {
            None | Some("" | "text") => Ok(LogFormat::Text),
            Some("json") => Ok(LogFormat::Json),
            Some(other) => Err(StartupError(format!("{FORMAT_VAR}={other:?}: the log format is text or json"))),
        }
    }
}

/// Install the global subscriber (once; later calls do nothing).
pub fn init(format: LogFormat) {
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(DEFAULT_FILTER));
    let logs = tracing_subscriber::fmt().with_env_filter(filter).with_writer(std::io::stderr);
    let _ = match format {
        LogFormat::Json => logs.json().try_init(),
        LogFormat::Text => logs.with_ansi(colours()).try_init(),
    };
}

/// Colours for a person at a terminal, never in a file or a pipe.
fn colours() -> bool {
    std::io::stderr().is_terminal() && std::env::var_os("NO_COLOR").is_none_or(|v| v.is_empty())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_format_is_text_or_json_and_nothing_else() {
        assert_eq!(LogFormat::parse(None), Ok(LogFormat::Text));
        assert_eq!(LogFormat::parse(Some("")), Ok(LogFormat::Text));
        assert_eq!(LogFormat::parse(Some("text")), Ok(LogFormat::Text));
        assert_eq!(LogFormat::parse(Some("json")), Ok(LogFormat::Json));
        let e = LogFormat::parse(Some("yaml")).unwrap_err();
        assert!(e.0.contains("KILN_LOG_FORMAT=\"yaml\"") && e.0.contains("text or json"), "{e}");
    }
}
