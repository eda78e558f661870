//! The `secretd` binary: parses the command line and runs a subcommand.

use std::process::ExitCode;

use clap::Parser;
use secretd::cli::{Cli, Command, HealthArgs, ServeArgs};
use secretd::{auth, config, federation, server, telemetry};

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
    if let Command::MintToken(args) = &command {
        return match auth::mint_token(&settings, args.user, args.ttl) {
            Ok(token) => {
                println!("{token}");
                ExitCode::SUCCESS
            }
            Err(err) => failure(&err),
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
            Err(err) => failure(&err),
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
    let result = runtime.block_on(async {
        match command {
            Command::Migrate(_) => server::migrate_only(&settings).await,
            _ => server::serve(settings).await,
        }
    });
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            tracing::error!("{err:#}");
            failure(&err)
        }
    }
}

/// Reports a failed command: exit 2 for a configuration problem (as for errors in the
/// settings themselves), 1 for anything else.
fn failure(err: &anyhow::Error) -> ExitCode {
    if err.chain().any(|e| e.is::<config::Misconfigured>()) {
        eprintln!("secretd: configuration error: {err:#}");
        ExitCode::from(2)
    } else {
        eprintln!("secretd: {err:#}");
        ExitCode::FAILURE
    }
}

/// `secretd health`: exit 0 when the server at `--addr` reports SERVING.
fn health(args: &HealthArgs) -> ExitCode {
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
    let addr = args.addr.clone();
    let check = async move {
        use tonic_health::pb::{HealthCheckRequest, health_client::HealthClient};
        let channel = tonic::transport::Endpoint::from_shared(format!("http://{addr}"))?
            .connect()
            .await?;
        let status = HealthClient::new(channel)
            .check(HealthCheckRequest {
                service: String::new(),
            })
            .await?
            .into_inner()
            .status();
        Ok::<_, Box<dyn std::error::Error>>(status)
    };
    let limit = std::time::Duration::from_secs(args.timeout);
    match runtime.block_on(async move { tokio::time::timeout(limit, check).await }) {
        Ok(Ok(tonic_health::pb::health_check_response::ServingStatus::Serving)) => {
            println!("SERVING");
            ExitCode::SUCCESS
        }
        Ok(Ok(status)) => {
            println!("{}", status.as_str_name());
            ExitCode::FAILURE
        }
        Ok(Err(err)) => {
            eprintln!("secretd: health check of {} failed: {err}", args.addr);
            ExitCode::FAILURE
        }
        Err(_) => {
            eprintln!("secretd: health check of {} timed out", args.addr);
            ExitCode::FAILURE
        }
    }
}
