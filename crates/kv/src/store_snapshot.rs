//! Store snapshots: the state machine's whole replicated state in a
//! deterministic encoding, cut into checksummed chunks, and [`FrozenStore`],
//! the copy it is written from. (Keeping these bytes in snapshot files is
//! synod-storage's job.)
//!
//! The encoding walks sorted structures only (keys, changes by revision,
//! leases by ID), so replicas at the same applied index produce identical
//! bytes and can repair each other chunk by chunk. Layout:
//!
//! ```text
//! body  = magic "SYNODKV" version ("4") | applied_index | revision
//!         | compact_revision | state_hash (u64 LE) | retained_bytes
//!         | compaction pending (bool) | [target revision, cursor key]
//!         | lease count | (id, ttl_seconds)*
//!         | alarm count | (member_id, alarm type (u8))*
//!         | auth enabled (bool) | auth revision | user count | (name,
//!           has password (bool), [bcrypt hash], role count | role name*)*
//!         | role count | (name, permission count | (type (u8), key,
//!           range_end)*)*
//!         | key count | (key, change count | (mod_revision, sub,
//!           create_revision, version, lease, live, [value]) *)*
//!         | crc32c(body so far) (u32 LE)
//! chunk = index (u32 LE) | chunk count (u32 LE) | payload length (u32 LE)
//!         | payload | crc32c(everything before) (u32 LE)
//! ```
//!
//! The encoder streams: [`FrozenStore::write_snapshot`] hands the bytes to a
//! sink as they are produced and computes the trailing checksum on the way,
//! so a snapshot never needs a buffer of its own size. [`Store::snapshot`]
//! runs the same encoder into a `Vec`.
//!
//! The pending compaction (see [`Store::pending_compaction`]) is part of the
//! state: a store restored from a snapshot taken halfway through one goes on
//! from the same key, as the original does. Version 1 (written before that
//! field existed, when a compaction finished within its entry) is read as
//! having none pending, and versions 1 and 2 (written before alarms existed)
//! as having no alarm raised, so a member restarts from the snapshot an
//! older build left; version 3 (before auth) as auth disabled with no users
//! or roles; any other version is refused. Alarms are sorted by
//! member, then kind, like every other part.
//!
//! Restore checks every checksum, bound and ordering rule and returns
//! [`KvError::Corrupt`] on any violation; it never panics on input.

use std::collections::{BTreeMap, BTreeSet};

use crate::auth::AuthState;
use crate::error::KvError;
use crate::index::KeyIndex;
use crate::request::{alarm_type_code, alarm_type_of};
use crate::store::{Change, Config, KeyHistory, Lease, PendingCompaction, Store, ALARMS_MAX};
use crate::types::{AlarmMember, AlarmType, RangeRequest, RangeResponse};
use crate::varint::{Decoder, Encoder};

/// The magic, then the format version (one byte), which changes whenever
/// the layout does.
const MAGIC: &[u8; 7] = b"SYNODKV";
const VERSION: u8 = b'4';
/// The layout before the auth state was recorded.
const VERSION_WITHOUT_AUTH: u8 = b'3';
/// The layout before alarms were recorded.
const VERSION_WITHOUT_ALARMS: u8 = b'2';
/// The layout before the pending compaction (and alarms) were recorded.
const VERSION_WITHOUT_PENDING_COMPACTION: u8 = b'1';

const CHUNK_HEADER_BYTES: usize = 12;
const CHUNK_TRAILER_BYTES: usize = 4;

/// Encoded bytes gathered before they are handed to a snapshot sink.
const SINK_BYTES: usize = 64 * 1024;

/// An immutable copy of a [`Store`] as it was when [`Store::freeze`] was
/// called: what a snapshot is taken from while the live store goes on
/// applying. It shares the key index's chunks with the live store (a write
/// there copies the chunk it touches, never the other way round), so it costs
/// little to make and is `Send + Sync + 'static`: move it to another thread
/// and serialize it there with [`FrozenStore::write_snapshot`], or answer a
/// large range there with [`FrozenStore::range`].
pub struct FrozenStore {
    /// The store at freeze time. Its leases carry IDs and TTLs but no key
    /// sets: a snapshot records only those, and restore rebuilds the sets.
    pub(crate) store: Store,
}

impl FrozenStore {
    /// How many log entries had been applied.
    pub fn applied_index(&self) -> u64 {
        self.store.applied_index
    }

    /// The store revision.
    pub fn revision(&self) -> i64 {
        self.store.revision
    }

    /// The revision of the last compaction (0 if none).
    pub fn compact_revision(&self) -> i64 {
        self.store.compact_revision
    }

    /// The state hash (see [`Store::state_hash`]).
    pub fn state_hash(&self) -> u64 {
        self.store.state_hash
    }

