//! The synod server process: one member of a Multi-Paxos group, serving the
//! etcd v3 client API.
//!
//! The consensus core (`synod-paxos`) does no I/O; this crate owns the clock,
//! the sockets and the files, turns bytes into the core's inputs and the
//! core's outputs into bytes, and applies what the log chooses to the
//! key-value store (`synod-kv`).
//!
//! # Layout
//!
//! Read top-down, the way a request travels:
//!
//! - [`config`]: flags and tunables (each with its unit), cluster and member
//!   IDs derived from the initial cluster.
//! - [`identity`]: the member file that marks a data directory as a member's.
//! - [`api`]: the client port. gRPC services (KV, Watch, Lease, Cluster,
//!   Maintenance, Lock, Election, Health) and `/health`, `/version`,
//!   `/metrics`; followers forward to the master what only it may answer.
//! - [`node`]: the core task that owns the [`synod_paxos::Replica`]: ticks,
//!   peer messages and client commands in; persist, send, apply out, in that
//!   order. Snapshots are taken from a frozen copy of the store on
//!   blocking-pool threads while commits go on.
//! - [`disk_writer`]: acceptor records made durable by synod-storage's group-commit
//!   threads, awaited through oneshot channels; the log trimmed there, in
//!   order with its writes, once a snapshot is durable.
//! - [`peer`]: TCP connections between members; handshake, bounded queues,
//!   reconnection with back-off.
//! - [`snapshot_transfer`]: a lagging member pulls a peer's snapshot in checksummed
//!   chunks, one request per chunk, and reassembles it within a bound.
//! - [`frame`]: the peer wire format. Bytes become [`frame::Frame`]s (magic,
//!   version, flags, length, CRC32C, opaque payload) with a pure incremental
//!   [`frame::Decoder`]; the first frame each way is a [`frame::Handshake`].
//! - [`tls`]: certificates for the client port, and for forwarding to the
//!   master's.
//! - [`metrics`]: counters and histograms for `/metrics`.
//! - [`failpoint`]: the power-loss failpoint and the unsafe modes
//!   ([`config::UnsafeBugs`]) a fault harness switches on; never in real use.
//!
//! **No async task ever blocks on a file or a lock held across I/O, nor
//! computes over the whole store (that runs on a frozen copy on a
//! blocking-pool thread); every
//! queue has a named bound; nothing a peer or a client sends can panic the
//! server or make it allocate beyond a configured bound.**

#![deny(missing_docs)]

pub mod api;
pub mod backup;
pub mod config;
pub mod disk_writer;
pub mod etcd_import;
pub mod failpoint;
pub mod frame;
pub mod identity;
pub mod jwt;
pub mod metrics;
pub mod node;
pub mod peer;
pub mod snapshot_transfer;
pub mod tls;
pub mod tokens;

use std::sync::Arc;
use std::time::Instant;

use synod_paxos::{FreshStart, NodeId, Replica};
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tracing::Instrument;

use crate::config::{ClusterState, ServerConfig};
use crate::disk_writer::DiskWriter;
use crate::identity::Identity;
use crate::metrics::Metrics;
use crate::node::{Core, CoreInputs};

