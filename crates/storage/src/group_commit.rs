//! Group commit: one writer thread owns a [`CommitTarget`] (a bare [`Wal`],
//! or a whole [`crate::AcceptorStore`]: log and metadata), takes submissions
//! from a bounded queue and stages every queued log record. Each round it
//! writes the staged frames (batch `n + 1`) and the identifiers of the batch
//! before (batch `n`, whose frames the previous round made durable), and
//! issues one `fdatasync` for both: the write ordering of [`Wal::sync`]
//! holds for each batch (frames durable before their identifiers are
//! written) at one sync per batch rather than two. Once that sync returns,
//! batch `n` is durable, and a completion thread runs its completions while
//! the writer goes on. When no new record is queued, a round writes and
//! syncs the identifiers alone. A segment rotates only after every
//! identifier of it is synced.
//!
//! A submission is one [`Record`] (over a [`Wal`]) or a Ready's `Persist`
//! records (over an [`crate::AcceptorStore`]), with one completion. Metadata
//! in a submission is written in queue order: the writer first makes
//! everything staged before it durable (frames and identifiers), then writes
//! and syncs both metadata copies, then goes on. So what a crash leaves is a
//! prefix of the submitted writes, and it holds every acknowledged one.
//!
//! Completions are caller-supplied callbacks, all run on the completion
//! thread in submission order (trims included), so an async caller passes one that
//! sends on its own oneshot channel and never blocks an executor thread;
//! [`GroupCommit::try_submit`] never blocks and hands a refused submission
//! back.

use std::fmt;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc::{self, Receiver, SyncSender, TrySendError};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Instant;

use crate::error::{Result, StorageError};
use crate::fatal::fatal_sync_error;
use crate::metadata::AcceptorMetadata;
use crate::snapshot::FinishedSnapshot;
use crate::wal::{IdentifierBatch, Record, Wal};

/// Called once with the outcome of a submission: `Ok` means durable.
pub type Completion = Box<dyn FnOnce(Result<()>) + Send>;

/// Called once with the outcome of a trim: how many segments were removed.
pub type TrimCompletion = Box<dyn FnOnce(Result<u64>) + Send>;

/// One write a submission asks for, in the order given.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum WriteOp {
    /// A log record, durable once its frame and then its identifier are
    /// synced.
    Record(Record),
    /// The acceptor metadata, written and synced (both copies) in queue
    /// order.
    Metadata(AcceptorMetadata),
}

/// Keeps [`CommitTarget`] to this crate's types. Each target implements
/// [`sealed::Sealed`] beside its own [`CommitTarget`] impl, so this module
/// needs nothing from the modules that use it.
pub(crate) mod sealed {
    /// Implemented only by this crate's commit targets.
    pub trait Sealed {}
}

impl sealed::Sealed for Wal {}

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
    /// Durable batches whose completions may wait for the completion thread
    /// before the writer waits for it.
    pub pipeline_batches_max: usize,
    /// What a failed write or sync does.
    pub sync_failure_policy: SyncFailurePolicy,
}

