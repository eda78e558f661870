//! Tokens where they do not belong, at a real process a with b and c pinned: a token for
//! c presented at a (wrong `aud`), an expired one, one whose `iss` is not its signer, a
//! user token at the federation service and an s2s token at SecretService; ServerKey
//! without a token; the per-peer rate limit; `federation-key` output and config errors.

use secretd::federation::token::{self, TokenType};
use secretd::proto::FetchKeyRequest;
use secretd::proto::federation::{DeliverInviteRequest, FetchUserKeyRequest, ServerKeyRequest};
use tonic::Code;

use super::nodes::{Node, NodeKey, PeerSpec, fed_client, peer_client, write_config};
use crate::common::*;

fn now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

fn ask(user: u64) -> FetchUserKeyRequest {
    FetchUserKeyRequest { user_id: user }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn server_to_server_tokens_are_checked() {
    let (ka, kb, kc) = (
        NodeKey::new("a.test"),
        NodeKey::new("b.test"),
        NodeKey::new("c.test"),
    );
    let a = Node::start(
        &ka,
        &Backend::Sqlite,
        &[PeerSpec::unreachable(&kb), PeerSpec::unreachable(&kc)],
        &[("rate_per_sec", "0.001"), ("rate_burst", "20")],
    )
    .await;
    let (b_key, c_key) = (kb.server_key(), kc.server_key());
    // A token for one FetchUserKey call.
    let s2s = |key: &secretd::federation::key::ServerKey, iss: &str, aud: &str| {
        token::mint_s2s(key, iss, aud, secretd::federation::FETCH_USER_KEY_PATH)
            .unwrap()
            .0
    };
    let user = random_user();
    a.client(user)
        .await
        .post_key(secretd::proto::PostKeyRequest {
            key_data: key_pem(3),
        })
        .await
        .unwrap();

    // ServerKey needs no token and says what `federation-key` printed.
    let sk = fed_client(&a.addr, None)
        .await
        .server_key(ServerKeyRequest {})
        .await
        .unwrap()
        .into_inner();
    assert_eq!(sk.server_name, "a.test");
    assert_eq!(sk.key_id, ka.key_id);
    use base64::Engine;
    assert_eq!(
        base64::engine::general_purpose::STANDARD.encode(&sk.public_key),
        ka.public_key
    );
    // With federation on, reflection lists the federation service (off: `auth.rs`).
    {
        use tonic_reflection::pb::v1::ServerReflectionRequest;
        use tonic_reflection::pb::v1::server_reflection_client::ServerReflectionClient;
        use tonic_reflection::pb::v1::server_reflection_request::MessageRequest;
        use tonic_reflection::pb::v1::server_reflection_response::MessageResponse;
        let channel = tonic::transport::Endpoint::from_shared(format!("http://{}", a.addr))
            .unwrap()
            .connect()
            .await
            .unwrap();
        let list = ServerReflectionClient::new(channel)
            .server_reflection_info(tokio_stream::iter(vec![ServerReflectionRequest {
                host: String::new(),
                message_request: Some(MessageRequest::ListServices(String::new())),
            }]))
            .await
            .unwrap()
            .into_inner()
            .message()
            .await
            .unwrap()
            .unwrap();
        let Some(MessageResponse::ListServicesResponse(list)) = list.message_response else {
            panic!("expected a service list");
        };
        let names: Vec<String> = list.service.into_iter().map(|s| s.name).collect();
        assert!(
            names.contains(&"protocol.secret.federation.v1.SecretFederationService".into()),
            "{names:?}"
        );
    }

    // Good tokens from b (a new one for each call): the user's keys; an unknown user is
    // NOT_FOUND.
    let mut from_b = peer_client(&a.addr, &kb, "a.test").await;
    let keys = from_b.fetch_user_key(ask(user)).await.unwrap().into_inner();
    assert!(keys.current_key.is_some());
    expect_code(
        from_b.fetch_user_key(ask(random_user())).await,
        Code::NotFound,
    );
    expect_code(from_b.fetch_user_key(ask(0)).await, Code::InvalidArgument);
    // An empty delivery passes the token check and is refused for its content.
    let st = expect_code(
        from_b.deliver_invite(DeliverInviteRequest::default()).await,
        Code::InvalidArgument,
    );
    assert!(st.message().contains("to_user_id"), "{st:?}");

    for (token, says) in [
        // b's token for c, presented at a.
        (Some(s2s(&b_key, "b.test", "c.test")), "aud"),
        // Expired.
        (
            Some(
                token::mint_s2s_at(
                    &b_key,
                    "b.test",
                    "a.test",
                    secretd::federation::FETCH_USER_KEY_PATH,
                    now() - 300,
                    60,
                )
                .unwrap()
                .0,
            ),
            "expired",
        ),
        // Says b, signed by c.
        (Some(s2s(&c_key, "b.test", "a.test")), "signature"),
        // A fed-user token is not an s2s token.
        (
            Some(
                token::mint(&b_key, "b.test", "a.test", TokenType::FedUser, Some(5), 600)
                    .unwrap()
                    .0,
            ),
            "typ",
        ),
        // A's own users' HS256 token.
        (Some(token(user, 3600)), "iss"),
        (None, "authorization"),
    ] {
        let st = expect_code(
            fed_client(&a.addr, token)
                .await
                .fetch_user_key(ask(user))
                .await,
            Code::Unauthenticated,
        );
        assert!(st.message().contains(says), "{says}: {st:?}");
    }

    // An s2s token is not a user token at SecretService.
    let mut as_user = client_at(&a.addr, s2s(&b_key, "b.test", "a.test")).await;
    expect_code(
        as_user
            .fetch_key(FetchKeyRequest {
                user_id: user,
                homeserver: String::new(),
                known_tree_size: 0,
            })
            .await,
        Code::Unauthenticated,
    );

    // b's calls run into b's limit (burst 20, then one per 1000 s); c's still pass.
    let mut limited = false;
    for _ in 0..25 {
        match from_b.fetch_user_key(ask(user)).await {
            Ok(_) => {}
            Err(st) => {
                assert_eq!(st.code(), Code::ResourceExhausted, "{st:?}");
                assert!(st.message().contains("federation.rate_per_sec"), "{st:?}");
                limited = true;
                break;
            }
        }
    }
    assert!(limited, "b was never limited");
    let mut from_c = peer_client(&a.addr, &kc, "a.test").await;
    from_c.fetch_user_key(ask(user)).await.unwrap();
}

#[test]
fn federation_key_prints_one_stable_line() {
    let k = NodeKey::new("a.test");
    assert_eq!(k.key_id.len(), 16);
    assert!(k.key_id.chars().all(|c| c.is_ascii_hexdigit()));
    use base64::Engine;
    let raw = base64::engine::general_purpose::STANDARD
        .decode(&k.public_key)
        .unwrap();
    assert_eq!(raw.len(), 32);
    let again = run_binary(
        &["federation-key", "--data-dir", "data"],
        k.dir.path(),
        &[("SECRETD_SERVER_NAME", "a.test")],
    );
    assert_eq!(
        String::from_utf8(again.stdout).unwrap().trim(),
        format!("a.test {} {}", k.key_id, k.public_key)
    );
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(k.dir.path().join("data/federation-key"))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600);
    }
}

