//! Durable acceptor state and snapshots: an async front of synod-storage's
//! group commit.
//!
//! The core task never touches a file. It hands each Ready's persist records
//! to the [`DiskWriter`], a thin async wrapper over the storage crate's
//! [`GroupCommit`] owning the [`AcceptorStore`]. Its writer thread stages the
//! records of every Ready queued meanwhile and syncs the log once per batch,
//! writing the previous batch's identifiers beside this batch's frames; once
//! a batch's identifiers are synced, a completion thread completes its
//! submissions, in submission order;
//! metadata (promise, incarnation, voting state) is written and synced on the
//! writer thread in queue order. A completion sends on a tokio oneshot
//! channel, which the core task awaits before it sends the Ready's messages.
//!
//! The async side never blocks: a submission first takes one of
//! [`DISK_QUEUE_SUBMISSIONS_MAX`] permits (awaiting one while all are taken),
//! then submits without blocking; the permit goes back when the submission
//! completes, so the storage queue, of the same size, is never found full.
//!
//! Snapshots are written off the writer thread, from a clone of the store's
//! `SnapshotStore` ([`AcceptorStore::snapshots`], taken before the store is
//! handed over) with [`AcceptorStore::write_snapshot`], on a thread that may block;
//! the [`FinishedSnapshot`] then trims the log on the writer thread
//! ([`DiskWriter::trim`]).
//!
//! **A failed write or sync is never retried**: the pages it covered may be
//! lost while marked clean. The writer aborts the process
//! ([`SyncFailurePolicy::Abort`]); a restart reads back what is on disk.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use synod_paxos::{DurableState, Instance, Persist};
use synod_storage::{
    AcceptorStore, AcceptorStoreConfig, Disk, FailpointDisk, FailpointOptions, FinishedSnapshot, FsDisk, GroupCommit,
    GroupCommitConfig, GroupCommitCounters, RejectReason, StorageError, SyncFailurePolicy,
};
use tokio::sync::{oneshot, Semaphore};

/// Directory inside the data directory that holds the storage crate's files.
pub const STORAGE_DIRECTORY: &str = "paxos";
/// Submissions (each one Ready's persist records) and trims queued for, or
/// in, the writer threads; beyond it `persist` waits for one to complete.
pub const DISK_QUEUE_SUBMISSIONS_MAX: usize = 1_024;

/// Why acceptor state could not be made durable.
#[derive(Debug, thiserror::Error)]
pub enum DiskError {
    /// The store could not be opened.
    #[error("cannot open the acceptor store in {path}: {source}")]
    Open {
        /// The data directory.
        path: PathBuf,
        /// What failed.
        #[source]
        source: StorageError,
    },
    /// A write or sync failed: the member stops, since a failed fsync cannot be retried safely.
    #[error("acceptor store failed (never retried): {0}")]
    Failed(String),
    /// The writer threads are gone.
    #[error("the disk writer has stopped after a failure")]
    Stopped,
}

impl From<StorageError> for DiskError {
    fn from(error: StorageError) -> DiskError {
        DiskError::Failed(error.to_string())
    }
}

impl From<RejectReason> for DiskError {
    fn from(reason: RejectReason) -> DiskError {
        match reason {
            RejectReason::Stopped => DiskError::Stopped,
            // Every queued submission holds a permit, and there are as many
            // permits as queue slots.
            RejectReason::QueueFull => DiskError::Failed("the disk queue is full although a permit was held".into()),
        }
    }
}

/// What a start found in the data directory.
#[derive(Debug)]
pub struct Opened {
    /// `None`: nothing durable yet (a new member, or one whose disk was replaced).
    pub durable: Option<DurableState>,
    /// The state machine's bytes from the newest snapshot.
    pub snapshot_state: Option<Vec<u8>>,
}

/// Opens the acceptor store under `data_dir`.
pub fn open(data_dir: &Path, batch_bytes_max: usize) -> Result<(AcceptorStore, Opened), DiskError> {
    let (store, opened, _) = open_with(data_dir, batch_bytes_max, FailpointOptions::default())?;
    Ok((store, opened))
}

