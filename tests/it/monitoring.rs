//! The monitoring kit: every metric the Grafana dashboard (`ops/grafana/secretd.json`)
//! and the Prometheus rules (`ops/prometheus/alerts.yml`) name is exported by a running
//! server, the RPC latency histogram labels calls by service, method and code (unknown
//! paths under one label), and its table of paths covers every method the server serves.

use std::collections::BTreeSet;
use std::path::Path;

use prost::Message;
use secretd::proto::PostKeyRequest;
use secretd::telemetry::rpc;
use tonic::Code;

use crate::common::*;
use crate::federation::nodes::{Node, NodeKey, PeerSpec};

both_backends!(dashboard_and_alert_metrics_are_exported);

/// A server (with a federation peer configured, so the per-peer counters exist) answers
/// one call OK, one INVALID_ARGUMENT and one call to a path it does not serve; its
/// /metrics then holds every sample name the dashboard and the rules use, and the
/// histogram's label sets for those calls.
async fn dashboard_and_alert_metrics_are_exported(backend: Backend) {
    let (ka, kb) = (NodeKey::new("a.test"), NodeKey::new("b.test"));
    let metrics = format!("127.0.0.1:{}", unused_port());
    let a = Node::start_with_env(
        &ka,
        &backend,
        &[PeerSpec::unreachable(&kb)],
        &[],
        &[("SECRETD_METRICS_LISTEN", metrics.as_str())],
    )
    .await;
    let mut c = a.client(random_user()).await;
    let pair = new_pair(&mut c).await;
    post(&mut c, &pair.message_id, 1, b"sealed").await.unwrap();
    expect_code(
        c.post_key(PostKeyRequest {
            key_data: b"junk".to_vec(),
        })
        .await,
        Code::InvalidArgument,
    );
    let unserved = call_unserved_path(&a.addr).await;
    assert_eq!(unserved.code(), Code::Unimplemented, "{unserved:?}");

    let page = metrics_page(&metrics).await;
    let exported = sample_names(&page);
    let missing: Vec<String> = referenced_metrics()
        .into_iter()
        .filter(|(_, name)| !exported.contains(name))
        .map(|(file, name)| format!("{name} (named in {file})"))
        .collect();
    assert!(
        missing.is_empty(),
        "named by the dashboard or the rules but not exported: {missing:#?}\n\nexported: \
         {exported:#?}"
    );

    for (service, method, code) in [
        ("SecretService", "GenerateChannelPair", "Ok"),
        ("SecretService", "PostMessage", "Ok"),
        ("SecretService", "PostKey", "InvalidArgument"),
        ("unknown", "unknown", "Unimplemented"),
    ] {
        let labels = format!("service=\"{service}\",method=\"{method}\",code=\"{code}\"");
        for sample in ["_bucket{", "_count{", "_sum{"] {
            let prefix = format!("{}{sample}", rpc::NAME);
            assert!(
                page.lines()
                    .any(|l| l.starts_with(&prefix) && l.contains(&labels)),
                "no {prefix}{labels}…: {page}"
            );
        }
    }
    // Every call ended normally: none is counted as cut short or without a status.
    let count = format!("{}_count{{", rpc::NAME);
    let odd: Vec<&str> = page
        .lines()
        .filter(|l| l.starts_with(&count))
        .filter(|l| l.contains("code=\"Cancelled\"") || l.contains("code=\"Unknown\""))
        .collect();
    assert!(odd.is_empty(), "{odd:#?}");
    let build_info = format!(
        "secretd_build_info{{version=\"{}\"",
        env!("CARGO_PKG_VERSION")
    );
    assert!(
        page.lines()
            .any(|l| l.starts_with(&build_info) && l.ends_with(" 1")),
        "{page}"
    );
}

/// A gRPC call to `/nope.Nope/Nope`: a path the server does not serve.
async fn call_unserved_path(addr: &str) -> tonic::Status {
    let channel = tonic::transport::Endpoint::from_shared(format!("http://{addr}"))
        .unwrap()
        .connect()
        .await
        .unwrap();
    let mut grpc = tonic::client::Grpc::new(channel);
    grpc.ready().await.unwrap();
    let codec = tonic_prost::ProstCodec::<(), ()>::default();
    let path = http::uri::PathAndQuery::from_static("/nope.Nope/Nope");
    grpc.unary(tonic::Request::new(()), path, codec)
        .await
        .expect_err("a path nobody serves")
}

/// The sample names of a Prometheus text page (`name{labels} value` or `name value`),
/// histogram and summary samples with their suffixes (`_bucket`, `_sum`, `_count`).
fn sample_names(page: &str) -> BTreeSet<String> {
    let body = page.split_once("\r\n\r\n").map_or(page, |(_, body)| body);
    body.lines()
        .filter(|l| !l.starts_with('#'))
        .filter_map(|l| l.split(['{', ' ']).next())
        .filter(|name| !name.is_empty())
        .map(str::to_string)
        .collect()
}

