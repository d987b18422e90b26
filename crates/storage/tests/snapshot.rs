//! Snapshots: write, load, verification, transfer with resume and peer switch.

use std::sync::Arc;

use bytes::Bytes;
use synod_paxos::Instance;
use synod_storage::*;

fn setup(seed: u64) -> (SimDisk, Arc<dyn Disk>) {
    let sim = SimDisk::new(seed, FaultConfig::default());
    let disk: Arc<dyn Disk> = Arc::new(sim.clone());
    (sim, disk)
}

fn state(length: usize, salt: u8) -> Vec<u8> {
    (0..length).map(|i| (i as u8).wrapping_mul(31) ^ salt).collect()
}

fn take_snapshot(disk: &Arc<dyn Disk>, instance: u64, data: &[u8]) -> FinishedSnapshot {
    let store = SnapshotStore::open(disk.clone(), 100).unwrap();
    let mut writer = store.begin(Instance(instance)).unwrap();
    for piece in data.chunks(37) {
        writer.write(piece).unwrap();
    }
    writer.finish().unwrap()
}

#[test]
fn a_snapshot_round_trips_in_chunks() {
    let (_, disk) = setup(1);
    let data = state(1234, 1);
    let finished = take_snapshot(&disk, 42, &data);
    assert_eq!(finished.instance(), Instance(42));
    let store = SnapshotStore::open(disk, 100).unwrap();
    let (instance, loaded) = store.load_latest().unwrap().unwrap();
    assert_eq!(instance, Instance(42));
    assert_eq!(loaded, data);
    let reader = store.latest().unwrap().unwrap();
    assert_eq!(reader.manifest().chunk_count, 13);
    assert_eq!(reader.chunk(12).unwrap().data.len(), 34);
}

#[test]
fn an_empty_snapshot_round_trips() {
    let (_, disk) = setup(1);
    take_snapshot(&disk, 3, &[]);
    let store = SnapshotStore::open(disk, 100).unwrap();
    assert_eq!(store.load_latest().unwrap(), Some((Instance(3), Vec::new())));
}

#[test]
fn finishing_keeps_only_the_newest_and_abandoning_keeps_the_old() {
    let (_, disk) = setup(1);
    take_snapshot(&disk, 10, &state(300, 1));
    let store = SnapshotStore::open(disk.clone(), 100).unwrap();
    let mut writer = store.begin(Instance(20)).unwrap();
    writer.write(&state(500, 2)).unwrap();
    drop(writer); // abandoned, e.g. the application failed
    assert_eq!(store.instances().unwrap(), vec![Instance(10)]);
    assert_eq!(store.load_latest().unwrap().unwrap().1, state(300, 1));
    take_snapshot(&disk, 30, &state(500, 3));
    assert_eq!(store.instances().unwrap(), vec![Instance(30)]);
    assert!(!disk.list().unwrap().iter().any(|n| n.ends_with(".tmp")));
}

#[test]
fn a_crash_before_finish_leaves_the_previous_snapshot() {
    let (sim, disk) = setup(1);
    take_snapshot(&disk, 10, &state(300, 1));
    let store = SnapshotStore::open(disk.clone(), 100).unwrap();
    let mut writer = store.begin(Instance(20)).unwrap();
    writer.write(&state(500, 2)).unwrap();
    sim.crash();
    drop(writer);
    let store = SnapshotStore::open(disk.clone(), 100).unwrap();
    assert_eq!(store.load_latest().unwrap(), Some((Instance(10), state(300, 1))));
    assert!(!disk.list().unwrap().iter().any(|n| n.ends_with(".tmp")));
}

