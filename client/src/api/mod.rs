//! A typed async client over the generated SecretService stubs: bearer-token handling,
//! paging helpers, the head trailers of refused posts, and resumable subscriptions
//! ([`subscription`]). No cryptography here: the E2EE layer (the `device` module) sits above it.

// Requests are built with `..Default::default()` even where every field is named, so that
// fields the server's append-only proto gains later keep this code compiling.
#![allow(clippy::needless_update)]

pub mod paging;
pub mod subscription;
mod tls;

use std::future::Future;
use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock};
use std::time::Duration;

use tonic::service::interceptor::InterceptedService;
use tonic::transport::Channel;
use tonic::{Code, Request, Status};

use crate::error::{Error, Result};
use crate::proto::federation::secret_federation_service_client::SecretFederationServiceClient as FederationClient;
use crate::proto::federation::{self as fed};
use crate::proto::secret::secret_service_client::SecretServiceClient;
use crate::proto::secret::{self as pb, ChannelPair, EncryptedMessage};

/// The generated stub with the bearer interceptor.
pub type Stub = SecretServiceClient<InterceptedService<Channel, Bearer>>;

/// How long a unary call may take before the client gives up (DEADLINE_EXCEEDED).
pub const UNARY_TIMEOUT: Duration = Duration::from_secs(30);
/// Largest response the client decodes (the server keeps pages under 4 MiB by default).
pub const MAX_RECEIVE: usize = 16 * 1024 * 1024;
/// Page size the paging helpers ask for (the server's maximum).
pub const PAGE_LIMIT: u32 = 1000;
/// Trailer of a rate-limited or overloaded call: milliseconds to wait before retrying.
pub const RETRY_AFTER_TRAILER: &str = "retry-after-ms";
/// Trailer naming the stream's head counter on a refused post.
pub const HEAD_COUNTER_TRAILER: &str = "secretd-head-counter";
/// Trailer naming the stream's head event id on a refused post.
pub const HEAD_EVENT_ID_TRAILER: &str = "secretd-head-event-id";

/// Adds `authorization: Bearer <token>` to every call; the token can be replaced while
/// calls and subscriptions go on (tokens expire).
#[derive(Clone)]
pub struct Bearer(Arc<RwLock<String>>);

impl tonic::service::Interceptor for Bearer {
    fn call(&mut self, mut req: Request<()>) -> Result<Request<()>, Status> {
        let token = self.0.read().map(|t| t.clone()).unwrap_or_default();
        let value = format!("Bearer {token}").parse().map_err(|_| {
            Status::unauthenticated("the token contains characters not allowed in a header")
        })?;
        req.metadata_mut().insert("authorization", value);
        Ok(req)
    }
}

/// The stream head a refused post names (FAILED_PRECONDITION trailers).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Head {
    /// The stream's last accepted counter.
    pub counter: u64,
    /// The stream's last event id.
    pub event_id: u64,
}

/// The head named by a refused post's trailers, if present.
pub fn head_of(status: &Status) -> Option<Head> {
    let read =
        |key: &str| -> Option<u64> { status.metadata().get(key)?.to_str().ok()?.parse().ok() };
    Some(Head {
        counter: read(HEAD_COUNTER_TRAILER)?,
        event_id: read(HEAD_EVENT_ID_TRAILER)?,
    })
}

/// The delay a RESOURCE_EXHAUSTED answer asks for (trailer `retry-after-ms`), if any.
pub fn retry_after(status: &Status) -> Option<Duration> {
    let ms: u64 = status
        .metadata()
        .get(RETRY_AFTER_TRAILER)?
        .to_str()
        .ok()?
        .parse()
        .ok()?;
    Some(Duration::from_millis(ms))
}

/// A token for another homeserver (`Federate`).
#[derive(Clone, Debug)]
pub struct Federated {
    /// The bearer token to use there.
    pub token: String,
    /// Unix seconds after which it is refused.
    pub expires_at: u64,
    /// Where that homeserver serves clients ("" when the server does not say).
    pub endpoint: String,
}

/// A user's keys as FetchKey returns them.
#[derive(Clone, Debug)]
pub struct UserKeys {
    /// The current key.
    pub current: pb::Key,
    /// Past keys, newest first (possibly capped by the server).
    pub past: Vec<pb::Key>,
    /// The key-transparency proof the server sent with them, if any.
    pub proof: Option<pb::KeyProof>,
}

