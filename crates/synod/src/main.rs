//! The `synod` command line: `synod server` runs one member, `synod dev` a
//! whole group on loopback for trying it out, `synod bench` loads a group
//! (synod's or etcd's) through the etcd v3 API, `synod chaos` runs a group
//! under injected faults and checks what its clients saw.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use clap::{Args, Parser, Subcommand, ValueEnum};
use synod_server::config::{ClusterState, ServerConfig, Tunables};
use synod_server::tls::generate as tls_files;
use tokio_util::sync::CancellationToken;
use tracing::Instrument;

#[derive(Parser, Debug)]
#[command(
    name = "synod",
    version,
    about = "A Multi-Paxos coordination service that speaks the etcd v3 API"
)]
struct Command {
    /// Log format.
    #[arg(long, value_enum, default_value = "human", global = true)]
    log_format: LogFormat,
    #[command(subcommand)]
    mode: Mode,
}

#[derive(Clone, Copy, Debug, ValueEnum)]
enum LogFormat {
    Human,
    Json,
}

#[derive(Subcommand, Debug)]
enum Mode {
    /// Run one member of a group.
    Server(Box<ServerFlags>),
    /// Run a whole group on loopback (client ports 2379, 2479, 2579, ...).
    Dev(DevFlags),
    /// Load a group (synod or etcd) through the etcd v3 API and report throughput and latency.
    Bench(synod_bench::Args),
    /// Run a group under kills, pauses, partitions and disk damage while
    /// clients load it, and check what they saw (linearizability, lost
    /// writes, locks, leases, watches).
    Chaos(synod_chaos::Args),
    /// Check a backup (written by `etcdctl snapshot save` against synod, or against etcd 3.4/3.5 to
    /// migrate its data) or seed a new group's member from it.
    #[command(subcommand)]
    Snapshot(SnapshotAction),
}

#[derive(Subcommand, Debug)]
enum SnapshotAction {
    /// Check a backup file and print its hash, revision, total keys and total size.
    Status {
        /// The backup file.
        file: PathBuf,
        /// Output format.
        #[arg(short = 'w', long = "write-out", value_enum, default_value = "simple")]
        write_out: StatusFormat,
    },
    /// Write a member of a new group, holding the backup, into an empty data
    /// directory. Restore every member from the same file with the same
    /// --initial-cluster, then start each with `synod server`.
    Restore {
        /// The backup file.
        file: PathBuf,
        /// The member's name; must appear in --initial-cluster.
        #[arg(long)]
        name: String,
        /// The member's data directory (absent or empty).
        #[arg(long)]
        data_dir: PathBuf,
        /// Every member of the new group: NAME=HOST:PORT,NAME=HOST:PORT,...
        #[arg(long)]
        initial_cluster: String,
        /// Mixed into the new cluster's ID; by default one derived from the
        /// backup's SHA-256, so the new group never shares the old one's ID.
        #[arg(long)]
        initial_cluster_token: Option<String>,
    },
}

#[derive(Clone, Copy, Debug, ValueEnum)]
enum StatusFormat {
    Simple,
    Json,
    Table,
}

#[derive(Clone, Copy, Debug, ValueEnum)]
enum InitialClusterState {
    /// Every member starts for the first time.
    New,
    /// The group exists; this member rejoins with an empty data directory.
    Existing,
}

