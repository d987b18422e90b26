//! Acceptor metadata: the promised ballot, the incarnation and the voting
//! state, kept in two checksummed copies (`acceptor-a.meta`,
//! `acceptor-b.meta`), each with a sequence number.
//!
//! An update writes the copy holding the older sequence number, syncs it, then
//! writes and syncs the other, so at any moment at least one copy holds a
//! complete earlier or current value (a torn write can only damage the copy
//! being written), and after the update both hold it. Loading picks the valid copy with the highest sequence number.
//! One bad copy is reported and rewritten from the good one. Both bad is
//! [`StorageError::MetadataUnrecoverable`]: a promise must never be relearned
//! from peers, so the replica refuses to start.

use std::sync::Arc;

use synod_paxos::{Ballot, Instance, NodeId, Voting};

use crate::disk::{Disk, File};
use crate::error::{Result, StorageError};
use crate::fields::{put_u32, put_u64, Decoder};

/// The names of the two copies.
pub const METADATA_FILES: [&str; 2] = ["acceptor-a.meta", "acceptor-b.meta"];
const MAGIC: u64 = u64::from_le_bytes(*b"SYNODMET");
const FORMAT_VERSION: u32 = 2;
const COPY_BYTES: usize = 72;

/// What an acceptor must never forget.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct AcceptorMetadata {
    /// The highest ballot this acceptor promised (phase 1b).
    pub promised: Ballot,
    /// Bumped and persisted on every restart, so a restarted proposer never
    /// reissues a ballot.
    pub incarnation: u64,
    /// Whether the acceptor may vote, or what it must learn first after
    /// starting with an empty disk.
    pub voting: Voting,
}

impl Default for AcceptorMetadata {
    /// What a brand-new metadata file says: nothing promised, and not yet
    /// allowed to vote. A replica that crashes before it finished its first
    /// start must come back asking its peers, not as a voter.
    fn default() -> AcceptorMetadata {
        AcceptorMetadata {
            promised: Ballot::ZERO,
            incarnation: 0,
            voting: Voting::ProbePending { new_group: false },
        }
    }
}

fn voting_fields(voting: Voting) -> (u32, u64) {
    match voting {
        Voting::Voter => (1, 0),
        Voting::ProbePending { new_group: false } => (2, 0),
        Voting::ProbePending { new_group: true } => (3, 0),
        Voting::AwaitMaster => (4, 0),
        Voting::LearnUntil(instance) => (5, instance.0),
    }
}

fn voting_from_fields(tag: u32, instance: u64) -> std::result::Result<Voting, String> {
    Ok(match tag {
        1 => Voting::Voter,
        2 => Voting::ProbePending { new_group: false },
        3 => Voting::ProbePending { new_group: true },
        4 => Voting::AwaitMaster,
        5 => Voting::LearnUntil(Instance(instance)),
        other => return Err(format!("unknown voting state {other}")),
    })
}

/// What [`MetadataStore::open`] found.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct MetadataLoad {
    /// The newest valid metadata.
    pub metadata: AcceptorMetadata,
    /// No metadata existed: a brand-new replica.
    pub fresh: bool,
    /// A copy that was unusable (name, reason) and has been rewritten.
    pub repaired_copy: Option<(String, String)>,
}

fn encode(sequence: u64, metadata: &AcceptorMetadata) -> Vec<u8> {
    let mut bytes = Vec::with_capacity(COPY_BYTES);
    put_u64(&mut bytes, MAGIC);
    let (voting_tag, voting_instance) = voting_fields(metadata.voting);
    put_u32(&mut bytes, FORMAT_VERSION);
    put_u32(&mut bytes, voting_tag);
    put_u64(&mut bytes, sequence);
    put_u64(&mut bytes, metadata.promised.round);
    put_u64(&mut bytes, metadata.promised.incarnation);
    put_u64(&mut bytes, metadata.promised.node.0);
    put_u64(&mut bytes, metadata.incarnation);
    put_u64(&mut bytes, voting_instance);
    let crc = crc32c::crc32c(&bytes);
    put_u32(&mut bytes, crc);
    put_u32(&mut bytes, 0);
    assert_eq!(bytes.len(), COPY_BYTES);
    bytes
}

/// Decodes one copy, or says why it is unusable.
fn decode(bytes: &[u8]) -> std::result::Result<(u64, AcceptorMetadata), String> {
    if bytes.len() != COPY_BYTES {
        return Err(format!("{} bytes long, expected {COPY_BYTES}", bytes.len()));
    }
    let mut decoder = Decoder::new(bytes);
    let field = |value: Option<u64>| value.ok_or_else(|| "truncated".to_string());
    let magic = field(decoder.u64())?;
    if magic != MAGIC {
        return Err(format!("bad magic {magic:#x}"));
    }
    let version = decoder.u32().ok_or("truncated")?;
    let voting_tag = decoder.u32().ok_or("truncated")?;
    let sequence = field(decoder.u64())?;
    let round = field(decoder.u64())?;
    let ballot_incarnation = field(decoder.u64())?;
    let node = field(decoder.u64())?;
    let incarnation = field(decoder.u64())?;
    let voting_instance = field(decoder.u64())?;
    let covered = decoder.position();
    let crc = decoder.u32().ok_or("truncated")?;
    if crc != crc32c::crc32c(&bytes[..covered]) {
        return Err("checksum mismatch".to_string());
    }
    if version != FORMAT_VERSION {
        return Err(format!("unsupported version {version}"));
    }
    Ok((
        sequence,
        AcceptorMetadata {
            promised: Ballot::new(round, ballot_incarnation, NodeId(node)),
            incarnation,
            voting: voting_from_fields(voting_tag, voting_instance)?,
        },
    ))
}

