//! Property tests: recovery after random crash points on SimDisk, and
//! decoders fed damaged files.

use std::collections::BTreeMap;
use std::sync::Arc;

use bytes::Bytes;
use proptest::prelude::*;
use synod_paxos::{Ballot, Instance, NodeId};
use synod_storage::*;

#[derive(Clone, Debug)]
enum Step {
    Append {
        value_bytes: usize,
    },
    Commit,
    Sync,
    Crash,
    /// The next sync hits EIO on the log or identifier file, on the write or
    /// the sync; the replica then crashes.
    FailingSync {
        identifiers: bool,
        on_sync: bool,
    },
}

fn step() -> impl Strategy<Value = Step> {
    prop_oneof![
        6 => (0usize..400).prop_map(|value_bytes| Step::Append { value_bytes }),
        1 => Just(Step::Commit),
        3 => Just(Step::Sync),
        1 => Just(Step::Crash),
        1 => (any::<bool>(), any::<bool>())
            .prop_map(|(identifiers, on_sync)| Step::FailingSync { identifiers, on_sync }),
    ]
}

fn config() -> WalConfig {
    WalConfig {
        segment_bytes_max: 4096,
        value_bytes_max: 4096,
        preallocate_bytes: 1024,
    }
}

fn value_of(instance: u64, value_bytes: usize) -> Bytes {
    Bytes::from(
        (0..value_bytes)
            .map(|i| (instance as u8) ^ (i as u8))
            .collect::<Vec<u8>>(),
    )
}

struct Model {
    /// Everything ever appended (each instance once, so values are unique).
    appended: BTreeMap<Instance, Bytes>,
    /// What a sync reported durable, or a recovery found.
    durable: BTreeMap<Instance, Bytes>,
    staged: Vec<(Instance, Bytes)>,
    committed_durable: Instance,
    committed_staged: Instance,
}

