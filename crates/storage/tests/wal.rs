//! The write-ahead log on SimDisk: round trips, torn tails, corruption.

use std::sync::Arc;

use bytes::Bytes;
use synod_paxos::{Ballot, Instance, NodeId};
use synod_storage::*;

fn ballot(round: u64) -> Ballot {
    Ballot::new(round, 1, NodeId(1))
}

fn accepted(instance: u64, round: u64, value: &str) -> Record {
    Record::Accepted {
        instance: Instance(instance),
        ballot: ballot(round),
        value: Bytes::from(value.to_string()),
    }
}

fn small_segments() -> WalConfig {
    WalConfig {
        segment_bytes_max: 4096,
        value_bytes_max: 64 << 10,
        preallocate_bytes: 1024,
    }
}

/// The first segment's file.
const SEGMENT: &str = "wal-00000000000000000001.log";

/// Where the identifier region of a segment written with the default
/// configuration starts.
fn identifier_base() -> u64 {
    WalConfig::default().identifier_base()
}

/// The first segment's identifier region (default configuration).
fn identifier_region(sim: &SimDisk) -> Vec<u8> {
    sim.contents(SEGMENT).unwrap()[identifier_base() as usize..].to_vec()
}

/// Replaces the first segment's identifier region (default configuration).
fn put_identifier_region(sim: &SimDisk, region: &[u8]) {
    let mut contents = sim.contents(SEGMENT).unwrap();
    contents.truncate(identifier_base() as usize);
    contents.extend_from_slice(region);
    sim.put(SEGMENT, &contents);
}

fn setup() -> (SimDisk, Arc<dyn Disk>) {
    let sim = SimDisk::new(11, FaultConfig::default());
    let disk: Arc<dyn Disk> = Arc::new(sim.clone());
    (sim, disk)
}

fn write_records(disk: &Arc<dyn Disk>, config: WalConfig, count: u64) -> Wal {
    let (mut wal, _) = Wal::open(disk.clone(), config).unwrap();
    for instance in 1..=count {
        wal.append(&accepted(instance, 1, &format!("value-{instance}")))
            .unwrap();
        if instance % 3 == 0 {
            wal.sync().unwrap();
        }
    }
    wal.append(&Record::Committed {
        through: Instance(count),
    })
    .unwrap();
    wal.sync().unwrap();
    wal
}

#[test]
fn records_survive_reopen_across_segments() {
    let (_, disk) = setup();
    let wal = write_records(&disk, small_segments(), 200);
    assert!(wal.segment_count() >= 3, "segments rotated: {}", wal.segment_count());
    drop(wal);
    let (_, recovery) = Wal::open(disk, small_segments()).unwrap();
    assert_eq!(recovery.accepted.len(), 200);
    assert_eq!(recovery.committed_through, Instance(200));
    assert!(recovery.corrupted.is_empty());
    assert_eq!(recovery.torn_tail_bytes, 0);
    assert_eq!(recovery.accepted[&Instance(77)].value, Bytes::from_static(b"value-77"));
}

#[test]
fn later_record_for_an_instance_supersedes_earlier() {
    let (_, disk) = setup();
    let (mut wal, _) = Wal::open(disk.clone(), WalConfig::default()).unwrap();
    wal.append(&accepted(5, 1, "old")).unwrap();
    wal.append(&accepted(5, 2, "new")).unwrap();
    wal.sync().unwrap();
    drop(wal);
    let (_, recovery) = Wal::open(disk, WalConfig::default()).unwrap();
    let value = &recovery.accepted[&Instance(5)];
    assert_eq!(value.ballot, ballot(2));
    assert_eq!(value.value, Bytes::from_static(b"new"));
}