/// A connection to one secretd, authenticated with a bearer token.
#[derive(Clone)]
pub struct Api {
    url: String,
    ca_file: Option<PathBuf>,
    service: InterceptedService<Channel, Bearer>,
    token: Arc<RwLock<String>>,
}

impl Api {
    /// Connects to `url`: `https://host:port` over TLS (the server's certificate verified
    /// against the system's roots) or `http://host:port` in plaintext. The connection is
    /// re-established by itself after it drops.
    pub async fn connect(url: &str, token: &str) -> Result<Api> {
        Self::connect_with(url, token, None).await
    }

    /// [`Api::connect`], trusting only the CA certificate(s) of the PEM file `ca_file` for
    /// an `https://` URL (a private CA). An `https://` URL is never spoken to in
    /// plaintext: no token leaves unencrypted for it.
    pub async fn connect_with(url: &str, token: &str, ca_file: Option<&Path>) -> Result<Api> {
        let connect_err = |reason: String| Error::Connect {
            url: url.to_string(),
            reason,
        };
        let ca_file = ca_file.map(tls::absolute);
        let channel = tls::endpoint(url, ca_file.as_deref())
            .map_err(connect_err)?
            .connect_timeout(Duration::from_secs(10))
            .http2_keep_alive_interval(Duration::from_secs(30))
            .keep_alive_while_idle(true)
            .connect()
            .await
            .map_err(|e| {
                let reason = transport_reason(&e);
                let advice = match url.starts_with("https:") {
                    true => tls::advice(&reason),
                    false => "",
                };
                connect_err(format!("{reason}{advice}"))
            })?;
        let token = Arc::new(RwLock::new(token.to_string()));
        Ok(Api {
            url: url.to_string(),
            ca_file,
            service: InterceptedService::new(channel, Bearer(token.clone())),
            token,
        })
    }

    /// The server URL.
    pub fn url(&self) -> &str {
        &self.url
    }

    /// The CA file trusted for the server's certificate, if one was given (absolute).
    pub fn ca_file(&self) -> Option<&Path> {
        self.ca_file.as_deref()
    }

    /// Replaces the bearer token for all later calls (and reconnects of subscriptions).
    pub fn set_token(&self, token: &str) {
        if let Ok(mut t) = self.token.write() {
            *t = token.to_string();
        }
    }

    /// The current bearer token.
    pub fn token(&self) -> String {
        self.token.read().map(|t| t.clone()).unwrap_or_default()
    }

    /// The generated stub, for calls this wrapper does not cover.
    pub fn stub(&self) -> Stub {
        SecretServiceClient::new(self.service.clone()).max_decoding_message_size(MAX_RECEIVE)
    }

    /// One cheap authenticated call (the first invite, if any): Ok when the server accepts
    /// the token.
    pub async fn check_token(&self) -> Result<()> {
        let req = pb::FetchInvitesRequest {
            after_invite_id: 0,
            limit: 1,
            ..Default::default()
        };
        let mut stub = self.stub();
        match stub.fetch_invites(req).await {
            Ok(_) => Ok(()),
            Err(status) if status.code() == Code::Unauthenticated => Err(Error::Token(format!(
                "the server at {} refuses this token: {}",
                self.url,
                status.message()
            ))),
            Err(status) => Err(Error::rpc("FetchInvites", status)),
        }
    }

    /// The homeserver's name (its `server_name`), from the federation service's
    /// unauthenticated `ServerKey`: how other homeservers name users of this one.
    /// UNIMPLEMENTED when the server runs without federation.
    pub async fn server_name(&self) -> Result<String> {
        let mut stub = FederationClient::new(self.service.clone());
        let r = unary("ServerKey", stub.server_key(fed::ServerKeyRequest {})).await?;
        Ok(r.server_name)
    }

    /// Federate: a token for homeserver `server_id`, made by this homeserver for its
    /// user, and where that homeserver serves clients.
    pub async fn federate(&self, server_id: &str) -> Result<Federated> {
        let req = pb::FederateRequest {
            server_id: server_id.to_string(),
            ..Default::default()
        };
        let mut stub = self.stub();
        let r = unary("Federate", stub.federate(req)).await?;
        Ok(Federated {
            token: r.token,
            expires_at: r.expires_at.map_or(0, |t| t.seconds.max(0) as u64),
            endpoint: r.endpoint,
        })
    }