fn check_recovery(model: &mut Model, recovery: &Recovery) -> std::result::Result<(), TestCaseError> {
    prop_assert!(
        recovery.corrupted.is_empty(),
        "crashes alone corrupt nothing: {:?}",
        recovery.corrupted
    );
    for (instance, value) in &model.durable {
        let found = recovery.accepted.get(instance);
        prop_assert!(found.is_some(), "synced instance {instance} lost");
        prop_assert_eq!(&found.unwrap().value, value);
    }
    for (instance, found) in &recovery.accepted {
        prop_assert_eq!(
            model.appended.get(instance),
            Some(&found.value),
            "instance {} invented",
            instance
        );
    }
    prop_assert!(recovery.committed_through >= model.committed_durable);
    prop_assert!(recovery.committed_through <= model.committed_staged.max(model.committed_durable));
    model.durable = recovery
        .accepted
        .iter()
        .map(|(instance, accepted)| (*instance, accepted.value.clone()))
        .collect();
    model.committed_durable = recovery.committed_through;
    model.committed_staged = recovery.committed_through;
    model.staged.clear();
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 200, ..ProptestConfig::default() })]

    #[test]
    fn synced_records_survive_crashes_and_nothing_is_invented(
        seed in any::<u64>(),
        steps in proptest::collection::vec(step(), 1..120),
    ) {
        let faults = FaultConfig { torn_write_probability: 0.7, ..FaultConfig::default() };
        let sim = SimDisk::new(seed, faults);
        let disk: Arc<dyn Disk> = Arc::new(sim.clone());
        let (mut wal, recovery) = Wal::open(disk.clone(), config()).unwrap();
        prop_assert!(recovery.accepted.is_empty());
        let mut model = Model {
            appended: BTreeMap::new(),
            durable: BTreeMap::new(),
            staged: Vec::new(),
            committed_durable: Instance::ZERO,
            committed_staged: Instance::ZERO,
        };
        let mut next_instance = 1u64;
        let ballot = Ballot::new(1, 1, NodeId(1));
        let mut steps = steps;
        steps.push(Step::Crash);
        for step in steps {
            let crash = match step {
                Step::Append { value_bytes } => {
                    let instance = Instance(next_instance);
                    next_instance += 1;
                    let value = value_of(instance.0, value_bytes);
                    wal.append(&Record::Accepted { instance, ballot, value: value.clone() }).unwrap();
                    model.appended.insert(instance, value.clone());
                    model.staged.push((instance, value));
                    false
                }
                Step::Commit => {
                    let through = Instance(next_instance - 1);
                    wal.append(&Record::Committed { through }).unwrap();
                    model.committed_staged = model.committed_staged.max(through);
                    false
                }
                Step::Sync => {
                    wal.sync().unwrap();
                    model.durable.extend(model.staged.drain(..));
                    model.committed_durable = model.committed_staged;
                    false
                }
                Step::Crash => true,
                Step::FailingSync { identifiers, on_sync } => {
                    if wal.staged_records() > 0 {
                        // The identifiers' write lies past the identifier
                        // base; their sync follows the frames'.
                        let (file, identifier_base) = wal.active_file();
                        match (identifiers, on_sync) {
                            (false, on_sync) => {
                                let operation = if on_sync { Operation::Sync } else { Operation::Write };
                                sim.schedule_error(&file, operation);
                            }
                            (true, true) => sim.schedule_error_where(&file, Operation::Sync, 1, 0),
                            (true, false) => sim.schedule_error_where(&file, Operation::Write, 0, identifier_base),
                        }
                        prop_assert!(wal.sync().is_err());
                    }
                    true
                }
            };
            if crash {
                drop(wal);
                sim.crash();
                let (reopened, recovery) = Wal::open(disk.clone(), config()).unwrap();
                check_recovery(&mut model, &recovery)?;
                wal = reopened;
            }
        }
    }

    #[test]
    fn under_random_faults_damage_is_reported_and_nothing_is_invented(
        seed in any::<u64>(),
        steps in proptest::collection::vec(step(), 1..120),
        write_bit_flip_probability in 0.0..0.05f64,
        read_bit_flip_probability in 0.0..0.05f64,
        sync_error_probability in 0.0..0.05f64,
        torn_write_probability in 0.0..1.0f64,
    ) {
        let faults = FaultConfig {
            write_bit_flip_probability,
            read_bit_flip_probability,
            sync_error_probability,
            torn_write_probability,
            ..FaultConfig::default()
        };
        run_with_faults(seed, steps, faults, true)?;
    }

    /// Misdirected writes can lose an acknowledged batch silently (its
    /// identifiers written elsewhere look like a crash before they were
    /// written); recovery must still start, and never invent a value.
    #[test]
    fn with_misdirected_writes_recovery_starts_and_invents_nothing(
        seed in any::<u64>(),
        steps in proptest::collection::vec(step(), 1..120),
        misdirected_write_probability in 0.0..0.05f64,
        write_bit_flip_probability in 0.0..0.02f64,
        torn_write_probability in 0.0..1.0f64,
    ) {
        let faults = FaultConfig {
            misdirected_write_probability,
            write_bit_flip_probability,
            torn_write_probability,
            ..FaultConfig::default()
        };
        run_with_faults(seed, steps, faults, false)?;
    }

    #[test]
    fn damaged_log_files_never_panic(
        seed in any::<u64>(),
        damage in proptest::collection::vec((any::<bool>(), any::<prop::sample::Index>(), any::<u8>()), 1..20),
        cut in proptest::option::of(any::<prop::sample::Index>()),
    ) {
        let sim = SimDisk::new(seed, FaultConfig::default());
        let disk: Arc<dyn Disk> = Arc::new(sim.clone());
        let (mut wal, _) = Wal::open(disk.clone(), config()).unwrap();
        for instance in 1..=30u64 {
            wal.append(&Record::Accepted {
                instance: Instance(instance),
                ballot: Ballot::new(instance, 0, NodeId(2)),
                value: value_of(instance, 100),
            }).unwrap();
            if instance % 4 == 0 {
                wal.sync().unwrap();
            }
        }
        wal.sync().unwrap();
        drop(wal);
        let names: Vec<String> = disk.list().unwrap();
        for (identifiers, position, byte) in damage {
            let candidates: Vec<&String> = names.iter().filter(|n| n.ends_with(".log")).collect();
            let name = candidates[position.index(candidates.len())];
            let mut bytes = sim.contents(name).unwrap();
            // A byte of the frame region, or of the identifier region.
            let base = (config().identifier_base() as usize).min(bytes.len());
            let region = if identifiers { base..bytes.len() } else { 0..base };
            if region.is_empty() {
                continue;
            }
            let at = region.start + position.index(region.len());
            bytes[at] ^= byte | 1;
            sim.put(name, &bytes);
        }
        if let Some(cut) = cut {
            let name = &names[cut.index(names.len())];
            let bytes = sim.contents(name).unwrap();
            sim.put(name, &bytes[..cut.index(bytes.len() + 1)]);
        }
        match Wal::open(disk.clone(), config()) {
            Ok((_, recovery)) => {
                // Whatever survived is what was written.
                for (instance, accepted) in &recovery.accepted {
                    prop_assert_eq!(&accepted.value, &value_of(instance.0, 100));
                    prop_assert_eq!(accepted.ballot.round, instance.0);
                }
            }
            Err(error) => {
                let _ = error.to_string();
            }
        }
    }

    #[test]
    fn damaged_metadata_and_snapshots_never_panic(
        bytes in proptest::collection::vec(any::<u8>(), 0..200),
        flips in proptest::collection::vec(any::<prop::sample::Index>(), 0..4),
    ) {
        let sim = SimDisk::new(1, FaultConfig::default());
        let disk: Arc<dyn Disk> = Arc::new(sim.clone());
        sim.put(METADATA_FILES[0], &bytes);
        sim.put(METADATA_FILES[1], &bytes);
        let _ = MetadataStore::open(disk.clone(), true);

        let store = SnapshotStore::open(disk.clone(), 64).unwrap();
        let mut writer = store.begin(Instance(9)).unwrap();
        writer.write(&[5u8; 300]).unwrap();
        writer.finish().unwrap();
        let name = "snapshot-00000000000000000009.snap";
        let mut file = sim.contents(name).unwrap();
        for flip in flips {
            let at = flip.index(file.len());
            file[at] ^= 0x55;
        }
        sim.put(name, &file);
        if let Ok(Some(reader)) = store.latest() {
            for index in 0..reader.manifest().chunk_count.min(100) {
                let _ = reader.chunk(index);
            }
        }
        sim.put("snapshot-incoming.partial", &file);
        let _ = store.installer().map(|installer| installer.progress());
        sim.put("snapshot-incoming.partial", &bytes);
        let _ = store.installer().map(|installer| installer.progress());
    }
}