#[test]
fn whole_frames_without_identifiers_are_kept() {
    let (sim, disk) = setup();
    let (mut wal, _) = Wal::open(disk.clone(), WalConfig::default()).unwrap();
    wal.append(&accepted(1, 1, "durable")).unwrap();
    wal.sync().unwrap();
    // The next batch reaches the log and its sync, but the identifier write
    // fails. Whether or not such a batch was reported durable (its
    // identifiers may also have been lost to a misdirected write after it
    // was), keeping frames that verify is safe and dropping them is not.
    wal.append(&accepted(2, 1, "written")).unwrap();
    wal.append(&accepted(3, 1, "written")).unwrap();
    sim.schedule_error_where(SEGMENT, Operation::Write, 0, identifier_base());
    assert!(wal.sync().is_err());
    assert!(matches!(
        wal.append(&accepted(4, 1, "x")),
        Err(StorageError::Stopped { .. })
    ));
    drop(wal);
    sim.crash();

    let (mut wal, recovery) = Wal::open(disk.clone(), WalConfig::default()).unwrap();
    assert!(recovery.corrupted.is_empty(), "whole frames are not corruption");
    assert_eq!(
        recovery.accepted.keys().copied().collect::<Vec<_>>(),
        vec![Instance(1), Instance(2), Instance(3)]
    );
    assert_eq!(recovery.repaired_identifiers, 2, "their identifiers are written");
    // Appending after recovery works and survives, with every frame matched to
    // its identifier.
    wal.append(&accepted(4, 2, "again")).unwrap();
    wal.sync().unwrap();
    drop(wal);
    let (_, recovery) = Wal::open(disk, WalConfig::default()).unwrap();
    assert_eq!(recovery.accepted.len(), 4);
    assert_eq!(recovery.accepted[&Instance(4)].value, Bytes::from_static(b"again"));
    assert!(recovery.corrupted.is_empty());
    assert_eq!(recovery.torn_tail_bytes, 0);
    assert_eq!(recovery.repaired_identifiers, 0);
}

#[test]
fn an_acknowledged_batch_whose_identifiers_were_lost_survives() {
    let (sim, disk) = setup();
    let (mut wal, _) = Wal::open(disk.clone(), WalConfig::default()).unwrap();
    wal.append(&accepted(1, 1, "first")).unwrap();
    wal.sync().unwrap();
    wal.append(&accepted(2, 1, "acknowledged")).unwrap();
    wal.sync().unwrap();
    drop(wal);
    // A misdirected write (or an operator's mistake) zeroes the identifier
    // region's last slot, the last batch's.
    let mut region = identifier_region(&sim);
    let slots = (region.iter().rposition(|b| *b != 0).unwrap() + 1 - 32).div_ceil(IDENTIFIER_BYTES);
    assert_eq!(slots, 2);
    region[32 + IDENTIFIER_BYTES..32 + 2 * IDENTIFIER_BYTES].fill(0);
    put_identifier_region(&sim, &region);
    let (_, recovery) = Wal::open(disk, WalConfig::default()).unwrap();
    assert_eq!(
        recovery.accepted[&Instance(2)].value,
        Bytes::from_static(b"acknowledged")
    );
    assert!(recovery.corrupted.is_empty());
}

#[test]
fn a_partial_frame_at_the_tail_is_discarded() {
    let (sim, disk) = setup();
    let (mut wal, _) = Wal::open(disk.clone(), WalConfig::default()).unwrap();
    wal.append(&accepted(1, 1, "durable")).unwrap();
    wal.sync().unwrap();
    drop(wal);
    let log = "wal-00000000000000000001.log";
    let mut file = disk.open(log).unwrap();
    let whole = sim.contents(log).unwrap();
    let frames = &whole[..identifier_base() as usize];
    let written_end = frames.iter().rposition(|b| *b != 0).unwrap() + 1;
    // A prefix of a copy of the first frame, as a torn write leaves it.
    file.write_at(written_end as u64, &whole[32..50]).unwrap();
    file.sync().unwrap();
    let (_, recovery) = Wal::open(disk, WalConfig::default()).unwrap();
    assert!(recovery.torn_tail_bytes > 0 && recovery.torn_tail_bytes <= 18);
    assert!(recovery.corrupted.is_empty());
    assert_eq!(recovery.accepted.len(), 1);
}

