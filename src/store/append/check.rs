//! A model of the counter rules, and a checker of [`plan_batch`] against it.
//!
//! Shared by the property tests (`cargo test`, `append/props.rs`) and the fuzz target
//! `plan_batch` (`fuzz/`); not part of the server's API. The model applies the rules of
//! DESIGN §1–2 one post at a time against a stream's whole history, in the order
//! `plan_batch` documents (per stream by counter, ties in arrival order). The checker
//! feeds `plan_batch` exactly what a backend would (the locked head rows, the stored
//! events that [`lookups_needed`] asks for), compares every outcome with the model, and
//! checks the written rows on their own: dense ids, strictly increasing counters within
//! the gap, heads that match the inserts.

use std::collections::{HashMap, HashSet};

use uuid::Uuid;

use super::{BatchPlan, ExistingEvent, HeadRow, lookups_needed, plan_batch};
use crate::error::Error;
use crate::store::{AppendRequest, Appended};

/// A stream's committed history, as a backend finds it under the stream's lock.
#[derive(Debug, Clone)]
pub struct History {
    /// The stream.
    pub stream: Uuid,
    /// (counter, sender, body) of its events, event ids 1, 2, … in this order. Counters
    /// below 1 are dropped and the rest sorted and deduplicated before use.
    pub events: Vec<(i64, i64, Vec<u8>)>,
    /// The stream's membership epoch.
    pub member_epoch: i64,
}

/// One batch against some committed streams.
#[derive(Debug, Clone)]
pub struct Scenario {
    /// The streams that exist (any other stream id in the batch is unknown).
    pub streams: Vec<History>,
    /// (stream, sender) pairs whose sender is not a member of the stream's pair.
    pub outsiders: Vec<(Uuid, i64)>,
    /// The posts, in arrival order (counters 1 ..= i64::MAX, as the service validates).
    pub batch: Vec<AppendRequest>,
    /// `max_counter_gap` (at least 1).
    pub max_gap: i64,
}

/// The model's answer to one post.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Expected {
    /// Stored with this event id.
    New(i64),
    /// An exact retry of the event with this id.
    Retry(i64),
    /// A counter refusal naming the head as it stood when the post was applied.
    Refused {
        /// The head counter.
        head_counter: i64,
        /// The head event id.
        head_event_id: i64,
    },
    /// Not a member, or no such stream.
    Denied,
}

/// A model stream: every event by counter, and the head.
struct ModelStream {
    head_counter: i64,
    head_event_id: i64,
    by_counter: HashMap<i64, (i64, i64, Vec<u8>)>,
}

/// The scenario with its histories normalised (see [`History::events`]).
fn normalised(s: &Scenario) -> Scenario {
    let mut s = s.clone();
    s.max_gap = s.max_gap.max(1);
    for h in &mut s.streams {
        h.events.retain(|e| e.0 >= 1);
        h.events.sort_by_key(|e| e.0);
        h.events.dedup_by_key(|e| e.0);
    }
    let mut seen = HashSet::new();
    s.streams.retain(|h| seen.insert(h.stream));
    for p in &mut s.batch {
        p.counter = p.counter.max(1);
    }
    s
}

