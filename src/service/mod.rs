//! The `SecretService` implementation, one file per RPC group:
//! `keys.rs` (PostKey, FetchKey, PostPrivateKey, FetchPrivateKey), `rooms.rs` (channel
//! pairs, membership, invites), `messages.rs` (PostMessage, FetchMessages) and
//! `streaming/` (StreamMessagePosting and Subscribe). `router.rs` routes those two to their
//! pre-encoded-frame handlers and everything else to the generated server.

mod account;
pub(crate) mod keys;
mod messages;
mod paging;
mod retention;
mod rooms;
pub mod router;
pub mod streaming;

use std::sync::Arc;

use tonic::{Request, Response, Status};

use crate::commit::Committer;
use crate::config::Settings;
use crate::domain::{Foreign, UserId};
use crate::error::Error;
use crate::hub::Hub;
use crate::limits::RateLimits;
use crate::proto::{self, secret_service_server::SecretService};
use crate::store::DynStore;

/// Everything a handler needs.
pub struct AppState {
    /// The database.
    pub store: DynStore,
    /// Local fan-out.
    pub hub: Arc<Hub>,
    /// Group commit for PostMessage.
    pub committer: Committer,
    /// Per-user rate limits (checked by the router and per subscription attempt).
    pub limits: Arc<RateLimits>,
    /// Configuration.
    pub settings: Arc<Settings>,
    /// Federation (server key, peers, key cache); `None` when `federation.enabled` is off.
    pub federation: Option<Arc<crate::federation::Federation>>,
    /// Key transparency: the publisher's news and the proofs.
    pub kt: Arc<crate::kt::Kt>,
    /// The raw Ed25519 public key that signs the key log's heads (GetTreeHead says it).
    pub server_public_key: [u8; 32],
}

/// The tonic service (unary RPCs; StreamMessagePosting is served by [`router`]).
#[derive(Clone)]
pub struct SecretApi {
    state: Arc<AppState>,
}

impl SecretApi {
    /// Wraps the shared state.
    pub fn new(state: Arc<AppState>) -> Self {
        SecretApi { state }
    }
}

pub use crate::requests::{check_blob, page_limit};

/// Turns a handler's result into a tonic answer and counts it.
fn answer<T>(method: &'static str, result: Result<T, Error>) -> Result<Response<T>, Status> {
    match result {
        Ok(v) => {
            crate::telemetry::rpc(method, tonic::Code::Ok);
            Ok(Response::new(v))
        }
        Err(e) => {
            crate::telemetry::rpc(method, e.code());
            // INTERNAL errors were logged with their cause where they arose.
            tracing::debug!(method, error = %e, "request refused");
            Err(e.into())
        }
    }
}

/// The caller and the message of a request.
fn parts<T>(req: Request<T>) -> Result<(UserId, T), Status> {
    let user = crate::auth::Caller::of(&req)?;
    Ok((user, req.into_inner()))
}

/// The caller, who they are if they are a user of another homeserver, and the message.
fn parts_with_origin<T>(req: Request<T>) -> Result<(UserId, Option<Foreign>, T), Status> {
    let user = crate::auth::Caller::of(&req)?;
    let origin = crate::auth::FederatedCaller::of(&req).map(|f| f.who.clone());
    Ok((user, origin, req.into_inner()))
}

type StatusResult<T> = Result<Response<T>, Status>;

#[tonic::async_trait]
impl SecretService for SecretApi {
    async fn post_key(
        &self,
        req: Request<proto::PostKeyRequest>,
    ) -> StatusResult<proto::PostKeyResponse> {
        let (user, r) = parts(req)?;
        answer(
            "PostKey",
            async { keys::post_key(&self.state, user, r.try_into()?).await }.await,
        )
    }

    async fn fetch_key(
        &self,
        req: Request<proto::FetchKeyRequest>,
    ) -> StatusResult<proto::FetchKeyResponse> {
        let requester = crate::auth::Caller::get(&req)?.limit_key;
        let r = req.into_inner();
        answer(
            "FetchKey",
            async { keys::fetch_key(&self.state, requester, r.try_into()?).await }.await,
        )
    }

    async fn post_private_key(
        &self,
        req: Request<proto::PostPrivateKeyRequest>,
    ) -> StatusResult<proto::PostPrivateKeyResponse> {
        let (user, r) = parts(req)?;
        answer(
            "PostPrivateKey",
            async { keys::post_private_key(&self.state, user, r.try_into()?).await }.await,
        )
    }

    async fn fetch_private_key(
        &self,
        req: Request<proto::FetchPrivateKeyRequest>,
    ) -> StatusResult<proto::FetchPrivateKeyResponse> {
        let (user, _) = parts(req)?;
        answer(
            "FetchPrivateKey",
            keys::fetch_private_key(&self.state, user).await,
        )
    }

    async fn generate_channel_pair(
        &self,
        req: Request<proto::GenerateChannelPairRequest>,
    ) -> StatusResult<proto::ChannelPair> {
        let (user, _) = parts(req)?;
        answer(
            "GenerateChannelPair",
            rooms::generate_channel_pair(&self.state, user).await,
        )
    }

