//! Group commit for the server: one writer thread owns the [`Wal`], takes
//! appends from a bounded queue, writes every queued frame and syncs the log
//! file once for all of them; an identifier thread then writes the batch's
//! identifiers, syncs the identifier file once, and only then completes
//! every waiter of the batch. The two threads form a pipeline: while the
//! identifiers of batch `n` are synced, the frames of batch `n + 1` are, so
//! the write ordering of [`Wal::sync`] holds for each batch (frames durable
//! before their identifiers are written) without the two syncs adding up.
//! At most `pipeline_batches_max` batches wait between the threads, and a
//! segment rotates only after every identifier of it is synced.
//!
//! Completions are caller-supplied callbacks run on the writer thread, so an
//! async caller passes one that sends on its own oneshot channel and never
//! blocks an executor thread; [`GroupCommit::try_submit`] never blocks and
//! hands a rejected record back.

use std::fmt;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc::{self, Receiver, SyncSender, TrySendError};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::Instant;

use crate::error::{Result, StorageError};
use crate::fatal::fatal_sync_error;
use crate::snapshot::FinishedSnapshot;
use crate::wal::{IdentifierBatch, IdentifierWriter, Record, Wal};

/// Called once with the outcome of an append: `Ok` means durable.
pub type Completion = Box<dyn FnOnce(Result<()>) + Send>;

/// Called once with the outcome of a trim: how many segments were removed.
pub type TrimCompletion = Box<dyn FnOnce(Result<u64>) + Send>;

/// What the writer does when a sync fails.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum SyncFailurePolicy {
    /// Log and abort the process ([`fatal_sync_error`]). For servers.
    #[default]
    Abort,
    /// Fail every waiter and stop taking work. For tests.
    Stop,
}

/// Bounds and policies of the writer thread.
#[derive(Clone, Debug)]
pub struct GroupCommitConfig {
    /// Appends (and trims) that may wait in the queue.
    pub queue_records_max: usize,
    /// A batch stops growing at this many bytes of frames.
    pub batch_bytes_max: usize,
    /// Batches whose frames are synced and whose identifiers wait for the
    /// identifier thread.
    pub pipeline_batches_max: usize,
    /// What a failed write or sync does.
    pub sync_failure_policy: SyncFailurePolicy,
}

impl Default for GroupCommitConfig {
    fn default() -> GroupCommitConfig {
        GroupCommitConfig {
            queue_records_max: 4096,
            batch_bytes_max: 4 << 20,
            pipeline_batches_max: 1,
            sync_failure_policy: SyncFailurePolicy::Abort,
        }
    }
}

enum Command {
    Append(Record, Completion),
    Trim(FinishedSnapshot, TrimCompletion),
}

/// Why a submit was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RejectReason {
    /// The queue holds `queue_records_max` requests; try again later.
    QueueFull,
    /// The writer stopped after a failure or shutdown.
    Stopped,
}

/// A refused submit, handing the record and completion back.
pub struct Rejected {
    /// The record that was not queued.
    pub record: Record,
    /// Its completion, not called.
    pub completion: Completion,
    /// Why it was refused.
    pub reason: RejectReason,
}

impl fmt::Debug for Rejected {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Rejected")
            .field("record", &self.record)
            .field("reason", &self.reason)
            .finish()
    }
}

/// Counters from the writer thread.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct GroupCommitStats {
    /// Batches made durable.
    pub batches: u64,
    /// Records made durable.
    pub records: u64,
    /// Time spent writing and syncing frames, in microseconds.
    pub sync_micros: u64,
    /// Time the identifier thread spent writing and syncing identifiers.
    pub identifier_sync_micros: u64,
}

