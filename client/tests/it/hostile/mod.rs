//! The hostile server, played by the tests (DESIGN §11): an honest in-process secretd
//! whose database the test writes to directly, as an operator (or anyone holding the
//! database) could — substituted and past keys, forged or withheld invites, replayed and
//! injected events, members the owner removed listed again. For each attack the client
//! refuses with a clear error and its state is left as it was.

mod epochs;
mod erased;
mod events;
mod fork;
mod horizon;
mod invites;
mod keys;

use secretd_client::Device;
use secretd_client::crypto::identity::{Identity, PublicIdentity};
use secretd_client::crypto::invite::seal_invite;
use secretd_client::crypto::{random, uuid_bytes};
use secretd_client::event::{self, ChainState, InviteBody, RoomState, TrustedUser};
use secretd_client::proto::secret::ChannelPair;
use secretd_client::state::Room;
use secretd_client::user::{self, UserRef};
use sha2::{Digest, Sha256};
use uuid::Uuid;

use crate::common::{Backend, Server};

/// A direct connection to the server's database.
pub enum Db {
    Sqlite(sqlx::SqlitePool),
    Postgres(sqlx::PgPool),
}

/// Runs one statement on either backend (the schema's SQL is the same on both; `$N`
/// placeholders work on both).
macro_rules! exec {
    ($db:expr, $sql:expr $(, $arg:expr)*) => {
        match $db {
            Db::Sqlite(p) => { sqlx::query($sql)$(.bind($arg))*.execute(p).await.map(|r| r.rows_affected()) }
            Db::Postgres(p) => { sqlx::query($sql)$(.bind($arg))*.execute(p).await.map(|r| r.rows_affected()) }
        }
        .expect($sql)
    };
}

/// One i64 from either backend.
macro_rules! scalar {
    ($db:expr, $sql:expr $(, $arg:expr)*) => {
        match $db {
            Db::Sqlite(p) => sqlx::query_scalar::<_, i64>($sql)$(.bind($arg))*.fetch_one(p).await,
            Db::Postgres(p) => sqlx::query_scalar::<_, i64>($sql)$(.bind($arg))*.fetch_one(p).await,
        }
        .expect($sql)
    };
}

impl Db {
    /// The database of `server`.
    pub async fn of(server: &Server) -> Db {
        match &server.backend {
            Backend::Sqlite => {
                let url = format!("sqlite://{}", server.dir().join("secretd.db").display());
                Db::Sqlite(sqlx::SqlitePool::connect(&url).await.expect("sqlite"))
            }
            Backend::Postgres(url) => Db::Postgres(sqlx::PgPool::connect(url).await.expect("pg")),
        }
    }

    /// Makes `spki` the user's current key (as a new key would be posted), and waits until
    /// the server's publisher logged it: the substitute is in the key log, as an operator
    /// who wants the key served to verified clients must put it.
    pub async fn set_current_key(&self, user: u64, spki: &[u8]) {
        self.insert_current_key(user, spki, false).await;
        self.wait_logged(user, &Sha256::digest(spki)).await;
    }

    /// Makes `spki` the user's current key while keeping it out of the key log: the row
    /// claims the leaf of the user's newest logged entry, so the publisher skips it and
    /// the proofs served with it still name the user's logged key.
    pub async fn set_current_key_unlogged(&self, user: u64, spki: &[u8]) {
        self.insert_current_key(user, spki, true).await;
    }

    async fn insert_current_key(&self, user: u64, spki: &[u8], claim_logged: bool) {
        exec!(
            self,
            "DELETE FROM public_keys WHERE user_id = $1 AND fingerprint = $2",
            user as i64,
            Sha256::digest(spki).to_vec()
        );
        // The leaf claimed: none (the publisher logs the key), or the user's newest.
        exec!(
            self,
            "INSERT INTO public_keys (user_id, seq, spki_der, fingerprint, posted_at, kt_leaf) \
             VALUES ($1, (SELECT COALESCE(MAX(seq), 0) + 1 FROM public_keys WHERE user_id = $1), \
             $2, $3, 0, CASE WHEN $4 THEN (SELECT MAX(kt_leaf) FROM public_keys \
             WHERE user_id = $1) END)",
            user as i64,
            spki.to_vec(),
            Sha256::digest(spki).to_vec(),
            claim_logged
        );
    }