/// Opens the acceptor store under `data_dir` through a [`FailpointDisk`]
/// when `failpoints` asks for anything (`--failpoint-power-loss`,
/// `--unsafe-bug no-fsync`), which it then also returns.
pub fn open_with(
    data_dir: &Path,
    batch_bytes_max: usize,
    failpoints: FailpointOptions,
) -> Result<(AcceptorStore, Opened, Option<FailpointDisk>), DiskError> {
    let path = data_dir.join(STORAGE_DIRECTORY);
    let error = |source| DiskError::Open {
        path: path.clone(),
        source,
    };
    let fs_disk: Arc<dyn Disk> = Arc::new(FsDisk::open(&path).map_err(error)?);
    let failpoint =
        (failpoints.record_unsynced || failpoints.skip_sync).then(|| FailpointDisk::new(fs_disk.clone(), failpoints));
    let disk: Arc<dyn Disk> = match &failpoint {
        Some(failpoint) => Arc::new(failpoint.clone()),
        None => fs_disk,
    };
    let config = AcceptorStoreConfig {
        batch_bytes_max: batch_bytes_max + (1 << 20),
        ..AcceptorStoreConfig::default()
    };
    let (store, recovered) = AcceptorStore::open(disk, &config).map_err(error)?;
    let recovery = &recovered.recovery;
    if !recovery.corrupted.is_empty() {
        tracing::warn!(
            damaged = recovery.corrupted.len(),
            "log entries failed their checksums; they will be repaired from peers before they are served"
        );
    }
    Ok((
        store,
        Opened {
            durable: recovered.durable,
            snapshot_state: recovered.snapshot_state,
        },
        failpoint,
    ))
}

/// The async side of the group commit.
#[derive(Clone, Debug)]
pub struct DiskWriter {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    /// `Some` until dropped.
    log: Option<GroupCommit<AcceptorStore>>,
    /// One per submission or trim not yet completed.
    permits: Arc<Semaphore>,
}

impl Drop for Inner {
    fn drop(&mut self) {
        // The writer threads finish what is queued on their own: joining
        // them here could block an async thread.
        if let Some(log) = self.log.take() {
            log.detach();
        }
    }
}

impl DiskWriter {
    /// Starts the group-commit threads over `store`.
    pub fn start(store: AcceptorStore) -> std::io::Result<DiskWriter> {
        let config = GroupCommitConfig {
            queue_submissions_max: DISK_QUEUE_SUBMISSIONS_MAX,
            sync_failure_policy: SyncFailurePolicy::Abort,
            ..GroupCommitConfig::default()
        };
        let log = GroupCommit::start(store, config).map_err(std::io::Error::other)?;
        Ok(DiskWriter {
            inner: Arc::new(Inner {
                log: Some(log),
                permits: Arc::new(Semaphore::new(DISK_QUEUE_SUBMISSIONS_MAX)),
            }),
        })
    }

    /// The group commit's live counters.
    pub fn counters(&self) -> Arc<GroupCommitCounters> {
        self.log().counters()
    }

    fn log(&self) -> &GroupCommit<AcceptorStore> {
        self.inner
            .log
            .as_ref()
            .expect("the log lives until the writer is dropped")
    }

    /// Makes `records` durable; returns once they are, after every Ready
    /// persisted before them.
    pub async fn persist(&self, records: Vec<Persist>) -> Result<(), DiskError> {
        let permit = self
            .inner
            .permits
            .clone()
            .acquire_owned()
            .await
            .map_err(|_| DiskError::Stopped)?;
        let (done, wait) = oneshot::channel();
        self.log()
            .try_submit(
                records,
                Box::new(move |outcome| {
                    drop(permit);
                    let _ = done.send(outcome.map_err(DiskError::from));
                }),
            )
            .map_err(|rejected| DiskError::from(rejected.reason))?;
        wait.await.map_err(|_| DiskError::Stopped)?
    }

