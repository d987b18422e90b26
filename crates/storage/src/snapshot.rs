//! Snapshots, as in Paxos Made Live: the application asks for a
//! [`SnapshotWriter`] (the snapshot handle) recording the instance its state
//! covers, writes the state in checksummed chunks off the hot path while the
//! log keeps taking appends, and hands the writer back with
//! [`SnapshotWriter::finish`]. Only the [`FinishedSnapshot`] that returns can
//! trim the log ([`crate::Wal::trim`]), so a failed or abandoned snapshot
//! leaves the log intact.
//!
//! # File format
//!
//! `snapshot-<instance>.snap`: a 32-byte header (magic, version, chunk size,
//! instance), a 32-byte manifest (chunk count, total bytes, checksum), then
//! the chunks, each `length u32 | crc32c u32 | data`. Every chunk but the last
//! holds exactly the chunk size, so chunk `i` is found without an index.
//!
//! # Write ordering
//!
//! A snapshot is written to `snapshot-<instance>.tmp`, its manifest last,
//! synced, then renamed to `.snap` (the rename fsyncs the directory). Older
//! `.snap` files are removed only after that, so a crash at any point leaves
//! the previous good snapshot, the new one, or both; `.tmp` leftovers are
//! ignored and removed. An installer writes `snapshot-incoming.partial` in the
//! same format, syncing after every chunk so progress survives a crash, and
//! renames it when the last chunk is in.

use std::sync::Arc;

use bytes::Bytes;
use synod_paxos::Instance;

use crate::disk::{Disk, File};
use crate::error::{Result, StorageError};
use crate::fields::{decode_file_header, encode_file_header, put_u32, put_u64, Decoder, FILE_HEADER_BYTES};

const SNAPSHOT_MAGIC: u64 = u64::from_le_bytes(*b"SYNODSNP");
const FORMAT_VERSION: u32 = 1;
const MANIFEST_BYTES: usize = 32;
const CHUNKS_OFFSET: u64 = (FILE_HEADER_BYTES + MANIFEST_BYTES) as u64;
const CHUNK_HEADER_BYTES: u64 = 8;
/// The largest chunk size any snapshot may declare: bounds every allocation
/// made from a length read from a snapshot file or sent by a peer.
pub const CHUNK_BYTES_MAX: u32 = 64 << 20;
const INCOMING_NAME: &str = "snapshot-incoming.partial";

/// Proof that a snapshot is durably installed: the only thing that lets the
/// log be trimmed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct FinishedSnapshot {
    instance: Instance,
}

impl FinishedSnapshot {
    /// Every instance up to and including this one is in the snapshot.
    pub fn instance(&self) -> Instance {
        self.instance
    }
}

/// What a snapshot holds, as a sender announces it and a receiver checks it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SnapshotManifest {
    /// The last applied instance the snapshot covers.
    pub instance: Instance,
    /// The size of every chunk but the last.
    pub chunk_bytes: u32,
    /// How many chunks there are.
    pub chunk_count: u64,
    /// The bytes of state in all chunks together.
    pub total_bytes: u64,
}

impl SnapshotManifest {
    fn validate(&self, file: &str) -> Result<()> {
        let malformed = |what: &str| {
            Err(StorageError::Malformed {
                file: file.to_string(),
                what: what.to_string(),
            })
        };
        if self.chunk_bytes == 0 || self.chunk_bytes > CHUNK_BYTES_MAX {
            return malformed("chunk size out of range");
        }
        let capacity = self.chunk_count.checked_mul(self.chunk_bytes as u64);
        let below = self
            .chunk_count
            .saturating_sub(1)
            .saturating_mul(self.chunk_bytes as u64);
        let file_bytes = self
            .chunk_count
            .checked_mul(CHUNK_HEADER_BYTES + self.chunk_bytes as u64)
            .and_then(|bytes| bytes.checked_add(CHUNKS_OFFSET));
        match capacity {
            None => malformed("chunk count overflows"),
            Some(_) if file_bytes.is_none() => malformed("chunk count overflows"),
            Some(capacity) if self.total_bytes > capacity => malformed("more bytes than chunks hold"),
            Some(_) if self.chunk_count > 0 && self.total_bytes <= below => {
                malformed("fewer bytes than the chunks before the last hold")
            }
            Some(_) => Ok(()),
        }
    }