/// The counter rules applied one post at a time: what each post of the batch must get,
/// in batch order.
pub fn model(s: &Scenario) -> Vec<Expected> {
    let s = normalised(s);
    let mut streams: HashMap<Uuid, ModelStream> = s
        .streams
        .iter()
        .map(|h| {
            let by_counter = h
                .events
                .iter()
                .enumerate()
                .map(|(i, (c, sender, body))| (*c, (i as i64 + 1, *sender, body.clone())))
                .collect();
            let head = ModelStream {
                head_counter: h.events.last().map_or(0, |e| e.0),
                head_event_id: h.events.len() as i64,
                by_counter,
            };
            (h.stream, head)
        })
        .collect();
    let mut order: Vec<usize> = (0..s.batch.len()).collect();
    order.sort_by_key(|&i| (s.batch[i].stream_id, s.batch[i].counter));
    let mut out = vec![Expected::Denied; s.batch.len()];
    for i in order {
        let p = &s.batch[i];
        let Some(st) = streams.get_mut(&p.stream_id) else {
            continue;
        };
        if s.outsiders.contains(&(p.stream_id, p.sender)) {
            continue;
        }
        let refused = Expected::Refused {
            head_counter: st.head_counter,
            head_event_id: st.head_event_id,
        };
        out[i] = match st.by_counter.get(&p.counter) {
            Some((id, sender, body)) if *sender == p.sender && body[..] == p.body[..] => {
                Expected::Retry(*id)
            }
            Some(_) => refused,
            None if p.counter > st.head_counter && p.counter - st.head_counter <= s.max_gap => {
                st.head_event_id += 1;
                st.head_counter = p.counter;
                let event = (st.head_event_id, p.sender, p.body.to_vec());
                st.by_counter.insert(p.counter, event);
                Expected::New(st.head_event_id)
            }
            None => refused,
        };
    }
    out
}

/// Server time given to [`plan_batch`] by the checker.
const NOW: i64 = 1_700_000_000_000_000;

/// The locked head rows of the scenario's streams.
fn head_rows(s: &Scenario) -> HashMap<Uuid, HeadRow> {
    s.streams
        .iter()
        .map(|h| {
            let row = HeadRow {
                head_event_id: h.events.len() as i64,
                head_counter: h.events.last().map_or(0, |e| e.0),
                member_epoch: h.member_epoch,
            };
            (h.stream, row)
        })
        .collect()
}

/// Runs [`plan_batch`] on a normalised scenario as a backend would: the locked head rows,
/// and the stored events that [`lookups_needed`] asks for (which must include every post
/// at or below its committed head).
fn run(s: &Scenario, heads: &HashMap<Uuid, HeadRow>) -> Result<BatchPlan, String> {
    let lookups = lookups_needed(&s.batch, heads);
    for p in &s.batch {
        let at_or_below = heads
            .get(&p.stream_id)
            .is_some_and(|h| p.counter <= h.head_counter);
        if at_or_below && lookups.binary_search(&(p.stream_id, p.counter)).is_err() {
            return Err(format!("lookups_needed misses counter {}", p.counter));
        }
    }
    let history: HashMap<Uuid, &History> = s.streams.iter().map(|h| (h.stream, h)).collect();
    let existing: HashMap<(Uuid, i64), ExistingEvent> = lookups
        .iter()
        .filter_map(|&(stream, counter)| {
            let h = history.get(&stream)?;
            let i = h.events.iter().position(|e| e.0 == counter)?;
            let (_, sender, body) = &h.events[i];
            let found = ExistingEvent {
                event_id: i as i64 + 1,
                sender: *sender,
                body: body.clone(),
            };
            Some(((stream, counter), found))
        })
        .collect();
    let is_member = |stream: Uuid, user: i64| !s.outsiders.contains(&(stream, user));
    Ok(plan_batch(
        &s.batch, heads, is_member, &existing, s.max_gap, NOW,
    ))
}

/// One outcome of `plan_batch` in the model's terms; `None` if it is nothing
/// `plan_batch` may answer for `post` (a stored event that is not the post, a refusal
/// naming another counter or gap, an unexpected error).
fn as_expected(
    outcome: &crate::error::Result<Appended>,
    post: &AppendRequest,
    heads: &HashMap<Uuid, HeadRow>,
    max_gap: i64,
) -> Option<Expected> {
    Some(match outcome {
        Ok(Appended::New {
            event,
            member_epoch,
        }) => {
            let same = (
                event.stream_id,
                event.counter,
                event.sender,
                event.posted_at,
            ) == (post.stream_id, post.counter, post.sender, NOW)
                && event.body == post.body
                && *member_epoch == heads.get(&post.stream_id)?.member_epoch;
            if !same {
                return None;
            }
            Expected::New(event.event_id)
        }
        Ok(Appended::Retry { event_id }) => Expected::Retry(*event_id),
        Err(Error::CounterRejected {
            counter,
            head_counter,
            head_event_id,
            max_gap: gap,
        }) => {
            if (*counter, *gap) != (post.counter as u64, max_gap as u64) {
                return None;
            }
            Expected::Refused {
                head_counter: i64::try_from(*head_counter).ok()?,
                head_event_id: i64::try_from(*head_event_id).ok()?,
            }
        }
        Err(e) if e.code() == tonic::Code::PermissionDenied => Expected::Denied,
        Err(_) => return None,
    })
}

