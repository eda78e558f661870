//! Authentication: verifies the homeserver's JWTs (`authorization: Bearer <jwt>`) and
//! mints development tokens.
//!
//! `sub` is the decimal user id (1 ..= 2^63-1), `exp` is required, `iss`/`aud` are checked
//! when configured. HS256 uses the shared secret (config `jwt_secret`, or the file
//! `data_dir/jwt-secret`, created with mode 0600 on first use); EdDSA and RS256 use the PEM
//! public key in `jwt_public_key_file`. The JWT crate is `jsonwebtoken` 9 on `ring`, which
//! avoids the RSA crate version affected by RUSTSEC-2023-0071.

use std::io::Write;
use std::path::PathBuf;
use std::sync::Arc;

use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey, Header, Validation, errors::ErrorKind};
use serde::{Deserialize, Serialize};
use tonic::{Request, Status};

use crate::config::Settings;

/// File name of the generated HS256 secret inside the data directory.
pub const SECRET_FILE: &str = "jwt-secret";

/// The authenticated caller, put into each request's extensions by [`AuthInterceptor`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Caller {
    /// The user id from the token's `sub`.
    pub user: i64,
    /// Unix seconds after which the token is no longer accepted (its `exp` plus the
    /// leeway): long-lived calls (StreamMessagePosting) end then.
    pub expires_at: u64,
}

impl Caller {
    /// Reads the caller's user id from a request the interceptor has passed.
    pub fn of<T>(req: &Request<T>) -> Result<i64, Status> {
        Self::get(req).map(|c| c.user)
    }

    /// Reads the caller from a request the interceptor has passed.
    pub fn get<T>(req: &Request<T>) -> Result<Caller, Status> {
        req.extensions()
            .get::<Caller>()
            .copied()
            .ok_or_else(|| Status::unauthenticated("no authenticated caller on this request"))
    }
}

#[derive(Debug, Serialize, Deserialize)]
struct Claims {
    sub: String,
    exp: u64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    iss: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    aud: Option<String>,
}

/// Leeway for `exp`, in seconds (clock skew between the auth service and us).
pub const LEEWAY_SECS: u64 = 30;
/// Verified tokens remembered, so a client's repeated calls skip the signature check.
const CACHE_ENTRIES: usize = 16_384;

/// Checks tokens against the configured key and claims.
pub struct Verifier {
    key: DecodingKey,
    validation: Validation,
    /// token -> (user id, exp) of tokens that verified. A hit still checks `exp`.
    verified: std::sync::Mutex<std::collections::HashMap<Box<str>, (i64, u64)>>,
}

impl Verifier {
    /// Builds the verifier from the settings (creating the HS256 secret file if needed).
    pub fn from_settings(settings: &Settings) -> anyhow::Result<Self> {
        let (algorithm, key) = match settings.jwt_algorithm.as_str() {
            "EdDSA" | "RS256" => {
                let path = &settings.jwt_public_key_file;
                anyhow::ensure!(
                    !path.is_empty(),
                    "jwt_algorithm {} needs jwt_public_key_file (a PEM public key)",
                    settings.jwt_algorithm
                );
                let pem = std::fs::read(path)
                    .map_err(|e| anyhow::anyhow!("cannot read jwt_public_key_file {path}: {e}"))?;
                if settings.jwt_algorithm == "EdDSA" {
                    (Algorithm::EdDSA, DecodingKey::from_ed_pem(&pem)?)
                } else {
                    (Algorithm::RS256, DecodingKey::from_rsa_pem(&pem)?)
                }
            }
            _ => (
                Algorithm::HS256,
                DecodingKey::from_secret(load_or_create_secret(settings)?.as_bytes()),
            ),
        };
        let mut validation = Validation::new(algorithm);
        validation.leeway = LEEWAY_SECS;
        let mut required = vec!["exp", "sub"];
        if !settings.jwt_issuer.is_empty() {
            required.push("iss");
        }
        if !settings.jwt_audience.is_empty() {
            required.push("aud");
        }
        validation.set_required_spec_claims(&required);
        if settings.jwt_issuer.is_empty() {
            validation.iss = None;
        } else {
            validation.set_issuer(&[settings.jwt_issuer.as_str()]);
        }
        if settings.jwt_audience.is_empty() {
            validation.validate_aud = false;
        } else {
            validation.set_audience(&[settings.jwt_audience.as_str()]);
        }
        Ok(Verifier {
            key,
            validation,
            verified: Default::default(),
        })
    }

