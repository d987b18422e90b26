//! Real `synod server` processes on loopback, and `etcdctl` against them.

#![allow(dead_code, reason = "each test binary uses a different part of the harness")]

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

/// Timing flags that make elections quick on loopback (a master lease of 1 s).
pub const FAST_TIMING: [&str; 8] = synod_chaos::cluster::TIMING_FLAGS;

pub fn synod_binary() -> &'static str {
    env!("CARGO_BIN_EXE_synod")
}

/// A fresh directory under the system temp dir, removed on drop.
pub struct TempDir(pub PathBuf);

impl TempDir {
    /// Two directories made with one tag in one test process differ (a
    /// counter), so one never removes the other's files.
    pub fn new(tag: &str) -> TempDir {
        static MADE: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
        let path = std::env::temp_dir().join(format!(
            "synod-test-{tag}-{}-{}",
            std::process::id(),
            MADE.fetch_add(1, std::sync::atomic::Ordering::Relaxed)
        ));
        let _ = std::fs::remove_dir_all(&path);
        std::fs::create_dir_all(&path).expect("create temp dir");
        TempDir(path)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// Ports nobody listens on right now (bound, then released).
pub fn free_ports(count: usize) -> Vec<u16> {
    let listeners: Vec<TcpListener> = (0..count)
        .map(|_| TcpListener::bind("127.0.0.1:0").expect("bind an ephemeral port"))
        .collect();
    listeners
        .iter()
        .map(|listener| listener.local_addr().expect("local address").port())
        .collect()
}

pub struct Member {
    pub name: String,
    pub client_port: u16,
    pub peer_port: u16,
    pub data_dir: PathBuf,
    pub log: PathBuf,
    pub child: Option<Child>,
}

impl Member {
    pub fn endpoint(&self) -> String {
        format!("127.0.0.1:{}", self.client_port)
    }

    pub fn url(&self) -> String {
        format!("http://127.0.0.1:{}", self.client_port)
    }

    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// Waits until this member's log holds `what` at least `count` times;
    /// panics with the log after 20 s.
    pub fn wait_for_log_lines(&self, what: &str, count: usize) {
        retry(
            Duration::from_secs(20),
            &format!("{count} log lines with {what:?}"),
            || {
                let log = self.log_text();
                if log.matches(what).count() >= count {
                    return Ok(());
                }
                Err(format!("{}'s log: {log}", self.name))
            },
        );
    }

    /// The value of counter or gauge `name` on this member's `/metrics`
    /// (served on the client port), if it answers and has it.
    pub fn metric(&self, name: &str) -> Option<i64> {
        let (code, body) = http_get(self.client_port, "/metrics");
        if code != 200 {
            return None;
        }
        body.lines()
            .find_map(|line| line.strip_prefix(name)?.strip_prefix(' '))
            .and_then(|value| value.trim().parse().ok())
    }
}

/// A group of real server processes.
pub struct Cluster {
    pub members: Vec<Member>,
    pub initial_cluster: String,
    pub root: TempDir,
    /// Flags added to every member's command line.
    pub extra_args: Vec<String>,
    /// The certificates of a cluster started with [`Cluster::start_tls`].
    pub tls: Option<ClusterTls>,
}

/// Where a TLS cluster's certificates are, and whether members ask clients
/// for theirs.
pub struct ClusterTls {
    pub directory: PathBuf,
    pub client_cert_auth: bool,
}

impl ClusterTls {
    pub fn file(&self, name: &str) -> String {
        self.directory.join(name).display().to_string()
    }

    /// The etcdctl flags that trust the cluster's CA and, if members ask for
    /// one, present the client certificate.
    pub fn etcdctl_flags(&self) -> Vec<String> {
        use synod_server::tls::generate::*;
        let mut flags = vec!["--cacert".to_string(), self.file(CA_FILE)];
        if self.client_cert_auth {
            flags.extend(["--cert".to_string(), self.file(CLIENT_CERT_FILE)]);
            flags.extend(["--key".to_string(), self.file(CLIENT_KEY_FILE)]);
        }
        flags
    }
}

impl Cluster {
    pub fn start(size: usize, tag: &str) -> Cluster {
        Cluster::start_with(size, tag, &[])
    }

    pub fn start_with(size: usize, tag: &str, extra_args: &[&str]) -> Cluster {
        let mut cluster = Cluster::unstarted(size, tag, extra_args);
        for index in 0..size {
            cluster.launch(index);
        }
        cluster.wait_for_master(Duration::from_secs(20));
        cluster
    }

    /// Names, ports and data directories for a group, none of it started
    /// (to fill the data directories first, say from a backup).
    pub fn unstarted(size: usize, tag: &str, extra_args: &[&str]) -> Cluster {
        let root = TempDir::new(tag);
        let ports = free_ports(size * 2);
        let members: Vec<Member> = (0..size)
            .map(|index| {
                let name = format!("m{}", index + 1);
                Member {
                    data_dir: root.0.join(&name),
                    log: root.0.join(format!("{name}.log")),
                    name,
                    client_port: ports[index * 2],
                    peer_port: ports[index * 2 + 1],
                    child: None,
                }
            })
            .collect();
        let initial_cluster = members
            .iter()
            .map(|member| format!("{}=127.0.0.1:{}", member.name, member.peer_port))
            .collect::<Vec<_>>()
            .join(",");
        Cluster {
            members,
            initial_cluster,
            root,
            extra_args: extra_args.iter().map(|arg| arg.to_string()).collect(),
            tls: None,
        }
    }

    /// A started group whose client ports speak TLS with certificates from
    /// a fresh CA; with `client_cert_auth`, members require client
    /// certificates too.
    pub fn start_tls(size: usize, tag: &str, client_cert_auth: bool) -> Cluster {
        use synod_server::tls::generate::*;
        let mut cluster = Cluster::unstarted(size, tag, &[]);
        let directory = cluster.root.0.join("tls");
        synod_server::tls::generate::write(&directory, "root").expect("generate certificates");
        let tls = ClusterTls {
            directory,
            client_cert_auth,
        };
        let mut args = vec![
            "--cert-file".to_string(),
            tls.file(SERVER_CERT_FILE),
            "--key-file".to_string(),
            tls.file(SERVER_KEY_FILE),
            "--trusted-ca-file".to_string(),
            tls.file(CA_FILE),
        ];
        if client_cert_auth {
            args.push("--client-cert-auth".to_string());
        }
        cluster.extra_args = args;
        cluster.tls = Some(tls);
        for index in 0..size {
            cluster.launch(index);
        }
        cluster.wait_for_master(Duration::from_secs(20));
        cluster
    }

    /// Member `index`'s client endpoint: `https://HOST:PORT` on a TLS
    /// cluster, `HOST:PORT` otherwise. (etcdctl 3.4 sends an `http://`
    /// endpoint's whole URL as the HTTP/2 `:authority` in `endpoint status`,
    /// which the server's HTTP/2 layer refuses as malformed.)
    pub fn client_url(&self, index: usize) -> String {
        match self.tls {
            Some(_) => format!("https://{}", self.members[index].endpoint()),
            None => self.members[index].endpoint(),
        }
    }

    /// `synod snapshot restore FILE` into every member's data directory, as
    /// members of this (unstarted) group; what each restore printed.
    pub fn restore_each_member(&self, file: &str) -> Vec<String> {
        self.members
            .iter()
            .map(|member| {
                let output = synod(
                    &[
                        "snapshot",
                        "restore",
                        file,
                        "--name",
                        &member.name,
                        "--data-dir",
                        member.data_dir.to_str().expect("UTF-8"),
                        "--initial-cluster",
                        &self.initial_cluster,
                    ],
                    None,
                );
                assert!(
                    output.status.success(),
                    "restore {}: {}",
                    member.name,
                    output_text(&output)
                );
                String::from_utf8_lossy(&output.stdout).into_owned()
            })
            .collect()
    }

    /// etcdctl against this cluster: its TLS flags first, if any.
    pub fn etcdctl(&self, args: &[&str]) -> Output {
        let flags = self.tls.as_ref().map(ClusterTls::etcdctl_flags).unwrap_or_default();
        let mut all: Vec<&str> = flags.iter().map(String::as_str).collect();
        all.extend_from_slice(args);
        etcdctl(&all)
    }

    pub fn launch(&mut self, index: usize) {
        self.launch_with(index, &[]);
    }

    /// Starts member `index` with `extra` flags added.
    pub fn launch_with(&mut self, index: usize, extra: &[&str]) {
        let member = &self.members[index];
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&member.log)
            .expect("open member log");
        let child = Command::new(synod_binary())
            .args(["server", "--name", &member.name])
            .arg("--data-dir")
            .arg(&member.data_dir)
            .args(["--listen-client", &self.client_url(index)])
            .args(["--listen-peer", &format!("127.0.0.1:{}", member.peer_port)])
            .args(["--initial-cluster", &self.initial_cluster])
            .args(FAST_TIMING)
            .args(&self.extra_args)
            .args(extra)
            .env("RUST_LOG", "info")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("spawn synod");
        self.members[index].child = Some(child);
    }

    /// SIGKILL: no chance to flush or say goodbye.
    pub fn kill(&mut self, index: usize) {
        if let Some(mut child) = self.members[index].child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// SIGTERM, then wait for a clean exit.
    pub fn terminate(&mut self, index: usize) -> Option<std::process::ExitStatus> {
        let mut child = self.members[index].child.take()?;
        let _ = Command::new("kill").args(["-TERM", &child.id().to_string()]).status();
        let deadline = Instant::now() + Duration::from_secs(10);
        while Instant::now() < deadline {
            if let Ok(Some(status)) = child.try_wait() {
                return Some(status);
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        let _ = child.kill();
        child.wait().ok()
    }

    pub fn endpoints(&self) -> String {
        self.members
            .iter()
            .filter(|member| member.child.is_some())
            .map(Member::endpoint)
            .collect::<Vec<_>>()
            .join(",")
    }

    /// The index of the member that reports itself master, if exactly one does.
    pub fn master(&self) -> Option<usize> {
        let masters: Vec<usize> = (0..self.members.len())
            .filter(|index| self.members[*index].child.is_some())
            .filter(|index| {
                let status = self.etcdctl(&["--endpoints", &self.client_url(*index), "endpoint", "status"]);
                // "endpoint, id, version, db size, is leader, ..."
                String::from_utf8_lossy(&status.stdout)
                    .split(", ")
                    .nth(4)
                    .is_some_and(|field| field == "true")
            })
            .collect();
        (masters.len() == 1).then(|| masters[0])
    }

    /// Waits until some member's log holds `what`; panics with every log after 20 s.
    pub fn wait_for_log(&self, what: &str) {
        retry(Duration::from_secs(20), &format!("a log line with {what:?}"), || {
            if self.members.iter().any(|member| member.log_text().contains(what)) {
                return Ok(());
            }
            Err(self.members.iter().map(Member::log_text).collect())
        });
    }

    /// Puts `key` = "v" through member `index` and reads it back there.
    pub fn put_get(&self, index: usize, key: &str) {
        let endpoint = self.client_url(index);
        let put = self.etcdctl(&["--endpoints", &endpoint, "put", key, "v"]);
        assert!(put.status.success(), "{}", output_text(&put));
        let got = self.etcdctl(&["--endpoints", &endpoint, "get", key, "--print-value-only"]);
        assert_eq!(String::from_utf8_lossy(&got.stdout), "v\n", "{}", output_text(&got));
    }

    pub fn wait_for_master(&self, timeout: Duration) -> usize {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(master) = self.master() {
                return master;
            }
            if Instant::now() > deadline {
                for member in &self.members {
                    eprintln!("---- {} ----\n{}", member.name, member.log_text());
                }
                panic!("no master within {timeout:?}");
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        for index in 0..self.members.len() {
            self.kill(index);
        }
        if std::thread::panicking() {
            for member in &self.members {
                eprintln!("---- {} log ----\n{}", member.name, member.log_text());
            }
        }
    }
}

/// Calls `attempt` every 100 ms until it succeeds, and returns what it
/// returned; after `timeout`, panics with its last error.
pub fn retry<T>(timeout: Duration, what: &str, mut attempt: impl FnMut() -> Result<T, String>) -> T {
    let deadline = Instant::now() + timeout;
    loop {
        match attempt() {
            Ok(value) => return value,
            Err(error) if Instant::now() >= deadline => panic!("no {what} within {timeout:?}: {error}"),
            Err(_) => std::thread::sleep(Duration::from_millis(100)),
        }
    }
}

/// A command's standard output then its standard error, for failure messages.
pub fn output_text(output: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    )
}

/// Runs etcdctl (API v3) with `args`.
pub fn etcdctl(args: &[&str]) -> Output {
    etcdctl_with_input(args, None)
}

pub fn etcdctl_with_input(args: &[&str], input: Option<&[u8]>) -> Output {
    let mut command = Command::new("etcdctl");
    command
        .env("ETCDCTL_API", "3")
        .args(["--dial-timeout", "2s", "--command-timeout", "10s"])
        .args(args)
        .stdin(if input.is_some() { Stdio::piped() } else { Stdio::null() })
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let mut child = command
        .spawn()
        .expect("etcdctl must be installed (Debian package etcd-client); scripts/test.sh installs it");
    if let Some(input) = input {
        let mut stdin = child.stdin.take().expect("piped stdin");
        stdin.write_all(input).expect("write etcdctl input");
    }
    child.wait_with_output().expect("wait for etcdctl")
}

/// Runs etcdctl and returns its standard output, failing the test on an error exit.
pub fn etcdctl_ok(args: &[&str]) -> String {
    let output = etcdctl(args);
    assert!(
        output.status.success(),
        "etcdctl {args:?} failed: {}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8_lossy(&output.stdout).into_owned()
}

/// A plain HTTP/1.1 GET; returns (status code, body).
pub fn http_get(port: u16, path: &str) -> (u16, String) {
    let (head, body) = http_get_with_head(port, path);
    let code = head
        .split_whitespace()
        .nth(1)
        .and_then(|code| code.parse().ok())
        .unwrap_or(0);
    (code, body)
}

/// A plain HTTP/1.1 GET; returns the response head and its body.
pub fn http_get_with_head(port: u16, path: &str) -> (String, String) {
    let mut stream = TcpStream::connect(("127.0.0.1", port)).expect("connect");
    stream.set_read_timeout(Some(Duration::from_secs(5))).expect("timeout");
    write!(
        stream,
        "GET {path} HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n"
    )
    .expect("send");
    let mut response = String::new();
    let _ = stream.read_to_string(&mut response);
    let (head, body) = response.split_once("\r\n\r\n").unwrap_or((&response, ""));
    (head.to_string(), body.to_string())
}

/// Runs `synod` with `args` to completion (for flag and data directory errors).
pub fn synod(args: &[&str], data_dir: Option<&Path>) -> Output {
    let mut command = Command::new(synod_binary());
    command.args(args);
    if let Some(directory) = data_dir {
        command.arg("--data-dir").arg(directory);
    }
    command.output().expect("run synod")
}

/// A long-running etcdctl (watch, lock, elect) whose output is collected as it comes.
pub struct Background {
    child: Child,
    output: std::sync::Arc<std::sync::Mutex<String>>,
}

impl Background {
    pub fn etcdctl(args: &[&str]) -> Background {
        let mut child = Command::new("etcdctl")
            .env("ETCDCTL_API", "3")
            .args(args)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .expect("etcdctl must be installed (Debian package etcd-client)");
        let mut stdout = child.stdout.take().expect("piped stdout");
        let output = std::sync::Arc::new(std::sync::Mutex::new(String::new()));
        let sink = output.clone();
        std::thread::spawn(move || {
            let mut buffer = [0u8; 4096];
            while let Ok(read) = stdout.read(&mut buffer) {
                if read == 0 {
                    break;
                }
                let text = String::from_utf8_lossy(&buffer[..read]).into_owned();
                sink.lock()
                    .unwrap_or_else(|poisoned| poisoned.into_inner())
                    .push_str(&text);
            }
        });
        Background { child, output }
    }

    pub fn output(&self) -> String {
        self.output
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .clone()
    }

    /// Waits until the output satisfies `done`; panics with the output after `timeout`.
    pub fn wait_for(&self, timeout: Duration, what: &str, done: impl Fn(&str) -> bool) -> String {
        let deadline = Instant::now() + timeout;
        loop {
            let output = self.output();
            if done(&output) {
                return output;
            }
            assert!(
                Instant::now() < deadline,
                "{what} within {timeout:?}; output so far: {output:?}"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

impl Drop for Background {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A single-member etcd on loopback, killed on drop.
pub struct Etcd {
    child: Child,
    /// Its client endpoint, `127.0.0.1:PORT`.
    pub endpoint: String,
    _data: TempDir,
}

impl Etcd {
    /// Starts etcd, or returns `None` when it is not installed (a failure
    /// under `CI=true`, where scripts/test.sh must have installed it).
    pub fn start() -> Option<Etcd> {
        if Command::new("etcd").arg("--version").output().is_err() {
            assert!(
                std::env::var("CI").as_deref() != Ok("true"),
                "etcd is missing and CI=true (Debian package etcd-server; scripts/test.sh installs it)"
            );
            eprintln!("skipped: etcd is not installed (Debian package etcd-server)");
            return None;
        }
        let data = TempDir::new("etcd-source");
        let ports = free_ports(2);
        let client = format!("http://127.0.0.1:{}", ports[0]);
        let peer = format!("http://127.0.0.1:{}", ports[1]);
        let child = Command::new("etcd")
            .args(["--name", "source", "--data-dir"])
            .arg(data.0.join("etcd"))
            .args(["--listen-client-urls", &client, "--advertise-client-urls", &client])
            .args(["--listen-peer-urls", &peer, "--initial-advertise-peer-urls", &peer])
            .args(["--initial-cluster", &format!("source={peer}")])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start etcd");
        let etcd = Etcd {
            child,
            endpoint: format!("127.0.0.1:{}", ports[0]),
            _data: data,
        };
        // A read, so that the store is still at revision 1 when the test starts.
        retry(Duration::from_secs(20), "etcd to serve", || {
            let output = etcdctl(&["--endpoints", &etcd.endpoint, "get", "probe"]);
            output
                .status
                .success()
                .then_some(())
                .ok_or_else(|| output_text(&output))
        });
        Some(etcd)
    }
}

impl Drop for Etcd {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
