//! etcdctl 3.4 against a three-member group of real `synod server`
//! processes, plus the Lock and Election services through the project's own
//! gRPC client, the HTTP endpoints, and hostile peers. One group serves every
//! check, so the whole file costs one cluster start.

mod common;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::process::Command;
use std::time::{Duration, Instant};

use common::{etcdctl, etcdctl_ok, etcdctl_with_input, http_get, Background, Cluster};

fn lines(text: &str) -> Vec<&str> {
    text.lines().collect()
}

/// A DELETE event prints an empty value line last; whether etcdctl has
/// flushed it before it is stopped is a race, so trailing empties are dropped.
fn without_trailing_empty_lines(mut lines: Vec<&str>) -> Vec<&str> {
    while lines.last().is_some_and(|line| line.is_empty()) {
        lines.pop();
    }
    lines
}

#[test]
fn etcdctl_against_a_three_member_group() {
    let cluster = Cluster::start(3, "etcdctl");
    let all = cluster.endpoints();
    let all = ["--endpoints", all.as_str()];
    // Every member answers, master or not.
    let each: Vec<String> = cluster.members.iter().map(|member| member.endpoint()).collect();
    let at = |index: usize| ["--endpoints", each[index].as_str()];
    let run = |endpoints: &[&str], rest: &[&str]| -> String {
        let mut args: Vec<&str> = endpoints.to_vec();
        args.extend_from_slice(rest);
        etcdctl_ok(&args)
    };

    // put / get
    for index in 0..3 {
        let key = format!("key{index}");
        let value = format!("value{index}");
        assert_eq!(run(&at(index), &["put", &key, &value]), "OK\n");
    }
    assert_eq!(lines(&run(&all, &["get", "key1"])), ["key1", "value1"]);
    assert_eq!(
        lines(&run(&all, &["get", "key", "--prefix"])),
        ["key0", "value0", "key1", "value1", "key2", "value2"]
    );
    assert_eq!(
        lines(&run(&all, &["get", "key", "--prefix", "--limit=2"])),
        ["key0", "value0", "key1", "value1"]
    );
    assert_eq!(
        lines(&run(
            &all,
            &[
                "get",
                "key",
                "--prefix",
                "--keys-only",
                "--sort-by=KEY",
                "--order=DESCEND"
            ]
        ))
        .into_iter()
        .filter(|line| !line.is_empty())
        .collect::<Vec<_>>(),
        ["key2", "key1", "key0"]
    );
    for index in 0..3 {
        assert_eq!(
            lines(&run(&at(index), &["get", "key0", "--consistency=s"])),
            ["key0", "value0"],
            "serializable read at member {index}"
        );
    }
    let json = run(&all, &["get", "key0", "-w", "json"]);
    assert!(json.contains("\"cluster_id\""), "{json}");
    assert!(json.contains("\"raft_term\""), "{json}");

    // del
    assert_eq!(run(&at(1), &["del", "key2"]), "1\n");
    assert_eq!(run(&all, &["get", "key2"]), "");
    assert_eq!(run(&all, &["del", "nothing"]), "0\n");

    // txn, interactive input on stdin
    let txn = b"value(\"key0\") = \"value0\"\n\nput txn-result yes\n\nput txn-result no\n\n";
    let output = etcdctl_with_input(&[all[0], all[1], "txn", "-i"], Some(txn));
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(output.status.success(), "{stdout}");
    assert!(stdout.contains("SUCCESS"), "{stdout}");
    assert_eq!(lines(&run(&all, &["get", "txn-result"])), ["txn-result", "yes"]);
    let txn = b"value(\"key0\") = \"other\"\n\nput txn-result yes\n\nput txn-result no\n\n";
    let output = etcdctl_with_input(&[all[0], all[1], "txn"], Some(txn));
    assert!(String::from_utf8_lossy(&output.stdout).contains("FAILURE"));
    assert_eq!(lines(&run(&all, &["get", "txn-result"])), ["txn-result", "no"]);

    // watch: live events through a follower, then replay with --rev
    let revision_before: i64 = {
        let json = run(&all, &["get", "key0", "-w", "json"]);
        let start = json.find("\"revision\":").expect("revision in header") + "\"revision\":".len();
        json[start..]
            .chars()
            .take_while(char::is_ascii_digit)
            .collect::<String>()
            .parse()
            .expect("revision")
    };
    let watcher = Background::etcdctl(&["--endpoints", &each[2], "watch", "watched", "--prefix"]);
    // The watch is in place once a marker put shows up in its output.
    watcher.wait_for(Duration::from_secs(10), "the watch sees a marker", |output| {
        run(&all, &["put", "watched/marker", "x"]);
        output.contains("watched/marker")
    });
    let start = watcher.output().len();
    run(&all, &["put", "watched/a", "1"]);
    run(&all, &["put", "watched/a", "2"]);
    run(&all, &["del", "watched/a"]);
    // The key's line after DELETE may come in a later read than DELETE itself.
    let seen = watcher.wait_for(Duration::from_secs(10), "three events", |output| {
        output[start..].contains("DELETE\nwatched/a")
    });
    drop(watcher);
    // Marker puts still in flight when the watch was found ready are left out.
    let seen_lines = lines(&seen[start..]);
    let mut events: Vec<&str> = Vec::new();
    let mut index = 0;
    while index < seen_lines.len() {
        if seen_lines[index] == "PUT" && seen_lines.get(index + 1) == Some(&"watched/marker") {
            index += 3;
            continue;
        }
        events.push(seen_lines[index]);
        index += 1;
    }
    let expected = ["PUT", "watched/a", "1", "PUT", "watched/a", "2", "DELETE", "watched/a"];
    assert_eq!(without_trailing_empty_lines(events), expected, "live watch");
    let replay = Command::new("timeout")
        .args(["3", "etcdctl", "--endpoints", &each[0], "watch", "watched/a"])
        .arg(format!("--rev={}", revision_before + 1))
        .env("ETCDCTL_API", "3")
        .output()
        .expect("watch --rev");
    let replayed = String::from_utf8_lossy(&replay.stdout).into_owned();
    assert_eq!(without_trailing_empty_lines(lines(&replayed)), expected, "watch --rev");

    // leases
    let granted = run(&all, &["lease", "grant", "60"]);
    assert!(
        granted.starts_with("lease ") && granted.contains("granted with TTL(60s)"),
        "{granted}"
    );
    let lease = granted.split_whitespace().nth(1).expect("lease id").to_string();
    run(&all, &["put", "leased", "v", &format!("--lease={lease}")]);
    let ttl = run(&at(2), &["lease", "timetolive", &lease, "--keys"]);
    assert!(ttl.contains(&format!("lease {lease} granted with TTL(60s)")), "{ttl}");
    assert!(ttl.contains("attached keys([leased])"), "{ttl}");
    let list = run(&all, &["lease", "list"]);
    assert!(list.contains("found 1 leases") && list.contains(&lease), "{list}");
    for index in 0..3 {
        let kept = run(&at(index), &["lease", "keep-alive", "--once", &lease]);
        assert_eq!(
            kept,
            format!("lease {lease} keepalived with TTL(60)\n"),
            "keep-alive via member {index}"
        );
    }
    assert_eq!(
        run(&at(1), &["lease", "revoke", &lease]),
        format!("lease {lease} revoked\n")
    );
    assert_eq!(run(&all, &["get", "leased"]), "");
    assert_eq!(
        run(&all, &["lease", "timetolive", "abcdef"]),
        "lease 0000000000abcdef already expired\n"
    );
    let unknown = etcdctl(&[all[0], all[1], "put", "k", "v", "--lease=abcdef"]);
    assert!(!unknown.status.success());
    assert!(String::from_utf8_lossy(&unknown.stderr).contains("etcdserver: requested lease not found"));

    // a streaming keep-alive through a follower keeps a 3 s lease alive past its TTL
    let kept = run(&all, &["lease", "grant", "3"]);
    let kept = kept.split_whitespace().nth(1).expect("lease id").to_string();
    let follower = cluster.master().map_or(1, |master| (master + 1) % each.len());
    let keeper = Background::etcdctl(&["--endpoints", &each[follower], "lease", "keep-alive", &kept]);
    keeper.wait_for(Duration::from_secs(15), "four refreshes through a follower", |output| {
        output.matches("keepalived with TTL(3)").count() >= 4
    });
    let alive = run(&all, &["lease", "timetolive", &kept]);
    assert!(
        alive.contains("granted with TTL(3s)"),
        "kept-alive lease expired: {alive}"
    );
    drop(keeper);

    // a short lease expires at the master and its key goes
    let short = run(&all, &["lease", "grant", "2"]);
    let short = short.split_whitespace().nth(1).expect("lease id").to_string();
    run(&all, &["put", "expiring", "v", &format!("--lease={short}")]);
    let deadline = Instant::now() + Duration::from_secs(10);
    while !run(&all, &["get", "expiring"]).is_empty() {
        assert!(Instant::now() < deadline, "a 2 s lease did not expire within 10 s");
        std::thread::sleep(Duration::from_millis(200));
    }

    // lock: the second holder waits for the first
    assert_eq!(run(&all, &["lock", "job", "echo", "locked"]), "locked\n");
    let holder = Background::etcdctl(&["--endpoints", &each[0], "lock", "mutex"]);
    let held = holder.wait_for(Duration::from_secs(10), "the first locker holds the lock", |output| {
        output.starts_with("mutex/")
    });
    let waiting = Command::new("timeout")
        .args([
            "2",
            "etcdctl",
            "--endpoints",
            &each[1],
            "lock",
            "mutex",
            "echo",
            "second",
        ])
        .env("ETCDCTL_API", "3")
        .output()
        .expect("second locker");
    assert!(!waiting.status.success(), "second locker got a held lock");
    drop(holder);
    assert!(held.starts_with("mutex/"), "{held}");
    // Released when the holder goes: the next locker gets it.
    assert_eq!(run(&at(1), &["lock", "mutex", "echo", "second"]), "second\n");

    // elect
    let candidate = Background::etcdctl(&["--endpoints", &each[1], "elect", "office", "alice"]);
    candidate.wait_for(Duration::from_secs(10), "the candidate is elected", |output| {
        output.contains("alice")
    });
    let observed = Command::new("timeout")
        .args(["2", "etcdctl", "--endpoints", &each[2], "elect", "-l", "office"])
        .env("ETCDCTL_API", "3")
        .output()
        .expect("observer");
    let observed = String::from_utf8_lossy(&observed.stdout).into_owned();
    drop(candidate);
    let observed_lines = lines(&observed);
    assert!(observed_lines.len() >= 2, "{observed}");
    assert!(observed_lines[0].starts_with("office/"), "{observed}");
    assert_eq!(observed_lines[1], "alice");

    // member list, endpoint status and health
    let members = run(&all, &["member", "list"]);
    for member in &cluster.members {
        let line = format!(
            ", started, {}, http://127.0.0.1:{}, {}, false",
            member.name,
            member.peer_port,
            member.url()
        );
        assert!(members.contains(&line), "{members} lacks {line}");
    }
    let status = run(&all, &["endpoint", "status"]);
    assert_eq!(status.lines().count(), 3, "{status}");
    assert_eq!(
        status.matches(", true, false, ").count(),
        1,
        "exactly one leader: {status}"
    );
    assert!(status.contains(", 3.4.0, "), "{status}");
    // No alarm raised: etcdctl lists none, and disarming clears nothing.
    assert_eq!(run(&all, &["alarm", "list"]), "");
    assert_eq!(run(&all, &["alarm", "disarm"]), "");
    for index in 0..3 {
        assert_eq!(
            run(&at(index), &["defrag"]).lines().count(),
            1,
            "defrag at member {index}"
        );
    }
    let health = etcdctl(&[all[0], all[1], "endpoint", "health"]);
    let health_text = String::from_utf8_lossy(&health.stdout).into_owned() + &String::from_utf8_lossy(&health.stderr);
    assert!(health.status.success(), "{health_text}");
    assert_eq!(
        health_text
            .matches("is healthy: successfully committed proposal")
            .count(),
        3,
        "{health_text}"
    );

    // compaction
    run(&all, &["put", "compacted", "1"]);
    let json = run(&all, &["get", "compacted", "-w", "json"]);
    let start = json.find("\"mod_revision\":").expect("mod_revision") + "\"mod_revision\":".len();
    let revision: String = json[start..].chars().take_while(char::is_ascii_digit).collect();
    assert_eq!(
        run(&all, &["compaction", &revision]),
        format!("compacted revision {revision}\n")
    );
    let old = etcdctl(&[all[0], all[1], "get", "compacted", "--rev=2"]);
    assert!(String::from_utf8_lossy(&old.stderr).contains("required revision has been compacted"));

    // bad input from clients: oversized requests, an empty key
    let big = vec![b'a'; 1_600_000];
    let output = etcdctl_with_input(&[all[0], all[1], "put", "big"], Some(&big));
    assert!(!output.status.success());
    assert!(String::from_utf8_lossy(&output.stderr).contains("etcdserver: request is too large"));
    let output = etcdctl(&[all[0], all[1], "put", "", "v"]);
    assert!(!output.status.success());

    // HTTP on the client port
    let client_port = cluster.members[0].client_port;
    let (code, body) = http_get(client_port, "/health");
    assert_eq!((code, body.as_str()), (200, "{\"health\":\"true\",\"reason\":\"\"}"));
    let (code, body) = http_get(client_port, "/version");
    assert_eq!(code, 200);
    assert!(body.contains("\"etcdserver\":\"3.4.0\""), "{body}");
    let (code, body) = http_get(client_port, "/metrics");
    assert_eq!(code, 200);
    for metric in [
        "synod_commit_latency_seconds_bucket",
        "synod_fsync_latency_seconds_count",
        "synod_batch_values_count",
        "synod_master_changes_total",
        "synod_proposals_total{outcome=\"committed\"}",
        "synod_applied_instance",
        "synod_compaction_pending_revision",
        "synod_watch_streams",
        "synod_wal_sync_seconds_total",
    ] {
        assert!(body.contains(metric), "/metrics lacks {metric}");
    }
    // the log's counters come from the running writer: the writes above synced it
    let counter = |name: &str| -> u64 {
        let line = body
            .lines()
            .find(|line| line.starts_with(&format!("{name} ")))
            .unwrap_or_else(|| panic!("/metrics lacks {name}"));
        line[name.len() + 1..].parse().expect("a counter's value")
    };
    assert!(counter("synod_wal_syncs_total") > 0);
    assert!(counter("synod_wal_records_total") >= counter("synod_wal_batches_total"));
    assert!(counter("synod_wal_batches_total") > 0);

    // hostile peers: garbage, a truncated frame, another cluster
    let peer_port = cluster.members[0].peer_port;
    let mut garbage = TcpStream::connect(("127.0.0.1", peer_port)).expect("connect to peer port");
    garbage
        .write_all(b"GET / HTTP/1.1\r\n\r\n\x00\xff\x13")
        .expect("send garbage");
    expect_closed(&mut garbage);
    let mut truncated = TcpStream::connect(("127.0.0.1", peer_port)).expect("connect to peer port");
    truncated
        .write_all(b"SYNP\x01\x01\x00\x00\x00\x40")
        .expect("send a truncated header");
    drop(truncated);
    let foreign = synod_server::frame::Handshake {
        protocol_version: synod_server::frame::HANDSHAKE_PROTOCOL_VERSION,
        cluster_id: 0x1234,
        sender_member_id: cluster_member_id(&cluster, 1),
        receiver_member_id: cluster_member_id(&cluster, 0),
        sender_name: "intruder".into(),
    };
    let frame = foreign.to_frame().expect("frame");
    let mut buffer = bytes::BytesMut::new();
    synod_server::frame::Encoder::new(1 << 20)
        .encode(&frame, &mut buffer)
        .expect("encode");
    let mut intruder = TcpStream::connect(("127.0.0.1", peer_port)).expect("connect to peer port");
    intruder.write_all(&buffer).expect("send handshake");
    expect_closed(&mut intruder);
    std::thread::sleep(Duration::from_millis(300));
    let log = cluster.members[0].log_text();
    assert!(
        log.contains("not speaking the synod peer protocol"),
        "garbage not reported:\n{log}"
    );
    assert!(
        log.contains("belongs to cluster 1234"),
        "foreign cluster not reported:\n{log}"
    );
    // Nothing acknowledged was lost, and the group still serves writes.
    assert_eq!(lines(&run(&all, &["get", "key0"])), ["key0", "value0"]);
    assert_eq!(run(&all, &["put", "after-hostile-peers", "ok"]), "OK\n");
    for member in &cluster.members {
        assert!(!member.log_text().contains("panicked"), "{} panicked", member.name);
    }

    lock_and_election_through_the_generated_client(&cluster);
}