impl Default for GroupCommitConfig {
    fn default() -> GroupCommitConfig {
        GroupCommitConfig {
            queue_submissions_max: 4096,
            batch_bytes_max: 4 << 20,
            pipeline_batches_max: 4,
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
    /// `fdatasync`s of the log: one per batch, and one more for the
    /// identifiers of a batch that no other batch followed at once.
    pub syncs: u64,
    /// Metadata updates made durable (two copies each).
    pub metadata_writes: u64,
    /// Time spent writing and syncing frames and identifiers, in
    /// microseconds.
    pub sync_micros: u64,
    /// Time spent writing and syncing metadata, in microseconds.
    pub metadata_sync_micros: u64,
}

/// The writer's counters, readable while it runs (for a server's metrics);
/// [`GroupCommitCounters::snapshot`] reads them as a [`GroupCommitStats`].
#[derive(Debug, Default)]
pub struct GroupCommitCounters {
    batches: AtomicU64,
    records: AtomicU64,
    syncs: AtomicU64,
    metadata_writes: AtomicU64,
    sync_micros: AtomicU64,
    metadata_sync_micros: AtomicU64,
}

impl GroupCommitCounters {
    /// The counters now. Each is read on its own, so a snapshot taken while
    /// the writer runs may see one counter of a round updated and not yet
    /// another.
    pub fn snapshot(&self) -> GroupCommitStats {
        let read = |counter: &AtomicU64| counter.load(Ordering::Relaxed);
        GroupCommitStats {
            batches: read(&self.batches),
            records: read(&self.records),
            syncs: read(&self.syncs),
            metadata_writes: read(&self.metadata_writes),
            sync_micros: read(&self.sync_micros),
            metadata_sync_micros: read(&self.metadata_sync_micros),
        }
    }
}

/// Adds `amount` to a counter; only the writer thread adds.
fn add(counter: &AtomicU64, amount: u64) {
    counter.fetch_add(amount, Ordering::Relaxed);
}

/// The handle to the group-commit writer and completion threads.
///
/// A writer thread owns the target (a [`Wal`] or a
/// [`crate::AcceptorStore`]): it takes submissions from a queue bounded by
/// `queue_submissions_max` and stages every log record queued (up to
/// `batch_bytes_max`). Each round writes the staged frames beside the
/// identifiers of the batch the round before made durable, and syncs the
/// segment once; only then does the completion thread run every completion
/// of that earlier batch with `Ok(())`. Nothing is reported durable before
/// the syncs covering its frame and then its identifier return. At most
/// `pipeline_batches_max` durable batches wait for the completion thread.
/// Metadata in a submission waits until everything before it is durable,
/// and is then written and synced on the writer thread.
///
/// Completions run on the completion thread, in submission order, and must
/// not block: an async caller passes one that sends on a oneshot channel.
/// [`GroupCommit::try_submit`] never blocks and hands the submission back
/// when the queue is full.
///
/// A failed write or sync aborts the process ([`SyncFailurePolicy::Abort`],
/// the default) or, for tests, fails the batch and stops for good
/// ([`SyncFailurePolicy::Stop`]); it is never retried.
///
/// For servers. The deterministic simulator calls
/// [`crate::AcceptorStore::write`] and [`crate::AcceptorStore::sync`] itself,
/// so that everything it does happens on one thread in a seeded order.
pub struct GroupCommit<T: CommitTarget = Wal> {
    sender: Option<SyncSender<Command<T::Submission>>>,
    writer: Option<JoinHandle<T>>,
    counters: Arc<GroupCommitCounters>,
}

impl<T: CommitTarget> fmt::Debug for GroupCommit<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("GroupCommit")
            .field("running", &self.sender.is_some())
            .finish()
    }
}

