//! An invite racing the inviter's removal (Postgres), held at the decisive moment by a
//! test transaction.

use super::{direct_pool, hold_stream_rows, until_blocked_by};
use crate::common::*;
use secretd::proto::*;
use tonic::Code;

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn an_invite_racing_the_inviters_removal_is_refused() {
    let Some(b) = Backend::postgres() else { return };
    let s = TestServer::start(b.clone()).await;
    let (owner, inviter, invitee) = (random_user(), random_user(), random_user());
    let mut co = s.client(owner).await;
    let mut ci = s.client(inviter).await;
    let mut cv = s.client(invitee).await;
    give_key(&mut cv).await;
    let pair = new_pair(&mut co).await;
    invite(&mut co, &mut ci, &pair, inviter).await;
    let pair_id: uuid::Uuid = pair.pair_id.parse().unwrap();

    // The owner's removal of the inviter, caught just before its COMMIT: the same
    // statements RemoveMember runs, in a transaction this test holds open.
    let pool = direct_pool(&b).await;
    let (mut removal, pid) = hold_stream_rows(&pool, pair_id).await;
    sqlx::query("DELETE FROM members WHERE pair_id = $1 AND user_id = $2")
        .bind(pair_id)
        .bind(inviter as i64)
        .execute(&mut *removal)
        .await
        .unwrap();
    sqlx::query("UPDATE streams SET member_epoch = member_epoch + 1 WHERE pair_id = $1")
        .bind(pair_id)
        .execute(&mut *removal)
        .await
        .unwrap();

    // The inviter's SendInvite runs into it...
    let racing = tokio::spawn({
        let pair_id = pair.pair_id.clone();
        async move {
            ci.send_invite(SendInviteRequest {
                pair_id,
                user_id: invitee,
                homeserver: String::new(),
                invite: b"sealed".to_vec(),
                ..Default::default()
            })
            .await
        }
    });
    until_blocked_by(&pool, pid, 1, || racing.is_finished()).await;
    // ...and the removal commits first.
    removal.commit().await.unwrap();
    expect_code(racing.await.unwrap(), Code::PermissionDenied);

    // Nothing of the invite was written: the invitee is not a member and has no invite.
    let invites = cv
        .fetch_invites(FetchInvitesRequest::default())
        .await
        .unwrap()
        .into_inner()
        .invites;
    assert!(invites.is_empty(), "{invites:?}");
    expect_code(
        post(&mut cv, &pair.message_id, 1, b"x").await,
        Code::PermissionDenied,
    );
    // The server is consistent afterwards: the owner's own invite goes through.
    invite(&mut co, &mut cv, &pair, invitee).await;
    assert_eq!(post(&mut cv, &pair.message_id, 1, b"x").await.unwrap(), 1);
    pool.close().await;
    s.stop().await;
}
