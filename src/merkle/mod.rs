//! The Merkle structures of key transparency (DESIGN §12), as pure functions over stored
//! hashes: the RFC 9162 log ([`log`]) and the prefix-tree map of users' latest entries
//! ([`map`]), and the bytes they hash and sign ([`records`]).

pub mod log;
pub mod map;
pub mod records;
