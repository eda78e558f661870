//! The `SecretService` implementation, one file per RPC group:
//! `keys.rs` (PostKey, FetchKey, PostPrivateKey, FetchPrivateKey), `rooms.rs` (channel
//! pairs, membership, invites), `messages.rs` (PostMessage, FetchMessages) and
//! `streaming.rs` (StreamMessagePosting). `router.rs` routes StreamMessagePosting to its
//! pre-encoded-frame handler and everything else to the generated server.

mod keys;
mod messages;
mod paging;
mod rooms;
pub mod router;
pub mod streaming;

use std::sync::Arc;

use tonic::{Request, Response, Status};

use crate::commit::Committer;
use crate::config::Settings;
use crate::error::Error;
use crate::hub::Hub;
use crate::limits::RateLimits;
use crate::proto::{self, secret_service_server::SecretService};
use crate::store::DynStore;

/// Largest opaque blob (ciphertext, invite, private key) in bytes: 64 KiB.
pub const MAX_BLOB: usize = 64 * 1024;
/// Page size when `limit` is 0.
pub const DEFAULT_LIMIT: usize = 100;
/// Largest page size; larger limits are clamped.
pub const MAX_LIMIT: usize = 1000;

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

/// Checks an opaque blob's size: 1 byte to 64 KiB.
pub fn check_blob(field: &str, len: usize) -> Result<(), Error> {
    if len == 0 {
        return Err(Error::invalid(format!(
            "{field} is empty; it must hold 1 byte to 64 KiB"
        )));
    }
    if len > MAX_BLOB {
        return Err(Error::invalid(format!(
            "{field} is {len} bytes; the limit is {MAX_BLOB} bytes (64 KiB)"
        )));
    }
    Ok(())
}

/// Page size from a request's `limit`: 0 → 100, above 1000 → 1000.
pub fn page_limit(limit: u32) -> usize {
    match limit as usize {
        0 => DEFAULT_LIMIT,
        n => n.min(MAX_LIMIT),
    }
}

/// Whether `homeserver` names this server; a foreign one is UNIMPLEMENTED until
/// federation exists.
pub fn check_local(settings: &Settings, homeserver: &str) -> Result<(), Error> {
    if homeserver.is_empty() || homeserver == settings.server_name {
        Ok(())
    } else {
        Err(Error::Unimplemented(format!(
            "homeserver {homeserver:?} is not this server ({:?}); reaching users on other \
             homeservers needs federation, which secretd does not support yet",
            settings.server_name
        )))
    }
}

/// Turns a handler's result into a tonic answer and counts it.
fn answer<T>(method: &'static str, result: Result<T, Error>) -> Result<Response<T>, Status> {
    match result {
        Ok(v) => {
            crate::telemetry::rpc(method, tonic::Code::Ok);
            Ok(Response::new(v))
        }
        Err(e) => {
            crate::telemetry::rpc(method, e.code());
            if matches!(e, Error::Internal(_)) {
                tracing::error!(method, error = %e, "internal error");
            } else {
                tracing::debug!(method, error = %e, "request refused");
            }
            Err(e.into())
        }
    }
}

/// The caller and the message of a request.
fn parts<T>(req: Request<T>) -> Result<(i64, T), Status> {
    let user = crate::auth::Caller::of(&req)?;
    Ok((user, req.into_inner()))
}

type StatusResult<T> = Result<Response<T>, Status>;

#[tonic::async_trait]
impl SecretService for SecretApi {
    async fn post_key(
        &self,
        req: Request<proto::PostKeyRequest>,
    ) -> StatusResult<proto::PostKeyResponse> {
        let (user, r) = parts(req)?;
        answer("PostKey", keys::post_key(&self.state, user, r).await)
    }

    async fn fetch_key(
        &self,
        req: Request<proto::FetchKeyRequest>,
    ) -> StatusResult<proto::FetchKeyResponse> {
        let (_, r) = parts(req)?;
        answer("FetchKey", keys::fetch_key(&self.state, r).await)
    }

    async fn post_private_key(
        &self,
        req: Request<proto::PostPrivateKeyRequest>,
    ) -> StatusResult<proto::PostPrivateKeyResponse> {
        let (user, r) = parts(req)?;
        answer(
            "PostPrivateKey",
            keys::post_private_key(&self.state, user, r).await,
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
        let (user, r) = parts(req)?;
        answer("SendInvite", rooms::send_invite(&self.state, user, r).await)
    }

    async fn fetch_invites(
        &self,
        req: Request<proto::FetchInvitesRequest>,
    ) -> StatusResult<proto::FetchInvitesResponse> {
        let (user, r) = parts(req)?;
        answer(
            "FetchInvites",
            rooms::fetch_invites(&self.state, user, r).await,
        )
    }

    async fn list_channel_pairs(
        &self,
        req: Request<proto::ListChannelPairsRequest>,
    ) -> StatusResult<proto::ListChannelPairsResponse> {
        let (user, r) = parts(req)?;
        answer(
            "ListChannelPairs",
            rooms::list_channel_pairs(&self.state, user, r).await,
        )
    }

    async fn leave_channel_pair(
        &self,
        req: Request<proto::LeaveChannelPairRequest>,
    ) -> StatusResult<proto::LeaveChannelPairResponse> {
        let (user, r) = parts(req)?;
        answer(
            "LeaveChannelPair",
            rooms::leave_channel_pair(&self.state, user, r).await,
        )
    }

    async fn remove_member(
        &self,
        req: Request<proto::RemoveMemberRequest>,
    ) -> StatusResult<proto::RemoveMemberResponse> {
        let (user, r) = parts(req)?;
        answer(
            "RemoveMember",
            rooms::remove_member(&self.state, user, r).await,
        )
    }

    async fn post_message(
        &self,
        req: Request<proto::PostMessageRequest>,
    ) -> StatusResult<proto::PostMessageResponse> {
        let (user, r) = parts(req)?;
        answer(
            "PostMessage",
            messages::post_message(&self.state, user, r).await,
        )
    }

    async fn fetch_messages(
        &self,
        req: Request<proto::FetchMessagesRequest>,
    ) -> StatusResult<proto::FetchMessagesResponse> {
        let (user, r) = parts(req)?;
        answer(
            "FetchMessages",
            messages::fetch_messages(&self.state, user, r).await,
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
}
