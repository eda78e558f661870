//! CORS to the letter of the Fetch standard, and gRPC-Web (binary and text) from a page on
//! another origin, spoken over raw HTTP/1.1 as a browser would.

use std::time::Duration;

use base64::Engine;
use base64::engine::general_purpose::STANDARD as B64;
use prost::Message;
use secretd::proto::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::common::*;

const PAGE: &str = "http://app.example:8080";

/// What a browser sends in a preflight for an authenticated gRPC-Web call.
const ASKED: &str = "authorization,content-type,grpc-timeout,x-grpc-web,x-user-agent";

const ALLOW_HEADERS: &str = "authorization, content-type, grpc-timeout, grpc-accept-encoding, \
     x-grpc-web, x-user-agent, x-accept-content-transfer-encoding, x-accept-response-streaming";
const EXPOSE_HEADERS: &str = "grpc-status, grpc-message, grpc-status-details-bin, \
     secretd-head-counter, secretd-head-event-id, retry-after-ms";

/// A parsed HTTP/1.1 response.
#[derive(Debug)]
struct Answer {
    status: u16,
    /// Header names lower-cased, in order.
    headers: Vec<(String, String)>,
    body: Vec<u8>,
}

impl Answer {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.as_str())
    }

    /// The `access-control-*` headers.
    fn cors(&self) -> Vec<&(String, String)> {
        self.headers
            .iter()
            .filter(|(n, _)| n.starts_with("access-control-"))
            .collect()
    }
}

/// Sends one request with `Connection: close` and reads the whole answer.
async fn http1(server: &TestServer, head: &str, body: &[u8]) -> Answer {
    let mut s = tokio::net::TcpStream::connect(server.addr).await.unwrap();
    let mut request = format!(
        "{head}\r\nHost: {}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
        server.addr,
        body.len()
    )
    .into_bytes();
    request.extend_from_slice(body);
    s.write_all(&request).await.unwrap();
    let mut raw = Vec::new();
    tokio::time::timeout(Duration::from_secs(10), s.read_to_end(&mut raw))
        .await
        .expect("the server answers and closes")
        .unwrap();
    parse(&raw)
}

fn parse(raw: &[u8]) -> Answer {
    let split = raw
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .expect("a header block");
    let head = String::from_utf8_lossy(&raw[..split]);
    let mut lines = head.split("\r\n");
    let status = lines
        .next()
        .unwrap()
        .split(' ')
        .nth(1)
        .unwrap()
        .parse()
        .unwrap();
    let headers: Vec<(String, String)> = lines
        .map(|l| {
            let (n, v) = l.split_once(':').unwrap();
            (n.trim().to_ascii_lowercase(), v.trim().to_string())
        })
        .collect();
    let mut body = raw[split + 4..].to_vec();
    let chunked = headers
        .iter()
        .any(|(n, v)| n == "transfer-encoding" && v.contains("chunked"));
    if chunked {
        body = dechunk(&body);
    }
    Answer {
        status,
        headers,
        body,
    }
}

fn dechunk(mut body: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    loop {
        let Some(eol) = body.windows(2).position(|w| w == b"\r\n") else {
            return out;
        };
        let size =
            usize::from_str_radix(std::str::from_utf8(&body[..eol]).unwrap().trim(), 16).unwrap();
        if size == 0 || body.len() < eol + 2 + size {
            return out;
        }
        out.extend_from_slice(&body[eol + 2..eol + 2 + size]);
        body = &body[(eol + 4 + size).min(body.len())..];
    }
}

/// A server allowing only [`PAGE`].
async fn server() -> TestServer {
    TestServer::start_with(Backend::Sqlite, |s| {
        s.cors_allowed_origins = vec![PAGE.to_string()]
    })
    .await
}

fn preflight(origin: &str) -> String {
    format!(
        "OPTIONS /protocol.secret.v1.SecretService/FetchPrivateKey HTTP/1.1\r\n\
         Origin: {origin}\r\nAccess-Control-Request-Method: POST\r\n\
         Access-Control-Request-Headers: {ASKED}"
    )
}

/// A gRPC-Web frame: flag, big-endian length, message.
fn frame(message: &[u8]) -> Vec<u8> {
    let mut f = vec![0];
    f.extend_from_slice(&(message.len() as u32).to_be_bytes());
    f.extend_from_slice(message);
    f
}