#[test]
fn a_bit_flip_in_a_middle_entry_is_reported_and_nothing_is_truncated() {
    let (sim, disk) = setup();
    let wal = write_records(&disk, WalConfig::default(), 10);
    let location = wal.locate_accepted(Instance(5)).unwrap().unwrap();
    drop(wal);
    sim.flip_bit(&location.file, location.offset + location.frame_bytes - 2, 3)
        .unwrap();
    let contents = sim.contents(&location.file).unwrap();
    let written_end = contents.iter().rposition(|b| *b != 0).unwrap() + 1;

    for _ in 0..2 {
        let (_, recovery) = Wal::open(disk.clone(), WalConfig::default()).unwrap();
        assert_eq!(recovery.corrupted.len(), 1, "{recovery:?}");
        let corrupt = &recovery.corrupted[0];
        assert_eq!(corrupt.instance, Some(Instance(5)));
        assert_eq!(corrupt.ballot, Some(ballot(1)));
        assert_eq!(corrupt.kind, Some(RecordKind::Accepted));
        assert!(!recovery.accepted.contains_key(&Instance(5)));
        assert_eq!(recovery.accepted.len(), 9);
        assert_eq!(recovery.committed_through, Instance(10));
        assert_eq!(recovery.torn_tail_bytes, 0);
        let contents_after = sim.contents(&location.file).unwrap();
        assert!(contents_after.len() >= written_end);
        assert_eq!(contents_after[..written_end], contents[..written_end]);
    }
}

#[test]
fn a_bit_flip_in_the_last_entry_is_corruption_not_a_torn_tail() {
    let (sim, disk) = setup();
    let (mut wal, _) = Wal::open(disk.clone(), WalConfig::default()).unwrap();
    for instance in 1..=3 {
        wal.append(&accepted(instance, 1, "v")).unwrap();
    }
    wal.sync().unwrap();
    let location = wal.locate_accepted(Instance(3)).unwrap().unwrap();
    drop(wal);
    sim.flip_bit(&location.file, location.offset + 5, 0).unwrap();
    let (_, recovery) = Wal::open(disk, WalConfig::default()).unwrap();
    assert_eq!(recovery.torn_tail_bytes, 0);
    assert_eq!(recovery.corrupted.len(), 1);
    assert_eq!(recovery.corrupted[0].instance, Some(Instance(3)));
}

#[test]
fn a_corrupt_newer_record_hides_the_older_good_one() {
    let (sim, disk) = setup();
    let (mut wal, _) = Wal::open(disk.clone(), WalConfig::default()).unwrap();
    wal.append(&accepted(3, 1, "old")).unwrap();
    wal.append(&accepted(3, 2, "new")).unwrap();
    wal.append(&accepted(4, 2, "other")).unwrap();
    wal.sync().unwrap();
    let location = wal.locate_accepted(Instance(3)).unwrap().unwrap();
    drop(wal);
    sim.flip_bit(&location.file, location.offset + location.frame_bytes - 1, 7)
        .unwrap();
    let (_, recovery) = Wal::open(disk, WalConfig::default()).unwrap();
    assert!(!recovery.accepted.contains_key(&Instance(3)));
    assert_eq!(recovery.corrupted.len(), 1);
    assert_eq!(recovery.corrupted[0].ballot, Some(ballot(2)));
}

#[test]
fn a_damaged_identifier_alone_loses_nothing() {
    let (sim, disk) = setup();
    let wal = write_records(&disk, WalConfig::default(), 6);
    drop(wal);
    sim.flip_bit(SEGMENT, identifier_base() + 32 + 2 * IDENTIFIER_BYTES as u64 + 9, 1)
        .unwrap();
    let (_, recovery) = Wal::open(disk.clone(), WalConfig::default()).unwrap();
    assert_eq!(recovery.corrupt_identifiers, 1);
    assert_eq!(recovery.repaired_identifiers, 1);
    assert!(recovery.corrupted.is_empty());
    assert_eq!(recovery.accepted.len(), 6);
    let (_, recovery) = Wal::open(disk, WalConfig::default()).unwrap();
    assert_eq!(recovery.corrupt_identifiers, 0, "rewritten by the first recovery");
    assert_eq!(recovery.accepted.len(), 6);
}

