//! Logs (tracing, text or JSON) and Prometheus metrics.
//!
//! Metrics are recorded through the `metrics` facade; `serve` installs the Prometheus
//! exporter when `metrics_listen` is set (else recording is a no-op).

use std::net::SocketAddr;

use tracing_subscriber::EnvFilter;

use crate::config::Settings;

/// Keeps sqlx's URL parser quiet: its warnings quote parameter values, passwords included.
const SQLX_URL_PARSER_QUIET: &str = "sqlx_postgres::options::parse=error";

/// Installs the global tracing subscriber (`RUST_LOG` overrides `log_level`).
pub fn init(settings: &Settings) {
    let filter = EnvFilter::try_from_default_env()
        .or_else(|_| EnvFilter::try_new(&settings.log_level))
        .unwrap_or_else(|_| EnvFilter::new("info"))
        // sqlx warns about a connection parameter it does not know with its value, which
        // can be a password (`?sslpassword=…`, a misspelt `?Password=…`).
        .add_directive(SQLX_URL_PARSER_QUIET.parse().expect("a valid directive"));
    use std::io::IsTerminal;
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(std::io::stderr().is_terminal())
        .with_writer(std::io::stderr);
    let _ = if settings.log_format == crate::config::LogFormat::Json {
        builder.json().flatten_event(true).try_init()
    } else {
        builder.try_init()
    };
}

/// Starts the Prometheus endpoint on `addr` (`GET /metrics`).
pub fn install_exporter(addr: SocketAddr) -> anyhow::Result<()> {
    metrics_exporter_prometheus::PrometheusBuilder::new()
        .with_http_listener(addr)
        .install()
        .map_err(|e| anyhow::anyhow!("cannot start the metrics endpoint on {addr}: {e}"))?;
    metrics::describe_counter!(
        "secretd_rpc_total",
        "RPCs answered, by method and status code"
    );
    metrics::describe_histogram!(
        "secretd_commit_batch_posts",
        "Posts per group-commit transaction"
    );
    metrics::describe_gauge!(
        "secretd_stream_connections",
        "Open StreamMessagePosting and Subscribe calls"
    );
    metrics::describe_gauge!("secretd_subscriptions", "Live stream subscriptions");
    metrics::describe_gauge!(
        "secretd_listener_connected",
        "1 while the Postgres change listener is connected"
    );
    metrics::describe_counter!(
        "secretd_fanout_events_read_total",
        "Events the fan-out hub read from the database once for all local subscribers \
         (other replicas' posts)"
    );
    metrics::describe_counter!(
        "secretd_catchup_pages_total",
        "Database pages read by single subscriptions catching up (resumes, slow readers, \
         gaps the hub could not fill)"
    );
    metrics::describe_counter!(
        "secretd_db_deadline_total",
        "Database operations abandoned at db_timeout_ms, by operation"
    );
    metrics::describe_counter!(
        "secretd_federation_calls_total",
        "Server-to-server calls by peer, direction (in: a peer called us; out: we called a \
         peer) and outcome (ok, or what went wrong)"
    );
    metrics::describe_counter!(
        "secretd_kt_epochs_total",
        "Key transparency epochs by outcome: appended (a new head), resigned (the newest \
         head re-signed), busy (another replica published), failed"
    );
    metrics::describe_counter!(
        "secretd_kt_entries_total",
        "Keys this replica logged into the key transparency log"
    );
    metrics::describe_gauge!(
        "secretd_kt_tree_size",
        "Entries in the key transparency log at the newest head this replica published"
    );
    metrics::describe_counter!(
        "secretd_kt_equivocations_total",
        "Homeservers caught equivocating (two signed tree heads that cannot both be honest), by server"
    );
    metrics::describe_gauge!(
        "secretd_kt_equivocating_servers",
        "Homeservers whose users' keys are refused because evidence of their equivocation is held"
    );
    metrics::describe_counter!(
        "secretd_listener_watchdog_total",
        "Change-listener connections dropped because no notification came within listener_watchdog_ms"
    );
    Ok(())
}

/// Counts an answered RPC.
pub fn rpc(method: &'static str, code: tonic::Code) {
    metrics::counter!("secretd_rpc_total", "method" => method, "code" => format!("{code:?}"))
        .increment(1);
}

/// Records the size of a group-commit batch.
pub fn batch(posts: usize) {
    metrics::histogram!("secretd_commit_batch_posts").record(posts as f64);
}

/// Adjusts the open-connections gauge.
pub fn connections(delta: i64) {
    metrics::gauge!("secretd_stream_connections").increment(delta as f64);
}

/// Adjusts the live-subscriptions gauge.
pub fn subscriptions(delta: i64) {
    metrics::gauge!("secretd_subscriptions").increment(delta as f64);
}

/// Sets the listener-connected gauge.
pub fn listener_connected(up: bool) {
    metrics::gauge!("secretd_listener_connected").set(if up { 1.0 } else { 0.0 });
}

/// Counts events the hub read from the database for all local subscribers at once.
pub fn fanout_events_read(events: usize) {
    metrics::counter!("secretd_fanout_events_read_total").increment(events as u64);
}

/// Counts a database page read by one subscription catching up.
pub fn catchup_page() {
    metrics::counter!("secretd_catchup_pages_total").increment(1);
}

/// Counts a database operation abandoned at its deadline.
pub fn db_deadline(operation: &'static str) {
    metrics::counter!("secretd_db_deadline_total", "operation" => operation).increment(1);
}

/// Counts a listener connection dropped by the watchdog.
pub fn listener_watchdog() {
    metrics::counter!("secretd_listener_watchdog_total").increment(1);
}

/// Counts a key transparency epoch: `outcome` (appended, resigned, busy, failed), the
/// entries it logged and the tree size it published (0 when it published nothing).
pub fn kt_epoch(outcome: &'static str, entries: u64, tree_size: u64) {
    metrics::counter!("secretd_kt_epochs_total", "outcome" => outcome).increment(1);
    if entries > 0 {
        metrics::counter!("secretd_kt_entries_total").increment(entries);
    }
    if tree_size > 0 {
        metrics::gauge!("secretd_kt_tree_size").set(tree_size as f64);
    }
}

/// Counts a homeserver caught equivocating (two signed tree heads that cannot both be
/// honest, DESIGN §12): once per server per replica.
pub fn kt_equivocation(server: &str) {
    metrics::counter!("secretd_kt_equivocations_total", "server" => server.to_string())
        .increment(1);
}

/// The number of homeservers this replica refuses for equivocation (found here, or read
/// from the stored evidence: it survives restarts, unlike the counter).
pub fn kt_equivocating_servers(n: usize) {
    metrics::gauge!("secretd_kt_equivocating_servers").set(n as f64);
}

/// Counts a server-to-server call: `peer` (a configured peer's name, or "unknown"),
/// `direction` "in" or "out", `outcome` "ok" or a short word for what went wrong.
pub fn federation_call(peer: &str, direction: &'static str, outcome: &'static str) {
    metrics::counter!(
        "secretd_federation_calls_total",
        "peer" => peer.to_string(),
        "direction" => direction,
        "outcome" => outcome
    )
    .increment(1);
}
