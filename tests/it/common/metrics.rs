//! Reading a real secretd process's Prometheus metrics.

use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// A free TCP port on 127.0.0.1 (for `--metrics-listen`).
pub fn unused_port() -> u16 {
    let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    l.local_addr().unwrap().port()
}

/// The value of the unlabelled metric `name` at the endpoint `addr` (0 when absent: the
/// exporter shows a metric only once it was recorded).
pub async fn metric(addr: &str, name: &str) -> f64 {
    metrics_page(addr)
        .await
        .lines()
        .find_map(|l| l.strip_prefix(name)?.strip_prefix(' '))
        .map(|v| v.trim().parse().expect("a number"))
        .unwrap_or(0.0)
}

/// The whole answer (HTTP headers included) of `GET /metrics` at the endpoint `addr`.
pub async fn metrics_page(addr: &str) -> String {
    let mut s = tokio::net::TcpStream::connect(addr)
        .await
        .expect("metrics endpoint");
    let request = format!("GET /metrics HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n");
    s.write_all(request.as_bytes()).await.unwrap();
    let mut page = String::new();
    tokio::time::timeout(Duration::from_secs(5), s.read_to_string(&mut page))
        .await
        .expect("metrics within 5 s")
        .unwrap();
    page
}

/// Waits (up to `secs`) until `metric(addr, name)` equals `want`; returns the last value.
pub async fn metric_becomes(addr: &str, name: &str, want: f64, secs: u64) -> f64 {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(secs);
    loop {
        let v = metric(addr, name).await;
        if v == want || tokio::time::Instant::now() >= deadline {
            return v;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}
