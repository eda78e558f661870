//! Whether two signed heads of one homeserver are heads of one log, proved by reading that
//! homeserver (docs/kt.md §5 step 8, §10): its newest head, with the RFC 9162 consistency
//! proof from the older head's size, must extend the older head, and equal or extend the
//! newer one. Used for a member's gossiped head against this device's, and for a new head
//! of another homeserver against the one kept.

use crate::api::Api;
use crate::transparency::verify::{Hash, Head};

use super::keylog::{hashes, head_of};

/// How many times the reads are retried when the log grows between them.
const ATTEMPTS: usize = 3;

/// Why two heads cannot both be true (the homeserver's own answers contradict them).
pub(super) struct Fork(pub(super) String);

/// The outcome of [`one_log`] that is not a contradiction: `true` proved, `false` no
/// conclusion (the homeserver was not reachable, or its log grew between the reads every
/// time).
pub(super) type Proved = Result<bool, Fork>;

/// Proves that `a` and `b`, both verified under `key`, are heads of the log `api` serves.
pub(super) async fn one_log(api: &Api, key: &[u8], a: &Head, b: &Head) -> Proved {
    let (older, newer) = if a.tree_size <= b.tree_size {
        (a, b)
    } else {
        (b, a)
    };
    if older.tree_size == newer.tree_size {
        return same(older, newer);
    }
    for _ in 0..ATTEMPTS {
        let Some((n, proof)) = newest_from(api, key, older.tree_size).await? else {
            return Ok(false);
        };
        n.verify_extends(older, &proof)
            .map_err(|e| Fork(e.to_string()))?;
        if n.tree_size == newer.tree_size {
            return same(&n, newer);
        }
        // `newer` was signed before `n` was read: the newest head cannot be smaller.
        let Some((again, proof)) = newest_from(api, key, newer.tree_size).await? else {
            return Ok(false);
        };
        again
            .verify_extends(newer, &proof)
            .map_err(|e| Fork(e.to_string()))?;
        if again.tree_size == n.tree_size {
            return same(&again, &n);
        }
    }
    Ok(false)
}

/// Two heads of one size: one head, or two logs.
fn same(x: &Head, y: &Head) -> Proved {
    if x.log_root == y.log_root && x.map_root == y.map_root {
        Ok(true)
    } else {
        Err(Fork(format!(
            "two heads of size {} with different roots, both signed by homeserver {}",
            x.tree_size, x.server_name
        )))
    }
}

/// The homeserver's newest head (verified under `key`) and the consistency proof from
/// `size`; `None` when it cannot be read. A homeserver that says its log never reached a
/// size it signed contradicts itself.
async fn newest_from(api: &Api, key: &[u8], size: u64) -> Result<Option<(Head, Vec<Hash>)>, Fork> {
    let answer = match api.tree_head(size).await {
        Ok(a) => a,
        Err(e) if e.code() == Some(tonic::Code::InvalidArgument) => {
            return Err(Fork(format!(
                "the homeserver signed a head of size {size}, but says its log never reached \
                 that size ({e})"
            )));
        }
        Err(_) => return Ok(None),
    };
    let Some(n) = answer.head.as_ref().and_then(|h| head_of(h).ok()) else {
        return Ok(None);
    };
    if n.verify_signature(key).is_err() {
        return Ok(None);
    }
    let proof =
        hashes(&answer.consistency, "a consistency hash").map_err(|e| Fork(e.to_string()))?;
    Ok(Some((n, proof)))
}