#[derive(Args, Debug)]
struct ServerFlags {
    /// This member's name; must appear in --initial-cluster.
    #[arg(long)]
    name: String,
    /// Where this member keeps its state. If it already holds a member, the
    /// --initial-cluster* flags are ignored and the member restarts from it.
    #[arg(long)]
    data_dir: PathBuf,
    /// HOST:PORT for clients (gRPC and HTTP on one port), optionally as a
    /// URL: `https://HOST:PORT` needs --cert-file and --key-file.
    #[arg(long, value_parser = parse_client_url)]
    listen_client: ClientUrl,
    /// HOST:PORT for the other members.
    #[arg(long)]
    listen_peer: SocketAddr,
    /// Every member's peer address: NAME=HOST:PORT,NAME=HOST:PORT,...
    #[arg(long)]
    initial_cluster: String,
    /// `new` for a group being created, `existing` for a member rejoining with an empty data directory.
    #[arg(long, value_enum, default_value = "new")]
    initial_cluster_state: InitialClusterState,
    /// Mixed into the cluster ID, as etcd's flag is; a member rejoining a
    /// group restored from a backup gives the token the restore printed.
    #[arg(long, default_value = "")]
    initial_cluster_token: String,
    #[command(flatten)]
    client_tls: ClientTlsFlags,
    #[command(flatten)]
    peer_tls: PeerTlsFlags,
    /// Auth tokens: `simple` (etcd's default), or
    /// `jwt,pub-key=PATH,priv-key=PATH,sign-method=ES256|RS256|EdDSA|...[,ttl=5m]`.
    #[arg(long, default_value = "simple")]
    auth_token: String,
    #[command(flatten)]
    tunables: TunableFlags,
    /// Fault testing only: switch on an unsafe mode (repeatable) that a
    /// fault harness's checkers must catch: no-fsync, read-without-lease,
    /// keepalive-lapsed-master.
    #[arg(long = "unsafe-bug", value_name = "NAME", value_enum, hide = true)]
    unsafe_bugs: Vec<UnsafeBug>,
    /// Fault testing only: record unsynced writes; on SIGUSR1 drop them, as a
    /// power loss would, and exit with code 137.
    #[arg(long, hide = true)]
    failpoint_power_loss: bool,
    /// Tests only: after applying the first put of this key, make a local
    /// change no other member makes, so that the consistency check finds a
    /// diverged member.
    #[arg(long, hide = true, value_name = "KEY")]
    failpoint_diverge_key: Option<String>,
}

/// The unsafe modes of `--unsafe-bug`; see `synod_server::config::UnsafeBugs`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
enum UnsafeBug {
    /// fdatasync is skipped: acknowledged writes are not durable.
    NoFsync,
    /// Linearizable reads are answered without the master lease.
    ReadWithoutLease,
    /// Client lease keep-alive and time to live are answered without the master lease.
    KeepaliveLapsedMaster,
}

fn unsafe_bugs(flags: &[UnsafeBug]) -> synod_server::config::UnsafeBugs {
    synod_server::config::UnsafeBugs {
        no_fsync: flags.contains(&UnsafeBug::NoFsync),
        read_without_lease: flags.contains(&UnsafeBug::ReadWithoutLease),
        keepalive_lapsed_master: flags.contains(&UnsafeBug::KeepaliveLapsedMaster),
    }
}

/// etcd's client TLS flags.
#[derive(Args, Debug, Clone)]
struct ClientTlsFlags {
    /// The client port's certificate chain (PEM); turns TLS on.
    #[arg(long, requires = "key_file")]
    cert_file: Option<PathBuf>,
    /// The private key of --cert-file (PEM).
    #[arg(long, requires = "cert_file")]
    key_file: Option<PathBuf>,
    /// The CA that client certificates (and other members' certificates,
    /// when forwarding to the master) must chain to (PEM).
    #[arg(long, requires = "cert_file")]
    trusted_ca_file: Option<PathBuf>,
    /// Require every client to present a certificate chaining to
    /// --trusted-ca-file.
    #[arg(long, requires = "trusted_ca_file")]
    client_cert_auth: bool,
}