    /// The length of chunk `index`.
    fn chunk_length(&self, index: u64) -> u64 {
        assert!(index < self.chunk_count);
        if index + 1 < self.chunk_count {
            self.chunk_bytes as u64
        } else {
            self.total_bytes - index * self.chunk_bytes as u64
        }
    }

    fn chunk_offset(&self, index: u64) -> u64 {
        CHUNKS_OFFSET + index * (CHUNK_HEADER_BYTES + self.chunk_bytes as u64)
    }

    fn file_bytes(&self) -> u64 {
        CHUNKS_OFFSET + self.chunk_count * CHUNK_HEADER_BYTES + self.total_bytes
    }

    fn encode(&self) -> Vec<u8> {
        let mut bytes = encode_file_header(SNAPSHOT_MAGIC, FORMAT_VERSION, self.instance.0, self.chunk_bytes);
        let start = bytes.len();
        put_u64(&mut bytes, self.chunk_count);
        put_u64(&mut bytes, self.total_bytes);
        let crc = crc32c::crc32c(&bytes[start..]);
        put_u32(&mut bytes, crc);
        bytes.resize(CHUNKS_OFFSET as usize, 0);
        bytes
    }

    fn read(file: &dyn File) -> Result<SnapshotManifest> {
        let mut bytes = [0u8; CHUNKS_OFFSET as usize];
        file.read_exact_at(0, &mut bytes, "snapshot header")?;
        let (instance, chunk_bytes) = decode_file_header(file.name(), &bytes, SNAPSHOT_MAGIC, FORMAT_VERSION)?;
        let mut decoder = Decoder::new(&bytes[FILE_HEADER_BYTES..]);
        let chunk_count = decoder.u64().expect("fixed size");
        let total_bytes = decoder.u64().expect("fixed size");
        let crc = decoder.u32().expect("fixed size");
        if crc != crc32c::crc32c(&bytes[FILE_HEADER_BYTES..FILE_HEADER_BYTES + 16]) {
            return Err(StorageError::ChecksumMismatch {
                file: file.name().to_string(),
                offset: FILE_HEADER_BYTES as u64,
                what: "snapshot manifest",
            });
        }
        let manifest = SnapshotManifest {
            instance: Instance(instance),
            chunk_bytes,
            chunk_count,
            total_bytes,
        };
        manifest.validate(file.name())?;
        Ok(manifest)
    }
}

/// One chunk, as read for transfer or sent by a peer.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SnapshotChunk {
    /// The chunk's position, from 0.
    pub index: u64,
    /// The chunk's bytes.
    pub data: Bytes,
    /// CRC32C of `data`.
    pub crc: u32,
}

fn snapshot_name(instance: Instance) -> String {
    format!("snapshot-{:020}.snap", instance.0)
}

fn temporary_name(instance: Instance) -> String {
    format!("snapshot-{:020}.tmp", instance.0)
}

fn parse_snapshot_name(name: &str) -> Option<Instance> {
    let number = name.strip_prefix("snapshot-")?.strip_suffix(".snap")?;
    if number.len() != 20 || !number.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    Some(Instance(number.parse().ok()?))
}

/// The snapshots of one replica.
#[derive(Debug, Clone)]
pub struct SnapshotStore {
    disk: Arc<dyn Disk>,
    chunk_bytes: u32,
}

impl SnapshotStore {
    /// Snapshots written here use chunks of `chunk_bytes`. Removes leftovers
    /// of snapshots that were never finished.
    pub fn open(disk: Arc<dyn Disk>, chunk_bytes: u32) -> Result<SnapshotStore> {
        if chunk_bytes == 0 || chunk_bytes > CHUNK_BYTES_MAX {
            return Err(StorageError::InvalidConfig {
                what: format!("chunk_bytes {chunk_bytes} is not in 1..={CHUNK_BYTES_MAX}"),
            });
        }
        for name in disk.list()? {
            if name.starts_with("snapshot-") && name.ends_with(".tmp") {
                disk.remove(&name)?;
            }
        }
        Ok(SnapshotStore { disk, chunk_bytes })
    }

    /// Starts a snapshot of the state after applying every instance up to
    /// and including `applied`.
    pub fn begin(&self, applied: Instance) -> Result<SnapshotWriter> {
        let name = temporary_name(applied);
        if self.disk.exists(&name)? {
            self.disk.remove(&name)?;
        }
        let file = self.disk.create(&name)?;
        Ok(SnapshotWriter {
            disk: self.disk.clone(),
            file: Some(file),
            manifest: SnapshotManifest {
                instance: applied,
                chunk_bytes: self.chunk_bytes,
                chunk_count: 0,
                total_bytes: 0,
            },
            pending: Vec::new(),
        })
    }

