//! DeliverInvite called directly, as peer b would call it, at a real process a (b's key
//! pinned at a): what lands in the invitee's inbox (the inviter named as b's, a third
//! server's or a's own user), that a repeated delivery answers the first one's id and
//! stores nothing more, the live push to the invitee's open stream, a peer that answers
//! garbage, and every refusal with its status — after which nothing was stored.

use secretd::proto::federation::{DeliverInviteRequest, DeliverInviteResponse};
use secretd::proto::stream_message_posting_response::Event;
use secretd::proto::{
    ChannelPair, FetchInvitesRequest, GenerateChannelPairRequest, PostKeyRequest, ReceivedInvite,
    SendInviteRequest, SubscribeRequest, UserRef,
};
use tonic::Code;
use tonic::{Request, Response, Status};

use super::nodes::{FedClient, Node, NodeKey, PeerSpec, peer_client};
use crate::common::*;

/// b's SecretFederationService client at `addr`, signing a fresh s2s token for a for
/// each call.
pub(super) async fn as_b(addr: &str, kb: &NodeKey) -> FedClient {
    peer_client(addr, kb, "a.test").await
}

pub(super) fn fingerprint(n: usize) -> Vec<u8> {
    use sha2::Digest;
    let (_, der) = rsa::pkcs8::der::pem::decode_vec(&key_pem(n)).unwrap();
    sha2::Sha256::digest(der).to_vec()
}

pub(super) fn b_pair() -> ChannelPair {
    let id = || uuid::Uuid::new_v4().hyphenated().to_string();
    ChannelPair {
        message_id: id(),
        state_id: id(),
        pair_id: id(),
    }
}

pub(super) fn delivery(
    pair: &ChannelPair,
    from: (&str, u64),
    to: u64,
    body: &[u8],
) -> DeliverInviteRequest {
    DeliverInviteRequest {
        pair: Some(pair.clone()),
        pair_homeserver: "b.test".into(),
        from: Some(UserRef {
            homeserver: from.0.into(),
            user_id: from.1,
        }),
        to_user_id: to,
        invite: body.to_vec(),
        key_fingerprint: Vec::new(),
    }
}

pub(super) async fn inbox(c: &mut Client) -> Vec<ReceivedInvite> {
    c.fetch_invites(FetchInvitesRequest::default())
        .await
        .unwrap()
        .into_inner()
        .invites
}

/// (id, pair, from user, from homeserver, pair homeserver, bytes) of an invite.
pub(super) fn summary(i: &ReceivedInvite) -> (u64, String, u64, String, String, Vec<u8>) {
    (
        i.invite_id,
        i.pair.as_ref().unwrap().pair_id.clone(),
        i.from_user,
        i.from_homeserver.clone(),
        i.pair_homeserver.clone(),
        i.invite.clone(),
    )
}

both_backends!(deliveries_land_once_and_refusals_store_nothing);

