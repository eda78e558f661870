//! A command's device: the password, opening the saved device with a usable token,
//! saving it afterwards, setting up a new one, and the `token` command.

use std::path::PathBuf;

use secretd_client::api::Api;
use secretd_client::state::TokenSource;
use secretd_client::time::{format_utc_secs, now_secs, span};
use secretd_client::{Device, Error, Result, token};
use serde_json::json;
use tonic::Code;

use crate::cli::TokenArgs;
use crate::output::Out;
use crate::store::StateDir;
use crate::tokens;

pub fn password(confirm: bool) -> Result<String> {
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

/// The saved device with a usable token (see [`open_unchecked`]), after checking the
/// user's entries in the homeserver's key log: a key this device never posted stops every
/// command with [`Error::KeyAlarm`] until the user acknowledges it.
pub async fn open(dir: &StateDir) -> Result<Device> {
    let mut device = open_unchecked(dir).await?;
    let checked = device.monitor_own_key().await;
    // The log's pinned key and newest head are kept whatever the check found.
    keep(dir, &device, checked)?;
    Ok(device)
}

/// The saved device with a usable token: `SECRETD_CHAT_TOKEN` when set, else the saved
/// one, renewed from the configured source when it has expired.
pub async fn open_unchecked(dir: &StateDir) -> Result<Device> {
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
    let api = Api::connect_with(&state.server, &state.token, state.ca_file.as_deref()).await?;
    Device::from_state(api, state)
}

/// Saves the device after a command, then returns the command's result. A token the
/// server refused is not kept.
pub fn keep<T>(dir: &StateDir, device: &Device, result: Result<T>) -> Result<T> {
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

pub async fn new_device(
    dir: &StateDir,
    server: &str,
    ca_file: Option<PathBuf>,
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
    let mut device = make(Api::connect_with(server, &token, ca_file.as_deref()).await?).await?;
    if source.is_some() {
        device.set_token_source(source);
    }
    dir.save(device.state())?;
    Ok(device)
}

/// `token`: show the token, or check and keep a new one (locally, then with one call to
/// the server), or set where fresh ones come from.
pub async fn set_token(
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
        let api = Api::connect_with(&state.server, fresh, state.ca_file.as_deref()).await?;
        api.check_token().await?;
        state.token = fresh.clone();
    }
    let api = Api::connect_with(&state.server, &state.token, state.ca_file.as_deref()).await?;
    let mut device = Device::from_state(api, state)?;
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
