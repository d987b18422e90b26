//! `synod chaos` against real members: its checkers must catch the unsafe
//! modes the members can be started in (negative controls). A clean run
//! under every fault is part of `scripts/test.sh`, where it runs for minutes.

mod common;

use std::process::Command;
use std::sync::Mutex;

use common::{synod_binary, TempDir};

/// What one `synod chaos` run reported.
struct Outcome {
    status: Option<i32>,
    anomalies: Vec<String>,
    report: serde_json::Value,
    stdout: String,
}

/// One run at a time: each starts a group and loads it, and two at once on
/// a small machine would turn into a test of the machine.
static ONE_RUN_AT_A_TIME: Mutex<()> = Mutex::new(());

fn chaos(tag: &str, flags: &[&str]) -> Outcome {
    let _turn = ONE_RUN_AT_A_TIME
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner());
    let root = TempDir::new(tag);
    let json = root.0.join("report.json");
    let output = Command::new(synod_binary())
        .arg("chaos")
        .arg("--dir")
        .arg(root.0.join("members"))
        .arg("--json")
        .arg(&json)
        .args(flags)
        .output()
        .expect("run synod chaos");
    let stdout = format!(
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    let report: serde_json::Value = serde_json::from_slice(&std::fs::read(&json).unwrap_or_default())
        .unwrap_or_else(|error| panic!("no JSON report ({error}):\n{stdout}"));
    let anomalies = report["anomalies"]
        .as_array()
        .expect("an anomalies array")
        .iter()
        .map(|anomaly| anomaly.as_str().unwrap_or_default().to_string())
        .collect();
    Outcome {
        status: output.status.code(),
        anomalies,
        report,
        stdout,
    }
}

/// The run must fail, with an anomaly that `expected` accepts.
fn assert_caught(outcome: &Outcome, what: &str, expected: impl Fn(&str) -> bool) {
    assert_eq!(outcome.status, Some(1), "{}", outcome.stdout);
    assert!(
        outcome.anomalies.iter().any(|anomaly| expected(anomaly)),
        "no anomaly of {what}:\n{}",
        outcome.stdout
    );
}

#[test]
fn a_master_that_reads_without_its_lease_is_caught_serving_stale_reads() {
    let outcome = chaos(
        "chaos-stale-read",
        &[
            "--seed",
            "1",
            "--duration-s",
            "20",
            "--workloads",
            "register",
            "--faults",
            "isolate-master",
            "--unsafe-bug",
            "read-without-lease",
        ],
    );
    assert_caught(&outcome, "the register checker", |anomaly| {
        anomaly.starts_with("register:") && anomaly.contains("not linearizable")
    });
}

#[test]
fn a_lapsed_master_that_answers_keep_alives_is_caught() {
    let outcome = chaos(
        "chaos-lapsed-keepalive",
        &[
            "--seed",
            "1",
            "--duration-s",
            "30",
            "--workloads",
            "lease",
            "--faults",
            "isolate-master",
            "--unsafe-bug",
            "keepalive-lapsed-master",
        ],
    );
    assert_caught(&outcome, "the lease checker", |anomaly| anomaly.starts_with("lease:"));
}

#[test]
fn acknowledging_writes_without_fsync_is_caught_by_a_power_loss() {
    let outcome = chaos(
        "chaos-no-fsync",
        &[
            "--seed",
            "1",
            "--duration-s",
            "15",
            "--workloads",
            "set",
            "--faults",
            "power-loss-all",
            "--unsafe-bug",
            "no-fsync",
        ],
    );
    // Either acknowledged adds are gone, or (what a member does when its
    // promises are gone) the members refuse to start and nothing is served.
    assert_caught(&outcome, "lost data", |anomaly| {
        anomaly.starts_with("set:") || anomaly.contains("refusing to start")
    });
}

#[test]
fn the_same_runs_without_the_unsafe_modes_find_nothing() {
    let outcome = chaos(
        "chaos-controls-clean",
        &[
            "--seed",
            "1",
            "--duration-s",
            "30",
            "--faults",
            "isolate-master,power-loss-all",
        ],
    );
    assert_eq!(outcome.status, Some(0), "{}", outcome.stdout);
    assert!(outcome.anomalies.is_empty(), "{}", outcome.stdout);
    let workloads = outcome.report["workloads"].as_array().expect("a workloads array");
    assert_eq!(workloads.len(), 5, "{}", outcome.stdout);
    for workload in workloads {
        assert!(workload["ok"].as_u64() > Some(0), "{workload}");
    }
}

#[test]
fn bad_flags_are_refused_with_a_reason() {
    for (flags, expected) in [
        (&["--faults", "meteor"][..], "unknown fault"),
        (&["--members", "0"][..], "--members"),
        (
            &["--workloads", "nonsense", "--duration-s", "1"][..],
            "unknown workload",
        ),
    ] {
        let output = Command::new(synod_binary())
            .arg("chaos")
            .args(flags)
            .output()
            .expect("run synod chaos");
        assert!(!output.status.success(), "{flags:?} accepted");
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert!(stderr.contains(expected), "{flags:?}: {stderr}");
    }
}
