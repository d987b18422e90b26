//! Unit tests on damaged copies of the real fixture and on small hand-built files.
//!
//! Most mutate the database without its trailing hash, so that the damage
//! reaches the bbolt walk instead of being caught by the SHA-256 at once.

use super::*;
use crate::bolt::fnv1a_64;

const FIXTURE: &[u8] = include_bytes!("../tests/fixtures/etcd-3.4.23.db");
/// The fixture's page size (amd64's 4 KiB).
const PAGE: usize = 4096;
/// The fixture's page count: its database is exactly its pages.
const PAGES: u64 = ((FIXTURE.len() - SHA256_BYTES) / PAGE) as u64;

/// The fixture's database without the hash etcdctl appended.
fn bare() -> Vec<u8> {
    FIXTURE[..FIXTURE.len() - SHA256_BYTES].to_vec()
}

fn with_hash(db: &[u8]) -> Vec<u8> {
    let mut file = db.to_vec();
    file.extend_from_slice(Sha256::digest(db).as_slice());
    file
}

fn baseline() -> EtcdDb {
    read(&bare()).expect("the bare fixture reads")
}

/// A short account of a result, so that a failing assertion does not print
/// the whole database: "same", "other data", or the error's message.
fn outcome(result: &Result<EtcdDb, EtcdDbError>, base: &EtcdDb) -> String {
    match result {
        Ok(db) if db == base => "same".into(),
        Ok(_) => "other data".into(),
        Err(error) => error.to_string(),
    }
}

fn put_u16(bytes: &mut [u8], at: usize, value: u16) {
    bytes[at..at + 2].copy_from_slice(&value.to_le_bytes());
}
fn put_u32(bytes: &mut [u8], at: usize, value: u32) {
    bytes[at..at + 4].copy_from_slice(&value.to_le_bytes());
}
fn put_u64(bytes: &mut [u8], at: usize, value: u64) {
    bytes[at..at + 8].copy_from_slice(&value.to_le_bytes());
}
fn get_u32(bytes: &[u8], at: usize) -> u32 {
    u32::from_le_bytes(bytes[at..at + 4].try_into().unwrap())
}

/// The id of the first page of the fixture with these page flags.
fn page_with_flags(db: &[u8], flags: u16) -> usize {
    (2..db.len() / PAGE)
        .find(|&id| db[id * PAGE + 8..id * PAGE + 10] == flags.to_le_bytes() && get_u32(db, id * PAGE) as usize == id)
        .expect("the fixture has such a page")
}

/// A small deterministic generator (xorshift64*), to need no rand crate.
struct Rng(u64);
impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }
    fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }
}

#[test]
fn the_fixture_has_the_shapes_the_tests_below_damage() {
    let db = bare();
    assert_eq!(db.len() % PAGE, 0);
    let branch = page_with_flags(&db, 0x01);
    assert!(
        get_u32(&db, branch * PAGE + 10) & 0xffff >= 2,
        "a branch page over several leaves"
    );
    let overflowing = (2..db.len() / PAGE).any(|id| get_u32(&db, id * PAGE + 12) > 0);
    assert!(overflowing, "a leaf with an overflow page");
}

#[test]
fn every_byte_flipped_in_the_meta_pages_is_refused_or_changes_nothing() {
    let base = baseline();
    // etcd writes both meta pages alike (meta 1 one txid lower), so damage to
    // either one alone leaves the other to read the very same data from:
    // such a flip is not even refused.
    for offset in 0..2 * PAGE {
        for mask in [0x01, 0x80, 0xff] {
            let mut db = bare();
            db[offset] ^= mask;
            assert_eq!(
                outcome(&read(&db), &base),
                "same",
                "flipping byte {offset} with {mask:#x}"
            );
        }
    }
}

