//! Compiles the project's `.proto` files into Rust at build time.
//!
//! `protox` parses the files into a `FileDescriptorSet` in pure Rust,
//! `tonic-prost-build` turns that set into messages, clients and servers, and
//! `pbjson-build` into the messages' proto3 JSON mapping (for the JSON
//! gateway), so no system `protoc` is needed on any machine that builds synod.

use std::path::PathBuf;

use prost::Message;

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

    // JSON as etcd's gateway writes it (grpc-gateway's JSONPb with
    // OrigName): field names as in the .proto, 64-bit integers as strings,
    // bytes in base64, enums by name, default values left out. Reading
    // accepts both field name spellings, as grpc-gateway does.
    pbjson_build::Builder::new()
        .register_descriptors(&file_descriptor_set.encode_to_vec())?
        .preserve_proto_field_names()
        .build(&[".mvccpb", ".authpb", ".etcdserverpb", ".v3lockpb", ".v3electionpb"])?;
    rename_url_fields()?;

    tonic_prost_build::configure()
        .build_server(true)
        .build_client(true)
        // Keys, values and blobs are handed around without copying.
        .bytes(".")
        .emit_rerun_if_changed(false)
        .compile_fds(file_descriptor_set)?;
    Ok(())
}

/// etcd names two fields `peerURLs` and `clientURLs`, which prost would turn
/// into the Rust fields `peer_ur_ls` and `client_ur_ls`; the .proto keeps
/// `peer_urls` and `client_urls` (same numbers, same wire), and their JSON
/// names are set to etcd's here, in the JSON code pbjson wrote.
fn rename_url_fields() -> Result<(), Box<dyn std::error::Error>> {
    let path = PathBuf::from(std::env::var("OUT_DIR")?).join("etcdserverpb.serde.rs");
    let code = std::fs::read_to_string(&path)?;
    let renamed = code
        .replace("\"peer_urls\"", "\"peerURLs\"")
        .replace("\"client_urls\"", "\"clientURLs\"");
    if renamed == code {
        return Err("pbjson's output no longer names peer_urls or client_urls".into());
    }
    std::fs::write(path, renamed)?;
    Ok(())
}
