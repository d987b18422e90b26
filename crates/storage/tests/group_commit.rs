//! Group commit: batching, durability before completion, failure handling,
//! over a bare log and over a whole acceptor store.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::mpsc;
use std::sync::{Arc, Condvar, Mutex};
use std::time::Duration;

use bytes::Bytes;
use synod_paxos::{Ballot, Batch, BatchId, Entry, Epoch, Instance, Meta, NodeId, Persist, StoredSlot, Voting};
use synod_storage::*;

/// Wraps a disk, counting syncs, holding each sync for `sync_delay` (as a
/// real disk would) and optionally stalling syncs until a gate opens.
#[derive(Debug, Clone)]
struct CountingDisk {
    inner: Arc<dyn Disk>,
    probe: Arc<Probe>,
}

#[derive(Debug, Default)]
struct Probe {
    syncs: AtomicU64,
    sync_delay_micros: AtomicU64,
    gate_closed: Mutex<bool>,
    gate: Condvar,
    /// The gate closes by itself once this many syncs completed.
    close_gate_at_syncs: Mutex<Option<u64>>,
    fail_syncs: AtomicBool,
}

impl Probe {
    fn close_gate(&self) {
        *self.gate_closed.lock().unwrap() = true;
    }

    fn open_gate(&self) {
        *self.gate_closed.lock().unwrap() = false;
        self.gate.notify_all();
    }
}

#[derive(Debug)]
struct CountingFile {
    inner: Box<dyn File>,
    probe: Arc<Probe>,
}

impl Disk for CountingDisk {
    fn create(&self, name: &str) -> Result<Box<dyn File>> {
        Ok(Box::new(CountingFile {
            inner: self.inner.create(name)?,
            probe: self.probe.clone(),
        }))
    }
    fn open(&self, name: &str) -> Result<Box<dyn File>> {
        Ok(Box::new(CountingFile {
            inner: self.inner.open(name)?,
            probe: self.probe.clone(),
        }))
    }
    fn exists(&self, name: &str) -> Result<bool> {
        self.inner.exists(name)
    }
    fn rename(&self, from: &str, to: &str) -> Result<()> {
        self.inner.rename(from, to)
    }
    fn remove(&self, name: &str) -> Result<()> {
        self.inner.remove(name)
    }
    fn list(&self) -> Result<Vec<String>> {
        self.inner.list()
    }
}

impl File for CountingFile {
    fn name(&self) -> &str {
        self.inner.name()
    }
    fn read_at(&self, offset: u64, buffer: &mut [u8]) -> Result<usize> {
        self.inner.read_at(offset, buffer)
    }
    fn write_at(&mut self, offset: u64, data: &[u8]) -> Result<()> {
        self.inner.write_at(offset, data)
    }
    fn sync(&mut self) -> Result<()> {
        {
            let mut closed = self.probe.gate_closed.lock().unwrap();
            if *self.probe.close_gate_at_syncs.lock().unwrap() == Some(self.probe.syncs.load(Ordering::SeqCst)) {
                *closed = true;
            }
            while *closed {
                closed = self.probe.gate.wait(closed).unwrap();
            }
        }
        let delay = self.probe.sync_delay_micros.load(Ordering::SeqCst);
        if delay > 0 {
            std::thread::sleep(Duration::from_micros(delay));
        }
        if self.probe.fail_syncs.load(Ordering::SeqCst) {
            return Err(StorageError::SyncFailed {
                file: self.name().to_string(),
                source: std::io::Error::other("test EIO"),
            });
        }
        self.probe.syncs.fetch_add(1, Ordering::SeqCst);
        self.inner.sync()
    }
    fn len(&self) -> Result<u64> {
        self.inner.len()
    }
    fn truncate(&mut self, length: u64) -> Result<()> {
        self.inner.truncate(length)
    }
}