    /// Verifies a bearer token and returns the user id in its `sub`.
    pub fn verify(&self, token: &str) -> Result<i64, Status> {
        self.verify_caller(token).map(|c| c.user)
    }

    /// Verifies a bearer token and returns the caller it names.
    ///
    /// A token that verified before is recognised by its exact bytes and only its expiry
    /// is checked again (the signature check was about 5 % of the server's time per call).
    pub fn verify_caller(&self, token: &str) -> Result<Caller, Status> {
        let now = (crate::time::now_micros() / 1_000_000).max(0) as u64;
        let cached = self
            .verified
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(token)
            .copied();
        if let Some((user, exp)) = cached
            && exp.saturating_add(LEEWAY_SECS) >= now
        {
            return Ok(Caller {
                user,
                expires_at: exp.saturating_add(LEEWAY_SECS),
            });
        }
        self.verify_uncached(token)
    }

    fn verify_uncached(&self, token: &str) -> Result<Caller, Status> {
        let data =
            jsonwebtoken::decode::<Claims>(token, &self.key, &self.validation).map_err(|err| {
                let why = match err.kind() {
                    ErrorKind::ExpiredSignature => {
                        "the token has expired; get a fresh one from the homeserver"
                    }
                    ErrorKind::InvalidSignature => {
                        "the token's signature does not verify with this server's key"
                    }
                    ErrorKind::InvalidIssuer => {
                        "the token's `iss` claim is not the expected issuer"
                    }
                    ErrorKind::InvalidAudience => {
                        "the token's `aud` claim is not the expected audience"
                    }
                    ErrorKind::InvalidAlgorithm => {
                        "the token is signed with an algorithm this server does not accept"
                    }
                    ErrorKind::MissingRequiredClaim(_) => {
                        "the token lacks a required claim (`sub`, `exp`, and `iss`/`aud` when configured)"
                    }
                    _ => "the bearer token is not a well-formed JWT",
                };
                Status::unauthenticated(why)
            })?;
        let user = parse_user_id(&data.claims.sub).ok_or_else(|| {
            Status::unauthenticated(
                "the token's `sub` claim must be a decimal user id between 1 and 2^63-1",
            )
        })?;
        let mut cache = self.verified.lock().unwrap_or_else(|e| e.into_inner());
        if cache.len() >= CACHE_ENTRIES {
            cache.clear();
        }
        cache.insert(token.into(), (user, data.claims.exp));
        Ok(Caller {
            user,
            expires_at: data.claims.exp.saturating_add(LEEWAY_SECS),
        })
    }
}

fn parse_user_id(sub: &str) -> Option<i64> {
    if sub.is_empty() || !sub.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    sub.parse::<i64>().ok().filter(|&id| id >= 1)
}

/// A tonic interceptor that authenticates every call and records the [`Caller`].
#[derive(Clone)]
pub struct AuthInterceptor {
    verifier: Arc<Verifier>,
}

impl AuthInterceptor {
    /// Wraps a verifier.
    pub fn new(verifier: Arc<Verifier>) -> Self {
        AuthInterceptor { verifier }
    }
}

impl tonic::service::Interceptor for AuthInterceptor {
    fn call(&mut self, mut req: Request<()>) -> Result<Request<()>, Status> {
        let header = req.metadata().get("authorization").ok_or_else(|| {
            Status::unauthenticated("missing `authorization: Bearer <token>` metadata")
        })?;
        let token = header
            .to_str()
            .ok()
            .and_then(|v| {
                v.strip_prefix("Bearer ")
                    .or_else(|| v.strip_prefix("bearer "))
            })
            .map(str::trim)
            .filter(|t| !t.is_empty())
            .ok_or_else(|| {
                Status::unauthenticated("the authorization metadata must be `Bearer <jwt>`")
            })?;
        let caller = self.verifier.verify_caller(token)?;
        req.extensions_mut().insert(caller);
        Ok(req)
    }
}