/// The two copies of the acceptor metadata.
#[derive(Debug)]
pub struct MetadataStore {
    copies: [Box<dyn File>; 2],
    /// The sequence number of the newest copy.
    sequence: u64,
    /// The copy the next write goes to (the older one).
    next_copy: usize,
    current: AcceptorMetadata,
    failure: Option<String>,
}

impl MetadataStore {
    /// Loads the metadata, creating it for a brand-new replica. `has_state`
    /// says whether the replica has a log or snapshots: missing metadata
    /// beside them is loss, not a fresh start.
    pub fn open(disk: Arc<dyn Disk>, has_state: bool) -> Result<(MetadataStore, MetadataLoad)> {
        let exists = [disk.exists(METADATA_FILES[0])?, disk.exists(METADATA_FILES[1])?];
        if !exists[0] && !exists[1] && !has_state {
            let metadata = AcceptorMetadata::default();
            let mut copies = Vec::new();
            for (sequence, name) in METADATA_FILES.iter().enumerate() {
                let mut file = disk.create(name)?;
                file.write_at(0, &encode(sequence as u64 + 1, &metadata))?;
                file.sync()?;
                copies.push(file);
            }
            let copies: [Box<dyn File>; 2] = copies.try_into().expect("two copies");
            let store = MetadataStore {
                copies,
                sequence: 2,
                next_copy: 0,
                current: metadata,
                failure: None,
            };
            return Ok((
                store,
                MetadataLoad {
                    metadata,
                    fresh: true,
                    repaired_copy: None,
                },
            ));
        }

        let mut files = Vec::new();
        let mut decoded = Vec::new();
        for (index, name) in METADATA_FILES.iter().enumerate() {
            let file = if exists[index] {
                disk.open(name)?
            } else {
                disk.create(name)?
            };
            let result = if !exists[index] {
                Err("missing".to_string())
            } else {
                let mut bytes = [0u8; COPY_BYTES + 1];
                match file.read_at(0, &mut bytes) {
                    Ok(read) => decode(&bytes[..read]),
                    Err(error) => Err(error.to_string()),
                }
            };
            files.push(file);
            decoded.push(result);
        }
        let (newest, bad) = match (&decoded[0], &decoded[1]) {
            (Err(first), Err(second)) => {
                return Err(StorageError::MetadataUnrecoverable {
                    first_file: METADATA_FILES[0].to_string(),
                    first_reason: first.clone(),
                    second_file: METADATA_FILES[1].to_string(),
                    second_reason: second.clone(),
                })
            }
            (Ok(_), Err(_)) => (0, Some(1)),
            (Err(_), Ok(_)) => (1, Some(0)),
            (Ok((a, _)), Ok((b, _))) => (if a >= b { 0 } else { 1 }, None),
        };
        let (sequence, metadata) = decoded[newest].clone().expect("newest is valid");
        let copies: [Box<dyn File>; 2] = files.try_into().expect("two copies");
        let mut store = MetadataStore {
            copies,
            sequence,
            next_copy: 1 - newest,
            current: metadata,
            failure: None,
        };
        let mut repaired_copy = None;
        if let Some(bad) = bad {
            let reason = decoded[bad].clone().expect_err("bad copy");
            store.write(&metadata)?;
            repaired_copy = Some((METADATA_FILES[bad].to_string(), reason));
        }
        Ok((
            store,
            MetadataLoad {
                metadata,
                fresh: false,
                repaired_copy,
            },
        ))
    }

    /// Refuses all later writes, after a failure elsewhere in the store.
    pub(crate) fn stop_after(&mut self, reason: String) {
        self.failure.get_or_insert(reason);
    }

    /// The last metadata written or loaded.
    pub fn current(&self) -> AcceptorMetadata {
        self.current
    }

    /// Durably replaces the metadata. Must return before the acceptor answers
    /// a prepare with a promise. A failure stops the store; a
    /// [`StorageError::SyncFailed`] must stop the process.
    ///
    /// Both copies are written, in turn, each synced before the next begins:
    /// first the older copy, then the other. A crash tears at most the copy being
    /// written while the other holds the previous or the new value; and once the
    /// write returns, both hold the new value, so damage found later in either
    /// copy never rolls a promise back (with copies written one per update, a bad
    /// newest copy would leave only the previous, lower promise).
    pub fn write(&mut self, metadata: &AcceptorMetadata) -> Result<()> {
        if let Some(reason) = &self.failure {
            return Err(StorageError::Stopped { reason: reason.clone() });
        }
        for _ in 0..2 {
            let sequence = self.sequence + 1;
            let bytes = encode(sequence, metadata);
            let file = &mut self.copies[self.next_copy];
            let result = file.write_at(0, &bytes).and_then(|()| file.sync());
            if let Err(error) = result {
                self.failure = Some(error.to_string());
                return Err(error);
            }
            self.sequence = sequence;
            self.next_copy = 1 - self.next_copy;
        }
        self.current = *metadata;
        Ok(())
    }
}
