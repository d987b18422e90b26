//! Backups: a point-in-time copy of the replicated state machine in one file.
//! `Maintenance.Snapshot` streams it (so `etcdctl snapshot save FILE` writes
//! it), `synod snapshot status` checks and describes it, and
//! `synod snapshot restore` seeds a member of a new group from it.
//!
//! # File format
//!
//! ```text
//! body     the store snapshot (synod-kv's encoding, with its own CRC32C)
//! padding  zeros, so that body + padding + trailer is a multiple of 512 bytes
//! trailer  64 bytes: magic "SYNODBAK" | version u32 | reserved u32
//!          | body bytes u64 | applied instance u64 | revision i64
//!          | key count u64 | state hash u64 | zeros | crc32c(before) u32
//! sha256   of every byte before it (32 bytes)
//! ```
//!
//! The last two follow etcd: `etcdctl snapshot save` refuses a download whose
//! size is not 512·k + 32 (its test for an appended SHA-256,
//! `clientv3/snapshot/v3_snapshot.go` in etcd 3.4), and etcd's server appends
//! the digest as the stream's last message. The trailer comes after the body
//! because the body is encoded as it is sent; the stream's `remaining_bytes`
//! still counts down truly, from a first pass that only measures the body.
//!
//! Reading checks, in order: the size, the SHA-256, the trailer's checksum and
//! version, the padding, and then the body's every checksum, bound and
//! ordering rule (by restoring it), and that the trailer agrees with what was
//! restored. Any failure names what is wrong; nothing panics on input.

use std::convert::Infallible;
use std::fs;
use std::path::Path;

use sha2::{Digest, Sha256};
use synod_kv::{FrozenStore, RangeRequest, Store};
use synod_paxos::{Ballot, Epoch, Instance, Meta, Persist, Voting};
use synod_storage::AcceptorStore;

use crate::disk_writer;
use crate::identity::Identity;

const MAGIC: &[u8; 8] = b"SYNODBAK";
const VERSION: u32 = 1;
/// The trailer's size in bytes.
pub const TRAILER_BYTES: usize = 64;
/// The size in bytes of the SHA-256 that ends the file.
pub const DIGEST_BYTES: usize = 32;
/// The body, padding and trailer together are a multiple of this many bytes.
pub const ALIGNMENT_BYTES: usize = 512;
/// The most bytes of a file [`read`] loads: the file is restored in memory, as
/// the store is held in memory.
pub const BACKUP_BYTES_MAX: u64 = 64 << 30;

/// What a backup holds, from its trailer (checked against its body).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct BackupSummary {
    /// The Paxos instance through which the source had applied the log.
    pub applied_instance: u64,
    /// The store revision.
    pub revision: i64,
    /// Keys live at that revision.
    pub key_count: u64,
    /// The store's state hash ([`Store::state_hash`]).
    pub state_hash: u64,
    /// The file's size in bytes, digest included.
    pub file_bytes: u64,
}

impl BackupSummary {
    /// The state hash folded to 32 bits, as HashKV reports it.
    pub fn hash32(&self) -> u32 {
        (self.state_hash ^ (self.state_hash >> 32)) as u32
    }
}

/// A backup that was read and checked.
pub struct Backup {
    /// What it holds.
    pub summary: BackupSummary,
    /// The store snapshot, as [`Store::restore`] takes it.
    pub body: Vec<u8>,
    /// The store it restores to.
    pub store: Store,
    /// The file's SHA-256.
    pub digest: [u8; DIGEST_BYTES],
}

/// Why a backup cannot be read or restored.
#[derive(Debug, thiserror::Error)]
pub enum BackupError {
    /// A file could not be read or written.
    #[error("{path}: {source}")]
    Io {
        /// The file or directory.
        path: String,
        /// What failed.
        #[source]
        source: std::io::Error,
    },
    /// The file is not a sound synod backup.
    #[error("{path} is not a usable synod backup: {reason}")]
    Damaged {
        /// The file.
        path: String,
        /// What is wrong with it.
        reason: String,
    },
    /// The restore's flags or target directory.
    #[error("{0}")]
    Restore(String),
}

