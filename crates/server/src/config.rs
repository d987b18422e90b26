//! What a member is told at start: who it is, who its peers are, and every
//! tunable with its unit.
//!
//! Identities follow etcd: the cluster ID is derived from the initial cluster
//! string and the member IDs from the member names, so every member computes
//! the same IDs from the same flags without talking to anyone. Both are written
//! to the data directory on first start ([`crate::identity`]); a restarted
//! member takes them from there and ignores the `--initial-cluster*` flags.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use synod_paxos::NodeId;

/// How a member with an empty data directory joins.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ClusterState {
    /// Every member listed is starting for the first time: nobody has voted.
    New,
    /// The group exists; this member may have voted before and lost its disk.
    Existing,
}

/// One member as listed in `--initial-cluster`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct MemberSpec {
    /// The member's name, unique in the cluster.
    pub name: String,
    /// Its member ID, derived from the name and the initial cluster.
    pub id: u64,
    /// Where its peer port listens.
    pub peer_address: String,
}

/// Why the command-line identity is unusable.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// An entry that is not `NAME=HOST:PORT`.
    #[error("--initial-cluster entry {0:?} is not NAME=HOST:PORT")]
    MalformedMember(String),
    /// No members at all.
    #[error("--initial-cluster is empty")]
    EmptyCluster,
    /// Two members of one name.
    #[error("--initial-cluster lists the name {0:?} twice")]
    DuplicateName(String),
    #[error("--name {name:?} is not listed in --initial-cluster ({cluster})")]
    /// `--name` is not among the members.
    NameNotListed {
        /// The name given.
        name: String,
        /// The initial cluster given.
        cluster: String,
    },
    /// More members than the core's 63-bit vote sets hold.
    #[error("--initial-cluster lists {0} members; at most 63 are supported")]
    TooManyMembers(usize),
    /// A name with characters other than letters, digits, '-', '_' or '.'.
    #[error("member name {0:?} must be 1 to 255 bytes of letters, digits, '-', '_' or '.'")]
    BadName(String),
    /// An `--initial-cluster-token` that is too long or holds control characters.
    #[error("--initial-cluster-token must be at most {max} bytes without control characters")]
    BadToken {
        /// The longest token accepted, in bytes.
        max: usize,
    },
    /// The tunables make an unsafe or unworkable core configuration.
    #[error("{0}")]
    Paxos(#[from] synod_paxos::ConfigError),
}

/// FNV-1a, 64 bits: a stable hash with no dependency, so IDs never change
/// between builds. Never zero (zero means "no member" on the wire).
pub fn stable_hash(parts: &[&[u8]]) -> u64 {
    let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
    for part in parts {
        for byte in part.iter() {
            hash ^= u64::from(*byte);
            hash = hash.wrapping_mul(0x0000_0100_0000_01b3);
        }
        // Separator, so ("ab","c") and ("a","bc") differ.
        hash ^= 0xff;
        hash = hash.wrapping_mul(0x0000_0100_0000_01b3);
    }
    hash.max(1)
}

/// The cluster ID: a hash of the initial cluster, member by member in name order,
/// so the order of the flag's entries does not matter.
pub fn cluster_id(members: &[MemberSpec]) -> u64 {
    let mut sorted: Vec<&MemberSpec> = members.iter().collect();
    sorted.sort_by(|a, b| a.name.cmp(&b.name));
    let mut parts: Vec<&[u8]> = vec![b"synod-cluster"];
    for member in sorted {
        parts.push(member.name.as_bytes());
        parts.push(member.peer_address.as_bytes());
    }
    stable_hash(&parts)
}

/// The cluster's ID from its members and `--initial-cluster-token`, as etcd
/// mixes the token in: two groups of the same names and addresses (a group
/// and the one restored from its backup, say) get different IDs, so neither
/// takes the other's members or clients. An empty token leaves the ID of
/// [`cluster_id`], which groups made before the token existed have.
pub fn cluster_id_with_token(members: &[MemberSpec], token: &str) -> u64 {
    if token.is_empty() {
        return cluster_id(members);
    }
    stable_hash(&[
        b"synod-cluster-token",
        &cluster_id(members).to_le_bytes(),
        token.as_bytes(),
    ])
}

