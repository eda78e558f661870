//! The payload of the cross-replica change notifications (`pg_notify('secretd', …)`).
//!
//! Writers send at most a few notifications per transaction (one per group-commit batch,
//! never one per event: a NOTIFY serialises commits). A payload names the sending replica
//! and a list of changes; it carries no event data. `replica/` listens and decodes.

use uuid::Uuid;

use crate::store::PairIds;

/// The NOTIFY channel.
pub const CHANNEL: &str = "secretd";
/// Postgres rejects payloads of 8000 bytes or more; stay well below.
const MAX_PAYLOAD: usize = 7800;

/// One change another replica may need to know about.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Change {
    /// A stream's head moved to `head`.
    Event {
        /// The stream.
        stream: Uuid,
        /// Its new head event id.
        head: i64,
    },
    /// The user received an invite.
    Invite {
        /// The invitee.
        user: i64,
    },
    /// The user left or was removed from the pair.
    Membership {
        /// The pair.
        pair: PairIds,
        /// The user who lost access.
        user: i64,
    },
    /// Events of the stream were erased (their sender's account was erased): frames
    /// cached from before are stale. Replicas of an older version skip the item.
    Erased {
        /// The stream.
        stream: Uuid,
        /// Its membership epoch after the erasure.
        epoch: i64,
    },
}

/// Encodes changes as one or more payloads of at most ~7.8 KB each.
pub fn encode(replica: Uuid, changes: &[Change]) -> Vec<String> {
    let prefix = replica.simple().to_string();
    let mut out = Vec::new();
    let mut cur = prefix.clone();
    for change in changes {
        let item = match change {
            Change::Event { stream, head } => format!(" e{}.{head}", stream.simple()),
            Change::Invite { user } => format!(" i{user}"),
            Change::Membership { pair, user } => format!(
                " m{}.{}.{}.{user}",
                pair.pair_id.simple(),
                pair.message_id.simple(),
                pair.state_id.simple()
            ),
            Change::Erased { stream, epoch } => format!(" x{}.{epoch}", stream.simple()),
        };
        if cur.len() + item.len() > MAX_PAYLOAD {
            out.push(std::mem::replace(&mut cur, prefix.clone()));
        }
        cur.push_str(&item);
    }
    if cur.len() > prefix.len() {
        out.push(cur);
    }
    out
}

/// Decodes a payload into (sending replica, changes). Malformed items are skipped.
pub fn decode(payload: &str) -> Option<(Uuid, Vec<Change>)> {
    let mut parts = payload.split(' ');
    let replica = Uuid::try_parse(parts.next()?).ok()?;
    let changes = parts
        .filter_map(|item| {
            let (kind, rest) = item.split_at_checked(1)?;
            let mut f = rest.split('.');
            match kind {
                "e" => Some(Change::Event {
                    stream: Uuid::try_parse(f.next()?).ok()?,
                    head: f.next()?.parse().ok()?,
                }),
                "i" => Some(Change::Invite {
                    user: rest.parse().ok()?,
                }),
                "m" => Some(Change::Membership {
                    pair: PairIds {
                        pair_id: Uuid::try_parse(f.next()?).ok()?,
                        message_id: Uuid::try_parse(f.next()?).ok()?,
                        state_id: Uuid::try_parse(f.next()?).ok()?,
                    },
                    user: f.next()?.parse().ok()?,
                }),
                "x" => Some(Change::Erased {
                    stream: Uuid::try_parse(f.next()?).ok()?,
                    epoch: f.next()?.parse().ok()?,
                }),
                _ => None,
            }
        })
        .collect();
    Some((replica, changes))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn payloads_round_trip_and_split() {
        let replica = Uuid::new_v4();
        let pair = PairIds::generate();
        let mut changes = vec![
            Change::Invite { user: 42 },
            Change::Membership { pair, user: 7 },
            Change::Erased {
                stream: Uuid::new_v4(),
                epoch: 9,
            },
        ];
        for i in 0..500 {
            changes.push(Change::Event {
                stream: Uuid::new_v4(),
                head: i,
            });
        }
        let payloads = encode(replica, &changes);
        assert!(payloads.len() > 1);
        let mut back = Vec::new();
        for p in &payloads {
            assert!(p.len() < 8000);
            let (r, c) = decode(p).unwrap();
            assert_eq!(r, replica);
            back.extend(c);
        }
        assert_eq!(back, changes);
        assert!(encode(replica, &[]).is_empty());
    }
}
