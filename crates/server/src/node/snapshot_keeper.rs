//! The core task's snapshots, kept off its hot path.
//!
//! Paxos Made Live (section 5.5) lets the log be trimmed once the state
//! machine has a durable snapshot of everything up to some instance: the
//! application hands the framework a *snapshot handle*, and the framework
//! drops the log below it. A replica too far behind to learn from its peers'
//! logs *catches up* by installing a peer's snapshot instead. The
//! [`SnapshotKeeper`] holds everything the core task needs for both, in three
//! flows that never run whole-store work on the core task:
//!
//! 1. **Our own snapshot** ([`SnapshotKeeper::take_if_due`],
//!    [`SnapshotKeeper::poll_own`]). Every `snapshot_interval_instances`
//!    applied instances, once everything chosen is applied, the store is
//!    frozen under its lock (cheap: a copy of the key index's chunk
//!    directory) and a blocking-pool thread streams the frozen copy into a
//!    snapshot writer while commits go on. Its [`FinishedSnapshot`] (the
//!    handle) then goes to the group commit's writer, which trims the log
//!    file below it in order with its writes; once that is done the replica
//!    trims its in-memory log too. One snapshot at a time; a failure leaves
//!    both logs as they were.
//! 2. **Serving a lagging peer** ([`SnapshotKeeper::serve`],
//!    [`SnapshotKeeper::poll_serving`]). A peer asks for one chunk at a
//!    time. The keeper serializes a frozen copy on a blocking-pool thread
//!    (requests that come meanwhile wait, the latest per peer), keeps the
//!    serialized bytes while peers keep asking, and drops them after
//!    [`SERVED_SNAPSHOT_IDLE`] without a request.
//! 3. **Pulling a peer's snapshot** ([`SnapshotKeeper::request`],
//!    [`SnapshotKeeper::accept_chunk`], [`SnapshotKeeper::install`]). When the
//!    replica reports it is behind every peer's log, the keeper asks the named
//!    peer for chunk 0 (or the next chunk of a transfer that stalled), at most
//!    once per [`SNAPSHOT_REQUEST_RETRY`]; each verified chunk asks for the
//!    next. The core makes its earlier Readies durable, then the keeper
//!    restores and writes the whole snapshot on a blocking-pool thread, trims
//!    the log below it, and only then swaps it in for the store.
//!
//! The keeper owns no part of the core beyond its snapshots: each call
//! borrows the replica, the shared state, the peers or the disk writer it
//! needs.

use std::collections::HashMap;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use bytes::Bytes;
use synod_kv::Store;
use synod_paxos::{Epoch, Instance, NodeId, Replica};
use synod_storage::{AcceptorStore, FinishedSnapshot, SnapshotStore, StorageError};
use tokio::sync::{oneshot, watch};

use super::{kv_config, lock, HubEntry, Shared, Status};
use crate::disk_writer::{DiskError, DiskWriter};
use crate::frame::HEADER_BYTES;
use crate::peer::{Payload, PeerSender, SNAPSHOT_CHUNK_HEADER_BYTES};
use crate::snapshot_transfer::{
    Assembly, ServedSnapshot, SnapshotAssembler, SnapshotChunk, SNAPSHOT_CHUNK_BYTES_MAX, SNAPSHOT_TRANSFER_BYTES_MAX,
};

/// A snapshot request (for any chunk) to a peer that brought nothing is
/// repeated after this long.
const SNAPSHOT_REQUEST_RETRY: Duration = Duration::from_secs(2);
/// A snapshot served to lagging peers is dropped after no chunk of it was
/// asked for this long, so an idle member does not hold a copy of its store.
const SERVED_SNAPSHOT_IDLE: Duration = Duration::from_secs(30);

