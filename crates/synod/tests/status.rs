//! Maintenance.Status beside etcd 3.4's: `etcdctl endpoint status -w json`
//! at a real etcd (Debian's `etcd-server`) and at every synod member prints
//! the same fields, and synod's values hold together as etcd's do (the
//! leader is a member, the applied index is within the chosen one, the
//! header's revision is the store's).

mod common;

use std::collections::BTreeSet;

use common::{etcdctl_ok, Cluster, Etcd};
use serde_json::Value;

/// The `Status` object `endpoint status -w json` printed for `endpoint`.
fn status(endpoint: &str) -> Value {
    let json: Value = serde_json::from_str(&etcdctl_ok(&[
        "--endpoints",
        endpoint,
        "endpoint",
        "status",
        "-w",
        "json",
    ]))
    .expect("json");
    json[0]["Status"].clone()
}

/// Every field path of a JSON object, nested ones as `outer.inner`.
fn fields(value: &Value) -> BTreeSet<String> {
    let mut paths = BTreeSet::new();
    if let Value::Object(map) = value {
        for (name, inner) in map {
            paths.insert(name.clone());
            for nested in fields(inner) {
                paths.insert(format!("{name}.{nested}"));
            }
        }
    }
    paths
}

#[test]
fn endpoint_status_has_etcds_fields_and_consistent_values() {
    let Some(etcd) = Etcd::start() else { return };
    let cluster = Cluster::start(3, "status");
    etcdctl_ok(&["--endpoints", &etcd.endpoint, "put", "a", "b"]);
    etcdctl_ok(&["--endpoints", &cluster.endpoints(), "put", "a", "b"]);
    let expected = fields(&status(&etcd.endpoint));
    assert!(
        expected.contains("raftAppliedIndex") && expected.contains("dbSizeInUse"),
        "{expected:?}"
    );
    let members: Vec<u64> = (0..3)
        .map(|index| {
            status(&cluster.client_url(index))["header"]["member_id"]
                .as_u64()
                .expect("member_id")
        })
        .collect();
    for index in 0..3 {
        let endpoint = cluster.client_url(index);
        let got = status(&endpoint);
        assert_eq!(fields(&got), expected, "member {index}: {got}");
        assert!(
            got["version"]
                .as_str()
                .is_some_and(|version| version.starts_with("3.4")),
            "{got}"
        );
        let leader = got["leader"].as_u64().expect("leader");
        assert!(members.contains(&leader), "leader {leader} is a member: {got}");
        let applied = got["raftAppliedIndex"].as_u64().expect("applied");
        let chosen = got["raftIndex"].as_u64().expect("chosen");
        assert!(applied > 0 && applied <= chosen, "{got}");
        let size = got["dbSize"].as_i64().expect("dbSize");
        let in_use = got["dbSizeInUse"].as_i64().expect("dbSizeInUse");
        assert!(in_use > 0 && in_use <= size, "{got}");
        assert_eq!(got["raftTerm"], got["header"]["raft_term"], "{got}");
        let read: Value = serde_json::from_str(&etcdctl_ok(&["--endpoints", &endpoint, "get", "a", "-w", "json"]))
            .expect("get -w json");
        assert_eq!(got["header"]["revision"], read["header"]["revision"], "{got}");
    }
}
