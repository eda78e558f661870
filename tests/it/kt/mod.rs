//! Key transparency (DESIGN §12): proofs from real servers checked by a verifier written
//! here from docs/kt.md alone (entry bytes, map keys and paths, head signatures) and by
//! `ct-merkle` for the RFC 9162 log; the backfill; replicas; crashes of the real binary
//! before, during and after an epoch; `secretd kt-verify`.
//!
//! Every test has a log of its own: SQLite servers have their own file anyway, and on
//! Postgres each test makes a fresh database ([`fresh`]), since one database is one log.

mod crash;
mod erased;
mod proofs;
mod replicas;
mod verify_cli;

use ct_merkle::{ConsistencyProof, RootHash};
use ring::signature::{ED25519, UnparsedPublicKey};
use secretd::proto::{KeyLogEntry, KeyProof, TreeHead};
use sha2::{Digest, Sha256};

use crate::common::*;

/// A log of its own for a test: the backend to start servers on. On Postgres a fresh
/// database, dropped by [`Fresh::done`].
pub struct Fresh {
    pub backend: Backend,
    drop: Option<(String, String)>,
}

/// See [`Fresh`].
pub async fn fresh(b: &Backend) -> Fresh {
    match b {
        Backend::Sqlite => Fresh {
            backend: Backend::Sqlite,
            drop: None,
        },
        Backend::Postgres(url) => {
            let name = format!("secretd_kt_it_{}", rand::random::<u32>());
            let admin = sqlx::PgPool::connect(url).await.unwrap();
            sqlx::query(sqlx::AssertSqlSafe(format!("CREATE DATABASE {name}")))
                .execute(&admin)
                .await
                .unwrap();
            admin.close().await;
            let own = format!("{}/{name}", url.rsplit_once('/').unwrap().0);
            Fresh {
                backend: Backend::Postgres(own),
                drop: Some((url.clone(), name)),
            }
        }
    }
}

impl Fresh {
    /// Drops the Postgres database (best effort: servers must be stopped).
    pub async fn done(self) {
        if let Some((url, name)) = self.drop {
            let admin = sqlx::PgPool::connect(&url).await.unwrap();
            let _ = sqlx::query(sqlx::AssertSqlSafe(format!(
                "DROP DATABASE {name} WITH (FORCE)"
            )))
            .execute(&admin)
            .await;
        }
    }
}

/// Runs a statement on the database behind `url` (a test reading or tampering with the
/// tables directly).
pub async fn sql(url: &str, statement: &str) {
    if url.starts_with("sqlite") {
        let pool = sqlx::SqlitePool::connect(url).await.unwrap();
        sqlx::query(sqlx::AssertSqlSafe(statement.to_string()))
            .execute(&pool)
            .await
            .unwrap();
        pool.close().await;
    } else {
        let pool = sqlx::PgPool::connect(url).await.unwrap();
        sqlx::query(sqlx::AssertSqlSafe(statement.to_string()))
            .execute(&pool)
            .await
            .unwrap();
        pool.close().await;
    }
}

/// A single integer a query answers on the database behind `url`.
pub async fn sql_i64(url: &str, query: &str) -> i64 {
    if url.starts_with("sqlite") {
        let pool = sqlx::SqlitePool::connect(url).await.unwrap();
        let v: i64 = sqlx::query_scalar(sqlx::AssertSqlSafe(query.to_string()))
            .fetch_one(&pool)
            .await
            .unwrap();
        pool.close().await;
        v
    } else {
        let pool = sqlx::PgPool::connect(url).await.unwrap();
        let v: i64 = sqlx::query_scalar(sqlx::AssertSqlSafe(query.to_string()))
            .fetch_one(&pool)
            .await
            .unwrap();
        pool.close().await;
        v
    }
}

