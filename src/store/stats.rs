//! `secretd admin stats`: what a database holds, read without writing anything (a
//! read-only SQLite connection, a `READ ONLY` Postgres transaction), so it runs while
//! the server does. Every figure of one run comes from one snapshot (one transaction).
//!
//! Cost: one sequential pass over `events` (count, ciphertext bytes and oldest time are
//! one aggregate; neither backend loads a body to learn its length: SQLite reads the
//! length from the record header, Postgres `octet_length` from the TOAST pointer), an
//! index-only walk of `public_keys`, and constant-time lookups for the rest.

use std::str::FromStr;
use std::time::Duration;

use serde::Serialize;
use sqlx::{ConnectOptions, Connection};

use crate::config::{Database, Misconfigured};

/// What `secretd admin stats` reports about one database.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Stats {
    /// `sqlite` or `postgres`.
    pub backend: &'static str,
    /// Local users who have posted at least one public key (distinct `user_id` of
    /// `public_keys`, walked on its primary-key index). Users who never posted a key
    /// leave no row anywhere, so this is the number of users who can be invited.
    pub users_with_key: u64,
    /// Users of other homeservers this database has an id for (`foreign_users` rows:
    /// members, inviters or senders seen over federation).
    pub foreign_users: u64,
    /// Channel pairs (rooms), each a message stream and a state stream.
    pub pairs: u64,
    /// Events stored, in the message and state streams of every pair (`events` rows).
    pub events: u64,
    /// Bytes of stored ciphertext: the sum of the events' body lengths (opaque to the
    /// server; excludes ids, counters, timestamps and the database's own overhead).
    pub ciphertext_bytes: u64,
    /// When the oldest stored event was posted, µs since the Unix epoch (server clock);
    /// None without events.
    pub oldest_event_us: Option<i64>,
    /// Entries of the key transparency log (its tree size, committed or not yet signed:
    /// `max(leaf_index) + 1` on the primary key, leaves being dense from 0). None when
    /// the database predates key transparency (migration 6).
    pub kt_log_entries: Option<u64>,
    /// Posted keys not yet in the log: they enter it at the publisher's next epoch (the
    /// partial index `public_keys_kt_pending`). None as above.
    pub kt_keys_pending: Option<u64>,
    /// Size of the database on disk in bytes: SQLite pages × page size (the file,
    /// without a `-wal` not yet checkpointed), Postgres `pg_database_size` (tables,
    /// indexes, TOAST).
    pub database_bytes: u64,
}

/// Users with a key, foreign users, pairs, database bytes: the order both backends'
/// `counts` select them in.
type Counts = (i64, i64, i64, i64);

/// Events, ciphertext bytes, oldest `posted_at`.
type EventFigures = (i64, i64, Option<i64>);

/// Log entries, keys not yet logged.
type KtFigures = (i64, i64);

/// Reads the figures of `database`; `limit` bounds the connection attempt (the scan of
/// `events` runs as long as it takes; Ctrl-C stops it). Creates nothing: a missing
/// SQLite file, or a database without secretd's tables, is a configuration error.
pub async fn read(database: &Database, limit: Duration) -> anyhow::Result<Stats> {
    match database {
        Database::Postgres(url) => postgres(url.expose(), limit).await,
        Database::Sqlite { url, path } => {
            if !path.exists() {
                return Err(Misconfigured(format!(
                    "there is no SQLite database at {}: give the server's --data-dir or \
                     --database-url (this command never creates one)",
                    path.display()
                ))
                .into());
            }
            sqlite(url, limit).await
        }
    }
}

/// The SQL that differs between the backends.
struct Dialect {
    /// `sqlite` or `postgres`.
    backend: &'static str,
    /// Opens the read-only transaction all figures are read in.
    begin: &'static str,
    /// Whether the table named by the one parameter exists.
    has_table: &'static str,
    /// [`Counts`].
    counts: &'static str,
    /// Rows, body bytes and the oldest `posted_at` of `events`, in one pass.
    events: &'static str,
}

/// Postgres: one `REPEATABLE READ READ ONLY` transaction.
const POSTGRES: Dialect = Dialect {
    backend: "postgres",
    begin: "BEGIN ISOLATION LEVEL REPEATABLE READ READ ONLY",
    has_table: "SELECT to_regclass($1) IS NOT NULL",
    counts: "SELECT (SELECT count(*) FROM (SELECT DISTINCT user_id FROM public_keys) u), \
                    (SELECT count(*) FROM foreign_users), \
                    (SELECT count(*) FROM channel_pairs), \
                    pg_database_size(current_database())",
    events: "SELECT count(*), coalesce(sum(octet_length(body)), 0)::BIGINT, min(posted_at) \
             FROM events",
};