/// etcd's peer TLS flags.
#[derive(Args, Debug, Clone)]
struct PeerTlsFlags {
    /// This member's peer certificate (PEM), whose common name is its
    /// --name; turns TLS on between members.
    #[arg(long, requires_all = ["peer_key_file", "peer_trusted_ca_file"])]
    peer_cert_file: Option<PathBuf>,
    /// The private key of --peer-cert-file (PEM).
    #[arg(long, requires = "peer_cert_file")]
    peer_key_file: Option<PathBuf>,
    /// The CA every member's peer certificate chains to (PEM).
    #[arg(long, requires = "peer_cert_file")]
    peer_trusted_ca_file: Option<PathBuf>,
    /// Require a dialing peer to present its certificate, which must name
    /// the member it claims to be.
    #[arg(long, requires = "peer_cert_file")]
    peer_client_cert_auth: bool,
}

impl PeerTlsFlags {
    fn files(&self) -> Option<synod_server::tls::PeerTlsFiles> {
        Some(synod_server::tls::PeerTlsFiles {
            cert_file: self.peer_cert_file.clone()?,
            key_file: self.peer_key_file.clone()?,
            trusted_ca_file: self.peer_trusted_ca_file.clone()?,
            client_cert_auth: self.peer_client_cert_auth,
        })
    }
}

impl ClientTlsFlags {
    fn files(&self) -> Option<synod_server::tls::TlsFiles> {
        Some(synod_server::tls::TlsFiles {
            cert_file: self.cert_file.clone()?,
            key_file: self.key_file.clone()?,
            trusted_ca_file: self.trusted_ca_file.clone(),
            client_cert_auth: self.client_cert_auth,
            members: None,
        })
    }
}

/// A client address, and whether it was given as an `https://` URL.
#[derive(Clone, Copy, Debug)]
struct ClientUrl {
    address: SocketAddr,
    https: Option<bool>,
}

/// `HOST:PORT`, `http://HOST:PORT` or `https://HOST:PORT`, as etcd's
/// client URLs are written.
fn parse_client_url(text: &str) -> Result<ClientUrl, String> {
    let (https, rest) = if let Some(rest) = text.strip_prefix("https://") {
        (Some(true), rest)
    } else if let Some(rest) = text.strip_prefix("http://") {
        (Some(false), rest)
    } else {
        (None, text)
    };
    let address = rest
        .trim_end_matches('/')
        .parse()
        .map_err(|error| format!("{text:?} is not HOST:PORT with a numeric host ({error})"))?;
    Ok(ClientUrl { address, https })
}

#[derive(Args, Debug)]
struct DevFlags {
    /// Members to start.
    #[arg(long, default_value_t = 3, value_parser = clap::value_parser!(u16).range(1..=9))]
    nodes: u16,
    /// Keep the members' data here (a fresh temporary directory otherwise, removed on exit).
    #[arg(long)]
    data_dir: Option<PathBuf>,
    /// Serve clients, and talk between members, over TLS with a throwaway CA
    /// and certificates written into the data directory (and print the
    /// etcdctl flags that trust them).
    #[arg(long)]
    tls: bool,
    #[command(flatten)]
    tunables: TunableFlags,
}