#[derive(Clone, Debug)]
enum TransferStep {
    /// Deliver this many chunks from the current peer.
    Deliver(u8),
    /// The receiver crashes and restarts.
    Crash,
    /// The current peer dies; switch to the other one.
    SwitchPeer,
}

fn transfer_step() -> impl Strategy<Value = TransferStep> {
    prop_oneof![
        4 => (1u8..6).prop_map(TransferStep::Deliver),
        1 => Just(TransferStep::Crash),
        1 => Just(TransferStep::SwitchPeer),
    ]
}

fn peer(seed: u64, instance: u64, state: &[u8]) -> SnapshotReader {
    let disk: Arc<dyn Disk> = Arc::new(SimDisk::new(seed, FaultConfig::default()));
    let store = SnapshotStore::open(disk, 64).unwrap();
    let mut writer = store.begin(Instance(instance)).unwrap();
    writer.write(state).unwrap();
    writer.finish().unwrap();
    store.latest().unwrap().unwrap()
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 200, ..ProptestConfig::default() })]

    #[test]
    fn a_transfer_survives_crashes_and_peer_switches(
        seed in any::<u64>(),
        first_bytes in 0usize..2000,
        second_bytes in 0usize..2000,
        steps in proptest::collection::vec(transfer_step(), 0..40),
    ) {
        let first_state: Vec<u8> = (0..first_bytes).map(|i| (i % 251) as u8).collect();
        let second_state: Vec<u8> = (0..second_bytes).map(|i| (i % 241) as u8 ^ 0x5a).collect();
        // Two peers: one with an older snapshot, one that moved on.
        let peers = [peer(1, 40, &first_state), peer(2, 90, &second_state)];
        let states = [&first_state, &second_state];
        let mut current = 0usize;

        let sim = SimDisk::new(seed, FaultConfig { torn_write_probability: 0.5, ..FaultConfig::default() });
        let disk: Arc<dyn Disk> = Arc::new(sim.clone());
        let mut store = SnapshotStore::open(disk.clone(), 64).unwrap();
        let mut installer = store.installer().unwrap();
        let mut step = installer.begin(peers[current].manifest()).unwrap();
        let mut steps = steps;
        // Finally deliver everything from whichever peer is current.
        steps.push(TransferStep::Deliver(u8::MAX));
        for transfer in steps {
            match transfer {
                TransferStep::Deliver(count) => {
                    for _ in 0..count {
                        let InstallStep::NeedChunk(index) = step else { break };
                        step = installer.accept(&peers[current].chunk(index).unwrap()).unwrap();
                    }
                }
                TransferStep::Crash => {
                    drop(installer);
                    sim.crash();
                    store = SnapshotStore::open(disk.clone(), 64).unwrap();
                    installer = store.installer().unwrap();
                    // The restarted replica asks its peer again; progress
                    // on disk is kept when the peer offers the same snapshot.
                    step = installer.begin(peers[current].manifest()).unwrap();
                }
                TransferStep::SwitchPeer => {
                    current = 1 - current;
                    step = installer.begin(peers[current].manifest()).unwrap();
                    if let InstallStep::NeedChunk(index) = step {
                        prop_assert_eq!(index, 0, "a different snapshot starts over");
                    }
                }
            }
        }
        prop_assert_eq!(step, InstallStep::Complete);
        let finished = installer.install().unwrap();
        prop_assert_eq!(finished.instance(), peers[current].manifest().instance);
        sim.crash();
        let store = SnapshotStore::open(disk, 64).unwrap();
        let (instance, state) = store.load_latest().unwrap().unwrap();
        prop_assert_eq!(instance, peers[current].manifest().instance);
        prop_assert_eq!(&state, states[current]);
    }
}