#[test]
fn a_corrupt_chunk_is_found_on_load() {
    let (sim, disk) = setup(1);
    take_snapshot(&disk, 10, &state(1000, 1));
    let name = "snapshot-00000000000000000010.snap";
    // Chunk 4's data: header 64 bytes, each chunk 8 + 100 bytes.
    sim.flip_bit(name, 64 + 4 * 108 + 8 + 50, 2).unwrap();
    let store = SnapshotStore::open(disk, 100).unwrap();
    let error = store.load_latest().unwrap_err();
    assert!(matches!(error, StorageError::SnapshotChunkCorrupt { index: 4, .. }));
    let reader = store.latest().unwrap().unwrap();
    assert!(reader.chunk(3).is_ok());
    assert!(reader.chunk(4).is_err());
}

#[test]
fn damaged_snapshot_files_give_typed_errors() {
    let (sim, disk) = setup(1);
    take_snapshot(&disk, 10, &state(1000, 1));
    let name = "snapshot-00000000000000000010.snap";
    let good = sim.contents(name).unwrap();
    let store = SnapshotStore::open(disk, 100).unwrap();

    sim.put(name, &good[..good.len() - 1]);
    assert!(matches!(store.latest(), Err(StorageError::Malformed { .. })));
    sim.put(name, &good[..10]);
    assert!(matches!(store.latest(), Err(StorageError::Truncated { .. })));
    let mut bad = good.clone();
    bad[0] = b'X';
    sim.put(name, &bad);
    assert!(matches!(store.latest(), Err(StorageError::ChecksumMismatch { .. })));
    let crc = crc32c::crc32c(&bad[..24]);
    bad[24..28].copy_from_slice(&crc.to_le_bytes());
    sim.put(name, &bad);
    assert!(matches!(store.latest(), Err(StorageError::BadMagic { .. })));
    // A manifest whose file size overflows, with valid checksums.
    let mut bad = good.clone();
    bad[12..16].copy_from_slice(&1u32.to_le_bytes()); // chunk_bytes = 1
    let crc = crc32c::crc32c(&bad[..24]);
    bad[24..28].copy_from_slice(&crc.to_le_bytes());
    bad[32..40].copy_from_slice(&(1u64 << 62).to_le_bytes());
    bad[40..48].copy_from_slice(&(1u64 << 62).to_le_bytes());
    let crc = crc32c::crc32c(&bad[32..48]);
    bad[48..52].copy_from_slice(&crc.to_le_bytes());
    sim.put(name, &bad);
    assert!(matches!(store.latest(), Err(StorageError::Malformed { .. })));
    // A manifest claiming an absurd size, with valid checksums: refused
    // before any allocation.
    let mut bad = good.clone();
    bad[32..40].copy_from_slice(&u64::MAX.to_le_bytes());
    let crc = crc32c::crc32c(&bad[32..48]);
    bad[48..52].copy_from_slice(&crc.to_le_bytes());
    sim.put(name, &bad);
    assert!(matches!(store.latest(), Err(StorageError::Malformed { .. })));
}

/// Sends chunks `from..until` of `reader` to `installer`.
fn send(reader: &SnapshotReader, installer: &mut SnapshotInstaller, from: u64, until: u64) -> InstallStep {
    let mut step = InstallStep::NeedChunk(from);
    for index in from..until {
        assert_eq!(step, InstallStep::NeedChunk(index));
        step = installer.accept(&reader.chunk(index).unwrap()).unwrap();
    }
    step
}

