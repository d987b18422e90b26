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

use std::collections::BTreeMap;
use std::ops::Range;
use std::sync::{mpsc, Arc, Mutex};

use bytes::Bytes;
use synod_paxos::{Ballot, Instance, NodeId};

use crate::disk::{Disk, File};
use crate::error::{Result, StorageError};
use crate::fields::{decode_file_header, encode_file_header, put_u32, put_u64, Decoder, FILE_HEADER_BYTES};
use crate::snapshot::FinishedSnapshot;

const LOG_MAGIC: u64 = u64::from_le_bytes(*b"SYNODLOG");
const IDS_MAGIC: u64 = u64::from_le_bytes(*b"SYNODIDS");
const FORMAT_VERSION: u32 = 2;
/// Every file magic of this crate starts with these bytes.
const OWN_MAGIC_PREFIX: &[u8] = b"SYNOD";
const FRAME_MAGIC: u32 = u32::from_le_bytes(*b"SREC");
const FRAME_HEADER_BYTES: usize = 12;
/// The bytes of one identifier in a segment's identifier region.
pub const IDENTIFIER_BYTES: usize = 64;
const KIND_ACCEPTED: u8 = 1;
const KIND_COMMITTED: u8 = 2;
/// Accepted payload without the value: kind, instance, ballot.
const ACCEPTED_FIXED_BYTES: usize = 1 + 8 + 24;
const COMMITTED_BYTES: usize = 1 + 8;

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

/// Accepted records in log order, from which [`AcceptedValues`] is built:
/// records almost always come in increasing instance order, so appending
/// them to a list and sorting only if they did not is far cheaper than
/// inserting each into a map.
#[derive(Debug, Default)]
struct AcceptedLog {
    /// Accepted records, in log order.
    entries: Vec<(Instance, AcceptedValue)>,
    /// Instances whose record was damaged, in log order, each with the number
    /// of entries before it: an entry of the instance from there on is newer
    /// and supersedes the damage.
    removals: Vec<(Instance, usize)>,
    /// Whether some entry's instance is not above the one before it.
    out_of_order: bool,
}

impl AcceptedLog {
    fn push(&mut self, instance: Instance, value: AcceptedValue) {
        if self.entries.last().is_some_and(|(last, _)| *last >= instance) {
            self.out_of_order = true;
        }
        self.entries.push((instance, value));
    }

    /// Empties it, keeping its memory.
    fn clear(&mut self) {
        self.entries.clear();
        self.removals.clear();
        self.out_of_order = false;
    }

    /// The newest record of `instance` so far is damaged: it has no value
    /// unless a later record gives it one.
    fn remove(&mut self, instance: Instance) {
        self.removals.push((instance, self.entries.len()));
    }

    /// Moves `later`'s records, which follow this log's, to its end.
    fn append(&mut self, later: &mut AcceptedLog) {
        let base = self.entries.len();
        if let (Some((last, _)), Some((first, _))) = (self.entries.last(), later.entries.first()) {
            if last >= first {
                self.out_of_order = true;
            }
        }
        self.out_of_order |= later.out_of_order;
        self.entries.append(&mut later.entries);
        self.removals
            .extend(later.removals.drain(..).map(|(instance, at)| (instance, at + base)));
        later.out_of_order = false;
    }

    /// Keeps each instance's newest record, dropping instances whose newest
    /// record is damaged.
    fn finish(self) -> AcceptedValues {
        let AcceptedLog {
            mut entries,
            removals,
            out_of_order,
        } = self;
        // Each damaged instance with where its last damaged record was;
        // dropped from here when a later entry supersedes it.
        let mut removed: BTreeMap<Instance, usize> = removals.into_iter().collect();
        if let Some(from) = removed.values().min().copied() {
            for (position, (instance, _)) in entries.iter().enumerate().skip(from) {
                if removed.get(instance).is_some_and(|at| *at <= position) {
                    removed.remove(instance);
                }
            }
        }
        if out_of_order {
            entries = into_instance_order(entries);
        }
        if !removed.is_empty() {
            entries.retain(|(instance, _)| !removed.contains_key(instance));
        }
        AcceptedValues { entries }
    }
}

/// Puts entries that are in log order into instance order, keeping each
/// instance's last. They are expected to be nearly in instance order
/// already (a new leader re-proposes a few recent instances, a few values
/// are learned late): the entries not above every entry kept before them
/// (stragglers) are taken out, sorted and merged back in, so the cost is
/// linear in the entries plus `n log n` in the stragglers, and the only
/// memory taken is the stragglers'.
fn into_instance_order(mut entries: Vec<(Instance, AcceptedValue)>) -> Vec<(Instance, AcceptedValue)> {
    let placeholder = || {
        (
            Instance::ZERO,
            AcceptedValue {
                ballot: Ballot::ZERO,
                value: Bytes::new(),
            },
        )
    };
    // Every entry kept before a straggler has an instance at least the
    // straggler's, and every one kept after it a higher one: so a straggler
    // is newer than any kept entry of its instance.
    let mut stragglers = Vec::new();
    let mut kept = 0;
    for read in 0..entries.len() {
        if kept == 0 || entries[read].0 > entries[kept - 1].0 {
            entries.swap(kept, read);
            kept += 1;
        } else {
            stragglers.push(std::mem::replace(&mut entries[read], placeholder()));
        }
    }
    entries.truncate(kept);
    // Stable, so a run of one instance's stragglers stays in log order:
    // keep the last of it.
    stragglers.sort_by_key(|(instance, _)| *instance);
    stragglers.dedup_by(|later, earlier| {
        if later.0 == earlier.0 {
            std::mem::swap(later, earlier);
            true
        } else {
            false
        }
    });
    // A straggler replaces the kept entry of its instance...
    stragglers.retain_mut(
        |(instance, value)| match entries.binary_search_by_key(instance, |(kept, _)| *kept) {
            Ok(index) => {
                std::mem::swap(&mut entries[index].1, value);
                false
            }
            Err(_) => true,
        },
    );
    // ...and the others are merged in, from the back.
    let mut unmoved = entries.len();
    entries.resize_with(entries.len() + stragglers.len(), placeholder);
    let mut free = entries.len();
    while let Some(straggler) = stragglers.pop() {
        while unmoved > 0 && entries[unmoved - 1].0 > straggler.0 {
            unmoved -= 1;
            free -= 1;
            entries.swap(unmoved, free);
        }
        free -= 1;
        entries[free] = straggler;
    }
    entries
}

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

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Identifier {
    kind: u8,
    record_crc: u32,
    instance: Instance,
    ballot: Ballot,
    offset: u64,
    frame_bytes: u32,
}

impl Identifier {
    fn encode(&self, buffer: &mut Vec<u8>) {
        let start = buffer.len();
        buffer.push(self.kind);
        buffer.extend_from_slice(&[0; 3]);
        put_u32(buffer, self.record_crc);
        put_u64(buffer, self.instance.0);
        put_ballot(buffer, &self.ballot);
        put_u64(buffer, self.offset);
        put_u32(buffer, self.frame_bytes);
        put_u32(buffer, 0);
        let crc = crc32c::crc32c(&buffer[start..]);
        put_u32(buffer, crc);
        put_u32(buffer, 0);
        debug_assert_eq!(buffer.len() - start, IDENTIFIER_BYTES);
    }

