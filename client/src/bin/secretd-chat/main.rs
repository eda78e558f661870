//! `secretd-chat`: an end-to-end encrypted chat on the command line, over the reference
//! client library. The server only ever sees ciphertext.
//!
//! Local state lives in `--state DIR` (default `.secretd-chat`): `state.json` (0600, in a
//! 0700 directory) holds the unwrapped identity private key, room keys and cursors.
//! Whoever can read it can read your rooms: it is the device.

mod output;
mod store;

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand, ValueEnum};
use secretd_client::api::{Api, subscription::Delivery};
use secretd_client::crypto::blob::Kdf;
use secretd_client::crypto::identity::fingerprint_hex;
use secretd_client::device::History;
use secretd_client::{Device, Error, Result, user};
use serde_json::json;
use tokio::io::{AsyncBufReadExt, BufReader};

use output::Out;
use store::StateDir;

/// End-to-end encrypted chat over secretd.
#[derive(Parser)]
#[command(name = "secretd-chat", version)]
struct Cli {
    /// Directory holding this device's state (keys, rooms, cursors).
    #[arg(
        long,
        global = true,
        env = "SECRETD_CHAT_STATE",
        default_value = ".secretd-chat"
    )]
    state: PathBuf,
    /// One JSON object per line on stdout instead of text.
    #[arg(long, global = true)]
    json: bool,
    #[command(subcommand)]
    command: Command,
}

#[derive(Clone, Copy, ValueEnum)]
enum KdfChoice {
    /// PBKDF2-HMAC-SHA256, 600,000 iterations.
    Pbkdf2,
    /// Argon2id, 19 MiB, 2 passes.
    Argon2id,
}

#[derive(Clone, Copy, ValueEnum)]
enum HistoryChoice {
    /// Everything this device can read.
    All,
    /// Only what is posted after the invite.
    FromNow,
}

#[derive(Subcommand)]
enum Command {
    /// First device: create your identity key and back it up under a password.
    Init {
        /// The secretd URL, e.g. http://127.0.0.1:50051.
        #[arg(long)]
        server: String,
        /// Your bearer token (JWT from your homeserver).
        #[arg(long)]
        token: String,
        /// How the password protects the backup.
        #[arg(long, value_enum, default_value = "pbkdf2")]
        kdf: KdfChoice,
    },
    /// Another device: restore your identity from the password and rebuild your rooms.
    Login {
        /// The secretd URL.
        #[arg(long)]
        server: String,
        /// Your bearer token.
        #[arg(long)]
        token: String,
    },
    /// Create a room.
    Create {
        /// The room's name.
        name: String,
        /// A photo URL for the room.
        #[arg(long, default_value = "")]
        photo_url: String,
    },
    /// Invite a user (id, or id@homeserver) into a room.
    Invite {
        /// Room name or pair id.
        room: String,
        /// The invitee.
        user: String,
        /// How much history the invitee may read.
        #[arg(long, value_enum, default_value = "from-now")]
        history: HistoryChoice,
    },
    /// Process invites you received (join their rooms).
    Accept,
    /// Send a message.
    Send {
        /// Room name or pair id.
        room: String,
        /// The message.
        text: String,
    },
    /// Print a room's history (what this device may read).
    Read {
        /// Room name or pair id.
        room: String,
    },
    /// Print messages as they arrive (and join rooms you are invited to), until Ctrl-C.
    Listen,
    /// Chat in one room: each line you type is sent; everything arriving is printed.
    Chat {
        /// Room name or pair id.
        room: String,
    },
    /// List your rooms.
    Rooms,
    /// Remove a member (owner only) and rotate the room's keys.
    Remove {
        /// Room name or pair id.
        room: String,
        /// The member to remove.
        user: String,
    },
    /// Rotate a room's keys (after a member left on their own).
    Rotate {
        /// Room name or pair id.
        room: String,
    },
    /// Print your user id and key fingerprint (compare it out of band).
    Whoami,
}

