//! Federation hardening (DESIGN §9a, issue 20), each hole played against real processes:
//! a foreign user spending our budget at a third peer, a foreign caller who holds nothing
//! while the database is locked, rows left by refused requests, a flood of delivered
//! invites, a key rotation behind the key cache, a short-lived token minting a long one,
//! a captured s2s token replayed or used on another method, a shared identity provider
//! without an audience, and peers' endpoints and raw errors shown to clients.

use std::sync::{Arc, Mutex};

use secretd::proto::FetchKeyRequest;
use secretd::proto::federation::secret_federation_service_server::{
    SecretFederationService, SecretFederationServiceServer,
};
use secretd::proto::federation::{
    DeliverInviteRequest, DeliverInviteResponse, FetchUserKeyRequest, FetchUserKeyResponse,
    ServerKeyRequest, ServerKeyResponse,
};
use tonic::{Code, Request, Response, Status};

use super::nodes::{Node, NodeKey, PeerSpec, fed_client};
use crate::common::*;

fn fetch(user: u64, homeserver: &str) -> FetchKeyRequest {
    FetchKeyRequest {
        user_id: user,
        homeserver: homeserver.into(),
    }
}

/// A SecretFederationService that records the tokens it is called with and answers
/// FetchUserKey with NOT_FOUND (user 7: INTERNAL with a detail of its own) and
/// DeliverInvite with FAILED_PRECONDITION carrying raw text.
#[derive(Clone, Default)]
struct Recorder {
    tokens: Arc<Mutex<Vec<String>>>,
}

const PEER_DETAIL: &str = "peer-internal-detail";

impl Recorder {
    fn record<T>(&self, req: &Request<T>) {
        let header = req.metadata().get("authorization").unwrap();
        let token = header.to_str().unwrap().trim_start_matches("Bearer ");
        self.tokens.lock().unwrap().push(token.to_string());
    }

    fn last(&self) -> String {
        self.tokens
            .lock()
            .unwrap()
            .last()
            .cloned()
            .expect("a token")
    }

    async fn serve(self) -> String {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap().to_string();
        tokio::spawn(
            tonic::transport::Server::builder()
                .add_service(SecretFederationServiceServer::new(self))
                .serve_with_incoming(tokio_stream::wrappers::TcpListenerStream::new(listener)),
        );
        addr
    }
}

#[tonic::async_trait]
impl SecretFederationService for Recorder {
    async fn server_key(
        &self,
        _: Request<ServerKeyRequest>,
    ) -> Result<Response<ServerKeyResponse>, Status> {
        Err(Status::unimplemented("recorder"))
    }

    async fn fetch_user_key(
        &self,
        req: Request<FetchUserKeyRequest>,
    ) -> Result<Response<FetchUserKeyResponse>, Status> {
        self.record(&req);
        if req.get_ref().user_id == 7 {
            return Err(Status::internal(format!("{PEER_DETAIL} at /var/lib/x")));
        }
        Err(Status::not_found("no such user"))
    }

    async fn deliver_invite(
        &self,
        req: Request<DeliverInviteRequest>,
    ) -> Result<Response<DeliverInviteResponse>, Status> {
        self.record(&req);
        Err(Status::failed_precondition(format!(
            "{PEER_DETAIL}: the key is stale"
        )))
    }
}

/// a calls "b.test" at a recorder, which keeps the s2s tokens a sends. One of them,
/// presented at the real b, passes once and is UNAUTHENTICATED the second time; another,
/// minted for FetchUserKey, is UNAUTHENTICATED on DeliverInvite.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_captured_s2s_token_is_single_use_and_bound_to_its_method() {
    let (ka, kb) = (NodeKey::new("a.test"), NodeKey::new("b.test"));
    let b = Node::start(&kb, &Backend::Sqlite, &[PeerSpec::unreachable(&ka)], &[]).await;
    let recorder = Recorder::default();
    let wire = recorder.clone().serve().await;
    let a = Node::start(&ka, &Backend::Sqlite, &[PeerSpec::at(&kb, &wire)], &[]).await;
    let mut on_a = a.client(random_user()).await;

    expect_code(
        on_a.fetch_key(fetch(random_user(), "b.test")).await,
        Code::NotFound,
    );
    let captured = recorder.last();
    let ask = FetchUserKeyRequest {
        user_id: random_user(),
    };
    let first = fed_client(&b.addr, Some(captured.clone()))
        .await
        .fetch_user_key(ask)
        .await;
    expect_code(first, Code::NotFound);
    let again = fed_client(&b.addr, Some(captured))
        .await
        .fetch_user_key(ask)
        .await;
    let st = expect_code(again, Code::Unauthenticated);
    assert!(st.message().contains("used before"), "{st:?}");

    expect_code(
        on_a.fetch_key(fetch(random_user(), "b.test")).await,
        Code::NotFound,
    );
    let for_fetch = recorder.last();
    let st = expect_code(
        fed_client(&b.addr, Some(for_fetch))
            .await
            .deliver_invite(DeliverInviteRequest::default())
            .await,
        Code::Unauthenticated,
    );
    assert!(st.message().contains("mth"), "{st:?}");
}