    /// The instances of the finished snapshots on disk, ascending.
    pub fn instances(&self) -> Result<Vec<Instance>> {
        let mut instances: Vec<Instance> = self
            .disk
            .list()?
            .iter()
            .filter_map(|name| parse_snapshot_name(name))
            .collect();
        instances.sort();
        Ok(instances)
    }

    /// Opens the newest finished snapshot, checking its header and length
    /// (chunks are verified as they are read).
    pub fn latest(&self) -> Result<Option<SnapshotReader>> {
        match self.instances()?.last() {
            Some(instance) => Ok(Some(SnapshotReader::open(
                self.disk.as_ref(),
                &snapshot_name(*instance),
            )?)),
            None => Ok(None),
        }
    }

    /// Reads the newest snapshot whole, verifying every chunk.
    pub fn load_latest(&self) -> Result<Option<(Instance, Vec<u8>)>> {
        let Some(reader) = self.latest()? else {
            return Ok(None);
        };
        Ok(Some((reader.manifest().instance, reader.read_all()?)))
    }

    /// An installer for a snapshot sent by peers, resuming a transfer an
    /// earlier run left unfinished.
    pub fn installer(&self) -> Result<SnapshotInstaller> {
        SnapshotInstaller::open(self.disk.clone())
    }
}

fn remove_older_snapshots(disk: &dyn Disk, kept: Instance) -> Result<()> {
    for name in disk.list()? {
        if let Some(instance) = parse_snapshot_name(&name) {
            if instance < kept {
                disk.remove(&name)?;
            }
        }
    }
    Ok(())
}

fn encode_chunk_header(data: &[u8]) -> ([u8; CHUNK_HEADER_BYTES as usize], u32) {
    let crc = crc32c::crc32c(data);
    let mut header = [0u8; CHUNK_HEADER_BYTES as usize];
    header[..4].copy_from_slice(&(data.len() as u32).to_le_bytes());
    header[4..].copy_from_slice(&crc.to_le_bytes());
    (header, crc)
}

/// The snapshot handle: collects the application's state in chunks. Dropping
/// it without [`SnapshotWriter::finish`] abandons the snapshot.
#[derive(Debug)]
pub struct SnapshotWriter {
    disk: Arc<dyn Disk>,
    file: Option<Box<dyn File>>,
    manifest: SnapshotManifest,
    pending: Vec<u8>,
}

impl SnapshotWriter {
    /// The instance this snapshot covers.
    pub fn instance(&self) -> Instance {
        self.manifest.instance
    }

    /// Appends state bytes. Full chunks are written as they fill.
    pub fn write(&mut self, mut data: &[u8]) -> Result<()> {
        let chunk_bytes = self.manifest.chunk_bytes as usize;
        while !data.is_empty() {
            let taken = (chunk_bytes - self.pending.len()).min(data.len());
            self.pending.extend_from_slice(&data[..taken]);
            data = &data[taken..];
            if self.pending.len() == chunk_bytes {
                self.write_chunk()?;
            }
        }
        Ok(())
    }

    fn write_chunk(&mut self) -> Result<()> {
        assert!(!self.pending.is_empty());
        let file = self.file.as_mut().expect("file open until finish");
        let offset = self.manifest.chunk_offset(self.manifest.chunk_count);
        let (header, _) = encode_chunk_header(&self.pending);
        file.write_at(offset, &header)?;
        file.write_at(offset + CHUNK_HEADER_BYTES, &self.pending)?;
        self.manifest.chunk_count += 1;
        self.manifest.total_bytes += self.pending.len() as u64;
        self.pending.clear();
        Ok(())
    }

    /// Makes the snapshot durable and the newest one, removes older ones,
    /// and returns the proof that lets the log be trimmed.
    pub fn finish(mut self) -> Result<FinishedSnapshot> {
        if !self.pending.is_empty() {
            self.write_chunk()?;
        }
        let mut file = self.file.take().expect("file open until finish");
        file.write_at(0, &self.manifest.encode())?;
        file.sync()?;
        drop(file);
        let instance = self.manifest.instance;
        self.disk.rename(&temporary_name(instance), &snapshot_name(instance))?;
        remove_older_snapshots(self.disk.as_ref(), instance)?;
        Ok(FinishedSnapshot { instance })
    }

