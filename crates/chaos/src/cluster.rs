//! Real `synod server` processes on loopback, and what the harness does to them.
//!
//! Every member gets three ports: clients, its peer listener, and the port of
//! its [`crate::proxy`], which is what `--initial-cluster` names. Members are
//! started, killed (SIGKILL), paused (SIGSTOP) and resumed (SIGCONT) as the
//! fault schedule says; a member that ends on its own is noticed and its
//! exit and last log lines kept for the report.

use std::fs;
use std::io::{BufRead, BufReader};
use std::net::{SocketAddr, TcpListener as StdTcpListener};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::Duration;

use rustix::process::{kill_process, Pid, Signal};
use synod_proto::etcdserverpb::maintenance_client::MaintenanceClient;
use synod_proto::etcdserverpb::StatusRequest;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

use crate::proxy::Network;

/// How long one status call may take before the member counts as silent.
const STATUS_TIMEOUT: Duration = Duration::from_millis(500);
/// Log lines kept from a member that ended on its own.
const EXIT_LOG_LINES: usize = 5;

/// Timing flags for loopback: a master lease of 1 s, so a pause of a few
/// seconds outlives it.
pub const TIMING_FLAGS: [&str; 8] = [
    "--election-timeout-ms",
    "500",
    "--lease-duration-ms",
    "1000",
    "--lease-renew-interval-ms",
    "250",
    "--heartbeat-interval-ms",
    "50",
];

/// Every member compares its state hash with the others' every second, so a
/// divergence any fault causes raises a CORRUPT alarm the harness sees.
pub const CONSISTENCY_FLAGS: [&str; 2] = ["--consistency-check-interval-ms", "1000"];

/// The master lease the timing flags set, for choosing pause lengths.
pub const MASTER_LEASE: Duration = Duration::from_millis(1000);

/// Why the cluster could not be set up or driven.
#[derive(Debug, thiserror::Error)]
pub enum ClusterError {
    /// A file or process operation failed.
    #[error("{what}: {source}")]
    Io {
        /// What was being done.
        what: String,
        /// Why it failed.
        source: std::io::Error,
    },
}

fn io_error(what: impl Into<String>) -> impl FnOnce(std::io::Error) -> ClusterError {
    let what = what.into();
    move |source| ClusterError::Io { what, source }
}

/// How a member is doing, as the harness left it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum MemberState {
    /// Running.
    Up,
    /// Stopped by SIGSTOP.
    Paused,
    /// Not running: killed, or ended on its own.
    Down,
}

/// One member: its ports, files and process.
#[derive(Debug)]
pub struct Member {
    /// Its name, `m1`, `m2`, ...
    pub name: String,
    /// Its client port.
    pub client_port: u16,
    /// The port it listens on for peers.
    pub peer_port: u16,
    /// The port of its proxy, which the other members dial.
    pub proxy_port: u16,
    /// Its data directory.
    pub data_dir: PathBuf,
    /// Its log (stderr), appended to across restarts.
    pub log: PathBuf,
    child: Option<Child>,
    state: MemberState,
}

/// A member that ended without the harness killing it.
#[derive(Clone, Debug, serde::Serialize)]
pub struct UnexpectedExit {
    /// The member.
    pub member: String,
    /// Its exit status.
    pub status: String,
    /// The last lines of its log.
    pub log_tail: Vec<String>,
}

/// A group of members and the proxies in front of them.
pub struct Cluster {
    /// The members, in order.
    pub members: Vec<Member>,
    /// The shared control of every proxy.
    pub network: Network,
    binary: PathBuf,
    initial_cluster: String,
    extra_args: Vec<String>,
    member_ids: Vec<u64>,
    stop_proxies: CancellationToken,
}

fn free_port() -> Result<u16, ClusterError> {
    let listener = StdTcpListener::bind("127.0.0.1:0").map_err(io_error("bind a free port"))?;
    Ok(listener.local_addr().map_err(io_error("read a bound port"))?.port())
}

impl Cluster {
    /// Sets up `size` members under `root` (created if missing), starts
    /// their proxies, and starts every member with `extra_args` added.
    pub async fn start(
        binary: PathBuf,
        root: &Path,
        size: usize,
        extra_args: Vec<String>,
        seed: u64,
    ) -> Result<Cluster, ClusterError> {
        fs::create_dir_all(root).map_err(io_error(format!("create {}", root.display())))?;
        let mut members = Vec::with_capacity(size);
        let mut proxy_listeners = Vec::with_capacity(size);
        for index in 0..size {
            let name = format!("m{}", index + 1);
            let proxy = TcpListener::bind("127.0.0.1:0")
                .await
                .map_err(io_error("bind a proxy port"))?;
            let proxy_port = proxy.local_addr().map_err(io_error("read a proxy port"))?.port();
            proxy_listeners.push(proxy);
            members.push(Member {
                data_dir: root.join(&name),
                log: root.join(format!("{name}.log")),
                client_port: free_port()?,
                peer_port: free_port()?,
                proxy_port,
                name,
                child: None,
                state: MemberState::Down,
            });
        }
        let initial_cluster = members
            .iter()
            .map(|member| format!("{}=127.0.0.1:{}", member.name, member.proxy_port))
            .collect::<Vec<_>>()
            .join(",");
        let member_ids: Vec<u64> = members
            .iter()
            .map(|member| synod_server::config::member_id(&member.name))
            .collect();
        let network = Network::new();
        let stop_proxies = CancellationToken::new();
        let ids = Arc::new(member_ids.clone());
        for (index, listener) in proxy_listeners.into_iter().enumerate() {
            let upstream = SocketAddr::from(([127, 0, 0, 1], members[index].peer_port));
            tokio::spawn(network.clone().serve(
                listener,
                index,
                upstream,
                ids.clone(),
                seed.wrapping_add(index as u64),
                stop_proxies.clone(),
            ));
        }
        let mut cluster = Cluster {
            members,
            network,
            binary,
            initial_cluster,
            extra_args,
            member_ids,
            stop_proxies,
        };
        for index in 0..size {
            cluster.launch(index)?;
        }
        Ok(cluster)
    }

