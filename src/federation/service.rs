//! The `SecretFederationService` handlers: ServerKey, FetchUserKey (our users' keys, the
//! same page and key transparency proof as FetchKey), DeliverInvite (an invite into the
//! caller's pair for one of our users) and ExchangeHeads (tree heads, docs/kt.md §9).
//! Calls reach
//! them through [`super::gate::FederationGate`], which verified the caller's token.

use std::sync::Arc;

use tonic::{Request, Response, Status};

use super::Federation;
use super::token::Verified;
use crate::config::FederationSettings;
use crate::domain::{PairId, StreamId, UserId, UserRef, check_homeserver_name};
use crate::error::Error;
use crate::proto::federation::secret_federation_service_server::SecretFederationService;
use crate::proto::federation::{
    DeliverInviteRequest, DeliverInviteResponse, ExchangeHeadsRequest, ExchangeHeadsResponse,
    FetchUserKeyRequest, FetchUserKeyResponse, ServerKeyRequest, ServerKeyResponse,
};
use crate::requests::{check_blob, key_fingerprint};
use crate::service::AppState;
use crate::store::{Delivery, DeliveryCaps, Inviter, PairIds};
use crate::time::now_micros;

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

/// The caps on delivered invites (`federation.max_delivered_invites_*`), for the store.
fn delivery_caps(settings: &FederationSettings) -> DeliveryCaps {
    DeliveryCaps {
        per_invitee: settings.max_delivered_invites_per_invitee,
        per_peer: settings.max_delivered_invites_per_peer,
        window_micros: i64::try_from(settings.delivered_invites_window_secs)
            .unwrap_or(i64::MAX / 1_000_000)
            .saturating_mul(1_000_000),
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
        Err(Error::FailedPrecondition(_)) => "failed_precondition",
        Err(Error::PermissionDenied(_)) => "permission_denied",
        Err(Error::Unavailable(_)) => "unavailable",
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
            // Exactly FetchKey's answer for our user, proof included (from tree size 0).
            let keys = crate::service::keys::local_keys_with_proof(&self.state, user, 0).await?;
            Ok(FetchUserKeyResponse {
                current_key: keys.current_key,
                past_keys: keys.past_keys,
                more_past_keys: keys.more_past_keys,
                proof: keys.proof,
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
        let result = self.deliver(&peer, req.into_inner()).await;
        answer(&peer, result)
    }

    async fn exchange_heads(
        &self,
        req: Request<ExchangeHeadsRequest>,
    ) -> Result<Response<ExchangeHeadsResponse>, Status> {
        let peer = peer(&req)?;
        let result = self.exchange(&peer, req.into_inner()).await;
        answer(&peer, result)
    }
}

impl FederationApi {
    /// ExchangeHeads from `peer`: its heads taken in (its own must verify and be fresh),
    /// ours answered.
    async fn exchange(
        &self,
        peer: &str,
        r: ExchangeHeadsRequest,
    ) -> Result<ExchangeHeadsResponse, Error> {
        let fed = &self.federation;
        fed.take_heads(peer, r.own_head.as_ref(), &r.seen_heads)
            .await
            .map_err(|why| {
                Error::invalid(format!(
                    "ExchangeHeads from homeserver {peer:?} refused: {why} (docs/kt.md §9)"
                ))
            })?;
        // The consistency proof from the caller's newest head of ours; none when it names
        // a size above our newest (the caller compares the heads: a rollback).
        let own = match self.state.kt.head(r.known_tree_size).await {
            Err(Error::InvalidArgument(_)) => self.state.kt.head(0).await?,
            other => other?,
        };
        Ok(ExchangeHeadsResponse {
            own_head: own.head,
            seen_heads: fed.heads.newest(),
            consistency: own.consistency,
        })
    }

    /// DeliverInvite from `peer`: an invite into one of `peer`'s pairs for one of our
    /// users, stored once (a repeated delivery answers the first one's id) and pushed to
    /// the invitee's open streams.
    async fn deliver(
        &self,
        peer: &str,
        r: DeliverInviteRequest,
    ) -> Result<DeliverInviteResponse, Error> {
        let ours = &self.federation.server_name;
        let to = UserId::parse("to_user_id", r.to_user_id)?;
        if r.pair_homeserver != peer {
            return Err(Error::PermissionDenied(format!(
                "pair_homeserver is {:?}, but a homeserver delivers invites into its own pairs \
                 only (the caller is {peer:?})",
                r.pair_homeserver
            )));
        }
        let pair = r.pair.ok_or_else(|| Error::invalid("pair is required"))?;
        let ids = PairIds {
            pair_id: PairId::parse("pair.pair_id", &pair.pair_id)?.get(),
            message_id: StreamId::parse("pair.message_id", &pair.message_id)?.get(),
            state_id: StreamId::parse("pair.state_id", &pair.state_id)?.get(),
        };
        let from = r.from.ok_or_else(|| Error::invalid("from is required"))?;
        // The inviter: one of ours, one of the caller's (named by its server name, or
        // by an empty one), or a member from a third homeserver the caller vouches for.
        let homeserver = if from.homeserver.is_empty() {
            peer
        } else {
            from.homeserver.as_str()
        };
        check_homeserver_name("from.homeserver", homeserver)?;
        let inviter = UserRef::parse(homeserver, "from.user_id", from.user_id)?;
        let inviter = inviter.resolve(ours);
        check_blob("invite", r.invite.len())?;
        let fingerprint = key_fingerprint("key_fingerprint", r.key_fingerprint)?;
        crate::service::keys::check_invitee_key(&self.state, to, fingerprint.as_deref()).await?;
        // A foreign inviter is given an id only with the invite stored for them.
        let from = match &inviter {
            Ok(local) => Inviter::Local(*local),
            Err(foreign) => Inviter::Foreign(foreign),
        };
        let invite = self
            .state
            .store
            .deliver_invite(
                to,
                Delivery {
                    pair_homeserver: peer,
                    pair: &ids,
                    from,
                    body: &r.invite,
                },
                now_micros(),
                delivery_caps(&self.federation.settings),
            )
            .await?;
        if let Err(foreign) = &inviter {
            let id = UserId::trusted(invite.from_user);
            self.federation.ids.remember(foreign, id);
        }
        self.state.hub.invite_sent(to);
        Ok(DeliverInviteResponse {
            invite_id: invite.invite_id as u64,
        })
    }
}
