//! What the CLI prints: lines for people, or one JSON object per line with `--json`.

use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use secretd_client::crypto::identity::fingerprint_hex;
use secretd_client::device::rotation::Rotation;
use secretd_client::device::{Accepted, Content, Incoming, Member, RoomView, StreamKind};
use secretd_client::state::{DeviceState, Pin};
use secretd_client::user::{self, UserRef};
use secretd_client::{Device, Error};
use serde_json::{Value, json};

/// Prints either human lines or JSON lines.
#[derive(Clone, Copy)]
pub struct Out {
    /// One JSON object per line.
    pub json: bool,
}

fn room_name(state: &DeviceState, pair_id: &str) -> String {
    state
        .rooms
        .get(pair_id)
        .map_or_else(|| pair_id.to_string(), |r| r.name.clone())
}

impl Out {
    /// Prints a JSON value or a line.
    pub fn emit(&self, value: Value, line: impl FnOnce() -> String) {
        if self.json {
            println!("{value}");
        } else {
            println!("{}", line());
        }
    }

    /// One received event.
    pub fn event(&self, state: &DeviceState, e: &Incoming) {
        let room = room_name(state, &e.pair_id);
        let sender = user::display(&e.sender);
        let stream = match e.stream {
            StreamKind::Message => "message",
            StreamKind::State => "state",
        };
        let (kind, detail, line) = match &e.content {
            Ok(Content::Text(t)) => ("text", json!({ "text": t }), format!("{sender}: {t}")),
            Ok(Content::TrustKey {
                user: who,
                fingerprint,
            }) => {
                let (w, f) = (user::display(who), fingerprint_hex(fingerprint));
                (
                    "trust_key",
                    json!({ "user": w, "fingerprint": f }),
                    format!("* {sender} trusts key {f} of user {w}"),
                )
            }
            Ok(Content::RoomState { name }) => (
                "room_state",
                json!({ "name": name }),
                format!("* {sender} set the room state (name {name:?})"),
            ),
            Ok(Content::Rekey {
                generation,
                removed,
            }) => {
                let removed: Vec<String> = removed.iter().map(user::display).collect();
                (
                    "rekey",
                    json!({ "generation": generation, "removed": removed }),
                    if removed.is_empty() {
                        format!("* {sender} rotated the keys (generation {generation})")
                    } else {
                        format!(
                            "* {sender} removed {} and rotated the keys (generation {generation})",
                            removed.join(", ")
                        )
                    },
                )
            }
            Ok(Content::HistoryRemoved) => (
                "history_removed",
                json!({ "history_starts_at": e.event_id }),
                format!(
                    "* history before event {} was removed by the room's retention",
                    e.event_id
                ),
            ),
            Err(why) => (
                "rejected",
                json!({ "error": why }),
                format!("! rejected event from {sender}: {why}"),
            ),
        };
        let mut value = json!({
            "room": e.pair_id, "room_name": room, "stream": stream, "event_id": e.event_id,
            "counter": e.counter, "sender": sender, "posted_at_ms": e.posted_at_ms,
            "stale_epoch": e.stale_epoch, "kind": kind,
        });
        if let (Value::Object(v), Value::Object(d)) = (&mut value, detail) {
            v.extend(d);
        }
        let stale = if e.stale_epoch { " (retired keys)" } else { "" };
        self.emit(value, || format!("[{room}] {line}{stale}"));
    }