fn counting_disk() -> (SimDisk, CountingDisk) {
    let sim = SimDisk::new(5, FaultConfig::default());
    let disk = CountingDisk {
        inner: Arc::new(sim.clone()),
        probe: Arc::new(Probe::default()),
    };
    (sim, disk)
}

/// A group commit over a fresh log on a counting disk.
fn started(config: GroupCommitConfig) -> (SimDisk, CountingDisk, GroupCommit) {
    let (sim, disk) = counting_disk();
    let shared: Arc<dyn Disk> = Arc::new(disk.clone());
    let (wal, _) = Wal::open(shared, WalConfig::default()).unwrap();
    let group = GroupCommit::start(wal, config).unwrap();
    (sim, disk, group)
}

fn record(instance: u64) -> Record {
    Record::Accepted {
        instance: Instance(instance),
        ballot: Ballot::new(1, 1, NodeId(1)),
        value: Bytes::from(vec![7u8; 256]),
    }
}

fn test_config() -> GroupCommitConfig {
    GroupCommitConfig {
        queue_submissions_max: 1024,
        batch_bytes_max: 1 << 20,
        pipeline_batches_max: 2,
        sync_failure_policy: SyncFailurePolicy::Stop,
    }
}

#[test]
fn concurrent_submitters_share_syncs() {
    let (_, disk) = counting_disk();
    disk.probe.sync_delay_micros.store(2000, Ordering::SeqCst);
    let shared: Arc<dyn Disk> = Arc::new(disk.clone());
    let config = WalConfig {
        segment_bytes_max: 64 << 10,
        ..WalConfig::default()
    };
    let (wal, _) = Wal::open(shared.clone(), config.clone()).unwrap();
    let syncs_before = disk.probe.syncs.load(Ordering::SeqCst);
    let group = Arc::new(GroupCommit::start(wal, test_config()).unwrap());
    let submitters = 64u64;
    let per_submitter = 20u64;
    let threads: Vec<_> = (0..submitters)
        .map(|submitter| {
            let group = group.clone();
            std::thread::spawn(move || {
                for i in 0..per_submitter {
                    let receiver = group
                        .submit_and_receive(record(1 + submitter * per_submitter + i))
                        .unwrap();
                    receiver.recv().unwrap().unwrap();
                }
            })
        })
        .collect();
    for thread in threads {
        thread.join().unwrap();
    }
    let group = Arc::into_inner(group).unwrap();
    let (_, stats) = group.stop();
    let records = submitters * per_submitter;
    let syncs = disk.probe.syncs.load(Ordering::SeqCst) - syncs_before;
    assert_eq!(stats.records, records);
    // One sync per round (a batch's frames beside the identifiers of the
    // batch before, or identifiers alone), and one per segment created.
    let (wal, _) = Wal::open(shared.clone(), config.clone()).unwrap();
    let segments = wal.segment_count() as u64;
    drop(wal);
    assert!(segments > 3, "segments rotated under the pipeline");
    assert_eq!(syncs, stats.syncs + (segments - 1));
    assert!(
        stats.syncs < 2 * stats.batches,
        "identifiers rode along with later frames: {} syncs for {} batches",
        stats.syncs,
        stats.batches
    );
    assert!(
        stats.batches * 8 < records,
        "{} batches for {records} records",
        stats.batches
    );
    let (_, recovery) = Wal::open(shared, config).unwrap();
    assert_eq!(recovery.accepted.len() as u64, records);
    assert!(recovery.corrupted.is_empty());
    assert_eq!(recovery.torn_tail_bytes, 0);
    assert_eq!(recovery.corrupt_identifiers, 0);
}

#[test]
fn nothing_is_reported_durable_before_its_sync_returns() {
    let (sim, disk, group) = started(test_config());
    disk.probe.close_gate();
    let receiver = group.submit_and_receive(record(1)).unwrap();
    std::thread::sleep(Duration::from_millis(50));
    assert!(matches!(receiver.try_recv(), Err(mpsc::TryRecvError::Empty)));
    disk.probe.open_gate();
    receiver.recv().unwrap().unwrap();
    // Once reported, it survives a crash.
    let (_, _) = group.stop();
    sim.crash();
    let (_, recovery) = Wal::open(Arc::new(sim), WalConfig::default()).unwrap();
    assert!(recovery.accepted.contains_key(&Instance(1)));
}

