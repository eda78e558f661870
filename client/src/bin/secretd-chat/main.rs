//! `secretd-chat`: an end-to-end encrypted chat on the command line, over the reference
//! client library. The server only ever sees ciphertext.
//!
//! Local state lives in `--state DIR` (default `.secretd-chat`): `state.json` (0600, in a
//! 0700 directory) holds the unwrapped identity private key, room keys and cursors.
//! Whoever can read it can read your rooms: it is the device.

mod cli;
mod live;
mod output;
mod session;
mod store;
mod subs;
mod tokens;

use std::process::ExitCode;

use clap::Parser;
use secretd_client::crypto::blob::Kdf;
use secretd_client::device::History;
use secretd_client::device::identity::BackupUpgrade;
use secretd_client::{Device, Error, Result, user};
use serde_json::json;
use tonic::Code;

use cli::{Cli, Command, HistoryChoice, KdfChoice};
use output::Out;
use session::{keep, new_device, open, password};
use store::StateDir;

async fn run(cli: Cli) -> Result<()> {
    let out = Out { json: cli.json };
    let dir = StateDir::new(&cli.state);
    match cli.command {
        Command::Init {
            server,
            ca_file,
            token,
            kdf,
        } => {
            let kdf = match kdf {
                KdfChoice::Argon2id => Kdf::DEFAULT,
                KdfChoice::Pbkdf2 => {
                    return Err(Error::State(
                        "--kdf pbkdf2 is no longer offered: new backups use Argon2id (64 MiB, \
                         3 passes), which is far costlier to guess; backups made with PBKDF2 \
                         still open, and `login` re-wraps them"
                            .into(),
                    ));
                }
            };
            let device = new_device(&dir, &server, ca_file, token, async |api| {
                let pw = password(true)?;
                Device::init(api, &pw, kdf).await
            })
            .await?;
            out.whoami(&device);
        }
        Command::Login {
            server,
            ca_file,
            token,
            acknowledge_key_alarm,
        } => {
            let mut upgrade = None;
            let acknowledged = acknowledge_key_alarm.unwrap_or(0);
            let mut device = new_device(&dir, &server, ca_file, token, async |api| {
                let pw = password(false)?;
                let (device, outcome) = Device::login_acknowledging(api, &pw, acknowledged).await?;
                upgrade = Some(outcome);
                Ok(device)
            })
            .await?;
            out.whoami(&device);
            match upgrade {
                Some(BackupUpgrade::Rewrapped) => eprintln!(
                    "note: your key backup was re-protected with Argon2id (the current format)"
                ),
                Some(BackupUpgrade::Failed(e)) => eprintln!(
                    "note: your key backup is still in an older, weaker format: re-protecting \
                     it failed ({e}); the next login tries again"
                ),
                _ => {}
            }
            let (views, _) = device.rooms_overview().await;
            dir.save(device.state())?;
            out.rooms(device.state(), &views);
        }
        Command::Token {
            token: given,
            command,
            file,
            no_source,
        } => {
            session::set_token(
                out,
                &dir,
                given,
                tokens::source_of(command, file),
                no_source,
            )
            .await?
        }
        Command::Create { name, photo_url } => {
            let mut device = open(&dir).await?;
            let result = device.create_room(&name, Vec::new(), &photo_url).await;
            let pair = keep(&dir, &device, result)?;
            out.emit(json!({ "room": pair, "name": name }), || {
                format!("created [{name}] {pair}")
            });
        }
        Command::Invite {
            room,
            user: who,
            history,
            accept_new_key,
        } => {
            let mut device = open(&dir).await?;
            let who = user::parse(&who)?;
            let history = match history {
                HistoryChoice::All => History::All,
                HistoryChoice::FromNow => History::FromNow,
            };
            let result = device.invite(&room, &who, history, accept_new_key).await;
            let id = keep(&dir, &device, result)?;
            let name = user::display(&who);
            out.emit(json!({ "invite_id": id, "user": name }), || {
                format!("invited {name} (invite {id})")
            });
        }
        Command::Accept => {
            let mut device = open(&dir).await?;
            let result = device.accept_invites().await;
            let accepted = keep(&dir, &device, result)?;
            if !out.accepted(device.state(), device.me(), &accepted) && !out.json {
                println!("no new invites");
            }
        }
        Command::Send { room, text } => {
            let mut device = open(&dir).await?;
            let result = device.send_text(&room, &text).await;
            let sent = keep(&dir, &device, result)?;
            out.emit(
                json!({ "event_id": sent.event_id, "counter": sent.counter, "refused": sent.refused }),
                || format!("sent (event {}, counter {})", sent.event_id, sent.counter),
            );
        }
        Command::Read { room } => {
            let mut device = open(&dir).await?;
            let result = device.history(&room).await;
            let transcript = keep(&dir, &device, result)?;
            if transcript.hidden > 0 && !out.json {
                println!(
                    "({} earlier events are before your invite)",
                    transcript.hidden
                );
            }
            for e in &transcript.events {
                out.event(device.state(), e);
            }
        }
        Command::Listen => live::run(out, &dir, None).await?,
        Command::Chat { room } => live::run(out, &dir, Some(room)).await?,
        Command::Rooms => {
            let mut device = open(&dir).await?;
            let (views, error) = device.rooms_overview().await;
            dir.save(device.state())?;
            if let Some(e) = error {
                eprintln!(
                    "note: the server could not be asked ({e}); this is what this device knew"
                );
            }
            out.rooms(device.state(), &views);
        }
        Command::Members { room } => {
            let mut device = open(&dir).await?;
            let result = device.members(&room).await;
            let members = keep(&dir, &device, result)?;
            out.members(&members);
        }
        Command::Leave { room } => {
            let mut device = open(&dir).await?;
            let result = device.leave(&room).await;
            let pair = keep(&dir, &device, result)?;
            let name = device.room(&pair)?.name.clone();
            out.emit(json!({ "left": pair, "room_name": name }), || {
                format!(
                    "you left [{name}]; its other members should rotate its keys \
                     (`secretd-chat rotate {name}`) so that the keys you hold read nothing new"
                )
            });
        }
        Command::Remove { room, user: who } => {
            let mut device = open(&dir).await?;
            let who = user::parse(&who)?;
            let result = device.remove_member(&room, &who).await;
            let rotation = keep(&dir, &device, result)?;
            let name = user::display(&who);
            out.emit(json!({ "removed": name }), || format!("removed {name}"));
            out.rotation(&room, &rotation);
        }
        Command::Rotate { room } => {
            let mut device = open(&dir).await?;
            let result = device.rotate(&room, Vec::new()).await;
            let rotation = keep(&dir, &device, result)?;
            out.rotation(&room, &rotation);
        }
        Command::Whoami => out.whoami(&open(&dir).await?),
        Command::AcknowledgeLogFork => {
            let mut device = session::open_unchecked(&dir).await?;
            let n = device.acknowledge_log_fork();
            keep(&dir, &device, Ok(()))?;
            out.emit(json!({ "acknowledged_forks": n }), || {
                format!("{n} split-view alarm(s) acknowledged; this device goes on")
            });
        }
        Command::AcknowledgeKeyAlarm { seq } => {
            let mut device = session::open_unchecked(&dir).await?;
            let result = device.acknowledge_key_alarm(seq).await;
            keep(&dir, &device, result)?;
            // What comes after `seq` is checked as at every start.
            let result = device.monitor_own_key().await;
            keep(&dir, &device, result)?;
            out.emit(json!({ "acknowledged_seq": seq }), || {
                format!(
                    "key-log entries through {seq} acknowledged; this device goes on (your \
                     contacts should still compare safety numbers with you)"
                )
            });
        }
        Command::Trust { user: who } => {
            let mut device = open(&dir).await?;
            let who = user::parse(&who)?;
            let result = device.accept_key(&who).await;
            let (before, now) = keep(&dir, &device, result)?;
            let name = user::display(&who);
            out.emit(
                json!({ "user": name, "previous": before, "fingerprint": now }),
                || match before {
                    Some(b) if b != now => format!(
                        "user {name}'s key is now {now} (was {b}); not verified: compare safety \
                         numbers (`secretd-chat safety {name}`)"
                    ),
                    _ => format!("user {name}'s key {now} is pinned; not verified yet"),
                },
            );
        }
        Command::Safety { user: who } => {
            let mut device = open(&dir).await?;
            let who = user::parse(&who)?;
            let result = device.safety_number(&who).await;
            let number = keep(&dir, &device, result)?;
            let name = user::display(&who);
            let verified = device.pin_of(&who).is_some_and(|p| p.verified);
            out.emit(json!({ "user": name, "safety_number": number, "verified": verified }), || {
                format!(
                    "safety number with user {name}:\n{number}\nCompare it with theirs in person \
                     or on a call; if it matches, run `secretd-chat verify {name} DIGITS`.{}",
                    if verified { " (already verified)" } else { "" }
                )
            });
        }
        Command::Verify { user: who, number } => {
            let mut device = open(&dir).await?;
            let who = user::parse(&who)?;
            let result = device.verify(&who, &number.join(" ")).await;
            keep(&dir, &device, result)?;
            let name = user::display(&who);
            out.emit(json!({ "user": name, "verified": true }), || {
                format!("user {name}'s key is verified")
            });
        }
    }
    Ok(())
}

