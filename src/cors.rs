//! CORS for gRPC-Web calls from browser pages on other origins, to the letter of the Fetch
//! standard.
//!
//! - Requests without an `Origin` header (native gRPC clients, curl, same-origin pages)
//!   pass through untouched: no CORS header is added to their responses.
//! - A preflight (`OPTIONS` with `Origin` and `Access-Control-Request-Method`) from an
//!   allowed origin is answered here with 200 and the lists below; from any other origin
//!   with 403 and no CORS headers, so the browser refuses the call.
//! - A call from an allowed origin gets `Access-Control-Allow-Origin` and
//!   `Access-Control-Expose-Headers`; from any other origin it is served without them, and
//!   the browser does not let the page read the answer.
//!
//! The allowed request headers are named one by one: by the Fetch standard a `*` in
//! `Access-Control-Allow-Headers` never covers `Authorization`, and spec-conformant
//! browsers refuse every authenticated call with it. Origins come from the config key
//! `cors_allowed_origins`; with `*` any origin may call and the answer is
//! `Access-Control-Allow-Origin: *` (tokens travel in a header, never in a cookie, so a
//! page never needs credentials mode and a wildcard origin exposes no ambient authority).

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use http::header::{self, HeaderName, HeaderValue};
use http::{Method, Request, Response, StatusCode};

/// Request headers a page may send: our bearer token and what gRPC-Web clients send (the
/// official generator, improbable-eng's, connect-web's and protobuf-ts's transports).
pub const ALLOW_HEADERS: &str = "authorization, content-type, grpc-timeout, \
     grpc-accept-encoding, x-grpc-web, x-user-agent, x-accept-content-transfer-encoding, \
     x-accept-response-streaming";

/// Response headers a page may read: the gRPC status (in the headers of a trailers-only
/// answer), and our trailers that carry a remedy.
pub const EXPOSE_HEADERS: &str = "grpc-status, grpc-message, grpc-status-details-bin, \
     secretd-head-counter, secretd-head-event-id, retry-after-ms";

/// Methods a page may use (gRPC-Web is always POST).
pub const ALLOW_METHODS: &str = "POST";

/// Seconds a browser may cache a preflight (Chromium caps this at 7200).
pub const MAX_AGE_SECS: &str = "7200";

/// Which origins may call.
#[derive(Debug, Clone)]
enum Origins {
    /// Any origin (`*`).
    Any,
    /// Exactly these serialized origins (`scheme://host[:port]`, lower case).
    List(Vec<String>),
}

/// The CORS policy built from `cors_allowed_origins`.
#[derive(Debug, Clone)]
pub struct Policy {
    origins: Origins,
}

impl Policy {
    /// Builds the policy from the configured origins: `*`, or origins such as
    /// `https://chat.example` or `http://127.0.0.1:8080` (scheme, host and optional port;
    /// no path). An empty list allows no cross-origin call.
    pub fn from_origins(origins: &[String]) -> anyhow::Result<Policy> {
        if origins.iter().any(|o| o.trim() == "*") {
            return Ok(Policy {
                origins: Origins::Any,
            });
        }
        let list = origins
            .iter()
            .map(|o| normalize(o))
            .collect::<anyhow::Result<Vec<_>>>()?;
        Ok(Policy {
            origins: Origins::List(list),
        })
    }

    /// The `Access-Control-Allow-Origin` value for a request's `Origin`, or None when the
    /// origin may not call.
    fn allow_origin(&self, origin: &HeaderValue) -> Option<HeaderValue> {
        match &self.origins {
            Origins::Any => Some(HeaderValue::from_static("*")),
            Origins::List(list) => {
                let asked = origin.to_str().ok()?.to_ascii_lowercase();
                list.contains(&asked).then(|| origin.clone())
            }
        }
    }

    /// True when answers depend on the request's `Origin` (a list, echoed back): caches
    /// must then keep one answer per origin.
    fn varies(&self) -> bool {
        matches!(self.origins, Origins::List(_))
    }
}

/// Checks and lower-cases one configured origin.
fn normalize(origin: &str) -> anyhow::Result<String> {
    let o = origin.trim().to_ascii_lowercase();
    let rest = o
        .strip_prefix("https://")
        .or_else(|| o.strip_prefix("http://"));
    match rest {
        Some(host)
            if !host.is_empty() && !host.contains('/') && HeaderValue::from_str(&o).is_ok() =>
        {
            Ok(o)
        }
        _ => anyhow::bail!(
            "cors_allowed_origins entry {origin:?} is not an origin: write it as the browser \
             sends it, scheme and host with an optional port and no path (for example \
             https://chat.example or http://127.0.0.1:8080), or * for any origin"
        ),
    }
}

