//! The typed values of settings that are more than a number: parsed once when the
//! configuration loads, so no other module compares strings or re-parses addresses.

use std::fmt;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::str::FromStr;

use serde::{Deserialize, Deserializer};

use super::redact_url;

/// A value that must never reach a log: `Debug` and `Display` print `[redacted]`. Only
/// [`Secret::expose`] gives the text, at the one place that needs it.
#[derive(Clone, Default, PartialEq, Eq)]
pub struct Secret(String);

impl Secret {
    /// The secret text (to hand to a driver or a signer, never to a log).
    pub fn expose(&self) -> &str {
        &self.0
    }

    /// True when no secret is set.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("[redacted]")
    }
}

impl fmt::Display for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("[redacted]")
    }
}

impl From<&str> for Secret {
    fn from(s: &str) -> Self {
        Secret(s.to_string())
    }
}

impl From<String> for Secret {
    fn from(s: String) -> Self {
        Secret(s)
    }
}

impl<'de> Deserialize<'de> for Secret {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        String::deserialize(d).map(Secret)
    }
}

/// How tokens are signed (`jwt_algorithm`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum JwtAlgorithm {
    /// HMAC-SHA256 with the shared `jwt_secret` (the default).
    Hs256,
    /// Ed25519 signatures, verified with `jwt_public_key_file`.
    EdDsa,
    /// RSA PKCS#1 v1.5 with SHA-256, verified with `jwt_public_key_file`.
    Rs256,
}

impl JwtAlgorithm {
    /// The name used in configuration and in JWT headers.
    pub fn name(self) -> &'static str {
        match self {
            JwtAlgorithm::Hs256 => "HS256",
            JwtAlgorithm::EdDsa => "EdDSA",
            JwtAlgorithm::Rs256 => "RS256",
        }
    }
}

impl fmt::Display for JwtAlgorithm {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl FromStr for JwtAlgorithm {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "HS256" => Ok(JwtAlgorithm::Hs256),
            "EdDSA" => Ok(JwtAlgorithm::EdDsa),
            "RS256" => Ok(JwtAlgorithm::Rs256),
            _ => Err(format!("{s:?} is not HS256, EdDSA or RS256")),
        }
    }
}

/// How log lines are written (`log_format`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LogFormat {
    /// Human-readable lines (the default).
    Text,
    /// One JSON object per line.
    Json,
}

impl FromStr for LogFormat {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "text" => Ok(LogFormat::Text),
            "json" => Ok(LogFormat::Json),
            _ => Err(format!("{s:?} is not text or json")),
        }
    }
}

/// Deserializes a value through its `FromStr` (the configuration loader adds the key to
/// the error: `… for key `jwt_algorithm``).
pub(super) fn parsed<'de, D, T>(d: D) -> Result<T, D::Error>
where
    D: Deserializer<'de>,
    T: FromStr<Err = String>,
{
    let s = String::deserialize(d)?;
    s.parse().map_err(serde::de::Error::custom)
}

/// Deserializes `listen`: an IP address and port.
pub(super) fn listen_addr<'de, D: Deserializer<'de>>(d: D) -> Result<SocketAddr, D::Error> {
    let s = String::deserialize(d)?;
    socket_addr(&s).map_err(serde::de::Error::custom)
}

/// Deserializes `metrics_listen`: empty (off) or an IP address and port.
pub(super) fn optional_addr<'de, D: Deserializer<'de>>(
    d: D,
) -> Result<Option<SocketAddr>, D::Error> {
    let s = String::deserialize(d)?;
    if s.trim().is_empty() {
        return Ok(None);
    }
    socket_addr(&s).map(Some).map_err(serde::de::Error::custom)
}

fn socket_addr(s: &str) -> Result<SocketAddr, String> {
    s.trim().parse().map_err(|e| {
        format!("{s:?} is not an IP address and port ({e}), e.g. 127.0.0.1:50051 or [::]:50051")
    })
}

/// Where the data lives: the database named by `database_url` (or the embedded default).
#[derive(Clone, PartialEq, Eq)]
pub enum Database {
    /// A Postgres server; the URL may hold a password.
    Postgres(Secret),
    /// A SQLite file, given as a `sqlite:` URL (options may follow the path).
    Sqlite {
        /// The `sqlite:` URL as configured.
        url: String,
        /// The database file.
        path: PathBuf,
    },
}

/// A `database_url` that is neither Postgres nor SQLite.
#[derive(Debug, thiserror::Error)]
#[error(
    "database_url {0} is neither postgres://… nor sqlite://…; leave it empty for the \
     embedded SQLite file in the data directory"
)]
pub struct UnknownDatabase(String);

impl Database {
    /// The database of `database_url`, or the SQLite file `secretd.db` in `data_dir` when
    /// it is empty.
    pub fn from_url(url: &str, data_dir: &Path) -> Result<Database, UnknownDatabase> {
        let url = url.trim();
        if url.is_empty() {
            let path = data_dir.join("secretd.db");
            return Ok(Database::Sqlite {
                url: format!("sqlite://{}", path.display()),
                path,
            });
        }
        if url.starts_with("postgres://") || url.starts_with("postgresql://") {
            Ok(Database::Postgres(Secret::from(url)))
        } else if url.starts_with("sqlite:") {
            let path = sqlx::sqlite::SqliteConnectOptions::from_str(url)
                .map(|o| o.get_filename().to_path_buf())
                .unwrap_or_default();
            Ok(Database::Sqlite {
                url: url.to_string(),
                path,
            })
        } else {
            Err(UnknownDatabase(redact_url(url)))
        }
    }

    /// The URL to hand to the driver (it may hold a password: never log it; log the
    /// database's `Display`, which masks it).
    pub fn url(&self) -> &str {
        match self {
            Database::Postgres(url) => url.expose(),
            Database::Sqlite { url, .. } => url,
        }
    }
}

impl fmt::Display for Database {
    /// The URL with its password masked (see [`redact_url`]).
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&redact_url(self.url()))
    }
}

impl fmt::Debug for Database {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Database({self})")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn secrets_never_print() {
        let s = Secret::from("hunter2");
        assert_eq!(format!("{s} {s:?}"), "[redacted] [redacted]");
        assert_eq!(s.expose(), "hunter2");
        let db = Database::from_url("postgres://u:hunter2@db/x", Path::new(".")).unwrap();
        assert!(!format!("{db} {db:?}").contains("hunter2"));
        assert_eq!(db.url(), "postgres://u:hunter2@db/x");
    }

    #[test]
    fn databases_parse() {
        let dir = Path::new("/srv/data");
        match Database::from_url("", dir).unwrap() {
            Database::Sqlite { path, url } => {
                assert_eq!(path, dir.join("secretd.db"));
                assert_eq!(url, "sqlite:///srv/data/secretd.db");
            }
            other => panic!("{other:?}"),
        }
        assert!(matches!(
            Database::from_url("sqlite://x.db?mode=rwc", dir).unwrap(),
            Database::Sqlite { path, .. } if path == Path::new("x.db")
        ));
        let err = Database::from_url("mysql://u:pw@h/x", dir).unwrap_err();
        assert!(err.to_string().contains("neither postgres"));
        assert!(!err.to_string().contains("pw@"));
    }
}
