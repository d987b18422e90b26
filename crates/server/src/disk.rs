//! Durable acceptor state: what the core's `Ready::persist` asks for.
//!
//! The core task never touches a file. It hands each Ready's records to a
//! [`DiskWriter`], whose own OS thread appends them to a [`LogStore`] and makes
//! them durable with one sync for every record queued meanwhile (group
//! commit), then reports back; only then does the core task send the Ready's
//! messages.
//!
//! [`FileLog`] is the store used today: one append-only file of checksummed
//! records in the data directory. The [`LogStore`] trait is the seam where a
//! segmented log with separate identifiers (synod-storage) plugs in.
//!
//! # Record format
//!
//! `length: u32 | crc32c(payload): u32 | payload`, big-endian. On restart the
//! file is read front to back; the first record that is incomplete or fails
//! its checksum ends the log (a write torn by a crash) and the file is cut
//! there before anything new is appended.
//!
//! **A sync failure is never retried**: the pages it covered may be lost while
//! marked clean. The writer reports it, and the server stops.

use std::fs::{self, File, OpenOptions};
use std::io::{self, Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};

use bytes::{Buf, BufMut, Bytes, BytesMut};
use synod_paxos::{
    decode_batch, encode_batch, Ballot, DurableState, Instance, Meta, NodeId, Persist, StoredSlot, Voting,
};
use tokio::sync::{mpsc, oneshot};

/// File name of the acceptor log inside the data directory.
pub const LOG_FILE: &str = "paxos.log";
/// Largest single record, in bytes; a longer length field is damage.
const RECORD_BYTES_MAX: usize = 64 << 20;
/// Write jobs queued for the disk thread before the core task waits.
const DISK_QUEUE_JOBS_MAX: usize = 1_024;

/// Somewhere to append acceptor records durably.
pub trait LogStore: Send + 'static {
    /// Appends records; they need not be durable until [`LogStore::sync`].
    fn append(&mut self, records: &[Persist]) -> io::Result<()>;
    /// Makes every appended record durable.
    fn sync(&mut self) -> io::Result<()>;
}

/// One append-only file of checksummed records.
#[derive(Debug)]
pub struct FileLog {
    file: File,
    path: PathBuf,
    buffer: BytesMut,
}

#[derive(Debug, thiserror::Error)]
pub enum DiskError {
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("{path}: record at byte {offset} is damaged ({reason}) and later records exist; refusing to start")]
    Corrupt { path: PathBuf, offset: u64, reason: String },
}

impl FileLog {
    /// Opens (or creates) the log in `data_dir` and reads back what it holds.
    pub fn open(data_dir: &Path) -> Result<(FileLog, Option<DurableState>), DiskError> {
        let path = data_dir.join(LOG_FILE);
        let io = |source| DiskError::Io {
            path: path.clone(),
            source,
        };
        let existed = path.exists();
        let mut file = OpenOptions::new()
            .read(true)
            .append(true)
            .create(true)
            .open(&path)
            .map_err(io)?;
        let mut contents = Vec::new();
        file.read_to_end(&mut contents).map_err(io)?;
        let (records, good_bytes) = read_records(&path, &contents)?;
        if good_bytes < contents.len() {
            tracing::warn!(
                path = %path.display(),
                torn_bytes = contents.len() - good_bytes,
                "cutting a torn record at the end of the acceptor log"
            );
            file.set_len(good_bytes as u64).map_err(io)?;
            file.sync_all().map_err(io)?;
        }
        file.seek(SeekFrom::End(0)).map_err(io)?;
        let durable = if existed && !records.is_empty() {
            Some(durable_state(records))
        } else {
            None
        };
        Ok((
            FileLog {
                file,
                path,
                buffer: BytesMut::new(),
            },
            durable,
        ))
    }

    /// Whether `data_dir` holds an acceptor log with at least one record.
    pub fn exists(data_dir: &Path) -> bool {
        fs::metadata(data_dir.join(LOG_FILE)).is_ok_and(|metadata| metadata.len() > 0)
    }
}

impl LogStore for FileLog {
    fn append(&mut self, records: &[Persist]) -> io::Result<()> {
        self.buffer.clear();
        for record in records {
            let payload = encode_record(record);
            self.buffer.put_u32(payload.len() as u32);
            self.buffer.put_u32(crc32c::crc32c(&payload));
            self.buffer.put_slice(&payload);
        }
        self.file.write_all(&self.buffer)
    }