    fn decode(slot: &[u8]) -> Option<Identifier> {
        let mut decoder = Decoder::new(slot);
        let kind = decoder.u8()?;
        decoder.take(3)?;
        let record_crc = decoder.u32()?;
        let instance = Instance(decoder.u64()?);
        let ballot = get_ballot(&mut decoder)?;
        let offset = decoder.u64()?;
        let frame_bytes = decoder.u32()?;
        decoder.u32()?;
        let covered = decoder.position();
        let crc = decoder.u32()?;
        if crc != crc32c::crc32c(&slot[..covered]) {
            return None;
        }
        if kind != KIND_ACCEPTED && kind != KIND_COMMITTED {
            return None;
        }
        Some(Identifier {
            kind,
            record_crc,
            instance,
            ballot,
            offset,
            frame_bytes,
        })
    }
}

fn put_ballot(buffer: &mut Vec<u8>, ballot: &Ballot) {
    put_u64(buffer, ballot.round);
    put_u64(buffer, ballot.incarnation);
    put_u64(buffer, ballot.node.0);
}

fn get_ballot(decoder: &mut Decoder<'_>) -> Option<Ballot> {
    Some(Ballot::new(decoder.u64()?, decoder.u64()?, NodeId(decoder.u64()?)))
}

fn kind_of(kind: u8) -> Option<RecordKind> {
    match kind {
        KIND_ACCEPTED => Some(RecordKind::Accepted),
        KIND_COMMITTED => Some(RecordKind::Committed),
        _ => None,
    }
}

/// Appends `record`'s frame to `buffer`, returning the frame checksum.
fn encode_frame(record: &Record, buffer: &mut Vec<u8>) -> u32 {
    let payload_bytes = record.payload_bytes();
    let start = buffer.len();
    put_u32(buffer, FRAME_MAGIC);
    put_u32(buffer, payload_bytes as u32);
    put_u32(buffer, 0);
    buffer.push(record.kind());
    put_u64(buffer, record.instance().0);
    if let Record::Accepted { ballot, value, .. } = record {
        put_ballot(buffer, ballot);
        buffer.extend_from_slice(value);
    }
    assert_eq!(buffer.len() - start, FRAME_HEADER_BYTES + payload_bytes);
    let crc = crc32c::crc32c(&buffer[start + 4..start + 8]);
    let crc = crc32c::crc32c_append(crc, &buffer[start + FRAME_HEADER_BYTES..]);
    buffer[start + 8..start + 12].copy_from_slice(&crc.to_le_bytes());
    crc
}

/// Decodes the frame at `offset` of `segment`, if it is whole and verifies.
/// Returns the record, its checksum and its length.
fn decode_frame(segment: &Bytes, offset: usize, payload_bytes_max: u64) -> Option<(Record, u32, usize)> {
    let mut decoder = Decoder::new(segment.get(offset..)?);
    if decoder.u32()? != FRAME_MAGIC {
        return None;
    }
    let payload_bytes = decoder.u32()?;
    if payload_bytes as u64 > payload_bytes_max {
        return None;
    }
    let crc = decoder.u32()?;
    let payload = decoder.take(payload_bytes as usize)?;
    let computed = crc32c::crc32c_append(crc32c::crc32c(&payload_bytes.to_le_bytes()), payload);
    if computed != crc {
        return None;
    }
    let mut fields = Decoder::new(payload);
    let record = match fields.u8()? {
        KIND_ACCEPTED => {
            let instance = Instance(fields.u64()?);
            let ballot = get_ballot(&mut fields)?;
            let value_start = offset + FRAME_HEADER_BYTES + fields.position();
            let value_end = offset + FRAME_HEADER_BYTES + payload.len();
            Record::Accepted {
                instance,
                ballot,
                value: segment.slice(value_start..value_end),
            }
        }
        KIND_COMMITTED => {
            let through = Instance(fields.u64()?);
            if !fields.rest().is_empty() {
                return None;
            }
            Record::Committed { through }
        }
        _ => return None,
    };
    Some((record, crc, FRAME_HEADER_BYTES + payload.len()))
}

fn log_name(sequence: u64) -> String {
    format!("wal-{sequence:020}.log")
}

/// Version 1 kept a segment's identifiers in a file of this name.
fn version_1_ids_name(sequence: u64) -> String {
    format!("wal-{sequence:020}.ids")
}

