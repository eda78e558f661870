//! Federation part 2 (DESIGN §9), invites across homeservers: real secretd processes a, b
//! and c with each other's keys pinned; a is the pair's homeserver.
//!
//! - alice of a invites bob of b: the invite reaches bob's open Subscribe on b live and
//!   his FetchInvites on b, with both homeservers named; a retry is the same invite,
//!   once; `member_refs` names bob of b while `members` stays local; an invitee of b
//!   without a key, a `key_fingerprint` that is not the invitee's current key, and an
//!   inviter who is not a member are refused with nothing delivered; with b down the
//!   invite is UNAVAILABLE naming b and changes nothing;
//! - bob of b, a member, invites carol of c (and a user of a) into a's pair at a: carol's
//!   invite on c says it is from bob of b for a pair of a, and carol reads the pair at a.
//!
//! The three-node harness and shared helpers are in `members.rs`.

use secretd::proto::{
    FetchInvitesRequest, FetchKeyRequest, PostKeyRequest, ReceivedInvite, SendInviteRequest,
    SubscribeRequest,
};
use tonic::Code;

use super::harness::{foreign_client, pair_info, refs, send_invite, shared_room, sorted, trio};
use crate::common::*;

both_backends!(
    invite_a_user_of_b_end_to_end,
    a_member_of_b_invites_a_user_of_c,
);

/// Every invite of the client's user, oldest first.
async fn inbox(c: &mut Client) -> Vec<ReceivedInvite> {
    let page = c
        .fetch_invites(FetchInvitesRequest {
            after_invite_id: 0,
            limit: 1000,
        })
        .await
        .expect("fetch invites")
        .into_inner();
    assert!(!page.has_more);
    page.invites
}

/// An invite's fields but its time, for comparing the live one with the stored one.
fn summary(i: &ReceivedInvite) -> (u64, String, u64, String, String, Vec<u8>) {
    (
        i.invite_id,
        i.pair.as_ref().expect("pair").pair_id.clone(),
        i.from_user,
        i.from_homeserver.clone(),
        i.pair_homeserver.clone(),
        i.invite.clone(),
    )
}

async fn invite_a_user_of_b_end_to_end(backend: Backend) {
    let t = trio(&backend).await;
    let (alice, bob) = (random_user(), random_user());
    let mut on_a = t.a.client(alice).await;
    let pair = new_pair(&mut on_a).await;
    let mut bob_on_b = t.b.client(bob).await;
    let posted = bob_on_b
        .post_key(PostKeyRequest {
            key_data: key_pem(1),
        })
        .await
        .unwrap()
        .into_inner();
    let fp = on_a
        .fetch_key(FetchKeyRequest {
            user_id: bob,
            homeserver: "b.test".into(),
            known_tree_size: 0,
        })
        .await
        .unwrap()
        .into_inner()
        .current_key
        .unwrap()
        .fingerprint;
    assert_eq!(fp, posted.fingerprint);

    // Bob is online on b before the invite is sent.
    let mut live = Subscription::subscribe(
        &mut bob_on_b,
        SubscribeRequest {
            invites_after: Some(0),
            ..Default::default()
        },
    )
    .await
    .unwrap();
    let sealed = b"sealed to bob's key".to_vec();
    let request = SendInviteRequest {
        pair_id: pair.pair_id.clone(),
        user_id: bob,
        homeserver: "b.test".into(),
        invite: sealed.clone(),
        key_fingerprint: fp.clone(),
    };
    let invite_id = on_a
        .send_invite(request.clone())
        .await
        .unwrap()
        .into_inner()
        .invite_id;
    let Event::Invite(got) = live.next().await else {
        panic!("expected bob's invite on his subscription at b")
    };
    assert_eq!(got.pair.as_ref(), Some(&pair));
    let expected = (
        invite_id,
        pair.pair_id.clone(),
        alice,
        "a.test".to_string(),
        "a.test".to_string(),
        sealed.clone(),
    );
    assert_eq!(summary(&got), expected);
    assert!(got.sent_at.is_some_and(|at| at.seconds > 1_700_000_000));
    let stored = inbox(&mut bob_on_b).await;
    assert_eq!(stored.len(), 1, "{stored:?}");
    assert_eq!(stored[0].pair.as_ref(), Some(&pair));
    assert_eq!(summary(&stored[0]), expected);

    // A retry is the same invite, delivered once.
    let again = on_a.send_invite(request).await.unwrap().into_inner();
    assert_eq!(again.invite_id, invite_id);
    assert_eq!(inbox(&mut bob_on_b).await.len(), 1);
    assert!(live.quiet_for(300).await, "the retry is not pushed again");
    drop(live);

    // At a: bob of b is a member; `members` lists local members only.
    let info = pair_info(&mut on_a, &pair.pair_id).await.unwrap();
    assert_eq!((info.owner, info.owner_homeserver.as_str()), (alice, ""));
    assert_eq!(info.members, vec![alice]);
    let members = sorted(&[("", alice), ("b.test", bob)]);
    assert_eq!(refs(&mut on_a, &pair.pair_id).await, members);

    // An invitee of b without a key.
    let keyless = random_user();
    expect_code(
        send_invite(&mut on_a, &pair, keyless, "b.test", b"to no key").await,
        Code::FailedPrecondition,
    );
    assert!(inbox(&mut t.b.client(keyless).await).await.is_empty());
    assert_eq!(refs(&mut on_a, &pair.pair_id).await, members);

    // A fingerprint that is not the invitee's current key (carl's is key 2, fp is key 1).
    let carl = random_user();
    let mut carl_on_b = t.b.client(carl).await;
    carl_on_b
        .post_key(PostKeyRequest {
            key_data: key_pem(2),
        })
        .await
        .unwrap();
    let to_carl = |fingerprint: Vec<u8>| SendInviteRequest {
        pair_id: pair.pair_id.clone(),
        user_id: carl,
        homeserver: "b.test".into(),
        invite: b"sealed to the wrong key".to_vec(),
        key_fingerprint: fingerprint,
    };
    expect_code(
        on_a.send_invite(to_carl(fp.clone())).await,
        Code::FailedPrecondition,
    );
    assert!(inbox(&mut carl_on_b).await.is_empty());
    assert_eq!(refs(&mut on_a, &pair.pair_id).await, members);
    // With carl's own fingerprint the same invite goes through.
    let carl_fp = on_a
        .fetch_key(FetchKeyRequest {
            user_id: carl,
            homeserver: "b.test".into(),
            known_tree_size: 0,
        })
        .await
        .unwrap()
        .into_inner()
        .current_key
        .unwrap()
        .fingerprint;
    assert_ne!(carl_fp, fp);
    let carls = on_a
        .send_invite(to_carl(carl_fp))
        .await
        .unwrap()
        .into_inner()
        .invite_id;
    let got = inbox(&mut carl_on_b).await;
    assert_eq!(got.len(), 1);
    assert_eq!(got[0].invite_id, carls);
    let members = sorted(&[("", alice), ("b.test", bob), ("b.test", carl)]);
    assert_eq!(refs(&mut on_a, &pair.pair_id).await, members);

    // An inviter who is not a member of the pair.
    let (mallory, dave) = (random_user(), random_user());
    let mut dave_on_b = t.b.client(dave).await;
    give_key(&mut dave_on_b).await;
    expect_code(
        send_invite(
            &mut t.a.client(mallory).await,
            &pair,
            dave,
            "b.test",
            b"from a stranger",
        )
        .await,
        Code::PermissionDenied,
    );
    assert!(inbox(&mut dave_on_b).await.is_empty());
    assert_eq!(refs(&mut on_a, &pair.pair_id).await, members);

    // b is gone: UNAVAILABLE naming it, and nothing changes at a.
    drop((bob_on_b, carl_on_b, dave_on_b));
    t.b.kill().await;
    let st = expect_code(
        send_invite(&mut on_a, &pair, dave, "b.test", b"b is down").await,
        Code::Unavailable,
    );
    assert!(st.message().contains("b.test"), "{st:?}");
    assert_eq!(refs(&mut on_a, &pair.pair_id).await, members);
    // a itself is fine.
    post(&mut on_a, &pair.message_id, 1, b"still here")
        .await
        .unwrap();
}