/// Runs `steps` on a SimDisk with `faults`, crashing and recovering where
/// they say (and after every failed sync), and checks each recovery: it
/// starts, every value it returns was appended, and (if
/// `synced_survive_or_are_reported`) every synced record is recovered or
/// reported as damaged.
fn run_with_faults(
    seed: u64,
    steps: Vec<Step>,
    faults: FaultConfig,
    synced_survive_or_are_reported: bool,
) -> std::result::Result<(), TestCaseError> {
    let sim = SimDisk::new(seed, faults);
    let disk: Arc<dyn Disk> = Arc::new(sim.clone());
    let open = |disk: &Arc<dyn Disk>| {
        // A failed open (a sync error while it repairs files, or a read
        // bit flip in a header) stops the process, which the simulator
        // models as a crash; the restart reads again.
        let mut last = None;
        for _ in 0..5 {
            match Wal::open(disk.clone(), config()) {
                Ok(opened) => return Ok(opened),
                Err(error) => {
                    sim.crash();
                    last = Some(error);
                }
            }
        }
        Err(last.expect("tried"))
    };
    let (mut wal, _) = open(&disk).unwrap();
    let mut appended: BTreeMap<Instance, Bytes> = BTreeMap::new();
    let mut durable: BTreeMap<Instance, Bytes> = BTreeMap::new();
    let mut staged: Vec<(Instance, Bytes)> = Vec::new();
    let mut next_instance = 1u64;
    let ballot = Ballot::new(1, 1, NodeId(1));
    let mut steps = steps;
    steps.push(Step::Crash);
    for step in steps {
        let crash = match step {
            Step::Append { value_bytes } => {
                let instance = Instance(next_instance);
                next_instance += 1;
                let value = value_of(instance.0, value_bytes);
                appended.insert(instance, value.clone());
                match wal.append(&Record::Accepted {
                    instance,
                    ballot,
                    value: value.clone(),
                }) {
                    Ok(()) => {
                        staged.push((instance, value));
                        false
                    }
                    Err(_) => true,
                }
            }
            Step::Commit => wal
                .append(&Record::Committed {
                    through: Instance(next_instance - 1),
                })
                .is_err(),
            Step::Sync => match wal.sync() {
                Ok(()) => {
                    durable.extend(staged.drain(..));
                    false
                }
                Err(_) => true,
            },
            Step::Crash | Step::FailingSync { .. } => true,
        };
        if crash {
            drop(wal);
            sim.crash();
            let opened = open(&disk);
            prop_assert!(opened.is_ok(), "recovery failed: {:?}", opened.err());
            let (reopened, recovery) = opened.unwrap();
            for (instance, found) in &recovery.accepted {
                prop_assert_eq!(
                    appended.get(instance),
                    Some(&found.value),
                    "instance {} invented",
                    instance
                );
                prop_assert_eq!(found.ballot, ballot);
            }
            let unknown_damage = recovery.corrupted.iter().any(|c| c.instance.is_none());
            for instance in durable.keys() {
                let reported = recovery.corrupted.iter().any(|c| c.instance == Some(*instance));
                prop_assert!(
                    !synced_survive_or_are_reported
                        || recovery.accepted.contains_key(instance)
                        || reported
                        || unknown_damage,
                    "synced instance {} silently lost; faults {:?}",
                    instance,
                    sim.fault_counts()
                );
            }
            durable = recovery
                .accepted
                .iter()
                .map(|(instance, accepted)| (*instance, accepted.value.clone()))
                .collect();
            staged.clear();
            wal = reopened;
        }
    }
    Ok(())
}