fn parse_segment_name(name: &str) -> Option<(u64, &'static str)> {
    let rest = name.strip_prefix("wal-")?;
    let (number, extension) = rest.split_once('.')?;
    if number.len() != 20 || !number.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    let extension = match extension {
        "log" => "log",
        "ids" => "ids",
        _ => return None,
    };
    Some((number.parse().ok()?, extension))
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
    /// Opens the log in `disk`, creating it if there is none, and recovers
    /// its contents. Damaged records are reported in
    /// [`Recovery::corrupted`]; damaged headers and missing segments are
    /// errors. A torn tail in the last segment is cut off.
    ///
    /// On a disk that [supports parallel reads](Disk::supports_parallel_reads),
    /// reader threads read and verify the closed segments (repairing their
    /// damaged identifiers) while this thread merges what they found in
    /// segment order; the last segment, which may need cutting, is verified
    /// here. Otherwise this thread does it all, segment by segment. (So a
    /// recovery that fails at one segment may already have repaired the
    /// identifiers of the few after it, as a successful one would.)
    ///
    /// # Memory
    ///
    /// Recovery keeps every segment's frame region in memory, up to the
    /// first hole the file system reports in it (the values in
    /// [`Recovery::accepted`] are slices of it; on a disk that reports no
    /// holes, the last segment's region is read whole, unwritten space
    /// included) and 64 bytes per instance in
    /// [`Recovery::accepted`]. Beyond that it holds, while it runs, at most:
    ///
    /// * for each thread that verifies segments (the 2 reader threads, then
    ///   this one for the last segment), 216 bytes per identifier of the
    ///   largest segment it verified: the identifier region (64 bytes per
    ///   identifier), the identifiers decoded (64 bytes each) and the records
    ///   found (88 bytes each, one per identifier unless identifiers were
    ///   lost);
    /// * 64 bytes per `Accepted` record of at most 4 segments: records
    ///   verified and not yet merged, or memory kept to be reused for them;
    /// * at the end, up to 128 bytes for each `Accepted` record whose
    ///   instance is not above those of all records before it: such records
    ///   are taken out, sorted (the sort's buffer takes at most as much as
    ///   they do) and merged back in.
    ///
    /// With 64 MiB segments of 256-byte values (about 210,000 records each)
    /// that is about 45 MB per verifying thread and 13 MB per segment: under
    /// 150 MB in all while segments are verified.
    pub fn open(disk: Arc<dyn Disk>, config: WalConfig) -> Result<(Wal, Recovery)> {
        config.validate()?;
        let mut logs = Vec::new();
        for name in disk.list()? {
            match parse_segment_name(&name) {
                Some((sequence, "log")) => logs.push(sequence),
                Some((sequence, _)) => {
                    return Err(StorageError::UnsupportedVersion {
                        file: version_1_ids_name(sequence),
                        found: 1,
                        expected: FORMAT_VERSION,
                    })
                }
                None => {}
            }
        }
        for pair in logs.windows(2) {
            if pair[1] != pair[0] + 1 {
                return Err(StorageError::Malformed {
                    file: log_name(pair[0] + 1),
                    what: format!(
                        "segment missing between {} and {}",
                        log_name(pair[0]),
                        log_name(pair[1])
                    ),
                });
            }
        }

        let mut recovery = Recovery::default();
        let mut corrupt_by_instance: BTreeMap<Instance, CorruptEntry> = BTreeMap::new();
        let mut corrupt_unknown = Vec::new();
        let mut accepted = AcceptedLog::default();
        let mut closed = Vec::new();
        let mut active = None;
        let mut active_instance_max = Instance::ZERO;
        let count = logs.len();
        let mut next_sequence = logs.last().map_or(1, |last| last + 1);
        let mut readers = SegmentReaders::start(disk.clone(), &config, &logs);
        let mut scratch = ScanScratch::default();
        // The records of the segment merged last, emptied: their memory is
        // reused for the next segment's.
        let mut spare = SegmentRecords::default();
        for (index, sequence) in logs.iter().copied().enumerate() {
            let last = index + 1 == count;
            let scan = match readers.take(index) {
                Some(SegmentWork::Scanned(scan)) => Some(scan?),
                Some(SegmentWork::Read(read)) => {
                    // The readers are done: let their memory go first.
                    readers.stop();
                    let records = std::mem::take(&mut spare);
                    scan_segment(
                        disk.as_ref(),
                        &config,
                        sequence,
                        last,
                        Some(read),
                        &mut scratch,
                        records,
                    )?
                }
                Some(SegmentWork::Panicked(_)) => unreachable!("take resumes a reader's panic"),
                None => {
                    let records = std::mem::take(&mut spare);
                    scan_segment(disk.as_ref(), &config, sequence, last, None, &mut scratch, records)?
                }
            };
            let Some(scan) = scan else {
                // The last segment's creation never finished; it holds
                // nothing and its files are gone. A new one takes its number.
                assert!(last);
                next_sequence = sequence;
                continue;
            };
            recovery.bytes_scanned += scan.log_file_bytes;
            recovery.torn_tail_bytes += scan.torn_tail_bytes;
            recovery.corrupt_identifiers += scan.corrupt_identifiers;
            recovery.unreadable_bytes += scan.unreadable_bytes;
            recovery.damaged_headers += scan.damaged_headers;
            recovery.oversized_bytes += scan.oversized_bytes;
            recovery.repaired_identifiers += scan.repaired_identifiers;
            let mut records = scan.records;
            recovery.records += records.records;
            recovery.committed_through = recovery.committed_through.max(records.committed_through);
            accepted.append(&mut records.accepted);
            for entry in records.corrupted.drain(..) {
                match (entry.kind, entry.instance) {
                    (Some(RecordKind::Accepted), Some(instance)) => {
                        corrupt_by_instance.insert(instance, entry);
                    }
                    _ => corrupt_unknown.push(entry),
                }
            }
            let instance_max = records.instance_max;
            records.clear();
            spare = records;
            readers.hand_out(&mut spare);
            if last {
                active_instance_max = instance_max;
                active = Some(scan.files);
            } else {
                closed.push(SegmentInfo {
                    sequence,
                    identifier_base: scan.files.identifier_base,
                    instance_max,
                });
            }
        }
        // Stop the readers and free what only verifying needed.
        drop((readers, scratch, spare));
        recovery.accepted = accepted.finish();
        // An instance whose newest record is damaged needs repair; one with a
        // good record after the damaged one does not.
        corrupt_by_instance.retain(|instance, _| !recovery.accepted.contains_key(instance));
        recovery.corrupted = corrupt_unknown;
        recovery.corrupted.extend(corrupt_by_instance.into_values());

        let active = match active {
            Some(active) => active,
            None => create_segment(disk.as_ref(), &config, next_sequence)?,
        };
        let wal = Wal {
            disk,
            config,
            closed,
            active,
            active_instance_max,
            staged_log: Vec::new(),
            staged_ids: Vec::new(),
            staged_records: 0,
            staged_instance_max: Instance::ZERO,
            failure: None,
            syncs: 0,
        };
        Ok((wal, recovery))
    }

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

    /// Stages `record`. It is durable only after a later [`Wal::sync`]
    /// returns `Ok`. May write and sync what is already staged first, when
    /// the record would take the segment past `segment_bytes_max`.
    pub fn append(&mut self, record: &Record) -> Result<()> {
        self.check_running()?;
        if let Record::Accepted { value, .. } = record {
            if value.len() as u64 > self.config.value_bytes_max as u64 {
                return Err(StorageError::TooLarge {
                    file: log_name(self.active.sequence),
                    what: "accepted value",
                    length: value.len() as u64,
                    limit: self.config.value_bytes_max as u64,
                });
            }
        }
        let frame_bytes = record.frame_bytes() as u64;
        if self.is_full_for(record) {
            self.sync()?;
            self.rotate()?;
        }
        let offset = self.active.log_bytes + self.staged_log.len() as u64;
        let record_crc = encode_frame(record, &mut self.staged_log);
        Identifier {
            kind: record.kind(),
            record_crc,
            instance: record.instance(),
            ballot: record.ballot(),
            offset,
            frame_bytes: frame_bytes as u32,
        }
        .encode(&mut self.staged_ids);
        self.staged_records += 1;
        self.staged_instance_max = self.staged_instance_max.max(record.instance());
        Ok(())
    }

    /// Records staged and not yet synced.
    pub fn staged_records(&self) -> u64 {
        self.staged_records
    }

    /// Bytes staged and not yet synced.
    pub fn staged_bytes(&self) -> usize {
        self.staged_log.len()
    }

    /// Makes every staged record durable, in the order the module docs
    /// describe: frames, sync, identifiers, sync. A failure stops the log for
    /// good; a [`StorageError::SyncFailed`] must stop the process (server) or
    /// count as a crash (simulator), never be retried.
    pub fn sync(&mut self) -> Result<()> {
        let Some(identifiers) = self.write_frames()? else {
            return Ok(());
        };
        self.sync_file()?;
        // The frames are durable; only now may their identifiers be written.
        self.write_identifiers(&identifiers)?;
        self.sync_file()?;
        self.rotate_if_full()
    }

    /// Writes the staged frames to the active segment, without syncing.
    /// Returns their identifiers, which may be written once a later
    /// [`Wal::sync_file`] has returned: the batch is durable only when they
    /// are synced too.
    pub(crate) fn write_frames(&mut self) -> Result<Option<IdentifierBatch>> {
        self.check_running()?;
        if self.staged_records == 0 {
            return Ok(None);
        }
        let active = &mut self.active;
        if let Err(error) = write_preallocated(
            active.file.as_mut(),
            0,
            active.log_bytes,
            &self.staged_log,
            self.config.preallocate_bytes,
            active.identifier_base,
            &mut active.log_written,
        ) {
            return self.fail(error);
        }
        let identifiers = IdentifierBatch {
            sequence: active.sequence,
            offset: active.ids_bytes,
            bytes: std::mem::take(&mut self.staged_ids),
        };
        active.log_bytes += self.staged_log.len() as u64;
        active.ids_bytes += identifiers.bytes.len() as u64;
        assert_eq!(
            (active.ids_bytes - FILE_HEADER_BYTES as u64) % IDENTIFIER_BYTES as u64,
            0
        );
        assert!(
            active.log_bytes <= active.identifier_base,
            "frames never reach the identifiers"
        );
        self.active_instance_max = self.active_instance_max.max(self.staged_instance_max);
        self.staged_log.clear();
        self.staged_records = 0;
        self.staged_instance_max = Instance::ZERO;
        self.syncs += 1;
        Ok(Some(identifiers))
    }

    /// Writes a batch's identifiers to the active segment, without syncing.
    /// Only once the batch's frames are durable (a [`Wal::sync_file`] after
    /// [`Wal::write_frames`] returned).
    pub(crate) fn write_identifiers(&mut self, identifiers: &IdentifierBatch) -> Result<()> {
        self.check_running()?;
        assert_eq!(
            identifiers.sequence, self.active.sequence,
            "identifiers of another segment"
        );
        let active = &mut self.active;
        if let Err(error) = write_preallocated(
            active.file.as_mut(),
            active.identifier_base,
            identifiers.offset,
            &identifiers.bytes,
            self.config.preallocate_bytes / 4,
            ids_bytes_max(active.identifier_base),
            &mut active.ids_written,
        ) {
            return self.fail(error);
        }
        Ok(())
    }

    /// `fdatasync`s the active segment: everything written to it so far is
    /// durable when this returns `Ok`.
    pub(crate) fn sync_file(&mut self) -> Result<()> {
        self.check_running()?;
        if let Err(error) = self.active.file.sync() {
            return self.fail(error);
        }
        Ok(())
    }

    /// Whether appending `record` now would take the active segment past
    /// `segment_bytes_max` (so the batch must end and the segment rotate).
    pub(crate) fn is_full_for(&self, record: &Record) -> bool {
        let segment_bytes = self.active.log_bytes + self.staged_log.len() as u64;
        segment_bytes + record.frame_bytes() as u64 > self.config.segment_bytes_max
            && segment_bytes > FILE_HEADER_BYTES as u64
    }

    /// Whether the active segment reached `segment_bytes_max`.
    pub(crate) fn is_full(&self) -> bool {
        self.active.log_bytes >= self.config.segment_bytes_max
    }

    /// Starts a new segment if the active one reached `segment_bytes_max`.
    /// Only when every identifier of the active segment is synced, so that
    /// every segment but the last is complete.
    pub(crate) fn rotate_if_full(&mut self) -> Result<()> {
        if self.is_full() {
            self.rotate()?;
        }
        Ok(())
    }

    /// Stops the log after a failure elsewhere (the identifier writer).
    pub(crate) fn stop_after(&mut self, reason: String) {
        self.failure.get_or_insert(reason);
    }

    /// How many batches of frames have been written (by [`Wal::sync`], or by
    /// the group-commit writer); each is durable once a later sync returns.
    pub fn sync_count(&self) -> u64 {
        self.syncs
    }

    pub(crate) fn rotate(&mut self) -> Result<()> {
        assert_eq!(self.staged_records, 0, "rotate only at a batch boundary");
        let next = match create_segment(self.disk.as_ref(), &self.config, self.active.sequence + 1) {
            Ok(next) => next,
            Err(error) => return self.fail(error),
        };
        let previous = std::mem::replace(&mut self.active, next);
        self.closed.push(SegmentInfo {
            sequence: previous.sequence,
            identifier_base: previous.identifier_base,
            instance_max: self.active_instance_max,
        });
        self.active_instance_max = Instance::ZERO;
        Ok(())
    }

    /// Deletes the oldest segments whose records all concern instances the
    /// snapshot covers. Taking a [`FinishedSnapshot`] means the snapshot is
    /// durably installed before any log it replaces goes away. The active
    /// segment is never deleted.
    pub fn trim(&mut self, snapshot: &FinishedSnapshot) -> Result<u64> {
        self.check_running()?;
        let covered = snapshot.instance();
        let mut removed = 0;
        while let Some(oldest) = self.closed.first() {
            if oldest.instance_max > covered {
                break;
            }
            self.disk.remove(&log_name(oldest.sequence))?;
            self.closed.remove(0);
            removed += 1;
        }
        Ok(removed)
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

/// Identifiers of one batch of frames, to be written to the segment's
/// identifier region once the frames are durable, and synced before the
/// batch is reported durable.
#[derive(Debug)]
pub(crate) struct IdentifierBatch {
    sequence: u64,
    /// Where in the identifier region they go.
    offset: u64,
    bytes: Vec<u8>,
}

/// Writes `data` at `offset` of the region starting at `base`; if that
/// passes `written` (how far the region has been written), also writes
/// `preallocate_bytes` zeros after it (never past `length_cap`, the region's
/// longest length), so the next batches land in allocated blocks and their
/// syncs change no file metadata. Nothing durable lies beyond the data
/// written last, so the zeros never cover data, and recovery reads trailing
/// zeros as space never written.
fn write_preallocated(
    file: &mut dyn File,
    base: u64,
    offset: u64,
    data: &[u8],
    preallocate_bytes: u64,
    length_cap: u64,
    written: &mut u64,
) -> Result<()> {
    let end = offset + data.len() as u64;
    file.write_at(base + offset, data)?;
    if end > *written {
        let target = (end + preallocate_bytes).min(length_cap).max(end);
        if target > end {
            file.write_at(base + end, &vec![0u8; (target - end) as usize])?;
        }
        *written = target;
    }
    Ok(())
}

fn create_segment(disk: &dyn Disk, config: &WalConfig, sequence: u64) -> Result<ActiveSegment> {
    let identifier_base = config.identifier_base();
    let bound = encode_bound(identifier_base);
    let mut file = disk.create(&log_name(sequence))?;
    file.write_at(0, &encode_file_header(LOG_MAGIC, FORMAT_VERSION, sequence, bound))?;
    file.write_at(
        identifier_base,
        &encode_file_header(IDS_MAGIC, FORMAT_VERSION, sequence, bound),
    )?;
    file.sync()?;
    Ok(ActiveSegment {
        sequence,
        file,
        identifier_base,
        log_bytes: FILE_HEADER_BYTES as u64,
        ids_bytes: FILE_HEADER_BYTES as u64,
        log_written: FILE_HEADER_BYTES as u64,
        ids_written: FILE_HEADER_BYTES as u64,
    })
}

/// A record as a segment's scan found it.
enum Scanned {
    Good(Record),
    /// Boxed: rare, and the scan holds an item per record.
    Corrupt(Box<CorruptEntry>),
}

/// What one segment's records say, in log order.
#[derive(Debug, Default)]
struct SegmentRecords {
    accepted: AcceptedLog,
    /// Damaged records.
    corrupted: Vec<CorruptEntry>,
    committed_through: Instance,
    /// The highest instance named by a good record or a damaged `Accepted`
    /// one.
    instance_max: Instance,
    /// Good records.
    records: u64,
}

impl SegmentRecords {
    /// Empties it, keeping its memory.
    fn clear(&mut self) {
        self.accepted.clear();
        self.corrupted.clear();
        self.committed_through = Instance::ZERO;
        self.instance_max = Instance::ZERO;
        self.records = 0;
    }

    /// Takes the records of `items`, which are in log order.
    fn take(&mut self, items: &mut Vec<(Range<usize>, Scanned)>) {
        self.accepted.entries.reserve(items.len());
        for (_, item) in items.drain(..) {
            match item {
                Scanned::Good(record) => {
                    self.records += 1;
                    self.instance_max = self.instance_max.max(record.instance());
                    match record {
                        Record::Accepted {
                            instance,
                            ballot,
                            value,
                        } => self.accepted.push(instance, AcceptedValue { ballot, value }),
                        Record::Committed { through } => {
                            self.committed_through = self.committed_through.max(through);
                        }
                    }
                }
                Scanned::Corrupt(entry) => {
                    if let (Some(RecordKind::Accepted), Some(instance)) = (entry.kind, entry.instance) {
                        self.instance_max = self.instance_max.max(instance);
                        self.accepted.remove(instance);
                    }
                    self.corrupted.push(*entry);
                }
            }
        }
    }
}

struct SegmentScan {
    records: SegmentRecords,
    files: ActiveSegment,
    torn_tail_bytes: u64,
    corrupt_identifiers: u64,
    unreadable_bytes: u64,
    damaged_headers: u64,
    oversized_bytes: u64,
    repaired_identifiers: u64,
    log_file_bytes: u64,
}

/// Checks a segment file's header. A header that fails its checksum is
/// damage: it holds nothing the frames after it need (their position is
/// fixed, their sequence is in the file name), so it is counted and the
/// frames are still read, as is a sound header of another of this crate's
/// files or of another segment (a misdirected write). A header that
/// verifies but names a foreign format or a newer version is an error. Returns how many headers were damaged (0 or 1).
fn check_segment_header(file: &str, bytes: &[u8], magic: u64, sequence: u64) -> Result<u64> {
    match decode_file_header(file, bytes, magic, FORMAT_VERSION) {
        Ok((number, _)) if number == sequence => Ok(0),
        Ok((number, _)) => {
            // Another segment's header: a misdirected write.
            tracing::warn!(
                file,
                number,
                "segment header names another segment; reading the frames anyway"
            );
            Ok(1)
        }
        Err(StorageError::ChecksumMismatch { .. }) => {
            tracing::warn!(file, "segment header fails its checksum; reading the frames anyway");
            Ok(1)
        }
        // A sound header of another of this crate's files landed here: a
        // misdirected write, damage like any other.
        Err(StorageError::BadMagic { found, .. }) if found.to_le_bytes().starts_with(OWN_MAGIC_PREFIX) => {
            tracing::warn!(
                file,
                "segment header belongs to another file; reading the frames anyway"
            );
            Ok(1)
        }
        Err(error) => Err(error),
    }
}

/// Memory recovery reuses from one segment to the next: what it holds of a
/// segment only while verifying it.
#[derive(Default)]
struct ScanScratch {
    /// The identifier region.
    ids: Vec<u8>,
    /// Its identifiers, `None` where one failed its checksum.
    identifiers: Vec<Option<Identifier>>,
    /// Every record found, with the range of the log it covers.
    items: Vec<(Range<usize>, Scanned)>,
}

/// Reads and verifies one segment. For the last segment, also cuts off its
/// torn tail and returns `None` if its creation never finished.
fn scan_segment(
    disk: &dyn Disk,
    config: &WalConfig,
    sequence: u64,
    last: bool,
    prefetched: Option<Result<ReadFile>>,
    scratch: &mut ScanScratch,
    mut records: SegmentRecords,
) -> Result<Option<SegmentScan>> {
    let ScanScratch {
        ids: ids_bytes,
        identifiers,
        items,
    } = scratch;
    let log_file_name = log_name(sequence);
    let mut file = disk.open(&log_file_name)?;
    let log_read = match prefetched {
        Some(result) => result?,
        None => read_log_file(file.as_ref(), config, sequence)?,
    };
    let log_unreadable = log_read.unreadable_bytes;
    let identifier_base = log_read.identifier_base;
    let log_bytes = Bytes::from(log_read.bytes);
    let log_written_end = log_bytes.iter().rposition(|byte| *byte != 0).map_or(0, |last| last + 1);
    let log_has_frames = log_written_end > FILE_HEADER_BYTES;

    let ids_unreadable = read_tolerant_into(
        file.as_ref(),
        identifier_base,
        ids_bytes_max(identifier_base),
        UNREADABLE_IDENTIFIER_FILL,
        ids_bytes,
    )?;
    if last && !log_has_frames {
        let complete_header = decode_file_header(&log_file_name, &log_bytes, LOG_MAGIC, FORMAT_VERSION).is_ok();
        if !complete_header || ids_bytes.len() < FILE_HEADER_BYTES {
            // Rotation crashed while creating this segment (both headers are
            // written, then synced once): nothing was ever written to it.
            // Remove it so a fresh one can take its place.
            disk.remove(&log_file_name)?;
            return Ok(None);
        }
    }
    let mut damaged_headers = check_segment_header(&log_file_name, &log_bytes, LOG_MAGIC, sequence)?;
    // Bytes past the longest identifier region cannot have been written by
    // this crate; they were not read.
    let oversized_bytes = file
        .len()?
        .saturating_sub(identifier_base + ids_bytes_max(identifier_base));
    if oversized_bytes > 0 {
        tracing::warn!(
            file = log_file_name,
            oversized_bytes,
            "segment file longer than it can be; the excess is ignored"
        );
    }
    if ids_bytes.len() < FILE_HEADER_BYTES {
        // The identifier header is synced before any frame is written, so
        // the write that put it there went astray.
        damaged_headers += 1;
        ids_bytes.clear();
        ids_bytes.extend_from_slice(&encode_file_header(
            IDS_MAGIC,
            FORMAT_VERSION,
            sequence,
            encode_bound(identifier_base),
        ));
        if last {
            file.truncate(identifier_base)?;
            file.write_at(identifier_base, ids_bytes)?;
            file.sync()?;
        }
    } else {
        damaged_headers += check_segment_header(&log_file_name, ids_bytes, IDS_MAGIC, sequence)?;
    }

    // Slots, without trailing all-zero ones (space allocated, never written)
    // and without a trailing partial slot (a torn identifier write).
    let slot_bytes = &ids_bytes[FILE_HEADER_BYTES..];
    let mut slot_count = slot_bytes.len() / IDENTIFIER_BYTES;
    while slot_count > 0
        && slot_bytes[(slot_count - 1) * IDENTIFIER_BYTES..slot_count * IDENTIFIER_BYTES]
            .iter()
            .all(|b| *b == 0)
    {
        slot_count -= 1;
    }
    identifiers.clear();
    identifiers.extend(
        slot_bytes[..slot_count * IDENTIFIER_BYTES]
            .chunks_exact(IDENTIFIER_BYTES)
            .map(Identifier::decode),
    );
    let identifiers = &identifiers[..];
    let corrupt_identifiers = identifiers.iter().filter(|i| i.is_none()).count() as u64;

    let payload_bytes_max = config.frame_bytes_max() - FRAME_HEADER_BYTES as u64;
    // Every item with the range of the log it covers, so that items can be
    // put in log order and the bytes no identifier led to can be checked.
    items.clear();
    items.reserve(identifiers.len());
    let mut position = FILE_HEADER_BYTES;
    let corrupt_at = |offset: usize, identifier: Option<Identifier>| CorruptEntry {
        file: log_file_name.clone(),
        offset: Some(offset as u64),
        kind: identifier.and_then(|i| kind_of(i.kind)),
        instance: identifier.map(|i| i.instance),
        ballot: identifier.filter(|i| i.kind == KIND_ACCEPTED).map(|i| i.ballot),
    };
    // Frames and identifiers are in the same order: frame `k` is described by
    // identifier `k`.
    let mut index = 0;
    let mut repairs = Vec::new();
    while index < identifiers.len() {
        let identifier = identifiers[index];
        if let Some(identifier) = identifier {
            position = usize::try_from(identifier.offset).unwrap_or(usize::MAX);
        }
        let decoded = decode_frame(&log_bytes, position, payload_bytes_max);
        let matches = match (&decoded, &identifier) {
            (Some((record, crc, length)), Some(identifier)) => {
                *crc == identifier.record_crc
                    && record.kind() == identifier.kind
                    && record.instance() == identifier.instance
                    && *length as u32 == identifier.frame_bytes
            }
            (Some(_), None) => true,
            (None, _) => false,
        };
        if matches {
            let (record, record_crc, length) = decoded.expect("matched");
            if identifier.is_none() {
                repairs.push((
                    index,
                    Identifier {
                        kind: record.kind(),
                        record_crc,
                        instance: record.instance(),
                        ballot: record.ballot(),
                        offset: position as u64,
                        frame_bytes: length as u32,
                    },
                ));
            }
            items.push((position..position + length, Scanned::Good(record)));
            position += length;
            index += 1;
            continue;
        }
        if identifier.is_none() && position >= log_written_end && identifiers[index..].iter().all(Option::is_none) {
            // Only damaged identifier slots remain, and the log holds
            // nothing past this point: no frame was ever written for them
            // (e.g. unreadable preallocated space).
            break;
        }
        let start = position;
        match identifier {
            Some(identifier) => {
                position = position.saturating_add(identifier.frame_bytes as usize);
            }
            None => {
                // Neither the frame nor its identifier survived. The next
                // good identifier says where to resume; without one, look
                // for the next frame that verifies.
                let next_known = identifiers[index + 1..].iter().flatten().next();
                position = match next_known {
                    Some(next) => usize::try_from(next.offset).unwrap_or(usize::MAX),
                    None => next_frame(&log_bytes, position + 1, payload_bytes_max).unwrap_or(log_bytes.len()),
                };
            }
        }
        let covered = start..position.max(start).min(log_bytes.len().max(start));
        items.push((covered, Scanned::Corrupt(Box::new(corrupt_at(start, identifier)))));
        index += 1;
    }

    // Where identified frames end. Frames are written in order, so bytes up
    // to here that no identifier led to (a gap) mean an identifier went
    // missing, e.g. overwritten by a misdirected write: the frames there are
    // checked on their own checksums, kept if they verify, reported if not.
    let identified_end = items
        .iter()
        .map(|(range, _)| range.end)
        .max()
        .unwrap_or(FILE_HEADER_BYTES)
        .max(FILE_HEADER_BYTES);
    // Normally each item starts where the one before ended: no gaps, and
    // already in log order.
    let contiguous = items
        .iter()
        .try_fold(FILE_HEADER_BYTES, |end, (range, _)| {
            (range.start == end).then_some(range.end)
        })
        .is_some();
    let mut gaps = Vec::new();
    if !contiguous {
        let mut covered: Vec<Range<usize>> = items.iter().map(|(range, _)| range.clone()).collect();
        covered.sort_by_key(|range| range.start);
        let mut cursor = FILE_HEADER_BYTES;
        for range in &covered {
            if range.start > cursor {
                gaps.push(cursor..range.start.min(identified_end));
            }
            cursor = cursor.max(range.end);
        }
    }
    for gap in gaps {
        scan_unidentified(&log_bytes, gap, payload_bytes_max, items, |offset| {
            corrupt_at(offset, None)
        });
    }

    // Frames beyond the last identified one.
    let mut torn_tail_bytes = 0;
    let tail_start = identified_end.min(log_bytes.len());
    // Trailing zeros are preallocated space, never written.
    let written_end = log_bytes[tail_start..]
        .iter()
        .rposition(|byte| *byte != 0)
        .map_or(tail_start, |last| tail_start + last + 1);
    // In the last segment, new frames go right after the last identified
    // one, even if a damaged file ended before it.
    let mut log_end = if (identified_end as u64) <= identifier_base {
        identified_end
    } else {
        log_bytes.len()
    };
    let mut identifier_slots = slot_count;
    if tail_start < log_bytes.len() {
        if last {
            // Frames past the last identifier. Either they were never reported
            // durable (the crash came between the log's sync and the
            // identifiers'), or they were and their identifiers were lost (a
            // misdirected write). Keeping the ones that verify is safe either
            // way: an acceptor may always act as if it accepted what it wrote,
            // and dropping an acknowledged acceptance is not safe. The first
            // frame that does not verify is the torn write: it and what follows
            // are cut off.
            let mut kept_end = tail_start;
            while kept_end < written_end {
                match decode_frame(&log_bytes, kept_end, payload_bytes_max) {
                    Some((record, record_crc, length)) if kept_end + length <= log_bytes.len() => {
                        repairs.push((
                            identifier_slots,
                            Identifier {
                                kind: record.kind(),
                                record_crc,
                                instance: record.instance(),
                                ballot: record.ballot(),
                                offset: kept_end as u64,
                                frame_bytes: length as u32,
                            },
                        ));
                        items.push((kept_end..kept_end + length, Scanned::Good(record)));
                        identifier_slots += 1;
                        kept_end += length;
                    }
                    _ => break,
                }
            }
            torn_tail_bytes = written_end.saturating_sub(kept_end) as u64;
            if written_end > kept_end {
                file.write_at(kept_end as u64, &vec![0u8; written_end - kept_end])?;
                file.sync()?;
            }
            log_end = kept_end;
        } else {
            // Every segment but the last was complete when the next one was
            // created; frames without identifiers mean the identifier region
            // was damaged. Keep what verifies, report the rest.
            scan_unidentified(
                &log_bytes,
                tail_start..written_end,
                payload_bytes_max,
                items,
                |offset| corrupt_at(offset, None),
            );
            log_end = log_bytes.len();
        }
    }
    // Log order decides which record of an instance is the newest.
    if !contiguous || !items.is_sorted_by_key(|(range, _)| range.start) {
        items.sort_by_key(|(range, _)| range.start);
    }
    if last {
        let slots_bytes = (FILE_HEADER_BYTES + slot_count * IDENTIFIER_BYTES) as u64;
        if (ids_bytes.len() as u64) != slots_bytes {
            file.truncate(identifier_base + slots_bytes)?;
            file.sync()?;
        }
    }
    // A frame that verifies but whose identifier is damaged gets its
    // identifier rewritten, so the next recovery sees what this one saw
    // (and keeps telling corruption from a torn tail for it).
    for (index, identifier) in &repairs {
        let mut slot = Vec::with_capacity(IDENTIFIER_BYTES);
        identifier.encode(&mut slot);
        file.write_at(
            identifier_base + (FILE_HEADER_BYTES + index * IDENTIFIER_BYTES) as u64,
            &slot,
        )?;
    }
    if !repairs.is_empty() {
        file.sync()?;
    }
    let ids_end = (FILE_HEADER_BYTES + identifier_slots * IDENTIFIER_BYTES) as u64;
    records.take(items);
    Ok(Some(SegmentScan {
        records,
        files: ActiveSegment {
            sequence,
            file,
            identifier_base,
            log_bytes: log_end.max(FILE_HEADER_BYTES) as u64,
            ids_bytes: ids_end,
            log_written: log_end.max(FILE_HEADER_BYTES) as u64,
            ids_written: ids_end,
        },
        torn_tail_bytes,
        corrupt_identifiers,
        unreadable_bytes: log_unreadable + ids_unreadable,
        damaged_headers,
        oversized_bytes,
        repaired_identifiers: repairs.len() as u64,
        log_file_bytes: log_written_end.max(FILE_HEADER_BYTES) as u64,
    }))
}

/// The unit in which a segment header records the longest its frame region
/// may be.
const BOUND_UNIT_BYTES: u64 = 4096;
/// The shortest frame (a `Committed` record): bounds how many identifiers a
/// frame region of a given length can have.
const FRAME_BYTES_MIN: u64 = (FRAME_HEADER_BYTES + COMMITTED_BYTES) as u64;

fn encode_bound(log_bytes_max: u64) -> u32 {
    u32::try_from(log_bytes_max.div_ceil(BOUND_UNIT_BYTES)).unwrap_or(u32::MAX)
}

/// Where the identifier region of the segment file with this header starts:
/// where the header says, if it verifies. Otherwise (a damaged header) where
/// an identifier header of this segment is found: at the base this
/// configuration gives, or else at the last 4096-byte boundary that holds one;
/// failing both, the configured base.
fn locate_identifier_base(file: &dyn File, header: &[u8], config: &WalConfig, sequence: u64) -> Result<u64> {
    if let Ok((_, bound)) = decode_file_header("segment", header, LOG_MAGIC, FORMAT_VERSION) {
        return Ok(bound as u64 * BOUND_UNIT_BYTES);
    }
    let is_identifier_header = |offset: u64| {
        let mut bytes = [0u8; FILE_HEADER_BYTES];
        matches!(file.read_at(offset, &mut bytes), Ok(FILE_HEADER_BYTES))
            && matches!(
                decode_file_header("segment", &bytes, IDS_MAGIC, FORMAT_VERSION),
                Ok((number, _)) if number == sequence
            )
    };
    let configured = config.identifier_base();
    if is_identifier_header(configured) {
        return Ok(configured);
    }
    let length = file.len()?;
    let mut offset = length / BOUND_UNIT_BYTES * BOUND_UNIT_BYTES;
    while offset >= BOUND_UNIT_BYTES {
        if is_identifier_header(offset) {
            return Ok(offset);
        }
        offset -= BOUND_UNIT_BYTES;
    }
    Ok(configured)
}

/// The longest an identifier region may be beside a frame region that ends
/// at `identifier_base`.
fn ids_bytes_max(identifier_base: u64) -> u64 {
    FILE_HEADER_BYTES as u64 + (identifier_base / FRAME_BYTES_MIN + 1) * IDENTIFIER_BYTES as u64
}

/// Reads a segment's frame region, which ends where its identifier region
/// starts.
fn read_log_file(file: &dyn File, config: &WalConfig, sequence: u64) -> Result<ReadFile> {
    let mut header = [0u8; FILE_HEADER_BYTES];
    let read = file.read_at(0, &mut header).unwrap_or(0);
    let identifier_base = locate_identifier_base(file, &header[..read], config, sequence)?;
    // Frames are written from the start of the region without gaps, so the
    // region's first hole ends what was written; the rest reads as zeros.
    // This keeps a segment holding little from costing a whole region.
    let written = file.data_end(0).unwrap_or(identifier_base).min(identifier_base);
    let mut bytes = Vec::new();
    let unreadable_bytes = read_tolerant_into(file, 0, written, UNREADABLE_LOG_FILL, &mut bytes)?;
    Ok(ReadFile {
        bytes,
        unreadable_bytes,
        identifier_base,
    })
}

/// Threads that read and verify the closed segments for recovery, so that
/// both reading and verifying use every core.
const RECOVERY_READER_THREADS: usize = 2;
/// Segments handed to the reader threads and not yet merged by recovery:
/// one per reader and one more, so that a reader that finishes first need
/// not wait for the merge.
const RECOVERY_SEGMENTS_IN_FLIGHT: usize = RECOVERY_READER_THREADS + 1;

/// A segment for a reader thread.
struct SegmentJob {
    index: usize,
    /// Memory to reuse for the segment's records.
    records: SegmentRecords,
}

/// What a reader thread did with a segment.
enum SegmentWork {
    /// A closed segment, read and verified (its damaged identifiers
    /// repaired).
    Scanned(Result<SegmentScan>),
    /// The last segment's frame region, read: recovery verifies (and may cut)
    /// that one itself.
    Read(Result<ReadFile>),
    /// The reader panicked; recovery panics with the same payload.
    Panicked(Box<dyn std::any::Any + Send>),
}

/// Reader threads that read and verify segments ahead of recovery, handing
/// them back in segment order. At most [`RECOVERY_SEGMENTS_IN_FLIGHT`]
/// segments are handed out and not yet taken back, so what the readers hold
/// beyond the segments recovery keeps anyway is bounded (see [`Wal::open`]).
/// Segments are distinct files, so a reader may repair a segment's
/// identifiers while recovery handles another.
struct SegmentReaders {
    jobs: Option<mpsc::Sender<SegmentJob>>,
    results: Option<mpsc::Receiver<(usize, SegmentWork)>>,
    /// Segments that arrived before one recovery waits for.
    ready: BTreeMap<usize, SegmentWork>,
    /// The next segment to hand out.
    next: usize,
    count: usize,
    threads: Vec<std::thread::JoinHandle<()>>,
}

impl SegmentReaders {
    fn start(disk: Arc<dyn Disk>, config: &WalConfig, sequences: &[u64]) -> SegmentReaders {
        let mut readers = SegmentReaders {
            jobs: None,
            results: None,
            ready: BTreeMap::new(),
            next: 0,
            count: sequences.len(),
            threads: Vec::new(),
        };
        if !disk.supports_parallel_reads() || sequences.len() < 2 {
            return readers;
        }
        let (job_sender, job_receiver) = mpsc::channel::<SegmentJob>();
        let job_receiver = Arc::new(Mutex::new(job_receiver));
        let (result_sender, result_receiver) = mpsc::channel();
        let sequences: Arc<Vec<u64>> = Arc::new(sequences.to_vec());
        for _ in 0..RECOVERY_READER_THREADS {
            let disk = disk.clone();
            let config = config.clone();
            let jobs = job_receiver.clone();
            let results = result_sender.clone();
            let sequences = sequences.clone();
            let spawned = std::thread::Builder::new()
                .name("synod-wal-recovery-reader".to_string())
                .spawn(move || {
                    let mut scratch = ScanScratch::default();
                    loop {
                        let job = match jobs.lock() {
                            Ok(jobs) => jobs.recv(),
                            Err(_) => break,
                        };
                        let Ok(SegmentJob { index, records }) = job else {
                            break;
                        };
                        let work = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                            read_segment(disk.as_ref(), &config, &sequences, index, records, &mut scratch)
                        }));
                        let panicked = work.is_err();
                        let work = work.unwrap_or_else(SegmentWork::Panicked);
                        if results.send((index, work)).is_err() || panicked {
                            break;
                        }
                    }
                });
            match spawned {
                Ok(thread) => readers.threads.push(thread),
                // Fewer readers, or none: recovery reads the rest itself.
                Err(_) => break,
            }
        }
        if readers.threads.is_empty() {
            return readers;
        }
        readers.jobs = Some(job_sender);
        readers.results = Some(result_receiver);
        for _ in 0..RECOVERY_SEGMENTS_IN_FLIGHT {
            readers.hand_out(&mut SegmentRecords::default());
        }
        readers
    }

    /// Hands the next segment to the readers, with `records`' memory to
    /// reuse (unless it is the last segment, which recovery verifies
    /// itself).
    fn hand_out(&mut self, records: &mut SegmentRecords) {
        let Some(jobs) = &self.jobs else {
            return;
        };
        if self.next >= self.count {
            return;
        }
        let records = if self.next + 1 < self.count {
            std::mem::take(records)
        } else {
            SegmentRecords::default()
        };
        // A reader that stopped leaves the segment to recovery (see take).
        let _ = jobs.send(SegmentJob {
            index: self.next,
            records,
        });
        self.next += 1;
        if self.next == self.count {
            // Nothing more to hand out: each reader stops, freeing its
            // memory, once it has handed back what it is on.
            self.jobs = None;
        }
    }

    /// Stops the readers and waits for them, so that none touches a segment
    /// after recovery returns (each finishes at most the segment it is on).
    fn stop(&mut self) {
        self.jobs = None;
        self.results = None;
        for thread in self.threads.drain(..) {
            let _ = thread.join();
        }
    }

    /// What the readers did with segment `index`, or `None` if recovery
    /// must read it itself. Segments must be taken in order.
    fn take(&mut self, index: usize) -> Option<SegmentWork> {
        let results = self.results.as_ref()?;
        loop {
            if let Some(work) = self.ready.remove(&index) {
                if let SegmentWork::Panicked(payload) = work {
                    std::panic::resume_unwind(payload);
                }
                return Some(work);
            }
            match results.recv() {
                Ok((arrived, work)) => {
                    self.ready.insert(arrived, work);
                }
                Err(_) => return None,
            }
        }
    }
}

