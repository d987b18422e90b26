//! Group commit: one writer thread owns a [`CommitTarget`] (a bare [`Wal`],
//! or a whole [`crate::AcceptorStore`]: log and metadata), takes submissions
//! from a bounded queue, stages every queued log record and syncs the log file
//! once for all of them; an identifier thread then writes the batch's
//! identifiers, syncs the identifier file once, and only then completes every
//! submission of the batch. The two threads form a pipeline: while the
//! identifiers of batch `n` are synced, the frames of batch `n + 1` are, so
//! the write ordering of [`Wal::sync`] holds for each batch (frames durable
//! before their identifiers are written) without the two syncs adding up.
//! At most `pipeline_batches_max` batches wait between the threads, and a
//! segment rotates only after every identifier of it is synced.
//!
//! A submission is one [`Record`] (over a [`Wal`]) or a Ready's `Persist`
//! records (over an [`crate::AcceptorStore`]), with one completion. Metadata
//! in a submission is written in queue order: the writer first makes
//! everything staged before it durable (frames and identifiers), then writes
//! and syncs both metadata copies, then goes on. So what a crash leaves is a
//! prefix of the submitted writes, and it holds every acknowledged one.
//!
//! Completions are caller-supplied callbacks, all run on the identifier thread
//! in submission order (trims included), so an async caller passes one that
//! sends on its own oneshot channel and never blocks an executor thread;
//! [`GroupCommit::try_submit`] never blocks and hands a refused submission
//! back.

use std::fmt;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc::{self, Receiver, SyncSender, TrySendError};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::Instant;

use crate::error::{Result, StorageError};
use crate::fatal::fatal_sync_error;
use crate::metadata::AcceptorMetadata;
use crate::snapshot::FinishedSnapshot;
use crate::wal::{IdentifierBatch, IdentifierWriter, Record, Wal};

/// Called once with the outcome of a submission: `Ok` means durable.
pub type Completion = Box<dyn FnOnce(Result<()>) + Send>;

/// Called once with the outcome of a trim: how many segments were removed.
pub type TrimCompletion = Box<dyn FnOnce(Result<u64>) + Send>;

/// One write a submission asks for, in the order given.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum WriteOp {
    /// A log record, durable once its batch's frames and identifiers are
    /// synced.
    Record(Record),
    /// The acceptor metadata, written and synced (both copies) in queue
    /// order.
    Metadata(AcceptorMetadata),
}

mod sealed {
    pub trait Sealed {}
    impl Sealed for crate::wal::Wal {}
    impl Sealed for crate::acceptor::AcceptorStore {}
}

/// What a [`GroupCommit`]'s writer thread owns and writes to: a bare [`Wal`],
/// whose submissions are single [`Record`]s, or a
/// [`crate::AcceptorStore`], whose submissions are a Ready's
/// `synod_paxos::Persist` records.
pub trait CommitTarget: sealed::Sealed + Send + fmt::Debug + 'static {
    /// What one submission carries; it gets one completion.
    type Submission: Send + fmt::Debug + 'static;
    /// The writes a submission becomes.
    type Writes: Iterator<Item = WriteOp>;

    /// Splits a submission into its writes, in order.
    fn writes(submission: Self::Submission) -> Self::Writes;

    /// The log that records go to.
    fn wal_mut(&mut self) -> &mut Wal;

    /// Writes the metadata and returns once it is durable.
    fn write_metadata(&mut self, metadata: &AcceptorMetadata) -> Result<()>;

    /// Refuses all later work, after a failure the target did not see.
    fn stop_after(&mut self, reason: String);
}

impl CommitTarget for Wal {
    type Submission = Record;
    type Writes = std::iter::Once<WriteOp>;

    fn writes(record: Record) -> Self::Writes {
        std::iter::once(WriteOp::Record(record))
    }

    fn wal_mut(&mut self) -> &mut Wal {
        self
    }

    fn write_metadata(&mut self, _: &AcceptorMetadata) -> Result<()> {
        Err(StorageError::InvalidConfig {
            what: "a bare log keeps no acceptor metadata".to_string(),
        })
    }

    fn stop_after(&mut self, reason: String) {
        Wal::stop_after(self, reason);
    }
}

