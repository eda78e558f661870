//! Epochs of a stream's ratchet as invites carry them: making a new one, the chain
//! states an invite gives, and the checks a device runs before it takes an invite's chain
//! states — at most one epoch per generation, only the next generation new in a room it
//! holds, chains that agree with what it holds, every derivation bounded.

use std::collections::{BTreeMap, BTreeSet};

use crate::crypto::ratchet::{ChainPoint, initial_chain_key};
use crate::crypto::{random, uuid_bytes};
use crate::error::{Error, Result};
use crate::event::ChainState;
use crate::state::{EpochState, StreamState};

/// How much history an invite opens.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum History {
    /// Every epoch the inviter holds, from the earliest point it holds.
    All,
    /// The current epoch from the stream's head on: only what is posted after the invite.
    FromNow,
}

/// The most ratchet steps spent checking that an invite's chain state lies on a chain
/// this device already holds, or deriving a chain state to give away.
pub const MAX_CONSISTENCY_STEPS: u64 = 1 << 20;

fn refused(why: String) -> Error {
    Error::Protocol(format!("the invite is refused: {why}"))
}

/// `from` advanced to `to`, at most [`MAX_CONSISTENCY_STEPS`] steps.
fn advance(from: &ChainPoint, to: u64) -> Option<ChainPoint> {
    let steps = to.checked_sub(from.counter)?;
    (steps <= MAX_CONSISTENCY_STEPS).then(|| from.advanced_unbounded(to))
}

/// True when `given` lies on the same chain as `known` (one derives from the other within
/// the step bound).
fn same_chain(known: &EpochState, given: &ChainPoint) -> bool {
    let (from, to) = if given.counter >= known.origin.counter {
        (&known.origin, given)
    } else {
        (given, &known.origin)
    };
    advance(from, to.counter).is_some_and(|p| p.key == to.key)
}

/// A fresh epoch for `stream_id`, starting after counter `start`.
pub(super) fn new_epoch(
    stream_id: &str,
    generation: u32,
    start: u64,
) -> Result<(String, EpochState)> {
    let seed = random::<16>()?;
    let epoch = random::<16>()?;
    let point = ChainPoint {
        counter: start,
        key: initial_chain_key(&seed, &uuid_bytes(stream_id)?, &epoch),
    };
    Ok((
        hex::encode(epoch),
        EpochState {
            generation,
            origin: point.clone(),
            cursor: point,
            start: Some(start),
        },
    ))
}

fn chain_state(id: &str, e: &EpochState, p: &ChainPoint) -> ChainState {
    ChainState {
        epoch: hex::decode(id).unwrap_or_default(),
        generation: e.generation,
        counter: p.counter,
        chain_key: p.key.to_vec(),
        start: e.start_counter(),
    }
}

/// The chain states an invite gives for `stream`: every epoch from its origin
/// ([`History::All`]), or the newest epoch from the stream's head ([`History::FromNow`]).
pub(super) fn chain_states(stream: &StreamState, history: History) -> Result<Vec<ChainState>> {
    match history {
        History::All => Ok(stream
            .epochs
            .iter()
            .map(|(id, e)| chain_state(id, e, &e.origin))
            .collect()),
        History::FromNow => {
            let Some((id, e)) = stream.current_epoch() else {
                return Ok(Vec::new());
            };
            let at = stream.last_counter.max(e.cursor.counter);
            let point = advance(&e.cursor, at).ok_or_else(|| {
                Error::Protocol(format!(
                    "the stream's head counter {at} is too far past this device's keys \
                     (counter {}) to invite from there",
                    e.cursor.counter
                ))
            })?;
            Ok(vec![chain_state(id, e, &point)])
        }
    }
}

/// Only the epochs of `stream` of generation `from` or newer, from their origins.
pub(super) fn chain_states_since(stream: &StreamState, from: u32) -> Vec<ChainState> {
    stream
        .epochs
        .iter()
        .filter(|(_, e)| e.generation >= from)
        .map(|(id, e)| chain_state(id, e, &e.origin))
        .collect()
}

/// One chain state from an invite, parsed: its epoch id (hex) and the epoch it gives.
fn parse(c: &ChainState) -> Result<(String, EpochState)> {
    let key: [u8; 32] = c
        .chain_key
        .as_slice()
        .try_into()
        .map_err(|_| refused("a chain key is not 32 bytes".into()))?;
    if c.epoch.len() != 16 {
        return Err(refused("an epoch id is not 16 bytes".into()));
    }
    // An invite from before `start` existed sends 0; for a first epoch 0 is right anyway.
    let start = (c.start != 0 || c.generation == 0).then_some(c.start);
    if start.is_some_and(|s| s > c.counter) {
        return Err(refused(format!(
            "an epoch starts at counter {} but is given from counter {}, before its start",
            c.start, c.counter
        )));
    }
    let point = ChainPoint {
        counter: c.counter,
        key,
    };
    Ok((
        hex::encode(&c.epoch),
        EpochState {
            generation: c.generation,
            origin: point.clone(),
            cursor: point,
            start,
        },
    ))
}