/// Damage done to one of a log's files, at a position taken modulo its
/// length.
#[derive(Clone, Debug)]
enum Damage {
    FlipBit {
        file: usize,
        at: u64,
        bit: u8,
    },
    Overwrite {
        file: usize,
        at: u64,
        length: usize,
        byte: u8,
    },
    /// The file is gone (recovery fails if it was a closed segment's).
    Remove {
        file: usize,
    },
}

fn damage() -> impl Strategy<Value = Damage> {
    prop_oneof![
        3 => (any::<usize>(), any::<u64>(), 0u8..8).prop_map(|(file, at, bit)| Damage::FlipBit { file, at, bit }),
        1 => (any::<usize>(), any::<u64>(), 1usize..200, prop_oneof![Just(0u8), Just(0xFF), any::<u8>()])
            .prop_map(|(file, at, length, byte)| Damage::Overwrite { file, at, length, byte }),
        // A file removed (rarely: that usually ends recovery) or its header
        // damaged.
        1 => (any::<usize>(), 0u8..4).prop_map(|(file, chance)| match chance {
            0 => Damage::Remove { file },
            _ => Damage::FlipBit { file, at: 0, bit: 0 },
        }),
    ]
}

/// The log's files as recovery left them.
fn wal_files(disk: &Arc<dyn Disk>) -> BTreeMap<String, Vec<u8>> {
    disk.list()
        .unwrap()
        .into_iter()
        .filter(|name| name.starts_with("wal-"))
        .map(|name| {
            let file = disk.open(&name).unwrap();
            let bytes = file.read_all(u64::MAX, "wal file").unwrap();
            (name, bytes)
        })
        .collect()
}

