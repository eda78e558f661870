//! Key transparency across homeservers (DESIGN §12, docs/kt.md §9), part 3: a peer whose
//! newer head does not extend the head a holds of it. c1 and c2 are c (one key, one name)
//! on two databases with different logs; a reaches "c.test" through a switch that
//! forwards ExchangeHeads to c1, then to c2. c2's head is larger and signed later (no
//! fork, no rollback), but its consistency proof from c1's head does not verify: that is
//! the evidence.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use secretd::proto::federation::secret_federation_service_server::{
    SecretFederationService, SecretFederationServiceServer,
};
use secretd::proto::federation::{
    DeliverInviteRequest, DeliverInviteResponse, ExchangeHeadsRequest, ExchangeHeadsResponse,
    FetchUserKeyRequest, FetchUserKeyResponse, ServerKeyRequest, ServerKeyResponse,
};
use secretd::proto::{FetchKeyRequest, PostKeyRequest};
use tonic::{Code, Request, Response, Status};

use super::equivocation::twin;
use super::nodes::{FedClient, Node, NodeKey, PeerSpec, peer_client};
use crate::common::*;

/// Forwards ExchangeHeads (as a) to c1, or to c2 once `to_c2` is set; counts the answers
/// forwarded and keeps the last `known_tree_size` a sent.
#[derive(Clone)]
struct Switch {
    c1: FedClient,
    c2: FedClient,
    to_c2: Arc<AtomicBool>,
    answered: Arc<AtomicU64>,
    last_known: Arc<AtomicU64>,
}

#[tonic::async_trait]
impl SecretFederationService for Switch {
    async fn server_key(
        &self,
        _: Request<ServerKeyRequest>,
    ) -> Result<Response<ServerKeyResponse>, Status> {
        Err(Status::unimplemented("switch"))
    }

    async fn fetch_user_key(
        &self,
        _: Request<FetchUserKeyRequest>,
    ) -> Result<Response<FetchUserKeyResponse>, Status> {
        Err(Status::unimplemented("switch"))
    }

    async fn deliver_invite(
        &self,
        _: Request<DeliverInviteRequest>,
    ) -> Result<Response<DeliverInviteResponse>, Status> {
        Err(Status::unimplemented("switch"))
    }

    async fn exchange_heads(
        &self,
        req: Request<ExchangeHeadsRequest>,
    ) -> Result<Response<ExchangeHeadsResponse>, Status> {
        let req = req.into_inner();
        self.last_known.store(req.known_tree_size, Ordering::SeqCst);
        let mut target = match self.to_c2.load(Ordering::SeqCst) {
            false => self.c1.clone(),
            true => self.c2.clone(),
        };
        let answer = target.exchange_heads(req).await?;
        self.answered.fetch_add(1, Ordering::SeqCst);
        Ok(answer)
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_head_that_does_not_extend_the_one_held_is_caught() {
    let (ka, kc1) = (NodeKey::new("a.test"), NodeKey::new("c.test"));
    let kc2 = twin(&kc1);
    let c1 = Node::start(&kc1, &Backend::Sqlite, &[PeerSpec::unreachable(&ka)], &[]).await;
    let c2 = Node::start(&kc2, &Backend::Sqlite, &[PeerSpec::unreachable(&ka)], &[]).await;
    // c1's log: one entry; c2's: two others, logged later.
    let u = random_user();
    let posts = [
        (&c1, u, 1),
        (&c2, random_user(), 2),
        (&c2, random_user(), 3),
    ];
    for (c, user, n) in posts {
        c.client(user)
            .await
            .post_key(PostKeyRequest {
                key_data: key_pem(n),
            })
            .await
            .unwrap();
    }
    let switch = Switch {
        c1: peer_client(&c1.addr, &ka, "c.test").await,
        c2: peer_client(&c2.addr, &ka, "c.test").await,
        to_c2: Arc::default(),
        answered: Arc::default(),
        last_known: Arc::default(),
    };
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let wire = listener.local_addr().unwrap().to_string();
    tokio::spawn(
        tonic::transport::Server::builder()
            .add_service(SecretFederationServiceServer::new(switch.clone()))
            .serve_with_incoming(tokio_stream::wrappers::TcpListenerStream::new(listener)),
    );
    let metrics = format!("127.0.0.1:{}", unused_port());
    let a = Node::start_with_env(
        &ka,
        &Backend::Sqlite,
        &[PeerSpec::at(&kc1, &wire)],
        &[("exchange_heads_ms", "200")],
        &[("SECRETD_METRICS_LISTEN", metrics.as_str())],
    )
    .await;
    // Two answers of c1: a took the first in before it sent the second (rounds are one
    // after another), which named c1's head (size 1) as the one a holds.
    let deadline = Instant::now() + Duration::from_secs(20);
    while switch.answered.load(Ordering::SeqCst) < 2 {
        assert!(Instant::now() < deadline, "no exchange rounds within 20 s");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(switch.last_known.load(Ordering::SeqCst), 1);
    switch.to_c2.store(true, Ordering::SeqCst);

    let mut on_a = a.client(random_user()).await;
    let ask = || FetchKeyRequest {
        user_id: u,
        homeserver: "c.test".into(),
        known_tree_size: 0,
    };
    let deadline = Instant::now() + Duration::from_secs(20);
    let refused = loop {
        match on_a.fetch_key(ask()).await {
            // The switch answers no FetchUserKey: UNAVAILABLE until the evidence is found.
            Err(st) if st.code() == Code::FailedPrecondition => break st,
            Err(st) if st.code() == Code::Unavailable && Instant::now() < deadline => {
                tokio::time::sleep(Duration::from_millis(100)).await
            }
            other => panic!("a did not catch c2's log within 20 s: {other:?}"),
        }
    };
    let m = refused.message();
    assert!(
        m.contains("homeserver \"c.test\" equivocated")
            && m.contains("a head of tree size 2")
            && m.contains("consistency proof does not lead to from the head of tree size 1"),
        "{refused:?}"
    );
    let db = format!(
        "sqlite://{}",
        ka.dir.path().join("data/secretd.db").display()
    );
    let rows = crate::kt::sql_i64(
        &db,
        "SELECT count(*) FROM kt_evidence WHERE homeserver = 'c.test' \
         AND kind = 'inconsistent' AND a_tree_size = 1 AND b_tree_size = 2 \
         AND reported_by = 'ExchangeHeads from c.test'",
    )
    .await;
    assert_eq!(rows, 1);
    let counted = metric(
        &metrics,
        "secretd_kt_equivocations_total{server=\"c.test\"}",
    )
    .await;
    assert_eq!(counted, 1.0);
}
