//! Layered configuration: built-in defaults < `secretd.toml` (or `--config FILE`) <
//! environment (`SECRETD_<KEY>`) < command-line flags.
//!
//! Every key is documented on [`Settings`] and in README.md. Keys are flat, so each has a
//! direct environment twin: `max_counter_gap` is `SECRETD_MAX_COUNTER_GAP`.

use std::path::{Path, PathBuf};

use serde::Deserialize;

/// The default listen address.
pub const DEFAULT_LISTEN: &str = "127.0.0.1:50051";
/// The default data directory.
pub const DEFAULT_DATA_DIR: &str = "./data";
/// The config file read from the working directory when `--config` is not given.
pub const DEFAULT_CONFIG_FILE: &str = "secretd.toml";

/// All settings of the server. Field names are the config keys.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Settings {
    /// gRPC listen address (also serves gRPC-Web). Default `127.0.0.1:50051`.
    pub listen: String,
    /// Database: `postgres://…` or `sqlite://PATH`. Empty (the default) means the SQLite
    /// file `secretd.db` in `data_dir`.
    pub database_url: String,
    /// Directory for the SQLite file and the generated JWT secret. Default `./data`.
    pub data_dir: PathBuf,
    /// Address of the Prometheus metrics endpoint (`GET /metrics`). Empty = off.
    pub metrics_listen: String,
    /// This homeserver's name; `homeserver` fields equal to it (or empty) mean local.
    pub server_name: String,
    /// HS256 secret shared with the homeserver's auth service. Empty = read (or on first
    /// start create) `data_dir/jwt-secret`.
    pub jwt_secret: String,
    /// `HS256` (default), `EdDSA` or `RS256`.
    pub jwt_algorithm: String,
    /// PEM file with the public key that verifies EdDSA or RS256 tokens.
    pub jwt_public_key_file: String,
    /// Required `iss` claim. Empty = not checked.
    pub jwt_issuer: String,
    /// Required `aud` claim. Empty = not checked.
    pub jwt_audience: String,
    /// Log format: `text` or `json`.
    pub log_format: String,
    /// Log filter in `RUST_LOG` syntax (e.g. `info`, `secretd=debug`). `RUST_LOG` wins.
    pub log_level: String,
    /// Largest accepted jump of a stream's ratchet counter in one post. Default 1024.
    pub max_counter_gap: u64,
    /// Subscriptions one StreamMessagePosting call may hold. Default 1000.
    pub max_subscriptions_per_connection: usize,
    /// Open StreamMessagePosting calls one user may hold on one replica. Default 32.
    pub max_connections_per_user: usize,
    /// Database connections in the pool (Postgres) / readers (SQLite). Default 16.
    pub db_max_connections: u32,
    /// Client-side deadline of every database operation, in milliseconds: an operation
    /// the database does not finish by then (a black-holed connection included) answers
    /// UNAVAILABLE, and its connection is closed rather than reused. Postgres sessions
    /// also get it as `statement_timeout` and `idle_in_transaction_session_timeout`.
    /// Default 5000.
    pub db_timeout_ms: u64,
    /// Watchdog of the Postgres change listener, in milliseconds: the listener pings
    /// itself through the database every half of this, and a listener connection that
    /// brings no notification for this long is dropped and reconnected, and every local
    /// subscription repairs its gap from the database. Default 10000.
    pub listener_watchdog_ms: u64,
    /// Most posts committed in one group-commit transaction. Default 512.
    pub commit_max_batch: usize,
    /// Concurrent group-commit writers on Postgres (streams are sharded over them).
    /// Default 1: one writer makes the biggest batches, and on a CPU-bound machine that
    /// beats parallel transactions (measured in BENCHMARKS.md). More writers isolate
    /// streams from each other's lock waits, e.g. when replicas share hot streams.
    /// SQLite always uses one.
    pub commit_writers: usize,
    /// Seconds a graceful shutdown waits for in-flight calls before exiting. Default 10.
    pub shutdown_grace_secs: u64,
    /// HTTP/2 keepalive ping interval in seconds (dead clients are noticed). Default 30.
    pub keepalive_interval_secs: u64,
    /// Seconds to wait for a keepalive ping's answer before closing. Default 10.
    pub keepalive_timeout_secs: u64,
    /// Origins allowed to call through gRPC-Web (CORS). `*` (the default) allows any:
    /// tokens travel in a header, not a cookie, so no ambient authority is exposed.
    pub cors_allowed_origins: Vec<String>,
    /// Events per stream kept in memory for live fan-out. Default 256.
    pub fanout_ring_events: usize,
    /// Encoded events queued per StreamMessagePosting call before it falls back to the
    /// database cursor. Default 16.
    pub connection_buffer: usize,
}

impl Settings {
    /// The database URL with the embedded default filled in.
    pub fn effective_database_url(&self) -> String {
        if self.database_url.trim().is_empty() {
            format!("sqlite://{}", self.data_dir.join("secretd.db").display())
        } else {
            self.database_url.trim().to_string()
        }
    }
}

