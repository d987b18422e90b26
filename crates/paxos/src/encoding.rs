//! Binary encoding of [`Message`]s between replicas and of [`Batch`]es in the log.
//!
//! The core does no I/O, but every host must put messages on a wire and batches
//! on a disk in the same way, so the one encoding lives beside the types.
//!
//! # Format
//!
//! Big-endian throughout. An encoded message is the [`CODEC_VERSION`] byte, a
//! tag byte naming the variant, then the variant's fields in declaration order:
//!
//! - integers (`u64`, `Instance`, `NodeId`) as 8 bytes; a ballot as its round,
//!   incarnation and node (24 bytes);
//! - `bool` as one byte, 0 or 1 (anything else is an error);
//! - `Option<T>` as a presence byte (0 or 1), then `T` if present;
//! - byte strings as a 4-byte length, then the bytes;
//! - sequences as a 4-byte count, then the elements;
//! - a batch as its id (ballot, instance), then a count of entries, each a
//!   value and an optional epoch.
//!
//! An encoded batch alone (for the log) is the version byte followed by the batch.
//!
//! # Bounds and failure
//!
//! **Decoding never panics and never allocates more than the input it was
//! given**: the input is refused outright above `message_bytes_max`, every
//! length and count is checked against the bytes actually left before anything
//! is reserved, and values are zero-copy slices of the input. Trailing bytes
//! after a complete message are an error, so one message has one encoding.

use bytes::{BufMut, Bytes, BytesMut};

use crate::message::{Batch, BatchId, Entry, Epoch, Message, PromiseEntry, RefuseReason};
use crate::{Ballot, Instance, NodeId};

/// The first byte of every encoding this build writes, and the only one it reads.
pub const CODEC_VERSION: u8 = 1;

/// The smallest number of bytes any one encoded entry of a batch occupies
/// (a value length and an absent epoch), used to refuse impossible counts.
const ENTRY_BYTES_MIN: usize = 4 + 1;
/// The smallest encoded promise entry (tag, instance, absent ballot).
const PROMISE_ENTRY_BYTES_MIN: usize = 1 + 8 + 1;
/// The smallest encoded catch-up entry (instance, batch id, entry count).
const CATCHUP_ENTRY_BYTES_MIN: usize = 8 + BATCH_BYTES_MIN;
/// The smallest encoded batch (ballot, instance, entry count).
const BATCH_BYTES_MIN: usize = 24 + 8 + 4;

/// Why bytes could not be decoded. Every variant means the input is not a
/// message this build can read; the caller drops it (and, for a peer, the connection).
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum CodecError {
    /// No bytes at all.
    #[error("empty input")]
    Empty,
    /// Written by a build with another encoding (the version byte).
    #[error("unknown codec version {0} (this build reads version {CODEC_VERSION})")]
    UnknownVersion(u8),
    /// Longer than the caller's bound.
    #[error("input of {bytes} bytes is over the bound of {bytes_max} bytes")]
    TooLarge {
        /// The input's length.
        bytes: usize,
        /// The bound.
        bytes_max: usize,
    },
    /// A field runs past the end.
    #[error("input ends early: {field} needs {needed} more bytes, {left} left")]
    Truncated {
        /// The field being read.
        field: &'static str,
        /// Bytes it needs.
        needed: usize,
        /// Bytes left.
        left: usize,
    },
    /// A tag byte names no known kind.
    #[error("unknown {what} tag {tag}")]
    UnknownTag {
        /// What the tag selects (message, promise entry, ...).
        what: &'static str,
        /// The byte read.
        tag: u8,
    },
    /// A boolean byte other than 0 or 1.
    #[error("{field} is {value}, expected 0 or 1")]
    InvalidFlag {
        /// The field being read.
        field: &'static str,
        /// The byte read.
        value: u8,
    },
    /// A count that the bytes left could not hold, refused before allocating.
    #[error("{field} counts {count} elements but only {left} bytes are left")]
    CountTooLarge {
        /// The field being read.
        field: &'static str,
        /// The count read.
        count: usize,
        /// Bytes left.
        left: usize,
    },
    /// Bytes after a complete message: not one message.
    #[error("{0} bytes left over after a complete message")]
    TrailingBytes(usize),
}

