//! The etcd v3 client API as Rust types: messages (prost), gRPC servers and
//! clients (tonic).
//!
//! synod speaks etcd's wire protocol so that `etcdctl` and etcd client
//! libraries work against it unchanged. The `.proto` files under `proto/` are
//! this project's own, written to match etcd's package names, service names,
//! method names, message names and field numbers; `build.rs` compiles them
//! with `protox` and `tonic-prost-build`, so no system `protoc` is needed.
//!
//! # Layout
//!
//! - [`mvccpb`]: `KeyValue` and `Event`, the records of the versioned store.
//! - [`authpb`]: records used by the `Auth` service's requests.
//! - [`etcdserverpb`]: the `KV`, `Watch`, `Lease`, `Cluster`, `Maintenance`
//!   and `Auth` services with their messages, including `ResponseHeader`.
//! - [`v3lockpb`]: the server-side `Lock` service.
//! - [`v3electionpb`]: the server-side `Election` service.
//! - [`grpc::health::v1`]: the standard gRPC `Health` service.
//!
//! Each service `Foo` has a client in `foo_client::FooClient` and a server
//! trait in `foo_server::Foo` wrapped by `foo_server::FooServer`.
//!
//! `bytes` fields are [`prost::bytes::Bytes`], so keys, values and snapshot
//! blobs move between layers without copying.

/// Multi-version key-value records (`mvccpb`).
pub mod mvccpb {
    #![allow(missing_docs, reason = "generated code; documented in the .proto file")]
    tonic::include_proto!("mvccpb");
}

/// Auth records (`authpb`).
pub mod authpb {
    #![allow(missing_docs, reason = "generated code; documented in the .proto file")]
    tonic::include_proto!("authpb");
}

/// The etcd v3 client services (`etcdserverpb`).
pub mod etcdserverpb {
    #![allow(missing_docs, reason = "generated code; documented in the .proto file")]
    #![allow(clippy::large_enum_variant, reason = "generated oneof enums mirror the wire format")]
    tonic::include_proto!("etcdserverpb");
}

/// The server-side lock service (`v3lockpb`).
pub mod v3lockpb {
    #![allow(missing_docs, reason = "generated code; documented in the .proto file")]
    tonic::include_proto!("v3lockpb");
}

/// The server-side election service (`v3electionpb`).
pub mod v3electionpb {
    #![allow(missing_docs, reason = "generated code; documented in the .proto file")]
    tonic::include_proto!("v3electionpb");
}

/// The gRPC standard services (`grpc.*`).
pub mod grpc {
    /// Health checking (`grpc.health`).
    pub mod health {
        /// Version 1 of the health checking protocol (`grpc.health.v1`).
        pub mod v1 {
            #![allow(missing_docs, reason = "generated code; documented in the .proto file")]
            tonic::include_proto!("grpc.health.v1");
        }
    }
}
