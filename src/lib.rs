//! secretd: the SecretService of a chat homeserver.
//!
//! The crate is one binary (`secretd`, see `main.rs`) built on this library. The module map
//! is in `ARCHITECTURE.md`; the contract the code meets is `DESIGN.md` (shared) and the
//! proto file in `proto/`.

pub mod auth;
pub mod cli;
pub mod commit;
pub mod config;
pub mod domain;
pub mod error;
pub mod federation;
pub mod hub;
pub mod keycheck;
pub mod limits;
pub mod private_files;
pub mod proto;
pub mod replica;
pub mod requests;
pub mod server;
pub mod service;
pub mod shutdown;
pub mod store;
pub mod telemetry;
pub mod time;
pub mod wire;