/// Every stored head of this server: (tree size, log root), ascending.
pub async fn stored_heads(url: &str) -> Vec<(u64, Vec<u8>)> {
    const Q: &str = "SELECT tree_size, log_root FROM kt_heads WHERE homeserver = '' \
                     ORDER BY tree_size";
    let rows: Vec<(i64, Vec<u8>)> = if url.starts_with("sqlite") {
        let pool = sqlx::SqlitePool::connect(url).await.unwrap();
        let rows = sqlx::query_as(Q).fetch_all(&pool).await.unwrap();
        pool.close().await;
        rows
    } else {
        let pool = sqlx::PgPool::connect(url).await.unwrap();
        let rows = sqlx::query_as(Q).fetch_all(&pool).await.unwrap();
        pool.close().await;
        rows
    };
    rows.into_iter().map(|(s, r)| (s as u64, r)).collect()
}

/// The stored heads of the log at `url` (sizes unique and ascending), each checked to be
/// extended by the newest head `c`'s server serves (GetTreeHead's consistency proof from
/// its size, by ct-merkle) and that newest head's signature; returns their sizes.
pub async fn check_stored_heads(url: &str, c: &mut Client, public: &[u8]) -> Vec<u64> {
    let stored = stored_heads(url).await;
    assert!(stored.windows(2).all(|w| w[0].0 < w[1].0), "{stored:?}");
    for (size, root) in &stored {
        let r = c
            .get_tree_head(secretd::proto::GetTreeHeadRequest {
                known_tree_size: *size,
            })
            .await
            .unwrap()
            .into_inner();
        let head = r.head.unwrap();
        check_head(&head, "localhost", public);
        check_consistency((*size, root), &head, &r.consistency);
    }
    stored.into_iter().map(|(s, _)| s).collect()
}

// ---- The verifier, from docs/kt.md alone ----

fn sha256(parts: &[&[u8]]) -> [u8; 32] {
    let mut h = Sha256::new();
    for p in parts {
        h.update(p);
    }
    h.finalize().into()
}

/// `ref(server, user)` (docs/kt.md notation).
fn user_ref(server: &str, user: u64) -> Vec<u8> {
    let mut out = (server.len() as u16).to_be_bytes().to_vec();
    out.extend_from_slice(server.as_bytes());
    out.extend_from_slice(&user.to_be_bytes());
    out
}

/// docs/kt.md §1: the entry's hash.
pub fn entry_hash(server: &str, user: u64, e: &KeyLogEntry) -> [u8; 32] {
    let mut entry = b"secretd/v1/kt-entry".to_vec();
    entry.extend_from_slice(&user_ref(server, user));
    entry.extend_from_slice(&e.seq.to_be_bytes());
    entry.extend_from_slice(&e.fingerprint);
    entry.extend_from_slice(&e.posted_at_ms.to_be_bytes());
    entry.extend_from_slice(&e.prev_entry_hash);
    sha256(&[&[0x00], &entry])
}

/// docs/kt.md §3: a user's map key.
pub fn map_key(server: &str, user: u64) -> [u8; 32] {
    sha256(&[b"secretd/v1/kt-map-key", &user_ref(server, user)])
}

/// docs/kt.md §3: the root a map path implies.
pub fn map_root(key: &[u8; 32], value: &[u8; 32], path: &[Vec<u8>]) -> [u8; 32] {
    assert!(path.len() <= 256);
    let mut h = sha256(&[&[0x02], key, value]);
    for (i, s) in path.iter().enumerate().rev() {
        assert_eq!(s.len(), 32);
        let bit = key[i / 8] >> (7 - i % 8) & 1;
        h = if bit == 0 {
            sha256(&[&[0x03], &h, s])
        } else {
            sha256(&[&[0x03], s, &h])
        };
    }
    h
}

/// docs/kt.md §4: what a head's signature covers.
pub fn head_input(h: &TreeHead) -> Vec<u8> {
    let mut out = b"secretd/v1/kt-head".to_vec();
    out.extend_from_slice(&(h.server_name.len() as u16).to_be_bytes());
    out.extend_from_slice(h.server_name.as_bytes());
    out.extend_from_slice(&h.tree_size.to_be_bytes());
    out.extend_from_slice(&h.log_root);
    out.extend_from_slice(&h.map_root);
    out.extend_from_slice(&h.timestamp_ms.to_be_bytes());
    out
}