/// What [`plan_batch`] answers each post of the scenario, in the model's terms.
pub fn outcomes(s: &Scenario) -> Result<Vec<Expected>, String> {
    let s = normalised(s);
    let heads = head_rows(&s);
    let plan = run(&s, &heads)?;
    if plan.outcomes.len() != s.batch.len() {
        return Err(format!(
            "{} outcomes for {} posts",
            plan.outcomes.len(),
            s.batch.len()
        ));
    }
    plan.outcomes
        .iter()
        .zip(&s.batch)
        .map(|(o, p)| {
            as_expected(o, p, &heads, s.max_gap).ok_or_else(|| format!("{p:?} got {o:?}"))
        })
        .collect()
}

/// Runs [`plan_batch`] on the scenario as a backend would and checks it against
/// [`model`] and the invariants of the rows it plans to write. `Err` says what broke.
pub fn check(s: &Scenario) -> Result<(), String> {
    let s = normalised(s);
    let heads = head_rows(&s);
    // Every post gets the model's outcome, in batch order.
    let got = outcomes(&s)?;
    let want = model(&s);
    if let Some(i) = (0..got.len()).find(|&i| got[i] != want[i]) {
        return Err(format!(
            "post {i} ({:?}): plan_batch says {:?}, the model {:?}",
            s.batch[i], got[i], want[i]
        ));
    }
    let plan = run(&s, &heads)?;
    // The rows to write, on their own: per stream dense ids after the committed head,
    // counters strictly increasing and never more than max_gap apart.
    let mut last: HashMap<Uuid, (i64, i64)> = HashMap::new();
    for e in &plan.inserts {
        let Some(committed) = heads.get(&e.stream_id) else {
            return Err(format!("an insert into the unknown stream {}", e.stream_id));
        };
        let (id, counter) = last
            .get(&e.stream_id)
            .copied()
            .unwrap_or((committed.head_event_id, committed.head_counter));
        if e.event_id != id + 1 || e.counter <= counter || e.counter - counter > s.max_gap {
            return Err(format!(
                "insert {e:?} follows event {id} at counter {counter}"
            ));
        }
        last.insert(e.stream_id, (e.event_id, e.counter));
    }
    let mut heads_written: Vec<(Uuid, i64, i64)> =
        last.into_iter().map(|(st, (id, c))| (st, id, c)).collect();
    heads_written.sort_unstable();
    if plan.heads != heads_written {
        return Err(format!(
            "heads {:?}, inserts end at {heads_written:?}",
            plan.heads
        ));
    }
    // Each new outcome is exactly one of the inserts.
    let mut new: Vec<(Uuid, i64)> = plan
        .outcomes
        .iter()
        .filter_map(|o| match o {
            Ok(Appended::New { event, .. }) => Some((event.stream_id, event.event_id)),
            _ => None,
        })
        .collect();
    let mut inserted: Vec<(Uuid, i64)> = plan
        .inserts
        .iter()
        .map(|e| (e.stream_id, e.event_id))
        .collect();
    new.sort_unstable();
    inserted.sort_unstable();
    if new != inserted {
        return Err(format!("new outcomes {new:?}, inserts {inserted:?}"));
    }
    Ok(())
}
