//! Integration tests of the reference E2EE client against a real secretd (in-process, on
//! SQLite and Postgres): one binary, a module per area.

mod backup;
mod chat;
mod cli;
mod common;
mod federated;
mod hostile;
mod removal;
mod retention;
mod rotation;
mod subscription;
mod tamper;
mod tls;