// ----- Encoding -----

/// Encodes `message` into a fresh buffer.
pub fn encode_message(message: &Message) -> Bytes {
    let mut buffer = BytesMut::with_capacity(message.encoded_bytes());
    buffer.put_u8(CODEC_VERSION);
    put_message(&mut buffer, message);
    buffer.freeze()
}

/// Encodes a batch on its own, as a log record's value.
pub fn encode_batch(batch: &Batch) -> Bytes {
    let mut buffer = BytesMut::with_capacity(batch.encoded_bytes());
    buffer.put_u8(CODEC_VERSION);
    put_batch(&mut buffer, batch);
    buffer.freeze()
}

mod tag {
    pub const LEASE_PREPARE: u8 = 1;
    pub const LEASE_PREPARE_REPLY: u8 = 2;
    pub const LEASE_PROPOSE: u8 = 3;
    pub const LEASE_PROPOSE_REPLY: u8 = 4;
    pub const PREPARE: u8 = 5;
    pub const PROMISE: u8 = 6;
    pub const REFUSE: u8 = 7;
    pub const ACCEPT: u8 = 8;
    pub const ACCEPTED: u8 = 9;
    pub const COMMIT: u8 = 10;
    pub const CATCHUP_REQUEST: u8 = 11;
    pub const CATCHUP_REPLY: u8 = 12;
    pub const SNAPSHOT_NEEDED: u8 = 13;
    pub const PROBE: u8 = 14;
    pub const PROBE_REPLY: u8 = 15;
    pub const LEASE_RELEASE: u8 = 16;
    pub const MASTER_HANDOVER: u8 = 17;
    pub const PROPOSED_QUERY: u8 = 18;
    pub const PROPOSED_REPLY: u8 = 19;

    pub const PROMISE_ACCEPTED: u8 = 1;
    pub const PROMISE_CHOSEN: u8 = 2;
    pub const PROMISE_FAULTY: u8 = 3;

    pub const REFUSE_PROMISED: u8 = 1;
    pub const REFUSE_LEASE_HELD: u8 = 2;
    pub const REFUSE_SILENT: u8 = 3;
}

