//! The run-time consistency check on real members: a member whose state
//! diverges (a test-only failpoint changes its store after one put) is found
//! by the master's periodic comparison of state hashes, gets a CORRUPT alarm
//! through the log, and stops serving; members that agree, through restarts
//! and snapshot catch-up, never raise one.

mod common;

use std::time::Duration;

use common::{etcdctl, http_get, output_text, retry, Cluster};

/// Checks run this often in these tests, in milliseconds.
const CHECK_INTERVAL_MS: &str = "300";

fn member_id(cluster: &Cluster, index: usize) -> u64 {
    let output = etcdctl(&[
        "--endpoints",
        &cluster.client_url(index),
        "endpoint",
        "status",
        "-w",
        "json",
    ]);
    let text = output_text(&output);
    let at = text.find("\"member_id\":").expect("endpoint status has a member_id") + "\"member_id\":".len();
    text[at..]
        .chars()
        .take_while(char::is_ascii_digit)
        .collect::<String>()
        .parse()
        .expect("a decimal member id")
}

fn alarms(cluster: &Cluster) -> String {
    output_text(&etcdctl(&["--endpoints", &cluster.endpoints(), "alarm", "list"]))
}

fn put(cluster: &Cluster, key: &str, value: &str) {
    retry(Duration::from_secs(20), &format!("put {key}"), || {
        let output = etcdctl(&["--endpoints", &cluster.endpoints(), "put", key, value]);
        if output.status.success() {
            Ok(())
        } else {
            Err(output_text(&output))
        }
    });
}

#[test]
fn a_diverged_member_is_found_gets_a_corrupt_alarm_and_stops_serving() {
    let mut cluster = Cluster::unstarted(
        3,
        "consistency-diverged",
        &["--consistency-check-interval-ms", CHECK_INTERVAL_MS],
    );
    cluster.launch(0);
    cluster.launch(1);
    cluster.launch_with(2, &["--failpoint-diverge-key", "diverge"]);
    cluster.wait_for_master(Duration::from_secs(20));
    for index in 0..20 {
        put(&cluster, &format!("key-{index}"), "value");
    }
    // Before the divergence, checks run and find nothing.
    retry(Duration::from_secs(20), "a clean check on the master", || {
        let master = cluster.master().ok_or("no master")?;
        match cluster.members[master].metric("synod_consistency_checks_total") {
            Some(checks) if checks >= 2 => Ok(()),
            other => Err(format!("checks: {other:?}")),
        }
    });
    assert!(!alarms(&cluster).contains("CORRUPT"), "{}", alarms(&cluster));

    put(&cluster, "diverge", "value");
    let diverged = member_id(&cluster, 2);
    let expected = format!("memberID:{diverged} alarm:CORRUPT");
    retry(
        Duration::from_secs(30),
        "the CORRUPT alarm of the diverged member",
        || {
            let listed = alarms(&cluster);
            if listed.contains(&expected) {
                Ok(())
            } else {
                Err(listed)
            }
        },
    );
    let listed = alarms(&cluster);
    assert_eq!(
        listed.matches("CORRUPT").count(),
        1,
        "only the diverged member: {listed}"
    );
    cluster.members[2].wait_for_log_lines("this member's CORRUPT alarm is raised (applied by instance", 1);

    // The diverged member answers no reads and no writes; the others do.
    let read = etcdctl(&["--endpoints", &cluster.client_url(2), "get", "key-1", "--consistency=s"]);
    assert!(
        !read.status.success() && output_text(&read).contains("corrupt cluster"),
        "{}",
        output_text(&read)
    );
    for index in 0..2 {
        let read = etcdctl(&[
            "--endpoints",
            &cluster.client_url(index),
            "get",
            "key-1",
            "--consistency=s",
        ]);
        assert!(read.status.success(), "{}", output_text(&read));
    }
    let master = cluster.wait_for_master(Duration::from_secs(20));
    assert!(
        cluster.members[master]
            .metric("synod_consistency_mismatches_total")
            .unwrap_or(0)
            >= 1
    );

    // An on-demand check at the master names the member; a follower points
    // at the master.
    let (code, body) = http_get(cluster.members[master].client_port, "/consistency");
    assert_eq!(code, 200, "{body}");
    assert!(body.contains(&format!("\"minority\":[\"{diverged:x}\"]")), "{body}");
    let follower = (0..3).find(|&index| index != master).expect("a follower");
    let (code, body) = http_get(cluster.members[follower].client_port, "/consistency");
    assert_eq!(code, 503, "{body}");
    assert!(body.contains("not the master"), "{body}");

    // Disarming does not mend the member: the next check raises it again.
    let disarm = etcdctl(&["--endpoints", &cluster.endpoints(), "alarm", "disarm"]);
    assert!(disarm.status.success(), "{}", output_text(&disarm));
    cluster.members[2].wait_for_log_lines("this member's CORRUPT alarm is disarmed", 1);
    retry(Duration::from_secs(30), "the CORRUPT alarm raised again", || {
        let listed = alarms(&cluster);
        if listed.contains(&expected) {
            Ok(())
        } else {
            Err(listed)
        }
    });
    cluster.kill(2);
}

#[test]
fn members_that_agree_raise_no_alarm_through_restarts_and_snapshot_catch_up() {
    let mut cluster = Cluster::start_with(
        3,
        "consistency-clean",
        &[
            "--consistency-check-interval-ms",
            CHECK_INTERVAL_MS,
            "--snapshot-interval-instances",
            "20",
        ],
    );
    for index in 0..30 {
        put(&cluster, &format!("key-{index}"), "value");
    }
    // A follower misses enough instances to need a peer's snapshot.
    let master = cluster.wait_for_master(Duration::from_secs(20));
    let follower = (0..3).find(|&index| index != master).expect("a follower");
    cluster.kill(follower);
    for index in 0..150 {
        put(&cluster, &format!("later-{index}"), "value");
    }
    cluster.launch(follower);
    retry(Duration::from_secs(40), "a check where all three members agree", || {
        let master = cluster.master().ok_or("no master")?;
        let (code, body) = http_get(cluster.members[master].client_port, "/consistency");
        if code == 200 && !body.contains("null") && body.contains("\"minority\":[]") {
            Ok(())
        } else {
            Err(format!("{code} {body}"))
        }
    });
    // A master change and a member restarted from its own log.
    cluster.kill(master);
    for index in 0..20 {
        put(&cluster, &format!("after-{index}"), "value");
    }
    cluster.launch(master);
    let checks_before = {
        let master = cluster.wait_for_master(Duration::from_secs(20));
        cluster.members[master]
            .metric("synod_consistency_checks_total")
            .unwrap_or(0)
    };
    retry(Duration::from_secs(30), "more checks on the new master", || {
        let master = cluster.master().ok_or("no master")?;
        match cluster.members[master].metric("synod_consistency_checks_total") {
            Some(checks) if checks >= checks_before + 5 => Ok(()),
            other => Err(format!("checks: {other:?}")),
        }
    });
    let listed = alarms(&cluster);
    assert!(!listed.contains("CORRUPT"), "no false alarm: {listed}");
    for member in &cluster.members {
        assert_eq!(
            member.metric("synod_consistency_mismatches_total"),
            Some(0),
            "{}",
            member.name
        );
    }
}
