//! The protocol-aware-recovery matrix (Alagappan et al., FAST 2018): 4 chosen
//! log entries on 3 replicas, each of the 12 copies intact or corrupted, all
//! 4,096 combinations. After a restart of the whole group every entry must come
//! back with its chosen value if any copy of it survived, and otherwise stay
//! unavailable: never a wrong value, never an invented one. The corruption is
//! real: bits flipped in the log records on each replica's (simulated) disk,
//! found by the log's checksums and identifiers at restart.

use std::sync::Arc;
use std::time::Duration;

use synod_paxos::{Ballot, Batch, DurableState, Instance, Meta, NodeId, Persist, Time, Voting};
use synod_sim::group::{numbered_batch, Group};
use synod_storage::{AcceptorStore, AcceptorStoreConfig, Disk, FaultConfig, SimDisk};

const REPLICAS: usize = 3;
const ENTRIES: usize = 4;

fn chosen_batch(ballot: Ballot, instance: u64) -> Batch {
    numbered_batch(ballot, instance)
}

/// Every replica accepted all four entries at `ballot` (a quorum did, so they
/// are chosen), but the master crashed before anyone learned that. Each replica
/// writes them through the storage layer onto its own simulated disk; then the
/// copies marked in `corrupted` get one bit flipped inside their stored record,
/// and the restart reads back whatever the log recovery makes of that.
fn durable_state(ballot: Ballot, corrupted: u16, replica: usize) -> DurableState {
    let sim = SimDisk::new(replica as u64, FaultConfig::default());
    let disk: Arc<dyn Disk> = Arc::new(sim.clone());
    let mut config = AcceptorStoreConfig::default();
    config.wal.preallocate_bytes = 0;
    // Small segments: the simulated disk holds each file, unwritten space
    // before the identifier region included, in memory.
    config.wal.segment_bytes_max = 64 << 10;
    config.wal.value_bytes_max = 4 << 10;
    let (mut store, _) = AcceptorStore::open(disk.clone(), &config).unwrap();
    let mut records = vec![Persist::Meta(Meta {
        promised: ballot,
        incarnation: 1,
        voting: Voting::Voter,
    })];
    for instance in 1..=ENTRIES as u64 {
        records.push(Persist::Accepted {
            instance: Instance(instance),
            ballot,
            batch: chosen_batch(ballot, instance),
        });
    }
    store.write(&records).unwrap();
    store.sync().unwrap();
    for instance in 1..=ENTRIES as u64 {
        let bit = replica * ENTRIES + (instance as usize - 1);
        if corrupted & (1 << bit) != 0 {
            let location = store.wal().locate_accepted(Instance(instance)).unwrap().unwrap();
            // A bit in the middle of the record: the value, not the header.
            let offset = location.offset + location.frame_bytes / 2;
            sim.flip_bit(&location.file, offset, 3).unwrap();
        }
    }
    drop(store);
    let (_, recovered) = AcceptorStore::open(disk, &config).unwrap();
    recovered.durable.expect("the replica has state")
}

#[test]
fn every_corruption_combination_recovers_or_stays_unavailable() {
    let ballot = Ballot::new(1, 1, NodeId(1));
    let (mut recovered, mut unavailable, mut wrong) = (0, 0, 0);
    for corrupted in 0u16..(1 << (REPLICAS * ENTRIES)) {
        let states = (0..REPLICAS)
            .map(|replica| durable_state(ballot, corrupted, replica))
            .collect();
        let mut group = Group::restart(REPLICAS, states, Time::ZERO, |_| {});
        let lost: Vec<bool> = (0..ENTRIES)
            .map(|entry| (0..REPLICAS).all(|replica| corrupted & (1 << (replica * ENTRIES + entry)) != 0))
            .collect();
        let known = |group: &Group, entry: usize| {
            group
                .replicas
                .iter()
                .find_map(|replica| replica.chosen_value(Instance(entry as u64 + 1)).cloned())
        };
        let all_survivors_known =
            |group: &Group| (0..ENTRIES).all(|entry| lost[entry] || known(group, entry).is_some());
        let limit = if lost.iter().any(|lost| *lost) {
            // Give the group ample time to (wrongly) invent a value.
            Duration::from_secs(6)
        } else {
            Duration::from_secs(30)
        };
        group.run_until(Duration::from_millis(2), limit, |group| {
            all_survivors_known(group) && !lost.iter().any(|lost| *lost)
        });
        let mut case_wrong = false;
        for (entry, lost) in lost.iter().enumerate() {
            match known(&group, entry) {
                Some(batch) => {
                    if *lost || batch != chosen_batch(ballot, entry as u64 + 1) {
                        case_wrong = true;
                    }
                }
                None => {
                    if !lost {
                        case_wrong = true;
                    }
                }
            }
        }
        if case_wrong {
            wrong += 1;
            eprintln!("corruption mask {corrupted:#05x}: wrong, lost or invented value");
        } else if lost.iter().any(|lost| *lost) {
            unavailable += 1;
        } else {
            recovered += 1;
        }
    }
    println!("PAR matrix: recovered {recovered}, unavailable {unavailable}, wrong {wrong}");
    assert_eq!(wrong, 0);
    assert_eq!(recovered, 2_401);
    assert_eq!(unavailable, 1_695);
}