/// The core task's snapshot state: its own snapshot on the way to disk, the
/// one it serves to lagging peers, and a peer's it is pulling.
pub(super) struct SnapshotKeeper {
    /// The snapshot files: snapshots are written through a clone of them on
    /// blocking-pool threads, never on the core task or the group commit's writer.
    files: SnapshotStore,
    /// The instance the newest durable snapshot covers. Never goes down, and
    /// never passes the applied instance.
    durable_instance: u64,
    /// This member's snapshot on its way to disk (one at a time).
    own: Option<OwnSnapshot>,
    /// When this member last asked a peer for a snapshot chunk.
    requested_at: Option<Instant>,
    /// The peer asked, while a transfer is wanted: chunks from anyone else,
    /// or when none was asked for, are ignored, so a peer cannot replace
    /// this member's store unbidden.
    asked_of: Option<NodeId>,
    /// The instance the peers' logs start after, as last named by the core:
    /// a snapshot must cover at least this.
    wanted: Instance,
    /// A peer's snapshot being pulled chunk by chunk.
    assembler: SnapshotAssembler,
    /// The serialized snapshot served to lagging peers, and when a chunk of
    /// it was last asked for.
    served: Option<(ServedSnapshot, Instant)>,
    /// A snapshot for lagging peers being serialized (one at a time).
    serializing: Option<Serializing>,
}

/// This member's snapshot on its way to disk.
enum OwnSnapshot {
    /// A blocking-pool thread streams a frozen copy of the store into the
    /// snapshot writer.
    Writing {
        instance: Instance,
        started: Instant,
        done: oneshot::Receiver<Result<FinishedSnapshot, StorageError>>,
    },
    /// Durable; the group commit's queue was full, so its trim is queued again.
    Written(FinishedSnapshot),
    /// The group commit's writer trims the log below the snapshot at `instance`.
    Trimming {
        instance: Instance,
        done: oneshot::Receiver<Result<Instance, DiskError>>,
    },
}

/// A snapshot for lagging peers being serialized on a blocking-pool thread.
struct Serializing {
    instance: Instance,
    epoch: Epoch,
    done: oneshot::Receiver<Vec<u8>>,
    /// Chunk requests that came meanwhile, the latest per peer: answered when
    /// it is ready.
    waiting: HashMap<NodeId, (Instance, u32)>,
}

/// A peer's snapshot, every chunk of it arrived and verified.
pub(super) struct PeerSnapshot {
    /// The instance the snapshot covers.
    pub(super) instance: Instance,
    /// The epoch of the last value applied in it.
    pub(super) epoch: Epoch,
    /// The state machine's serialized bytes.
    pub(super) state: Bytes,
}

impl SnapshotKeeper {
    /// A keeper over `files`, whose newest durable snapshot covers
    /// `durable_instance` (the store was restored from it).
    pub(super) fn new(files: SnapshotStore, durable_instance: u64) -> SnapshotKeeper {
        SnapshotKeeper {
            files,
            durable_instance,
            own: None,
            requested_at: None,
            asked_of: None,
            wanted: Instance(0),
            assembler: SnapshotAssembler::new(SNAPSHOT_TRANSFER_BYTES_MAX),
            served: None,
            serializing: None,
        }
    }

    // ----- Our own snapshot -----

    /// Every `snapshot_interval_instances` applied instances the store is
    /// frozen (cheap, under its lock) and a blocking-pool thread streams the
    /// frozen copy into a snapshot while commits go on (see
    /// [`SnapshotKeeper::poll_own`] for the rest).
    pub(super) fn take_if_due(&mut self, shared: &Shared, replica: &Replica, status: &watch::Sender<Status>) {
        if self.own.is_some() {
            return;
        }
        let interval = shared.tunables.snapshot_interval_instances;
        let applied = status.borrow().applied_instance;
        assert!(
            self.durable_instance <= applied,
            "a durable snapshot covers an instance not applied"
        );
        if interval == 0 || applied < self.durable_instance + interval || applied != replica.chosen_through().0 {
            return;
        }
        let frozen = shared.store().freeze();
        let instance = Instance(applied);
        let epoch = replica.applied_epoch();
        let snapshots = self.files.clone();
        let (done, wait) = oneshot::channel();
        tokio::task::spawn_blocking(move || {
            let written = AcceptorStore::write_snapshot(&snapshots, instance, epoch, |writer| {
                frozen.write_snapshot(|piece| writer.write(piece))
            });
            let _ = done.send(written);
        });
        self.own = Some(OwnSnapshot::Writing {
            instance,
            started: Instant::now(),
            done: wait,
        });
    }

