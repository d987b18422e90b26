//! Jepsen's finding against etcd locks, on real processes: a lock holder
//! stopped with SIGSTOP loses its lease and lock while it does not know, and
//! writes when it resumes. With Chubby's sequencer (the `synod-sequencer`
//! metadata) that write is refused and changes nothing; without it (the
//! control) the write goes through over the next holder's.

mod common;

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use common::{etcdctl, output_text, retry, Cluster};

/// The example `lock_holder`, which `cargo test` builds beside the tests.
fn lock_holder_binary() -> std::path::PathBuf {
    let tests = std::env::current_exe().expect("the test's path");
    let profile = tests.parent().and_then(|deps| deps.parent()).expect("target/<profile>");
    let binary = profile.join("examples").join("lock_holder");
    assert!(
        binary.exists(),
        "{} is missing: `cargo test` builds it with the workspace; a filtered run needs `--examples` too",
        binary.display()
    );
    binary
}

struct Holder {
    child: Child,
    lines: Arc<Mutex<Vec<String>>>,
}

impl Holder {
    fn start(endpoint: &str, fenced: bool) -> Holder {
        let mut command = Command::new(lock_holder_binary());
        command.args([endpoint, "fence-lock", "fenced"]);
        if !fenced {
            command.arg("--no-sequencer");
        }
        let mut child = command
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("start the lock holder example");
        let lines = Arc::new(Mutex::new(Vec::new()));
        let stdout = child.stdout.take().expect("piped stdout");
        let collected = lines.clone();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                collected.lock().unwrap().push(line);
            }
        });
        Holder { child, lines }
    }

    fn lines(&self) -> Vec<String> {
        self.lines.lock().unwrap().clone()
    }

    /// Waits for a line that `matches` after the first `skip` lines.
    fn wait_for(&self, skip: usize, what: &str, matches: impl Fn(&str) -> bool) -> String {
        retry(Duration::from_secs(30), what, || {
            let lines = self.lines();
            lines
                .iter()
                .skip(skip)
                .find(|line| matches(line))
                .cloned()
                .ok_or_else(|| format!("holder said: {lines:?}"))
        })
    }

    fn signal(&self, signal: &str) {
        let status = Command::new("kill")
            .args([signal, &self.child.id().to_string()])
            .status()
            .expect("run kill");
        assert!(status.success(), "kill {signal}");
    }
}

impl Drop for Holder {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Pauses a holder past its lease, lets `etcdctl lock` take the lock and
/// write `other`, resumes the holder, and returns the holder and how many
/// lines it had printed before it resumed.
fn pause_past_the_lease_while_another_takes_the_lock(cluster: &Cluster, fenced: bool) -> (Holder, usize) {
    let holder = Holder::start(&cluster.members[1].endpoint(), fenced);
    holder.wait_for(0, "the holder's third write", |line| line == "put 3 ok");
    holder.signal("-STOP");
    // `etcdctl lock` waits until the paused holder's lease runs out and the
    // master revokes it, then runs its command while it holds the lock.
    let endpoints = cluster.endpoints();
    let taken = etcdctl(&[
        "--endpoints",
        &endpoints,
        "--command-timeout=30s",
        "lock",
        "fence-lock",
        // The command's own flags follow `--`, or the outer etcdctl takes
        // them as its own.
        "--",
        "etcdctl",
        "--endpoints",
        &endpoints,
        "put",
        "fenced",
        "other",
    ]);
    assert!(taken.status.success(), "{}", output_text(&taken));
    assert_eq!(fenced_value(cluster), "other");
    let before_resume = holder.lines().len();
    holder.signal("-CONT");
    (holder, before_resume)
}

/// The fenced key's value, read through the whole group.
fn fenced_value(cluster: &Cluster) -> String {
    let value = etcdctl(&[
        "--endpoints",
        &cluster.endpoints(),
        "get",
        "fenced",
        "--print-value-only",
    ]);
    output_text(&value).trim().to_string()
}

#[test]
fn a_holder_paused_past_its_lease_cannot_write_with_its_sequencer() {
    let cluster = Cluster::start(3, "paused-holder");
    let (holder, before_resume) = pause_past_the_lease_while_another_takes_the_lock(&cluster, true);
    let refused = holder.wait_for(before_resume, "a refused write after the pause", |line| {
        line.contains("refused")
    });
    assert!(refused.contains("sequencer is stale"), "{refused}");
    // Everything it tried after resuming was refused; the value is the
    // new holder's.
    holder.wait_for(before_resume, "three writes after the pause", |line| {
        line.starts_with("put ") && holder.lines().len() >= before_resume + 3
    });
    let after: Vec<String> = holder.lines().into_iter().skip(before_resume).collect();
    assert!(
        after.iter().all(|line| line.contains("sequencer is stale")),
        "{after:?}"
    );
    assert_eq!(fenced_value(&cluster), "other");
}

#[test]
fn without_a_sequencer_the_paused_holder_overwrites_the_next_holder() {
    let cluster = Cluster::start(3, "paused-holder-unfenced");
    let (holder, before_resume) = pause_past_the_lease_while_another_takes_the_lock(&cluster, false);
    holder.wait_for(before_resume, "a write after the pause", |line| line.ends_with(" ok"));
    assert!(
        fenced_value(&cluster).starts_with("holder-"),
        "the lost update the sequencer prevents"
    );
}