#[test]
fn the_same_byte_flipped_in_both_meta_pages_is_refused_when_checked() {
    let base = baseline();
    // Page header (id, flags, count, overflow) then the 64 meta bytes.
    for offset in 0..80 {
        let mut db = bare();
        db[offset] ^= 0x01;
        db[PAGE + offset] ^= 0x01;
        let result = read(&db);
        // count and overflow mean nothing on a meta page; all else is checked.
        if (10..16).contains(&offset) {
            assert_eq!(outcome(&result, &base), "same", "byte {offset}");
        } else {
            let refused = matches!(result, Err(EtcdDbError::NoValidMeta { .. }));
            assert!(refused, "byte {offset}: {}", outcome(&result, &base));
        }
    }
    let mut db = bare();
    db[16 + 60] ^= 1;
    db[PAGE + 16 + 60] ^= 1;
    let error = read(&db).unwrap_err().to_string();
    assert_eq!(
        error,
        "neither meta page is valid (page 0: checksum mismatch; page 1: checksum mismatch)"
    );
}

/// Sets meta page `page`'s txid and root page and reseals its checksum.
fn rewrite_meta(db: &mut [u8], page: usize, txid: u64, root: u64) {
    let meta = page * PAGE + 16;
    put_u64(db, meta + 16, root);
    put_u64(db, meta + 48, txid);
    let sum = fnv1a_64(&db[meta..meta + 56]);
    put_u64(db, meta + 56, sum);
}

#[test]
fn the_valid_meta_with_the_higher_txid_wins() {
    let db = bare();
    let txid = u64::from_le_bytes(db[16 + 48..16 + 56].try_into().unwrap());
    // Meta 1 with a newer txid and a root past the file: it is chosen, and fails.
    let mut newer = db.clone();
    rewrite_meta(&mut newer, 1, txid + 1, 500);
    assert_eq!(
        read(&newer),
        Err(EtcdDbError::PageOutOfFile {
            page: 500,
            pages: PAGES
        })
    );
    assert_eq!(
        read(&newer).unwrap_err().to_string(),
        format!("page 500 is out of the file's {PAGES} pages")
    );
    // The same meta 1 with an older txid is ignored.
    let mut older = db.clone();
    rewrite_meta(&mut older, 1, txid - 5, 500);
    assert_eq!(outcome(&read(&older), &baseline()), "same");
}

#[test]
fn truncations_are_refused_cleanly() {
    let mut cuts: Vec<usize> = (0..FIXTURE.len()).step_by(37).collect();
    for page in 0..=FIXTURE.len() / PAGE {
        cuts.extend([
            page * PAGE,
            page * PAGE + 1,
            (page * PAGE).saturating_sub(1),
            page * PAGE + 32,
        ]);
    }
    let bare_len = FIXTURE.len() - SHA256_BYTES;
    for cut in cuts.into_iter().filter(|&cut| cut < FIXTURE.len() && cut != bare_len) {
        let result = read(&FIXTURE[..cut]);
        assert!(result.is_err(), "a file cut to {cut} bytes was read");
        if cut % PAGE == 0 && cut >= 2 * PAGE {
            let file_pages = (cut / PAGE) as u64;
            assert_eq!(
                result,
                Err(EtcdDbError::PagesBeyondFile {
                    meta_pages: PAGES,
                    file_pages
                })
            );
        }
        if cut % 512 == 32 {
            assert_eq!(result, Err(EtcdDbError::HashMismatch), "cut to {cut} bytes");
        }
    }
}

#[test]
fn a_wrong_sha256_is_refused() {
    let mut file = FIXTURE.to_vec();
    *file.last_mut().unwrap() ^= 1;
    assert_eq!(read(&file), Err(EtcdDbError::HashMismatch));
    assert_eq!(
        read(&file).unwrap_err().to_string(),
        "SHA-256 mismatch: the file is damaged"
    );
    // A byte no reader looks at (inside page 0, past the meta) is still covered.
    let mut file = FIXTURE.to_vec();
    file[2000] ^= 1;
    assert_eq!(outcome(&read(&bare_of(&file)), &baseline()), "same");
    assert_eq!(read(&file), Err(EtcdDbError::HashMismatch));
    // The right hash of a changed file is accepted.
    assert_eq!(read(&with_hash(&bare_of(&file))).map(|db| db.hash_verified), Ok(true));
}

fn bare_of(file: &[u8]) -> Vec<u8> {
    file[..file.len() - SHA256_BYTES].to_vec()
}