/// Every tunable, with its unit in its name.
#[derive(Args, Debug, Clone)]
struct TunableFlags {
    /// Master lease length (PaxosLease), in milliseconds.
    #[arg(long, default_value_t = 2_000)]
    lease_duration_ms: u64,
    /// How often the master renews its lease, in milliseconds (at most half the lease).
    #[arg(long, default_value_t = 500)]
    lease_renew_interval_ms: u64,
    /// How long a member hearing no master waits before it tries to become master, in milliseconds.
    #[arg(long, default_value_t = 1_000)]
    election_timeout_ms: u64,
    /// How often the master sends its commit point, in milliseconds (at most half the election timeout).
    #[arg(long, default_value_t = 100)]
    heartbeat_interval_ms: u64,
    /// Bound on clock rate differences between members, in parts per million.
    #[arg(long, default_value_t = 10_000)]
    clock_drift_max_ppm: u64,
    /// Pipelining window (alpha): instances the master may propose beyond its commit point.
    #[arg(long, default_value_t = 32)]
    alpha: u64,
    /// Client requests one Paxos instance may carry.
    #[arg(long, default_value_t = 4_096)]
    batch_values_max: usize,
    /// Bytes of client requests one Paxos instance may carry.
    #[arg(long, default_value_t = 4 << 20)]
    batch_bytes_max: usize,
    /// Applied instances between two state machine snapshots, in instances (0: never).
    #[arg(long, default_value_t = 10_000)]
    snapshot_interval_instances: u64,
    /// How long a client request may wait for its commit, in milliseconds.
    #[arg(long, default_value_t = 7_000)]
    request_timeout_ms: u64,
    /// Space quota in bytes of keys and values over all revisions (0: etcd's
    /// default, 2 GiB; at most 8 GiB, the store's hard limit). Passing it
    /// raises a NOSPACE alarm; writes are refused until `etcdctl alarm disarm`.
    #[arg(long, default_value_t = 0, value_parser = clap::value_parser!(u64).range(0..=8 << 30))]
    quota_backend_bytes: u64,
    /// How long an auth token lives past its last use, in seconds.
    #[arg(long = "auth-token-ttl", default_value_t = 300, value_parser = clap::value_parser!(u64).range(1..=86_400))]
    auth_token_ttl_s: u64,
    /// bcrypt cost of stored password hashes (4 to 31; each step doubles the time).
    #[arg(long, default_value_t = 10, value_parser = clap::value_parser!(u32).range(4..=31))]
    bcrypt_cost: u32,
    /// How often the master compares every member's state hash at one
    /// applied instance, in milliseconds (0: only on demand, at /consistency).
    /// A member found in the minority gets a CORRUPT alarm.
    #[arg(long, default_value_t = 10_000, value_parser = clap::value_parser!(u64).range(0..=86_400_000))]
    consistency_check_interval_ms: u64,
}

impl TunableFlags {
    fn tunables(&self) -> Tunables {
        Tunables {
            lease_duration: Duration::from_millis(self.lease_duration_ms),
            lease_renew_interval: Duration::from_millis(self.lease_renew_interval_ms),
            election_timeout: Duration::from_millis(self.election_timeout_ms),
            heartbeat_interval: Duration::from_millis(self.heartbeat_interval_ms),
            clock_drift_max_ppm: self.clock_drift_max_ppm,
            window_instances_max: self.alpha,
            batch_values_max: self.batch_values_max,
            batch_bytes_max: self.batch_bytes_max,
            snapshot_interval_instances: self.snapshot_interval_instances,
            request_timeout: Duration::from_millis(self.request_timeout_ms),
            quota_backend_bytes: match self.quota_backend_bytes {
                0 => synod_server::config::QUOTA_BACKEND_BYTES_DEFAULT,
                bytes => bytes,
            },
            auth_token_ttl: Duration::from_secs(self.auth_token_ttl_s),
            bcrypt_cost: self.bcrypt_cost,
            consistency_check_interval: Duration::from_millis(self.consistency_check_interval_ms),
            ..Tunables::default()
        }
    }
}

fn init_logging(format: LogFormat) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    match format {
        LogFormat::Human => builder.init(),
        LogFormat::Json => builder.json().init(),
    }
}

/// Cancels `shutdown` on SIGTERM or Ctrl-C.
fn on_signals(shutdown: CancellationToken) {
    tokio::spawn(async move {
        #[cfg(unix)]
        {
            use tokio::signal::unix::{signal, SignalKind};
            let mut terminate = match signal(SignalKind::terminate()) {
                Ok(terminate) => terminate,
                Err(error) => {
                    tracing::warn!(%error, "cannot listen for SIGTERM");
                    let _ = tokio::signal::ctrl_c().await;
                    shutdown.cancel();
                    return;
                }
            };
            tokio::select! {
                _ = terminate.recv() => tracing::info!("SIGTERM: shutting down"),
                _ = tokio::signal::ctrl_c() => tracing::info!("interrupted: shutting down"),
            }
        }
        #[cfg(not(unix))]
        {
            let _ = tokio::signal::ctrl_c().await;
        }
        shutdown.cancel();
    });
}

