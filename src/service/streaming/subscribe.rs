//! Subscribe: StreamMessagePosting for a fixed set of streams, server-streaming (the shape
//! gRPC-Web and its generators support).
//!
//! It is the same call: [`super::open`] registers it, starts the same session and returns
//! the same response stream; the only difference is where the session's control messages
//! come from. Here the request becomes one `ManageStream` and then the source lets go, so
//! the call is never ended by "no more control messages": it runs until the client
//! cancels it, its token expires or the server shuts down.

use std::sync::Arc;

use tonic::{Code, Request, Response, Status};

use super::{CallFuture, NoFrames, Opened};
use crate::proto::{ManageStream, PreEncoded, SubscribeRequest};
use crate::service::AppState;

/// The Subscribe handler plugged into [`crate::service::router::SecretRouter`]; like
/// StreamMessagePosting's, it leaves the call's response stream in the router's
/// [`Opened`] slot.
pub struct Handler {
    state: Arc<AppState>,
    opened: Opened,
}

impl Handler {
    /// A handler over the shared state that leaves the call's response stream in `opened`.
    pub fn new(state: Arc<AppState>, opened: Opened) -> Self {
        Handler { state, opened }
    }
}

impl tonic::server::ServerStreamingService<SubscribeRequest> for Handler {
    type Response = PreEncoded;
    type ResponseStream = NoFrames;
    type Future = CallFuture;

    fn call(&mut self, req: Request<SubscribeRequest>) -> Self::Future {
        let state = self.state.clone();
        let opened = self.opened.clone();
        Box::pin(async move {
            let caller = crate::auth::Caller::get(&req)?;
            let request = req.into_inner();
            let max = state.settings.max_stream_ids_per_message;
            let ids = request.resume_from.len() + request.subscribe_to.len();
            if ids > max {
                crate::telemetry::rpc("Subscribe", Code::InvalidArgument);
                return Err(Status::invalid_argument(format!(
                    "the Subscribe request named {ids} stream ids; at most {max} are accepted \
                     in one call (max_stream_ids_per_message): split the streams over several \
                     Subscribe calls"
                )));
            }
            let (outbound, control) = super::open(state, &caller, "Subscribe")?;
            control.send_only(manage_stream(request));
            opened.put(outbound);
            Ok(Response::new(tokio_stream::empty()))
        })
    }
}

/// The `ManageStream` a Subscribe request stands for.
fn manage_stream(request: SubscribeRequest) -> ManageStream {
    ManageStream {
        subscribe_to: request.subscribe_to,
        unsubscribe_to: Vec::new(),
        resume_from: request.resume_from,
        invites_after: request.invites_after,
    }
}
