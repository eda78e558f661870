//! Layered configuration: built-in defaults < `secretd.toml` (or `--config FILE`) <
//! environment (`SECRETD_<KEY>`) < command-line flags.
//!
//! Every key is documented on [`Settings`] and in README.md. Keys are flat, so each has a
//! direct environment twin: `max_counter_gap` is `SECRETD_MAX_COUNTER_GAP`.

mod federation;
mod keys;
mod types;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use serde::Deserialize;

pub use federation::{ED25519_PUBLIC_KEY_LEN, FederationSettings, PeerConfig};
pub use types::{Database, JwtAlgorithm, LogFormat, Secret, UnknownDatabase};

/// The default listen address.
pub const DEFAULT_LISTEN: &str = "127.0.0.1:50051";
/// The default data directory.
pub const DEFAULT_DATA_DIR: &str = "./data";
/// The config file read from the working directory when `--config` is not given.
pub const DEFAULT_CONFIG_FILE: &str = "secretd.toml";
/// The default `max_response_bytes`: 3 MiB, well under the 4 MiB that stock gRPC clients
/// accept.
pub const DEFAULT_MAX_RESPONSE_BYTES: usize = 3 * 1024 * 1024;
/// The smallest accepted `max_response_bytes`.
pub const MIN_RESPONSE_BYTES: usize = 1024;
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
    /// gRPC listen address (also serves gRPC-Web): an IP address and port. Default
    /// `127.0.0.1:50051`.
    #[serde(deserialize_with = "types::listen_addr")]
    pub listen: SocketAddr,
    /// PEM file with the certificate chain served on `listen` (the server's certificate
    /// first). Set with `tls_key_file`: every service on the port (gRPC, gRPC-Web,
    /// federation, health, reflection) is served over TLS only, and both files are re-read
    /// on SIGHUP. Empty (the default) = plaintext.
    pub tls_cert_file: String,
    /// PEM file with the private key of `tls_cert_file` (PKCS#8, RSA or EC). Empty = no
    /// TLS; set both or neither.
    pub tls_key_file: String,
    /// Database: `postgres://…` or `sqlite://PATH`. Empty (the default) means the SQLite
    /// file `secretd.db` in `data_dir`. Redacted in `Debug`; see [`Settings::database`].
    pub database_url: Secret,
    /// Directory for the SQLite file and the generated JWT secret. Default `./data`.
    pub data_dir: PathBuf,
    /// Address of the Prometheus metrics endpoint (`GET /metrics`). Empty = off.
    #[serde(deserialize_with = "types::optional_addr")]
    pub metrics_listen: Option<SocketAddr>,
    /// This homeserver's name; `homeserver` fields equal to it (or empty) mean local.
    pub server_name: String,
    /// HS256 secret shared with the homeserver's auth service. Empty = read (or on first
    /// start create) `data_dir/jwt-secret`. Redacted in `Debug`.
    pub jwt_secret: Secret,
    /// `HS256` (default), `EdDSA` or `RS256`.
    #[serde(deserialize_with = "types::parsed")]
    pub jwt_algorithm: JwtAlgorithm,
    /// PEM file with the public key that verifies EdDSA or RS256 tokens.
    pub jwt_public_key_file: String,
    /// Required `iss` claim. Empty = not checked.
    pub jwt_issuer: String,
    /// Required `aud` claim. Empty = not checked.
    pub jwt_audience: String,
    /// Log format: `text` or `json`.
    #[serde(deserialize_with = "types::parsed")]
    pub log_format: LogFormat,
    /// Log filter in `RUST_LOG` syntax (e.g. `info`, `secretd=debug`). `RUST_LOG` wins.
    pub log_level: String,
    /// Largest accepted jump of a stream's ratchet counter in one post. Default 1024.
    pub max_counter_gap: u64,
    /// Subscriptions one StreamMessagePosting or Subscribe call may hold. Default 1000.
    pub max_subscriptions_per_connection: usize,
    /// Open StreamMessagePosting and Subscribe calls (together) one user may hold on one
    /// replica. Default 32.
    pub max_connections_per_user: usize,
    /// Stream ids one ManageStream message may name (`subscribe_to`, `unsubscribe_to` and
    /// `resume_from` together). A message naming more ends the call with
    /// INVALID_ARGUMENT. Default 2000: enough to drop 1,000 streams and resume 1,000
    /// others in one message.
    pub max_stream_ids_per_message: usize,
    /// Database connections in the pool (Postgres) / readers (SQLite). Default 16. At most
    /// four database operations per connection are in progress at once; the rest wait for
    /// their turn within `db_timeout_ms` (`store::deadline`).
    pub db_max_connections: u32,
    /// Client-side deadline of every database operation, in milliseconds: an operation
    /// the database does not finish by then (a black-holed connection included) answers
    /// UNAVAILABLE, and its connection is closed rather than reused. Postgres sessions
    /// also get it as `statement_timeout` and `idle_in_transaction_session_timeout`.
    /// Default 5000.
    pub db_timeout_ms: u64,
    /// SQLite: how much of the database file each connection reads through a memory map
    /// (`PRAGMA mmap_size`), in MiB; 0 reads every page with a system call. The mapped
    /// pages are the kernel's page cache, shared by all connections, not extra memory.
    /// Default 256.
    pub sqlite_mmap_mb: u64,
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
    /// Origins allowed to call through gRPC-Web (CORS), as browsers send them
    /// (`https://chat.example`, `http://127.0.0.1:8080`). `*` (the default) allows any:
    /// tokens travel in a header, not a cookie, so no ambient authority is exposed.
    pub cors_allowed_origins: Vec<String>,
    /// Events per stream kept in memory for live fan-out. Default 256.
    pub fanout_ring_events: usize,
    /// Bytes all streams' in-memory rings may hold together (each ring also stays under
    /// 1 MiB). When spent, new events are not kept in memory and subscribers read them
    /// from the database: nothing is lost, it only costs reads. 0 keeps nothing in
    /// memory. Default 268435456 (256 MiB).
    pub fanout_ring_budget_bytes: usize,
    /// Encoded events queued per StreamMessagePosting call before it falls back to the
    /// database cursor. Default 16.
    pub connection_buffer: usize,
    /// Largest encoded response of a paged RPC (FetchMessages, FetchInvites, FetchKey,
    /// ListChannelPairs), gRPC frame header included: a page stops before the item that
    /// would pass it (the first item always comes) and says `has_more`. Default 3 MiB, so
    /// a stock client's 4 MiB receive limit is never reached. At least 1024.
    pub max_response_bytes: usize,
    /// Most past keys FetchKey returns (newest first); `more_past_keys` says when older
    /// ones exist. Default 100.
    pub max_past_keys: usize,
    /// Key transparency (DESIGN §12): how often, in milliseconds, a replica publishes
    /// the keys posted since the last epoch into the log under a new signed head (one
    /// replica at a time); PostKey waits for it. Default 500; 10 to 60000.
    pub kt_epoch_ms: u64,
    /// Most keys one epoch logs (a user's pending keys are never split, so a few more
    /// may go); the rest wait for the next epoch. Bounds an epoch's transaction, e.g.
    /// while keys posted before key transparency existed are logged at the first start.
    /// Default 1000; at least 1.
    pub kt_max_entries_per_epoch: usize,
    /// Whether FetchKey of a local user carries its key transparency proof. Default true;
    /// false exists only as the baseline of the `keys` benchmark (BENCHMARKS.md): clients
    /// verify every key, so a server that leaves proofs out fails their checks.
    pub kt_proofs_in_fetch_key: bool,

    // Retention (README "Retention").
    /// Days an event is kept when its pair has no SetRetention setting (0 = keep
    /// forever). Default 0. With `max_retention_days` set, 1 to that maximum.
    pub retention_days: u64,
    /// The longest a pair's owner may keep events with SetRetention, in days
    /// (`max_age_secs` at most this × 86400, and never 0 = forever); 0 = no maximum.
    /// Default 0.
    pub max_retention_days: u64,
    /// How often, in milliseconds, each replica's sweeper deletes expired events. Default
    /// 60000; 10 to 86400000.
    pub retention_sweep_ms: u64,
    /// Most events the sweeper deletes in one transaction (one stream's oldest); a pass
    /// goes on batch by batch until every stream is within its retention. Default 500;
    /// 1 to 100000.
    pub retention_batch: u64,

    // Limits (README "Limits"). Rate limits count per user and per replica; a rate of 0
    // turns that limit off.
    /// GenerateChannelPair calls per user per second (0 = off). Default 2.
    pub rate_pairs_per_sec: f64,
    /// GenerateChannelPair calls a user may make at once before the rate applies. Default 100.
    pub rate_pairs_burst: u32,
    /// SendInvite calls per user per second (0 = off). Default 20.
    pub rate_invites_per_sec: f64,
    /// SendInvite burst. Default 1000 (a new device receiving keys to 1,000 rooms).
    pub rate_invites_burst: u32,
    /// PostKey calls per user per second (0 = off). Default 1.
    pub rate_keys_per_sec: f64,
    /// PostKey burst. Default 20.
    pub rate_keys_burst: u32,
    /// PostPrivateKey calls per user per second (0 = off). Default 1.
    pub rate_private_keys_per_sec: f64,
    /// PostPrivateKey burst. Default 20.
    pub rate_private_keys_burst: u32,
    /// PostMessage calls per user per second (0 = off). Default 1000.
    pub rate_posts_per_sec: f64,
    /// PostMessage burst. Default 2000.
    pub rate_posts_burst: u32,
    /// History reads (FetchMessages, FetchInvites, ListChannelPairs, FetchKey,
    /// FetchPrivateKey) per user per second (0 = off). Default 200.
    pub rate_reads_per_sec: f64,
    /// History-read burst. Default 2000.
    pub rate_reads_burst: u32,
    /// Subscription attempts per user per second: opening a StreamMessagePosting or
    /// Subscribe call, and each stream named in `subscribe_to` or `resume_from` (0 = off).
    /// Default 400.
    pub rate_subscriptions_per_sec: f64,
    /// Subscription-attempt burst. Default 4000 (a client reconnecting and resuming 1,000
    /// streams uses a quarter of it).
    pub rate_subscriptions_burst: u32,
    /// Invites one user may have pending to another: invites from X to Y into pairs Y is
    /// still a member of (self-invites are not counted; 0 = off). Default 1000.
    pub max_pending_invites_per_sender: u64,
    /// Members one channel pair may have (0 = off). Default 5000.
    pub max_members_per_pair: u64,
    /// Posts queued per group-commit writer. Default 8192.
    pub commit_queue_depth: usize,
    /// How long PostMessage waits for room in a full group-commit queue before it answers
    /// RESOURCE_EXHAUSTED, in milliseconds. Default 200.
    pub commit_queue_timeout_ms: u64,
    /// HTTP/2 streams (calls) one connection may have open at once
    /// (SETTINGS_MAX_CONCURRENT_STREAMS). Default 200.
    pub http2_max_concurrent_streams: u32,
    /// Calls one connection may have in progress in the server at once; further calls
    /// wait for one to finish (a StreamMessagePosting call counts only until it is
    /// accepted). Default 64.
    pub max_in_flight_per_connection: usize,
    /// Unary calls one user may have in progress on one replica, over all their
    /// connections, each until its response is sent (0 = off). Default 128.
    pub max_in_flight_per_user: usize,
    /// Deadline of a unary call in milliseconds (StreamMessagePosting has none); a call
    /// past it ends with DEADLINE_EXCEEDED. Default 10000.
    pub unary_timeout_ms: u64,
    /// Largest request message in bytes; a larger one is RESOURCE_EXHAUSTED. Default
    /// 262144 (256 KiB); at least 69632 (68 KiB), so a 64 KiB blob always fits.
    pub max_request_bytes: usize,
    /// The `[federation]` table (DESIGN §9; see [`FederationSettings`]). Off by default.
    #[serde(default)]
    pub federation: FederationSettings,
}

