//! A read-only walk over a bbolt database held in memory.
//!
//! The layout follows bbolt's `internal/common` (page.go, meta.go, bucket.go),
//! little-endian as written on amd64. Every offset read from the file is
//! checked against the slice it points into, every page id against the
//! database's page count, and every page is walked at most once, so a damaged
//! or hostile file ends in an [`EtcdDbError`], never a panic or a hang.

use crate::{EtcdDbError, MetaFault, PageAt};

/// Bytes of the header that starts every page: id u64, flags u16, count u16, overflow u32.
const PAGE_HEADER_BYTES: usize = 16;
/// Bytes of a branch element (pos u32, ksize u32, pgid u64) and of a leaf
/// element (flags u32, pos u32, ksize u32, vsize u32): both are 16.
const ELEMENT_BYTES: usize = 16;
/// Bytes of the meta fields, checksum included, that follow a meta page's header.
const META_BYTES: usize = 64;
/// Bytes of the meta fields covered by the checksum (all before the checksum).
const META_CHECKSUMMED_BYTES: usize = 56;
/// Bytes of a bucket's on-file header: root pgid u64, sequence u64.
const BUCKET_HEADER_BYTES: usize = 16;

/// bbolt's file magic, the first meta field.
pub(crate) const MAGIC: u32 = 0xED0C_DAED;
/// The data file format version bbolt writes (and checks on open).
const VERSION: u32 = 2;

const PAGE_FLAG_BRANCH: u16 = 0x01;
const PAGE_FLAG_LEAF: u16 = 0x02;
const PAGE_FLAG_META: u16 = 0x04;
/// Leaf element flag marking the value as a nested bucket.
const LEAF_FLAG_BUCKET: u32 = 0x01;

/// Smallest page size accepted; bbolt starts its search for the second meta page at 1 KiB.
pub const PAGE_BYTES_MIN: usize = 1024;
/// Largest page size accepted; bbolt ends its search for the second meta page at 16 MiB.
pub const PAGE_BYTES_MAX: usize = 16 * 1024 * 1024;
/// Deepest chain of branch pages followed. bbolt keeps its B+trees balanced and
/// a few levels deep; the bound keeps a crafted file from exhausting the stack.
pub const TREE_DEPTH_MAX: usize = 64;

fn array_at<const N: usize>(bytes: &[u8], offset: usize) -> Option<[u8; N]> {
    bytes.get(offset..offset.checked_add(N)?)?.try_into().ok()
}
fn u16_at(bytes: &[u8], offset: usize) -> Option<u16> {
    array_at(bytes, offset).map(u16::from_le_bytes)
}
fn u32_at(bytes: &[u8], offset: usize) -> Option<u32> {
    array_at(bytes, offset).map(u32::from_le_bytes)
}
fn u64_at(bytes: &[u8], offset: usize) -> Option<u64> {
    array_at(bytes, offset).map(u64::from_le_bytes)
}

/// `len` bytes at `offset` in `bytes`, or None when they do not all lie inside.
fn slice_at(bytes: &[u8], offset: usize, len: usize) -> Option<&[u8]> {
    bytes.get(offset..offset.checked_add(len)?)
}

/// FNV-1a 64, the hash bbolt's meta checksum uses (Go's `hash/fnv.New64a`).
pub(crate) fn fnv1a_64(bytes: &[u8]) -> u64 {
    bytes.iter().fold(0xcbf2_9ce4_8422_2325, |hash, &byte| {
        (hash ^ u64::from(byte)).wrapping_mul(0x0000_0100_0000_01b3)
    })
}

/// `bytes` as a page size, if it is a power of two within bounds.
fn page_size(bytes: u32) -> Option<usize> {
    let bytes = usize::try_from(bytes).ok()?;
    (bytes.is_power_of_two() && (PAGE_BYTES_MIN..=PAGE_BYTES_MAX).contains(&bytes)).then_some(bytes)
}

/// The meta fields this reader needs.
#[derive(Debug, Clone, Copy)]
struct Meta {
    page_bytes: usize,
    root_page: u64,
    /// The high water mark: pages 0 .. this are the database.
    pages: u64,
    txid: u64,
}

