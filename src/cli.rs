//! Command-line interface:
//! `secretd [serve|migrate|mint-token|health|federation-key|kt-verify|admin]`.
//!
//! Flags override the config file and the environment; each flag's environment twin is the
//! config key in upper case with a `SECRETD_` prefix (see `config/mod.rs`).

use std::path::PathBuf;

use clap::{Args, Parser, Subcommand};

use crate::config::Overrides;

/// secretd: the SecretService of a chat homeserver.
#[derive(Debug, Parser)]
#[command(name = "secretd", version, about, long_about = None)]
pub struct Cli {
    /// What to do; `serve` when omitted.
    #[command(subcommand)]
    pub command: Option<Command>,
}

/// The subcommands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run the gRPC server (runs migrations first).
    Serve(ServeArgs),
    /// Run the database migrations and exit.
    Migrate(CommonArgs),
    /// Print a JWT for a user, signed with the secret the server would use.
    MintToken(MintTokenArgs),
    /// Ask a running server's gRPC health service; exit 0 when it is serving (for
    /// container health checks).
    Health(HealthArgs),
    /// Print this server's federation key as one line `SERVER_NAME KEY_ID BASE64_PUBLIC_KEY`
    /// (creating the key in the data directory if needed), for peers' configs.
    FederationKey(CommonArgs),
    /// Audit the key transparency log: recompute every root from the database's entries,
    /// compare with every stored head and check each head's signature; exit 1 naming the
    /// first mismatch.
    KtVerify(KtVerifyArgs),
    /// Operator commands beside a running server: `admin stats`, `admin backup`,
    /// `admin erase-user`.
    #[command(subcommand)]
    Admin(AdminCommand),
}

/// The operator's subcommands (`secretd admin …`).
#[derive(Debug, Subcommand)]
pub enum AdminCommand {
    /// Print what the database holds: users with a key, foreign users, pairs, events,
    /// ciphertext bytes, the oldest event, the key log's size, the size on disk. Read-only
    /// (safe while the server runs); one sequential read of the events table.
    Stats(StatsArgs),
    /// Copy the database to a new file. SQLite: a consistent copy taken while the server
    /// writes (never overwrites FILE). Postgres: print the pg_dump / pg_restore procedure
    /// for this database and exit 3 without writing anything.
    Backup(BackupArgs),
    /// Erase a user of this server (README "Erase a user"): keys out of service,
    /// private-key blob, invites from and to them, memberships (ownership passes on),
    /// live subscriptions ended; with --erase-messages their events' ciphertext too.
    /// Safe while the server runs, with any number of replicas; erasing twice changes
    /// nothing.
    EraseUser(EraseUserArgs),
}

/// Flags of `admin erase-user`.
#[derive(Debug, Args, Clone)]
pub struct EraseUserArgs {
    /// Common flags.
    #[command(flatten)]
    pub common: CommonArgs,
    /// The user id to erase.
    #[arg(long, value_name = "ID")]
    pub user: u64,
    /// The user's homeserver: omitted, "" or this server's `server_name`.
    #[arg(long, value_name = "NAME", default_value = "")]
    pub homeserver: String,
    /// Also replace the ciphertext of every event they posted by an empty erased marker.
    #[arg(long)]
    pub erase_messages: bool,
}

/// Flags of `admin stats`.
#[derive(Debug, Args, Clone)]
pub struct StatsArgs {
    /// Common flags.
    #[command(flatten)]
    pub common: CommonArgs,
    /// One JSON object instead of the table (for scripts).
    #[arg(long)]
    pub json: bool,
}

/// Flags of `admin backup`.
#[derive(Debug, Args, Clone)]
pub struct BackupArgs {
    /// Common flags.
    #[command(flatten)]
    pub common: CommonArgs,
    /// The file to write; it must not exist.
    #[arg(long, value_name = "FILE")]
    pub to: PathBuf,
}

impl AdminCommand {
    /// The common flags of the subcommand.
    pub fn common(&self) -> &CommonArgs {
        match self {
            AdminCommand::Stats(args) => &args.common,
            AdminCommand::Backup(args) => &args.common,
            AdminCommand::EraseUser(args) => &args.common,
        }
    }
}

/// Flags of `kt-verify`.
#[derive(Debug, Args, Clone)]
pub struct KtVerifyArgs {
    /// Common flags.
    #[command(flatten)]
    pub common: CommonArgs,
    /// The Ed25519 public key the heads must be signed with (base64, as `secretd
    /// federation-key` prints it). Default: the server's own key file.
    #[arg(long)]
    pub public_key: Option<String>,
}

/// Flags of `health`.
#[derive(Debug, Args, Clone)]
pub struct HealthArgs {
    /// Address of the server: HOST:PORT, or an `http://` or `https://` URL (`https://`
    /// speaks TLS, as `--tls`).
    #[arg(long, default_value = "127.0.0.1:50051")]
    pub addr: String,
    /// Seconds to wait for an answer.
    #[arg(long, default_value_t = 3)]
    pub timeout: u64,
    /// Speak TLS (a server with `tls_cert_file`): its certificate is verified against the
    /// system's roots, or against `--ca-file`.
    #[arg(long)]
    pub tls: bool,
    /// PEM file with the CA certificate(s) the server's certificate must chain to
    /// (implies `--tls`).
    #[arg(long)]
    pub ca_file: Option<PathBuf>,
    /// The name the server's certificate must carry, when it is not the host of `--addr`
    /// (e.g. `--addr 127.0.0.1:50051 --tls-name chat.example`; implies `--tls`).
    #[arg(long)]
    pub tls_name: Option<String>,
}

/// Flags every subcommand takes.
#[derive(Debug, Args, Default, Clone)]
pub struct CommonArgs {
    /// Config file (TOML). Default: `secretd.toml` in the working directory, if present.
    #[arg(long, env = "SECRETD_CONFIG")]
    pub config: Option<PathBuf>,
    /// Database URL: `postgres://…` or `sqlite://PATH` (default: SQLite in the data dir).
    #[arg(long)]
    pub database_url: Option<String>,
    /// Data directory (SQLite file, generated JWT secret). Default `./data`.
    #[arg(long)]
    pub data_dir: Option<PathBuf>,
}

/// Flags of `serve`.
#[derive(Debug, Args, Default, Clone)]
pub struct ServeArgs {
    /// Common flags.
    #[command(flatten)]
    pub common: CommonArgs,
    /// Listen address. Default `127.0.0.1:50051`.
    #[arg(long)]
    pub listen: Option<String>,
    /// Prometheus metrics address (e.g. `127.0.0.1:9100`). Default: off.
    #[arg(long)]
    pub metrics_listen: Option<String>,
}

/// Flags of `mint-token`.
#[derive(Debug, Args, Clone)]
pub struct MintTokenArgs {
    /// Common flags.
    #[command(flatten)]
    pub common: CommonArgs,
    /// The user id to put in `sub`.
    #[arg(long)]
    pub user: u64,
    /// Lifetime of the token in seconds.
    #[arg(long, default_value_t = 86_400)]
    pub ttl: u64,
}

impl CommonArgs {
    /// The command-line layer of the configuration.
    pub fn overrides(&self) -> Overrides {
        Overrides {
            database_url: self.database_url.clone(),
            data_dir: self.data_dir.clone(),
            ..Overrides::default()
        }
    }
}

impl ServeArgs {
    /// The command-line layer of the configuration.
    pub fn overrides(&self) -> Overrides {
        Overrides {
            listen: self.listen.clone(),
            metrics_listen: self.metrics_listen.clone(),
            ..self.common.overrides()
        }
    }
}