    /// Processed invites, as far as they tell the user something: a room joined (or
    /// joined again), new keys from someone else, a refusal. New keys this user's own
    /// devices sent for a room in use say nothing. Returns whether anything was printed.
    pub fn accepted(&self, state: &DeviceState, me: &UserRef, list: &[Accepted]) -> bool {
        let mut printed = false;
        for a in list {
            let from = user::display(&a.from);
            let (value, line) = match &a.result {
                Ok(_) if !a.new_room && a.from == *me => continue,
                Ok(name) => {
                    let line = if !a.new_room {
                        format!("[{name}] new keys from {from} (a key rotation)")
                    } else if a.from == *me {
                        format!("joined [{name}] ({}) from your other device", a.pair_id)
                    } else {
                        format!("joined [{name}] ({}), invited by {from}", a.pair_id)
                    };
                    (
                        json!({ "invite_id": a.invite_id, "room": a.pair_id, "room_name": name,
                                "from": from, "accepted": true, "new_room": a.new_room }),
                        line,
                    )
                }
                Err(why) => (
                    json!({ "invite_id": a.invite_id, "room": a.pair_id, "from": from,
                            "accepted": false, "error": why }),
                    format!(
                        "refused invite {} from {from} to [{}]: {why}",
                        a.invite_id,
                        room_name(state, &a.pair_id)
                    ),
                ),
            };
            self.emit(value, || line);
            printed = true;
        }
        printed
    }

    /// A room the user has just been found to have left or been removed from.
    pub fn lost(&self, state: &DeviceState, pair_id: &str, e: &Error) {
        let lost = state.rooms.get(pair_id).and_then(|r| r.lost.clone());
        self.emit(
            json!({ "kind": "lost", "room": pair_id, "room_name": room_name(state, pair_id),
                    "removed": lost.as_ref().is_some_and(|l| l.removed),
                    "by": lost.as_ref().and_then(|l| l.by.clone()),
                    "at_ms": lost.as_ref().map(|l| l.at_ms) }),
            || format!("* {e}"),
        );
    }

    /// The device's rooms with the server's view of them.
    pub fn rooms(&self, state: &DeviceState, views: &[RoomView]) {
        let me = user::display(&user::local(state.user_id));
        if views.is_empty() && !self.json {
            println!("no rooms yet: `create NAME`, or `accept` an invite");
        }
        for v in views {
            let members: Option<Vec<String>> = v
                .members
                .as_ref()
                .map(|m| m.iter().map(user::display).collect());
            let owner = v.owner.as_ref().map(user::display);
            let others: Vec<&String> = members.iter().flatten().filter(|m| **m != me).collect();
            let verified = others
                .iter()
                .filter(|m| state.pins.get(**m).is_some_and(|p| p.verified))
                .count();
            let status = match &v.lost {
                None => "member",
                Some(l) if l.removed => "removed",
                Some(_) => "left",
            };
            self.emit(
                json!({
                    "room": v.pair_id, "name": v.name, "status": status,
                    "homeserver": if v.homeserver.is_empty() { None } else { Some(&v.homeserver) },
                    "owner": owner, "members": members,
                    "removed_by": v.lost.as_ref().and_then(|l| l.by.clone()),
                    "departed_at_ms": v.lost.as_ref().map(|l| l.at_ms),
                    "verified_members": verified,
                }),
                || {
                    let detail = match (&v.lost, &members, &owner) {
                        (Some(lost), _, _) => lost.summary(),
                        (None, Some(m), Some(o)) => format!(
                            "owner {o}; members {} ({verified} of {} others verified by safety number)",
                            m.join(", "),
                            others.len()
                        ),
                        _ => "member (the server was not asked)".into(),
                    };
                    let place = if v.homeserver.is_empty() {
                        String::new()
                    } else {
                        format!(" (on {})", v.homeserver)
                    };
                    format!("[{}]{place}  {}  {detail}", v.name, v.pair_id)
                },
            );
        }
    }

