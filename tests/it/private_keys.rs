//! PostPrivateKey and FetchPrivateKey: versions, compare-and-set, limits, isolation, on
//! SQLite and Postgres.

use crate::common::*;
use secretd::proto::{FetchPrivateKeyRequest, PostPrivateKeyRequest};
use tonic::Code;

both_backends!(
    private_key_versions_and_compare_and_set,
    private_key_size_limits,
    private_keys_are_per_user,
    concurrent_compare_and_set_has_one_winner,
);

async fn private_key_versions_and_compare_and_set(b: Backend) {
    let s = TestServer::start(b).await;
    let mut c = s.client(random_user()).await;
    let st = expect_code(
        c.fetch_private_key(FetchPrivateKeyRequest {}).await,
        Code::NotFound,
    );
    assert!(st.message().contains("PostPrivateKey"));
    // A compare against a version that does not exist yet says there is none.
    let st = expect_code(c.post_private_key(blob(b"x", Some(5))).await, Code::Aborted);
    assert!(
        st.message().contains("no private key is stored yet"),
        "{}",
        st.message()
    );
    assert_eq!(
        c.post_private_key(blob(b"v1", Some(0)))
            .await
            .unwrap()
            .into_inner()
            .version,
        1
    );
    let f = c
        .fetch_private_key(FetchPrivateKeyRequest {})
        .await
        .unwrap()
        .into_inner();
    assert_eq!((f.key_data.as_slice(), f.version), (&b"v1"[..], 1));
    // Unconditional store.
    assert_eq!(
        c.post_private_key(blob(b"v2", None))
            .await
            .unwrap()
            .into_inner()
            .version,
        2
    );
    // Compare-and-set that wins.
    assert_eq!(
        c.post_private_key(blob(b"v3", Some(2)))
            .await
            .unwrap()
            .into_inner()
            .version,
        3
    );
    // Stale compare-and-set loses and names the current version.
    let st = expect_code(
        c.post_private_key(blob(b"stale", Some(2))).await,
        Code::Aborted,
    );
    assert!(st.message().contains("version 3"), "{}", st.message());
    let st = expect_code(
        c.post_private_key(blob(b"stale", Some(0))).await,
        Code::Aborted,
    );
    assert!(st.message().contains("version 3"), "{}", st.message());
    let f = c
        .fetch_private_key(FetchPrivateKeyRequest {})
        .await
        .unwrap()
        .into_inner();
    assert_eq!((f.key_data.as_slice(), f.version), (&b"v3"[..], 3));
    s.stop().await;
}

async fn private_key_size_limits(b: Backend) {
    let s = TestServer::start(b).await;
    let mut c = s.client(random_user()).await;
    expect_code(
        c.post_private_key(blob(b"", None)).await,
        Code::InvalidArgument,
    );
    let max = vec![7u8; 64 * 1024];
    assert_eq!(
        c.post_private_key(blob(&max, None))
            .await
            .unwrap()
            .into_inner()
            .version,
        1
    );
    let st = expect_code(
        c.post_private_key(blob(&vec![7u8; 64 * 1024 + 1], None))
            .await,
        Code::InvalidArgument,
    );
    assert!(st.message().contains("65536"), "{}", st.message());
    let f = c
        .fetch_private_key(FetchPrivateKeyRequest {})
        .await
        .unwrap()
        .into_inner();
    assert_eq!(f.key_data, max);
    assert_eq!(f.version, 1);
    s.stop().await;
}

async fn private_keys_are_per_user(b: Backend) {
    let s = TestServer::start(b).await;
    let mut alice = s.client(random_user()).await;
    let mut bob = s.client(random_user()).await;
    alice
        .post_private_key(blob(b"alice's secret", None))
        .await
        .unwrap();
    expect_code(
        bob.fetch_private_key(FetchPrivateKeyRequest {}).await,
        Code::NotFound,
    );
    // Bob's compare-and-set is against his own (absent) blob, not Alice's.
    assert_eq!(
        bob.post_private_key(blob(b"bob's", Some(0)))
            .await
            .unwrap()
            .into_inner()
            .version,
        1
    );
    let a = alice
        .fetch_private_key(FetchPrivateKeyRequest {})
        .await
        .unwrap()
        .into_inner();
    assert_eq!(a.key_data, b"alice's secret");
    let bb = bob
        .fetch_private_key(FetchPrivateKeyRequest {})
        .await
        .unwrap()
        .into_inner();
    assert_eq!(bb.key_data, b"bob's");
    s.stop().await;
}

async fn concurrent_compare_and_set_has_one_winner(b: Backend) {
    let s = TestServer::start(b).await;
    let user = random_user();
    let mut c = s.client(user).await;
    c.post_private_key(blob(b"base", None)).await.unwrap();
    let mut tasks = Vec::new();
    for i in 0..16u8 {
        let mut c = s.client(user).await;
        tasks.push(tokio::spawn(async move {
            c.post_private_key(blob(&[i], Some(1))).await
        }));
    }
    let mut wins = 0;
    for t in tasks {
        match t.await.unwrap() {
            Ok(r) => {
                assert_eq!(r.into_inner().version, 2);
                wins += 1;
            }
            Err(st) => assert_eq!(st.code(), Code::Aborted, "{st:?}"),
        }
    }
    assert_eq!(wins, 1);
    assert_eq!(
        c.fetch_private_key(FetchPrivateKeyRequest {})
            .await
            .unwrap()
            .into_inner()
            .version,
        2
    );
    s.stop().await;
}

fn blob(data: &[u8], expected: Option<u64>) -> PostPrivateKeyRequest {
    PostPrivateKeyRequest {
        key_data: data.to_vec(),
        expected_version: expected,
    }
}