/// The handle to the group-commit writer threads.
///
/// A writer thread owns the [`Wal`]: it takes appends from a queue bounded
/// by `queue_records_max`, stages everything queued (up to
/// `batch_bytes_max`), writes the frames and syncs the log file once for the
/// batch, then hands the batch to an identifier thread, which writes the
/// identifiers, syncs the identifier file once, and only then runs every
/// completion of the batch with `Ok(())`. Nothing is reported durable before
/// the syncs covering it return. While batch `n`'s identifiers sync, batch
/// `n + 1`'s frames do; at most `pipeline_batches_max` batches wait between
/// the threads.
///
/// Completions run on the identifier thread and must not block: an async
/// caller passes one that sends on a oneshot channel. [`GroupCommit::try_submit`]
/// never blocks and hands the record back when the queue is full.
///
/// A failed write or sync aborts the process ([`SyncFailurePolicy::Abort`],
/// the default) or, for tests, fails the batch and stops the log for good
/// ([`SyncFailurePolicy::Stop`]); it is never retried.
///
/// For servers. The deterministic simulator calls [`Wal::append`] and
/// [`Wal::sync`] itself: with two threads, the order in which a
/// [`crate::SimDisk`] draws its faults would depend on thread timing.
#[derive(Debug)]
pub struct GroupCommit {
    sender: Option<SyncSender<Command>>,
    writer: Option<JoinHandle<(Wal, GroupCommitStats)>>,
}

impl GroupCommit {
    /// Starts the writer thread, which owns `wal` until [`GroupCommit::stop`].
    pub fn start(wal: Wal, config: GroupCommitConfig) -> Result<GroupCommit> {
        if config.queue_records_max == 0 || config.batch_bytes_max == 0 || config.pipeline_batches_max == 0 {
            return Err(StorageError::InvalidConfig {
                what: "queue_records_max, batch_bytes_max and pipeline_batches_max must be positive".to_string(),
            });
        }
        let (sender, receiver) = mpsc::sync_channel(config.queue_records_max);
        let writer = std::thread::Builder::new()
            .name("synod-wal-writer".to_string())
            .spawn(move || run_writer(wal, receiver, config))
            .map_err(|e| StorageError::io("synod-wal-writer", "spawn", e))?;
        Ok(GroupCommit {
            sender: Some(sender),
            writer: Some(writer),
        })
    }

    /// Queues `record`, never blocking. `completion` runs on the writer
    /// thread once the record is durable (or failed).
    pub fn try_submit(&self, record: Record, completion: Completion) -> std::result::Result<(), Rejected> {
        let sender = self.sender.as_ref().expect("sender lives until stop");
        match sender.try_send(Command::Append(record, completion)) {
            Ok(()) => Ok(()),
            Err(TrySendError::Full(Command::Append(record, completion))) => Err(Rejected {
                record,
                completion,
                reason: RejectReason::QueueFull,
            }),
            Err(TrySendError::Disconnected(Command::Append(record, completion))) => Err(Rejected {
                record,
                completion,
                reason: RejectReason::Stopped,
            }),
            Err(_) => unreachable!("an append was sent"),
        }
    }

    /// Queues `record`, blocking while the queue is full. For threads that
    /// may block; async callers use [`GroupCommit::try_submit`].
    pub fn submit(&self, record: Record, completion: Completion) -> std::result::Result<(), Rejected> {
        let sender = self.sender.as_ref().expect("sender lives until stop");
        sender
            .send(Command::Append(record, completion))
            .map_err(|error| match error.0 {
                Command::Append(record, completion) => Rejected {
                    record,
                    completion,
                    reason: RejectReason::Stopped,
                },
                Command::Trim(..) => unreachable!("an append was sent"),
            })
    }

    /// Queues `record` (blocking while full) and returns a receiver for the
    /// outcome.
    pub fn submit_and_receive(&self, record: Record) -> std::result::Result<Receiver<Result<()>>, Rejected> {
        let (sender, receiver) = mpsc::sync_channel(1);
        self.submit(
            record,
            Box::new(move |outcome| {
                let _ = sender.send(outcome);
            }),
        )?;
        Ok(receiver)
    }

    /// Queues a trim of the log up to `snapshot`, after every append queued
    /// before it.
    pub fn trim(&self, snapshot: FinishedSnapshot, completion: TrimCompletion) -> Result<()> {
        let sender = self.sender.as_ref().expect("sender lives until stop");
        sender
            .send(Command::Trim(snapshot, completion))
            .map_err(|_| StorageError::Stopped {
                reason: "the writer thread has stopped".to_string(),
            })
    }

    /// Completes everything queued, stops the writer thread and returns the
    /// log.
    pub fn stop(mut self) -> (Wal, GroupCommitStats) {
        self.sender = None;
        let writer = self.writer.take().expect("writer lives until stop");
        match writer.join() {
            Ok(result) => result,
            Err(panic) => std::panic::resume_unwind(panic),
        }
    }
}

