//! Key transparency, the client's side (DESIGN §12, docs/kt.md): checks that a key the
//! server serves is the one its signed, append-only log says — the head's signature
//! under the server's pinned key, its consistency with the last head this device saw,
//! the map path of the user's newest entry, the chain of entries — so that a server that
//! serves a substituted key is caught. Written from docs/kt.md alone: it shares no code
//! with the server; the RFC 9162 log proofs are checked with `ct-merkle`.

pub mod verify;
