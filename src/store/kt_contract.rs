//! Store contract tests of key transparency: epochs published through [`KtStore`] on
//! both backends, checked against an independent RFC 9162 implementation (`ct-merkle`)
//! and the map's definition. Each test has a database of its own (Postgres: a fresh
//! database, created and dropped here), because the log is one per database.

use std::collections::HashMap;

use ct_merkle::mem_backed_tree::MemoryBackedTree;
use ct_merkle::{ConsistencyProof, HashableLeaf, RootHash};
use ring::signature::{ED25519, Ed25519KeyPair, KeyPair, UnparsedPublicKey};
use sha2::Sha256;

use super::kt::*;
use super::*;
use crate::keycheck::{CanonicalKey, canonicalize};
use crate::merkle::log::{self, Hash};
use crate::merkle::map;
use crate::merkle::records;

/// A store on a database of its own, dropped (Postgres) when the test ends well.
struct Fresh {
    store: DynStore,
    _dir: Option<tempfile::TempDir>,
    drop_db: Option<(String, String)>,
}

impl Fresh {
    async fn sqlite() -> Fresh {
        let dir = tempfile::tempdir().unwrap();
        let url = format!("sqlite://{}", dir.path().join("kt.db").display());
        Fresh {
            store: open(&url, 2, Uuid::new_v4()).await.unwrap(),
            _dir: Some(dir),
            drop_db: None,
        }
    }

    async fn postgres() -> Option<Fresh> {
        let url = std::env::var("DATABASE_URL")
            .ok()
            .filter(|u| !u.is_empty())?;
        let name = format!("secretd_ktc_{}", rand::random::<u32>());
        let admin = sqlx::PgPool::connect(&url).await.unwrap();
        sqlx::query(sqlx::AssertSqlSafe(format!("CREATE DATABASE {name}")))
            .execute(&admin)
            .await
            .unwrap();
        admin.close().await;
        let own = format!("{}/{name}", url.rsplit_once('/').unwrap().0);
        Some(Fresh {
            store: open(&own, 4, Uuid::new_v4()).await.unwrap(),
            _dir: None,
            drop_db: Some((url, name)),
        })
    }

    async fn done(self) {
        self.store.close().await;
        if let Some((url, name)) = self.drop_db {
            let admin = sqlx::PgPool::connect(&url).await.unwrap();
            let _ = sqlx::query(sqlx::AssertSqlSafe(format!("DROP DATABASE {name}")))
                .execute(&admin)
                .await;
        }
    }
}

macro_rules! on_both {
    ($($name:ident),* $(,)?) => {
        mod sqlite {
            $(
                #[tokio::test]
                async fn $name() {
                    let fresh = super::Fresh::sqlite().await;
                    super::$name(&fresh.store).await;
                    fresh.done().await;
                }
            )*
        }
        mod postgres {
            $(
                #[tokio::test]
                #[cfg_attr(secretd_no_database_url, ignore = "skipped: DATABASE_URL is not set")]
                async fn $name() {
                    if let Some(fresh) = super::Fresh::postgres().await {
                        super::$name(&fresh.store).await;
                        fresh.done().await;
                    }
                }
            )*
        }
    };
}

on_both!(
    epochs_append_chain_and_sign,
    deep_map_paths_are_read_to_the_bottom,
    evidence_is_kept_once,
    reads_against_a_given_head_stop_at_its_size,
    keys_come_with_the_proof_rows,
    erasures_append_an_erased_entry
);

use super::kt_evidence_contract::evidence_is_kept_once;

const SERVER: &str = "kt.test";

fn signer() -> (HeadSigner, Vec<u8>) {
    let pair = Ed25519KeyPair::from_seed_unchecked(&[7; 32]).unwrap();
    let public = pair.public_key().as_ref().to_vec();
    (
        HeadSigner {
            server_name: SERVER.into(),
            key_id: "test-key".into(),
            sign: Box::new(move |m| pair.sign(m).as_ref().to_vec()),
        },
        public,
    )
}

fn limits(max_entries: usize) -> PublishLimits {
    PublishLimits {
        max_entries,
        refresh_after_ms: 60_000,
        pause_before_commit: None,
    }
}