fn put_message(buffer: &mut BytesMut, message: &Message) {
    match message {
        Message::LeasePrepare { ballot } => {
            buffer.put_u8(tag::LEASE_PREPARE);
            put_ballot(buffer, *ballot);
        }
        Message::LeasePrepareReply {
            ballot,
            granted,
            promised,
            open_owner,
        } => {
            buffer.put_u8(tag::LEASE_PREPARE_REPLY);
            put_ballot(buffer, *ballot);
            put_bool(buffer, *granted);
            put_ballot(buffer, *promised);
            put_bool(buffer, open_owner.is_some());
            if let Some(owner) = open_owner {
                buffer.put_u64(owner.0);
            }
        }
        Message::LeasePropose { ballot, duration_nanos } => {
            buffer.put_u8(tag::LEASE_PROPOSE);
            put_ballot(buffer, *ballot);
            buffer.put_u64(*duration_nanos);
        }
        Message::LeaseProposeReply {
            ballot,
            granted,
            promised,
        } => {
            buffer.put_u8(tag::LEASE_PROPOSE_REPLY);
            put_ballot(buffer, *ballot);
            put_bool(buffer, *granted);
            put_ballot(buffer, *promised);
        }
        Message::LeaseRelease { ballot } => {
            buffer.put_u8(tag::LEASE_RELEASE);
            put_ballot(buffer, *ballot);
        }
        Message::MasterHandover { ballot, through } => {
            buffer.put_u8(tag::MASTER_HANDOVER);
            put_ballot(buffer, *ballot);
            buffer.put_u64(through.0);
        }
        Message::Prepare { ballot, from } => {
            buffer.put_u8(tag::PREPARE);
            put_ballot(buffer, *ballot);
            buffer.put_u64(from.0);
        }
        Message::Promise {
            ballot,
            chosen_through,
            entries,
            truncated,
            last,
        } => {
            buffer.put_u8(tag::PROMISE);
            put_ballot(buffer, *ballot);
            buffer.put_u64(chosen_through.0);
            put_count(buffer, entries.len());
            for entry in entries {
                put_promise_entry(buffer, entry);
            }
            put_bool(buffer, *truncated);
            put_bool(buffer, *last);
        }
        Message::Refuse {
            ballot,
            promised,
            reason,
        } => {
            buffer.put_u8(tag::REFUSE);
            put_ballot(buffer, *ballot);
            put_ballot(buffer, *promised);
            buffer.put_u8(match reason {
                RefuseReason::Promised => tag::REFUSE_PROMISED,
                RefuseReason::LeaseHeld => tag::REFUSE_LEASE_HELD,
                RefuseReason::Silent => tag::REFUSE_SILENT,
            });
        }
        Message::Accept {
            ballot,
            instance,
            batch,
            chosen_through,
        } => {
            buffer.put_u8(tag::ACCEPT);
            put_ballot(buffer, *ballot);
            buffer.put_u64(instance.0);
            put_batch(buffer, batch);
            buffer.put_u64(chosen_through.0);
        }
        Message::Accepted { ballot, instance } => {
            buffer.put_u8(tag::ACCEPTED);
            put_ballot(buffer, *ballot);
            buffer.put_u64(instance.0);
        }
        Message::Commit {
            ballot,
            chosen_through,
            proposed_through,
        } => {
            buffer.put_u8(tag::COMMIT);
            put_ballot(buffer, *ballot);
            buffer.put_u64(chosen_through.0);
            buffer.put_u64(proposed_through.0);
        }
        Message::CatchupRequest { from, to } => {
            buffer.put_u8(tag::CATCHUP_REQUEST);
            buffer.put_u64(from.0);
            buffer.put_u64(to.0);
        }
        Message::CatchupReply {
            entries,
            chosen_through,
        } => {
            buffer.put_u8(tag::CATCHUP_REPLY);
            put_count(buffer, entries.len());
            for (instance, batch) in entries {
                buffer.put_u64(instance.0);
                put_batch(buffer, batch);
            }
            buffer.put_u64(chosen_through.0);
        }
        Message::SnapshotNeeded { snapshot_instance } => {
            buffer.put_u8(tag::SNAPSHOT_NEEDED);
            buffer.put_u64(snapshot_instance.0);
        }
        Message::Probe => buffer.put_u8(tag::PROBE),
        Message::ProposedQuery { incarnation } => {
            buffer.put_u8(tag::PROPOSED_QUERY);
            buffer.put_u64(*incarnation);
        }
        Message::ProposedReply {
            ballot,
            proposed_through,
            incarnation,
        } => {
            buffer.put_u8(tag::PROPOSED_REPLY);
            put_ballot(buffer, *ballot);
            buffer.put_u64(proposed_through.0);
            buffer.put_u64(*incarnation);
        }
        Message::ProbeReply {
            amnesiac,
            promised,
            has_history,
            incarnation_seen,
        } => {
            buffer.put_u8(tag::PROBE_REPLY);
            put_bool(buffer, *amnesiac);
            put_ballot(buffer, *promised);
            put_bool(buffer, *has_history);
            buffer.put_u64(*incarnation_seen);
        }
    }
}

fn put_bool(buffer: &mut BytesMut, value: bool) {
    buffer.put_u8(u8::from(value));
}

fn put_count(buffer: &mut BytesMut, count: usize) {
    let count = u32::try_from(count).expect("a message holds fewer than 2^32 elements");
    buffer.put_u32(count);
}

fn put_ballot(buffer: &mut BytesMut, ballot: Ballot) {
    buffer.put_u64(ballot.round);
    buffer.put_u64(ballot.incarnation);
    buffer.put_u64(ballot.node.0);
}

fn put_optional_ballot(buffer: &mut BytesMut, ballot: Option<Ballot>) {
    put_bool(buffer, ballot.is_some());
    if let Some(ballot) = ballot {
        put_ballot(buffer, ballot);
    }
}

fn put_batch(buffer: &mut BytesMut, batch: &Batch) {
    put_ballot(buffer, batch.id.ballot);
    buffer.put_u64(batch.id.instance.0);
    put_count(buffer, batch.entries.len());
    for entry in batch.entries.iter() {
        put_count(buffer, entry.value.len());
        buffer.put_slice(&entry.value);
        put_optional_ballot(buffer, entry.expected_epoch.map(|epoch| epoch.0));
    }
}

