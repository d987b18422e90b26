//! Durable acceptor state and snapshots, through synod-storage, on a thread of
//! their own.
//!
//! The core task never touches a file. It hands each Ready's persist records
//! to the [`DiskWriter`], whose OS thread stages them in the storage crate's
//! [`AcceptorStore`] (metadata copies, write-ahead log with identifiers) and
//! makes every record queued meanwhile durable with one sync (group commit),
//! then reports back; only then does the core task send the Ready's messages.
//! Snapshots of the state machine are written off this thread (see
//! `node.rs`); once one is durable, this thread trims the log below it, in
//! order with the records.
//!
//! **A sync failure is never retried**: the pages it covered may be lost while
//! marked clean. The writer reports it and stops; the server stops with it.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use synod_paxos::{DurableState, Instance, Persist};
use synod_storage::{AcceptorStore, AcceptorStoreConfig, Disk, FinishedSnapshot, FsDisk, StorageError};
use tokio::sync::{mpsc, oneshot};

/// Directory inside the data directory that holds the storage crate's files.
pub const STORAGE_DIRECTORY: &str = "paxos";
/// Jobs queued for the disk thread before the core task waits.
const DISK_QUEUE_JOBS_MAX: usize = 1_024;

#[derive(Debug, thiserror::Error)]
pub enum DiskError {
    #[error("cannot open the acceptor store in {path}: {source}")]
    Open {
        path: PathBuf,
        #[source]
        source: StorageError,
    },
    #[error("acceptor store failed (never retried): {0}")]
    Failed(String),
    #[error("the disk thread has stopped after a failure")]
    Stopped,
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
    let path = data_dir.join(STORAGE_DIRECTORY);
    let error = |source| DiskError::Open {
        path: path.clone(),
        source,
    };
    let disk: Arc<dyn Disk> = Arc::new(FsDisk::open(&path).map_err(error)?);
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
    ))
}

enum DiskJob {
    Persist {
        records: Vec<Persist>,
        done: oneshot::Sender<Result<(), DiskError>>,
    },
    Trim {
        finished: FinishedSnapshot,
        done: oneshot::Sender<Result<Instance, DiskError>>,
    },
}

/// The async side of the disk thread.
#[derive(Clone, Debug)]
pub struct DiskWriter {
    jobs: mpsc::Sender<DiskJob>,
}

impl DiskWriter {
    /// Starts the disk thread over `store`.
    pub fn start(mut store: AcceptorStore) -> std::io::Result<DiskWriter> {
        let (jobs, mut receiver) = mpsc::channel::<DiskJob>(DISK_QUEUE_JOBS_MAX);
        std::thread::Builder::new().name("synod-disk".into()).spawn(move || {
            while let Some(first) = receiver.blocking_recv() {
                let mut batch = vec![first];
                while let Ok(more) = receiver.try_recv() {
                    batch.push(more);
                }
                if !write_batch(&mut store, batch) {
                    // Never retried: whatever was in the page cache may be gone.
                    break;
                }
            }
        })?;
        Ok(DiskWriter { jobs })
    }

    /// Makes `records` durable; returns once they are.
    pub async fn persist(&self, records: Vec<Persist>) -> Result<(), DiskError> {
        let (done, wait) = oneshot::channel();
        self.jobs
            .send(DiskJob::Persist { records, done })
            .await
            .map_err(|_| DiskError::Stopped)?;
        wait.await.map_err(|_| DiskError::Stopped)?
    }

    /// Queues the trim of the log below a durable snapshot; the receiver
    /// reports the snapshot's instance once the log is trimmed.
    pub fn trim(&self, finished: FinishedSnapshot) -> Option<oneshot::Receiver<Result<Instance, DiskError>>> {
        let (done, wait) = oneshot::channel();
        self.jobs.try_send(DiskJob::Trim { finished, done }).ok()?;
        Some(wait)
    }
}

/// Writes one group of jobs: every persist record staged, one sync, then the
/// trims. Returns false after a failure.
fn write_batch(store: &mut AcceptorStore, batch: Vec<DiskJob>) -> bool {
    let mut persists = Vec::new();
    let mut trims = Vec::new();
    let mut failure: Option<String> = None;
    for job in batch {
        match job {
            DiskJob::Persist { records, done } => {
                if failure.is_none() {
                    if let Err(error) = store.write(&records) {
                        failure = Some(error.to_string());
                    }
                }
                persists.push(done);
            }
            DiskJob::Trim { finished, done } => trims.push((finished, done)),
        }
    }
    if failure.is_none() && !persists.is_empty() {
        if let Err(error) = store.sync() {
            failure = Some(error.to_string());
        }
    }
    for done in persists {
        let _ = done.send(match &failure {
            None => Ok(()),
            Some(error) => Err(DiskError::Failed(error.clone())),
        });
    }
    for (finished, done) in trims {
        let instance = finished.instance();
        let result = match &failure {
            Some(error) => Err(DiskError::Failed(error.clone())),
            None => store
                .trim(&finished)
                .map(|()| instance)
                .map_err(|error| DiskError::Failed(error.to_string())),
        };
        if let Err(error) = &result {
            // A failed trim leaves the log as it was; only syncs are fatal.
            tracing::warn!(%error, %instance, "trimming the log failed; it is kept");
        }
        let _ = done.send(result);
    }
    failure.is_none()
}

#[cfg(test)]
mod tests {
    use super::*;
    use bytes::Bytes;
    use synod_paxos::{Ballot, Batch, BatchId, Entry, Epoch, Meta, NodeId, Voting};

    fn directory(tag: &str) -> PathBuf {
        let path = std::env::temp_dir().join(format!("synod-disk-{tag}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&path);
        path
    }

    #[tokio::test]
    async fn records_and_snapshots_survive_a_restart() {
        let path = directory("restart");
        let (store, opened) = open(&path, 1 << 20).unwrap();
        assert!(opened.durable.is_none());
        let snapshots = store.snapshots().clone();
        let writer = DiskWriter::start(store).unwrap();
        let ballot = Ballot::new(2, 1, NodeId(7));
        let batch = Batch::new(
            BatchId {
                ballot,
                instance: Instance(1),
            },
            vec![Entry {
                value: Bytes::from_static(b"put x"),
                expected_epoch: None,
            }],
        );
        writer
            .persist(vec![
                Persist::Meta(Meta {
                    promised: ballot,
                    incarnation: 3,
                    voting: Voting::Voter,
                }),
                Persist::Accepted {
                    instance: Instance(1),
                    ballot,
                    batch: batch.clone(),
                },
                Persist::ChosenThrough { through: Instance(1) },
            ])
            .await
            .unwrap();
        // The snapshot is written outside the disk thread, which only trims.
        let mut snapshot = AcceptorStore::begin_snapshot(&snapshots, Instance(1), Epoch(ballot)).unwrap();
        snapshot.write(b"state").unwrap();
        let done = writer.trim(snapshot.finish().unwrap()).unwrap();
        assert_eq!(done.await.unwrap().unwrap(), Instance(1));
        // Both hold the data directory's lock.
        drop(writer);
        drop(snapshots);
        std::thread::sleep(std::time::Duration::from_millis(50));
        let (_, opened) = open(&path, 1 << 20).unwrap();
        let durable = opened.durable.unwrap();
        assert_eq!(durable.meta.incarnation, 3);
        assert_eq!(durable.snapshot_instance, Instance(1));
        assert_eq!(opened.snapshot_state.as_deref(), Some(&b"state"[..]));
        let _ = std::fs::remove_dir_all(&path);
    }
}