fn password(confirm: bool) -> Result<String> {
    if let Ok(p) = std::env::var("SECRETD_CHAT_PASSWORD") {
        return Ok(p);
    }
    let read = |prompt: &str| {
        rpassword::prompt_password(prompt)
            .map_err(|e| Error::io("cannot read the password (set SECRETD_CHAT_PASSWORD to give it without a terminal)", e))
    };
    let first = read("Password: ")?;
    if confirm && read("Repeat it: ")? != first {
        return Err(Error::State("the two passwords differ".into()));
    }
    if first.is_empty() {
        return Err(Error::State("an empty password protects nothing".into()));
    }
    Ok(first)
}

async fn open(dir: &StateDir) -> Result<Device> {
    let state = dir.load()?;
    let token = std::env::var("SECRETD_CHAT_TOKEN").unwrap_or_else(|_| state.token.clone());
    let api = Api::connect(&state.server, &token).await?;
    let mut state = state;
    state.token = token;
    Device::from_state(api, state)
}

async fn run(cli: Cli) -> Result<()> {
    let out = Out { json: cli.json };
    let dir = StateDir::new(&cli.state);
    match cli.command {
        Command::Init { server, token, kdf } => {
            if dir.exists() {
                return Err(Error::State(format!(
                    "{} already holds a device",
                    cli.state.display()
                )));
            }
            let kdf = match kdf {
                KdfChoice::Pbkdf2 => Kdf::DEFAULT,
                KdfChoice::Argon2id => Kdf::ARGON2ID,
            };
            let pw = password(true)?;
            let device = Device::init(Api::connect(&server, &token).await?, &pw, kdf).await?;
            dir.save(device.state())?;
            whoami(out, &device);
        }
        Command::Login { server, token } => {
            if dir.exists() {
                return Err(Error::State(format!(
                    "{} already holds a device",
                    cli.state.display()
                )));
            }
            let pw = password(false)?;
            let device = Device::login(Api::connect(&server, &token).await?, &pw).await?;
            dir.save(device.state())?;
            whoami(out, &device);
            out.rooms(device.state());
        }
        Command::Create { name, photo_url } => {
            let mut device = open(&dir).await?;
            let result = device.create_room(&name, Vec::new(), &photo_url).await;
            dir.save(device.state())?;
            let pair = result?;
            out.emit(json!({ "room": pair, "name": name }), || {
                format!("created [{name}] {pair}")
            });
        }
        Command::Invite {
            room,
            user: who,
            history,
        } => {
            let mut device = open(&dir).await?;
            let who = user::parse(&who)?;
            let history = match history {
                HistoryChoice::All => History::All,
                HistoryChoice::FromNow => History::FromNow,
            };
            let result = device.invite(&room, &who, history).await;
            dir.save(device.state())?;
            let id = result?;
            let name = user::display(&who);
            out.emit(json!({ "invite_id": id, "user": name }), || {
                format!("invited {name} (invite {id})")
            });
        }
        Command::Accept => {
            let mut device = open(&dir).await?;
            let result = device.accept_invites().await;
            dir.save(device.state())?;
            out.accepted(&result?);
        }
        Command::Send { room, text } => {
            let mut device = open(&dir).await?;
            let result = device.send_text(&room, &text).await;
            dir.save(device.state())?;
            let sent = result?;
            out.emit(
                json!({ "event_id": sent.event_id, "counter": sent.counter, "refused": sent.refused }),
                || format!("sent (event {}, counter {})", sent.event_id, sent.counter),
            );
        }
        Command::Read { room } => {
            let mut device = open(&dir).await?;
            let result = device.history(&room).await;
            dir.save(device.state())?;
            let transcript = result?;
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
        Command::Listen => listen(out, &dir, None).await?,
        Command::Chat { room } => listen(out, &dir, Some(room)).await?,
        Command::Rooms => out.rooms(&dir.load()?),
        Command::Remove { room, user: who } => {
            let mut device = open(&dir).await?;
            let who = user::parse(&who)?;
            let result = device.remove_member(&room, &who).await;
            dir.save(device.state())?;
            result?;
            let name = user::display(&who);
            out.emit(json!({ "removed": name }), || {
                format!("removed {name} and rotated the room keys")
            });
        }
        Command::Rotate { room } => {
            let mut device = open(&dir).await?;
            let result = device.rotate(&room, Vec::new()).await;
            dir.save(device.state())?;
            result?;
            out.emit(json!({ "rotated": room }), || {
                format!("rotated the keys of [{room}]")
            });
        }
        Command::Whoami => whoami(out, &open(&dir).await?),
    }
    Ok(())
}

fn whoami(out: Out, device: &Device) {
    let (me, fp) = (
        user::display(device.me()),
        fingerprint_hex(&device.fingerprint()),
    );
    out.emit(json!({ "user": me, "fingerprint": fp }), || {
        format!("user {me}, key fingerprint {fp}")
    });
}

/// Follows every room live; with `chat_room`, also sends each line read from stdin there
/// (and stops at the end of input).
async fn listen(out: Out, dir: &StateDir, chat_room: Option<String>) -> Result<()> {
    let mut device = open(dir).await?;
    if let Some(room) = &chat_room {
        device.room(room)?;
    }
    out.accepted(&device.accept_invites().await?);
    for pair in device.state().rooms.keys().cloned().collect::<Vec<_>>() {
        device.sync_room(&pair).await?;
    }
    for e in device.take_processed() {
        out.event(device.state(), &e);
    }
    dir.save(device.state())?;
    let cursors = |d: &Device, pair: Option<&str>| -> Vec<(String, u64)> {
        d.state()
            .rooms
            .values()
            .filter(|r| pair.is_none_or(|p| p == r.pair_id))
            .flat_map(|r| r.streams().map(|s| (s.stream_id.clone(), s.last_event_id)))
            .collect()
    };
    let mut sub = device
        .api()
        .subscribe(cursors(&device, None), Some(device.state().invites_after));
    if !out.json {
        match &chat_room {
            Some(room) => {
                eprintln!("chatting in [{room}]: type a line to send it (Ctrl-D to stop)")
            }
            None => eprintln!("listening (Ctrl-C to stop)"),
        }
    }
    let mut lines = BufReader::new(tokio::io::stdin()).lines();
    let mut typing = chat_room.is_some();
    loop {
        let mut received = Vec::new();
        tokio::select! {
            line = lines.next_line(), if typing => {
                match line.map_err(|e| Error::io("cannot read stdin", e))? {
                    Some(text) if !text.trim().is_empty() => {
                        let room = chat_room.as_deref().unwrap_or_default();
                        if let Err(e) = device.send_text(room, &text).await {
                            eprintln!("error: not sent: {e}");
                        }
                    }
                    Some(_) => {}
                    None => typing = false,
                }
                if !typing {
                    break;
                }
            }
            delivery = sub.next() => {
                let Some(delivery) = delivery else { break };
                match delivery {
                    Delivery::Event(m) => received = device.receive(m).await?,
                    Delivery::Invite(invite) => {
                        let pair = invite.pair.as_ref().map_or("", |p| p.pair_id.as_str());
                        let known = device.state().rooms.contains_key(pair);
                        let accepted = device.accept_invite(&invite).await;
                        if !known && accepted.result.is_ok() {
                            sub.add(cursors(&device, Some(&accepted.pair_id)));
                        }
                        out.accepted(&[accepted]);
                    }
                    Delivery::Ended { stream_id, code, message } => {
                        eprintln!("stream {stream_id} ended: {message} ({code:?})");
                    }
                    Delivery::Reconnecting { reason } => eprintln!("reconnecting: {reason}"),
                    Delivery::CaughtUp { .. } => {}
                }
            }
        }
        received.extend(device.take_processed());
        for e in &received {
            out.event(device.state(), e);
        }
        dir.save(device.state())?;
    }
    Ok(())
}

#[tokio::main(flavor = "current_thread")]
async fn main() -> ExitCode {
    let cli = Cli::parse();
    let json = cli.json;
    match run(cli).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            if json {
                println!("{}", json!({ "error": e.to_string() }));
            }
            eprintln!("error: {e}");
            ExitCode::FAILURE
        }
    }
}