#[test]
fn identifiers_overwritten_by_misdirected_ones_lose_no_frame() {
    let (sim, disk) = setup();
    let (mut wal, _) = Wal::open(disk.clone(), WalConfig::default()).unwrap();
    for instance in 1..=5 {
        wal.append(&accepted(instance, 1, "first batch")).unwrap();
    }
    wal.sync().unwrap();
    for instance in 6..=7 {
        wal.append(&accepted(instance, 1, "second batch")).unwrap();
    }
    wal.sync().unwrap();
    drop(wal);
    // The second batch's identifiers landed on slots 1 and 2 instead of 5
    // and 6, which stay zero.
    let mut bytes = identifier_region(&sim);
    let slot = |k: usize| 32 + k * IDENTIFIER_BYTES;
    let second: Vec<u8> = bytes[slot(5)..slot(7)].to_vec();
    bytes[slot(1)..slot(3)].copy_from_slice(&second);
    bytes[slot(5)..slot(7)].fill(0);
    put_identifier_region(&sim, &bytes);
    let (_, recovery) = Wal::open(disk.clone(), WalConfig::default()).unwrap();
    assert_eq!(
        recovery.accepted.keys().copied().collect::<Vec<_>>(),
        (1..=7).map(Instance).collect::<Vec<_>>(),
        "{recovery:?}"
    );
    assert!(recovery.corrupted.is_empty());
    assert_eq!(recovery.torn_tail_bytes, 0, "no identified frame is cut off");
    let (_, again) = Wal::open(disk, WalConfig::default()).unwrap();
    assert_eq!(again.accepted.len(), 7);
}

#[test]
fn a_misdirected_write_over_an_old_record_is_reported() {
    let (sim, disk) = setup();
    let wal = write_records(&disk, WalConfig::default(), 6);
    let first = wal.locate_accepted(Instance(1)).unwrap().unwrap();
    let sixth = wal.locate_accepted(Instance(6)).unwrap().unwrap();
    drop(wal);
    // Instance 6's frame landed on top of instance 1's.
    let contents = sim.contents(&first.file).unwrap();
    let frame = &contents[sixth.offset as usize..(sixth.offset + sixth.frame_bytes) as usize];
    let mut file = disk.open(&first.file).unwrap();
    file.write_at(first.offset, frame).unwrap();
    file.sync().unwrap();
    let (_, recovery) = Wal::open(disk, WalConfig::default()).unwrap();
    assert!(recovery.corrupted.iter().any(|c| c.instance == Some(Instance(1))));
}

#[test]
fn a_failed_sync_stops_the_log() {
    let (sim, disk) = setup();
    let (mut wal, _) = Wal::open(disk.clone(), WalConfig::default()).unwrap();
    wal.append(&accepted(1, 1, "v")).unwrap();
    sim.schedule_error("wal-00000000000000000001.log", Operation::Sync);
    let error = wal.sync().unwrap_err();
    assert!(error.is_sync_failure(), "{error}");
    assert!(matches!(wal.sync(), Err(StorageError::Stopped { .. })));
    assert!(matches!(
        wal.append(&accepted(2, 1, "v")),
        Err(StorageError::Stopped { .. })
    ));
}

#[test]
fn oversized_values_are_refused() {
    let (_, disk) = setup();
    let (mut wal, _) = Wal::open(disk, small_segments()).unwrap();
    let error = wal
        .append(&Record::Accepted {
            instance: Instance(1),
            ballot: ballot(1),
            value: Bytes::from(vec![0u8; (64 << 10) + 1]),
        })
        .unwrap_err();
    assert!(matches!(error, StorageError::TooLarge { .. }));
}

