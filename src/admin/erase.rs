//! `secretd admin erase-user --user ID [--homeserver NAME] [--erase-messages]`: the
//! operator erases a user of this server (DESIGN §13, README "Erase a user").
//!
//! It writes to the database beside the running server, in the store's one erasure
//! transaction (`store::erase`). On Postgres the running replicas learn of it from the
//! store's change notifications, as they learn of a departure: the user's subscriptions
//! end and cached frames of erased events are dropped. On SQLite (one server) the
//! server's subscriptions of the user end at the next event of their streams (the
//! membership epoch moved); nothing erased is served from then on either way.

use std::time::Duration;

use uuid::Uuid;

use crate::config::{Misconfigured, Settings};
use crate::domain::UserId;
use crate::store;

/// Erases `user` (of `homeserver`: "" or this server's name) and says what changed.
pub async fn run(
    settings: &Settings,
    user: u64,
    homeserver: &str,
    erase_messages: bool,
) -> anyhow::Result<String> {
    if !homeserver.is_empty() && homeserver != settings.server_name {
        return Err(Misconfigured(format!(
            "--homeserver {homeserver:?} is not this server ({:?}); a user of another \
             homeserver is erased there",
            settings.server_name
        ))
        .into());
    }
    if user == 0 || user > i64::MAX as u64 {
        return Err(Misconfigured("--user must be between 1 and 2^63-1".into()).into());
    }
    let user = UserId::trusted(user as i64);
    let database = settings.database()?;
    let limit = Duration::from_millis(settings.db_timeout_ms);
    let store = store::open_with_deadline(
        database.url(),
        2,
        limit,
        settings.sqlite_mmap_mb,
        Uuid::new_v4(),
    )
    .await
    .map_err(|e| e.context(format!("cannot open {database}")))?;
    let done = store
        .erase_user(user, erase_messages, crate::time::now_micros())
        .await;
    store.close().await;
    let done = done.map_err(|e| anyhow::anyhow!("the erasure of user {user} failed: {e}"))?;
    crate::telemetry::erasure(
        "admin",
        user.get(),
        erase_messages,
        done.first,
        done.left.len(),
        done.events_erased,
    );
    let again = if done.first {
        ""
    } else {
        " (it had been erased before)"
    };
    Ok(format!(
        "user {user} erased{again}: left {} channel pair(s), {} event(s) erased now",
        done.left.len(),
        done.events_erased
    ))
}
