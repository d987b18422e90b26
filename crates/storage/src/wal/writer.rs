//! Appending to the log: records are staged in memory, then written in the
//! order the module docs of `wal` give (frames, sync, identifiers, sync);
//! segments rotate at batch boundaries and are trimmed whole.

use synod_paxos::Instance;

use super::format::{
    encode_bound, encode_frame, ids_bytes_max, log_name, Identifier, FORMAT_VERSION, IDENTIFIER_BYTES, IDS_MAGIC,
    LOG_MAGIC,
};
use super::{ActiveSegment, Record, SegmentInfo, Wal, WalConfig};
use crate::disk::{Disk, File};
use crate::error::{Result, StorageError};
use crate::fields::{encode_file_header, FILE_HEADER_BYTES};
use crate::snapshot::FinishedSnapshot;

impl Wal {
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

pub(super) fn create_segment(disk: &dyn Disk, config: &WalConfig, sequence: u64) -> Result<ActiveSegment> {
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
