//! `secretd-chat`: an end-to-end encrypted chat on the command line, over the reference
//! client library. The server only ever sees ciphertext.
//!
//! Local state lives in `--state DIR` (default `.secretd-chat`): `state.json` (0600, in a
//! 0700 directory) holds the unwrapped identity private key, room keys and cursors.
//! Whoever can read it can read your rooms: it is the device.

mod live;
mod output;
mod store;
mod tokens;

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Args, Parser, Subcommand, ValueEnum};
use secretd_client::api::Api;
use secretd_client::crypto::blob::Kdf;
use secretd_client::device::History;
use secretd_client::state::TokenSource;
use secretd_client::time::{format_utc_secs, now_secs, span};
use secretd_client::{Device, Error, Result, token, user};
use serde_json::json;
use tonic::Code;

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
    /// Argon2id, 64 MiB, 3 passes, 1 lane (the backup is a version 2 blob bound to you).
    Argon2id,
    /// No longer written (refused with an explanation): PBKDF2 is far cheaper to guess on
    /// GPUs. Backups made with it still open, and `login` re-wraps them with Argon2id.
    #[value(hide = true)]
    Pbkdf2,
}

#[derive(Clone, Copy, ValueEnum)]
enum HistoryChoice {
    /// Everything this device can read.
    All,
    /// Only what is posted after the invite.
    FromNow,
}

/// Where a new device gets its token: exactly one of these.
#[derive(Args)]
#[group(required = true, multiple = false)]
struct TokenArgs {
    /// Your bearer token (JWT from your homeserver); `-` reads it from stdin.
    #[arg(long)]
    token: Option<String>,
    /// A shell command that prints a fresh token; run now and whenever the token is about
    /// to expire (so `listen` and `chat` keep running).
    #[arg(long)]
    token_command: Option<String>,
    /// A file holding the token, re-read whenever the token is about to expire.
    #[arg(long)]
    token_file: Option<PathBuf>,
}