fn key(n: usize) -> CanonicalKey {
    let path = format!(
        "{}/tests/fixtures/rsa4096_{n}.pub.pem",
        env!("CARGO_MANIFEST_DIR")
    );
    canonicalize(&std::fs::read(path).unwrap()).unwrap()
}

/// Leaves as ct-merkle hashes them (0x00 ‖ data).
struct Leaf(Vec<u8>);
impl HashableLeaf for Leaf {
    fn hash<H: ct_merkle::digest::Update>(&self, hasher: &mut H) {
        hasher.update(&self.0);
    }
}

/// The map's root from its definition, over (key, value) pairs.
fn reference_root(entries: &[(Hash, Hash)], bits: u16) -> Hash {
    match entries {
        [] => map::EMPTY,
        [(k, v)] => map::leaf_hash(k, v),
        _ => {
            let (ones, zeros): (Vec<_>, Vec<_>) =
                entries.iter().partition(|(k, _)| map::bit(k, bits));
            map::interior_hash(
                &reference_root(&zeros, bits + 1),
                &reference_root(&ones, bits + 1),
            )
        }
    }
}

/// Everything stored, checked from scratch: every entry's hash and chain, every head's
/// signature and log root (ct-merkle), the newest head's map root, and each head's
/// consistency proof to the newest (ct-merkle). Returns the entries.
async fn check_all(store: &DynStore, public: &[u8]) -> Vec<LogEntry> {
    let entries = store.kt_entries_after(None, 1_000_000).await.unwrap();
    let heads = store.kt_heads_after(None, 1_000_000).await.unwrap();
    let newest = heads.last().unwrap().clone();
    let mut oracle = MemoryBackedTree::<Sha256, Leaf>::new();
    let mut last: HashMap<i64, (u64, Hash)> = HashMap::new();
    let mut roots = HashMap::new();
    roots.insert(0u64, log::empty_root());
    for (i, e) in entries.iter().enumerate() {
        assert_eq!(e.leaf_index, i as u64);
        let (seq, prev) = last.get(&e.user).map_or((1, [0; 32]), |(s, h)| (s + 1, *h));
        assert_eq!((e.seq, e.prev_entry_hash), (seq, prev), "chain of {e:?}");
        let bytes = e.record(SERVER).bytes();
        assert_eq!(log::leaf_hash(&bytes), e.entry_hash);
        last.insert(e.user, (e.seq, e.entry_hash));
        oracle.push(Leaf(bytes));
        let root: Hash = oracle.root().as_bytes().as_slice().try_into().unwrap();
        roots.insert(i as u64 + 1, root);
    }
    let verifier = UnparsedPublicKey::new(&ED25519, public);
    let mut sizes = Vec::new();
    for h in &heads {
        verifier
            .verify(&h.signed_bytes(), &h.signature)
            .expect("head signature");
        assert_eq!(
            h.log_root, roots[&h.tree_size],
            "log root of {}",
            h.tree_size
        );
        sizes.push(h.tree_size);
    }
    assert!(sizes.windows(2).all(|w| w[0] < w[1]), "{sizes:?}");
    assert_eq!(newest.tree_size, entries.len() as u64);
    let mut values: Vec<(Hash, Hash)> = last
        .iter()
        .map(|(u, (_, h))| (records::map_key(SERVER, *u as u64), *h))
        .collect();
    values.sort();
    assert_eq!(newest.map_root, reference_root(&values, 0));
    // Every head is consistent with the newest, by ct-merkle.
    let new_root = RootHash::<Sha256>::new(newest.log_root.into(), newest.tree_size);
    for h in heads.iter().filter(|h| h.tree_size > 0) {
        let rows = store
            .kt_read(&KtQuery {
                user: None,
                consistency_from: h.tree_size,
                head: None,
                keys: 0,
                log_known: Default::default(),
            })
            .await
            .unwrap();
        let proof = log::consistency(h.tree_size, newest.tree_size, &mut |n| rows.log[&n]);
        if h.tree_size == newest.tree_size {
            assert!(proof.is_empty());
            continue;
        }
        let old = RootHash::<Sha256>::new(h.log_root.into(), h.tree_size);
        let proof = ConsistencyProof::<Sha256>::try_from_bytes(proof.concat()).unwrap();
        new_root
            .verify_consistency(&old, &proof)
            .expect("consistent");
    }
    // Every user's map path, read as a proof reads it, leads to the newest root.
    for (user, (_, value)) in &last {
        let map_key = records::map_key(SERVER, *user as u64);
        let rows = store
            .kt_read(&KtQuery {
                user: Some(UserQuery {
                    user: UserId::trusted(*user),
                    map_key,
                    after_seq: 0,
                    max_entries: 10,
                    map_depth: None,
                    map_from_bits: 0,
                }),
                consistency_from: 0,
                head: None,
                keys: 0,
                log_known: Default::default(),
            })
            .await
            .unwrap();
        assert_eq!(rows.entries[0].entry_hash, *value);
        let mut missed = false;
        let proved = map::prove(&map_key, &mut |p| {
            rows.map.get(p).copied().unwrap_or_else(|| {
                missed = true;
                None
            })
        });
        if missed {
            let deep = store
                .kt_read(&KtQuery {
                    user: Some(UserQuery {
                        user: UserId::trusted(*user),
                        map_key,
                        after_seq: 0,
                        max_entries: 1,
                        map_depth: Some(256),
                        map_from_bits: 0,
                    }),
                    consistency_from: 0,
                    head: None,
                    keys: 0,
                    log_known: Default::default(),
                })
                .await
                .unwrap();
            let (v, path) = map::prove(&map_key, &mut |p| deep.map[p]).unwrap();
            assert_eq!(v, *value);
            assert_eq!(
                map::root_from_proof(&map_key, value, &path),
                Some(newest.map_root)
            );
        } else {
            let (v, path) = proved.expect("the user is in the map");
            assert_eq!(v, *value);
            assert_eq!(
                map::root_from_proof(&map_key, value, &path),
                Some(newest.map_root)
            );
        }
    }
    assert_eq!(store.kt_misfiled_key().await.unwrap(), None);
    entries
}

