//! The `SecretFederationService` handlers: ServerKey, FetchUserKey (our users' keys, the
//! same page as FetchKey) and DeliverInvite (not yet: federation part 2). Calls reach
//! them through [`super::gate::FederationGate`], which verified the caller's token.

use std::sync::Arc;

use tonic::{Request, Response, Status};

use super::Federation;
use super::token::Verified;
use crate::domain::UserId;
use crate::error::Error;
use crate::proto::federation::secret_federation_service_server::SecretFederationService;
use crate::proto::federation::{
    DeliverInviteRequest, DeliverInviteResponse, FetchUserKeyRequest, FetchUserKeyResponse,
    ServerKeyRequest, ServerKeyResponse,
};
use crate::service::AppState;

/// The federation service over the shared state.
pub struct FederationApi {
    state: Arc<AppState>,
    federation: Arc<Federation>,
}

impl FederationApi {
    /// The service for `federation` over `state`.
    pub fn new(state: Arc<AppState>, federation: Arc<Federation>) -> Self {
        FederationApi { state, federation }
    }
}

/// The peer whose token the gate verified.
fn peer<T>(req: &Request<T>) -> Result<String, Status> {
    req.extensions()
        .get::<Verified>()
        .map(|v| v.issuer.clone())
        .ok_or_else(|| Status::unauthenticated("no verified server-to-server token"))
}

/// Counts an incoming call by its outcome and turns it into a tonic answer.
fn answer<T>(peer: &str, result: Result<T, Error>) -> Result<Response<T>, Status> {
    let outcome = match &result {
        Ok(_) => "ok",
        Err(Error::NotFound(_)) => "not_found",
        Err(Error::InvalidArgument(_)) => "invalid_argument",
        Err(Error::Unimplemented(_)) => "unimplemented",
        Err(_) => "error",
    };
    crate::telemetry::federation_call(peer, "in", outcome);
    result.map(Response::new).map_err(Status::from)
}

#[tonic::async_trait]
impl SecretFederationService for FederationApi {
    async fn server_key(
        &self,
        _req: Request<ServerKeyRequest>,
    ) -> Result<Response<ServerKeyResponse>, Status> {
        let key = &self.federation.key;
        Ok(Response::new(ServerKeyResponse {
            server_name: self.federation.server_name.clone(),
            key_id: key.key_id().to_string(),
            public_key: key.public_key().to_vec(),
        }))
    }

    async fn fetch_user_key(
        &self,
        req: Request<FetchUserKeyRequest>,
    ) -> Result<Response<FetchUserKeyResponse>, Status> {
        let peer = peer(&req)?;
        let result = async {
            let user = UserId::parse("user_id", req.get_ref().user_id)?;
            let keys = crate::service::keys::local_keys(&self.state, user).await?;
            Ok(FetchUserKeyResponse {
                current_key: keys.current_key,
                past_keys: keys.past_keys,
                more_past_keys: keys.more_past_keys,
            })
        }
        .await;
        answer(&peer, result)
    }

    async fn deliver_invite(
        &self,
        req: Request<DeliverInviteRequest>,
    ) -> Result<Response<DeliverInviteResponse>, Status> {
        let peer = peer(&req)?;
        answer(
            &peer,
            Err(Error::Unimplemented(
                "DeliverInvite is not yet supported by this server (federation part 1): \
                 invites to users of other homeservers come with part 2"
                    .into(),
            )),
        )
    }
}
