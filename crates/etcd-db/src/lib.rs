//! Reads the MVCC data out of an etcd v3 snapshot, to migrate an etcd cluster into synod.
//!
//! `etcdctl snapshot save` (etcd 3.4 and 3.5) writes the server's bbolt
//! database and, after it, the SHA-256 of the database, so the file is
//! 512 * k + 32 bytes long. [`read`] checks that hash, walks the bbolt B+trees
//! and decodes etcd's buckets:
//!
//! - `key`: one entry per key revision. The bbolt key is the revision: 8-byte
//!   big-endian main, `_`, 8-byte big-endian sub, and a trailing `t` for a
//!   deletion (tombstone). The value is an `mvccpb.KeyValue` protobuf.
//! - `lease`: bbolt key = 8-byte big-endian lease ID, value = `leasepb.Lease`.
//! - `meta`: `scheduledCompactRev` and `finishedCompactRev` hold a revision in
//!   the same 17-byte form as `key` (main, `_`, sub 0), not a bare integer;
//!   `consistent_index` is an 8-byte big-endian u64.
//!
//! The file comes from outside, so nothing in it is trusted: every length,
//! offset and page id is checked, each page is walked at most once, the tree
//! depth and the file size are bounded, and any damage ends in an
//! [`EtcdDbError`] that says what is wrong, never in a panic.

#![deny(missing_docs)]

mod bolt;
#[cfg(test)]
mod tests;

use std::fmt;

use prost::Message;
use sha2::{Digest, Sha256};

pub use bolt::{PAGE_BYTES_MAX, PAGE_BYTES_MIN, TREE_DEPTH_MAX};

/// Largest file [`read`] accepts, in bytes: 8 GiB, the largest backend quota
/// (`--quota-backend-bytes`) etcd's documentation suggests and the size above
/// which etcd warns, plus the 32-byte hash. A larger input is refused on its
/// length alone, before any work is done on it.
pub const DB_BYTES_MAX: u64 = 8 * 1024 * 1024 * 1024 + SHA256_BYTES as u64;

/// Bytes of the SHA-256 that `etcdctl snapshot save` appends.
const SHA256_BYTES: usize = 32;
/// etcd appends the hash only to files of 512 * k bytes, so a snapshot with a
/// hash is exactly 32 bytes past a multiple of 512 (etcd's `hasChecksum`).
const HASH_ALIGN_BYTES: usize = 512;
/// Bytes of an encoded revision: main, `_`, sub.
const REVISION_BYTES: usize = 17;

/// The MVCC data of one etcd snapshot.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EtcdDb {
    /// Every key revision in the "key" bucket, sorted by (main, sub).
    pub revisions: Vec<KeyRevision>,
    /// The "lease" bucket: (lease ID, TTL in seconds), sorted by ID.
    pub leases: Vec<EtcdLease>,
    /// The main revision the last compaction was asked for (`scheduledCompactRev`).
    pub scheduled_compact_revision: Option<i64>,
    /// The main revision of the last compaction that finished (`finishedCompactRev`).
    /// When it is below `scheduled_compact_revision`, etcd redoes the
    /// compaction on start, so some revisions below the scheduled one may remain.
    pub finished_compact_revision: Option<i64>,
    /// The index of the last raft entry applied to this database.
    pub consistent_index: Option<u64>,
    /// True when the file carried etcd's trailing SHA-256 and it matched (false: no hash present).
    pub hash_verified: bool,
}

/// One revision of one key, as stored in the "key" bucket.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KeyRevision {
    /// The main revision: one per etcd transaction.
    pub main: i64,
    /// The sub revision: the change's position within its transaction.
    pub sub: i64,
    /// This revision deleted the key. etcd then stores only the key: the
    /// other fields are zero and the value is empty.
    pub tombstone: bool,
    /// The key.
    pub key: Vec<u8>,
    /// The main revision at which this key was last created.
    pub create_revision: i64,
    /// The main revision of this change (equals `main` for a put).
    pub mod_revision: i64,
    /// How many times the key was written since it was created (1 at creation).
    pub version: i64,
    /// The value.
    pub value: Vec<u8>,
    /// The lease the key is attached to; 0 for none.
    pub lease: i64,
}