/// The first epoch of an empty database publishes the empty head; keys are appended in
/// posted order, a user's pending keys together, at most `max_entries` users' worth per
/// epoch; chains, roots and signatures check out; an epoch with nothing new changes
/// nothing until the head is old enough to be re-signed.
async fn epochs_append_chain_and_sign(store: &DynStore) {
    let (signer, public) = signer();
    assert_eq!(store.kt_latest_head().await.unwrap(), None);
    let first = store.kt_publish(&signer, &limits(2), 1_000).await.unwrap();
    let Published::Appended { head, entries: 0 } = first else {
        panic!("{first:?}")
    };
    assert_eq!(
        (head.tree_size, head.log_root, head.map_root),
        (0, log::empty_root(), map::EMPTY)
    );
    let (a, b) = (UserId::trusted(11), UserId::trusted(22));
    store.post_public_key(a, &key(1), 10_000).await.unwrap();
    store.post_public_key(b, &key(1), 20_000).await.unwrap();
    store.post_public_key(a, &key(2), 30_000).await.unwrap();
    let c = UserId::trusted(33);
    store.post_public_key(c, &key(3), 40_000).await.unwrap();
    // The two oldest rows are of a and b: a's second key comes along, c waits.
    let got = store.kt_publish(&signer, &limits(2), 2_000).await.unwrap();
    let Published::Appended { head, entries: 3 } = got else {
        panic!("{got:?}")
    };
    assert_eq!((head.tree_size, head.timestamp_ms), (3, 2_000));
    let logged = store.kt_entries_after(None, 10).await.unwrap();
    let order: Vec<_> = logged.iter().map(|e| (e.user, e.seq)).collect();
    assert_eq!(order, [(11, 1), (11, 2), (22, 1)]);
    assert_eq!(logged[1].posted_at_ms, 30);
    assert_eq!(logged[1].fingerprint, key(2).fingerprint);
    let got = store.kt_publish(&signer, &limits(2), 1_500).await.unwrap();
    let Published::Appended { head, entries: 1 } = got else {
        panic!("{got:?}")
    };
    // A clock that went back does not make a head older than the last.
    assert_eq!((head.tree_size, head.timestamp_ms), (4, 2_000));
    check_all(store, &public).await;

    let idle = store.kt_publish(&signer, &limits(2), 3_000).await.unwrap();
    assert_eq!(idle, Published::Unchanged(head.clone()));
    let later = store.kt_publish(&signer, &limits(2), 70_000).await.unwrap();
    let Published::Resigned(resigned) = later else {
        panic!("{later:?}")
    };
    assert_eq!(
        (resigned.tree_size, resigned.log_root, resigned.map_root),
        (head.tree_size, head.log_root, head.map_root)
    );
    assert_eq!(resigned.timestamp_ms, 70_000);
    assert_eq!(
        store.kt_latest_head().await.unwrap(),
        Some(resigned.clone())
    );
    assert_eq!(store.kt_heads_after(None, 100).await.unwrap().len(), 3);

    // Many users, several epochs: everything still checks out, map paths included.
    for u in 100..400 {
        let k = key(1 + (u as usize % 3));
        store
            .post_public_key(UserId::trusted(u), &k, 100_000 + u)
            .await
            .unwrap();
    }
    for epoch in 0..4 {
        store
            .kt_publish(&signer, &limits(100), 80_000 + epoch)
            .await
            .unwrap();
    }
    let entries = check_all(store, &public).await;
    assert_eq!(entries.len(), 304);
    // The audit reads page through everything.
    let nodes = store.kt_log_nodes_after(0, Some(299), 10).await.unwrap();
    assert_eq!(nodes.len(), 4);
    assert_eq!(nodes[0], (300, entries[300].entry_hash));
    let level8 = store.kt_log_nodes_after(8, None, 10).await.unwrap();
    assert_eq!(level8.len(), 1);
    let all_map = store.kt_map_nodes_after(None, 100_000).await.unwrap();
    let tail = store
        .kt_map_nodes_after(Some(all_map[all_map.len() - 3].0), 10)
        .await
        .unwrap();
    assert_eq!(tail, all_map[all_map.len() - 2..].to_vec());
    let leaves = all_map
        .iter()
        .filter(|(_, s)| matches!(s, map::Stored::Leaf { .. }))
        .count();
    assert_eq!(leaves, 303, "one leaf per user");
}