    /// Gives up on this snapshot; the log and the previous snapshot stay.
    pub fn abandon(mut self) -> Result<()> {
        self.file = None;
        self.disk.remove(&temporary_name(self.manifest.instance))
    }
}

impl Drop for SnapshotWriter {
    fn drop(&mut self) {
        if self.file.take().is_some() {
            // Best effort: a leftover is removed by the next SnapshotStore::open.
            let _ = self.disk.remove(&temporary_name(self.manifest.instance));
        }
    }
}

/// Reads a finished snapshot chunk by chunk, verifying each: what a replica
/// sends to a peer that needs it.
#[derive(Debug)]
pub struct SnapshotReader {
    file: Box<dyn File>,
    manifest: SnapshotManifest,
}

impl SnapshotReader {
    fn open(disk: &dyn Disk, name: &str) -> Result<SnapshotReader> {
        let file = disk.open(name)?;
        let manifest = SnapshotManifest::read(file.as_ref())?;
        let length = file.len()?;
        if length != manifest.file_bytes() {
            return Err(StorageError::Malformed {
                file: name.to_string(),
                what: format!("{length} bytes long, the manifest says {}", manifest.file_bytes()),
            });
        }
        Ok(SnapshotReader { file, manifest })
    }

    /// What the snapshot holds: send this to a peer before the chunks.
    pub fn manifest(&self) -> SnapshotManifest {
        self.manifest
    }

    /// Reads and verifies chunk `index`.
    pub fn chunk(&self, index: u64) -> Result<SnapshotChunk> {
        let name = self.file.name().to_string();
        if index >= self.manifest.chunk_count {
            return Err(StorageError::Malformed {
                file: name,
                what: format!("no chunk {index}, there are {}", self.manifest.chunk_count),
            });
        }
        let offset = self.manifest.chunk_offset(index);
        let expected = self.manifest.chunk_length(index);
        let mut header = [0u8; CHUNK_HEADER_BYTES as usize];
        self.file.read_exact_at(offset, &mut header, "snapshot chunk header")?;
        let length = u32::from_le_bytes(header[..4].try_into().expect("4 bytes")) as u64;
        let crc = u32::from_le_bytes(header[4..].try_into().expect("4 bytes"));
        if length != expected {
            return Err(StorageError::SnapshotChunkCorrupt { file: name, index });
        }
        // Bounded: `expected` is at most chunk_bytes <= CHUNK_BYTES_MAX.
        let mut data = vec![0u8; expected as usize];
        self.file
            .read_exact_at(offset + CHUNK_HEADER_BYTES, &mut data, "snapshot chunk")?;
        if crc32c::crc32c(&data) != crc {
            return Err(StorageError::SnapshotChunkCorrupt { file: name, index });
        }
        Ok(SnapshotChunk {
            index,
            data: Bytes::from(data),
            crc,
        })
    }

    /// Reads the whole snapshot, verifying every chunk.
    pub fn read_all(&self) -> Result<Vec<u8>> {
        let mut state = Vec::new();
        for index in 0..self.manifest.chunk_count {
            state.extend_from_slice(&self.chunk(index)?.data);
        }
        Ok(state)
    }
}

/// What an installer needs next.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum InstallStep {
    /// Send chunk `index` next.
    NeedChunk(u64),
    /// Every chunk is in; call [`SnapshotInstaller::install`].
    Complete,
}

#[derive(Debug)]
struct Incoming {
    file: Box<dyn File>,
    manifest: SnapshotManifest,
    next_chunk: u64,
}

/// Receives a snapshot from peers chunk by chunk, verifying each, keeping its
/// progress on disk so a restarted replica (or a new peer) resumes where the
/// transfer stopped, and installing the snapshot atomically when complete.
#[derive(Debug)]
pub struct SnapshotInstaller {
    disk: Arc<dyn Disk>,
    incoming: Option<Incoming>,
}

