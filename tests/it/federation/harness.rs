//! What the three-server tests share: homeservers a, b and c started in the right order
//! ([`trio`]), a pair of a with a member from b ([`shared_room`]), clients acting as a user
//! of another homeserver ([`foreign_client`], [`fed_user_token`]), and the listing seen
//! from either side ([`pair_info`], [`refs`]).

use secretd::federation::token::{self, TokenType};
use secretd::proto::{
    ChannelPair, ChannelPairInfo, FederateRequest, ListChannelPairsRequest, SendInviteRequest,
};
use tonic::Status;

use super::nodes::{Node, NodeKey, PeerSpec};
use crate::common::*;

/// Homeservers a, b and c: b and c only know a's key (a calls them, they never call
/// anyone); a has both pinned at their addresses. a and b store in `backend`, c in SQLite.
/// b and c serve TLS, each with a certificate of a CA of its own that a trusts for that
/// peer alone (`ca_file`): every call from a to them goes over TLS. a serves plaintext.
/// The keys hold the data directories: they live as long as the nodes.
#[allow(dead_code)]
pub(super) struct Trio {
    pub ka: NodeKey,
    pub kb: NodeKey,
    pub kc: NodeKey,
    pub a: Node,
    pub b: Node,
    pub c: Node,
}

pub(super) async fn trio(backend: &Backend) -> Trio {
    let (ka, kb, kc) = (
        NodeKey::new("a.test"),
        NodeKey::new("b.test"),
        NodeKey::new("c.test"),
    );
    let (ca_b, ca_c) = (TestCa::new("b.test CA"), TestCa::new("c.test CA"));
    let b = Node::start_tls(&kb, backend, &[PeerSpec::unreachable(&ka)], &[], &ca_b).await;
    let c = Node::start_tls(
        &kc,
        &Backend::Sqlite,
        &[PeerSpec::unreachable(&ka)],
        &[],
        &ca_c,
    )
    .await;
    let a = Node::start(
        &ka,
        backend,
        &[PeerSpec::node(&kb, &b), PeerSpec::node(&kc, &c)],
        &[],
    )
    .await;
    Trio {
        ka,
        kb,
        kc,
        a,
        b,
        c,
    }
}

pub(super) fn now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

/// A client at `at` (server name `at_name`) acting as `user` of `home`, with the token
/// `home`'s Federate gives `user`.
pub(super) async fn foreign_client(home: &Node, user: u64, at: &Node, at_name: &str) -> Client {
    let fed = home
        .client(user)
        .await
        .federate(FederateRequest {
            server_id: at_name.into(),
        })
        .await
        .expect("federate")
        .into_inner();
    let expires = fed.expires_at.expect("expires_at").seconds as u64;
    assert!(expires > now() && expires <= now() + 3600 + 5, "{expires}");
    at.client_with_token(fed.token).await
}

/// A "fed-user" token signed with `key` (of `iss`) for `user`, for `aud`, valid 10 min.
pub(super) fn fed_user_token(key: &NodeKey, iss: &str, aud: &str, user: u64) -> String {
    token::mint(
        &key.server_key(),
        iss,
        aud,
        TokenType::FedUser,
        Some(user),
        600,
    )
    .unwrap()
    .0
}

/// The pair `pair_id` as `c` lists it (None if it is not listed).
pub(super) async fn pair_info(c: &mut Client, pair_id: &str) -> Option<ChannelPairInfo> {
    let pairs = list(c).await;
    pairs
        .into_iter()
        .find(|p| p.pair.as_ref().is_some_and(|p| p.pair_id == pair_id))
}

/// Every pair `c` is a member of (one page: tests have few).
pub(super) async fn list(c: &mut Client) -> Vec<ChannelPairInfo> {
    let page = c
        .list_channel_pairs(ListChannelPairsRequest {
            after_pair_id: String::new(),
            limit: 1000,
            ..Default::default()
        })
        .await
        .expect("list")
        .into_inner();
    assert!(!page.has_more);
    page.pairs
}

/// The pair's `member_refs` as sorted (homeserver, user) pairs.
pub(super) async fn refs(c: &mut Client, pair_id: &str) -> Vec<(String, u64)> {
    let info = pair_info(c, pair_id).await.expect("the pair is listed");
    let mut refs: Vec<(String, u64)> = info
        .member_refs
        .iter()
        .map(|r| (r.homeserver.clone(), r.user_id))
        .collect();
    refs.sort();
    refs
}

/// Sorted (homeserver, user) pairs.
pub(super) fn sorted(refs: &[(&str, u64)]) -> Vec<(String, u64)> {
    let mut v: Vec<(String, u64)> = refs.iter().map(|(h, u)| (h.to_string(), *u)).collect();
    v.sort();
    v
}

/// SendInvite of `user` of `homeserver` into `pair`.
pub(super) async fn send_invite(
    inviter: &mut Client,
    pair: &ChannelPair,
    user: u64,
    homeserver: &str,
    body: &[u8],
) -> Result<u64, Status> {
    inviter
        .send_invite(SendInviteRequest {
            pair_id: pair.pair_id.clone(),
            user_id: user,
            homeserver: homeserver.into(),
            invite: body.to_vec(),
            key_fingerprint: Vec::new(),
        })
        .await
        .map(|r| r.into_inner().invite_id)
}

/// alice of a opens a pair and invites bob of b (who posts a key on b first). Returns
/// alice's client at a, the pair and bob's client at a (a token from b's Federate).
pub(super) async fn shared_room(t: &Trio, alice: u64, bob: u64) -> (Client, ChannelPair, Client) {
    let mut on_a = t.a.client(alice).await;
    let pair = new_pair(&mut on_a).await;
    give_key(&mut t.b.client(bob).await).await;
    send_invite(&mut on_a, &pair, bob, "b.test", b"sealed for bob")
        .await
        .expect("invite bob of b");
    let bob_at_a = foreign_client(&t.b, bob, &t.a, "a.test").await;
    (on_a, pair, bob_at_a)
}