/// Counts of a frozen store for a backup: its encoded size and live keys.
pub struct BackupPlan {
    body_bytes: u64,
    summary: BackupSummary,
}

impl BackupPlan {
    /// Measures `frozen` (one encoding pass into nothing, one count of live
    /// keys): call it off the core task. `applied_instance` is the instance the
    /// store had applied when it was frozen.
    pub fn measure(frozen: &FrozenStore, applied_instance: u64) -> BackupPlan {
        let mut body_bytes = 0u64;
        let _ = frozen.write_snapshot(|piece| {
            body_bytes += piece.len() as u64;
            Ok::<(), Infallible>(())
        });
        let file_bytes = aligned(body_bytes) + DIGEST_BYTES as u64;
        BackupPlan {
            body_bytes,
            summary: summarize(frozen, applied_instance, file_bytes),
        }
    }

    /// What the backup will hold.
    pub fn summary(&self) -> BackupSummary {
        self.summary
    }

    /// Writes the whole file for `frozen` into `sink` (which may stop it with
    /// an error): the body as it is encoded, then padding, trailer and digest.
    pub fn write<E>(&self, frozen: &FrozenStore, mut sink: impl FnMut(&[u8]) -> Result<(), E>) -> Result<(), E> {
        let mut digest = Sha256::new();
        let mut written = 0u64;
        frozen.write_snapshot(|piece| {
            digest.update(piece);
            written += piece.len() as u64;
            sink(piece)
        })?;
        assert_eq!(written, self.body_bytes, "a frozen store encoded to another size");
        let padding = vec![0u8; (aligned(written) - written) as usize - TRAILER_BYTES];
        let trailer = encode_trailer(written, &self.summary);
        digest.update(&padding);
        digest.update(trailer);
        let mut tail = padding;
        tail.extend_from_slice(&trailer);
        tail.extend_from_slice(&digest.finalize());
        sink(&tail)
    }
}

/// What a backup of `frozen` at `applied_instance`, `file_bytes` long, holds
/// (one count of live keys; no encoding).
fn summarize(frozen: &FrozenStore, applied_instance: u64, file_bytes: u64) -> BackupSummary {
    let everything = RangeRequest {
        key: vec![0],
        range_end: vec![0],
        count_only: true,
        ..RangeRequest::default()
    };
    let key_count = frozen
        .range(&everything)
        .map_or(0, |response| response.count.max(0) as u64);
    BackupSummary {
        applied_instance,
        revision: frozen.revision(),
        key_count,
        state_hash: frozen.state_hash(),
        file_bytes,
    }
}

/// The size of body, padding and trailer for a body of `body_bytes`.
fn aligned(body_bytes: u64) -> u64 {
    (body_bytes + TRAILER_BYTES as u64).div_ceil(ALIGNMENT_BYTES as u64) * ALIGNMENT_BYTES as u64
}

fn encode_trailer(body_bytes: u64, summary: &BackupSummary) -> [u8; TRAILER_BYTES] {
    let mut trailer = [0u8; TRAILER_BYTES];
    trailer[0..8].copy_from_slice(MAGIC);
    trailer[8..12].copy_from_slice(&VERSION.to_le_bytes());
    trailer[16..24].copy_from_slice(&body_bytes.to_le_bytes());
    trailer[24..32].copy_from_slice(&summary.applied_instance.to_le_bytes());
    trailer[32..40].copy_from_slice(&summary.revision.to_le_bytes());
    trailer[40..48].copy_from_slice(&summary.key_count.to_le_bytes());
    trailer[48..56].copy_from_slice(&summary.state_hash.to_le_bytes());
    let checksum = crc32c::crc32c(&trailer[..TRAILER_BYTES - 4]);
    trailer[TRAILER_BYTES - 4..].copy_from_slice(&checksum.to_le_bytes());
    trailer
}

