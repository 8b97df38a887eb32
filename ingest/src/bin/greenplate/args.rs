//! Flags shared by the subcommands that open the data (`serve`, `registry ...`).

use std::path::PathBuf;

use greenplate_ingest::config::layers::Override;
use greenplate_ingest::config::{Config, ConfigError};

/// Where the data lives (the same flags as `serve`).
#[derive(clap::Args)]
pub struct StoreArgs {
    /// Configuration file (TOML); the environment and flags override it.
    #[arg(long)]
    pub config: Option<PathBuf>,
    /// Data directory (SQLite database, generated admin token and at-rest key).
    #[arg(long)]
    pub data_dir: Option<PathBuf>,
    /// Database URL: sqlite://PATH or postgres://...
    #[arg(long, env = "GREENPLATE_DATABASE_URL", hide_env_values = true)]
    pub database_url: Option<String>,
    /// At-rest key, 64 hex digits.
    #[arg(long, env = "GREENPLATE_SECRET_KEY", hide_env_values = true)]
    pub secret_key: Option<String>,
}

impl StoreArgs {
    /// Defaults <- the config file <- the environment <- these flags and `more`.
    pub fn load(&self, more: Vec<Override>) -> Result<Config, ConfigError> {
        let mut overrides = more;
        push(
            &mut overrides,
            "data_dir",
            self.data_dir.as_ref().map(|p| p.display()),
        );
        push(&mut overrides, "database_url", self.database_url.as_ref());
        push(&mut overrides, "secret_key", self.secret_key.as_ref());
        Config::load(self.config.as_deref(), &overrides)
    }
}

/// Adds `key = value` when the flag was given.
pub fn push(overrides: &mut Vec<Override>, key: &'static str, value: Option<impl ToString>) {
    if let Some(v) = value {
        overrides.push((key, v.to_string()));
    }
}
