//! The RPC latency histogram `secretd_rpc_duration_seconds{service,method,code}`: a tower
//! layer around every gRPC service the server hosts (inside gRPC-Web, so browser calls
//! are measured as the gRPC calls they become).
//!
//! What is measured:
//! - a unary call: from the moment the server takes the request to the end of its
//!   response — the `grpc-status` trailer (or the response headers of a trailers-only
//!   answer, which carry the status themselves); `code` is that status;
//! - a streaming call (StreamMessagePosting, Subscribe, health Watch, reflection): from
//!   the request to the response headers, i.e. the time to open the stream; `code` is the
//!   status when the call ended there (a refusal, trailers-only), else `Ok` (opened). How
//!   a stream ends later is not in this histogram (`secretd_rpc_total` counts it);
//! - a response that ends without a status is counted as `Unknown`, one whose body is
//!   dropped before its end (the client went away, the connection broke) as `Cancelled`.
//!
//! Labels are bounded: `service` and `method` come from a fixed table of the paths the
//! server serves ([`METHODS`]); any other path — whatever a client sends — is counted
//! under `service="unknown", method="unknown"`. `code` is one of the 17 gRPC codes. So at
//! most ([`METHODS`] + 1) × 17 label sets exist, each with [`BUCKETS`] + 1 buckets, and
//! a hostile client cannot create new series.
//!
//! Per call: two `Instant::now()`, a string match of the path, a reference count, and one
//! lock-free histogram record through a handle registered once per label set (no
//! allocation, no registry lookup after the first call of a label set).

use std::pin::Pin;
use std::sync::{Arc, OnceLock};
use std::task::{Context, Poll};
use std::time::Instant;

use http_body::{Body, Frame, SizeHint};

/// The histogram's name.
pub const NAME: &str = "secretd_rpc_duration_seconds";

/// The histogram's bucket bounds in seconds.
pub const BUCKETS: [f64; 14] = [
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
];

/// One served method: its service, its name, and whether the response is a stream
/// (measured to its headers).
#[derive(Debug, Clone, Copy)]
pub struct Method {
    /// The start of the service's paths, `/package.Service/`.
    pub prefix: &'static str,
    /// The `service` label (the service's name without its package).
    pub service: &'static str,
    /// The `method` label, the rest of the path.
    pub method: &'static str,
    /// True when the client or the server streams (measured to the response headers).
    pub streaming: bool,
}

impl Method {
    /// Whether this is the method of `path`.
    fn is(&self, path: &str) -> bool {
        path.strip_prefix(self.prefix) == Some(self.method)
    }
}

/// A service: the start of its paths and its label.
type Service = (&'static str, &'static str);

const fn m(service: Service, method: &'static str) -> Method {
    Method {
        prefix: service.0,
        service: service.1,
        method,
        streaming: false,
    }
}

const fn s(service: Service, method: &'static str) -> Method {
    Method {
        streaming: true,
        ..m(service, method)
    }
}

const SECRET: Service = ("/protocol.secret.v1.SecretService/", "SecretService");
const FED: Service = (
    "/protocol.secret.federation.v1.SecretFederationService/",
    "SecretFederationService",
);
const HEALTH: Service = ("/grpc.health.v1.Health/", "Health");
const REFLECTION: Service = ("/grpc.reflection.v1.ServerReflection/", "ServerReflection");
const REFLECTION_ALPHA: Service = (
    "/grpc.reflection.v1alpha.ServerReflection/",
    "ServerReflection",
);

