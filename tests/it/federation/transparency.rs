//! Key transparency across homeservers (DESIGN §12, docs/kt.md §9), part 1: FetchKey of a
//! user of b carries b's own proof, which verifies under b's key (the verifier of
//! `tests/it/kt`, written from docs/kt.md alone); a rewriting stand-in for b between a and
//! b (it forwards FetchUserKey to the real b and alters the answer) is refused, and what
//! it sent is never cached.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use base64::Engine;
use secretd::proto::federation::secret_federation_service_server::{
    SecretFederationService, SecretFederationServiceServer,
};
use secretd::proto::federation::{
    DeliverInviteRequest, DeliverInviteResponse, ExchangeHeadsRequest, ExchangeHeadsResponse,
    FetchUserKeyRequest, FetchUserKeyResponse, ServerKeyRequest, ServerKeyResponse,
};
use secretd::proto::{FetchKeyRequest, PostKeyRequest, TreeHead};
use tonic::{Code, Request, Response, Status};

use super::nodes::{FedClient, Node, NodeKey, PeerSpec, peer_client};
use crate::common::*;

both_backends!(remote_keys_carry_the_peers_proof);

/// The raw Ed25519 key of a node (as pinned in peers' configs).
pub(super) fn raw_key(key: &NodeKey) -> Vec<u8> {
    base64::engine::general_purpose::STANDARD
        .decode(&key.public_key)
        .unwrap()
}

/// Re-signs `head` with `key` after `change` altered it.
pub(super) fn resign(head: &mut TreeHead, key: &NodeKey, change: impl FnOnce(&mut TreeHead)) {
    change(head);
    head.signature = key.server_key().sign(&crate::kt::head_input(head));
}

/// Milliseconds since the Unix epoch.
pub(super) fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as u64
}

fn fetch(user: u64, homeserver: &str) -> FetchKeyRequest {
    FetchKeyRequest {
        user_id: user,
        homeserver: homeserver.into(),
        known_tree_size: 0,
    }
}

/// bob of b posts two keys; a's FetchKey of bob carries b's proof, unchanged: it verifies
/// under b's key for server "b.test" (head signature, map path, chain), and its entries
/// are the keys served.
async fn remote_keys_carry_the_peers_proof(backend: Backend) {
    let (ka, kb) = (NodeKey::new("a.test"), NodeKey::new("b.test"));
    let b = Node::start(&kb, &backend, &[PeerSpec::unreachable(&ka)], &[]).await;
    let a = Node::start(&ka, &backend, &[PeerSpec::at(&kb, &b.addr)], &[]).await;
    let bob = random_user();
    let mut on_b = b.client(bob).await;
    for n in [1, 2] {
        on_b.post_key(PostKeyRequest {
            key_data: key_pem(n),
        })
        .await
        .unwrap();
    }
    let keys = a
        .client(random_user())
        .await
        .fetch_key(fetch(bob, "b.test"))
        .await
        .unwrap()
        .into_inner();
    let proof = keys.proof.expect("b's proof is passed on");
    let newest = crate::kt::check_proof(&proof, "b.test", bob, &raw_key(&kb), None);
    assert_eq!(newest.fingerprint, crate::kt::fingerprint_of(2));
    assert_eq!(keys.current_key.unwrap().fingerprint, newest.fingerprint);
    assert_eq!(proof.entries.len(), 2);
    assert_eq!(proof.entries[1].fingerprint, keys.past_keys[0].fingerprint);
    assert!(proof.consistency.is_empty());
    // The head is b's newest: the one b's own GetTreeHead shows (nothing was posted since).
    let own = on_b
        .get_tree_head(secretd::proto::GetTreeHeadRequest { known_tree_size: 0 })
        .await
        .unwrap()
        .into_inner()
        .head
        .unwrap();
    let head = proof.head.as_ref().unwrap();
    assert_eq!(
        (head.tree_size, &head.log_root),
        (own.tree_size, &own.log_root)
    );
    // Unchanged: the entries and map path are those of b's own FetchKey of bob.
    let local = on_b
        .fetch_key(fetch(bob, ""))
        .await
        .unwrap()
        .into_inner()
        .proof
        .unwrap();
    assert_eq!(proof.entries, local.entries);
    assert_eq!(proof.map_path, local.map_path);
    assert_eq!(head.map_root, local.head.unwrap().map_root);
}

