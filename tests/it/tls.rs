//! TLS on the listen port (DESIGN §9a): a server with `tls_cert_file` / `tls_key_file`
//! speaks TLS only, to every service (gRPC, gRPC-Web over HTTP/1.1, health); SIGHUP swaps its certificate for new connections
//! while open ones go on; bad files are configuration errors naming the key;
//! `secretd health` speaks TLS when told to. Certificates are made at run time.

use std::process::Command;
use std::time::Duration;

use secretd::proto::{FetchKeyRequest, PostKeyRequest};
use tonic::Code;
use tonic_health::pb::HealthCheckRequest;
use tonic_health::pb::health_client::HealthClient;

use crate::common::*;

/// Settings tweak: serve TLS from `files`.
fn serve_tls(files: &TlsFiles) -> impl FnOnce(&mut secretd::config::Settings) {
    let (cert, key) = (
        files.cert.display().to_string(),
        files.key.display().to_string(),
    );
    move |s| {
        s.tls_cert_file = cert;
        s.tls_key_file = key;
    }
}

/// Over TLS, trusting the server's CA: SecretService and health answer. In plaintext, or
/// trusting another CA, nothing does.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_tls_server_answers_tls_clients_only() {
    let certs = tempfile::tempdir().unwrap();
    let ca = TestCa::new("test CA");
    let files = ca.write(certs.path(), "server");
    let s = TestServer::start_with(Backend::Sqlite, serve_tls(&files)).await;
    let addr = s.addr.to_string();
    let user = random_user();

    let mut c = tls_client_at(&addr, ca.pem(), s.token(user)).await;
    c.post_key(PostKeyRequest {
        key_data: key_pem(1),
    })
    .await
    .unwrap();
    let keys = c
        .fetch_key(FetchKeyRequest {
            user_id: user,
            homeserver: String::new(),
            known_tree_size: 0,
        })
        .await
        .unwrap()
        .into_inner();
    assert!(keys.current_key.is_some());
    let health = HealthClient::new(tls_channel(&addr, ca.pem()).await.unwrap())
        .check(HealthCheckRequest::default())
        .await
        .unwrap();
    assert_eq!(health.into_inner().status, 1, "SERVING");
    // gRPC-Web over HTTP/1.1 inside TLS, as a browser page at an https:// origin calls.
    let answer = grpc_web_health_over_tls(&addr, ca.pem()).await;
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
    assert!(answer.contains("grpc-status:0"), "{answer}");

    // Plaintext HTTP/2 (what an http:// URL speaks) gets no answer.
    let plain = async {
        let channel = tonic::transport::Endpoint::from_shared(format!("http://{addr}"))
            .unwrap()
            .connect()
            .await
            .map_err(|e| e.to_string())?;
        HealthClient::new(channel)
            .check(HealthCheckRequest::default())
            .await
            .map_err(|e| e.to_string())
    };
    let refused = tokio::time::timeout(Duration::from_secs(10), plain)
        .await
        .expect("a plaintext client is turned away, not left waiting");
    assert!(refused.is_err(), "{refused:?}");

    // A client that trusts another CA refuses the server.
    let other = TestCa::new("another CA");
    let err = tls_channel(&addr, other.pem()).await.unwrap_err();
    assert!(
        format!("{err:?}").to_lowercase().contains("certificate"),
        "{err:?}"
    );
    s.stop().await;
}