fn u64_at(bytes: &[u8], at: usize) -> u64 {
    let mut field = [0u8; 8];
    field.copy_from_slice(&bytes[at..at + 8]);
    u64::from_le_bytes(field)
}

/// Checks `bytes`, a whole backup file, and restores its store.
pub fn decode(bytes: &[u8]) -> Result<Backup, String> {
    let size = bytes.len();
    if synod_etcd_db::looks_like_etcd_db(bytes) {
        return decode_etcd(bytes);
    }
    if size < ALIGNMENT_BYTES + DIGEST_BYTES || !(size - DIGEST_BYTES).is_multiple_of(ALIGNMENT_BYTES) {
        return Err(format!(
            "its size, {size} bytes, is not a multiple of {ALIGNMENT_BYTES} plus a {DIGEST_BYTES}-byte SHA-256 \
             (truncated, or not a backup)"
        ));
    }
    let (content, recorded) = bytes.split_at(size - DIGEST_BYTES);
    let digest: [u8; DIGEST_BYTES] = Sha256::digest(content).into();
    if digest[..] != recorded[..] {
        return Err("its SHA-256 does not match its contents (the file is damaged)".to_string());
    }
    let trailer = &content[content.len() - TRAILER_BYTES..];
    if &trailer[0..8] != MAGIC {
        return Err("its trailer does not begin with SYNODBAK (not a synod backup)".to_string());
    }
    let checksum = u32::from_le_bytes([trailer[60], trailer[61], trailer[62], trailer[63]]);
    if checksum != crc32c::crc32c(&trailer[..TRAILER_BYTES - 4]) {
        return Err("its trailer fails its CRC32C".to_string());
    }
    let version = u32::from_le_bytes([trailer[8], trailer[9], trailer[10], trailer[11]]);
    if version != VERSION {
        return Err(format!(
            "it is format version {version}; this build reads version {VERSION}"
        ));
    }
    let body_bytes = u64_at(trailer, 16);
    if aligned(body_bytes) != content.len() as u64 {
        return Err(format!(
            "its trailer records a {body_bytes}-byte body, which does not fit its {} bytes",
            content.len()
        ));
    }
    let body_end = body_bytes as usize;
    if content[body_end..content.len() - TRAILER_BYTES]
        .iter()
        .any(|&byte| byte != 0)
    {
        return Err("its padding is not zeros".to_string());
    }
    let summary = BackupSummary {
        applied_instance: u64_at(trailer, 24),
        revision: u64_at(trailer, 32) as i64,
        key_count: u64_at(trailer, 40),
        state_hash: u64_at(trailer, 48),
        file_bytes: size as u64,
    };
    let body = content[..body_end].to_vec();
    let store =
        Store::restore(crate::node::kv_config(), &body).map_err(|error| format!("its store snapshot: {error}"))?;
    // The body's length was checked against the trailer above; the rest is
    // compared with the store it restored to, without encoding it again.
    let restored = summarize(&store.freeze(), summary.applied_instance, summary.file_bytes);
    if restored != summary {
        return Err(format!(
            "its trailer ({summary:?}) disagrees with the store it holds ({restored:?})"
        ));
    }
    Ok(Backup {
        summary,
        body,
        store,
        digest,
    })
}

/// An etcd snapshot (`etcdctl snapshot save`), migrated: its store as if it
/// were a synod backup taken at [`crate::etcd_import::IMPORTED_INSTANCE`].
fn decode_etcd(bytes: &[u8]) -> Result<Backup, String> {
    let store = crate::etcd_import::import(bytes)?;
    let summary = summarize(
        &store.freeze(),
        crate::etcd_import::IMPORTED_INSTANCE,
        bytes.len() as u64,
    );
    Ok(Backup {
        summary,
        body: store.snapshot(),
        store,
        digest: Sha256::digest(bytes).into(),
    })
}

