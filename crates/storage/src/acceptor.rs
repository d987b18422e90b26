//! The Paxos replica's durable state on one disk: what `synod_paxos::Persist`
//! records become, and the `DurableState` a restart reads back.
//!
//! - `Persist::Meta` goes to the two metadata copies, both synced before the
//!   write returns (through a [`crate::GroupCommit`], once everything queued
//!   before it is durable).
//! - `Persist::Accepted` is a log record at its ballot.
//! - `Persist::Chosen` (a value learned from a peer) is a log record at the zero
//!   ballot, which no proposer ever issues (node ids start at 1): recovery turns
//!   it back into a chosen slot.
//! - `Persist::ChosenThrough` is a commit-point record.
//!
//! The simulator stages records with [`AcceptorStore::write`] and makes them
//! durable with [`AcceptorStore::sync`]; the server hands the store to a
//! [`crate::GroupCommit`], whose writer threads do the same for every Ready
//! queued meanwhile (a submission is one Ready's records). Either way the host
//! sends a Ready's messages only once its records are durable. Snapshots carry
//! the epoch applied by their instance in front of the state machine's bytes.
//! [`AcceptorStore::begin_snapshot`] starts one with that header written, on
//! any thread; the log is trimmed only when the finished snapshot is handed to
//! [`AcceptorStore::trim`] (or to a trim through the group commit).

use std::sync::Arc;

use bytes::Bytes;
use synod_paxos::{
    decode_batch, encode_batch, Ballot, DurableState, Epoch, Instance, Meta, NodeId, Persist, StoredSlot, Voting,
};

use crate::disk::Disk;
use crate::error::{Result, StorageError};
use crate::group_commit::{sealed, CommitTarget, WriteOp};
use crate::metadata::{AcceptorMetadata, MetadataStore};
use crate::open::{open_replica, StorageConfig};
use crate::snapshot::{FinishedSnapshot, SnapshotStore, SnapshotWriter};
use crate::wal::{Record, RecordKind, Recovery, Wal, WalConfig};

/// Bytes in front of a snapshot's state-machine bytes: the epoch's ballot.
const SNAPSHOT_HEADER_BYTES: usize = 24;

/// Bounds of one replica's store.
#[derive(Clone, Debug)]
pub struct AcceptorStoreConfig {
    /// The log's segment and record bounds.
    pub wal: WalConfig,
    /// Size of one snapshot chunk, the unit of checksums and of transfer.
    pub snapshot_chunk_bytes: u32,
    /// Largest encoded batch recovery will decode (the core's `batch_bytes_max`
    /// plus its encoding overhead).
    pub batch_bytes_max: usize,
}

impl Default for AcceptorStoreConfig {
    fn default() -> AcceptorStoreConfig {
        AcceptorStoreConfig {
            wal: WalConfig::default(),
            snapshot_chunk_bytes: 1 << 20,
            batch_bytes_max: 16 << 20,
        }
    }
}

/// What a start found on disk.
#[derive(Debug)]
pub struct Recovered {
    /// `None`: the disk held nothing (a brand-new or wiped replica).
    pub durable: Option<DurableState>,
    /// The state machine's bytes from the newest snapshot, if any.
    pub snapshot_state: Option<Vec<u8>>,
    /// What the log scan saw, for logging.
    pub recovery: Recovery,
}

/// One replica's metadata, log and snapshots.
#[derive(Debug)]
pub struct AcceptorStore {
    wal: Wal,
    metadata: MetadataStore,
    snapshots: SnapshotStore,
}

