//! A peer that answers FetchUserKey with keys that must not be passed on: a key whose
//! fingerprint is not its SHA-256, a 2048-bit key, a key not in canonical SPKI DER, and
//! no current key at all. a must answer UNAVAILABLE naming the peer and count it.

use secretd::proto::FetchKeyRequest;
use secretd::proto::federation::secret_federation_service_server::{
    SecretFederationService, SecretFederationServiceServer,
};
use secretd::proto::federation::{
    DeliverInviteRequest, DeliverInviteResponse, ExchangeHeadsRequest, ExchangeHeadsResponse,
    FetchUserKeyRequest, FetchUserKeyResponse, ServerKeyRequest, ServerKeyResponse,
};
use tonic::{Code, Request, Response, Status};

use super::nodes::{Node, NodeKey, PeerSpec};
use crate::common::*;

struct Liar;

fn der(pem: &[u8]) -> Vec<u8> {
    rsa::pkcs8::der::pem::decode_vec(pem).unwrap().1
}

fn key(data: Vec<u8>, fingerprint: Vec<u8>) -> secretd::proto::Key {
    secretd::proto::Key {
        key_data: data,
        fingerprint,
        posted_at: None,
    }
}

fn sha256(data: &[u8]) -> Vec<u8> {
    use sha2::Digest;
    sha2::Sha256::digest(data).to_vec()
}

#[tonic::async_trait]
impl SecretFederationService for Liar {
    async fn server_key(
        &self,
        _: Request<ServerKeyRequest>,
    ) -> Result<Response<ServerKeyResponse>, Status> {
        Err(Status::unimplemented("fake"))
    }

    async fn fetch_user_key(
        &self,
        req: Request<FetchUserKeyRequest>,
    ) -> Result<Response<FetchUserKeyResponse>, Status> {
        let good = der(&key_pem(1));
        let current = match req.get_ref().user_id {
            1 => Some(key(good.clone(), vec![0; 32])),
            2 => {
                let small = der(&fixture_bytes("rsa2048.pub.pem"));
                Some(key(small.clone(), sha256(&small)))
            }
            3 => {
                let pem = key_pem(1);
                Some(key(pem.clone(), sha256(&pem)))
            }
            _ => None,
        };
        Ok(Response::new(FetchUserKeyResponse {
            current_key: current,
            // A good past key does not make up for a bad current one.
            past_keys: vec![key(good.clone(), sha256(&good))],
            more_past_keys: false,
            proof: None,
        }))
    }

    async fn deliver_invite(
        &self,
        _: Request<DeliverInviteRequest>,
    ) -> Result<Response<DeliverInviteResponse>, Status> {
        Err(Status::unimplemented("fake"))
    }

    async fn exchange_heads(
        &self,
        _: Request<ExchangeHeadsRequest>,
    ) -> Result<Response<ExchangeHeadsResponse>, Status> {
        Err(Status::unimplemented("fake"))
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_peer_sending_invalid_keys_is_unavailable() {
    // The fake peer has a key of its own, pinned at a (it never needs to sign: a
    // FetchUserKey answer is not signed, which is why a re-validates every key).
    let (ka, kf) = (NodeKey::new("a.test"), NodeKey::new("f.test"));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let fake_addr = listener.local_addr().unwrap().to_string();
    let fake = tokio::spawn(
        tonic::transport::Server::builder()
            .add_service(SecretFederationServiceServer::new(Liar))
            .serve_with_incoming(tokio_stream::wrappers::TcpListenerStream::new(listener)),
    );
    let metrics = format!("127.0.0.1:{}", unused_port());
    let a = Node::start_with_env(
        &ka,
        &Backend::Sqlite,
        &[PeerSpec::at(&kf, &fake_addr)],
        &[],
        &[("SECRETD_METRICS_LISTEN", metrics.as_str())],
    )
    .await;
    let mut on_a = a.client(random_user()).await;
    for (user, says) in [
        (1, "fingerprint"),
        (2, "2048"),
        (3, "canonical"),
        (4, "no current key"),
    ] {
        let st = expect_code(
            on_a.fetch_key(FetchKeyRequest {
                user_id: user,
                homeserver: "f.test".into(),
                known_tree_size: 0,
            })
            .await,
            Code::Unavailable,
        );
        assert!(
            st.message().contains("f.test") && st.message().contains(says),
            "user {user}: {st:?}"
        );
    }
    let page = metrics_page(&metrics).await;
    let counted = page.lines().find(|l| {
        l.starts_with("secretd_federation_calls_total{")
            && l.contains("outcome=\"invalid_answer\"")
            && l.contains("peer=\"f.test\"")
            && l.contains("direction=\"out\"")
    });
    let value: f64 = counted
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| panic!("no invalid_answer count in\n{page}"));
    assert_eq!(value, 4.0);
    fake.abort();
}
