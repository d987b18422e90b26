//! Fuzz targets: one for every decoder that takes bytes from outside a member
//! (a peer, a client, a file on disk).
//!
//! A target is a plain function of bytes that panics when one of its
//! properties fails, so the very same code runs two ways:
//! - `cargo test -p synod-fuzz` (`tests/fuzz.rs`): over each target's seeds and
//!   its corpus under `corpus/<target>/`, then over random mutations of them for
//!   a bounded time, with an allocator that counts every byte a call allocates;
//! - under libFuzzer, coverage-guided, by `scripts/fuzz.sh` (the cargo-fuzz
//!   crate in `fuzz/`, outside the workspace), with `-malloc_limit_mb`.
//!
//! Properties, for every input: no panic (a decoder answers with an error);
//! whatever decodes encodes back to the same value (round trip); and the bytes
//! allocated stay within [`ALLOCATION_PER_INPUT_BYTE`] times the input's
//! length plus the target's [`Target::allocation_slack_bytes`], so no length
//! field can make a member reserve memory the input did not bring.
//!
//! A target's seeds are valid encodings built here from the real encoders, so
//! mutations start from inputs that reach deep into each decoder; a crash
//! found by a longer run is added to the corpus as a regression.

use std::sync::Arc;

use bytes::{BufMut, Bytes, BytesMut};
use prost::Message as _;
use synod_kv as kv;
use synod_paxos::{
    decode_batch, decode_message, encode_batch, encode_message, Ballot, Batch, BatchId, Config, Entry, Epoch,
    FreshStart, Instance, Message, NodeId, Persist, PromiseEntry, RefuseReason, Replica, Time, COUNTER_MAX,
};
use synod_proto::etcdserverpb as pb;
use synod_server::api::client_requests as convert;
use synod_server::frame::{Decoder, Encoder, Frame, FrameKind, Handshake};
use synod_server::peer::Payload;
use synod_server::snapshot_transfer::SnapshotChunk;
use synod_storage::{AcceptorStore, AcceptorStoreConfig, Disk, FaultConfig, SimDisk, WalConfig};

/// A call may allocate this many bytes per byte of its input (decoding into
/// owned structures, round-trip copies, `Vec` doubling), plus its slack.
pub const ALLOCATION_PER_INPUT_BYTE: usize = 64;

/// Largest frame the peer-stream target accepts, in bytes: small, so that a
/// header announcing the most it may is still a bounded reservation.
const FRAME_BYTES_MAX: u32 = 64 * 1024;

/// Largest Paxos message the targets decode, in bytes.
const MESSAGE_BYTES_MAX: usize = 64 * 1024;

/// One fuzz target.
pub struct Target {
    /// Its name: the corpus folder and the libFuzzer binary are named after it.
    pub name: &'static str,
    /// Runs one input; panics when a property fails.
    pub run: fn(&[u8]),
    /// Valid inputs to start from.
    pub seeds: fn() -> Vec<Vec<u8>>,
    /// Bytes a call may allocate whatever its input, beyond
    /// [`ALLOCATION_PER_INPUT_BYTE`] per input byte, for fixed-size state
    /// (a replica, a store, a decoder's reservation up to its frame bound).
    pub allocation_slack_bytes: usize,
}

