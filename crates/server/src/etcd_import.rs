//! Migration from etcd: a file written by `etcdctl snapshot save` against
//! etcd 3.4 or 3.5 (a bbolt database and its SHA-256), read with
//! `synod-etcd-db` and turned into a store that `synod snapshot restore`
//! seeds a new group with, as it does with synod's own backups.
//!
//! What comes over: every key revision the snapshot still holds, with its
//! create and mod revisions, version and lease; the store's revision and
//! compacted revision (a compaction etcd had scheduled but not finished is
//! finished here, as etcd would finish it on start); every lease with its
//! TTL, its deadline restarting when the new group elects its first master,
//! as it does after any master change. What does not: etcd's members (the
//! new group's are the restore's `--initial-cluster`), its auth users and
//! roles (created again with `etcdctl user` / `role`), and its alarms.

use std::collections::BTreeMap;

use sha2::{Digest, Sha256};
use synod_etcd_db::{EtcdDb, KeyRevision};
use synod_kv::{ImportedChange, ImportedKey, ImportedState, Store};

/// The instance an imported store stands for: the new group's log starts
/// after it, as after a synod backup taken at instance 1.
pub const IMPORTED_INSTANCE: u64 = 1;

/// Reads an etcd snapshot file and builds the store it holds, or says
/// precisely why it cannot.
pub fn import(bytes: &[u8]) -> Result<Store, String> {
    let db = synod_etcd_db::read(bytes).map_err(|error| format!("it is an etcd snapshot, but {error}"))?;
    let digest: [u8; 32] = Sha256::digest(bytes).into();
    let state = imported_state(&db, u64::from_le_bytes(digest[..8].try_into().expect("8 bytes")))?;
    Store::import(crate::node::kv_config(), &state)
        .map_err(|error| format!("its contents break a rule of synod's store: {error}"))
}

/// etcd's MVCC history as the store's: per key, the changes a finished
/// compaction keeps.
fn imported_state(db: &EtcdDb, state_hash: u64) -> Result<ImportedState, String> {
    let compact_revision = db
        .scheduled_compact_revision
        .max(db.finished_compact_revision)
        .unwrap_or(0);
    let mut by_key: BTreeMap<&[u8], Vec<&KeyRevision>> = BTreeMap::new();
    for revision in &db.revisions {
        by_key.entry(revision.key.as_slice()).or_default().push(revision);
    }
    let leases: Vec<(i64, i64)> = db.leases.iter().map(|lease| (lease.id, lease.ttl_seconds)).collect();
    let mut keys = Vec::with_capacity(by_key.len());
    for (key, revisions) in by_key {
        let kept = compacted(&revisions, compact_revision);
        if kept.is_empty() {
            continue;
        }
        let changes = kept
            .iter()
            .map(|revision| change(revision))
            .collect::<Result<Vec<_>, _>>()?;
        let latest = changes.last().expect("not empty");
        if latest.value.is_some()
            && latest.lease != 0
            && leases.binary_search_by_key(&latest.lease, |lease| lease.0).is_err()
        {
            return Err(format!(
                "key {} is attached to lease {:x}, which the snapshot does not hold",
                printable(key),
                latest.lease
            ));
        }
        keys.push(ImportedKey {
            key: key.to_vec(),
            changes,
        });
    }
    let newest = db.revisions.iter().map(|revision| revision.main).max().unwrap_or(0);
    Ok(ImportedState {
        applied_index: IMPORTED_INSTANCE,
        revision: newest.max(compact_revision).max(1),
        compact_revision,
        state_hash,
        leases,
        keys,
    })
}

/// What etcd's compaction at `compact_revision` keeps of one key's
/// revisions (in revision order): everything after it, and the last change
/// at or before it unless that change is a deletion.
fn compacted<'a>(revisions: &[&'a KeyRevision], compact_revision: i64) -> Vec<&'a KeyRevision> {
    let first_after = revisions.partition_point(|revision| revision.main <= compact_revision);
    let mut kept = Vec::with_capacity(revisions.len() - first_after + 1);
    if let Some(last_before) = first_after.checked_sub(1).map(|index| revisions[index]) {
        if !last_before.tombstone {
            kept.push(last_before);
        }
    }
    kept.extend_from_slice(&revisions[first_after..]);
    kept
}