async fn deliveries_land_once_and_refusals_store_nothing(backend: Backend) {
    let (ka, kb, kc) = (
        NodeKey::new("a.test"),
        NodeKey::new("b.test"),
        NodeKey::new("c.test"),
    );
    let a = Node::start(
        &ka,
        &backend,
        &[PeerSpec::unreachable(&kb), PeerSpec::unreachable(&kc)],
        &[],
    )
    .await;
    let (carol, keyless, dave) = (random_user(), random_user(), random_user());
    let mut carol_at_a = a.client(carol).await;
    carol_at_a
        .post_key(PostKeyRequest {
            key_data: key_pem(1),
        })
        .await
        .unwrap();
    let mut live = Subscription::subscribe(
        &mut carol_at_a,
        SubscribeRequest {
            invites_after: Some(0),
            ..Default::default()
        },
    )
    .await
    .unwrap();
    let mut b = as_b(&a.addr, &kb).await;
    let pair = b_pair();

    // A user of b invites carol into b's pair; she sees it live and in her inbox.
    let mut first = delivery(&pair, ("b.test", 5), carol, b"sealed one");
    first.key_fingerprint = fingerprint(1);
    let id = b
        .deliver_invite(first.clone())
        .await
        .unwrap()
        .into_inner()
        .invite_id;
    assert_eq!(id, 1);
    let Event::Invite(pushed) = live.next().await else {
        panic!("expected the invite on carol's open stream")
    };
    let one = (
        1,
        pair.pair_id.clone(),
        5,
        "b.test".to_string(),
        "b.test".to_string(),
        b"sealed one".to_vec(),
    );
    assert_eq!(summary(&pushed), one);
    assert_eq!(pushed.pair.as_ref(), Some(&pair));
    // The same delivery again: the same id, nothing new.
    let again = b.deliver_invite(first).await.unwrap().into_inner();
    assert_eq!(again, DeliverInviteResponse { invite_id: 1 });
    // An empty from.homeserver is the caller's user; c's user is vouched for by b; a's
    // own user dave is named as local ("").
    b.deliver_invite(delivery(&pair, ("", 6), carol, b"two"))
        .await
        .unwrap();
    b.deliver_invite(delivery(&pair, ("c.test", 5), carol, b"three"))
        .await
        .unwrap();
    b.deliver_invite(delivery(&pair, ("a.test", dave), carol, b"four"))
        .await
        .unwrap();
    let expected = vec![
        one.clone(),
        (
            2,
            pair.pair_id.clone(),
            6,
            "b.test".into(),
            "b.test".into(),
            b"two".to_vec(),
        ),
        (
            3,
            pair.pair_id.clone(),
            5,
            "c.test".into(),
            "b.test".into(),
            b"three".to_vec(),
        ),
        (
            4,
            pair.pair_id.clone(),
            dave,
            String::new(),
            "b.test".into(),
            b"four".to_vec(),
        ),
    ];
    let got: Vec<_> = inbox(&mut carol_at_a).await.iter().map(summary).collect();
    assert_eq!(got, expected);
    for want in &expected[1..] {
        let Event::Invite(pushed) = live.next().await else {
            panic!("expected invite {} on carol's open stream", want.0)
        };
        assert_eq!(&summary(&pushed), want, "pushed once each, in order");
    }

    // Refusals, each with its status; none stores anything.
    let good = delivery(&pair, ("b.test", 5), carol, b"refused");
    let cases: Vec<(DeliverInviteRequest, Code, &str)> = vec![
        (
            DeliverInviteRequest {
                pair_homeserver: "c.test".into(),
                ..good.clone()
            },
            Code::PermissionDenied,
            "own pairs",
        ),
        (
            delivery(&pair, ("b.test", 5), keyless, b"x"),
            Code::FailedPrecondition,
            "public key",
        ),
        (
            DeliverInviteRequest {
                key_fingerprint: fingerprint(2),
                ..good.clone()
            },
            Code::FailedPrecondition,
            "new public key",
        ),
        (
            DeliverInviteRequest {
                key_fingerprint: vec![1; 5],
                ..good.clone()
            },
            Code::InvalidArgument,
            "key_fingerprint",
        ),
        (
            delivery(&pair, ("b test", 5), carol, b"x"),
            Code::InvalidArgument,
            "homeserver",
        ),
        (
            delivery(&pair, ("b.test", 0), carol, b"x"),
            Code::InvalidArgument,
            "from.user_id",
        ),
        (
            delivery(&pair, ("b.test", 5), carol, b""),
            Code::InvalidArgument,
            "invite",
        ),
        (
            delivery(&pair, ("b.test", 5), carol, &vec![0; 64 * 1024 + 1]),
            Code::InvalidArgument,
            "invite",
        ),
        (
            DeliverInviteRequest {
                pair: Some(ChannelPair {
                    pair_id: pair.pair_id.to_uppercase(),
                    ..pair.clone()
                }),
                ..good.clone()
            },
            Code::InvalidArgument,
            "pair.pair_id",
        ),
        (
            DeliverInviteRequest {
                pair: None,
                ..good.clone()
            },
            Code::InvalidArgument,
            "pair",
        ),
        (
            DeliverInviteRequest {
                from: None,
                ..good.clone()
            },
            Code::InvalidArgument,
            "from",
        ),
    ];
    for (request, code, says) in cases {
        let st = expect_code(b.deliver_invite(request).await, code);
        assert!(st.message().contains(says), "{says}: {st:?}");
    }
    let got: Vec<_> = inbox(&mut carol_at_a).await.iter().map(summary).collect();
    assert_eq!(got, expected, "a refused delivery stored nothing");
    assert!(inbox(&mut a.client(keyless).await).await.is_empty());
    assert!(live.quiet_for(300).await, "no push for a refused delivery");
}

