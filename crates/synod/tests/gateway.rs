//! The JSON gateway side by side with etcd 3.4.23's (Debian's `etcd-server`):
//! the same `curl` requests from etcd's gateway documentation answered by a
//! fresh etcd and a fresh 3-member synod group give the same JSON (but for
//! what names a server: cluster and member IDs, terms), the same errors and
//! HTTP statuses; Python's `etcd3gw` client (as OpenStack uses it) sees the
//! same from both; tokens in the `Authorization` header are honoured.

mod common;

use std::path::Path;
use std::process::Command;

use common::{output_text, Cluster, Etcd};
use serde_json::Value;

/// `curl -X POST` of `body` to `path` at `endpoint`: the HTTP status and the
/// body, each line of it parsed as JSON (a stream has several).
fn post(endpoint: &str, path: &str, body: &str, token: Option<&str>) -> (u16, Vec<Value>) {
    let mut command = Command::new("curl");
    command.args(["-s", "-N", "--max-time", "3", "-X", "POST", "-w", "\n%{http_code}"]);
    if let Some(token) = token {
        command.args(["-H", &format!("Authorization: {token}")]);
    }
    let output = command
        .args(["-d", body, &format!("http://{endpoint}{path}")])
        .output()
        .expect("curl must be installed (Debian package curl; scripts/test.sh installs it)");
    let text = String::from_utf8_lossy(&output.stdout).into_owned();
    let (lines, status) = text.rsplit_once('\n').expect("curl printed the status");
    let values = lines
        .lines()
        .filter(|line| !line.trim().is_empty())
        .map(|line| serde_json::from_str(line).unwrap_or_else(|_| panic!("{path}: not JSON: {line}")))
        .collect();
    (status.parse().expect("an HTTP status"), values)
}

/// What does not depend on which server answered: headers keep only their
/// revision, and an error only its code (the message of a JSON syntax
/// error is the parser's own).
fn comparable(mut value: Value, syntax_error: bool) -> Value {
    fn strip(value: &mut Value) {
        match value {
            Value::Object(map) => {
                if let Some(Value::Object(header)) = map.get_mut("header") {
                    header.retain(|name, _| name == "revision");
                }
                for inner in map.values_mut() {
                    strip(inner);
                }
            }
            Value::Array(items) => items.iter_mut().for_each(strip),
            _ => {}
        }
    }
    strip(&mut value);
    if syntax_error {
        if let Value::Object(map) = &mut value {
            map.retain(|name, _| name == "code");
        }
    }
    value
}

