//! Authentication: every SecretService call needs a valid bearer JWT; health and
//! reflection stay open. Every rejection is UNAUTHENTICATED and leaves the server up.

use crate::common::*;
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use secretd::proto::{
    FetchKeyRequest, FetchPrivateKeyRequest, GenerateChannelPairRequest, ManageStream,
    PostKeyRequest,
};
use serde_json::json;
use tonic::Code;
use tonic_health::pb::health_check_response::ServingStatus;
use tonic_health::pb::{HealthCheckRequest, health_client::HealthClient};

pub(crate) fn now() -> i64 {
    secretd::time::now_micros() / 1_000_000
}

pub(crate) fn sign(claims: serde_json::Value, alg: Algorithm, key: &EncodingKey) -> String {
    jsonwebtoken::encode(&Header::new(alg), &claims, key).unwrap()
}

pub(crate) fn hs(claims: serde_json::Value, secret: &str) -> String {
    sign(
        claims,
        Algorithm::HS256,
        &EncodingKey::from_secret(secret.as_bytes()),
    )
}

/// Calls one unary RPC of each group and a streaming one with `client`, returning codes.
async fn codes(client: &mut Client) -> Vec<Code> {
    let mut out = vec![
        client
            .post_key(PostKeyRequest {
                key_data: key_pem(1),
            })
            .await
            .map(|_| ())
            .err()
            .map_or(Code::Ok, |s| s.code()),
        client
            .fetch_key(FetchKeyRequest {
                user_id: 1,
                homeserver: String::new(),
                known_tree_size: 0,
            })
            .await
            .map(|_| ())
            .err()
            .map_or(Code::Ok, |s| s.code()),
        client
            .fetch_private_key(FetchPrivateKeyRequest {})
            .await
            .map(|_| ())
            .err()
            .map_or(Code::Ok, |s| s.code()),
        client
            .generate_channel_pair(GenerateChannelPairRequest {})
            .await
            .map(|_| ())
            .err()
            .map_or(Code::Ok, |s| s.code()),
    ];
    let stream = client
        .stream_message_posting(tokio_stream::iter(vec![ManageStream::default()]))
        .await;
    out.push(stream.map(|_| ()).err().map_or(Code::Ok, |s| s.code()));
    out
}

async fn assert_all_unauthenticated(s: &TestServer, token: Option<String>, why: &str) {
    let mut c = match token {
        Some(t) => s.client_with_token(t).await,
        None => s.anonymous().await,
    };
    for code in codes(&mut c).await {
        assert_eq!(code, Code::Unauthenticated, "{why}");
    }
}

#[tokio::test]
async fn every_rpc_needs_a_valid_token() {
    let s = TestServer::start(Backend::Sqlite).await;
    let user = random_user();
    let exp = now() + 600;
    assert_all_unauthenticated(&s, None, "no token").await;
    let bad: Vec<(&str, String)> = vec![
        ("empty bearer", String::new()),
        ("not a jwt", "not.a.jwt".into()),
        ("garbage", "ü!".into()),
        ("expired", token(user, -3600)),
        (
            "wrong signature",
            hs(
                json!({"sub": user.to_string(), "exp": exp}),
                "some other secret",
            ),
        ),
        ("no exp", hs(json!({"sub": user.to_string()}), SECRET)),
        ("no sub", hs(json!({"exp": exp}), SECRET)),
        (
            "sub not a number",
            hs(json!({"sub": "alice", "exp": exp}), SECRET),
        ),
        ("sub zero", hs(json!({"sub": "0", "exp": exp}), SECRET)),
        ("sub negative", hs(json!({"sub": "-5", "exp": exp}), SECRET)),
        (
            "sub too large",
            hs(json!({"sub": "9223372036854775808", "exp": exp}), SECRET),
        ),
        (
            "HS384 instead of HS256",
            sign(
                json!({"sub": user.to_string(), "exp": exp}),
                Algorithm::HS384,
                &EncodingKey::from_secret(SECRET.as_bytes()),
            ),
        ),
        ("alg none", {
            let t = token(user, 600);
            let mut parts: Vec<&str> = t.split('.').collect();
            parts[0] = "eyJhbGciOiJub25lIiwidHlwIjoiSldUIn0"; // {"alg":"none","typ":"JWT"}
            format!("{}.{}.", parts[0], parts[1])
        }),
    ];
    for (why, t) in bad {
        assert_all_unauthenticated(&s, Some(t), why).await;
    }
    // A scheme other than Bearer.
    let mut basic = secretd::proto::secret_service_client::SecretServiceClient::with_interceptor(
        s.channel().await,
        |mut r: tonic::Request<()>| {
            r.metadata_mut()
                .insert("authorization", "Basic dXNlcjpwYXNz".parse().unwrap());
            Ok(r)
        },
    );
    let st = expect_code(
        basic.fetch_private_key(FetchPrivateKeyRequest {}).await,
        Code::Unauthenticated,
    );
    assert!(st.message().contains("Bearer"));
    // The messages say what is wrong.
    let mut expired = s.client_with_token(token(user, -3600)).await;
    let st = expect_code(
        expired.fetch_private_key(FetchPrivateKeyRequest {}).await,
        Code::Unauthenticated,
    );
    assert!(st.message().contains("expired"), "{}", st.message());
    let mut forged = s
        .client_with_token(hs(json!({"sub": "1", "exp": exp}), "nope"))
        .await;
    let st = expect_code(
        forged.fetch_private_key(FetchPrivateKeyRequest {}).await,
        Code::Unauthenticated,
    );
    assert!(st.message().contains("signature"), "{}", st.message());
    // The server is still up and a good token works for every call.
    let mut good = s.client(user).await;
    assert_eq!(
        codes(&mut good).await,
        vec![Code::Ok, Code::NotFound, Code::NotFound, Code::Ok, Code::Ok]
    );
    s.stop().await;
}

