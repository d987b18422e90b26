//! Chunked snapshot transfer between members.
//!
//! A member behind every peer's log pulls a peer's state machine snapshot one
//! chunk at a time: it asks for chunk 0, and asks for chunk `i + 1` only after
//! chunk `i` has arrived and passed its checksum. So at most one chunk per
//! transfer sits in the sender's bounded peer queue, and a snapshot of any size
//! up to [`SNAPSHOT_TRANSFER_BYTES_MAX`] crosses frames of `frame_bytes_max`.
//!
//! The sender keeps the one serialized snapshot it is serving
//! ([`ServedSnapshot`]) so each chunk request does not serialize the store
//! again; it serializes a frozen copy of the store on a blocking-pool thread
//! (see `node/snapshot_keeper.rs`). The receiver assembles chunks in a [`SnapshotAssembler`];
//! a chunk that fails its checksum, or belongs to another snapshot, throws the
//! partial transfer away and the receiver starts over from chunk 0.

use bytes::Bytes;
use synod_paxos::{Epoch, Instance};

/// Most snapshot bytes in one chunk: well below any sensible `frame_bytes_max`,
/// so a chunk never crowds out consensus messages for long.
pub const SNAPSHOT_CHUNK_BYTES_MAX: usize = 1024 * 1024;

/// Largest snapshot a member accepts from a peer, in bytes: the state machine's
/// own quota (`database_bytes_max`, 8 GiB by default) plus room for its
/// bookkeeping. Checked before anything is assembled.
pub const SNAPSHOT_TRANSFER_BYTES_MAX: u64 = 9 << 30;

/// One piece of a peer's snapshot.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SnapshotChunk {
    /// The instance the whole snapshot covers (the sender's applied instance).
    pub instance: Instance,
    /// The epoch of the last value applied in the snapshot.
    pub epoch: Epoch,
    /// This chunk's position, from 0.
    pub chunk_index: u32,
    /// How many chunks the whole snapshot has.
    pub chunk_count: u32,
    /// Size of the whole snapshot.
    pub total_bytes: u64,
    /// CRC32C of `bytes`.
    pub crc32c: u32,
    /// The chunk's bytes.
    pub bytes: Bytes,
}

/// Why a transfer in progress was thrown away.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub enum TransferError {
    /// A chunk failed its CRC32C.
    #[error("chunk checksum mismatch")]
    Checksum,
    /// A chunk of another snapshot than the one being assembled.
    #[error("chunk belongs to another snapshot")]
    OtherSnapshot,
    /// Not the chunk asked for.
    #[error("chunk arrived out of order")]
    OutOfOrder,
    /// Over `total_bytes_max`.
    #[error("snapshot larger than the transfer bound")]
    TooLarge,
    /// The chunks' lengths disagree with `total_bytes`.
    #[error("chunks do not add up to the announced size")]
    Length,
}

/// What the receiver does after offering a chunk to the assembler.
#[derive(Debug, PartialEq, Eq)]
pub enum Assembly {
    /// Ask the same sender for this chunk of this snapshot.
    Next {
        /// The snapshot being assembled.
        instance: Instance,
        /// The chunk to ask for.
        chunk_index: u32,
    },
    /// Every chunk arrived: install this state.
    Complete {
        /// The instance it covers.
        instance: Instance,
        /// The epoch of the last value applied in it.
        epoch: Epoch,
        /// The serialized state machine.
        state: Bytes,
    },
    /// The partial transfer was dropped; ask for chunk 0 again.
    Restart(TransferError),
    /// A duplicate of a chunk already taken (a retried request answered twice).
    Ignored,
}

#[derive(Debug)]
struct Transfer {
    instance: Instance,
    epoch: Epoch,
    chunk_count: u32,
    total_bytes: u64,
    next_index: u32,
    state: Vec<u8>,
}

/// Reassembles one snapshot from its chunks, at most
/// `total_bytes_max` bytes of it.
#[derive(Debug)]
pub struct SnapshotAssembler {
    total_bytes_max: u64,
    transfer: Option<Transfer>,
}

impl SnapshotAssembler {
    /// An assembler that refuses snapshots over `total_bytes_max` bytes.
    pub fn new(total_bytes_max: u64) -> SnapshotAssembler {
        SnapshotAssembler {
            total_bytes_max,
            transfer: None,
        }
    }

    /// The snapshot being assembled and the next chunk it needs, if any.
    pub fn in_progress(&self) -> Option<(Instance, u32)> {
        self.transfer
            .as_ref()
            .map(|transfer| (transfer.instance, transfer.next_index))
    }