fn main() -> ExitCode {
    let command = Command::parse();
    init_logging(command.log_format);
    let runtime = match tokio::runtime::Builder::new_multi_thread().enable_all().build() {
        Ok(runtime) => runtime,
        Err(error) => {
            eprintln!("synod: error: cannot start the runtime: {error}");
            return ExitCode::FAILURE;
        }
    };
    let result = runtime.block_on(async move {
        let shutdown = CancellationToken::new();
        on_signals(shutdown.clone());
        match command.mode {
            Mode::Server(flags) => server(*flags, shutdown).await,
            Mode::Dev(flags) => dev(flags, shutdown).await,
            Mode::Bench(args) => bench(args, shutdown).await,
            Mode::Chaos(args) => chaos(args, shutdown).await,
            Mode::Snapshot(action) => snapshot(action),
        }
    });
    runtime.shutdown_timeout(Duration::from_secs(1));
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            tracing::error!("{error}");
            eprintln!("synod: error: {error}");
            ExitCode::FAILURE
        }
    }
}

async fn server(flags: ServerFlags, shutdown: CancellationToken) -> Result<(), String> {
    let client_tls = flags.client_tls.files();
    match (flags.listen_client.https, client_tls.is_some()) {
        (Some(true), false) => return Err("--listen-client https://... needs --cert-file and --key-file".into()),
        (Some(false), true) => {
            return Err("--listen-client http://... with --cert-file: the port would speak TLS; write https://".into())
        }
        _ => {}
    }
    let scheme = if client_tls.is_some() { "https" } else { "http" };
    let auth_token = synod_server::jwt::parse_auth_token(&flags.auth_token).map_err(|error| error.to_string())?;
    let config = ServerConfig {
        name: flags.name,
        data_dir: flags.data_dir,
        listen_client: flags.listen_client.address,
        listen_peer: flags.listen_peer,
        advertise_client_url: format!("{scheme}://{}", flags.listen_client.address),
        client_tls,
        peer_tls: flags.peer_tls.files(),
        auth_token,
        initial_cluster: flags.initial_cluster,
        initial_cluster_state: match flags.initial_cluster_state {
            InitialClusterState::New => ClusterState::New,
            InitialClusterState::Existing => ClusterState::Existing,
        },
        initial_cluster_token: flags.initial_cluster_token,
        tunables: flags.tunables.tunables(),
        unsafe_bugs: unsafe_bugs(&flags.unsafe_bugs),
        failpoint_power_loss: flags.failpoint_power_loss,
        failpoint_diverge_key: flags.failpoint_diverge_key.map(String::into_bytes),
    };
    synod_server::run(config, shutdown)
        .await
        .map_err(|error| error.to_string())
}