    /// Waits (up to 30 s) until the server logged the user's key with `fingerprint`.
    pub async fn wait_logged(&self, user: u64, fingerprint: &[u8]) {
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
        loop {
            let logged = scalar!(
                self,
                "SELECT COUNT(*) FROM public_keys \
                 WHERE user_id = $1 AND fingerprint = $2 AND kt_leaf IS NOT NULL",
                user as i64,
                fingerprint.to_vec()
            );
            // The leaf is set in the epoch's transaction, with the head that holds it.
            if logged == 1 {
                return;
            }
            assert!(
                std::time::Instant::now() < deadline,
                "key of {user} never logged"
            );
            tokio::time::sleep(std::time::Duration::from_millis(50)).await;
        }
    }

    /// Waits (up to 30 s) until the server's publisher took the user's erasure (the
    /// erased entry appended, or none for a user without a logged key).
    pub async fn wait_erasure_logged(&self, user: u64) {
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
        while scalar!(
            self,
            "SELECT COUNT(*) FROM erased_users WHERE user_id = $1 AND kt_published",
            user as i64
        ) == 0
        {
            assert!(
                std::time::Instant::now() < deadline,
                "erasure of {user} never logged"
            );
            tokio::time::sleep(std::time::Duration::from_millis(50)).await;
        }
    }

    /// Waits (up to 30 s) until `server` itself proves keys against a head that holds
    /// `user`'s erased entry, reading the proof `server` gives of `witness`'s logged key.
    /// On Postgres the client tests' servers are replicas of one log: another one may have
    /// published the erasure, and `server` learns that head at its own next epoch (until
    /// then it proves against the head before, as a replica behind may).
    pub async fn wait_server_knows_erasure(&self, server: &Server, witness: u64, user: u64) {
        let leaf = scalar!(
            self,
            "SELECT kt_leaf FROM erased_users WHERE user_id = $1 AND kt_published",
            user as i64
        );
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
        let api = server.api(witness).await;
        loop {
            let size = api
                .stub()
                .fetch_key(secretd_client::proto::secret::FetchKeyRequest {
                    user_id: witness,
                    homeserver: String::new(),
                    known_tree_size: 0,
                })
                .await
                .expect("FetchKey of the witness")
                .into_inner()
                .proof
                .and_then(|p| p.head)
                .map_or(0, |h| h.tree_size);
            if size > leaf as u64 {
                return;
            }
            assert!(
                std::time::Instant::now() < deadline,
                "the server never proved against a head holding {user}'s erasure"
            );
            tokio::time::sleep(std::time::Duration::from_millis(50)).await;
        }
    }

    /// Records an erasure of `user` that nobody asked for: the publisher logs it.
    pub async fn record_erasure(&self, user: u64) {
        exec!(
            self,
            "INSERT INTO erased_users (user_id, erased_at) VALUES ($1, $2)",
            user as i64,
            secretd_client::time::now_ms() * 1000
        );
    }

    /// Serves `spki` as the user's current key again, as the row stood before their
    /// erasure: logged at the leaf of their first entry (so the publisher leaves it be).
    pub async fn restore_key(&self, user: u64, spki: &[u8]) {
        exec!(
            self,
            "INSERT INTO public_keys (user_id, seq, spki_der, fingerprint, posted_at, kt_leaf) \
             VALUES ($1, 1, $2, $3, 0, (SELECT leaf_index FROM kt_entries \
             WHERE user_id = $1 AND seq = 1))",
            user as i64,
            spki.to_vec(),
            Sha256::digest(spki).to_vec()
        );
    }

    /// Lists `spki` among the user's past keys (older than every key they posted), once the server logged it.
    pub async fn add_past_key(&self, user: u64, spki: &[u8]) {
        exec!(
            self,
            "INSERT INTO public_keys (user_id, seq, spki_der, fingerprint, posted_at) \
             VALUES ($1, (SELECT COALESCE(MIN(seq), 1) - 1 FROM public_keys WHERE user_id = $1), \
             $2, $3, 0)",
            user as i64,
            spki.to_vec(),
            Sha256::digest(spki).to_vec()
        );
        self.wait_logged(user, &Sha256::digest(spki)).await;
    }

    /// Puts an invite from `from` into `to`'s inbox; its invite id.
    pub async fn deliver_invite(
        &self,
        to: u64,
        pair: &ChannelPair,
        from: u64,
        body: Vec<u8>,
    ) -> i64 {
        let id = scalar!(
            self,
            "INSERT INTO inboxes (user_id, last_invite_id) VALUES ($1, 1) \
             ON CONFLICT (user_id) DO UPDATE SET last_invite_id = inboxes.last_invite_id + 1 \
             RETURNING last_invite_id",
            to as i64
        );
        exec!(
            self,
            "INSERT INTO invites (to_user, invite_id, pair_id, from_user, body, sent_at) \
             VALUES ($1, $2, $3, $4, $5, 0)",
            to as i64,
            id,
            Uuid::parse_str(&pair.pair_id).unwrap(),
            from as i64,
            body
        );
        id
    }