/// Values given on the command line; `None` leaves the layer below in force.
#[derive(Debug, Default, Clone)]
pub struct Overrides {
    /// `--listen`
    pub listen: Option<String>,
    /// `--database-url`
    pub database_url: Option<String>,
    /// `--data-dir`
    pub data_dir: Option<PathBuf>,
    /// `--metrics-listen`
    pub metrics_listen: Option<String>,
}

/// Loads the settings: defaults, then the config file (`file`, or `secretd.toml` in the
/// working directory when present), then `SECRETD_*` environment variables, then
/// `overrides`.
pub fn load(file: Option<&Path>, overrides: &Overrides) -> Result<Settings, config::ConfigError> {
    let mut builder = with_defaults()?;
    builder = match file {
        Some(path) => builder.add_source(config::File::from(path).required(true)),
        None => builder.add_source(config::File::with_name(DEFAULT_CONFIG_FILE).required(false)),
    };
    // Every SECRETD_* variable is a setting (so a misspelt one is an error), except
    // SECRETD_CONFIG, which names the config file itself.
    let env: config::Map<String, String> = std::env::vars()
        .filter(|(k, _)| k.starts_with("SECRETD_") && k != "SECRETD_CONFIG")
        .collect();
    builder = builder.add_source(
        config::Environment::with_prefix("SECRETD")
            .prefix_separator("_")
            .try_parsing(true)
            .list_separator(",")
            .with_list_parse_key("cors_allowed_origins")
            .source(Some(env)),
    );
    builder = builder
        .set_override_option("listen", overrides.listen.clone())?
        .set_override_option("database_url", overrides.database_url.clone())?
        .set_override_option(
            "data_dir",
            overrides.data_dir.as_ref().map(|p| p.display().to_string()),
        )?
        .set_override_option("metrics_listen", overrides.metrics_listen.clone())?;
    let settings: Settings = builder.build()?.try_deserialize()?;
    settings.validate()?;
    Ok(settings)
}

/// The built-in defaults alone (no file, no environment): what tests and embedders start
/// from.
pub fn defaults() -> Settings {
    with_defaults()
        .and_then(|b| b.build())
        .and_then(|c| c.try_deserialize())
        .expect("the built-in defaults are valid")
}

type Builder = config::builder::ConfigBuilder<config::builder::DefaultState>;

fn with_defaults() -> Result<Builder, config::ConfigError> {
    config::Config::builder()
        .set_default("listen", DEFAULT_LISTEN)?
        .set_default("database_url", "")?
        .set_default("data_dir", DEFAULT_DATA_DIR)?
        .set_default("metrics_listen", "")?
        .set_default("server_name", "localhost")?
        .set_default("jwt_secret", "")?
        .set_default("jwt_algorithm", "HS256")?
        .set_default("jwt_public_key_file", "")?
        .set_default("jwt_issuer", "")?
        .set_default("jwt_audience", "")?
        .set_default("log_format", "text")?
        .set_default("log_level", "info")?
        .set_default("max_counter_gap", 1024)?
        .set_default("max_subscriptions_per_connection", 1000)?
        .set_default("max_connections_per_user", 32)?
        .set_default("db_max_connections", 16)?
        .set_default("db_timeout_ms", 5000)?
        .set_default("listener_watchdog_ms", 10_000)?
        .set_default("commit_max_batch", 512)?
        .set_default("commit_writers", 1)?
        .set_default("shutdown_grace_secs", 10)?
        .set_default("keepalive_interval_secs", 30)?
        .set_default("keepalive_timeout_secs", 10)?
        .set_default("cors_allowed_origins", vec!["*"])?
        .set_default("fanout_ring_events", 256)?
        .set_default("connection_buffer", 16)
}

impl Settings {
    fn validate(&self) -> Result<(), config::ConfigError> {
        let bad = |msg: String| Err(config::ConfigError::Message(msg));
        if self.max_counter_gap == 0 {
            return bad("max_counter_gap must be at least 1".into());
        }
        if self.commit_max_batch == 0 || self.commit_writers == 0 {
            return bad("commit_max_batch and commit_writers must be at least 1".into());
        }
        if self.db_timeout_ms < 10 || self.listener_watchdog_ms < 10 {
            return bad(format!(
                "db_timeout_ms ({}) and listener_watchdog_ms ({}) must be at least 10",
                self.db_timeout_ms, self.listener_watchdog_ms
            ));
        }
        if self.connection_buffer == 0 || self.fanout_ring_events == 0 {
            return bad("connection_buffer and fanout_ring_events must be at least 1".into());
        }
        if !matches!(self.jwt_algorithm.as_str(), "HS256" | "EdDSA" | "RS256") {
            return bad(format!(
                "jwt_algorithm is {:?}; use HS256, EdDSA or RS256",
                self.jwt_algorithm
            ));
        }
        if !matches!(self.log_format.as_str(), "text" | "json") {
            return bad(format!(
                "log_format is {:?}; use text or json",
                self.log_format
            ));
        }
        Ok(())
    }
}
