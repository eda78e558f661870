//! Server-to-server and federation-user tokens: EdDSA JWTs signed with a server key
//! (DESIGN §9).
//!
//! Claims: `iss` the signing server, `aud` the server the token is for, `typ` ("s2s" for a
//! call of one secretd on another, "fed-user" for a user of `iss` calling `aud`'s
//! SecretService), `iat`, `exp`, and `sub` (the user id) for "fed-user". A token lives at
//! most [`TokenType::max_lifetime_secs`] from `iat`.
//!
//! An "s2s" token is also single-use and bound to one call (DESIGN §9a): `jti` is a random
//! id (the callee refuses one it has seen, see `replay.rs`) and `mth` the full method path
//! of the call it was minted for (`/protocol.secret.federation.v1.SecretFederationService/
//! FetchUserKey`); the gate compares it with the path called. Both are required.
//!
//! Verification takes the key from our own configuration, pinned for the peer named by
//! `iss` (an unknown `iss` is refused before any signature check), fixes the algorithm
//! to EdDSA (never read from the header: `none`, HS256 and RS256 headers are refused),
//! and checks `aud` (us), `typ` (the use at hand), `exp` (required, with a small leeway)
//! and the lifetime.

use base64::Engine;
use jsonwebtoken::errors::ErrorKind;
use jsonwebtoken::{Algorithm, DecodingKey, Header, Validation};
use serde::{Deserialize, Serialize};

use super::key::ServerKey;

/// Seconds of clock difference between servers tolerated on `exp` and `iat`.
pub const LEEWAY_SECS: u64 = 5;

/// What a token is for: its `typ` claim.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TokenType {
    /// A call of one secretd on another's SecretFederationService (`typ` "s2s").
    S2s,
    /// A user of `iss` calling `aud`'s SecretService (`typ` "fed-user").
    FedUser,
}

impl TokenType {
    /// The `typ` claim.
    pub fn claim(self) -> &'static str {
        match self {
            TokenType::S2s => "s2s",
            TokenType::FedUser => "fed-user",
        }
    }

    /// The longest accepted lifetime (`exp` - `iat`): 60 s for "s2s", one hour for
    /// "fed-user".
    pub fn max_lifetime_secs(self) -> u64 {
        match self {
            TokenType::S2s => 60,
            TokenType::FedUser => 3600,
        }
    }
}

/// The longest `jti` accepted (we send 32 hex digits).
pub const MAX_JTI_LEN: usize = 64;

#[derive(Debug, Serialize, Deserialize)]
struct Claims {
    iss: String,
    aud: String,
    typ: String,
    iat: u64,
    exp: u64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    sub: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    jti: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    mth: Option<String>,
}

/// A token that passed every check.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Verified {
    /// The peer that signed it (`iss`).
    pub issuer: String,
    /// The user id of a "fed-user" token (`sub`); `None` for "s2s".
    pub subject: Option<u64>,
    /// Its `exp`, Unix seconds.
    pub expires_at: u64,
    /// The token's id (`jti`) of an "s2s" token; `None` for "fed-user".
    pub jti: Option<String>,
    /// The method path an "s2s" token is bound to (`mth`); `None` for "fed-user".
    pub method: Option<String>,
}

fn now_secs() -> u64 {
    u64::try_from(crate::time::now_micros() / 1_000_000).unwrap_or(0)
}

/// Signs a "fed-user" token from `issuer` (our server name) for `audience`, valid for
/// `ttl_secs` (capped at the type's maximum); `subject` is the user. Returns the token
/// and its `exp`. "s2s" tokens are bound to a call: [`mint_s2s`].
pub fn mint(
    key: &ServerKey,
    issuer: &str,
    audience: &str,
    typ: TokenType,
    subject: Option<u64>,
    ttl_secs: u64,
) -> anyhow::Result<(String, u64)> {
    anyhow::ensure!(
        typ == TokenType::FedUser,
        "an s2s token is minted for one call: use mint_s2s"
    );
    let ttl = ttl_secs.min(typ.max_lifetime_secs());
    mint_at(key, issuer, audience, typ, subject, now_secs(), ttl)
}

