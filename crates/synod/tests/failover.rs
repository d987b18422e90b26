//! Crashes: SIGKILL the master while a client writes; a new master must serve
//! writes within [`FAILOVER_MAX`] and every acknowledged write must survive,
//! also after every member is killed and restarted. Snapshots are taken every
//! [`SNAPSHOT_INTERVAL`] instances, so the log is trimmed during the run and
//! the full restart recovers from snapshots plus the log above them, and a
//! member rejoining with an empty disk catches up from a peer's snapshot.

mod common;

use std::time::{Duration, Instant};

use common::Cluster;
use synod_proto::etcdserverpb::kv_client::KvClient;
use synod_proto::etcdserverpb::{PutRequest, RangeRequest};
use tonic::transport::{Channel, Endpoint};

/// The stated bound on failover with the test timing (1 s master lease,
/// 0.5 s election timeout): the lease must run out on the survivors, then one
/// of them takes it and recovers the log.
const FAILOVER_MAX: Duration = Duration::from_secs(8);
const SNAPSHOT_INTERVAL: &str = "10";

fn channel(url: &str) -> Channel {
    Endpoint::from_shared(url.to_string())
        .expect("url")
        .connect_timeout(Duration::from_millis(500))
        .timeout(Duration::from_secs(3))
        .connect_lazy()
}

/// Puts `key` at the first member that acknowledges it, trying each in turn.
async fn put_anywhere(clients: &mut [KvClient<Channel>], key: String) -> bool {
    for client in clients.iter_mut() {
        let request = PutRequest {
            key: key.clone().into(),
            value: key.clone().into(),
            ..PutRequest::default()
        };
        if client.put(request).await.is_ok() {
            return true;
        }
    }
    false
}

/// Every key under `acked/` a member holds, read linearizably or not.
async fn keys_at(client: &mut KvClient<Channel>, serializable: bool) -> Option<Vec<String>> {
    let response = client
        .range(RangeRequest {
            key: "acked/".into(),
            range_end: "acked0".into(),
            serializable,
            ..RangeRequest::default()
        })
        .await
        .ok()?;
    Some(
        response
            .into_inner()
            .kvs
            .into_iter()
            .map(|kv| String::from_utf8_lossy(&kv.key).into_owned())
            .collect(),
    )
}