    /// GetTreeHead: the server's newest signed head, with a consistency proof from
    /// `known_tree_size`.
    pub async fn tree_head(&self, known_tree_size: u64) -> Result<pb::GetTreeHeadResponse> {
        let req = pb::GetTreeHeadRequest {
            known_tree_size,
            ..Default::default()
        };
        let mut stub = self.stub();
        unary("GetTreeHead", stub.get_tree_head(req)).await
    }

    /// MonitorKey of a local user: their entries after `after_seq` (and the newest), with
    /// the proof against the newest head.
    pub async fn monitor_key(
        &self,
        user_id: u64,
        after_seq: u64,
        known_tree_size: u64,
    ) -> Result<pb::KeyProof> {
        let req = pb::MonitorKeyRequest {
            user_id,
            after_seq,
            known_tree_size,
            ..Default::default()
        };
        let mut stub = self.stub();
        let r = unary("MonitorKey", stub.monitor_key(req)).await?;
        r.proof
            .ok_or_else(|| Error::Protocol("MonitorKey answered without a proof".into()))
    }

    /// PostKey: returns the fingerprint.
    pub async fn post_key(&self, spki_der: &[u8]) -> Result<Vec<u8>> {
        let req = pb::PostKeyRequest {
            key_data: spki_der.to_vec(),
            ..Default::default()
        };
        let mut stub = self.stub();
        let r = unary("PostKey", stub.post_key(req)).await?;
        Ok(r.fingerprint)
    }

    /// FetchKey of a user ("" homeserver = local).
    pub async fn fetch_key(&self, user_id: u64, homeserver: &str) -> Result<UserKeys> {
        self.fetch_key_since(user_id, homeserver, 0).await
    }

    /// FetchKey with the size of the last tree head the caller verified, so that the
    /// proof carries a consistency proof from it.
    pub async fn fetch_key_since(
        &self,
        user_id: u64,
        homeserver: &str,
        known_tree_size: u64,
    ) -> Result<UserKeys> {
        let req = pb::FetchKeyRequest {
            user_id,
            homeserver: homeserver.to_string(),
            known_tree_size,
            ..Default::default()
        };
        let mut stub = self.stub();
        let r = unary("FetchKey", stub.fetch_key(req)).await?;
        let current = r.current_key.ok_or_else(|| {
            Error::Protocol(format!(
                "FetchKey of user {user_id} returned no current key"
            ))
        })?;
        Ok(UserKeys {
            current,
            past: r.past_keys,
            proof: r.proof,
        })
    }

    /// PostPrivateKey with an optional compare-and-set version; returns the new version.
    pub async fn post_private_key(
        &self,
        blob: &[u8],
        expected_version: Option<u64>,
    ) -> Result<u64> {
        let req = pb::PostPrivateKeyRequest {
            key_data: blob.to_vec(),
            expected_version,
            ..Default::default()
        };
        let mut stub = self.stub();
        Ok(unary("PostPrivateKey", stub.post_private_key(req))
            .await?
            .version)
    }

    /// FetchPrivateKey: the blob and its version, or None when nothing is stored.
    pub async fn fetch_private_key(&self) -> Result<Option<(Vec<u8>, u64)>> {
        let mut stub = self.stub();
        match unary(
            "FetchPrivateKey",
            stub.fetch_private_key(pb::FetchPrivateKeyRequest::default()),
        )
        .await
        {
            Ok(r) => Ok(Some((r.key_data, r.version))),
            Err(e) if e.code() == Some(Code::NotFound) => Ok(None),
            Err(e) => Err(e),
        }
    }

    /// GenerateChannelPair.
    pub async fn generate_channel_pair(&self) -> Result<ChannelPair> {
        let mut stub = self.stub();
        unary(
            "GenerateChannelPair",
            stub.generate_channel_pair(pb::GenerateChannelPairRequest::default()),
        )
        .await
    }

    /// SendInvite; returns the invite id.
    pub async fn send_invite(
        &self,
        pair_id: &str,
        user_id: u64,
        homeserver: &str,
        invite: Vec<u8>,
    ) -> Result<u64> {
        let req = pb::SendInviteRequest {
            pair_id: pair_id.to_string(),
            user_id,
            homeserver: homeserver.to_string(),
            invite,
            ..Default::default()
        };
        let mut stub = self.stub();
        Ok(unary("SendInvite", stub.send_invite(req)).await?.invite_id)
    }

