//! Invites: durable, dense per invitee, paged oldest first; every rejection, on SQLite
//! and Postgres.

use crate::common::*;
use secretd::proto::*;
use tonic::Code;

both_backends!(
    invites_make_members_and_are_kept,
    invite_rejections,
    self_invites_work,
    invites_page_oldest_first,
);

async fn invites_make_members_and_are_kept(b: Backend) {
    let s = TestServer::start(b).await;
    let (a, bb) = (random_user(), random_user());
    let mut ca = s.client(a).await;
    let mut cb = s.client(bb).await;
    let pair = new_pair(&mut ca).await;
    give_key(&mut cb).await;
    let sealed = vec![0xabu8; 64 * 1024];
    let r = ca
        .send_invite(SendInviteRequest {
            pair_id: pair.pair_id.clone(),
            user_id: bb,
            homeserver: "localhost".into(),
            invite: sealed.clone(),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(r.invite_id, 1);
    // B is a member of both streams at once.
    assert!(post(&mut cb, &pair.message_id, 1, b"hi").await.is_ok());
    assert!(post(&mut cb, &pair.state_id, 1, b"trust").await.is_ok());
    let pairs = list(&mut cb).await;
    assert_eq!(pairs.len(), 1);
    assert_eq!(pairs[0].owner, a);
    let mut members = vec![a, bb];
    members.sort();
    assert_eq!(pairs[0].members, members);
    // The invite is durable: fetched twice, identical.
    for _ in 0..2 {
        let inv = cb
            .fetch_invites(FetchInvitesRequest {
                after_invite_id: 0,
                limit: 0,
            })
            .await
            .unwrap()
            .into_inner();
        assert!(!inv.has_more);
        assert_eq!(inv.invites.len(), 1);
        let i = &inv.invites[0];
        assert_eq!(i.invite_id, 1);
        assert_eq!(i.pair.as_ref(), Some(&pair));
        assert_eq!(i.from_user, a);
        assert_eq!(i.invite, sealed);
        assert!(i.sent_at.unwrap().seconds > 1_700_000_000);
    }
    // The inviter's own invite list is untouched.
    let mine = ca
        .fetch_invites(FetchInvitesRequest::default())
        .await
        .unwrap()
        .into_inner();
    assert!(mine.invites.is_empty());
    // Invites survive a restart.
    drop((ca, cb));
    let s = s.restart().await;
    let mut cb = s.client(bb).await;
    let inv = cb
        .fetch_invites(FetchInvitesRequest::default())
        .await
        .unwrap()
        .into_inner();
    assert_eq!(inv.invites.len(), 1);
    s.stop().await;
}

async fn invite_rejections(b: Backend) {
    let s = TestServer::start(b).await;
    let (a, keyless, outsider) = (random_user(), random_user(), random_user());
    let mut ca = s.client(a).await;
    let mut co = s.client(outsider).await;
    let pair = new_pair(&mut ca).await;
    let req = |pair_id: &str, user: u64, hs: &str, invite: Vec<u8>| SendInviteRequest {
        pair_id: pair_id.into(),
        user_id: user,
        homeserver: hs.into(),
        invite,
        ..Default::default()
    };
    // The invitee needs a public key.
    let st = expect_code(
        ca.send_invite(req(&pair.pair_id, keyless, "", b"x".to_vec()))
            .await,
        Code::FailedPrecondition,
    );
    assert!(
        st.message().contains(&keyless.to_string()),
        "{}",
        st.message()
    );
    let mut ck = s.client(keyless).await;
    assert!(
        list(&mut ck).await.is_empty(),
        "a refused invite adds no member"
    );
    expect_code(
        ca.send_invite(req(&pair.pair_id, keyless, "", vec![]))
            .await,
        Code::InvalidArgument,
    );
    give_key(&mut ck).await;
    expect_code(
        ca.send_invite(req(&pair.pair_id, keyless, "", vec![1; 64 * 1024 + 1]))
            .await,
        Code::InvalidArgument,
    );
    expect_code(
        ca.send_invite(req(&pair.pair_id, 0, "", b"x".to_vec()))
            .await,
        Code::InvalidArgument,
    );
    expect_code(
        ca.send_invite(req("not-a-uuid", keyless, "", b"x".to_vec()))
            .await,
        Code::InvalidArgument,
    );
    expect_code(
        ca.send_invite(req(
            &pair.pair_id.to_uppercase(),
            keyless,
            "",
            b"x".to_vec(),
        ))
        .await,
        Code::InvalidArgument,
    );
    let st = expect_code(
        ca.send_invite(req(
            &pair.pair_id,
            keyless,
            "elsewhere.example",
            b"x".to_vec(),
        ))
        .await,
        Code::FailedPrecondition,
    );
    // Federation is off on this server: DESIGN §9's FAILED_PRECONDITION, saying so.
    assert!(st.message().contains("federation.enabled"), "{st:?}");
    // Only members invite.
    give_key(&mut co).await;
    expect_code(
        co.send_invite(req(&pair.pair_id, outsider, "", b"x".to_vec()))
            .await,
        Code::PermissionDenied,
    );
    assert!(list(&mut co).await.is_empty());
    // Nothing of the refused invites was stored; a good one still works.
    assert!(
        ck.fetch_invites(FetchInvitesRequest::default())
            .await
            .unwrap()
            .into_inner()
            .invites
            .is_empty()
    );
    let ok = ca
        .send_invite(req(&pair.pair_id, keyless, "", b"x".to_vec()))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(ok.invite_id, 1);
    s.stop().await;
}

async fn self_invites_work(b: Backend) {
    let s = TestServer::start(b).await;
    let a = random_user();
    let mut ca = s.client(a).await;
    let pair = new_pair(&mut ca).await;
    give_key(&mut ca).await;
    let r = ca
        .send_invite(SendInviteRequest {
            pair_id: pair.pair_id.clone(),
            user_id: a,
            homeserver: String::new(),
            invite: b"keys for my laptop".to_vec(),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(r.invite_id, 1);
    // A second device of the same user finds it.
    let mut laptop = s.client(a).await;
    let inv = laptop
        .fetch_invites(FetchInvitesRequest::default())
        .await
        .unwrap()
        .into_inner();
    assert_eq!(inv.invites[0].invite, b"keys for my laptop");
    assert_eq!(inv.invites[0].from_user, a);
    let pairs = list(&mut laptop).await;
    assert_eq!(pairs.len(), 1);
    assert_eq!(pairs[0].members, vec![a]);
    s.stop().await;
}

async fn invites_page_oldest_first(b: Backend) {
    let s = TestServer::start(b).await;
    let (a, bb) = (random_user(), random_user());
    let mut ca = s.client(a).await;
    let mut cb = s.client(bb).await;
    give_key(&mut cb).await;
    let mut pairs = Vec::new();
    for i in 0..25u8 {
        let p = new_pair(&mut ca).await;
        let r = ca
            .send_invite(SendInviteRequest {
                pair_id: p.pair_id.clone(),
                user_id: bb,
                homeserver: String::new(),
                invite: vec![i],
                ..Default::default()
            })
            .await
            .unwrap()
            .into_inner();
        assert_eq!(r.invite_id, i as u64 + 1, "dense per invitee");
        pairs.push(p);
    }
    let mut seen = Vec::new();
    let mut after = 0;
    let mut pages = Vec::new();
    loop {
        let page = cb
            .fetch_invites(FetchInvitesRequest {
                after_invite_id: after,
                limit: 10,
            })
            .await
            .unwrap()
            .into_inner();
        pages.push((page.invites.len(), page.has_more));
        after = page.invites.last().map_or(after, |i| i.invite_id);
        seen.extend(page.invites);
        if !pages.last().unwrap().1 {
            break;
        }
    }
    assert_eq!(pages, vec![(10, true), (10, true), (5, false)]);
    let bodies: Vec<u8> = seen.iter().map(|i| i.invite[0]).collect();
    assert_eq!(bodies, (0..25).collect::<Vec<u8>>());
    assert_eq!(
        seen.iter()
            .map(|i| i.pair.clone().unwrap())
            .collect::<Vec<_>>(),
        pairs
    );
    // limit 0 means 100; a huge limit is clamped, not refused.
    let all = cb
        .fetch_invites(FetchInvitesRequest {
            after_invite_id: 0,
            limit: 0,
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!((all.invites.len(), all.has_more), (25, false));
    let all = cb
        .fetch_invites(FetchInvitesRequest {
            after_invite_id: 0,
            limit: u32::MAX,
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(all.invites.len(), 25);
    let none = cb
        .fetch_invites(FetchInvitesRequest {
            after_invite_id: 25,
            limit: 10,
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!((none.invites.len(), none.has_more), (0, false));
    let none = cb
        .fetch_invites(FetchInvitesRequest {
            after_invite_id: u64::MAX,
            limit: 10,
        })
        .await
        .unwrap()
        .into_inner();
    assert!(none.invites.is_empty());
    s.stop().await;
}

async fn list(c: &mut Client) -> Vec<ChannelPairInfo> {
    c.list_channel_pairs(ListChannelPairsRequest::default())
        .await
        .unwrap()
        .into_inner()
        .pairs
}