/// One lease from the "lease" bucket.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EtcdLease {
    /// The lease ID.
    pub id: i64,
    /// The TTL the lease was granted with, in seconds.
    pub ttl_seconds: i64,
}

/// Where in the file a page lies, for error messages.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PageAt {
    /// A page of the file, by page id.
    Page(u64),
    /// The page stored inside the value of a small ("inline") bucket.
    Inline(&'static str),
}

impl fmt::Display for PageAt {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            PageAt::Page(id) => write!(f, "page {id}"),
            PageAt::Inline(bucket) => write!(f, "the inline page of bucket \"{bucket}\""),
        }
    }
}

/// Why one meta page was not used.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum MetaFault {
    /// The file ends before the meta fields.
    #[error("the file ends before it")]
    Missing,
    /// Page 0 was unusable, and no page size put a valid page 1 anywhere.
    #[error("found at no possible page size")]
    NotFound,
    /// The page header does not name a meta page with the right id.
    #[error("its page header is not that of a meta page")]
    Header,
    /// The magic is not bbolt's 0xED0CDAED.
    #[error("no bbolt magic 0xED0CDAED")]
    Magic,
    /// A file format version other than bbolt's 2.
    #[error("format version {0}, not 2")]
    Version(u32),
    /// The FNV-1a 64 checksum does not match the meta fields.
    #[error("checksum mismatch")]
    Checksum,
    /// The page size is no power of two in range, or disagrees with where page 1 lies.
    #[error("page size {0} is not a power of two from 1 KiB to 16 MiB matching the file")]
    PageSize(u32),
}