#[test]
fn foreign_and_damaged_files_give_typed_errors() {
    // Wrong magic, with a valid header checksum: a foreign file.
    let (sim, disk) = setup();
    drop(write_records(&disk, WalConfig::default(), 3));
    let log = "wal-00000000000000000001.log";
    let mut bytes = sim.contents(log).unwrap();
    bytes[0] ^= 0xff;
    let crc = crc32c::crc32c(&bytes[..24]);
    bytes[24..28].copy_from_slice(&crc.to_le_bytes());
    sim.put(log, &bytes);
    assert!(matches!(
        Wal::open(disk, WalConfig::default()),
        Err(StorageError::BadMagic { .. })
    ));

    // A log header written over the identifier region's header (a
    // misdirected write) is damage, not a foreign file.
    let (sim, disk) = setup();
    drop(write_records(&disk, WalConfig::default(), 3));
    let log_header = sim.contents(log).unwrap()[..32].to_vec();
    let mut ids_bytes = identifier_region(&sim);
    ids_bytes[..32].copy_from_slice(&log_header);
    put_identifier_region(&sim, &ids_bytes);
    let (_, recovery) = Wal::open(disk, WalConfig::default()).unwrap();
    assert_eq!(recovery.damaged_headers, 1);
    assert_eq!(recovery.accepted.len(), 3);

    // A damaged header (checksum mismatch) is counted; the frames are read.
    let (sim, disk) = setup();
    drop(write_records(&disk, WalConfig::default(), 3));
    sim.flip_bit(log, 3, 0).unwrap();
    sim.flip_bit(SEGMENT, identifier_base() + 17, 0).unwrap();
    let (_, recovery) = Wal::open(disk, WalConfig::default()).unwrap();
    assert_eq!(recovery.damaged_headers, 2);
    assert_eq!(recovery.accepted.len(), 3);

    // Unsupported version, with a valid header checksum.
    let (sim, disk) = setup();
    drop(write_records(&disk, WalConfig::default(), 3));
    let mut bytes = sim.contents(log).unwrap();
    bytes[8] = 99;
    let crc = crc32c::crc32c(&bytes[..24]);
    bytes[24..28].copy_from_slice(&crc.to_le_bytes());
    sim.put(log, &bytes);
    assert!(matches!(
        Wal::open(disk, WalConfig::default()),
        Err(StorageError::UnsupportedVersion { found: 99, .. })
    ));

    // A segment far longer than any segment can be: the excess is never
    // read (nor allocated for), the garbage within the bound (in the
    // identifier region, past its identifiers) counts as damaged
    // identifiers, the records are kept.
    let (sim, disk) = setup();
    drop(write_records(&disk, small_segments(), 3));
    let mut bytes = sim.contents(log).unwrap();
    bytes.resize(4 << 20, 0xAB);
    sim.put(log, &bytes);
    sim.put("wal-00000000000000000002.log", &[]);
    let (_, recovery) = Wal::open(disk, small_segments()).unwrap();
    assert!(recovery.oversized_bytes > 3 << 20, "{recovery:?}");
    assert_eq!(recovery.accepted.len(), 3);
    assert!(recovery.corrupt_identifiers > 0, "{recovery:?}");

    // A smaller segment_bytes_max later never cuts an older segment short:
    // its header records the bound it was written with.
    let (_, disk) = setup();
    let roomy = WalConfig {
        segment_bytes_max: 1 << 20,
        ..small_segments()
    };
    drop(write_records(&disk, roomy, 300));
    let (_, recovery) = Wal::open(disk, small_segments()).unwrap();
    assert_eq!(recovery.accepted.len(), 300);
    assert_eq!(recovery.oversized_bytes, 0);

    // A missing middle segment.
    let (sim, disk) = setup();
    drop(write_records(&disk, small_segments(), 200));
    disk.remove("wal-00000000000000000002.log").unwrap();
    let _ = sim;
    assert!(matches!(
        Wal::open(disk, small_segments()),
        Err(StorageError::Malformed { .. })
    ));
}

