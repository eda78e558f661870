//! Compiles `proto/` with protox (pure Rust, no system protoc) and generates the tonic
//! clients and servers. The encoded descriptor set (both services, with imports) is
//! written to OUT_DIR for reflection.
//!
//! Two passes: `protocol.secret.v1` first, then `protocol.secret.federation.v1`, whose
//! references to `protocol.secret.v1` types point at the first pass's types
//! (`crate::proto`) instead of generating them again.

use std::{env, path::PathBuf};

fn main() -> Result<(), Box<dyn std::error::Error>> {
    println!("cargo:rerun-if-changed=proto");
    // store/migrations.rs embeds the SQL files with include_str! (rustc tracks those);
    // this makes a new file in migrations/ rebuild too.
    println!("cargo:rerun-if-changed=migrations");
    // The Postgres tests are compiled as ignored when DATABASE_URL is unset, so a run
    // without Postgres says so in its summary ("N ignored", and the test
    // `postgres_half_skipped_set_DATABASE_URL`) instead of passing them silently.
    // Changing DATABASE_URL therefore rebuilds this package.
    println!("cargo:rustc-check-cfg=cfg(secretd_no_database_url)");
    println!("cargo:rerun-if-env-changed=DATABASE_URL");
    if env::var("DATABASE_URL").map_or(true, |url| url.is_empty()) {
        println!("cargo:rustc-cfg=secretd_no_database_url");
    }
    let out = PathBuf::from(env::var("OUT_DIR")?);

    let mut secret = protox::Compiler::new(["proto"])?;
    secret.include_imports(true).include_source_info(true);
    secret.open_file("protocol/secret/v1/secret.proto")?;
    // SecretService alone, for reflection when federation is off.
    std::fs::write(
        out.join("secret_descriptor.bin"),
        secret.encode_file_descriptor_set(),
    )?;
    tonic_prost_build::configure()
        .build_client(true)
        .build_server(true)
        .compile_fds(secret.file_descriptor_set())?;

    let mut federation = protox::Compiler::new(["proto"])?;
    federation.include_imports(true).include_source_info(true);
    federation.open_file("protocol/secret/federation/v1/federation.proto")?;
    // The federation proto imports secret.proto: its descriptor set holds both files
    // (reflection when federation is on).
    std::fs::write(
        out.join("federation_descriptor.bin"),
        federation.encode_file_descriptor_set(),
    )?;
    // Its own directory: this pass also writes a `protocol.secret.v1.rs` (services only,
    // the messages being extern), which must not replace the first pass's.
    let federation_out = out.join("federation");
    std::fs::create_dir_all(&federation_out)?;
    tonic_prost_build::configure()
        .build_client(true)
        .build_server(true)
        .out_dir(&federation_out)
        .extern_path(".protocol.secret.v1", "crate::proto")
        .compile_fds(federation.file_descriptor_set())?;
    Ok(())
}