/// What is wrong with a file that [`read`] refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum EtcdDbError {
    /// The file is bigger than [`DB_BYTES_MAX`].
    #[error("the file is {file_bytes} bytes, over the {limit_bytes}-byte limit")]
    TooLarge {
        /// The file's length in bytes.
        file_bytes: u64,
        /// The limit, [`DB_BYTES_MAX`].
        limit_bytes: u64,
    },
    /// The trailing SHA-256 does not match the database before it.
    #[error("SHA-256 mismatch: the file is damaged")]
    HashMismatch,
    /// Neither meta page can be used.
    #[error("neither meta page is valid (page 0: {page0}; page 1: {page1})")]
    NoValidMeta {
        /// Why page 0 was refused.
        page0: MetaFault,
        /// Why page 1 was refused.
        page1: MetaFault,
    },
    /// The file is not whole pages, nor whole pages and a hash: it was cut or padded.
    #[error("the file ends {trailing_bytes} bytes into a {page_bytes}-byte page and has no SHA-256 after it: it was cut or padded")]
    TrailingBytes {
        /// Bytes past the last whole page.
        trailing_bytes: usize,
        /// The page size.
        page_bytes: usize,
    },
    /// The meta page counts more pages than the file holds (a truncated file).
    #[error("the meta page says the database has {meta_pages} pages, but the file holds {file_pages}")]
    PagesBeyondFile {
        /// The page count (high water mark) in the meta page.
        meta_pages: u64,
        /// Whole pages in the file.
        file_pages: u64,
    },
    /// A page id points past the database.
    #[error("page {page} is out of the file's {pages} pages")]
    PageOutOfFile {
        /// The page id.
        page: u64,
        /// Pages in the database.
        pages: u64,
    },
    /// A page's overflow pages run past the database.
    #[error("page {page} and its {overflow} overflow pages run past the file's {pages} pages")]
    OverflowOutOfFile {
        /// The page id.
        page: u64,
        /// The page's overflow count.
        overflow: u32,
        /// Pages in the database.
        pages: u64,
    },
    /// A page's header names another page id.
    #[error("page {page} says it is page {header_id}")]
    PageIdMismatch {
        /// Where the page was read.
        page: u64,
        /// The id in its header.
        header_id: u64,
    },
    /// A page is reached a second time: the tree has a cycle or shares a page.
    #[error("page {page} is reached twice: the tree has a cycle or a shared page")]
    PageReachedTwice {
        /// The page id.
        page: u64,
    },
    /// A tree page is neither a branch nor a leaf.
    #[error("{at} has flags {flags:#06x}, not a branch (0x0001) or leaf (0x0002) page")]
    PageKind {
        /// The page.
        at: PageAt,
        /// Its flags.
        flags: u16,
    },
    /// A page claims more elements than it has room for.
    #[error("{at} claims {count} elements but only {fits} fit in it")]
    TooManyElements {
        /// The page.
        at: PageAt,
        /// The claimed element count.
        count: usize,
        /// How many 16-byte elements fit after the header.
        fits: usize,
    },
    /// An element's key or value lies outside its page.
    #[error("element {index} of {at} points outside the page")]
    ElementOutOfPage {
        /// The page.
        at: PageAt,
        /// The element's index.
        index: usize,
    },
    /// Branch pages nest deeper than [`TREE_DEPTH_MAX`].
    #[error("{at} is nested more than {depth_max} branch levels deep")]
    TooDeep {
        /// The page past the limit.
        at: PageAt,
        /// The limit.
        depth_max: usize,
    },
    /// A bucket's keys are not strictly increasing, as bbolt keeps them.
    #[error("bucket \"{bucket}\" has a key out of order or repeated at entry {index}")]
    KeysOutOfOrder {
        /// The bucket.
        bucket: &'static str,
        /// The entry that is not greater than the one before.
        index: usize,
    },
    /// A bucket etcd always creates is missing.
    #[error("there is no \"{bucket}\" bucket: this is not an etcd database")]
    MissingBucket {
        /// The bucket.
        bucket: &'static str,
    },
    /// A top-level name etcd uses for a bucket holds a plain value.
    #[error("\"{bucket}\" is a plain key in the root, not a bucket")]
    NotABucket {
        /// The name.
        bucket: &'static str,
    },
    /// A bucket's value is too short for a bucket header (and an inline page).
    #[error("bucket \"{bucket}\" has a {value_bytes}-byte value, too short for its header")]
    BadBucketValue {
        /// The bucket.
        bucket: &'static str,
        /// The value's length.
        value_bytes: usize,
    },
    /// etcd's buckets hold no nested buckets.
    #[error("bucket \"{bucket}\" holds a nested bucket at entry {index}, which etcd never writes")]
    NestedBucket {
        /// The bucket.
        bucket: &'static str,
        /// The entry.
        index: usize,
    },
    /// A key of etcd's "key" or "lease" bucket is not in etcd's form.
    #[error("\"{bucket}\" bucket entry {index} has a {key_bytes}-byte key, not {expected}")]
    BadKey {
        /// The bucket.
        bucket: &'static str,
        /// The entry.
        index: usize,
        /// The key's length.
        key_bytes: usize,
        /// What etcd writes there.
        expected: &'static str,
    },
    /// Two entries of the "key" bucket hold the same revision.
    #[error("revision {main}_{sub} is stored twice")]
    DuplicateRevision {
        /// Main revision.
        main: i64,
        /// Sub revision.
        sub: i64,
    },
    /// A "key" bucket value is not a KeyValue protobuf.
    #[error("revision {main}_{sub} holds no valid mvccpb.KeyValue: {source}")]
    BadKeyValue {
        /// Main revision.
        main: i64,
        /// Sub revision.
        sub: i64,
        /// The protobuf error.
        source: prost::DecodeError,
    },
    /// A "lease" bucket value is not a Lease protobuf.
    #[error("lease {id} holds no valid leasepb.Lease: {source}")]
    BadLease {
        /// The lease ID from the key.
        id: i64,
        /// The protobuf error.
        source: prost::DecodeError,
    },
    /// A lease is stored under another lease's ID.
    #[error("lease {key_id} is stored with ID {value_id} inside")]
    LeaseIdMismatch {
        /// The ID in the bbolt key.
        key_id: i64,
        /// The ID in the protobuf.
        value_id: i64,
    },
    /// A "meta" bucket value has the wrong form.
    #[error("\"meta\" key \"{key}\" holds {value_bytes} bytes, not {expected}")]
    BadMetaValue {
        /// The meta key.
        key: &'static str,
        /// The value's length.
        value_bytes: usize,
        /// What etcd writes there.
        expected: &'static str,
    },
}

