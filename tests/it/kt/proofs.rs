//! What PostKey, FetchKey, GetTreeHead and MonitorKey answer, checked the way a client
//! checks it (docs/kt.md §5), and every refusal of the key transparency reads.

use std::time::{Duration, Instant};

use prost::Message;
use secretd::proto::{
    FetchKeyRequest, GetTreeHeadRequest, MonitorKeyRequest, PostKeyRequest, TreeHead,
};
use tonic::Code;

use super::*;

both_backends!(
    proofs_of_posted_and_fetched_keys_verify,
    heads_extend_each_other_and_one_size_has_one_root,
    refusals_have_their_codes,
    a_key_written_straight_into_the_table_is_logged_at_the_next_epoch,
);

const SERVER: &str = "localhost";

async fn start(f: &Fresh) -> TestServer {
    TestServer::start_with(f.backend.clone(), |s| s.kt_epoch_ms = 100).await
}

fn fetch(user: u64, known_tree_size: u64) -> FetchKeyRequest {
    FetchKeyRequest {
        user_id: user,
        homeserver: String::new(),
        known_tree_size,
    }
}

fn monitor(user: u64, after_seq: u64, known_tree_size: u64) -> MonitorKeyRequest {
    MonitorKeyRequest {
        user_id: user,
        homeserver: String::new(),
        after_seq,
        known_tree_size,
    }
}

async fn proofs_of_posted_and_fetched_keys_verify(b: Backend) {
    let f = fresh(&b).await;
    let s = start(&f).await;
    let public = server_public_key(s.dir());
    let (alice, bob) = (random_user(), random_user());
    let mut a = s.client(alice).await;

    // PostKey answers once the key's entry is published, with its proof.
    let first = a
        .post_key(PostKeyRequest {
            key_data: key_pem(1),
        })
        .await
        .unwrap()
        .into_inner();
    let proof = first.proof.expect("PostKey's proof");
    assert_eq!(proof.entries.len(), 1);
    let e1 = check_proof(&proof, SERVER, alice, &public, None);
    assert_eq!((e1.seq, &e1.fingerprint), (1, &first.fingerprint));
    assert_eq!(e1.fingerprint, fingerprint_of(1));
    let head1 = proof.head.clone().unwrap();

    // A new key: its entry chains to the first.
    let second = a
        .post_key(PostKeyRequest {
            key_data: key_pem(2),
        })
        .await
        .unwrap()
        .into_inner();
    let proof = second.proof.expect("PostKey's proof");
    let e2 = check_proof(&proof, SERVER, alice, &public, None);
    assert_eq!(e2.seq, 2);
    assert_eq!(e2.prev_entry_hash, entry_hash(SERVER, alice, &e1));
    assert!(e2.leaf_index > e1.leaf_index);
    // Re-posting the current key changes nothing and proves it again.
    let again = a
        .post_key(PostKeyRequest {
            key_data: key_pem(2),
        })
        .await
        .unwrap()
        .into_inner();
    assert!(!again.changed);
    let proof = again.proof.expect("proof");
    assert_eq!(check_proof(&proof, SERVER, alice, &public, None), e2);
    // Another user may post the same key: an entry of their own.
    let mut bc = s.client(bob).await;
    let theirs = bc
        .post_key(PostKeyRequest {
            key_data: key_pem(2),
        })
        .await
        .unwrap()
        .into_inner();
    let eb = check_proof(&theirs.proof.unwrap(), SERVER, bob, &public, None);
    assert_eq!((eb.seq, &eb.fingerprint), (1, &e2.fingerprint));

    // FetchKey by anyone: one entry per key served, current first, each the key's
    // fingerprint and posted time; consistent with the head seen before.
    let mut other = s.client(random_user()).await;
    let keys = other
        .fetch_key(fetch(alice, head1.tree_size))
        .await
        .unwrap()
        .into_inner();
    let proof = keys.proof.clone().expect("FetchKey's proof");
    let newest = check_proof(
        &proof,
        SERVER,
        alice,
        &public,
        Some((head1.tree_size, &head1.log_root)),
    );
    assert_eq!(newest, e2);
    let current = keys.current_key.unwrap();
    let served = std::iter::once(&current).chain(&keys.past_keys);
    assert_eq!(proof.entries.len(), 2);
    for (entry, key) in proof.entries.iter().zip(served) {
        assert_eq!(entry.fingerprint, key.fingerprint);
        let at = key.posted_at.unwrap();
        let ms = at.seconds as u64 * 1000 + at.nanos as u64 / 1_000_000;
        assert_eq!(entry.posted_at_ms, ms);
    }
    // A proof of a user with one key stays far below 3 KiB.
    assert!(proof.encoded_len() < 1024, "{} bytes", proof.encoded_len());

    // MonitorKey: the entries after a seq, the newest always.
    let all = other
        .monitor_key(monitor(alice, 0, 0))
        .await
        .unwrap()
        .into_inner()
        .proof
        .unwrap();
    check_proof(&all, SERVER, alice, &public, None);
    assert_eq!(
        all.entries.iter().map(|e| e.seq).collect::<Vec<_>>(),
        [2, 1]
    );
    for after in [1, 2, 7] {
        let p = other
            .monitor_key(monitor(alice, after, head1.tree_size))
            .await
            .unwrap()
            .into_inner()
            .proof
            .unwrap();
        check_proof(
            &p,
            SERVER,
            alice,
            &public,
            Some((head1.tree_size, &head1.log_root)),
        );
        assert_eq!(p.entries, std::slice::from_ref(&e2), "after seq {after}");
    }

    // GetTreeHead: the newest head, consistent with the one seen first.
    let now = other
        .get_tree_head(GetTreeHeadRequest {
            known_tree_size: head1.tree_size,
        })
        .await
        .unwrap()
        .into_inner();
    let head = now.head.unwrap();
    check_head(&head, SERVER, &public);
    assert_eq!(head.tree_size, 3);
    check_consistency((head1.tree_size, &head1.log_root), &head, &now.consistency);
    for known in [0, head.tree_size] {
        let same = other
            .get_tree_head(GetTreeHeadRequest {
                known_tree_size: known,
            })
            .await
            .unwrap()
            .into_inner();
        assert!(same.consistency.is_empty(), "from {known}");
    }
    s.stop().await;
    f.done().await;
}

