//! The write-ahead log: checksummed records in segment files, each segment
//! with a region of identifiers far from its frames.
//!
//! # Files
//!
//! Segment `n` is one file, `wal-<n>.log`, in two regions:
//!
//! * the frame region, from offset 0: a checksummed 32-byte header, then
//!   record frames, then unwritten space (zeros, or a hole);
//! * the identifier region, from the *identifier base* (the frame region's
//!   longest length, which the header records, a multiple of 4096 bytes):
//!   a header of its own, then one fixed-size identifier per frame, in the
//!   same order.
//!
//! The identifier region starts at least a whole segment (and a largest
//! frame) away from the first frame, so damage to a few blocks rarely takes a
//! frame and its identifier together, and one `fdatasync` covers both
//! regions.
//!
//! A frame is `magic u32 | payload length u32 | crc32c u32 | payload`, the
//! checksum covering the length and the payload. An identifier is 64 bytes:
//! the record's kind, its frame checksum, instance, ballot, offset and frame
//! length, and a checksum of its own.
//!
//! # Write ordering
//!
//! [`Wal::sync`] makes a batch durable in this order:
//!
//! 1. write the batch's frames, then `fdatasync` the file;
//! 2. write their identifiers, then `fdatasync` the file;
//! 3. only now report the batch durable.
//!
//! [`crate::GroupCommit`] folds step 2 of one batch into step 1 of the next:
//! batch `n`'s identifiers are written beside batch `n + 1`'s frames, and one
//! `fdatasync` makes both durable. The order holds for each batch.
//!
//! So an identifier is on disk only if its frame was durable first. After a
//! crash, recovery reads it back:
//!
//! * whole frames past the last identifier are kept and given identifiers:
//!   normally they were never reported durable (step 2 did not finish), but if
//!   a misdirected write destroyed the identifiers of a reported batch they
//!   were, and keeping an acceptance that was written is always safe while
//!   dropping an acknowledged one is not; the first frame there that fails its
//!   checksum is the torn write, and it and what follows are discarded;
//! * an identifier whose frame is missing or fails its checksum cannot come
//!   from a crash: that is corruption, and the instance (with its ballot from
//!   the identifier) is reported for repair from peers, never silently
//!   dropped;
//! * a bad frame followed by later frames or identifiers is corruption too.
//!
//! Segments rotate only at batch boundaries, after both regions are synced,
//! so every segment but the last is complete and a torn tail can only be in
//! the last one. A new segment's file is created (directory fsynced) and both
//! its headers synced before any record goes into it.
//!
//! Format version 2. Version 1 kept the identifiers in a second file per
//! segment; this build refuses such a log with a clear error.
//!
//! # Layout
//!
//! * `format`: the segment file format: names, headers, frames,
//!   identifiers and the constants that fix their sizes;
//! * `writer`: appending, the write ordering of a batch, rotation and trim;
//! * `recovery`: [`Wal::open`]: reading, verifying and repairing segments,
//!   on reader threads where the disk allows.

mod format;
mod recovery;
mod writer;

use std::sync::Arc;

use bytes::Bytes;
use synod_paxos::{Ballot, Instance};

use crate::disk::{Disk, File};
use crate::error::{Result, StorageError};
use crate::fields::FILE_HEADER_BYTES;

pub use self::format::IDENTIFIER_BYTES;
use self::format::{
    encode_bound, ids_bytes_max, log_name, Identifier, ACCEPTED_FIXED_BYTES, BOUND_UNIT_BYTES, COMMITTED_BYTES,
    FRAME_HEADER_BYTES, KIND_ACCEPTED, KIND_COMMITTED,
};
use self::recovery::{read_tolerant_into, UNREADABLE_IDENTIFIER_FILL};
pub(crate) use self::writer::IdentifierBatch;

/// One thing the acceptor persists.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Record {
    /// The acceptor accepted `value` for `instance` at `ballot` (phase 2b).
    /// The value is opaque: a batch of client values.
    Accepted {
        /// The Paxos instance.
        instance: Instance,
        /// The ballot of the accepted proposal.
        ballot: Ballot,
        /// The accepted value, at most `value_bytes_max` bytes.
        value: Bytes,
    },
    /// Every instance up to and including `through` is chosen. Later records
    /// supersede earlier ones, so these may be coalesced.
    Committed {
        /// The highest chosen instance with all before it chosen too.
        through: Instance,
    },
}