/// What to do next, for errors a person can act on.
fn hint(e: &Error) -> Option<&'static str> {
    match e {
        Error::Token(_) => None, // its message says it
        e if e.code() == Some(Code::Unauthenticated) => Some(tokens::ADVICE),
        Error::Connect { .. } => Some("check --server, and that secretd runs there"),
        _ => None,
    }
}

/// The exit code of a key alarm (a key the user never posted is in their homeserver's
/// log): distinct from other failures, so scripts can tell.
const KEY_ALARM_EXIT: u8 = 3;

/// Keeps an alarm's evidence (and says where); `extra` goes into the JSON line.
fn keep_evidence(out: Out, dir: &StateDir, evidence: &str, extra: serde_json::Value) {
    let kept = dir.save_evidence(evidence);
    if out.json {
        let mut line = json!({ "evidence": kept.as_ref().ok() });
        if let (Some(line), Some(extra)) = (line.as_object_mut(), extra.as_object()) {
            line.extend(extra.clone());
        }
        println!("{line}");
    }
    match &kept {
        Ok(path) => eprintln!(
            "evidence: {} (signed by your homeserver; keep it)",
            path.display()
        ),
        Err(e) => eprintln!("the evidence could not be written ({e}); here it is:\n{evidence}"),
    }
}

