//! Opening everything a replica persists, in the order that keeps it safe.

use std::sync::Arc;

use synod_paxos::Instance;

use crate::disk::Disk;
use crate::error::{Result, StorageError};
use crate::metadata::{MetadataLoad, MetadataStore};
use crate::snapshot::{SnapshotManifest, SnapshotStore};
use crate::wal::{Recovery, Wal, WalConfig};

/// Bounds of a replica's storage.
#[derive(Clone, Debug)]
pub struct StorageConfig {
    /// The write-ahead log's bounds.
    pub wal: WalConfig,
    /// The chunk size of snapshots this replica writes.
    pub snapshot_chunk_bytes: u32,
}

impl Default for StorageConfig {
    fn default() -> StorageConfig {
        StorageConfig {
            wal: WalConfig::default(),
            snapshot_chunk_bytes: 1 << 20,
        }
    }
}

/// Everything [`open_replica`] recovered.
#[derive(Debug)]
pub struct ReplicaStorage {
    /// The acceptor metadata store; write the bumped incarnation first.
    pub metadata: MetadataStore,
    /// What the metadata held, and whether a copy was repaired.
    pub metadata_load: MetadataLoad,
    /// The snapshot store.
    pub snapshots: SnapshotStore,
    /// The newest snapshot, if there is one and its header and length are
    /// sound. Its chunks are verified when read
    /// ([`SnapshotStore::load_latest`] or [`crate::SnapshotReader::chunk`]).
    pub snapshot: Option<SnapshotManifest>,
    /// Why the newest snapshot could not be opened: fetch one from a peer.
    pub snapshot_damage: Option<StorageError>,
    /// The log, ready for appends (or for [`crate::GroupCommit::start`]).
    pub wal: Wal,
    /// What the log held, including the damaged instances to repair.
    pub recovery: Recovery,
}

impl ReplicaStorage {
    /// Every instance up to this one is chosen: the higher of the log's
    /// commit point and the snapshot's instance.
    pub fn committed_through(&self) -> Instance {
        let snapshot = self.snapshot.map_or(Instance::ZERO, |s| s.instance);
        self.recovery.committed_through.max(snapshot)
    }
}

/// Opens a replica's storage: metadata first (refusing to start if both
/// copies are lost, or if they are missing beside a log or snapshots, since a
/// promise must never be relearned from peers), then the snapshots, then the
/// log. A brand-new directory gets fresh metadata.
pub fn open_replica(disk: Arc<dyn Disk>, config: &StorageConfig) -> Result<ReplicaStorage> {
    let has_state = disk
        .list()?
        .iter()
        .any(|name| name.starts_with("wal-") || name.starts_with("snapshot-"));
    let (metadata, metadata_load) = MetadataStore::open(disk.clone(), has_state)?;
    let snapshots = SnapshotStore::open(disk.clone(), config.snapshot_chunk_bytes)?;
    let (snapshot, snapshot_damage) = match snapshots.latest() {
        Ok(reader) => (reader.map(|reader| reader.manifest()), None),
        Err(error) => (None, Some(error)),
    };
    let (wal, recovery) = Wal::open(disk, config.wal.clone())?;
    Ok(ReplicaStorage {
        metadata,
        metadata_load,
        snapshots,
        snapshot,
        snapshot_damage,
        wal,
        recovery,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::metadata::{AcceptorMetadata, METADATA_FILES};
    use crate::sim_disk::{FaultConfig, SimDisk};
    use crate::wal::Record;
    use synod_paxos::{Ballot, NodeId};

    #[test]
    fn a_replica_reopens_with_its_promise_log_and_snapshot() {
        let sim = SimDisk::new(3, FaultConfig::default());
        let disk: Arc<dyn Disk> = Arc::new(sim.clone());
        let config = StorageConfig::default();
        let mut storage = open_replica(disk.clone(), &config).unwrap();
        assert!(storage.metadata_load.fresh);
        let promised = Ballot::new(4, 1, NodeId(2));
        storage
            .metadata
            .write(&AcceptorMetadata {
                promised,
                incarnation: 1,
                voting: synod_paxos::Voting::Voter,
            })
            .unwrap();
        for instance in 1..=5 {
            storage
                .wal
                .append(&Record::Accepted {
                    instance: Instance(instance),
                    ballot: promised,
                    value: bytes::Bytes::from_static(b"v"),
                })
                .unwrap();
        }
        storage.wal.append(&Record::Committed { through: Instance(2) }).unwrap();
        storage.wal.sync().unwrap();
        let mut writer = storage.snapshots.begin(Instance(3)).unwrap();
        writer.write(b"state").unwrap();
        writer.finish().unwrap();
        drop(storage);
        sim.crash();

        let storage = open_replica(disk.clone(), &config).unwrap();
        assert!(!storage.metadata_load.fresh);
        assert_eq!(storage.metadata_load.metadata.promised, promised);
        assert_eq!(storage.recovery.accepted.len(), 5);
        assert_eq!(storage.snapshot.unwrap().instance, Instance(3));
        assert_eq!(storage.committed_through(), Instance(3));
        drop(storage);

        // Losing both metadata copies beside a log stops the replica.
        disk.remove(METADATA_FILES[0]).unwrap();
        disk.remove(METADATA_FILES[1]).unwrap();
        assert!(matches!(
            open_replica(disk, &config),
            Err(StorageError::MetadataUnrecoverable { .. })
        ));
    }

    #[test]
    fn a_damaged_snapshot_is_reported_not_fatal() {
        let sim = SimDisk::new(3, FaultConfig::default());
        let disk: Arc<dyn Disk> = Arc::new(sim.clone());
        let config = StorageConfig::default();
        let storage = open_replica(disk.clone(), &config).unwrap();
        let mut writer = storage.snapshots.begin(Instance(7)).unwrap();
        writer.write(&[1u8; 100]).unwrap();
        writer.finish().unwrap();
        drop(storage);
        sim.flip_bit("snapshot-00000000000000000007.snap", 40, 0).unwrap();
        let storage = open_replica(disk, &config).unwrap();
        assert!(storage.snapshot.is_none());
        assert!(matches!(
            storage.snapshot_damage,
            Some(StorageError::ChecksumMismatch { .. })
        ));
    }
}