impl Record {
    fn kind(&self) -> u8 {
        match self {
            Record::Accepted { .. } => KIND_ACCEPTED,
            Record::Committed { .. } => KIND_COMMITTED,
        }
    }

    fn instance(&self) -> Instance {
        match self {
            Record::Accepted { instance, .. } => *instance,
            Record::Committed { through } => *through,
        }
    }

    fn ballot(&self) -> Ballot {
        match self {
            Record::Accepted { ballot, .. } => *ballot,
            Record::Committed { .. } => Ballot::ZERO,
        }
    }

    /// The payload bytes of this record's frame.
    fn payload_bytes(&self) -> usize {
        match self {
            Record::Accepted { value, .. } => ACCEPTED_FIXED_BYTES + value.len(),
            Record::Committed { .. } => COMMITTED_BYTES,
        }
    }

    /// The bytes this record takes in a segment.
    pub fn frame_bytes(&self) -> usize {
        FRAME_HEADER_BYTES + self.payload_bytes()
    }
}

/// Which kind of record an identifier or a frame describes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RecordKind {
    /// [`Record::Accepted`].
    Accepted,
    /// [`Record::Committed`].
    Committed,
}

/// A record that recovery found damaged. The Paxos layer repairs these from
/// peers (or learns that they were never chosen); it must not treat the
/// instance as accepted by this replica in the meantime.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CorruptEntry {
    /// The segment file.
    pub file: String,
    /// Where the frame should start, when known.
    pub offset: Option<u64>,
    /// From the identifier, when it survived.
    pub kind: Option<RecordKind>,
    /// The instance the damaged record was about, if its identifier survived.
    pub instance: Option<Instance>,
    /// The ballot it was accepted at, if its identifier survived.
    pub ballot: Option<Ballot>,
}

/// A value the acceptor accepted, as recovered.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AcceptedValue {
    /// The ballot of the proposal accepted.
    pub ballot: Ballot,
    /// The value accepted.
    pub value: Bytes,
}

/// The values recovery found accepted: for each instance, the one accepted
/// last. A list in instance order, looked up by binary search; it takes 64
/// bytes per instance besides the values, which are slices of the segments
/// recovery read.
#[derive(Clone, Default, PartialEq, Eq)]
pub struct AcceptedValues {
    /// Strictly increasing instances.
    entries: Vec<(Instance, AcceptedValue)>,
}

impl AcceptedValues {
    /// How many instances have a value.
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    /// Whether no instance has a value.
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// The value accepted for `instance`, if any.
    pub fn get(&self, instance: &Instance) -> Option<&AcceptedValue> {
        let index = self.entries.binary_search_by_key(instance, |(key, _)| *key).ok()?;
        Some(&self.entries[index].1)
    }

    /// Whether `instance` has a value.
    pub fn contains_key(&self, instance: &Instance) -> bool {
        self.get(instance).is_some()
    }

    /// The instances with their values, in instance order.
    pub fn iter(&self) -> AcceptedIter<'_> {
        AcceptedIter(self.entries.iter())
    }

    /// The instances that have a value, in order.
    pub fn keys(&self) -> impl DoubleEndedIterator<Item = &Instance> + ExactSizeIterator {
        self.entries.iter().map(|(instance, _)| instance)
    }

    /// The values, in instance order.
    pub fn values(&self) -> impl DoubleEndedIterator<Item = &AcceptedValue> + ExactSizeIterator {
        self.entries.iter().map(|(_, value)| value)
    }

    /// The instances with their values, in instance order.
    pub fn as_slice(&self) -> &[(Instance, AcceptedValue)] {
        &self.entries
    }
}

impl std::fmt::Debug for AcceptedValues {
    fn fmt(&self, formatter: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        formatter.debug_map().entries(self.iter()).finish()
    }
}

impl std::ops::Index<&Instance> for AcceptedValues {
    type Output = AcceptedValue;

    /// The value accepted for `instance`; panics if there is none.
    fn index(&self, instance: &Instance) -> &AcceptedValue {
        self.get(instance).expect("no value accepted for this instance")
    }
}

impl<'a> IntoIterator for &'a AcceptedValues {
    type Item = (&'a Instance, &'a AcceptedValue);
    type IntoIter = AcceptedIter<'a>;

    fn into_iter(self) -> AcceptedIter<'a> {
        self.iter()
    }
}

impl IntoIterator for AcceptedValues {
    type Item = (Instance, AcceptedValue);
    type IntoIter = std::vec::IntoIter<(Instance, AcceptedValue)>;