/// What the stand-in does to b's answers.
#[derive(Clone, Copy, Debug, PartialEq)]
pub(super) enum Rewrite {
    /// Passes them on.
    Pass,
    /// Serves another (valid) RSA key as the current key, with its right fingerprint.
    SwapKey,
    /// The proof's head re-signed by b's key as of 11 minutes ago (a recorded head
    /// replayed past the freshness window).
    StaleHead,
    /// Drops the proof (a peer older than key transparency).
    NoProof,
    /// The proof's head re-signed by b's key with another log root (b forking its log).
    Fork,
}

/// A stand-in for b: forwards FetchUserKey to the real b (as a, with a's key) and
/// rewrites the answer as `mode` says; counts the calls.
#[derive(Clone)]
pub(super) struct Rewriter {
    real: FedClient,
    kb: Arc<NodeKey>,
    mode: Arc<Mutex<Rewrite>>,
    calls: Arc<AtomicUsize>,
}

impl Rewriter {
    fn set(&self, mode: Rewrite) {
        *self.mode.lock().unwrap() = mode;
    }

    fn calls(&self) -> usize {
        self.calls.load(Ordering::SeqCst)
    }
}

#[tonic::async_trait]
impl SecretFederationService for Rewriter {
    async fn server_key(
        &self,
        _: Request<ServerKeyRequest>,
    ) -> Result<Response<ServerKeyResponse>, Status> {
        Err(Status::unimplemented("rewriter"))
    }

    async fn fetch_user_key(
        &self,
        req: Request<FetchUserKeyRequest>,
    ) -> Result<Response<FetchUserKeyResponse>, Status> {
        self.calls.fetch_add(1, Ordering::SeqCst);
        let mut answer = self
            .real
            .clone()
            .fetch_user_key(req.into_inner())
            .await?
            .into_inner();
        let mode = *self.mode.lock().unwrap();
        let head = answer.proof.as_mut().and_then(|p| p.head.as_mut());
        match (mode, head) {
            (Rewrite::Pass, _) => {}
            (Rewrite::SwapKey, _) => {
                let der = rsa::pkcs8::der::pem::decode_vec(&key_pem(3)).unwrap().1;
                answer.current_key = Some(secretd::proto::Key {
                    fingerprint: crate::kt::fingerprint_of(3),
                    key_data: der,
                    posted_at: answer.current_key.and_then(|k| k.posted_at),
                });
            }
            (Rewrite::StaleHead, Some(head)) => resign(head, &self.kb, |h| {
                h.timestamp_ms = now_ms() - 11 * 60 * 1000;
            }),
            (Rewrite::Fork, Some(head)) => resign(head, &self.kb, |h| {
                h.log_root = <sha2::Sha256 as sha2::Digest>::digest(&h.log_root).to_vec();
            }),
            (Rewrite::NoProof, _) => answer.proof = None,
            (_, None) => return Err(Status::internal("b sent no proof to rewrite")),
        }
        Ok(Response::new(answer))
    }

    async fn deliver_invite(
        &self,
        _: Request<DeliverInviteRequest>,
    ) -> Result<Response<DeliverInviteResponse>, Status> {
        Err(Status::unimplemented("rewriter"))
    }

    async fn exchange_heads(
        &self,
        _: Request<ExchangeHeadsRequest>,
    ) -> Result<Response<ExchangeHeadsResponse>, Status> {
        Err(Status::unimplemented("rewriter"))
    }
}

/// Serves `r` on a new port of 127.0.0.1; its address.
async fn serve(r: Rewriter) -> String {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap().to_string();
    tokio::spawn(
        tonic::transport::Server::builder()
            .add_service(SecretFederationServiceServer::new(r))
            .serve_with_incoming(tokio_stream::wrappers::TcpListenerStream::new(listener)),
    );
    addr
}