    /// `KV.Range` on the store as it was (see [`Store::range_within`]).
    pub fn range(&self, request: &RangeRequest) -> Result<RangeResponse, KvError> {
        self.store.range(request)
    }

    /// `Maintenance.HashKV` on the store as it was (see [`Store::hash_kv`]).
    pub fn hash_kv(&self, revision: i64) -> Result<(u32, i64), KvError> {
        self.store.hash_kv(revision)
    }

    /// Streams the snapshot (the bytes [`Store::snapshot`] returned at freeze
    /// time) into `sink`, a piece of at most about 64 KiB at a time (more only
    /// for a single larger value), without ever holding the whole of it.
    /// Stops at the first error the sink returns.
    pub fn write_snapshot<E>(&self, sink: impl FnMut(&[u8]) -> Result<(), E>) -> Result<(), E> {
        write_snapshot(&self.store, sink)
    }

    /// The whole snapshot in one buffer.
    pub fn snapshot(&self) -> Vec<u8> {
        snapshot_bytes(&self.store)
    }
}

impl Store {
    /// A frozen copy of the current state for a snapshot (see
    /// [`FrozenStore`]): copies the key index's chunk directory (one pointer
    /// and first key per chunk of up to 64 keys), the lease IDs and TTLs and a
    /// few numbers, never a key's history.
    pub fn freeze(&self) -> FrozenStore {
        FrozenStore {
            store: Store {
                config: self.config.clone(),
                index: self.index.clone(),
                revision: self.revision,
                compact_revision: self.compact_revision,
                leases: self
                    .leases
                    .iter()
                    .map(|(id, lease)| {
                        (
                            *id,
                            Lease {
                                ttl_seconds: lease.ttl_seconds,
                                keys: BTreeSet::new(),
                            },
                        )
                    })
                    .collect(),
                alarms: self.alarms.clone(),
                auth: self.auth.clone(),
                applied_index: self.applied_index,
                state_hash: self.state_hash,
                retained_bytes: self.retained_bytes,
                compaction: self.compaction.clone(),
            },
        }
    }

    /// The whole state, encoded (see the module docs); the same bytes as
    /// `self.freeze().snapshot()`.
    pub fn snapshot(&self) -> Vec<u8> {
        snapshot_bytes(self)
    }

    /// The snapshot cut into chunks of at most `chunk_bytes_max` bytes each
    /// (header and checksum included; at least 32).
    pub fn snapshot_chunks(&self, chunk_bytes_max: usize) -> impl Iterator<Item = Vec<u8>> {
        let body = self.snapshot();
        let payload_max = chunk_bytes_max.max(32) - CHUNK_HEADER_BYTES - CHUNK_TRAILER_BYTES;
        let count = body.len().div_ceil(payload_max).max(1);
        (0..count).map(move |index| {
            let start = index * payload_max;
            let payload = &body[start..(start + payload_max).min(body.len())];
            let mut chunk = Vec::with_capacity(payload.len() + CHUNK_HEADER_BYTES + 4);
            chunk.extend_from_slice(&(index as u32).to_le_bytes());
            chunk.extend_from_slice(&(count as u32).to_le_bytes());
            chunk.extend_from_slice(&(payload.len() as u32).to_le_bytes());
            chunk.extend_from_slice(payload);
            let checksum = crc32c::crc32c(&chunk);
            chunk.extend_from_slice(&checksum.to_le_bytes());
            chunk
        })
    }