/// Every target.
pub const TARGETS: &[Target] = &[
    Target {
        name: "peer_stream",
        run: peer_stream,
        seeds: peer_stream_seeds,
        allocation_slack_bytes: 2 * FRAME_BYTES_MAX as usize + (64 << 10),
    },
    Target {
        name: "handshake",
        run: handshake,
        seeds: handshake_seeds,
        allocation_slack_bytes: 4 << 10,
    },
    Target {
        name: "peer_payload",
        run: peer_payload,
        seeds: peer_payload_seeds,
        allocation_slack_bytes: 16 << 10,
    },
    Target {
        name: "paxos_message",
        run: paxos_message,
        seeds: paxos_message_seeds,
        allocation_slack_bytes: 16 << 10,
    },
    Target {
        name: "paxos_batch",
        run: paxos_batch,
        seeds: paxos_batch_seeds,
        allocation_slack_bytes: 16 << 10,
    },
    Target {
        name: "replica_step",
        run: replica_step,
        seeds: replica_step_seeds,
        allocation_slack_bytes: 1 << 20,
    },
    Target {
        name: "kv_request",
        run: kv_request,
        seeds: kv_request_seeds,
        allocation_slack_bytes: 16 << 10,
    },
    Target {
        name: "kv_snapshot",
        run: kv_snapshot,
        seeds: kv_snapshot_seeds,
        allocation_slack_bytes: 1 << 20,
    },
    Target {
        name: "grpc_request",
        run: grpc_request,
        seeds: grpc_request_seeds,
        allocation_slack_bytes: 16 << 10,
    },
    Target {
        name: "storage_recovery",
        run: storage_recovery,
        seeds: storage_recovery_seeds,
        allocation_slack_bytes: 4 << 20,
    },
    Target {
        name: "kv_snapshot_chunks",
        run: kv_snapshot_chunks,
        seeds: kv_snapshot_chunks_seeds,
        allocation_slack_bytes: 1 << 20,
    },
    Target {
        name: "backup_file",
        run: backup_file,
        seeds: backup_file_seeds,
        allocation_slack_bytes: 1 << 20,
    },
    Target {
        name: "etcd_snapshot",
        run: backup_file,
        seeds: etcd_snapshot_seeds,
        allocation_slack_bytes: 1 << 20,
    },
];

/// The target called `name`.
pub fn target(name: &str) -> Option<&'static Target> {
    TARGETS.iter().find(|target| target.name == name)
}

// --- The peer port: frames, the handshake, payloads ---------------------------

/// A byte stream from a peer, arriving in two pieces: frames are cut, each
/// is re-encoded and cut again to the same frame, and what they carry is
/// decoded as the member would (handshake or payload).
fn peer_stream(data: &[u8]) {
    let split = data.first().map_or(0, |first| usize::from(*first)).min(data.len());
    let mut decoder = Decoder::new(FRAME_BYTES_MAX);
    let mut buffer = BytesMut::new();
    for piece in [&data[..split], &data[split..]] {
        buffer.extend_from_slice(piece);
        loop {
            match decoder.decode(&mut buffer) {
                Ok(Some(frame)) => check_frame(frame),
                Ok(None) => break,
                Err(_) => return,
            }
        }
    }
    if let Ok(Some(frame)) = decoder.decode_eof(&mut buffer) {
        check_frame(frame);
    }
}

fn check_frame(frame: Frame) {
    let mut encoded = BytesMut::new();
    Encoder::new(FRAME_BYTES_MAX)
        .encode(&frame, &mut encoded)
        .expect("a frame that decoded encodes");
    let again = Decoder::new(FRAME_BYTES_MAX)
        .decode(&mut encoded)
        .expect("a re-encoded frame decodes")
        .expect("a re-encoded frame is whole");
    assert_eq!(again, frame, "frame round trip");
    assert!(encoded.is_empty(), "a re-encoded frame has no bytes left over");
    match frame.kind {
        FrameKind::Handshake => {
            if let Ok(hello) = Handshake::from_frame(&frame) {
                let frame_again = hello.to_frame().expect("a handshake that decoded encodes");
                assert_eq!(
                    Handshake::from_frame(&frame_again).ok(),
                    Some(hello),
                    "handshake round trip"
                );
            }
        }
        FrameKind::Message => peer_payload(&frame.payload),
    }
}

fn handshake(data: &[u8]) {
    if let Ok(hello) = Handshake::decode(data) {
        let encoded = hello.encode().expect("a handshake that decoded encodes");
        assert_eq!(Handshake::decode(&encoded).ok(), Some(hello), "handshake round trip");
    }
}

