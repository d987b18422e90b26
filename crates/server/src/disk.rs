//! Durable acceptor state: what the core's `Ready::persist` asks for.
//!
//! The core task never touches a file. It hands each Ready's records to a
//! [`DiskWriter`], whose own OS thread appends them to the replica's
//! [`AcceptorStore`] (synod-storage: a segmented write-ahead log with
//! identifiers kept apart from the entries, two metadata copies, snapshots) and
//! makes them durable with one sync for every record queued meanwhile (group
//! commit), then reports back; only then does the core task send the Ready's
//! messages.
//!
//! Recovery is protocol-aware: a torn tail (an append that never finished) is
//! dropped, but a damaged entry is handed to the core as faulty, to be repaired
//! from peers, never silently truncated (see ARCHITECTURE.md).
//!
//! **A sync failure is never retried**: the pages it covered may be lost while
//! marked clean. The writer reports it, and the server stops.

use std::io;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use synod_paxos::Persist;
use synod_storage::{AcceptorStore, AcceptorStoreConfig, Disk, FsDisk, Recovered};
use tokio::sync::{mpsc, oneshot};

/// The directory, inside the data directory, that holds the acceptor's files.
pub const STORE_DIRECTORY: &str = "paxos";
/// Write jobs queued for the disk thread before the core task waits.
const DISK_QUEUE_JOBS_MAX: usize = 1_024;

/// Somewhere to append acceptor records durably.
pub trait LogStore: Send + 'static {
    /// Appends records; they need not be durable until [`LogStore::sync`].
    fn append(&mut self, records: &[Persist]) -> io::Result<()>;
    /// Makes every appended record durable.
    fn sync(&mut self) -> io::Result<()>;
}

impl LogStore for AcceptorStore {
    fn append(&mut self, records: &[Persist]) -> io::Result<()> {
        self.write(records).map_err(io::Error::other)
    }

    fn sync(&mut self) -> io::Result<()> {
        AcceptorStore::sync(self).map_err(io::Error::other)
    }
}

/// Why the acceptor's files could not be opened.
#[derive(Debug, thiserror::Error)]
pub enum DiskError {
    #[error("{path}: {source}")]
    Storage {
        path: PathBuf,
        #[source]
        source: synod_storage::StorageError,
    },
}

/// Opens the acceptor's store in `data_dir` and reads back what it holds.
/// Refuses to start, naming the file, when the disk holds state it cannot
/// trust (both metadata copies damaged, say): an operator decides then.
pub fn open_store(data_dir: &Path, batch_bytes_max: usize) -> Result<(AcceptorStore, Recovered), DiskError> {
    let path = data_dir.join(STORE_DIRECTORY);
    let error = |source| DiskError::Storage {
        path: path.clone(),
        source,
    };
    let disk: Arc<dyn Disk> = Arc::new(FsDisk::open(&path).map_err(error)?);
    let config = AcceptorStoreConfig {
        batch_bytes_max,
        ..AcceptorStoreConfig::default()
    };
    let (store, recovered) = AcceptorStore::open(disk, &config).map_err(error)?;
    let recovery = &recovered.recovery;
    if recovery.torn_tail_bytes > 0 || !recovery.corrupted.is_empty() {
        tracing::warn!(
            path = %path.display(),
            torn_tail_bytes = recovery.torn_tail_bytes,
            corrupted_records = recovery.corrupted.len(),
            "acceptor log recovered with damage; damaged entries will be repaired from peers"
        );
    }
    Ok((store, recovered))
}

struct DiskJob {
    records: Vec<Persist>,
    done: oneshot::Sender<io::Result<()>>,
}

/// The async side of the disk thread.
#[derive(Clone, Debug)]
pub struct DiskWriter {
    jobs: mpsc::Sender<DiskJob>,
}

impl DiskWriter {
    /// Starts the disk thread over `store`.
    pub fn start(mut store: Box<dyn LogStore>) -> io::Result<DiskWriter> {
        let (jobs, mut receiver) = mpsc::channel::<DiskJob>(DISK_QUEUE_JOBS_MAX);
        std::thread::Builder::new().name("synod-disk".into()).spawn(move || {
            while let Some(first) = receiver.blocking_recv() {
                let mut batch = vec![first];
                while let Ok(more) = receiver.try_recv() {
                    batch.push(more);
                }
                let mut result = Ok(());
                for job in &batch {
                    if let Err(error) = store.append(&job.records) {
                        result = Err(error);
                        break;
                    }
                }
                if result.is_ok() {
                    result = store.sync();
                }
                let failed = result.is_err();
                for job in batch {
                    let outcome = match &result {
                        Ok(()) => Ok(()),
                        Err(error) => Err(io::Error::new(error.kind(), error.to_string())),
                    };
                    let _ = job.done.send(outcome);
                }
                if failed {
                    // Never retried: whatever was in the page cache may be gone.
                    break;
                }
            }
        })?;
        Ok(DiskWriter { jobs })
    }

    /// Makes `records` durable; returns once they are.
    pub async fn persist(&self, records: Vec<Persist>) -> io::Result<()> {
        let (done, wait) = oneshot::channel();
        self.jobs
            .send(DiskJob { records, done })
            .await
            .map_err(|_| io::Error::other("the disk thread has stopped after a failure"))?;
        wait.await
            .map_err(|_| io::Error::other("the disk thread has stopped after a failure"))?
    }
}