    async fn send_invite(
        &self,
        req: Request<proto::SendInviteRequest>,
    ) -> StatusResult<proto::SendInviteResponse> {
        let requester = crate::auth::Caller::get(&req)?.limit_key;
        let (user, origin, r) = parts_with_origin(req)?;
        answer(
            "SendInvite",
            async {
                let who = rooms::Inviter {
                    user,
                    origin,
                    requester,
                };
                rooms::send_invite(&self.state, who, r.try_into()?).await
            }
            .await,
        )
    }

    async fn fetch_invites(
        &self,
        req: Request<proto::FetchInvitesRequest>,
    ) -> StatusResult<proto::FetchInvitesResponse> {
        let (user, r) = parts(req)?;
        answer(
            "FetchInvites",
            rooms::fetch_invites(&self.state, user, r.into()).await,
        )
    }

    async fn list_channel_pairs(
        &self,
        req: Request<proto::ListChannelPairsRequest>,
    ) -> StatusResult<proto::ListChannelPairsResponse> {
        let (user, r) = parts(req)?;
        answer(
            "ListChannelPairs",
            async { rooms::list_channel_pairs(&self.state, user, r.try_into()?).await }.await,
        )
    }

    async fn leave_channel_pair(
        &self,
        req: Request<proto::LeaveChannelPairRequest>,
    ) -> StatusResult<proto::LeaveChannelPairResponse> {
        let (user, r) = parts(req)?;
        answer(
            "LeaveChannelPair",
            async { rooms::leave_channel_pair(&self.state, user, r.try_into()?).await }.await,
        )
    }

    async fn remove_member(
        &self,
        req: Request<proto::RemoveMemberRequest>,
    ) -> StatusResult<proto::RemoveMemberResponse> {
        let (user, r) = parts(req)?;
        answer(
            "RemoveMember",
            async { rooms::remove_member(&self.state, user, r.try_into()?).await }.await,
        )
    }

    async fn post_message(
        &self,
        req: Request<proto::PostMessageRequest>,
    ) -> StatusResult<proto::PostMessageResponse> {
        let (user, origin, r) = parts_with_origin(req)?;
        answer(
            "PostMessage",
            async { messages::post_message(&self.state, user, origin, r.try_into()?).await }.await,
        )
    }

    async fn fetch_messages(
        &self,
        req: Request<proto::FetchMessagesRequest>,
    ) -> StatusResult<proto::FetchMessagesResponse> {
        let (user, r) = parts(req)?;
        answer(
            "FetchMessages",
            async { messages::fetch_messages(&self.state, user, r.try_into()?).await }.await,
        )
    }

    async fn federate(
        &self,
        req: Request<proto::FederateRequest>,
    ) -> StatusResult<proto::FederateResponse> {
        let caller = crate::auth::Caller::get(&req)?;
        answer(
            "Federate",
            keys::federate(&self.state, caller, req.into_inner()),
        )
    }

    async fn get_tree_head(
        &self,
        req: Request<proto::GetTreeHeadRequest>,
    ) -> StatusResult<proto::GetTreeHeadResponse> {
        crate::auth::Caller::get(&req)?;
        answer(
            "GetTreeHead",
            keys::get_tree_head(&self.state, req.into_inner()).await,
        )
    }

    async fn monitor_key(
        &self,
        req: Request<proto::MonitorKeyRequest>,
    ) -> StatusResult<proto::MonitorKeyResponse> {
        crate::auth::Caller::get(&req)?;
        let r = req.into_inner();
        answer(
            "MonitorKey",
            async { keys::monitor_key(&self.state, r.try_into()?).await }.await,
        )
    }

    async fn set_retention(
        &self,
        req: Request<proto::SetRetentionRequest>,
    ) -> StatusResult<proto::SetRetentionResponse> {
        let (user, r) = parts(req)?;
        answer(
            "SetRetention",
            async { retention::set_retention(&self.state, user, r.try_into()?).await }.await,
        )
    }

    async fn delete_account(
        &self,
        req: Request<proto::DeleteAccountRequest>,
    ) -> StatusResult<proto::DeleteAccountResponse> {
        let caller = crate::auth::Caller::get(&req)?;
        let foreign = crate::auth::FederatedCaller::of(&req).is_some();
        answer(
            "DeleteAccount",
            account::delete_account(&self.state, caller, foreign, req.into_inner()).await,
        )
    }

    type StreamMessagePostingStream =
        tokio_stream::Empty<Result<proto::StreamMessagePostingResponse, Status>>;

    /// Never reached: [`router::SecretRouter`] serves this path with pre-encoded frames.
    async fn stream_message_posting(
        &self,
        _req: Request<tonic::Streaming<proto::ManageStream>>,
    ) -> StatusResult<Self::StreamMessagePostingStream> {
        Err(Status::internal(
            "StreamMessagePosting is served by the router",
        ))
    }

    type SubscribeStream = tokio_stream::Empty<Result<proto::StreamMessagePostingResponse, Status>>;

    /// Never reached: [`router::SecretRouter`] serves this path with pre-encoded frames.
    async fn subscribe(
        &self,
        _req: Request<proto::SubscribeRequest>,
    ) -> StatusResult<Self::SubscribeStream> {
        Err(Status::internal("Subscribe is served by the router"))
    }
}
