//! One replica's disk in the simulator: the storage crate's log, metadata and
//! snapshot files (the very code the server uses) on a simulated disk that
//! loses unsynced writes on a crash, tears writes, flips bits, misdirects
//! writes and fails with EIO, at rates drawn per seed.

use std::collections::BTreeMap;
use std::sync::Arc;

use synod_paxos::{DurableState, Epoch, Instance, Persist};
use synod_storage::{
    AcceptorStore, AcceptorStoreConfig, Disk, FaultConfig, FaultCounts, InstallStep, SimDisk, SnapshotReader, WalConfig,
};

/// A state-machine snapshot as the simulated host keeps it.
#[derive(Clone, Debug, Default)]
pub struct Snapshot {
    /// The last instance whose values the state reflects.
    pub instance: Instance,
    /// The epoch in force at `instance` (the master epoch that values' expected
    /// epochs are checked against), handed to the replica with the snapshot.
    pub epoch: Epoch,
    /// The simulated state machine: each key's last written value.
    pub state: BTreeMap<String, String>,
}

fn encode_state(state: &BTreeMap<String, String>) -> Vec<u8> {
    let mut bytes = Vec::new();
    for (key, value) in state {
        bytes.extend_from_slice(key.as_bytes());
        bytes.push(b'=');
        bytes.extend_from_slice(value.as_bytes());
        bytes.push(b'\n');
    }
    bytes
}

fn decode_state(bytes: &[u8]) -> Result<BTreeMap<String, String>, String> {
    let text = std::str::from_utf8(bytes).map_err(|error| format!("snapshot is not UTF-8: {error}"))?;
    let mut state = BTreeMap::new();
    for line in text.lines() {
        let (key, value) = line
            .split_once('=')
            .ok_or_else(|| format!("snapshot line {line:?} has no '='"))?;
        state.insert(key.to_string(), value.to_string());
    }
    Ok(state)
}

/// How a snapshot transfer from a peer ended.
pub enum Transfer {
    /// Every chunk arrived, verified; the snapshot is installed.
    Installed(Snapshot),
    /// The peer went away after some chunks; the ones received are kept, and a
    /// later transfer of the same snapshot resumes after them.
    Interrupted,
    /// The peer's own copy failed its checks: nothing of it is installed, and
    /// the replica asks again (another peer, in time).
    PeerSnapshotDamaged,
}

/// What a start read back.
pub struct Opened {
    /// `None`: the disk is empty.
    pub durable: Option<DurableState>,
    /// The newest snapshot, if the disk holds one.
    pub snapshot: Option<Snapshot>,
}

/// The disk of one simulated replica and, while the replica runs, its open store.
pub struct NodeDisk {
    seed: u64,
    faults: FaultConfig,
    disk: SimDisk,
    store: Option<AcceptorStore>,
    snapshot_instance: Instance,
    /// Fault counts of disks replaced since the run began.
    retired_counts: FaultCounts,
}

fn store_config() -> AcceptorStoreConfig {
    AcceptorStoreConfig {
        wal: WalConfig {
            // Small segments, so rotation and trimming happen in every run,
            // and small values, so that the space before a segment's
            // identifier region (held in memory by the simulated disk) is
            // small too.
            segment_bytes_max: 64 << 10,
            value_bytes_max: 16 << 10,
            preallocate_bytes: 0,
        },
        // Small chunks, so that a transfer takes several and can be cut short.
        snapshot_chunk_bytes: 16,
        batch_bytes_max: 1 << 20,
    }
}

impl NodeDisk {
    /// An empty disk whose faults are drawn from `seed` at the rates in `faults`.
    pub fn new(seed: u64, faults: FaultConfig) -> NodeDisk {
        NodeDisk {
            seed,
            disk: SimDisk::new(seed, faults.clone()),
            faults,
            store: None,
            snapshot_instance: Instance::ZERO,
            retired_counts: FaultCounts::default(),
        }
    }

    /// Opens the store: what a restarting replica reads back. An error means the
    /// replica must not start from this disk (both metadata copies bad, say).
    pub fn open(&mut self) -> Result<Opened, String> {
        let disk: Arc<dyn Disk> = Arc::new(self.disk.clone());
        let (store, recovered) = AcceptorStore::open(disk, &store_config()).map_err(|error| error.to_string())?;
        let snapshot = match (&recovered.durable, recovered.snapshot_state) {
            (Some(durable), Some(bytes)) => Some(Snapshot {
                instance: durable.snapshot_instance,
                epoch: durable.snapshot_epoch,
                state: decode_state(&bytes)?,
            }),
            _ => None,
        };
        self.snapshot_instance = snapshot.as_ref().map_or(Instance::ZERO, |s| s.instance);
        self.store = Some(store);
        Ok(Opened {
            durable: recovered.durable,
            snapshot,
        })
    }

    fn store(&mut self) -> Result<&mut AcceptorStore, String> {
        self.store.as_mut().ok_or_else(|| "store is not open".to_string())
    }

    /// Writes a Ready's records to the log and metadata, not yet synced.
    pub fn write(&mut self, records: &[Persist]) -> Result<(), String> {
        self.store()?.write(records).map_err(|error| error.to_string())
    }

    /// Makes every write so far durable; an error means the replica must stop.
    pub fn sync(&mut self) -> Result<(), String> {
        self.store()?.sync().map_err(|error| error.to_string())
    }