async fn heads_extend_each_other_and_one_size_has_one_root(b: Backend) {
    let f = fresh(&b).await;
    let s = start(&f).await;
    let public = server_public_key(s.dir());
    // Posters over several epochs, and a reader of heads meanwhile.
    let mut posters = Vec::new();
    for i in 0..24 {
        let mut c = s.client(random_user()).await;
        posters.push(tokio::spawn(async move {
            tokio::time::sleep(Duration::from_millis(40 * i)).await;
            c.post_key(PostKeyRequest {
                key_data: key_pem(1 + i as usize % 3),
            })
            .await
            .unwrap()
            .into_inner()
            .proof
            .expect("proof")
        }));
    }
    let mut reader = s.client(random_user()).await;
    let mut seen: Vec<TreeHead> = Vec::new();
    let t0 = Instant::now();
    while t0.elapsed() < Duration::from_millis(1500) {
        let known = seen.last().map_or(0, |h| h.tree_size);
        let r = reader
            .get_tree_head(GetTreeHeadRequest {
                known_tree_size: known,
            })
            .await
            .unwrap()
            .into_inner();
        let head = r.head.unwrap();
        check_head(&head, SERVER, &public);
        if let Some(last) = seen.last() {
            // Each head extends the last one seen.
            check_consistency((last.tree_size, &last.log_root), &head, &r.consistency);
            assert!(head.timestamp_ms >= last.timestamp_ms);
        }
        seen.push(head);
        tokio::time::sleep(Duration::from_millis(30)).await;
    }
    for p in posters {
        let proof = p.await.unwrap();
        let head = proof.head.unwrap();
        seen.push(head);
    }
    // One size, one root, among everything served.
    let mut by_size = std::collections::HashMap::new();
    for h in &seen {
        let root = by_size
            .entry(h.tree_size)
            .or_insert_with(|| h.log_root.clone());
        assert_eq!(*root, h.log_root, "two roots for tree size {}", h.tree_size);
    }
    // The stored heads: unique sizes, ascending, from 0, each consistent with the newest.
    let url = s.settings.database_url.expose().to_string();
    let sizes = check_stored_heads(&url, &mut reader, &public).await;
    assert_eq!((sizes[0], sizes[sizes.len() - 1]), (0, 24));
    s.stop().await;
    f.done().await;
}