    /// Moves this member's snapshot along: once it is durable the group commit's writer
    /// trims the log below it, and then so does the replica. A snapshot that
    /// fails leaves both logs as they were.
    pub(super) fn poll_own(&mut self, disk: &DiskWriter, replica: &mut Replica) {
        loop {
            let next = match &mut self.own {
                None => return,
                Some(OwnSnapshot::Writing {
                    instance,
                    started,
                    done,
                }) => match done.try_recv() {
                    Err(oneshot::error::TryRecvError::Empty) => return,
                    Ok(Ok(finished)) => {
                        tracing::info!(
                            %instance,
                            elapsed_ms = started.elapsed().as_millis() as u64,
                            "snapshot written"
                        );
                        Some(OwnSnapshot::Written(finished))
                    }
                    Ok(Err(error)) => {
                        tracing::warn!(%error, %instance, "snapshot failed; the log is kept");
                        None
                    }
                    Err(oneshot::error::TryRecvError::Closed) => {
                        tracing::warn!(%instance, "the snapshot writer stopped; the log is kept");
                        None
                    }
                },
                Some(OwnSnapshot::Written(finished)) => match disk.trim(*finished) {
                    // The group commit's queue is full: again next round.
                    None => return,
                    Some(trimming) => Some(OwnSnapshot::Trimming {
                        instance: finished.instance(),
                        done: trimming,
                    }),
                },
                Some(OwnSnapshot::Trimming {
                    instance: written,
                    done,
                }) => {
                    match done.try_recv() {
                        Err(oneshot::error::TryRecvError::Empty) => return,
                        Ok(Ok(instance)) => {
                            assert_eq!(instance, *written, "the log was trimmed below another snapshot");
                            // A peer's newer snapshot may have been installed meanwhile.
                            if instance <= replica.chosen_through() {
                                replica.trim(instance);
                            }
                            self.durable_instance = self.durable_instance.max(instance.0);
                            tracing::info!(%instance, "snapshot durable; log trimmed below it");
                        }
                        // The group commit's writer logged why.
                        Ok(Err(_)) | Err(oneshot::error::TryRecvError::Closed) => {}
                    }
                    None
                }
            };
            self.own = next;
        }
    }

    // ----- Serving a lagging peer -----