impl Drop for SegmentReaders {
    fn drop(&mut self) {
        self.stop();
    }
}

/// A reader thread's work on segment `index` of `sequences`: every closed
/// segment is read and verified; the last one only read.
fn read_segment(
    disk: &dyn Disk,
    config: &WalConfig,
    sequences: &[u64],
    index: usize,
    records: SegmentRecords,
    scratch: &mut ScanScratch,
) -> SegmentWork {
    let sequence = sequences[index];
    if index + 1 < sequences.len() {
        let scan = scan_segment(disk, config, sequence, false, None, scratch, records)
            .map(|scan| scan.expect("only the last segment can be unfinished"));
        SegmentWork::Scanned(scan)
    } else {
        let read = disk
            .open(&log_name(sequence))
            .and_then(|file| read_log_file(file.as_ref(), config, sequence));
        SegmentWork::Read(read)
    }
}

/// What unreadable log bytes are replaced with: frames there fail their
/// checksums and are reported like any other damage.
const UNREADABLE_LOG_FILL: u8 = 0;
/// What unreadable identifier bytes are replaced with: not zero, so the slots
/// count as damaged identifiers rather than as never written.
const UNREADABLE_IDENTIFIER_FILL: u8 = 0xFF;
/// The unit in which a file that failed to read whole is read again.
const REREAD_BLOCK_BYTES: usize = 4096;

