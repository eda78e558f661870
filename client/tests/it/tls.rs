//! TLS between the client and its server: an `https://` URL is spoken to over TLS only
//! (the network attacker who answers in plaintext, or with a certificate the client does
//! not trust, never sees the token); a CA file makes a private CA's certificate trusted.
//! Certificates are made at run time (rcgen).

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, Issuer, KeyPair, KeyUsagePurpose};
use secretd_client::Error;
use secretd_client::api::Api;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

use crate::common::{Backend, Server, fresh_user, token};

/// The files of a test CA and of a server certificate it signed (for `127.0.0.1` and
/// `localhost`), written into a directory.
pub(crate) struct CaFiles {
    pub ca: PathBuf,
    pub cert: PathBuf,
    pub key: PathBuf,
}

/// A new CA named `name` and a server certificate of it, written into `dir`.
pub(crate) fn make_certs(dir: &Path, name: &str) -> CaFiles {
    let mut ca = CertificateParams::new(Vec::<String>::new()).unwrap();
    ca.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    ca.distinguished_name.push(DnType::CommonName, name);
    ca.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
    let ca_key = KeyPair::generate().unwrap();
    let ca_pem = ca.self_signed(&ca_key).unwrap().pem();
    let issuer = Issuer::new(ca, ca_key);
    let leaf =
        CertificateParams::new(vec!["127.0.0.1".to_string(), "localhost".to_string()]).unwrap();
    let leaf_key = KeyPair::generate().unwrap();
    let leaf_pem = leaf.signed_by(&leaf_key, &issuer).unwrap().pem();
    let files = CaFiles {
        ca: dir.join(format!("{name}-ca.pem")),
        cert: dir.join(format!("{name}.crt")),
        key: dir.join(format!("{name}.key")),
    };
    std::fs::write(&files.ca, ca_pem).unwrap();
    std::fs::write(&files.cert, leaf_pem).unwrap();
    std::fs::write(&files.key, leaf_key.serialize_pem()).unwrap();
    files
}

/// A server on SQLite serving TLS with a certificate of a new CA; its `https://` URL and
/// the CA files.
pub(crate) async fn tls_server(dir: &Path) -> (Server, String, CaFiles) {
    let files = make_certs(dir, "server");
    let (cert, key) = (
        files.cert.display().to_string(),
        files.key.display().to_string(),
    );
    let server = Server::start_with(Backend::Sqlite, |s| {
        s.tls_cert_file = cert;
        s.tls_key_file = key;
    })
    .await;
    let url = format!("https://{}", server.addr);
    (server, url, files)
}

/// What clients sent through a [`recording_proxy`]: the bytes of each connection, in the
/// order they were accepted.
type Recording = Arc<Mutex<Vec<Vec<u8>>>>;

/// A TCP proxy to `target` that keeps every byte clients send through it.
async fn recording_proxy(target: std::net::SocketAddr) -> (String, Recording) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap().to_string();
    let recording = Recording::default();
    let kept = recording.clone();
    tokio::spawn(async move {
        while let Ok((mut client, _)) = listener.accept().await {
            let seen = kept.clone();
            let conn = {
                let mut all = seen.lock().unwrap();
                all.push(Vec::new());
                all.len() - 1
            };
            tokio::spawn(async move {
                let Ok(server) = TcpStream::connect(target).await else {
                    return;
                };
                let (mut from_server, mut to_server) = server.into_split();
                let (mut from_client, mut to_client) = client.split();
                let upstream = async {
                    let mut buf = [0u8; 4096];
                    while let Ok(n @ 1..) = from_client.read(&mut buf).await {
                        seen.lock().unwrap()[conn].extend_from_slice(&buf[..n]);
                        if to_server.write_all(&buf[..n]).await.is_err() {
                            break;
                        }
                    }
                    let _ = to_server.shutdown().await;
                };
                let downstream = tokio::io::copy(&mut from_server, &mut to_client);
                let _ = tokio::join!(upstream, downstream);
            });
        }
    });
    (addr, recording)
}

/// The HTTP/2 connection preface: what a plaintext gRPC client sends first.
const H2_PREFACE: &[u8] = b"PRI * HTTP/2.0";

/// An `https://` URL that leads to a plaintext server (an attacker on the path, or a
/// misconfigured proxy) fails to connect, saying why; what went over the wire was a TLS
/// handshake, never plaintext HTTP/2 with the token in it. The same proxy with an
/// `http://` URL sees plaintext HTTP/2: the recording is real.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn an_https_url_never_carries_the_token_in_plaintext() {
    let server = Server::start(Backend::Sqlite).await;
    let (proxy, seen) = recording_proxy(server.addr).await;
    let user = fresh_user();
    let result = Api::connect(&format!("https://{proxy}"), &token(user)).await;
    let Err(Error::Connect { reason, .. }) = result else {
        panic!("connected to a plaintext server through an https:// URL");
    };
    assert!(reason.contains("does the server serve TLS?"), "{reason}");
    let sent = seen.lock().unwrap().clone();
    assert!(!sent.is_empty());
    for bytes in &sent {
        assert_eq!(
            bytes.first(),
            Some(&0x16),
            "a TLS handshake record comes first"
        );
        assert!(
            !bytes.windows(H2_PREFACE.len()).any(|w| w == H2_PREFACE),
            "plaintext HTTP/2 was sent"
        );
    }

    let plain = Api::connect(&format!("http://{proxy}"), &token(user))
        .await
        .unwrap();
    plain.check_token().await.unwrap();
    let last = seen.lock().unwrap().last().unwrap().clone();
    assert!(last.starts_with(H2_PREFACE));
    server.stop().await;
}

/// A TLS server: trusted through a CA file, a token check goes through; without it (the
/// system's roots) and with another CA the connection is refused, saying to give the CA;
/// a CA file with an `http://` URL is refused, as is an unreadable one.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_ca_file_makes_a_private_ca_trusted() {
    let dir = tempfile::tempdir().unwrap();
    let (server, url, files) = tls_server(dir.path()).await;
    let user = fresh_user();
    let api = Api::connect_with(&url, &token(user), Some(&files.ca))
        .await
        .unwrap();
    api.check_token().await.unwrap();
    assert_eq!(api.ca_file(), Some(files.ca.as_path()));

    let other = make_certs(dir.path(), "other");
    for ca in [None, Some(other.ca.as_path())] {
        let Err(Error::Connect { reason, .. }) = Api::connect_with(&url, &token(user), ca).await
        else {
            panic!("a certificate of an untrusted CA was accepted ({ca:?})");
        };
        assert!(reason.contains("--ca-file"), "{reason}");
    }
    let http = format!("http://{}", server.addr);
    let Err(Error::Connect { reason, .. }) =
        Api::connect_with(&http, &token(user), Some(&files.ca)).await
    else {
        panic!("a CA file with an http:// URL was accepted");
    };
    assert!(reason.contains("use https://"), "{reason}");
    let Err(Error::Connect { reason, .. }) =
        Api::connect_with(&url, &token(user), Some(&dir.path().join("none.pem"))).await
    else {
        panic!("a missing CA file was accepted");
    };
    assert!(reason.contains("cannot read the CA file"), "{reason}");
    server.stop().await;
}
