//! secretd: the SecretService of a chat homeserver.
//!
//! The crate is one binary (`secretd`, see `main.rs`) built on this library. The module map
//! is in `ARCHITECTURE.md`; the contract the code meets is `DESIGN.md` (shared) and the
//! proto file in `proto/`.

// The surface the binaries (`main.rs`, `bench/`), the integration tests and the client's
// tests use; everything else is crate-private, so the compiler reports what is dead.
pub mod admin;
pub mod auth;
pub mod cli;
pub mod config;
pub mod federation;
pub mod limits;
pub mod proto;
pub mod replica;
pub mod server;
pub mod service;
pub mod telemetry;
pub mod time;
pub mod tls;

pub(crate) mod coalesce;
pub(crate) mod commit;
pub(crate) mod cors;
pub(crate) mod domain;
pub(crate) mod error;
pub(crate) mod hub;
pub(crate) mod keycheck;
pub(crate) mod kt;
pub(crate) mod merkle;
pub(crate) mod private_files;
pub(crate) mod requests;
pub(crate) mod retention;
pub(crate) mod shutdown;
pub(crate) mod store;
pub(crate) mod wire;

/// What the fuzz targets in `fuzz/` call; not the server's API.
#[doc(hidden)]
pub mod fuzzing;
