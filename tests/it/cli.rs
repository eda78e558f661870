//! The `secretd` binary: subcommands, flags, environment twins, config file, exit codes.

use std::process::Command;
use std::time::Duration;

use crate::common::*;
use secretd::proto::{FetchKeyRequest, PostKeyRequest};

fn secretd(args: &[&str], cwd: &std::path::Path, envs: &[(&str, &str)]) -> std::process::Output {
    run_binary(args, cwd, envs)
}

async fn terminate(mut p: ServerProcess) -> std::process::ExitStatus {
    let pid = p.child.id().expect("running").to_string();
    assert!(
        Command::new("kill")
            .args(["-TERM", &pid])
            .status()
            .unwrap()
            .success()
    );
    tokio::time::timeout(Duration::from_secs(15), p.child.wait())
        .await
        .expect("exits within 15 s after SIGTERM")
        .unwrap()
}

#[tokio::test]
async fn mint_token_signs_with_the_secret_serve_uses() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let data_arg = data.display().to_string();
    // mint-token before the first start creates the secret, mode 0600 (in a shell set up
    // for secretd-chat too: its SECRETD_CHAT_* variables are not settings)...
    let out = secretd(
        &["mint-token", "--user", "42", "--data-dir", &data_arg],
        dir.path(),
        &[
            ("SECRETD_CHAT_PASSWORD", "pw"),
            ("SECRETD_CHAT_STATE", "alice"),
        ],
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let token = String::from_utf8(out.stdout).unwrap().trim().to_string();
    assert_eq!(token.split('.').count(), 3, "{token}");
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(data.join("jwt-secret"))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600);
    }
    // ...and the server started on the same data dir accepts its tokens.
    let p = spawn_binary(
        &["serve", "--data-dir", &data_arg, "--listen", "127.0.0.1:0"],
        &[],
        dir.path(),
    )
    .await;
    let mut c = client_at(&p.addr, token).await;
    c.post_key(PostKeyRequest {
        key_data: key_pem(1),
    })
    .await
    .unwrap();
    let k = c
        .fetch_key(FetchKeyRequest {
            user_id: 42,
            homeserver: String::new(),
            known_tree_size: 0,
        })
        .await
        .unwrap();
    assert!(k.into_inner().current_key.is_some());
    // A token minted later with the same flags works as well.
    let out = secretd(
        &[
            "mint-token",
            "--user",
            "43",
            "--ttl",
            "60",
            "--data-dir",
            &data_arg,
        ],
        dir.path(),
        &[],
    );
    let mut c43 = client_at(
        &p.addr,
        String::from_utf8(out.stdout).unwrap().trim().to_string(),
    )
    .await;
    c43.post_key(PostKeyRequest {
        key_data: key_pem(2),
    })
    .await
    .unwrap();
    let health = secretd(&["health", "--addr", &p.addr], dir.path(), &[]);
    assert!(health.status.success());
    assert_eq!(String::from_utf8_lossy(&health.stdout).trim(), "SERVING");
    // The URL a client is given works too.
    let url = format!("http://{}/", p.addr);
    let health = secretd(&["health", "--addr", &url], dir.path(), &[]);
    assert!(health.status.success(), "{url}: {health:?}");
    assert_eq!(String::from_utf8_lossy(&health.stdout).trim(), "SERVING");
    let addr = p.addr.clone();
    let status = terminate(p).await;
    assert!(status.success(), "exit after SIGTERM: {status:?}");
    let health = secretd(
        &["health", "--addr", &addr, "--timeout", "2"],
        dir.path(),
        &[],
    );
    assert!(
        !health.status.success(),
        "health must fail when the server is gone"
    );
    assert!(data.join("secretd.db").exists());
}

