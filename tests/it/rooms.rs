//! Channel pairs, membership and invites, on SQLite and Postgres.

use crate::common::*;
use secretd::proto::*;
use tonic::Code;

both_backends!(
    a_new_pair_belongs_to_its_creator,
    leaving_and_ownership_passing_on,
    removal_rules,
    authorization_matrix,
    unknown_ids_look_like_foreign_ids,
);

async fn list(c: &mut Client) -> Vec<ChannelPairInfo> {
    c.list_channel_pairs(ListChannelPairsRequest::default())
        .await
        .unwrap()
        .into_inner()
        .pairs
}

fn uuid_ok(s: &str) -> bool {
    s.len() == 36 && uuid::Uuid::try_parse(s).is_ok_and(|u| u.hyphenated().to_string() == s)
}

async fn a_new_pair_belongs_to_its_creator(b: Backend) {
    let s = TestServer::start(b).await;
    let owner = random_user();
    let mut c = s.client(owner).await;
    let p1 = new_pair(&mut c).await;
    let p2 = new_pair(&mut c).await;
    for id in [&p1.pair_id, &p1.message_id, &p1.state_id] {
        assert!(uuid_ok(id), "{id}");
    }
    assert!(p1.pair_id != p1.message_id && p1.message_id != p1.state_id);
    let pairs = list(&mut c).await;
    assert_eq!(pairs.len(), 2);
    assert_eq!(pairs[0].pair.as_ref(), Some(&p1), "oldest first");
    assert_eq!(pairs[1].pair.as_ref(), Some(&p2));
    assert_eq!(pairs[0].owner, owner);
    assert_eq!(pairs[0].members, vec![owner]);
    // Both streams take posts independently.
    assert_eq!(post(&mut c, &p1.message_id, 1, b"m").await.unwrap(), 1);
    assert_eq!(post(&mut c, &p1.state_id, 1, b"s").await.unwrap(), 1);
    // Someone else sees nothing.
    let mut other = s.client(random_user()).await;
    assert!(list(&mut other).await.is_empty());
    s.stop().await;
}

async fn leaving_and_ownership_passing_on(b: Backend) {
    let s = TestServer::start(b).await;
    let (a, bb, c) = (random_user(), random_user(), random_user());
    let mut ca = s.client(a).await;
    let mut cb = s.client(bb).await;
    let mut cc = s.client(c).await;
    let pair = new_pair(&mut ca).await;
    invite(&mut ca, &mut cb, &pair, bb).await;
    invite(&mut ca, &mut cc, &pair, c).await;
    post(&mut ca, &pair.message_id, 1, b"hello").await.unwrap();
    // B leaves: loses access at once.
    cb.leave_channel_pair(LeaveChannelPairRequest {
        pair_id: pair.pair_id.clone(),
    })
    .await
    .unwrap();
    expect_code(
        post(&mut cb, &pair.message_id, 2, b"x").await,
        Code::PermissionDenied,
    );
    expect_code(
        cb.fetch_messages(FetchMessagesRequest {
            stream_id: pair.message_id.clone(),
            ..Default::default()
        })
        .await,
        Code::PermissionDenied,
    );
    assert!(list(&mut cb).await.is_empty());
    expect_code(
        cb.leave_channel_pair(LeaveChannelPairRequest {
            pair_id: pair.pair_id.clone(),
        })
        .await,
        Code::PermissionDenied,
    );
    // The owner leaves: ownership passes to the longest-standing member (C, since B left).
    ca.leave_channel_pair(LeaveChannelPairRequest {
        pair_id: pair.pair_id.clone(),
    })
    .await
    .unwrap();
    let pairs = list(&mut cc).await;
    assert_eq!(pairs[0].owner, c);
    assert_eq!(pairs[0].members, vec![c]);
    // The new owner can remove, the old one cannot do anything.
    invite(&mut cc, &mut cb, &pair, bb).await;
    cc.remove_member(RemoveMemberRequest {
        pair_id: pair.pair_id.clone(),
        user_id: bb,
        ..Default::default()
    })
    .await
    .unwrap();
    expect_code(
        ca.remove_member(RemoveMemberRequest {
            pair_id: pair.pair_id.clone(),
            user_id: c,
            ..Default::default()
        })
        .await,
        Code::PermissionDenied,
    );
    // The history stays for those still in.
    assert_eq!(fetch_all(&mut cc, &pair.message_id).await.len(), 1);
    // The last member leaves: nobody can see the pair any more.
    cc.leave_channel_pair(LeaveChannelPairRequest {
        pair_id: pair.pair_id.clone(),
    })
    .await
    .unwrap();
    assert!(list(&mut cc).await.is_empty());
    expect_code(
        post(&mut cc, &pair.message_id, 2, b"x").await,
        Code::PermissionDenied,
    );
    expect_code(
        cc.leave_channel_pair(LeaveChannelPairRequest {
            pair_id: "zz".into(),
        })
        .await,
        Code::InvalidArgument,
    );
    s.stop().await;
}