    /// Rebuilds a store from [`Store::snapshot_chunks`] output, in order.
    pub fn restore_chunks<'a>(config: Config, chunks: impl IntoIterator<Item = &'a [u8]>) -> Result<Store, KvError> {
        let mut body = Vec::new();
        let mut expected_count: Option<u32> = None;
        let mut received: u32 = 0;
        for chunk in chunks {
            if chunk.len() < CHUNK_HEADER_BYTES + CHUNK_TRAILER_BYTES {
                return Err(KvError::Corrupt("snapshot chunk truncated"));
            }
            let (content, trailer) = chunk.split_at(chunk.len() - CHUNK_TRAILER_BYTES);
            let mut decoder = Decoder::new(trailer);
            if crc32c::crc32c(content) != decoder.u32_fixed()? {
                return Err(KvError::Corrupt("snapshot chunk checksum mismatch"));
            }
            let mut decoder = Decoder::new(content);
            let index = decoder.u32_fixed()?;
            let count = decoder.u32_fixed()?;
            let length = decoder.u32_fixed()? as usize;
            if index != received || *expected_count.get_or_insert(count) != count {
                return Err(KvError::Corrupt("snapshot chunk out of order"));
            }
            if length != decoder.remaining() || index >= count {
                return Err(KvError::Corrupt("snapshot chunk header invalid"));
            }
            body.extend_from_slice(&content[CHUNK_HEADER_BYTES..]);
            received += 1;
        }
        if expected_count != Some(received) {
            return Err(KvError::Corrupt("snapshot chunks missing"));
        }
        Store::restore(config, &body)
    }

    /// Rebuilds a store from [`Store::snapshot`] output.
    ///
    /// # Panics
    /// If `config` fails [`Config::validate`], as [`Store::new`] does.
    pub fn restore(config: Config, body: &[u8]) -> Result<Store, KvError> {
        if let Err(reason) = config.validate() {
            panic!("invalid synod-kv config: {reason}");
        }
        const INVALID: KvError = KvError::Corrupt("snapshot content invalid");
        if body.len() < MAGIC.len() + 1 + 4 || &body[..MAGIC.len()] != MAGIC {
            return Err(KvError::Corrupt("not a snapshot"));
        }
        let version = body[MAGIC.len()];
        if ![
            VERSION,
            VERSION_WITHOUT_AUTH,
            VERSION_WITHOUT_ALARMS,
            VERSION_WITHOUT_PENDING_COMPACTION,
        ]
        .contains(&version)
        {
            return Err(KvError::Corrupt("snapshot format version not supported"));
        }
        let (content, trailer) = body.split_at(body.len() - 4);
        if crc32c::crc32c(content) != Decoder::new(trailer).u32_fixed()? {
            return Err(KvError::Corrupt("snapshot checksum mismatch"));
        }
        let mut decoder = Decoder::new(&content[MAGIC.len() + 1..]);
        let applied_index = decoder.u64()?;
        let revision = decoder.i64()?;
        let compact_revision = decoder.i64()?;
        let state_hash = decoder.u64_fixed()?;
        let retained_bytes = decoder.u64()?;
        if revision < 1 || compact_revision < 0 || compact_revision > revision {
            return Err(INVALID);
        }
        let compaction = if version != VERSION_WITHOUT_PENDING_COMPACTION && decoder.bool()? {
            let target = decoder.i64()?;
            let cursor = Box::from(decoder.slice()?);
            // A pending compaction is always towards the compacted revision.
            if target != compact_revision || target < 1 {
                return Err(INVALID);
            }
            Some(PendingCompaction { target, cursor })
        } else {
            None
        };
        let lease_count = decoder.count(2)?;
        let mut leases = BTreeMap::new();
        for _ in 0..lease_count {
            let id = decoder.i64()?;
            let ttl_seconds = decoder.i64()?;
            if id == 0 || leases.keys().next_back().is_some_and(|last| *last >= id) {
                return Err(INVALID);
            }
            leases.insert(
                id,
                Lease {
                    ttl_seconds,
                    keys: BTreeSet::new(),
                },
            );
        }
        let mut alarms = BTreeSet::new();
        if version == VERSION || version == VERSION_WITHOUT_AUTH {
            // Smallest encoding: a one-byte member ID and the type.
            let alarm_count = decoder.count(2)?;
            if alarm_count > ALARMS_MAX {
                return Err(INVALID);
            }
            for _ in 0..alarm_count {
                let member_id = decoder.u64()?;
                let alarm = alarm_type_of(decoder.u8()?).ok_or(INVALID)?;
                let raised = AlarmMember { member_id, alarm };
                if alarm == AlarmType::None || alarms.last().is_some_and(|last| *last >= raised) {
                    return Err(INVALID);
                }
                alarms.insert(raised);
            }
        }
        let auth = if version == VERSION {
            AuthState::decode(&mut decoder)?
        } else {
            AuthState::default()
        };
        let key_count = decoder.count(2)?;
        let mut elements: Vec<(&[u8], KeyHistory)> = Vec::with_capacity(key_count);
        let mut counted_bytes: u64 = 0;
        for _ in 0..key_count {
            let key: &[u8] = decoder.slice()?;
            if key.is_empty() || elements.last().is_some_and(|(last, _)| *last >= key) {
                return Err(INVALID);
            }
            let change_count = decoder.count(6)?;
            if change_count == 0 {
                return Err(INVALID);
            }
            let mut changes: Vec<Change> = Vec::with_capacity(change_count);
            for _ in 0..change_count {
                let mod_revision = decoder.i64()?;
                let sub = u32::try_from(decoder.u64()?).map_err(|_| INVALID)?;
                let create_revision = decoder.i64()?;
                let version = decoder.i64()?;
                let lease = decoder.i64()?;
                let value: Option<Box<[u8]>> = if decoder.bool()? {
                    Some(Box::from(decoder.slice()?))
                } else {
                    None
                };
                let ordered = changes.last().is_none_or(|last| last.mod_revision < mod_revision);
                let consistent = match &value {
                    Some(_) => version >= 1 && create_revision >= 1 && create_revision <= mod_revision,
                    None => version == 0 && create_revision == 0 && lease == 0,
                };
                if !ordered || !consistent || mod_revision < 1 || mod_revision > revision {
                    return Err(INVALID);
                }
                counted_bytes += (key.len() + value.as_ref().map_or(0, |v| v.len())) as u64;
                changes.push(Change {
                    mod_revision,
                    create_revision,
                    version,
                    lease,
                    value,
                    sub,
                });
            }
            let latest = changes.pop().ok_or(INVALID)?;
            if latest.is_live() && latest.lease != 0 {
                leases.get_mut(&latest.lease).ok_or(INVALID)?.keys.insert(key.into());
            }
            let older = if changes.is_empty() {
                None
            } else {
                Some(Box::new(changes))
            };
            elements.push((key, KeyHistory { latest, older }));
        }
        decoder.finish()?;
        if counted_bytes != retained_bytes {
            return Err(INVALID);
        }
        Ok(Store {
            config,
            index: KeyIndex::from_sorted(elements),
            revision,
            compact_revision,
            leases,
            alarms,
            auth,
            applied_index,
            state_hash,
            retained_bytes,
            compaction,
        })
    }
}

