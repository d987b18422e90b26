//! Compiles the project's `.proto` files into Rust at build time.
//!
//! `protox` parses the files into a `FileDescriptorSet` in pure Rust, and
//! `tonic-prost-build` turns that set into messages, clients and servers, so
//! no system `protoc` is needed on any machine that builds synod.

use std::path::PathBuf;

/// Every file compiled, relative to the `proto/` include root. The import
/// paths inside the files are relative to the same root.
const PROTO_FILES: [&str; 6] = [
    "mvccpb/kv.proto",
    "authpb/auth.proto",
    "etcdserverpb/rpc.proto",
    "v3lockpb/v3lock.proto",
    "v3electionpb/v3election.proto",
    "grpc/health/v1/health.proto",
];

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let manifest_directory = PathBuf::from(std::env::var("CARGO_MANIFEST_DIR")?);
    let include_directory = manifest_directory.join("proto");

    println!("cargo:rerun-if-changed=build.rs");
    for file in PROTO_FILES {
        println!("cargo:rerun-if-changed={}", include_directory.join(file).display());
    }

    let file_descriptor_set = protox::compile(PROTO_FILES, [&include_directory])?;

    tonic_prost_build::configure()
        .build_server(true)
        .build_client(true)
        // Keys, values and blobs are handed around without copying.
        .bytes(".")
        .emit_rerun_if_changed(false)
        .compile_fds(file_descriptor_set)?;
    Ok(())
}