#[test]
fn a_record_is_reported_durable_only_once_its_identifier_is_synced() {
    let (sim, disk, group) = started(test_config());
    // The sync that makes the frame durable completes; the next one, which
    // would make its identifier durable, waits at the gate.
    let frames_synced = disk.probe.syncs.load(Ordering::SeqCst) + 1;
    *disk.probe.close_gate_at_syncs.lock().unwrap() = Some(frames_synced);
    let receiver = group.submit_and_receive(record(1)).unwrap();
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while disk.probe.syncs.load(Ordering::SeqCst) < frames_synced {
        assert!(std::time::Instant::now() < deadline, "the frame's sync never came");
        std::thread::sleep(Duration::from_millis(1));
    }
    std::thread::sleep(Duration::from_millis(50));
    assert!(
        matches!(receiver.try_recv(), Err(mpsc::TryRecvError::Empty)),
        "reported durable with its frame synced and its identifier not"
    );
    let live = group.counters();
    assert_eq!(
        (live.snapshot().syncs, live.snapshot().batches),
        (1, 1),
        "the frame's sync, counted live"
    );
    *disk.probe.close_gate_at_syncs.lock().unwrap() = None;
    disk.probe.open_gate();
    receiver.recv().unwrap().unwrap();
    assert_eq!(live.snapshot().syncs, 2);
    let (_, stats) = group.stop();
    assert_eq!(stats.syncs, 2, "one sync for the frame, one for its identifier");
    // Once reported, frame and identifier both survive a crash: recovery
    // finds the identifier rather than giving the frame a new one.
    sim.crash();
    let (_, recovery) = Wal::open(Arc::new(sim), WalConfig::default()).unwrap();
    assert!(recovery.accepted.contains_key(&Instance(1)));
    assert_eq!(recovery.repaired_identifiers, 0);
}

#[test]
fn a_full_queue_hands_the_record_back() {
    let (_, disk, group) = started(GroupCommitConfig {
        queue_submissions_max: 2,
        ..test_config()
    });
    disk.probe.close_gate();
    let done = Arc::new(AtomicU64::new(0));
    let mut rejected = None;
    for instance in 1..100 {
        let done = done.clone();
        match group.try_submit(
            record(instance),
            Box::new(move |outcome| {
                outcome.unwrap();
                done.fetch_add(1, Ordering::SeqCst);
            }),
        ) {
            Ok(()) => {}
            Err(error) => {
                rejected = Some((instance, error));
                break;
            }
        }
    }
    let (instance, error) = rejected.expect("the queue fills");
    assert_eq!(error.reason, RejectReason::QueueFull);
    assert_eq!(error.submission, record(instance));
    disk.probe.open_gate();
    let _ = group.stop();
    assert_eq!(done.load(Ordering::SeqCst), instance - 1);
}

#[test]
fn a_failed_sync_fails_the_batch_and_stops_the_writer() {
    let (_, disk, group) = started(test_config());
    group.submit_and_receive(record(1)).unwrap().recv().unwrap().unwrap();
    disk.probe.fail_syncs.store(true, Ordering::SeqCst);
    let outcome = group.submit_and_receive(record(2)).unwrap().recv().unwrap();
    assert!(matches!(outcome, Err(StorageError::GroupCommitFailed { .. })));
    disk.probe.fail_syncs.store(false, Ordering::SeqCst);
    let outcome = group.submit_and_receive(record(3)).unwrap().recv().unwrap();
    assert!(matches!(outcome, Err(StorageError::Stopped { .. })), "never retried");
    let (mut wal, _) = group.stop();
    assert!(matches!(wal.sync(), Err(StorageError::Stopped { .. })));
}

