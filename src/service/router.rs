//! Routes `/protocol.secret.v1.SecretService/*`: StreamMessagePosting and Subscribe go to
//! the streaming handlers, which send frames encoded once per event ([`PreEncoded`]);
//! every other method goes to the tonic-generated server.
//!
//! Before either, in this order: the caller's rate limit for the method's class (refused
//! before the request is even decoded), the caller's unary calls in progress
//! (`max_in_flight_per_user`), and the request-size guard
//! ([`crate::limits::request_size`]). Unary calls then run under the `unary_timeout_ms`
//! deadline.

use std::convert::Infallible;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use tonic::body::Body;
use tonic::server::NamedService;
use tonic::{Code, Status};
use tower::Service;

use super::{AppState, SecretApi, streaming};
use crate::auth::{Caller, FederatedCaller};
use crate::domain::UserId;
use crate::limits::in_flight::{self, InFlight, Slot};
use crate::limits::{RateClass, request_size};
use crate::proto::secret_service_server::{SERVICE_NAME, SecretServiceServer};
use crate::proto::{ManageStream, PreEncoded, SubscribeRequest};

/// Path of the bidirectional streaming method.
pub const STREAM_PATH: &str = "/protocol.secret.v1.SecretService/StreamMessagePosting";
/// Path of the server-streaming subscription method.
pub const SUBSCRIBE_PATH: &str = "/protocol.secret.v1.SecretService/Subscribe";

/// The routing service for the whole `SecretService`.
#[derive(Clone)]
pub struct SecretRouter {
    generated: SecretServiceServer<SecretApi>,
    state: Arc<AppState>,
    in_flight: Arc<InFlight>,
}

impl SecretRouter {
    /// Builds the router over the shared state.
    pub fn new(state: Arc<AppState>) -> Self {
        SecretRouter {
            // The request guard refuses larger messages first; tonic's own check stays as
            // a backstop.
            generated: SecretServiceServer::new(SecretApi::new(state.clone()))
                .max_decoding_message_size(state.settings.max_request_bytes),
            in_flight: Arc::new(InFlight::new(state.settings.max_in_flight_per_user)),
            state,
        }
    }

    /// Checks the caller's rate limit for the method's class and, for a unary call, counts
    /// it among the caller's calls in progress.
    fn admit(&self, method: &'static str, user: Option<i64>) -> Result<Option<Slot>, Status> {
        let Some(user) = user else {
            return Ok(None); // the handler answers UNAUTHENTICATED
        };
        let admitted = match RateClass::of_method(method) {
            Some(class) => self.state.limits.check(class, user),
            None => Ok(()),
        }
        .and_then(|()| match method {
            // max_connections_per_user caps these
            "StreamMessagePosting" | "Subscribe" => Ok(None),
            _ => self.in_flight.enter(user),
        });
        admitted.map_err(|refused| {
            crate::telemetry::rpc(method, refused.code());
            tracing::debug!(method, user, error = %refused, "refused by a limit");
            refused.into()
        })
    }
}

impl NamedService for SecretRouter {
    const NAME: &'static str = SERVICE_NAME;
}

type BoxFuture = Pin<Box<dyn Future<Output = Result<http::Response<Body>, Infallible>> + Send>>;

impl Service<http::Request<Body>> for SecretRouter {
    type Response = http::Response<Body>;
    type Error = Infallible;
    type Future = BoxFuture;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, mut req: http::Request<Body>) -> Self::Future {
        let method = method_name(req.uri().path());
        let Some(foreign) = req.extensions().get::<FederatedCaller>().cloned() else {
            return self.dispatch(method, req);
        };
        // A user of another homeserver: admitted to the RPCs of pairs hosted here, under
        // the id this database knows them by.
        let mut router = self.clone();
        Box::pin(async move {
            match router.admit_foreign(method, &foreign).await {
                Ok(caller) => {
                    req.extensions_mut().insert(caller);
                    router.dispatch(method, req).await
                }
                Err(refused) => {
                    crate::telemetry::rpc(method, refused.code());
                    Ok(refused.into_http())
                }
            }
        })
    }
}

impl SecretRouter {
    /// The [`Caller`] a foreign user acts as here: PERMISSION_DENIED for an RPC that
    /// belongs to their own homeserver (DESIGN §9); their id in this database, or
    /// [`UserId::NOBODY`] when they hold nothing here (no row is written for a user who
    /// merely calls).
    async fn admit_foreign(
        &self,
        method: &'static str,
        foreign: &FederatedCaller,
    ) -> Result<Caller, Status> {
        let home = &foreign.who.homeserver;
        if !FOREIGN_METHODS.contains(&method) {
            return Err(Status::permission_denied(format!(
                "{method} belongs to your own homeserver: call this on your homeserver {home} \
                 (this server serves users of other homeservers only in the channel pairs \
                 it hosts)"
            )));
        }
        let federation = self
            .state
            .federation
            .as_ref()
            .ok_or_else(|| Status::unauthenticated("federation is off on this server"))?;
        let id = federation
            .ids
            .get(&self.state.store, &foreign.who)
            .await
            .map_err(Status::from)?;
        Ok(Caller {
            user: id.unwrap_or(UserId::NOBODY),
            expires_at: foreign.expires_at,
        })
    }