impl AcceptorStore {
    /// Opens (or creates) the store and reads back what a restart needs. A
    /// snapshot that fails its checks is left out: the replica then fetches one
    /// from a peer when it finds its log does not reach back far enough.
    pub fn open(disk: Arc<dyn Disk>, config: &AcceptorStoreConfig) -> Result<(AcceptorStore, Recovered)> {
        let storage = open_replica(
            disk,
            &StorageConfig {
                wal: config.wal.clone(),
                snapshot_chunk_bytes: config.snapshot_chunk_bytes,
            },
        )?;
        let snapshot = match storage.snapshot {
            Some(_) => storage.snapshots.load_latest().unwrap_or(None),
            None => None,
        };
        let store = AcceptorStore {
            wal: storage.wal,
            metadata: storage.metadata,
            snapshots: storage.snapshots,
        };
        let recovery = storage.recovery;
        if storage.metadata_load.fresh {
            return Ok((
                store,
                Recovered {
                    durable: None,
                    snapshot_state: None,
                    recovery,
                },
            ));
        }
        let (snapshot_instance, snapshot_epoch, snapshot_state) = match snapshot {
            Some((instance, bytes)) => {
                let (epoch, state) = split_snapshot(&bytes)?;
                (instance, epoch, Some(state))
            }
            None => (Instance::ZERO, Epoch::default(), None),
        };
        // A newer snapshot than the one loaded failed its checks: the log
        // below it may hold acceptances the commit point must not vouch for
        // (see `DurableState::snapshot_lost_through`).
        let newest_on_disk = store.snapshots.instances()?.last().copied().unwrap_or(Instance::ZERO);
        let snapshot_lost_through = if newest_on_disk > snapshot_instance {
            newest_on_disk
        } else {
            Instance::ZERO
        };
        let durable = durable_state(
            storage.metadata_load.metadata,
            &recovery,
            snapshot_instance,
            snapshot_lost_through,
            snapshot_epoch,
            config.batch_bytes_max,
        );
        Ok((
            store,
            Recovered {
                durable: Some(durable),
                snapshot_state,
                recovery,
            },
        ))
    }

    /// Stages a Ready's persist records. Metadata is written and synced here;
    /// log records become durable at the next [`AcceptorStore::sync`].
    pub fn write(&mut self, records: &[Persist]) -> Result<()> {
        for record in records {
            match write_op(record) {
                WriteOp::Metadata(metadata) => self.metadata.write(&metadata)?,
                WriteOp::Record(record) => self.wal.append(&record)?,
            }
        }
        Ok(())
    }

    /// Makes every staged record durable (one fdatasync for all of them).
    pub fn sync(&mut self) -> Result<()> {
        self.wal.sync()
    }

    /// Takes a snapshot of the state machine at `instance` (whose highest applied
    /// epoch is `epoch`) and, once it is durable, trims the log below it. A failed
    /// snapshot leaves the log as it was. Everything happens on the caller's
    /// thread; a host that must keep the log going meanwhile writes the snapshot
    /// elsewhere with [`AcceptorStore::begin_snapshot`] and hands the result to
    /// [`AcceptorStore::trim`].
    pub fn save_snapshot(&mut self, instance: Instance, epoch: Epoch, state: &[u8]) -> Result<FinishedSnapshot> {
        let finished = AcceptorStore::write_snapshot(&self.snapshots, instance, epoch, |writer| writer.write(state))?;
        self.trim(&finished)?;
        Ok(finished)
    }

    /// A whole snapshot through [`AcceptorStore::begin_snapshot`]: `fill`
    /// writes the state machine's bytes, then the snapshot is finished and
    /// durable. Runs on any thread; an error leaves the previous snapshot and
    /// the log as they were.
    pub fn write_snapshot(
        snapshots: &SnapshotStore,
        instance: Instance,
        epoch: Epoch,
        fill: impl FnOnce(&mut SnapshotWriter) -> Result<()>,
    ) -> Result<FinishedSnapshot> {
        let mut writer = AcceptorStore::begin_snapshot(snapshots, instance, epoch)?;
        fill(&mut writer)?;
        writer.finish()
    }

    /// Begins a snapshot of the state machine at `instance` (whose highest
    /// applied epoch is `epoch`), with the epoch header already written: the
    /// caller writes the state machine's bytes and calls
    /// [`SnapshotWriter::finish`]. It needs only the snapshot files (a clone of
    /// [`AcceptorStore::snapshots`]), so it runs on any thread while this store
    /// goes on writing the log; the log is trimmed only when the
    /// [`FinishedSnapshot`] comes back through [`AcceptorStore::trim`], and a
    /// writer dropped unfinished leaves the log and the previous snapshot as
    /// they were.
    pub fn begin_snapshot(snapshots: &SnapshotStore, instance: Instance, epoch: Epoch) -> Result<SnapshotWriter> {
        let mut writer = snapshots.begin(instance)?;
        writer.write(&snapshot_header(epoch))?;
        Ok(writer)
    }