#[test]
fn trim_through_the_writer() {
    let sim = SimDisk::new(9, FaultConfig::default());
    let disk: Arc<dyn Disk> = Arc::new(sim);
    let config = WalConfig {
        segment_bytes_max: 8192,
        ..WalConfig::default()
    };
    let (wal, _) = Wal::open(disk.clone(), config.clone()).unwrap();
    let group = GroupCommit::start(wal, test_config()).unwrap();
    for instance in 1..=200 {
        group
            .submit(record(instance), Box::new(|outcome| outcome.unwrap()))
            .unwrap();
    }
    let snapshots = SnapshotStore::open(disk.clone(), 4096).unwrap();
    let mut writer = snapshots.begin(Instance(150)).unwrap();
    writer.write(b"state").unwrap();
    let finished = writer.finish().unwrap();
    let (sender, receiver) = mpsc::channel();
    group
        .trim(finished, Box::new(move |removed| sender.send(removed).unwrap()))
        .unwrap();
    assert!(receiver.recv().unwrap().unwrap() > 0);
    let (wal, stats) = group.stop();
    assert_eq!(stats.records, 200);
    drop(wal);
    let (_, recovery) = Wal::open(disk, config).unwrap();
    assert!(recovery.accepted.contains_key(&Instance(200)));
    assert!(!recovery.accepted.contains_key(&Instance(1)));
}

#[test]
fn a_snapshot_is_written_off_the_hot_path_while_appends_go_on() {
    let sim = SimDisk::new(13, FaultConfig::default());
    let disk: Arc<dyn Disk> = Arc::new(sim);
    let config = WalConfig {
        segment_bytes_max: 8192,
        ..WalConfig::default()
    };
    let (wal, _) = Wal::open(disk.clone(), config.clone()).unwrap();
    let group = GroupCommit::start(wal, test_config()).unwrap();
    for instance in 1..=100 {
        group
            .submit_and_receive(record(instance))
            .unwrap()
            .recv()
            .unwrap()
            .unwrap();
    }
    let snapshots = SnapshotStore::open(disk.clone(), 512).unwrap();
    let writer = snapshots.begin(Instance(100)).unwrap();
    let snapshot_thread = std::thread::spawn(move || {
        let mut writer = writer;
        for piece in 0..64u8 {
            writer.write(&[piece; 1000]).unwrap();
        }
        writer.finish().unwrap()
    });
    for instance in 101..=200 {
        group
            .submit_and_receive(record(instance))
            .unwrap()
            .recv()
            .unwrap()
            .unwrap();
    }
    let finished = snapshot_thread.join().unwrap();
    let (sender, receiver) = mpsc::channel();
    group
        .trim(finished, Box::new(move |removed| sender.send(removed).unwrap()))
        .unwrap();
    assert!(receiver.recv().unwrap().unwrap() > 0);
    drop(group.stop());
    let (_, recovery) = Wal::open(disk, config).unwrap();
    assert!((101..=200).all(|i| recovery.accepted.contains_key(&Instance(i))));
    assert!(recovery.corrupted.is_empty());
    let (instance, state) = snapshots.load_latest().unwrap().unwrap();
    assert_eq!(instance, Instance(100));
    assert_eq!(state.len(), 64_000);
}

fn accepted(instance: u64, round: u64, value_bytes: usize) -> Persist {
    let ballot = Ballot::new(round, 1, NodeId(1));
    Persist::Accepted {
        instance: Instance(instance),
        ballot,
        batch: Batch::new(
            BatchId {
                ballot,
                instance: Instance(instance),
            },
            vec![Entry {
                value: Bytes::from(vec![instance as u8; value_bytes]),
                expected_epoch: None,
            }],
        ),
    }
}

fn meta(round: u64) -> Persist {
    Persist::Meta(Meta {
        promised: Ballot::new(round, 1, NodeId(1)),
        incarnation: 1,
        voting: Voting::Voter,
    })
}