fn encode_payload(payload: &Payload) -> Bytes {
    match payload {
        Payload::Message(message) => Payload::encode_message(message),
        Payload::ClientUrl(url) => Payload::encode_client_url(url),
        Payload::SnapshotRequest { instance, chunk_index } => Payload::encode_snapshot_request(*instance, *chunk_index),
        Payload::SnapshotChunk(chunk) => Payload::encode_snapshot_chunk(chunk),
        Payload::HashQuery { instance } => Payload::encode_hash_query(*instance),
        Payload::HashReport { instance, hash } => Payload::encode_hash_report(*instance, *hash),
    }
}

fn peer_payload(data: &[u8]) {
    let Ok(payload) = Payload::decode(Bytes::copy_from_slice(data), MESSAGE_BYTES_MAX) else {
        return;
    };
    if let Payload::Message(message) = &payload {
        check_message(message);
    }
    let again = Payload::decode(encode_payload(&payload), MESSAGE_BYTES_MAX).expect("a payload that decoded encodes");
    assert_eq!(again, payload, "payload round trip");
}

// --- The Paxos codec, and the core behind it ----------------------------------

fn check_message(message: &Message) {
    let encoded = encode_message(message);
    assert!(
        encoded.len() <= message.encoded_bytes(),
        "encoded_bytes ({}) is a bound on the encoding ({} bytes)",
        message.encoded_bytes(),
        encoded.len()
    );
    let again = decode_message(&encoded, usize::MAX).expect("a message that decoded encodes");
    assert_eq!(&again, message, "message round trip");
    for node in 0..4 {
        let _ = message.validate(NodeId(node));
    }
}

fn paxos_message(data: &[u8]) {
    if let Ok(message) = decode_message(&Bytes::copy_from_slice(data), MESSAGE_BYTES_MAX) {
        check_message(&message);
    }
}

fn paxos_batch(data: &[u8]) {
    if let Ok(batch) = decode_batch(&Bytes::copy_from_slice(data), MESSAGE_BYTES_MAX) {
        let again = decode_batch(&encode_batch(&batch), usize::MAX).expect("a batch that decoded encodes");
        assert_eq!(again, batch, "batch round trip");
    }
}

/// The member the replica-step target runs, in a group of three.
const STEPPED: NodeId = NodeId(1);

/// Messages from peers, stepped into a replica of a new group as the server
/// would step them, with time passing between them: nothing panics, and no
/// counter the replica keeps goes past what validation allows (in a release
/// build, where arithmetic wraps instead of panicking, this is what shows an
/// out-of-range round got through).
///
/// Input: records of `[sender: u8][length: u16 LE][message]`.
fn replica_step(data: &[u8]) {
    let config = Config::new(STEPPED, vec![NodeId(1), NodeId(2), NodeId(3)]);
    let mut now = Time::ZERO;
    let mut replica = Replica::fresh(config, FreshStart::NewGroup, now, 7);
    let mut rest = data;
    while rest.len() >= 3 {
        let from = NodeId(2 + u64::from(rest[0] % 2));
        let length = usize::from(u16::from_le_bytes([rest[1], rest[2]])).min(rest.len() - 3);
        let (message, tail) = rest[3..].split_at(length);
        rest = tail;
        now = Time(now.0 + 20_000_000);
        replica.tick(now);
        if let Ok(message) = decode_message(&Bytes::copy_from_slice(message), MESSAGE_BYTES_MAX) {
            replica.step(now, from, message);
        }
        let _ = replica.take_ready();
        let meta = replica.meta();
        assert!(
            meta.promised.round <= COUNTER_MAX,
            "promised round {}",
            meta.promised.round
        );
        assert!(replica.round() <= COUNTER_MAX + 1, "round {}", replica.round());
        assert!(
            replica.chosen_through().0 <= COUNTER_MAX,
            "chosen through {}",
            replica.chosen_through()
        );
    }
}

fn ballot(round: u64, node: u64) -> Ballot {
    Ballot {
        round,
        incarnation: 1,
        node: NodeId(node),
    }
}

fn batch(round: u64, instance: u64, values: &[&[u8]]) -> Batch {
    let id = BatchId {
        ballot: ballot(round, 2),
        instance: Instance(instance),
    };
    let entries = values
        .iter()
        .map(|value| Entry {
            value: Bytes::copy_from_slice(value),
            expected_epoch: instance.is_multiple_of(2).then_some(Epoch(ballot(round, 2))),
        })
        .collect();
    Batch::new(id, entries)
}

