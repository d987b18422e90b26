//! Snapshots: the whole replicated state in a deterministic encoding, cut
//! into checksummed chunks.
//!
//! The encoding walks sorted structures only (keys, changes by revision,
//! leases by ID), so replicas at the same applied index produce identical
//! bytes and can repair each other chunk by chunk. Layout:
//!
//! ```text
//! body  = magic "SYNODKV1" | applied_index | revision | compact_revision
//!         | state_hash (u64 LE) | retained_bytes
//!         | lease count | (id, ttl_seconds)*
//!         | key count | (key, change count | (mod_revision, sub,
//!           create_revision, version, lease, live, [value]) *)*
//!         | crc32c(body so far) (u32 LE)
//! chunk = index (u32 LE) | chunk count (u32 LE) | payload length (u32 LE)
//!         | payload | crc32c(everything before) (u32 LE)
//! ```
//!
//! Restore checks every checksum, bound and ordering rule and returns
//! [`KvError::Corrupt`] on any violation; it never panics on input.

use std::collections::{BTreeMap, BTreeSet};

use crate::codec::{Decoder, Encoder};
use crate::error::KvError;
use crate::index::KeyIndex;
use crate::store::{Change, Config, KeyHistory, Lease, Store};

const MAGIC: &[u8; 8] = b"SYNODKV1";
const CHUNK_HEADER_BYTES: usize = 12;
const CHUNK_TRAILER_BYTES: usize = 4;

impl Store {
    /// The whole state, encoded (see the module docs).
    pub fn snapshot(&self) -> Vec<u8> {
        let mut encoder = Encoder::default();
        encoder.bytes.extend_from_slice(MAGIC);
        encoder.u64(self.applied_index);
        encoder.i64(self.revision);
        encoder.i64(self.compact_revision);
        encoder.u64_fixed(self.state_hash);
        encoder.u64(self.retained_bytes);
        encoder.len(self.leases.len());
        for (id, lease) in &self.leases {
            encoder.i64(*id);
            encoder.i64(lease.ttl_seconds);
        }
        encoder.len(self.index.len());
        for (key, history) in self.index.iter() {
            encoder.bytes(key);
            let changes: Vec<&Change> = history.changes().collect();
            encoder.len(changes.len());
            for change in changes {
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
        }
        let checksum = crc32c::crc32c(&encoder.bytes);
        encoder.u32_fixed(checksum);
        encoder.bytes
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
        if body.len() < MAGIC.len() + 4 || &body[..MAGIC.len()] != MAGIC {
            return Err(KvError::Corrupt("not a snapshot"));
        }
        let (content, trailer) = body.split_at(body.len() - 4);
        if crc32c::crc32c(content) != Decoder::new(trailer).u32_fixed()? {
            return Err(KvError::Corrupt("snapshot checksum mismatch"));
        }
        let mut decoder = Decoder::new(&content[MAGIC.len()..]);
        let applied_index = decoder.u64()?;
        let revision = decoder.i64()?;
        let compact_revision = decoder.i64()?;
        let state_hash = decoder.u64_fixed()?;
        let retained_bytes = decoder.u64()?;
        if revision < 1 || compact_revision < 0 || compact_revision > revision {
            return Err(INVALID);
        }
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
            applied_index,
            state_hash,
            retained_bytes,
        })
    }
}
