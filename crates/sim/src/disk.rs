//! A simulated disk for one replica's Paxos state, with fsync semantics: writes
//! sit in a volatile buffer until `sync`, and a crash loses what was not synced.

use std::collections::BTreeMap;

use synod_paxos::{DurableState, Epoch, Instance, Meta, Persist, StoredSlot};

/// A state-machine snapshot as the simulated host keeps it.
#[derive(Clone, Debug, Default)]
pub struct Snapshot {
    pub instance: Instance,
    pub epoch: Epoch,
    pub state: BTreeMap<String, String>,
}

#[derive(Clone, Debug, Default)]
pub struct SimDisk {
    synced: Vec<Persist>,
    unsynced: Vec<Persist>,
    snapshot: Option<Snapshot>,
    pub syncs: u64,
}

impl SimDisk {
    pub fn write(&mut self, records: impl IntoIterator<Item = Persist>) {
        self.unsynced.extend(records);
    }

    pub fn sync(&mut self) {
        if !self.unsynced.is_empty() {
            self.syncs += 1;
            self.synced.append(&mut self.unsynced);
        }
    }

    pub fn has_unsynced(&self) -> bool {
        !self.unsynced.is_empty()
    }

    /// Power loss: every write not covered by a completed sync is gone.
    pub fn crash(&mut self) {
        self.unsynced.clear();
    }

    /// The disk is replaced by an empty one.
    pub fn wipe(&mut self) {
        *self = SimDisk::default();
    }

    pub fn is_empty(&self) -> bool {
        self.synced.is_empty() && self.snapshot.is_none()
    }

    /// Stores a snapshot (durably: the simulated host writes snapshots synchronously)
    /// and drops the log records it covers.
    pub fn install_snapshot(&mut self, snapshot: Snapshot) {
        let through = snapshot.instance;
        self.sync();
        let mut meta = None;
        self.synced.retain(|record| match record {
            Persist::Meta(m) => {
                meta = Some(*m);
                false
            }
            Persist::Accepted { instance, .. } | Persist::Chosen { instance, .. } => *instance > through,
            Persist::ChosenThrough { through: t } => *t > through,
        });
        if let Some(meta) = meta {
            self.synced.insert(0, Persist::Meta(meta));
        }
        self.snapshot = Some(snapshot);
    }

    pub fn snapshot(&self) -> Option<&Snapshot> {
        self.snapshot.as_ref()
    }

    /// What a restarting replica reads back.
    pub fn recover(&self) -> DurableState {
        let mut meta = Meta::default();
        let mut slots: BTreeMap<Instance, StoredSlot> = BTreeMap::new();
        let mut chosen_through = Instance::ZERO;
        for record in &self.synced {
            match record {
                Persist::Meta(m) => meta = *m,
                Persist::Accepted {
                    instance,
                    ballot,
                    batch,
                } => {
                    if !matches!(slots.get(instance), Some(StoredSlot::Chosen { .. })) {
                        slots.insert(
                            *instance,
                            StoredSlot::Accepted {
                                ballot: *ballot,
                                batch: batch.clone(),
                            },
                        );
                    }
                }
                Persist::Chosen { instance, batch } => {
                    slots.insert(*instance, StoredSlot::Chosen { batch: batch.clone() });
                }
                Persist::ChosenThrough { through } => chosen_through = chosen_through.max(*through),
            }
        }
        let (snapshot_instance, snapshot_epoch) = self
            .snapshot
            .as_ref()
            .map_or((Instance::ZERO, Epoch::default()), |s| (s.instance, s.epoch));
        DurableState {
            meta,
            snapshot_instance,
            snapshot_epoch,
            slots: slots.into_iter().collect(),
            chosen_through,
        }
    }
}