/// A gRPC-Web health check (HTTP/1.1, ALPN `http/1.1`) over TLS trusting `ca_pem`; the
/// whole response as text.
async fn grpc_web_health_over_tls(addr: &str, ca_pem: &str) -> String {
    use std::sync::Arc;

    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio_rustls::TlsConnector;
    use tokio_rustls::rustls::pki_types::pem::PemObject;
    use tokio_rustls::rustls::pki_types::{CertificateDer, ServerName};
    use tokio_rustls::rustls::{ClientConfig, RootCertStore};

    let mut roots = RootCertStore::empty();
    for cert in CertificateDer::pem_slice_iter(ca_pem.as_bytes()) {
        roots.add(cert.unwrap()).unwrap();
    }
    let mut config = ClientConfig::builder()
        .with_root_certificates(roots)
        .with_no_client_auth();
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    let tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
    let name = ServerName::try_from("127.0.0.1").unwrap();
    let mut tls = TlsConnector::from(Arc::new(config))
        .connect(name, tcp)
        .await
        .unwrap();
    assert_eq!(tls.get_ref().1.alpn_protocol(), Some(&b"http/1.1"[..]));
    let request = format!(
        "POST /grpc.health.v1.Health/Check HTTP/1.1\r\nhost: {addr}\r\ncontent-type: \
         application/grpc-web+proto\r\nx-grpc-web: 1\r\ncontent-length: 5\r\nconnection: \
         close\r\n\r\n"
    );
    tls.write_all(request.as_bytes()).await.unwrap();
    tls.write_all(&[0, 0, 0, 0, 0]).await.unwrap();
    let mut out = Vec::new();
    // The server may close without close_notify after `connection: close`.
    let _ = tls.read_to_end(&mut out).await;
    String::from_utf8_lossy(&out).into_owned()
}

async fn wait_for_line(p: &mut ServerProcess, needle: &str) -> String {
    let found = tokio::time::timeout(Duration::from_secs(10), async {
        while let Some(line) = p.stderr_lines.recv().await {
            if line.contains(needle) {
                return line;
            }
        }
        panic!("secretd exited before logging {needle:?}");
    })
    .await;
    found.unwrap_or_else(|_| panic!("no log line with {needle:?} within 10 s"))
}

fn sighup(p: &ServerProcess) {
    let pid = p.child.id().expect("running").to_string();
    assert!(
        Command::new("kill")
            .args(["-HUP", &pid])
            .status()
            .unwrap()
            .success()
    );
}

/// The real binary: after the files change and SIGHUP, a new connection gets the new
/// certificate (verified by the new CA; the old CA no longer verifies it) while a
/// subscription opened before goes on receiving on its old connection. A bad file at the
/// next SIGHUP keeps the certificate in use and says so.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn sighup_swaps_the_certificate_and_open_streams_go_on() {
    let dir = tempfile::tempdir().unwrap();
    let (old_ca, new_ca) = (TestCa::new("old CA"), TestCa::new("new CA"));
    let files = old_ca.write(dir.path(), "server");
    let (cert, key) = (
        files.cert.display().to_string(),
        files.key.display().to_string(),
    );
    let mut server = spawn_binary(
        &["serve", "--data-dir", "data", "--listen", "127.0.0.1:0"],
        &[
            ("SECRETD_JWT_SECRET", SECRET),
            ("SECRETD_TLS_CERT_FILE", &cert),
            ("SECRETD_TLS_KEY_FILE", &key),
        ],
        dir.path(),
    )
    .await;
    let ready = server.startup_lines.last().unwrap();
    assert!(ready.contains(&format!("tls=on ({cert})")), "{ready}");
    let addr = server.addr.clone();
    let alice = random_user();
    let mut before = tls_client_at(&addr, old_ca.pem(), token(alice, 3600)).await;
    let pair = new_pair(&mut before).await;
    let mut sub = Subscription::open(&mut before).await.unwrap();
    sub.manage(&[&pair.message_id], &[], &[]);
    sub.until_caught_up(&pair.message_id).await;

    let (new_cert, new_key) = new_ca.server_cert();
    std::fs::write(&files.key, new_key).unwrap();
    std::fs::write(&files.cert, new_cert).unwrap();
    sighup(&server);
    wait_for_line(&mut server, "SIGHUP: TLS certificate re-read").await;

    let mut after = tls_client_at(&addr, new_ca.pem(), token(alice, 3600)).await;
    post(&mut after, &pair.message_id, 1, b"after the reload")
        .await
        .unwrap();
    let Event::Message(m) = sub.next().await else {
        panic!("expected the message on the stream opened before the reload")
    };
    assert_eq!(m.message.unwrap().message, b"after the reload");
    let err = tls_channel(&addr, old_ca.pem()).await.unwrap_err();
    assert!(
        format!("{err:?}").to_lowercase().contains("certificate"),
        "{err:?}"
    );
    // The connection made before still carries calls.
    post(&mut before, &pair.message_id, 2, b"old connection")
        .await
        .unwrap();

    // A broken file: the certificate in use stays.
    std::fs::write(&files.cert, "not a certificate").unwrap();
    sighup(&server);
    let line = wait_for_line(&mut server, "still serving the certificate read before").await;
    assert!(
        line.contains("ERROR") && line.contains("tls_cert_file"),
        "{line}"
    );
    let mut still = tls_client_at(&addr, new_ca.pem(), token(alice, 3600)).await;
    expect_code(
        still
            .fetch_key(FetchKeyRequest {
                user_id: random_user(),
                homeserver: String::new(),
                known_tree_size: 0,
            })
            .await,
        Code::NotFound,
    );
}