#[tokio::test]
async fn defaults_env_twins_config_file_and_flags_layer_in_order() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(
        dir.path().join("secretd.toml"),
        "listen = \"127.0.0.1:0\"\ndata_dir = \"from-file\"\nserver_name = \"file.example\"\n",
    )
    .unwrap();
    // The file alone.
    let p = spawn_binary(&[], &[("SECRETD_JWT_SECRET", SECRET)], dir.path()).await;
    assert!(dir.path().join("from-file/secretd.db").exists());
    assert!(terminate(p).await.success());
    // Environment beats the file (and a numeric-looking string is still a string, digit
    // for digit, even where it would not fit a 64-bit number).
    let digits = "1234567890123456789012345678901234567890";
    let p = spawn_binary(
        &["serve"],
        &[
            ("SECRETD_DATA_DIR", "from-env"),
            ("SECRETD_JWT_SECRET", digits),
        ],
        dir.path(),
    )
    .await;
    assert!(dir.path().join("from-env/secretd.db").exists());
    let token = secretd::auth::sign_hs256(digits.as_bytes(), 7, 60, "", "").unwrap();
    let mut c = client_at(&p.addr, token).await;
    c.post_key(PostKeyRequest {
        key_data: key_pem(1),
    })
    .await
    .unwrap();
    assert!(terminate(p).await.success());
    // Flags beat the environment.
    let p = spawn_binary(
        &["serve", "--data-dir", "from-flag"],
        &[
            ("SECRETD_DATA_DIR", "from-env"),
            ("SECRETD_JWT_SECRET", SECRET),
        ],
        dir.path(),
    )
    .await;
    assert!(dir.path().join("from-flag/secretd.db").exists());
    assert!(terminate(p).await.success());
}

#[tokio::test]
async fn configuration_errors_exit_2_with_a_message() {
    let dir = tempfile::tempdir().unwrap();
    for (why, envs, says) in [
        (
            "not a number",
            vec![("SECRETD_MAX_COUNTER_GAP", "lots")],
            "max_counter_gap",
        ),
        (
            "misspelt variable",
            vec![("SECRETD_LISTN", "127.0.0.1:0")],
            "secretd: configuration error: the environment variable SECRETD_LISTN is not a \
             setting (did you mean SECRETD_LISTEN?); every SECRETD_* variable must name a key \
             listed in README \"Configuration\"",
        ),
        (
            "misspelt federation variable",
            vec![("SECRETD_FEDERATION_ENABLD", "true")],
            "SECRETD_FEDERATION_ENABLD is not a setting (did you mean \
             SECRETD_FEDERATION_ENABLED?)",
        ),
        (
            "bad algorithm",
            vec![("SECRETD_JWT_ALGORITHM", "none")],
            "jwt_algorithm",
        ),
    ] {
        let out = secretd(&["serve"], dir.path(), &envs);
        assert_eq!(out.status.code(), Some(2), "{why}");
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(err.contains("configuration error"), "{why}: {err}");
        assert!(err.contains(says), "{why}: {err}");
        assert_eq!(err.lines().count(), 1, "{why}: one line: {err}");
    }
    std::fs::write(dir.path().join("bad.toml"), "lisen = \"x\"\n").unwrap();
    let out = secretd(&["serve", "--config", "bad.toml"], dir.path(), &[]);
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains(
            "configuration error: the config file bad.toml has an unknown key `lisen` (did you \
             mean `listen`?)"
        ),
        "{err}"
    );
    // The default file, a key inside [federation].
    std::fs::write(
        dir.path().join("secretd.toml"),
        "[federation]\nenabld = true\n",
    )
    .unwrap();
    let out = secretd(&["serve"], dir.path(), &[]);
    std::fs::remove_file(dir.path().join("secretd.toml")).unwrap();
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains(
            "the config file secretd.toml (in the working directory) has an unknown key \
             `federation.enabld` (did you mean `enabled`?)"
        ),
        "{err}"
    );
    // A database URL of an unknown kind fails at start with a clear message.
    let out = secretd(
        &[
            "serve",
            "--database-url",
            "mysql://x",
            "--listen",
            "127.0.0.1:0",
        ],
        dir.path(),
        &[("SECRETD_JWT_SECRET", SECRET)],
    );
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("neither postgres"));
}

/// `postgres://user:pw@host/db` as `postgres://user@host/db?password=pw` (sqlx takes the
/// password from either place), and the password.
fn password_in_query(url: &str) -> Option<(String, String)> {
    let (scheme, rest) = url.split_once("://")?;
    let (userinfo, host) = rest.rsplit_once('@')?;
    let (user, pw) = userinfo.split_once(':')?;
    let sep = if host.contains('?') { '&' } else { '?' };
    Some((
        format!("{scheme}://{user}@{host}{sep}password={pw}"),
        pw.to_string(),
    ))
}