impl Settings {
    /// The database `database_url` names, or the embedded SQLite file in `data_dir`. An
    /// unknown kind of URL is an error at start (exit code 1), not at load.
    pub fn database(&self) -> Result<Database, UnknownDatabase> {
        Database::from_url(self.database_url.expose(), &self.data_dir)
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
    use config::Source;
    let mut builder = with_defaults()?;
    let (source, name) = match file {
        Some(path) => (
            config::File::from(path).required(true),
            path.display().to_string(),
        ),
        None => (
            config::File::with_name(DEFAULT_CONFIG_FILE).required(false),
            format!("{DEFAULT_CONFIG_FILE} (in the working directory)"),
        ),
    };
    // The file alone first, so that an unknown key in it is reported with the file's
    // name and the closest key (serde would only list all of them).
    let from_file = config::Config::builder().add_source(source).build()?;
    keys::check_file(&name, &from_file.collect()?).map_err(config::ConfigError::Message)?;
    builder = builder.add_source(from_file);
    // Every SECRETD_* variable is a setting (so a misspelt one is an error, naming it),
    // except SECRETD_CONFIG, which names the config file itself, secretd-chat's
    // SECRETD_CHAT_* (one shell runs both programs) and the test suite's hooks,
    // SECRETD_TESTHOOK_* (read where they act, never settings). Values are taken as text (the typed
    // keys parse it), so a secret made of digits stays those digits; list keys are split
    // at commas.
    let vars: Vec<(String, String)> = std::env::vars()
        .filter(|(k, _)| {
            k.starts_with("SECRETD_")
                && !k.starts_with(keys::CLIENT_PREFIX)
                && !k.starts_with(keys::TESTHOOK_PREFIX)
        })
        .collect();
    keys::check_variables(vars.iter().map(|(k, _)| k.as_str()))
        .map_err(config::ConfigError::Message)?;
    let (lists, scalars): (config::Map<String, String>, config::Map<String, String>) = vars
        .into_iter()
        .filter(|(k, _)| k != keys::CONFIG_VARIABLE)
        .partition(|(k, _)| {
            LIST_KEYS
                .iter()
                .any(|key| k["SECRETD_".len()..].eq_ignore_ascii_case(key))
        });
    // `[federation]`'s scalar keys: SECRETD_FEDERATION_<KEY> sets `federation.<key>`.
    let (federation_env, scalars): (config::Map<String, String>, config::Map<String, String>) =
        scalars.into_iter().partition(|(k, _)| {
            keys::federation_scalars()
                .any(|key| k["SECRETD_".len()..].eq_ignore_ascii_case(&format!("federation_{key}")))
        });
    let env = || config::Environment::with_prefix("SECRETD").prefix_separator("_");
    builder = builder.add_source(env().source(Some(scalars)));
    let mut list_env = env().try_parsing(true).list_separator(",");
    for key in LIST_KEYS {
        list_env = list_env.with_list_parse_key(key);
    }
    builder = builder.add_source(list_env.source(Some(lists)));
    for (k, v) in federation_env {
        let key = k["SECRETD_FEDERATION_".len()..].to_ascii_lowercase();
        builder = builder.set_override(format!("federation.{key}"), v)?;
    }
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
        .set_default("tls_cert_file", "")?
        .set_default("tls_key_file", "")?
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
        .set_default("max_stream_ids_per_message", 2000)?
        .set_default("db_max_connections", 16)?
        .set_default("db_timeout_ms", 5000)?
        .set_default("sqlite_mmap_mb", 256)?
        .set_default("listener_watchdog_ms", 10_000)?
        .set_default("commit_max_batch", 512)?
        .set_default("commit_writers", 1)?
        .set_default("shutdown_grace_secs", 10)?
        .set_default("keepalive_interval_secs", 30)?
        .set_default("keepalive_timeout_secs", 10)?
        .set_default("cors_allowed_origins", vec!["*"])?
        .set_default("fanout_ring_events", 256)?
        .set_default("connection_buffer", 16)?
        .set_default("max_response_bytes", DEFAULT_MAX_RESPONSE_BYTES as u64)?
        .set_default("max_past_keys", 100)?
        .set_default("kt_epoch_ms", 500)?
        .set_default("kt_max_entries_per_epoch", 1000)?
        .set_default("kt_proofs_in_fetch_key", true)?
        .set_default("retention_days", 0)?
        .set_default("max_retention_days", 0)?
        .set_default("retention_sweep_ms", 60_000)?
        .set_default("retention_batch", 500)?
        .set_default("rate_pairs_per_sec", 2.0)?
        .set_default("rate_pairs_burst", 100)?
        .set_default("rate_invites_per_sec", 20.0)?
        .set_default("rate_invites_burst", 1000)?
        .set_default("rate_keys_per_sec", 1.0)?
        .set_default("rate_keys_burst", 20)?
        .set_default("rate_private_keys_per_sec", 1.0)?
        .set_default("rate_private_keys_burst", 20)?
        .set_default("rate_posts_per_sec", 1000.0)?
        .set_default("rate_posts_burst", 2000)?
        .set_default("rate_reads_per_sec", 200.0)?
        .set_default("rate_reads_burst", 2000)?
        .set_default("rate_subscriptions_per_sec", 400.0)?
        .set_default("rate_subscriptions_burst", 4000)?
        .set_default("max_pending_invites_per_sender", 1000)?
        .set_default("max_members_per_pair", 5000)?
        .set_default("commit_queue_depth", 8192)?
        .set_default("commit_queue_timeout_ms", 200)?
        .set_default("http2_max_concurrent_streams", 200)?
        .set_default("max_in_flight_per_connection", 64)?
        .set_default("max_in_flight_per_user", 128)?
        .set_default("unary_timeout_ms", 10_000)?
        .set_default("max_request_bytes", 256 * 1024)?
        .set_default("fanout_ring_budget_bytes", 256 * 1024 * 1024)
}

/// The smallest accepted `max_request_bytes`: a 64 KiB blob plus its request's other
/// fields always fits.
pub const MIN_REQUEST_BYTES: usize = 68 * 1024;

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
        if self.max_response_bytes < MIN_RESPONSE_BYTES {
            return bad(format!(
                "max_response_bytes is {}; it must be at least {MIN_RESPONSE_BYTES}",
                self.max_response_bytes
            ));
        }
        if !(10..=60_000).contains(&self.kt_epoch_ms) {
            return bad(format!(
                "kt_epoch_ms is {}; it must be between 10 and 60000 (milliseconds)",
                self.kt_epoch_ms
            ));
        }
        if self.max_retention_days > 0
            && !(1..=self.max_retention_days).contains(&self.retention_days)
        {
            return bad(format!(
                "retention_days is {} but max_retention_days is {}: the default must keep \
                 events between 1 day and that maximum (0 = forever is above it)",
                self.retention_days, self.max_retention_days
            ));
        }
        if self.retention_days > 1_000_000 || self.max_retention_days > 1_000_000 {
            return bad("retention_days and max_retention_days must be at most 1000000".into());
        }
        if !(10..=86_400_000).contains(&self.retention_sweep_ms) {
            return bad(format!(
                "retention_sweep_ms is {}; it must be between 10 and 86400000 (milliseconds)",
                self.retention_sweep_ms
            ));
        }
        if !(1..=100_000).contains(&self.retention_batch) {
            return bad(format!(
                "retention_batch is {}; it must be between 1 and 100000",
                self.retention_batch
            ));
        }
        if self.kt_max_entries_per_epoch == 0 {
            return bad("kt_max_entries_per_epoch must be at least 1".into());
        }
        if self.commit_queue_depth == 0 {
            return bad("commit_queue_depth must be at least 1".into());
        }
        if self.http2_max_concurrent_streams == 0
            || self.max_in_flight_per_connection == 0
            || self.unary_timeout_ms == 0
        {
            return bad(
                "http2_max_concurrent_streams, max_in_flight_per_connection and \
                 unary_timeout_ms must be at least 1"
                    .into(),
            );
        }
        if self.max_request_bytes < MIN_REQUEST_BYTES {
            return bad(format!(
                "max_request_bytes is {}; it must be at least {MIN_REQUEST_BYTES} so that a \
                 64 KiB blob fits",
                self.max_request_bytes
            ));
        }
        if self.tls_cert_file.is_empty() != self.tls_key_file.is_empty() {
            let (set, unset) = match self.tls_cert_file.is_empty() {
                true => ("tls_key_file", "tls_cert_file"),
                false => ("tls_cert_file", "tls_key_file"),
            };
            return bad(format!(
                "{set} is set but {unset} is not: TLS needs both the certificate and its key \
                 (PEM files), or neither for plaintext"
            ));
        }
        self.check_rates().map_err(config::ConfigError::Message)?;
        self.federation
            .validate(&self.server_name)
            .map_err(config::ConfigError::Message)?;
        if self.federation.enabled
            && self.jwt_algorithm != JwtAlgorithm::Hs256
            && self.jwt_audience.is_empty()
        {
            return bad(format!(
                "jwt_audience is not set, but federation.enabled is on and jwt_algorithm is \
                 {}: set jwt_audience to the audience your identity provider puts in this \
                 homeserver's tokens (two homeservers sharing an identity provider would \
                 otherwise accept each other's local tokens)",
                self.jwt_algorithm
            ));
        }
        if !self.jwt_secret.is_empty()
            && let Err(short) = check_secret("jwt_secret", self.jwt_secret.expose())
        {
            return bad(short.0);
        }
        if let Err(e) = crate::cors::Policy::from_origins(&self.cors_allowed_origins) {
            return bad(e.to_string());
        }
        Ok(())
    }
}