    fn sync(&mut self) -> io::Result<()> {
        self.file
            .sync_data()
            .map_err(|error| io::Error::new(error.kind(), format!("fdatasync {}: {error}", self.path.display())))
    }
}

const TAG_META: u8 = 1;
const TAG_ACCEPTED: u8 = 2;
const TAG_CHOSEN: u8 = 3;
const TAG_CHOSEN_THROUGH: u8 = 4;

fn put_ballot(buffer: &mut BytesMut, ballot: Ballot) {
    buffer.put_u64(ballot.round);
    buffer.put_u64(ballot.incarnation);
    buffer.put_u64(ballot.node.0);
}

fn encode_record(record: &Persist) -> Bytes {
    let mut buffer = BytesMut::new();
    match record {
        Persist::Meta(meta) => {
            buffer.put_u8(TAG_META);
            put_ballot(&mut buffer, meta.promised);
            buffer.put_u64(meta.incarnation);
            match meta.voting {
                Voting::Voter => buffer.put_u8(0),
                Voting::ProbePending { new_group } => {
                    buffer.put_u8(1);
                    buffer.put_u8(u8::from(new_group));
                }
                Voting::AwaitMaster => buffer.put_u8(2),
                Voting::LearnUntil(instance) => {
                    buffer.put_u8(3);
                    buffer.put_u64(instance.0);
                }
            }
        }
        Persist::Accepted {
            instance,
            ballot,
            batch,
        } => {
            buffer.put_u8(TAG_ACCEPTED);
            buffer.put_u64(instance.0);
            put_ballot(&mut buffer, *ballot);
            buffer.put_slice(&encode_batch(batch));
        }
        Persist::Chosen { instance, batch } => {
            buffer.put_u8(TAG_CHOSEN);
            buffer.put_u64(instance.0);
            buffer.put_slice(&encode_batch(batch));
        }
        Persist::ChosenThrough { through } => {
            buffer.put_u8(TAG_CHOSEN_THROUGH);
            buffer.put_u64(through.0);
        }
    }
    buffer.freeze()
}

fn take_u64(payload: &mut Bytes) -> Result<u64, String> {
    if payload.remaining() < 8 {
        return Err("record ends early".into());
    }
    Ok(payload.get_u64())
}

fn take_ballot(payload: &mut Bytes) -> Result<Ballot, String> {
    Ok(Ballot::new(
        take_u64(payload)?,
        take_u64(payload)?,
        NodeId(take_u64(payload)?),
    ))
}

fn decode_record(mut payload: Bytes) -> Result<Persist, String> {
    if payload.is_empty() {
        return Err("empty record".into());
    }
    let tag = payload.get_u8();
    let batch = |payload: &Bytes| decode_batch(payload, RECORD_BYTES_MAX).map_err(|error| error.to_string());
    match tag {
        TAG_META => {
            let promised = take_ballot(&mut payload)?;
            let incarnation = take_u64(&mut payload)?;
            if payload.is_empty() {
                return Err("record ends early".into());
            }
            let voting = match payload.get_u8() {
                0 => Voting::Voter,
                1 if !payload.is_empty() => Voting::ProbePending {
                    new_group: payload.get_u8() != 0,
                },
                2 => Voting::AwaitMaster,
                3 => Voting::LearnUntil(Instance(take_u64(&mut payload)?)),
                _ => return Err("unknown voting state".into()),
            };
            Ok(Persist::Meta(Meta {
                promised,
                incarnation,
                voting,
            }))
        }
        TAG_ACCEPTED => {
            let instance = Instance(take_u64(&mut payload)?);
            let ballot = take_ballot(&mut payload)?;
            Ok(Persist::Accepted {
                instance,
                ballot,
                batch: batch(&payload)?,
            })
        }
        TAG_CHOSEN => {
            let instance = Instance(take_u64(&mut payload)?);
            Ok(Persist::Chosen {
                instance,
                batch: batch(&payload)?,
            })
        }
        TAG_CHOSEN_THROUGH => Ok(Persist::ChosenThrough {
            through: Instance(take_u64(&mut payload)?),
        }),
        tag => Err(format!("unknown record tag {tag}")),
    }
}

