//! Memberships the appends already verified, by the membership epoch they were verified at.
//!
//! An append locks its streams' head rows and then reads whether each sender is a member.
//! Every way a member goes (leaving, removal, erasure: the stores' `drop_member`) bumps
//! `member_epoch` of the pair's streams in the same transaction, under those same row
//! locks. So when a locked head row still shows the epoch at which a sender was verified
//! a member, nobody has left since and the sender still is one: a batch whose senders
//! are all known skips the `members` statement (one round trip of five). Joining does not
//! bump the epoch, so a new member is simply not known yet and is asked for.
//!
//! Per process and checked against the database's epoch, so replicas need no agreement.
//! Bounded: at most [`MEMBER_CACHE_ENTRIES`] entries (~4 MiB); when full it starts over
//! empty.

use std::collections::HashMap;
use std::sync::Mutex;

use uuid::Uuid;

use crate::domain::FastHash;

/// A sender on a stream.
type Sender = (Uuid, i64);

/// The most (stream, sender) memberships remembered.
pub const MEMBER_CACHE_ENTRIES: usize = 65_536;

/// (stream, sender) → the membership epoch at which the sender was verified a member.
#[derive(Default)]
pub(super) struct MemberCache(Mutex<HashMap<Sender, i64, FastHash>>);

impl MemberCache {
    fn map(&self) -> std::sync::MutexGuard<'_, HashMap<Sender, i64, FastHash>> {
        self.0.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Splits `senders` into those known to be members at the epoch `epoch_of` their
    /// stream's locked head row shows, and those to ask the database about (a stream
    /// with no head row is neither: the append refuses it).
    pub(super) fn split(
        &self,
        senders: impl IntoIterator<Item = Sender>,
        epoch_of: impl Fn(&Uuid) -> Option<i64>,
    ) -> (Vec<Sender>, Vec<Sender>) {
        let map = self.map();
        let (mut known, mut ask) = (Vec::new(), Vec::new());
        for key in senders {
            let Some(epoch) = epoch_of(&key.0) else {
                continue;
            };
            if map.get(&key) == Some(&epoch) {
                known.push(key);
            } else {
                ask.push(key);
            }
        }
        (known, ask)
    }

    /// Remembers memberships just read under their streams' locks, at those epochs.
    pub(super) fn remember(&self, verified: impl IntoIterator<Item = (Sender, i64)>) {
        let mut map = self.map();
        for (key, epoch) in verified {
            if map.len() >= MEMBER_CACHE_ENTRIES && !map.contains_key(&key) {
                map.clear();
            }
            map.insert(key, epoch);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_membership_is_known_only_at_the_epoch_it_was_verified_at() {
        let cache = MemberCache::default();
        let (s, t) = (Uuid::new_v4(), Uuid::new_v4());
        cache.remember([((s, 1), 3)]);
        let epochs = |e: i64| move |stream: &Uuid| (*stream == s || *stream == t).then_some(e);
        assert_eq!(
            cache.split([(s, 1), (s, 2)], epochs(3)),
            (vec![(s, 1)], vec![(s, 2)])
        );
        // Someone left: the epoch moved on, so the sender is asked about again.
        assert_eq!(cache.split([(s, 1)], epochs(4)), (vec![], vec![(s, 1)]));
        // A stream without a head row is neither known nor asked about.
        assert_eq!(
            cache.split([(Uuid::new_v4(), 1)], epochs(3)),
            (vec![], vec![])
        );
    }

    #[test]
    fn it_starts_over_when_full() {
        let cache = MemberCache::default();
        let s = Uuid::new_v4();
        cache.remember((0..MEMBER_CACHE_ENTRIES as i64).map(|u| ((s, u), 0)));
        assert_eq!(cache.map().len(), MEMBER_CACHE_ENTRIES);
        cache.remember([((s, -1), 0)]);
        assert_eq!(cache.map().len(), 1);
        let (known, _) = cache.split([(s, -1), (s, 0)], |_| Some(0));
        assert_eq!(known, vec![(s, -1)]);
    }
}