/// Reads and validates the meta page starting at `offset`, which must be page `page_id`.
fn parse_meta(db: &[u8], offset: usize, page_id: u64) -> Result<Meta, MetaFault> {
    let page = slice_at(db, offset, PAGE_HEADER_BYTES + META_BYTES).ok_or(MetaFault::Missing)?;
    let field = |at: usize| u32_at(page, PAGE_HEADER_BYTES + at).unwrap_or_default();
    let field64 = |at: usize| u64_at(page, PAGE_HEADER_BYTES + at).unwrap_or_default();
    // bbolt only writes meta page k at offset k * page size with id k; the
    // header is not checksummed, so it is checked on its own.
    if u64_at(page, 0) != Some(page_id) || u16_at(page, 8) != Some(PAGE_FLAG_META) {
        return Err(MetaFault::Header);
    }
    if field(0) != MAGIC {
        return Err(MetaFault::Magic);
    }
    if field(4) != VERSION {
        return Err(MetaFault::Version(field(4)));
    }
    let checksummed = page
        .get(PAGE_HEADER_BYTES..PAGE_HEADER_BYTES + META_CHECKSUMMED_BYTES)
        .ok_or(MetaFault::Missing)?;
    if fnv1a_64(checksummed) != field64(META_CHECKSUMMED_BYTES) {
        return Err(MetaFault::Checksum);
    }
    let page_bytes = page_size(field(8));
    // Page 1 sits one page in, so its own offset is the page size.
    if page_bytes.is_none() || (page_id == 1 && page_bytes != Some(offset)) {
        return Err(MetaFault::PageSize(field(8)));
    }
    Ok(Meta {
        page_bytes: page_bytes.unwrap_or(PAGE_BYTES_MIN),
        root_page: field64(16),
        pages: field64(40),
        txid: field64(48),
    })
}

/// One leaf entry, borrowed from the file.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Entry<'a> {
    pub key: &'a [u8],
    pub value: &'a [u8],
    /// The value is a bucket header (and maybe an inline page), not data.
    pub is_bucket: bool,
}

/// The database part of a snapshot (no trailing hash), with its current meta.
pub(crate) struct Bolt<'a> {
    db: &'a [u8],
    meta: Meta,
    /// Pages already walked: a second visit means a cycle or a shared page.
    seen: Vec<bool>,
}

impl<'a> Bolt<'a> {
    /// Picks the valid meta page with the higher txid, as bbolt does on open.
    pub fn open(db: &'a [u8]) -> Result<Self, EtcdDbError> {
        let meta0 = parse_meta(db, 0, 0);
        let meta1 = match meta0 {
            Ok(meta) => parse_meta(db, meta.page_bytes, 1),
            // Without page 0 the page size is unknown: try each possible one,
            // and if none fits, say what is wrong at the size page 0 claims.
            Err(_) => {
                let sizes = PAGE_BYTES_MIN.trailing_zeros()..=PAGE_BYTES_MAX.trailing_zeros();
                let found = sizes.map(|shift| parse_meta(db, 1 << shift, 1)).find(Result::is_ok);
                let claimed = u32_at(db, PAGE_HEADER_BYTES + 8).and_then(page_size);
                found.unwrap_or_else(|| claimed.map_or(Err(MetaFault::NotFound), |size| parse_meta(db, size, 1)))
            }
        };
        let meta = match (meta0, meta1) {
            (Ok(a), Ok(b)) => [a, b].into_iter().max_by_key(|meta| meta.txid).unwrap_or(a),
            (Ok(only), Err(_)) | (Err(_), Ok(only)) => only,
            (Err(page0), Err(page1)) => return Err(EtcdDbError::NoValidMeta { page0, page1 }),
        };
        let trailing_bytes = db.len() % meta.page_bytes;
        if trailing_bytes != 0 {
            return Err(EtcdDbError::TrailingBytes {
                trailing_bytes,
                page_bytes: meta.page_bytes,
            });
        }
        let file_pages = (db.len() / meta.page_bytes) as u64;
        if meta.pages > file_pages {
            return Err(EtcdDbError::PagesBeyondFile {
                meta_pages: meta.pages,
                file_pages,
            });
        }
        // meta.pages <= file_pages, which came from a usize.
        let mut seen = vec![false; usize::try_from(meta.pages).unwrap_or(0)];
        // The meta pages belong to no tree.
        seen.iter_mut().take(2).for_each(|page| *page = true);
        Ok(Bolt { db, meta, seen })
    }

