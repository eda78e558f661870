//! # secretd-client: the reference end-to-end encrypted client for secretd
//!
//! secretd stores and orders ciphertext; everything that makes a conversation private
//! happens here. The construction (keys, derivations, byte layouts, versions) is specified
//! in `docs/e2ee.md` at the repository root, for authors of clients in other languages;
//! this crate is its reference implementation.
//!
//! Layers, bottom up:
//! - [`crypto`]: the primitives as the construction uses them (RustCrypto: `rsa`
//!   OAEP/PSS, `aes-gcm`, `hmac`, `hkdf`, `sha2`, `pbkdf2`, `argon2`): the private-key
//!   blob, the hash ratchet, the envelope, hybrid-encrypted invites, identity keys.
//! - [`event`]: signed event and invite plaintexts (`proto/secretd/e2ee/v1/e2ee.proto`).
//! - [`api`]: a typed async client over the generated SecretService stubs: bearer
//!   tokens, paging, head trailers, self-resuming subscriptions.
//! - [`device`]: the E2EE layer — identity and password backup, rooms, invites,
//!   posting with the retry path, receiving, history, rotation.
//! - [`state`]: the device's serialisable local state.
//!
//! The `secretd-chat` binary is a command-line chat client over [`device`].

#![warn(missing_docs)]

pub mod api;
pub mod crypto;
pub mod device;
pub mod encoding;
pub mod error;
pub mod event;
pub mod proto;
pub mod state;
pub mod time;
pub mod token;
pub mod transparency;
pub mod user;

pub use device::Device;
pub use error::{Error, Result};