fn store_config() -> AcceptorStoreConfig {
    AcceptorStoreConfig {
        wal: WalConfig {
            segment_bytes_max: 8192,
            value_bytes_max: 4096,
            ..WalConfig::default()
        },
        snapshot_chunk_bytes: 4096,
        ..AcceptorStoreConfig::default()
    }
}

fn open_store(disk: Arc<dyn Disk>) -> (AcceptorStore, Recovered) {
    AcceptorStore::open(disk, &store_config()).unwrap()
}

fn slot_ballot(durable: &synod_paxos::DurableState, instance: u64) -> Option<Ballot> {
    durable.slots.iter().find_map(|(slot_instance, slot)| match slot {
        StoredSlot::Accepted { ballot, .. } if *slot_instance == Instance(instance) => Some(*ballot),
        _ => None,
    })
}

#[test]
fn acceptor_completions_run_in_submission_order() {
    let sim = SimDisk::new(21, FaultConfig::default());
    let disk: Arc<dyn Disk> = Arc::new(sim);
    let (store, _) = open_store(disk.clone());
    let snapshots = store.snapshots().clone();
    let group = GroupCommit::start(store, test_config()).unwrap();
    let order = Arc::new(Mutex::new(Vec::new()));
    let mut expected = Vec::new();
    let mut instance = 0;
    for index in 0..300u64 {
        let done = order.clone();
        let completion: Completion = Box::new(move |outcome| done.lock().unwrap().push((index, outcome.is_ok())));
        let submission = match index % 6 {
            // A promise alone, and a promise with records after it.
            0 => vec![meta(index + 1)],
            1 => {
                instance += 1;
                vec![meta(index + 1), accepted(instance, index + 1, 100)]
            }
            // A value too large for the log: refused, in its turn.
            2 => vec![accepted(100_000 + index, 1, 8192)],
            3 => vec![Persist::ChosenThrough {
                through: Instance(instance),
            }],
            _ => {
                instance += 2;
                vec![accepted(instance - 1, index, 300), accepted(instance, index, 300)]
            }
        };
        expected.push((index, index % 6 != 2));
        group.submit(submission, completion).unwrap();
        if index == 200 {
            let finished = AcceptorStore::write_snapshot(&snapshots, Instance(instance), Epoch::default(), |writer| {
                writer.write(b"state")
            })
            .unwrap();
            let done = order.clone();
            group
                .trim(
                    finished,
                    Box::new(move |removed| done.lock().unwrap().push((u64::MAX, removed.unwrap() > 0))),
                )
                .unwrap();
            expected.push((u64::MAX, true));
        }
    }
    let (_, stats) = group.stop();
    assert_eq!(*order.lock().unwrap(), expected);
    assert_eq!(stats.metadata_writes, 100);
    assert!(stats.batches > 0 && stats.records > 0);
}

#[test]
fn acceptor_metadata_and_records_are_durable_before_their_completion() {
    let (sim, disk) = counting_disk();
    let shared: Arc<dyn Disk> = Arc::new(disk.clone());
    let (store, recovered) = open_store(shared);
    assert!(recovered.durable.is_none());
    let group = GroupCommit::start(store, test_config()).unwrap();
    group
        .submit_and_receive(vec![accepted(1, 1, 10)])
        .unwrap()
        .recv()
        .unwrap()
        .unwrap();
    disk.probe.close_gate();
    // One Ready: a promise, an acceptance and a commit point, one completion.
    let receiver = group
        .submit_and_receive(vec![
            meta(7),
            accepted(2, 7, 100),
            Persist::ChosenThrough { through: Instance(2) },
        ])
        .unwrap();
    std::thread::sleep(Duration::from_millis(50));
    assert!(matches!(receiver.try_recv(), Err(mpsc::TryRecvError::Empty)));
    disk.probe.open_gate();
    receiver.recv().unwrap().unwrap();
    let (_, stats) = group.stop();
    assert_eq!(stats.metadata_writes, 1);
    sim.crash();
    let (_, recovered) = open_store(Arc::new(sim));
    let durable = recovered.durable.expect("state on disk");
    assert_eq!(durable.meta.promised, Ballot::new(7, 1, NodeId(1)));
    assert_eq!(slot_ballot(&durable, 2), Some(Ballot::new(7, 1, NodeId(1))));
    assert_eq!(durable.chosen_through, Instance(2));
}

