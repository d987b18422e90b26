//! A store built from another system's history rather than from this log:
//! how `synod snapshot restore` migrates an etcd cluster's keys, revisions
//! and leases (the server reads etcd's snapshot file with `synod-etcd-db` and
//! hands the result here).
//!
//! Nothing imported is trusted: the store is built, encoded as a snapshot and
//! restored from that encoding, so it passes every rule a snapshot received
//! from a peer must pass (keys sorted and unique, each key's changes in
//! revision order, a deletion carrying nothing, live keys attached only to
//! leases that exist, revisions within the store's).

use std::collections::{BTreeMap, BTreeSet};

use crate::error::KvError;
use crate::index::KeyIndex;
use crate::store::{Change, Config, KeyHistory, Lease, Store};

/// One change of one key: a put (`value` is `Some`) or a deletion.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ImportedChange {
    /// The revision of the change.
    pub mod_revision: i64,
    /// Its position among the changes of its revision (etcd's sub revision).
    pub sub: u32,
    /// The revision the key was created at (0 for a deletion).
    pub create_revision: i64,
    /// Writes since creation, 1 at creation (0 for a deletion).
    pub version: i64,
    /// The lease the key is attached to, 0 for none (0 for a deletion).
    pub lease: i64,
    /// The value; `None` for a deletion.
    pub value: Option<Vec<u8>>,
}

/// Every change of one key that the imported history keeps, oldest first.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ImportedKey {
    /// The key.
    pub key: Vec<u8>,
    /// Its changes, in revision order; at least one.
    pub changes: Vec<ImportedChange>,
}

/// A whole state to import.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ImportedState {
    /// The log instance the state stands for (where the new group's log starts after it).
    pub applied_index: u64,
    /// The store's revision: at least every change's.
    pub revision: i64,
    /// History before this revision is compacted away.
    pub compact_revision: i64,
    /// The state hash to start from; every member importing the same history
    /// must start from the same one.
    pub state_hash: u64,
    /// Leases: (ID, TTL in seconds), by ID.
    pub leases: Vec<(i64, i64)>,
    /// Keys in byte order.
    pub keys: Vec<ImportedKey>,
}

const INVALID: KvError = KvError::Corrupt("imported state invalid");

impl Store {
    /// Builds a store holding `state`, or refuses it (keys out of order, a
    /// change that breaks the store's rules, a key attached to a lease that
    /// is not imported) with [`KvError::Corrupt`].
    ///
    /// # Panics
    /// If `config` fails [`Config::validate`], as [`Store::new`] does.
    pub fn import(config: Config, state: &ImportedState) -> Result<Store, KvError> {
        let sorted = state.keys.windows(2).all(|pair| pair[0].key < pair[1].key);
        if !sorted || state.keys.iter().any(|key| key.changes.is_empty()) {
            return Err(INVALID);
        }
        let mut retained_bytes: u64 = 0;
        let mut elements = Vec::with_capacity(state.keys.len());
        for imported in &state.keys {
            let mut changes: Vec<Change> = imported
                .changes
                .iter()
                .map(|change| {
                    retained_bytes += (imported.key.len() + change.value.as_ref().map_or(0, Vec::len)) as u64;
                    Change {
                        mod_revision: change.mod_revision,
                        create_revision: change.create_revision,
                        version: change.version,
                        lease: change.lease,
                        value: change.value.as_deref().map(Box::from),
                        sub: change.sub,
                    }
                })
                .collect();
            let latest = changes.pop().ok_or(INVALID)?;
            let older = (!changes.is_empty()).then(|| Box::new(changes));
            elements.push((imported.key.as_slice(), KeyHistory { latest, older }));
        }
        let leases: BTreeMap<i64, Lease> = state
            .leases
            .iter()
            .map(|&(id, ttl_seconds)| {
                (
                    id,
                    Lease {
                        ttl_seconds,
                        keys: BTreeSet::new(),
                    },
                )
            })
            .collect();
        if leases.len() != state.leases.len() {
            return Err(INVALID);
        }
        let mut built = Store::new(config.clone());
        built.index = KeyIndex::from_sorted(elements);
        built.revision = state.revision;
        built.compact_revision = state.compact_revision;
        built.leases = leases;
        built.applied_index = state.applied_index;
        built.state_hash = state.state_hash;
        built.retained_bytes = retained_bytes;
        // Restoring from the encoding checks every rule and attaches the
        // live keys to their leases.
        Store::restore(config, &built.snapshot())
    }
}