/// The server's public key as `secretd federation-key` would print it, read from the
/// data directory the server uses.
pub fn server_public_key(data_dir: &std::path::Path) -> Vec<u8> {
    let bytes = std::fs::read(data_dir.join("federation-key")).expect("the server key");
    secretd::federation::key::ServerKey::from_file_bytes(&bytes)
        .unwrap()
        .public_key()
        .to_vec()
}

/// A head's signature under `public_key`, its key id and server name.
pub fn check_head(h: &TreeHead, server: &str, public_key: &[u8]) {
    assert_eq!(h.server_name, server);
    assert_eq!(h.log_root.len(), 32);
    assert_eq!(h.map_root.len(), 32);
    let key_id: String = Sha256::digest(public_key)[..8]
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect();
    assert_eq!(h.key_id, key_id);
    UnparsedPublicKey::new(&ED25519, public_key)
        .verify(&head_input(h), &h.signature)
        .expect("the head's signature verifies");
}

/// An RFC 9162 consistency proof from (old size, old root) to `new`, by ct-merkle.
pub fn check_consistency(old: (u64, &[u8]), new: &TreeHead, proof: &[Vec<u8>]) {
    let (old_size, old_root) = old;
    if old_size == 0 || old_size == new.tree_size {
        assert!(proof.is_empty(), "no proof from {old_size}");
        if old_size == new.tree_size {
            assert_eq!(old_root, &new.log_root[..], "one size, one root");
        }
        return;
    }
    let old = RootHash::<Sha256>::new(<[u8; 32]>::try_from(old_root).unwrap().into(), old_size);
    let new_root = RootHash::<Sha256>::new(
        <[u8; 32]>::try_from(&new.log_root[..]).unwrap().into(),
        new.tree_size,
    );
    let proof = ConsistencyProof::<Sha256>::try_from_bytes(proof.concat()).unwrap();
    new_root
        .verify_consistency(&old, &proof)
        .unwrap_or_else(|e| panic!("{old_size} to {}: {e:?}", new.tree_size));
}

/// Everything a client checks of a proof of `user` (docs/kt.md §5): the head's
/// signature; the newest entry's map path to the head's map root; the chain of the
/// entries (each one's `prev_entry_hash` the next's hash, seqs counting down by one); the
/// consistency proof from `known` (size, root). Returns the newest entry.
pub fn check_proof(
    proof: &KeyProof,
    server: &str,
    user: u64,
    public_key: &[u8],
    known: Option<(u64, &[u8])>,
) -> KeyLogEntry {
    let head = proof.head.as_ref().expect("a head");
    check_head(head, server, public_key);
    let newest = proof.entries.first().expect("entries").clone();
    let value = entry_hash(server, user, &newest);
    assert_eq!(
        map_root(&map_key(server, user), &value, &proof.map_path),
        head.map_root[..],
        "the map path leads to the head's map root"
    );
    for pair in proof.entries.windows(2) {
        assert_eq!(pair[0].seq, pair[1].seq + 1, "seqs count down by one");
        assert_eq!(
            pair[0].prev_entry_hash,
            entry_hash(server, user, &pair[1]),
            "chained"
        );
        assert!(pair[0].leaf_index > pair[1].leaf_index);
    }
    let oldest = proof.entries.last().unwrap();
    if oldest.seq == 1 {
        assert_eq!(oldest.prev_entry_hash, vec![0; 32]);
    }
    for e in &proof.entries {
        assert!(e.leaf_index < head.tree_size);
    }
    if let Some(old) = known {
        check_consistency(old, head, &proof.consistency);
    }
    newest
}

/// The SHA-256 fingerprint of a key fixture (its SPKI DER, as the server stores it).
pub fn fingerprint_of(n: usize) -> Vec<u8> {
    let pem = key_pem(n);
    let text = std::str::from_utf8(&pem).unwrap();
    let body: String = text.lines().filter(|l| !l.starts_with("-----")).collect();
    use base64::Engine;
    let der = base64::engine::general_purpose::STANDARD
        .decode(body)
        .unwrap();
    Sha256::digest(der).to_vec()
}
