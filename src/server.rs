//! Server wiring: store, hub, group commit, change listener, gRPC services (SecretService
//! behind authentication, health, reflection), gRPC-Web + CORS, keepalive, metrics and
//! graceful shutdown.

use std::net::SocketAddr;
use std::str::FromStr;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use futures_util::TryStreamExt;
use tokio::net::TcpListener;
use tokio::task::JoinHandle;
use tonic::service::interceptor::InterceptedService;
use uuid::Uuid;

use crate::auth::{AuthInterceptor, Verifier};
use crate::coalesce::Coalescing;
use crate::commit::{CommitSettings, Committer, Writers};
use crate::config::{Database, Settings};
use crate::hub::Hub;
use crate::limits::RateLimits;
use crate::replica::Replica;
use crate::service::AppState;
use crate::service::router::SecretRouter;
use crate::shutdown::{Phase, Trigger};
use crate::store::{self, Backend, DynStore};

/// Runs `secretd migrate` and says what it did: which migrations it applied and the
/// version the database is at.
pub async fn migrate_only(settings: &Settings) -> anyhow::Result<()> {
    crate::private_files::secure_data_dir(settings)?;
    let database = settings.database()?;
    let limit = Duration::from_millis(settings.db_timeout_ms);
    // Unknown (None) when the database cannot be read now: migrating reports why.
    let before = applied_migrations(&database, limit.min(Duration::from_secs(2)))
        .await
        .ok();
    if let Err(e) = store::migrate(database.url()).await {
        return Err(database_error(&database, "migrate", e).await);
    }
    let after = applied_migrations(&database, limit)
        .await
        .with_context(|| format!("migrated, but cannot read back the history of {database}"))?;
    tracing::info!(store = %database, "{}", migration_report(before.as_deref(), &after));
    Ok(())
}

/// Runs `secretd kt-verify`: audits the key transparency log of the database against
/// the server's key (or `public_key`, base64) and `server_name`; the report, or the first
/// mismatch as the error.
pub async fn kt_verify(
    settings: &Settings,
    public_key: Option<&str>,
) -> anyhow::Result<crate::kt::verify::Report> {
    use base64::Engine;
    let public = match public_key {
        Some(b64) => base64::engine::general_purpose::STANDARD
            .decode(b64.trim())
            .ok()
            .filter(|k| k.len() == crate::config::ED25519_PUBLIC_KEY_LEN)
            .ok_or_else(|| {
                crate::config::Misconfigured(format!(
                    "--public-key {b64:?} is not a base64 Ed25519 public key (32 bytes), as \
                     `secretd federation-key` prints it"
                ))
            })?,
        None => crate::federation::key::load_existing(settings)?
            .ok_or_else(|| {
                crate::config::Misconfigured(format!(
                    "there is no server key in {} (federation-key) and \
                     federation.signing_key_file is not set: give the key the heads must be \
                     signed with (--public-key, as `secretd federation-key` prints it), or \
                     the data directory or config of the server",
                    settings.data_dir.display()
                ))
            })?
            .public_key()
            .to_vec(),
    };
    let key_id = crate::federation::key::key_id(&public);
    let database = settings.database()?;
    let limit = Duration::from_millis(settings.db_timeout_ms);
    let store = match store::open_with_deadline(
        database.url(),
        2,
        limit,
        settings.sqlite_mmap_mb,
        Uuid::new_v4(),
    )
    .await
    {
        Ok(store) => store,
        Err(e) => return Err(database_error(&database, "open", e).await),
    };
    let expected = crate::kt::verify::Expected {
        server_name: &settings.server_name,
        public_key: &public,
        key_id: &key_id,
    };
    let report = crate::kt::verify::verify(&store, &expected).await;
    store.close().await;
    report
}

/// A migration recorded in the database: version and description (`0003_federation.sql`
/// is `(3, "federation")`).
type Applied = (i64, String);