    /// A snapshot is durable (finished here, or received from a peer through
    /// [`SnapshotStore::installer`]): the log below it may go.
    pub fn trim(&mut self, snapshot: &FinishedSnapshot) -> Result<()> {
        self.wal.trim(snapshot)?;
        Ok(())
    }

    /// The snapshot files, for serving chunks to peers and installing theirs.
    pub fn snapshots(&self) -> &SnapshotStore {
        &self.snapshots
    }

    /// The log, for its counters.
    pub fn wal(&self) -> &Wal {
        &self.wal
    }

    /// The newest snapshot: its instance, epoch and state-machine bytes.
    pub fn latest_snapshot(&self) -> Result<Option<(Instance, Epoch, Vec<u8>)>> {
        match self.snapshots.load_latest()? {
            Some((instance, bytes)) => {
                let (epoch, state) = split_snapshot(&bytes)?;
                Ok(Some((instance, epoch, state)))
            }
            None => Ok(None),
        }
    }
}

impl sealed::Sealed for AcceptorStore {}

impl CommitTarget for AcceptorStore {
    type Submission = Vec<Persist>;
    type Writes = std::iter::Map<std::vec::IntoIter<Persist>, fn(Persist) -> WriteOp>;

    fn writes(records: Vec<Persist>) -> Self::Writes {
        let write: fn(Persist) -> WriteOp = |record| write_op(&record);
        records.into_iter().map(write)
    }

    fn wal_mut(&mut self) -> &mut Wal {
        &mut self.wal
    }

    fn write_metadata(&mut self, metadata: &AcceptorMetadata) -> Result<()> {
        self.metadata.write(metadata)
    }

    fn stop_after(&mut self, reason: String) {
        self.wal.stop_after(reason.clone());
        self.metadata.stop_after(reason);
    }
}

/// What a `Persist` record becomes: `Meta` the metadata copies, the others a
/// log record (a value learned chosen at the zero ballot).
fn write_op(record: &Persist) -> WriteOp {
    match record {
        Persist::Meta(meta) => WriteOp::Metadata(AcceptorMetadata {
            promised: meta.promised,
            incarnation: meta.incarnation,
            voting: meta.voting,
        }),
        Persist::Accepted {
            instance,
            ballot,
            batch,
        } => WriteOp::Record(Record::Accepted {
            instance: *instance,
            ballot: *ballot,
            value: encode_batch(batch),
        }),
        Persist::Chosen { instance, batch } => WriteOp::Record(Record::Accepted {
            instance: *instance,
            ballot: Ballot::ZERO,
            value: encode_batch(batch),
        }),
        Persist::ChosenThrough { through } => WriteOp::Record(Record::Committed { through: *through }),
    }
}

fn snapshot_header(epoch: Epoch) -> [u8; SNAPSHOT_HEADER_BYTES] {
    let mut header = [0u8; SNAPSHOT_HEADER_BYTES];
    header[..8].copy_from_slice(&epoch.0.round.to_le_bytes());
    header[8..16].copy_from_slice(&epoch.0.incarnation.to_le_bytes());
    header[16..].copy_from_slice(&epoch.0.node.0.to_le_bytes());
    header
}

fn split_snapshot(bytes: &[u8]) -> Result<(Epoch, Vec<u8>)> {
    if bytes.len() < SNAPSHOT_HEADER_BYTES {
        return Err(StorageError::Malformed {
            file: "snapshot".to_string(),
            what: format!(
                "{} bytes, shorter than its {SNAPSHOT_HEADER_BYTES}-byte header",
                bytes.len()
            ),
        });
    }
    let word = |index: usize| u64::from_le_bytes(bytes[index * 8..index * 8 + 8].try_into().expect("8 bytes"));
    let epoch = Epoch(Ballot::new(word(0), word(1), NodeId(word(2))));
    Ok((epoch, bytes[SNAPSHOT_HEADER_BYTES..].to_vec()))
}