/// Reads records until the end or the first damaged one. Damage followed by
/// at least one more good-looking header is corruption, not a torn write.
fn read_records(path: &Path, contents: &[u8]) -> Result<(Vec<Persist>, usize), DiskError> {
    let mut records = Vec::new();
    let mut offset = 0usize;
    while offset < contents.len() {
        let rest = &contents[offset..];
        let damage = if rest.len() < 8 {
            Some("incomplete header".to_string())
        } else {
            let length = u32::from_be_bytes([rest[0], rest[1], rest[2], rest[3]]) as usize;
            let checksum = u32::from_be_bytes([rest[4], rest[5], rest[6], rest[7]]);
            if length > RECORD_BYTES_MAX {
                Some(format!("length {length} over the bound"))
            } else if rest.len() < 8 + length {
                Some("incomplete record".to_string())
            } else {
                let payload = &rest[8..8 + length];
                if crc32c::crc32c(payload) != checksum {
                    Some("checksum mismatch".to_string())
                } else {
                    match decode_record(Bytes::copy_from_slice(payload)) {
                        Ok(record) => {
                            records.push(record);
                            offset += 8 + length;
                            None
                        }
                        Err(reason) => Some(reason),
                    }
                }
            }
        };
        if let Some(reason) = damage {
            // A torn write leaves the damaged record last; anything decodable
            // after it means the middle of the log is damaged.
            let later_intact = rest.len() >= 8 && {
                let length = u32::from_be_bytes([rest[0], rest[1], rest[2], rest[3]]) as usize;
                rest.len() > 8 + length + 8 && length <= RECORD_BYTES_MAX
            };
            if later_intact && reason == "checksum mismatch" {
                return Err(DiskError::Corrupt {
                    path: path.to_path_buf(),
                    offset: offset as u64,
                    reason,
                });
            }
            return Ok((records, offset));
        }
    }
    Ok((records, offset))
}

/// What the core needs at restart, from the records in log order.
fn durable_state(records: Vec<Persist>) -> DurableState {
    let mut state = DurableState::default();
    let mut slots: std::collections::BTreeMap<Instance, StoredSlot> = Default::default();
    for record in records {
        match record {
            Persist::Meta(meta) => state.meta = meta,
            Persist::Accepted {
                instance,
                ballot,
                batch,
            } => {
                if !matches!(slots.get(&instance), Some(StoredSlot::Chosen { .. })) {
                    slots.insert(instance, StoredSlot::Accepted { ballot, batch });
                }
            }
            Persist::Chosen { instance, batch } => {
                slots.insert(instance, StoredSlot::Chosen { batch });
            }
            Persist::ChosenThrough { through } => state.chosen_through = state.chosen_through.max(through),
        }
    }
    state.slots = slots.into_iter().collect();
    state
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

#[cfg(test)]
mod tests {
    use super::*;
    use synod_paxos::{Batch, BatchId, Entry};

    fn directory(tag: &str) -> PathBuf {
        let path = std::env::temp_dir().join(format!("synod-disk-{tag}-{}", std::process::id()));
        let _ = fs::remove_dir_all(&path);
        fs::create_dir_all(&path).unwrap();
        path
    }

    fn sample() -> Vec<Persist> {
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
        vec![
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
            Persist::Chosen {
                instance: Instance(2),
                batch,
            },
            Persist::ChosenThrough { through: Instance(2) },
        ]
    }

    #[test]
    fn records_survive_a_restart_and_a_torn_tail_is_cut() {
        let path = directory("torn");
        let (mut log, durable) = FileLog::open(&path).unwrap();
        assert!(durable.is_none());
        log.append(&sample()).unwrap();
        log.sync().unwrap();
        drop(log);
        // A crash in the middle of the next append.
        let mut file = OpenOptions::new().append(true).open(path.join(LOG_FILE)).unwrap();
        file.write_all(&[0, 0, 0, 40, 1, 2]).unwrap();
        drop(file);
        let (_, durable) = FileLog::open(&path).unwrap();
        let durable = durable.unwrap();
        assert_eq!(durable.meta.incarnation, 3);
        assert_eq!(durable.chosen_through, Instance(2));
        assert_eq!(durable.slots.len(), 2);
        let _ = fs::remove_dir_all(&path);
    }

    #[test]
    fn garbage_never_panics() {
        let path = directory("garbage");
        for seed in 0u64..200 {
            let bytes: Vec<u8> = (0..(seed % 97))
                .map(|index| (seed.wrapping_mul(31).wrapping_add(index * 17) % 251) as u8)
                .collect();
            let _ = read_records(&path, &bytes);
        }
        let _ = fs::remove_dir_all(&path);
    }
}
