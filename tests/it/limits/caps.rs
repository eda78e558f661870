//! Abuse of other users is bounded: members per pair, and invites pending from one
//! inviter to one invitee. Both are RESOURCE_EXHAUSTED naming the key, without a retry
//! delay (waiting does not help; the message says what does), and store nothing.

use secretd::proto::{self, ChannelPair, SendInviteRequest};
use tonic::{Code, Status};

use super::pairs_of;
use crate::common::*;

both_backends!(
    members_per_pair_are_capped,
    pending_invites_per_sender_are_capped
);

fn invite_req(pair: &ChannelPair, user: u64) -> SendInviteRequest {
    SendInviteRequest {
        pair_id: pair.pair_id.clone(),
        user_id: user,
        homeserver: String::new(),
        invite: b"sealed invite".to_vec(),
        ..Default::default()
    }
}

async fn send(c: &mut Client, pair: &ChannelPair, user: u64) -> Result<u64, Status> {
    c.send_invite(invite_req(pair, user))
        .await
        .map(|r| r.into_inner().invite_id)
}

/// A RESOURCE_EXHAUSTED for a cap: names `key`, no retry delay.
#[track_caller]
fn capped(result: Result<u64, Status>, key: &str) {
    let status = expect_code(result, Code::ResourceExhausted);
    assert!(status.message().contains(key), "names {key}: {status:?}");
    assert!(
        status.metadata().get("retry-after-ms").is_none(),
        "{status:?}"
    );
}

async fn members(c: &mut Client, pair: &ChannelPair) -> Vec<u64> {
    let info = pairs_of(c)
        .await
        .into_iter()
        .find(|p| p.pair.as_ref() == Some(pair))
        .expect("a member sees the pair");
    let mut m = info.members;
    m.sort();
    m
}

async fn invite_ids(c: &mut Client) -> Vec<u64> {
    c.fetch_invites(proto::FetchInvitesRequest::default())
        .await
        .unwrap()
        .into_inner()
        .invites
        .iter()
        .map(|i| i.invite_id)
        .collect()
}

/// A user with a public key, and their client.
async fn keyed_user(server: &TestServer) -> (u64, Client) {
    let u = random_user();
    let mut c = server.client(u).await;
    give_key(&mut c).await;
    (u, c)
}

async fn members_per_pair_are_capped(b: Backend) {
    let server = TestServer::start_with(b, |s| s.max_members_per_pair = 3).await;
    let (owner, mut co) = keyed_user(&server).await;
    let pair = new_pair(&mut co).await;
    let mut users = Vec::new();
    for _ in 0..3 {
        users.push(keyed_user(&server).await);
    }
    send(&mut co, &pair, users[0].0).await.unwrap();
    send(&mut co, &pair, users[1].0).await.unwrap();
    // Full: a fourth member is refused, and nothing of the invite is stored.
    capped(
        send(&mut co, &pair, users[2].0).await,
        "max_members_per_pair",
    );
    let (outsider, mut c_out) = (users[2].0, users[2].1.clone());
    assert!(invite_ids(&mut c_out).await.is_empty());
    let mut expected = vec![owner, users[0].0, users[1].0];
    expected.sort();
    assert_eq!(members(&mut co, &pair).await, expected);
    // Invites to existing members (their other devices) add nobody, so they still pass.
    send(&mut co, &pair, users[0].0).await.unwrap();
    send(&mut co, &pair, owner).await.unwrap();
    // A member leaves: there is room again, and the outsider's first invite has id 1.
    users[1]
        .1
        .leave_channel_pair(proto::LeaveChannelPairRequest {
            pair_id: pair.pair_id.clone(),
        })
        .await
        .unwrap();
    assert_eq!(send(&mut co, &pair, outsider).await.unwrap(), 1);
    assert_eq!(invite_ids(&mut c_out).await, [1]);
    server.stop().await;
}

async fn pending_invites_per_sender_are_capped(b: Backend) {
    let server = TestServer::start_with(b, |s| s.max_pending_invites_per_sender = 2).await;
    let (x, mut cx) = keyed_user(&server).await;
    let (y, mut cy) = keyed_user(&server).await;
    let (_, mut cz) = keyed_user(&server).await;
    let mut pairs = Vec::new();
    for _ in 0..3 {
        pairs.push(new_pair(&mut cx).await);
    }
    assert_eq!(send(&mut cx, &pairs[0], y).await.unwrap(), 1);
    assert_eq!(send(&mut cx, &pairs[1], y).await.unwrap(), 2);
    // X has two invites pending to Y: a third is refused and stores nothing.
    capped(
        send(&mut cx, &pairs[2], y).await,
        "max_pending_invites_per_sender",
    );
    assert_eq!(invite_ids(&mut cy).await, [1, 2]);
    assert_eq!(
        pairs_of(&mut cy).await.len(),
        2,
        "not made a member of the third pair"
    );
    // A re-invite into a pair Y is in counts too.
    capped(
        send(&mut cx, &pairs[0], y).await,
        "max_pending_invites_per_sender",
    );
    // The cap is per inviter: someone else may still invite Y; and X's self-invites pass.
    let theirs = new_pair(&mut cz).await;
    assert_eq!(send(&mut cz, &theirs, y).await.unwrap(), 3);
    for p in &pairs {
        send(&mut cx, p, x).await.unwrap();
    }
    // Y sheds X's invites by leaving a pair: X may invite Y once more.
    cy.leave_channel_pair(proto::LeaveChannelPairRequest {
        pair_id: pairs[0].pair_id.clone(),
    })
    .await
    .unwrap();
    assert_eq!(send(&mut cx, &pairs[2], y).await.unwrap(), 4);
    capped(
        send(&mut cx, &pairs[0], y).await,
        "max_pending_invites_per_sender",
    );
    assert_eq!(invite_ids(&mut cy).await, [1, 2, 3, 4]);
    server.stop().await;
}
