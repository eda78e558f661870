//! JWT claims, one by one: fractional NumericDates, `nbf` with the leeway, `exp` up to
//! and beyond 2^64, `aud` as a string or an array, and refusals that name the claim.

use crate::auth::{hs, now, sign};
use crate::common::*;
use jsonwebtoken::{Algorithm, EncodingKey};
use secretd::proto::FetchPrivateKeyRequest;
use serde_json::json;
use tonic::Code;

/// A token with these claims, signed with the test secret.
fn claims_token(claims: serde_json::Value) -> String {
    hs(claims, SECRET)
}

/// FetchPrivateKey with `token`: NOT_FOUND (nothing stored) means the token was accepted.
async fn accepted(s: &TestServer, token: String) -> Result<(), String> {
    let mut c = s.client_with_token(token).await;
    match c.fetch_private_key(FetchPrivateKeyRequest {}).await {
        Err(st) if st.code() == Code::NotFound => Ok(()),
        Err(st) if st.code() == Code::Unauthenticated => Err(st.message().to_string()),
        other => panic!("unexpected answer: {other:?}"),
    }
}

#[tokio::test]
async fn numeric_dates_may_be_fractional_and_nbf_is_honoured() {
    let s = TestServer::start(Backend::Sqlite).await;
    let user = random_user().to_string();
    let t = now() as f64;
    for (why, claims) in [
        // What `Date.now() / 1000 + 600` gives in JavaScript.
        ("fractional exp", json!({"sub": user, "exp": t + 600.123})),
        (
            "fractional nbf in the past",
            json!({"sub": user, "exp": t + 600.0, "nbf": t - 10.5}),
        ),
        (
            "nbf a little ahead (clock skew, within the leeway)",
            json!({"sub": user, "exp": now() + 600, "nbf": now() + 10}),
        ),
        (
            "exp at the largest u64",
            json!({"sub": user, "exp": u64::MAX}),
        ),
        ("exp beyond u64", json!({"sub": user, "exp": 1e300})),
        (
            "exp expired less than the leeway ago",
            json!({"sub": user, "exp": now() - 5}),
        ),
    ] {
        if let Err(msg) = accepted(&s, claims_token(claims)).await {
            panic!("{why}: refused with {msg:?}");
        }
    }
    for (why, claims, names) in [
        (
            "nbf in the future",
            json!({"sub": user, "exp": now() + 600, "nbf": now() + 600}),
            "`nbf`",
        ),
        (
            "fractional exp in the past",
            json!({"sub": user, "exp": t - 3600.5}),
            "expired",
        ),
    ] {
        let msg = accepted(&s, claims_token(claims)).await.expect_err(why);
        assert!(msg.contains(names), "{why}: {msg:?}");
    }
    s.stop().await;
}

#[tokio::test]
async fn refusals_name_the_claim_that_is_wrong() {
    let s = TestServer::start_with(Backend::Sqlite, |st| {
        st.jwt_issuer = "https://auth.example".into();
        st.jwt_audience = "secretd".into();
    })
    .await;
    let user = random_user().to_string();
    let exp = now() + 600;
    let iss = "https://auth.example";
    for (why, claims) in [
        (
            "aud a string",
            json!({"sub": user, "exp": exp, "iss": iss, "aud": "secretd"}),
        ),
        (
            "aud an array (OIDC)",
            json!({"sub": user, "exp": exp, "iss": iss, "aud": ["other", "secretd"]}),
        ),
        (
            "unknown claims are ignored",
            json!({"sub": user, "exp": exp, "iss": iss, "aud": "secretd", "scope": ["a"], "jti": 5}),
        ),
    ] {
        if let Err(msg) = accepted(&s, claims_token(claims)).await {
            panic!("{why}: refused with {msg:?}");
        }
    }
    for (why, claims, claim) in [
        (
            "numeric sub",
            json!({"sub": 42, "exp": exp, "iss": iss, "aud": "secretd"}),
            "`sub`",
        ),
        (
            "missing sub",
            json!({"exp": exp, "iss": iss, "aud": "secretd"}),
            "`sub`",
        ),
        (
            "sub not decimal",
            json!({"sub": "alice", "exp": exp, "iss": iss, "aud": "secretd"}),
            "`sub`",
        ),
        (
            "missing exp",
            json!({"sub": user, "iss": iss, "aud": "secretd"}),
            "`exp`",
        ),
        (
            "exp a string",
            json!({"sub": user, "exp": exp.to_string(), "iss": iss, "aud": "secretd"}),
            "`exp`",
        ),
        (
            "exp null",
            json!({"sub": user, "exp": null, "iss": iss, "aud": "secretd"}),
            "`exp`",
        ),
        (
            "nbf a string",
            json!({"sub": user, "exp": exp, "nbf": "soon", "iss": iss, "aud": "secretd"}),
            "`nbf`",
        ),
        (
            "missing iss",
            json!({"sub": user, "exp": exp, "aud": "secretd"}),
            "`iss`",
        ),
        (
            "wrong iss",
            json!({"sub": user, "exp": exp, "iss": "https://evil.example", "aud": "secretd"}),
            "`iss`",
        ),
        (
            "iss an array",
            json!({"sub": user, "exp": exp, "iss": [iss], "aud": "secretd"}),
            "`iss`",
        ),
        (
            "missing aud",
            json!({"sub": user, "exp": exp, "iss": iss}),
            "`aud`",
        ),
        (
            "wrong aud",
            json!({"sub": user, "exp": exp, "iss": iss, "aud": "other"}),
            "`aud`",
        ),
        (
            "aud array without us",
            json!({"sub": user, "exp": exp, "iss": iss, "aud": ["a", "b"]}),
            "`aud`",
        ),
        (
            "aud empty array",
            json!({"sub": user, "exp": exp, "iss": iss, "aud": []}),
            "`aud`",
        ),
        (
            "aud array of numbers",
            json!({"sub": user, "exp": exp, "iss": iss, "aud": [1]}),
            "`aud`",
        ),
    ] {
        let msg = accepted(&s, claims_token(claims)).await.expect_err(why);
        assert!(msg.contains(claim), "{why}: {msg:?} should name {claim}");
        assert!(!msg.contains('#') && !msg.contains('%'), "{why}: {msg:?}");
    }
    // The algorithm is the configured one, whatever the header says.
    let hs512 = sign(
        json!({"sub": user, "exp": exp, "iss": iss, "aud": "secretd"}),
        Algorithm::HS512,
        &EncodingKey::from_secret(SECRET.as_bytes()),
    );
    let msg = accepted(&s, hs512).await.expect_err("HS512");
    assert!(msg.contains("algorithm"), "{msg:?}");
    // Not JSON inside.
    let unsigned = "eyJhbGciOiJIUzI1NiJ9.bm90IGpzb24"; // {"alg":"HS256"}.not json
    let sig = jsonwebtoken::crypto::sign(
        unsigned.as_bytes(),
        &EncodingKey::from_secret(SECRET.as_bytes()),
        Algorithm::HS256,
    )
    .unwrap();
    let msg = accepted(&s, format!("{unsigned}.{sig}"))
        .await
        .expect_err("garbage");
    assert!(msg.contains("JWT"), "{msg:?}");
    s.stop().await;
}