/// The migrations recorded in sqlx's table `_sqlx_migrations`, oldest first; none when the
/// database or the table does not exist yet. Read-only: creates nothing.
async fn applied_migrations(database: &Database, limit: Duration) -> anyhow::Result<Vec<Applied>> {
    use sqlx::Connection;
    let read = async {
        match database {
            Database::Postgres(url) => {
                let options = sqlx::postgres::PgConnectOptions::from_str(url.expose())?;
                let conn = sqlx::PgConnection::connect_with(&options).await?;
                history(conn, "SELECT to_regclass('_sqlx_migrations') IS NOT NULL").await
            }
            Database::Sqlite { url, path } => {
                if !path.exists() {
                    return Ok(Vec::new());
                }
                let options = sqlx::sqlite::SqliteConnectOptions::from_str(url)?.read_only(true);
                let conn = sqlx::SqliteConnection::connect_with(&options).await?;
                let exists =
                    "SELECT count(*) > 0 FROM sqlite_master WHERE name = '_sqlx_migrations'";
                history(conn, exists).await
            }
        }
    };
    tokio::time::timeout(limit, read)
        .await
        .map_err(|_| anyhow::anyhow!("no answer within {} ms", limit.as_millis()))?
}

/// The successful rows of `_sqlx_migrations` on `conn`, if `exists` (a query answering
/// whether the table exists) says it does; closes the connection.
async fn history<C>(mut conn: C, exists: &'static str) -> anyhow::Result<Vec<Applied>>
where
    C: sqlx::Connection,
    for<'c> &'c mut C: sqlx::Executor<'c, Database = C::Database>,
    bool: sqlx::Type<C::Database> + for<'r> sqlx::Decode<'r, C::Database>,
    Applied: for<'r> sqlx::FromRow<'r, <C::Database as sqlx::Database>::Row>,
    usize: sqlx::ColumnIndex<<C::Database as sqlx::Database>::Row>,
    <C::Database as sqlx::Database>::Arguments: sqlx::IntoArguments<C::Database>,
{
    const HISTORY: &str =
        "SELECT version, description FROM _sqlx_migrations WHERE success ORDER BY version";
    let present: bool = sqlx::query_scalar(exists).fetch_one(&mut conn).await?;
    let rows = match present {
        true => sqlx::query_as(HISTORY).fetch_all(&mut conn).await?,
        false => Vec::new(),
    };
    conn.close().await?;
    Ok(rows)
}

/// What `secretd migrate` did, in one sentence: e.g. "applied 3 migrations (1 initial,
/// 2 invites by sender, 3 federation); the database is at version 3", or "the database
/// is up to date at version 3 (federation)". `before` is None when it could not be read.
fn migration_report(before: Option<&[Applied]>, after: &[Applied]) -> String {
    let Some((version, description)) = after.last() else {
        return "the database has no migrations recorded".into();
    };
    let new: Vec<String> = after
        .iter()
        .filter(|(v, _)| before.is_some_and(|b| !b.iter().any(|(old, _)| old == v)))
        .map(|(v, d)| format!("{v} {d}"))
        .collect();
    match (before, new.len()) {
        (None, _) => format!("the database is at version {version} ({description})"),
        (Some(_), 0) => {
            format!(
                "the database is up to date at version {version} ({description}); nothing to apply"
            )
        }
        (Some(_), n) => format!(
            "applied {n} migration{} ({}); the database is at version {version}",
            if n == 1 { "" } else { "s" },
            new.join(", ")
        ),
    }
}

/// A failure to open or migrate `database` (`verb`), with a hint when nothing accepts
/// connections at the Postgres address (checked with a plain TCP connection, so a
/// refusal by Postgres itself, e.g. a wrong password, gets no hint: its words say why).
async fn database_error(database: &Database, verb: &str, err: anyhow::Error) -> anyhow::Error {
    let err = err.context(format!("cannot {verb} the database {database}"));
    let Database::Postgres(url) = database else {
        return err;
    };
    let Ok(options) = sqlx::postgres::PgConnectOptions::from_str(url.expose()) else {
        return err;
    };
    let (host, port) = (options.get_host(), options.get_port());
    if host.starts_with('/') {
        return err; // a Unix socket directory
    }
    let probe = tokio::time::timeout(
        Duration::from_secs(1),
        tokio::net::TcpStream::connect((host, port)),
    )
    .await;
    if let Ok(Ok(_)) = probe {
        return err;
    }
    let at = match host.contains(':') {
        true => format!("[{host}]:{port}"),
        false => format!("{host}:{port}"),
    };
    anyhow::anyhow!("{err:#} — is Postgres running at {at} and reachable from here (database_url)?")
}

/// Runs `secretd serve` until SIGTERM or Ctrl-C, then shuts down gracefully.
pub async fn serve(settings: Settings) -> anyhow::Result<()> {
    // Install the signal handlers before announcing readiness, so a SIGTERM that follows
    // the ready line at once is still a graceful stop.
    let signal = termination_signal()?;
    let listener = TcpListener::bind(settings.listen)
        .await
        .map_err(|e| anyhow::anyhow!("cannot listen on {}: {e}", settings.listen))?;
    let running = start(settings, listener).await?;
    signal.await;
    tracing::info!(
        "shutting down: ending open streams with UNAVAILABLE, finishing in-flight writes"
    );
    running.stop().await;
    tracing::info!("stopped");
    Ok(())
}

/// A future that resolves on SIGTERM or Ctrl-C (SIGINT); the handlers are installed now.
fn termination_signal() -> anyhow::Result<impl std::future::Future<Output = ()>> {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{SignalKind, signal};
        let mut term = signal(SignalKind::terminate())?;
        let mut int = signal(SignalKind::interrupt())?;
        Ok(async move {
            tokio::select! {
                _ = term.recv() => {}
                _ = int.recv() => {}
            }
        })
    }
    #[cfg(not(unix))]
    {
        Ok(async {
            let _ = tokio::signal::ctrl_c().await;
        })
    }
}