/// Reads and checks the backup at `path`.
pub fn read(path: &Path) -> Result<Backup, BackupError> {
    let shown = path.display().to_string();
    let io = |source| BackupError::Io {
        path: shown.clone(),
        source,
    };
    let length = fs::metadata(path).map_err(io)?.len();
    if length > BACKUP_BYTES_MAX {
        return Err(BackupError::Damaged {
            path: shown,
            reason: format!("it is {length} bytes, more than the {BACKUP_BYTES_MAX} this build restores"),
        });
    }
    let bytes = fs::read(path).map_err(io)?;
    decode(&bytes).map_err(|reason| BackupError::Damaged { path: shown, reason })
}

/// What [`restore`] wrote.
#[derive(Debug)]
pub struct Restored {
    /// The new member's identity.
    pub identity: Identity,
    /// The token its cluster ID was derived with.
    pub token: String,
    /// What the backup held.
    pub summary: BackupSummary,
}

/// The cluster token a restore uses when none is given: from the backup's
/// digest, so every member restored from one file gets the same cluster ID,
/// and one that differs from the group the backup came from.
pub fn default_restore_token(digest: &[u8; DIGEST_BYTES]) -> String {
    let hex: String = digest[..8].iter().map(|byte| format!("{byte:02x}")).collect();
    format!("restored-{hex}")
}

/// Seeds `data_dir`, which must be empty or absent, as member `name` of a new
/// group `initial_cluster` (with cluster token `token`, or
/// [`default_restore_token`]) holding the backup at `file`: the member file,
/// fresh acceptor metadata, and the store as a snapshot at the backup's
/// instance, so every member restored from the same file starts its log at
/// the same place. The member then starts with `synod server` as usual.
pub fn restore(
    file: &Path,
    name: &str,
    data_dir: &Path,
    initial_cluster: &str,
    token: Option<&str>,
) -> Result<Restored, BackupError> {
    let backup = read(file)?;
    let token = token.map_or_else(|| default_restore_token(&backup.digest), str::to_string);
    let identity = Identity::from_flags_with_token(name, initial_cluster, &token)
        .map_err(|error| BackupError::Restore(error.to_string()))?;
    let shown = data_dir.display().to_string();
    let io = |source| BackupError::Io {
        path: shown.clone(),
        source,
    };
    match fs::read_dir(data_dir) {
        Ok(mut entries) => {
            if entries.next().is_some() {
                return Err(BackupError::Restore(format!(
                    "data directory {shown} is not empty; a restore writes a new member into an empty one"
                )));
            }
        }
        Err(error) if error.kind() == std::io::ErrorKind::NotFound => fs::create_dir_all(data_dir).map_err(io)?,
        Err(error) => return Err(io(error)),
    }
    identity
        .store(data_dir)
        .map_err(|error| BackupError::Restore(error.to_string()))?;
    let (mut store, _) = disk_writer::open(data_dir, 0).map_err(|error| BackupError::Restore(error.to_string()))?;
    // What a member of a new group records on its first start: it never
    // voted, so its answers to the others' probes count (see "Safe rejoin" in
    // ARCHITECTURE.md). A brand-new metadata file says the opposite.
    let never_voted = Meta {
        promised: Ballot::ZERO,
        incarnation: 0,
        voting: Voting::ProbePending { new_group: true },
    };
    store
        .write(&[Persist::Meta(never_voted)])
        .map_err(|error| BackupError::Restore(format!("cannot write the acceptor metadata into {shown}: {error}")))?;
    AcceptorStore::write_snapshot(
        store.snapshots(),
        Instance(backup.summary.applied_instance),
        Epoch::default(),
        |writer| writer.write(&backup.body),
    )
    .map_err(|error| BackupError::Restore(format!("cannot write the snapshot into {shown}: {error}")))?;
    fs::File::open(data_dir)
        .and_then(|directory| directory.sync_all())
        .map_err(io)?;
    Ok(Restored {
        identity,
        token,
        summary: backup.summary,
    })
}

#[cfg(test)]
mod tests {
    use synod_kv::{LeaseGrantRequest, PutRequest, Request};

