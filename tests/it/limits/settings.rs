//! The limits' config keys through their environment twins, on the real binary; bad
//! values are configuration errors (exit 2, naming the key).

use secretd::proto::{self, secret_service_client::SecretServiceClient};
use tonic::Code;

use super::throttled;
use crate::common::*;

#[tokio::test]
async fn limit_keys_have_environment_twins() {
    let dir = tempfile::tempdir().unwrap();
    let p = spawn_binary(
        &["serve", "--listen", "127.0.0.1:0"],
        &[
            ("SECRETD_JWT_SECRET", SECRET),
            ("SECRETD_RATE_PAIRS_PER_SEC", "0.5"),
            ("SECRETD_RATE_PAIRS_BURST", "1"),
            ("SECRETD_MAX_REQUEST_BYTES", "70000"),
        ],
        dir.path(),
    )
    .await;
    let channel = tonic::transport::Channel::from_shared(format!("http://{}", p.addr))
        .unwrap()
        .connect_lazy();
    let mut c = SecretServiceClient::with_interceptor(channel, Bearer(Some(token(3, 60))));
    let stream = new_pair(&mut c).await.message_id;
    let refused = c
        .generate_channel_pair(proto::GenerateChannelPairRequest {})
        .await
        .unwrap_err();
    let wait = throttled(&refused, "rate_pairs_per_sec");
    assert!(wait.as_millis() <= 2000, "{wait:?}");
    assert!(
        refused
            .message()
            .contains("0.5 per second after a burst of 1"),
        "{refused:?}"
    );
    // 64 KiB blobs still fit; 80,000 bytes are over the configured 70,000.
    assert_eq!(post(&mut c, &stream, 1, &[1; 64 * 1024]).await.unwrap(), 1);
    let status = expect_code(
        post(&mut c, &stream, 2, &[1; 80_000]).await,
        Code::ResourceExhausted,
    );
    assert!(status.message().contains("70000"), "{status:?}");
}

#[tokio::test]
async fn bad_limit_values_are_configuration_errors() {
    let dir = tempfile::tempdir().unwrap();
    for (key, value) in [
        ("RATE_POSTS_BURST", "0"),
        ("RATE_READS_PER_SEC", "-1"),
        ("MAX_REQUEST_BYTES", "1000"),
        ("COMMIT_QUEUE_DEPTH", "0"),
        ("UNARY_TIMEOUT_MS", "0"),
    ] {
        let out = tokio::process::Command::new(env!("CARGO_BIN_EXE_secretd"))
            .arg("serve")
            .current_dir(dir.path())
            .env(format!("SECRETD_{key}"), value)
            .env("SECRETD_JWT_SECRET", SECRET)
            .output()
            .await
            .unwrap();
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{key}={value}: {err}");
        assert!(err.contains(&key.to_lowercase()), "{key}={value}: {err}");
    }
}