    /// Drops any partial transfer.
    pub fn reset(&mut self) {
        self.transfer = None;
    }

    /// Offers one received chunk: what to ask for next, or the whole state.
    pub fn accept(&mut self, chunk: SnapshotChunk) -> Assembly {
        if crc32c::crc32c(&chunk.bytes) != chunk.crc32c {
            self.transfer = None;
            return Assembly::Restart(TransferError::Checksum);
        }
        if chunk.total_bytes > self.total_bytes_max {
            self.transfer = None;
            return Assembly::Restart(TransferError::TooLarge);
        }
        let transfer = match &mut self.transfer {
            None => {
                if chunk.chunk_index != 0 {
                    return Assembly::Restart(TransferError::OutOfOrder);
                }
                self.transfer.insert(Transfer {
                    instance: chunk.instance,
                    epoch: chunk.epoch,
                    chunk_count: chunk.chunk_count,
                    total_bytes: chunk.total_bytes,
                    next_index: 0,
                    state: Vec::new(),
                })
            }
            Some(transfer) => {
                let same = transfer.instance == chunk.instance
                    && transfer.epoch == chunk.epoch
                    && transfer.chunk_count == chunk.chunk_count
                    && transfer.total_bytes == chunk.total_bytes;
                if !same {
                    self.transfer = None;
                    return Assembly::Restart(TransferError::OtherSnapshot);
                }
                if chunk.chunk_index < transfer.next_index {
                    return Assembly::Ignored;
                }
                if chunk.chunk_index > transfer.next_index {
                    self.transfer = None;
                    return Assembly::Restart(TransferError::OutOfOrder);
                }
                transfer
            }
        };
        if transfer.state.len() as u64 + chunk.bytes.len() as u64 > transfer.total_bytes {
            self.transfer = None;
            return Assembly::Restart(TransferError::Length);
        }
        transfer.state.extend_from_slice(&chunk.bytes);
        transfer.next_index += 1;
        if transfer.next_index < transfer.chunk_count {
            return Assembly::Next {
                instance: transfer.instance,
                chunk_index: transfer.next_index,
            };
        }
        let Some(done) = self.transfer.take() else {
            return Assembly::Restart(TransferError::Length);
        };
        if done.state.len() as u64 != done.total_bytes {
            return Assembly::Restart(TransferError::Length);
        }
        Assembly::Complete {
            instance: done.instance,
            epoch: done.epoch,
            state: Bytes::from(done.state),
        }
    }
}

/// The serialized snapshot a member is serving to lagging peers: one at a
/// time, replaced when a newer one is needed.
#[derive(Debug)]
pub struct ServedSnapshot {
    /// The instance the snapshot covers.
    pub instance: Instance,
    /// The epoch of the last value applied in it.
    pub epoch: Epoch,
    /// The serialized state machine.
    pub state: Bytes,
    chunk_bytes: usize,
}

impl ServedSnapshot {
    /// Serves `state` in chunks of at most `chunk_bytes` bytes (at least one).
    pub fn new(instance: Instance, epoch: Epoch, state: Bytes, chunk_bytes: usize) -> ServedSnapshot {
        ServedSnapshot {
            instance,
            epoch,
            state,
            chunk_bytes: chunk_bytes.max(1),
        }
    }

    /// How many chunks the state is served in (at least one).
    pub fn chunk_count(&self) -> u32 {
        let count = self.state.len().div_ceil(self.chunk_bytes).max(1);
        u32::try_from(count).unwrap_or(u32::MAX)
    }

    /// Chunk `chunk_index`, or `None` past the end.
    pub fn chunk(&self, chunk_index: u32) -> Option<SnapshotChunk> {
        let chunk_count = self.chunk_count();
        if chunk_index >= chunk_count {
            return None;
        }
        let start = (chunk_index as usize).saturating_mul(self.chunk_bytes);
        let end = start.saturating_add(self.chunk_bytes).min(self.state.len());
        let bytes = self.state.slice(start.min(end)..end);
        Some(SnapshotChunk {
            instance: self.instance,
            epoch: self.epoch,
            chunk_index,
            chunk_count,
            total_bytes: self.state.len() as u64,
            crc32c: crc32c::crc32c(&bytes),
            bytes,
        })
    }
}

#[cfg(test)]
mod tests {
    use synod_paxos::{Ballot, NodeId};

    use super::*;