/// Checks one stream's chain states from an invite against what the device holds for
/// that stream (`held`; None for a room it does not hold) and returns the epochs to add.
///
/// Refused: a malformed chain state; an epoch id or a generation given twice; an epoch
/// the device holds given at another generation, or on another chain; a second epoch of
/// a generation it holds; and, in a held room, a new generation other than the next one
/// (a rotation adds exactly one).
pub(super) fn check(
    held: Option<&StreamState>,
    given: &[ChainState],
) -> Result<Vec<(String, EpochState)>> {
    let mut ids = BTreeSet::new();
    let mut generations = BTreeSet::new();
    let mut out: BTreeMap<String, EpochState> = BTreeMap::new();
    for c in given {
        let (id, epoch) = parse(c)?;
        if !ids.insert(id.clone()) {
            return Err(refused(format!("epoch {id} is given twice")));
        }
        if !generations.insert(epoch.generation) {
            return Err(refused(format!(
                "two epochs of generation {} are given",
                epoch.generation
            )));
        }
        out.insert(id, epoch);
    }
    let Some(held) = held else {
        return Ok(out.into_iter().collect());
    };
    let newest = held.newest_generation();
    let mut fresh = Vec::new();
    for (id, epoch) in &out {
        match held.epochs.get(id) {
            Some(mine) if mine.generation != epoch.generation => {
                return Err(refused(format!(
                    "epoch {id} is generation {} here, not {}",
                    mine.generation, epoch.generation
                )));
            }
            Some(mine) if !same_chain(mine, &epoch.origin) => {
                return Err(refused(format!(
                    "its keys for epoch {id} contradict the keys this device holds"
                )));
            }
            Some(_) => {}
            None => {
                if let Some((other, _)) = held.epoch_of_generation(epoch.generation) {
                    return Err(refused(format!(
                        "it brings a second epoch of generation {} (this device holds {other})",
                        epoch.generation
                    )));
                }
                if newest.is_some_and(|n| epoch.generation > n) {
                    fresh.push(epoch.generation);
                }
            }
        }
    }
    if let Some(n) = newest {
        let next = n.checked_add(1);
        if let Some(&g) = fresh.iter().find(|&&g| Some(g) != next) {
            return Err(refused(format!(
                "it announces generation {g}, but this room is at generation {n}: a rotation \
                 brings exactly the next one"
            )));
        }
    }
    Ok(out.into_iter().collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn state(epoch: u8, generation: u32, counter: u64, key: [u8; 32], start: u64) -> ChainState {
        ChainState {
            epoch: vec![epoch; 16],
            generation,
            counter,
            chain_key: key.to_vec(),
            start,
        }
    }

    fn held() -> StreamState {
        let mut s = StreamState::new("00000000-0000-0000-0000-000000000001".into());
        for (id, e) in check(
            None,
            &[state(1, 0, 0, [1; 32], 0), state(2, 1, 5, [2; 32], 5)],
        )
        .unwrap()
        {
            s.epochs.insert(id, e);
        }
        s
    }

    #[test]
    fn only_the_next_generation_is_new_and_each_generation_once() {
        let h = held();
        let on_chain = ChainPoint {
            counter: 5,
            key: [2; 32],
        }
        .advanced_unbounded(9);
        assert_eq!(
            check(
                Some(&h),
                &[state(2, 1, 9, on_chain.key, 5), state(3, 2, 9, [3; 32], 9)]
            )
            .unwrap()
            .len(),
            2,
            "a held epoch further on, and the next generation"
        );
        let errs = [
            check(Some(&h), &[state(3, u32::MAX, 9, [3; 32], 9)]),
            check(Some(&h), &[state(3, 3, 9, [3; 32], 9)]),
            check(Some(&h), &[state(3, 1, 9, [3; 32], 9)]),
            check(Some(&h), &[state(2, 2, 9, on_chain.key, 5)]),
            check(Some(&h), &[state(2, 1, 9, [9; 32], 5)]),
            check(
                None,
                &[state(3, 2, 9, [3; 32], 9), state(3, 2, 9, [3; 32], 9)],
            ),
            check(
                None,
                &[state(3, 2, 9, [3; 32], 9), state(4, 2, 9, [3; 32], 9)],
            ),
            check(None, &[state(3, 2, 9, [3; 32], 10)]),
            check(Some(&h), &[state(2, 1, u64::MAX, [2; 32], 5)]),
        ];
        let said: Vec<String> = errs
            .into_iter()
            .map(|e| e.unwrap_err().to_string())
            .collect();
        for (said, wanted) in said.iter().zip([
            "announces generation 4294967295, but this room is at generation 1",
            "announces generation 3",
            "a second epoch of generation 1",
            "is generation 1 here, not 2",
            "contradict the keys this device holds",
            "is given twice",
            "two epochs of generation 2",
            "before its start",
            "contradict the keys",
        ]) {
            assert!(said.contains(wanted), "{said:?} should say {wanted:?}");
        }
    }
}