/// What the writer does when a write or sync fails.
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
    /// Submissions (and trims) that may wait in the queue, each one
    /// [`CommitTarget::Submission`] however many records it holds.
    pub queue_submissions_max: usize,
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
            queue_submissions_max: 4096,
            batch_bytes_max: 4 << 20,
            pipeline_batches_max: 1,
            sync_failure_policy: SyncFailurePolicy::Abort,
        }
    }
}

enum Command<S> {
    Submit(S, Completion),
    Trim(FinishedSnapshot, TrimCompletion),
}

/// Why a submit was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RejectReason {
    /// The queue holds `queue_submissions_max` requests; try again later.
    QueueFull,
    /// The writer stopped after a failure or shutdown.
    Stopped,
}

/// A refused submit (or trim), handing what was submitted and its completion
/// back.
pub struct Rejected<S, C = Completion> {
    /// What was not queued.
    pub submission: S,
    /// Its completion, not called.
    pub completion: C,
    /// Why it was refused.
    pub reason: RejectReason,
}

impl<S: fmt::Debug, C> fmt::Debug for Rejected<S, C> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Rejected")
            .field("submission", &self.submission)
            .field("reason", &self.reason)
            .finish()
    }
}

/// Counters from the writer threads.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct GroupCommitStats {
    /// Batches of log records made durable.
    pub batches: u64,
    /// Log records made durable.
    pub records: u64,
    /// Metadata updates made durable (two copies each).
    pub metadata_writes: u64,
    /// Time spent writing and syncing frames, in microseconds.
    pub sync_micros: u64,
    /// Time the identifier thread spent writing and syncing identifiers, in
    /// microseconds.
    pub identifier_sync_micros: u64,
    /// Time spent writing and syncing metadata, in microseconds.
    pub metadata_sync_micros: u64,
}

/// The handle to the group-commit writer threads.
///
/// A writer thread owns the target (a [`Wal`] or a
/// [`crate::AcceptorStore`]): it takes submissions from a queue bounded by
/// `queue_submissions_max`, stages every log record queued (up to
/// `batch_bytes_max`), writes the frames and syncs the log file once for the
/// batch, then hands the batch to an identifier thread, which writes the
/// identifiers, syncs the identifier file once, and only then runs every
/// completion of the batch with `Ok(())`. Nothing is reported durable before
/// the syncs covering it return. While batch `n`'s identifiers sync, batch
/// `n + 1`'s frames do; at most `pipeline_batches_max` batches wait between
/// the threads. Metadata in a submission waits until everything before it
/// is durable, and is then written and synced on the writer thread.
///
/// Completions run on the identifier thread, in submission order, and must
/// not block: an async caller passes one that sends on a oneshot channel.
/// [`GroupCommit::try_submit`] never blocks and hands the submission back
/// when the queue is full.
///
/// A failed write or sync aborts the process ([`SyncFailurePolicy::Abort`],
/// the default) or, for tests, fails the batch and stops for good
/// ([`SyncFailurePolicy::Stop`]); it is never retried.
///
/// For servers. The deterministic simulator calls
/// [`crate::AcceptorStore::write`] and [`crate::AcceptorStore::sync`] itself:
/// with two threads, the order in which a [`crate::SimDisk`] draws its faults
/// would depend on thread timing.
pub struct GroupCommit<T: CommitTarget = Wal> {
    sender: Option<SyncSender<Command<T::Submission>>>,
    writer: Option<JoinHandle<(T, GroupCommitStats)>>,
}

impl<T: CommitTarget> fmt::Debug for GroupCommit<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("GroupCommit")
            .field("running", &self.sender.is_some())
            .finish()
    }
}