impl<T: CommitTarget> GroupCommit<T> {
    /// Starts the writer and completion threads; the writer owns `target`
    /// until [`GroupCommit::stop`].
    pub fn start(target: T, config: GroupCommitConfig) -> Result<GroupCommit<T>> {
        if config.queue_submissions_max == 0 || config.batch_bytes_max == 0 || config.pipeline_batches_max == 0 {
            return Err(StorageError::InvalidConfig {
                what: "queue_submissions_max, batch_bytes_max and pipeline_batches_max must be positive".to_string(),
            });
        }
        let (stages, stage_receiver) = mpsc::sync_channel(config.pipeline_batches_max);
        let completions = std::thread::Builder::new()
            .name("synod-wal-completions".to_string())
            .spawn(move || run_completions(stage_receiver))
            .map_err(|e| StorageError::io("synod-wal-completions", "spawn", e))?;
        let (sender, receiver) = mpsc::sync_channel(config.queue_submissions_max);
        let counters = Arc::new(GroupCommitCounters::default());
        let writer = Writer {
            target,
            config,
            failure: None,
            stages: Some(stages),
            waiters: Vec::new(),
            unsynced_identifiers: None,
            counters: counters.clone(),
        };
        let writer = std::thread::Builder::new()
            .name("synod-wal-writer".to_string())
            .spawn(move || writer.run(receiver, completions))
            .map_err(|e| StorageError::io("synod-wal-writer", "spawn", e))?;
        Ok(GroupCommit {
            sender: Some(sender),
            writer: Some(writer),
            counters,
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

    /// The writer's counters, live.
    pub fn counters(&self) -> Arc<GroupCommitCounters> {
        self.counters.clone()
    }

    /// Completes everything queued, stops the threads and returns the target
    /// with the final counters.
    pub fn stop(mut self) -> (T, GroupCommitStats) {
        self.sender = None;
        let writer = self.writer.take().expect("writer lives until stop");
        match writer.join() {
            Ok(target) => (target, self.counters.snapshot()),
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

/// A batch's completions, with its outcome, on their way to the completion
/// thread.
struct Stage {
    outcome: std::result::Result<(), String>,
    waiters: Vec<Waiter>,
}

struct Writer<T: CommitTarget> {
    target: T,
    config: GroupCommitConfig,
    /// Set after a failed write or sync: every later request is refused.
    failure: Option<String>,
    stages: Option<SyncSender<Stage>>,
    /// Completions of what is staged, in queue order.
    waiters: Vec<Waiter>,
    /// The batch whose frames are durable and whose identifiers go into the
    /// next round, with its completions.
    unsynced_identifiers: Option<(IdentifierBatch, Vec<Waiter>)>,
    counters: Arc<GroupCommitCounters>,
}

impl<T: CommitTarget> Writer<T> {
    /// Blocks for the first request of a batch (unless identifiers wait for
    /// a round), then takes whatever else is already queued, up to
    /// `batch_bytes_max`, and runs a round.
    fn run(mut self, receiver: Receiver<Command<T::Submission>>, completions: JoinHandle<()>) -> T {
        loop {
            let mut next = if self.unsynced_identifiers.is_some() {
                receiver.try_recv().ok()
            } else {
                match receiver.recv() {
                    Ok(command) => Some(command),
                    Err(_) => break,
                }
            };
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
            self.round();
            self.rotate_if_full();
        }
        self.stages = None;
        let _ = completions.join();
        if let Some(reason) = self.failure.take() {
            self.target.stop_after(reason);
        }
        self.target
    }

    fn stopped(&self) -> Result<()> {
        match &self.failure {
            Some(reason) => Err(StorageError::Stopped { reason: reason.clone() }),
            None => Ok(()),
        }
    }

    /// Records a failed write or sync: aborts the process, or (for tests)
    /// stops the writer for good.
    fn fail(&mut self, error: &StorageError) {
        let reason = on_failure(error, &self.config);
        self.failure.get_or_insert(reason);
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
        // record without writing: every batch goes through the rounds, in
        // order.
        assert_eq!(wal.sync_count(), syncs, "an append inside the writer wrote");
        appended
    }

    /// Makes everything staged so far durable, then writes the metadata.
    fn write_metadata(&mut self, metadata: &AcceptorMetadata) -> Result<()> {
        self.drain();
        self.stopped()?;
        let started = Instant::now();
        let written = self.target.write_metadata(metadata);
        add(
            &self.counters.metadata_sync_micros,
            started.elapsed().as_micros() as u64,
        );
        match written {
            Ok(()) => {
                add(&self.counters.metadata_writes, 1);
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

    /// One round: writes the waiting identifiers (whose frames are durable)
    /// and the staged frames, syncs once, then hands the batch the
    /// identifiers belong to, now durable, to the completion thread. The
    /// staged batch's identifiers wait for the next round.
    fn round(&mut self) {
        let staged = self.target.wal_mut().staged_records();
        let unsynced = self.unsynced_identifiers.take();
        if staged == 0 && self.waiters.is_empty() && unsynced.is_none() {
            return;
        }
        let mut identifiers = None;
        if self.stopped().is_ok() && (staged > 0 || unsynced.is_some()) {
            let started = Instant::now();
            match self.write_and_sync(unsynced.as_ref().map(|(batch, _)| batch)) {
                Ok(batch) => {
                    if staged > 0 {
                        add(&self.counters.batches, 1);
                        add(&self.counters.records, staged);
                    }
                    identifiers = batch;
                }
                Err(error) => self.fail(&error),
            }
            add(&self.counters.sync_micros, started.elapsed().as_micros() as u64);
        }
        if let Some((_, waiters)) = unsynced {
            self.complete(waiters);
        }
        let waiters = std::mem::take(&mut self.waiters);
        match identifiers {
            Some(batch) if self.failure.is_none() => self.unsynced_identifiers = Some((batch, waiters)),
            _ => self.complete(waiters),
        }
    }

    /// Writes `identifiers` and the staged frames, then syncs the segment;
    /// returns the staged frames' identifiers.
    fn write_and_sync(&mut self, identifiers: Option<&IdentifierBatch>) -> Result<Option<IdentifierBatch>> {
        let wal = self.target.wal_mut();
        if let Some(identifiers) = identifiers {
            wal.write_identifiers(identifiers)?;
        }
        let written = wal.write_frames()?;
        wal.sync_file()?;
        add(&self.counters.syncs, 1);
        Ok(written)
    }

    /// Hands completions to the completion thread, with the outcome every
    /// one of them gets unless it failed on its own.
    fn complete(&mut self, waiters: Vec<Waiter>) {
        let outcome = match &self.failure {
            Some(reason) => Err(reason.clone()),
            None => Ok(()),
        };
        let sender = self.stages.as_ref().expect("stages live until stop");
        if let Err(error) = sender.send(Stage { outcome, waiters }) {
            complete(error.0.waiters, Err("the completion thread stopped".to_string()));
        }
    }

    /// Makes everything staged so far durable, identifiers included.
    fn drain(&mut self) {
        self.round();
        while self.unsynced_identifiers.is_some() {
            self.round();
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

/// Runs the completions of durable batches, in order.
fn run_completions(stages: Receiver<Stage>) {
    for Stage { outcome, waiters } in stages {
        complete(waiters, outcome);
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