/// Users whose map keys share a long prefix are stored far below the depth a read
/// starts with; publishing and proving read their paths to the bottom.
async fn deep_map_paths_are_read_to_the_bottom(store: &DynStore) {
    let (signer, public) = signer();
    // Two users whose keys share at least 24 bits, found by the birthday bound.
    let mut seen: HashMap<[u8; 3], i64> = HashMap::new();
    let (mut x, mut y) = (0, 0);
    for u in 1..1_000_000i64 {
        let k = records::map_key(SERVER, u as u64);
        if let Some(other) = seen.insert([k[0], k[1], k[2]], u) {
            (x, y) = (other, u);
            break;
        }
    }
    assert!(x > 0);
    store
        .post_public_key(UserId::trusted(x), &key(1), 1_000)
        .await
        .unwrap();
    store.kt_publish(&signer, &limits(10), 1).await.unwrap();
    store
        .post_public_key(UserId::trusted(y), &key(2), 2_000)
        .await
        .unwrap();
    store.kt_publish(&signer, &limits(10), 2).await.unwrap();
    // A third user sharing 12 bits with them walks below the depth the epoch read first.
    let kx = records::map_key(SERVER, x as u64);
    let z = (1..)
        .find(|u: &i64| {
            let k = records::map_key(SERVER, *u as u64);
            *u != x && *u != y && k[0] == kx[0] && k[1] >> 4 == kx[1] >> 4
        })
        .unwrap();
    store
        .post_public_key(UserId::trusted(z), &key(3), 3_000)
        .await
        .unwrap();
    store.kt_publish(&signer, &limits(10), 3).await.unwrap();
    let entries = check_all(store, &public).await;
    assert_eq!(entries.len(), 3);
}

