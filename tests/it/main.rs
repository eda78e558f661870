//! secretd's integration tests: one test binary (one link of tonic, sqlx and rsa instead
//! of one per file), one module per area. Every test talks to a real server on 127.0.0.1
//! through real gRPC clients, on SQLite and (when `DATABASE_URL` is set) Postgres.
//!
//! The harness is in `common/`; key fixtures are in `tests/fixtures/`.

#[macro_use]
mod common;

mod auth;
mod cli;
mod data_dir;
mod faults;
mod fuzz_seeds;
mod invites;
mod jwt_claims;
mod keys;
mod limits;
mod messages;
mod paging;
mod private_keys;
mod process;
mod races;
mod replicas;
mod rooms;
mod status_text;
mod streaming;
mod subscriptions;