    fn into_iter(self) -> Self::IntoIter {
        self.entries.into_iter()
    }
}

/// The instances of an [`AcceptedValues`] with their values, in order.
#[derive(Clone, Debug)]
pub struct AcceptedIter<'a>(std::slice::Iter<'a, (Instance, AcceptedValue)>);

impl<'a> Iterator for AcceptedIter<'a> {
    type Item = (&'a Instance, &'a AcceptedValue);

    fn next(&mut self) -> Option<Self::Item> {
        self.0.next().map(|(instance, value)| (instance, value))
    }

    fn size_hint(&self) -> (usize, Option<usize>) {
        self.0.size_hint()
    }
}

impl DoubleEndedIterator for AcceptedIter<'_> {
    fn next_back(&mut self) -> Option<Self::Item> {
        self.0.next_back().map(|(instance, value)| (instance, value))
    }
}

impl ExactSizeIterator for AcceptedIter<'_> {}

/// What [`Wal::open`] found.
#[derive(Clone, Debug, Default)]
pub struct Recovery {
    /// For each instance, the value accepted last (later records supersede
    /// earlier ones). Instances whose newest record is corrupt are absent.
    pub accepted: AcceptedValues,
    /// The highest commit point found.
    pub committed_through: Instance,
    /// Damaged records, in log order: instances here need repair.
    pub corrupted: Vec<CorruptEntry>,
    /// Unreported tail bytes discarded from the last segment (records whose
    /// identifiers were never written, i.e. never reported durable).
    pub torn_tail_bytes: u64,
    /// Identifier slots that failed their own checksum.
    pub corrupt_identifiers: u64,
    /// Bytes of segment files that failed to read (EIO) and were
    /// treated as damaged.
    pub unreadable_bytes: u64,
    /// Segment file headers that failed their checksum (their frames were
    /// still read).
    pub damaged_headers: u64,
    /// Bytes past the longest a segment's file can be (left by a misdirected
    /// write): not read, since no frame or identifier was ever written there.
    pub oversized_bytes: u64,
    /// Damaged identifiers of frames that verify, rewritten from the frames.
    pub repaired_identifiers: u64,
    /// Good records read.
    pub records: u64,
    /// Bytes of frames read and verified (each segment's frame region up to
    /// its last byte written).
    pub bytes_scanned: u64,
}

/// Sizes and bounds of the log.
#[derive(Clone, Debug)]
pub struct WalConfig {
    /// A segment rotates before a batch would take it past this size.
    pub segment_bytes_max: u64,
    /// The largest value an `Accepted` record may carry.
    pub value_bytes_max: u32,
    /// When a write would pass the space already written in a region of the
    /// segment file, this many zero bytes are written beyond it (a quarter
    /// of it for the identifier region), so that most syncs allocate no
    /// blocks and change no file size, and need no file-system metadata
    /// write. Never past the frame region's end. 0 turns preallocation off.
    pub preallocate_bytes: u64,
}

impl Default for WalConfig {
    fn default() -> WalConfig {
        WalConfig {
            segment_bytes_max: 64 << 20,
            value_bytes_max: 16 << 20,
            preallocate_bytes: 1 << 20,
        }
    }
}

impl WalConfig {
    /// Checks the bounds are usable.
    pub fn validate(&self) -> Result<()> {
        if self.segment_bytes_max < 4096 {
            return Err(StorageError::InvalidConfig {
                what: format!("segment_bytes_max {} is below 4096", self.segment_bytes_max),
            });
        }
        if self.value_bytes_max == 0 || self.value_bytes_max > 1 << 30 {
            return Err(StorageError::InvalidConfig {
                what: format!("value_bytes_max {} is not in 1..=1 GiB", self.value_bytes_max),
            });
        }
        Ok(())
    }

    fn frame_bytes_max(&self) -> u64 {
        (FRAME_HEADER_BYTES + ACCEPTED_FIXED_BYTES) as u64 + self.value_bytes_max as u64
    }

    /// The longest a frame region may be.
    fn segment_file_bytes_max(&self) -> u64 {
        FILE_HEADER_BYTES as u64 + self.segment_bytes_max.max(self.frame_bytes_max())
    }

    /// Where a new segment's identifier region starts.
    pub fn identifier_base(&self) -> u64 {
        encode_bound(self.segment_file_bytes_max()) as u64 * BOUND_UNIT_BYTES
    }
}