#[test]
fn random_bytes_are_refused() {
    let mut rng = Rng(0x5eed_0fe7_cd00);
    for len in [0, 1, 16, 20, 80, 544, 4096, 8192, 8224, 3 * PAGE, 16416, FIXTURE.len()] {
        for _ in 0..20 {
            let mut bytes: Vec<u8> = (0..len).map(|_| rng.next() as u8).collect();
            assert!(read(&bytes).is_err(), "{len} random bytes were read");
            // Even with bbolt's magic where it belongs.
            if len >= 20 {
                bytes[16..20].copy_from_slice(&bolt::MAGIC.to_le_bytes());
                assert!(looks_like_etcd_db(&bytes));
                assert!(read(&bytes).is_err(), "{len} random bytes with a magic were read");
            }
        }
    }
}

#[test]
fn a_branch_page_pointing_to_itself_is_refused() {
    let mut db = bare();
    let branch = page_with_flags(&db, 0x01);
    // The first branch element's pgid, 8 bytes into the element.
    put_u64(&mut db, branch * PAGE + 16 + 8, branch as u64);
    let cycle = Err(EtcdDbError::PageReachedTwice { page: branch as u64 });
    assert_eq!(read(&db), cycle);
    assert_eq!(read(&with_hash(&db)), cycle, "the same with a matching hash");
    // Two elements naming the same child: a shared page, refused alike.
    let mut db = bare();
    let second_child = u64::from_le_bytes(db[branch * PAGE + 40..branch * PAGE + 48].try_into().unwrap());
    put_u64(&mut db, branch * PAGE + 16 + 8, second_child);
    assert_eq!(read(&db), Err(EtcdDbError::PageReachedTwice { page: second_child }));
}

#[test]
fn pages_that_claim_too_much_are_refused() {
    let db = bare();
    let branch = page_with_flags(&db, 0x01);
    let leaf = u64::from_le_bytes(db[branch * PAGE + 24..branch * PAGE + 32].try_into().unwrap()) as usize;

    let mut past = db.clone();
    put_u64(&mut past, branch * PAGE + 24, 1 << 40);
    assert_eq!(
        read(&past),
        Err(EtcdDbError::PageOutOfFile {
            page: 1 << 40,
            pages: PAGES
        })
    );

    let mut overflow = db.clone();
    put_u32(&mut overflow, leaf * PAGE + 12, u32::MAX);
    let want = EtcdDbError::OverflowOutOfFile {
        page: leaf as u64,
        overflow: u32::MAX,
        pages: PAGES,
    };
    assert_eq!(read(&overflow), Err(want));

    let mut count = db.clone();
    put_u16(&mut count, leaf * PAGE + 10, u16::MAX);
    let want = EtcdDbError::TooManyElements {
        at: PageAt::Page(leaf as u64),
        count: 0xffff,
        fits: 255,
    };
    assert_eq!(read(&count), Err(want));

    let mut pos = db.clone();
    put_u32(&mut pos, leaf * PAGE + 16 + 4, u32::MAX);
    assert_eq!(
        read(&pos),
        Err(EtcdDbError::ElementOutOfPage {
            at: PageAt::Page(leaf as u64),
            index: 0
        })
    );

    let mut kind = db.clone();
    put_u16(&mut kind, leaf * PAGE + 8, 0x10);
    let want = format!("page {leaf} has flags 0x0010, not a branch (0x0001) or leaf (0x0002) page");
    assert_eq!(read(&kind).unwrap_err().to_string(), want);

    let mut id = db.clone();
    put_u64(&mut id, leaf * PAGE, 77);
    assert_eq!(
        read(&id),
        Err(EtcdDbError::PageIdMismatch {
            page: leaf as u64,
            header_id: 77
        })
    );
}