/// Turns what recovery read into the core's restart state. A record whose value
/// fails to decode, or whose checksum failed, becomes a faulty slot (repaired
/// from peers); a damaged record whose instance is unknown means this replica
/// may have forgotten an acceptance, so it must rejoin as if its disk were lost.
fn durable_state(
    metadata: AcceptorMetadata,
    recovery: &Recovery,
    snapshot_instance: Instance,
    snapshot_lost_through: Instance,
    snapshot_epoch: Epoch,
    batch_bytes_max: usize,
) -> DurableState {
    let mut meta = Meta {
        promised: metadata.promised,
        incarnation: metadata.incarnation,
        voting: metadata.voting,
    };
    let mut slots = Vec::with_capacity(recovery.accepted.len());
    for (instance, accepted) in &recovery.accepted {
        if *instance <= snapshot_instance {
            continue;
        }
        let value: Bytes = accepted.value.clone();
        let slot = match decode_batch(&value, batch_bytes_max) {
            Ok(batch) if accepted.ballot == Ballot::ZERO => StoredSlot::Chosen { batch },
            Ok(batch) => StoredSlot::Accepted {
                ballot: accepted.ballot,
                batch,
            },
            Err(_) => StoredSlot::Faulty {
                ballot: (accepted.ballot != Ballot::ZERO).then_some(accepted.ballot),
            },
        };
        slots.push((*instance, slot));
    }
    for corrupt in &recovery.corrupted {
        if corrupt.kind == Some(RecordKind::Committed) {
            // A commit point is learned again from the master.
            continue;
        }
        match corrupt.instance {
            Some(instance) if instance > snapshot_instance && !recovery.accepted.contains_key(&instance) => {
                let ballot = corrupt.ballot.filter(|ballot| *ballot != Ballot::ZERO);
                slots.push((instance, StoredSlot::Faulty { ballot }));
            }
            Some(_) => {}
            None => {
                if meta.voting == Voting::Voter {
                    meta.voting = Voting::ProbePending { new_group: false };
                }
            }
        }
    }
    DurableState {
        meta,
        snapshot_instance,
        snapshot_epoch,
        slots,
        chosen_through: recovery.committed_through,
        snapshot_lost_through,
    }
}

#[cfg(test)]
mod tests {
    use synod_paxos::{Batch, BatchId, Entry};

    use super::*;
    use crate::sim_disk::{FaultConfig, SimDisk};

    fn config() -> AcceptorStoreConfig {
        AcceptorStoreConfig {
            wal: WalConfig {
                segment_bytes_max: 4096,
                preallocate_bytes: 0,
                ..WalConfig::default()
            },
            snapshot_chunk_bytes: 256,
            ..AcceptorStoreConfig::default()
        }
    }

    /// Makes `store` a voter that promised `promised`.
    fn promise(store: &mut AcceptorStore, promised: Ballot) {
        let meta = Meta {
            promised,
            incarnation: 1,
            voting: Voting::Voter,
        };
        store.write(&[Persist::Meta(meta)]).unwrap();
    }

    fn commit(store: &mut AcceptorStore, ballot: Ballot, instance: u64) {
        let batch = Batch::new(
            BatchId {
                ballot,
                instance: Instance(instance),
            },
            vec![Entry {
                value: Bytes::from(vec![instance as u8; 500]),
                expected_epoch: None,
            }],
        );
        store
            .write(&[
                Persist::Accepted {
                    instance: Instance(instance),
                    ballot,
                    batch,
                },
                Persist::ChosenThrough {
                    through: Instance(instance),
                },
            ])
            .unwrap();
        store.sync().unwrap();
    }

