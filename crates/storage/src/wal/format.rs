//! The segment file format, byte by byte: segment file names, the two
//! region headers (the crate's 32-byte file header with this format's
//! magics), record frames, identifiers, and the constants that fix their
//! sizes. Nothing here touches a file.

use bytes::Bytes;
use synod_paxos::{Ballot, Instance, NodeId};

use super::{Record, RecordKind};
use crate::fields::{put_u32, put_u64, Decoder, FILE_HEADER_BYTES};

pub(super) const LOG_MAGIC: u64 = u64::from_le_bytes(*b"SYNODLOG");
pub(super) const IDS_MAGIC: u64 = u64::from_le_bytes(*b"SYNODIDS");
pub(super) const FORMAT_VERSION: u32 = 2;
/// Every file magic of this crate starts with these bytes.
pub(super) const OWN_MAGIC_PREFIX: &[u8] = b"SYNOD";
pub(super) const FRAME_MAGIC: u32 = u32::from_le_bytes(*b"SREC");
pub(super) const FRAME_HEADER_BYTES: usize = 12;
/// The bytes of one identifier in a segment's identifier region.
pub const IDENTIFIER_BYTES: usize = 64;
pub(super) const KIND_ACCEPTED: u8 = 1;
pub(super) const KIND_COMMITTED: u8 = 2;
/// Accepted payload without the value: kind, instance, ballot.
pub(super) const ACCEPTED_FIXED_BYTES: usize = 1 + 8 + 24;
pub(super) const COMMITTED_BYTES: usize = 1 + 8;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) struct Identifier {
    pub(super) kind: u8,
    pub(super) record_crc: u32,
    pub(super) instance: Instance,
    pub(super) ballot: Ballot,
    pub(super) offset: u64,
    pub(super) frame_bytes: u32,
}

impl Identifier {
    pub(super) fn encode(&self, buffer: &mut Vec<u8>) {
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

    pub(super) fn decode(slot: &[u8]) -> Option<Identifier> {
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

pub(super) fn put_ballot(buffer: &mut Vec<u8>, ballot: &Ballot) {
    put_u64(buffer, ballot.round);
    put_u64(buffer, ballot.incarnation);
    put_u64(buffer, ballot.node.0);
}

pub(super) fn get_ballot(decoder: &mut Decoder<'_>) -> Option<Ballot> {
    Some(Ballot::new(decoder.u64()?, decoder.u64()?, NodeId(decoder.u64()?)))
}

pub(super) fn kind_of(kind: u8) -> Option<RecordKind> {
    match kind {
        KIND_ACCEPTED => Some(RecordKind::Accepted),
        KIND_COMMITTED => Some(RecordKind::Committed),
        _ => None,
    }
}

/// Appends `record`'s frame to `buffer`, returning the frame checksum.
pub(super) fn encode_frame(record: &Record, buffer: &mut Vec<u8>) -> u32 {
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
pub(super) fn decode_frame(segment: &Bytes, offset: usize, payload_bytes_max: u64) -> Option<(Record, u32, usize)> {
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

pub(super) fn log_name(sequence: u64) -> String {
    format!("wal-{sequence:020}.log")
}

/// Version 1 kept a segment's identifiers in a file of this name.
pub(super) fn version_1_ids_name(sequence: u64) -> String {
    format!("wal-{sequence:020}.ids")
}

pub(super) fn parse_segment_name(name: &str) -> Option<(u64, &'static str)> {
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

/// The unit in which a segment header records the longest its frame region
/// may be.
pub(super) const BOUND_UNIT_BYTES: u64 = 4096;
/// The shortest frame (a `Committed` record): bounds how many identifiers a
/// frame region of a given length can have.
pub(super) const FRAME_BYTES_MIN: u64 = (FRAME_HEADER_BYTES + COMMITTED_BYTES) as u64;

pub(super) fn encode_bound(log_bytes_max: u64) -> u32 {
    u32::try_from(log_bytes_max.div_ceil(BOUND_UNIT_BYTES)).unwrap_or(u32::MAX)
}

/// The longest an identifier region may be beside a frame region that ends
/// at `identifier_base`.
pub(super) fn ids_bytes_max(identifier_base: u64) -> u64 {
    FILE_HEADER_BYTES as u64 + (identifier_base / FRAME_BYTES_MIN + 1) * IDENTIFIER_BYTES as u64
}