async fn removal_rules(b: Backend) {
    let s = TestServer::start(b).await;
    let (a, bb, c) = (random_user(), random_user(), random_user());
    let mut ca = s.client(a).await;
    let mut cb = s.client(bb).await;
    let mut cc = s.client(c).await;
    let pair = new_pair(&mut ca).await;
    invite(&mut ca, &mut cb, &pair, bb).await;
    invite(&mut ca, &mut cc, &pair, c).await;
    let rm = |user: u64| RemoveMemberRequest {
        pair_id: pair.pair_id.clone(),
        user_id: user,
        ..Default::default()
    };
    // Only the owner removes.
    let st = expect_code(cb.remove_member(rm(c)).await, Code::PermissionDenied);
    assert!(st.message().contains("owner"));
    expect_code(ca.remove_member(rm(a)).await, Code::InvalidArgument);
    expect_code(ca.remove_member(rm(random_user())).await, Code::NotFound);
    expect_code(ca.remove_member(rm(0)).await, Code::InvalidArgument);
    // C is still a member after all that.
    assert!(
        post(&mut cc, &pair.message_id, 1, b"still here")
            .await
            .is_ok()
    );
    ca.remove_member(rm(c)).await.unwrap();
    expect_code(
        post(&mut cc, &pair.message_id, 2, b"gone").await,
        Code::PermissionDenied,
    );
    expect_code(
        cc.fetch_messages(FetchMessagesRequest {
            stream_id: pair.state_id.clone(),
            ..Default::default()
        })
        .await,
        Code::PermissionDenied,
    );
    expect_code(ca.remove_member(rm(c)).await, Code::NotFound);
    // C's device can tell its user what happened: who removed them and when; nothing
    // about who else is in the pair.
    let before_ms = now_ms();
    let departed = list_with_departed(&mut cc, "").await;
    assert_eq!(departed.len(), 1);
    assert_eq!(departed[0].pair.as_ref(), Some(&pair));
    let d = departed[0].departed.clone().expect("departed");
    assert_eq!(
        d.removed_by,
        Some(UserRef {
            homeserver: String::new(),
            user_id: a
        })
    );
    let at = d.departed_at.expect("time");
    let at_ms = at.seconds * 1000 + i64::from(at.nanos) / 1_000_000;
    assert!(at_ms <= before_ms && at_ms > before_ms - 60_000, "{at:?}");
    assert_eq!(
        (
            departed[0].owner,
            &departed[0].members,
            &departed[0].member_refs
        ),
        (0, &vec![], &vec![])
    );
    assert!(list(&mut cc).await.is_empty(), "not listed unless asked");
    assert!(
        list_with_departed(&mut cc, &pair.pair_id).await.is_empty(),
        "a departed pair is a cursor when departed pairs are listed"
    );
    // B leaves on their own: no remover.
    cb.leave_channel_pair(LeaveChannelPairRequest {
        pair_id: pair.pair_id.clone(),
    })
    .await
    .unwrap();
    let left = list_with_departed(&mut cb, "").await;
    assert_eq!(left.len(), 1);
    let d = left[0].departed.clone().expect("departed");
    assert_eq!(d.removed_by, None);
    // Re-invited, C is back, and the pair is listed as theirs again.
    invite(&mut ca, &mut cc, &pair, c).await;
    assert!(post(&mut cc, &pair.message_id, 2, b"back").await.is_ok());
    let back = list_with_departed(&mut cc, "").await;
    assert_eq!(back.len(), 1);
    assert_eq!(back[0].departed, None);
    assert_eq!(back[0].owner, a);
    s.stop().await;
}

async fn list_with_departed(c: &mut Client, after: &str) -> Vec<ChannelPairInfo> {
    c.list_channel_pairs(ListChannelPairsRequest {
        after_pair_id: after.into(),
        include_departed: true,
        ..Default::default()
    })
    .await
    .unwrap()
    .into_inner()
    .pairs
}

fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as i64
}

