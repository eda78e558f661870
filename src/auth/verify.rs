//! Token verification: the signature with the configured algorithm (never the one a
//! token's header names), then every claim checked by us, by name, so a refusal says
//! which claim is wrong.
//!
//! - `sub`: a JSON string holding the decimal user id, 1 ..= 2^63-1 (a JSON number is
//!   refused: above 2^53 a JavaScript issuer would already have changed its digits);
//! - `exp`: required; `nbf`: honoured when present. Both are NumericDates: JSON numbers of
//!   seconds since 1970, fractions allowed (what `Date.now() / 1000 + 600` gives). A token
//!   is accepted from `nbf - leeway` until `exp + leeway`, with `exp` rounded down and
//!   `nbf` up, saturating (an `exp` near or beyond 2^64 never wraps);
//! - `iss`: when `jwt_issuer` is set, a string equal to it;
//! - `aud`: when `jwt_audience` is set, a string equal to it or an array of strings
//!   holding it (OIDC issuers send arrays). When it is not set, `aud` is not looked at.
//!
//! Other claims are ignored.

use jsonwebtoken::{Algorithm, DecodingKey, Validation, errors::ErrorKind};
use serde_json::{Map, Value};
use tonic::Status;

use super::Caller;
use super::cache::{TokenCache, TokenDigest, digest};
use crate::config::{JwtAlgorithm, Settings};

/// Leeway for `exp` and `nbf`, in seconds (clock skew between the auth service and us).
pub const LEEWAY_SECS: u64 = 30;

type Claims = Map<String, Value>;

/// Checks tokens against the configured key and claims.
pub struct Verifier {
    algorithm: Algorithm,
    key: DecodingKey,
    /// Signature and algorithm only: the claims are checked by [`check_claims`].
    signature: Validation,
    issuer: Option<String>,
    audience: Option<String>,
    /// Tokens that verified -> their callers (see [`super::cache`]). A hit checks the expiry again and
    /// nothing else (`nbf` only becomes truer with time). Keyed by the hash so each entry
    /// has a fixed size whatever the token's length.
    verified: TokenCache<Caller>,
}

impl Verifier {
    /// Builds the verifier from the settings (creating the HS256 secret file if needed).
    pub fn from_settings(settings: &Settings) -> anyhow::Result<Self> {
        let (algorithm, key) = match settings.jwt_algorithm {
            JwtAlgorithm::EdDsa | JwtAlgorithm::Rs256 => {
                let path = &settings.jwt_public_key_file;
                anyhow::ensure!(
                    !path.is_empty(),
                    "jwt_algorithm {} needs jwt_public_key_file (a PEM public key)",
                    settings.jwt_algorithm
                );
                let pem = std::fs::read(path)
                    .map_err(|e| anyhow::anyhow!("cannot read jwt_public_key_file {path}: {e}"))?;
                if settings.jwt_algorithm == JwtAlgorithm::EdDsa {
                    (Algorithm::EdDSA, DecodingKey::from_ed_pem(&pem)?)
                } else {
                    (Algorithm::RS256, DecodingKey::from_rsa_pem(&pem)?)
                }
            }
            JwtAlgorithm::Hs256 => (
                Algorithm::HS256,
                DecodingKey::from_secret(super::load_or_create_secret(settings)?.as_bytes()),
            ),
        };
        let mut signature = Validation::new(algorithm);
        signature.required_spec_claims.clear();
        signature.validate_exp = false;
        signature.validate_nbf = false;
        signature.validate_aud = false;
        signature.iss = None;
        signature.aud = None;
        let configured = |s: &str| (!s.is_empty()).then(|| s.to_string());
        Ok(Verifier {
            algorithm,
            key,
            signature,
            issuer: configured(&settings.jwt_issuer),
            audience: configured(&settings.jwt_audience),
            verified: Default::default(),
        })
    }

    /// Verifies a bearer token and returns the user id in its `sub`.
    pub fn verify(&self, token: &str) -> Result<i64, Status> {
        self.verify_caller(token).map(|c| c.user.get())
    }

    /// Verifies a bearer token and returns the caller it names.
    ///
    /// A token that verified before is recognised by its hash and only its expiry is
    /// checked again (the signature check was about 5 % of the server's time per call).
    pub fn verify_caller(&self, token: &str) -> Result<Caller, Status> {
        let digest = digest(token);
        let now = now_secs();
        match self.cached(&digest, now) {
            Some(caller) => Ok(caller),
            None => self.verify_and_remember(token, digest, now),
        }
    }

    /// Verifies a token not found in the cache (its `digest` already computed) and
    /// remembers it.
    pub(crate) fn verify_and_remember(
        &self,
        token: &str,
        digest: TokenDigest,
        now: u64,
    ) -> Result<Caller, Status> {
        let caller = self.verify_uncached(token, now)?;
        self.verified.put(digest, caller.expires_at, caller);
        Ok(caller)
    }