#[test]
fn keys_out_of_order_are_refused() {
    let mut db = bare();
    let branch = page_with_flags(&db, 0x01);
    let leaf = u64::from_le_bytes(db[branch * PAGE + 24..branch * PAGE + 32].try_into().unwrap()) as usize;
    // Swap the first two leaf elements; `pos` counts from each element's own
    // address, so each moves by the 16 bytes between them.
    let (first, second) = (leaf * PAGE + 16, leaf * PAGE + 32);
    let mut a: [u8; 16] = db[first..first + 16].try_into().unwrap();
    let mut b: [u8; 16] = db[second..second + 16].try_into().unwrap();
    let (pos_a, pos_b) = (get_u32(&a, 4), get_u32(&b, 4));
    put_u32(&mut a, 4, pos_a - 16);
    put_u32(&mut b, 4, pos_b + 16);
    db[first..first + 16].copy_from_slice(&b);
    db[second..second + 16].copy_from_slice(&a);
    assert_eq!(
        read(&db),
        Err(EtcdDbError::KeysOutOfOrder {
            bucket: "key",
            index: 1
        })
    );
}

/// A database of 1 KiB pages: a root leaf holding the "key" bucket, whose
/// tree is a chain of `branches` branch pages, each over the next, ending in an empty leaf.
fn chain_db(branches: usize) -> Vec<u8> {
    const SMALL: usize = 1024;
    let pages = 3 + branches + 1;
    let mut db = vec![0u8; pages * SMALL];
    for meta_page in 0..2 {
        let at = meta_page * SMALL;
        put_u64(&mut db, at, meta_page as u64);
        put_u16(&mut db, at + 8, 0x04);
        put_u32(&mut db, at + 16, bolt::MAGIC);
        put_u32(&mut db, at + 20, 2);
        put_u32(&mut db, at + 24, SMALL as u32);
        put_u64(&mut db, at + 32, 2); // root bucket's page
        put_u64(&mut db, at + 48, u64::MAX); // no freelist
        put_u64(&mut db, at + 56, pages as u64);
        put_u64(&mut db, at + 64, 10 + meta_page as u64);
        let sum = fnv1a_64(&db[at + 16..at + 72]);
        put_u64(&mut db, at + 72, sum);
    }
    // Root leaf: one bucket element "key" whose value is {root 3, sequence 0}.
    let root = 2 * SMALL;
    put_u64(&mut db, root, 2);
    put_u16(&mut db, root + 8, 0x02);
    put_u16(&mut db, root + 10, 1);
    put_u32(&mut db, root + 16, 1); // bucket flag
    put_u32(&mut db, root + 20, 16); // pos: right after the element
    put_u32(&mut db, root + 24, 3);
    put_u32(&mut db, root + 28, 16);
    db[root + 32..root + 35].copy_from_slice(b"key");
    put_u64(&mut db, root + 35, 3);
    for page in 3..pages {
        let at = page * SMALL;
        put_u64(&mut db, at, page as u64);
        if page + 1 < pages {
            put_u16(&mut db, at + 8, 0x01);
            put_u16(&mut db, at + 10, 1);
            put_u32(&mut db, at + 16, 16); // pos
            put_u64(&mut db, at + 24, page as u64 + 1); // child
        } else {
            put_u16(&mut db, at + 8, 0x02); // an empty leaf
        }
    }
    db
}

#[test]
fn a_chain_of_branch_pages_deeper_than_the_limit_is_refused() {
    let shallow = read(&chain_db(TREE_DEPTH_MAX)).expect("a chain at the limit reads");
    assert!(shallow.revisions.is_empty() && shallow.leases.is_empty() && !shallow.hash_verified);
    let deep = read(&chain_db(TREE_DEPTH_MAX + 1));
    let at = PageAt::Page(3 + TREE_DEPTH_MAX as u64 + 1);
    assert_eq!(
        deep,
        Err(EtcdDbError::TooDeep {
            at,
            depth_max: TREE_DEPTH_MAX
        })
    );
}

#[test]
fn files_over_the_size_limit_are_refused_on_their_length() {
    let limit = FIXTURE.len() as u64;
    assert!(read_at_most(FIXTURE, limit).is_ok());
    let refused = read_at_most(FIXTURE, limit - 1).unwrap_err().to_string();
    assert_eq!(
        refused,
        format!("the file is {limit} bytes, over the {}-byte limit", limit - 1)
    );
    assert_eq!(DB_BYTES_MAX, (8 << 30) + 32);
}