/// The HS256 secret: `jwt_secret` when set, else the contents of `data_dir/jwt-secret`,
/// which is created (32 random bytes, hex, mode 0600) when it does not exist.
pub fn load_or_create_secret(settings: &Settings) -> anyhow::Result<String> {
    if !settings.jwt_secret.is_empty() {
        return Ok(settings.jwt_secret.clone());
    }
    let path: PathBuf = settings.data_dir.join(SECRET_FILE);
    match std::fs::read_to_string(&path) {
        Ok(s) if !s.trim().is_empty() => return Ok(s.trim().to_string()),
        Ok(_) => anyhow::bail!(
            "{} is empty; delete it or put a secret in it",
            path.display()
        ),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => anyhow::bail!("cannot read {}: {e}", path.display()),
    }
    std::fs::create_dir_all(&settings.data_dir)
        .map_err(|e| anyhow::anyhow!("cannot create {}: {e}", settings.data_dir.display()))?;
    let bytes: [u8; 32] = rand::random();
    let secret: String = bytes.iter().map(|b| format!("{b:02x}")).collect();
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create_new(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        options.mode(0o600);
    }
    match options.open(&path) {
        Ok(mut file) => {
            file.write_all(secret.as_bytes())?;
            file.sync_all()?;
            tracing::warn!(
                path = %path.display(),
                "no jwt_secret configured: generated a new HS256 secret; share it with the \
                 homeserver's auth service or set SECRETD_JWT_SECRET"
            );
            eprintln!(
                "secretd: generated a new JWT secret in {} (mode 0600)",
                path.display()
            );
            Ok(secret)
        }
        // Another process created it between our read and our create: use theirs.
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {
            Ok(std::fs::read_to_string(&path)?.trim().to_string())
        }
        Err(e) => anyhow::bail!("cannot create {}: {e}", path.display()),
    }
}

/// Signs an HS256 token for `user` valid for `ttl_secs`, with the configured issuer and
/// audience, using the secret the server would use with the same settings.
pub fn mint_token(settings: &Settings, user: u64, ttl_secs: u64) -> anyhow::Result<String> {
    anyhow::ensure!(
        settings.jwt_algorithm == "HS256",
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
        ttl_secs as i64,
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
        exp: (now + ttl_secs).max(0) as u64,
        iss: (!issuer.is_empty()).then(|| issuer.to_string()),
        aud: (!audience.is_empty()).then(|| audience.to_string()),
    };
    Ok(jsonwebtoken::encode(
        &Header::new(Algorithm::HS256),
        &claims,
        &EncodingKey::from_secret(secret),
    )?)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn verifier() -> Verifier {
        let settings = Settings {
            jwt_secret: "unit-test-secret".into(),
            ..crate::config::defaults()
        };
        Verifier::from_settings(&settings).unwrap()
    }

    #[test]
    fn verified_tokens_are_remembered_until_they_expire() {
        let v = verifier();
        let good = sign_hs256(b"unit-test-secret", 42, 600, "", "").unwrap();
        assert_eq!(v.verify(&good).unwrap(), 42);
        assert_eq!(v.verify(&good).unwrap(), 42, "second time from the cache");
        let now = (crate::time::now_micros() / 1_000_000) as u64;
        {
            let mut cache = v.verified.lock().unwrap();
            cache.insert("remembered".into(), (7, now + 100));
            cache.insert("stale".into(), (7, now - LEEWAY_SECS - 1));
        }
        assert_eq!(v.verify("remembered").unwrap(), 7);
        // An expired entry is checked again, and this one is not even a JWT.
        assert_eq!(
            v.verify("stale").unwrap_err().code(),
            tonic::Code::Unauthenticated
        );
        // Failures are never remembered.
        let forged = sign_hs256(b"other", 42, 600, "", "").unwrap();
        assert!(v.verify(&forged).is_err());
        assert!(!v.verified.lock().unwrap().contains_key(forged.as_str()));
    }

    #[test]
    fn user_ids_are_strict_decimals() {
        assert_eq!(parse_user_id("42"), Some(42));
        assert_eq!(parse_user_id("9223372036854775807"), Some(i64::MAX));
        for bad in [
            "",
            "0",
            "-1",
            "+1",
            " 1",
            "1e3",
            "9223372036854775808",
            "0x10",
        ] {
            assert_eq!(parse_user_id(bad), None, "{bad:?}");
        }
    }
}
