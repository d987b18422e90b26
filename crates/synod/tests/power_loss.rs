//! The power-loss failpoint (`--failpoint-power-loss`): on SIGUSR1 a member
//! drops every write it did not sync and exits at once. Every acknowledged
//! write survives all three members losing power together; with
//! `--unsafe-bug no-fsync` as well, nothing is ever durable, and the same
//! power loss loses acknowledged writes (or leaves members that cannot
//! start), which shows that the failpoint really drops unsynced data.

mod common;

use std::process::Command;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::{etcdctl, output_text, Cluster};

/// Keys written (each acknowledged) before the power loss.
const KEYS: usize = 20;
/// A member that lost power exits with this code (128 + SIGKILL's 9).
const POWER_LOSS_EXIT_CODE: i32 = 137;

/// Puts `acked/0` .. `acked/{KEYS - 1}` through the master; each put must be
/// acknowledged.
fn write_keys(cluster: &Cluster) {
    let master = cluster.wait_for_master(Duration::from_secs(20));
    let endpoint = cluster.client_url(master);
    for index in 0..KEYS {
        let key = format!("acked/{index}");
        let put = cluster.etcdctl(&["--endpoints", &endpoint, "put", &key, "v"]);
        assert!(put.status.success(), "put {key}: {}", output_text(&put));
    }
}

/// Sends SIGUSR1 to every member, all at once, and checks that each lost
/// power: it exited with the failpoint's code after logging what it dropped.
/// Returns the bytes each member dropped.
fn lose_power_everywhere(cluster: &mut Cluster) -> Vec<u64> {
    let pids: Vec<String> = cluster
        .members
        .iter()
        .map(|member| member.child.as_ref().expect("running").id().to_string())
        .collect();
    let mut kill = Command::new("kill");
    kill.arg("-USR1").args(&pids);
    assert!(kill.status().expect("run kill").success(), "kill -USR1 {pids:?}");
    let deadline = Instant::now() + Duration::from_secs(10);
    let mut dropped = Vec::new();
    for member in &mut cluster.members {
        let mut child = member.child.take().expect("running");
        let status = loop {
            if let Some(status) = child.try_wait().expect("wait") {
                break status;
            }
            assert!(Instant::now() < deadline, "{} did not exit on SIGUSR1", member.name);
            std::thread::sleep(Duration::from_millis(20));
        };
        assert_eq!(status.code(), Some(POWER_LOSS_EXIT_CODE), "{}: {status:?}", member.name);
        let log = member.log_text();
        let line = log
            .lines()
            .find(|line| line.contains("power loss: dropped"))
            .unwrap_or_else(|| panic!("{} logged no power loss: {log}", member.name));
        let bytes = line
            .split("power loss: dropped ")
            .nth(1)
            .and_then(|rest| rest.split(' ').next())
            .and_then(|bytes| bytes.parse().ok())
            .unwrap_or_else(|| panic!("{}: no byte count in {line:?}", member.name));
        dropped.push(bytes);
    }
    dropped
}

/// The `acked/` keys a linearizable read finds, once some member serves
/// one within `timeout`; `None` if none does, or once every member has
/// exited (refused to start).
fn surviving_keys(cluster: &mut Cluster, timeout: Duration) -> Option<Vec<String>> {
    let deadline = Instant::now() + timeout;
    while Instant::now() < deadline {
        let running: Vec<usize> = (0..cluster.members.len())
            .filter(|index| {
                cluster.members[*index]
                    .child
                    .as_mut()
                    .is_some_and(|child| matches!(child.try_wait(), Ok(None)))
            })
            .collect();
        if running.is_empty() {
            return None;
        }
        for index in running {
            let endpoint = cluster.client_url(index);
            // A short timeout: a member that is still starting, or about to
            // exit, must not hold up the others.
            let got = cluster.etcdctl(&[
                "--command-timeout",
                "1s",
                "--endpoints",
                &endpoint,
                "get",
                "acked/",
                "--prefix",
                "--keys-only",
            ]);
            if got.status.success() {
                let text = String::from_utf8_lossy(&got.stdout).into_owned();
                return Some(
                    text.lines()
                        .filter(|line| !line.is_empty())
                        .map(str::to_string)
                        .collect(),
                );
            }
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    None
}

#[test]
fn acknowledged_writes_survive_a_power_loss_of_every_member() {
    let mut cluster = Cluster::start_with(3, "power-loss", &["--failpoint-power-loss"]);
    write_keys(&cluster);
    // More writes go on while the power goes out; those acknowledged must
    // survive as well.
    let endpoints = cluster.endpoints();
    let stop = Arc::new(AtomicBool::new(false));
    let writer = {
        let stop = stop.clone();
        std::thread::spawn(move || {
            let mut acknowledged = Vec::new();
            for index in 0.. {
                if stop.load(Ordering::Relaxed) {
                    break;
                }
                let key = format!("acked/late-{index}");
                if etcdctl(&["--endpoints", &endpoints, "put", &key, "v"]).status.success() {
                    acknowledged.push(key);
                }
            }
            acknowledged
        })
    };
    std::thread::sleep(Duration::from_millis(500));
    let dropped = lose_power_everywhere(&mut cluster);
    stop.store(true, Ordering::Relaxed);
    let late = writer.join().expect("the writer thread");
    println!(
        "bytes dropped per member: {dropped:?}; {} writes acknowledged while power went out",
        late.len()
    );
    for index in 0..3 {
        cluster.launch(index);
    }
    let keys = surviving_keys(&mut cluster, Duration::from_secs(20)).expect("the group serves reads again");
    for index in 0..KEYS {
        assert!(
            keys.contains(&format!("acked/{index}")),
            "acked/{index} survives: {keys:?}"
        );
    }
    for key in &late {
        assert!(keys.contains(key), "{key} survives: {keys:?}");
    }
}

#[test]
fn without_fsync_a_power_loss_of_every_member_loses_acknowledged_writes() {
    let mut cluster = Cluster::start_with(
        3,
        "power-loss-no-fsync",
        &["--failpoint-power-loss", "--unsafe-bug", "no-fsync"],
    );
    cluster.wait_for_log("UNSAFE: --unsafe-bug no-fsync");
    write_keys(&cluster);
    let dropped = lose_power_everywhere(&mut cluster);
    println!("bytes dropped per member: {dropped:?}");
    assert!(
        dropped.iter().all(|bytes| *bytes > 0),
        "every member dropped data: {dropped:?}"
    );
    for index in 0..3 {
        cluster.launch(index);
    }
    match surviving_keys(&mut cluster, Duration::from_secs(10)) {
        Some(keys) => {
            println!("after the power loss {} of {KEYS} acknowledged keys remain", keys.len());
            assert!(keys.len() < KEYS, "acknowledged writes were lost: {keys:?}");
        }
        None => {
            let mut refused = Vec::new();
            for member in &mut cluster.members {
                let child = member.child.as_mut().expect("launched");
                if let Ok(Some(status)) = child.try_wait() {
                    refused.push(format!("{}: {status}", member.name));
                }
            }
            for member in &cluster.members {
                let log = member.log_text();
                println!("{}: {}", member.name, log.lines().last().unwrap_or_default());
            }
            println!("after the power loss no member serves reads; exited: {refused:?}");
            assert!(!refused.is_empty(), "no member serves reads, yet none refused to start");
        }
    }
}
