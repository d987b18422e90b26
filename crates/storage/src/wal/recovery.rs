//! Opening the log: [`Wal::open`] lists the segments, reads and verifies
//! each (on reader threads where the disk allows), repairs damaged
//! identifiers, cuts the last segment's torn tail, and merges what every
//! segment holds into a [`Recovery`].

use std::collections::BTreeMap;
use std::ops::Range;
use std::sync::{mpsc, Arc, Mutex};

use bytes::Bytes;
use synod_paxos::{Ballot, Instance};

use super::format::*;
use super::writer::create_segment;
use super::{
    AcceptedValue, AcceptedValues, ActiveSegment, CorruptEntry, Record, RecordKind, Recovery, SegmentInfo, Wal,
    WalConfig,
};
use crate::disk::{Disk, File};
use crate::error::{Result, StorageError};
use crate::fields::{decode_file_header, encode_file_header, FILE_HEADER_BYTES};

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
        let logs = list_segments(disk.as_ref())?;
        let mut recovery = Recovery::default();
        let mut merged = MergedRecords::default();
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
                    let read = Some(read);
                    scan_segment(disk.as_ref(), &config, sequence, last, read, &mut scratch, records)?
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
            recovery.count_scan(&scan);
            let mut records = scan.records;
            merged.take(&mut records, &mut recovery);
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
        merged.finish(&mut recovery);

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
}

/// The log's segment numbers, in order: refuses a version-1 identifier file
/// (that format is no longer read) and a gap in the numbering (a lost
/// segment, whose records recovery cannot vouch for).
fn list_segments(disk: &dyn Disk) -> Result<Vec<u64>> {
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
    logs.sort_unstable();
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
    Ok(logs)
}

impl Recovery {
    /// Adds one segment's scan counts.
    fn count_scan(&mut self, scan: &SegmentScan) {
        self.bytes_scanned += scan.log_file_bytes;
        self.torn_tail_bytes += scan.torn_tail_bytes;
        self.corrupt_identifiers += scan.corrupt_identifiers;
        self.unreadable_bytes += scan.unreadable_bytes;
        self.damaged_headers += scan.damaged_headers;
        self.oversized_bytes += scan.oversized_bytes;
        self.repaired_identifiers += scan.repaired_identifiers;
    }
}

/// Every segment's records, merged in log order as the segments are verified.
#[derive(Default)]
struct MergedRecords {
    accepted: AcceptedLog,
    /// Damaged `Accepted` records by instance: the newest damaged one of each.
    corrupt_by_instance: BTreeMap<Instance, CorruptEntry>,
    /// Damaged records of no known instance.
    corrupt_unknown: Vec<CorruptEntry>,
}

impl MergedRecords {
    /// Takes the records of the next segment in log order.
    fn take(&mut self, records: &mut SegmentRecords, recovery: &mut Recovery) {
        recovery.records += records.records;
        recovery.committed_through = recovery.committed_through.max(records.committed_through);
        self.accepted.append(&mut records.accepted);
        for entry in records.corrupted.drain(..) {
            match (entry.kind, entry.instance) {
                (Some(RecordKind::Accepted), Some(instance)) => {
                    self.corrupt_by_instance.insert(instance, entry);
                }
                _ => self.corrupt_unknown.push(entry),
            }
        }
    }