/// Re-reads the TLS certificate and key on every SIGHUP until the server drains; a file
/// that fails to load keeps the certificate in use (and says why in the log). The handler
/// is installed now, before the ready line, so a SIGHUP never ends the process.
fn reload_on_sighup(
    cert: Arc<crate::tls::ServerCert>,
    signal: crate::shutdown::Signal,
) -> anyhow::Result<()> {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{SignalKind, signal as unix_signal};
        let mut hangup = unix_signal(SignalKind::hangup())?;
        tokio::spawn(async move {
            loop {
                tokio::select! {
                    got = hangup.recv() => {
                        if got.is_none() {
                            return;
                        }
                        match cert.reload() {
                            Ok(()) => tracing::info!(
                                tls_cert_file = %cert.cert_file().display(),
                                "SIGHUP: TLS certificate re-read; new connections get it"
                            ),
                            Err(e) => tracing::error!(
                                "SIGHUP: {e}; still serving the certificate read before"
                            ),
                        }
                    }
                    _ = signal.draining() => return,
                }
            }
        });
    }
    #[cfg(not(unix))]
    let _ = (cert, signal);
    Ok(())
}

/// A started server.
pub struct Running {
    addr: SocketAddr,
    replica: Uuid,
    shutdown: Trigger,
    server: JoinHandle<Result<(), tonic::transport::Error>>,
    writers: Writers,
    publisher: JoinHandle<()>,
    sweeper: JoinHandle<()>,
    store: DynStore,
    hub: Arc<Hub>,
    grace: Duration,
}

impl Running {
    /// The address the server listens on.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// This process's replica id (tags its change notifications).
    pub fn replica_id(&self) -> Uuid {
        self.replica
    }

    /// Graceful stop: refuse new calls, end open streams with UNAVAILABLE, let in-flight
    /// calls finish (for at most `shutdown_grace_secs`), commit queued posts, close the
    /// database.
    pub async fn stop(self) {
        self.shutdown.advance(Phase::Draining);
        self.hub.stop_all();
        let mut server = self.server;
        if tokio::time::timeout(self.grace, &mut server).await.is_err() {
            tracing::warn!("in-flight calls did not finish within the grace period; closing them");
            server.abort();
        }
        // No call is left that could post: the writers commit their queues and end.
        self.shutdown.advance(Phase::Finishing);
        self.writers.join().await;
        // The key transparency publisher stopped at Draining; its epoch in progress ends
        // (commits or rolls back) within the database deadline.
        if tokio::time::timeout(self.grace, self.publisher)
            .await
            .is_err()
        {
            tracing::warn!("the key transparency epoch in progress did not end in time");
        }
        // The retention sweeper stopped at Draining too, after its batch in progress.
        if tokio::time::timeout(self.grace, self.sweeper)
            .await
            .is_err()
        {
            tracing::warn!("the retention batch in progress did not end in time");
        }
        self.store.close().await;
    }
}