/// A read against a head given by the caller (the one the publisher last saw) returns that
/// head and only the entries within it; without one, the newest stored head. A user with
/// no entry above `after_seq` still gets the newest, with the nodes of its map path.
async fn reads_against_a_given_head_stop_at_its_size(store: &DynStore) {
    let (signer, _) = signer();
    store.kt_publish(&signer, &limits(10), 1).await.unwrap();
    let a = UserId::trusted(5);
    store.post_public_key(a, &key(1), 1_000).await.unwrap();
    let Published::Appended { head: old, .. } =
        store.kt_publish(&signer, &limits(10), 2).await.unwrap()
    else {
        panic!("nothing appended")
    };
    store.post_public_key(a, &key(2), 2_000).await.unwrap();
    store.kt_publish(&signer, &limits(10), 3).await.unwrap();
    let query = |head: Option<TreeHead>, after_seq: u64, from: u64| KtQuery {
        user: Some(UserQuery {
            user: a,
            map_key: records::map_key(SERVER, 5),
            after_seq,
            max_entries: 10,
            map_depth: None,
            map_from_bits: 0,
        }),
        consistency_from: from,
        head,
        keys: 0,
        log_known: Default::default(),
    };
    let rows = store
        .kt_read(&query(Some(old.clone()), 0, 0))
        .await
        .unwrap();
    assert_eq!(rows.head.as_ref(), Some(&old));
    let seqs: Vec<u64> = rows.entries.iter().map(|e| e.seq).collect();
    assert_eq!(seqs, [1]);
    assert!(rows.map.values().any(Option::is_some));
    let rows = store.kt_read(&query(None, 0, 1)).await.unwrap();
    assert_eq!(rows.head.as_ref().map(|h| h.tree_size), Some(2));
    let seqs: Vec<u64> = rows.entries.iter().map(|e| e.seq).collect();
    assert_eq!(seqs, [2, 1], "newest first");
    assert!(
        !rows.log.is_empty(),
        "the consistency proof's nodes from size 1"
    );
    let rows = store.kt_read(&query(None, 2, 0)).await.unwrap();
    let seqs: Vec<u64> = rows.entries.iter().map(|e| e.seq).collect();
    assert_eq!(
        seqs,
        [2],
        "the newest entry even when it is not above after_seq"
    );
    assert!(rows.map.values().any(Option::is_some));
}

/// The user's public keys come with a proof's rows when asked (newest first, at most the
/// number asked), before any head as after one, with a consistency proof as without.
async fn keys_come_with_the_proof_rows(store: &DynStore) {
    let (signer, _) = signer();
    let a = UserId::trusted(9);
    store.post_public_key(a, &key(1), 1_000).await.unwrap();
    let query = |keys: usize, from: u64| KtQuery {
        user: Some(UserQuery {
            user: a,
            map_key: records::map_key(SERVER, 9),
            after_seq: 0,
            max_entries: 10,
            map_depth: None,
            map_from_bits: 0,
        }),
        consistency_from: from,
        head: None,
        keys,
        log_known: Default::default(),
    };
    let fingerprints = |rows: &KtRows| -> Vec<Vec<u8>> {
        rows.keys.iter().map(|k| k.fingerprint.clone()).collect()
    };
    let rows = store.kt_read(&query(5, 0)).await.unwrap();
    assert!(rows.head.is_none(), "no epoch yet");
    assert_eq!(fingerprints(&rows), [key(1).fingerprint.to_vec()]);
    assert_eq!(rows.keys[0].spki_der, key(1).spki_der);
    assert_eq!(rows.keys[0].posted_at, 1_000);
    store.kt_publish(&signer, &limits(10), 1).await.unwrap();
    store.post_public_key(a, &key(2), 2_000).await.unwrap();
    store.post_public_key(a, &key(3), 3_000).await.unwrap();
    store.kt_publish(&signer, &limits(10), 2).await.unwrap();
    let newest_first: Vec<Vec<u8>> = [3, 2, 1].map(|n| key(n).fingerprint.to_vec()).into();
    let rows = store.kt_read(&query(5, 0)).await.unwrap();
    assert_eq!(fingerprints(&rows), newest_first);
    assert_eq!(rows.entries.len(), 3, "the proof's rows as well");
    assert!(rows.map.values().any(Option::is_some));
    let rows = store.kt_read(&query(2, 1)).await.unwrap();
    assert_eq!(fingerprints(&rows), newest_first[..2]);
    assert!(!rows.log.is_empty(), "and the consistency proof's nodes");
    // Subtrees the caller holds are not read again: they come back as given.
    let (held, _) = rows.log.iter().next().map(|(n, h)| (*n, *h)).unwrap();
    let mut again = query(2, 1);
    again.log_known = [(held, [7; 32])].into_iter().collect();
    let reread = store.kt_read(&again).await.unwrap();
    assert_eq!(reread.log[&held], [7; 32]);
    assert_eq!(reread.log.len(), rows.log.len());
    let rows = store.kt_read(&query(0, 0)).await.unwrap();
    assert!(rows.keys.is_empty(), "none unless asked");
}