#[tokio::test]
async fn eddsa_tokens_verify_with_the_configured_public_key() {
    let s = TestServer::start_with(Backend::Sqlite, |st| {
        st.jwt_algorithm = secretd::config::JwtAlgorithm::EdDsa;
        st.jwt_public_key_file = fixture("ed25519.pub.pem").display().to_string();
    })
    .await;
    let user = random_user();
    let key = EncodingKey::from_ed_pem(&fixture_bytes("ed25519_test_signing_key.pem")).unwrap();
    let good = sign(
        json!({"sub": user.to_string(), "exp": now() + 600}),
        Algorithm::EdDSA,
        &key,
    );
    let mut c = s.client_with_token(good).await;
    expect_code(
        c.fetch_private_key(FetchPrivateKeyRequest {}).await,
        Code::NotFound,
    );
    // An HS256 token (even with the old shared secret) is refused.
    let mut hs256 = s.client_with_token(token(user, 600)).await;
    expect_code(
        hs256.fetch_private_key(FetchPrivateKeyRequest {}).await,
        Code::Unauthenticated,
    );
    s.stop().await;
}

#[tokio::test]
async fn health_and_reflection_need_no_token() {
    let s = TestServer::start(Backend::Sqlite).await;
    let mut health = HealthClient::new(s.channel().await);
    for service in ["", "protocol.secret.v1.SecretService"] {
        let r = health
            .check(HealthCheckRequest {
                service: service.into(),
            })
            .await
            .unwrap()
            .into_inner();
        assert_eq!(r.status(), ServingStatus::Serving, "{service:?}");
    }
    use tonic_reflection::pb::v1::ServerReflectionRequest;
    use tonic_reflection::pb::v1::server_reflection_client::ServerReflectionClient;
    use tonic_reflection::pb::v1::server_reflection_request::MessageRequest;
    use tonic_reflection::pb::v1::server_reflection_response::MessageResponse;
    let mut refl = ServerReflectionClient::new(s.channel().await);
    let mut responses = refl
        .server_reflection_info(tokio_stream::iter(vec![
            ServerReflectionRequest {
                host: String::new(),
                message_request: Some(MessageRequest::ListServices(String::new())),
            },
            ServerReflectionRequest {
                host: String::new(),
                message_request: Some(MessageRequest::FileContainingSymbol(
                    "protocol.secret.v1.SecretService".into(),
                )),
            },
        ]))
        .await
        .unwrap()
        .into_inner();
    let first = responses.message().await.unwrap().unwrap();
    let Some(MessageResponse::ListServicesResponse(list)) = first.message_response else {
        panic!("expected a service list");
    };
    let names: Vec<String> = list.service.into_iter().map(|s| s.name).collect();
    assert!(
        names.contains(&"protocol.secret.v1.SecretService".to_string()),
        "{names:?}"
    );
    assert!(
        names.contains(&"grpc.health.v1.Health".to_string()),
        "{names:?}"
    );
    // Federation is off here: its service is neither served nor listed.
    assert!(!names.iter().any(|n| n.contains("federation")), "{names:?}");
    let second = responses.message().await.unwrap().unwrap();
    let Some(MessageResponse::FileDescriptorResponse(files)) = second.message_response else {
        panic!("expected file descriptors");
    };
    assert!(!files.file_descriptor_proto.is_empty());
    s.stop().await;
}