    /// The caller of a token that verified before and is still valid at `now`.
    pub(crate) fn cached(&self, digest: &TokenDigest, now: u64) -> Option<Caller> {
        self.verified.get(digest, now)
    }

    fn verify_uncached(&self, token: &str, now: u64) -> Result<Caller, Status> {
        let data =
            jsonwebtoken::decode::<Claims>(token, &self.key, &self.signature).map_err(|err| {
                match err.kind() {
                    ErrorKind::InvalidSignature => Status::unauthenticated(
                        "the token's signature does not verify with this server's key",
                    ),
                    ErrorKind::InvalidAlgorithm => Status::unauthenticated(format!(
                        "the token is not signed with {:?}, the one algorithm this server accepts",
                        self.algorithm
                    )),
                    _ => Status::unauthenticated(
                        "the bearer token is not a well-formed JWT (three base64url parts: a JSON \
                     header, a JSON object of claims, a signature)",
                    ),
                }
            })?;
        check_claims(
            &data.claims,
            now,
            self.issuer.as_deref(),
            self.audience.as_deref(),
        )
        .map_err(Status::unauthenticated)
    }
}

/// Seconds since 1970 now.
/// Now, in Unix seconds.
pub(crate) fn now_secs() -> u64 {
    (crate::time::now_micros() / 1_000_000).max(0) as u64
}

/// Checks the claims of a token whose signature verified, at time `now`.
fn check_claims(
    claims: &Claims,
    now: u64,
    issuer: Option<&str>,
    audience: Option<&str>,
) -> Result<Caller, String> {
    let exp = numeric_date(claims, "exp")?.ok_or_else(|| {
        "the token has no `exp` claim; this server accepts only tokens that expire".to_string()
    })?;
    let expires_at = exp.floor.saturating_add(LEEWAY_SECS);
    if now > expires_at {
        return Err(
            "the token has expired (its `exp` claim is past); get a fresh one from the homeserver"
                .into(),
        );
    }
    if let Some(nbf) = numeric_date(claims, "nbf")?
        && nbf.ceil > now.saturating_add(LEEWAY_SECS)
    {
        return Err(
            "the token is not valid yet (its `nbf` claim is in the future); check the \
                    clocks of the auth service and of this server"
                .into(),
        );
    }
    let user = match claims.get("sub") {
        None | Some(Value::Null) => {
            return Err("the token has no `sub` claim; it must hold the decimal user id".into());
        }
        Some(Value::String(sub)) => parse_user_id(sub)
            .map(crate::domain::UserId::trusted)
            .ok_or("the token's `sub` claim must be a decimal user id between 1 and 2^63-1")?,
        Some(Value::Number(_)) => {
            return Err(
                "the token's `sub` claim is a JSON number; it must be a JSON string \
                        holding the decimal user id, e.g. \"42\""
                    .into(),
            );
        }
        Some(_) => {
            return Err(
                "the token's `sub` claim must be a JSON string holding the decimal user id".into(),
            );
        }
    };
    if let Some(expected) = issuer {
        match claims.get("iss") {
            None | Some(Value::Null) => {
                return Err("the token has no `iss` claim; this server requires its issuer".into());
            }
            Some(Value::String(iss)) if iss == expected => {}
            Some(_) => {
                return Err("the token's `iss` claim is not the issuer this server expects".into());
            }
        }
    }
    if let Some(expected) = audience {
        let names_us = match claims.get("aud") {
            None | Some(Value::Null) => {
                return Err(
                    "the token has no `aud` claim; this server requires its audience".into(),
                );
            }
            Some(Value::String(aud)) => aud == expected,
            Some(Value::Array(list)) if list.iter().all(Value::is_string) => {
                list.iter().any(|a| a.as_str() == Some(expected))
            }
            Some(_) => {
                return Err(
                    "the token's `aud` claim must be a string or an array of strings".into(),
                );
            }
        };
        if !names_us {
            return Err("the token's `aud` claim does not name this server's audience".into());
        }
    }
    // `iat` is optional and only DeleteAccount reads it: a malformed one is as good as
    // none (that call then refuses), never a reason to refuse every other call.
    let issued_at = numeric_date(claims, "iat").ok().flatten().map(|d| d.floor);
    Ok(Caller {
        user,
        expires_at,
        limit_key: user.get(),
        issued_at,
    })
}

/// A NumericDate, rounded both ways to whole seconds (negative dates are 0).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Date {
    floor: u64,
    ceil: u64,
}