#[test]
fn transfer_resumes_after_the_receiver_crashes() {
    let (_, sender_disk) = setup(1);
    let data = state(2000, 9);
    take_snapshot(&sender_disk, 50, &data);
    let sender = SnapshotStore::open(sender_disk, 100).unwrap();
    let reader = sender.latest().unwrap().unwrap();
    let manifest = reader.manifest();

    let (receiver_sim, receiver_disk) = setup(2);
    let receiver = SnapshotStore::open(receiver_disk.clone(), 100).unwrap();
    let mut installer = receiver.installer().unwrap();
    assert_eq!(installer.progress(), None);
    assert_eq!(installer.begin(manifest).unwrap(), InstallStep::NeedChunk(0));
    send(&reader, &mut installer, 0, 7);
    drop(installer);
    receiver_sim.crash();

    let receiver = SnapshotStore::open(receiver_disk.clone(), 100).unwrap();
    let mut installer = receiver.installer().unwrap();
    assert_eq!(installer.progress(), Some((manifest, InstallStep::NeedChunk(7))));
    assert_eq!(installer.begin(manifest).unwrap(), InstallStep::NeedChunk(7));
    // Out-of-order and damaged chunks are refused.
    assert!(matches!(
        installer.accept(&reader.chunk(9).unwrap()),
        Err(StorageError::UnexpectedChunk {
            expected: 7,
            got: 9,
            ..
        })
    ));
    let mut damaged = reader.chunk(7).unwrap();
    let mut bytes = damaged.data.to_vec();
    bytes[0] ^= 1;
    damaged.data = Bytes::from(bytes);
    assert!(matches!(
        installer.accept(&damaged),
        Err(StorageError::TransferChunkCorrupt { index: 7, .. })
    ));
    let step = send(&reader, &mut installer, 7, manifest.chunk_count);
    assert_eq!(step, InstallStep::Complete);
    let finished = installer.install().unwrap();
    assert_eq!(finished.instance(), Instance(50));
    assert_eq!(receiver.load_latest().unwrap(), Some((Instance(50), data)));
    assert!(receiver.installer().unwrap().progress().is_none());
}

#[test]
fn transfer_restarts_from_another_peers_newer_snapshot() {
    let (_, first_disk) = setup(1);
    take_snapshot(&first_disk, 50, &state(2000, 1));
    let first = SnapshotStore::open(first_disk, 100).unwrap().latest().unwrap().unwrap();
    let (_, second_disk) = setup(3);
    let newer = state(2500, 2);
    take_snapshot(&second_disk, 80, &newer);
    let second = SnapshotStore::open(second_disk, 100)
        .unwrap()
        .latest()
        .unwrap()
        .unwrap();

    let (_, receiver_disk) = setup(2);
    let receiver = SnapshotStore::open(receiver_disk, 100).unwrap();
    // A snapshot from earlier keeps serving until the new one is installed.
    let mut writer = receiver.begin(Instance(5)).unwrap();
    writer.write(b"old state").unwrap();
    writer.finish().unwrap();

    let mut installer = receiver.installer().unwrap();
    installer.begin(first.manifest()).unwrap();
    send(&first, &mut installer, 0, 5);
    assert!(matches!(installer.install(), Err(StorageError::TransferState { .. })));
    let mut installer = receiver.installer().unwrap();
    assert_eq!(receiver.load_latest().unwrap().unwrap().0, Instance(5));
    // The first peer died; the second has moved on to instance 80.
    assert_eq!(installer.begin(second.manifest()).unwrap(), InstallStep::NeedChunk(0));
    send(&second, &mut installer, 0, second.manifest().chunk_count);
    installer.install().unwrap();
    assert_eq!(receiver.load_latest().unwrap(), Some((Instance(80), newer)));
    assert_eq!(receiver.instances().unwrap(), vec![Instance(80)]);
}

#[test]
fn a_damaged_partial_transfer_resumes_from_its_last_good_chunk() {
    let (_, sender_disk) = setup(1);
    take_snapshot(&sender_disk, 50, &state(2000, 1));
    let reader = SnapshotStore::open(sender_disk, 100)
        .unwrap()
        .latest()
        .unwrap()
        .unwrap();
    let (receiver_sim, receiver_disk) = setup(2);
    let receiver = SnapshotStore::open(receiver_disk, 100).unwrap();
    let mut installer = receiver.installer().unwrap();
    installer.begin(reader.manifest()).unwrap();
    send(&reader, &mut installer, 0, 6);
    drop(installer);
    receiver_sim
        .flip_bit("snapshot-incoming.partial", 64 + 3 * 108 + 20, 0)
        .unwrap();
    let installer = receiver.installer().unwrap();
    assert_eq!(installer.progress().unwrap().1, InstallStep::NeedChunk(3));
}
