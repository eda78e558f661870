//! Federation, part 1 (DESIGN §9, issue 11): this server's Ed25519 key, the pinned peer
//! map, server-to-server tokens, the `SecretFederationService` and FetchKey of users of
//! other homeservers.
//!
//! - `key.rs`: the server key (created at first start, or from config) and its key id;
//! - `token.rs`: minting and verifying "s2s" and "fed-user" EdDSA JWTs against pinned keys;

pub mod key;
pub mod token;