/// Splits a gRPC-Web response body into its data messages and its trailer block.
fn frames(mut body: &[u8]) -> (Vec<Vec<u8>>, String) {
    let mut data = Vec::new();
    let mut trailers = String::new();
    while body.len() >= 5 {
        let len = u32::from_be_bytes(body[1..5].try_into().unwrap()) as usize;
        if body.len() < 5 + len {
            break; // still arriving
        }
        let payload = &body[5..5 + len];
        if body[0] & 0x80 != 0 {
            trailers.push_str(&String::from_utf8_lossy(payload).to_ascii_lowercase());
        } else {
            data.push(payload.to_vec());
        }
        body = &body[5 + len..];
    }
    (data, trailers)
}

#[tokio::test]
async fn preflight_names_every_header_explicitly() {
    let s = server().await;
    let a = http1(&s, &preflight(PAGE), b"").await;
    assert_eq!(a.status, 200, "{a:?}");
    let mut cors: Vec<(String, String)> = a.cors().into_iter().cloned().collect();
    cors.sort();
    let expected: Vec<(String, String)> = [
        ("access-control-allow-headers", ALLOW_HEADERS),
        ("access-control-allow-methods", "POST"),
        ("access-control-allow-origin", PAGE),
        ("access-control-max-age", "7200"),
    ]
    .iter()
    .map(|(n, v)| (n.to_string(), v.to_string()))
    .collect();
    assert_eq!(cors, expected);
    // Every header the browser asked for is named (a `*` would not cover authorization).
    let allowed = a.header("access-control-allow-headers").unwrap();
    for asked in ASKED.split(',') {
        assert!(
            allowed.split(", ").any(|h| h == asked),
            "{asked} in {allowed}"
        );
    }
    assert_eq!(
        a.header("vary"),
        Some("origin, access-control-request-method, access-control-request-headers")
    );
    s.stop().await;
}

#[tokio::test]
async fn any_origin_by_default_with_the_same_explicit_lists() {
    let s = TestServer::start(Backend::Sqlite).await;
    let a = http1(&s, &preflight("https://anywhere.example"), b"").await;
    assert_eq!(a.status, 200, "{a:?}");
    assert_eq!(a.header("access-control-allow-origin"), Some("*"));
    assert_eq!(
        a.header("access-control-allow-headers"),
        Some(ALLOW_HEADERS)
    );
    assert_eq!(a.header("vary"), None, "one answer for every origin");
    s.stop().await;
}

#[tokio::test]
async fn no_cors_headers_without_origin() {
    let s = server().await;
    // A gRPC-Web call and an OPTIONS request, neither with Origin.
    let call = http1(
        &s,
        "POST /protocol.secret.v1.SecretService/FetchPrivateKey HTTP/1.1\r\n\
         Content-Type: application/grpc-web+proto\r\nX-Grpc-Web: 1",
        &frame(&[]),
    )
    .await;
    assert_eq!(call.status, 200, "{call:?}");
    assert_eq!(call.header("grpc-status"), Some("16"), "{call:?}");
    assert!(call.cors().is_empty(), "{call:?}");
    assert_eq!(call.header("vary"), None);
    let options = http1(
        &s,
        "OPTIONS /protocol.secret.v1.SecretService/FetchPrivateKey HTTP/1.1",
        b"",
    )
    .await;
    assert!(options.cors().is_empty(), "{options:?}");
    s.stop().await;
}

#[tokio::test]
async fn a_disallowed_origin_gets_no_cors_headers() {
    let s = server().await;
    let a = http1(&s, &preflight("http://evil.example"), b"").await;
    assert_eq!(a.status, 403, "{a:?}");
    assert!(a.cors().is_empty(), "{a:?}");
    // The call itself is served, without CORS headers: the browser hides the answer.
    let call = http1(
        &s,
        "POST /protocol.secret.v1.SecretService/FetchPrivateKey HTTP/1.1\r\n\
         Origin: http://evil.example\r\nContent-Type: application/grpc-web+proto\r\n\
         X-Grpc-Web: 1",
        &frame(&[]),
    )
    .await;
    assert!(call.cors().is_empty(), "{call:?}");
    assert_eq!(call.header("vary"), Some("origin"));
    s.stop().await;
}