fn change(revision: &KeyRevision) -> Result<ImportedChange, String> {
    let where_ = || {
        format!(
            "key {} at revision {}.{}",
            printable(&revision.key),
            revision.main,
            revision.sub
        )
    };
    let sub = u32::try_from(revision.sub).map_err(|_| format!("{}: sub revision out of range", where_()))?;
    if revision.tombstone {
        return Ok(ImportedChange {
            mod_revision: revision.main,
            sub,
            create_revision: 0,
            version: 0,
            lease: 0,
            value: None,
        });
    }
    if revision.mod_revision != revision.main {
        return Err(format!(
            "{}: its record says mod revision {}",
            where_(),
            revision.mod_revision
        ));
    }
    Ok(ImportedChange {
        mod_revision: revision.main,
        sub,
        create_revision: revision.create_revision,
        version: revision.version,
        lease: revision.lease,
        value: Some(revision.value.clone()),
    })
}

/// A key for an error message: as text when it is printable, else in hex.
fn printable(key: &[u8]) -> String {
    match std::str::from_utf8(key) {
        Ok(text) if !text.chars().any(char::is_control) => format!("{text:?}"),
        _ => key.iter().map(|byte| format!("{byte:02x}")).collect(),
    }
}

#[cfg(test)]
mod tests {
    use synod_etcd_db::EtcdLease;
    use synod_kv::RangeRequest;

    use super::*;

    fn put(main: i64, key: &str, create: i64, version: i64, lease: i64) -> KeyRevision {
        KeyRevision {
            main,
            sub: 0,
            tombstone: false,
            key: key.as_bytes().to_vec(),
            create_revision: create,
            mod_revision: main,
            version,
            value: format!("{key}@{main}").into_bytes(),
            lease,
        }
    }

    fn delete(main: i64, key: &str) -> KeyRevision {
        KeyRevision {
            main,
            sub: 0,
            tombstone: true,
            key: key.as_bytes().to_vec(),
            create_revision: 0,
            mod_revision: 0,
            version: 0,
            value: Vec::new(),
            lease: 0,
        }
    }

    fn db(revisions: Vec<KeyRevision>, compacted_at: Option<i64>) -> EtcdDb {
        EtcdDb {
            revisions,
            leases: vec![EtcdLease { id: 7, ttl_seconds: 60 }],
            scheduled_compact_revision: compacted_at,
            finished_compact_revision: None,
            consistent_index: None,
            hash_verified: true,
        }
    }

    fn store_of(db: &EtcdDb) -> Result<Store, String> {
        let state = imported_state(db, 1)?;
        Store::import(crate::node::kv_config(), &state).map_err(|error| error.to_string())
    }

    fn value_at(store: &Store, key: &str, revision: i64) -> Option<Vec<u8>> {
        let response = store
            .range(&RangeRequest {
                key: key.as_bytes().to_vec(),
                revision,
                ..RangeRequest::default()
            })
            .ok()?;
        response.kvs.first().map(|kv| kv.value.clone())
    }

    #[test]
    fn a_finished_compaction_keeps_what_etcd_keeps() {
        // a: put 2, put 3, put 5 (compacted at 4: 3 and 5 stay);
        // b: put 2, delete 3 (gone); c: put 4 on lease 7.
        let revisions = vec![
            put(2, "a", 2, 1, 0),
            put(2, "b", 2, 1, 0),
            put(3, "a", 2, 2, 0),
            delete(3, "b"),
            put(4, "c", 4, 1, 7),
            put(5, "a", 2, 3, 0),
        ];
        let store = store_of(&db(revisions, Some(4))).unwrap();
        assert_eq!(store.revision(), 5);
        assert_eq!(store.compact_revision(), 4);
        assert_eq!(value_at(&store, "a", 0), Some(b"a@5".to_vec()));
        assert_eq!(value_at(&store, "a", 4), Some(b"a@3".to_vec()));
        assert_eq!(value_at(&store, "b", 0), None);
        assert_eq!(store.lease(7).map(|lease| lease.keys.len()), Some(1));
        assert_eq!(store.indexed_keys(), 2, "b's tombstone is compacted away");
    }

    #[test]
    fn a_key_on_a_missing_lease_is_named() {
        let reason = store_of(&db(vec![put(2, "x", 2, 1, 9)], None)).err().unwrap();
        assert!(reason.contains("\"x\"") && reason.contains("lease 9"), "{reason}");
    }

    #[test]
    fn a_record_whose_mod_revision_disagrees_is_refused() {
        let mut wrong = put(3, "x", 3, 1, 0);
        wrong.mod_revision = 2;
        let reason = store_of(&db(vec![wrong], None)).err().unwrap();
        assert!(reason.contains("mod revision 2"), "{reason}");
    }

    #[test]
    fn an_empty_database_imports_at_revision_one() {
        let store = store_of(&db(Vec::new(), None)).unwrap();
        assert_eq!(store.revision(), 1);
    }
}
