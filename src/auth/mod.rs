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

use crate::domain::UserId;

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

/// A tonic interceptor that authenticates every call and records the [`Caller`].
#[derive(Clone)]
pub struct AuthInterceptor {
    verifier: Arc<Verifier>,
}

impl AuthInterceptor {
    /// Wraps a verifier.
    pub fn new(verifier: Arc<Verifier>) -> Self {
        AuthInterceptor { verifier }
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
        let caller = self.verifier.verify_caller(token)?;
        req.extensions_mut().insert(caller);
        Ok(req)
    }
}