/// Reads the NumericDate claim `name`: `None` when absent (or null), an error naming the
/// claim when it is not a JSON number.
fn numeric_date(claims: &Claims, name: &str) -> Result<Option<Date>, String> {
    let number = match claims.get(name) {
        None | Some(Value::Null) => return Ok(None),
        Some(Value::Number(n)) => n,
        Some(_) => {
            return Err(format!(
                "the token's `{name}` claim must be a NumericDate: a JSON number of seconds \
                 since 1970 (fractions allowed), not a string or another type"
            ));
        }
    };
    if let Some(whole) = number.as_u64() {
        return Ok(Some(Date {
            floor: whole,
            ceil: whole,
        }));
    }
    if number.as_i64().is_some() {
        return Ok(Some(Date { floor: 0, ceil: 0 })); // before 1970
    }
    // A fraction, or a whole number beyond u64 written as a float. `as` saturates.
    let secs = number.as_f64().unwrap_or(0.0).max(0.0);
    Ok(Some(Date {
        floor: secs.floor() as u64,
        ceil: secs.ceil() as u64,
    }))
}

fn parse_user_id(sub: &str) -> Option<i64> {
    if sub.is_empty() || !sub.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    sub.parse::<i64>().ok().filter(|&id| id >= 1)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    const SECRET: &str = "unit-test-secret-0123456789abcdef";

    fn verifier() -> Verifier {
        let settings = Settings {
            jwt_secret: SECRET.into(),
            ..crate::config::defaults()
        };
        Verifier::from_settings(&settings).unwrap()
    }

    fn claims(v: Value) -> Claims {
        v.as_object().unwrap().clone()
    }

    #[test]
    fn verified_tokens_are_remembered_until_they_expire() {
        let v = verifier();
        let good = super::super::sign_hs256(SECRET.as_bytes(), 42, 600, "", "").unwrap();
        assert_eq!(v.verify(&good).unwrap(), 42);
        assert_eq!(v.verify(&good).unwrap(), 42, "second time from the cache");
        let now = now_secs();
        let caller = |expires_at| Caller {
            user: crate::domain::UserId::trusted(7),
            expires_at,
            limit_key: 7,
            issued_at: None,
        };
        v.verified
            .put(digest("remembered"), now + 100, caller(now + 100));
        v.verified.put(digest("stale"), now - 1, caller(now - 1));
        assert_eq!(v.verify("remembered").unwrap(), 7);
        // An expired entry is checked again, and this one is not even a JWT.
        assert_eq!(
            v.verify("stale").unwrap_err().code(),
            tonic::Code::Unauthenticated
        );
        // Failures are never remembered.
        let forged = super::super::sign_hs256(b"other", 42, 600, "", "").unwrap();
        assert!(v.verify(&forged).is_err());
        assert!(!v.verified.contains(&digest(&forged)));
    }

    #[test]
    fn expiry_saturates_and_is_what_the_caller_carries() {
        let now = 1_700_000_000;
        let at = |exp: Value| {
            check_claims(&claims(json!({"sub": "5", "exp": exp})), now, None, None)
                .map(|c| c.expires_at)
        };
        assert_eq!(at(json!(now)), Ok(now + LEEWAY_SECS));
        assert_eq!(at(json!(now as f64 + 0.9)), Ok(now + LEEWAY_SECS));
        assert_eq!(at(json!(u64::MAX)), Ok(u64::MAX));
        assert_eq!(at(json!(u64::MAX - 1)), Ok(u64::MAX));
        assert_eq!(at(json!(1e300)), Ok(u64::MAX));
        assert_eq!(at(json!(now - LEEWAY_SECS)), Ok(now));
        assert!(at(json!(now - LEEWAY_SECS - 1)).is_err());
        assert!(at(json!(-5)).is_err());
        assert!(at(json!(-0.5)).is_err());
        // The leeway on nbf: up to 30 s ahead is clock skew; a fraction rounds up.
        let nbf = |nbf: Value| {
            check_claims(
                &claims(json!({"sub": "5", "exp": now + 600, "nbf": nbf})),
                now,
                None,
                None,
            )
        };
        assert!(nbf(json!(now + LEEWAY_SECS)).is_ok());
        assert!(nbf(json!((now + LEEWAY_SECS) as f64 + 0.1)).is_err());
        assert!(nbf(json!(u64::MAX)).is_err());
        assert!(nbf(json!(-1)).is_ok());
    }

    #[test]
    fn audience_may_be_a_string_or_an_array() {
        let ok = |aud: Value| {
            check_claims(
                &claims(json!({"sub": "5", "exp": u64::MAX, "aud": aud})),
                0,
                None,
                Some("me"),
            )
            .is_ok()
        };
        assert!(ok(json!("me")));
        assert!(ok(json!(["you", "me"])));
        assert!(!ok(json!(["you"])));
        assert!(!ok(json!([])));
        assert!(!ok(json!(["me", 1])));
        assert!(!ok(json!("Me")));
        assert!(!ok(json!({"me": true})));
        // Not configured: not looked at.
        let any = claims(json!({"sub": "5", "exp": u64::MAX, "aud": 17}));
        assert!(check_claims(&any, 0, None, None).is_ok());
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