impl Drop for GroupCommit {
    fn drop(&mut self) {
        self.sender = None;
        if let Some(writer) = self.writer.take() {
            let _ = writer.join();
        }
    }
}

/// A synced batch of frames on its way to the identifier thread.
enum Stage {
    Batch {
        identifiers: IdentifierBatch,
        waiters: Vec<Completion>,
    },
    /// Answered once every batch sent before it is durable.
    Drain(SyncSender<()>),
}

/// State shared by the two threads.
struct Shared {
    /// Set by whichever thread fails first; both then stop taking work.
    failure: Mutex<Option<String>>,
    identifier_sync_micros: AtomicU64,
}

impl Shared {
    fn failure(&self) -> Option<String> {
        self.failure.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }

    fn set_failure(&self, reason: &str) {
        self.failure
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get_or_insert_with(|| reason.to_string());
    }
}

struct Writer {
    wal: Wal,
    config: GroupCommitConfig,
    shared: Arc<Shared>,
    stages: Option<SyncSender<Stage>>,
    waiters: Vec<Completion>,
    stats: GroupCommitStats,
}

impl Writer {
    fn stopped(&self) -> Option<String> {
        self.shared.failure()
    }

    /// Syncs the staged frames and hands their identifiers and waiters to
    /// the identifier thread.
    fn flush(&mut self) {
        if self.waiters.is_empty() {
            assert!(
                self.wal.staged_records() == 0 || self.stopped().is_some(),
                "staged records have waiters"
            );
            return;
        }
        if let Some(reason) = self.stopped() {
            fail_all(&mut self.waiters, &reason);
            return;
        }
        let started = Instant::now();
        let synced = self.wal.sync_frames();
        self.stats.sync_micros += started.elapsed().as_micros() as u64;
        match synced {
            Ok(Some(identifiers)) => {
                self.stats.batches += 1;
                self.stats.records += self.waiters.len() as u64;
                let waiters = std::mem::take(&mut self.waiters);
                let stage = Stage::Batch { identifiers, waiters };
                let sender = self.stages.as_ref().expect("stages live until stop");
                if let Err(error) = sender.send(stage) {
                    if let Stage::Batch { mut waiters, .. } = error.0 {
                        fail_all(&mut waiters, "the identifier thread stopped");
                    }
                }
            }
            Ok(None) => unreachable!("waiters without staged records"),
            Err(error) => {
                let reason = on_failure(&error, &self.config);
                self.shared.set_failure(&reason);
                fail_all(&mut self.waiters, &reason);
            }
        }
    }

    /// Waits until every batch sent so far is durable.
    fn drain(&mut self) {
        let (reply, done) = mpsc::sync_channel(1);
        let sender = self.stages.as_ref().expect("stages live until stop");
        if sender.send(Stage::Drain(reply)).is_ok() {
            let _ = done.recv();
        }
    }

    /// Rotates a full segment, once all of its identifiers are synced.
    fn rotate_if_full(&mut self) {
        if !self.wal.is_full() || self.stopped().is_some() {
            return;
        }
        self.drain();
        if self.stopped().is_some() {
            return;
        }
        if let Err(error) = self.wal.rotate_if_full() {
            let reason = on_failure(&error, &self.config);
            self.shared.set_failure(&reason);
        }
    }

    fn append(&mut self, record: Record, completion: Completion) {
        if let Some(reason) = self.stopped() {
            completion(Err(StorageError::Stopped { reason }));
            return;
        }
        if self.wal.is_full_for(&record) {
            self.flush();
            self.drain();
            if let Some(reason) = self.stopped() {
                completion(Err(StorageError::Stopped { reason }));
                return;
            }
            if let Err(error) = self.wal.rotate() {
                let reason = on_failure(&error, &self.config);
                self.shared.set_failure(&reason);
                completion(Err(error));
                return;
            }
        }
        let syncs = self.wal.sync_count();
        match self.wal.append(&record) {
            Ok(()) => self.waiters.push(completion),
            Err(error) => completion(Err(error)),
        }
        // The segment was rotated above if needed, so the append staged the
        // record without syncing: every identifier goes through the
        // identifier thread, in order.
        assert_eq!(self.wal.sync_count(), syncs, "an append inside the writer synced");
    }
}