#[tokio::test]
async fn grpc_web_text_unary_call_with_authorization() {
    let s = server().await;
    let user = random_user();
    let mut c = s.client(user).await;
    c.post_private_key(PostPrivateKeyRequest {
        key_data: b"wrapped key".to_vec(),
        expected_version: None,
    })
    .await
    .unwrap();
    let request = B64.encode(frame(&FetchPrivateKeyRequest {}.encode_to_vec()));
    let a = http1(
        &s,
        &format!(
            "POST /protocol.secret.v1.SecretService/FetchPrivateKey HTTP/1.1\r\n\
             Origin: {PAGE}\r\nContent-Type: application/grpc-web-text\r\n\
             Accept: application/grpc-web-text\r\nX-Grpc-Web: 1\r\n\
             X-User-Agent: grpc-web-javascript/0.1\r\nAuthorization: Bearer {}",
            s.token(user)
        ),
        request.as_bytes(),
    )
    .await;
    assert_eq!(a.status, 200, "{a:?}");
    assert_eq!(a.header("access-control-allow-origin"), Some(PAGE));
    assert_eq!(
        a.header("access-control-expose-headers"),
        Some(EXPOSE_HEADERS)
    );
    assert!(
        a.header("content-type")
            .unwrap()
            .starts_with("application/grpc-web-text"),
        "{a:?}"
    );
    // The text body is base64, possibly in several padded pieces (one per frame).
    let text = String::from_utf8(a.body).unwrap();
    let mut body = Vec::new();
    let mut rest = text.as_str();
    while !rest.is_empty() {
        let end = rest.find('=').map_or(rest.len(), |i| {
            i + rest[i..].chars().take_while(|c| *c == '=').count()
        });
        body.extend(B64.decode(&rest[..end]).unwrap());
        rest = &rest[end..];
    }
    let (data, trailers) = frames(&body);
    assert!(trailers.contains("grpc-status:0"), "{trailers}");
    let got = FetchPrivateKeyResponse::decode(data[0].as_slice()).unwrap();
    assert_eq!(
        (got.key_data.as_slice(), got.version),
        (&b"wrapped key"[..], 1)
    );
    s.stop().await;
}

/// The browser's way to subscribe: Subscribe over binary gRPC-Web and HTTP/1.1, read as
/// the frames arrive.
#[tokio::test]
async fn subscribe_over_grpc_web() {
    let s = server().await;
    let user = random_user();
    let mut c = s.client(user).await;
    let st = new_pair(&mut c).await.message_id;
    let request = frame(
        &SubscribeRequest {
            subscribe_to: vec![st.clone()],
            ..Default::default()
        }
        .encode_to_vec(),
    );
    let mut sock = tokio::net::TcpStream::connect(s.addr).await.unwrap();
    let mut out = format!(
        "POST /protocol.secret.v1.SecretService/Subscribe HTTP/1.1\r\nHost: x\r\n\
         Origin: {PAGE}\r\nContent-Type: application/grpc-web+proto\r\nX-Grpc-Web: 1\r\n\
         Authorization: Bearer {}\r\nContent-Length: {}\r\n\r\n",
        s.token(user),
        request.len()
    )
    .into_bytes();
    out.extend(request);
    sock.write_all(&out).await.unwrap();
    // Read until the CaughtUp frame, then post and read until the event.
    let mut raw = Vec::new();
    let mut read_until = async |needle: &[u8], raw: &mut Vec<u8>| {
        let mut buf = [0u8; 4096];
        while !raw.windows(needle.len()).any(|w| w == needle) {
            let n = tokio::time::timeout(Duration::from_secs(10), sock.read(&mut buf))
                .await
                .expect("the server streams")
                .unwrap();
            assert!(
                n > 0,
                "the call ended early: {}",
                String::from_utf8_lossy(raw)
            );
            raw.extend_from_slice(&buf[..n]);
        }
    };
    read_until(st.as_bytes(), &mut raw).await;
    let head = String::from_utf8_lossy(&raw).to_ascii_lowercase();
    assert!(head.starts_with("http/1.1 200"), "{head}");
    assert!(
        head.contains(&format!("access-control-allow-origin: {PAGE}")),
        "{head}"
    );
    post(&mut c, &st, 1, b"live over grpc-web").await.unwrap();
    read_until(b"live over grpc-web", &mut raw).await;
    let answer = parse(&raw);
    let (data, trailers) = frames(&answer.body);
    assert!(trailers.is_empty(), "the call is still open");
    let events: Vec<_> = data
        .iter()
        .map(|d| {
            StreamMessagePostingResponse::decode(d.as_slice())
                .unwrap()
                .event
        })
        .collect();
    assert!(matches!(&events[0], Some(Event::CaughtUp(c)) if c.stream_id == st));
    assert!(matches!(&events[1], Some(Event::Message(m)) if m.event_id == 1));
    s.stop().await;
}
