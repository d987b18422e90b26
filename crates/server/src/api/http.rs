//! One client port for gRPC (HTTP/2) and plain HTTP/1 endpoints.
//!
//! The gRPC services become routes of one axum router beside `/health`,
//! `/version` and `/metrics`; hyper's automatic protocol detection serves
//! HTTP/2 without TLS (what etcdctl speaks) and HTTP/1 (curl, Prometheus) on
//! the same listener.

use std::time::Duration;

use axum::http::{header, StatusCode};
use axum::response::IntoResponse;
use axum::routing::get;
use axum::serve::ListenerExt;
use synod_proto::etcdserverpb::cluster_server::ClusterServer;
use synod_proto::etcdserverpb::kv_server::KvServer;
use synod_proto::etcdserverpb::lease_server::LeaseServer;
use synod_proto::etcdserverpb::maintenance_server::MaintenanceServer;
use synod_proto::etcdserverpb::watch_server::WatchServer;
use synod_proto::grpc::health::v1::health_server::HealthServer;
use synod_proto::v3electionpb::election_server::ElectionServer;
use synod_proto::v3lockpb::lock_server::LockServer;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

use super::maintenance::ETCD_VERSION;
use super::{Api, GRPC_MESSAGE_BYTES_MAX};

/// How long open streams (watches, keep-alives) may take to finish after a
/// shutdown starts before the listener is dropped anyway.
pub const SHUTDOWN_GRACE: Duration = Duration::from_secs(2);

/// The router of every client-facing endpoint.
pub fn router(api: Api) -> axum::Router {
    let size = GRPC_MESSAGE_BYTES_MAX;
    let routes = tonic::service::Routes::new(
        KvServer::new(api.clone())
            .max_decoding_message_size(size)
            .max_encoding_message_size(size),
    )
    .add_service(WatchServer::new(api.clone()).max_encoding_message_size(size))
    .add_service(LeaseServer::new(api.clone()))
    .add_service(ClusterServer::new(api.clone()))
    .add_service(MaintenanceServer::new(api.clone()))
    .add_service(LockServer::new(api.clone()))
    .add_service(ElectionServer::new(api.clone()))
    .add_service(HealthServer::new(api.clone()));
    let health_api = api.clone();
    let metrics_api = api;
    routes
        .into_axum_router()
        .route(
            "/health",
            get(move || {
                let api = health_api.clone();
                async move {
                    let status = api.shared().current_status();
                    let body =
                        |health: bool, reason: &str| format!("{{\"health\":\"{health}\",\"reason\":\"{reason}\"}}");
                    let json = [(header::CONTENT_TYPE, "application/json")];
                    if status.master.is_some() {
                        (StatusCode::OK, json, body(true, "")).into_response()
                    } else {
                        (StatusCode::SERVICE_UNAVAILABLE, json, body(false, "NO MASTER")).into_response()
                    }
                }
            }),
        )
        .route(
            "/version",
            get(|| async {
                (
                    [(header::CONTENT_TYPE, "application/json")],
                    format!(
                        "{{\"etcdserver\":\"{ETCD_VERSION}\",\"etcdcluster\":\"{ETCD_VERSION}\",\"synod\":\"{}\"}}",
                        env!("CARGO_PKG_VERSION")
                    ),
                )
            }),
        )
        .route(
            "/metrics",
            get(move || {
                let api = metrics_api.clone();
                async move {
                    (
                        [(header::CONTENT_TYPE, "text/plain; version=0.0.4")],
                        api.shared().metrics.render(),
                    )
                }
            }),
        )
}

/// Serves the client API on `listener` until `shutdown` is cancelled.
pub async fn serve(api: Api, listener: TcpListener, shutdown: CancellationToken) -> std::io::Result<()> {
    let router = router(api);
    let graceful = shutdown.clone();
    // Replies are small frames written one after another; with Nagle's algorithm on, each one
    // after the first waits for the client's delayed ACK (about 40 ms on Linux). The peer port
    // sets the same option.
    let listener = listener.tap_io(|stream| {
        if let Err(error) = stream.set_nodelay(true) {
            tracing::warn!(%error, "could not set TCP_NODELAY on a client connection");
        }
    });
    let server = axum::serve(listener, router).with_graceful_shutdown(async move { graceful.cancelled().await });
    tokio::select! {
        result = server => result,
        _ = async {
            shutdown.cancelled().await;
            tokio::time::sleep(SHUTDOWN_GRACE).await;
        } => Ok(()),
    }
}
