//! Every workload against a healthy group of three real `synod server`
//! processes on loopback, with no faults: each must get work done and its
//! checker must find nothing, or the checkers (or the server) are wrong.
//!
//! The server binary is `$SYNOD_BIN`, else `<workspace>/target/release/synod`
//! (a test of this package cannot ask Cargo for another package's binary).
//! Without it the test is skipped with a message, unless `CI=true`, where a
//! missing binary fails it.

use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use synod_chaos::workload::{self, client, Context, WorkloadReport};
use synod_proto::etcdserverpb::kv_client::KvClient;
use synod_proto::etcdserverpb::PutRequest;
use tokio_util::sync::CancellationToken;

/// Timing flags that make elections quick on loopback.
const FAST_TIMING: [&str; 8] = [
    "--election-timeout-ms",
    "500",
    "--lease-duration-ms",
    "1000",
    "--lease-renew-interval-ms",
    "250",
    "--heartbeat-interval-ms",
    "50",
];
/// Members of the group.
const MEMBERS: usize = 3;
/// How long the workloads run before they are told to stop (after the
/// restart, in the kill test), unless `SYNOD_CHAOS_RUN_S` says otherwise.
const RUN_TIME: Duration = Duration::from_secs(5);
/// When the member is killed (or paused), after the workloads start.
const KILL_AFTER: Duration = Duration::from_secs(3);
/// How long it stays down (or paused).
const DOWN_FOR: Duration = Duration::from_secs(3);
/// How long the group may take to accept a first write.
const START_TIMEOUT: Duration = Duration::from_secs(30);
/// How long a workload may take after it is told to stop.
const FINISH_TIMEOUT: Duration = Duration::from_secs(90);

/// The server binary, or why there is none.
fn synod_binary() -> Result<PathBuf, String> {
    if let Some(path) = std::env::var_os("SYNOD_BIN") {
        let path = PathBuf::from(path);
        if path.is_file() {
            return Ok(path);
        }
        // Named explicitly: a missing binary is a mistake, never a skip.
        panic!("SYNOD_BIN={} is not a file", path.display());
    }
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../target/release/synod");
    if path.is_file() {
        Ok(path)
    } else {
        Err(format!(
            "{} is missing: build it with `cargo build --release -p synod` or set SYNOD_BIN",
            path.display()
        ))
    }
}

/// Ports nobody listens on right now (bound, then released).
fn free_ports(count: usize) -> Vec<u16> {
    let listeners: Vec<TcpListener> = (0..count)
        .map(|_| TcpListener::bind("127.0.0.1:0").expect("bind an ephemeral port"))
        .collect();
    listeners
        .iter()
        .map(|listener| listener.local_addr().expect("local address").port())
        .collect()
}

/// A group of server processes, killed and cleaned up on drop.
struct Group {
    binary: PathBuf,
    root: PathBuf,
    children: Vec<Option<Child>>,
    logs: Vec<PathBuf>,
    client_ports: Vec<u16>,
    peer_ports: Vec<u16>,
    initial_cluster: String,
}