/// Signs an "s2s" token from `issuer` for one call of `method` (the full path) at
/// `audience`: a fresh random `jti`, the longest lifetime (60 s). Returns the token and
/// its `exp`.
pub fn mint_s2s(
    key: &ServerKey,
    issuer: &str,
    audience: &str,
    method: &str,
) -> anyhow::Result<(String, u64)> {
    let ttl = TokenType::S2s.max_lifetime_secs();
    mint_s2s_at(key, issuer, audience, method, now_secs(), ttl)
}

/// [`mint_s2s`] with an explicit `iat` and lifetime (tests make expired tokens with it).
#[doc(hidden)]
pub fn mint_s2s_at(
    key: &ServerKey,
    issuer: &str,
    audience: &str,
    method: &str,
    iat: u64,
    ttl_secs: u64,
) -> anyhow::Result<(String, u64)> {
    let jti = format!("{:032x}", rand::random::<u128>());
    sign(
        key,
        Claims {
            iss: issuer.to_string(),
            aud: audience.to_string(),
            typ: TokenType::S2s.claim().to_string(),
            iat,
            exp: iat.saturating_add(ttl_secs),
            sub: None,
            jti: Some(jti),
            mth: Some(method.to_string()),
        },
    )
}

/// [`mint`] with an explicit `iat` and no cap on the lifetime (tests make expired and
/// over-long tokens with it).
#[doc(hidden)]
pub fn mint_at(
    key: &ServerKey,
    issuer: &str,
    audience: &str,
    typ: TokenType,
    subject: Option<u64>,
    iat: u64,
    ttl_secs: u64,
) -> anyhow::Result<(String, u64)> {
    let claims = Claims {
        iss: issuer.to_string(),
        aud: audience.to_string(),
        typ: typ.claim().to_string(),
        iat,
        exp: iat.saturating_add(ttl_secs),
        sub: subject.map(|s| s.to_string()),
        jti: None,
        mth: None,
    };
    sign(key, claims)
}

fn sign(key: &ServerKey, claims: Claims) -> anyhow::Result<(String, u64)> {
    let mut header = Header::new(Algorithm::EdDSA);
    header.kid = Some(key.key_id().to_string());
    let token = jsonwebtoken::encode(&header, &claims, key.encoding_key())?;
    Ok((token, claims.exp))
}

/// The `iss` claim of a token, read without checking anything (to pick the pinned key).
fn unverified_issuer(token: &str) -> Option<String> {
    let mut parts = token.split('.');
    let (_, payload) = (parts.next()?, parts.next()?);
    let json = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(payload.trim_end_matches('='))
        .ok()?;
    let value: serde_json::Value = serde_json::from_slice(&json).ok()?;
    value.get("iss")?.as_str().map(str::to_string)
}

/// The `typ` claim of a token, read without checking anything (to tell a "fed-user" or
/// "s2s" token from a local user's token before choosing how to verify it).
pub fn unverified_type(token: &str) -> Option<String> {
    let payload = token.split('.').nth(1)?;
    let json = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(payload.trim_end_matches('='))
        .ok()?;
    let value: serde_json::Value = serde_json::from_slice(&json).ok()?;
    value.get("typ")?.as_str().map(str::to_string)
}