    #[test]
    fn a_snapshot_written_on_another_thread_trims_the_log_only_when_handed_back() {
        let disk: Arc<dyn Disk> = Arc::new(SimDisk::new(1, FaultConfig::default()));
        let (mut store, _) = AcceptorStore::open(disk.clone(), &config()).unwrap();
        let ballot = Ballot::new(1, 1, NodeId(1));
        promise(&mut store, ballot);
        for instance in 1..=40 {
            commit(&mut store, ballot, instance);
        }
        let segments = store.wal().segment_count();
        assert!(segments > 3, "{segments} segments");

        let snapshots = store.snapshots().clone();
        let epoch = Epoch(ballot);
        let writer = std::thread::spawn(move || {
            let mut writer = AcceptorStore::begin_snapshot(&snapshots, Instance(30), epoch).unwrap();
            writer.write(&[7u8; 1000]).unwrap();
            writer.finish().unwrap()
        });
        // The log takes appends meanwhile, and keeps every segment until the
        // finished snapshot is handed back.
        for instance in 41..=50 {
            commit(&mut store, ballot, instance);
        }
        let finished = writer.join().unwrap();
        assert_eq!(finished.instance(), Instance(30));
        let before_trim = store.wal().segment_count();
        assert!(before_trim > segments);
        store.trim(&finished).unwrap();
        assert!(store.wal().segment_count() < before_trim);
        assert_eq!(
            store.latest_snapshot().unwrap(),
            Some((Instance(30), epoch, vec![7u8; 1000]))
        );

        // A writer dropped unfinished leaves the snapshot that was.
        let abandoned = AcceptorStore::begin_snapshot(store.snapshots(), Instance(45), epoch).unwrap();
        drop(abandoned);
        drop(store);
        let (_, recovered) = AcceptorStore::open(disk, &config()).unwrap();
        let durable = recovered.durable.unwrap();
        assert_eq!(durable.snapshot_instance, Instance(30));
        assert_eq!(durable.snapshot_epoch, epoch);
        assert_eq!(recovered.snapshot_state, Some(vec![7u8; 1000]));
        let instances: Vec<u64> = durable.slots.iter().map(|(instance, _)| instance.0).collect();
        assert_eq!(instances, (31..=50).collect::<Vec<_>>());
        assert_eq!(durable.chosen_through, Instance(50));
    }

    #[test]
    fn a_damaged_snapshot_is_reported_with_how_far_it_reached() {
        // A replica accepted a value for instance 5 that was never chosen,
        // then installed a peer's snapshot through 10 (its commit point moved
        // over 5 without learning 5's value) and went on to 12.
        let sim = SimDisk::new(2, FaultConfig::default());
        let disk: Arc<dyn Disk> = Arc::new(sim.clone());
        let (mut store, _) = AcceptorStore::open(disk.clone(), &config()).unwrap();
        let old = Ballot::new(1, 1, NodeId(1));
        let new = Ballot::new(2, 1, NodeId(2));
        promise(&mut store, new);
        for instance in 1..=4 {
            commit(&mut store, old, instance);
        }
        let stale = Batch::new(
            BatchId {
                ballot: old,
                instance: Instance(5),
            },
            vec![],
        );
        store
            .write(&[Persist::Accepted {
                instance: Instance(5),
                ballot: old,
                batch: stale,
            }])
            .unwrap();
        store.sync().unwrap();
        store.save_snapshot(Instance(10), Epoch(new), &[9u8; 600]).unwrap();
        store
            .write(&[Persist::ChosenThrough { through: Instance(10) }])
            .unwrap();
        for instance in 11..=12 {
            commit(&mut store, new, instance);
        }
        drop(store);

        let read = |recovered: Recovered| -> (Instance, Vec<u64>, Instance, Instance) {
            let durable = recovered.durable.unwrap();
            let instances = durable.slots.iter().map(|(instance, _)| instance.0).collect();
            (
                durable.snapshot_instance,
                instances,
                durable.chosen_through,
                durable.snapshot_lost_through,
            )
        };
        let (_, recovered) = AcceptorStore::open(disk.clone(), &config()).unwrap();
        assert_eq!(
            read(recovered),
            (Instance(10), vec![11, 12], Instance(12), Instance::ZERO)
        );

        // The snapshot is damaged: it is left out, the log below it is read
        // back (its acceptances are still acceptances), and the restart
        // state says how far the lost snapshot reached, so that the commit
        // point does not pass instance 5's stale acceptance off as chosen.
        sim.flip_bit("snapshot-00000000000000000010.snap", 100, 3).unwrap();
        let (_, recovered) = AcceptorStore::open(disk, &config()).unwrap();
        assert_eq!(recovered.snapshot_state, None);
        assert_eq!(
            read(recovered),
            (Instance::ZERO, vec![1, 2, 3, 4, 5, 11, 12], Instance(12), Instance(10))
        );
    }
}