    /// A lagging peer asked for one chunk of a snapshot. The serialized store
    /// is kept between requests so each chunk does not serialize it again; it
    /// is replaced only when it no longer covers what the peer needs. A new
    /// one is serialized from a frozen copy on a blocking-pool thread; the
    /// requests that come meanwhile are answered when it is ready.
    #[expect(
        clippy::too_many_arguments,
        reason = "the request, and the parts of the core it reads"
    )]
    pub(super) fn serve(
        &mut self,
        to: NodeId,
        instance: Instance,
        chunk_index: u32,
        shared: &Shared,
        replica: &Replica,
        peers: &PeerSender,
        status: &watch::Sender<Status>,
    ) {
        if let Some((served, asked_at)) = &mut self.served {
            if served.instance >= instance {
                *asked_at = Instant::now();
                // A peer asking for a later chunk of an older snapshot gets this
                // snapshot's chunk; it sees the instance differ and starts over.
                if let Some(chunk) = served.chunk(chunk_index) {
                    peers.send_payload(to, Payload::encode_snapshot_chunk(&chunk));
                }
                return;
            }
        }
        if let Some(serializing) = &mut self.serializing {
            serializing.waiting.insert(to, (instance, chunk_index));
            return;
        }
        let applied = status.borrow().applied_instance;
        if applied < instance.0 || applied != replica.chosen_through().0 {
            return;
        }
        self.served = None;
        let frozen = shared.store().freeze();
        let (done, wait) = oneshot::channel();
        tokio::task::spawn_blocking(move || {
            let _ = done.send(frozen.snapshot());
        });
        tracing::info!(peer = %to, instance = applied, "serializing a snapshot for a lagging peer");
        self.serializing = Some(Serializing {
            instance: Instance(applied),
            epoch: replica.applied_epoch(),
            done: wait,
            waiting: HashMap::from([(to, (instance, chunk_index))]),
        });
    }

    /// Serves the snapshot for lagging peers once it is serialized, answering
    /// the requests that waited for it; drops the served one once idle.
    pub(super) fn poll_serving(
        &mut self,
        shared: &Shared,
        replica: &Replica,
        peers: &PeerSender,
        status: &watch::Sender<Status>,
    ) {
        if self
            .served
            .as_ref()
            .is_some_and(|(_, asked_at)| asked_at.elapsed() >= SERVED_SNAPSHOT_IDLE)
        {
            self.served = None;
        }
        let Some(serializing) = &mut self.serializing else {
            return;
        };
        let state = match serializing.done.try_recv() {
            Err(oneshot::error::TryRecvError::Empty) => return,
            Ok(state) => state,
            Err(oneshot::error::TryRecvError::Closed) => {
                // The peers ask again.
                tracing::warn!(instance = %serializing.instance, "serializing a snapshot for peers failed");
                self.serializing = None;
                return;
            }
        };
        let Some(serializing) = self.serializing.take() else {
            return;
        };
        let frame_room =
            (shared.tunables.frame_bytes_max as usize).saturating_sub(HEADER_BYTES + 1 + SNAPSHOT_CHUNK_HEADER_BYTES);
        let chunk_bytes = SNAPSHOT_CHUNK_BYTES_MAX.min(frame_room);
        let served = ServedSnapshot::new(serializing.instance, serializing.epoch, Bytes::from(state), chunk_bytes);
        tracing::info!(
            instance = %served.instance,
            snapshot_bytes = served.state.len(),
            chunk_count = served.chunk_count(),
            "serving a snapshot to lagging peers"
        );
        self.served = Some((served, Instant::now()));
        for (peer, (instance, chunk_index)) in serializing.waiting {
            self.serve(peer, instance, chunk_index, shared, replica, peers, status);
        }
    }

    // ----- Pulling a peer's snapshot -----

    /// The replica is behind every peer's log (its Ready named `peer` and
    /// the `instance` a snapshot must cover): asks `peer` for a snapshot
    /// chunk, unless a request went out less than [`SNAPSHOT_REQUEST_RETRY`]
    /// ago.
    pub(super) fn request(&mut self, peer: NodeId, instance: Instance, peers: &PeerSender) {
        let due = self
            .requested_at
            .is_none_or(|at| at.elapsed() >= SNAPSHOT_REQUEST_RETRY);
        if due {
            self.requested_at = Some(Instant::now());
            self.asked_of = Some(peer);
            self.wanted = instance;
            // A transfer that stalled resumes at its next chunk, from
            // whichever peer the core names now; if that peer serves
            // another snapshot, the assembler starts over.
            let (request_instance, chunk_index) = match self.assembler.in_progress() {
                Some((assembling, next_index)) if assembling >= instance => (assembling, next_index),
                _ => {
                    self.assembler.reset();
                    (instance, 0)
                }
            };
            tracing::info!(%peer, %instance, chunk_index, "behind every peer's log; asking for a snapshot");
            peers.send_payload(peer, Payload::encode_snapshot_request(request_instance, chunk_index));
        }
    }

    /// A chunk of a peer's snapshot: verified and kept, then the next chunk is
    /// asked of the same peer. The last one hands back the whole snapshot,
    /// for the core to [`install`](SnapshotKeeper::install) once its earlier
    /// Readies are durable.
    pub(super) fn accept_chunk(
        &mut self,
        from: NodeId,
        chunk: SnapshotChunk,
        peers: &PeerSender,
        status: &watch::Sender<Status>,
    ) -> Option<PeerSnapshot> {
        if !self.solicited(from, &chunk) {
            tracing::warn!(peer = %from, instance = %chunk.instance, "ignoring a snapshot chunk this member did not ask that peer for");
            return None;
        }
        let applied = status.borrow().applied_instance;
        if chunk.instance.0 <= applied {
            self.assembler.reset();
            self.asked_of = None;
            return None;
        }
        match self.assembler.accept(chunk) {
            Assembly::Next { instance, chunk_index } => {
                self.requested_at = Some(Instant::now());
                peers.send_payload(from, Payload::encode_snapshot_request(instance, chunk_index));
            }
            Assembly::Complete { instance, epoch, state } => {
                return Some(PeerSnapshot { instance, epoch, state });
            }
            Assembly::Restart(error) => {
                tracing::warn!(peer = %from, %error, "snapshot transfer restarts");
                self.requested_at = Some(Instant::now());
                let wanted = self.wanted.max(Instance(applied + 1));
                peers.send_payload(from, Payload::encode_snapshot_request(wanted, 0));
            }
            Assembly::Ignored => {}
        }
        None
    }

    /// Whether `chunk` belongs to a transfer this member asked `from` for: a
    /// peer was asked, it is that peer, and the snapshot covers what was wanted.
    fn solicited(&self, from: NodeId, chunk: &SnapshotChunk) -> bool {
        self.asked_of == Some(from) && chunk.instance >= self.wanted
    }

    /// A snapshot from a peer: made durable first, then it replaces the store
    /// and the replica skips to it. Restoring it and writing it cost time in
    /// proportion to its size: a blocking-pool thread does both while the
    /// core task waits. Returns whether it was installed (a damaged snapshot,
    /// or one this member has passed meanwhile, is not).
    pub(super) async fn install(
        &mut self,
        from: NodeId,
        snapshot: PeerSnapshot,
        shared: &Shared,
        replica: &mut Replica,
        disk: &DiskWriter,
        status: &watch::Sender<Status>,
    ) -> bool {
        let PeerSnapshot { instance, epoch, state } = snapshot;
        let applied = status.borrow().applied_instance;
        if instance.0 <= applied {
            return false;
        }
        let snapshots = self.files.clone();
        let prepared = tokio::task::spawn_blocking(move || {
            let restored =
                Store::restore(kv_config(), &state).map_err(|error| format!("refusing a damaged snapshot: {error}"))?;
            let finished = AcceptorStore::write_snapshot(&snapshots, instance, epoch, |writer| writer.write(&state))
                .map_err(|error| format!("cannot store a peer's snapshot: {error}"))?;
            Ok::<_, String>((restored, finished))
        })
        .await;
        let (restored, finished) = match prepared {
            Ok(Ok(prepared)) => prepared,
            Ok(Err(error)) => {
                tracing::warn!(peer = %from, %instance, %error, "a peer's snapshot is not installed");
                return false;
            }
            Err(error) => {
                tracing::warn!(peer = %from, %instance, %error, "installing a peer's snapshot failed");
                return false;
            }
        };
        // The snapshot is durable: it may replace the store. The log below it
        // goes once the group commit's writer gets to it (a failure there is logged and
        // leaves the log as it was).
        if let Some(trimmed) = disk.trim(finished) {
            let _ = trimmed.await;
        }
        let replaced = shared.replace_store(restored, instance.0, status);
        // Freeing a whole store takes time too.
        tokio::task::spawn_blocking(move || drop(replaced));
        // Watchers did not see the revisions inside the snapshot: they replay
        // them from the new store's history, or are cancelled as compacted.
        let hubs: Vec<HubEntry> = lock(&shared.hubs).values().cloned().collect();
        for entry in &hubs {
            lock(&entry.hub).resync_all();
            entry.notify.notify_one();
        }
        shared.metrics.applied_instance.store(instance.0, Ordering::Relaxed);
        replica.install_snapshot(instance, epoch);
        // Above the applied instance, which no durable snapshot passes.
        assert!(
            instance.0 > self.durable_instance,
            "the durable snapshot instance goes down"
        );
        self.durable_instance = instance.0;
        self.requested_at = None;
        self.asked_of = None;
        self.assembler.reset();
        true
    }
}