/// A member's ID, from its name.
pub fn member_id(name: &str) -> u64 {
    stable_hash(&[b"synod-member", name.as_bytes()])
}

fn valid_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 255
        && name
            .bytes()
            .all(|byte| byte.is_ascii_alphanumeric() || matches!(byte, b'-' | b'_' | b'.'))
}

/// Parses `NAME=HOST:PORT,NAME=HOST:PORT,...`.
pub fn parse_initial_cluster(text: &str) -> Result<Vec<MemberSpec>, ConfigError> {
    let mut members: Vec<MemberSpec> = Vec::new();
    for entry in text.split(',').map(str::trim).filter(|entry| !entry.is_empty()) {
        let Some((name, address)) = entry.split_once('=') else {
            return Err(ConfigError::MalformedMember(entry.to_string()));
        };
        let address = address.trim_start_matches("http://");
        if !valid_name(name) {
            return Err(ConfigError::BadName(name.to_string()));
        }
        let port_ok = address
            .rsplit_once(':')
            .is_some_and(|(host, port)| !host.is_empty() && port.parse::<u16>().is_ok());
        if !port_ok {
            return Err(ConfigError::MalformedMember(entry.to_string()));
        }
        if members.iter().any(|member| member.name == name) {
            return Err(ConfigError::DuplicateName(name.to_string()));
        }
        members.push(MemberSpec {
            name: name.to_string(),
            id: member_id(name),
            peer_address: address.to_string(),
        });
    }
    if members.is_empty() {
        return Err(ConfigError::EmptyCluster);
    }
    if members.len() > 63 {
        return Err(ConfigError::TooManyMembers(members.len()));
    }
    Ok(members)
}

/// Every tunable of the server, each with its unit in its name.
#[derive(Clone, Debug)]
pub struct Tunables {
    /// PaxosLease master lease length.
    pub lease_duration: Duration,
    /// How often the master renews its lease.
    pub lease_renew_interval: Duration,
    /// How long a member that hears no master waits before it tries to become master.
    pub election_timeout: Duration,
    /// How often the master sends its commit point (the heartbeat).
    pub heartbeat_interval: Duration,
    /// Bound on clock rate differences between members, in parts per million.
    pub clock_drift_max_ppm: u64,
    /// Pipelining window (alpha): instances proposed beyond the commit point.
    pub window_instances_max: u64,
    /// Client requests one Paxos instance may carry.
    pub batch_values_max: usize,
    /// Bytes of client requests one Paxos instance may carry.
    pub batch_bytes_max: usize,
    /// Applied instances between two snapshots of the state machine (0: never).
    pub snapshot_interval_instances: u64,
    /// How long a client write may wait for its commit before `request timed out`.
    pub request_timeout: Duration,
    /// Messages queued for one peer before new ones are dropped (Paxos resends).
    pub peer_queue_messages_max: usize,
    /// Messages from all peers queued for the core before readers stop reading.
    pub inbound_queue_messages_max: usize,
    /// Client commands queued for the core before clients wait.
    pub command_queue_max: usize,
    /// Largest peer frame, in bytes, header included.
    pub frame_bytes_max: u32,
    /// Concurrent client watch streams, across all connections.
    pub watch_streams_max: usize,
    /// The space quota, in bytes of keys and values retained over all
    /// revisions (`--quota-backend-bytes`): a put, txn with puts or lease grant
    /// that would pass it is refused and raises this member's NOSPACE alarm.
    pub quota_backend_bytes: u64,
    /// How long a simple token lives past its last use (`--auth-token-ttl`).
    pub auth_token_ttl: Duration,
    /// How often the master compares the members' state hashes at one
    /// applied instance (`--consistency-check-interval-ms`; zero: only on
    /// demand, at `/consistency`).
    pub consistency_check_interval: Duration,
    /// bcrypt's cost for the password hashes of new users and new passwords
    /// (`--bcrypt-cost`; etcd's default 10, each step doubles the time).
    pub bcrypt_cost: u32,
}

/// etcd's default space quota, 2 GiB, in bytes.
pub const QUOTA_BACKEND_BYTES_DEFAULT: u64 = 2 << 30;

