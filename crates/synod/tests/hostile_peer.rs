//! A peer on plain TCP that knows the group's names and addresses (all it
//! needs to pass the handshake as a member) and sends what no member would:
//! rounds and instances of `u64::MAX`, ballots of other members, snapshot
//! chunks nobody asked for. Each is refused with a log line, the group keeps
//! serving and can still elect a new master, and nothing acknowledged is lost.

mod common;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use common::{output_text, retry, Cluster};
use synod_paxos::{Ballot, Batch, BatchId, Epoch, Instance, Message, NodeId};
use synod_server::frame::{Decoder, Encoder, Frame, Handshake, FRAME_BYTES_MAX_DEFAULT, HANDSHAKE_PROTOCOL_VERSION};
use synod_server::identity::Identity;
use synod_server::peer::{Payload, HANDSHAKE_FRAME_BYTES_MAX};
use synod_server::snapshot_transfer::SnapshotChunk;

const REFUSED: &str = "refused a peer message";
const UNSOLICITED: &str = "ignoring a snapshot chunk this member did not ask that peer for";

/// Member `index`'s ID, as every member derives it from its name.
fn member_id(cluster: &Cluster, index: usize) -> u64 {
    synod_server::config::member_id(&cluster.members[index].name)
}

/// A connection to member `target`'s peer port that has passed the handshake
/// as member `claimed`. Nothing secret goes into it: the cluster and member
/// IDs come from `--initial-cluster`, as each member derives them.
fn impersonate(cluster: &Cluster, claimed: usize, target: usize) -> TcpStream {
    let identity = Identity::from_flags(&cluster.members[claimed].name, &cluster.initial_cluster).expect("identity");
    let hello = Handshake {
        protocol_version: HANDSHAKE_PROTOCOL_VERSION,
        cluster_id: identity.cluster_id,
        sender_member_id: identity.member_id,
        receiver_member_id: member_id(cluster, target),
        sender_name: identity.name.clone(),
    };
    let mut stream = TcpStream::connect(("127.0.0.1", cluster.members[target].peer_port)).expect("connect");
    stream.set_read_timeout(Some(Duration::from_secs(5))).expect("timeout");
    let mut buffer = BytesMut::new();
    Encoder::new(HANDSHAKE_FRAME_BYTES_MAX)
        .encode(&hello.to_frame().expect("handshake frame"), &mut buffer)
        .expect("encode the handshake");
    stream.write_all(&buffer).expect("send the handshake");
    // The member answers with its own handshake once it has accepted ours.
    let mut decoder = Decoder::new(HANDSHAKE_FRAME_BYTES_MAX);
    let mut received = BytesMut::new();
    let reply = loop {
        if let Some(frame) = decoder.decode(&mut received).expect("a handshake reply") {
            break frame;
        }
        let mut bytes = [0u8; 512];
        let read = stream.read(&mut bytes).expect("read the handshake reply");
        assert!(read > 0, "{} refused the handshake", cluster.members[target].name);
        received.extend_from_slice(&bytes[..read]);
    };
    let reply = Handshake::from_frame(&reply).expect("a handshake");
    assert_eq!(reply.sender_member_id, member_id(cluster, target));
    stream
}

/// Sends `payloads` as frames in one write, right after the handshake: the
/// member closes this connection once the real member it claims to be
/// reconnects, which takes at least one dial back-off.
fn send(stream: &mut TcpStream, payloads: &[Bytes]) {
    let encoder = Encoder::new(FRAME_BYTES_MAX_DEFAULT);
    let mut buffer = BytesMut::new();
    for payload in payloads {
        encoder
            .encode(&Frame::message(payload.clone()), &mut buffer)
            .expect("encode a frame");
    }
    stream.write_all(&buffer).expect("send frames");
}

/// Waits until member `index` returns "v" for `key` with `--consistency`
/// `consistency` ("l" or "s").
fn wait_for_value(cluster: &Cluster, index: usize, key: &str, consistency: &str) {
    let endpoint = cluster.client_url(index);
    let consistency = format!("--consistency={consistency}");
    let what = format!("{key} ({consistency}) from {}", cluster.members[index].name);
    retry(Duration::from_secs(20), &what, || {
        let got = cluster.etcdctl(&[
            "--endpoints",
            &endpoint,
            "--command-timeout",
            "2s",
            "get",
            key,
            "--print-value-only",
            &consistency,
        ]);
        if got.status.success() && String::from_utf8_lossy(&got.stdout) == "v\n" {
            return Ok(());
        }
        Err(output_text(&got))
    });
}

/// Waits until member `index`'s `synod_peer_messages_invalid_total` reaches
/// `count`, and returns it.
fn wait_for_invalid(cluster: &Cluster, index: usize, count: i64) -> i64 {
    let member = &cluster.members[index];
    retry(
        Duration::from_secs(10),
        &format!("{count} invalid peer messages"),
        || match member.metric("synod_peer_messages_invalid_total") {
            Some(invalid) if invalid >= count => Ok(invalid),
            invalid => Err(format!("{} counted {invalid:?}: {}", member.name, member.log_text())),
        },
    )
}

fn assert_no_panic(cluster: &Cluster) {
    for member in &cluster.members {
        assert!(!member.log_text().contains("panicked"), "{} panicked", member.name);
    }
}

