//! synod-storage: the only crate that touches files.
//!
//! It persists what a Multi-Paxos acceptor must not forget and what the
//! replicated state machine needs to restart quickly:
//!
//! * [`Wal`]: a write-ahead log of checksummed [`Record`]s (accepted values
//!   and commit points) in rotating segments, one file each (format version
//!   2): frames from the start, and an identifier per frame from the
//!   segment's identifier base, a whole segment further on, so recovery tells
//!   a torn tail (discarded) from corruption (reported for repair from
//!   peers), as Protocol-Aware Recovery (CTRL) prescribes;
//! * [`AcceptorStore`]: a Paxos replica's `Persist` records (log and
//!   metadata), snapshots and restart state on one disk;
//! * [`GroupCommit`]: writer threads that own an [`AcceptorStore`] (the
//!   server) or a bare [`Wal`] (the `walbench` example): one `fdatasync` of
//!   the log and one of the identifier file per batch, pipelined, with
//!   completions in submission order;
//! * [`MetadataStore`]: the promised ballot and incarnation in two
//!   checksummed copies;
//! * [`SnapshotStore`]: Paxos Made Live snapshots in checksummed chunks, read
//!   chunk by chunk for transfer and installed from peers with resumption;
//! * [`Disk`]: the file abstraction, with [`FsDisk`] (real files) and
//!   [`SimDisk`] (in memory, deterministic, with fault injection).
//!
//! # Layout
//!
//! | module | what it holds |
//! |---|---|
//! | `acceptor` | [`AcceptorStore`]: the Paxos replica's `Persist` records and restart state on one disk; [`AcceptorStore::begin_snapshot`] |
//! | `disk` | [`Disk`], [`File`], [`FsDisk`] |
//! | `failpoint_disk` | [`FailpointDisk`]: a wrapper that loses unsynced writes on request ([`FailpointDisk::power_loss`]) or never syncs, for fault-testing real processes |
//! | `sim_disk` | [`SimDisk`], [`FaultConfig`], [`FaultCounts`] |
//! | `wal` | [`Wal`], [`Record`], [`Recovery`], [`WalConfig`]; the on-disk layout and write ordering |
//! | `wal::format` | segment names, headers, frames and identifiers, byte by byte |
//! | `wal::writer` | [`Wal::append`], [`Wal::sync`], rotation, [`Wal::trim`] |
//! | `wal::recovery` | [`Wal::open`]: reading, verifying and repairing segments |
//! | `group_commit` | [`GroupCommit`] over a [`CommitTarget`] ([`AcceptorStore`] or [`Wal`]): the writer and completion threads, one sync per batch |
//! | `metadata` | [`MetadataStore`], [`AcceptorMetadata`] |
//! | `snapshot` | [`SnapshotStore`], [`SnapshotWriter`], [`SnapshotReader`], [`SnapshotInstaller`] |
//! | `open` | [`open_replica`]: metadata, snapshots and log opened in order |
//! | `fatal` | [`fatal_sync_error`] |
//! | `fields` | bounded little-endian decoding, file headers |
//!
//! One replica's files live in one flat directory:
//!
//! ```text
//! acceptor-a.meta, acceptor-b.meta     metadata copies
//! wal-<segment>.log                   segments: frames, then identifiers
//! snapshot-<instance>.snap             the newest finished snapshot
//! snapshot-<instance>.tmp              a snapshot being written
//! snapshot-incoming.partial            a snapshot being received
//! LOCK                                 held by the process using it (FsDisk)
//! ```
//!
//! # Write ordering, and why it is crash-safe
//!
//! Each file kind has one rule, and recovery relies on nothing else.
//!
//! **Log.** A segment file holds frames from its start and identifiers from
//! its identifier base, a whole segment (and a largest frame) further on. A
//! batch is made durable as: (1) write its frames, (2) `fdatasync` the
//! segment, (3) write the frames' identifiers, (4) `fdatasync` the segment,
//! (5) report the batch durable. An identifier therefore reaches the disk
//! only after its frame is durable. [`GroupCommit`] writes batch `n`'s
//! identifiers (step 3) beside batch `n + 1`'s frames (step 1), so one
//! `fdatasync` is step 4 for batch `n` and step 2 for batch `n + 1`; the
//! rule holds per batch. [`Wal::sync`] (the simulator, through
//! [`AcceptorStore::sync`]) runs all five in sequence.
//!
//! Recovery reads each segment's identifiers and frames in order (frame `k`
//! belongs to identifier `k`):
//!
//! * whole frames after the last identifier of the last segment are kept and
//!   given identifiers: usually step 3 never finished for them, but a
//!   misdirected write may have destroyed the identifiers of a batch already
//!   reported durable, and keeping a written acceptance is always safe where
//!   dropping an acknowledged one is not; from the first frame there that fails
//!   its checksum on, the bytes are a **torn tail**, cut off silently
//!   ([`Recovery::torn_tail_bytes`]);
//! * an identifier whose frame is missing, fails its checksum or names a
//!   different record cannot come from a crash (step 2 finished before step 3
//!   began): **corruption**, listed in [`Recovery::corrupted`] with the
//!   instance and ballot from the identifier, and never truncated;
//! * a frame that fails its checksum with later identifiers or frames after
//!   it is corruption too (instance unknown if its identifier is also bad);
//! * a read error (EIO) counts as a checksum mismatch for the bytes that
//!   cannot be read ([`Recovery::unreadable_bytes`]), and a segment header
//!   that fails its checksum is counted ([`Recovery::damaged_headers`]) while
//!   the frames after it are still read: neither stops the replica, only a
//!   header that verifies but names another format does.
//!
//! Both regions of a segment are written with zeros ahead of the writes
//! ([`WalConfig::preallocate_bytes`]) so most syncs allocate no blocks and
//! change no file size; the zeros go only beyond what the region holds and
//! are written in the same batch, before the same sync. Recovery reads trailing zeros as space never
//! written (trailing all-zero identifier slots as absent), so preallocation
//! changes none of the rules above. A frame that verifies but whose
//! identifier is damaged gets its identifier rewritten by recovery, so that
//! the next recovery reaches the same verdict.
//!
//! A segment is rotated only after every identifier in it is synced, and a
//! new segment's two headers are synced before any frame goes into it, so
//! only the last segment can have a torn tail; a last segment whose headers
//! are incomplete and which holds no frames is a rotation that crashed, and
//! is replaced. Trimming removes whole segment files.
//!
//! **Metadata.** Each update writes the copy with the older sequence number,
//! syncs it, then writes and syncs the other, before it is reported: a torn
//! write damages only the copy being written while the other holds the
//! previous or the new value, and once reported both copies hold the new
//! value, so damage found later in one never rolls a promise back. Through a
//! [`GroupCommit`], a metadata update is written only once everything queued
//! before it is durable (frames and identifiers), and what is queued after it
//! is staged only once it returns: a crash leaves a prefix of what was
//! submitted.
//!
//! **Snapshots.** Written to a `.tmp` file (chunks, then the manifest),
//! synced, renamed to `.snap` (directory fsynced); older snapshots are removed
//! after the rename. An incoming transfer syncs after every chunk and is
//! renamed into place when complete. The log is trimmed only after that.
//!
//! **Syncs are never retried.** After a failed `fdatasync` the kernel may have
//! dropped the dirty pages and marked them clean, so a retry can succeed with
//! the data gone ([`SimDisk`] models exactly that). Every store stops for good
//! after a failed write or sync.
//!
//! # The simulator
//!
//! [`SimDisk`] keeps a durable and a current image of every file; `sync`
//! moves writes from one to the other and [`SimDisk::crash`] keeps only a
//! random prefix of the unsynced writes (tearing the first one dropped with
//! probability [`FaultConfig::torn_write_probability`]). Random faults come
//! from the rates in [`FaultConfig`] and the seed; targeted ones from
//! [`SimDisk::flip_bit`] and [`SimDisk::schedule_error`]:
//!
//! ```
//! use std::sync::Arc;
//! use synod_paxos::{Ballot, Instance, NodeId};
//! use synod_storage::*;
//!
//! let sim = SimDisk::new(42, FaultConfig::default());
//! let disk: Arc<dyn Disk> = Arc::new(sim.clone());
//! let (mut wal, _) = Wal::open(disk.clone(), WalConfig::default())?;
//! for instance in 1..=3 {
//!     wal.append(&Record::Accepted {
//!         instance: Instance(instance),
//!         ballot: Ballot::new(1, 0, NodeId(2)),
//!         value: bytes::Bytes::from_static(b"batch"),
//!     })?;
//! }
//! wal.sync()?;
//!
//! // Corrupt exactly instance 2's record on this replica, then restart it.
//! let location = wal.locate_accepted(Instance(2))?.expect("written");
//! sim.flip_bit(&location.file, location.offset + location.frame_bytes - 1, 0)?;
//! drop(wal);
//! sim.crash();
//! let (_, recovery) = Wal::open(disk, WalConfig::default())?;
//! assert_eq!(recovery.corrupted[0].instance, Some(Instance(2)));
//! assert_eq!(recovery.accepted.len(), 2);
//! assert_eq!(sim.fault_counts().stored_bit_flips, 1);
//! # Ok::<(), StorageError>(())
//! ```
//!
//! A [`StorageError::SyncFailed`] from a [`SimDisk`] (from any call,
//! [`Wal::open`] included, since recovery repairs files) should be handled by
//! the simulator as a crash of that replica: call [`SimDisk::crash`] and
//! restart it.
//!
//! Only [`SnapshotWriter::finish`] and [`SnapshotInstaller::install`] make a
//! [`FinishedSnapshot`], so the log cannot be trimmed for a snapshot that is
//! not durably installed:
//!
//! ```compile_fail
//! let forged = synod_storage::FinishedSnapshot { instance: synod_paxos::Instance(9) };
//! ```
//!
//! # Rules for the host
//!
//! * Persist before you send: a Ready's messages go out only after its
//!   records are durable: after its submission's completion reports `Ok`
//!   ([`GroupCommit`]), or after [`AcceptorStore::write`] and
//!   [`AcceptorStore::sync`] return (the simulator).
//! * A [`StorageError::SyncFailed`] is never retried: the server aborts
//!   ([`fatal_sync_error`]); the simulator treats it as a crash.
//! * Instances in [`Recovery::corrupted`] are faulty: repair them from peers
//!   before this replica serves them.
//! * The log is trimmed only with the [`FinishedSnapshot`] that
//!   [`SnapshotWriter::finish`] or [`SnapshotInstaller::install`] returns.
//!
//! # Starting a replica
//!
//! [`open_replica`] opens the metadata, the snapshots and the log in that
//! order (each is also usable on its own: [`MetadataStore::open`],
//! [`SnapshotStore::open`], [`Wal::open`]).
//!
//! ```
//! use std::sync::Arc;
//! use synod_paxos::{Ballot, Instance, NodeId};
//! use synod_storage::*;
//!
//! // A server uses FsDisk::open(directory); the simulator a SimDisk.
//! let disk: Arc<dyn Disk> = Arc::new(SimDisk::new(7, FaultConfig::default()));
//! let storage = open_replica(disk.clone(), &StorageConfig::default())?;
//! let ReplicaStorage { mut metadata, metadata_load, snapshots, snapshot, wal, recovery, .. } =
//!     storage;
//!
//! // 1. Bump the incarnation before proposing anything.
//! let incarnation = metadata_load.metadata.incarnation + 1;
//! metadata.write(&AcceptorMetadata { incarnation, ..metadata_load.metadata })?;
//!
//! // 2. Restore the state machine from the snapshot (every chunk verified),
//! //    then re-apply committed instances above it from recovery.accepted.
//! if snapshot.is_some() {
//!     let (_instance, _state) = snapshots.load_latest()?.expect("listed");
//! }
//! for damaged in &recovery.corrupted {
//!     // Repair damaged.instance from peers before serving it.
//!     let _ = damaged;
//! }
//!
//! // 3. A bare log can be appended to through the group-commit writer
//! //    threads (the walbench example does); the server hands them its whole
//! //    AcceptorStore instead (next section).
//! let log = GroupCommit::start(wal, GroupCommitConfig::default())?;
//! let (sender, receiver) = std::sync::mpsc::channel();
//! let accepted = Record::Accepted {
//!     instance: Instance(1),
//!     ballot: Ballot::new(1, incarnation, NodeId(1)),
//!     value: bytes::Bytes::from_static(b"put x 1"),
//! };
//! // From async code, send on a tokio oneshot here instead.
//! let completion: Completion = Box::new(move |outcome| {
//!     let _ = sender.send(outcome);
//! });
//! if let Err(rejected) = log.try_submit(accepted, completion) {
//!     // Queue full: the record comes back; retry later or shed load.
//!     let _ = rejected.submission;
//! }
//! receiver.recv().expect("completed")?; // durable: now send the accept reply
//!
//! // 4. Snapshots are written off the hot path, then trim the log.
//! let mut writer = snapshots.begin(Instance(1))?;
//! writer.write(b"x=1")?;
//! let finished = writer.finish()?;
//! log.trim(finished, Box::new(|removed| drop(removed)))?;
//! let (_wal, _stats) = log.stop();
//! # Ok::<(), StorageError>(())
//! ```
//!
//! # The server's write path
//!
//! The server opens an [`AcceptorStore`] and hands it to a [`GroupCommit`]:
//! each submission is one Ready's `Persist` records with one completion.
//! Snapshots are written from a clone of the store's [`SnapshotStore`] on any
//! thread ([`AcceptorStore::begin_snapshot`]); the [`FinishedSnapshot`] then trims the log on
//! the writer thread.
//!
//! ```
//! use std::sync::Arc;
//! use synod_paxos::{Ballot, Epoch, Instance, Meta, NodeId, Persist, Voting};
//! use synod_storage::*;
//!
//! let disk: Arc<dyn Disk> = Arc::new(SimDisk::new(8, FaultConfig::default()));
//! let (store, recovered) = AcceptorStore::open(disk, &AcceptorStoreConfig::default())?;
//! assert!(recovered.durable.is_none());
//! let snapshots = store.snapshots().clone();
//! let writer = GroupCommit::start(store, GroupCommitConfig::default())?;
//!
//! // One Ready's records, one completion: the metadata is synced in queue
//! // order, the commit point rides in the next log batch.
//! let ready = vec![
//!     Persist::Meta(Meta { promised: Ballot::new(1, 1, NodeId(1)), incarnation: 1, voting: Voting::Voter }),
//!     Persist::ChosenThrough { through: Instance(0) },
//! ];
//! let (sender, receiver) = std::sync::mpsc::channel();
//! // From async code, send on a tokio oneshot here instead.
//! let completion: Completion = Box::new(move |outcome| {
//!     let _ = sender.send(outcome);
//! });
//! if let Err(rejected) = writer.try_submit(ready, completion) {
//!     // Queue full (RejectReason::QueueFull) or stopped: the records come back.
//!     let _ = rejected.submission;
//! }
//! receiver.recv().expect("completed")?; // durable: now send the Ready's messages
//!
//! let mut snapshot = AcceptorStore::begin_snapshot(&snapshots, Instance(0), Epoch::default())?;
//! snapshot.write(b"state")?; // off the hot path, while the log goes on
//! let finished = snapshot.finish()?;
//! writer.trim(finished, Box::new(|removed| drop(removed)))?;
//! let (_store, _stats) = writer.stop();
//! # Ok::<(), StorageError>(())
//! ```
//!
//! # Limits
//!
//! * If the identifiers of the last batch before a crash are lost without a
//!   trace (a misdirected write that left no damage behind), the batch looks
//!   like a torn tail and is discarded; every other damage the tests inject
//!   is reported or repaired.
//! * Recovery holds every live segment in memory (values are slices of
//!   them): trim the log with snapshots to bound it.
//! * One process per directory: [`FsDisk::open`] locks the directory's
//!   `LOCK` file, and a second process fails to open it.
//!
//! # Transferring a snapshot
//!
//! The sender opens [`SnapshotStore::latest`] and sends its
//! [`SnapshotManifest`] and then [`SnapshotReader::chunk`]s (each carries its
//! CRC32C). The receiver calls [`SnapshotStore::installer`] (which resumes a
//! transfer an earlier run left), [`SnapshotInstaller::begin`] with the
//! manifest (a different manifest, e.g. a newer snapshot from another peer,
//! restarts the transfer), [`SnapshotInstaller::accept`] for each chunk it is
//! told it needs, and [`SnapshotInstaller::install`] when the step is
//! [`InstallStep::Complete`]; the [`FinishedSnapshot`] it returns trims the
//! log.

