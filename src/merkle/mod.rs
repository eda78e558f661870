//! The Merkle structures of key transparency (DESIGN §12), as pure functions over stored
//! hashes: the RFC 9162 log ([`log`]) and the prefix-tree map of users' latest entries
//! ([`map`]), and the bytes they hash and sign ([`records`]).

pub mod log;
pub mod map;
pub mod records;

/// A hash map of Merkle nodes (prefixes, subtrees) with a fast hasher: a proof looks up
/// dozens of them, and SipHash over their 34-byte keys showed in its profile. The keys are
/// positions derived from SHA-256 outputs, not chosen by clients.
pub type NodeMap<K, V> = std::collections::HashMap<K, V, crate::domain::FastHash>;