    /// The members' client URLs, in order.
    pub fn endpoints(&self) -> Vec<String> {
        self.members
            .iter()
            .map(|member| format!("http://127.0.0.1:{}", member.client_port))
            .collect()
    }

    /// How member `index` is doing.
    pub fn state(&self, index: usize) -> MemberState {
        self.members[index].state
    }

    /// Starts member `index` (which must be down).
    pub fn launch(&mut self, index: usize) -> Result<(), ClusterError> {
        let member = &mut self.members[index];
        assert!(member.child.is_none(), "{} is already running", member.name);
        let log = fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&member.log)
            .map_err(io_error(format!("open {}", member.log.display())))?;
        let child = Command::new(&self.binary)
            .args(["server", "--name", &member.name])
            .arg("--data-dir")
            .arg(&member.data_dir)
            .args(["--listen-client", &format!("127.0.0.1:{}", member.client_port)])
            .args(["--listen-peer", &format!("127.0.0.1:{}", member.peer_port)])
            .args(["--initial-cluster", &self.initial_cluster])
            .args(TIMING_FLAGS)
            .args(CONSISTENCY_FLAGS)
            .args(&self.extra_args)
            .env("RUST_LOG", "info")
            // Plain log lines, so the report can quote them.
            .env("NO_COLOR", "1")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .map_err(io_error(format!("start {}", self.binary.display())))?;
        member.child = Some(child);
        member.state = MemberState::Up;
        Ok(())
    }

    /// Sends `signal` to member `index`'s process, if it runs.
    fn signal(&self, index: usize, signal: Signal) {
        if let Some(child) = &self.members[index].child {
            // It may have just ended; reaping notices that.
            let _ = kill_process(Pid::from_child(child), signal);
        }
    }

    /// SIGKILL, and waits for the process to be gone. A paused process dies too.
    pub fn kill(&mut self, index: usize) {
        let member = &mut self.members[index];
        if let Some(mut child) = member.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
        member.state = MemberState::Down;
    }

    /// SIGSTOP: the process keeps its sockets and memory and does nothing,
    /// as a long garbage-collection pause or a stalled VM would.
    pub fn pause(&mut self, index: usize) {
        if self.members[index].state == MemberState::Up {
            self.signal(index, Signal::STOP);
            self.members[index].state = MemberState::Paused;
        }
    }

    /// SIGCONT after [`Cluster::pause`].
    pub fn resume(&mut self, index: usize) {
        if self.members[index].state == MemberState::Paused {
            self.signal(index, Signal::CONT);
            self.members[index].state = MemberState::Up;
        }
    }

    /// SIGUSR1, which a member started with `--failpoint-power-loss` answers
    /// by rolling its files back to what was last synced and aborting; waits
    /// up to `timeout` for it to end, then kills it.
    pub async fn power_loss(&mut self, index: usize, timeout: Duration) {
        self.resume(index);
        self.signal(index, Signal::USR1);
        let deadline = tokio::time::Instant::now() + timeout;
        while tokio::time::Instant::now() < deadline {
            let ended = match self.members[index].child.as_mut() {
                Some(child) => !matches!(child.try_wait(), Ok(None)),
                None => true,
            };
            if ended {
                break;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        self.kill(index);
    }

    /// Members whose process ended since the last call without the harness
    /// killing it; they are marked down.
    pub fn reap(&mut self) -> Vec<UnexpectedExit> {
        let mut exits = Vec::new();
        for member in &mut self.members {
            let Some(child) = member.child.as_mut() else { continue };
            let Ok(Some(status)) = child.try_wait() else { continue };
            member.child = None;
            member.state = MemberState::Down;
            exits.push(UnexpectedExit {
                member: member.name.clone(),
                status: status.to_string(),
                log_tail: log_tail(&member.log, EXIT_LOG_LINES),
            });
        }
        exits
    }

    /// The member that calls itself master, asking every running member;
    /// `None` when none does (or none answers).
    pub async fn master(&self) -> Option<usize> {
        for (index, member) in self.members.iter().enumerate() {
            if member.state != MemberState::Up {
                continue;
            }
            let url = format!("http://127.0.0.1:{}", member.client_port);
            let status = async {
                let mut client = MaintenanceClient::connect(url).await.ok()?;
                client
                    .status(StatusRequest {})
                    .await
                    .ok()
                    .map(|response| response.into_inner())
            };
            let Ok(Some(status)) = tokio::time::timeout(STATUS_TIMEOUT, status).await else {
                continue;
            };
            if status.leader != 0 && status.leader == self.member_ids[index] {
                return Some(index);
            }
        }
        None
    }

    /// Kills every member and stops the proxies.
    pub fn shutdown(&mut self) {
        for index in 0..self.members.len() {
            self.kill(index);
        }
        self.stop_proxies.cancel();
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        self.shutdown();
    }
}

/// The last `count` lines of a log file.
pub fn log_tail(path: &Path, count: usize) -> Vec<String> {
    let Ok(file) = fs::File::open(path) else {
        return Vec::new();
    };
    let mut lines: std::collections::VecDeque<String> = std::collections::VecDeque::with_capacity(count);
    for line in BufReader::new(file).lines().map_while(Result::ok) {
        if lines.len() == count {
            lines.pop_front();
        }
        lines.push_back(line);
    }
    lines.into()
}