/// A segment's frame region as recovery read it.
struct ReadFile {
    bytes: Vec<u8>,
    /// Bytes that failed to read and were replaced.
    unreadable_bytes: u64,
    /// Where the segment's identifier region starts.
    identifier_base: u64,
}

/// Reads a file from `start` into `bytes` (reusing its memory if it is large
/// enough), up to `length_max` bytes (never allocating for more), treating
/// EIO like a checksum mismatch (as CTRL prescribes): if the file cannot be
/// read at once, it is read again block by block, and blocks that still fail
/// are replaced with `fill` so that what they held fails verification.
/// Returns how many bytes were replaced.
fn read_tolerant_into(file: &dyn File, start: u64, length_max: u64, fill: u8, bytes: &mut Vec<u8>) -> Result<u64> {
    let length = file.len()?.saturating_sub(start).min(length_max) as usize;
    if bytes.capacity() >= length {
        bytes.clear();
        bytes.resize(length, 0);
    } else {
        // Fresh zeroed memory, which the allocator need not clear itself.
        *bytes = vec![0u8; length];
    }
    let read = match file.read_at(start, bytes) {
        Ok(read) if read == bytes.len() => return Ok(0),
        Ok(read) => read,
        Err(StorageError::Io { .. }) => 0,
        Err(error) => return Err(error),
    };
    let mut unreadable_bytes = 0;
    for (index, block) in bytes.chunks_mut(REREAD_BLOCK_BYTES).enumerate() {
        let offset = (index * REREAD_BLOCK_BYTES) as u64;
        if offset + (block.len() as u64) <= read as u64 {
            continue;
        }
        match file.read_at(start + offset, block) {
            Ok(got) if got == block.len() => {}
            Ok(_) | Err(StorageError::Io { .. }) => {
                block.fill(fill);
                unreadable_bytes += block.len() as u64;
            }
            Err(error) => return Err(error),
        }
    }
    if unreadable_bytes > 0 {
        tracing::warn!(
            file = file.name(),
            unreadable_bytes,
            "read errors in a log file; the bytes count as damaged"
        );
    }
    Ok(unreadable_bytes)
}

