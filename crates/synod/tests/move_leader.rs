//! `etcdctl move-leader`: the master hands PaxosLease to the member named
//! and steps down, while a client writes through every member; no write
//! acknowledged before, during or after the move is lost. Asked of a follower,
//! or for a member not in the group, MoveLeader answers etcd's errors.

mod common;

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use common::{etcdctl, etcdctl_ok, output_text, retry, Cluster};
use synod_proto::etcdserverpb::maintenance_client::MaintenanceClient;
use synod_proto::etcdserverpb::MoveLeaderRequest;

/// Member `index`'s ID, in hex, as `endpoint status` prints it.
fn member_id(cluster: &Cluster, index: usize) -> String {
    let status = etcdctl_ok(&["--endpoints", &cluster.client_url(index), "endpoint", "status"]);
    // "endpoint, id, version, db size, is leader, ..."
    status.split(", ").nth(1).expect("an ID").to_string()
}

/// Puts `move/N` = `N` through the members in turn until stopped; the keys
/// whose put was acknowledged.
fn writer(endpoints: Vec<String>, stop: Arc<AtomicBool>, acknowledged: Arc<Mutex<Vec<u64>>>) {
    let mut next = 0u64;
    while !stop.load(Ordering::Relaxed) {
        let endpoint = &endpoints[next as usize % endpoints.len()];
        let put = etcdctl(&[
            "--endpoints",
            endpoint,
            "put",
            &format!("move/{next}"),
            &next.to_string(),
        ]);
        if put.status.success() {
            acknowledged.lock().unwrap().push(next);
        }
        next += 1;
    }
}

#[test]
fn move_leader_hands_the_master_role_to_the_member_named_without_losing_a_write() {
    let cluster = Cluster::start(3, "move-leader");
    let endpoints: Vec<String> = (0..3).map(|index| cluster.client_url(index)).collect();
    let stop = Arc::new(AtomicBool::new(false));
    let acknowledged = Arc::new(Mutex::new(Vec::new()));
    let writing = {
        let (endpoints, stop, acknowledged) = (endpoints.clone(), stop.clone(), acknowledged.clone());
        std::thread::spawn(move || writer(endpoints, stop, acknowledged))
    };
    retry(Duration::from_secs(10), "writes before the move", || {
        let written = acknowledged.lock().unwrap().len();
        (written >= 10).then_some(()).ok_or(format!("{written} writes"))
    });

    let mut master = cluster.wait_for_master(Duration::from_secs(10));
    for round in 0..3 {
        let target = (master + 1 + round % 2) % 3;
        let target_id = member_id(&cluster, target);
        let asked = std::time::Instant::now();
        let moved = etcdctl(&["--endpoints", &endpoints.join(","), "move-leader", &target_id]);
        println!("round {round}: move-leader answered in {:?}", asked.elapsed());
        assert!(moved.status.success(), "round {round}: {}", output_text(&moved));
        assert!(
            // etcdctl 3.4: "Leadership transferred from OLD to NEW".
            output_text(&moved).contains(&format!("to {target_id}")),
            "{}",
            output_text(&moved)
        );
        // Every member follows the new master.
        retry(Duration::from_secs(10), "every member to report the new master", || {
            let now = cluster.master();
            (now == Some(target))
                .then_some(())
                .ok_or(format!("master {now:?}, wanted {target}"))
        });
        master = target;
        let before = acknowledged.lock().unwrap().len();
        retry(Duration::from_secs(10), "writes after the move", || {
            let written = acknowledged.lock().unwrap().len();
            (written >= before + 5).then_some(()).ok_or(format!("{written} writes"))
        });
    }
    stop.store(true, Ordering::Relaxed);
    writing.join().expect("the writer");

    let acknowledged = acknowledged.lock().unwrap().clone();
    for endpoint in &endpoints {
        for key in &acknowledged {
            let value = etcdctl_ok(&[
                "--endpoints",
                endpoint,
                "get",
                &format!("move/{key}"),
                "--print-value-only",
            ]);
            assert_eq!(value.trim(), key.to_string(), "move/{key} at {endpoint}");
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn move_leader_answers_etcds_errors() {
    let cluster = tokio::task::spawn_blocking(|| Cluster::start(3, "move-leader-errors"))
        .await
        .unwrap();
    let master = cluster.master().expect("a master");
    let follower = (master + 1) % 3;
    let target = u64::from_str_radix(&member_id(&cluster, follower), 16).expect("hex ID");
    let connect = |index: usize| MaintenanceClient::connect(format!("http://{}", cluster.members[index].endpoint()));

    let mut at_follower = connect(follower).await.expect("connect");
    let refused = at_follower
        .move_leader(MoveLeaderRequest { target_id: target })
        .await
        .expect_err("a follower does not move the master");
    assert_eq!(refused.code(), tonic::Code::FailedPrecondition);
    assert_eq!(refused.message(), "etcdserver: not leader");

    let mut at_master = connect(master).await.expect("connect");
    let refused = at_master
        .move_leader(MoveLeaderRequest { target_id: 12345 })
        .await
        .expect_err("no such member");
    assert_eq!(refused.code(), tonic::Code::FailedPrecondition);
    assert_eq!(refused.message(), "etcdserver: bad leader transferee");

    // To itself: nothing to do, and it stays master.
    let own = u64::from_str_radix(&member_id(&cluster, master), 16).expect("hex ID");
    at_master
        .move_leader(MoveLeaderRequest { target_id: own })
        .await
        .expect("a move to the master itself succeeds");
    assert_eq!(cluster.master(), Some(master));
}
