//! Kiln's configuration: one YAML file shared by every binary.
//!
//! The file is found by [`locate`] (`--config PATH`, else `$CONFIG_PATH`,
//! else `./config.yml`) and read by [`Config::load`]. Environment variables
//! are expanded *after* parsing, into string values only (see [`expand`]),
//! so a variable can never add keys or structure. Unknown keys and bad values
//! are errors that name the key and the file. Secrets are wrapped in
//! [`Secret`], which never prints.

mod expand;
mod model;
mod secret;

use std::path::{Path, PathBuf};

pub use model::*;
pub use secret::Secret;

/// A configuration that could not be loaded. The message names the file and,
/// where there is one, the key.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("{file}: cannot read: {source}")]
    Read { file: String, source: std::io::Error },
    #[error("{file}: not valid YAML: {message}")]
    Syntax { file: String, message: String },
    #[error("{file}: {key}: {message}")]
    Invalid { file: String, key: String, message: String },
}

/// The config file to read: `cli` if given, else `$CONFIG_PATH`, else `./config.yml`.
pub fn locate(cli: Option<&Path>) -> PathBuf {
    cli.map(Path::to_path_buf)
        .or_else(|| std::env::var_os("CONFIG_PATH").map(PathBuf::from))
        .unwrap_or_else(|| PathBuf::from("config.yml"))
}

impl Config {
    /// Read, expand and check the file at `path` with the process environment.
    pub fn load(path: &Path) -> Result<Config, ConfigError> {
        let file = path.display().to_string();
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read { file: file.clone(), source })?;
        Self::parse(&text, &file, &|name| std::env::var(name).ok())
    }

    /// Parse `text` (named `file` in errors), expanding variables with `env`.
    pub fn parse(text: &str, file: &str, env: &dyn Fn(&str) -> Option<String>) -> Result<Config, ConfigError> {
        let mut value: yaml_serde::Value = yaml_serde::from_str(text)
            .map_err(|e| ConfigError::Syntax { file: file.to_owned(), message: e.to_string() })?;
        expand::expand_value(&mut value, env, &mut Vec::new()).map_err(|(key, message)| ConfigError::Invalid {
            file: file.to_owned(),
            key,
            message,
        })?;
        let mut config: Config = serde_path_to_error::deserialize(value).map_err(|e| ConfigError::Invalid {
            file: file.to_owned(),
            key: e.path().to_string(),
            message: e.inner().to_string(),
        })?;
        config.file = file.to_owned();
        config.check().map_err(|(key, message)| config.invalid(key, message))?;
        Ok(config)
    }

    /// The file the configuration was read from.
    pub fn file(&self) -> &str {
        &self.file
    }

    /// An error about `key` of this configuration, found after loading
    /// (say, a value only a binary's library can check).
    pub fn invalid(&self, key: impl Into<String>, message: impl Into<String>) -> ConfigError {
        ConfigError::Invalid { file: self.file.clone(), key: key.into(), message: message.into() }
    }
}