    /// RemoveMember (owner only) of a user ("" homeserver = the pair's own).
    pub async fn remove_member(&self, pair_id: &str, user_id: u64, homeserver: &str) -> Result<()> {
        let req = pb::RemoveMemberRequest {
            pair_id: pair_id.to_string(),
            user_id,
            homeserver: homeserver.to_string(),
            ..Default::default()
        };
        let mut stub = self.stub();
        unary("RemoveMember", stub.remove_member(req))
            .await
            .map(|_| ())
    }

    /// LeaveChannelPair.
    pub async fn leave_channel_pair(&self, pair_id: &str) -> Result<()> {
        let req = pb::LeaveChannelPairRequest {
            pair_id: pair_id.to_string(),
            ..Default::default()
        };
        let mut stub = self.stub();
        unary("LeaveChannelPair", stub.leave_channel_pair(req))
            .await
            .map(|_| ())
    }

    /// PostMessage; returns the event id. A refused counter is an [`Error::Rpc`] whose
    /// status [`head_of`] reads.
    pub async fn post_message(
        &self,
        stream_id: &str,
        counter: u64,
        ciphertext: Vec<u8>,
    ) -> Result<u64> {
        let req = pb::PostMessageRequest {
            stream_id: stream_id.to_string(),
            message: Some(EncryptedMessage {
                message: ciphertext,
                id: counter,
                ..Default::default()
            }),
            ..Default::default()
        };
        let mut stub = self.stub();
        Ok(unary("PostMessage", stub.post_message(req)).await?.event_id)
    }

    /// One FetchMessages page forward from `after` (exclusive).
    pub async fn fetch_messages_page(
        &self,
        stream_id: &str,
        after: u64,
        limit: u32,
    ) -> Result<pb::FetchMessagesResponse> {
        let req = pb::FetchMessagesRequest {
            stream_id: stream_id.to_string(),
            after_event_id: after,
            limit,
            ..Default::default()
        };
        let mut stub = self.stub();
        unary("FetchMessages", stub.fetch_messages(req)).await
    }
}

/// Runs a unary call with [`UNARY_TIMEOUT`], mapping its status into [`Error::Rpc`].
pub(crate) async fn unary<T>(
    call: &'static str,
    fut: impl Future<Output = Result<tonic::Response<T>, Status>>,
) -> Result<T> {
    match tokio::time::timeout(UNARY_TIMEOUT, fut).await {
        Ok(Ok(r)) => Ok(r.into_inner()),
        Ok(Err(status)) => Err(Error::rpc(call, status)),
        Err(_) => Err(Error::rpc(
            call,
            Status::deadline_exceeded(format!("no answer within {} s", UNARY_TIMEOUT.as_secs())),
        )),
    }
}

/// Why a connection failed, in words: the OS's reason when there is one.
fn transport_reason(e: &tonic::transport::Error) -> String {
    let mut source: Option<&(dyn std::error::Error + 'static)> = Some(e);
    let mut innermost = e.to_string();
    while let Some(s) = source {
        if let Some(io) = s.downcast_ref::<std::io::Error>() {
            return match io.kind() {
                std::io::ErrorKind::ConnectionRefused => {
                    "nothing listens there (connection refused): is secretd running at that \
                     address?"
                        .into()
                }
                std::io::ErrorKind::TimedOut => "no answer (timed out)".into(),
                _ => io.to_string(),
            };
        }
        innermost = s.to_string();
        source = s.source();
    }
    innermost
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn trailers_are_read() {
        let mut status = Status::failed_precondition("counter taken");
        status
            .metadata_mut()
            .insert(HEAD_COUNTER_TRAILER, "17".parse().unwrap());
        assert_eq!(head_of(&status), None, "both trailers are needed");
        status
            .metadata_mut()
            .insert(HEAD_EVENT_ID_TRAILER, "9".parse().unwrap());
        assert_eq!(
            head_of(&status),
            Some(Head {
                counter: 17,
                event_id: 9
            })
        );
        let mut limited = Status::resource_exhausted("slow down");
        assert_eq!(retry_after(&limited), None);
        limited
            .metadata_mut()
            .insert(RETRY_AFTER_TRAILER, "250".parse().unwrap());
        assert_eq!(retry_after(&limited), Some(Duration::from_millis(250)));
    }
}
