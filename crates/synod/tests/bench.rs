//! `synod bench` against a three-member group of real `synod server`
//! processes: every workload runs briefly and must report well-formed JSON and
//! no errors; bad flags must fail with a message naming the flag. Nothing here
//! asserts a speed.

mod common;

use std::path::Path;
use std::process::Output;

use common::{synod, Cluster, TempDir};

/// Runs `synod bench` with `args`, expecting success, and returns the JSON report.
fn bench(endpoints: &str, json: &Path, args: &[&str]) -> serde_json::Value {
    let mut line = vec!["bench"];
    line.extend_from_slice(args);
    let json_text = json.to_string_lossy().into_owned();
    line.extend_from_slice(&["--endpoints", endpoints, "--json", &json_text, "--quiet"]);
    let output = synod(&line, None);
    assert!(
        output.status.success(),
        "synod {line:?} failed: {}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(stdout.contains("throughput"), "no text report: {stdout}");
    let text = std::fs::read_to_string(json).expect("the JSON report is written");
    serde_json::from_str(&text).unwrap_or_else(|error| panic!("malformed JSON ({error}): {text}"))
}

fn number(report: &serde_json::Value, field: &str) -> u64 {
    report[field]
        .as_u64()
        .unwrap_or_else(|| panic!("{field} missing: {report}"))
}

fn counter(report: &serde_json::Value, name: &str) -> u64 {
    report["counters"][name].as_u64().unwrap_or(0)
}

#[test]
fn every_workload_runs_against_a_three_member_group() {
    let cluster = Cluster::start(3, "bench");
    let endpoints = cluster.endpoints();
    let scratch = TempDir::new("bench-out");
    let common = [
        "--total",
        "200",
        "--clients",
        "4",
        "--connections",
        "3",
        "--key-space",
        "100",
        "--value-size-bytes",
        "64",
    ];
    for workload in ["put", "range", "range-serializable", "txn", "mixed", "watch", "lease"] {
        let json = scratch.0.join(format!("{workload}.json"));
        let mut args = vec![workload];
        args.extend_from_slice(&common);
        if workload == "watch" {
            args.extend_from_slice(&["--watchers", "3"]);
        }
        let report = bench(&endpoints, &json, &args);
        assert_eq!(report["workload"], workload);
        assert_eq!(number(&report, "errors_total"), 0, "{workload}: {report}");
        let ops = number(&report, "ops");
        match workload {
            // Every acknowledged put reaches every watcher.
            "watch" => {
                assert_eq!(counter(&report, "puts"), 200, "{report}");
                assert_eq!(ops, 600, "{report}");
            }
            "mixed" => {
                assert_eq!(ops, 200);
                assert_eq!(counter(&report, "reads") + counter(&report, "writes"), 200);
                assert!(
                    counter(&report, "reads") > counter(&report, "writes"),
                    "90% reads: {report}"
                );
            }
            "txn" => {
                assert_eq!(ops, 200);
                assert_eq!(counter(&report, "swapped") + counter(&report, "compare_failed"), 200);
                assert!(counter(&report, "swapped") > 0, "{report}");
            }
            _ => assert_eq!(ops, 200, "{workload}: {report}"),
        }
        let latency = &report["latency_us"];
        let p50 = latency["p50"].as_u64().expect("p50");
        let max = latency["max"].as_u64().expect("max");
        assert!(0 < p50 && p50 <= max, "{workload}: {latency}");
        let per_second: u64 = report["ops_per_second"]
            .as_array()
            .expect("ops_per_second")
            .iter()
            .filter_map(serde_json::Value::as_u64)
            .sum();
        assert_eq!(per_second, ops, "{workload}: every op falls in one second");
    }

    // Open loop: a rate for a duration issues exactly rate × duration operations.
    let json = scratch.0.join("open.json");
    let plot = scratch.0.join("open.svg");
    let plot_text = plot.to_string_lossy().into_owned();
    let report = bench(
        &endpoints,
        &json,
        &[
            "put",
            "--duration-s",
            "1",
            "--rate-per-s",
            "50",
            "--clients",
            "4",
            "--plot",
            &plot_text,
        ],
    );
    assert_eq!(number(&report, "ops") + number(&report, "errors_total"), 50, "{report}");
    let svg = std::fs::read_to_string(&plot).expect("the plot is written");
    assert!(svg.starts_with("<svg ") && svg.trim_end().ends_with("</svg>"), "{svg}");
    assert_eq!(svg.matches("<polyline").count(), 2);
}

fn assert_refused(args: &[&str], expected: &str) {
    let mut line = vec!["bench"];
    line.extend_from_slice(args);
    let output: Output = synod(&line, None);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(!output.status.success(), "synod {line:?} succeeded");
    assert!(
        stderr.contains(expected),
        "synod {line:?}: expected {expected:?} in {stderr}"
    );
    assert!(!stderr.contains("panicked"), "synod {line:?} panicked: {stderr}");
}

#[test]
fn bad_flags_fail_with_a_clear_error() {
    assert_refused(&["put", "--clients", "0"], "--clients");
    assert_refused(&["put", "--clients", "100000"], "--clients");
    assert_refused(&["put", "--connections", "0"], "--connections");
    assert_refused(&["put", "--value-size-bytes", "2000000"], "--value-size-bytes");
    assert_refused(&["put", "--key-space", "0"], "--key-space");
    assert_refused(&["put", "--duration-s", "1", "--total", "5"], "--total");
    assert_refused(&["put", "--endpoints", "no-port"], "HOST:PORT");
    assert_refused(&["sideways"], "sideways");
    // Flags valid one by one but not together.
    assert_refused(
        &["put", "--key-size-bytes", "8", "--key-space", "1000"],
        "--key-size-bytes",
    );
    assert_refused(&["watch", "--value-size-bytes", "4"], "--value-size-bytes");
    // Nobody listens on port 1.
    assert_refused(
        &["put", "--endpoints", "127.0.0.1:1", "--total", "1", "--quiet"],
        "cannot connect",
    );
}