impl Default for Tunables {
    fn default() -> Self {
        Tunables {
            lease_duration: Duration::from_millis(2_000),
            lease_renew_interval: Duration::from_millis(500),
            election_timeout: Duration::from_millis(1_000),
            heartbeat_interval: Duration::from_millis(100),
            clock_drift_max_ppm: 10_000,
            window_instances_max: 32,
            batch_values_max: 4_096,
            batch_bytes_max: 4 << 20,
            snapshot_interval_instances: 10_000,
            request_timeout: Duration::from_millis(7_000),
            peer_queue_messages_max: 4_096,
            inbound_queue_messages_max: 4_096,
            command_queue_max: 8_192,
            frame_bytes_max: 16 << 20,
            watch_streams_max: 10_000,
            quota_backend_bytes: QUOTA_BACKEND_BYTES_DEFAULT,
            auth_token_ttl: Duration::from_secs(300),
            bcrypt_cost: 10,
            consistency_check_interval: Duration::from_secs(10),
        }
    }
}

/// Everything one member needs to start.
#[derive(Clone, Debug)]
pub struct ServerConfig {
    /// This member's name (`--name`).
    pub name: String,
    /// Where this member keeps its files (`--data-dir`).
    pub data_dir: PathBuf,
    /// The client port's address.
    pub listen_client: SocketAddr,
    /// The peer port's address.
    pub listen_peer: SocketAddr,
    /// The URL other members and clients use to reach this member's client port.
    pub advertise_client_url: String,
    /// As given on the command line; ignored when the data directory holds a member.
    pub initial_cluster: String,
    /// Whether the group is new or this member rejoins it.
    pub initial_cluster_state: ClusterState,
    /// Mixed into the cluster ID (`--initial-cluster-token`); empty for none.
    /// Ignored, like `initial_cluster`, when the data directory holds a member.
    pub initial_cluster_token: String,
    /// TLS on the client port (`--cert-file` and friends); `None` for plain
    /// HTTP/2.
    pub client_tls: Option<crate::tls::TlsFiles>,
    /// TLS between members (`--peer-cert-file` and friends); `None` for plain TCP.
    pub peer_tls: Option<crate::tls::PeerTlsFiles>,
    /// JWT auth tokens (`--auth-token jwt,...`); `None` for etcd's default
    /// simple tokens.
    pub auth_token: Option<crate::jwt::JwtOptions>,
    /// Bounds and timings.
    pub tunables: Tunables,
    /// Unsafe modes for fault testing (`--unsafe-bug`); none in any real use.
    pub unsafe_bugs: UnsafeBugs,
    /// Record every unsynced write, and on SIGUSR1 roll the data directory's
    /// storage back to what was synced and exit at once, as a power loss
    /// would leave it (`--failpoint-power-loss`; see [`crate::failpoint`]).
    pub failpoint_power_loss: bool,
    /// The first put of this key applied here is followed by a local change
    /// no other member makes (`--failpoint-diverge-key`), so the consistency
    /// check has a divergence to find. Tests only.
    pub failpoint_diverge_key: Option<Vec<u8>>,
}

/// Unsafe modes a fault harness switches on to show that its checkers catch
/// them (negative controls). Each breaks a guarantee on purpose.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct UnsafeBugs {
    /// `no-fsync`: the storage's `fdatasync` is skipped; writes are
    /// acknowledged without being durable.
    pub no_fsync: bool,
    /// `read-without-lease`: linearizable reads are answered by a member that
    /// believes it is master, whether or not it holds the master lease
    /// (the core's `PlantedBugs::read_without_lease`).
    pub read_without_lease: bool,
    /// `keepalive-lapsed-master`: client lease keep-alive and time to live
    /// are answered by a member that believes it is master, without the
    /// master lease.
    pub keepalive_lapsed_master: bool,
}