async fn wait_for_keys(client: &mut KvClient<Channel>, acked: &[String], serializable: bool, what: &str) {
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        if let Some(keys) = keys_at(client, serializable).await {
            let missing: Vec<&String> = acked.iter().filter(|key| !keys.contains(key)).collect();
            if missing.is_empty() {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "{what}: acknowledged writes missing: {missing:?}"
            );
        } else {
            assert!(Instant::now() < deadline, "{what}: no answer");
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[test]
fn master_crash_and_full_restart_lose_no_acknowledged_write() {
    let mut cluster = Cluster::start_with(3, "failover", &["--snapshot-interval-instances", SNAPSHOT_INTERVAL]);
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    let urls: Vec<String> = cluster.members.iter().map(|member| member.url()).collect();
    let mut acked: Vec<String> = Vec::new();
    let mut sequence = 0u64;

    // Writes before the crash.
    runtime.block_on(async {
        let mut clients: Vec<KvClient<Channel>> = urls.iter().map(|url| KvClient::new(channel(url))).collect();
        for _ in 0..30 {
            sequence += 1;
            let key = format!("acked/{sequence:06}");
            if put_anywhere(&mut clients, key.clone()).await {
                acked.push(key);
            }
        }
    });
    assert_eq!(acked.len(), 30, "a healthy group acknowledges every write");

    let master = cluster.wait_for_master(Duration::from_secs(10));
    let crashed_at = Instant::now();
    cluster.kill(master);
    let survivors: Vec<String> = (0..urls.len())
        .filter(|index| *index != master)
        .map(|index| urls[index].clone())
        .collect();

    // Keep writing through the crash; measure when writes flow again.
    let failover = runtime.block_on(async {
        let mut clients: Vec<KvClient<Channel>> = survivors.iter().map(|url| KvClient::new(channel(url))).collect();
        let mut first_ack_after_crash = None;
        while first_ack_after_crash.is_none() {
            assert!(
                crashed_at.elapsed() < FAILOVER_MAX * 2,
                "no write acknowledged within {:?} of the master's crash",
                FAILOVER_MAX * 2
            );
            sequence += 1;
            let key = format!("acked/{sequence:06}");
            if put_anywhere(&mut clients, key.clone()).await {
                acked.push(key);
                first_ack_after_crash = Some(crashed_at.elapsed());
            } else {
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
        for _ in 0..20 {
            sequence += 1;
            let key = format!("acked/{sequence:06}");
            if put_anywhere(&mut clients, key.clone()).await {
                acked.push(key);
            }
        }
        for url in &survivors {
            let mut client = KvClient::new(channel(url));
            wait_for_keys(&mut client, &acked, false, "linearizable read after failover").await;
        }
        first_ack_after_crash.expect("measured")
    });
    eprintln!("failover: first write acknowledged {failover:?} after the master was killed");
    assert!(
        failover < FAILOVER_MAX,
        "failover took {failover:?}, over {FAILOVER_MAX:?}"
    );

    // The crashed member comes back and catches up.
    cluster.launch(master);
    runtime.block_on(async {
        let mut client = KvClient::new(channel(&urls[master]));
        wait_for_keys(&mut client, &acked, true, "restarted member's own store").await;
    });

    // Every member killed at once, then restarted: all data intact.
    for index in 0..urls.len() {
        cluster.kill(index);
    }
    for index in 0..urls.len() {
        cluster.launch(index);
    }
    cluster.wait_for_master(Duration::from_secs(20));
    runtime.block_on(async {
        for url in &urls {
            let mut client = KvClient::new(channel(url));
            wait_for_keys(&mut client, &acked, false, "linearizable read after a full restart").await;
            wait_for_keys(&mut client, &acked, true, "serializable read after a full restart").await;
        }
        let mut clients: Vec<KvClient<Channel>> = urls.iter().map(|url| KvClient::new(channel(url))).collect();
        assert!(put_anywhere(&mut clients, "acked/after-restart".into()).await);
    });

    // A member whose disk is replaced rejoins with an empty data directory:
    // the log it needs is trimmed everywhere, so it installs a peer's snapshot.
    let replaced = (cluster.wait_for_master(Duration::from_secs(10)) + 1) % urls.len();
    cluster.kill(replaced);
    std::fs::remove_dir_all(&cluster.members[replaced].data_dir).expect("wipe the data directory");
    runtime.block_on(async {
        let mut clients: Vec<KvClient<Channel>> = (0..urls.len())
            .filter(|index| *index != replaced)
            .map(|index| KvClient::new(channel(&urls[index])))
            .collect();
        for _ in 0..25 {
            sequence += 1;
            let key = format!("acked/{sequence:06}");
            if put_anywhere(&mut clients, key.clone()).await {
                acked.push(key);
            }
        }
    });
    cluster.launch_with(replaced, &["--initial-cluster-state", "existing"]);
    runtime.block_on(async {
        let mut client = KvClient::new(channel(&urls[replaced]));
        wait_for_keys(&mut client, &acked, true, "member rejoining with an empty disk").await;
    });
    let log = cluster.members[replaced].log_text();
    assert!(
        log.contains("installed a peer's snapshot"),
        "the rejoining member did not install a snapshot"
    );

    // A clean stop on SIGTERM.
    for index in 0..urls.len() {
        let status = cluster.terminate(index).expect("was running");
        assert!(status.success(), "member {index} exited with {status} on SIGTERM");
    }
    for member in &cluster.members {
        assert!(!member.log_text().contains("panicked"), "{} panicked", member.name);
    }
}