    /// Withholds invites: deletes those of `to` above `after`.
    pub async fn withhold_invites(&self, to: u64, after: u64) -> u64 {
        exec!(
            self,
            "DELETE FROM invites WHERE to_user = $1 AND invite_id > $2",
            to as i64,
            after as i64
        )
    }

    /// How many invites `to` has.
    pub async fn invites_of(&self, to: u64) -> i64 {
        scalar!(
            self,
            "SELECT COUNT(*) FROM invites WHERE to_user = $1",
            to as i64
        )
    }

    /// Serves event `event_id` of `stream` again under the next event id (the database's
    /// one-counter-per-event index is the honest server's; this one drops it). Returns the
    /// new event id.
    pub async fn replay_event(&self, stream: &str, event_id: u64) -> u64 {
        let id = Uuid::parse_str(stream).unwrap();
        let counter = scalar!(
            self,
            "SELECT counter FROM events WHERE stream_id = $1 AND event_id = $2",
            id,
            event_id as i64
        );
        let sender = scalar!(
            self,
            "SELECT sender FROM events WHERE stream_id = $1 AND event_id = $2",
            id,
            event_id as i64
        );
        let body = self.event_body(stream, event_id).await;
        self.inject_event(stream, counter as u64, sender as u64, body)
            .await
    }

    /// Appends an event with any counter (u64, as the wire carries it), sender and body,
    /// under the next event id. Returns it.
    pub async fn inject_event(
        &self,
        stream: &str,
        counter: u64,
        sender: u64,
        body: Vec<u8>,
    ) -> u64 {
        let stream = Uuid::parse_str(stream).unwrap();
        exec!(self, "DROP INDEX IF EXISTS events_by_counter");
        let next = scalar!(
            self,
            "SELECT head_event_id + 1 FROM streams WHERE stream_id = $1",
            stream
        );
        exec!(
            self,
            "INSERT INTO events (stream_id, event_id, counter, sender, posted_at, body) \
             VALUES ($1, $2, $3, $4, 0, $5)",
            stream,
            next,
            counter as i64,
            sender as i64,
            body
        );
        exec!(
            self,
            "UPDATE streams SET head_event_id = $2 WHERE stream_id = $1",
            stream,
            next
        );
        next as u64
    }

    /// The body of one stored event.
    pub async fn event_body(&self, stream: &str, event_id: u64) -> Vec<u8> {
        let stream = Uuid::parse_str(stream).unwrap();
        let sql = "SELECT body FROM events WHERE stream_id = $1 AND event_id = $2";
        match self {
            Db::Sqlite(p) => {
                sqlx::query_scalar(sql)
                    .bind(stream)
                    .bind(event_id as i64)
                    .fetch_one(p)
                    .await
            }
            Db::Postgres(p) => {
                sqlx::query_scalar(sql)
                    .bind(stream)
                    .bind(event_id as i64)
                    .fetch_one(p)
                    .await
            }
        }
        .expect(sql)
    }

    /// Lists `user` as a member of the pair again (or anew).
    pub async fn add_member(&self, pair: &str, user: u64) {
        exec!(
            self,
            "INSERT INTO members (pair_id, user_id, joined_at) VALUES ($1, $2, 0)",
            Uuid::parse_str(pair).unwrap(),
            user as i64
        );
    }

    /// Moves the stream's retention horizon (`first_event_id`) to `first` and its head to
    /// at least `head`, as the sweeper moves it, whether or not any retention was set.
    pub async fn set_horizon(&self, stream: &str, first: u64, head: u64) {
        exec!(
            self,
            "UPDATE streams SET first_event_id = $2, \
             head_event_id = CASE WHEN head_event_id < $3 THEN $3 ELSE head_event_id END \
             WHERE stream_id = $1",
            Uuid::parse_str(stream).unwrap(),
            first as i64,
            head as i64
        );
    }

    /// Deletes the stream's events with ids in `from..=to`; how many.
    pub async fn delete_events(&self, stream: &str, from: i64, to: i64) -> u64 {
        exec!(
            self,
            "DELETE FROM events WHERE stream_id = $1 AND event_id >= $2 AND event_id <= $3",
            Uuid::parse_str(stream).unwrap(),
            from,
            to
        )
    }