/// A split view found through members' gossip: the evidence, and what to do.
fn fork_alarm(out: Out, dir: &StateDir, evidence: &str) -> ExitCode {
    keep_evidence(out, dir, evidence, json!({ "split_view": true }));
    eprintln!(
        "advice: your homeserver signed two versions of its key log and showed them to \
         different members of your rooms, so it can show each of you different keys for the \
         others. The evidence file holds both signed heads: report it to the operator (it is \
         proof, not suspicion). Compare safety numbers with your contacts over another \
         channel before trusting new keys. Then `secretd-chat acknowledge-log-fork` lets \
         this device go on."
    );
    ExitCode::from(KEY_ALARM_EXIT)
}

/// Keeps a key alarm's evidence and says what to do.
fn alarm(out: Out, dir: &StateDir, newest_seq: u64, evidence: &str) -> ExitCode {
    keep_evidence(out, dir, evidence, json!({ "newest_seq": newest_seq }));
    if logs_an_erasure(evidence) {
        eprintln!(
            "advice: your homeserver (or whoever controls its database) logged your account \
             as erased, and this device did not erase it: your contacts can no longer fetch \
             your key, and clients refuse any key served for you from now on. Report it to \
             your homeserver's operator with the evidence file, and tell your contacts over \
             another channel. Then run `secretd-chat acknowledge-key-alarm {newest_seq}` (on a \
             new device: `secretd-chat login ... --acknowledge-key-alarm {newest_seq}`) to go on."
        );
        return ExitCode::from(KEY_ALARM_EXIT);
    }
    eprintln!(
        "advice: your homeserver (or whoever controls its database or signing key) published \
         a key for you that this device never posted; whoever holds it can read invites and \
         room keys sent to you from now on. Report it to your homeserver's operator with the \
         evidence file. Ask your contacts, over another channel, to compare safety numbers \
         with you (`secretd-chat safety YOUR-ID`): while the server serves that key they will \
         not match, and clients that pinned your key already warn. Then run \
         `secretd-chat acknowledge-key-alarm {newest_seq}` (on a new device: `secretd-chat \
         login ... --acknowledge-key-alarm {newest_seq}`) to go on."
    );
    ExitCode::from(KEY_ALARM_EXIT)
}

/// Whether a key alarm's evidence holds an erased entry (a fingerprint of 32 zero bytes,
/// docs/kt.md §1): the server logged the account as erased.
fn logs_an_erasure(evidence: &str) -> bool {
    let erased = "00".repeat(32);
    serde_json::from_str::<serde_json::Value>(evidence)
        .ok()
        .and_then(|v| {
            v["entries"]
                .as_array()
                .map(|es| es.iter().any(|e| e["fingerprint"] == erased.as_str()))
        })
        .unwrap_or(false)
}

#[tokio::main(flavor = "current_thread")]
async fn main() -> ExitCode {
    let cli = Cli::parse();
    let json = cli.json;
    let out = Out { json };
    let dir = StateDir::new(&cli.state);
    let Err(e) = run(cli).await else {
        return ExitCode::SUCCESS;
    };
    if json {
        println!("{}", json!({ "error": e.to_string() }));
    }
    eprintln!("error: {e}");
    match &e {
        Error::KeyAlarm {
            newest_seq,
            evidence,
            ..
        } => alarm(out, &dir, *newest_seq, evidence),
        Error::LogFork { evidence, .. } => fork_alarm(out, &dir, evidence),
        _ => {
            if let Some(hint) = hint(&e) {
                eprintln!("hint: {hint}");
            }
            ExitCode::FAILURE
        }
    }
}