    /// A room's members.
    pub fn members(&self, members: &[Member]) {
        for m in members {
            let who = user::display(&m.user);
            let role = match (m.owner, m.me) {
                (true, true) => " (owner, you)",
                (true, false) => " (owner)",
                (false, true) => " (you)",
                (false, false) => "",
            };
            let pin = pin_status(m.me, m.pin.as_ref());
            self.emit(
                json!({ "user": who, "owner": m.owner, "me": m.me, "trusted_fingerprints": m.trusted,
                        "pin": pin, "pinned_fingerprint": m.pin.as_ref().map(|p| p.fingerprint.clone()),
                        "offered_fingerprint": m.pin.as_ref().and_then(|p| p.offered.clone()) }),
                || {
                    let trust = match m.trusted.as_slice() {
                        [] => "no key of theirs is trusted in this room yet".to_string(),
                        keys => format!("trusted key {}", keys.join(", ")),
                    };
                    let warning = match m.pin.as_ref().and_then(|p| p.offered.as_ref()) {
                        Some(offered) => format!(
                            "; WARNING: the server now serves another key for them ({offered})"
                        ),
                        None => String::new(),
                    };
                    format!("{who}{role}  {trust}; {pin}{warning}")
                },
            );
        }
    }

    /// The user and their key's fingerprint, in both forms people meet it in, and how
    /// many of the keys this device pinned are verified or changed.
    pub fn whoami(&self, device: &Device) {
        let me = user::display(device.me());
        let fp = device.fingerprint();
        let (hex, b64) = (fingerprint_hex(&fp), STANDARD.encode(fp));
        let pins = &device.state().pins;
        let verified = pins.values().filter(|p| p.verified).count();
        let changed: Vec<&String> = pins
            .iter()
            .filter(|(_, p)| p.offered.is_some())
            .map(|(u, _)| u)
            .collect();
        self.emit(
            json!({ "user": me, "fingerprint": hex, "fingerprint_base64": b64,
                    "pinned": pins.len(), "verified": verified, "changed_keys": changed }),
            || {
                let mut text = format!(
                    "user {me}\nkey fingerprint (SHA-256 of your public key), as secretd-chat shows \
                     fingerprints: {hex}\nthe same in base64, as the server's API (PostKey, FetchKey) \
                     shows it: {b64}\nkeys of others pinned: {}, verified by safety number: {verified}",
                    pins.len()
                );
                for u in &changed {
                    text.push_str(&format!(
                        "\nWARNING: the server serves a different key for user {u} than the one \
                         pinned (see `secretd-chat members ROOM`, `safety {u}`, `trust {u}`)"
                    ));
                }
                text
            },
        );
    }

    /// What a rotation did.
    pub fn rotation(&self, room: &str, r: &Rotation) {
        let names = |list: &[UserRef]| list.iter().map(user::display).collect::<Vec<_>>();
        let skipped: Vec<Value> = r
            .skipped
            .iter()
            .map(|(u, why)| json!({ "user": user::display(u), "why": why }))
            .collect();
        self.emit(
            json!({ "rotated": room, "generation": r.generation, "rekeyed": names(&r.rekeyed),
                    "skipped": skipped, "pending": names(&r.pending) }),
            || {
                let mut text = format!(
                    "rotated the keys of [{room}] (generation {}); new keys sent to: {}",
                    r.generation,
                    match names(&r.rekeyed).join(", ") {
                        s if s.is_empty() => "nobody else".into(),
                        s => s,
                    }
                );
                for (u, why) in &r.skipped {
                    text.push_str(&format!("\n  not sent to {}: {why}", user::display(u)));
                }
                if !r.pending.is_empty() {
                    text.push_str(&format!(
                        "\n  not sent yet (the server did not answer), retried at the next sync: {}",
                        names(&r.pending).join(", ")
                    ));
                }
                text
            },
        );
    }
}

/// A member's pin, in words: verified, pinned, or not pinned yet.
fn pin_status(me: bool, pin: Option<&Pin>) -> &'static str {
    match (me, pin) {
        (true, _) => "you",
        (false, Some(p)) if p.offered.is_some() => "key changed, not accepted",
        (false, Some(p)) if p.verified => "verified",
        (false, Some(_)) => "pinned, not verified",
        (false, None) => "not pinned yet",
    }
}