/// The tower layer applying a [`Policy`].
#[derive(Debug, Clone)]
pub struct CorsLayer {
    policy: Arc<Policy>,
}

impl CorsLayer {
    /// A layer applying `policy`.
    pub fn new(policy: Policy) -> Self {
        CorsLayer {
            policy: Arc::new(policy),
        }
    }
}

impl<S> tower::Layer<S> for CorsLayer {
    type Service = Cors<S>;

    fn layer(&self, inner: S) -> Cors<S> {
        Cors {
            inner,
            policy: self.policy.clone(),
        }
    }
}

/// The CORS service wrapping the gRPC services.
#[derive(Debug, Clone)]
pub struct Cors<S> {
    inner: S,
    policy: Arc<Policy>,
}

type BoxFuture<T, E> = Pin<Box<dyn Future<Output = Result<T, E>> + Send>>;

impl<S, ReqBody, ResBody> tower::Service<Request<ReqBody>> for Cors<S>
where
    S: tower::Service<Request<ReqBody>, Response = Response<ResBody>> + Clone + Send + 'static,
    S::Future: Send + 'static,
    S::Error: Send + 'static,
    ReqBody: Send + 'static,
    ResBody: Default + Send + 'static,
{
    type Response = Response<ResBody>;
    type Error = S::Error;
    type Future = BoxFuture<Response<ResBody>, S::Error>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: Request<ReqBody>) -> Self::Future {
        let Some(origin) = req.headers().get(header::ORIGIN).cloned() else {
            return Box::pin(self.inner.call(req));
        };
        let allowed = self.policy.allow_origin(&origin);
        let varies = self.policy.varies();
        let preflight = req.method() == Method::OPTIONS
            && req
                .headers()
                .contains_key(header::ACCESS_CONTROL_REQUEST_METHOD);
        if preflight {
            return Box::pin(std::future::ready(Ok(preflight_answer(allowed, varies))));
        }
        let call = self.inner.call(req);
        Box::pin(async move {
            let mut response = call.await?;
            if let Some(allow) = allowed {
                let headers = response.headers_mut();
                headers.insert(header::ACCESS_CONTROL_ALLOW_ORIGIN, allow);
                headers.insert(
                    header::ACCESS_CONTROL_EXPOSE_HEADERS,
                    HeaderValue::from_static(EXPOSE_HEADERS),
                );
            }
            if varies {
                response
                    .headers_mut()
                    .append(header::VARY, HeaderValue::from_static("origin"));
            }
            Ok(response)
        })
    }
}

/// The answer to a preflight: 200 with the allowed methods and headers, or 403 without
/// any CORS header for an origin that may not call.
fn preflight_answer<B: Default>(allowed: Option<HeaderValue>, varies: bool) -> Response<B> {
    let mut response = Response::new(B::default());
    let headers = response.headers_mut();
    if varies {
        headers.insert(
            header::VARY,
            HeaderValue::from_static(
                "origin, access-control-request-method, access-control-request-headers",
            ),
        );
    }
    let Some(allow) = allowed else {
        *response.status_mut() = StatusCode::FORBIDDEN;
        return response;
    };
    let fixed: [(HeaderName, &'static str); 3] = [
        (header::ACCESS_CONTROL_ALLOW_METHODS, ALLOW_METHODS),
        (header::ACCESS_CONTROL_ALLOW_HEADERS, ALLOW_HEADERS),
        (header::ACCESS_CONTROL_MAX_AGE, MAX_AGE_SECS),
    ];
    headers.insert(header::ACCESS_CONTROL_ALLOW_ORIGIN, allow);
    for (name, value) in fixed {
        headers.insert(name, HeaderValue::from_static(value));
    }
    response
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn origins_are_checked_and_compared_without_case() {
        let p = Policy::from_origins(&["https://Chat.Example".into()]).unwrap();
        let asked = HeaderValue::from_static("https://chat.example");
        assert_eq!(p.allow_origin(&asked), Some(asked.clone()));
        assert_eq!(
            p.allow_origin(&HeaderValue::from_static("https://evil.example")),
            None
        );
        for bad in [
            "chat.example",
            "https://chat.example/",
            "ftp://x",
            "https://",
        ] {
            let err = Policy::from_origins(&[bad.into()]).unwrap_err().to_string();
            assert!(err.contains("cors_allowed_origins"), "{err}");
        }
        let any = Policy::from_origins(&["*".into()]).unwrap();
        assert_eq!(
            any.allow_origin(&asked),
            Some(HeaderValue::from_static("*"))
        );
    }
}