    /// Hands the merged records to `recovery`. An instance whose newest record
    /// is damaged needs repair; one with a good record after the damaged one
    /// does not.
    fn finish(mut self, recovery: &mut Recovery) {
        recovery.accepted = self.accepted.finish();
        self.corrupt_by_instance
            .retain(|instance, _| !recovery.accepted.contains_key(instance));
        recovery.corrupted = self.corrupt_unknown;
        recovery.corrupted.extend(self.corrupt_by_instance.into_values());
    }
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
///
/// The phases, in order (each one's file writes, for the last segment,
/// come after the previous one's): [`read_regions`], [`check_headers`],
/// [`decode_identifiers`], [`match_identified_frames`], [`scan_gaps`],
/// [`scan_tail`], then the records are put in log order and
/// [`rewrite_identifiers`] makes the next recovery see what this one saw.
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
    let Some(mut segment) = read_regions(disk, config, sequence, last, prefetched, ids_bytes)? else {
        return Ok(None);
    };
    let (damaged_headers, oversized_bytes) = check_headers(&mut segment, sequence, last, ids_bytes)?;
    let slot_count = decode_identifiers(ids_bytes, identifiers);
    let identifiers = &identifiers[..];
    let corrupt_identifiers = identifiers.iter().filter(|i| i.is_none()).count() as u64;

    let payload_bytes_max = config.frame_bytes_max() - FRAME_HEADER_BYTES as u64;
    let mut repairs = Vec::new();
    match_identified_frames(&segment, identifiers, payload_bytes_max, items, &mut repairs);
    let (identified_end, contiguous) = scan_gaps(&segment, payload_bytes_max, items);
    let tail = scan_tail(
        &mut segment,
        identified_end,
        slot_count,
        last,
        payload_bytes_max,
        items,
        &mut repairs,
    )?;
    // Log order decides which record of an instance is the newest.
    if !contiguous || !items.is_sorted_by_key(|(range, _)| range.start) {
        items.sort_by_key(|(range, _)| range.start);
    }
    rewrite_identifiers(&mut segment, ids_bytes.len(), slot_count, last, &repairs)?;
    let ids_end = (FILE_HEADER_BYTES + tail.identifier_slots * IDENTIFIER_BYTES) as u64;
    records.take(items);
    let SegmentRegions {
        file,
        identifier_base,
        log_written_end,
        unreadable_bytes,
        ..
    } = segment;
    Ok(Some(SegmentScan {
        records,
        files: ActiveSegment {
            sequence,
            file,
            identifier_base,
            log_bytes: tail.log_end.max(FILE_HEADER_BYTES) as u64,
            ids_bytes: ids_end,
            log_written: tail.log_end.max(FILE_HEADER_BYTES) as u64,
            ids_written: ids_end,
        },
        torn_tail_bytes: tail.torn_tail_bytes,
        corrupt_identifiers,
        unreadable_bytes,
        damaged_headers,
        oversized_bytes,
        repaired_identifiers: repairs.len() as u64,
        log_file_bytes: log_written_end.max(FILE_HEADER_BYTES) as u64,
    }))
}

/// One segment as its scan reads it: the frame region in memory, the file
/// open for repairs.
struct SegmentRegions {
    /// The segment file's name.
    name: String,
    file: Box<dyn File>,
    /// The frame region, from offset 0.
    log_bytes: Bytes,
    /// Where the identifier region starts.
    identifier_base: u64,
    /// Where the frame region's last byte that is not zero ends.
    log_written_end: usize,
    /// Bytes of both regions that failed to read and were replaced.
    unreadable_bytes: u64,
}

impl SegmentRegions {
    /// A damaged record at `offset`, with what its identifier (if it
    /// survived) says about it.
    fn corrupt_at(&self, offset: usize, identifier: Option<Identifier>) -> CorruptEntry {
        CorruptEntry {
            file: self.name.clone(),
            offset: Some(offset as u64),
            kind: identifier.and_then(|i| kind_of(i.kind)),
            instance: identifier.map(|i| i.instance),
            ballot: identifier.filter(|i| i.kind == KIND_ACCEPTED).map(|i| i.ballot),
        }
    }
}

