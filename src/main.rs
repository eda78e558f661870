//! The `secretd` binary: parses the command line and runs a subcommand.

use std::process::ExitCode;

use clap::Parser;
use secretd::cli::{AdminCommand, Cli, Command, HealthArgs, ServeArgs};
use secretd::config::LogFormat;
use secretd::{admin, auth, config, federation, server, telemetry};

fn main() -> ExitCode {
    let cli = Cli::parse();
    let command = cli
        .command
        .unwrap_or_else(|| Command::Serve(ServeArgs::default()));
    if let Command::Health(args) = &command {
        return health(args);
    }
    let (file, overrides) = match &command {
        Command::Serve(args) => (args.common.config.clone(), args.overrides()),
        Command::Migrate(args) => (args.config.clone(), args.overrides()),
        Command::MintToken(args) => (args.common.config.clone(), args.common.overrides()),
        Command::FederationKey(args) => (args.config.clone(), args.overrides()),
        Command::KtVerify(args) => (args.common.config.clone(), args.common.overrides()),
        Command::Admin(admin) => (admin.common().config.clone(), admin.common().overrides()),
        Command::Health(_) => unreachable!("handled above"),
    };
    let settings = match config::load(file.as_deref(), &overrides) {
        Ok(s) => s,
        Err(err) => {
            eprintln!("secretd: configuration error: {err}");
            return ExitCode::from(2);
        }
    };
    telemetry::init(&settings);
    let log_format = settings.log_format;
    if let Command::MintToken(args) = &command {
        return match auth::mint_token(&settings, args.user, args.ttl) {
            Ok(token) => {
                println!("{token}");
                ExitCode::SUCCESS
            }
            Err(err) => failure(log_format, &err),
        };
    }
    if let Command::FederationKey(_) = &command {
        return match federation::key::load_or_create(&settings) {
            Ok(key) => {
                println!(
                    "{} {} {}",
                    settings.server_name,
                    key.key_id(),
                    key.public_key_base64()
                );
                ExitCode::SUCCESS
            }
            Err(err) => failure(log_format, &err),
        };
    }
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(err) => {
            eprintln!("secretd: cannot start the async runtime: {err}");
            return ExitCode::FAILURE;
        }
    };
    if let Command::Admin(admin) = command {
        return runtime.block_on(run_admin(&settings, admin));
    }
    let result = runtime.block_on(async {
        match command {
            Command::Migrate(_) => server::migrate_only(&settings).await,
            Command::KtVerify(args) => server::kt_verify(&settings, args.public_key.as_deref())
                .await
                .map(|report| println!("{report}")),
            _ => server::serve(settings).await,
        }
    });
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => failure(log_format, &err),
    }
}

/// Runs `secretd admin …`: its report on stdout, exit 0; a failure as [`failure`] says;
/// `admin backup` on Postgres prints the procedure and exits
/// [`admin::backup::PROCEDURE_EXIT_CODE`].
async fn run_admin(settings: &config::Settings, command: AdminCommand) -> ExitCode {
    let log_format = settings.log_format;
    match command {
        AdminCommand::Stats(args) => match admin::stats(settings, args.json).await {
            Ok(report) => {
                println!("{report}");
                ExitCode::SUCCESS
            }
            Err(err) => failure(log_format, &err),
        },
        AdminCommand::Backup(args) => match admin::backup::run(settings, &args.to).await {
            Ok(admin::backup::Outcome::Written(report)) => {
                println!("{report}");
                ExitCode::SUCCESS
            }
            Ok(admin::backup::Outcome::Procedure(text)) => {
                print!("{text}");
                eprintln!(
                    "secretd: nothing written: a Postgres database is backed up with pg_dump, \
                     as printed above (exit {})",
                    admin::backup::PROCEDURE_EXIT_CODE
                );
                ExitCode::from(admin::backup::PROCEDURE_EXIT_CODE)
            }
            Err(err) => failure(log_format, &err.into_anyhow()),
        },
        AdminCommand::EraseUser(args) => {
            let erased =
                admin::erase::run(settings, args.user, &args.homeserver, args.erase_messages);
            match erased.await {
                Ok(report) => {
                    println!("{report}");
                    ExitCode::SUCCESS
                }
                Err(err) => failure(log_format, &err),
            }
        }
    }
}

/// Reports a failed command once, in the log format in force: a `secretd: …` line on
/// stderr for a person (`log_format = text`), or one ERROR record for a log pipeline
/// (`json`). Exit 2 for a configuration problem (as for errors in the settings
/// themselves), 1 for anything else.
fn failure(log_format: LogFormat, err: &anyhow::Error) -> ExitCode {
    let (prefix, code) = if err.chain().any(|e| e.is::<config::Misconfigured>()) {
        ("configuration error: ", 2)
    } else {
        ("", 1)
    };
    match log_format {
        LogFormat::Json => tracing::error!(exit_code = code, "{prefix}{err:#}"),
        LogFormat::Text => eprintln!("secretd: {prefix}{err:#}"),
    }
    ExitCode::from(code)
}