fn cluster_member_id(cluster: &Cluster, index: usize) -> u64 {
    synod_server::config::member_id(&cluster.members[index].name)
}

fn expect_closed(stream: &mut TcpStream) {
    stream.set_read_timeout(Some(Duration::from_secs(5))).expect("timeout");
    let mut buffer = [0u8; 256];
    loop {
        match stream.read(&mut buffer) {
            Ok(0) | Err(_) => return,
            // A handshake reply is never sent to a refused peer, but tolerate bytes.
            Ok(_) => continue,
        }
    }
}

/// The server-side Lock and Election services, through synod-proto's client.
fn lock_and_election_through_the_generated_client(cluster: &Cluster) {
    use synod_proto::etcdserverpb::lease_client::LeaseClient;
    use synod_proto::etcdserverpb::LeaseGrantRequest;
    use synod_proto::grpc::health::v1::health_client::HealthClient;
    use synod_proto::grpc::health::v1::HealthCheckRequest;
    use synod_proto::v3electionpb::election_client::ElectionClient;
    use synod_proto::v3electionpb::{CampaignRequest, LeaderRequest, ProclaimRequest, ResignRequest};
    use synod_proto::v3lockpb::lock_client::LockClient;
    use synod_proto::v3lockpb::{LockRequest, UnlockRequest};

    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    let urls: Vec<String> = cluster.members.iter().map(|member| member.url()).collect();
    runtime.block_on(async move {
        let follower = cluster.master().map_or(0, |master| (master + 1) % urls.len());
        let url = urls[follower].clone();
        let mut health = HealthClient::connect(url.clone()).await.expect("connect");
        let serving = health
            .check(HealthCheckRequest::default())
            .await
            .expect("health check")
            .into_inner();
        assert_eq!(serving.status, 1, "grpc.health.v1 reports SERVING");
        let mut leases = LeaseClient::connect(url.clone()).await.expect("connect");
        let mut locks = LockClient::connect(url.clone()).await.expect("connect");
        let mut elections = ElectionClient::connect(url.clone()).await.expect("connect");
        let grant = |ttl| LeaseGrantRequest { ttl, id: 0 };
        let first = leases.lease_grant(grant(30)).await.expect("grant").into_inner().id;
        let second = leases.lease_grant(grant(30)).await.expect("grant").into_inner().id;

        let held = locks
            .lock(LockRequest {
                name: "resource".into(),
                lease: first,
            })
            .await
            .expect("lock")
            .into_inner();
        assert!(held.key.starts_with(b"resource/"));
        // The second locker waits until the first unlocks.
        let mut waiting_locks = locks.clone();
        let waiter = tokio::spawn(async move {
            waiting_locks
                .lock(LockRequest {
                    name: "resource".into(),
                    lease: second,
                })
                .await
                .map(|response| response.into_inner().key)
        });
        tokio::time::sleep(Duration::from_millis(500)).await;
        assert!(!waiter.is_finished(), "a held lock was granted twice");
        locks
            .unlock(UnlockRequest { key: held.key.clone() })
            .await
            .expect("unlock");
        let second_key = tokio::time::timeout(Duration::from_secs(5), waiter)
            .await
            .expect("the waiter gets the lock after unlock")
            .expect("join")
            .expect("lock");
        assert_ne!(second_key, held.key);
        let unknown = locks
            .lock(LockRequest {
                name: "resource".into(),
                lease: 0x7777,
            })
            .await
            .expect_err("lock with an unknown lease");
        assert_eq!(unknown.code(), tonic::Code::NotFound);

        let leader = elections
            .campaign(CampaignRequest {
                name: "chair".into(),
                lease: first,
                value: "alice".into(),
            })
            .await
            .expect("campaign")
            .into_inner()
            .leader
            .expect("leader key");
        elections
            .proclaim(ProclaimRequest {
                leader: Some(leader.clone()),
                value: "alice-2".into(),
            })
            .await
            .expect("proclaim");
        let current = elections
            .leader(LeaderRequest { name: "chair".into() })
            .await
            .expect("leader")
            .into_inner()
            .kv
            .expect("kv");
        assert_eq!(&current.value[..], b"alice-2");
        let mut observer = elections
            .observe(LeaderRequest { name: "chair".into() })
            .await
            .expect("observe")
            .into_inner();
        let seen = observer.message().await.expect("observe").expect("a leader");
        assert_eq!(&seen.kv.expect("kv").value[..], b"alice-2");
        elections
            .resign(ResignRequest {
                leader: Some(leader.clone()),
            })
            .await
            .expect("resign");
        let stale = elections
            .proclaim(ProclaimRequest {
                leader: Some(leader),
                value: "too late".into(),
            })
            .await
            .expect_err("proclaim after resign");
        assert_eq!(stale.code(), tonic::Code::FailedPrecondition);
        let none = elections
            .leader(LeaderRequest { name: "chair".into() })
            .await
            .expect_err("no leader after resign");
        assert_eq!(none.code(), tonic::Code::NotFound);
    });
}