/// Phase 1: reads both regions of segment `sequence` (the identifier region
/// into `ids_bytes`), unreadable bytes replaced. Establishes that the
/// segment was created: the last segment, if it holds no frames and its
/// headers are incomplete, is a rotation that crashed, and is removed
/// (`None`).
fn read_regions(
    disk: &dyn Disk,
    config: &WalConfig,
    sequence: u64,
    last: bool,
    prefetched: Option<Result<ReadFile>>,
    ids_bytes: &mut Vec<u8>,
) -> Result<Option<SegmentRegions>> {
    let log_file_name = log_name(sequence);
    let file = disk.open(&log_file_name)?;
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
    Ok(Some(SegmentRegions {
        name: log_file_name,
        file,
        log_bytes,
        identifier_base,
        log_written_end,
        unreadable_bytes: log_unreadable + ids_unreadable,
    }))
}

/// Phase 2: checks both region headers and the file's length. Establishes
/// that the segment is of this format (an error otherwise) and that
/// `ids_bytes` starts with an identifier header: a missing one is rebuilt
/// (and, in the last segment, rewritten). Returns the damaged headers and
/// the bytes past the longest the file can be.
fn check_headers(
    segment: &mut SegmentRegions,
    sequence: u64,
    last: bool,
    ids_bytes: &mut Vec<u8>,
) -> Result<(u64, u64)> {
    let SegmentRegions {
        name: log_file_name,
        file,
        log_bytes,
        identifier_base,
        ..
    } = segment;
    let identifier_base = *identifier_base;
    let mut damaged_headers = check_segment_header(log_file_name, log_bytes, LOG_MAGIC, sequence)?;
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
        damaged_headers += check_segment_header(log_file_name, ids_bytes, IDS_MAGIC, sequence)?;
    }
    Ok((damaged_headers, oversized_bytes))
}

/// Phase 3: decodes the identifier slots into `identifiers` (`None` where a
/// slot fails its checksum). Establishes which slots were ever written:
/// trailing all-zero slots (space allocated, never written) and a trailing
/// partial slot (a torn identifier write) are not slots. Returns the number
/// of slots.
fn decode_identifiers(ids_bytes: &[u8], identifiers: &mut Vec<Option<Identifier>>) -> usize {
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
    slot_count
}

/// Phase 4: follows the identifiers through the frame region (frame `k` is
/// described by identifier `k`). Establishes, for each identifier, whether
/// its frame is there and is the record it names (good, into `items`) or
/// not (corrupt, into `items`); a frame that verifies behind a damaged
/// identifier is good, and its identifier goes into `repairs`.
fn match_identified_frames(
    segment: &SegmentRegions,
    identifiers: &[Option<Identifier>],
    payload_bytes_max: u64,
    items: &mut Vec<(Range<usize>, Scanned)>,
    repairs: &mut Vec<(usize, Identifier)>,
) {
    let log_bytes = &segment.log_bytes;
    let log_written_end = segment.log_written_end;
    // Every item with the range of the log it covers, so that items can be
    // put in log order and the bytes no identifier led to can be checked.
    items.clear();
    items.reserve(identifiers.len());
    let mut position = FILE_HEADER_BYTES;
    let corrupt_at = |offset: usize, identifier: Option<Identifier>| segment.corrupt_at(offset, identifier);
    // Frames and identifiers are in the same order: frame `k` is described by
    // identifier `k`.
    let mut index = 0;
    while index < identifiers.len() {
        let identifier = identifiers[index];
        if let Some(identifier) = identifier {
            position = usize::try_from(identifier.offset).unwrap_or(usize::MAX);
        }
        let decoded = decode_frame(log_bytes, position, payload_bytes_max);
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
                    None => next_frame(log_bytes, position + 1, payload_bytes_max).unwrap_or(log_bytes.len()),
                };
            }
        }
        let covered = start..position.max(start).min(log_bytes.len().max(start));
        items.push((covered, Scanned::Corrupt(Box::new(corrupt_at(start, identifier)))));
        index += 1;
    }
}