/// Bad TLS settings stop the start with exit 2 and a sentence naming the key.
#[test]
fn bad_tls_files_are_configuration_errors_naming_the_key() {
    let dir = tempfile::tempdir().unwrap();
    let ca = TestCa::new("test CA");
    let files = ca.write(dir.path(), "server");
    let other = ca.write(dir.path(), "other");
    let garbage = dir.path().join("garbage.pem");
    std::fs::write(&garbage, "hello").unwrap();
    let path = |p: &std::path::Path| p.display().to_string();
    let missing = dir.path().join("missing.pem");
    for (cert, key, says) in [
        (
            path(&files.cert),
            String::new(),
            "tls_cert_file is set but tls_key_file is not",
        ),
        (
            String::new(),
            path(&files.key),
            "tls_key_file is set but tls_cert_file is not",
        ),
        (path(&missing), path(&files.key), "tls_cert_file"),
        (path(&garbage), path(&files.key), "tls_cert_file"),
        (path(&files.cert), path(&garbage), "tls_key_file"),
        (path(&files.cert), path(&other.key), "tls_key_file"),
    ] {
        let out = run_binary(
            &["serve", "--data-dir", "data", "--listen", "127.0.0.1:0"],
            dir.path(),
            &[
                ("SECRETD_JWT_SECRET", SECRET),
                ("SECRETD_TLS_CERT_FILE", &cert),
                ("SECRETD_TLS_KEY_FILE", &key),
            ],
        );
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{cert} {key}: {stderr}");
        assert!(
            stderr.contains("configuration error") && stderr.contains(says),
            "{says}: {stderr}"
        );
    }
}

/// `secretd health` against a TLS server: with `--ca-file` it is SERVING; in plaintext,
/// or trusting only the system's roots, it fails and says what to check.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn health_speaks_tls_when_told() {
    let certs = tempfile::tempdir().unwrap();
    let ca = TestCa::new("test CA");
    let files = ca.write(certs.path(), "server");
    let s = TestServer::start_with(Backend::Sqlite, serve_tls(&files)).await;
    let addr = s.addr.to_string();
    let ca_file = files.ca.display().to_string();
    let health = |args: Vec<String>| {
        let dir = certs.path().to_path_buf();
        tokio::task::spawn_blocking(move || {
            let args: Vec<&str> = args.iter().map(String::as_str).collect();
            run_binary(&args, &dir, &[])
        })
    };
    let args = |extra: &[&str]| {
        let mut v: Vec<String> = ["health", "--addr", &addr, "--timeout", "5"]
            .iter()
            .map(|s| s.to_string())
            .collect();
        v.extend(extra.iter().map(|s| s.to_string()));
        v
    };
    let ok = health(args(&["--ca-file", &ca_file])).await.unwrap();
    assert!(ok.status.success(), "{ok:?}");
    assert_eq!(String::from_utf8_lossy(&ok.stdout).trim(), "SERVING");
    let named = health(args(&["--ca-file", &ca_file, "--tls-name", "localhost"]))
        .await
        .unwrap();
    assert!(named.status.success(), "{named:?}");

    let plain = health(args(&[])).await.unwrap();
    assert_eq!(plain.status.code(), Some(1), "{plain:?}");
    let stderr = String::from_utf8_lossy(&plain.stderr);
    assert!(stderr.contains("give --tls"), "{stderr}");
    let system_roots = health(args(&["--tls"])).await.unwrap();
    assert_eq!(system_roots.status.code(), Some(1), "{system_roots:?}");
    let stderr = String::from_utf8_lossy(&system_roots.stderr);
    assert!(stderr.contains("--ca-file"), "{stderr}");
    s.stop().await;
}