/// `synod snapshot status` and `synod snapshot restore`.
fn snapshot(action: SnapshotAction) -> Result<(), String> {
    use synod_server::backup;
    match action {
        SnapshotAction::Status { file, write_out } => {
            let summary = backup::read(&file).map_err(|error| error.to_string())?.summary;
            let (hash, revision, keys, bytes) = (
                summary.hash32(),
                summary.revision,
                summary.key_count,
                summary.file_bytes,
            );
            match write_out {
                StatusFormat::Simple => println!("{hash:x}, {revision}, {keys}, {bytes} B"),
                StatusFormat::Json => {
                    println!(r#"{{"hash":{hash},"revision":{revision},"totalKey":{keys},"totalSize":{bytes}}}"#)
                }
                StatusFormat::Table => {
                    let row = [
                        format!("{hash:x}"),
                        revision.to_string(),
                        keys.to_string(),
                        format!("{bytes} B"),
                    ];
                    let head = ["HASH", "REVISION", "TOTAL KEYS", "TOTAL SIZE"];
                    let widths: Vec<usize> = head.iter().zip(&row).map(|(h, r)| h.len().max(r.len())).collect();
                    let rule: String = widths
                        .iter()
                        .map(|w| format!("+{}", "-".repeat(w + 2)))
                        .collect::<String>()
                        + "+";
                    let line = |cells: &[&str]| -> String {
                        cells
                            .iter()
                            .zip(&widths)
                            .map(|(cell, width)| format!("| {cell:^width$} "))
                            .collect::<String>()
                            + "|"
                    };
                    let row: Vec<&str> = row.iter().map(String::as_str).collect();
                    println!("{rule}\n{}\n{rule}\n{}\n{rule}", line(&head), line(&row));
                }
            }
            Ok(())
        }
        SnapshotAction::Restore {
            file,
            name,
            data_dir,
            initial_cluster,
            initial_cluster_token,
        } => {
            let restored = backup::restore(
                &file,
                &name,
                &data_dir,
                &initial_cluster,
                initial_cluster_token.as_deref(),
            )
            .map_err(|error| error.to_string())?;
            println!(
                "restored member {name} (ID {:x}) of new cluster {:x} into {} at revision {} ({} keys)",
                restored.identity.member_id,
                restored.identity.cluster_id,
                data_dir.display(),
                restored.summary.revision,
                restored.summary.key_count
            );
            println!("cluster token: {}", restored.token);
            Ok(())
        }
    }
}

/// Runs the load generator; Ctrl-C abandons the run without a report.
async fn bench(args: synod_bench::Args, shutdown: CancellationToken) -> Result<(), String> {
    tokio::select! {
        result = synod_bench::run_cli(args) => result,
        () = shutdown.cancelled() => Err("interrupted before the run finished".into()),
    }
}

/// Runs the fault harness; Ctrl-C stops it and its members without a report.
async fn chaos(args: synod_chaos::Args, shutdown: CancellationToken) -> Result<(), String> {
    let status = tokio::select! {
        result = synod_chaos::run_cli(args) => result.map_err(|error| error.to_string())?,
        () = shutdown.cancelled() => return Err("interrupted before the run finished".into()),
    };
    match status {
        0 => Ok(()),
        1 => Err("the run found anomalies".into()),
        _ => Err("a check could not decide: the run is not a pass".into()),
    }
}

async fn dev(flags: DevFlags, shutdown: CancellationToken) -> Result<(), String> {
    let (root, temporary) = match flags.data_dir {
        Some(directory) => (directory, false),
        None => (
            std::env::temp_dir().join(format!("synod-dev-{}", std::process::id())),
            true,
        ),
    };
    let nodes = flags.nodes;
    let client = |index: u16| -> SocketAddr { SocketAddr::from(([127, 0, 0, 1], 2379 + 100 * index)) };
    let peer = |index: u16| -> SocketAddr { SocketAddr::from(([127, 0, 0, 1], 2380 + 100 * index)) };
    let initial_cluster = (0..nodes)
        .map(|index| format!("node{}={}", index + 1, peer(index)))
        .collect::<Vec<_>>()
        .join(",");
    let tls = if flags.tls {
        let directory = root.join("tls");
        // A kept data directory keeps its CA, so clients set up for it go on working.
        let names: Vec<String> = (0..nodes).map(|index| format!("node{}", index + 1)).collect();
        let peers_missing = names
            .iter()
            .any(|name| !directory.join(tls_files::peer_cert_file(name)).exists());
        if !directory.join(tls_files::CA_FILE).exists() || peers_missing {
            tls_files::write_with_peers(&directory, "root", &names)?;
        }
        Some(directory)
    } else {
        None
    };
    let scheme = if tls.is_some() { "https" } else { "http" };
    let endpoints = (0..nodes)
        .map(|index| format!("{scheme}://{}", client(index)))
        .collect::<Vec<_>>()
        .join(",");
    println!("synod dev: {nodes} members, data in {}", root.display());
    for index in 0..nodes {
        println!(
            "  node{}: client {scheme}://{}  peer {}",
            index + 1,
            client(index),
            peer(index)
        );
    }
    println!();
    println!("Try:");
    match &tls {
        None => println!("  export ETCDCTL_API=3 ENDPOINTS={endpoints}"),
        Some(directory) => {
            let ca = directory.join(tls_files::CA_FILE);
            println!(
                "  export ETCDCTL_API=3 ENDPOINTS={endpoints} ETCDCTL_CACERT={}",
                ca.display()
            );
            println!(
                "  (a client certificate for user root: --cert={} --key={})",
                directory.join(tls_files::CLIENT_CERT_FILE).display(),
                directory.join(tls_files::CLIENT_KEY_FILE).display()
            );
        }
    }
    println!("  etcdctl --endpoints=$ENDPOINTS put greeting hello");
    println!("  etcdctl --endpoints=$ENDPOINTS get greeting");
    println!("  etcdctl --endpoints=$ENDPOINTS watch greeting");
    println!("  etcdctl --endpoints=$ENDPOINTS endpoint status -w table");
    println!("  etcdctl --endpoints=$ENDPOINTS member list -w table");
    match &tls {
        None => println!("  curl http://{}/metrics", client(0)),
        Some(directory) => println!(
            "  curl --cacert {} https://{}/metrics",
            directory.join(tls_files::CA_FILE).display(),
            client(0)
        ),
    }
    println!(
        "  open {scheme}://{}/ui in a browser: the group's status page",
        client(0)
    );
    println!("Ctrl-C stops every member.");
    let mut members = tokio::task::JoinSet::new();
    for index in 0..nodes {
        let name = format!("node{}", index + 1);
        let config = ServerConfig {
            name: name.clone(),
            data_dir: root.join(&name),
            listen_client: client(index),
            listen_peer: peer(index),
            advertise_client_url: format!("{scheme}://{}", client(index)),
            client_tls: tls.as_ref().map(|directory| synod_server::tls::TlsFiles {
                cert_file: directory.join(tls_files::SERVER_CERT_FILE),
                key_file: directory.join(tls_files::SERVER_KEY_FILE),
                trusted_ca_file: Some(directory.join(tls_files::CA_FILE)),
                client_cert_auth: false,
                members: None,
            }),
            peer_tls: tls.as_ref().map(|directory| synod_server::tls::PeerTlsFiles {
                cert_file: directory.join(tls_files::peer_cert_file(&name)),
                key_file: directory.join(tls_files::peer_key_file(&name)),
                trusted_ca_file: directory.join(tls_files::CA_FILE),
                client_cert_auth: true,
            }),
            auth_token: None,
            initial_cluster: initial_cluster.clone(),
            initial_cluster_state: ClusterState::New,
            initial_cluster_token: String::new(),
            tunables: flags.tunables.tunables(),
            unsafe_bugs: synod_server::config::UnsafeBugs::default(),
            failpoint_power_loss: false,
            failpoint_diverge_key: None,
        };
        let span = tracing::info_span!("member", name = %name);
        let shutdown = shutdown.clone();
        members.spawn(
            async move {
                synod_server::run(config, shutdown)
                    .await
                    .map_err(|error| format!("{name}: {error}"))
            }
            .instrument(span),
        );
    }
    let mut first_error = None;
    while let Some(result) = members.join_next().await {
        let result = result.map_err(|error| error.to_string()).and_then(|result| result);
        if let Err(error) = result {
            shutdown.cancel();
            first_error.get_or_insert(error);
        }
    }
    if temporary {
        let _ = std::fs::remove_dir_all(&root);
    }
    first_error.map_or(Ok(()), Err)
}
