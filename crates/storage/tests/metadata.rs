//! Acceptor metadata: two copies, one bad, both bad.

use std::sync::Arc;

use synod_paxos::{Ballot, Instance, NodeId, Voting};
use synod_storage::*;

fn setup() -> (SimDisk, Arc<dyn Disk>) {
    let sim = SimDisk::new(21, FaultConfig::default());
    let disk: Arc<dyn Disk> = Arc::new(sim.clone());
    (sim, disk)
}

fn metadata(round: u64) -> AcceptorMetadata {
    AcceptorMetadata {
        promised: Ballot::new(round, 2, NodeId(3)),
        incarnation: round * 10,
        voting: if round.is_multiple_of(2) {
            Voting::Voter
        } else {
            Voting::LearnUntil(Instance(round * 7))
        },
    }
}

#[test]
fn fresh_then_written_values_reload() {
    let (_, disk) = setup();
    let (mut store, load) = MetadataStore::open(disk.clone(), false).unwrap();
    assert!(load.fresh);
    assert_eq!(load.metadata, AcceptorMetadata::default());
    for round in 1..=5 {
        store.write(&metadata(round)).unwrap();
    }
    drop(store);
    let (store, load) = MetadataStore::open(disk, false).unwrap();
    assert!(!load.fresh);
    assert_eq!(load.repaired_copy, None);
    assert_eq!(load.metadata, metadata(5));
    assert_eq!(store.current(), metadata(5));
}

#[test]
fn every_write_updates_both_copies() {
    let (sim, disk) = setup();
    let (mut store, _) = MetadataStore::open(disk, false).unwrap();
    store.write(&metadata(1)).unwrap();
    let a = sim.contents(METADATA_FILES[0]).unwrap();
    let b = sim.contents(METADATA_FILES[1]).unwrap();
    store.write(&metadata(2)).unwrap();
    assert_ne!(sim.contents(METADATA_FILES[0]).unwrap(), a);
    assert_ne!(sim.contents(METADATA_FILES[1]).unwrap(), b);
}

#[test]
fn one_bad_copy_falls_back_to_the_other_and_is_repaired() {
    for bad_file in METADATA_FILES {
        let (sim, disk) = setup();
        let (mut store, _) = MetadataStore::open(disk.clone(), false).unwrap();
        store.write(&metadata(1)).unwrap();
        store.write(&metadata(2)).unwrap();
        drop(store);
        sim.flip_bit(bad_file, 30, 4).unwrap();
        let (_, load) = MetadataStore::open(disk.clone(), true).unwrap();
        let (name, reason) = load.repaired_copy.expect("one copy was bad");
        assert_eq!(name, bad_file);
        assert!(reason.contains("checksum"), "{reason}");
        // Both copies held the newest value: damage to either loses nothing.
        assert_eq!(load.metadata, metadata(2));
        let (_, load) = MetadataStore::open(disk, true).unwrap();
        assert_eq!(load.repaired_copy, None, "repaired on the previous open");
    }
}

#[test]
fn damage_found_later_in_either_copy_never_rolls_a_promise_back() {
    for bad_file in METADATA_FILES {
        let (sim, disk) = setup();
        let (mut store, _) = MetadataStore::open(disk.clone(), false).unwrap();
        store.write(&metadata(1)).unwrap();
        store.write(&metadata(2)).unwrap();
        drop(store);
        sim.flip_bit(bad_file, 40, 0).unwrap();
        let (_, load) = MetadataStore::open(disk, true).unwrap();
        assert_eq!(load.metadata, metadata(2));
    }
}

#[test]
fn a_torn_metadata_write_keeps_the_other_copy() {
    let faults = FaultConfig {
        torn_write_probability: 1.0,
        ..FaultConfig::default()
    };
    for seed in 0..10 {
        let sim = SimDisk::new(seed, faults.clone());
        let disk: Arc<dyn Disk> = Arc::new(sim.clone());
        let (mut store, _) = MetadataStore::open(disk.clone(), false).unwrap();
        store.write(&metadata(1)).unwrap();
        // The update's first copy fails to sync: it is torn on crash, and the
        // other copy still holds the previous value.
        sim.schedule_error(METADATA_FILES[0], Operation::Sync);
        assert!(store.write(&metadata(2)).is_err());
        sim.crash();
        let (_, load) = MetadataStore::open(disk, true).unwrap();
        assert_eq!(load.metadata, metadata(1));
    }
}

#[test]
fn both_copies_bad_refuses_to_start_and_names_the_files() {
    let (sim, disk) = setup();
    let (mut store, _) = MetadataStore::open(disk.clone(), false).unwrap();
    store.write(&metadata(1)).unwrap();
    drop(store);
    sim.flip_bit(METADATA_FILES[0], 20, 1).unwrap();
    sim.put(METADATA_FILES[1], b"short");
    let error = MetadataStore::open(disk, true).unwrap_err();
    let message = error.to_string();
    assert!(matches!(error, StorageError::MetadataUnrecoverable { .. }));
    assert!(message.contains(METADATA_FILES[0]), "{message}");
    assert!(message.contains(METADATA_FILES[1]), "{message}");
}

#[test]
fn missing_metadata_beside_a_log_is_loss_not_a_fresh_start() {
    let (_, disk) = setup();
    let error = MetadataStore::open(disk, true).unwrap_err();
    assert!(matches!(error, StorageError::MetadataUnrecoverable { .. }));
}

#[test]
fn a_failed_metadata_sync_stops_the_store() {
    let (sim, disk) = setup();
    let (mut store, _) = MetadataStore::open(disk, false).unwrap();
    store.write(&metadata(1)).unwrap();
    sim.schedule_error(METADATA_FILES[1], Operation::Sync);
    assert!(store.write(&metadata(2)).unwrap_err().is_sync_failure());
    assert!(matches!(store.write(&metadata(3)), Err(StorageError::Stopped { .. })));
}