    fn served(instance: u64, state: &[u8]) -> ServedSnapshot {
        let epoch = Epoch(Ballot::new(2, 1, NodeId(1)));
        ServedSnapshot::new(Instance(instance), epoch, Bytes::copy_from_slice(state), 4)
    }

    fn assemble(assembler: &mut SnapshotAssembler, snapshot: &ServedSnapshot) -> Assembly {
        let mut index = 0;
        loop {
            match assembler.accept(snapshot.chunk(index).unwrap()) {
                Assembly::Next { instance, chunk_index } => {
                    assert_eq!(instance, snapshot.instance);
                    assert_eq!(chunk_index, index + 1);
                    index = chunk_index;
                }
                other => return other,
            }
        }
    }

    #[test]
    fn chunks_in_order_assemble_the_snapshot() {
        let snapshot = served(7, b"the state of the store, in several chunks");
        assert!(snapshot.chunk_count() > 3);
        assert!(snapshot.chunk(snapshot.chunk_count()).is_none());
        let mut assembler = SnapshotAssembler::new(SNAPSHOT_TRANSFER_BYTES_MAX);
        assert_eq!(
            assemble(&mut assembler, &snapshot),
            Assembly::Complete {
                instance: Instance(7),
                epoch: snapshot.epoch,
                state: snapshot.state.clone(),
            }
        );
        assert_eq!(assembler.in_progress(), None);
        let empty = served(8, b"");
        assert_eq!(empty.chunk_count(), 1);
        assert!(matches!(assemble(&mut assembler, &empty), Assembly::Complete { .. }));
    }

    #[test]
    fn a_corrupted_chunk_restarts_the_transfer() {
        let snapshot = served(7, b"0123456789abcdef");
        let mut assembler = SnapshotAssembler::new(SNAPSHOT_TRANSFER_BYTES_MAX);
        assert!(matches!(
            assembler.accept(snapshot.chunk(0).unwrap()),
            Assembly::Next { chunk_index: 1, .. }
        ));
        let mut corrupted = snapshot.chunk(1).unwrap();
        corrupted.bytes = Bytes::from_static(b"XXXX");
        assert_eq!(assembler.accept(corrupted), Assembly::Restart(TransferError::Checksum));
        assert_eq!(assembler.in_progress(), None);
        assert!(matches!(assemble(&mut assembler, &snapshot), Assembly::Complete { .. }));
    }

    #[test]
    fn a_chunk_of_another_snapshot_restarts_the_transfer() {
        let first = served(7, b"0123456789abcdef");
        let second = served(9, b"0123456789abcdefgh");
        let mut assembler = SnapshotAssembler::new(SNAPSHOT_TRANSFER_BYTES_MAX);
        assembler.accept(first.chunk(0).unwrap());
        assembler.accept(first.chunk(1).unwrap());
        assert_eq!(assembler.in_progress(), Some((Instance(7), 2)));
        assert_eq!(
            assembler.accept(second.chunk(2).unwrap()),
            Assembly::Restart(TransferError::OtherSnapshot)
        );
        assert_eq!(assembler.in_progress(), None);
        assert_eq!(
            assembler.accept(second.chunk(1).unwrap()),
            Assembly::Restart(TransferError::OutOfOrder)
        );
        match assemble(&mut assembler, &second) {
            Assembly::Complete { instance, state, .. } => {
                assert_eq!(instance, Instance(9));
                assert_eq!(state, second.state);
            }
            other => panic!("unexpected {other:?}"),
        }
    }

    #[test]
    fn duplicates_are_ignored_and_oversized_snapshots_refused() {
        let snapshot = served(7, b"0123456789abcdef");
        let mut assembler = SnapshotAssembler::new(SNAPSHOT_TRANSFER_BYTES_MAX);
        assembler.accept(snapshot.chunk(0).unwrap());
        assert_eq!(assembler.accept(snapshot.chunk(0).unwrap()), Assembly::Ignored);
        assert_eq!(assembler.in_progress(), Some((Instance(7), 1)));
        let mut small = SnapshotAssembler::new(8);
        assert_eq!(
            small.accept(snapshot.chunk(0).unwrap()),
            Assembly::Restart(TransferError::TooLarge)
        );
        let mut lying = snapshot.chunk(0).unwrap();
        lying.total_bytes = 2;
        assert_eq!(
            assembler.accept(lying.clone()),
            Assembly::Restart(TransferError::OtherSnapshot)
        );
        assert_eq!(assembler.accept(lying), Assembly::Restart(TransferError::Length));
    }
}