    /// Rate limits, calls in progress, the request-size guard, then the handler.
    fn dispatch(&mut self, method: &'static str, req: http::Request<Body>) -> BoxFuture {
        let user = req.extensions().get::<Caller>().map(|c| c.user.get());
        let slot = match self.admit(method, user) {
            Ok(slot) => slot,
            Err(refused) => return Box::pin(std::future::ready(Ok(refused.into_http()))),
        };
        let limit = self.state.settings.max_request_bytes;
        let (req, tripped) = request_size::guard(req, limit);
        if req.uri().path() == STREAM_PATH {
            let handler = streaming::Handler::new(self.state.clone());
            Box::pin(async move {
                let codec = tonic_prost::ProstCodec::<PreEncoded, ManageStream>::default();
                let mut grpc = tonic::server::Grpc::new(codec)
                    .apply_max_message_size_config(Some(limit), None);
                let response = grpc.streaming(handler, req).await;
                Ok(response.map(|body| Body::new(request_size::Trailing::new(body, tripped))))
            })
        } else if req.uri().path() == SUBSCRIBE_PATH {
            let handler = streaming::subscribe::Handler::new(self.state.clone());
            Box::pin(async move {
                let codec = tonic_prost::ProstCodec::<PreEncoded, SubscribeRequest>::default();
                let mut grpc = tonic::server::Grpc::new(codec)
                    .apply_max_message_size_config(Some(limit), None);
                let response = grpc.server_streaming(handler, req).await;
                Ok(response.map(|body| Body::new(request_size::Trailing::new(body, tripped))))
            })
        } else {
            let deadline = Duration::from_millis(self.state.settings.unary_timeout_ms);
            let call = self.generated.call(req);
            Box::pin(async move {
                match tokio::time::timeout(deadline, call).await {
                    Ok(answer) => answer.map(|response| in_flight::hold_until_sent(response, slot)),
                    Err(_) => {
                        crate::telemetry::rpc(method, Code::DeadlineExceeded);
                        Ok(past_deadline(deadline).into_http())
                    }
                }
            })
        }
    }
}

/// What a user of another homeserver may call here (DESIGN §9): the RPCs of pairs this
/// server hosts, and FetchKey. The rest (PostKey, PostPrivateKey, FetchPrivateKey,
/// GenerateChannelPair, FetchInvites, Federate) belongs to the user's own homeserver.
const FOREIGN_METHODS: [&str; 9] = [
    "FetchKey",
    "SendInvite",
    "ListChannelPairs",
    "LeaveChannelPair",
    "RemoveMember",
    "PostMessage",
    "FetchMessages",
    "StreamMessagePosting",
    "Subscribe",
];

/// The answer to a unary call that ran past `unary_timeout_ms`.
///
/// DEADLINE_EXCEEDED rather than UNAVAILABLE: the call was stopped where it stood, so a
/// write may or may not have taken effect, and that is what this code tells a client
/// (UNAVAILABLE promises that nothing happened). Retrying is safe: a PostMessage retry
/// with the same counter and bytes returns the original event id.
fn past_deadline(deadline: Duration) -> Status {
    Status::deadline_exceeded(format!(
        "the call did not finish within the server's deadline of {} ms (config key \
         unary_timeout_ms), probably because the database is slow or locked; it may or may not \
         have taken effect: retry (a repeated PostMessage returns the original event id)",
        deadline.as_millis()
    ))
}

/// The method name of a SecretService path (`/protocol.secret.v1.SecretService/PostKey` →
/// `PostKey`), as a static string for metrics; "unknown" for anything else.
fn method_name(path: &str) -> &'static str {
    const METHODS: [&str; 15] = [
        "PostKey",
        "FetchKey",
        "PostPrivateKey",
        "FetchPrivateKey",
        "GenerateChannelPair",
        "SendInvite",
        "FetchInvites",
        "ListChannelPairs",
        "LeaveChannelPair",
        "RemoveMember",
        "PostMessage",
        "FetchMessages",
        "StreamMessagePosting",
        "Federate",
        "Subscribe",
    ];
    let name = path.rsplit('/').next().unwrap_or_default();
    METHODS
        .into_iter()
        .find(|m| *m == name)
        .unwrap_or("unknown")
}