/// Why the server could not start or had to stop.
#[derive(Debug, thiserror::Error)]
pub enum ServerError {
    /// Bad flags.
    #[error(transparent)]
    Config(#[from] config::ConfigError),
    /// The data directory's identity file.
    #[error(transparent)]
    Identity(#[from] identity::IdentityError),
    /// The acceptor store.
    #[error(transparent)]
    Disk(#[from] disk_writer::DiskError),
    /// The data directory is another member's.
    #[error("data directory {data_dir} belongs to member {found:?}, not {expected:?}")]
    WrongMember {
        /// The data directory.
        data_dir: String,
        /// The member it belongs to.
        found: String,
        /// The member the flags name.
        expected: String,
    },
    /// A port could not be bound.
    #[error("cannot listen on {address} for {purpose}: {source}")]
    Listen {
        /// The address.
        address: String,
        /// Which port (client or peer).
        purpose: &'static str,
        /// What failed.
        #[source]
        source: std::io::Error,
    },
    /// The newest snapshot could not be read into the store.
    #[error("the newest snapshot cannot be restored: {0}")]
    Snapshot(String),
    /// The group-commit threads could not start.
    #[error("cannot start the disk writer threads: {0}")]
    DiskThread(std::io::Error),
    /// The core task stopped.
    #[error(transparent)]
    Core(#[from] node::CoreError),
    /// The client port's certificates or key.
    #[error(transparent)]
    Tls(#[from] tls::TlsError),
    /// The JWT keys (`--auth-token jwt,...`).
    #[error(transparent)]
    Jwt(#[from] jwt::JwtError),
    /// The client API server stopped.
    #[error("client API server failed: {0}")]
    Serve(std::io::Error),
    /// SIGUSR1 could not be caught for `--failpoint-power-loss`.
    #[error("cannot catch SIGUSR1 for --failpoint-power-loss: {0}")]
    Failpoint(std::io::Error),
}

/// Loads this member's identity from its data directory, or creates it from
/// the flags if the directory holds no member yet.
fn load_identity(config: &ServerConfig) -> Result<Identity, ServerError> {
    if let Some(identity) = Identity::load(&config.data_dir)? {
        if identity.name != config.name {
            return Err(ServerError::WrongMember {
                data_dir: config.data_dir.display().to_string(),
                found: identity.name,
                expected: config.name.clone(),
            });
        }
        tracing::info!(
            data_dir = %config.data_dir.display(),
            "data directory holds this member's state; --initial-cluster flags are ignored"
        );
        return Ok(identity);
    }
    let identity =
        Identity::from_flags_with_token(&config.name, &config.initial_cluster, &config.initial_cluster_token)?;
    identity.store(&config.data_dir)?;
    Ok(identity)
}

async fn bind(address: std::net::SocketAddr, purpose: &'static str) -> Result<TcpListener, ServerError> {
    TcpListener::bind(address).await.map_err(|source| ServerError::Listen {
        address: address.to_string(),
        purpose,
        source,
    })
}

/// Runs one member until `shutdown` is cancelled (or a fatal error).
pub async fn run(config: ServerConfig, shutdown: CancellationToken) -> Result<(), ServerError> {
    // Tunables are checked before anything is written to the data directory.
    config.paxos_config(NodeId(1), vec![NodeId(1)])?;
    let unsafe_bugs = config.unsafe_bugs;
    if unsafe_bugs.any() {
        tracing::warn!(
            bugs = %unsafe_bugs.names().join(","),
            "UNSAFE: --unsafe-bug {}: acknowledged data may be lost / reads may be stale; for fault-testing only",
            unsafe_bugs.names().join(" --unsafe-bug ")
        );
    }
    let power_signals = match config.failpoint_power_loss {
        true => {
            tracing::warn!(
                "failpoint: unsynced writes are recorded; SIGUSR1 drops them and ends the process, as a power loss \
                 would; for fault-testing only"
            );
            Some(failpoint::listen().map_err(ServerError::Failpoint)?)
        }
        false => None,
    };
    let failpoints = synod_storage::FailpointOptions {
        record_unsynced: config.failpoint_power_loss,
        skip_sync: unsafe_bugs.no_fsync,
        ..synod_storage::FailpointOptions::default()
    };
    // Reading the data directory and restoring the store from its snapshot
    // block: they run on a blocking-pool thread.
    let startup_config = config.clone();
    let (identity, acceptor_store, durable, store, failpoint_disk) = tokio::task::spawn_blocking(move || {
        let identity = load_identity(&startup_config)?;
        let (acceptor_store, opened, failpoint_disk) = disk_writer::open_with(
            &startup_config.data_dir,
            startup_config.tunables.batch_bytes_max,
            failpoints,
        )?;
        let store = match opened.snapshot_state {
            Some(state) => synod_kv::Store::restore(node::kv_config(), &state)
                .map_err(|error| ServerError::Snapshot(error.to_string()))?,
            None => synod_kv::Store::new(node::kv_config()),
        };
        Ok::<_, ServerError>((identity, acceptor_store, opened.durable, store, failpoint_disk))
    })
    .await
    .map_err(|error| ServerError::DiskThread(std::io::Error::other(error.to_string())))??;
    if let (Some(signals), Some(disk)) = (power_signals, failpoint_disk) {
        failpoint::arm(signals, disk);
    }
    let snapshot_instance = durable.as_ref().map_or(0, |durable| durable.snapshot_instance.0);
    let members: Vec<NodeId> = identity.members.iter().map(|member| NodeId(member.id)).collect();
    let paxos = config.paxos_config(NodeId(identity.member_id), members)?;
    let message_bytes_max = paxos.message_bytes_max;

    // With members authenticating each other and clients by certificate, a
    // follower forwards with its peer certificate (see `TlsFiles::members`).
    let client_tls_files = config.client_tls.clone().map(|mut files| {
        files.members = config.peer_tls.clone().filter(|peer| peer.client_cert_auth);
        files
    });
    let client_tls = client_tls_files.as_ref().map(tls::ClientTls::load).transpose()?;
    let jwt = config
        .auth_token
        .as_ref()
        .map(jwt::JwtKeys::load)
        .transpose()?
        .map(std::sync::Arc::new);
    let peer_tls = config.peer_tls.as_ref().map(tls::PeerTls::load).transpose()?;
    match &peer_tls {
        None => {
            tracing::warn!("the peer port speaks plain TCP: peers are not authenticated and traffic is not encrypted")
        }
        Some(tls) if !tls.client_cert_auth => tracing::warn!(
            "peer TLS without --peer-client-cert-auth: traffic is encrypted, but a dialing peer is not authenticated"
        ),
        Some(_) => {}
    }
    if client_tls.is_none() {
        tracing::warn!("the client port speaks plain text: clients are not authenticated and traffic is not encrypted");
    }
    let client_listener = bind(config.listen_client, "clients").await?;
    let peer_listener = bind(config.listen_peer, "peers").await?;

    let origin = Instant::now();
    let now = node::core_time(origin);
    let seed = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |elapsed| elapsed.as_nanos() as u64)
        ^ u64::from(std::process::id()).rotate_left(32);
    let restarted = durable.is_some();
    let mut replica = match durable {
        Some(durable) => Replica::restart(paxos, durable, now, seed),
        None => {
            let start = match config.initial_cluster_state {
                ClusterState::New => FreshStart::NewGroup,
                ClusterState::Existing => FreshStart::Rejoin,
            };
            Replica::fresh(paxos, start, now, seed)
        }
    };
    replica.plant_bugs(unsafe_bugs.core());
    tracing::info!(
        name = %identity.name,
        member_id = %format!("{:x}", identity.member_id),
        cluster_id = %format!("{:x}", identity.cluster_id),
        client = %config.advertise_client_url,
        peer = %config.listen_peer,
        restarted,
        "starting member"
    );

    let metrics = Arc::new(Metrics::default());
    let (shared, commands, status) = node::shared(
        identity.clone(),
        config.advertise_client_url.clone(),
        config.tunables.clone(),
        metrics.clone(),
        store,
    );
    let (inbound_sender, inbound) = tokio::sync::mpsc::channel(config.tunables.inbound_queue_messages_max);
    let peers = peer::start(
        &identity,
        peer_listener,
        peer::TransportConfig {
            frame_bytes_max: config.tunables.frame_bytes_max,
            message_bytes_max,
            peer_queue_messages_max: config.tunables.peer_queue_messages_max,
            client_url: config.advertise_client_url.clone(),
            tls: peer_tls,
        },
        inbound_sender,
        shared.clone(),
        metrics.clone(),
        shutdown.clone(),
    );
    let snapshots = acceptor_store.snapshots().clone();
    let disk = DiskWriter::start(acceptor_store).map_err(ServerError::DiskThread)?;
    let _ = metrics.wal.set(disk.counters());
    let mut core = Core::new(
        replica,
        shared.clone(),
        peers,
        disk,
        snapshots,
        status,
        origin,
        snapshot_instance,
    );
    if let Some(key) = config.failpoint_diverge_key.clone() {
        core.arm_diverge_failpoint(key);
    }
    shared.keepalive_lapsed_master.store(
        unsafe_bugs.keepalive_lapsed_master,
        std::sync::atomic::Ordering::Relaxed,
    );
    let core_shutdown = shutdown.clone();
    let mut core_task = tokio::spawn(
        core.run(CoreInputs { commands, inbound }, core_shutdown)
            .in_current_span(),
    );
    let api = api::Api::new(
        shared,
        client_tls.as_ref().map(tls::ClientTls::forwarding),
        client_tls.as_ref().is_some_and(|tls| tls.client_cert_auth),
        jwt,
    )
    .with_gateway_tls(client_tls.as_ref().map(tls::ClientTls::gateway));
    let server_tls = match (client_tls, client_tls_files) {
        (Some(loaded), Some(files)) => Some(tls::reload_on_hangup(loaded.server_tls(), files, shutdown.clone())),
        _ => None,
    };
    let serve = api::serve(api, client_listener, server_tls, shutdown.clone());
    tokio::select! {
        result = &mut core_task => {
            shutdown.cancel();
            match result {
                Ok(result) => result?,
                Err(join) => tracing::error!(error = %join, "core task failed"),
            }
            Ok(())
        }
        result = serve => {
            shutdown.cancel();
            let core_result = core_task.await;
            result.map_err(ServerError::Serve)?;
            if let Ok(result) = core_result {
                result?;
            }
            Ok(())
        }
    }
}
