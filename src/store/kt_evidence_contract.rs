//! Store contract test of `kt_evidence` (run on both backends by `kt_contract.rs`): a row
//! keeps both heads as signed, and the same two heads are stored once.

use super::DynStore;
use super::kt::TreeHead;
use super::kt_evidence::{Evidence, EvidenceKind};

fn head(size: u64, root: u8, ts: u64) -> TreeHead {
    TreeHead {
        server_name: "c.test".into(),
        tree_size: size,
        log_root: [root; 32],
        map_root: [root ^ 0xff; 32],
        timestamp_ms: ts,
        signature: vec![root; 64],
        key_id: "00112233aabbccdd".into(),
    }
}

/// Evidence is read back as written, oldest first, and a second report of the same two
/// heads adds nothing.
pub(super) async fn evidence_is_kept_once(store: &DynStore) {
    assert!(store.kt_evidence(10).await.unwrap().is_empty());
    let fork = Evidence {
        homeserver: "c.test".into(),
        kind: EvidenceKind::Fork,
        found_at_ms: 1_000,
        reported_by: "ExchangeHeads from b.test".into(),
        first: head(5, 1, 100),
        second: head(5, 2, 200),
    };
    let rollback = Evidence {
        kind: EvidenceKind::Rollback,
        found_at_ms: 2_000,
        reported_by: "FetchUserKey".into(),
        first: head(9, 3, 300),
        second: head(7, 4, 400),
        ..fork.clone()
    };
    assert!(store.kt_add_evidence(&fork).await.unwrap());
    assert!(store.kt_add_evidence(&rollback).await.unwrap());
    let again = Evidence {
        found_at_ms: 3_000,
        ..fork.clone()
    };
    assert!(!store.kt_add_evidence(&again).await.unwrap());
    assert_eq!(
        store.kt_evidence(10).await.unwrap(),
        vec![fork.clone(), rollback]
    );
    assert_eq!(store.kt_evidence(1).await.unwrap(), vec![fork]);
}
