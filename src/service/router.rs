//! Routes `/protocol.secret.v1.SecretService/*`: StreamMessagePosting goes to the
//! streaming handler, which sends frames encoded once per event ([`PreEncoded`]); every
//! other method goes to the tonic-generated server.

use std::convert::Infallible;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use tonic::body::Body;
use tonic::server::NamedService;
use tower::Service;

use super::{AppState, SecretApi, streaming};
use crate::proto::secret_service_server::{SERVICE_NAME, SecretServiceServer};
use crate::proto::{ManageStream, PreEncoded};

/// Path of the bidirectional streaming method.
pub const STREAM_PATH: &str = "/protocol.secret.v1.SecretService/StreamMessagePosting";

/// Largest request message accepted (the largest legitimate one is a 64 KiB blob).
const MAX_DECODE: usize = 256 * 1024;

/// The routing service for the whole `SecretService`.
#[derive(Clone)]
pub struct SecretRouter {
    generated: SecretServiceServer<SecretApi>,
    state: Arc<AppState>,
}

impl SecretRouter {
    /// Builds the router over the shared state.
    pub fn new(state: Arc<AppState>) -> Self {
        SecretRouter {
            generated: SecretServiceServer::new(SecretApi::new(state.clone()))
                .max_decoding_message_size(MAX_DECODE),
            state,
        }
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

    fn call(&mut self, req: http::Request<Body>) -> Self::Future {
        if req.uri().path() == STREAM_PATH {
            let handler = streaming::Handler::new(self.state.clone());
            Box::pin(async move {
                let codec = tonic_prost::ProstCodec::<PreEncoded, ManageStream>::default();
                let mut grpc = tonic::server::Grpc::new(codec)
                    .apply_max_message_size_config(Some(MAX_DECODE), None);
                Ok(grpc.streaming(handler, req).await)
            })
        } else {
            self.generated.call(req)
        }
    }
}