/// `secretd health`: exit 0 when the server at `--addr` reports SERVING. Otherwise exit 1
/// with a sentence on stderr saying what went wrong and what to check (the status name,
/// when there is one, still goes to stdout).
fn health(args: &HealthArgs) -> ExitCode {
    use tonic_health::pb::health_check_response::ServingStatus;
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(err) => {
            eprintln!("secretd: cannot start the async runtime: {err}");
            return ExitCode::FAILURE;
        }
    };
    // A URL is taken as what it means (people paste the one their clients use): `http://`
    // is HOST:PORT, `https://` is HOST:PORT with `--tls`.
    let (addr, url_tls) = match args.addr.split_once("://") {
        None => (args.addr.as_str(), false),
        Some((scheme, rest)) if scheme.eq_ignore_ascii_case("http") => (rest, false),
        Some((scheme, rest)) if scheme.eq_ignore_ascii_case("https") => (rest, true),
        Some((scheme, _)) => {
            eprintln!(
                "secretd: --addr {:?} has the scheme {scheme:?}; give HOST:PORT (or an \
                 http:// or https:// URL), e.g. --addr 127.0.0.1:50051",
                args.addr
            );
            return ExitCode::FAILURE;
        }
    };
    let addr = addr.trim_end_matches('/');
    let tls = url_tls || args.tls || args.ca_file.is_some() || args.tls_name.is_some();
    let scheme = if tls { "https" } else { "http" };
    let Ok(mut endpoint) = tonic::transport::Endpoint::from_shared(format!("{scheme}://{addr}"))
    else {
        eprintln!(
            "secretd: {addr:?} is not an address; give HOST:PORT, e.g. --addr 127.0.0.1:50051"
        );
        return ExitCode::FAILURE;
    };
    if tls {
        let config = match secretd::tls::client_tls(args.ca_file.as_deref(), "--ca-file") {
            Ok(config) => config,
            Err(e) => {
                eprintln!("secretd: {e}");
                return ExitCode::FAILURE;
            }
        };
        let config = match &args.tls_name {
            Some(name) => config.domain_name(name),
            None => config,
        };
        endpoint = match endpoint.tls_config(config) {
            Ok(endpoint) => endpoint,
            Err(e) => {
                eprintln!("secretd: cannot set up TLS to {addr}: {}", root_cause(&e));
                return ExitCode::FAILURE;
            }
        };
    }
    let check = async move {
        use tonic_health::pb::{HealthCheckRequest, health_client::HealthClient};
        let channel = endpoint.connect().await.map_err(Unhealthy::Unreachable)?;
        let answer = HealthClient::new(channel)
            .check(HealthCheckRequest {
                service: String::new(),
            })
            .await
            .map_err(Unhealthy::Refused)?;
        Ok::<_, Unhealthy>(answer.into_inner().status())
    };
    let limit = std::time::Duration::from_secs(args.timeout);
    let outcome = runtime.block_on(async move { tokio::time::timeout(limit, check).await });
    // What to check about TLS: whether the server serves it (and which CA signed its
    // certificate) when we spoke TLS; whether it does when we did not and it answered
    // nonsense. "Connection refused" in plaintext needs no such hint.
    let (unreachable_hint, refused_hint) = match tls {
        true => {
            let hint = ", does it serve TLS, and does --ca-file hold the CA of its certificate";
            (hint, hint)
        }
        false => ("", ", or does it serve TLS (then give --tls or --ca-file)"),
    };
    let complaint = match outcome {
        Ok(Ok(ServingStatus::Serving)) => {
            println!("SERVING");
            return ExitCode::SUCCESS;
        }
        Ok(Ok(status)) => {
            println!("{}", status.as_str_name());
            let why = match status {
                ServingStatus::NotServing => "it is shutting down or not ready yet; see its log",
                ServingStatus::ServiceUnknown => "it does not know the service asked about",
                _ => "its state is unknown; see its log",
            };
            format!(
                "the server at {addr} answers but reports {}: {why}",
                status.as_str_name()
            )
        }
        Ok(Err(Unhealthy::Unreachable(err))) => format!(
            "cannot reach a server at {addr}: {} — is secretd running and listening there \
             (its `listen` setting){unreachable_hint}?",
            root_cause(&err),
        ),
        Ok(Err(Unhealthy::Refused(status))) => format!(
            "the server at {addr} did not answer the health check ({:?}: {}) — is {addr} \
             secretd's gRPC address (its `listen` setting), not its metrics port or another \
             service{refused_hint}?",
            status.code(),
            match std::error::Error::source(&status) {
                Some(_) => root_cause(&status),
                None => status.message().to_string(),
            }
        ),
        Err(_) => format!(
            "no answer from {addr} within {} s — is {addr} secretd's gRPC address (its \
             `listen` setting), and is the server overloaded? (--timeout sets the wait)",
            args.timeout
        ),
    };
    eprintln!("secretd: {complaint}");
    ExitCode::FAILURE
}

/// Why a health check got no status.
enum Unhealthy {
    /// No connection could be made.
    Unreachable(tonic::transport::Error),
    /// Connected, but the call failed.
    Refused(tonic::Status),
}

/// The innermost reason in an error's source chain, in words: "connection refused"
/// rather than "transport error".
fn root_cause(err: &(dyn std::error::Error + 'static)) -> String {
    use std::io::ErrorKind;
    let mut innermost = err;
    while let Some(next) = innermost.source() {
        innermost = next;
        if let Some(io) = next.downcast_ref::<std::io::Error>() {
            return match io.kind() {
                kind @ (ErrorKind::ConnectionRefused
                | ErrorKind::ConnectionReset
                | ErrorKind::TimedOut
                | ErrorKind::HostUnreachable
                | ErrorKind::NetworkUnreachable) => kind.to_string(),
                _ => io.to_string(),
            };
        }
    }
    innermost.to_string()
}
