//! Faults and interleavings on Postgres, made deterministic: a removal held open in a
//! test transaction while an invite races it.

use crate::common::*;
use secretd::proto::*;
use tonic::Code;

/// A direct connection pool to the test database (not through secretd).
async fn direct_pool(b: &Backend) -> sqlx::PgPool {
    let Backend::Postgres(url) = b else {
        unreachable!("Postgres only")
    };
    sqlx::PgPool::connect(url).await.unwrap()
}

/// Polls until some backend waits for a lock held by the backend `pid`, or `done` says the
/// racing call has already answered (a call that never waits is the defect the caller's
/// assertions catch). Polling a condition, not sleeping through a window.
async fn until_blocked_by(pool: &sqlx::PgPool, pid: i32, done: impl Fn() -> bool) {
    for _ in 0..3000 {
        let waiting: i64 = sqlx::query_scalar(
            "SELECT count(*) FROM pg_stat_activity WHERE $1 = ANY(pg_blocking_pids(pid))",
        )
        .bind(pid)
        .fetch_one(pool)
        .await
        .unwrap();
        if waiting > 0 || done() {
            return;
        }
        tokio::time::sleep(std::time::Duration::from_millis(10)).await;
    }
    panic!("the racing call neither answered nor waited for the held transaction in 30 s");
}

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
    let mut removal = pool.begin().await.unwrap();
    let pid: i32 = sqlx::query_scalar("SELECT pg_backend_pid()")
        .fetch_one(&mut *removal)
        .await
        .unwrap();
    sqlx::query("SELECT stream_id FROM streams WHERE pair_id = $1 ORDER BY stream_id FOR UPDATE")
        .bind(pair_id)
        .execute(&mut *removal)
        .await
        .unwrap();
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
            })
            .await
        }
    });
    until_blocked_by(&pool, pid, || racing.is_finished()).await;
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
