//! Bearer tokens as a client sees them: the claims it needs (who, until when), read
//! without verifying the signature (the server verifies it), and the checks a device
//! makes before it keeps a token — a token for another user, a malformed one or an
//! expired one is refused with a sentence saying which, and the device stays as it was.

use base64::Engine;

use crate::error::{Error, Result};
use crate::time::format_utc_secs;

/// What a token says about itself.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct TokenInfo {
    /// The user id (`sub`).
    pub user_id: u64,
    /// Unix seconds after which the server refuses it (`exp`, rounded down).
    pub expires_at: u64,
    /// Unix seconds it was issued at (`iat`), when it says.
    pub issued_at: Option<u64>,
}

impl TokenInfo {
    /// Seconds of validity left at `now` (0 when expired).
    pub fn remaining(&self, now: u64) -> u64 {
        self.expires_at.saturating_sub(now)
    }

    /// When a long-running client should fetch a new token: a fifth of the token's
    /// lifetime before it expires, at most a minute, at least a second before.
    pub fn renew_at(&self, first_seen: u64) -> u64 {
        let start = self.issued_at.unwrap_or(first_seen).min(self.expires_at);
        let margin = ((self.expires_at - start) / 5).clamp(1, 60);
        self.expires_at.saturating_sub(margin)
    }
}

fn malformed(why: &str) -> Error {
    Error::Token(format!(
        "this is not a token from your homeserver ({why}); a token is a JWT of three \
         base64url parts separated by dots"
    ))
}

/// Reads the claims of `token` without verifying it.
pub fn inspect(token: &str) -> Result<TokenInfo> {
    let token = token.trim();
    let parts: Vec<&str> = token.split('.').collect();
    if parts.len() != 3 || parts.iter().any(|p| p.is_empty()) {
        return Err(malformed("it does not have three parts"));
    }
    let bytes = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(parts[1].trim_end_matches('='))
        .map_err(|_| malformed("its middle part is not base64url"))?;
    let claims: serde_json::Value =
        serde_json::from_slice(&bytes).map_err(|_| malformed("its claims are not JSON"))?;
    let sub = match &claims["sub"] {
        serde_json::Value::String(s) => s.parse::<u64>().ok(),
        serde_json::Value::Number(n) => n.as_u64(),
        _ => None,
    };
    let user_id = sub.filter(|&u| u > 0 && u < (1 << 63)).ok_or_else(|| {
        Error::Token("the token names no user: its sub claim is missing or not a user id".into())
    })?;
    // NumericDate may be fractional; the server rounds exp down, so do we.
    let seconds = |v: &serde_json::Value| v.as_f64().filter(|s| *s >= 0.0).map(|s| s as u64);
    let expires_at = seconds(&claims["exp"]).ok_or_else(|| {
        Error::Token(
            "the token has no expiry (exp claim), and secretd refuses tokens without one".into(),
        )
    })?;
    Ok(TokenInfo {
        user_id,
        expires_at,
        issued_at: seconds(&claims["iat"]),
    })
}

/// The checks before a device keeps `token`: well-formed, for `user` (when the device
/// already belongs to one), not expired at `now` (Unix seconds).
pub fn check(token: &str, user: Option<u64>, now: u64) -> Result<TokenInfo> {
    let info = inspect(token)?;
    if let Some(me) = user
        && info.user_id != me
    {
        return Err(Error::Token(format!(
            "this token is for user {}, but this device belongs to user {me}: use a token \
             of user {me} (a device of user {} needs its own --state directory)",
            info.user_id, info.user_id
        )));
    }
    if info.expires_at <= now {
        return Err(Error::Token(format!(
            "this token expired at {} ({} ago): get a fresh one from your homeserver",
            format_utc_secs(info.expires_at),
            crate::time::span(now - info.expires_at)
        )));
    }
    Ok(info)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn jwt(claims: &str) -> String {
        let b = |s: &str| base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(s);
        format!("{}.{}.sig", b(r#"{"alg":"HS256"}"#), b(claims))
    }

    #[test]
    fn claims_are_read_and_checked() {
        let t = jwt(r#"{"sub":"42","exp":1000.7,"iat":400}"#);
        let info = inspect(&t).unwrap();
        assert_eq!(
            info,
            TokenInfo {
                user_id: 42,
                expires_at: 1000,
                issued_at: Some(400)
            }
        );
        assert_eq!(info.renew_at(0), 940, "a minute before, for a long token");
        assert_eq!(check(&t, Some(42), 999).unwrap().user_id, 42);
        let short = inspect(&jwt(r#"{"sub":7,"exp":110}"#)).unwrap();
        assert_eq!(short.renew_at(100), 108, "a fifth of a short lifetime");
        let expired = check(&t, Some(42), 1000).unwrap_err().to_string();
        assert!(
            expired.starts_with("this token expired at 1970-01-01 00:16:40 UTC"),
            "{expired}"
        );
        let other = check(&t, Some(7), 10).unwrap_err().to_string();
        assert!(other.contains("this token is for user 42, but this device belongs to user 7"));
        for bad in [
            "not a jwt",
            "a.b.c",
            "..",
            &jwt(r#"{"exp":5}"#),
            &jwt(r#"{"sub":"0","exp":5}"#),
        ] {
            assert!(inspect(bad).is_err(), "{bad}");
        }
        assert!(
            inspect(&jwt(r#"{"sub":"1"}"#))
                .unwrap_err()
                .to_string()
                .contains("no expiry")
        );
    }
}
