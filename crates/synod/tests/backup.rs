//! Operating a group with etcdctl. Backups end to end: `etcdctl snapshot
//! save` from a running group, `synod snapshot status`, `synod snapshot
//! restore` into a new group, and every key, value, revision and lease
//! compared after it starts. The space quota: NOSPACE raised, writes refused
//! everywhere, deletes and compaction going on, `alarm disarm`.

mod common;

use common::{etcdctl_ok, synod, Cluster};
use serde_json::Value;

/// Every key at the latest revision, with its revisions, version, value and lease.
fn everything(endpoints: &str) -> (i64, Vec<Value>) {
    let (revision, kvs, _) = everything_and_cluster(endpoints);
    (revision, kvs)
}

fn everything_and_cluster(endpoints: &str) -> (i64, Vec<Value>, u64) {
    let json: Value = serde_json::from_str(&etcdctl_ok(&[
        "--endpoints",
        endpoints,
        "get",
        "",
        "--from-key",
        "-w",
        "json",
    ]))
    .expect("etcdctl get -w json");
    let cluster_id = json["header"]["cluster_id"].as_u64().expect("cluster_id");
    let revision = json["header"]["revision"].as_i64().expect("revision");
    let kvs = json["kvs"].as_array().cloned().unwrap_or_default();
    (revision, kvs, cluster_id)
}

fn leases(endpoints: &str) -> Vec<String> {
    let listed = etcdctl_ok(&["--endpoints", endpoints, "lease", "list"]);
    let mut ids: Vec<String> = listed.lines().skip(1).map(str::to_string).collect();
    ids.sort();
    ids
}

