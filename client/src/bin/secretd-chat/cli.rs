//! The command line: what `secretd-chat` accepts (clap derive).

use std::path::PathBuf;

use clap::{Args, Parser, Subcommand, ValueEnum};

/// End-to-end encrypted chat over secretd.
#[derive(Parser)]
#[command(name = "secretd-chat", version)]
pub struct Cli {
    /// Directory holding this device's state (keys, rooms, cursors).
    #[arg(
        long,
        global = true,
        env = "SECRETD_CHAT_STATE",
        default_value = ".secretd-chat"
    )]
    pub state: PathBuf,
    /// One JSON object per line on stdout instead of text.
    #[arg(long, global = true)]
    pub json: bool,
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Clone, Copy, ValueEnum)]
pub enum KdfChoice {
    /// Argon2id, 64 MiB, 3 passes, 1 lane (the backup is a version 2 blob bound to you).
    Argon2id,
    /// No longer written (refused with an explanation): PBKDF2 is far cheaper to guess on
    /// GPUs. Backups made with it still open, and `login` re-wraps them with Argon2id.
    #[value(hide = true)]
    Pbkdf2,
}

#[derive(Clone, Copy, ValueEnum)]
pub enum HistoryChoice {
    /// Everything this device can read.
    All,
    /// Only what is posted after the invite.
    FromNow,
}

/// Where a new device gets its token: exactly one of these.
#[derive(Args)]
#[group(required = true, multiple = false)]
pub struct TokenArgs {
    /// Your bearer token (JWT from your homeserver); `-` reads it from stdin.
    #[arg(long)]
    pub token: Option<String>,
    /// A shell command that prints a fresh token; run now and whenever the token is about
    /// to expire (so `listen` and `chat` keep running).
    #[arg(long)]
    pub token_command: Option<String>,
    /// A file holding the token, re-read whenever the token is about to expire.
    #[arg(long)]
    pub token_file: Option<PathBuf>,
}

#[derive(Subcommand)]
pub enum Command {
    /// First device: create your identity key and back it up under a password.
    Init {
        /// The secretd URL, e.g. https://chat.example:50051 (or http://127.0.0.1:50051).
        #[arg(long)]
        server: String,
        /// PEM file with the CA certificate that signed the server's TLS certificate (a
        /// private CA); without it, the system's roots. Kept for later commands.
        #[arg(long)]
        ca_file: Option<PathBuf>,
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
        /// PEM file with the CA certificate that signed the server's TLS certificate;
        /// without it, the system's roots. Kept for later commands.
        #[arg(long)]
        ca_file: Option<PathBuf>,
        #[command(flatten)]
        token: TokenArgs,
        /// After a key alarm at login (exit code 3): take your key-log entries through
        /// this seq (the alarm names it) as seen. See `acknowledge-key-alarm`.
        #[arg(long, value_name = "SEQ")]
        acknowledge_key_alarm: Option<u64>,
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
        /// Use the key the server serves now even if it differs from the one this device
        /// pinned for the invitee (compare safety numbers first).
        #[arg(long)]
        accept_new_key: bool,
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
    /// Accept the key the server serves now for a user whose key changed (after
    /// comparing safety numbers), or pin it.
    Trust {
        /// The user (id, or id@homeserver).
        user: String,
    },
    /// Print the safety number of your key and the key pinned for a user: the same 60
    /// digits on both sides when neither key was substituted. Compare it in person or on
    /// a call.
    Safety {
        /// The user.
        user: String,
    },
    /// After a key alarm (exit code 3): take your key-log entries through SEQ (the number
    /// the alarm names) as seen, so this device goes on. Do it after you kept the evidence,
    /// reported it and asked your contacts to compare safety numbers with you.
    AcknowledgeKeyAlarm {
        /// The newest entry the alarm named.
        seq: u64,
    },
    /// After a split-view alarm (exit code 3): go on, once you kept the evidence and
    /// reported it. A new split view alarms again.
    AcknowledgeLogFork,
    /// Mark a user's pinned key verified after comparing safety numbers.
    Verify {
        /// The user.
        user: String,
        /// The 60 digits they read out (spaces allowed).
        #[arg(required = true, num_args = 1..)]
        number: Vec<String>,
    },
}