/// Verifies `token` as a `typ` token for `audience` (our server name), with the key
/// `pinned` returns for its `iss`. The error is a sentence for an UNAUTHENTICATED status.
pub fn verify<'k>(
    token: &str,
    audience: &str,
    typ: TokenType,
    pinned: impl Fn(&str) -> Option<&'k DecodingKey>,
) -> Result<Verified, String> {
    let issuer = unverified_issuer(token).ok_or_else(|| {
        format!(
            "the {} token is not a JWT with an iss claim naming the calling server",
            typ.claim()
        )
    })?;
    let key = pinned(&issuer).ok_or_else(|| {
        format!("the token's issuer {issuer:?} is not a configured federation peer of this server")
    })?;
    let mut validation = Validation::new(Algorithm::EdDSA);
    validation.leeway = LEEWAY_SECS;
    validation.set_audience(&[audience]);
    validation.set_issuer(&[issuer.as_str()]);
    validation.set_required_spec_claims(&["exp", "iss", "aud"]);
    let claims = jsonwebtoken::decode::<Claims>(token, key, &validation)
        .map_err(|e| match e.kind() {
            ErrorKind::InvalidAudience => {
                format!("the token is addressed to another server (aud), not to {audience:?}")
            }
            ErrorKind::ExpiredSignature => "the token has expired (exp)".to_string(),
            ErrorKind::InvalidSignature => {
                format!("the token's signature does not match the key pinned for {issuer:?}")
            }
            ErrorKind::InvalidAlgorithm | ErrorKind::InvalidAlgorithmName => {
                "the token must be signed with EdDSA".to_string()
            }
            _ => format!("the token is not a valid federation token ({e})"),
        })?
        .claims;
    if claims.typ != typ.claim() {
        return Err(format!(
            "the token's typ is {:?}; this call needs a {:?} token",
            claims.typ,
            typ.claim()
        ));
    }
    if claims.exp > claims.iat.saturating_add(typ.max_lifetime_secs()) {
        return Err(format!(
            "the token lives {} s (exp - iat); a {} token may live at most {} s",
            claims.exp.saturating_sub(claims.iat),
            typ.claim(),
            typ.max_lifetime_secs()
        ));
    }
    if claims.iat > now_secs().saturating_add(LEEWAY_SECS) {
        return Err("the token was issued in the future (iat); check the clocks".into());
    }
    let (jti, method) = match typ {
        TokenType::S2s => {
            let jti = claims
                .jti
                .filter(|j| (1..=MAX_JTI_LEN).contains(&j.len()))
                .ok_or_else(|| {
                    format!(
                        "an s2s token needs jti: a random id of 1 to {MAX_JTI_LEN} characters, \
                         new for every call"
                    )
                })?;
            let method = claims
                .mth
                .filter(|m| !m.is_empty())
                .ok_or("an s2s token needs mth: the full path of the one method it is for")?;
            (Some(jti), Some(method))
        }
        TokenType::FedUser => (None, None),
    };
    let subject = match typ {
        TokenType::S2s => None,
        TokenType::FedUser => Some(
            claims
                .sub
                .as_deref()
                .and_then(|s| s.parse::<u64>().ok())
                .filter(|&u| (1..=i64::MAX as u64).contains(&u))
                .ok_or("a fed-user token needs sub: the decimal user id (1 .. 2^63-1)")?,
        ),
    };
    Ok(Verified {
        issuer,
        subject,
        expires_at: claims.exp,
        jti,
        method,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    struct Server {
        key: ServerKey,
        decoding: DecodingKey,
    }

    fn server() -> Server {
        let (key, _) = ServerKey::generate().unwrap();
        let decoding = DecodingKey::from_ed_der(key.public_key());
        Server { key, decoding }
    }

    /// `a` and `b` are pinned at the verifier; `a` verifies as "a.test".
    fn check(token: &str, typ: TokenType, b: &Server, c: &Server) -> Result<Verified, String> {
        verify(token, "a.test", typ, |iss| match iss {
            "b.test" => Some(&b.decoding),
            "c.test" => Some(&c.decoding),
            _ => None,
        })
    }

    #[test]
    fn a_fresh_token_passes() {
        let (b, c) = (server(), server());
        let (t, _) = mint_s2s(&b.key, "b.test", "a.test", "/x.Y/Z").unwrap();
        let v = check(&t, TokenType::S2s, &b, &c).unwrap();
        assert_eq!(v.issuer, "b.test");
        assert_eq!(v.method.as_deref(), Some("/x.Y/Z"));
        let (again, _) = mint_s2s(&b.key, "b.test", "a.test", "/x.Y/Z").unwrap();
        let w = check(&again, TokenType::S2s, &b, &c).unwrap();
        assert!(v.jti.is_some() && v.jti != w.jti, "a new jti per token");
        assert!(mint(&b.key, "b.test", "a.test", TokenType::S2s, None, 60).is_err());
        let (t, _) = mint(
            &b.key,
            "b.test",
            "a.test",
            TokenType::FedUser,
            Some(7),
            3600,
        )
        .unwrap();
        assert_eq!(
            check(&t, TokenType::FedUser, &b, &c).unwrap().subject,
            Some(7)
        );
    }

    #[test]
    fn every_refusal() {
        let (b, c) = (server(), server());
        let now = now_secs();
        let refuse = |token: String, typ: TokenType, says: &str| {
            let err = check(&token, typ, &b, &c).unwrap_err();
            assert!(err.contains(says), "{err} should say {says}");
            assert!(!err.contains('#') && !err.contains('%'), "{err}");
        };
        let s2s = |iss: &str, aud: &str, key: &ServerKey, iat: u64, ttl: u64| {
            mint_s2s_at(key, iss, aud, "/x.Y/Z", iat, ttl).unwrap().0
        };
        // An s2s token without jti or mth (as tokens were before they were bound to a call).
        refuse(
            mint_at(&b.key, "b.test", "a.test", TokenType::S2s, None, now, 60)
                .unwrap()
                .0,
            TokenType::S2s,
            "jti",
        );
        // Wrong audience: a token for c presented at a.
        refuse(
            s2s("b.test", "c.test", &b.key, now, 60),
            TokenType::S2s,
            "aud",
        );
        // Expired.
        refuse(
            s2s("b.test", "a.test", &b.key, now - 200, 60),
            TokenType::S2s,
            "expired",
        );
        // iss says b, but c signed it.
        refuse(
            s2s("b.test", "a.test", &c.key, now, 60),
            TokenType::S2s,
            "signature",
        );
        // An unknown issuer.
        refuse(
            s2s("d.test", "a.test", &b.key, now, 60),
            TokenType::S2s,
            "not a configured",
        );
        // typ swapped both ways.
        refuse(
            s2s("b.test", "a.test", &b.key, now, 60),
            TokenType::FedUser,
            "typ",
        );
        let fed = mint(&b.key, "b.test", "a.test", TokenType::FedUser, Some(7), 600)
            .unwrap()
            .0;
        refuse(fed, TokenType::S2s, "typ");
        // Lifetime too long.
        refuse(
            s2s("b.test", "a.test", &b.key, now - 1, 3600),
            TokenType::S2s,
            "at most 60",
        );
        // alg none, and HS256 keyed with the pinned public key (algorithm confusion).
        let payload = format!(
            r#"{{"iss":"b.test","aud":"a.test","typ":"s2s","iat":{now},"exp":{}}}"#,
            now + 30
        );
        let b64 = |s: &[u8]| base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(s);
        let none = format!(
            "{}.{}.",
            b64(br#"{"alg":"none","typ":"JWT"}"#),
            b64(payload.as_bytes())
        );
        refuse(none, TokenType::S2s, "EdDSA");
        let claims: serde_json::Value = serde_json::from_str(&payload).unwrap();
        let hs = jsonwebtoken::encode(
            &Header::new(Algorithm::HS256),
            &claims,
            &jsonwebtoken::EncodingKey::from_secret(b.key.public_key()),
        )
        .unwrap();
        refuse(hs, TokenType::S2s, "EdDSA");
        // Not a JWT at all, and a fed-user token without sub.
        refuse("garbage".into(), TokenType::S2s, "not a JWT");
        let no_sub = mint(&b.key, "b.test", "a.test", TokenType::FedUser, None, 600)
            .unwrap()
            .0;
        refuse(no_sub, TokenType::FedUser, "sub");
    }
}
