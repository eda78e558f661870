//! What the CLI prints: lines for people, or one JSON object per line with `--json`.

use secretd_client::crypto::identity::fingerprint_hex;
use secretd_client::device::{Accepted, Content, Incoming, StreamKind};
use secretd_client::state::DeviceState;
use secretd_client::user;
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
                    format!(
                        "* {sender} rotated the keys (generation {generation}, removed {removed:?})"
                    ),
                )
            }
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

    /// Processed invites.
    pub fn accepted(&self, list: &[Accepted]) {
        for a in list {
            let from = user::display(&a.from);
            match &a.result {
                Ok(name) => self.emit(
                    json!({ "invite_id": a.invite_id, "room": a.pair_id, "room_name": name, "from": from, "accepted": true }),
                    || format!("joined [{name}] ({}), invited by {from}", a.pair_id),
                ),
                Err(why) => self.emit(
                    json!({ "invite_id": a.invite_id, "room": a.pair_id, "from": from, "accepted": false, "error": why }),
                    || format!("refused invite {} from {from}: {why}", a.invite_id),
                ),
            }
        }
    }

    /// The device's rooms.
    pub fn rooms(&self, state: &DeviceState) {
        for r in state.rooms.values() {
            let trusted: Vec<&String> = r.trusted.keys().collect();
            self.emit(
                json!({
                    "room": r.pair_id, "name": r.name, "message_stream": r.message.stream_id,
                    "state_stream": r.state.stream_id, "trusted_users": trusted,
                    "epochs": r.message.epochs.len(),
                }),
                || {
                    format!(
                        "{}  {}  (trusted: {})",
                        r.pair_id,
                        r.name,
                        trusted
                            .iter()
                            .map(|s| s.as_str())
                            .collect::<Vec<_>>()
                            .join(", ")
                    )
                },
            );
        }
    }
}