#[test]
fn flipping_bytes_all_over_the_fixture_never_panics() {
    let base = bare();
    let mut rng = Rng(0x0f11_b175);
    let (mut read_ok, mut refused) = (0, 0);
    let mut tally = |result: Result<EtcdDb, EtcdDbError>| match result {
        Ok(_) => read_ok += 1,
        Err(_) => refused += 1,
    };
    for offset in 0..base.len() {
        let mut db = base.clone();
        db[offset] ^= 0xff;
        tally(read(&db));
        db[offset] = rng.next() as u8;
        tally(read(&db));
    }
    // Several bytes at once, anywhere.
    for _ in 0..3000 {
        let mut db = base.clone();
        for _ in 0..1 + rng.below(8) {
            let at = rng.below(db.len());
            db[at] = rng.next() as u8;
        }
        tally(read(&db));
    }
    // Both outcomes happen: unused bytes change nothing, used ones get refused.
    assert!(read_ok > 0 && refused > 0, "ok {read_ok}, refused {refused}");
}

#[test]
fn leases_sort_as_signed_ids_and_must_match_their_keys() {
    let lease = |id: i64, ttl: i64| LeasePb { id, ttl }.encode_to_vec();
    let (negative, positive) = ((-7i64).to_be_bytes(), 5i64.to_be_bytes());
    let (negative_value, positive_value) = (lease(-7, 60), lease(5, 30));
    // bbolt's byte order puts 5 before -7 (0xff.. sorts last).
    let entries = [entry(&positive, &positive_value), entry(&negative, &negative_value)];
    let want = [
        EtcdLease {
            id: -7,
            ttl_seconds: 60,
        },
        EtcdLease { id: 5, ttl_seconds: 30 },
    ];
    assert_eq!(decode_leases(&entries), Ok(want.to_vec()));
    let wrong_value = lease(6, 30);
    let mismatched = decode_leases(&[entry(&positive, &wrong_value)]);
    assert_eq!(mismatched, Err(EtcdDbError::LeaseIdMismatch { key_id: 5, value_id: 6 }));
    let short = decode_leases(&[entry(&positive[..7], &positive_value)]);
    let want = "\"lease\" bucket entry 0 has a 7-byte key, not an 8-byte lease ID";
    assert_eq!(short.unwrap_err().to_string(), want);
}

#[test]
fn revision_keys_must_be_etcds() {
    let revision = |main: i64, sub: i64, separator: u8| {
        let mut key = main.to_be_bytes().to_vec();
        key.push(separator);
        key.extend_from_slice(&sub.to_be_bytes());
        key
    };
    assert_eq!(parse_revision(&revision(9, 0, b'_')), Some((9, 0)));
    assert_eq!(parse_revision(&revision(9, 0, b'-')), None);
    assert_eq!(
        parse_revision(&revision(0, 0, b'_')),
        None,
        "etcd's revisions start at 1"
    );
    assert_eq!(parse_revision(&revision(3, -1, b'_')), None);
    assert_eq!(parse_revision(&revision(3, 0, b'_')[..16]), None);
    let value = KeyValuePb {
        key: b"k".to_vec(),
        ..Default::default()
    }
    .encode_to_vec();
    let plain = revision(3, 0, b'_');
    let (mut marked, mut tombstone) = (plain.clone(), plain.clone());
    marked.push(b'x');
    tombstone.push(b't');
    let bad = decode_revisions(&[entry(&marked, &value)]);
    let want = "\"key\" bucket entry 0 has a 18-byte key, not main '_' sub [t], with main >= 1 and sub >= 0";
    assert_eq!(bad.unwrap_err().to_string(), want);
    let both = decode_revisions(&[entry(&plain, &value), entry(&tombstone, &value)]);
    assert_eq!(both, Err(EtcdDbError::DuplicateRevision { main: 3, sub: 0 }));
    let garbage = decode_revisions(&[entry(&plain, b"\xff")]);
    assert!(matches!(garbage, Err(EtcdDbError::BadKeyValue { main: 3, sub: 0, .. })));
}

fn entry<'a>(key: &'a [u8], value: &'a [u8]) -> bolt::Entry<'a> {
    bolt::Entry {
        key,
        value,
        is_bucket: false,
    }
}
