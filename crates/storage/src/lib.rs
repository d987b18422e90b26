//! synod-storage: the only crate that touches files.
//!
//! It persists what a Multi-Paxos acceptor must not forget and what the
//! replicated state machine needs to restart quickly:
//!
//! * [`Wal`]: a write-ahead log of checksummed [`Record`]s (accepted values
//!   and commit points) in rotating segments, each with a separate identifier
//!   file so recovery tells a torn tail (discarded) from corruption (reported
//!   for repair from peers), as Protocol-Aware Recovery (CTRL) prescribes;
//! * [`GroupCommit`]: the server's writer thread, one `fdatasync` per batch;
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
//! | `disk` | [`Disk`], [`File`], [`FsDisk`] |
//! | `sim_disk` | [`SimDisk`], [`FaultConfig`], [`FaultCounts`] |
//! | `wal` | [`Wal`], [`Record`], [`Recovery`]; the log's write ordering |
//! | `group_commit` | [`GroupCommit`], the writer thread |
//! | `metadata` | [`MetadataStore`], [`AcceptorMetadata`] |
//! | `snapshot` | [`SnapshotStore`], [`SnapshotWriter`], [`SnapshotReader`], [`SnapshotInstaller`] |
//! | `fatal` | [`fatal_sync_error`] |
//! | `codec` | bounded little-endian decoding, file headers |
//!
//! One replica's files live in one flat directory:
//!
//! ```text
//! acceptor-a.meta, acceptor-b.meta     metadata copies
//! wal-<segment>.log, wal-<segment>.ids segments and their identifiers
//! snapshot-<instance>.snap             the newest finished snapshot
//! snapshot-<instance>.tmp              a snapshot being written
//! snapshot-incoming.partial            a snapshot being received
//! ```
//!
//! # Rules for the host
//!
//! * Persist before you send: an accept reply goes out only after the
//!   `Accepted` record's completion reports `Ok`; a promise only after
//!   [`MetadataStore::write`] returns.
//! * A [`StorageError::SyncFailed`] is never retried: the server aborts
//!   ([`fatal_sync_error`]); the simulator treats it as a crash.
//! * Instances in [`Recovery::corrupted`] are faulty: repair them from peers
//!   before this replica serves them.
//! * The log is trimmed only with the [`FinishedSnapshot`] that
//!   [`SnapshotWriter::finish`] or [`SnapshotInstaller::install`] returns.
//!
//! # Starting a replica
//!
//! ```
//! use std::sync::Arc;
//! use synod_paxos::{Ballot, Instance, NodeId};
//! use synod_storage::*;
//!
//! let disk: Arc<dyn Disk> = Arc::new(SimDisk::new(7, FaultConfig::default()));
//! let has_state = disk.list()?.iter().any(|name| name.starts_with("wal-"));
//! let (mut metadata, load) = MetadataStore::open(disk.clone(), has_state)?;
//! let incarnation = load.metadata.incarnation + 1;
//! metadata.write(&AcceptorMetadata { incarnation, ..load.metadata })?;
//!
//! let (mut wal, recovery) = Wal::open(disk.clone(), WalConfig::default())?;
//! assert!(recovery.corrupted.is_empty());
//! wal.append(&Record::Accepted {
//!     instance: Instance(1),
//!     ballot: Ballot::new(1, incarnation, NodeId(1)),
//!     value: bytes::Bytes::from_static(b"put x 1"),
//! })?;
//! wal.append(&Record::Committed { through: Instance(1) })?;
//! wal.sync()?;
//!
//! let snapshots = SnapshotStore::open(disk.clone(), 1 << 20)?;
//! let mut writer = snapshots.begin(Instance(1))?;
//! writer.write(b"x=1")?;
//! let finished = writer.finish()?;
//! wal.trim(&finished)?;
//! # Ok::<(), StorageError>(())
//! ```

#![deny(missing_debug_implementations)]

mod codec;
mod disk;
mod error;
mod fatal;
mod group_commit;
mod metadata;
mod sim_disk;
mod snapshot;
mod wal;

pub use disk::{Disk, File, FsDisk, FsFile};
pub use error::{Result, StorageError};
pub use fatal::fatal_sync_error;
pub use group_commit::{
    Completion, GroupCommit, GroupCommitConfig, GroupCommitStats, RejectReason, Rejected,
    SyncFailurePolicy, TrimCompletion,
};
pub use metadata::{AcceptorMetadata, MetadataLoad, MetadataStore, METADATA_FILES};
pub use sim_disk::{FaultConfig, FaultCounts, Operation, SimDisk, SimFile, SimRng};
pub use snapshot::{
    FinishedSnapshot, InstallStep, SnapshotChunk, SnapshotInstaller, SnapshotManifest,
    SnapshotReader, SnapshotStore, SnapshotWriter, CHUNK_BYTES_MAX,
};
pub use wal::{
    AcceptedValue, CorruptEntry, Record, RecordKind, RecordLocation, Recovery, Wal, WalConfig,
    IDENTIFIER_BYTES,
};
