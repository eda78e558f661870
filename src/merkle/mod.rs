//! The Merkle structures of key transparency (DESIGN §12), as pure functions over stored
//! hashes: the RFC 9162 log ([`log`]) and the prefix-tree map of users' latest entries
//! ([`map`]).

pub mod log;
pub mod map;