#[test]
fn a_segment_whose_creation_never_finished_is_replaced() {
    let (sim, disk) = setup();
    drop(write_records(&disk, WalConfig::default(), 3));
    sim.put("wal-00000000000000000002.log", b"SYNOD");
    let (mut wal, recovery) = Wal::open(disk.clone(), WalConfig::default()).unwrap();
    assert_eq!(recovery.accepted.len(), 3);
    wal.append(&accepted(4, 1, "v")).unwrap();
    wal.sync().unwrap();
    drop(wal);
    let (_, recovery) = Wal::open(disk, WalConfig::default()).unwrap();
    assert_eq!(recovery.accepted.len(), 4);

    // Its frame region's header reached the disk, its identifier region's
    // header did not (both are synced at once, in no set order).
    let (sim, disk) = setup();
    drop(write_records(&disk, WalConfig::default(), 3));
    let header = sim.contents(SEGMENT).unwrap()[..32].to_vec();
    sim.put("wal-00000000000000000002.log", &header);
    let (mut wal, recovery) = Wal::open(disk.clone(), WalConfig::default()).unwrap();
    assert_eq!(recovery.accepted.len(), 3);
    assert_eq!(recovery.damaged_headers, 0, "{recovery:?}");
    wal.append(&accepted(4, 1, "v")).unwrap();
    wal.sync().unwrap();
    drop(wal);
    let (_, recovery) = Wal::open(disk, WalConfig::default()).unwrap();
    assert_eq!(recovery.accepted.len(), 4);
    assert!(recovery.corrupted.is_empty());
}

#[test]
fn trim_removes_only_segments_the_snapshot_covers() {
    let (_, disk) = setup();
    let mut wal = write_records(&disk, small_segments(), 200);
    let segments_before = wal.segment_count();
    let snapshots = SnapshotStore::open(disk.clone(), 1024).unwrap();

    // An abandoned snapshot leaves the log as it was.
    let mut writer = snapshots.begin(Instance(150)).unwrap();
    writer.write(b"state").unwrap();
    writer.abandon().unwrap();
    assert_eq!(wal.segment_count(), segments_before);
    assert!(snapshots.latest().unwrap().is_none());

    let mut writer = snapshots.begin(Instance(150)).unwrap();
    writer.write(b"state").unwrap();
    // Appends go on while the snapshot is written.
    wal.append(&accepted(201, 1, "during snapshot")).unwrap();
    wal.sync().unwrap();
    let finished = writer.finish().unwrap();
    let removed = wal.trim(&finished).unwrap();
    assert!(removed > 0);
    assert_eq!(wal.segment_count(), segments_before - removed as usize);
    drop(wal);

    let (_, recovery) = Wal::open(disk, small_segments()).unwrap();
    assert!(recovery.corrupted.is_empty());
    assert!(recovery.accepted.contains_key(&Instance(151)));
    assert!(recovery.accepted.contains_key(&Instance(201)));
    assert!(!recovery.accepted.contains_key(&Instance(1)));
}