/// An erasure (migration 0010) of a user with entries appends one entry of 32 zero bytes,
/// chained to their last, dated when they were erased, and makes it their map value;
/// erasing again appends nothing; erasing a user without an entry appends nothing (the
/// epoch re-signs the head); a key posted but not logged at the erasure is gone with it
/// and never logged. Erasures take their place among keys oldest first, within
/// `max_entries`.
async fn erasures_append_an_erased_entry(store: &DynStore) {
    let (signer, public) = signer();
    let (a, b, c, d) = (
        UserId::trusted(11),
        UserId::trusted(22),
        UserId::trusted(33),
        UserId::trusted(44),
    );
    store.kt_publish(&signer, &limits(10), 1_000).await.unwrap();
    store.post_public_key(a, &key(1), 10_000).await.unwrap();
    store.post_public_key(b, &key(2), 20_000).await.unwrap();
    let got = store.kt_publish(&signer, &limits(10), 2_000).await.unwrap();
    assert!(
        matches!(got, Published::Appended { entries: 2, .. }),
        "{got:?}"
    );

    // a is erased; b posts a second key and is erased before it is logged; c never
    // posted one; d posts after the erasures.
    store.erase_user(a, false, 30_000).await.unwrap();
    store.post_public_key(b, &key(3), 35_000).await.unwrap();
    store.erase_user(b, false, 40_000).await.unwrap();
    store.erase_user(a, false, 45_000).await.unwrap();
    store.erase_user(c, false, 50_000).await.unwrap();
    store.post_public_key(d, &key(1), 60_000).await.unwrap();
    // One entry per epoch: a's erasure first (the oldest), then b's, then c's (nothing
    // to append: the head is re-signed), then d's key.
    let got = store.kt_publish(&signer, &limits(1), 3_000).await.unwrap();
    assert!(
        matches!(got, Published::Appended { entries: 1, .. }),
        "{got:?}"
    );
    let got = store.kt_publish(&signer, &limits(1), 4_000).await.unwrap();
    assert!(
        matches!(got, Published::Appended { entries: 1, .. }),
        "{got:?}"
    );
    let got = store.kt_publish(&signer, &limits(1), 5_000).await.unwrap();
    let Published::Resigned(head) = got else {
        panic!("{got:?}")
    };
    assert_eq!((head.tree_size, head.timestamp_ms), (4, 5_000));
    let got = store.kt_publish(&signer, &limits(1), 6_000).await.unwrap();
    assert!(
        matches!(got, Published::Appended { entries: 1, .. }),
        "{got:?}"
    );
    let idle = store.kt_publish(&signer, &limits(1), 7_000).await.unwrap();
    assert!(matches!(idle, Published::Unchanged(_)), "{idle:?}");

    let entries = check_all(store, &public).await;
    let summary: Vec<_> = entries
        .iter()
        .map(|e| (e.user, e.seq, e.fingerprint == [0; 32], e.posted_at_ms))
        .collect();
    assert_eq!(
        summary,
        [
            (11, 1, false, 10),
            (22, 1, false, 20),
            (11, 2, true, 30),
            (22, 2, true, 40),
            (44, 1, false, 60),
        ],
        "erased entries dated at the (first) erasure; b's unlogged key never logged"
    );
    assert_eq!(entries[2].prev_entry_hash, entries[0].entry_hash);
    assert_eq!(store.kt_misfiled_erasure().await.unwrap(), None);
    assert_eq!(store.kt_misfiled_key().await.unwrap(), None);
}