#[test]
fn acceptor_trim_through_the_writer() {
    let sim = SimDisk::new(23, FaultConfig::default());
    let disk: Arc<dyn Disk> = Arc::new(sim.clone());
    let (store, _) = open_store(disk.clone());
    let snapshots = store.snapshots().clone();
    let group = GroupCommit::start(store, test_config()).unwrap();
    for instance in 1..=200 {
        group
            .submit(vec![accepted(instance, 1, 200)], Box::new(|outcome| outcome.unwrap()))
            .unwrap();
    }
    let epoch = Epoch(Ballot::new(1, 1, NodeId(1)));
    let finished =
        AcceptorStore::write_snapshot(&snapshots, Instance(150), epoch, |writer| writer.write(b"state")).unwrap();
    let (sender, receiver) = mpsc::channel();
    group
        .trim(finished, Box::new(move |removed| sender.send(removed).unwrap()))
        .unwrap();
    assert!(receiver.recv().unwrap().unwrap() > 0);
    let (store, _) = group.stop();
    let segments = store.wal().segment_count();
    drop(store);
    sim.crash();
    let (store, recovered) = open_store(disk);
    assert_eq!(store.wal().segment_count(), segments);
    let durable = recovered.durable.expect("state on disk");
    assert_eq!(durable.snapshot_instance, Instance(150));
    assert_eq!(durable.snapshot_epoch, epoch);
    assert_eq!(recovered.snapshot_state.as_deref(), Some(&b"state"[..]));
    assert!(slot_ballot(&durable, 200).is_some());
    assert!(slot_ballot(&durable, 1).is_none());
    assert!(!recovered.recovery.accepted.contains_key(&Instance(1)));
}

#[test]
fn acceptor_stops_for_good_after_a_failed_sync() {
    let (_, disk) = counting_disk();
    let shared: Arc<dyn Disk> = Arc::new(disk.clone());
    let (store, _) = open_store(shared);
    let group = GroupCommit::start(store, test_config()).unwrap();
    group
        .submit_and_receive(vec![meta(1), accepted(1, 1, 10)])
        .unwrap()
        .recv()
        .unwrap()
        .unwrap();
    disk.probe.fail_syncs.store(true, Ordering::SeqCst);
    let outcome = group
        .submit_and_receive(vec![accepted(2, 1, 10)])
        .unwrap()
        .recv()
        .unwrap();
    assert!(matches!(outcome, Err(StorageError::GroupCommitFailed { .. })));
    disk.probe.fail_syncs.store(false, Ordering::SeqCst);
    for submission in [vec![accepted(3, 1, 10)], vec![meta(2)]] {
        let outcome = group.submit_and_receive(submission).unwrap().recv().unwrap();
        assert!(matches!(outcome, Err(StorageError::Stopped { .. })), "never retried");
    }
    let (mut store, _) = group.stop();
    assert!(matches!(store.write(&[meta(3)]), Err(StorageError::Stopped { .. })));
    assert!(matches!(store.sync(), Err(StorageError::Stopped { .. })));
}