fn snapshot_bytes(store: &Store) -> Vec<u8> {
    let mut bytes = Vec::new();
    let Ok(()) = write_snapshot(store, |piece| {
        bytes.extend_from_slice(piece);
        Ok::<(), std::convert::Infallible>(())
    });
    bytes
}

/// The snapshot encoder: fields are encoded into a buffer that goes to the
/// sink whenever it holds [`SINK_BYTES`], and the checksum is computed over
/// what went out.
struct SnapshotStream<F> {
    encoder: Encoder,
    checksum: u32,
    sink: F,
}

impl<F, E> SnapshotStream<F>
where
    F: FnMut(&[u8]) -> Result<(), E>,
{
    fn flush(&mut self) -> Result<(), E> {
        if !self.encoder.bytes.is_empty() {
            self.checksum = crc32c::crc32c_append(self.checksum, &self.encoder.bytes);
            (self.sink)(&self.encoder.bytes)?;
            self.encoder.bytes.clear();
        }
        Ok(())
    }

    fn flush_if_full(&mut self) -> Result<(), E> {
        if self.encoder.bytes.len() >= SINK_BYTES {
            self.flush()?;
        }
        Ok(())
    }
}

/// The one snapshot serializer (layout in the module docs). Reads the lease
/// IDs and TTLs but not their key sets.
fn write_snapshot<E>(store: &Store, sink: impl FnMut(&[u8]) -> Result<(), E>) -> Result<(), E> {
    let mut stream = SnapshotStream {
        encoder: Encoder::default(),
        checksum: 0,
        sink,
    };
    let encoder = &mut stream.encoder;
    encoder.bytes.extend_from_slice(MAGIC);
    encoder.bytes.push(VERSION);
    encoder.u64(store.applied_index);
    encoder.i64(store.revision);
    encoder.i64(store.compact_revision);
    encoder.u64_fixed(store.state_hash);
    encoder.u64(store.retained_bytes);
    match &store.compaction {
        Some(pending) => {
            encoder.bool(true);
            encoder.i64(pending.target);
            encoder.bytes(&pending.cursor);
        }
        None => encoder.bool(false),
    }
    encoder.len(store.leases.len());
    for (id, lease) in &store.leases {
        stream.encoder.i64(*id);
        stream.encoder.i64(lease.ttl_seconds);
        stream.flush_if_full()?;
    }
    stream.encoder.len(store.alarms.len());
    for raised in &store.alarms {
        stream.encoder.u64(raised.member_id);
        stream.encoder.u8(alarm_type_code(raised.alarm));
    }
    store.auth.encode(&mut stream.encoder);
    stream.flush_if_full()?;
    stream.encoder.len(store.index.len());
    for (key, history) in store.index.iter() {
        let encoder = &mut stream.encoder;
        encoder.bytes(key);
        encoder.len(history.older.as_ref().map_or(0, |older| older.len()) + 1);
        for change in history.changes() {
            encoder.i64(change.mod_revision);
            encoder.u64(u64::from(change.sub));
            encoder.i64(change.create_revision);
            encoder.i64(change.version);
            encoder.i64(change.lease);
            match &change.value {
                Some(value) => {
                    encoder.bool(true);
                    encoder.bytes(value);
                }
                None => encoder.bool(false),
            }
        }
        stream.flush_if_full()?;
    }
    stream.flush()?;
    // The checksum covers everything before it, not itself.
    stream.encoder.u32_fixed(stream.checksum);
    (stream.sink)(&stream.encoder.bytes)
}