/// Opens the log twice (the second time sees the first one's repairs).
fn recover_twice(disk: &Arc<dyn Disk>) -> Vec<String> {
    (0..2)
        .map(|_| match Wal::open(disk.clone(), config()) {
            Ok((_, recovery)) => format!("{recovery:?}"),
            Err(error) => format!("error: {error}"),
        })
        .collect()
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 64, ..ProptestConfig::default() })]

    /// On real files recovery verifies closed segments on reader threads;
    /// on a SimDisk on the calling thread alone. Both find the same records
    /// and damage, and leave the same files, whatever the damage.
    #[test]
    fn reader_threads_recover_what_one_thread_recovers(
        records in proptest::collection::vec((0u64..60, 0usize..300, 1u64..4), 1..150),
        damages in proptest::collection::vec(damage(), 0..6),
    ) {
        let sim = SimDisk::new(1, FaultConfig::default());
        let disk: Arc<dyn Disk> = Arc::new(sim.clone());
        let (mut wal, _) = Wal::open(disk.clone(), config()).unwrap();
        for (index, (instance, value_bytes, round)) in records.iter().enumerate() {
            let record = if *value_bytes < 20 {
                Record::Committed { through: Instance(*instance) }
            } else {
                Record::Accepted {
                    instance: Instance(*instance),
                    ballot: Ballot::new(*round, 1, NodeId(1)),
                    value: value_of(*instance, *value_bytes),
                }
            };
            wal.append(&record).unwrap();
            if index % 4 == 3 {
                wal.sync().unwrap();
            }
        }
        wal.sync().unwrap();
        drop(wal);
        let names: Vec<String> = wal_files(&disk).into_keys().collect();
        for damage in &damages {
            let (file, at) = match damage {
                Damage::FlipBit { file, at, .. } | Damage::Overwrite { file, at, .. } => (file, at),
                Damage::Remove { file } => {
                    let _ = disk.remove(&names[file % names.len()]);
                    continue;
                }
            };
            let name = &names[file % names.len()];
            let Some(mut contents) = sim.contents(name) else {
                continue;
            };
            if contents.is_empty() {
                continue;
            }
            let at = (at % contents.len() as u64) as usize;
            match damage {
                Damage::FlipBit { bit, .. } => contents[at] ^= 1 << bit,
                Damage::Overwrite { length, byte, .. } => {
                    let end = (at + length).min(contents.len());
                    contents[at..end].fill(*byte);
                }
                Damage::Remove { .. } => unreachable!("handled above"),
            }
            sim.put(name, &contents);
        }

        let directory = std::env::temp_dir().join(format!(
            "synod-storage-test-{}-readers-{}",
            std::process::id(),
            NEXT_DIRECTORY.fetch_add(1, std::sync::atomic::Ordering::Relaxed)
        ));
        let _ = std::fs::remove_dir_all(&directory);
        std::fs::create_dir_all(&directory).unwrap();
        for (name, contents) in wal_files(&disk) {
            std::fs::write(directory.join(name), contents).unwrap();
        }
        let fs: Arc<dyn Disk> = Arc::new(FsDisk::open(&directory).unwrap());
        prop_assert!(fs.supports_parallel_reads() && !disk.supports_parallel_reads());

        let on_sim = recover_twice(&disk);
        let on_fs = recover_twice(&fs);
        let failed = on_sim[0].starts_with("error");
        prop_assert_eq!(on_sim, on_fs);
        // A recovery that fails at one segment may have had the segments
        // after it verified ahead, and their identifiers repaired, as a
        // successful one would.
        prop_assert!(failed || wal_files(&disk) == wal_files(&fs), "the files differ after recovery");
        drop(fs);
        std::fs::remove_dir_all(&directory).unwrap();
    }
}

static NEXT_DIRECTORY: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