impl Settings {
    /// Every rate limit as (middle part of its keys `rate_<name>_per_sec` and
    /// `rate_<name>_burst`, rate per second, burst), in the order of the keys.
    pub fn rate_limits(&self) -> [(&'static str, f64, u32); 7] {
        [
            ("pairs", self.rate_pairs_per_sec, self.rate_pairs_burst),
            (
                "invites",
                self.rate_invites_per_sec,
                self.rate_invites_burst,
            ),
            ("keys", self.rate_keys_per_sec, self.rate_keys_burst),
            (
                "private_keys",
                self.rate_private_keys_per_sec,
                self.rate_private_keys_burst,
            ),
            ("posts", self.rate_posts_per_sec, self.rate_posts_burst),
            ("reads", self.rate_reads_per_sec, self.rate_reads_burst),
            (
                "subscriptions",
                self.rate_subscriptions_per_sec,
                self.rate_subscriptions_burst,
            ),
        ]
    }

    /// Checks every rate limit: a rate is 0 (off) or a positive number of at most a
    /// billion per second, and an enabled limit has a burst of at least 1.
    fn check_rates(&self) -> Result<(), String> {
        for (name, rate, burst) in self.rate_limits() {
            if !rate.is_finite() || !(0.0..=1e9).contains(&rate) {
                return Err(format!(
                    "rate_{name}_per_sec is {rate}; use 0 (off) or a positive number of calls \
                     per second"
                ));
            }
            if rate > 0.0 && burst == 0 {
                return Err(format!(
                    "rate_{name}_burst is 0; it must be at least 1 while rate_{name}_per_sec is \
                     set (set the rate to 0 to turn the limit off)"
                ));
            }
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
    fn bad_rates_are_configuration_errors() {
        let settings = |tweak: fn(&mut Settings)| {
            let mut s = defaults();
            tweak(&mut s);
            s
        };
        let negative = settings(|s| s.rate_posts_per_sec = -1.0);
        assert!(
            negative
                .check_rates()
                .unwrap_err()
                .contains("rate_posts_per_sec")
        );
        let no_burst = settings(|s| s.rate_reads_burst = 0);
        assert!(
            no_burst
                .check_rates()
                .unwrap_err()
                .contains("rate_reads_burst")
        );
        let off = settings(|s| {
            s.rate_reads_per_sec = 0.0;
            s.rate_reads_burst = 0;
        });
        off.check_rates().unwrap();
    }

    #[test]
    fn retention_settings_are_bounded() {
        let check = |tweak: fn(&mut Settings)| {
            let mut s = defaults();
            tweak(&mut s);
            s.validate().map_err(|e| e.to_string())
        };
        check(|_| {}).unwrap();
        check(|s| s.retention_days = 30).unwrap();
        check(|s| {
            s.max_retention_days = 30;
            s.retention_days = 30;
        })
        .unwrap();
        // A maximum makes "forever" (0) and anything above it a mistake.
        let forever = check(|s| s.max_retention_days = 30).unwrap_err();
        assert!(forever.contains("retention_days is 0"), "{forever}");
        assert!(
            check(|s| {
                s.max_retention_days = 30;
                s.retention_days = 31;
            })
            .is_err()
        );
        let fast = check(|s| s.retention_sweep_ms = 1).unwrap_err();
        assert!(fast.contains("retention_sweep_ms"), "{fast}");
        let batch = check(|s| s.retention_batch = 0).unwrap_err();
        assert!(batch.contains("retention_batch"), "{batch}");
    }

    #[test]
    fn short_secrets_are_refused() {
        assert!(check_secret("jwt_secret", &"x".repeat(31)).is_err());
        assert!(check_secret("jwt_secret", &"x".repeat(32)).is_ok());
        let err = check_secret("the file f", "abc").unwrap_err().0;
        assert!(err.contains("the file f is 3 bytes"), "{err}");
    }
}
