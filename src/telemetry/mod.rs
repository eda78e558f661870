//! Logs (tracing, text or JSON) and Prometheus metrics.
//!
//! Metrics are recorded through the `metrics` facade; `serve` installs the Prometheus
//! exporter when `metrics_listen` is set (else recording is a no-op). The RPC latency
//! histogram is a tower layer of its own ([`rpc`]).
//!
//! Metrics that count rare events (reconnects, refusals, budget spent, …) are registered
//! at 0 when the exporter starts, so a dashboard shows 0 rather than "no data".

pub mod rpc;

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
    use metrics_exporter_prometheus::{Matcher, PrometheusBuilder};
    PrometheusBuilder::new()
        .with_http_listener(addr)
        .set_buckets_for_metric(Matcher::Full(rpc::NAME.into()), &rpc::BUCKETS)
        .and_then(|b| b.install())
        .map_err(|e| anyhow::anyhow!("cannot start the metrics endpoint on {addr}: {e}"))?;
    describe_operations();
    describe();
    build_info();
    register_zeros();
    Ok(())
}

/// The build-info gauge: `secretd_build_info{version,profile} 1`.
fn build_info() {
    let profile = match cfg!(debug_assertions) {
        true => "debug",
        false => "release",
    };
    metrics::gauge!(
        "secretd_build_info",
        "version" => env!("CARGO_PKG_VERSION"),
        "profile" => profile
    )
    .set(1.0);
}

/// Registers at 0 the metrics that only move when something happens.
fn register_zeros() {
    for name in [
        "secretd_listener_watchdog_total",
        "secretd_listener_reconnects_total",
        "secretd_fanout_events_read_total",
        "secretd_catchup_pages_total",
        "secretd_commit_queue_full_total",
        "secretd_fanout_ring_budget_spent_total",
        "secretd_retention_deleted_events_total",
    ] {
        metrics::counter!(name).absolute(0);
    }
    for name in [
        "secretd_stream_connections",
        "secretd_subscriptions",
        "secretd_kt_equivocating_servers",
    ] {
        metrics::gauge!(name).set(0.0);
    }
    for via in ["rpc", "admin"] {
        for messages in ["true", "false"] {
            metrics::counter!("secretd_erasures_total", "via" => via, "messages" => messages)
                .absolute(0);
        }
    }
    for outcome in ["appended", "resigned", "busy", "failed"] {
        metrics::counter!("secretd_kt_epochs_total", "outcome" => outcome).absolute(0);
    }
}

/// The descriptions of the metrics added with the monitoring kit (ops/grafana,
/// ops/prometheus).
fn describe_operations() {
    metrics::describe_histogram!(
        rpc::NAME,
        metrics::Unit::Seconds,
        "RPC latency by service, method and status code: unary calls to their status, \
         streaming calls to their response headers (the stream opened or refused); paths \
         the server does not serve are counted as method \"unknown\""
    );
    metrics::describe_gauge!(
        "secretd_build_info",
        "Always 1; the labels say the version and build profile of the running binary"
    );
    metrics::describe_counter!(
        "secretd_listener_reconnects_total",
        "Times the Postgres change listener lost its connection and reconnected"
    );
    metrics::describe_counter!(
        "secretd_rate_limited_total",
        "Calls refused by a per-user rate limit, by class (config keys rate_<class>_per_sec and rate_<class>_burst)"
    );
    metrics::describe_gauge!(
        "secretd_commit_queued_posts",
        "Posts waiting in the group-commit queues (all writers)"
    );
    metrics::describe_gauge!(
        "secretd_commit_queue_capacity",
        "Posts the group-commit queues hold together (commit_queue_depth × writers)"
    );
    metrics::describe_counter!(
        "secretd_commit_queue_full_total",
        "Posts refused with RESOURCE_EXHAUSTED because their writer's queue stayed full \
         for commit_queue_timeout_ms"
    );
    metrics::describe_gauge!(
        "secretd_fanout_ring_bytes",
        metrics::Unit::Bytes,
        "Bytes the fan-out rings hold together"
    );
    metrics::describe_gauge!(
        "secretd_fanout_ring_budget_bytes",
        metrics::Unit::Bytes,
        "The fan-out rings' shared byte budget (fanout_ring_budget_bytes)"
    );
    metrics::describe_counter!(
        "secretd_fanout_ring_budget_spent_total",
        "Rings emptied because the shared byte budget was spent (their readers catch up \
         from the database)"
    );
}