    use super::*;

    fn sample_store() -> Store {
        let mut store = Store::new(crate::node::kv_config());
        let _ = store.apply(&Request::LeaseGrant(LeaseGrantRequest { ttl: 60, id: 7 }));
        for index in 0..50u32 {
            let _ = store.apply(&Request::Put(PutRequest {
                key: format!("key/{index:03}").into_bytes(),
                value: vec![index as u8; index as usize * 3],
                lease: if index % 10 == 0 { 7 } else { 0 },
                ..PutRequest::default()
            }));
        }
        store
    }

    fn backup_of(store: &Store) -> Vec<u8> {
        let frozen = store.freeze();
        let plan = BackupPlan::measure(&frozen, 123);
        let mut bytes = Vec::new();
        plan.write(&frozen, |piece| {
            bytes.extend_from_slice(piece);
            Ok::<(), Infallible>(())
        })
        .unwrap();
        assert_eq!(bytes.len() as u64, plan.summary().file_bytes);
        bytes
    }

    #[test]
    fn a_backup_round_trips_and_has_etcds_checksum_layout() {
        let store = sample_store();
        let bytes = backup_of(&store);
        assert_eq!(bytes.len() % ALIGNMENT_BYTES, DIGEST_BYTES, "etcdctl's hasChecksum");
        let backup = decode(&bytes).unwrap();
        assert_eq!(backup.summary.applied_instance, 123);
        assert_eq!(backup.summary.revision, store.revision());
        assert_eq!(backup.summary.key_count, 50);
        assert_eq!(backup.summary.state_hash, store.state_hash());
        assert_eq!(backup.store.snapshot(), store.snapshot());
    }

    #[test]
    fn every_bit_flip_and_truncation_is_refused_with_a_reason() {
        let bytes = backup_of(&sample_store());
        for at in (0..bytes.len()).step_by(7).chain([bytes.len() - 1]) {
            let mut damaged = bytes.clone();
            damaged[at] ^= 1 << (at % 8);
            let reason = decode(&damaged)
                .err()
                .unwrap_or_else(|| panic!("flip at byte {at} went unnoticed"));
            assert!(!reason.is_empty());
        }
        for length in (0..bytes.len()).step_by(13) {
            assert!(decode(&bytes[..length]).is_err(), "truncation to {length} bytes");
        }
    }

    /// A snapshot `etcdctl snapshot save` wrote against etcd 3.4.23 (how it
    /// was made: `crates/etcd-db/tests/fixtures/README.md`).
    const ETCD_SNAPSHOT: &[u8] = include_bytes!("../../etcd-db/tests/fixtures/etcd-3.4.23.db");

    #[test]
    fn a_damaged_etcd_database_is_named_as_such() {
        let mut bbolt = vec![0u8; 4096 + DIGEST_BYTES];
        bbolt[16..20].copy_from_slice(&0xED0C_DAEDu32.to_le_bytes());
        let reason = decode(&bbolt).err().unwrap();
        assert!(reason.starts_with("it is an etcd snapshot, but"), "{reason}");
        let mut damaged = ETCD_SNAPSHOT.to_vec();
        damaged[5000] ^= 0x10;
        let reason = decode(&damaged).err().unwrap();
        assert!(reason.contains("SHA-256"), "{reason}");
    }

    #[test]
    fn an_etcd_snapshot_restores_as_a_backup() {
        let backup = decode(ETCD_SNAPSHOT).expect("etcd 3.4.23's snapshot imports");
        assert_eq!(backup.summary.applied_instance, crate::etcd_import::IMPORTED_INSTANCE);
        assert_eq!(backup.summary.revision, backup.store.revision());
        assert!(backup.summary.key_count > 0);
        let again = Store::restore(crate::node::kv_config(), &backup.body).expect("the body restores");
        assert_eq!(again.state_hash(), backup.store.state_hash());
        assert_eq!(again.revision(), backup.store.revision());
    }
}