/// Every `secretd_*` name in an `expr` of the dashboard or the rules: (file, name).
fn referenced_metrics() -> Vec<(&'static str, String)> {
    const DASHBOARD: &str = "ops/grafana/secretd.json";
    const RULES: &str = "ops/prometheus/alerts.yml";
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let dashboard: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(root.join(DASHBOARD)).unwrap())
            .expect("the dashboard is JSON");
    let mut exprs = Vec::new();
    json_exprs(&dashboard, &mut exprs);
    assert!(exprs.len() > 10, "the dashboard's queries: {exprs:?}");
    let mut names: Vec<_> = exprs
        .iter()
        .flat_map(|e| promql_metrics(e))
        .map(|n| (DASHBOARD, n))
        .collect();
    let rules = yaml_exprs(&std::fs::read_to_string(root.join(RULES)).unwrap());
    assert!(rules.len() >= 7, "the rules' expressions: {rules:?}");
    names.extend(
        rules
            .iter()
            .flat_map(|e| promql_metrics(e))
            .map(|n| (RULES, n)),
    );
    names.sort();
    names.dedup();
    names
}

/// The string values of every `expr` key in a JSON document.
fn json_exprs(v: &serde_json::Value, out: &mut Vec<String>) {
    match v {
        serde_json::Value::Object(map) => {
            for (key, value) in map {
                match (key.as_str(), value) {
                    ("expr", serde_json::Value::String(e)) => out.push(e.clone()),
                    _ => json_exprs(value, out),
                }
            }
        }
        serde_json::Value::Array(items) => items.iter().for_each(|i| json_exprs(i, out)),
        _ => {}
    }
}

/// The `expr:` values of a rules file: inline, or a block scalar (`|`, `>`, with `-`)
/// on the lines indented deeper than the key.
fn yaml_exprs(text: &str) -> Vec<String> {
    let lines: Vec<&str> = text.lines().collect();
    let mut out = Vec::new();
    for (i, line) in lines.iter().enumerate() {
        let Some(value) = line.trim_start().strip_prefix("expr:") else {
            continue;
        };
        let value = value.trim();
        if !matches!(value, "|" | "|-" | ">" | ">-") {
            out.push(value.to_string());
            continue;
        }
        let indent = line.len() - line.trim_start().len();
        let block: Vec<&str> = lines[i + 1..]
            .iter()
            .take_while(|l| l.trim().is_empty() || l.len() - l.trim_start().len() > indent)
            .copied()
            .collect();
        out.push(block.join("\n"));
    }
    out
}

/// The identifiers starting with `secretd_` in a PromQL expression, outside quoted
/// strings (label values).
fn promql_metrics(expr: &str) -> Vec<String> {
    let mut names = Vec::new();
    let mut chars = expr.chars().peekable();
    let mut word = String::new();
    let mut quote = None;
    while let Some(ch) = chars.next() {
        match quote {
            Some(_) if ch == '\\' => {
                chars.next();
            }
            Some(q) if ch == q => quote = None,
            Some(_) => {}
            None if ch.is_ascii_alphanumeric() || ch == '_' || ch == ':' => word.push(ch),
            None => {
                if matches!(ch, '"' | '\'' | '`') {
                    quote = Some(ch);
                }
                if word.starts_with("secretd_") {
                    names.push(std::mem::take(&mut word));
                }
                word.clear();
            }
        }
    }
    if word.starts_with("secretd_") {
        names.push(word);
    }
    names
}

#[test]
fn promql_names_are_found_outside_label_values() {
    assert_eq!(
        promql_metrics(
            r#"sum by (le) (rate(secretd_a_bucket{x="secretd_not_me"}[5m])) / secretd_b"#
        ),
        ["secretd_a_bucket", "secretd_b"]
    );
}

/// Every method of every service the server hosts (SecretService, the federation
/// service, health, both reflection versions) has its own labels in the histogram's
/// table, with its streaming kind: none is counted as "unknown".
#[test]
fn every_served_method_has_histogram_labels() {
    let sets = [
        secretd::proto::FEDERATION_FILE_DESCRIPTOR_SET,
        tonic_health::pb::FILE_DESCRIPTOR_SET,
        tonic_reflection::pb::v1::FILE_DESCRIPTOR_SET,
        tonic_reflection::pb::v1alpha::FILE_DESCRIPTOR_SET,
    ];
    let mut served = 0;
    for bytes in sets {
        let set = prost_types::FileDescriptorSet::decode(bytes).unwrap();
        for file in &set.file {
            for service in &file.service {
                for method in &service.method {
                    let path = format!("/{}.{}/{}", file.package(), service.name(), method.name());
                    let found = rpc::method_of(&path)
                        .unwrap_or_else(|| panic!("{path} has no labels in telemetry::rpc"));
                    assert_eq!(
                        found.streaming,
                        method.client_streaming() || method.server_streaming(),
                        "{path}"
                    );
                    assert_eq!(found.method, method.name(), "{path}");
                    served += 1;
                }
            }
        }
    }
    assert_eq!(served, rpc::METHODS.len());
}