#[test]
fn fs_disk_round_trip() {
    let directory = std::env::temp_dir().join(format!("synod-storage-test-{}-fs-round-trip", std::process::id()));
    let _ = std::fs::remove_dir_all(&directory);
    let disk: Arc<dyn Disk> = Arc::new(FsDisk::open(&directory).unwrap());
    assert!(matches!(disk.create("a/b"), Err(StorageError::InvalidName { .. })));
    let wal = write_records(&disk, small_segments(), 200);
    assert!(wal.segment_count() > 2, "recovery reads segments ahead");
    let location = wal.locate_accepted(Instance(50)).unwrap().unwrap();
    drop(wal);
    let (_, recovery) = Wal::open(disk.clone(), small_segments()).unwrap();
    assert_eq!(recovery.accepted.len(), 200);
    assert!(recovery.corrupted.is_empty());
    // A flipped bit in a middle segment, on real files.
    let path = directory.join(&location.file);
    let mut contents = std::fs::read(&path).unwrap();
    contents[(location.offset + location.frame_bytes - 1) as usize] ^= 0x10;
    std::fs::write(&path, &contents).unwrap();
    let (_, recovery) = Wal::open(disk.clone(), small_segments()).unwrap();
    assert_eq!(recovery.accepted.len(), 199);
    assert_eq!(recovery.corrupted.len(), 1);
    assert_eq!(recovery.corrupted[0].instance, Some(Instance(50)));
    let mut file = disk.create("x").unwrap();
    file.write_at(0, b"hello").unwrap();
    file.sync().unwrap();
    disk.rename("x", "y").unwrap();
    assert!(!disk.exists("x").unwrap());
    let file = disk.open("y").unwrap();
    assert_eq!(file.read_all(100, "test").unwrap(), b"hello");
    assert!(matches!(file.read_all(2, "test"), Err(StorageError::TooLarge { .. })));
    disk.remove("y").unwrap();
    assert!(matches!(disk.open("y"), Err(StorageError::NotFound { .. })));
    std::fs::remove_dir_all(&directory).unwrap();
}

#[test]
fn a_transient_read_error_during_recovery_loses_nothing() {
    let (sim, disk) = setup();
    drop(write_records(&disk, WalConfig::default(), 10));
    sim.schedule_error("wal-00000000000000000001.log", Operation::Read);
    sim.schedule_error_where(SEGMENT, Operation::Read, 0, identifier_base());
    let (_, recovery) = Wal::open(disk, WalConfig::default()).unwrap();
    assert_eq!(recovery.accepted.len(), 10);
    assert!(recovery.corrupted.is_empty());
    assert_eq!(recovery.unreadable_bytes, 0);
    assert_eq!(sim.fault_counts().read_errors, 2);
}

#[test]
fn an_unreadable_sector_is_treated_like_a_checksum_mismatch() {
    let (sim, disk) = setup();
    let config = WalConfig::default();
    let (mut wal, _) = Wal::open(disk.clone(), config.clone()).unwrap();
    for instance in 1..=40 {
        wal.append(&accepted(instance, 1, &"x".repeat(300))).unwrap();
    }
    wal.sync().unwrap();
    let location = wal.locate_accepted(Instance(20)).unwrap().unwrap();
    drop(wal);
    sim.set_unreadable(&location.file, location.offset + 10, 1);
    let (_, recovery) = Wal::open(disk.clone(), config.clone()).unwrap();
    assert!(recovery.unreadable_bytes >= 1);
    let damaged: Vec<Option<Instance>> = recovery.corrupted.iter().map(|c| c.instance).collect();
    assert!(damaged.contains(&Some(Instance(20))), "{damaged:?}");
    assert!(recovery.accepted.contains_key(&Instance(1)));
    assert!(recovery.accepted.contains_key(&Instance(40)));

    // An unreadable identifier block loses no record.
    let (sim, disk) = setup();
    let (mut wal, _) = Wal::open(disk.clone(), config.clone()).unwrap();
    for instance in 1..=100 {
        wal.append(&accepted(instance, 1, "v")).unwrap();
    }
    wal.sync().unwrap();
    drop(wal);
    sim.set_unreadable(SEGMENT, identifier_base() + 4096, 1);
    let (_, recovery) = Wal::open(disk, config).unwrap();
    assert_eq!(recovery.accepted.len(), 100);
    assert!(recovery.corrupted.is_empty());
    assert!(recovery.corrupt_identifiers > 0);
}