#[test]
fn bad_peers_are_configuration_errors_naming_the_key() {
    let kb = NodeKey::new("b.test");
    let good = PeerSpec::unreachable(&kb);
    let spec = |name: &str, key: &str| PeerSpec {
        name: name.into(),
        endpoint: good.endpoint.clone(),
        public_key: key.into(),
        client_endpoint: String::new(),
        ca_file: None,
    };
    for (peers, key) in [
        (
            vec![spec("b.test", "not base64!")],
            "federation.peers[0].public_key",
        ),
        (
            vec![spec("b.test", "AAAA")],
            "federation.peers[0].public_key",
        ),
        (
            vec![
                spec("b.test", &kb.public_key),
                spec("b.test", &kb.public_key),
            ],
            "federation.peers[1].server_name",
        ),
        (
            vec![spec("a.test", &kb.public_key)],
            "federation.peers[0].server_name",
        ),
    ] {
        let dir = tempfile::tempdir().unwrap();
        write_config(dir.path(), "a.test", &peers, &[]);
        let out = run_binary(
            &[
                "federation-key",
                "--config",
                "secretd.toml",
                "--data-dir",
                "data",
            ],
            dir.path(),
            &[],
        );
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{stderr}");
        assert!(stderr.contains(key), "{key}: {stderr}");
    }
}
