//! Moving an etcd cluster's data to synod with one command: a real etcd 3.4
//! (Debian's `etcd-server`, which scripts/test.sh installs) takes puts,
//! overwrites, deletes, a transaction, leases and a compaction; `etcdctl
//! snapshot save` writes its snapshot; `synod snapshot restore` seeds three
//! members from it; and every key, value, revision, version, lease and
//! compacted revision is compared, at the latest revision and at an older one.

mod common;

use std::time::Duration;

use common::{etcdctl, etcdctl_ok, etcdctl_with_input, output_text, synod, Cluster, Etcd, TempDir};
use serde_json::Value;

/// Every key from `""` on at `revision` (0: the latest): the header's
/// revision and the key-values as etcdctl prints them.
fn everything_at(endpoint: &str, revision: i64) -> (i64, Vec<Value>) {
    let rev = format!("--rev={revision}");
    let json: Value = serde_json::from_str(&etcdctl_ok(&[
        "--endpoints",
        endpoint,
        "get",
        "",
        "--from-key",
        &rev,
        "-w",
        "json",
    ]))
    .expect("etcdctl get -w json");
    let kvs = json["kvs"].as_array().cloned().unwrap_or_default();
    (json["header"]["revision"].as_i64().expect("revision"), kvs)
}

/// Each lease with its granted TTL and attached keys, as etcdctl prints them.
fn leases_with_keys(endpoint: &str) -> Vec<(String, String)> {
    let listed = etcdctl_ok(&["--endpoints", endpoint, "lease", "list"]);
    let mut ids: Vec<String> = listed.lines().skip(1).map(str::to_string).collect();
    ids.sort();
    ids.into_iter()
        .map(|id| {
            let ttl = etcdctl_ok(&["--endpoints", endpoint, "lease", "timetolive", &id, "--keys"]);
            // "lease 694d... granted with TTL(600s), remaining(597s), attached keys([a b])"
            let granted = ttl
                .split("granted with ")
                .nth(1)
                .and_then(|rest| rest.split(',').next());
            // etcd lists a lease's keys in no fixed order: compare them sorted.
            let mut keys: Vec<&str> = ttl
                .split("attached keys([")
                .nth(1)
                .and_then(|rest| rest.split("])").next())
                .unwrap_or("?")
                .split_whitespace()
                .collect();
            keys.sort_unstable();
            let described = format!("{} {:?}", granted.unwrap_or("?"), keys);
            (id, described)
        })
        .collect()
}

fn put(endpoint: &str, key: &str, value: &str) -> i64 {
    let json: Value = serde_json::from_str(&etcdctl_ok(&["--endpoints", endpoint, "put", key, value, "-w", "json"]))
        .expect("put -w json");
    json["header"]["revision"].as_i64().expect("revision")
}

fn run_synod(args: &[&str]) -> String {
    let output = synod(args, None);
    assert!(output.status.success(), "synod {args:?}: {}", output_text(&output));
    String::from_utf8_lossy(&output.stdout).into_owned()
}

#[test]
fn an_etcd_snapshot_restores_a_synod_group_with_every_key_revision_and_lease() {
    let Some(etcd) = Etcd::start() else { return };
    let source = etcd.endpoint.clone();
    for index in 0..30 {
        put(&source, &format!("key/{index:02}"), &format!("value {index}"));
    }
    put(&source, "key/05", "rewritten");
    let before_compaction = put(&source, "key/05", "rewritten twice");
    etcdctl_ok(&["--endpoints", &source, "del", "key/07"]);
    // Two writes in one revision (sub revisions 0 and 1).
    let txn = etcdctl_with_input(
        &["--endpoints", &source, "txn"],
        Some(b"\nput txn/1 one\nput txn/2 two\n\n\n"),
    );
    assert!(txn.status.success(), "{}", output_text(&txn));
    let granted = etcdctl_ok(&["--endpoints", &source, "lease", "grant", "600"]);
    let lease = granted.split_whitespace().nth(1).expect("lease id").to_string();
    for key in ["leased/a", "leased/b"] {
        etcdctl_ok(&["--endpoints", &source, "put", key, "v", &format!("--lease={lease}")]);
    }
    etcdctl_ok(&["--endpoints", &source, "lease", "grant", "300"]);
    put(&source, "empty", "");
    let compacted_at = put(&source, "key/10", "after the lease");
    etcdctl_ok(&[
        "--endpoints",
        &source,
        "compact",
        &compacted_at.to_string(),
        "--physical",
    ]);
    put(&source, "key/11", "after the compaction");
    etcdctl_ok(&["--endpoints", &source, "del", "key/2", "--prefix"]);
    let middle = put(&source, "key/12", "late");
    put(&source, "key/12", "later");

    let (revision, kvs) = everything_at(&source, 0);
    let (_, kvs_in_the_middle) = everything_at(&source, middle);
    let source_leases = leases_with_keys(&source);
    assert_eq!(source_leases.len(), 2, "{source_leases:?}");
    let root = TempDir::new("etcd-migration");
    let file = root.0.join("etcd.db");
    let file_text = file.to_str().expect("UTF-8 path");
    let saved = etcdctl_ok(&["--endpoints", &source, "snapshot", "save", file_text]);
    assert!(saved.contains("Snapshot saved at"), "{saved}");
    drop(etcd);

    let status: Value =
        serde_json::from_str(&run_synod(&["snapshot", "status", file_text, "-w", "json"])).expect("status -w json");
    assert_eq!(status["revision"].as_i64(), Some(revision), "{status}");
    assert_eq!(status["totalKey"].as_u64(), Some(kvs.len() as u64), "{status}");

    let mut target = Cluster::unstarted(3, "etcd-migration", &[]);
    target.restore_each_member(file_text);
    for index in 0..3 {
        target.launch(index);
    }
    target.wait_for_master(Duration::from_secs(20));
    for member in &target.members {
        let endpoint = member.endpoint();
        assert_eq!(
            everything_at(&endpoint, 0),
            (revision, kvs.clone()),
            "at {}",
            member.name
        );
        assert_eq!(
            everything_at(&endpoint, middle).1,
            kvs_in_the_middle,
            "at revision {middle} on {}",
            member.name
        );
        let too_old = etcdctl(&[
            "--endpoints",
            &endpoint,
            "get",
            "key/05",
            &format!("--rev={before_compaction}"),
        ]);
        assert!(
            output_text(&too_old).contains("required revision has been compacted"),
            "{}",
            output_text(&too_old)
        );
    }
    let endpoints = target.endpoints();
    assert_eq!(leases_with_keys(&endpoints), source_leases, "leases after restore");
    // Writes go on from the imported revision.
    assert_eq!(put(&endpoints, "after", "migration"), revision + 1);
}