impl<T: CommitTarget> GroupCommit<T> {
    /// Starts the writer and identifier threads; the writer owns `target`
    /// until [`GroupCommit::stop`].
    pub fn start(mut target: T, config: GroupCommitConfig) -> Result<GroupCommit<T>> {
        if config.queue_submissions_max == 0 || config.batch_bytes_max == 0 || config.pipeline_batches_max == 0 {
            return Err(StorageError::InvalidConfig {
                what: "queue_submissions_max, batch_bytes_max and pipeline_batches_max must be positive".to_string(),
            });
        }
        let shared = Arc::new(Shared {
            failure: Mutex::new(None),
            identifier_sync_micros: AtomicU64::new(0),
        });
        let (stages, stage_receiver) = mpsc::sync_channel(config.pipeline_batches_max);
        let identifier_writer = IdentifierWriter::new(target.wal_mut().disk());
        let identifier_shared = shared.clone();
        let identifier_config = config.clone();
        let identifiers = std::thread::Builder::new()
            .name("synod-wal-identifiers".to_string())
            .spawn(move || run_identifiers(identifier_writer, stage_receiver, identifier_shared, identifier_config))
            .map_err(|e| StorageError::io("synod-wal-identifiers", "spawn", e))?;
        let (sender, receiver) = mpsc::sync_channel(config.queue_submissions_max);
        let writer = Writer {
            target,
            config,
            shared,
            stages: Some(stages),
            waiters: Vec::new(),
            stats: GroupCommitStats::default(),
        };
        let writer = std::thread::Builder::new()
            .name("synod-wal-writer".to_string())
            .spawn(move || writer.run(receiver, identifiers))
            .map_err(|e| StorageError::io("synod-wal-writer", "spawn", e))?;
        Ok(GroupCommit {
            sender: Some(sender),
            writer: Some(writer),
        })
    }

    fn sender(&self) -> &SyncSender<Command<T::Submission>> {
        self.sender.as_ref().expect("sender lives until stop")
    }

    /// Queues `command` without blocking, or says why not.
    fn try_send(
        &self,
        command: Command<T::Submission>,
    ) -> std::result::Result<(), (Command<T::Submission>, RejectReason)> {
        self.sender().try_send(command).map_err(|error| match error {
            TrySendError::Full(command) => (command, RejectReason::QueueFull),
            TrySendError::Disconnected(command) => (command, RejectReason::Stopped),
        })
    }

    /// Queues `submission`, never blocking. `completion` runs once it is
    /// durable (or failed), after the completions of everything queued
    /// before it.
    pub fn try_submit(
        &self,
        submission: T::Submission,
        completion: Completion,
    ) -> std::result::Result<(), Rejected<T::Submission>> {
        self.try_send(Command::Submit(submission, completion))
            .map_err(|(command, reason)| match command {
                Command::Submit(submission, completion) => Rejected {
                    submission,
                    completion,
                    reason,
                },
                Command::Trim(..) => unreachable!("a submission was sent"),
            })
    }

    /// Queues `submission`, blocking while the queue is full. For threads
    /// that may block; async callers use [`GroupCommit::try_submit`].
    pub fn submit(
        &self,
        submission: T::Submission,
        completion: Completion,
    ) -> std::result::Result<(), Rejected<T::Submission>> {
        self.sender()
            .send(Command::Submit(submission, completion))
            .map_err(|error| {
                let Command::Submit(submission, completion) = error.0 else {
                    unreachable!("a submission was sent")
                };
                Rejected {
                    submission,
                    completion,
                    reason: RejectReason::Stopped,
                }
            })
    }

    /// Queues `submission` (blocking while full) and returns a receiver for
    /// the outcome.
    pub fn submit_and_receive(
        &self,
        submission: T::Submission,
    ) -> std::result::Result<Receiver<Result<()>>, Rejected<T::Submission>> {
        let (sender, receiver) = mpsc::sync_channel(1);
        self.submit(
            submission,
            Box::new(move |outcome| {
                let _ = sender.send(outcome);
            }),
        )?;
        Ok(receiver)
    }

    /// Queues a trim of the log up to `snapshot`, blocking while the queue is
    /// full. It runs on the writer thread after every submission queued
    /// before it is staged; its completion runs in queue order.
    pub fn trim(&self, snapshot: FinishedSnapshot, completion: TrimCompletion) -> Result<()> {
        self.sender()
            .send(Command::Trim(snapshot, completion))
            .map_err(|_| StorageError::Stopped {
                reason: "the writer thread has stopped".to_string(),
            })
    }

