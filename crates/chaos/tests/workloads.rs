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
/// How long the workloads run before they are told to stop.
const RUN_TIME: Duration = Duration::from_secs(5);
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
    root: PathBuf,
    children: Vec<Child>,
    logs: Vec<PathBuf>,
    client_ports: Vec<u16>,
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
            root,
            children: Vec::new(),
            logs: Vec::new(),
            client_ports,
        };
        for (index, peer_port) in peer_ports.iter().enumerate() {
            let name = format!("m{}", index + 1);
            let log = group.root.join(format!("{name}.log"));
            let stderr = std::fs::File::create(&log).expect("create a member's log");
            let child = Command::new(binary)
                .args(["server", "--name", &name])
                .arg("--data-dir")
                .arg(group.root.join(&name))
                .args(["--listen-client", &format!("127.0.0.1:{}", group.client_ports[index])])
                .args(["--listen-peer", &format!("127.0.0.1:{peer_port}")])
                .args(["--initial-cluster", &initial_cluster])
                .args(FAST_TIMING)
                .env("RUST_LOG", "info")
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(stderr)
                .spawn()
                .expect("spawn synod server");
            group.children.push(child);
            group.logs.push(log);
        }
        group
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
        for child in &mut self.children {
            let _ = child.kill();
            let _ = child.wait();
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

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_workload_passes_on_a_healthy_group() {
    let binary = match synod_binary() {
        Ok(binary) => binary,
        Err(why) if std::env::var("CI").as_deref() == Ok("true") => panic!("{why}"),
        Err(why) => {
            eprintln!("skipped: {why}");
            return;
        }
    };
    let group = Group::start(&binary);
    wait_until_live(&group.endpoints()).await;
    let ctx = Arc::new(Context {
        endpoints: group.endpoints(),
        origin: Instant::now(),
        seed: 7,
        stop: CancellationToken::new(),
    });
    let tasks: Vec<_> = workload::ALL
        .iter()
        .map(|name| (*name, tokio::spawn(workload::run(name, ctx.clone()))))
        .collect();
    tokio::time::sleep(RUN_TIME).await;
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
    assert!(all_failures.is_empty(), "{all_failures:#?}");
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