fn put_promise_entry(buffer: &mut BytesMut, entry: &PromiseEntry) {
    match entry {
        PromiseEntry::Accepted {
            instance,
            ballot,
            batch,
        } => {
            buffer.put_u8(tag::PROMISE_ACCEPTED);
            buffer.put_u64(instance.0);
            put_ballot(buffer, *ballot);
            put_batch(buffer, batch);
        }
        PromiseEntry::Chosen { instance, batch } => {
            buffer.put_u8(tag::PROMISE_CHOSEN);
            buffer.put_u64(instance.0);
            put_batch(buffer, batch);
        }
        PromiseEntry::Faulty { instance, ballot } => {
            buffer.put_u8(tag::PROMISE_FAULTY);
            buffer.put_u64(instance.0);
            put_optional_ballot(buffer, *ballot);
        }
    }
}

// ----- Decoding -----

/// Decodes one message. `input` is refused if longer than `message_bytes_max`;
/// values in the result share `input`'s memory.
pub fn decode_message(input: &Bytes, message_bytes_max: usize) -> Result<Message, CodecError> {
    let mut reader = Reader::open(input, message_bytes_max)?;
    let message = reader.message()?;
    reader.finish()?;
    Ok(message)
}

/// Decodes a batch written by [`encode_batch`].
pub fn decode_batch(input: &Bytes, batch_bytes_max: usize) -> Result<Batch, CodecError> {
    let mut reader = Reader::open(input, batch_bytes_max)?;
    let batch = reader.batch()?;
    reader.finish()?;
    Ok(batch)
}

/// A cursor over untrusted input. Every read checks the bytes left first.
struct Reader<'a> {
    input: &'a Bytes,
    position: usize,
}