    /// Queues a trim like [`GroupCommit::trim`], never blocking.
    pub fn try_trim(
        &self,
        snapshot: FinishedSnapshot,
        completion: TrimCompletion,
    ) -> std::result::Result<(), Rejected<FinishedSnapshot, TrimCompletion>> {
        self.try_send(Command::Trim(snapshot, completion))
            .map_err(|(command, reason)| match command {
                Command::Trim(submission, completion) => Rejected {
                    submission,
                    completion,
                    reason,
                },
                Command::Submit(..) => unreachable!("a trim was sent"),
            })
    }

    /// Completes everything queued, stops the threads and returns the target.
    pub fn stop(mut self) -> (T, GroupCommitStats) {
        self.sender = None;
        let writer = self.writer.take().expect("writer lives until stop");
        match writer.join() {
            Ok(result) => result,
            Err(panic) => std::panic::resume_unwind(panic),
        }
    }

    /// Stops taking work without waiting: the threads complete everything
    /// queued and exit on their own. For callers that must not block, such
    /// as an async task dropping its handle.
    pub fn detach(mut self) {
        self.sender = None;
        drop(self.writer.take());
    }
}

impl<T: CommitTarget> Drop for GroupCommit<T> {
    fn drop(&mut self) {
        self.sender = None;
        if let Some(writer) = self.writer.take() {
            let _ = writer.join();
        }
    }
}

/// A completion waiting for the batch it belongs to.
enum Waiter {
    /// A submission: `refused` holds the error it already failed with.
    Submission {
        completion: Completion,
        refused: Option<StorageError>,
    },
    /// A trim that ran on the writer thread.
    Trim {
        completion: TrimCompletion,
        outcome: Result<u64>,
    },
}