#[tokio::test]
async fn database_passwords_never_reach_the_logs() {
    let dir = tempfile::tempdir().unwrap();
    let env = [
        ("SECRETD_JWT_SECRET", SECRET),
        ("SECRETD_LOG_LEVEL", "debug"),
    ];
    for url in [
        "mysql://admin:hunter2-userinfo@db.example/x?password=hunter2-query",
        "postgres://admin:hunter2-userinfo@127.0.0.1:1/x?sslmode=disable&password=hunter2-query",
        "postgresql://admin@127.0.0.1:1/x?PassWord=hunter2-query&connect_timeout=1",
    ] {
        for command in ["serve", "migrate"] {
            let mut args = vec![command, "--database-url", url];
            if command == "serve" {
                args.extend(["--listen", "127.0.0.1:0"]);
            }
            let out = secretd(&args, dir.path(), &env);
            let err = String::from_utf8_lossy(&out.stderr);
            assert_eq!(out.status.code(), Some(1), "{url}: {err}");
            assert!(!err.contains("hunter2"), "{command} {url} leaked:\n{err}");
            assert!(
                err.contains("***"),
                "{command} {url}: the URL, redacted:\n{err}"
            );
        }
    }
    // A server that starts: its ready line names the database without the password.
    let Some(Backend::Postgres(pg)) = Backend::postgres() else {
        return;
    };
    let (url, pw) = password_in_query(&pg).expect("DATABASE_URL has user:password@");
    let p = spawn_binary(
        &["serve", "--database-url", &url, "--listen", "127.0.0.1:0"],
        &env,
        dir.path(),
    )
    .await;
    let log = p.startup_lines.join("\n");
    assert!(
        !log.contains(&format!("password={pw}")) && log.contains("password=***"),
        "{log}"
    );
    assert!(terminate(p).await.success());
}