/// One message of every kind, as node 2 of a group of three would send them.
fn sample_messages() -> Vec<Message> {
    vec![
        Message::Probe,
        Message::ProbeReply {
            amnesiac: false,
            promised: ballot(1, 2),
            has_history: true,
            incarnation_seen: 1,
        },
        Message::LeasePrepare { ballot: ballot(3, 2) },
        Message::LeasePrepareReply {
            ballot: ballot(3, 1),
            granted: true,
            promised: ballot(3, 1),
            open_owner: Some(NodeId(3)),
        },
        Message::LeasePropose {
            ballot: ballot(3, 2),
            duration_nanos: 2_000_000_000,
        },
        Message::LeaseProposeReply {
            ballot: ballot(3, 1),
            granted: false,
            promised: ballot(4, 3),
        },
        Message::LeaseRelease { ballot: ballot(3, 2) },
        Message::ProposedQuery { incarnation: 3 },
        Message::ProposedReply {
            ballot: ballot(3, 2),
            proposed_through: Instance(7),
            incarnation: 3,
        },
        Message::MasterHandover {
            ballot: ballot(3, 2),
            through: Instance(7),
        },
        Message::Prepare {
            ballot: ballot(3, 2),
            from: Instance(1),
        },
        Message::Promise {
            ballot: ballot(3, 1),
            chosen_through: Instance(1),
            entries: vec![
                PromiseEntry::Chosen {
                    instance: Instance(1),
                    batch: batch(2, 1, &[b"a"]),
                },
                PromiseEntry::Accepted {
                    instance: Instance(2),
                    ballot: ballot(2, 2),
                    batch: batch(2, 2, &[b"bb", b""]),
                },
                PromiseEntry::Faulty {
                    instance: Instance(3),
                    ballot: Some(ballot(2, 3)),
                },
            ],
            truncated: false,
            last: true,
        },
        Message::Refuse {
            ballot: ballot(3, 1),
            promised: ballot(5, 3),
            reason: RefuseReason::Promised,
        },
        Message::Accept {
            ballot: ballot(3, 2),
            instance: Instance(1),
            batch: batch(3, 1, &[b"put k v", b"put k2 v2"]),
            chosen_through: Instance(0),
        },
        Message::Accepted {
            ballot: ballot(3, 1),
            instance: Instance(1),
        },
        Message::Commit {
            ballot: ballot(3, 2),
            chosen_through: Instance(1),
            proposed_through: Instance(2),
        },
        Message::CatchupRequest {
            from: Instance(1),
            to: Instance(4),
        },
        Message::CatchupReply {
            entries: vec![(Instance(1), batch(3, 1, &[b"x"])), (Instance(2), batch(3, 2, &[]))],
            chosen_through: Instance(2),
        },
        Message::SnapshotNeeded {
            snapshot_instance: Instance(9),
        },
    ]
}

fn paxos_message_seeds() -> Vec<Vec<u8>> {
    sample_messages()
        .iter()
        .map(|message| encode_message(message).to_vec())
        .collect()
}

fn paxos_batch_seeds() -> Vec<Vec<u8>> {
    [batch(1, 1, &[]), batch(2, 4, &[b"one", b"two", &[0; 40]])]
        .iter()
        .map(|batch| encode_batch(batch).to_vec())
        .collect()
}

fn replica_step_record(buffer: &mut Vec<u8>, from: u8, message: &Message) {
    let encoded = encode_message(message);
    buffer.push(from);
    buffer.extend_from_slice(&(encoded.len() as u16).to_le_bytes());
    buffer.extend_from_slice(&encoded);
}