/// A batch on its way to the identifier thread.
enum Stage {
    Batch {
        /// `None` when the batch staged no log record (its submissions only
        /// wrote metadata, or failed, or the writer stopped).
        identifiers: Option<IdentifierBatch>,
        waiters: Vec<Waiter>,
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

struct Writer<T: CommitTarget> {
    target: T,
    config: GroupCommitConfig,
    shared: Arc<Shared>,
    stages: Option<SyncSender<Stage>>,
    /// Completions of what is staged, in queue order.
    waiters: Vec<Waiter>,
    stats: GroupCommitStats,
}

impl<T: CommitTarget> Writer<T> {
    /// Blocks for the first request of a batch, then takes whatever else is
    /// already queued, up to `batch_bytes_max`, and flushes.
    fn run(mut self, receiver: Receiver<Command<T::Submission>>, identifiers: JoinHandle<()>) -> (T, GroupCommitStats) {
        while let Ok(first) = receiver.recv() {
            let mut next = Some(first);
            while let Some(command) = next.take() {
                match command {
                    Command::Submit(submission, completion) => self.submit(submission, completion),
                    Command::Trim(snapshot, completion) => self.trim(snapshot, completion),
                }
                if self.target.wal_mut().staged_bytes() >= self.config.batch_bytes_max {
                    break;
                }
                next = receiver.try_recv().ok();
            }
            self.flush();
            self.rotate_if_full();
        }
        self.stages = None;
        let _ = identifiers.join();
        if let Some(reason) = self.shared.failure() {
            self.target.stop_after(reason);
        }
        let mut stats = self.stats;
        stats.identifier_sync_micros = self.shared.identifier_sync_micros.load(Ordering::Relaxed);
        (self.target, stats)
    }

    fn stopped(&self) -> Result<()> {
        match self.shared.failure() {
            Some(reason) => Err(StorageError::Stopped { reason }),
            None => Ok(()),
        }
    }

    /// Records a failed write or sync: aborts the process, or (for tests)
    /// stops both threads for good.
    fn fail(&self, error: &StorageError) {
        let reason = on_failure(error, &self.config);
        self.shared.set_failure(&reason);
    }

    /// Stages a submission's writes; its completion joins the batch.
    fn submit(&mut self, submission: T::Submission, completion: Completion) {
        let mut refused = None;
        for write in T::writes(submission) {
            let written = match write {
                WriteOp::Record(record) => self.append(&record),
                WriteOp::Metadata(metadata) => self.write_metadata(&metadata),
            };
            if let Err(error) = written {
                refused = Some(error);
                break;
            }
        }
        self.waiters.push(Waiter::Submission { completion, refused });
    }

    fn append(&mut self, record: &Record) -> Result<()> {
        self.stopped()?;
        if self.target.wal_mut().is_full_for(record) {
            self.flush();
            self.drain();
            self.stopped()?;
            if let Err(error) = self.target.wal_mut().rotate() {
                self.fail(&error);
                return Err(error);
            }
        }
        let wal = self.target.wal_mut();
        let syncs = wal.sync_count();
        let appended = wal.append(record);
        // The segment was rotated above if needed, so the append staged the
        // record without syncing: every identifier goes through the
        // identifier thread, in order.
        assert_eq!(wal.sync_count(), syncs, "an append inside the writer synced");
        appended
    }

    /// Makes everything staged so far durable, then writes the metadata.
    fn write_metadata(&mut self, metadata: &AcceptorMetadata) -> Result<()> {
        self.flush();
        self.drain();
        self.stopped()?;
        let started = Instant::now();
        let written = self.target.write_metadata(metadata);
        self.stats.metadata_sync_micros += started.elapsed().as_micros() as u64;
        match written {
            Ok(()) => {
                self.stats.metadata_writes += 1;
                Ok(())
            }
            Err(error) => {
                self.fail(&error);
                Err(error)
            }
        }
    }

    /// Trims the log. Only closed segments go, and every identifier in them
    /// is synced, so the trim need not wait for what is staged.
    fn trim(&mut self, snapshot: FinishedSnapshot, completion: TrimCompletion) {
        let outcome = self.stopped().and_then(|()| self.target.wal_mut().trim(&snapshot));
        self.waiters.push(Waiter::Trim { completion, outcome });
    }

    /// Syncs the staged frames and hands their identifiers and the waiters
    /// to the identifier thread.
    fn flush(&mut self) {
        let staged = self.target.wal_mut().staged_records();
        if staged == 0 && self.waiters.is_empty() {
            return;
        }
        let mut identifiers = None;
        if staged > 0 && self.stopped().is_ok() {
            let started = Instant::now();
            let synced = self.target.wal_mut().sync_frames();
            self.stats.sync_micros += started.elapsed().as_micros() as u64;
            match synced {
                Ok(batch) => {
                    self.stats.batches += 1;
                    self.stats.records += staged;
                    identifiers = batch;
                }
                Err(error) => self.fail(&error),
            }
        }
        let stage = Stage::Batch {
            identifiers,
            waiters: std::mem::take(&mut self.waiters),
        };
        let sender = self.stages.as_ref().expect("stages live until stop");
        if let Err(error) = sender.send(stage) {
            if let Stage::Batch { waiters, .. } = error.0 {
                complete(waiters, Err("the identifier thread stopped".to_string()));
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
        if !self.target.wal_mut().is_full() || self.stopped().is_err() {
            return;
        }
        self.drain();
        if self.stopped().is_err() {
            return;
        }
        if let Err(error) = self.target.wal_mut().rotate_if_full() {
            self.fail(&error);
        }
    }
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
            Stage::Batch { identifiers, waiters } => {
                let outcome = match (shared.failure(), identifiers) {
                    (Some(reason), _) => Err(reason),
                    (None, None) => Ok(()),
                    (None, Some(identifiers)) => {
                        let started = Instant::now();
                        let written = writer.write(&identifiers);
                        shared
                            .identifier_sync_micros
                            .fetch_add(started.elapsed().as_micros() as u64, Ordering::Relaxed);
                        written.map_err(|error| {
                            let reason = on_failure(&error, &config);
                            shared.set_failure(&reason);
                            reason
                        })
                    }
                };
                complete(waiters, outcome);
            }
            Stage::Drain(reply) => {
                let _ = reply.send(());
            }
        }
    }
}

/// Runs a batch's completions in order: `outcome` is the batch's, for the
/// submissions that did not fail on their own.
fn complete(waiters: Vec<Waiter>, outcome: std::result::Result<(), String>) {
    for waiter in waiters {
        match waiter {
            Waiter::Submission {
                completion,
                refused: Some(error),
            } => completion(Err(error)),
            Waiter::Submission {
                completion,
                refused: None,
            } => completion(
                outcome
                    .clone()
                    .map_err(|reason| StorageError::GroupCommitFailed { reason }),
            ),
            Waiter::Trim { completion, outcome } => completion(outcome),
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