#![deny(missing_debug_implementations)]
#![deny(missing_docs)]

mod acceptor;
mod disk;
mod error;
mod failpoint_disk;
mod fatal;
mod fields;
mod group_commit;
mod metadata;
mod open;
mod sim_disk;
mod snapshot;
mod wal;

pub use acceptor::{AcceptorStore, AcceptorStoreConfig, Recovered};
pub use disk::{Disk, File, FsDisk, FsFile};
pub use error::{Result, StorageError};
pub use failpoint_disk::{FailpointDisk, FailpointOptions, PowerLossReport, UNDO_BYTES_MAX_DEFAULT};
pub use fatal::fatal_sync_error;
pub use group_commit::{
    CommitTarget, Completion, GroupCommit, GroupCommitConfig, GroupCommitCounters, GroupCommitStats, RejectReason,
    Rejected, SyncFailurePolicy, TrimCompletion, WriteOp,
};
pub use metadata::{AcceptorMetadata, MetadataLoad, MetadataStore, METADATA_FILES};
pub use open::{open_replica, ReplicaStorage, StorageConfig};
pub use sim_disk::{FaultConfig, FaultCounts, Operation, SimDisk, SimFile, SimRng};
pub use snapshot::{
    FinishedSnapshot, InstallStep, SnapshotChunk, SnapshotInstaller, SnapshotManifest, SnapshotReader, SnapshotStore,
    SnapshotWriter, CHUNK_BYTES_MAX,
};
pub use wal::{
    AcceptedIter, AcceptedValue, AcceptedValues, CorruptEntry, Record, RecordKind, RecordLocation, Recovery, Wal,
    WalConfig, IDENTIFIER_BYTES,
};