fn run_writer(wal: Wal, receiver: Receiver<Command>, config: GroupCommitConfig) -> (Wal, GroupCommitStats) {
    let shared = Arc::new(Shared {
        failure: Mutex::new(None),
        identifier_sync_micros: AtomicU64::new(0),
    });
    let (stages, stage_receiver) = mpsc::sync_channel(config.pipeline_batches_max);
    let identifier_writer = IdentifierWriter::new(wal.disk());
    let identifier_shared = shared.clone();
    let identifier_config = config.clone();
    let identifier_thread = std::thread::Builder::new()
        .name("synod-wal-identifiers".to_string())
        .spawn(move || run_identifiers(identifier_writer, stage_receiver, identifier_shared, identifier_config));
    let identifier_thread = match identifier_thread {
        Ok(thread) => thread,
        Err(error) => {
            let reason = format!("cannot start the identifier thread: {error}");
            let mut wal = wal;
            wal.stop_after(reason.clone());
            for command in receiver {
                match command {
                    Command::Append(_, completion) => completion(Err(StorageError::Stopped { reason: reason.clone() })),
                    Command::Trim(_, completion) => completion(Err(StorageError::Stopped { reason: reason.clone() })),
                }
            }
            return (wal, GroupCommitStats::default());
        }
    };
    let mut writer = Writer {
        wal,
        config,
        shared,
        stages: Some(stages),
        waiters: Vec::new(),
        stats: GroupCommitStats::default(),
    };
    let mut trims: Vec<(FinishedSnapshot, TrimCompletion)> = Vec::new();
    // Blocks for the first request of a batch, then takes whatever else is
    // already queued, up to batch_bytes_max.
    while let Ok(first) = receiver.recv() {
        let mut next = Some(first);
        while let Some(command) = next.take() {
            match command {
                Command::Append(record, completion) => writer.append(record, completion),
                Command::Trim(snapshot, completion) => trims.push((snapshot, completion)),
            }
            if writer.wal.staged_bytes() >= writer.config.batch_bytes_max || !trims.is_empty() {
                break;
            }
            next = receiver.try_recv().ok();
        }
        writer.flush();
        writer.rotate_if_full();
        for (snapshot, completion) in trims.drain(..) {
            match writer.stopped() {
                Some(reason) => completion(Err(StorageError::Stopped { reason })),
                None => completion(writer.wal.trim(&snapshot)),
            }
        }
    }
    writer.stages = None;
    let _ = identifier_thread.join();
    let mut wal = writer.wal;
    if let Some(reason) = writer.shared.failure() {
        wal.stop_after(reason);
    }
    let mut stats = writer.stats;
    stats.identifier_sync_micros = writer.shared.identifier_sync_micros.load(Ordering::Relaxed);
    (wal, stats)
}

/// Writes and syncs identifier batches in order, then completes their
/// waiters: the moment a batch becomes durable.
fn run_identifiers(
    mut writer: IdentifierWriter,
    stages: Receiver<Stage>,
    shared: Arc<Shared>,
    config: GroupCommitConfig,
) {
    for stage in stages {
        match stage {
            Stage::Batch {
                identifiers,
                mut waiters,
            } => {
                if let Some(reason) = shared.failure() {
                    fail_all(&mut waiters, &reason);
                    continue;
                }
                let started = Instant::now();
                let written = writer.write(&identifiers);
                shared
                    .identifier_sync_micros
                    .fetch_add(started.elapsed().as_micros() as u64, Ordering::Relaxed);
                match written {
                    Ok(()) => {
                        for completion in waiters {
                            completion(Ok(()));
                        }
                    }
                    Err(error) => {
                        let reason = on_failure(&error, &config);
                        shared.set_failure(&reason);
                        fail_all(&mut waiters, &reason);
                    }
                }
            }
            Stage::Drain(reply) => {
                let _ = reply.send(());
            }
        }
    }
}

/// Aborts the process on a failed write or sync, or (for tests) returns the
/// reason every later request is refused with.
fn on_failure(error: &StorageError, config: &GroupCommitConfig) -> String {
    if config.sync_failure_policy == SyncFailurePolicy::Abort {
        fatal_sync_error(error);
    }
    error.to_string()
}

fn fail_all(waiters: &mut Vec<Completion>, reason: &str) {
    for completion in waiters.drain(..) {
        completion(Err(StorageError::GroupCommitFailed {
            reason: reason.to_string(),
        }));
    }
}