impl UnsafeBugs {
    /// The flag name of every mode switched on, in a fixed order.
    pub fn names(&self) -> Vec<&'static str> {
        [
            (self.no_fsync, "no-fsync"),
            (self.read_without_lease, "read-without-lease"),
            (self.keepalive_lapsed_master, "keepalive-lapsed-master"),
        ]
        .into_iter()
        .filter_map(|(on, name)| on.then_some(name))
        .collect()
    }

    /// Whether any mode is switched on.
    pub fn any(&self) -> bool {
        *self != UnsafeBugs::default()
    }

    /// The bugs to plant in the consensus core. Both lease modes come with
    /// `master_outlives_lease`: a correct core steps down on its first tick
    /// past the lease, which leaves a lapsed master too short a window for a
    /// client to see the harm; the master that keeps its role is the one the
    /// answers-without-the-lease mistake hurts.
    pub fn core(&self) -> synod_paxos::PlantedBugs {
        synod_paxos::PlantedBugs {
            read_without_lease: self.read_without_lease,
            master_outlives_lease: self.read_without_lease || self.keepalive_lapsed_master,
            ..synod_paxos::PlantedBugs::default()
        }
    }
}

impl ServerConfig {
    /// The core's configuration for `node` in `members`, from the tunables.
    pub fn paxos_config(&self, node: NodeId, members: Vec<NodeId>) -> Result<synod_paxos::Config, ConfigError> {
        let tunables = &self.tunables;
        let mut config = synod_paxos::Config::new(node, members);
        config.lease_duration = tunables.lease_duration;
        config.lease_renew_interval = tunables.lease_renew_interval;
        config.election_timeout = tunables.election_timeout;
        config.heartbeat_interval = tunables.heartbeat_interval;
        config.retransmit_interval = (tunables.heartbeat_interval * 2).min(tunables.lease_renew_interval);
        config.clock_drift_max_ppm = tunables.clock_drift_max_ppm;
        config.window_instances_max = tunables.window_instances_max;
        config.accept_ahead_instances_max = config.accept_ahead_instances_max.max(tunables.window_instances_max * 2);
        config.batch_values_max = tunables.batch_values_max;
        config.batch_bytes_max = tunables.batch_bytes_max;
        config.value_bytes_max = config.value_bytes_max.min(tunables.batch_bytes_max);
        config.submit_queue_bytes_max = config.submit_queue_bytes_max.max(tunables.batch_bytes_max);
        config.submit_queue_values_max = config.submit_queue_values_max.max(tunables.batch_values_max);
        config.message_bytes_max = (tunables.frame_bytes_max as usize).saturating_sub(64);
        config.validate()?;
        Ok(config)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_are_stable_and_order_independent() {
        let a = parse_initial_cluster("a=127.0.0.1:1,b=127.0.0.1:2").unwrap();
        let b = parse_initial_cluster("b=127.0.0.1:2, a=127.0.0.1:1").unwrap();
        assert_eq!(cluster_id(&a), cluster_id(&b));
        assert_ne!(
            cluster_id(&a),
            cluster_id(&parse_initial_cluster("a=127.0.0.1:1").unwrap())
        );
        assert_eq!(member_id("a"), a[0].id);
        assert_ne!(member_id("a"), member_id("b"));
    }

    #[test]
    fn unsafe_bugs_name_themselves_and_plant_their_core_bugs() {
        assert!(!UnsafeBugs::default().any());
        assert_eq!(UnsafeBugs::default().core(), synod_paxos::PlantedBugs::default());
        let all = UnsafeBugs {
            no_fsync: true,
            read_without_lease: true,
            keepalive_lapsed_master: true,
        };
        assert!(all.any());
        assert_eq!(
            all.names(),
            ["no-fsync", "read-without-lease", "keepalive-lapsed-master"]
        );
        assert_eq!(
            all.core(),
            synod_paxos::PlantedBugs {
                read_without_lease: true,
                master_outlives_lease: true,
                ..synod_paxos::PlantedBugs::default()
            }
        );
    }

    #[test]
    fn malformed_clusters_are_refused() {
        assert!(parse_initial_cluster("").is_err());
        assert!(parse_initial_cluster("a").is_err());
        assert!(parse_initial_cluster("a=host").is_err());
        assert!(parse_initial_cluster("a=host:notaport").is_err());
        assert!(parse_initial_cluster("a=h:1,a=h:2").is_err());
        assert!(parse_initial_cluster("a b=h:1").is_err());
        assert!(parse_initial_cluster("a=http://h:1").is_ok());
    }
}