/// Bob of b, a member of a's pair, invites carol of c (and erin of a) at a.
async fn a_member_of_b_invites_a_user_of_c(backend: Backend) {
    let t = trio(&backend).await;
    let (alice, bob, carol, erin) = (random_user(), random_user(), random_user(), random_user());
    let (mut on_a, pair, mut bob_at_a) = shared_room(&t, alice, bob).await;
    let mut carol_on_c = t.c.client(carol).await;
    carol_on_c
        .post_key(PostKeyRequest {
            key_data: key_pem(3),
        })
        .await
        .unwrap();

    let invite_id = send_invite(&mut bob_at_a, &pair, carol, "c.test", b"sealed to carol")
        .await
        .unwrap();
    let got = inbox(&mut carol_on_c).await;
    assert_eq!(got.len(), 1, "{got:?}");
    assert_eq!(got[0].pair.as_ref(), Some(&pair));
    assert_eq!(
        summary(&got[0]),
        (
            invite_id,
            pair.pair_id.clone(),
            bob,
            "b.test".to_string(),
            "a.test".to_string(),
            b"sealed to carol".to_vec(),
        )
    );

    // A user of a invited by bob of b: a local invite from a foreign inviter.
    let mut erin_on_a = t.a.client(erin).await;
    give_key(&mut erin_on_a).await;
    let erins = send_invite(&mut bob_at_a, &pair, erin, "", b"sealed to erin")
        .await
        .unwrap();
    let got = inbox(&mut erin_on_a).await;
    assert_eq!(got.len(), 1, "{got:?}");
    assert_eq!(got[0].pair.as_ref(), Some(&pair));
    assert_eq!(
        (
            got[0].invite_id,
            got[0].from_user,
            got[0].from_homeserver.as_str(),
            got[0].pair_homeserver.as_str()
        ),
        (erins, bob, "b.test", "")
    );

    assert_eq!(
        refs(&mut on_a, &pair.pair_id).await,
        sorted(&[("", alice), ("", erin), ("b.test", bob), ("c.test", carol)])
    );
    let info = pair_info(&mut on_a, &pair.pair_id).await.unwrap();
    let mut locals = vec![alice, erin];
    locals.sort();
    assert_eq!(info.members, locals);

    // Carol reads (and writes) the pair at a with a token from c.
    post(&mut on_a, &pair.message_id, 1, b"welcome")
        .await
        .unwrap();
    let mut carol_at_a = foreign_client(&t.c, carol, &t.a, "a.test").await;
    let seen = fetch_all(&mut carol_at_a, &pair.message_id).await;
    assert_eq!(seen.len(), 1);
    assert_eq!(
        (seen[0].sender, seen[0].sender_homeserver.as_str()),
        (alice, "")
    );
    assert_eq!(
        post(&mut carol_at_a, &pair.message_id, 2, b"hi from c")
            .await
            .unwrap(),
        2
    );
    let all = fetch_all(&mut bob_at_a, &pair.message_id).await;
    assert_eq!(
        all.iter()
            .map(|m| (m.sender, m.sender_homeserver.as_str()))
            .collect::<Vec<_>>(),
        vec![(alice, ""), (carol, "c.test")]
    );
}