/// etcd's `mvccpb.KeyValue`.
#[derive(Clone, PartialEq, Message)]
struct KeyValuePb {
    #[prost(bytes = "vec", tag = "1")]
    key: Vec<u8>,
    #[prost(int64, tag = "2")]
    create_revision: i64,
    #[prost(int64, tag = "3")]
    mod_revision: i64,
    #[prost(int64, tag = "4")]
    version: i64,
    #[prost(bytes = "vec", tag = "5")]
    value: Vec<u8>,
    #[prost(int64, tag = "6")]
    lease: i64,
}

/// etcd's `leasepb.Lease`. `RemainingTTL` (tag 3) is set only by lease
/// checkpoints and is not needed to recreate the lease.
#[derive(Clone, PartialEq, Message)]
struct LeasePb {
    #[prost(int64, tag = "1")]
    id: i64,
    #[prost(int64, tag = "2")]
    ttl: i64,
}

/// True when `bytes` starts like a bbolt file: the magic 0xED0CDAED at byte 16,
/// the first meta field after page 0's 16-byte header. Cheap; proves nothing.
pub fn looks_like_etcd_db(bytes: &[u8]) -> bool {
    bytes.get(16..20) == Some(bolt::MAGIC.to_le_bytes().as_slice())
}

/// Reads an etcd v3 snapshot (or a bare bbolt database) and returns its MVCC data.
pub fn read(bytes: &[u8]) -> Result<EtcdDb, EtcdDbError> {
    read_at_most(bytes, DB_BYTES_MAX)
}

/// [`read`] with another size limit, so that tests need no 8 GiB buffer.
fn read_at_most(bytes: &[u8], file_bytes_max: u64) -> Result<EtcdDb, EtcdDbError> {
    let file_bytes = bytes.len() as u64;
    if file_bytes > file_bytes_max {
        return Err(EtcdDbError::TooLarge {
            file_bytes,
            limit_bytes: file_bytes_max,
        });
    }
    let (db, hash_verified) = match bytes.len().checked_sub(SHA256_BYTES) {
        Some(db_bytes) if bytes.len() % HASH_ALIGN_BYTES == SHA256_BYTES => {
            let (db, hash) = bytes.split_at(db_bytes);
            if Sha256::digest(db).as_slice() != hash {
                return Err(EtcdDbError::HashMismatch);
            }
            (db, true)
        }
        _ => (bytes, false),
    };
    let mut bolt = bolt::Bolt::open(db)?;
    let root = bolt.root_entries()?;
    let mut bucket = |name: &'static str| -> Result<Option<Vec<bolt::Entry<'_>>>, EtcdDbError> {
        match root.iter().find(|entry| entry.key == name.as_bytes()) {
            None => Ok(None),
            Some(entry) if !entry.is_bucket => Err(EtcdDbError::NotABucket { bucket: name }),
            Some(entry) => bolt.bucket_entries(name, entry.value).map(Some),
        }
    };
    let keys = bucket("key")?.ok_or(EtcdDbError::MissingBucket { bucket: "key" })?;
    let leases = bucket("lease")?.unwrap_or_default();
    let meta = bucket("meta")?.unwrap_or_default();
    let meta_value = |key: &str| {
        meta.iter()
            .find(|entry| entry.key == key.as_bytes() && !entry.is_bucket)
    };
    let compact_revision = |key: &'static str| {
        meta_value(key)
            .map(|entry| {
                parse_revision(entry.value)
                    .map(|(main, _)| main)
                    .ok_or(EtcdDbError::BadMetaValue {
                        key,
                        value_bytes: entry.value.len(),
                        expected: "a 17-byte revision (main '_' sub)",
                    })
            })
            .transpose()
    };
    let consistent_index = meta_value("consistent_index")
        .map(|entry| {
            let value: Result<[u8; 8], _> = entry.value.try_into();
            value.map(u64::from_be_bytes).map_err(|_| EtcdDbError::BadMetaValue {
                key: "consistent_index",
                value_bytes: entry.value.len(),
                expected: "an 8-byte big-endian index",
            })
        })
        .transpose()?;
    Ok(EtcdDb {
        revisions: decode_revisions(&keys)?,
        leases: decode_leases(&leases)?,
        scheduled_compact_revision: compact_revision("scheduledCompactRev")?,
        finished_compact_revision: compact_revision("finishedCompactRev")?,
        consistent_index,
        hash_verified,
    })
}