#[test]
fn segments_of_small_records_have_identifier_files_larger_than_the_log() {
    let (_, disk) = setup();
    let config = WalConfig {
        segment_bytes_max: 8192,
        value_bytes_max: 64,
        preallocate_bytes: 0,
    };
    let (mut wal, _) = Wal::open(disk.clone(), config.clone()).unwrap();
    for through in 1..=2000 {
        wal.append(&Record::Committed {
            through: Instance(through),
        })
        .unwrap();
    }
    wal.sync().unwrap();
    drop(wal);
    let (_, recovery) = Wal::open(disk, config).unwrap();
    assert_eq!(recovery.committed_through, Instance(2000));
    assert_eq!(recovery.records, 2000);
    assert_eq!(recovery.oversized_bytes, 0);
}

#[test]
fn a_data_directory_is_used_by_one_holder_at_a_time() {
    let directory = std::env::temp_dir().join(format!("synod-storage-test-{}-lock", std::process::id()));
    let _ = std::fs::remove_dir_all(&directory);
    let first = FsDisk::open(&directory).unwrap();
    let second = FsDisk::open(&directory).unwrap_err();
    assert!(second.to_string().contains("another process"), "{second}");
    let clone = first.clone();
    drop(first);
    assert!(FsDisk::open(&directory).is_err(), "a clone keeps the lock");
    drop(clone);
    FsDisk::open(&directory).expect("free again once every holder is gone");
    let _ = std::fs::remove_dir_all(&directory);
}

#[test]
fn a_damaged_segment_header_under_a_changed_configuration_still_finds_the_identifiers() {
    // The header records where the identifier region starts; with the header
    // damaged and the configuration changed since, recovery finds the
    // region by its own header instead.
    let (sim, disk) = setup();
    let written_with = WalConfig {
        segment_bytes_max: 1 << 20,
        ..small_segments()
    };
    drop(write_records(&disk, written_with.clone(), 20));
    sim.flip_bit(SEGMENT, 3, 0).unwrap();
    let now = small_segments();
    assert_ne!(now.identifier_base(), written_with.identifier_base());
    let (_, recovery) = Wal::open(disk, now).unwrap();
    assert_eq!(recovery.damaged_headers, 1);
    assert_eq!(recovery.accepted.len(), 20);
    assert!(recovery.corrupted.is_empty(), "{recovery:?}");
    assert_eq!(recovery.corrupt_identifiers, 0);
}

#[test]
fn a_log_in_the_two_file_format_is_refused_with_a_clear_error() {
    let (sim, disk) = setup();
    drop(write_records(&disk, WalConfig::default(), 3));
    sim.put("wal-00000000000000000001.ids", &[0u8; 64]);
    let error = Wal::open(disk, WalConfig::default()).unwrap_err();
    assert!(
        matches!(error, StorageError::UnsupportedVersion { found: 1, .. }),
        "{error}"
    );
    assert!(error.to_string().contains("wal-00000000000000000001.ids"), "{error}");
}

#[test]
fn recovery_reads_a_segment_only_as_far_as_it_was_written() {
    let directory = std::env::temp_dir().join(format!("synod-storage-test-{}-data-end", std::process::id()));
    let _ = std::fs::remove_dir_all(&directory);
    let disk: Arc<dyn Disk> = Arc::new(FsDisk::open(&directory).unwrap());
    let config = WalConfig::default();
    drop(write_records(&disk, config.clone(), 30));
    let file = disk.open(SEGMENT).unwrap();
    let length = file.len().unwrap();
    assert!(
        length > config.identifier_base(),
        "the identifiers lie past the frame region"
    );
    // Where the frames end (or the file's length, on a file system that
    // reports no holes): never short of what was written.
    let frames_end = file.data_end(0).unwrap();
    assert!(frames_end == length || frames_end < config.identifier_base());
    assert!(frames_end >= 32 + 30 * 50);
    drop(file);
    let (_, recovery) = Wal::open(disk, config).unwrap();
    assert_eq!(recovery.accepted.len(), 30);
    assert!(recovery.corrupted.is_empty());
    std::fs::remove_dir_all(&directory).unwrap();
}
