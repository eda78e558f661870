//! Compiles the server's API (`../proto`, client stubs only) and the client's own E2EE
//! wire structures (`proto/`) with protox: pure Rust, no system protoc.

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
    Ok(())
}