/// SQLite: a read transaction on a read-only connection.
const SQLITE: Dialect = Dialect {
    backend: "sqlite",
    begin: "BEGIN",
    has_table: "SELECT count(*) > 0 FROM sqlite_master WHERE type = 'table' AND name = ?",
    counts: "SELECT (SELECT count(*) FROM (SELECT DISTINCT user_id FROM public_keys)), \
                    (SELECT count(*) FROM foreign_users), \
                    (SELECT count(*) FROM channel_pairs), \
                    (SELECT page_count * page_size FROM pragma_page_count(), pragma_page_size())",
    events: "SELECT count(*), coalesce(sum(length(body)), 0), min(posted_at) FROM events",
};

/// The Postgres figures.
async fn postgres(url: &str, limit: Duration) -> anyhow::Result<Stats> {
    let options = sqlx::postgres::PgConnectOptions::from_str(url)?
        .application_name("secretd admin stats")
        .disable_statement_logging();
    let conn = tokio::time::timeout(limit, sqlx::PgConnection::connect_with(&options))
        .await
        .map_err(|_| anyhow::anyhow!("cannot connect within {} ms", limit.as_millis()))??;
    figures(conn, &POSTGRES).await
}

/// The SQLite figures.
async fn sqlite(url: &str, limit: Duration) -> anyhow::Result<Stats> {
    let options = sqlx::sqlite::SqliteConnectOptions::from_str(url)?
        .read_only(true)
        .busy_timeout(limit)
        .disable_statement_logging();
    let conn = sqlx::SqliteConnection::connect_with(&options).await?;
    figures(conn, &SQLITE).await
}

/// Reads every figure on `conn` in one transaction of `sql`'s dialect; closes it.
async fn figures<C>(mut conn: C, sql: &Dialect) -> anyhow::Result<Stats>
where
    C: Connection,
    for<'c> &'c mut C: sqlx::Executor<'c, Database = C::Database>,
    <C::Database as sqlx::Database>::Arguments: sqlx::IntoArguments<C::Database>,
    for<'q> &'q str: sqlx::Encode<'q, C::Database> + sqlx::Type<C::Database>,
    bool: sqlx::Type<C::Database> + for<'r> sqlx::Decode<'r, C::Database>,
    usize: sqlx::ColumnIndex<<C::Database as sqlx::Database>::Row>,
    Counts: for<'r> sqlx::FromRow<'r, <C::Database as sqlx::Database>::Row>,
    EventFigures: for<'r> sqlx::FromRow<'r, <C::Database as sqlx::Database>::Row>,
    KtFigures: for<'r> sqlx::FromRow<'r, <C::Database as sqlx::Database>::Row>,
{
    sqlx::query(sql.begin).execute(&mut conn).await?;
    let has = |table: &'static str| sqlx::query_scalar::<_, bool>(sql.has_table).bind(table);
    if !has("events").fetch_one(&mut conn).await? {
        return Err(no_schema());
    }
    let counts: Counts = sqlx::query_as(sql.counts).fetch_one(&mut conn).await?;
    let events: EventFigures = sqlx::query_as(sql.events).fetch_one(&mut conn).await?;
    let kt: Option<KtFigures> = match has("kt_entries").fetch_one(&mut conn).await? {
        true => Some(sqlx::query_as(KT).fetch_one(&mut conn).await?),
        false => None,
    };
    sqlx::query("COMMIT").execute(&mut conn).await?;
    conn.close().await?;
    Ok(assemble(sql.backend, counts, events, kt))
}

/// Log size and keys waiting for it; the same SQL on both backends.
const KT: &str = "SELECT (SELECT coalesce(max(leaf_index) + 1, 0) FROM kt_entries), \
                         (SELECT count(*) FROM public_keys WHERE kt_leaf IS NULL)";

/// A database that answers but is not secretd's (or was never migrated).
fn no_schema() -> anyhow::Error {
    Misconfigured(
        "the database has no secretd tables (no `events`): is this the server's database? \
         (`secretd migrate` creates them)"
            .into(),
    )
    .into()
}

/// The figures as [`Stats`]; counts are never negative, so the conversions saturate.
fn assemble(
    backend: &'static str,
    (users_with_key, foreign_users, pairs, database_bytes): Counts,
    (events, ciphertext_bytes, oldest_event_us): EventFigures,
    kt: Option<KtFigures>,
) -> Stats {
    let n = |v: i64| u64::try_from(v).unwrap_or(0);
    Stats {
        backend,
        users_with_key: n(users_with_key),
        foreign_users: n(foreign_users),
        pairs: n(pairs),
        events: n(events),
        ciphertext_bytes: n(ciphertext_bytes),
        oldest_event_us,
        kt_log_entries: kt.map(|(entries, _)| n(entries)),
        kt_keys_pending: kt.map(|(_, pending)| n(pending)),
        database_bytes: n(database_bytes),
    }
}
