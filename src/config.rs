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
/// Shortest accepted HS256 secret, in bytes (RFC 7518 asks for a key at least as long as
/// the hash: 256 bits).
pub const MIN_JWT_SECRET_BYTES: usize = 32;
/// Keys whose environment value is a comma-separated list.
const LIST_KEYS: &[&str] = &["cors_allowed_origins"];

/// A configuration problem found after the settings were loaded (e.g. a bad secret file):
/// the binary exits 2 on it, as on every configuration error.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct Misconfigured(pub String);

/// Checks an HS256 secret's length; `source` says where it came from.
pub fn check_secret(source: &str, secret: &str) -> Result<(), Misconfigured> {
    if secret.len() < MIN_JWT_SECRET_BYTES {
        return Err(Misconfigured(format!(
            "{source} is {} bytes long; an HS256 secret needs at least \
             {MIN_JWT_SECRET_BYTES} bytes (for example the output of `openssl rand -hex 32`)",
            secret.len()
        )));
    }
    Ok(())
}

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
    // SECRETD_CONFIG, which names the config file itself. Values are taken as text (the
    // typed keys parse it), so a secret made of digits stays those digits; list keys
    // are split at commas.
    let (lists, scalars): (config::Map<String, String>, config::Map<String, String>) =
        std::env::vars()
            .filter(|(k, _)| k.starts_with("SECRETD_") && k != "SECRETD_CONFIG")
            .partition(|(k, _)| {
                LIST_KEYS
                    .iter()
                    .any(|key| k["SECRETD_".len()..].eq_ignore_ascii_case(key))
            });
    let env = || config::Environment::with_prefix("SECRETD").prefix_separator("_");
    builder = builder.add_source(env().source(Some(scalars)));
    let mut list_env = env().try_parsing(true).list_separator(",");
    for key in LIST_KEYS {
        list_env = list_env.with_list_parse_key(key);
    }
    builder = builder.add_source(list_env.source(Some(lists)));
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
        if self.connection_buffer == 0 || self.fanout_ring_events == 0 {
            return bad("connection_buffer and fanout_ring_events must be at least 1".into());
        }
        if !self.jwt_secret.is_empty()
            && let Err(short) = check_secret("jwt_secret", &self.jwt_secret)
        {
            return bad(short.0);
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

/// `url` with its password replaced by `***`, for logs and error messages: the password
/// of `scheme://user:password@host…` and the value of `password` / `sslpassword`
/// query parameters (or `key=value` words, when it is not a URL). Where the URL is too
/// irregular to tell the credentials from the host, everything up to the last `@` goes.
pub fn redact_url(url: &str) -> String {
    let Some((scheme, rest)) = url.split_once("://") else {
        return redact_params(url, ' ');
    };
    let (userinfo, tail) = match rest.rfind('@') {
        Some(at) => {
            let userinfo = &rest[..at];
            let masked = if !userinfo.contains(':') {
                userinfo.to_string()
            } else if userinfo.contains(['/', '?', '#']) {
                "***".to_string()
            } else {
                let (user, _) = userinfo.split_once(':').unwrap_or((userinfo, ""));
                format!("{user}:***")
            };
            (Some(masked), &rest[at + 1..])
        }
        None => (None, rest),
    };
    let tail = match tail.split_once('?') {
        Some((path, query)) => format!("{path}?{}", redact_params(query, '&')),
        None => tail.to_string(),
    };
    match userinfo {
        Some(userinfo) => format!("{scheme}://{userinfo}@{tail}"),
        None => format!("{scheme}://{tail}"),
    }
}

/// `params` (`key=value` separated by `sep`) with the values of password keys masked.
fn redact_params(params: &str, sep: char) -> String {
    params
        .split(sep)
        .map(|param| match param.split_once('=') {
            Some((key, _))
                if key.trim().eq_ignore_ascii_case("password")
                    || key.trim().eq_ignore_ascii_case("sslpassword") =>
            {
                format!("{key}=***")
            }
            _ => param.to_string(),
        })
        .collect::<Vec<_>>()
        .join(&sep.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn redact_url_masks_every_password() {
        for (url, shown) in [
            (
                "postgres://secretd:hunter2@db:5432/secretd",
                "postgres://secretd:***@db:5432/secretd",
            ),
            (
                "postgresql://u:p%40ss@db/x?sslmode=require",
                "postgresql://u:***@db/x?sslmode=require",
            ),
            // An unencoded `@` in the password: the last `@` ends the credentials.
            ("postgres://u:p@ss@db/x", "postgres://u:***@db/x"),
            (
                "postgres://u@db/x?sslmode=disable&password=hunter2&application_name=a",
                "postgres://u@db/x?sslmode=disable&password=***&application_name=a",
            ),
            (
                "postgres://db/x?PASSWORD=hunter2",
                "postgres://db/x?PASSWORD=***",
            ),
            (
                "postgres://u:a@db/x?password=b&sslpassword=c",
                "postgres://u:***@db/x?password=***&sslpassword=***",
            ),
            // A `/` or `?` in an unencoded password: all of the credentials go.
            ("postgres://u:pa/ss@db/x", "postgres://***@db/x"),
            ("postgres://u:p?w@db/x", "postgres://***@db/x"),
            ("postgres://db:5432/x", "postgres://db:5432/x"),
            ("postgres://u@db/x", "postgres://u@db/x"),
            ("sqlite://./data/secretd.db", "sqlite://./data/secretd.db"),
            (
                "sqlite:///srv/a@b/secretd.db",
                "sqlite:///srv/a@b/secretd.db",
            ),
            (
                "host=db user=u password=hunter2 dbname=x",
                "host=db user=u password=*** dbname=x",
            ),
            ("", ""),
        ] {
            assert_eq!(redact_url(url), shown, "{url}");
            for secret in ["hunter2", "p%40ss", "pa/ss", "p?w", "p@ss"] {
                assert!(!redact_url(url).contains(secret), "{url}");
            }
        }
    }

    #[test]
    fn short_secrets_are_refused() {
        assert!(check_secret("jwt_secret", &"x".repeat(31)).is_err());
        assert!(check_secret("jwt_secret", &"x".repeat(32)).is_ok());
        let err = check_secret("the file f", "abc").unwrap_err().0;
        assert!(err.contains("the file f is 3 bytes"), "{err}");
    }
}
