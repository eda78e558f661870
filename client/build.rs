//! Compiles the server's API (`../proto`, client stubs only) and the client's own E2EE
//! wire structures (`proto/`) with protox: pure Rust, no system protoc. A second pass
//! compiles the federation service, whose `ServerKey` tells a device its homeserver's
//! name (needed to name itself in rooms on other homeservers).

use std::env;
use std::path::PathBuf;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    println!("cargo:rerun-if-changed=../proto");
    println!("cargo:rerun-if-changed=proto");
    let mut compiler = protox::Compiler::new(["../proto", "proto"])?;
    compiler.include_imports(true).include_source_info(true);
    compiler.open_file("protocol/secret/v1/secret.proto")?;
    compiler.open_file("secretd/e2ee/v1/e2ee.proto")?;
    tonic_prost_build::configure()
        .build_client(true)
        .build_server(false)
        .compile_fds(compiler.file_descriptor_set())?;

    let mut federation = protox::Compiler::new(["../proto"])?;
    federation.include_imports(true).include_source_info(true);
    federation.open_file("protocol/secret/federation/v1/federation.proto")?;
    // Its own directory: this pass also writes a `protocol.secret.v1.rs` (the messages
    // being extern), which must not replace the first pass's.
    let out = PathBuf::from(env::var("OUT_DIR")?).join("federation");
    std::fs::create_dir_all(&out)?;
    tonic_prost_build::configure()
        .build_client(true)
        .build_server(false)
        .out_dir(&out)
        .extern_path(".protocol.secret.v1", "crate::proto::secret")
        .compile_fds(federation.file_descriptor_set())?;
    Ok(())
}
