//! The gate in front of `SecretFederationService`: every call except `ServerKey` must
//! carry a valid "s2s" token of a configured peer (`token.rs`) minted for the method
//! called (`mth`), each peer's calls pass its rate limit (`federation.rate_per_sec` /
//! `rate_burst`, per replica; 0 = off), and a token is accepted once (`jti`, see
//! `replay.rs`). The verified token goes into the request's extensions for the handlers.

use std::convert::Infallible;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use governor::{DefaultKeyedRateLimiter, Quota, RateLimiter};
use tonic::Status;
use tonic::body::Body;
use tonic::server::NamedService;
use tower::Service;

use super::Federation;
use super::replay::ReplayCache;
use super::token::{self, TokenType};
use crate::error::Error;

/// Wraps the generated federation server `S` with token checks and per-peer limits.
#[derive(Clone)]
pub struct FederationGate<S> {
    inner: S,
    federation: Arc<Federation>,
    limiter: Option<Arc<DefaultKeyedRateLimiter<String>>>,
    replays: Arc<ReplayCache>,
}

impl<S> FederationGate<S> {
    /// The gate in front of `inner`.
    pub fn new(inner: S, federation: Arc<Federation>) -> Self {
        let settings = &federation.settings;
        let limiter = (settings.rate_per_sec > 0.0)
            .then(|| {
                let burst = std::num::NonZeroU32::new(settings.rate_burst)?;
                let quota =
                    Quota::with_period(Duration::from_secs_f64(1.0 / settings.rate_per_sec))?
                        .allow_burst(burst);
                Some(Arc::new(RateLimiter::keyed(quota)))
            })
            .flatten();
        FederationGate {
            inner,
            federation,
            limiter,
            replays: Arc::default(),
        }
    }

    /// Verifies the call's token and the peer's rate; the verified token on success.
    fn admit(&self, req: &http::Request<Body>) -> Result<token::Verified, (String, Status)> {
        let unknown = |msg: String| ("unknown".to_string(), Status::unauthenticated(msg));
        let header = req
            .headers()
            .get(http::header::AUTHORIZATION)
            .ok_or_else(|| {
                unknown(
                    "missing `authorization: Bearer <token>` metadata: server-to-server calls \
                     carry an s2s token signed with the calling server's key"
                        .into(),
                )
            })?;
        let bearer = header
            .to_str()
            .ok()
            .and_then(|v| {
                v.strip_prefix("Bearer ")
                    .or_else(|| v.strip_prefix("bearer "))
            })
            .map(str::trim)
            .ok_or_else(|| unknown("the authorization metadata must be `Bearer <jwt>`".into()))?;
        let fed = &self.federation;
        let verified = token::verify(bearer, &fed.server_name, TokenType::S2s, |iss| {
            fed.peers.pinned_key(iss)
        })
        .map_err(unknown)?;
        let peer = verified.issuer.clone();
        let path = req.uri().path();
        if verified.method.as_deref() != Some(path) {
            return Err((
                peer,
                Status::unauthenticated(format!(
                    "the s2s token was minted for {:?} (mth), not for this call {path:?}: sign \
                     a new token for every call",
                    verified.method.as_deref().unwrap_or_default()
                )),
            ));
        }
        if let Some(limiter) = &self.limiter
            && let Err(not_until) = limiter.check_key(&peer)
        {
            use governor::clock::{Clock, DefaultClock};
            let wait = not_until.wait_time_from(DefaultClock::default().now());
            let retry_after_ms = u64::try_from(wait.as_millis()).unwrap_or(u64::MAX).max(1);
            let refused = Error::Throttled {
                message: format!(
                    "homeserver {peer:?} is calling faster than this server allows (config keys \
                     federation.rate_per_sec and federation.rate_burst); retry in \
                     {retry_after_ms} ms"
                ),
                retry_after_ms,
            };
            return Err((peer, refused.into()));
        }
        let jti = verified.jti.as_deref().unwrap_or_default();
        let forget_at = verified.expires_at.saturating_add(token::LEEWAY_SECS);
        let now = crate::time::now_micros().max(0) as u64 / 1_000_000;
        if let Err(refusal) = self.replays.first_use(&peer, jti, forget_at, now) {
            let status = refusal.status(&peer);
            return Err((peer, status));
        }
        Ok(verified)
    }
}

impl<S: NamedService> NamedService for FederationGate<S> {
    const NAME: &'static str = S::NAME;
}

type BoxFuture = Pin<Box<dyn Future<Output = Result<http::Response<Body>, Infallible>> + Send>>;

impl<S> Service<http::Request<Body>> for FederationGate<S>
where
    S: Service<http::Request<Body>, Response = http::Response<Body>, Error = Infallible>
        + Clone
        + Send
        + 'static,
    S::Future: Send + 'static,
{
    type Response = http::Response<Body>;
    type Error = Infallible;
    type Future = BoxFuture;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut req: http::Request<Body>) -> Self::Future {
        // ServerKey is public: operators and peers compare it with their pinned key.
        if !req.uri().path().ends_with("/ServerKey") {
            match self.admit(&req) {
                Ok(verified) => {
                    req.extensions_mut().insert(verified);
                }
                Err((peer, refused)) => {
                    let outcome = match refused.code() {
                        tonic::Code::ResourceExhausted => "rate_limited",
                        _ => "unauthenticated",
                    };
                    crate::telemetry::federation_call(&peer, "in", outcome);
                    tracing::info!(peer, error = %refused.message(), "server-to-server call refused");
                    return Box::pin(std::future::ready(Ok(refused.into_http())));
                }
            }
        }
        Box::pin(self.inner.call(req))
    }
}