fn replica_step_seeds() -> Vec<Vec<u8>> {
    let messages = sample_messages();
    // The whole conversation in order, and each message alone after a probe reply from both.
    let mut whole = Vec::new();
    for message in &messages {
        replica_step_record(&mut whole, 0, message);
    }
    let mut seeds = vec![whole];
    for message in &messages {
        let mut seed = Vec::new();
        replica_step_record(&mut seed, 0, &messages[1]);
        replica_step_record(&mut seed, 1, &messages[1]);
        replica_step_record(&mut seed, 0, message);
        seeds.push(seed);
    }
    seeds
}

fn peer_payload_seeds() -> Vec<Vec<u8>> {
    let chunk = SnapshotChunk {
        instance: Instance(12),
        epoch: Epoch(ballot(3, 2)),
        chunk_index: 0,
        chunk_count: 2,
        total_bytes: 9,
        crc32c: 0x1234_5678,
        bytes: Bytes::from_static(b"state"),
    };
    let mut seeds: Vec<Vec<u8>> = sample_messages()
        .iter()
        .map(|message| Payload::encode_message(message).to_vec())
        .collect();
    seeds.push(Payload::encode_client_url("https://10.0.0.2:2379").to_vec());
    seeds.push(Payload::encode_snapshot_request(Instance(12), 1).to_vec());
    seeds.push(Payload::encode_snapshot_chunk(&chunk).to_vec());
    seeds
}

fn sample_handshake() -> Handshake {
    Handshake {
        protocol_version: synod_server::frame::HANDSHAKE_PROTOCOL_VERSION,
        cluster_id: 0x5EED_0001,
        sender_member_id: 0xA11C_E002,
        receiver_member_id: 0xB0B0_0003,
        sender_name: "member-2".into(),
    }
}

fn handshake_seeds() -> Vec<Vec<u8>> {
    vec![sample_handshake()
        .encode()
        .expect("the sample handshake encodes")
        .to_vec()]
}

fn peer_stream_seeds() -> Vec<Vec<u8>> {
    let encoder = Encoder::new(FRAME_BYTES_MAX);
    let mut stream = BytesMut::new();
    let hello = sample_handshake().to_frame().expect("the sample handshake encodes");
    encoder
        .encode(&hello, &mut stream)
        .expect("the handshake frame encodes");
    for payload in peer_payload_seeds() {
        encoder
            .encode(&Frame::message(Bytes::from(payload)), &mut stream)
            .expect("a sample frame encodes");
    }
    // The first byte says where the stream is cut in two; the stream starts with the magic.
    vec![stream.to_vec()]
}

// --- The key-value machine: log entries, snapshots, client requests ------------

fn kv_request(data: &[u8]) {
    if let Ok(request) = kv::Request::decode(data) {
        let again = kv::Request::decode(&request.encode()).expect("a request that decoded encodes");
        assert_eq!(again, request, "request round trip");
    }
}

fn put(key: &[u8], value: &[u8], lease: i64) -> kv::Request {
    kv::Request::Put(kv::PutRequest {
        key: key.to_vec(),
        value: value.to_vec(),
        lease,
        prev_kv: true,
        ..kv::PutRequest::default()
    })
}

fn sample_requests() -> Vec<kv::Request> {
    let txn = kv::TxnRequest {
        compare: vec![kv::Compare {
            key: b"k".to_vec(),
            ..kv::Compare::default()
        }],
        success: vec![
            kv::RequestOp::Put(kv::PutRequest {
                key: b"k".to_vec(),
                value: b"v2".to_vec(),
                ..kv::PutRequest::default()
            }),
            kv::RequestOp::Txn(kv::TxnRequest::default()),
        ],
        failure: vec![kv::RequestOp::DeleteRange(kv::DeleteRangeRequest {
            key: b"a".to_vec(),
            range_end: b"z".to_vec(),
            prev_kv: false,
        })],
    };
    vec![
        kv::Request::LeaseGrant(kv::LeaseGrantRequest { ttl: 60, id: 7 }),
        put(b"k", b"v", 0),
        put(b"leased", b"v", 7),
        kv::Request::Txn(txn.clone()),
        kv::Request::DeleteRange(kv::DeleteRangeRequest {
            key: b"leased".to_vec(),
            range_end: Vec::new(),
            prev_kv: true,
        }),
        kv::Request::Client {
            user: Some("alice".into()),
            request: Box::new(kv::Request::Txn(txn)),
        },
    ]
}

