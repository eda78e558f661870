//! Compiles `proto/` with protox (pure Rust, no system protoc) and generates the tonic
//! client and server. The encoded descriptor set is written to OUT_DIR for reflection.

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
    let mut compiler = protox::Compiler::new(["proto"])?;
    compiler.include_imports(true).include_source_info(true);
    compiler.open_file("protocol/secret/v1/secret.proto")?;
    let out = PathBuf::from(env::var("OUT_DIR")?);
    std::fs::write(
        out.join("secret_descriptor.bin"),
        compiler.encode_file_descriptor_set(),
    )?;
    tonic_prost_build::configure()
        .build_client(true)
        .build_server(true)
        .compile_fds(compiler.file_descriptor_set())?;
    Ok(())
}