#[tokio::test]
async fn migrate_runs_alone_and_says_what_it_did() {
    let dir = tempfile::tempdir().unwrap();
    let url = format!("sqlite://{}", dir.path().join("m/secretd.db").display());
    // The embedded migrations are the files of migrations/sqlite, named N_description.sql.
    let mut files: Vec<String> =
        std::fs::read_dir(concat!(env!("CARGO_MANIFEST_DIR"), "/migrations/sqlite"))
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .filter(|name| name.ends_with(".sql"))
            .collect();
    files.sort();
    let listed: Vec<String> = files
        .iter()
        .map(|f| {
            let (n, rest) = f.trim_end_matches(".sql").split_once('_').unwrap();
            format!("{} {}", n.parse::<u32>().unwrap(), rest.replace('_', " "))
        })
        .collect();
    let (last, last_description) = listed.last().unwrap().split_once(' ').unwrap();
    let out = secretd(&["migrate", "--database-url", &url], dir.path(), &[]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{err}");
    assert!(
        err.contains(&format!(
            "applied {} migrations ({}); the database is at version {last}",
            listed.len(),
            listed.join(", ")
        )),
        "{err}"
    );
    assert!(dir.path().join("m/secretd.db").exists());
    let out = secretd(&["migrate", "--database-url", &url], dir.path(), &[]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{err}");
    assert!(
        err.contains(&format!(
            "the database is up to date at version {last} ({last_description})"
        )),
        "{err}"
    );
    if let Some(Backend::Postgres(pg)) = Backend::postgres() {
        let out = secretd(&["migrate", "--database-url", &pg], dir.path(), &[]);
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
}

#[tokio::test]
async fn an_unreachable_database_is_reported_once_with_a_hint() {
    let dir = tempfile::tempdir().unwrap();
    let port = free_port();
    let url = format!("postgres://nobody:x@127.0.0.1:{port}/none");
    let hint = format!("— is Postgres running at 127.0.0.1:{port} and reachable from here");
    for command in ["migrate", "serve"] {
        let mut args = vec![command, "--database-url", &url];
        if command == "serve" {
            args.extend(["--listen", "127.0.0.1:0"]);
        }
        let env = [("SECRETD_JWT_SECRET", SECRET)];
        let out = secretd(&args, dir.path(), &env);
        assert_eq!(out.status.code(), Some(1), "{command}");
        let err = String::from_utf8_lossy(&out.stderr);
        let reports: Vec<&str> = err.lines().filter(|l| l.contains("127.0.0.1:")).collect();
        assert_eq!(reports.len(), 1, "{command} reports it once:\n{err}");
        assert!(
            reports[0].starts_with("secretd: cannot ") && reports[0].ends_with("(database_url)?"),
            "{command}: {err}"
        );
        assert!(reports[0].contains(&hint), "{command}: {err}");
        assert!(
            !err.contains(" ERROR "),
            "{command}: no log line as well: {err}"
        );
        // With JSON logs the one report is a JSON record.
        let env = [
            ("SECRETD_JWT_SECRET", SECRET),
            ("SECRETD_LOG_FORMAT", "json"),
        ];
        let out = secretd(&args, dir.path(), &env);
        let err = String::from_utf8_lossy(&out.stderr);
        let reports: Vec<&str> = err.lines().filter(|l| l.contains("127.0.0.1:")).collect();
        assert_eq!(reports.len(), 1, "{command} reports it once:\n{err}");
        let record: serde_json::Value = serde_json::from_str(reports[0]).unwrap();
        assert_eq!(record["level"], "ERROR", "{err}");
        assert!(record["message"].as_str().unwrap().contains(&hint), "{err}");
    }
    // Postgres refusing (not the network) gets no hint: its own words say why.
    if let Some(Backend::Postgres(pg)) = Backend::postgres() {
        let (scheme, rest) = pg.split_once("://").unwrap();
        let host = rest.rsplit_once('@').unwrap().1;
        let wrong = format!("{scheme}://nobody:x@{host}");
        let out = secretd(&["migrate", "--database-url", &wrong], dir.path(), &[]);
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(1), "{err}");
        assert!(!err.contains("is Postgres running"), "{err}");
    }
}

#[tokio::test]
async fn health_says_what_went_wrong_and_what_to_check() {
    let dir = tempfile::tempdir().unwrap();
    let health = |addr: String| {
        let cwd = dir.path().to_path_buf();
        tokio::task::spawn_blocking(move || {
            let out = secretd(&["health", "--addr", &addr, "--timeout", "1"], &cwd, &[]);
            assert_eq!(out.status.code(), Some(1), "{addr}");
            (
                String::from_utf8_lossy(&out.stdout).trim().to_string(),
                String::from_utf8_lossy(&out.stderr).trim().to_string(),
            )
        })
    };
    // A URL of another scheme.
    let (_, err) = health("ftp://127.0.0.1:50051".into()).await.unwrap();
    assert_eq!(
        err,
        "secretd: --addr \"ftp://127.0.0.1:50051\" has the scheme \"ftp\"; give HOST:PORT \
         (or an http:// or https:// URL), e.g. --addr 127.0.0.1:50051"
    );
    // Nothing listens.
    let closed = format!("127.0.0.1:{}", free_port());
    let (_, err) = health(closed.clone()).await.unwrap();
    assert_eq!(
        err,
        format!(
            "secretd: cannot reach a server at {closed}: connection refused — is secretd \
             running and listening there (its `listen` setting)?"
        )
    );
    // Something accepts connections and never answers.
    let silent = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let silent_addr = silent.local_addr().unwrap().to_string();
    let (_, err) = health(silent_addr.clone()).await.unwrap();
    assert!(
        err.starts_with(&format!(
            "secretd: no answer from {silent_addr} within 1 s — "
        )),
        "{err}"
    );
    // A server that answers NOT_SERVING (as secretd does while it shuts down).
    let (reporter, service) = tonic_health::server::health_reporter();
    reporter
        .set_service_status("", tonic_health::ServingStatus::NotServing)
        .await;
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap().to_string();
    let server = tokio::spawn(
        tonic::transport::Server::builder()
            .add_service(service)
            .serve_with_incoming(tokio_stream::wrappers::TcpListenerStream::new(listener)),
    );
    let (out, err) = health(addr.clone()).await.unwrap();
    server.abort();
    assert_eq!(out, "NOT_SERVING", "the status name stays on stdout");
    assert!(
        err.starts_with(&format!(
            "secretd: the server at {addr} answers but reports NOT_SERVING: it is shutting down"
        )),
        "{err}"
    );
}

/// A free port on 127.0.0.1 (bound and released).
fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// One HTTP/1.1 exchange over a raw socket; returns the whole response as text.
async fn http1(addr: &str, request: &[u8]) -> String {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
    s.write_all(request).await.unwrap();
    let mut out = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(5), s.read_to_end(&mut out)).await;
    String::from_utf8_lossy(&out).into_owned()
}

#[tokio::test]
async fn metrics_endpoint_counts_rpcs() {
    let dir = tempfile::tempdir().unwrap();
    let metrics = format!("127.0.0.1:{}", free_port());
    let p = spawn_binary(
        &[
            "serve",
            "--listen",
            "127.0.0.1:0",
            "--metrics-listen",
            &metrics,
        ],
        &[("SECRETD_JWT_SECRET", SECRET)],
        dir.path(),
    )
    .await;
    // The start-up line names the endpoint by its config key.
    assert!(
        p.startup_lines
            .iter()
            .any(|l| l.contains("Prometheus metrics at")
                && l.contains(&format!("metrics_listen={metrics}"))),
        "{:#?}",
        p.startup_lines
    );
    let mut c = client_at(&p.addr, token(5, 60)).await;
    c.post_key(PostKeyRequest {
        key_data: key_pem(1),
    })
    .await
    .unwrap();
    c.post_key(PostKeyRequest {
        key_data: b"junk".to_vec(),
    })
    .await
    .unwrap_err();
    let page = http1(
        &metrics,
        b"GET /metrics HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
    )
    .await;
    assert!(page.starts_with("HTTP/1.1 200"), "{page}");
    assert!(
        page.contains("secretd_rpc_total{method=\"PostKey\",code=\"Ok\"} 1"),
        "{page}"
    );
    assert!(
        page.contains("secretd_rpc_total{method=\"PostKey\",code=\"InvalidArgument\"} 1"),
        "{page}"
    );
    assert!(terminate(p).await.success());
}

#[tokio::test]
async fn grpc_web_and_cors_for_browsers() {
    let dir = tempfile::tempdir().unwrap();
    let p = spawn_binary(
        &["serve", "--listen", "127.0.0.1:0"],
        &[("SECRETD_JWT_SECRET", SECRET)],
        dir.path(),
    )
    .await;
    // CORS preflight from a page on another origin.
    let preflight = http1(
        &p.addr,
        b"OPTIONS /protocol.secret.v1.SecretService/FetchPrivateKey HTTP/1.1\r\nHost: x\r\n\
          Origin: https://chat.example\r\nAccess-Control-Request-Method: POST\r\n\
          Access-Control-Request-Headers: authorization,content-type,x-grpc-web\r\n\
          Connection: close\r\n\r\n",
    )
    .await
    .to_ascii_lowercase();
    assert!(preflight.starts_with("http/1.1 200"), "{preflight}");
    assert!(
        preflight.contains("access-control-allow-origin: *"),
        "{preflight}"
    );
    // A gRPC-Web call over HTTP/1.1: an empty FetchPrivateKeyRequest frame.
    let call = |auth: String| {
        format!(
            "POST /protocol.secret.v1.SecretService/FetchPrivateKey HTTP/1.1\r\nHost: x\r\n\
             Content-Type: application/grpc-web+proto\r\nX-Grpc-Web: 1\r\n{auth}\
             Content-Length: 5\r\nConnection: close\r\n\r\n\0\0\0\0\0"
        )
        .into_bytes()
    };
    let anonymous = http1(&p.addr, &call(String::new()))
        .await
        .to_ascii_lowercase();
    assert!(anonymous.contains("grpc-status: 16"), "{anonymous}");
    let signed = http1(
        &p.addr,
        &call(format!("Authorization: Bearer {}\r\n", token(9, 60))),
    )
    .await
    .to_ascii_lowercase();
    assert!(
        signed.contains("grpc-status: 5"),
        "NOT_FOUND: nothing stored yet; {signed}"
    );
    assert!(terminate(p).await.success());
}
