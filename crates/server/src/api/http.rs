//! One client port for gRPC (HTTP/2) and plain HTTP/1 endpoints.
//!
//! The gRPC services become routes of one axum router beside `/health`,
//! `/version` and `/metrics`; hyper's automatic protocol detection serves
//! HTTP/2 (what etcdctl speaks) and HTTP/1 (curl, Prometheus) on the same
//! listener, over TLS when the member has a certificate (see [`crate::tls`]).

use std::sync::Arc;
use std::time::Duration;

use axum::http::{header, StatusCode};
use axum::response::IntoResponse;
use axum::routing::get;
use synod_proto::etcdserverpb::auth_server::AuthServer;
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
use crate::tls::ClientCertificate;

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
    .add_service(HealthServer::new(api.clone()))
    .add_service(AuthServer::new(api.clone()));
    let gateway = super::gateway::router(&api).unwrap_or_default();
    let health_api = api.clone();
    let consistency_api = api.clone();
    let metrics_api = api;
    routes
        .into_axum_router()
        .merge(gateway)
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
            "/consistency",
            get(consistency).post(consistency).with_state(consistency_api),
        )
        .merge(super::ui::router(metrics_api.clone()))
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

/// `/consistency`: runs a consistency check now at the master and answers
/// its report as JSON (each member's state hash at the instance compared,
/// the majority's, and the members in the minority, whose CORRUPT alarms it
/// raised); a follower answers 503 with the master's client URL, if known.
async fn consistency(axum::extract::State(api): axum::extract::State<Api>) -> axum::response::Response {
    let json = [(header::CONTENT_TYPE, "application/json")];
    match api.check_consistency().await {
        Ok(report) => {
            let hex = |value: u64| format!("{value:016x}");
            let body = serde_json::json!({
                "instance": report.instance,
                "hashes": report.hashes.iter().map(|(member, hash)| {
                    (format!("{member:x}"), serde_json::Value::from(hash.map(hex)))
                }).collect::<serde_json::Map<_, _>>(),
                "majority": report.majority.map(hex),
                "minority": report.minority.iter().map(|member| format!("{member:x}")).collect::<Vec<_>>(),
            });
            (StatusCode::OK, json, body.to_string()).into_response()
        }
        Err(refusal) => {
            let body = serde_json::json!({ "error": refusal.reason, "master": refusal.master_url });
            (StatusCode::SERVICE_UNAVAILABLE, json, body.to_string()).into_response()
        }
    }
}

/// Most client connections served at once; one more is closed as soon as
/// it is accepted, so a flood of sockets cannot exhaust file descriptors or
/// memory.
pub const CLIENT_CONNECTIONS_MAX: usize = 4_096;
/// How long a client has to finish the TLS handshake (or, on a TLS port, to
/// send its first byte) before the connection is closed.
pub const TLS_HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
/// The first byte of a TLS record carrying a handshake message.
const TLS_HANDSHAKE_RECORD: u8 = 0x16;

/// What a plain-text client gets from a port that speaks TLS: a gRPC status
/// (or an HTTP 400) that says so, rather than a closed connection.
fn tls_required_router() -> axum::Router {
    axum::Router::new().fallback(|request: axum::extract::Request| async move {
        let grpc = request
            .headers()
            .get(header::CONTENT_TYPE)
            .and_then(|value| value.to_str().ok())
            .is_some_and(|value| value.starts_with("application/grpc"));
        let message =
            "synod: this client port speaks TLS only; connect with https:// and the cluster's CA (etcdctl --cacert)";
        if grpc {
            tonic::Status::failed_precondition(message).into_http::<axum::body::Body>()
        } else {
            (StatusCode::BAD_REQUEST, format!("{message}\n")).into_response()
        }
    })
}

