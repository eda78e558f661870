//! `listen` and `chat`: every room the user is in, live, with invites joined as they
//! arrive. In `chat`, typed lines go through an outbox: kept while the server is
//! unreachable and sent once it returns, in order, each exactly once (an unanswered post
//! is re-sent as the same bytes, which the server stores at most once). The token is
//! renewed before it expires from what the user configured (`token --command` or
//! `--file`, or a token saved by `secretd-chat token` in another terminal); without one,
//! the command stops at expiry with a message instead of retrying forever.

use std::collections::VecDeque;
use std::time::Duration;

use secretd_client::api::subscription::Delivery;
use secretd_client::device::Outgoing;
use secretd_client::{Device, Error, Result};
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::time::{Instant, sleep_until};
use tonic::Code;

use crate::output::Out;
use crate::store::StateDir;
use crate::subs::Subs;
use crate::tokens::{Keeper, Renewal};

/// First delay before the outbox tries again; doubles up to [`MAX_RETRY`].
const FIRST_RETRY: Duration = Duration::from_millis(250);
/// Longest delay between two attempts of the outbox.
const MAX_RETRY: Duration = Duration::from_secs(5);
/// How often a token that could not be renewed yet is looked for again before it expires.
const RENEW_AGAIN: Duration = Duration::from_secs(5);

/// A running `listen` or `chat`.
struct Live<'a> {
    out: Out,
    dir: &'a StateDir,
    device: Device,
    keeper: Keeper,
    next_renewal: Instant,
    /// When the next fed-user token of another homeserver is due.
    next_remote_renewal: Instant,
    subs: Subs,
    /// The chat's room (pair id).
    chat: Option<String>,
    outbox: VecDeque<Outgoing>,
    retry_at: Option<Instant>,
    retry_delay: Duration,
    /// The user was told that lines are waiting for the server.
    outage_told: bool,
    /// The user was told that the live connection dropped.
    reconnect_told: bool,
}

/// Runs `listen` (no room) or `chat ROOM`.
pub async fn run(out: Out, dir: &StateDir, chat_room: Option<String>) -> Result<()> {
    let mut device = crate::session::open(dir).await?;
    let chat = match &chat_room {
        Some(room) => Some(device.room(room)?.pair_id.clone()),
        None => None,
    };
    if let Some(e) = chat.as_deref().and_then(|p| device.lost_error(p)) {
        return Err(e);
    }
    let keeper = Keeper::new(&device)?;
    let accepted = device.accept_invites().await?;
    out.accepted(device.state(), device.me(), &accepted);
    let rooms: Vec<String> = device
        .state()
        .rooms
        .values()
        .filter(|r| r.lost.is_none())
        .map(|r| r.pair_id.clone())
        .collect();
    for pair in rooms {
        match device.sync_room(&pair).await {
            Ok(events) => events.iter().for_each(|e| out.event(device.state(), e)),
            Err(e @ Error::RoomLost { .. }) => {
                out.lost(device.state(), &pair, &e);
                if chat.as_deref() == Some(pair.as_str()) {
                    dir.save(device.state())?;
                    return Err(e);
                }
            }
            Err(e) => return Err(e),
        }
    }
    let subs = Subs::open(&mut device).await?;
    dir.save(device.state())?;
    let mut live = Live {
        out,
        dir,
        next_renewal: keeper.renew_at(),
        next_remote_renewal: Subs::next_renewal(&device),
        keeper,
        subs,
        device,
        chat,
        outbox: VecDeque::new(),
        retry_at: None,
        retry_delay: FIRST_RETRY,
        outage_told: false,
        reconnect_told: false,
    };
    if !out.json {
        match &chat_room {
            Some(room) => {
                eprintln!("chatting in [{room}]: type a line to send it (Ctrl-D to stop)")
            }
            None => eprintln!("listening (Ctrl-C to stop)"),
        }
    }
    live.run().await
}