#[derive(Subcommand)]
enum Command {
    /// First device: create your identity key and back it up under a password.
    Init {
        /// The secretd URL, e.g. http://127.0.0.1:50051.
        #[arg(long)]
        server: String,
        #[command(flatten)]
        token: TokenArgs,
        /// How the password protects the backup: Argon2id, 64 MiB, 3 passes (the only
        /// choice: PBKDF2 backups of older clients still open, but none are made).
        #[arg(long, value_enum, default_value = "argon2id")]
        kdf: KdfChoice,
    },
    /// Another device: restore your identity from the password and rebuild your rooms.
    Login {
        /// The secretd URL.
        #[arg(long)]
        server: String,
        #[command(flatten)]
        token: TokenArgs,
    },
    /// Show this device's token, or give it a new one (checked before it is kept), or set
    /// where it gets fresh ones.
    Token {
        /// The new token; `-` reads it from stdin.
        token: Option<String>,
        /// Get tokens from this shell command (run now, and whenever one is about to
        /// expire).
        #[arg(long, conflicts_with_all = ["token", "file", "no_source"])]
        command: Option<String>,
        /// Get tokens from this file (read now, and re-read whenever one is about to
        /// expire).
        #[arg(long, conflicts_with_all = ["token", "no_source"])]
        file: Option<PathBuf>,
        /// Forget the configured command or file.
        #[arg(long)]
        no_source: bool,
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
    /// Chat in one room: each line you type is sent (kept and sent later, in order, while
    /// the server is unreachable); everything arriving is printed.
    Chat {
        /// Room name or pair id.
        room: String,
    },
    /// List your rooms, with their members, or how you left them.
    Rooms,
    /// List a room's members and the keys this device trusts for them.
    Members {
        /// Room name or pair id.
        room: String,
    },
    /// Leave a room (the others should then rotate its keys).
    Leave {
        /// Room name or pair id.
        room: String,
    },
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

/// The saved device with a usable token: `SECRETD_CHAT_TOKEN` when set, else the saved
/// one, renewed from the configured source when it has expired.
async fn open(dir: &StateDir) -> Result<Device> {
    let mut state = dir.load()?;
    let me = state.user_id;
    let now = now_secs();
    if let Ok(given) = std::env::var("SECRETD_CHAT_TOKEN") {
        token::check(&given, Some(me), now)
            .map_err(|e| Error::Token(format!("SECRETD_CHAT_TOKEN is refused: {e}")))?;
        state.token = given;
    }
    if let Err(e) = token::check(&state.token, Some(me), now) {
        let Some(source) = &state.token_source else {
            return Err(Error::Token(format!(
                "the token this device holds is refused: {e}. To go on, {}",
                tokens::ADVICE
            )));
        };
        state.token = tokens::from_source(source, Some(me)).await?.0;
    }
    let api = Api::connect(&state.server, &state.token).await?;
    Device::from_state(api, state)
}

/// Saves the device after a command, then returns the command's result. A token the
/// server refused is not kept.
fn keep<T>(dir: &StateDir, device: &Device, result: Result<T>) -> Result<T> {
    let refused = matches!(&result, Err(e) if e.code() == Some(Code::Unauthenticated));
    if refused {
        dir.save_keeping_token(device.state())?;
    } else {
        dir.save(device.state())?;
    }
    result
}

/// A new device's token and source from `init`/`login` flags, checked.
async fn first_token(args: TokenArgs) -> Result<(String, Option<TokenSource>)> {
    let source = tokens::source_of(args.token_command, args.token_file);
    let token = match (&source, args.token) {
        (Some(source), _) => tokens::from_source(source, None).await?.0,
        (None, Some(t)) => tokens::read_arg(&t)?,
        (None, None) => unreachable!("clap requires one of the token flags"),
    };
    token::check(&token, None, now_secs())?;
    Ok((token, source))
}

async fn new_device(
    dir: &StateDir,
    server: &str,
    args: TokenArgs,
    make: impl AsyncFnOnce(Api) -> Result<Device>,
) -> Result<Device> {
    if dir.exists() {
        return Err(Error::State(format!(
            "{} already holds a device (use another --state directory for another device)",
            dir.path().display()
        )));
    }
    let (token, source) = first_token(args).await?;
    let mut device = make(Api::connect(server, &token).await?).await?;
    if source.is_some() {
        device.set_token_source(source);
    }
    dir.save(device.state())?;
    Ok(device)
}

async fn run(cli: Cli) -> Result<()> {
    let out = Out { json: cli.json };
    let dir = StateDir::new(&cli.state);
    match cli.command {
        Command::Init { server, token, kdf } => {
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
            let device = new_device(&dir, &server, token, async |api| {
                let pw = password(true)?;
                Device::init(api, &pw, kdf).await
            })
            .await?;
            out.whoami(&device);
        }
        Command::Login { server, token } => {
            let mut device = new_device(&dir, &server, token, async |api| {
                let pw = password(false)?;
                Device::login(api, &pw).await
            })
            .await?;
            out.whoami(&device);
            let (views, _) = device.rooms_overview().await;
            dir.save(device.state())?;
            out.rooms(&views);
        }
        Command::Token {
            token: given,
            command,
            file,
            no_source,
        } => {
            set_token(
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
        } => {
            let mut device = open(&dir).await?;
            let who = user::parse(&who)?;
            let history = match history {
                HistoryChoice::All => History::All,
                HistoryChoice::FromNow => History::FromNow,
            };
            let result = device.invite(&room, &who, history).await;
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
            out.rooms(&views);
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
            keep(&dir, &device, result)?;
            let name = user::display(&who);
            out.emit(json!({ "removed": name }), || {
                format!("removed {name} and rotated the room keys")
            });
        }
        Command::Rotate { room } => {
            let mut device = open(&dir).await?;
            let result = device.rotate(&room, Vec::new()).await;
            keep(&dir, &device, result)?;
            out.emit(json!({ "rotated": room }), || {
                format!("rotated the keys of [{room}]")
            });
        }
        Command::Whoami => out.whoami(&open(&dir).await?),
    }
    Ok(())
}

/// `token`: show the token, or check and keep a new one (locally, then with one call to
/// the server), or set where fresh ones come from.
async fn set_token(
    out: Out,
    dir: &StateDir,
    given: Option<String>,
    source: Option<TokenSource>,
    no_source: bool,
) -> Result<()> {
    let mut state = dir.load()?;
    let me = state.user_id;
    let fresh = match (&given, &source) {
        (Some(t), _) => Some(tokens::read_arg(t)?),
        (None, Some(source)) => Some(tokens::from_source(source, Some(me)).await?.0),
        (None, None) => None,
    };
    if let Some(fresh) = &fresh {
        token::check(fresh, Some(me), now_secs())?;
        // The server is the judge of signatures and issuers: one call before keeping it.
        let api = Api::connect(&state.server, fresh).await?;
        api.check_token().await?;
        state.token = fresh.clone();
    }
    let mut device = Device::from_state(Api::connect(&state.server, &state.token).await?, state)?;
    if source.is_some() || no_source {
        device.set_token_source(source);
    }
    dir.save_with_token(device.state())?;
    let info = token::inspect(&device.state().token)?;
    let source = match &device.state().token_source {
        Some(TokenSource::Command(c)) => format!("the command `{c}`"),
        Some(TokenSource::File(p)) => format!("the file {}", p.display()),
        None => "none".into(),
    };
    let now = now_secs();
    let left = if info.expires_at > now {
        format!("in {}", span(info.expires_at - now))
    } else {
        "already".into()
    };
    out.emit(
        json!({ "user": me, "expires_at": info.expires_at, "source": source, "changed": fresh.is_some() }),
        || {
            format!(
                "{}token of user {me}, expires at {} ({left}); fresh tokens from: {source}",
                if fresh.is_some() { "saved the new " } else { "" },
                format_utc_secs(info.expires_at),
            )
        },
    );
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
            if let Some(hint) = hint(&e) {
                eprintln!("hint: {hint}");
            }
            ExitCode::FAILURE
        }
    }
}