/// The descriptions of the metrics the server had before the monitoring kit.
fn describe() {
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
        "secretd_retention_deleted_events_total",
        "Events the retention sweeper deleted (README \"Retention\")"
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
        "secretd_erasures_total",
        "Users erased (README \"Erase a user\"), by how (via: rpc = DeleteAccount, admin = \
         secretd admin erase-user) and whether their messages were erased too"
    );
    metrics::describe_counter!(
        "secretd_listener_watchdog_total",
        "Change-listener connections dropped because no notification came within listener_watchdog_ms"
    );
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

/// One erasure of a user (README "Erase a user"): its audit log line (target
/// `secretd::audit`) and its count. `via` is "rpc" or "admin"; `first` false when the
/// user had been erased before; `pairs` and `events` say what this call changed.
pub fn erasure(
    via: &'static str,
    user: i64,
    messages: bool,
    first: bool,
    pairs: usize,
    events: u64,
) {
    tracing::info!(
        target: "secretd::audit",
        action = "erase-user",
        via,
        user,
        erase_messages = messages,
        first_erasure = first,
        pairs_left = pairs,
        events_erased = events,
        "user {user} erased"
    );
    let messages = if messages { "true" } else { "false" };
    metrics::counter!("secretd_erasures_total", "via" => via, "messages" => messages).increment(1);
}

/// Counts a listener connection dropped by the watchdog.
pub fn listener_watchdog() {
    metrics::counter!("secretd_listener_watchdog_total").increment(1);
}

/// Counts events the retention sweeper deleted.
pub fn retention_deleted(events: u64) {
    metrics::counter!("secretd_retention_deleted_events_total").increment(events);
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

/// Counts a change-listener connection lost (it reconnects).
pub fn listener_reconnect() {
    metrics::counter!("secretd_listener_reconnects_total").increment(1);
}

/// Registers the rate-limit classes at 0 (`secretd_rate_limited_total{class}`).
pub fn rate_limit_classes(classes: impl IntoIterator<Item = &'static str>) {
    for class in classes {
        metrics::counter!("secretd_rate_limited_total", "class" => class).absolute(0);
    }
}

/// Counts a call refused by the rate limit of `class`.
pub fn rate_limited(class: &'static str) {
    metrics::counter!("secretd_rate_limited_total", "class" => class).increment(1);
}

/// Registers the configured federation peers at 0 (`secretd_federation_calls_total`
/// with outcome "ok", both directions).
pub fn federation_peers<'a>(peers: impl IntoIterator<Item = &'a str>) {
    for peer in peers {
        for direction in ["in", "out"] {
            metrics::counter!(
                "secretd_federation_calls_total",
                "peer" => peer.to_string(),
                "direction" => direction,
                "outcome" => "ok"
            )
            .absolute(0);
        }
    }
}

/// The group-commit queues' gauge of waiting posts, after setting their capacity.
pub fn commit_queues(capacity: usize) -> metrics::Gauge {
    metrics::gauge!("secretd_commit_queue_capacity").set(capacity as f64);
    metrics::gauge!("secretd_commit_queued_posts")
}

/// Counts a post refused because its writer's queue stayed full.
pub fn commit_queue_full() {
    metrics::counter!("secretd_commit_queue_full_total").increment(1);
}

/// The fan-out rings' gauge of bytes held, after setting their budget.
pub fn ring_budget(limit: usize) -> metrics::Gauge {
    metrics::gauge!("secretd_fanout_ring_budget_bytes").set(limit as f64);
    metrics::gauge!("secretd_fanout_ring_bytes")
}

/// Counts a ring emptied because the shared budget was spent.
pub fn ring_budget_spent() {
    metrics::counter!("secretd_fanout_ring_budget_spent_total").increment(1);
}