impl Group {
    fn start(binary: &Path) -> Group {
        let root = std::env::temp_dir().join(format!(
            "synod-chaos-workloads-{}-{}",
            std::process::id(),
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |since| since.as_nanos())
        ));
        std::fs::create_dir_all(&root).expect("create the group's directory");
        let ports = free_ports(MEMBERS * 2);
        let client_ports: Vec<u16> = (0..MEMBERS).map(|index| ports[index * 2]).collect();
        let peer_ports: Vec<u16> = (0..MEMBERS).map(|index| ports[index * 2 + 1]).collect();
        let initial_cluster = (0..MEMBERS)
            .map(|index| format!("m{}=127.0.0.1:{}", index + 1, peer_ports[index]))
            .collect::<Vec<_>>()
            .join(",");
        let mut group = Group {
            binary: binary.to_path_buf(),
            logs: (0..MEMBERS)
                .map(|index| root.join(format!("m{}.log", index + 1)))
                .collect(),
            root,
            children: (0..MEMBERS).map(|_| None).collect(),
            client_ports,
            peer_ports,
            initial_cluster,
        };
        for index in 0..MEMBERS {
            group.launch(index);
        }
        group
    }

    /// Starts member `index` (again), appending to its log.
    fn launch(&mut self, index: usize) {
        let name = format!("m{}", index + 1);
        let stderr = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.logs[index])
            .expect("open a member's log");
        let child = Command::new(&self.binary)
            .args(["server", "--name", &name])
            .arg("--data-dir")
            .arg(self.root.join(&name))
            .args(["--listen-client", &format!("127.0.0.1:{}", self.client_ports[index])])
            .args(["--listen-peer", &format!("127.0.0.1:{}", self.peer_ports[index])])
            .args(["--initial-cluster", &self.initial_cluster])
            .args(FAST_TIMING)
            .env("RUST_LOG", "info")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(stderr)
            .spawn()
            .expect("spawn synod server");
        self.children[index] = Some(child);
    }

    /// Sends `signal` to member `index` (SIGSTOP pauses it, SIGCONT resumes it).
    fn signal(&self, index: usize, signal: rustix::process::Signal) {
        if let Some(child) = &self.children[index] {
            rustix::process::kill_process(rustix::process::Pid::from_child(child), signal).expect("signal a member");
        }
    }

    /// SIGKILL member `index`: no chance to flush or say goodbye.
    fn kill(&mut self, index: usize) {
        if let Some(mut child) = self.children[index].take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    fn endpoints(&self) -> Vec<String> {
        self.client_ports
            .iter()
            .map(|port| format!("http://127.0.0.1:{port}"))
            .collect()
    }

    fn logs(&self) -> String {
        self.logs
            .iter()
            .map(|log| {
                format!(
                    "---- {} ----\n{}",
                    log.display(),
                    std::fs::read_to_string(log).unwrap_or_default()
                )
            })
            .collect()
    }
}

impl Drop for Group {
    fn drop(&mut self) {
        for index in 0..self.children.len() {
            self.kill(index);
        }
        if std::thread::panicking() {
            eprintln!("{}", self.logs());
        }
        let _ = std::fs::remove_dir_all(&self.root);
    }
}

/// Waits until a put through member 0 is acknowledged.
async fn wait_until_live(endpoints: &[String]) {
    let channels = client::channels(endpoints).expect("channels");
    client::until_ok(START_TIMEOUT, |_| {
        let mut kv = KvClient::new(channels[0].clone());
        let put = PutRequest {
            key: b"chaos/test/live".to_vec().into(),
            value: b"1".to_vec().into(),
            ..PutRequest::default()
        };
        async move { client::call(kv.put(client::request(put))).await }
    })
    .await
    .unwrap_or_else(|why| panic!("the group accepted no write within {START_TIMEOUT:?}: {why}"));
}

fn failures(report: &WorkloadReport) -> Vec<String> {
    let mut failures = Vec::new();
    if report.ok == 0 {
        failures.push(format!("{}: no operation succeeded", report.name));
    }
    if report.attempted != report.ok + report.failed + report.unknown {
        failures.push(format!("{}: the counts do not add up", report.name));
    }
    for anomaly in &report.anomalies {
        failures.push(format!("{}: anomaly: {anomaly}", report.name));
    }
    for inconclusive in &report.inconclusive {
        failures.push(format!("{}: inconclusive: {inconclusive}", report.name));
    }
    failures
}

/// The binary, or `None` when the test is to be skipped (never with `CI=true`).
fn binary_or_skip() -> Option<PathBuf> {
    match synod_binary() {
        Ok(binary) => Some(binary),
        Err(why) if std::env::var("CI").as_deref() == Ok("true") => panic!("{why}"),
        Err(why) => {
            eprintln!("skipped: {why}");
            None
        }
    }
}