impl<'a> Reader<'a> {
    fn open(input: &'a Bytes, bytes_max: usize) -> Result<Reader<'a>, CodecError> {
        if input.len() > bytes_max {
            return Err(CodecError::TooLarge {
                bytes: input.len(),
                bytes_max,
            });
        }
        let Some(&version) = input.first() else {
            return Err(CodecError::Empty);
        };
        if version != CODEC_VERSION {
            return Err(CodecError::UnknownVersion(version));
        }
        Ok(Reader { input, position: 1 })
    }

    fn finish(&self) -> Result<(), CodecError> {
        match self.left() {
            0 => Ok(()),
            left => Err(CodecError::TrailingBytes(left)),
        }
    }

    fn left(&self) -> usize {
        self.input.len() - self.position
    }

    fn take(&mut self, field: &'static str, needed: usize) -> Result<&'a [u8], CodecError> {
        let left = self.left();
        if needed > left {
            return Err(CodecError::Truncated { field, needed, left });
        }
        let input: &'a Bytes = self.input;
        let slice = &input[self.position..self.position + needed];
        self.position += needed;
        Ok(slice)
    }

    fn u8(&mut self, field: &'static str) -> Result<u8, CodecError> {
        Ok(self.take(field, 1)?[0])
    }

    fn u32(&mut self, field: &'static str) -> Result<u32, CodecError> {
        let bytes = self.take(field, 4)?;
        Ok(u32::from_be_bytes([bytes[0], bytes[1], bytes[2], bytes[3]]))
    }

    fn u64(&mut self, field: &'static str) -> Result<u64, CodecError> {
        let bytes = self.take(field, 8)?;
        let mut array = [0u8; 8];
        array.copy_from_slice(bytes);
        Ok(u64::from_be_bytes(array))
    }

    fn bool(&mut self, field: &'static str) -> Result<bool, CodecError> {
        match self.u8(field)? {
            0 => Ok(false),
            1 => Ok(true),
            value => Err(CodecError::InvalidFlag { field, value }),
        }
    }

    fn instance(&mut self, field: &'static str) -> Result<Instance, CodecError> {
        Ok(Instance(self.u64(field)?))
    }

    fn ballot(&mut self, field: &'static str) -> Result<Ballot, CodecError> {
        let round = self.u64(field)?;
        let incarnation = self.u64(field)?;
        let node = NodeId(self.u64(field)?);
        Ok(Ballot {
            round,
            incarnation,
            node,
        })
    }

    fn optional_ballot(&mut self, field: &'static str) -> Result<Option<Ballot>, CodecError> {
        Ok(if self.bool(field)? {
            Some(self.ballot(field)?)
        } else {
            None
        })
    }

    /// A count of elements each at least `element_bytes_min` long: refused if
    /// the input cannot hold that many, so the count never drives an allocation
    /// beyond the input's size.
    fn count(&mut self, field: &'static str, element_bytes_min: usize) -> Result<usize, CodecError> {
        let count = self.u32(field)? as usize;
        let left = self.left();
        if count.saturating_mul(element_bytes_min) > left {
            return Err(CodecError::CountTooLarge { field, count, left });
        }
        Ok(count)
    }

    fn value(&mut self, field: &'static str) -> Result<Bytes, CodecError> {
        let length = self.u32(field)? as usize;
        let start = self.position;
        self.take(field, length)?;
        Ok(self.input.slice(start..start + length))
    }

    fn batch(&mut self) -> Result<Batch, CodecError> {
        let ballot = self.ballot("batch ballot")?;
        let instance = self.instance("batch instance")?;
        let count = self.count("batch entries", ENTRY_BYTES_MIN)?;
        let mut entries = Vec::with_capacity(count);
        for _ in 0..count {
            let value = self.value("entry value")?;
            let expected_epoch = self.optional_ballot("entry epoch")?.map(Epoch);
            entries.push(Entry { value, expected_epoch });
        }
        Ok(Batch::new(BatchId { ballot, instance }, entries))
    }

    fn promise_entry(&mut self) -> Result<PromiseEntry, CodecError> {
        let tag = self.u8("promise entry tag")?;
        let instance = self.instance("promise entry instance")?;
        Ok(match tag {
            tag::PROMISE_ACCEPTED => PromiseEntry::Accepted {
                instance,
                ballot: self.ballot("promise entry ballot")?,
                batch: self.batch()?,
            },
            tag::PROMISE_CHOSEN => PromiseEntry::Chosen {
                instance,
                batch: self.batch()?,
            },
            tag::PROMISE_FAULTY => PromiseEntry::Faulty {
                instance,
                ballot: self.optional_ballot("promise entry ballot")?,
            },
            tag => {
                return Err(CodecError::UnknownTag {
                    what: "promise entry",
                    tag,
                })
            }
        })
    }

    fn message(&mut self) -> Result<Message, CodecError> {
        let tag = self.u8("message tag")?;
        Ok(match tag {
            tag::LEASE_PREPARE => Message::LeasePrepare {
                ballot: self.ballot("ballot")?,
            },
            tag::LEASE_PREPARE_REPLY => Message::LeasePrepareReply {
                ballot: self.ballot("ballot")?,
                granted: self.bool("granted")?,
                promised: self.ballot("promised")?,
                open_owner: if self.bool("open owner")? {
                    Some(NodeId(self.u64("open owner")?))
                } else {
                    None
                },
            },
            tag::LEASE_PROPOSE => Message::LeasePropose {
                ballot: self.ballot("ballot")?,
                duration_nanos: self.u64("duration")?,
            },
            tag::LEASE_PROPOSE_REPLY => Message::LeaseProposeReply {
                ballot: self.ballot("ballot")?,
                granted: self.bool("granted")?,
                promised: self.ballot("promised")?,
            },
            tag::LEASE_RELEASE => Message::LeaseRelease {
                ballot: self.ballot("ballot")?,
            },
            tag::MASTER_HANDOVER => Message::MasterHandover {
                ballot: self.ballot("ballot")?,
                through: self.instance("through")?,
            },
            tag::PREPARE => Message::Prepare {
                ballot: self.ballot("ballot")?,
                from: self.instance("from")?,
            },
            tag::PROMISE => {
                let ballot = self.ballot("ballot")?;
                let chosen_through = self.instance("chosen through")?;
                let count = self.count("promise entries", PROMISE_ENTRY_BYTES_MIN)?;
                let mut entries = Vec::with_capacity(count);
                for _ in 0..count {
                    entries.push(self.promise_entry()?);
                }
                Message::Promise {
                    ballot,
                    chosen_through,
                    entries,
                    truncated: self.bool("truncated")?,
                    last: self.bool("last")?,
                }
            }
            tag::REFUSE => Message::Refuse {
                ballot: self.ballot("ballot")?,
                promised: self.ballot("promised")?,
                reason: match self.u8("refuse reason")? {
                    tag::REFUSE_PROMISED => RefuseReason::Promised,
                    tag::REFUSE_LEASE_HELD => RefuseReason::LeaseHeld,
                    tag::REFUSE_SILENT => RefuseReason::Silent,
                    tag => {
                        return Err(CodecError::UnknownTag {
                            what: "refuse reason",
                            tag,
                        })
                    }
                },
            },
            tag::ACCEPT => Message::Accept {
                ballot: self.ballot("ballot")?,
                instance: self.instance("instance")?,
                batch: self.batch()?,
                chosen_through: self.instance("chosen through")?,
            },
            tag::ACCEPTED => Message::Accepted {
                ballot: self.ballot("ballot")?,
                instance: self.instance("instance")?,
            },
            tag::COMMIT => Message::Commit {
                ballot: self.ballot("ballot")?,
                chosen_through: self.instance("chosen through")?,
                proposed_through: self.instance("proposed through")?,
            },
            tag::CATCHUP_REQUEST => Message::CatchupRequest {
                from: self.instance("from")?,
                to: self.instance("to")?,
            },
            tag::CATCHUP_REPLY => {
                let count = self.count("catch-up entries", CATCHUP_ENTRY_BYTES_MIN)?;
                let mut entries = Vec::with_capacity(count);
                for _ in 0..count {
                    let instance = self.instance("catch-up instance")?;
                    entries.push((instance, self.batch()?));
                }
                Message::CatchupReply {
                    entries,
                    chosen_through: self.instance("chosen through")?,
                }
            }
            tag::SNAPSHOT_NEEDED => Message::SnapshotNeeded {
                snapshot_instance: self.instance("snapshot instance")?,
            },
            tag::PROBE => Message::Probe,
            tag::PROPOSED_QUERY => Message::ProposedQuery {
                incarnation: self.u64("incarnation")?,
            },
            tag::PROPOSED_REPLY => Message::ProposedReply {
                ballot: self.ballot("ballot")?,
                proposed_through: self.instance("proposed through")?,
                incarnation: self.u64("incarnation")?,
            },
            tag::PROBE_REPLY => Message::ProbeReply {
                amnesiac: self.bool("amnesiac")?,
                promised: self.ballot("promised")?,
                has_history: self.bool("has history")?,
                incarnation_seen: self.u64("incarnation seen")?,
            },
            tag => return Err(CodecError::UnknownTag { what: "message", tag }),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::SplitMix64;

    const BOUND: usize = 1 << 20;

    fn ballot(round: u64) -> Ballot {
        Ballot::new(round, 3, NodeId(2))
    }

    fn batch(values: &[&'static [u8]]) -> Batch {
        let entries = values
            .iter()
            .enumerate()
            .map(|(index, value)| Entry {
                value: Bytes::from_static(value),
                expected_epoch: (index % 2 == 0).then(|| Epoch(ballot(7))),
            })
            .collect();
        Batch::new(
            BatchId {
                ballot: ballot(5),
                instance: Instance(9),
            },
            entries,
        )
    }

    /// One of every variant, with every optional field both present and absent.
    fn every_variant() -> Vec<Message> {
        vec![
            Message::LeasePrepare { ballot: ballot(1) },
            Message::LeasePrepareReply {
                ballot: ballot(1),
                granted: true,
                promised: ballot(2),
                open_owner: Some(NodeId(3)),
            },
            Message::LeasePrepareReply {
                ballot: ballot(1),
                granted: false,
                promised: Ballot::ZERO,
                open_owner: None,
            },
            Message::LeasePropose {
                ballot: ballot(4),
                duration_nanos: 2_000_000_000,
            },
            Message::LeaseProposeReply {
                ballot: ballot(4),
                granted: false,
                promised: ballot(6),
            },
            Message::LeaseRelease { ballot: ballot(5) },
            Message::ProposedQuery { incarnation: 4 },
            Message::ProposedReply {
                ballot: ballot(5),
                proposed_through: Instance(21),
                incarnation: 4,
            },
            Message::MasterHandover {
                ballot: ballot(5),
                through: Instance(12),
            },
            Message::Prepare {
                ballot: ballot(8),
                from: Instance(17),
            },
            Message::Promise {
                ballot: ballot(8),
                chosen_through: Instance(16),
                entries: vec![
                    PromiseEntry::Accepted {
                        instance: Instance(17),
                        ballot: ballot(7),
                        batch: batch(&[b"a", b"", b"ccc"]),
                    },
                    PromiseEntry::Chosen {
                        instance: Instance(18),
                        batch: Batch::noop(BatchId {
                            ballot: ballot(7),
                            instance: Instance(18),
                        }),
                    },
                    PromiseEntry::Faulty {
                        instance: Instance(19),
                        ballot: Some(ballot(6)),
                    },
                    PromiseEntry::Faulty {
                        instance: Instance(20),
                        ballot: None,
                    },
                ],
                truncated: true,
                last: false,
            },
            Message::Promise {
                ballot: ballot(8),
                chosen_through: Instance::ZERO,
                entries: vec![],
                truncated: false,
                last: true,
            },
            Message::Refuse {
                ballot: ballot(1),
                promised: ballot(9),
                reason: RefuseReason::Promised,
            },
            Message::Refuse {
                ballot: ballot(1),
                promised: ballot(9),
                reason: RefuseReason::LeaseHeld,
            },
            Message::Refuse {
                ballot: ballot(1),
                promised: ballot(9),
                reason: RefuseReason::Silent,
            },
            Message::Accept {
                ballot: ballot(9),
                instance: Instance(21),
                batch: batch(&[b"put x 1", b"put y 2"]),
                chosen_through: Instance(20),
            },
            Message::Accepted {
                ballot: ballot(9),
                instance: Instance(21),
            },
            Message::Commit {
                ballot: ballot(9),
                chosen_through: Instance(21),
                proposed_through: Instance(22),
            },
            Message::CatchupRequest {
                from: Instance(1),
                to: Instance(64),
            },
            Message::CatchupReply {
                entries: vec![(Instance(1), batch(&[b"x"])), (Instance(2), batch(&[]))],
                chosen_through: Instance(2),
            },
            Message::SnapshotNeeded {
                snapshot_instance: Instance(100),
            },
            Message::Probe,
            Message::ProbeReply {
                amnesiac: false,
                promised: ballot(3),
                has_history: true,
                incarnation_seen: 4,
            },
        ]
    }

    #[test]
    fn every_variant_round_trips() {
        for message in every_variant() {
            let bytes = encode_message(&message);
            assert!(
                bytes.len() <= message.encoded_bytes(),
                "{message:?} is over its size bound"
            );
            assert_eq!(decode_message(&bytes, BOUND), Ok(message));
        }
    }

    #[test]
    fn batches_round_trip() {
        for batch in [batch(&[]), batch(&[b"one"]), batch(&[b"a", b"b", b"c", b""])] {
            let bytes = encode_batch(&batch);
            assert_eq!(decode_batch(&bytes, BOUND), Ok(batch));
        }
    }

    #[test]
    fn every_truncation_is_an_error() {
        for message in every_variant() {
            let bytes = encode_message(&message);
            for length in 0..bytes.len() {
                assert!(
                    decode_message(&bytes.slice(..length), BOUND).is_err(),
                    "{message:?} cut to {length} bytes decoded"
                );
            }
        }
    }

    #[test]
    fn trailing_bytes_version_and_bound_are_checked() {
        let mut bytes = encode_message(&Message::Probe).to_vec();
        bytes.push(0);
        assert_eq!(
            decode_message(&Bytes::from(bytes), BOUND),
            Err(CodecError::TrailingBytes(1))
        );
        assert_eq!(
            decode_message(&Bytes::from_static(&[9, tag::PROBE]), BOUND),
            Err(CodecError::UnknownVersion(9))
        );
        assert_eq!(decode_message(&Bytes::new(), BOUND), Err(CodecError::Empty));
        let large = encode_message(&Message::Accept {
            ballot: ballot(1),
            instance: Instance(1),
            batch: batch(&[&[7; 100]]),
            chosen_through: Instance::ZERO,
        });
        assert!(matches!(decode_message(&large, 50), Err(CodecError::TooLarge { .. })));
    }

    #[test]
    fn a_huge_count_is_refused_before_any_allocation() {
        let mut bytes = vec![CODEC_VERSION, tag::CATCHUP_REPLY];
        bytes.extend_from_slice(&u32::MAX.to_be_bytes());
        assert!(matches!(
            decode_message(&Bytes::from(bytes), BOUND),
            Err(CodecError::CountTooLarge { .. })
        ));
    }

    #[test]
    fn every_flipped_byte_decodes_or_fails_cleanly() {
        for message in every_variant() {
            let bytes = encode_message(&message).to_vec();
            for position in 0..bytes.len() {
                for replacement in [0u8, 1, 2, 0x7f, 0xff] {
                    let mut damaged = bytes.clone();
                    damaged[position] = replacement;
                    let _ = decode_message(&Bytes::from(damaged), BOUND);
                }
            }
        }
    }

    /// Fuzz cases replay from their seed.
    struct Random(SplitMix64);

    impl Random {
        fn next(&mut self) -> u64 {
            self.0.next_u64()
        }

        fn below(&mut self, bound: usize) -> usize {
            (self.next() % bound.max(1) as u64) as usize
        }

        fn bytes(&mut self, length: usize) -> Vec<u8> {
            (0..length).map(|_| self.next() as u8).collect()
        }
    }

    #[test]
    fn random_bytes_never_panic() {
        let mut random = Random(SplitMix64::new(0x5EED));
        for _ in 0..20_000 {
            let length = random.below(256);
            let mut bytes = random.bytes(length);
            if let Some(first) = bytes.first_mut() {
                // Mostly the right version, so the fuzz reaches the variants.
                if random.below(8) != 0 {
                    *first = CODEC_VERSION;
                }
            }
            if bytes.len() > 1 && random.below(2) == 0 {
                bytes[1] = random.below(17) as u8;
            }
            let bytes = Bytes::from(bytes);
            let _ = decode_message(&bytes, BOUND);
            let _ = decode_batch(&bytes, BOUND);
        }
    }

    #[test]
    fn valid_prefixes_with_random_tails_never_panic() {
        let mut random = Random(SplitMix64::new(0xC0DEC));
        let messages = every_variant();
        for _ in 0..20_000 {
            let message = &messages[random.below(messages.len())];
            let mut bytes = encode_message(message).to_vec();
            let cut = random.below(bytes.len() + 1);
            bytes.truncate(cut);
            let tail_bytes = random.below(48);
            bytes.extend(random.bytes(tail_bytes));
            let _ = decode_message(&Bytes::from(bytes), BOUND);
        }
    }

    #[test]
    fn random_batches_round_trip() {
        let mut random = Random(SplitMix64::new(0xBA7C4));
        for _ in 0..2_000 {
            let count = random.below(20);
            let entries: Vec<Entry> = (0..count)
                .map(|_| {
                    let length = random.below(40);
                    Entry {
                        value: Bytes::from(random.bytes(length)),
                        expected_epoch: (random.below(3) == 0)
                            .then(|| Epoch(Ballot::new(random.next(), random.next(), NodeId(random.next())))),
                    }
                })
                .collect();
            let id = BatchId {
                ballot: Ballot::new(random.next(), random.next(), NodeId(random.next())),
                instance: Instance(random.next()),
            };
            let batch = Batch::new(id, entries);
            assert_eq!(decode_batch(&encode_batch(&batch), BOUND), Ok(batch.clone()));
            let message = Message::Accept {
                ballot: id.ballot,
                instance: id.instance,
                batch,
                chosen_through: Instance(random.next()),
            };
            assert_eq!(decode_message(&encode_message(&message), BOUND), Ok(message));
        }
    }
}