/// Starts the server on an already bound listener (tests bind 127.0.0.1:0).
pub async fn start(settings: Settings, listener: TcpListener) -> anyhow::Result<Running> {
    let settings = Arc::new(settings);
    let addr = listener.local_addr()?;
    crate::private_files::secure_data_dir(&settings)?;
    // Read before anything starts, so that a bad file stops the start (exit 2).
    let tls = crate::tls::ServerCert::from_settings(&settings)?;
    let verifier = Arc::new(Verifier::from_settings(&settings)?);
    // The server key signs key transparency heads, with federation on or off.
    let server_key = Arc::new(crate::federation::key::load_or_create(&settings)?);
    // First, so that the hub, the committer and the RPC layer register their metrics
    // with it.
    if let Some(metrics_listen) = settings.metrics_listen {
        crate::telemetry::install_exporter(metrics_listen)?;
        crate::telemetry::rate_limit_classes(crate::limits::RateClass::ALL.map(|c| c.name()));
        if settings.federation.enabled {
            let peers = settings.federation.peers.iter();
            crate::telemetry::federation_peers(peers.map(|p| p.server_name.as_str()));
        }
        tracing::info!(
            %metrics_listen,
            "Prometheus metrics at http://{metrics_listen}/metrics"
        );
    }
    let database = settings.database()?;
    let replica = Uuid::new_v4();
    let store = store::open_with_deadline(
        database.url(),
        settings.db_max_connections,
        Duration::from_millis(settings.db_timeout_ms),
        settings.sqlite_mmap_mb,
        replica,
    )
    .await;
    let store = match store {
        Ok(store) => store,
        Err(e) => return Err(database_error(&database, "open", e).await),
    };
    let backend = store.backend();
    let (shutdown, signal) = crate::shutdown::channel();
    let hub = Hub::new(
        settings.fanout_ring_events,
        settings.fanout_ring_budget_bytes,
        signal.clone(),
    );
    let replica_sync = Replica::new(store.clone(), hub.clone());
    let writers = match backend {
        // SQLite has one writer: more tasks would only queue on its connection.
        Backend::Sqlite => 1,
        Backend::Postgres => settings.commit_writers,
    };
    let (committer, writer_tasks) = Committer::start(
        store.clone(),
        hub.clone(),
        replica_sync.clone(),
        CommitSettings::new(writers, &settings),
        signal.clone(),
    );
    let limits = Arc::new(RateLimits::from_settings(&settings));
    limits.spawn_sweeper(signal.clone());
    if backend == Backend::Postgres {
        tokio::spawn(crate::replica::run_listener(
            database.url().to_string(),
            replica,
            replica_sync,
            Duration::from_millis(settings.listener_watchdog_ms),
            signal.clone(),
        ));
    }
    let federation =
        crate::federation::Federation::start(&settings, server_key.clone(), store.clone())?;
    let signer = {
        let key = server_key.clone();
        crate::store::kt::HeadSigner {
            server_name: settings.server_name.clone(),
            key_id: server_key.key_id().to_string(),
            sign: Box::new(move |bytes| key.sign(bytes)),
        }
    };
    let kt = crate::kt::Kt::new(store.clone(), signer, &settings, signal.clone());
    let publisher = kt.start().await;
    let sweeper = crate::retention::Sweeper::new(store.clone(), &settings, signal.clone()).spawn();
    if let Some(federation) = &federation {
        // Evidence of equivocation stored before refuses those servers' users from the
        // first call; then the ExchangeHeads rounds (docs/kt.md §9).
        if let Err(e) = federation.load_evidence().await {
            tracing::warn!("could not read the stored evidence of equivocation: {e}");
        }
        federation.spawn_exchange(signal.clone());
    }
    let state = Arc::new(AppState {
        store: store.clone(),
        hub: hub.clone(),
        committer,
        limits,
        settings: settings.clone(),
        federation: federation.clone(),
        kt,
        server_public_key: *server_key.public_key(),
    });
    // SecretFederationService, behind its own gate (s2s tokens, per-peer limits), when
    // federation is on.
    let federation_service = federation.clone().map(|federation| {
        let api = crate::federation::service::FederationApi::new(state.clone(), federation.clone());
        crate::federation::gate::FederationGate::new(
            crate::proto::federation::secret_federation_service_server::SecretFederationServiceServer::new(api)
                .max_decoding_message_size(settings.max_request_bytes),
            federation,
        )
    });
    let secret = InterceptedService::new(
        SecretRouter::new(state),
        AuthInterceptor::new(verifier, federation.clone()),
    );
    let (health, health_service) = tonic_health::server::health_reporter();
    health.set_serving::<SecretRouter>().await;
    // Reflection lists what is served: SecretFederationService only with federation on.
    let descriptors = match federation {
        Some(_) => crate::proto::FEDERATION_FILE_DESCRIPTOR_SET,
        None => crate::proto::FILE_DESCRIPTOR_SET,
    };
    let reflection_v1 = tonic_reflection::server::Builder::configure()
        .register_encoded_file_descriptor_set(descriptors)
        .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
        .build_v1()?;
    let reflection_v1alpha = tonic_reflection::server::Builder::configure()
        .register_encoded_file_descriptor_set(descriptors)
        .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
        .build_v1alpha()?;

    let cors = crate::cors::CorsLayer::new(crate::cors::Policy::from_origins(
        &settings.cors_allowed_origins,
    )?);
    let router = tonic::transport::Server::builder()
        .accept_http1(true)
        .http2_keepalive_interval(Some(Duration::from_secs(
            settings.keepalive_interval_secs.max(1),
        )))
        .http2_keepalive_timeout(Some(Duration::from_secs(
            settings.keepalive_timeout_secs.max(1),
        )))
        .tcp_nodelay(true)
        // tonic passes no limit unless told, which lifts hyper's default of 200 streams.
        .max_concurrent_streams(settings.http2_max_concurrent_streams)
        // Further calls on the connection wait (HTTP/2 backpressure) until one finishes.
        .concurrency_limit_per_connection(settings.max_in_flight_per_connection)
        .trace_fn(|req| tracing::info_span!("rpc", path = %req.uri().path()))
        .layer(cors)
        .layer(tonic_web::GrpcWebLayer::new())
        // Inside gRPC-Web: browser calls are measured as the gRPC calls they become.
        .layer(crate::telemetry::rpc::RpcMetricsLayer::new())
        .add_service(secret)
        .add_service(health_service)
        .add_service(reflection_v1)
        .add_service(reflection_v1alpha)
        .add_optional_service(federation_service);
    let draining = {
        let signal = signal.clone();
        async move {
            signal.draining().await;
            health.set_not_serving::<SecretRouter>().await;
        }
    };
    let server = match &tls {
        Some(cert) => {
            reload_on_sighup(cert.clone(), signal)?;
            let incoming =
                crate::tls::incoming(listener, cert.server_config()).map_ok(Coalescing::new);
            tokio::spawn(router.serve_with_incoming_shutdown(incoming, draining))
        }
        None => {
            // Accepted sockets get TCP_NODELAY here: with an incoming stream tonic does not
            // set it, and Nagle plus delayed ACKs added 40 ms to small responses.
            let incoming =
                tonic::transport::server::TcpIncoming::from(listener).with_nodelay(Some(true));
            let incoming = incoming.map_ok(Coalescing::new);
            tokio::spawn(router.serve_with_incoming_shutdown(incoming, draining))
        }
    };
    let tls_state = match &tls {
        Some(cert) => format!("on ({})", cert.cert_file().display()),
        None => "off (plaintext)".into(),
    };
    tracing::info!(
        store = backend.name(),
        database = %database,
        tls = %tls_state,
        "secretd listening on {addr}"
    );
    Ok(Running {
        addr,
        replica,
        shutdown,
        server,
        writers: writer_tasks,
        publisher,
        sweeper,
        store,
        hub,
        grace: Duration::from_secs(settings.shutdown_grace_secs),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn migrate_says_what_it_did() {
        let all = [
            (1, "initial".to_string()),
            (2, "invites by sender".to_string()),
            (3, "federation".to_string()),
        ];
        assert_eq!(
            migration_report(Some(&[]), &all),
            "applied 3 migrations (1 initial, 2 invites by sender, 3 federation); the \
             database is at version 3"
        );
        assert_eq!(
            migration_report(Some(&all[..2]), &all),
            "applied 1 migration (3 federation); the database is at version 3"
        );
        assert_eq!(
            migration_report(Some(&all), &all),
            "the database is up to date at version 3 (federation); nothing to apply"
        );
        assert_eq!(
            migration_report(None, &all),
            "the database is at version 3 (federation)"
        );
    }
}