/// Serves one accepted connection: TLS first when configured, then HTTP/1
/// or HTTP/2 as the client speaks, until it closes or a shutdown drains it.
async fn serve_connection(
    stream: tokio::net::TcpStream,
    router: axum::Router,
    tls: Option<crate::tls::ServerTls>,
    watcher: hyper_util::server::graceful::Watcher,
) {
    use hyper_util::rt::{TokioExecutor, TokioIo};
    use hyper_util::server::conn::auto::Builder;
    use hyper_util::service::TowerToHyperService;

    let builder = Builder::new(TokioExecutor::new());
    let Some(crate::tls::ServerTls {
        config,
        member_verifier,
    }) = tls
    else {
        let connection = builder.serve_connection_with_upgrades(TokioIo::new(stream), TowerToHyperService::new(router));
        let _ = watcher.watch(connection.into_owned()).await;
        return;
    };
    let mut first = [0u8; 1];
    match tokio::time::timeout(TLS_HANDSHAKE_TIMEOUT, stream.peek(&mut first)).await {
        Ok(Ok(1)) => {}
        _ => return,
    }
    if first[0] != TLS_HANDSHAKE_RECORD {
        let service = TowerToHyperService::new(tls_required_router());
        let connection = builder.serve_connection_with_upgrades(TokioIo::new(stream), service);
        let _ = watcher.watch(connection.into_owned()).await;
        return;
    }
    let acceptor = tokio_rustls::TlsAcceptor::from(config);
    let stream = match tokio::time::timeout(TLS_HANDSHAKE_TIMEOUT, acceptor.accept(stream)).await {
        Ok(Ok(stream)) => stream,
        Ok(Err(error)) => {
            tracing::debug!(%error, "TLS handshake with a client failed");
            return;
        }
        Err(_) => {
            tracing::debug!("a client did not finish its TLS handshake in time");
            return;
        }
    };
    let chain = stream.get_ref().1.peer_certificates();
    let common_name = crate::tls::peer_common_name(stream.get_ref().1);
    let member_name = match (&member_verifier, chain) {
        (Some(verifier), Some([leaf, intermediates @ ..])) => verifier
            .verify_client_cert(leaf, intermediates, rustls::pki_types::UnixTime::now())
            .ok()
            .and(common_name.clone()),
        _ => None,
    };
    let certificate = ClientCertificate {
        common_name,
        member_name,
    };
    let service = tower::ServiceExt::map_request(
        router,
        move |mut request: axum::extract::Request<hyper::body::Incoming>| {
            request.extensions_mut().insert(certificate.clone());
            request
        },
    );
    let connection = builder.serve_connection_with_upgrades(TokioIo::new(stream), TowerToHyperService::new(service));
    let _ = watcher.watch(connection.into_owned()).await;
}

/// Serves the client API on `listener` until `shutdown` is cancelled, over
/// TLS when `tls` is given.
pub async fn serve(
    api: Api,
    listener: TcpListener,
    tls: Option<tokio::sync::watch::Receiver<crate::tls::ServerTls>>,
    shutdown: CancellationToken,
) -> std::io::Result<()> {
    let router = router(api);
    let graceful = hyper_util::server::graceful::GracefulShutdown::new();
    let connections = Arc::new(tokio::sync::Semaphore::new(CLIENT_CONNECTIONS_MAX));
    loop {
        let stream = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok((stream, _)) => stream,
                Err(error) => {
                    // Out of descriptors, or a connection reset before it was
                    // accepted: wait a little rather than spin.
                    tracing::warn!(%error, "cannot accept a client connection");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
            () = shutdown.cancelled() => break,
        };
        let Ok(permit) = connections.clone().try_acquire_owned() else {
            tracing::warn!(
                limit = CLIENT_CONNECTIONS_MAX,
                "too many client connections; closing a new one"
            );
            continue;
        };
        // Replies are small frames written one after another; with Nagle's algorithm on, each one
        // after the first waits for the client's delayed ACK (about 40 ms on Linux). The peer port
        // sets the same option.
        if let Err(error) = stream.set_nodelay(true) {
            tracing::warn!(%error, "could not set TCP_NODELAY on a client connection");
        }
        // The settings in force now: a SIGHUP may have reloaded them.
        let acceptor = tls.as_ref().map(|current| current.borrow().clone());
        let connection = serve_connection(stream, router.clone(), acceptor, graceful.watcher());
        tokio::spawn(async move {
            connection.await;
            drop(permit);
        });
    }
    drop(listener);
    tokio::select! {
        () = graceful.shutdown() => {}
        () = tokio::time::sleep(SHUTDOWN_GRACE) => {}
    }
    Ok(())
}