/// How long the workloads run, `SYNOD_CHAOS_RUN_S` or `default`.
fn run_time(default: Duration) -> Duration {
    std::env::var("SYNOD_CHAOS_RUN_S")
        .ok()
        .and_then(|seconds| seconds.parse().ok())
        .map_or(default, Duration::from_secs)
}

/// Runs every workload against `group` while `meanwhile` runs, stops them
/// when it returns, and asserts every report is clean.
async fn run_all<Meanwhile: std::future::Future<Output = Group>>(
    endpoints: Vec<String>,
    seed: u64,
    meanwhile: impl FnOnce() -> Meanwhile,
) {
    wait_until_live(&endpoints).await;
    let ctx = Arc::new(Context {
        endpoints,
        origin: Instant::now(),
        seed,
        stop: CancellationToken::new(),
    });
    let tasks: Vec<_> = workload::ALL
        .iter()
        .map(|name| (*name, tokio::spawn(workload::run(name, ctx.clone()))))
        .collect();
    // Kept until the reports are in, so the members outlive the final reads.
    let group = meanwhile().await;
    ctx.stop.cancel();
    let mut all_failures = Vec::new();
    for (name, task) in tasks {
        let report = tokio::time::timeout(FINISH_TIMEOUT, task)
            .await
            .unwrap_or_else(|_| panic!("{name} did not finish within {FINISH_TIMEOUT:?} of being stopped"))
            .unwrap_or_else(|error| panic!("{name} panicked: {error}"));
        eprintln!(
            "{}",
            serde_json::to_string(&report).unwrap_or_else(|error| format!("{name}: {error}"))
        );
        assert_eq!(report.name, name);
        all_failures.extend(failures(&report));
    }
    if !all_failures.is_empty() {
        eprintln!("{}", group.logs());
    }
    assert!(all_failures.is_empty(), "{all_failures:#?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_workload_passes_on_a_healthy_group() {
    let Some(binary) = binary_or_skip() else {
        return;
    };
    let group = Group::start(&binary);
    let endpoints = group.endpoints();
    run_all(endpoints, 7, || async move {
        tokio::time::sleep(run_time(RUN_TIME)).await;
        group
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_workload_passes_across_a_member_killed_and_restarted() {
    let Some(binary) = binary_or_skip() else {
        return;
    };
    let mut group = Group::start(&binary);
    let endpoints = group.endpoints();
    run_all(endpoints, 11, || async move {
        // Member 0 is often the first master: its death forces a takeover.
        tokio::time::sleep(KILL_AFTER).await;
        group.kill(0);
        tokio::time::sleep(DOWN_FOR).await;
        group.launch(0);
        tokio::time::sleep(run_time(RUN_TIME)).await;
        group
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_workload_passes_across_a_member_paused_past_its_lease() {
    let Some(binary) = binary_or_skip() else {
        return;
    };
    let group = Group::start(&binary);
    let endpoints = group.endpoints();
    run_all(endpoints, 13, || async move {
        // Paused three times the master lease (1 s in FAST_TIMING): if member 0
        // is master, another takes over and this one wakes up believing it
        // still is, until it hears otherwise.
        tokio::time::sleep(KILL_AFTER).await;
        group.signal(0, rustix::process::Signal::STOP);
        tokio::time::sleep(DOWN_FOR).await;
        group.signal(0, rustix::process::Signal::CONT);
        tokio::time::sleep(run_time(RUN_TIME)).await;
        group
    })
    .await;
}

#[tokio::test]
async fn an_unknown_workload_is_inconclusive() {
    let ctx = Arc::new(Context {
        endpoints: vec!["http://127.0.0.1:1".to_string()],
        origin: Instant::now(),
        seed: 0,
        stop: CancellationToken::new(),
    });
    let report = workload::run("no-such-workload", ctx).await;
    assert_eq!(report.inconclusive.len(), 1, "{report:?}");
}
