//! Authentication: verifies the homeserver's JWTs (`authorization: Bearer <jwt>`) and
//! mints development tokens.
//!
//! - `verify.rs`: the [`Verifier`] (signature with the configured algorithm, then each
//!   claim checked by name) and its cache of verified tokens;
//! - `secret.rs`: the HS256 secret (config, or the file `data_dir/jwt-secret` created
//!   atomically on first use), `mint-token`.
//!
//! The JWT crate is `jsonwebtoken` 9 on `ring`, which avoids the RSA crate version
//! affected by RUSTSEC-2023-0071.

use std::sync::Arc;

use tonic::{Request, Status};

use crate::domain::{Foreign, UserId};
use crate::federation::Federation;
use crate::federation::token::{self, TokenType};

mod cache;
mod secret;
mod verify;

pub use secret::{
    SECRET_FILE, load_or_create_secret, load_or_create_secret_with, mint_token, sign_hs256,
};
pub use verify::{LEEWAY_SECS, Verifier};

/// The authenticated caller, put into each request's extensions by [`AuthInterceptor`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Caller {
    /// The user id from the token's `sub`.
    pub user: UserId,
    /// Unix seconds after which the token is no longer accepted (its `exp` plus the
    /// leeway): long-lived calls (StreamMessagePosting) end then.
    pub expires_at: u64,
    /// The key of the caller's rate limits and calls in progress: the user id of a local
    /// user; for a user of another homeserver, [`limit_key`] of (issuer, `sub`), known
    /// before any database work.
    pub limit_key: i64,
    /// Unix seconds when the token was issued (its `iat` claim, rounded down), if it says
    /// so: DeleteAccount wants a fresh token.
    pub issued_at: Option<u64>,
}

/// The key a user of another homeserver is rate-limited by: a keyed hash of (homeserver,
/// user id) into the negative numbers (local users' keys are their ids, 1 .. 2^63-1, so
/// the two never meet). The hash key is random per process, so no one can pick two users
/// that share a key.
pub fn limit_key(who: &Foreign) -> i64 {
    use std::hash::BuildHasher;
    static KEY: std::sync::OnceLock<std::hash::RandomState> = std::sync::OnceLock::new();
    let hash = KEY
        .get_or_init(std::hash::RandomState::new)
        .hash_one((&*who.homeserver, who.user.get()));
    -((hash >> 1) as i64) - 1
}

impl Caller {
    /// Reads the caller's user id from a request the interceptor has passed.
    pub fn of<T>(req: &Request<T>) -> Result<UserId, Status> {
        Self::get(req).map(|c| c.user)
    }

    /// Reads the caller from a request the interceptor has passed.
    pub fn get<T>(req: &Request<T>) -> Result<Caller, Status> {
        req.extensions()
            .get::<Caller>()
            .copied()
            .ok_or_else(|| Status::unauthenticated("no authenticated caller on this request"))
    }
}

/// A user of another homeserver calling with a "fed-user" token (DESIGN §9), put into the
/// request's extensions by [`AuthInterceptor`] instead of a [`Caller`]: the router turns
/// it into a `Caller` with the id this database knows the user by (and keeps this next to
/// it, for the handlers that need the user's homeserver).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FederatedCaller {
    /// Who: the token's issuer (a configured peer) and subject.
    pub who: Foreign,
    /// Unix seconds after which the token is no longer accepted (`exp` plus the leeway).
    pub expires_at: u64,
}

impl FederatedCaller {
    /// The foreign caller of a request, if it is one.
    pub fn of<T>(req: &Request<T>) -> Option<&FederatedCaller> {
        req.extensions().get::<FederatedCaller>()
    }
}

/// A tonic interceptor that authenticates every call and records the [`Caller`] (or, for
/// a "fed-user" token of a configured peer, the [`FederatedCaller`]).
#[derive(Clone)]
pub struct AuthInterceptor {
    verifier: Arc<Verifier>,
    federation: Option<Arc<Federation>>,
    /// "fed-user" tokens that verified (an Ed25519 check each otherwise).
    foreign: Arc<cache::TokenCache<FederatedCaller>>,
}

impl AuthInterceptor {
    /// Wraps a verifier; `federation` (when on) verifies the tokens of foreign users.
    pub fn new(verifier: Arc<Verifier>, federation: Option<Arc<Federation>>) -> Self {
        AuthInterceptor {
            verifier,
            federation,
            foreign: Arc::default(),
        }
    }

    /// Verifies a "fed-user" token against the key pinned for its issuer.
    fn verify_foreign(&self, token: &str) -> Result<FederatedCaller, Status> {
        let Some(federation) = &self.federation else {
            return Err(Status::unauthenticated(
                "this is a federation token (typ fed-user), but federation is off on this \
                 server: use a token of this homeserver",
            ));
        };
        let verified = token::verify(token, &federation.server_name, TokenType::FedUser, |iss| {
            federation.peers.pinned_key(iss)
        })
        .map_err(Status::unauthenticated)?;
        let user = verified
            .subject
            .and_then(|s| i64::try_from(s).ok())
            .ok_or_else(|| Status::unauthenticated("a fed-user token needs a user id in sub"))?;
        Ok(FederatedCaller {
            who: Foreign {
                homeserver: verified.issuer.into(),
                user: UserId::trusted(user),
            },
            expires_at: verified.expires_at.saturating_add(token::LEEWAY_SECS),
        })
    }
}

impl tonic::service::Interceptor for AuthInterceptor {
    fn call(&mut self, mut req: Request<()>) -> Result<Request<()>, Status> {
        let header = req.metadata().get("authorization").ok_or_else(|| {
            Status::unauthenticated("missing `authorization: Bearer <token>` metadata")
        })?;
        let token = header
            .to_str()
            .ok()
            .and_then(|v| {
                v.strip_prefix("Bearer ")
                    .or_else(|| v.strip_prefix("bearer "))
            })
            .map(str::trim)
            .filter(|t| !t.is_empty())
            .ok_or_else(|| {
                Status::unauthenticated("the authorization metadata must be `Bearer <jwt>`")
            })?;
        // Remembered tokens first: the common case costs one hash and one lookup, and
        // only a token seen for the first time has its `typ` read to choose a check.
        let digest = cache::digest(token);
        let now = verify::now_secs();
        if let Some(caller) = self.verifier.cached(&digest, now) {
            req.extensions_mut().insert(caller);
            return Ok(req);
        }
        if let Some(foreign) = self.foreign.get(&digest, now) {
            req.extensions_mut().insert(foreign);
            return Ok(req);
        }
        match token::unverified_type(token).as_deref() {
            Some("fed-user") => {
                let foreign = self.verify_foreign(token)?;
                self.foreign
                    .put(digest, foreign.expires_at, foreign.clone());
                req.extensions_mut().insert(foreign);
            }
            Some("s2s") => {
                return Err(Status::unauthenticated(
                    "this is a server-to-server token (typ s2s), which only \
                     SecretFederationService accepts; a user presents a token of this \
                     homeserver, or a fed-user token from their own homeserver's Federate",
                ));
            }
            _ => {
                let caller = self.verifier.verify_and_remember(token, digest, now)?;
                req.extensions_mut().insert(caller);
            }
        }
        Ok(req)
    }
}