/// a reaches "b.test" through the rewriting stand-in (a 300 s key cache). A swapped key
/// and a stale head are UNAVAILABLE naming b and the user, and nothing of them is cached
/// (the next fetch asks again and gets b's real key); an answer without proof is served
/// without one; a head of b's key with another log root at a size a saw is evidence:
/// FAILED_PRECONDITION from then on (after a restart too), stored in a's kt_evidence and
/// counted.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_rewriting_stand_in_for_a_peer_is_refused() {
    let (ka, kb) = (NodeKey::new("a.test"), Arc::new(NodeKey::new("b.test")));
    let b = Node::start(&kb, &Backend::Sqlite, &[PeerSpec::unreachable(&ka)], &[]).await;
    let rewriter = Rewriter {
        real: peer_client(&b.addr, &ka, "b.test").await,
        kb: kb.clone(),
        mode: Arc::new(Mutex::new(Rewrite::Pass)),
        calls: Arc::default(),
    };
    let wire = serve(rewriter.clone()).await;
    let metrics = format!("127.0.0.1:{}", unused_port());
    let a = Node::start_with_env(
        &ka,
        &Backend::Sqlite,
        &[PeerSpec::at(&kb, &wire)],
        &[("key_cache_secs", "300")],
        &[("SECRETD_METRICS_LISTEN", metrics.as_str())],
    )
    .await;
    let (bob, carl, erin) = (random_user(), random_user(), random_user());
    for (user, n) in [(bob, 1), (carl, 2), (erin, 3)] {
        b.client(user)
            .await
            .post_key(PostKeyRequest {
                key_data: key_pem(n),
            })
            .await
            .unwrap();
    }
    let mut on_a = a.client(random_user()).await;

    for (mode, says) in [
        (Rewrite::SwapKey, "not user"),
        (Rewrite::StaleHead, "stale head replayed"),
    ] {
        rewriter.set(mode);
        let st = expect_code(
            on_a.fetch_key(fetch(bob, "b.test")).await,
            Code::Unavailable,
        );
        let m = st.message();
        assert!(
            m.contains("homeserver \"b.test\" served a key for user")
                && m.contains(&bob.to_string())
                && m.contains("transparency proof does not verify")
                && m.contains(says),
            "{mode:?}: {st:?}"
        );
    }
    // Nothing was cached: the next fetch asks the stand-in again and gets b's key.
    rewriter.set(Rewrite::Pass);
    let keys = on_a
        .fetch_key(fetch(bob, "b.test"))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(rewriter.calls(), 3);
    assert_eq!(
        keys.current_key.unwrap().fingerprint,
        crate::kt::fingerprint_of(1)
    );
    assert!(keys.proof.is_some());

    rewriter.set(Rewrite::NoProof);
    let keys = on_a
        .fetch_key(fetch(carl, "b.test"))
        .await
        .unwrap()
        .into_inner();
    assert!(keys.proof.is_none(), "served without a proof");
    assert_eq!(
        keys.current_key.unwrap().fingerprint,
        crate::kt::fingerprint_of(2)
    );

    // A head signed by b's key, of the size a saw (3), with another root: b equivocated.
    rewriter.set(Rewrite::Fork);
    let st = expect_code(
        on_a.fetch_key(fetch(erin, "b.test")).await,
        Code::FailedPrecondition,
    );
    assert!(
        st.message()
            .contains("homeserver \"b.test\" served a key for user")
            && st.message().contains("contradicts one it signed before"),
        "{st:?}"
    );
    // From then on, cached or not, b's users are refused, naming b and the evidence.
    rewriter.set(Rewrite::Pass);
    let st = expect_code(
        on_a.fetch_key(fetch(bob, "b.test")).await,
        Code::FailedPrecondition,
    );
    let m = st.message();
    assert!(
        m.contains("homeserver \"b.test\" equivocated")
            && m.contains("two heads of tree size 3 with different roots")
            && m.contains("kt_evidence"),
        "{st:?}"
    );
    let db = format!(
        "sqlite://{}",
        ka.dir.path().join("data/secretd.db").display()
    );
    let rows = crate::kt::sql_i64(
        &db,
        "SELECT count(*) FROM kt_evidence WHERE homeserver = 'b.test' AND kind = 'fork' \
         AND a_tree_size = 3 AND b_tree_size = 3 AND reported_by = 'FetchUserKey'",
    )
    .await;
    assert_eq!(rows, 1);
    let counted = metric(
        &metrics,
        "secretd_kt_equivocations_total{server=\"b.test\"}",
    )
    .await;
    assert_eq!(counted, 1.0);
    assert_eq!(
        metric(&metrics, "secretd_kt_equivocating_servers").await,
        1.0
    );

    // The evidence outlives a restart: a's new process refuses b's users from its first
    // call, read from kt_evidence (nothing is cached, no head seen yet).
    a.kill().await;
    let metrics = format!("127.0.0.1:{}", unused_port());
    let a = Node::start_with_env(
        &ka,
        &Backend::Sqlite,
        &[PeerSpec::at(&kb, &wire)],
        &[("exchange_heads_ms", "0")],
        &[("SECRETD_METRICS_LISTEN", metrics.as_str())],
    )
    .await;
    assert_eq!(
        metric(&metrics, "secretd_kt_equivocating_servers").await,
        1.0
    );
    let calls = rewriter.calls();
    let st = expect_code(
        a.client(random_user())
            .await
            .fetch_key(fetch(bob, "b.test"))
            .await,
        Code::FailedPrecondition,
    );
    assert!(st.message().contains("equivocated"), "{st:?}");
    assert_eq!(rewriter.calls(), calls, "b is not even asked");
}