fn kv_request_seeds() -> Vec<Vec<u8>> {
    sample_requests().iter().map(kv::Request::encode).collect()
}

fn snapshot_bytes(store: &kv::Store) -> Vec<u8> {
    let mut bytes = Vec::new();
    store
        .freeze()
        .write_snapshot(|piece| {
            bytes.extend_from_slice(piece);
            Ok::<(), ()>(())
        })
        .expect("writing to memory does not fail");
    bytes
}

/// A snapshot from a peer or from disk: what restores writes a snapshot that
/// restores to the same state, whole and cut into chunks.
fn kv_snapshot(data: &[u8]) {
    let Ok(store) = kv::Store::restore(kv::Config::default(), data) else {
        return;
    };
    let again = kv::Store::restore(kv::Config::default(), &snapshot_bytes(&store))
        .expect("a restored store's snapshot restores");
    assert_eq!(again.state_hash(), store.state_hash(), "snapshot round trip");
    let chunks: Vec<Vec<u8>> = store.snapshot_chunks(SNAPSHOT_CHUNK_BYTES).collect();
    let chunked = kv::Store::restore_chunks(kv::Config::default(), chunks.iter().map(Vec::as_slice))
        .expect("a restored store's chunks restore");
    assert_eq!(chunked.state_hash(), store.state_hash(), "chunked snapshot round trip");
}

/// Chunk size of the snapshot targets, in bytes: small, so that a snapshot
/// spans many chunks.
const SNAPSHOT_CHUNK_BYTES: usize = 64;

/// Snapshot chunks as records of `[length: u16 LE][chunk]`: refused or restored, never a panic.
fn kv_snapshot_chunks(data: &[u8]) {
    let mut chunks = Vec::new();
    let mut rest = data;
    while rest.len() >= 2 {
        let length = usize::from(u16::from_le_bytes([rest[0], rest[1]])).min(rest.len() - 2);
        let (chunk, tail) = rest[2..].split_at(length);
        chunks.push(chunk);
        rest = tail;
    }
    let _ = kv::Store::restore_chunks(kv::Config::default(), chunks);
}

fn kv_snapshot_chunks_seeds() -> Vec<Vec<u8>> {
    let mut seed = Vec::new();
    for chunk in sample_store().snapshot_chunks(SNAPSHOT_CHUNK_BYTES) {
        seed.extend_from_slice(&(chunk.len() as u16).to_le_bytes());
        seed.extend_from_slice(&chunk);
    }
    vec![seed]
}

fn sample_store() -> kv::Store {
    let mut store = kv::Store::new(kv::Config::default());
    for request in sample_requests() {
        store.apply(&request);
    }
    store
}

fn kv_snapshot_seeds() -> Vec<Vec<u8>> {
    vec![
        snapshot_bytes(&kv::Store::new(kv::Config::default())),
        snapshot_bytes(&sample_store()),
    ]
}

fn backup_file(data: &[u8]) {
    let _ = synod_server::backup::decode(data);
}

fn backup_file_seeds() -> Vec<Vec<u8>> {
    let store = sample_store();
    let plan = synod_server::backup::BackupPlan::measure(&store.freeze(), 6);
    let mut bytes = Vec::new();
    plan.write(&store.freeze(), |piece| {
        bytes.extend_from_slice(piece);
        Ok::<(), ()>(())
    })
    .expect("writing to memory does not fail");
    vec![bytes]
}

/// A snapshot `etcdctl snapshot save` wrote against etcd 3.4.23
/// (`crates/etcd-db/tests/fixtures/README.md`), as `synod snapshot restore`
/// migrates it.
const ETCD_SNAPSHOT: &[u8] = include_bytes!("../../etcd-db/tests/fixtures/etcd-3.4.23.db");