    /// The entries of the root bucket: one per top-level bucket.
    pub fn root_entries(&mut self) -> Result<Vec<Entry<'a>>, EtcdDbError> {
        let root = self.meta.root_page;
        let page = self.page(root)?;
        self.tree_entries(page, PageAt::Page(root), "(root)")
    }

    /// The entries of bucket `name`, whose header and maybe inline page is `value`.
    pub fn bucket_entries(&mut self, name: &'static str, value: &'a [u8]) -> Result<Vec<Entry<'a>>, EtcdDbError> {
        let root = u64_at(value, 0).ok_or(EtcdDbError::BadBucketValue {
            bucket: name,
            value_bytes: value.len(),
        })?;
        if root != 0 {
            let page = self.page(root)?;
            return self.tree_entries(page, PageAt::Page(root), name);
        }
        // Inline bucket: a single leaf page stored right after the header.
        let page = value
            .get(BUCKET_HEADER_BYTES..)
            .filter(|page| page.len() >= PAGE_HEADER_BYTES)
            .ok_or(EtcdDbError::BadBucketValue {
                bucket: name,
                value_bytes: value.len(),
            })?;
        if u16_at(page, 8) != Some(PAGE_FLAG_LEAF) {
            let flags = u16_at(page, 8).unwrap_or_default();
            return Err(EtcdDbError::PageKind {
                at: PageAt::Inline(name),
                flags,
            });
        }
        self.tree_entries(page, PageAt::Inline(name), name)
    }

    /// Walks the tree under `page` and checks that its keys come strictly in order.
    fn tree_entries(
        &mut self,
        page: &'a [u8],
        at: PageAt,
        bucket: &'static str,
    ) -> Result<Vec<Entry<'a>>, EtcdDbError> {
        let mut entries = Vec::new();
        self.walk(page, at, 0, &mut entries)?;
        if let Some(index) = entries
            .windows(2)
            .position(|pair| matches!(pair, [a, b] if a.key >= b.key))
        {
            return Err(EtcdDbError::KeysOutOfOrder {
                bucket,
                index: index + 1,
            });
        }
        Ok(entries)
    }

    /// The bytes of page `id` and its overflow pages, marking them walked.
    fn page(&mut self, id: u64) -> Result<&'a [u8], EtcdDbError> {
        let pages = self.meta.pages;
        let out_of_file = EtcdDbError::PageOutOfFile { page: id, pages };
        if id >= pages {
            return Err(out_of_file);
        }
        // id < pages, and pages * page_bytes <= db.len(), so none of this overflows.
        let page_bytes = self.meta.page_bytes;
        let start = usize::try_from(id).map_err(|_| out_of_file.clone())? * page_bytes;
        let header = slice_at(self.db, start, PAGE_HEADER_BYTES).ok_or(out_of_file)?;
        let header_id = u64_at(header, 0).unwrap_or_default();
        if header_id != id {
            return Err(EtcdDbError::PageIdMismatch { page: id, header_id });
        }
        let overflow = u32_at(header, 12).unwrap_or_default();
        let end = id.checked_add(u64::from(overflow)).and_then(|last| last.checked_add(1));
        let end = end.filter(|&end| end <= pages).ok_or(EtcdDbError::OverflowOutOfFile {
            page: id,
            overflow,
            pages,
        })?;
        for page in id..end {
            let seen = usize::try_from(page).ok().and_then(|page| self.seen.get_mut(page));
            match seen {
                Some(seen) if !*seen => *seen = true,
                _ => return Err(EtcdDbError::PageReachedTwice { page }),
            }
        }
        let len = usize::try_from(end - id)
            .ok()
            .and_then(|count| count.checked_mul(page_bytes));
        len.and_then(|len| slice_at(self.db, start, len))
            .ok_or(EtcdDbError::OverflowOutOfFile {
                page: id,
                overflow,
                pages,
            })
    }

    /// Appends the leaf entries under `page` to `out`, in tree order.
    fn walk(&mut self, page: &'a [u8], at: PageAt, depth: usize, out: &mut Vec<Entry<'a>>) -> Result<(), EtcdDbError> {
        if depth > TREE_DEPTH_MAX {
            return Err(EtcdDbError::TooDeep {
                at,
                depth_max: TREE_DEPTH_MAX,
            });
        }
        let flags = u16_at(page, 8).unwrap_or_default();
        let count = usize::from(u16_at(page, 10).unwrap_or_default());
        // Check the count before anything is read or allocated for it.
        let fits = page.len().saturating_sub(PAGE_HEADER_BYTES) / ELEMENT_BYTES;
        if count > fits {
            return Err(EtcdDbError::TooManyElements { at, count, fits });
        }
        // index < count <= fits (at most 65535), so the element lies in the page.
        let element = |index: usize| {
            let offset = PAGE_HEADER_BYTES + index * ELEMENT_BYTES;
            let word = |i: usize| u32_at(page, offset + 4 * i).unwrap_or_default();
            (offset, [word(0), word(1), word(2), word(3)])
        };
        // `pos` counts from the element's own first byte.
        let bytes_at = |offset: usize, pos: u32, skip: u32, len: u32, index: usize| {
            let start = usize::try_from(u64::from(pos) + u64::from(skip))
                .ok()
                .and_then(|pos| offset.checked_add(pos));
            start
                .and_then(|start| slice_at(page, start, usize::try_from(len).ok()?))
                .ok_or(EtcdDbError::ElementOutOfPage { at, index })
        };
        match flags {
            PAGE_FLAG_BRANCH => {
                for index in 0..count {
                    let (offset, [pos, ksize, low, high]) = element(index);
                    bytes_at(offset, pos, 0, ksize, index)?;
                    let child = u64::from(low) | (u64::from(high) << 32);
                    let child_page = self.page(child)?;
                    self.walk(child_page, PageAt::Page(child), depth + 1, out)?;
                }
            }
            PAGE_FLAG_LEAF => {
                out.reserve(count);
                for index in 0..count {
                    let (offset, [flags, pos, ksize, vsize]) = element(index);
                    let key = bytes_at(offset, pos, 0, ksize, index)?;
                    let value = bytes_at(offset, pos, ksize, vsize, index)?;
                    out.push(Entry {
                        key,
                        value,
                        is_bucket: flags & LEAF_FLAG_BUCKET != 0,
                    });
                }
            }
            _ => return Err(EtcdDbError::PageKind { at, flags }),
        }
        Ok(())
    }
}