    /// Serves event `from` of the stream under the id `to` instead (the id is not part of
    /// what the sender signed); the stream's head follows when `to` is above it.
    pub async fn renumber_event(&self, stream: &str, from: i64, to: i64) {
        let id = Uuid::parse_str(stream).unwrap();
        exec!(
            self,
            "UPDATE events SET event_id = $3 WHERE stream_id = $1 AND event_id = $2",
            id,
            from,
            to
        );
        exec!(
            self,
            "UPDATE streams SET head_event_id = $2 WHERE stream_id = $1 AND head_event_id < $2",
            id,
            to
        );
    }

    /// Sets the stream's head counter, the one the server refuses posts at or below (and
    /// names in the refusal, from which a sender takes its next counter).
    pub async fn set_head_counter(&self, stream: &str, counter: u64) {
        exec!(
            self,
            "UPDATE streams SET head_counter = $2 WHERE stream_id = $1",
            Uuid::parse_str(stream).unwrap(),
            counter as i64
        );
    }

    /// The head event id of a stream.
    pub async fn head(&self, stream: &str) -> u64 {
        scalar!(
            self,
            "SELECT head_event_id FROM streams WHERE stream_id = $1",
            Uuid::parse_str(stream).unwrap()
        ) as u64
    }
}

/// The pair of a room, as the server names it.
pub fn pair_of(room: &Room) -> ChannelPair {
    ChannelPair {
        pair_id: room.pair_id.clone(),
        message_id: room.message.stream_id.clone(),
        state_id: room.state.stream_id.clone(),
    }
}

/// A chain state of a new epoch the attacker knows: random id and key, at `counter`.
pub fn fresh_chain(generation: u32, counter: u64) -> ChainState {
    ChainState {
        epoch: random::<16>().unwrap().to_vec(),
        generation,
        counter,
        chain_key: random::<32>().unwrap().to_vec(),
        start: counter,
    }
}

/// An invite into `room` "from" `from`, signed by `signer`, encrypted to `to`'s key,
/// carrying `chains` for both streams and a room state that trusts `signer` for `from`.
pub fn forge_invite(
    room: &Room,
    from: &UserRef,
    signer: &Identity,
    to: &UserRef,
    to_key: &PublicIdentity,
    chains: (Vec<ChainState>, Vec<ChainState>),
) -> Vec<u8> {
    let body = InviteBody {
        version: event::BODY_VERSION,
        pair_id: room.pair_id.clone(),
        message_id: room.message.stream_id.clone(),
        state_id: room.state.stream_id.clone(),
        inviter: Some(from.clone()),
        inviter_fingerprint: signer.fingerprint().to_vec(),
        invitee: Some(to.clone()),
        invitee_fingerprint: to_key.fingerprint().to_vec(),
        message_chains: chains.0,
        state_chains: chains.1,
        room: Some(RoomState {
            name: "taken over".into(),
            trusted: vec![TrustedUser {
                user: Some(from.clone()),
                fingerprints: vec![signer.fingerprint().to_vec()],
            }],
            ..Default::default()
        }),
        client_time_ms: event::now_ms(),
    };
    let signed = event::sign_invite(signer, &body).unwrap();
    seal_invite(to_key, &uuid_bytes(&room.pair_id).unwrap(), to, &signed).unwrap()
}

/// The key the server serves now for `user` (what an attacker encrypts a forged invite
/// to).
pub async fn served_key(device: &Device, user: u64) -> PublicIdentity {
    let keys = device.api().fetch_key(user, "").await.unwrap();
    PublicIdentity::from_spki(&keys.current.key_data).unwrap()
}

/// A device's identity key, as an attacker holding its state would use it.
pub fn identity_of(device: &Device) -> Identity {
    Identity::from_pkcs8(&device.state().identity_pkcs8).unwrap()
}

/// The parts of a room that an attack must not change: epochs with their generations,
/// trust, name.
pub fn fixed_parts(device: &Device, room: &str) -> String {
    let r = device.room(room).unwrap();
    let epochs = |s: &secretd_client::state::StreamState| {
        s.epochs
            .iter()
            .map(|(id, e)| format!("{id}:{}:{}", e.generation, e.origin.counter))
            .collect::<Vec<_>>()
    };
    format!(
        "{:?} {:?} {:?} {}",
        epochs(&r.message),
        epochs(&r.state),
        r.trusted,
        r.name
    )
}

/// `user::local`.
pub fn local(id: u64) -> UserRef {
    user::local(id)
}