    /// Queues a trim of the log below `finished`, without blocking; `None`
    /// when the queue is full or the writer stopped. The receiver reports the
    /// snapshot's instance once the log below it is trimmed.
    pub fn trim(&self, finished: FinishedSnapshot) -> Option<oneshot::Receiver<Result<Instance, DiskError>>> {
        let permit = self.inner.permits.clone().try_acquire_owned().ok()?;
        let (done, wait) = oneshot::channel();
        self.log()
            .try_trim(
                finished,
                Box::new(move |removed| {
                    drop(permit);
                    let _ = done.send(removed.map(|_| finished.instance()).map_err(DiskError::from));
                }),
            )
            .ok()?;
        Some(wait)
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use synod_paxos::{Ballot, Batch, BatchId, Epoch, Meta, NodeId, StoredSlot, Voting};

    fn directory(tag: &str) -> PathBuf {
        let path = std::env::temp_dir().join(format!("synod-disk-{tag}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&path);
        path
    }

    /// Opens the store again once the dropped writer's threads have let go
    /// of the directory.
    pub(crate) fn reopen(path: &Path) -> Opened {
        for _ in 0..500 {
            if let Ok((_, opened)) = open(path, 1 << 20) {
                return opened;
            }
            std::thread::sleep(std::time::Duration::from_millis(10));
        }
        panic!("the data directory stayed locked");
    }

    fn accepted(instance: u64, ballot: Ballot) -> Persist {
        let instance = Instance(instance);
        let batch = Batch::noop(BatchId { ballot, instance });
        Persist::Accepted {
            instance,
            ballot,
            batch,
        }
    }

    #[tokio::test]
    async fn records_and_snapshots_survive_a_restart() {
        let path = directory("restart");
        let (store, opened) = open(&path, 1 << 20).unwrap();
        assert!(opened.durable.is_none());
        let snapshots = store.snapshots().clone();
        let writer = DiskWriter::start(store).unwrap();
        let ballot = Ballot::new(2, 1, NodeId(7));
        writer
            .persist(vec![
                Persist::Meta(Meta {
                    promised: ballot,
                    incarnation: 3,
                    voting: Voting::Voter,
                }),
                accepted(1, ballot),
                Persist::ChosenThrough { through: Instance(1) },
            ])
            .await
            .unwrap();
        // The snapshot is written outside the writer threads, which only trim.
        let finished = AcceptorStore::write_snapshot(&snapshots, Instance(1), Epoch(ballot), |snapshot| {
            snapshot.write(b"state")
        })
        .unwrap();
        let done = writer.trim(finished).unwrap();
        assert_eq!(done.await.unwrap().unwrap(), Instance(1));
        // Both hold the data directory's lock.
        drop(writer);
        drop(snapshots);
        let opened = reopen(&path);
        let durable = opened.durable.unwrap();
        assert_eq!(durable.meta.incarnation, 3);
        assert_eq!(durable.snapshot_instance, Instance(1));
        assert_eq!(opened.snapshot_state.as_deref(), Some(&b"state"[..]));
        let _ = std::fs::remove_dir_all(&path);
    }

    #[tokio::test]
    async fn more_readies_than_queue_slots_wait_for_room_and_all_become_durable() {
        let path = directory("queue");
        let (store, _) = open(&path, 1 << 20).unwrap();
        let snapshots = store.snapshots().clone();
        let writer = DiskWriter::start(store).unwrap();
        let ballot = Ballot::new(1, 1, NodeId(1));
        let readies = 3 * DISK_QUEUE_SUBMISSIONS_MAX as u64;
        let mut tasks = tokio::task::JoinSet::new();
        for instance in 1..=readies {
            let writer = writer.clone();
            tasks.spawn(async move { writer.persist(vec![accepted(instance, ballot)]).await });
        }
        while let Some(outcome) = tasks.join_next().await {
            outcome.unwrap().unwrap();
        }
        // A snapshot written by the caller, then a trim through the writer.
        let finished = tokio::task::spawn_blocking(move || {
            AcceptorStore::write_snapshot(&snapshots, Instance(readies), Epoch(ballot), |snapshot| {
                snapshot.write(b"state")
            })
        })
        .await
        .unwrap()
        .unwrap();
        let trimmed = writer.trim(finished).unwrap();
        assert_eq!(trimmed.await.unwrap().unwrap(), Instance(readies));
        writer.persist(vec![accepted(readies + 1, ballot)]).await.unwrap();
        drop(writer);
        let durable = reopen(&path).durable.unwrap();
        assert_eq!(durable.snapshot_instance, Instance(readies));
        assert!(durable.slots.iter().any(|(instance, slot)| {
            *instance == Instance(readies + 1) && matches!(slot, StoredSlot::Accepted { .. })
        }));
        let _ = std::fs::remove_dir_all(&path);
    }
}