/// Reads the frames in `range` that no identifier describes: those that
/// verify are kept, anything else that is not zeros is reported.
fn scan_unidentified(
    log_bytes: &Bytes,
    range: Range<usize>,
    payload_bytes_max: u64,
    items: &mut Vec<(Range<usize>, Scanned)>,
    corrupt_at: impl Fn(usize) -> CorruptEntry,
) {
    let range = range.start..range.end.min(log_bytes.len());
    let mut scan = range.start;
    while scan < range.end {
        if log_bytes[scan..range.end].iter().all(|byte| *byte == 0) {
            break;
        }
        match decode_frame(log_bytes, scan, payload_bytes_max) {
            Some((record, _, length)) if scan + length <= range.end => {
                items.push((scan..scan + length, Scanned::Good(record)));
                scan += length;
            }
            _ => {
                let next = next_frame(log_bytes, scan + 1, payload_bytes_max)
                    .filter(|next| *next < range.end)
                    .unwrap_or(range.end);
                items.push((scan..next, Scanned::Corrupt(Box::new(corrupt_at(scan)))));
                scan = next;
            }
        }
    }
}

/// The offset of the next frame at or after `from` that verifies.
fn next_frame(segment: &Bytes, from: usize, payload_bytes_max: u64) -> Option<usize> {
    let magic = FRAME_MAGIC.to_le_bytes();
    let mut start = from;
    while start + magic.len() <= segment.len() {
        let found = segment[start..]
            .windows(magic.len())
            .position(|window| window == magic)?;
        let candidate = start + found;
        if decode_frame(segment, candidate, payload_bytes_max).is_some() {
            return Some(candidate);
        }
        start = candidate + 1;
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    /// One record of a segment: a good `Accepted` record (with a ballot
    /// round to tell values apart) or a damaged one.
    fn event() -> impl Strategy<Value = (u64, Option<u64>)> {
        (0u64..12, prop_oneof![4 => (0u64..1000).prop_map(Some), 1 => Just(None)])
    }

    /// The sizes [`Wal::open`] states its memory bound with.
    #[test]
    fn recovery_holds_what_its_bound_says() {
        assert_eq!(std::mem::size_of::<(Instance, AcceptedValue)>(), 64);
        assert_eq!(std::mem::size_of::<Option<Identifier>>(), 64);
        assert_eq!(IDENTIFIER_BYTES, 64);
        assert!(std::mem::size_of::<(Range<usize>, Scanned)>() <= 88);
        assert_eq!(RECOVERY_READER_THREADS, 2);
        // Handed out to the readers, plus the last segment's.
        assert_eq!(RECOVERY_SEGMENTS_IN_FLIGHT + 1, 4);
    }

    proptest! {
        /// The list gives what inserting and removing each record in a map,
        /// in log order, gives.
        #[test]
        fn accepted_log_keeps_each_instances_newest_record(
            segments in prop::collection::vec(prop::collection::vec(event(), 0..20), 0..5),
        ) {
            let mut expected: BTreeMap<Instance, AcceptedValue> = BTreeMap::new();
            let mut log = AcceptedLog::default();
            for segment in &segments {
                let mut records = AcceptedLog::default();
                for (instance, round) in segment {
                    let instance = Instance(*instance);
                    match round {
                        Some(round) => {
                            let value = AcceptedValue {
                                ballot: Ballot::new(*round, 0, NodeId(1)),
                                value: Bytes::from(round.to_le_bytes().to_vec()),
                            };
                            expected.insert(instance, value.clone());
                            records.push(instance, value);
                        }
                        None => {
                            expected.remove(&instance);
                            records.remove(instance);
                        }
                    }
                }
                log.append(&mut records);
            }
            let found = log.finish();
            prop_assert_eq!(found.len(), expected.len());
            prop_assert!(found.iter().eq(expected.iter()));
            for instance in 0..13 {
                prop_assert_eq!(found.get(&Instance(instance)), expected.get(&Instance(instance)));
            }
        }
    }
}