#[test]
fn acceptor_restart_recovers_everything_acknowledged() {
    let (sim, disk) = counting_disk();
    disk.probe.sync_delay_micros.store(200, Ordering::SeqCst);
    let shared: Arc<dyn Disk> = Arc::new(disk.clone());
    let (store, _) = open_store(shared);
    let group = Arc::new(GroupCommit::start(store, test_config()).unwrap());
    let acknowledged = Arc::new(Mutex::new(Vec::new()));
    // Completions run in submission order: the last promise acknowledged, and
    // the promises submitted after it (written or not) that failed.
    let last_promise = Arc::new(Mutex::new(None));
    let failed_promises = Arc::new(Mutex::new(Vec::new()));
    let submitters = 8u64;
    let threads: Vec<_> = (0..submitters)
        .map(|submitter| {
            let group = group.clone();
            let acknowledged = acknowledged.clone();
            let last_promise = last_promise.clone();
            let failed_promises = failed_promises.clone();
            std::thread::spawn(move || {
                for step in 0..40u64 {
                    let instance = 1 + submitter * 1000 + step;
                    let mut submission = vec![accepted(instance, 1, 64)];
                    let promise = (step % 8 == 0).then_some(instance);
                    if let Some(round) = promise {
                        submission.insert(0, meta(round));
                    }
                    let (sender, receiver) = mpsc::channel();
                    let last_promise = last_promise.clone();
                    let failed_promises = failed_promises.clone();
                    let completion: Completion = Box::new(move |outcome| {
                        match (promise, outcome.is_ok()) {
                            (Some(round), true) => *last_promise.lock().unwrap() = Some(round),
                            (Some(round), false) => failed_promises.lock().unwrap().push(round),
                            (None, _) => {}
                        }
                        sender.send(outcome).unwrap();
                    });
                    group.submit(submission, completion).unwrap();
                    if receiver.recv().unwrap().is_err() {
                        return;
                    }
                    acknowledged.lock().unwrap().push(instance);
                }
            })
        })
        .collect();
    // Let some submissions through, then fail every later sync.
    while acknowledged.lock().unwrap().len() < 100 {
        std::thread::sleep(Duration::from_millis(1));
    }
    disk.probe.fail_syncs.store(true, Ordering::SeqCst);
    for thread in threads {
        thread.join().unwrap();
    }
    let group = Arc::into_inner(group).unwrap();
    drop(group.stop());
    sim.crash();
    disk.probe.fail_syncs.store(false, Ordering::SeqCst);
    let (_, recovered) = open_store(Arc::new(sim));
    let durable = recovered.durable.expect("state on disk");
    let acknowledged = acknowledged.lock().unwrap();
    assert!(acknowledged.len() >= 100);
    for instance in acknowledged.iter() {
        assert!(
            slot_ballot(&durable, *instance).is_some(),
            "acknowledged instance {instance} lost"
        );
    }
    let round = durable.meta.promised.round;
    assert!(
        *last_promise.lock().unwrap() == Some(round) || failed_promises.lock().unwrap().contains(&round),
        "promise {round} is neither the last acknowledged nor a later one"
    );
    assert!(recovered.recovery.corrupted.is_empty());
}

/// Runs inside a child process: a group commit with the default policy
/// whose sync fails must abort the process.
fn abort_child() {
    let (_, disk, group) = started(GroupCommitConfig::default());
    disk.probe.fail_syncs.store(true, Ordering::SeqCst);
    let outcome = group.submit_and_receive(record(1)).unwrap().recv();
    // Never reached: the writer aborts the process before completing.
    println!("CHILD SURVIVED: {outcome:?}");
    std::process::exit(0);
}

#[test]
fn a_failed_sync_aborts_the_process_with_a_clear_message() {
    if std::env::var_os("SYNOD_STORAGE_ABORT_CHILD").is_some() {
        abort_child();
    }
    let output = std::process::Command::new(std::env::current_exe().unwrap())
        .args([
            "--exact",
            "a_failed_sync_aborts_the_process_with_a_clear_message",
            "--nocapture",
        ])
        .env("SYNOD_STORAGE_ABORT_CHILD", "1")
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(!output.status.success(), "the child must not exit cleanly");
    assert!(!stdout.contains("CHILD SURVIVED"), "{stdout}");
    assert!(stderr.contains("FATAL") && stderr.contains("sync of wal-"), "{stderr}");
}