/// Where a record lies, for tests and the simulator to aim faults at.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RecordLocation {
    /// The segment's file.
    pub file: String,
    /// Where the frame starts.
    pub offset: u64,
    /// The frame's length, header included.
    pub frame_bytes: u64,
}

#[derive(Clone, Debug)]
struct SegmentInfo {
    sequence: u64,
    identifier_base: u64,
    /// The highest instance named by any record in the segment.
    instance_max: Instance,
}

/// The segment being appended to.
#[derive(Debug)]
struct ActiveSegment {
    sequence: u64,
    file: Box<dyn File>,
    /// Where the identifier region starts in the file.
    identifier_base: u64,
    /// Bytes written to the frame region (from offset 0) and to the
    /// identifier region (from `identifier_base`), headers included.
    log_bytes: u64,
    ids_bytes: u64,
    /// How far each region has been written, zeros included: a write that
    /// passes it preallocates.
    log_written: u64,
    ids_written: u64,
}

/// The write-ahead log, with a synchronous API: [`Wal::append`] stages
/// records in memory, [`Wal::sync`] makes everything staged durable. The
/// server's log lives in a [`crate::AcceptorStore`] owned by a
/// [`crate::GroupCommit`] writer thread, which writes one batch's
/// identifiers beside the next batch's frames and syncs both at once; the simulator
/// calls [`crate::AcceptorStore::write`] and [`crate::AcceptorStore::sync`]
/// on a [`crate::SimDisk`], which append and sync here directly.
#[derive(Debug)]
pub struct Wal {
    disk: Arc<dyn Disk>,
    config: WalConfig,
    /// Closed segments, oldest first.
    closed: Vec<SegmentInfo>,
    active: ActiveSegment,
    active_instance_max: Instance,
    staged_log: Vec<u8>,
    staged_ids: Vec<u8>,
    staged_records: u64,
    staged_instance_max: Instance,
    /// Set after a failed write or sync: the log then refuses all work.
    failure: Option<String>,
    syncs: u64,
}

impl Wal {
    fn check_running(&self) -> Result<()> {
        match &self.failure {
            Some(reason) => Err(StorageError::Stopped { reason: reason.clone() }),
            None => Ok(()),
        }
    }

    fn fail<T>(&mut self, error: StorageError) -> Result<T> {
        self.failure = Some(error.to_string());
        Err(error)
    }

    /// Records staged and not yet synced.
    pub fn staged_records(&self) -> u64 {
        self.staged_records
    }

    /// Bytes staged and not yet synced.
    pub fn staged_bytes(&self) -> usize {
        self.staged_log.len()
    }

    /// How many batches of frames have been written (by [`Wal::sync`], or by
    /// the group-commit writer); each is durable once a later sync returns.
    pub fn sync_count(&self) -> u64 {
        self.syncs
    }

    /// The file of the segment being appended to, and where its identifier
    /// region starts: where the simulator aims faults at the next sync.
    pub fn active_file(&self) -> (String, u64) {
        (log_name(self.active.sequence), self.active.identifier_base)
    }

    /// The number of segments, the active one included.
    pub fn segment_count(&self) -> usize {
        self.closed.len() + 1
    }

    /// Finds the newest durable `Accepted` record for `instance`, by reading
    /// the identifier regions: lets a test or the simulator corrupt exactly
    /// that record.
    pub fn locate_accepted(&self, instance: Instance) -> Result<Option<RecordLocation>> {
        let mut segments: Vec<(u64, u64)> = self.closed.iter().map(|s| (s.sequence, s.identifier_base)).collect();
        segments.push((self.active.sequence, self.active.identifier_base));
        for (sequence, identifier_base) in segments.into_iter().rev() {
            let name = log_name(sequence);
            let file = self.disk.open(&name)?;
            let mut bytes = Vec::new();
            read_tolerant_into(
                file.as_ref(),
                identifier_base,
                ids_bytes_max(identifier_base),
                UNREADABLE_IDENTIFIER_FILL,
                &mut bytes,
            )?;
            let slots = bytes.get(FILE_HEADER_BYTES..).unwrap_or_default();
            for slot in slots.chunks_exact(IDENTIFIER_BYTES).rev() {
                if let Some(identifier) = Identifier::decode(slot) {
                    if identifier.kind == KIND_ACCEPTED && identifier.instance == instance {
                        return Ok(Some(RecordLocation {
                            file: name,
                            offset: identifier.offset,
                            frame_bytes: identifier.frame_bytes as u64,
                        }));
                    }
                }
            }
        }
        Ok(None)
    }
}
