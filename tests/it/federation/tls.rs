//! Federation over TLS (DESIGN §9a). The three-server tests run over TLS already (b and
//! c serve it, a trusts each one's CA through the peer's `ca_file`: see `harness.rs`);
//! here what goes wrong: a peer whose certificate this server does not trust, and an
//! `http://` peer without `allow_insecure`.

use std::time::{Duration, Instant};

use secretd::proto::{FetchKeyRequest, PostKeyRequest};
use tonic::Code;

use super::nodes::{Node, NodeKey, PeerSpec};
use crate::common::*;

/// b's certificate is signed by a CA that a was not told to trust: with a `ca_file` of
/// another CA, and with no `ca_file` (the system's roots, which do not hold a test CA).
/// FetchKey of b's user is UNAVAILABLE naming b, within the request timeout; the client
/// hears neither b's address nor the TLS error, which a's log holds.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_peer_certificate_not_trusted_is_unavailable_naming_the_peer() {
    let (ka, kb, kc) = (
        NodeKey::new("a.test"),
        NodeKey::new("b.test"),
        NodeKey::new("c.test"),
    );
    let b = Node::start_tls(
        &kb,
        &Backend::Sqlite,
        &[PeerSpec::unreachable(&ka)],
        &[],
        &TestCa::new("b.test CA"),
    )
    .await;
    let c = Node::start_tls(
        &kc,
        &Backend::Sqlite,
        &[PeerSpec::unreachable(&ka)],
        &[],
        &TestCa::new("c.test CA"),
    )
    .await;
    let stranger = TestCa::new("a CA b does not use")
        .write(ka.dir.path(), "stranger")
        .ca;
    let b_with_wrong_ca = PeerSpec {
        ca_file: Some(stranger),
        ..PeerSpec::node(&kb, &b)
    };
    let c_with_system_roots = PeerSpec {
        ca_file: None,
        ..PeerSpec::node(&kc, &c)
    };
    let timeout_secs = 3;
    let mut a = Node::start(
        &ka,
        &Backend::Sqlite,
        &[b_with_wrong_ca, c_with_system_roots],
        &[("request_timeout_secs", &timeout_secs.to_string())],
    )
    .await;
    let mut on_a = a.client(random_user()).await;
    for (peer, node) in [("b.test", &b), ("c.test", &c)] {
        let user = random_user();
        node.client(user)
            .await
            .post_key(PostKeyRequest {
                key_data: key_pem(1),
            })
            .await
            .expect("the peer itself is fine");
        let started = Instant::now();
        let st = expect_code(
            on_a.fetch_key(FetchKeyRequest {
                user_id: user,
                homeserver: peer.into(),
                known_tree_size: 0,
            })
            .await,
            Code::Unavailable,
        );
        assert!(
            started.elapsed() < Duration::from_secs(timeout_secs + 1),
            "{:?}",
            started.elapsed()
        );
        let port = node.addr.rsplit(':').next().unwrap();
        assert!(st.message().contains(peer), "{st:?}");
        for hidden in [port, "127.0.0.1", "https", "certificate", "Issuer", "TLS"] {
            assert!(!st.message().contains(hidden), "{hidden}: {st:?}");
        }
    }
    // a's log says why, naming the peer and its endpoint. The lines reach the test through
    // a reader of a's stderr, so they are awaited (up to 10 s), not polled once.
    let says_why = |l: &str, peer: &str, node: &Node| {
        l.contains("cannot reach the peer")
            && l.contains(peer)
            && l.contains(&node.addr)
            && l.contains("certificate")
    };
    let mut log: Vec<String> = Vec::new();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while ![("b.test", &b), ("c.test", &c)]
        .iter()
        .all(|(peer, node)| log.iter().any(|l| says_why(l, peer, node)))
    {
        match tokio::time::timeout_at(deadline, a.process.stderr_lines.recv()).await {
            Ok(Some(line)) => log.push(line),
            Ok(None) | Err(_) => panic!("a's log does not say why for both peers: {log:#?}"),
        }
    }
}

/// An `http://` peer is a configuration error (exit 2, naming the key) unless it says
/// `allow_insecure = true`; then the server starts and warns about it.
#[tokio::test]
async fn an_http_peer_needs_allow_insecure_and_is_warned_about() {
    let kb = NodeKey::new("b.test");
    let dir = tempfile::tempdir().unwrap();
    let config = |extra: &str| {
        format!(
            "server_name = \"a.test\"\njwt_secret = \"{SECRET}\"\n\n[federation]\nenabled = \
             true\n\n[[federation.peers]]\nserver_name = \"b.test\"\nendpoint = \
             \"http://127.0.0.1:9\"\npublic_key = \"{}\"\n{extra}",
            kb.public_key
        )
    };
    std::fs::write(dir.path().join("secretd.toml"), config("")).unwrap();
    let args = [
        "serve",
        "--config",
        "secretd.toml",
        "--data-dir",
        "data",
        "--listen",
        "127.0.0.1:0",
    ];
    let out = run_binary(&args, dir.path(), &[]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    assert!(
        stderr.contains("federation.peers[0].endpoint")
            && stderr.contains("federation.peers[0].allow_insecure = true"),
        "{stderr}"
    );

    // A ca_file with http is refused too: it would protect nothing.
    std::fs::write(
        dir.path().join("secretd.toml"),
        config("allow_insecure = true\nca_file = \"ca.pem\"\n"),
    )
    .unwrap();
    let out = run_binary(&args, dir.path(), &[]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    assert!(stderr.contains("federation.peers[0].ca_file"), "{stderr}");

    // An https peer whose ca_file cannot be read: exit 2 naming it.
    std::fs::write(
        dir.path().join("secretd.toml"),
        config("ca_file = \"missing-ca.pem\"\n").replace("http://", "https://"),
    )
    .unwrap();
    let out = run_binary(&args, dir.path(), &[]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    assert!(
        stderr.contains("federation.peers[0].ca_file missing-ca.pem"),
        "{stderr}"
    );

    std::fs::write(
        dir.path().join("secretd.toml"),
        config("allow_insecure = true\n"),
    )
    .unwrap();
    let server = spawn_binary(&args, &[], dir.path()).await;
    assert!(
        server
            .startup_lines
            .iter()
            .any(|l| l.contains("WARN")
                && l.contains("federation.peers[0].endpoint is plaintext http")),
        "{:#?}",
        server.startup_lines
    );
}
