//! Where the CLI gets its bearer token — the command line, `SECRETD_CHAT_TOKEN`, the
//! saved state, or a configured source (a command or a file) — and how long-running
//! commands renew it. Every token is checked before it is used or kept
//! ([`secretd_client::token::check`]): a malformed one, another user's, or an expired one
//! is refused and the device stays as it was.

use std::io::Read;
use std::path::PathBuf;
use std::time::Duration;

use secretd_client::state::TokenSource;
use secretd_client::time::{format_utc_secs, now_secs};
use secretd_client::token::{self, TokenInfo};
use secretd_client::{Device, Error, Result};
use tokio::time::Instant;

use crate::store::StateDir;

/// How long a token command may run.
pub const COMMAND_TIMEOUT: Duration = Duration::from_secs(30);

/// What to do about an expired token, for messages.
pub const ADVICE: &str = "give this device a fresh token with `secretd-chat token NEW_TOKEN`, \
     or let it fetch its own: `secretd-chat token --command 'COMMAND'` (run whenever a fresh \
     token is needed) or `--file PATH` (re-read)";

/// A token as the command line gives it: `-` reads it from stdin (so it stays out of the
/// process list and the shell history).
pub fn read_arg(arg: &str) -> Result<String> {
    if arg != "-" {
        return Ok(arg.trim().to_string());
    }
    let mut text = String::new();
    std::io::stdin()
        .read_to_string(&mut text)
        .map_err(|e| Error::io("cannot read the token from stdin", e))?;
    Ok(text.trim().to_string())
}

/// The token a source gives now, unchecked.
pub async fn fetch(source: &TokenSource) -> Result<String> {
    match source {
        TokenSource::File(path) => std::fs::read_to_string(path)
            .map(|t| t.trim().to_string())
            .map_err(|e| Error::io(format!("cannot read the token file {}", path.display()), e)),
        TokenSource::Command(command) => {
            let run = tokio::process::Command::new("sh")
                .arg("-c")
                .arg(command)
                .stdin(std::process::Stdio::null())
                .kill_on_drop(true)
                .output();
            let output = tokio::time::timeout(COMMAND_TIMEOUT, run)
                .await
                .map_err(|_| {
                    Error::Token(format!(
                        "the token command `{command}` printed no token within {} s",
                        COMMAND_TIMEOUT.as_secs()
                    ))
                })?
                .map_err(|e| Error::io(format!("cannot run the token command `{command}`"), e))?;
            if !output.status.success() {
                let said = String::from_utf8_lossy(&output.stderr);
                return Err(Error::Token(format!(
                    "the token command `{command}` failed ({}): {}",
                    output.status,
                    said.lines()
                        .next()
                        .unwrap_or("it printed nothing on stderr")
                )));
            }
            Ok(String::from_utf8_lossy(&output.stdout).trim().to_string())
        }
    }
}

/// A checked token from `source` for `user` (any user when None).
pub async fn from_source(source: &TokenSource, user: Option<u64>) -> Result<(String, TokenInfo)> {
    let token = fetch(source).await?;
    let what = match source {
        TokenSource::Command(c) => {
            format!("the token command `{c}` printed a token that is refused: ")
        }
        TokenSource::File(p) => format!("the token in {} is refused: ", p.display()),
    };
    let info =
        token::check(&token, user, now_secs()).map_err(|e| Error::Token(format!("{what}{e}")))?;
    Ok((token, info))
}

/// The source named by `--token-command` / `--token-file`, if any.
pub fn source_of(command: Option<String>, file: Option<PathBuf>) -> Option<TokenSource> {
    command
        .map(TokenSource::Command)
        .or(file.map(TokenSource::File))
}

/// The token a long-running command holds, and when to look for a fresher one.
pub struct Keeper {
    info: TokenInfo,
    first_seen: u64,
    /// Said once that the token will expire and nothing can renew it.
    warned: bool,
}

/// What a renewal attempt found.
pub enum Renewal {
    /// A fresher token is in use now.
    Renewed,
    /// Nothing fresher; the current token is still valid.
    Unchanged,
}

fn instant_at(unix_secs: u64) -> Instant {
    Instant::now() + Duration::from_secs(unix_secs.saturating_sub(now_secs()))
}

impl Keeper {
    /// Watches the device's current token.
    pub fn new(device: &Device) -> Result<Keeper> {
        Ok(Keeper {
            info: token::inspect(&device.api().token())?,
            first_seen: now_secs(),
            warned: false,
        })
    }

    /// When to look for a fresher token.
    pub fn renew_at(&self) -> Instant {
        instant_at(self.info.renew_at(self.first_seen))
    }

    /// When the token expires.
    pub fn expires_at(&self) -> Instant {
        instant_at(self.info.expires_at)
    }

    /// True when the token has expired by this machine's clock.
    pub fn expired(&self) -> bool {
        self.info.expires_at <= now_secs()
    }

    /// Looks for a token that lives longer than the current one: one another process
    /// saved into the state (`secretd-chat token NEW` in another terminal), then the
    /// configured source. A found one is checked, used at once and saved.
    pub async fn renew(&mut self, dir: &StateDir, device: &mut Device) -> Result<Renewal> {
        let me = device.state().user_id;
        let saved = dir.load()?;
        let mut best: Option<(String, TokenInfo)> =
            token::check(&saved.token, Some(me), now_secs())
                .ok()
                .filter(|i| i.expires_at > self.info.expires_at)
                .map(|i| (saved.token.clone(), i));
        let source = if saved.token_source_set_ms > device.state().token_source_set_ms {
            saved.token_source.clone()
        } else {
            device.state().token_source.clone()
        };
        if best.is_none()
            && let Some(source) = &source
        {
            let (token, info) = from_source(source, Some(me)).await?;
            if info.expires_at > self.info.expires_at {
                best = Some((token, info));
            }
        }
        let Some((token, info)) = best else {
            return Ok(Renewal::Unchanged);
        };
        device.set_token(&token);
        dir.save(device.state())?;
        self.info = info;
        self.first_seen = now_secs();
        self.warned = false;
        Ok(Renewal::Renewed)
    }

    /// The error that ends a long-running command whose token expired.
    pub fn expired_error(&self) -> Error {
        Error::Token(format!(
            "your token expired at {}, and no fresh one was found; live updates stopped \
             (nothing is lost: the next start resumes where this one stopped). To go on, {ADVICE}",
            format_utc_secs(self.info.expires_at)
        ))
    }

    /// Once per token: a warning that it will expire and nothing can renew it.
    pub fn warning(&mut self) -> Option<String> {
        if self.warned {
            return None;
        }
        self.warned = true;
        Some(format!(
            "your token expires at {}; nothing is configured to renew it, so live updates \
             will stop then. To keep going, in another terminal {ADVICE}",
            format_utc_secs(self.info.expires_at)
        ))
    }
}