/// Every method the server serves (a test checks it against the services' descriptors).
pub const METHODS: [Method; 27] = [
    m(SECRET, "PostKey"),
    m(SECRET, "FetchKey"),
    m(SECRET, "PostPrivateKey"),
    m(SECRET, "FetchPrivateKey"),
    m(SECRET, "GenerateChannelPair"),
    m(SECRET, "SendInvite"),
    m(SECRET, "FetchInvites"),
    m(SECRET, "ListChannelPairs"),
    m(SECRET, "LeaveChannelPair"),
    m(SECRET, "RemoveMember"),
    m(SECRET, "PostMessage"),
    m(SECRET, "FetchMessages"),
    s(SECRET, "StreamMessagePosting"),
    m(SECRET, "Federate"),
    s(SECRET, "Subscribe"),
    m(SECRET, "GetTreeHead"),
    m(SECRET, "MonitorKey"),
    m(SECRET, "SetRetention"),
    m(SECRET, "DeleteAccount"),
    m(FED, "ServerKey"),
    m(FED, "FetchUserKey"),
    m(FED, "DeliverInvite"),
    m(FED, "ExchangeHeads"),
    m(HEALTH, "Check"),
    s(HEALTH, "Watch"),
    s(REFLECTION, "ServerReflectionInfo"),
    s(REFLECTION_ALPHA, "ServerReflectionInfo"),
];

/// Where any other path is counted.
const UNKNOWN: usize = METHODS.len();

/// The `code` labels, indexed by gRPC code (as `tonic::Code`'s `Debug` says them, like
/// `secretd_rpc_total`).
pub const CODES: [&str; 17] = [
    "Ok",
    "Cancelled",
    "Unknown",
    "InvalidArgument",
    "DeadlineExceeded",
    "NotFound",
    "AlreadyExists",
    "PermissionDenied",
    "ResourceExhausted",
    "FailedPrecondition",
    "Aborted",
    "OutOfRange",
    "Unimplemented",
    "Internal",
    "Unavailable",
    "DataLoss",
    "Unauthenticated",
];
const OK: usize = 0;
const CANCELLED: usize = 1;
const UNKNOWN_CODE: usize = 2;

/// The method a path names, if the server serves it.
pub fn method_of(path: &str) -> Option<&'static Method> {
    METHODS.iter().find(|m| m.is(path))
}

/// The histogram handles, registered on first use of each label set.
struct Table {
    cells: Vec<[OnceLock<metrics::Histogram>; CODES.len()]>,
}

impl Table {
    fn record(&self, method: usize, code: usize, started: Instant) {
        let Some(cell) = self.cells.get(method).and_then(|row| row.get(code)) else {
            return;
        };
        let histogram = cell.get_or_init(|| {
            let (service, name) = match METHODS.get(method) {
                Some(m) => (m.service, m.method),
                None => ("unknown", "unknown"),
            };
            metrics::histogram!(NAME, "service" => service, "method" => name, "code" => CODES[code])
        });
        histogram.record(started.elapsed().as_secs_f64());
    }
}

/// The tower layer measuring every call (see the module's documentation). Build it after
/// the metrics recorder is installed: it keeps the handles it registers.
#[derive(Clone)]
pub struct RpcMetricsLayer {
    table: Arc<Table>,
}

impl RpcMetricsLayer {
    /// A layer recording into the installed recorder (a no-op without one).
    pub fn new() -> Self {
        let cells = (0..=UNKNOWN)
            .map(|_| std::array::from_fn(|_| OnceLock::new()))
            .collect();
        RpcMetricsLayer {
            table: Arc::new(Table { cells }),
        }
    }
}

impl Default for RpcMetricsLayer {
    fn default() -> Self {
        Self::new()
    }
}

impl<S> tower::Layer<S> for RpcMetricsLayer {
    type Service = RpcMetrics<S>;

    fn layer(&self, inner: S) -> RpcMetrics<S> {
        RpcMetrics {
            inner,
            table: self.table.clone(),
        }
    }
}

/// The service [`RpcMetricsLayer`] wraps around the server's routes.
#[derive(Clone)]
pub struct RpcMetrics<S> {
    inner: S,
    table: Arc<Table>,
}

