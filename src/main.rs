//! The `secretd` binary: parses the command line and runs a subcommand.

use std::process::ExitCode;

use clap::Parser;
use secretd::cli::{Cli, Command, ServeArgs};
use secretd::{auth, config, server, telemetry};

fn main() -> ExitCode {
    let cli = Cli::parse();
    let command = cli
        .command
        .unwrap_or_else(|| Command::Serve(ServeArgs::default()));
    let (file, overrides) = match &command {
        Command::Serve(args) => (args.common.config.clone(), args.overrides()),
        Command::Migrate(args) => (args.config.clone(), args.overrides()),
        Command::MintToken(args) => (args.common.config.clone(), args.common.overrides()),
    };
    let settings = match config::load(file.as_deref(), &overrides) {
        Ok(s) => s,
        Err(err) => {
            eprintln!("secretd: configuration error: {err}");
            return ExitCode::from(2);
        }
    };
    if let Command::MintToken(args) = &command {
        return match auth::mint_token(&settings, args.user, args.ttl) {
            Ok(token) => {
                println!("{token}");
                ExitCode::SUCCESS
            }
            Err(err) => {
                eprintln!("secretd: {err}");
                ExitCode::FAILURE
            }
        };
    }
    telemetry::init(&settings);
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
            eprintln!("secretd: {err:#}");
            ExitCode::FAILURE
        }
    }
}