async fn refusals_have_their_codes(b: Backend) {
    let f = fresh(&b).await;
    let s = start(&f).await;
    let user = random_user();
    let mut c = s.client(user).await;
    give_key(&mut c).await;
    let size = c
        .get_tree_head(GetTreeHeadRequest::default())
        .await
        .unwrap()
        .into_inner()
        .head
        .unwrap()
        .tree_size;
    let above = size + 1;
    let st = expect_code(
        c.get_tree_head(GetTreeHeadRequest {
            known_tree_size: above,
        })
        .await,
        Code::InvalidArgument,
    );
    assert!(st.message().contains("known_tree_size"), "{st:?}");
    let st = expect_code(c.fetch_key(fetch(user, above)).await, Code::InvalidArgument);
    assert!(st.message().contains("known_tree_size"), "{st:?}");
    expect_code(
        c.monitor_key(monitor(user, 0, above)).await,
        Code::InvalidArgument,
    );
    let st = expect_code(c.monitor_key(monitor(0, 0, 0)).await, Code::InvalidArgument);
    assert!(st.message().contains("user_id"), "{st:?}");
    let st = expect_code(
        c.monitor_key(monitor(random_user(), 0, 0)).await,
        Code::NotFound,
    );
    assert!(st.message().contains("no entry"), "{st:?}");
    let st = expect_code(
        c.monitor_key(MonitorKeyRequest {
            user_id: 5,
            homeserver: "elsewhere.test".into(),
            ..Default::default()
        })
        .await,
        Code::FailedPrecondition,
    );
    assert!(st.message().contains("elsewhere.test"), "{st:?}");
    // FetchKey of a user without a key is still NOT_FOUND, whatever the size known.
    expect_code(c.fetch_key(fetch(random_user(), 0)).await, Code::NotFound);
    let mut anonymous = s.anonymous().await;
    expect_code(
        anonymous.get_tree_head(GetTreeHeadRequest::default()).await,
        Code::Unauthenticated,
    );
    expect_code(
        anonymous.monitor_key(monitor(user, 0, 0)).await,
        Code::Unauthenticated,
    );
    s.stop().await;
    f.done().await;
}

/// A `BLOB` / `BYTEA` literal of `bytes` for the database behind `url`.
pub fn blob(url: &str, bytes: &[u8]) -> String {
    let hex: String = bytes.iter().map(|b| format!("{b:02x}")).collect();
    if url.starts_with("sqlite") {
        format!("X'{hex}'")
    } else {
        format!("'\\x{hex}'::bytea")
    }
}

async fn a_key_written_straight_into_the_table_is_logged_at_the_next_epoch(b: Backend) {
    let f = fresh(&b).await;
    let s = start(&f).await;
    let public = server_public_key(s.dir());
    let url = s.settings.database_url.expose().to_string();
    // A key as an older server (or an import) left it: a row, nothing logged.
    let user = random_user();
    let pem = key_pem(3);
    let der = {
        use base64::Engine;
        let body: String = std::str::from_utf8(&pem)
            .unwrap()
            .lines()
            .filter(|l| !l.starts_with("-----"))
            .collect();
        base64::engine::general_purpose::STANDARD
            .decode(body)
            .unwrap()
    };
    let fingerprint = fingerprint_of(3);
    let posted_at = 1_700_000_000_123_456i64;
    sql(
        &url,
        &format!(
            "INSERT INTO public_keys (user_id, seq, spki_der, fingerprint, posted_at) \
             VALUES ({user}, 1, {}, {}, {posted_at})",
            blob(&url, &der),
            blob(&url, &fingerprint)
        ),
    )
    .await;
    let mut c = s.client(random_user()).await;
    let t0 = Instant::now();
    let proof = loop {
        match c.monitor_key(monitor(user, 0, 0)).await {
            Ok(r) => break r.into_inner().proof.unwrap(),
            Err(st) if st.code() == Code::NotFound => {
                assert!(t0.elapsed() < Duration::from_secs(3), "not logged");
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            Err(st) => panic!("{st:?}"),
        }
    };
    let entry = check_proof(&proof, SERVER, user, &public, None);
    assert_eq!(entry.fingerprint, fingerprint);
    assert_eq!(entry.posted_at_ms, 1_700_000_000_123);
    // FetchKey serves it with the same proof.
    let keys = c.fetch_key(fetch(user, 0)).await.unwrap().into_inner();
    assert_eq!(keys.current_key.unwrap().key_data, der);
    let p = keys.proof.expect("proof");
    assert_eq!(check_proof(&p, SERVER, user, &public, None), entry);
    assert_eq!(
        sql_i64(
            &url,
            &format!("SELECT count(*) FROM public_keys WHERE user_id = {user} AND kt_leaf IS NULL")
        )
        .await,
        0
    );
    s.stop().await;
    f.done().await;
}