    /// Power fails during the next sync of the log's frames (or of their
    /// identifiers, the segment's sync after it): the sync returns an error,
    /// and the crash that follows keeps a torn prefix at most.
    pub fn fail_next_sync(&mut self, identifiers: bool) {
        if let Some(store) = &self.store {
            let (segment, _) = store.wal().active_file();
            self.disk.schedule_power_failure_after(&segment, u32::from(identifiers));
        }
    }

    /// Power loss: the store is gone and unsynced writes with it (some torn).
    pub fn crash(&mut self) {
        self.store = None;
        self.disk.crash();
    }

    /// The disk is replaced by an empty one (an operator's answer to a disk
    /// the replica cannot start from).
    pub fn wipe(&mut self) {
        self.store = None;
        let counts = self.disk.fault_counts();
        self.retired_counts = add_counts(self.retired_counts, counts);
        self.seed = self.seed.wrapping_add(0x9E37_79B9);
        self.disk = SimDisk::new(self.seed, self.faults.clone());
        self.snapshot_instance = Instance::ZERO;
    }

    /// Stops injecting faults (the liveness phase): the disk only loses unsynced
    /// writes on a crash from now on. A power failure scheduled for a sync
    /// that has not come yet is called off too.
    pub fn stop_faults(&mut self) {
        self.faults = FaultConfig::default();
        self.disk.set_faults(self.faults.clone());
        self.disk.cancel_scheduled();
    }

    /// The instance of the newest snapshot on this disk (zero if none).
    pub fn snapshot_instance(&self) -> Instance {
        self.snapshot_instance
    }

    /// Writes a snapshot and trims the log below it.
    pub fn save_snapshot(&mut self, snapshot: &Snapshot) -> Result<(), String> {
        let bytes = encode_state(&snapshot.state);
        self.store()?
            .save_snapshot(snapshot.instance, snapshot.epoch, &bytes)
            .map_err(|error| error.to_string())?;
        self.snapshot_instance = snapshot.instance;
        Ok(())
    }

    /// The newest snapshot, read back and verified chunk by chunk.
    pub fn latest_snapshot(&mut self) -> Result<Option<Snapshot>, String> {
        match self.store()?.latest_snapshot().map_err(|error| error.to_string())? {
            Some((instance, epoch, bytes)) => Ok(Some(Snapshot {
                instance,
                epoch,
                state: decode_state(&bytes)?,
            })),
            None => Ok(None),
        }
    }

    /// The newest snapshot, for sending to a peer chunk by chunk.
    pub fn snapshot_reader(&mut self) -> Result<Option<SnapshotReader>, String> {
        self.store()?.snapshots().latest().map_err(|error| error.to_string())
    }

    /// Receives a peer's snapshot chunk by chunk, each verified and made durable
    /// as it arrives, resuming a transfer of the same snapshot cut short before;
    /// `chunks_before_interruption` cuts this one short too. Returns how many
    /// chunks were skipped because an earlier transfer had them.
    pub fn receive_snapshot(
        &mut self,
        reader: &SnapshotReader,
        chunks_before_interruption: Option<u64>,
    ) -> Result<(Transfer, u64), String> {
        let text = |error: synod_storage::StorageError| error.to_string();
        let store = self.store()?;
        let mut installer = store.snapshots().installer().map_err(text)?;
        let mut step = installer.begin(reader.manifest()).map_err(text)?;
        let resumed_from = match step {
            InstallStep::NeedChunk(index) => index,
            InstallStep::Complete => reader.manifest().chunk_count,
        };
        let mut sent = 0;
        while let InstallStep::NeedChunk(index) = step {
            if chunks_before_interruption.is_some_and(|limit| sent >= limit) {
                return Ok((Transfer::Interrupted, resumed_from));
            }
            let Ok(chunk) = reader.chunk(index) else {
                return Ok((Transfer::PeerSnapshotDamaged, resumed_from));
            };
            step = installer.accept(&chunk).map_err(text)?;
            sent += 1;
        }
        let finished = installer.install().map_err(text)?;
        self.store()?.trim(&finished).map_err(text)?;
        let snapshot = self.latest_snapshot()?.ok_or("an installed snapshot is missing")?;
        self.snapshot_instance = snapshot.instance;
        Ok((Transfer::Installed(snapshot), resumed_from))
    }

    /// Faults injected into this replica's disks so far.
    pub fn fault_counts(&self) -> FaultCounts {
        add_counts(self.retired_counts, self.disk.fault_counts())
    }
}

/// Sums two sets of fault counts.
pub fn add_counts(a: FaultCounts, b: FaultCounts) -> FaultCounts {
    FaultCounts {
        read_bit_flips: a.read_bit_flips + b.read_bit_flips,
        write_bit_flips: a.write_bit_flips + b.write_bit_flips,
        stored_bit_flips: a.stored_bit_flips + b.stored_bit_flips,
        misdirected_writes: a.misdirected_writes + b.misdirected_writes,
        read_errors: a.read_errors + b.read_errors,
        write_errors: a.write_errors + b.write_errors,
        sync_errors: a.sync_errors + b.sync_errors,
        torn_writes: a.torn_writes + b.torn_writes,
        crashes: a.crashes + b.crashes,
        unsynced_writes_lost: a.unsynced_writes_lost + b.unsynced_writes_lost,
    }
}
