//! The HS256 secret and development tokens.
//!
//! The secret is `jwt_secret` when configured, else the file `data_dir/jwt-secret`. On
//! first use the file is created atomically: 32 random bytes (hex) go to a temporary file
//! in the data directory (mode 0600), which is synced and then published under the final
//! name with a hard link, which never replaces an existing file; the directory is synced
//! after. So a reader never sees a partial secret, a crash leaves either no secret or a
//! whole one, and of several processes starting at once on a fresh data directory the
//! first link wins and the others read the winner's secret. A secret shorter than
//! [`MIN_JWT_SECRET_BYTES`] from any source is a configuration error ([`Misconfigured`]).

use std::io::ErrorKind;
use std::path::Path;

use jsonwebtoken::{Algorithm, EncodingKey, Header};
use serde::Serialize;

use crate::config::{JwtAlgorithm, MIN_JWT_SECRET_BYTES, Misconfigured, Settings, check_secret};
use crate::private_files;

/// File name of the generated HS256 secret inside the data directory.
pub const SECRET_FILE: &str = "jwt-secret";

/// The HS256 secret: `jwt_secret` when set, else the contents of `data_dir/jwt-secret`,
/// which is created (32 random bytes, hex, mode 0600) when it does not exist.
pub fn load_or_create_secret(settings: &Settings) -> anyhow::Result<String> {
    load_or_create_secret_with(settings, &mut || {})
}

/// [`load_or_create_secret`], running `before_publish` when a new secret is written and
/// synced to its temporary file but not yet published: tests run a second loader, or a
/// crash, in that window.
#[doc(hidden)]
pub fn load_or_create_secret_with(
    settings: &Settings,
    before_publish: &mut dyn FnMut(),
) -> anyhow::Result<String> {
    if !settings.jwt_secret.is_empty() {
        check_secret("jwt_secret", settings.jwt_secret.expose())?;
        return Ok(settings.jwt_secret.expose().to_string());
    }
    let dir = &settings.data_dir;
    private_files::private_dir(dir)?;
    let path = dir.join(SECRET_FILE);
    if let Some(secret) = read_secret_file(&path)? {
        return Ok(secret);
    }
    let bytes: [u8; 32] = rand::random();
    let secret: String = bytes.iter().map(|b| format!("{b:02x}")).collect();
    let published = private_files::publish_new(dir, SECRET_FILE, secret.as_bytes(), before_publish)
        .map_err(|e| {
            anyhow::anyhow!(
                "{e:#}; put a secret of {MIN_JWT_SECRET_BYTES} bytes or more in that file \
             yourself, or set jwt_secret"
            )
        })?;
    match published {
        private_files::Published::Ours => {
            tracing::warn!(
                "no jwt_secret configured: generated a new HS256 secret in {} (mode 0600); \
                 share it with the homeserver's auth service or set SECRETD_JWT_SECRET",
                path.display()
            );
            Ok(secret)
        }
        // Another process published its secret first: use that one.
        private_files::Published::Theirs => read_secret_file(&path)?
            .ok_or_else(|| anyhow::anyhow!("{} vanished while starting", path.display())),
    }
}

/// The secret in `path` (trimmed), `None` if the file does not exist.
fn read_secret_file(path: &Path) -> anyhow::Result<Option<String>> {
    let text = match std::fs::read_to_string(path) {
        Ok(text) => text,
        Err(e) if e.kind() == ErrorKind::NotFound => return Ok(None),
        Err(e) => anyhow::bail!("cannot read the JWT secret file {}: {e}", path.display()),
    };
    private_files::tighten_if_exists(path);
    let secret = text.trim();
    if secret.is_empty() {
        return Err(Misconfigured(format!(
            "the JWT secret file {} is empty (an interrupted first start of an older secretd \
             leaves it so); delete it to have a new secret generated at the next start, or \
             write the homeserver's secret ({MIN_JWT_SECRET_BYTES} bytes or more) into it",
            path.display()
        ))
        .into());
    }
    check_secret(&format!("the JWT secret in {}", path.display()), secret).map_err(|e| {
        Misconfigured(format!(
            "{}; write a longer one into the file, or delete it to have one generated",
            e.0
        ))
    })?;
    Ok(Some(secret.to_string()))
}

#[derive(Serialize)]
struct Claims {
    sub: String,
    exp: u64,
    iat: u64,
    #[serde(skip_serializing_if = "Option::is_none")]
    iss: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    aud: Option<String>,
}

/// Signs an HS256 token for `user` valid for `ttl_secs`, with the configured issuer and
/// audience, using the secret the server would use with the same settings.
pub fn mint_token(settings: &Settings, user: u64, ttl_secs: u64) -> anyhow::Result<String> {
    anyhow::ensure!(
        settings.jwt_algorithm == JwtAlgorithm::Hs256,
        "mint-token signs HS256 tokens only; with {} the homeserver's auth service holds \
         the private key",
        settings.jwt_algorithm
    );
    anyhow::ensure!(
        (1..=i64::MAX as u64).contains(&user),
        "--user must be between 1 and 2^63-1"
    );
    let secret = load_or_create_secret(settings)?;
    sign_hs256(
        secret.as_bytes(),
        user,
        i64::try_from(ttl_secs).unwrap_or(i64::MAX),
        &settings.jwt_issuer,
        &settings.jwt_audience,
    )
}

/// Signs an HS256 token whose `exp` is `ttl_secs` from now (negative = already expired).
/// `issuer` and `audience` are put in `iss`/`aud` unless empty. Used by `mint-token`, the
/// tests and the benchmark.
pub fn sign_hs256(
    secret: &[u8],
    user: u64,
    ttl_secs: i64,
    issuer: &str,
    audience: &str,
) -> anyhow::Result<String> {
    let now = crate::time::now_micros() / 1_000_000;
    let claims = Claims {
        sub: user.to_string(),
        exp: now.saturating_add(ttl_secs).max(0) as u64,
        iat: now.max(0) as u64,
        iss: (!issuer.is_empty()).then(|| issuer.to_string()),
        aud: (!audience.is_empty()).then(|| audience.to_string()),
    };
    Ok(jsonwebtoken::encode(
        &Header::new(Algorithm::HS256),
        &claims,
        &EncodingKey::from_secret(secret),
    )?)
}