/// A peer whose DeliverInvite answers without an invite id, or with an error a client
/// cannot act on, is UNAVAILABLE at a, and the invitee does not become a member.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_peer_answering_garbage_to_deliver_invite_is_unavailable() {
    struct Garbage;
    #[tonic::async_trait]
    impl secretd::proto::federation::secret_federation_service_server::SecretFederationService
        for Garbage
    {
        async fn server_key(
            &self,
            _: Request<secretd::proto::federation::ServerKeyRequest>,
        ) -> Result<Response<secretd::proto::federation::ServerKeyResponse>, Status> {
            Err(Status::unimplemented("fake"))
        }
        async fn fetch_user_key(
            &self,
            _: Request<secretd::proto::federation::FetchUserKeyRequest>,
        ) -> Result<Response<secretd::proto::federation::FetchUserKeyResponse>, Status> {
            Err(Status::unimplemented("fake"))
        }
        async fn deliver_invite(
            &self,
            req: Request<DeliverInviteRequest>,
        ) -> Result<Response<DeliverInviteResponse>, Status> {
            match req.into_inner().to_user_id {
                1 => Ok(Response::new(DeliverInviteResponse { invite_id: 0 })),
                _ => Err(Status::internal("the fake peer broke")),
            }
        }
        async fn exchange_heads(
            &self,
            _: Request<secretd::proto::federation::ExchangeHeadsRequest>,
        ) -> Result<Response<secretd::proto::federation::ExchangeHeadsResponse>, Status> {
            Err(Status::unimplemented("fake"))
        }
    }
    let (ka, kf) = (NodeKey::new("a.test"), NodeKey::new("f.test"));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let fake_addr = listener.local_addr().unwrap().to_string();
    tokio::spawn(
        tonic::transport::Server::builder()
            .add_service(
                secretd::proto::federation::secret_federation_service_server::SecretFederationServiceServer::new(Garbage),
            )
            .serve_with_incoming(tokio_stream::wrappers::TcpListenerStream::new(listener)),
    );
    let a = Node::start(&ka, &Backend::Sqlite, &[PeerSpec::at(&kf, &fake_addr)], &[]).await;
    let alice = random_user();
    let mut at_a = a.client(alice).await;
    let pair = at_a
        .generate_channel_pair(GenerateChannelPairRequest {})
        .await
        .unwrap()
        .into_inner();
    for user in [1, 2] {
        let st = expect_code(
            at_a.send_invite(SendInviteRequest {
                pair_id: pair.pair_id.clone(),
                user_id: user,
                homeserver: "f.test".into(),
                invite: b"x".to_vec(),
                key_fingerprint: Vec::new(),
            })
            .await,
            Code::Unavailable,
        );
        assert!(st.message().contains("f.test"), "{st:?}");
    }
    let listed = at_a
        .list_channel_pairs(secretd::proto::ListChannelPairsRequest::default())
        .await
        .unwrap()
        .into_inner();
    assert_eq!(listed.pairs[0].member_refs.len(), 1, "{listed:?}");
}