/// `etcdctl endpoint hashkv --rev` at each member, once every member has
/// applied `revision` (a follower that has not answers a future-revision error).
fn hashes_at(cluster: &Cluster, revision: i64) -> Vec<String> {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    loop {
        let answers: Vec<Option<String>> = cluster
            .members
            .iter()
            .map(|member| {
                let output = common::etcdctl(&[
                    "--endpoints",
                    &member.endpoint(),
                    "endpoint",
                    "hashkv",
                    &format!("--rev={revision}"),
                ]);
                let text = String::from_utf8_lossy(&output.stdout);
                // "127.0.0.1:PORT, HASH"
                output
                    .status
                    .success()
                    .then(|| text.trim().rsplit(", ").next().unwrap_or("").to_string())
            })
            .collect();
        if answers.iter().all(Option::is_some) {
            return answers.into_iter().flatten().collect();
        }
        assert!(
            std::time::Instant::now() < deadline,
            "hashkv at {revision}: {answers:?}"
        );
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
}

fn run_synod(args: &[&str]) -> String {
    let output = synod(args, None);
    assert!(
        output.status.success(),
        "synod {args:?} failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8_lossy(&output.stdout).into_owned()
}

#[test]
fn a_backup_saved_by_etcdctl_restores_a_new_group_with_every_key_revision_and_lease() {
    let source = Cluster::start(3, "backup-source");
    let endpoints = source.endpoints();
    let put = |key: &str, value: &str| etcdctl_ok(&["--endpoints", &endpoints, "put", key, value]);
    for index in 0..40 {
        put(&format!("key/{index:02}"), &format!("value {index}"));
    }
    put("key/05", "rewritten");
    put("key/05", "rewritten twice");
    etcdctl_ok(&["--endpoints", &endpoints, "del", "key/07"]);
    let granted = etcdctl_ok(&["--endpoints", &endpoints, "lease", "grant", "600"]);
    let lease = granted.split_whitespace().nth(1).expect("lease id").to_string();
    etcdctl_ok(&[
        "--endpoints",
        &endpoints,
        "put",
        "leased",
        "v",
        &format!("--lease={lease}"),
    ]);
    let (revision, _, source_cluster_id) = everything_and_cluster(&endpoints);
    let source_leases = leases(&endpoints);
    // Every member hashes the history through a revision alike, also once
    // later writes moved them on.
    let hashes = hashes_at(&source, revision - 3);
    assert!(hashes.iter().all(|hash| hash == &hashes[0]), "{hashes:?}");
    put("later", "write");
    assert_eq!(
        hashes_at(&source, revision - 3),
        hashes,
        "hash at a past revision after a later write"
    );
    etcdctl_ok(&["--endpoints", &endpoints, "del", "later"]);
    let (revision, kvs) = everything(&endpoints);
    let source_hashes = hashes_at(&source, revision);

    let file = source.root.0.join("backup.db");
    let file_text = file.to_str().expect("UTF-8 path");
    // etcdctl saves from one endpoint; the master has applied every write.
    let master = source.wait_for_master(std::time::Duration::from_secs(10));
    let saved = etcdctl_ok(&[
        "--endpoints",
        &source.members[master].endpoint(),
        "snapshot",
        "save",
        file_text,
    ]);
    assert!(saved.contains("Snapshot saved at"), "{saved}");

    let status: Value =
        serde_json::from_str(&run_synod(&["snapshot", "status", file_text, "-w", "json"])).expect("status -w json");
    assert_eq!(status["revision"].as_i64(), Some(revision), "{status}");
    assert_eq!(status["totalKey"].as_u64(), Some(kvs.len() as u64), "{status}");
    let size = std::fs::metadata(&file).expect("backup file").len();
    assert_eq!(status["totalSize"].as_u64(), Some(size), "{status}");

    // A damaged copy is refused, by status and by restore, saying why.
    let mut bytes = std::fs::read(&file).expect("read backup");
    bytes[100] ^= 0x10;
    let damaged = source.root.0.join("damaged.db");
    std::fs::write(&damaged, &bytes).expect("write damaged copy");
    let refused = synod(&["snapshot", "status", damaged.to_str().expect("UTF-8")], None);
    assert!(!refused.status.success());
    assert!(
        String::from_utf8_lossy(&refused.stderr).contains("SHA-256 does not match"),
        "{}",
        String::from_utf8_lossy(&refused.stderr)
    );

    let mut target = Cluster::unstarted(3, "backup-target", &[]);
    let mut cluster_ids = Vec::new();
    for restored in target.restore_each_member(file_text) {
        let cluster_id = restored
            .split("new cluster ")
            .nth(1)
            .and_then(|rest| rest.split_whitespace().next());
        cluster_ids.push(cluster_id.expect("cluster ID printed").to_string());
    }
    assert!(cluster_ids.iter().all(|id| id == &cluster_ids[0]), "{cluster_ids:?}");
    // A restore into a directory that holds a member is refused.
    let again = synod(
        &[
            "snapshot",
            "restore",
            file_text,
            "--name",
            &target.members[0].name,
            "--data-dir",
            target.members[0].data_dir.to_str().expect("UTF-8"),
            "--initial-cluster",
            &target.initial_cluster,
        ],
        None,
    );
    assert!(!again.status.success());
    assert!(String::from_utf8_lossy(&again.stderr).contains("is not empty"));

    drop(source);
    for index in 0..3 {
        target.launch(index);
    }
    target.wait_for_master(std::time::Duration::from_secs(20));
    let restored_endpoints = target.endpoints();
    assert_eq!(
        everything(&restored_endpoints),
        (revision, kvs.clone()),
        "keys after restore"
    );
    assert_eq!(leases(&restored_endpoints), source_leases, "leases after restore");
    assert_eq!(hashes_at(&target, revision), source_hashes, "HashKV after restore");
    let ttl = etcdctl_ok(&[
        "--endpoints",
        &restored_endpoints,
        "lease",
        "timetolive",
        &lease,
        "--keys",
    ]);
    assert!(
        ttl.contains("granted with TTL(600s)") && ttl.contains("attached keys([leased])"),
        "{ttl}"
    );

    // The new group takes writes after the restored revision, on every member.
    let after = etcdctl_ok(&[
        "--endpoints",
        &restored_endpoints,
        "put",
        "after",
        "restore",
        "-w",
        "json",
    ]);
    let after: Value = serde_json::from_str(&after).expect("put -w json");
    assert_eq!(after["header"]["revision"].as_i64(), Some(revision + 1));
    let header_cluster = after["header"]["cluster_id"].as_u64().expect("cluster_id");
    assert_eq!(format!("{header_cluster:x}"), cluster_ids[0]);
    assert_ne!(
        header_cluster, source_cluster_id,
        "a restored group gets a new cluster ID"
    );
    for member in &target.members {
        let value = etcdctl_ok(&["--endpoints", &member.endpoint(), "get", "after", "--print-value-only"]);
        assert_eq!(value, "restore\n", "member {}", member.name);
    }
}

#[test]
fn passing_the_space_quota_raises_nospace_until_an_operator_disarms_it() {
    let cluster = Cluster::start_with(3, "quota", &["--quota-backend-bytes", "4096"]);
    let endpoints = cluster.endpoints();
    let value = "v".repeat(1000);
    let mut refused = None;
    for index in 0..10 {
        let output = common::etcdctl(&["--endpoints", &endpoints, "put", &format!("big/{index}"), &value]);
        if !output.status.success() {
            refused = Some((index, String::from_utf8_lossy(&output.stderr).into_owned()));
            break;
        }
    }
    let (stored, error) = refused.expect("a put past the quota is refused");
    assert!(stored >= 3, "refused after only {stored} puts of 1000 bytes");
    assert!(error.contains("database space exceeded"), "{error}");
    let listed = etcdctl_ok(&["--endpoints", &endpoints, "alarm", "list"]);
    assert!(listed.contains("alarm:NOSPACE"), "{listed}");
    // Every member refuses a put now, even a small one, and a txn that puts.
    for member in &cluster.members {
        let output = common::etcdctl(&["--endpoints", &member.endpoint(), "put", "small", "x"]);
        assert!(
            !output.status.success(),
            "member {} took a put under NOSPACE",
            member.name
        );
        assert!(String::from_utf8_lossy(&output.stderr).contains("database space exceeded"));
    }
    // Reads, deletes and compaction go on.
    let (_, kvs) = everything(&endpoints);
    assert_eq!(kvs.len(), stored);
    etcdctl_ok(&["--endpoints", &endpoints, "del", "big/", "--prefix"]);
    let (revision, _) = everything(&endpoints);
    etcdctl_ok(&[
        "--endpoints",
        &endpoints,
        "compact",
        &revision.to_string(),
        "--physical",
    ]);
    etcdctl_ok(&["--endpoints", &endpoints, "defrag"]);
    // Still refused: the alarm holds until it is disarmed.
    assert!(!common::etcdctl(&["--endpoints", &endpoints, "put", "small", "x"])
        .status
        .success());
    let disarmed = etcdctl_ok(&["--endpoints", &endpoints, "alarm", "disarm"]);
    assert!(disarmed.contains("alarm:NOSPACE"), "{disarmed}");
    assert_eq!(etcdctl_ok(&["--endpoints", &endpoints, "alarm", "list"]), "");
    etcdctl_ok(&["--endpoints", &endpoints, "put", "small", "x"]);
}

/// Chubby's sequencer: a holder that lost its lock cannot write with it.
#[test]
fn a_write_fenced_by_the_sequencer_of_a_lost_lock_is_refused() {
    use synod_proto::etcdserverpb::kv_client::KvClient;
    use synod_proto::etcdserverpb::lease_client::LeaseClient;
    use synod_proto::etcdserverpb::request_op::Request as Op;
    use synod_proto::etcdserverpb::{
        DeleteRangeRequest, LeaseGrantRequest, LeaseRevokeRequest, PutRequest, RangeRequest, RequestOp, TxnRequest,
    };
    use synod_proto::v3lockpb::lock_client::LockClient;
    use synod_proto::v3lockpb::LockRequest;
    use tonic::transport::Channel;

    fn with_sequencer<T>(message: T, sequencer: &str) -> tonic::Request<T> {
        let mut request = tonic::Request::new(message);
        request
            .metadata_mut()
            .insert("synod-sequencer", sequencer.parse().expect("ASCII sequencer"));
        request
    }
    fn put(key: &str, value: &str) -> PutRequest {
        PutRequest {
            key: key.as_bytes().to_vec().into(),
            value: value.as_bytes().to_vec().into(),
            ..PutRequest::default()
        }
    }
    async fn value_of(kv: &mut KvClient<Channel>, key: &str) -> Vec<u8> {
        let range = RangeRequest {
            key: key.as_bytes().to_vec().into(),
            ..RangeRequest::default()
        };
        let found = kv.range(range).await.expect("range").into_inner();
        found.kvs.first().map(|kv| kv.value.to_vec()).unwrap_or_default()
    }

    /// The sequencer header for the holder of lock key `key` on `lease`,
    /// and the key's create revision.
    async fn sequencer_for(kv: &mut KvClient<Channel>, key: &[u8], lease: i64) -> (String, i64) {
        let range = RangeRequest {
            key: key.to_vec().into(),
            ..RangeRequest::default()
        };
        let created = kv.range(range).await.expect("range").into_inner().kvs[0].create_revision;
        let hex: String = key.iter().map(|byte| format!("{byte:02x}")).collect();
        (format!("{hex}/{created}/{lease:x}"), created)
    }

    let cluster = Cluster::start(3, "sequencer");
    let master = cluster.wait_for_master(std::time::Duration::from_secs(10));
    // Through a follower, so the sequencer must survive forwarding.
    let url = cluster.members[(master + 1) % 3].url();
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    runtime.block_on(async move {
        let channel = Channel::from_shared(url)
            .expect("url")
            .connect()
            .await
            .expect("connect");
        let mut leases = LeaseClient::new(channel.clone());
        let mut locks = LockClient::new(channel.clone());
        let mut kv = KvClient::new(channel);
        let grant = LeaseGrantRequest { ttl: 60, id: 0 };
        let first = leases.lease_grant(grant).await.expect("grant").into_inner().id;
        let lock = |lease| LockRequest {
            name: "fence".into(),
            lease,
        };
        let held = locks.lock(lock(first)).await.expect("lock").into_inner().key;
        let (token, _) = sequencer_for(&mut kv, &held, first).await;
        kv.put(with_sequencer(put("guarded", "1"), &token))
            .await
            .expect("the holder writes with its sequencer");

        // The holder's lease ends (a holder paused past its TTL ends the same
        // way, by the master's revoke) and another client takes the lock.
        leases
            .lease_revoke(LeaseRevokeRequest { id: first })
            .await
            .expect("revoke");
        let second = leases.lease_grant(grant).await.expect("grant").into_inner().id;
        let taken = locks.lock(lock(second)).await.expect("lock").into_inner().key;
        assert_ne!(taken, held);

        let stale = kv
            .put(with_sequencer(put("guarded", "stale"), &token))
            .await
            .expect_err("a put with a stale sequencer");
        assert_eq!(stale.code(), tonic::Code::FailedPrecondition, "{stale:?}");
        assert!(stale.message().contains("sequencer is stale"), "{stale:?}");
        let delete = DeleteRangeRequest {
            key: "guarded".into(),
            ..DeleteRangeRequest::default()
        };
        let stale = kv
            .delete_range(with_sequencer(delete, &token))
            .await
            .expect_err("a delete with a stale sequencer");
        assert_eq!(stale.code(), tonic::Code::FailedPrecondition);
        let txn = TxnRequest {
            success: vec![RequestOp {
                request: Some(Op::RequestPut(put("guarded", "txn"))),
            }],
            ..TxnRequest::default()
        };
        let stale = kv
            .txn(with_sequencer(txn.clone(), &token))
            .await
            .expect_err("a txn with a stale sequencer");
        assert_eq!(stale.code(), tonic::Code::FailedPrecondition);
        assert_eq!(value_of(&mut kv, "guarded").await, b"1", "no stale write landed");

        // The new holder's sequencer works, for a txn too.
        let (token, created) = sequencer_for(&mut kv, &taken, second).await;
        let answered = kv.txn(with_sequencer(txn, &token)).await.expect("txn").into_inner();
        assert!(answered.succeeded);
        assert!(answered.header.expect("header").revision > created);
        assert_eq!(value_of(&mut kv, "guarded").await, b"txn");

        for malformed in ["", "zz/1/1", "66/-1/1", "66/1", "66/1/1/1", "66/1/xyz"] {
            let refused = kv
                .put(with_sequencer(put("guarded", "bad"), malformed))
                .await
                .expect_err("a malformed sequencer");
            assert_eq!(
                refused.code(),
                tonic::Code::InvalidArgument,
                "{malformed:?}: {refused:?}"
            );
        }
    });
}
