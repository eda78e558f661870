//! Status messages avoid `#` and `%`: @grpc/grpc-js decodes `grpc-message` with
//! `decodeURI`, which leaves `%23` and `%25` undecoded, so a client would read `PKCS%231`.

use crate::common::*;
use secretd::proto::{FetchMessagesRequest, PostKeyRequest};
use tonic::Code;

#[track_caller]
fn assert_plain(st: &tonic::Status) {
    let msg = st.message();
    assert!(
        !msg.contains('#') && !msg.contains('%'),
        "{:?}: {msg:?}",
        st.code()
    );
}

#[tokio::test]
async fn key_and_id_errors_carry_neither_hash_nor_percent() {
    let s = TestServer::start(Backend::Sqlite).await;
    let mut c = s.client(random_user()).await;
    // Not a key at all: the message lists the accepted encodings.
    let st = expect_code(
        c.post_key(PostKeyRequest {
            key_data: b"-----BEGIN PRIVATE KEY-----\nAAAA\n-----END PRIVATE KEY-----\n".to_vec(),
        })
        .await,
        Code::InvalidArgument,
    );
    assert!(st.message().contains("PKCS"), "{st:?}");
    assert_plain(&st);
    // Too small, wrong exponent.
    for fixture in ["rsa2048.pub.pem", "rsa4096_e3.pub.pem"] {
        let st = expect_code(
            c.post_key(PostKeyRequest {
                key_data: fixture_bytes(fixture),
            })
            .await,
            Code::InvalidArgument,
        );
        assert_plain(&st);
    }
    // An id the client sent, echoed back, has them escaped.
    let st = expect_code(
        c.fetch_messages(FetchMessagesRequest {
            stream_id: "room#1 at 100%".into(),
            ..Default::default()
        })
        .await,
        Code::InvalidArgument,
    );
    assert!(st.message().contains("room"), "{st:?}");
    assert_plain(&st);
    // The server is still up.
    give_key(&mut c).await;
    s.stop().await;
}