impl Live<'_> {
    async fn run(&mut self) -> Result<()> {
        let mut lines = BufReader::new(tokio::io::stdin()).lines();
        let mut typing = self.chat.is_some();
        loop {
            let retry_at = self.retry_at.unwrap_or_else(Instant::now);
            tokio::select! {
                line = lines.next_line(), if typing => {
                    match line.map_err(|e| Error::io("cannot read stdin", e))? {
                        Some(text) if !text.trim().is_empty() => {
                            let room = self.chat.clone().unwrap_or_default();
                            self.outbox.push_back(self.device.outgoing_text(&room, &text)?);
                            if self.retry_at.is_none() {
                                self.flush().await?;
                            }
                        }
                        Some(_) => {}
                        None => {
                            typing = false;
                            if !self.outbox.is_empty() {
                                eprintln!(
                                    "waiting to send {} line(s) until the server is back (Ctrl-C gives up)",
                                    self.outbox.len()
                                );
                            }
                        }
                    }
                }
                delivery = self.subs.next() => {
                    let Some((server, delivery)) = delivery else { break };
                    self.delivered(&server, delivery).await?;
                }
                _ = sleep_until(self.next_remote_renewal) => self.renew_remotes().await?,
                _ = sleep_until(retry_at), if self.retry_at.is_some() => self.flush().await?,
                _ = sleep_until(self.next_renewal) => self.renew_early().await?,
                _ = sleep_until(self.keeper.expires_at()) => {
                    if let Renewal::Unchanged = self.renew().await? {
                        return Err(self.keeper.expired_error());
                    }
                }
            }
            self.show_processed();
            self.dir.save(self.device.state())?;
            if self.chat.is_some() && !typing && self.outbox.is_empty() {
                break;
            }
        }
        Ok(())
    }

    fn show_processed(&mut self) {
        for e in self.device.take_processed() {
            self.out.event(self.device.state(), &e);
        }
    }

    async fn delivered(&mut self, server: &str, delivery: Delivery) -> Result<()> {
        match delivery {
            Delivery::Event(m) => {
                self.reconnect_told = false;
                match self.device.receive(m).await {
                    Ok(events) => {
                        for e in &events {
                            self.out.event(self.device.state(), e);
                        }
                    }
                    Err(e) => self.failed(e).await?,
                }
            }
            Delivery::Invite(invite) => {
                let accepted = self.device.accept_invite(&invite).await;
                if accepted.new_room {
                    self.subs.add(&mut self.device, &accepted.pair_id).await?;
                }
                self.out
                    .accepted(self.device.state(), self.device.me(), &[accepted]);
            }
            Delivery::Ended {
                stream_id,
                code,
                message,
            } => {
                if code == Code::PermissionDenied {
                    let status = tonic::Status::new(code, message);
                    if let Some(e) = self.device.stream_refused(&stream_id, status).await {
                        self.failed(e).await?;
                    }
                } else if let Some((pair, _)) = self.device.locate(&stream_id) {
                    let name = self.device.room(&pair)?.name.clone();
                    eprintln!("[{name}] live updates of this room stopped: {message}");
                }
            }
            Delivery::Reconnecting { reason, code } => {
                if code == Some(Code::Unauthenticated) {
                    if !server.is_empty() {
                        // A fed-user token at another homeserver ran out: a fresh one.
                        return self.renew_remote(server).await;
                    }
                    return self.token_refused(&reason).await;
                }
                if !self.reconnect_told {
                    eprintln!("connection to the server lost ({reason}); reconnecting…");
                    self.reconnect_told = true;
                }
            }
            Delivery::CaughtUp { .. } => {
                if self.reconnect_told {
                    eprintln!("reconnected");
                    self.reconnect_told = false;
                }
                if !self.outbox.is_empty() {
                    self.flush().await?;
                }
            }
        }
        Ok(())
    }

    /// An error while following the rooms: a lost room is told (and ends a chat in it),
    /// a refused token is renewed or ends the command, a passing failure is told and
    /// left to the next event or reconnect to repair.
    async fn failed(&mut self, e: Error) -> Result<()> {
        match &e {
            Error::RoomLost { pair_id, .. } => {
                let pair_id = pair_id.clone();
                self.out.lost(self.device.state(), &pair_id, &e);
                self.subs.remove(&self.device, &pair_id);
                if self.chat.as_deref() == Some(pair_id.as_str()) {
                    self.dir.save(self.device.state())?;
                    return Err(e);
                }
                Ok(())
            }
            e if e.code() == Some(Code::Unauthenticated) => {
                self.token_refused(&e.to_string()).await
            }
            e if e.is_transient() => {
                eprintln!("note: {e} (it will be repaired at the next event or reconnect)");
                Ok(())
            }
            _ => Err(e),
        }
    }

    /// Sends what waits in the outbox, oldest first, until it is empty or the server is
    /// unreachable (then again after a delay, or when the subscription is back).
    async fn flush(&mut self) -> Result<()> {
        while let Some(front) = self.outbox.front_mut() {
            match self.device.deliver(front).await {
                Ok(_) => {
                    self.outbox.pop_front();
                }
                Err(e) if e.is_transient() => {
                    if !self.outage_told {
                        eprintln!(
                            "not sent yet: {e}. What you type is kept and sent, in order, when \
                             the server is back ({} line(s) waiting)",
                            self.outbox.len()
                        );
                        self.outage_told = true;
                    }
                    self.retry_at = Some(Instant::now() + self.retry_delay);
                    self.retry_delay = (self.retry_delay * 2).min(MAX_RETRY);
                    return Ok(());
                }
                Err(e) if e.code() == Some(Code::Unauthenticated) => {
                    self.token_refused(&e.to_string()).await?;
                }
                Err(e @ Error::RoomLost { .. }) => return self.failed(e).await,
                Err(e) => {
                    eprintln!("error: not sent: {e}");
                    self.outbox.pop_front();
                }
            }
            self.show_processed();
        }
        if self.outage_told {
            eprintln!("the server is back: every waiting line is sent");
            self.outage_told = false;
        }
        self.retry_at = None;
        self.retry_delay = FIRST_RETRY;
        Ok(())
    }

    /// Looks for a fresher token; with one, the live connection is reopened with it at
    /// once (resuming by cursor, so nothing is missed or repeated).
    async fn renew(&mut self) -> Result<Renewal> {
        let renewal = self.keeper.renew(self.dir, &mut self.device).await?;
        if let Renewal::Renewed = renewal {
            self.subs.reopen(&mut self.device, "").await?;
            self.next_renewal = self.keeper.renew_at();
        }
        Ok(renewal)
    }

    /// A fresh fed-user token for another homeserver, and its subscription reopened.
    async fn renew_remote(&mut self, server: &str) -> Result<()> {
        self.device.forget_connection(server);
        self.subs.reopen(&mut self.device, server).await?;
        self.next_remote_renewal = Subs::next_renewal(&self.device);
        Ok(())
    }

    /// Renews the fed-user tokens that are due.
    async fn renew_remotes(&mut self) -> Result<()> {
        for server in Subs::due(&self.device) {
            self.renew_remote(&server).await?;
        }
        self.next_remote_renewal = Subs::next_renewal(&self.device);
        Ok(())
    }

    /// Renewal ahead of expiry: when nothing fresher is found yet, look again shortly,
    /// and say once that the token will run out.
    async fn renew_early(&mut self) -> Result<()> {
        let renewal = match self.renew().await {
            Ok(r) => r,
            Err(e) => {
                eprintln!("note: could not get a fresh token yet: {e}");
                Renewal::Unchanged
            }
        };
        if let Renewal::Unchanged = renewal {
            if self.device.state().token_source.is_none()
                && let Some(warning) = self.keeper.warning()
            {
                eprintln!("note: {warning}");
            }
            // Until expiry, look again now and then; at expiry the other timer decides.
            self.next_renewal = if self.keeper.expired() {
                Instant::now() + Duration::from_secs(86_400)
            } else {
                (Instant::now() + RENEW_AGAIN).min(self.keeper.expires_at())
            };
        }
        Ok(())
    }

    /// The server refused the token: renew it, or stop with what to do.
    async fn token_refused(&mut self, reason: &str) -> Result<()> {
        if let Renewal::Renewed = self.renew().await? {
            return Ok(());
        }
        if self.keeper.expired() {
            return Err(self.keeper.expired_error());
        }
        Err(Error::Token(format!(
            "the server refused this device's token ({reason}); live updates stopped. To go on, {}",
            crate::tokens::ADVICE
        )))
    }
}
