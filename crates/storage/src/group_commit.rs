//! Group commit for the server: one writer thread owns the [`Wal`], takes
//! appends from a bounded queue, writes everything queued, makes it durable
//! with one [`Wal::sync`] (one `fdatasync` per file), and only then completes
//! every waiter of the batch.
//!
//! Completions are caller-supplied callbacks run on the writer thread, so an
//! async caller passes one that sends on its own oneshot channel and never
//! blocks an executor thread; [`GroupCommit::try_submit`] never blocks and
//! hands a rejected record back.

use std::fmt;
use std::sync::mpsc::{self, Receiver, SyncSender, TryRecvError, TrySendError};
use std::thread::JoinHandle;

use crate::error::{Result, StorageError};
use crate::fatal::fatal_sync_error;
use crate::snapshot::FinishedSnapshot;
use crate::wal::{Record, Wal};

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

#[derive(Clone, Debug)]
pub struct GroupCommitConfig {
    /// Appends (and trims) that may wait in the queue.
    pub queue_records_max: usize,
    /// A batch stops growing at this many bytes of frames.
    pub batch_bytes_max: usize,
    pub sync_failure_policy: SyncFailurePolicy,
}

impl Default for GroupCommitConfig {
    fn default() -> GroupCommitConfig {
        GroupCommitConfig {
            queue_records_max: 4096,
            batch_bytes_max: 4 << 20,
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
    pub record: Record,
    pub completion: Completion,
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
    pub batches: u64,
    pub records: u64,
    /// Time spent in [`Wal::sync`] (writes and fdatasyncs), in microseconds.
    pub sync_micros: u64,
}

/// The handle to the writer thread.
#[derive(Debug)]
pub struct GroupCommit {
    sender: Option<SyncSender<Command>>,
    writer: Option<JoinHandle<(Wal, GroupCommitStats)>>,
}

impl GroupCommit {
    /// Starts the writer thread, which owns `wal` until [`GroupCommit::stop`].
    pub fn start(wal: Wal, config: GroupCommitConfig) -> Result<GroupCommit> {
        if config.queue_records_max == 0 || config.batch_bytes_max == 0 {
            return Err(StorageError::InvalidConfig {
                what: "queue_records_max and batch_bytes_max must be positive".to_string(),
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
    pub fn try_submit(
        &self,
        record: Record,
        completion: Completion,
    ) -> std::result::Result<(), Rejected> {
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
    pub fn submit(
        &self,
        record: Record,
        completion: Completion,
    ) -> std::result::Result<(), Rejected> {
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
    pub fn submit_and_receive(
        &self,
        record: Record,
    ) -> std::result::Result<Receiver<Result<()>>, Rejected> {
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

fn run_writer(
    mut wal: Wal,
    receiver: Receiver<Command>,
    config: GroupCommitConfig,
) -> (Wal, GroupCommitStats) {
    let mut stats = GroupCommitStats::default();
    let mut waiters: Vec<Completion> = Vec::new();
    let mut trims: Vec<(FinishedSnapshot, TrimCompletion)> = Vec::new();
    let mut stopped: Option<String> = None;
    // Blocks for the first request of a batch, then takes whatever else is
    // already queued, up to batch_bytes_max.
    while let Ok(first) = receiver.recv() {
        let mut next = Some(first);
        while let Some(command) = next.take() {
            match command {
                Command::Append(record, completion) => {
                    if let Some(reason) = &stopped {
                        completion(Err(StorageError::Stopped {
                            reason: reason.clone(),
                        }));
                    } else {
                        match wal.append(&record) {
                            Ok(()) => waiters.push(completion),
                            Err(error) if error.is_sync_failure() => {
                                waiters.push(completion);
                                stopped = Some(fail_batch(&error, &mut waiters, &config));
                            }
                            Err(error) => completion(Err(error)),
                        }
                    }
                }
                Command::Trim(snapshot, completion) => trims.push((snapshot, completion)),
            }
            if wal.staged_bytes() >= config.batch_bytes_max || !trims.is_empty() {
                break;
            }
            next = match receiver.try_recv() {
                Ok(command) => Some(command),
                Err(TryRecvError::Empty) | Err(TryRecvError::Disconnected) => None,
            };
        }
        if stopped.is_none() && !waiters.is_empty() {
            let records = waiters.len() as u64;
            let sync_started = std::time::Instant::now();
            let synced = wal.sync();
            stats.sync_micros += sync_started.elapsed().as_micros() as u64;
            match synced {
                Ok(()) => {
                    stats.batches += 1;
                    stats.records += records;
                    for completion in waiters.drain(..) {
                        completion(Ok(()));
                    }
                }
                Err(error) => stopped = Some(fail_batch(&error, &mut waiters, &config)),
            }
        }
        for (snapshot, completion) in trims.drain(..) {
            match &stopped {
                Some(reason) => completion(Err(StorageError::Stopped {
                    reason: reason.clone(),
                })),
                None => completion(wal.trim(&snapshot)),
            }
        }
    }
    (wal, stats)
}

/// Fails every waiter of a batch whose sync failed, or aborts the process.
fn fail_batch(
    error: &StorageError,
    waiters: &mut Vec<Completion>,
    config: &GroupCommitConfig,
) -> String {
    if config.sync_failure_policy == SyncFailurePolicy::Abort {
        fatal_sync_error(error);
    }
    let reason = error.to_string();
    for completion in waiters.drain(..) {
        completion(Err(StorageError::GroupCommitFailed {
            reason: reason.clone(),
        }));
    }
    reason
}