/// Every pair- or stream-scoped RPC for one caller; returns each status code.
async fn pair_scoped_codes(
    c: &mut Client,
    pair: &ChannelPair,
    someone: u64,
) -> Vec<(&'static str, Code)> {
    let code = |r: Result<(), tonic::Status>| r.err().map_or(Code::Ok, |s| s.code());
    vec![
        (
            "SendInvite",
            code(
                c.send_invite(SendInviteRequest {
                    pair_id: pair.pair_id.clone(),
                    user_id: someone,
                    homeserver: String::new(),
                    invite: b"x".to_vec(),
                    ..Default::default()
                })
                .await
                .map(|_| ()),
            ),
        ),
        (
            "PostMessage(message)",
            code(post(c, &pair.message_id, 99, b"x").await.map(|_| ())),
        ),
        (
            "PostMessage(state)",
            code(post(c, &pair.state_id, 99, b"x").await.map(|_| ())),
        ),
        (
            "FetchMessages(message)",
            code(
                c.fetch_messages(FetchMessagesRequest {
                    stream_id: pair.message_id.clone(),
                    ..Default::default()
                })
                .await
                .map(|_| ()),
            ),
        ),
        (
            "FetchMessages(state, backwards)",
            code(
                c.fetch_messages(FetchMessagesRequest {
                    stream_id: pair.state_id.clone(),
                    before_event_id: 5,
                    ..Default::default()
                })
                .await
                .map(|_| ()),
            ),
        ),
        (
            "RemoveMember",
            code(
                c.remove_member(RemoveMemberRequest {
                    pair_id: pair.pair_id.clone(),
                    user_id: someone,
                    ..Default::default()
                })
                .await
                .map(|_| ()),
            ),
        ),
        (
            "LeaveChannelPair",
            code(
                c.leave_channel_pair(LeaveChannelPairRequest {
                    pair_id: pair.pair_id.clone(),
                })
                .await
                .map(|_| ()),
            ),
        ),
    ]
}

async fn authorization_matrix(b: Backend) {
    let s = TestServer::start(b).await;
    let (owner, member, removed, stranger, departed_owner) = (
        random_user(),
        random_user(),
        random_user(),
        random_user(),
        random_user(),
    );
    let mut co = s.client(owner).await;
    let mut cm = s.client(member).await;
    let mut cr = s.client(removed).await;
    let mut cs = s.client(stranger).await;
    let mut cd = s.client(departed_owner).await;
    let pair = new_pair(&mut co).await;
    invite(&mut co, &mut cm, &pair, member).await;
    invite(&mut co, &mut cr, &pair, removed).await;
    co.remove_member(RemoveMemberRequest {
        pair_id: pair.pair_id.clone(),
        user_id: removed,
        ..Default::default()
    })
    .await
    .unwrap();
    // A second pair whose owner leaves.
    let pair2 = new_pair(&mut cd).await;
    invite(&mut cd, &mut cm, &pair2, member).await;
    cd.leave_channel_pair(LeaveChannelPairRequest {
        pair_id: pair2.pair_id.clone(),
    })
    .await
    .unwrap();
    give_key(&mut cs).await;

    for (who, client, p) in [
        ("non-member", &mut cs, &pair),
        ("removed member", &mut cr, &pair),
        ("departed owner", &mut cd, &pair2),
    ] {
        for (rpc, code) in pair_scoped_codes(client, p, member).await {
            assert_eq!(code, Code::PermissionDenied, "{who} calling {rpc}");
        }
        assert!(
            list(client)
                .await
                .iter()
                .all(|i| i.pair.as_ref() != Some(p)),
            "{who} lists the pair"
        );
    }
    // Nothing they tried changed anything: the members still work, history is empty.
    assert!(fetch_all(&mut cm, &pair.message_id).await.is_empty());
    assert!(fetch_all(&mut cm, &pair2.state_id).await.is_empty());
    let info = list(&mut cm).await;
    assert_eq!(info.len(), 2);
    let mut expected = vec![owner, member];
    expected.sort();
    assert_eq!(info[0].members, expected);
    assert_eq!(
        info[1].owner, member,
        "ownership of pair2 passed to the member"
    );
    s.stop().await;
}

async fn unknown_ids_look_like_foreign_ids(b: Backend) {
    let s = TestServer::start(b).await;
    let mut owner = s.client(random_user()).await;
    let mut stranger = s.client(random_user()).await;
    let real = new_pair(&mut owner).await;
    let fake = ChannelPair {
        message_id: uuid::Uuid::new_v4().to_string(),
        state_id: uuid::Uuid::new_v4().to_string(),
        pair_id: uuid::Uuid::new_v4().to_string(),
    };
    let on_real = pair_scoped_codes(&mut stranger, &real, 1).await;
    let on_fake = pair_scoped_codes(&mut stranger, &fake, 1).await;
    assert_eq!(on_real, on_fake);
    // Same message too.
    let a = post(&mut stranger, &real.message_id, 1, b"x")
        .await
        .unwrap_err();
    let b2 = post(&mut stranger, &fake.message_id, 1, b"x")
        .await
        .unwrap_err();
    assert_eq!(a.message(), b2.message());
    s.stop().await;
}