impl<S, ReqBody, ResBody> tower::Service<http::Request<ReqBody>> for RpcMetrics<S>
where
    S: tower::Service<http::Request<ReqBody>, Response = http::Response<ResBody>>,
{
    type Response = http::Response<RpcBody<ResBody>>;
    type Error = S::Error;
    type Future = RpcFuture<S::Future>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), S::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: http::Request<ReqBody>) -> Self::Future {
        let path = req.uri().path();
        let (method, streaming) = match METHODS.iter().position(|m| m.is(path)) {
            Some(i) => (i, METHODS[i].streaming),
            None => (UNKNOWN, false),
        };
        let started = Instant::now();
        RpcFuture {
            inner: self.inner.call(req),
            pending: Some(Pending {
                table: self.table.clone(),
                method,
                streaming,
                started,
            }),
        }
    }
}

/// A call not yet recorded.
struct Pending {
    table: Arc<Table>,
    method: usize,
    streaming: bool,
    started: Instant,
}

impl Pending {
    fn record(self, code: usize) {
        self.table.record(self.method, code, self.started);
    }
}

/// The index in [`CODES`] of a `grpc-status` value (`Unknown` for anything else).
fn code_of(value: &http::HeaderValue) -> usize {
    std::str::from_utf8(value.as_bytes())
        .ok()
        .and_then(|v| v.parse::<usize>().ok())
        .filter(|&c| c < CODES.len())
        .unwrap_or(UNKNOWN_CODE)
}

pin_project_lite::pin_project! {
    /// The response future of [`RpcMetrics`].
    pub struct RpcFuture<F> {
        #[pin]
        inner: F,
        pending: Option<Pending>,
    }
}

impl<F, B, E> std::future::Future for RpcFuture<F>
where
    F: std::future::Future<Output = Result<http::Response<B>, E>>,
{
    type Output = Result<http::Response<RpcBody<B>>, E>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.project();
        let answer = std::task::ready!(this.inner.poll(cx));
        let mut pending = this.pending.take();
        let Ok(response) = answer else {
            // The service failed without an HTTP answer: the connection ends.
            if let Some(p) = pending {
                p.record(UNKNOWN_CODE);
            }
            return Poll::Ready(answer.map(|r| r.map(|b| RpcBody::new(b, None))));
        };
        if let Some(p) = pending.take_if(|p| p.streaming) {
            p.record(response.headers().get("grpc-status").map_or(OK, code_of));
        } else if let Some(status) = response.headers().get("grpc-status") {
            // Trailers-only: the status is in the headers and the call is over.
            if let Some(p) = pending.take() {
                p.record(code_of(status));
            }
        }
        Poll::Ready(Ok(response.map(|b| RpcBody::new(b, pending))))
    }
}

pin_project_lite::pin_project! {
    /// A response body that records its call at the `grpc-status` trailer.
    pub struct RpcBody<B> {
        #[pin]
        inner: B,
        pending: Option<Pending>,
    }

    impl<B> PinnedDrop for RpcBody<B> {
        fn drop(this: Pin<&mut Self>) {
            // Dropped before its end: the client went away or the connection broke.
            if let Some(p) = this.project().pending.take() {
                p.record(CANCELLED);
            }
        }
    }
}

impl<B> RpcBody<B> {
    fn new(inner: B, pending: Option<Pending>) -> Self {
        RpcBody { inner, pending }
    }
}

impl<B: Body> Body for RpcBody<B> {
    type Data = B::Data;
    type Error = B::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<B::Data>, B::Error>>> {
        let this = self.project();
        let polled = std::task::ready!(this.inner.poll_frame(cx));
        if this.pending.is_some() {
            // Data frames pass; the trailers, an error or the end record the call.
            let code = match &polled {
                Some(Ok(frame)) => frame
                    .trailers_ref()
                    .map(|t| t.get("grpc-status").map_or(UNKNOWN_CODE, code_of)),
                Some(Err(_)) | None => Some(UNKNOWN_CODE),
            };
            if let Some(code) = code
                && let Some(p) = this.pending.take()
            {
                p.record(code);
            }
        }
        Poll::Ready(polled)
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}