/// Phase 5: checks the bytes up to the last identified frame that no
/// identifier led to (gaps). Establishes that every byte there belongs to an
/// item: frames in a gap that verify are kept, the rest reported. Returns
/// where identified frames end and whether the items were contiguous (so
/// already in log order).
fn scan_gaps(
    segment: &SegmentRegions,
    payload_bytes_max: u64,
    items: &mut Vec<(Range<usize>, Scanned)>,
) -> (usize, bool) {
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
        scan_unidentified(&segment.log_bytes, gap, payload_bytes_max, items, |offset| {
            segment.corrupt_at(offset, None)
        });
    }
    (identified_end, contiguous)
}

/// What [`scan_tail`] found past the last identified frame.
struct Tail {
    /// Bytes cut off the last segment as a torn write.
    torn_tail_bytes: u64,
    /// Where the next frame goes.
    log_end: usize,
    /// Identifier slots once the kept tail frames have theirs.
    identifier_slots: usize,
}

/// Phase 6: reads the frames past the last identified one. Establishes where
/// the segment's frames end: in the last segment, frames there that verify
/// are kept (given identifiers in `repairs`) and the first that does not is
/// the torn write, cut off with all after it; in a closed segment they can
/// only follow damaged identifiers, so they are kept or reported like a gap.
fn scan_tail(
    segment: &mut SegmentRegions,
    identified_end: usize,
    slot_count: usize,
    last: bool,
    payload_bytes_max: u64,
    items: &mut Vec<(Range<usize>, Scanned)>,
    repairs: &mut Vec<(usize, Identifier)>,
) -> Result<Tail> {
    let log_bytes = &segment.log_bytes;
    let identifier_base = segment.identifier_base;
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
                match decode_frame(log_bytes, kept_end, payload_bytes_max) {
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
                segment
                    .file
                    .write_at(kept_end as u64, &vec![0u8; written_end - kept_end])?;
                segment.file.sync()?;
            }
            log_end = kept_end;
        } else {
            // Every segment but the last was complete when the next one was
            // created; frames without identifiers mean the identifier region
            // was damaged. Keep what verifies, report the rest.
            scan_unidentified(log_bytes, tail_start..written_end, payload_bytes_max, items, |offset| {
                segment.corrupt_at(offset, None)
            });
            log_end = log_bytes.len();
        }
    }
    Ok(Tail {
        torn_tail_bytes,
        log_end,
        identifier_slots,
    })
}

/// Phase 7: writes back what the scan decided. Establishes that the next
/// recovery reaches the same verdict: the last segment's identifier region
/// loses what follows its slots (`ids_bytes` long as read), and a frame
/// that verifies but whose identifier is damaged or missing gets its
/// identifier rewritten (so the next recovery keeps telling corruption from
/// a torn tail for it).
fn rewrite_identifiers(
    segment: &mut SegmentRegions,
    ids_bytes: usize,
    slot_count: usize,
    last: bool,
    repairs: &[(usize, Identifier)],
) -> Result<()> {
    let SegmentRegions {
        file, identifier_base, ..
    } = segment;
    let identifier_base = *identifier_base;
    if last {
        let slots_bytes = (FILE_HEADER_BYTES + slot_count * IDENTIFIER_BYTES) as u64;
        if (ids_bytes as u64) != slots_bytes {
            file.truncate(identifier_base + slots_bytes)?;
            file.sync()?;
        }
    }
    // A frame that verifies but whose identifier is damaged gets its
    // identifier rewritten, so the next recovery sees what this one saw
    // (and keeps telling corruption from a torn tail for it).
    for (index, identifier) in repairs {
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
    Ok(())
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
pub(super) const UNREADABLE_IDENTIFIER_FILL: u8 = 0xFF;
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
pub(super) fn read_tolerant_into(
    file: &dyn File,
    start: u64,
    length_max: u64,
    fill: u8,
    bytes: &mut Vec<u8>,
) -> Result<u64> {
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
    use synod_paxos::NodeId;

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