/// etcd's snapshot without its trailing SHA-256, which mutations would
/// otherwise break before the bbolt reader and the import see them; and
/// whole, so the hash check runs too.
fn etcd_snapshot_seeds() -> Vec<Vec<u8>> {
    let database = ETCD_SNAPSHOT[..ETCD_SNAPSHOT.len() - 32].to_vec();
    vec![database, ETCD_SNAPSHOT.to_vec()]
}

/// A gRPC request body from a client, decoded by prost and converted to the
/// state machine's request as the server does; what converts survives the log's
/// encoding. The first byte picks the request type.
fn grpc_request(data: &[u8]) {
    let Some((&kind, body)) = data.split_first() else {
        return;
    };
    let request = match kind % 5 {
        0 => pb::PutRequest::decode(body)
            .ok()
            .map(|put| kv::Request::Put(convert::put_request(put))),
        1 => pb::DeleteRangeRequest::decode(body)
            .ok()
            .map(|delete| kv::Request::DeleteRange(convert::delete_request(delete))),
        2 => pb::TxnRequest::decode(body)
            .ok()
            .and_then(|txn| convert::txn_request(txn).ok())
            .map(kv::Request::Txn),
        3 => {
            if let Ok(range) = pb::RangeRequest::decode(body) {
                let _ = convert::range_request(range);
            }
            None
        }
        _ => {
            if let Ok(watch) = pb::WatchCreateRequest::decode(body) {
                let _ = convert::watch_create(watch);
            }
            None
        }
    };
    if let Some(request) = request {
        kv_request(&request.encode());
    }
}

fn with_kind(kind: u8, message: &impl prost::Message) -> Vec<u8> {
    let mut bytes = vec![kind];
    bytes.extend_from_slice(&message.encode_to_vec());
    bytes
}

fn grpc_request_seeds() -> Vec<Vec<u8>> {
    let put = pb::PutRequest {
        key: Bytes::from_static(b"k"),
        value: Bytes::from_static(b"v"),
        lease: 7,
        prev_kv: true,
        ..pb::PutRequest::default()
    };
    let range = pb::RangeRequest {
        key: Bytes::from_static(b"a"),
        range_end: Bytes::from_static(b"z"),
        limit: 10,
        revision: 3,
        ..pb::RangeRequest::default()
    };
    let txn = pb::TxnRequest {
        compare: vec![pb::Compare {
            result: 0,
            target: 1,
            key: Bytes::from_static(b"k"),
            range_end: Bytes::new(),
            target_union: Some(pb::compare::TargetUnion::CreateRevision(2)),
        }],
        success: vec![pb::RequestOp {
            request: Some(pb::request_op::Request::RequestPut(put.clone())),
        }],
        failure: vec![pb::RequestOp {
            request: Some(pb::request_op::Request::RequestRange(range.clone())),
        }],
    };
    let watch = pb::WatchCreateRequest {
        key: Bytes::from_static(b"a"),
        range_end: Bytes::from_static(b"b"),
        start_revision: 4,
        progress_notify: true,
        filters: vec![1],
        prev_kv: true,
        watch_id: 3,
        fragment: false,
    };
    vec![
        with_kind(0, &put),
        with_kind(
            1,
            &pb::DeleteRangeRequest {
                key: Bytes::from_static(b"a"),
                range_end: Bytes::from_static(b"\0"),
                prev_kv: true,
            },
        ),
        with_kind(2, &txn),
        with_kind(3, &range),
        with_kind(4, &watch),
    ]
}

// --- The disk: acceptor metadata, the write-ahead log, snapshots ---------------

/// A data directory given as records of
/// `[name length: u8][name][length: u32 LE][contents]`: recovery answers with
/// what it found or an error, never a panic; what recovers once recovers again.
fn storage_recovery(data: &[u8]) {
    let disk = SimDisk::new(1, FaultConfig::default());
    let mut rest = data;
    while let Some((&name_bytes, tail)) = rest.split_first() {
        let name_bytes = usize::from(name_bytes);
        if tail.len() < name_bytes + 4 {
            break;
        }
        let (name, tail) = tail.split_at(name_bytes);
        let (length, tail) = tail.split_at(4);
        let length = (u32::from_le_bytes(length.try_into().expect("four bytes")) as usize).min(tail.len());
        let (contents, tail) = tail.split_at(length);
        rest = tail;
        if let Ok(name) = std::str::from_utf8(name) {
            if !name.is_empty() && !name.contains('/') {
                disk.put(name, contents);
            }
        }
    }
    let disk: Arc<dyn Disk> = Arc::new(disk);
    if AcceptorStore::open(disk.clone(), &storage_config()).is_ok() {
        AcceptorStore::open(disk, &storage_config()).expect("what opened once opens again");
    }
}