/// What a member that claims to be `claimed` sends `target` to wreck the
/// group: a prepare and a lease prepare at round `u64::MAX`, an accept at
/// instance `u64::MAX`, and a prepare whose ballot names the third member.
fn out_of_range_messages(cluster: &Cluster, claimed: usize, target: usize) -> Vec<Bytes> {
    let sender = NodeId(member_id(cluster, claimed));
    let third = (0..3)
        .find(|index| *index != claimed && *index != target)
        .expect("three members");
    let top = Ballot::new(u64::MAX, 0, sender);
    let plain = Ballot::new(1_000, 0, sender);
    let messages = [
        Message::Prepare {
            ballot: top,
            from: Instance(1),
        },
        Message::LeasePrepare { ballot: top },
        Message::Accept {
            ballot: plain,
            instance: Instance(u64::MAX),
            batch: Batch::new(
                BatchId {
                    ballot: plain,
                    instance: Instance(u64::MAX),
                },
                Vec::new(),
            ),
            chosen_through: Instance(0),
        },
        Message::Prepare {
            ballot: Ballot::new(1_000, 0, NodeId(member_id(cluster, third))),
            from: Instance(1),
        },
    ];
    messages.iter().map(Payload::encode_message).collect()
}

/// A follower and the master each get rounds and instances of `u64::MAX` and
/// a ballot of another member from a peer claiming to be a member. They refuse
/// every one with a log line and a count in `/metrics`; the group keeps
/// committing at every member; once the master is killed the other two still
/// elect a new one (a promise of round `u64::MAX` would leave no ballot above
/// it to elect with) which takes writes; and after the old master is back,
/// every acknowledged key is at every member.
#[test]
fn a_peer_sending_round_u64_max_is_refused() {
    let mut cluster = Cluster::start(3, "hostile-round");
    let master = cluster.wait_for_master(Duration::from_secs(20));
    let follower = (master + 1) % 3;
    let other = (master + 2) % 3;
    let mut acknowledged = Vec::new();
    for index in 0..3 {
        let key = format!("before-{index}");
        cluster.put_get(index, &key);
        acknowledged.push(key);
    }

    // The follower hears from "the other follower", the master from "the follower".
    let attacks = [(other, follower), (follower, master)];
    let mut streams = Vec::new();
    for (claimed, target) in attacks {
        let mut stream = impersonate(&cluster, claimed, target);
        send(&mut stream, &out_of_range_messages(&cluster, claimed, target));
        streams.push(stream);
    }
    for (_, target) in attacks {
        cluster.members[target].wait_for_log_lines(REFUSED, 4);
        assert_eq!(wait_for_invalid(&cluster, target, 4), 4);
    }
    drop(streams);

    for index in 0..3 {
        let key = format!("after-attack-{index}");
        cluster.put_get(index, &key);
        acknowledged.push(key);
    }

    cluster.kill(master);
    let elected = cluster.wait_for_master(Duration::from_secs(20));
    assert_ne!(elected, master);
    for index in [follower, other] {
        let key = format!("after-failover-{index}");
        cluster.put_get(index, &key);
        acknowledged.push(key);
    }

    cluster.launch(master);
    for index in 0..3 {
        for key in &acknowledged {
            wait_for_value(&cluster, index, key, "s");
            wait_for_value(&cluster, index, key, "l");
        }
    }
    assert_no_panic(&cluster);
}

/// A follower that asked nobody for a snapshot gets two chunks "from the
/// master", far ahead of its log: one of garbage bytes, one a whole snapshot
/// of an empty store that would wipe its keys if installed. It ignores both
/// with a log line, keeps its data and applied instance, and the group keeps
/// committing through it.
#[test]
fn an_unsolicited_snapshot_chunk_is_ignored() {
    let cluster = Cluster::start(3, "hostile-chunk");
    let master = cluster.wait_for_master(Duration::from_secs(20));
    let follower = (master + 1) % 3;
    cluster.put_get(master, "before-chunk");
    wait_for_value(&cluster, follower, "before-chunk", "s");
    let applied = cluster.members[follower]
        .metric("synod_applied_instance")
        .expect("the follower's applied instance");
    let instance = Instance(applied as u64 + 1_000_000);
    let epoch = Epoch(Ballot::new(1, 0, NodeId(member_id(&cluster, master))));
    let chunk = |bytes: Vec<u8>| {
        Payload::encode_snapshot_chunk(&SnapshotChunk {
            instance,
            epoch,
            chunk_index: 0,
            chunk_count: 1,
            total_bytes: bytes.len() as u64,
            crc32c: crc32c::crc32c(&bytes),
            bytes: bytes.into(),
        })
    };
    let garbage = chunk(b"these bytes are not a snapshot of anything".to_vec());
    let empty_store = chunk(synod_kv::Store::new(synod_server::node::kv_config()).snapshot());

    let mut stream = impersonate(&cluster, master, follower);
    send(&mut stream, &[garbage, empty_store]);
    let member = &cluster.members[follower];
    member.wait_for_log_lines(UNSOLICITED, 2);
    drop(stream);

    // A follower forwards a linearizable range to the master; a serializable
    // one reads the follower's own store, which a snapshot would replace.
    wait_for_value(&cluster, follower, "before-chunk", "l");
    wait_for_value(&cluster, follower, "before-chunk", "s");
    let applied_after = member.metric("synod_applied_instance").expect("applied instance");
    assert!(
        applied_after < instance.0 as i64,
        "the follower skipped to instance {applied_after}"
    );
    for index in 0..3 {
        let key = format!("after-chunk-{index}");
        cluster.put_get(index, &key);
        wait_for_value(&cluster, follower, &key, "s");
    }
    wait_for_value(&cluster, follower, "before-chunk", "s");
    let log = member.log_text();
    assert!(!log.contains("a peer's snapshot is not installed"), "{log}");
    assert_no_panic(&cluster);
}