/// Decodes etcd's 17-byte revision (8-byte big-endian main, `_`, 8-byte
/// big-endian sub), refusing the negative numbers etcd never writes.
fn parse_revision(bytes: &[u8]) -> Option<(i64, i64)> {
    let (main, rest) = bytes.split_first_chunk::<8>()?;
    let (&separator, sub) = rest.split_first()?;
    let sub: [u8; 8] = sub.try_into().ok()?;
    let (main, sub) = (i64::from_be_bytes(*main), i64::from_be_bytes(sub));
    (separator == b'_' && main >= 1 && sub >= 0).then_some((main, sub))
}

/// Decodes the "key" bucket. bbolt's key order is revision order, since
/// revisions are non-negative big-endian numbers.
fn decode_revisions(entries: &[bolt::Entry<'_>]) -> Result<Vec<KeyRevision>, EtcdDbError> {
    let mut revisions: Vec<KeyRevision> = Vec::with_capacity(entries.len());
    for (index, entry) in entries.iter().enumerate() {
        if entry.is_bucket {
            return Err(EtcdDbError::NestedBucket { bucket: "key", index });
        }
        let bad_key = EtcdDbError::BadKey {
            bucket: "key",
            index,
            key_bytes: entry.key.len(),
            expected: "main '_' sub [t], with main >= 1 and sub >= 0",
        };
        let (revision, tombstone) = match entry.key.split_at_checked(REVISION_BYTES) {
            Some((revision, [])) => (revision, false),
            Some((revision, [b't'])) => (revision, true),
            _ => return Err(bad_key),
        };
        let (main, sub) = parse_revision(revision).ok_or(bad_key)?;
        // "1_2" and "1_2t" are distinct bbolt keys but the same revision.
        if revisions
            .last()
            .is_some_and(|last| (last.main, last.sub) == (main, sub))
        {
            return Err(EtcdDbError::DuplicateRevision { main, sub });
        }
        let kv = KeyValuePb::decode(entry.value).map_err(|source| EtcdDbError::BadKeyValue { main, sub, source })?;
        revisions.push(KeyRevision {
            main,
            sub,
            tombstone,
            key: kv.key,
            create_revision: kv.create_revision,
            mod_revision: kv.mod_revision,
            version: kv.version,
            value: kv.value,
            lease: kv.lease,
        });
    }
    Ok(revisions)
}

/// Decodes the "lease" bucket, sorted by ID as a signed number.
fn decode_leases(entries: &[bolt::Entry<'_>]) -> Result<Vec<EtcdLease>, EtcdDbError> {
    let mut leases = Vec::with_capacity(entries.len());
    for (index, entry) in entries.iter().enumerate() {
        if entry.is_bucket {
            return Err(EtcdDbError::NestedBucket { bucket: "lease", index });
        }
        let key: [u8; 8] = entry.key.try_into().map_err(|_| EtcdDbError::BadKey {
            bucket: "lease",
            index,
            key_bytes: entry.key.len(),
            expected: "an 8-byte lease ID",
        })?;
        let id = i64::from_be_bytes(key);
        let lease = LeasePb::decode(entry.value).map_err(|source| EtcdDbError::BadLease { id, source })?;
        if lease.id != id {
            return Err(EtcdDbError::LeaseIdMismatch {
                key_id: id,
                value_id: lease.id,
            });
        }
        leases.push(EtcdLease {
            id,
            ttl_seconds: lease.ttl,
        });
    }
    leases.sort_by_key(|lease| lease.id);
    Ok(leases)
}