/// Small bounds: the simulated disk holds a file's every byte in memory, where
/// a real file system keeps the gap before a segment's identifier region
/// sparse, so a default 64 MiB segment would cost 64 MiB of memory here.
fn storage_config() -> AcceptorStoreConfig {
    AcceptorStoreConfig {
        wal: WalConfig {
            segment_bytes_max: 8 << 10,
            value_bytes_max: 1 << 10,
            preallocate_bytes: 0,
        },
        snapshot_chunk_bytes: 64,
        batch_bytes_max: 4 << 10,
    }
}

fn storage_recovery_seeds() -> Vec<Vec<u8>> {
    let disk = SimDisk::new(2, FaultConfig::default());
    let shared: Arc<dyn Disk> = Arc::new(disk.clone());
    let (mut store, _) = AcceptorStore::open(shared, &storage_config()).expect("a new store opens");
    let meta = |round| synod_paxos::Meta {
        promised: ballot(round, 2),
        incarnation: 1,
        voting: synod_paxos::Voting::Voter,
    };
    let mut records = vec![Persist::Meta(meta(3))];
    for instance in 1..=3 {
        records.push(Persist::Accepted {
            instance: Instance(instance),
            ballot: ballot(3, 2),
            batch: batch(3, instance, &[b"value", &[instance as u8; 20]]),
        });
    }
    records.push(Persist::ChosenThrough { through: Instance(2) });
    store.write(&records).expect("writing to a fault-free disk");
    store.sync().expect("syncing a fault-free disk");
    store
        .save_snapshot(Instance(2), Epoch(ballot(3, 2)), &snapshot_bytes(&sample_store()))
        .expect("a snapshot saves");
    store
        .write(&[Persist::Meta(meta(4))])
        .expect("writing to a fault-free disk");
    store.sync().expect("syncing a fault-free disk");
    let mut seed = Vec::new();
    for name in disk.list().expect("listing a simulated disk") {
        let contents = disk.contents(&name).expect("a listed file exists");
        seed.push(name.len() as u8);
        seed.extend_from_slice(name.as_bytes());
        seed.put_u32_le(contents.len() as u32);
        seed.extend_from_slice(&contents);
    }
    vec![seed]
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A seed its decoder refuses would leave the mutations in the error paths only.
    #[test]
    fn seeds_are_accepted_by_their_decoders() {
        for seed in paxos_message_seeds() {
            decode_message(&Bytes::from(seed), usize::MAX).expect("a Paxos seed decodes");
        }
        for seed in peer_payload_seeds() {
            Payload::decode(Bytes::from(seed), MESSAGE_BYTES_MAX).expect("a payload seed decodes");
        }
        for seed in kv_request_seeds() {
            kv::Request::decode(&seed).expect("a request seed decodes");
        }
        for seed in kv_snapshot_seeds() {
            kv::Store::restore(kv::Config::default(), &seed).expect("a snapshot seed restores");
        }
        for seed in backup_file_seeds() {
            synod_server::backup::decode(&seed).expect("a backup seed decodes");
        }
        for seed in grpc_request_seeds() {
            assert!(!seed.is_empty());
        }
    }

    #[test]
    fn the_storage_seed_recovers_what_was_written() {
        let seed = storage_recovery_seeds().remove(0);
        storage_recovery(&seed);
        assert!(seed.len() > 100, "the seed holds the files written");
    }

    #[test]
    fn every_target_runs_its_seeds() {
        for target in TARGETS {
            for seed in (target.seeds)() {
                (target.run)(&seed);
            }
        }
    }
}