/// The requests, in order, each as (path, body); all run against an empty
/// store, so revisions and lease IDs agree between servers.
const REQUESTS: &[(&str, &str)] = &[
    ("/v3/kv/put", r#"{"key": "Zm9v", "value": "YmFy"}"#),
    ("/v3/kv/put", r#"{"key": "Zm9vMg==", "value": "YmF6", "prev_kv": true}"#),
    ("/v3/kv/put", r#"{"key": "Zm9v", "value": "cXV4", "prev_kv": true}"#),
    ("/v3/kv/range", r#"{"key": "Zm9v"}"#),
    (
        "/v3/kv/range",
        r#"{"key": "Zm9v", "range_end": "Zm9w", "sort_order": "DESCEND", "sort_target": "KEY"}"#,
    ),
    ("/v3/kv/range", r#"{"key": "Zm9v", "revision": "2"}"#),
    (
        "/v3/kv/range",
        r#"{"key": "Zm9v", "range_end": "Zm9w", "count_only": true}"#,
    ),
    ("/v3beta/kv/range", r#"{"key": "Zm9v", "keys_only": true}"#),
    (
        "/v3/kv/txn",
        r#"{"compare": [{"key": "Zm9v", "result": "EQUAL", "target": "VALUE", "value": "cXV4"}], "success": [{"request_put": {"key": "Zm9v", "value": "dHhu"}}, {"request_range": {"key": "Zm9vMg=="}}], "failure": [{"request_delete_range": {"key": "Zm9v"}}]}"#,
    ),
    (
        "/v3/kv/txn",
        r#"{"compare": [{"key": "Zm9v", "target": "VERSION", "version": "1"}], "success": [{"request_put": {"key": "Zm9v", "value": "eA=="}}], "failure": [{"request_range": {"key": "Zm9v"}}]}"#,
    ),
    ("/v3/kv/deleterange", r#"{"key": "Zm9vMg==", "prev_kv": true}"#),
    ("/v3/kv/compaction", r#"{"revision": "3", "physical": true}"#),
    ("/v3/kv/range", r#"{"key": "Zm9v", "revision": "2"}"#),
    ("/v3/lease/grant", r#"{"TTL": "60", "ID": "4660"}"#),
    ("/v3/lease/grant", r#"{"TTL": "60", "ID": "4660"}"#),
    ("/v3/kv/put", r#"{"key": "bGVhc2Vk", "value": "dg==", "lease": "4660"}"#),
    ("/v3/kv/lease/leases", "{}"),
    ("/v3/lease/revoke", r#"{"ID": "4660"}"#),
    ("/v3/lease/revoke", r#"{"ID": "4660"}"#),
    ("/v3/kv/range", r#"{"key": "bGVhc2Vk"}"#),
    ("/v3/lease/timetolive", r#"{"ID": "4660"}"#),
    ("/v3/kv/put", r#"{"key": ""}"#),
    ("/v3/kv/range", r#"{"key": 12"#),
    ("/v3/kv/range", r#"{"key": "not base64!"}"#),
    (
        "/v3/watch",
        r#"{"create_request": {"key": "Zm9v", "start_revision": "4"}}"#,
    ),
];

#[test]
fn the_gateway_answers_as_etcds_does() {
    let Some(etcd) = Etcd::start() else { return };
    let cluster = Cluster::start(3, "gateway");
    let synod = cluster.members[1].endpoint();
    for (path, body) in REQUESTS {
        let syntax_error = body.contains(": 12") || body.contains("not base64");
        let (etcd_status, etcd_answer) = post(&etcd.endpoint, path, body, None);
        let (synod_status, synod_answer) = post(&synod, path, body, None);
        assert_eq!(
            synod_status, etcd_status,
            "{path} {body}: {synod_answer:?} / etcd {etcd_answer:?}"
        );
        let strip = |answer: Vec<Value>| -> Vec<Value> {
            answer
                .into_iter()
                .map(|value| comparable(value, syntax_error))
                .collect()
        };
        assert_eq!(strip(synod_answer), strip(etcd_answer), "{path} {body}");
    }
    // What names a server differs, but the fields are etcd's.
    for path in [
        "/v3/maintenance/status",
        "/v3/cluster/member/list",
        "/v3/maintenance/hash",
    ] {
        let fields =
            |answer: &[Value]| -> Vec<String> { answer[0].as_object().expect("an object").keys().cloned().collect() };
        let (_, etcd_answer) = post(&etcd.endpoint, path, "{}", None);
        let (status, synod_answer) = post(&synod, path, "{}", None);
        assert_eq!(status, 200);
        assert_eq!(fields(&synod_answer), fields(&etcd_answer), "{path}");
    }
    let (_, members) = post(&synod, "/v3/cluster/member/list", "{}", None);
    let member = &members[0]["members"][0];
    for field in ["ID", "name", "peerURLs", "clientURLs"] {
        assert!(member.get(field).is_some(), "{field} in {member}");
    }
}

/// The check script's printout for the gateway at `endpoint`.
fn etcd3gw_check(endpoint: &str) -> Value {
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/gateway/etcd3gw_check.py");
    let (host, port) = endpoint.rsplit_once(':').expect("HOST:PORT");
    let output = Command::new("python3")
        .arg(script)
        .args([host, port])
        .output()
        .expect("python3");
    assert!(output.status.success(), "etcd3gw_check.py: {}", output_text(&output));
    serde_json::from_slice(&output.stdout).expect("the script prints JSON")
}

fn etcd3gw_installed() -> bool {
    let found = Command::new("python3")
        .args(["-c", "import etcd3gw"])
        .status()
        .is_ok_and(|status| status.success());
    assert!(
        found || std::env::var("CI").as_deref() != Ok("true"),
        "Python's etcd3gw is missing and CI=true (scripts/test.sh installs it)"
    );
    found
}

#[test]
fn etcd3gw_sees_the_same_from_etcd_and_from_synod() {
    if !etcd3gw_installed() {
        eprintln!("skipped: Python's etcd3gw is not installed");
        return;
    }
    let Some(etcd) = Etcd::start() else { return };
    let cluster = Cluster::start(3, "gateway-etcd3gw");
    let mut from_etcd = etcd3gw_check(&etcd.endpoint);
    let mut from_synod = etcd3gw_check(&cluster.members[2].endpoint());
    assert_eq!(from_etcd["members"], 1);
    assert_eq!(from_synod["members"], 3);
    for seen in [&mut from_etcd, &mut from_synod] {
        seen.as_object_mut().expect("an object").remove("members");
    }
    assert_eq!(from_synod, from_etcd);
    assert_eq!(from_synod["watch"][0]["value"], "b'seen'", "{from_synod}");
}

#[test]
fn tokens_in_the_authorization_header_are_honoured() {
    let cluster = Cluster::start(3, "gateway-auth");
    let endpoint = cluster.members[0].endpoint();
    for (path, body) in [
        ("/v3/auth/user/add", r#"{"name": "root", "password": "secret"}"#),
        ("/v3/auth/user/grant", r#"{"user": "root", "role": "root"}"#),
        ("/v3/auth/enable", "{}"),
    ] {
        let (status, answer) = post(&endpoint, path, body, None);
        assert_eq!(status, 200, "{path}: {answer:?}");
    }
    let (status, answer) = post(&endpoint, "/v3/kv/put", r#"{"key": "YQ==", "value": "Yg=="}"#, None);
    assert_ne!(status, 200, "a write without a token is refused: {answer:?}");
    let (status, answer) = post(
        &endpoint,
        "/v3/auth/authenticate",
        r#"{"name": "root", "password": "secret"}"#,
        None,
    );
    assert_eq!(status, 200, "{answer:?}");
    let token = answer[0]["token"].as_str().expect("a token").to_string();
    let (status, answer) = post(
        &endpoint,
        "/v3/kv/put",
        r#"{"key": "YQ==", "value": "Yg=="}"#,
        Some(&token),
    );
    assert_eq!(status, 200, "{answer:?}");
    let (status, answer) = post(&endpoint, "/v3/kv/range", r#"{"key": "YQ=="}"#, Some("made-up"));
    assert_eq!(status, 401, "{answer:?}");
    assert_eq!(answer[0]["message"], "etcdserver: invalid auth token");
}

#[test]
fn a_tls_port_serves_the_gateway_without_lending_it_a_certificate() {
    use synod_server::tls::generate::{CA_FILE, CLIENT_CERT_FILE, CLIENT_KEY_FILE};
    // curl presents the client certificate where the port asks for one.
    let curl = |cluster: &Cluster, path: &str, body: Option<&str>| -> String {
        let tls = cluster.tls.as_ref().expect("a TLS cluster");
        let mut command = Command::new("curl");
        command.args(["-s", "--max-time", "5", "--cacert", &tls.file(CA_FILE)]);
        if tls.client_cert_auth {
            command.args(["--cert", &tls.file(CLIENT_CERT_FILE)]);
            command.args(["--key", &tls.file(CLIENT_KEY_FILE)]);
        }
        if let Some(body) = body {
            command.args(["-X", "POST", "-d", body]);
        }
        let output = command
            .arg(format!("https://{}{path}", cluster.members[0].endpoint()))
            .output()
            .expect("curl");
        String::from_utf8_lossy(&output.stdout).into_owned()
    };
    let cluster = Cluster::start_tls(3, "gateway-tls", false);
    let put = curl(&cluster, "/v3/kv/put", Some(r#"{"key": "dA==", "value": "bHM="}"#));
    assert!(put.contains("\"revision\""), "{put}");
    let range = curl(&cluster, "/v3/kv/range", Some(r#"{"key": "dA=="}"#));
    assert!(range.contains("\"value\":\"bHM=\""), "{range}");
    // Under --client-cert-auth the gateway's own call presents no
    // certificate and is refused (it never runs as a certificate's name),
    // while the port serves the client that presented one.
    let strict = Cluster::start_tls(3, "gateway-tls-cert", true);
    let health = curl(&strict, "/health", None);
    assert!(health.contains("\"health\":\"true\""), "{health}");
    let refused = curl(&strict, "/v3/kv/range", Some(r#"{"key": "dA=="}"#));
    assert!(
        refused.contains("\"error\"") && !refused.contains("\"header\""),
        "refused: {refused}"
    );
}