#[cfg(test)]
mod tests {
    use synod_kv::{PutRequest, Request};
    use synod_paxos::{Ballot, Meta, Persist, Voting};

    use super::*;

    fn put(store: &mut Store, key: u32, value: &str) {
        let request = Request::Put(PutRequest {
            key: format!("key-{key:05}").into_bytes(),
            value: value.as_bytes().to_vec(),
            ..PutRequest::default()
        });
        assert!(store.apply(&request).result.is_ok());
    }

    #[test]
    fn only_chunks_of_a_transfer_asked_for_are_taken() {
        let path = std::env::temp_dir().join(format!("synod-node-unsolicited-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&path);
        let (acceptor, _) = crate::disk_writer::open(&path, 1 << 20).unwrap();
        let mut keeper = SnapshotKeeper::new(acceptor.snapshots().clone(), 0);
        let served = ServedSnapshot::new(
            Instance(9),
            Epoch(Ballot::new(1, 1, NodeId(2))),
            Bytes::from_static(b"state"),
            64,
        );
        let chunk = served.chunk(0).expect("a chunk");
        assert!(!keeper.solicited(NodeId(2), &chunk), "nothing was asked for");
        keeper.asked_of = Some(NodeId(2));
        keeper.wanted = Instance(9);
        assert!(!keeper.solicited(NodeId(3), &chunk), "another peer was asked");
        assert!(keeper.solicited(NodeId(2), &chunk));
        keeper.wanted = Instance(10);
        assert!(!keeper.solicited(NodeId(2), &chunk), "it covers less than wanted");
        let _ = std::fs::remove_dir_all(&path);
    }

    /// The path `take_if_due` and `poll_own` take, without the core:
    /// the live store keeps changing while a blocking-pool thread writes the
    /// frozen copy, and what is on disk is the store as it was when frozen.
    #[tokio::test]
    async fn a_snapshot_is_written_from_a_frozen_copy_while_the_store_moves_on() {
        let path = std::env::temp_dir().join(format!("synod-node-snapshot-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&path);
        let (acceptor, _) = crate::disk_writer::open(&path, 1 << 20).unwrap();
        let snapshots = acceptor.snapshots().clone();
        let disk = DiskWriter::start(acceptor).unwrap();
        let ballot = Ballot::new(1, 1, NodeId(1));
        disk.persist(vec![Persist::Meta(Meta {
            promised: ballot,
            incarnation: 1,
            voting: Voting::Voter,
        })])
        .await
        .unwrap();

        let mut store = Store::new(kv_config());
        for key in 0..5_000 {
            put(&mut store, key, "before");
        }
        let frozen = store.freeze();
        let expected = store.snapshot();
        let instance = Instance(store.applied_index());
        let epoch = Epoch(ballot);
        let writing = tokio::task::spawn_blocking(move || {
            AcceptorStore::write_snapshot(&snapshots, instance, epoch, |writer| {
                frozen.write_snapshot(|piece| writer.write(piece))
            })
        });
        for key in 0..5_000 {
            put(&mut store, key, "after");
        }
        let finished = writing.await.unwrap().unwrap();
        assert_eq!(finished.instance(), instance);
        assert_eq!(disk.trim(finished).unwrap().await.unwrap().unwrap(), instance);

        drop(disk);
        let opened = crate::disk_writer::tests::reopen(&path);
        assert_eq!(opened.durable.unwrap().snapshot_instance, instance);
        assert!(opened.snapshot_state.as_deref() == Some(&expected[..]));
        assert_ne!(store.snapshot(), expected);
        let _ = std::fs::remove_dir_all(&path);
    }
}