impl SnapshotInstaller {
    fn open(disk: Arc<dyn Disk>) -> Result<SnapshotInstaller> {
        let mut installer = SnapshotInstaller { disk, incoming: None };
        if !installer.disk.exists(INCOMING_NAME)? {
            return Ok(installer);
        }
        let mut file = installer.disk.open(INCOMING_NAME)?;
        let manifest = match SnapshotManifest::read(file.as_ref()) {
            Ok(manifest) => manifest,
            Err(_) => {
                // The transfer's first write never finished; start over.
                drop(file);
                installer.disk.remove(INCOMING_NAME)?;
                return Ok(installer);
            }
        };
        // Read the chunks as if the snapshot were complete and stop at the
        // first one missing or bad: everything before it is progress.
        let reader_view = SnapshotReader { file, manifest };
        let mut next_chunk = 0;
        while next_chunk < manifest.chunk_count && reader_view.chunk(next_chunk).is_ok() {
            next_chunk += 1;
        }
        file = reader_view.file;
        let valid_bytes = if next_chunk == manifest.chunk_count {
            manifest.file_bytes()
        } else {
            manifest.chunk_offset(next_chunk)
        };
        if file.len()? != valid_bytes {
            file.truncate(valid_bytes)?;
            file.sync()?;
        }
        installer.incoming = Some(Incoming {
            file,
            manifest,
            next_chunk,
        });
        Ok(installer)
    }

    /// The transfer in progress, and the chunk it needs next.
    pub fn progress(&self) -> Option<(SnapshotManifest, InstallStep)> {
        self.incoming
            .as_ref()
            .map(|incoming| (incoming.manifest, step(incoming)))
    }

    /// Starts receiving the snapshot `manifest` describes. If the partial
    /// transfer on disk is of the same snapshot, it resumes; otherwise (the
    /// first peer died or moved on to a newer snapshot) the partial one is
    /// discarded.
    pub fn begin(&mut self, manifest: SnapshotManifest) -> Result<InstallStep> {
        manifest.validate(INCOMING_NAME)?;
        if let Some(incoming) = &self.incoming {
            if incoming.manifest == manifest {
                return Ok(step(incoming));
            }
        }
        self.incoming = None;
        if self.disk.exists(INCOMING_NAME)? {
            self.disk.remove(INCOMING_NAME)?;
        }
        let mut file = self.disk.create(INCOMING_NAME)?;
        file.write_at(0, &manifest.encode())?;
        file.sync()?;
        let incoming = Incoming {
            file,
            manifest,
            next_chunk: 0,
        };
        let next = step(&incoming);
        self.incoming = Some(incoming);
        Ok(next)
    }

    /// Accepts chunk `chunk.index`, which must be the one asked for. The
    /// chunk is verified against its checksum and made durable before this
    /// returns.
    pub fn accept(&mut self, chunk: &SnapshotChunk) -> Result<InstallStep> {
        let Some(incoming) = self.incoming.as_mut() else {
            return Err(StorageError::TransferState {
                what: "no transfer begun",
            });
        };
        let instance = incoming.manifest.instance.0;
        if chunk.index != incoming.next_chunk || chunk.index >= incoming.manifest.chunk_count {
            return Err(StorageError::UnexpectedChunk {
                instance,
                expected: incoming.next_chunk,
                got: chunk.index,
            });
        }
        if crc32c::crc32c(&chunk.data) != chunk.crc
            || chunk.data.len() as u64 != incoming.manifest.chunk_length(chunk.index)
        {
            return Err(StorageError::TransferChunkCorrupt {
                instance,
                index: chunk.index,
            });
        }
        let offset = incoming.manifest.chunk_offset(chunk.index);
        let (header, _) = encode_chunk_header(&chunk.data);
        incoming.file.write_at(offset, &header)?;
        incoming.file.write_at(offset + CHUNK_HEADER_BYTES, &chunk.data)?;
        incoming.file.sync()?;
        incoming.next_chunk += 1;
        Ok(step(incoming))
    }

    /// Installs the completed snapshot as the newest one, atomically.
    pub fn install(mut self) -> Result<FinishedSnapshot> {
        let Some(incoming) = self.incoming.take() else {
            return Err(StorageError::TransferState {
                what: "no transfer begun",
            });
        };
        if incoming.next_chunk != incoming.manifest.chunk_count {
            self.incoming = Some(incoming);
            return Err(StorageError::TransferState {
                what: "transfer not complete",
            });
        }
        let instance = incoming.manifest.instance;
        drop(incoming);
        self.disk.rename(INCOMING_NAME, &snapshot_name(instance))?;
        remove_older_snapshots(self.disk.as_ref(), instance)?;
        Ok(FinishedSnapshot { instance })
    }
}

fn step(incoming: &Incoming) -> InstallStep {
    if incoming.next_chunk == incoming.manifest.chunk_count {
        InstallStep::Complete
    } else {
        InstallStep::NeedChunk(incoming.next_chunk)
    }
}
