//! Routes `/protocol.secret.v1.SecretService/*`: StreamMessagePosting and Subscribe go to
//! the streaming handlers (tonic reads their requests; their bodies,
//! [`streaming::Frames`], send frames encoded once per event, [`PreEncoded`]);
//! every other method goes to the tonic-generated server.
//!
//! Before either, in this order: the caller's rate limit for the method's class (refused
//! before the request is even decoded), the caller's unary calls in progress
//! (`max_in_flight_per_user`), and the request-size guard
//! ([`crate::limits::request_size`]). Unary calls then run under the `unary_timeout_ms`
//! deadline. A user of another homeserver is limited by (homeserver, user id)
//! ([`crate::auth::limit_key`]) before any database work; the id this database knows them
//! by is read after the limits, within that deadline (for the streaming calls, before
//! they open).

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
use crate::proto::{ManageStream, PreEncoded, StreamingCodec, SubscribeRequest};

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
    /// it among the caller's calls in progress; `key` is the caller's
    /// [`Caller::limit_key`].
    fn admit(&self, method: &'static str, key: Option<i64>) -> Result<Option<Slot>, Status> {
        let Some(user) = key else {
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
            return self.dispatch(method, req, None);
        };
        // A user of another homeserver: admitted to the RPCs of pairs hosted here. They are
        // rate-limited by (issuer, sub) like any user, before any database work; the id
        // this database knows them by is read after that, within the call's deadline.
        match self.admit_foreign(method, &foreign) {
            Ok(caller) => {
                req.extensions_mut().insert(caller);
                self.dispatch(method, req, Some(foreign))
            }
            Err(refused) => {
                crate::telemetry::rpc(method, refused.code());
                Box::pin(std::future::ready(Ok(refused.into_http())))
            }
        }
    }
}

impl SecretRouter {
    /// The provisional [`Caller`] of a foreign user, before their id here is known:
    /// PERMISSION_DENIED for an RPC that belongs to their own homeserver (DESIGN §9);
    /// otherwise [`UserId::NOBODY`], rate-limited by [`crate::auth::limit_key`].
    fn admit_foreign(
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
        if self.state.federation.is_none() {
            return Err(Status::unauthenticated("federation is off on this server"));
        }
        Ok(Caller {
            user: UserId::NOBODY,
            expires_at: foreign.expires_at,
            limit_key: crate::auth::limit_key(&foreign.who),
            issued_at: None,
        })
    }

    /// The id this database knows a foreign caller by, put into the request's [`Caller`]
    /// ([`UserId::NOBODY`] when they hold nothing here: no row is written for a user who
    /// merely calls). FetchKey, GetTreeHead and MonitorKey need no id and read nothing.
    async fn resolve_foreign(
        state: &AppState,
        method: &'static str,
        foreign: &FederatedCaller,
        req: &mut http::Request<Body>,
    ) -> Result<(), Status> {
        if matches!(method, "FetchKey" | "GetTreeHead" | "MonitorKey") {
            return Ok(());
        }
        let Some(federation) = &state.federation else {
            return Err(Status::unauthenticated("federation is off on this server"));
        };
        let id = federation
            .ids
            .get(&state.store, &foreign.who)
            .await
            .map_err(Status::from)?;
        if let (Some(id), Some(caller)) = (id, req.extensions_mut().get_mut::<Caller>()) {
            caller.user = id;
        }
        Ok(())
    }

    /// Rate limits, calls in progress, the request-size guard, then (for a foreign caller,
    /// within the deadline) their id here, then the handler.
    fn dispatch(
        &mut self,
        method: &'static str,
        req: http::Request<Body>,
        foreign: Option<FederatedCaller>,
    ) -> BoxFuture {
        let key = req.extensions().get::<Caller>().map(|c| c.limit_key);
        let slot = match self.admit(method, key) {
            Ok(slot) => slot,
            Err(refused) => return Box::pin(std::future::ready(Ok(refused.into_http()))),
        };
        let limit = self.state.settings.max_request_bytes;
        let deadline = Duration::from_millis(self.state.settings.unary_timeout_ms);
        let (mut req, tripped) = request_size::guard(req, limit);
        let state = self.state.clone();
        // The foreign caller's id, read within the unary deadline (a locked or slow
        // database costs them the deadline at most, never more).
        let resolve = async move |req: &mut http::Request<Body>| -> Result<(), Status> {
            let Some(foreign) = &foreign else {
                return Ok(());
            };
            match tokio::time::timeout(
                deadline,
                Self::resolve_foreign(&state, method, foreign, req),
            )
            .await
            {
                Ok(resolved) => resolved,
                Err(_) => Err(past_deadline(deadline)),
            }
        };
        let refused = move |status: Status| {
            crate::telemetry::rpc(method, status.code());
            Ok(status.into_http())
        };
        if req.uri().path() == STREAM_PATH {
            let opened = streaming::Opened::default();
            let handler = streaming::Handler::new(self.state.clone(), opened.clone());
            Box::pin(async move {
                if let Err(status) = resolve(&mut req).await {
                    return refused(status);
                }
                let codec = StreamingCodec::<PreEncoded, ManageStream>::default();
                let mut grpc = tonic::server::Grpc::new(codec)
                    .apply_max_message_size_config(Some(limit), None);
                let response = opened.respond(grpc.streaming(handler, req).await);
                Ok(response.map(|body| Body::new(request_size::Trailing::new(body, tripped))))
            })
        } else if req.uri().path() == SUBSCRIBE_PATH {
            let opened = streaming::Opened::default();
            let handler = streaming::subscribe::Handler::new(self.state.clone(), opened.clone());
            Box::pin(async move {
                if let Err(status) = resolve(&mut req).await {
                    return refused(status);
                }
                let codec = StreamingCodec::<PreEncoded, SubscribeRequest>::default();
                let mut grpc = tonic::server::Grpc::new(codec)
                    .apply_max_message_size_config(Some(limit), None);
                let response = opened.respond(grpc.server_streaming(handler, req).await);
                Ok(response.map(|body| Body::new(request_size::Trailing::new(body, tripped))))
            })
        } else {
            let mut generated = self.generated.clone();
            Box::pin(async move {
                let call = async move {
                    resolve(&mut req).await?;
                    Ok::<_, Status>(generated.call(req).await)
                };
                match tokio::time::timeout(deadline, call).await {
                    Ok(Ok(answer)) => {
                        answer.map(|response| in_flight::hold_until_sent(response, slot))
                    }
                    Ok(Err(status)) => refused(status),
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
/// server hosts, FetchKey, and the reads of our key transparency log (GetTreeHead,
/// MonitorKey: public, like keys). The rest (PostKey, PostPrivateKey, FetchPrivateKey,
/// GenerateChannelPair, FetchInvites, Federate) belongs to the user's own homeserver.
const FOREIGN_METHODS: [&str; 12] = [
    "FetchKey",
    "GetTreeHead",
    "MonitorKey",
    "SendInvite",
    "ListChannelPairs",
    "LeaveChannelPair",
    "RemoveMember",
    "PostMessage",
    "FetchMessages",
    "StreamMessagePosting",
    "Subscribe",
    "SetRetention",
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
    const METHODS: [&str; 19] = [
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
        "GetTreeHead",
        "MonitorKey",
        "SetRetention",
        "DeleteAccount",
    ];
    let name = path.rsplit('/').next().unwrap_or_default();
    METHODS
        .into_iter()
        .find(|m| *m == name)
        .unwrap_or("unknown")
}
