//! Reads the snapshot that a real etcd 3.4.23 wrote (see fixtures/make-fixture.sh)
//! and checks it against what etcdctl said about the same cluster.

use serde_json::Value;
use synod_etcd_db::{looks_like_etcd_db, read, EtcdDb, EtcdLease, KeyRevision};

const FIXTURE: &[u8] = include_bytes!("fixtures/etcd-3.4.23.db");
const EXPECTED: &str = include_str!("fixtures/etcd-3.4.23.expected.json");

/// A live key as a range answers it: key, create, mod, version, value, lease.
type Live = (Vec<u8>, i64, i64, i64, Vec<u8>, i64);

fn base64(text: &str) -> Vec<u8> {
    const ALPHABET: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = Vec::new();
    let (mut bits, mut bit_count) = (0u32, 0);
    for byte in text.bytes().filter(|&byte| byte != b'=') {
        let digit = ALPHABET.iter().position(|&a| a == byte).expect("a base64 digit");
        bits = (bits << 6) | digit as u32;
        bit_count += 6;
        if bit_count >= 8 {
            bit_count -= 8;
            out.push((bits >> bit_count) as u8);
            bits &= (1 << bit_count) - 1;
        }
    }
    out
}

fn expected() -> Value {
    serde_json::from_str(EXPECTED).expect("the expectations file is JSON")
}

fn db() -> EtcdDb {
    read(FIXTURE).expect("the real etcd snapshot reads")
}

/// What etcdctl printed for `get "" --prefix -w json` (etcd leaves out zero fields).
fn expected_live(answer: &Value) -> Vec<Live> {
    let int = |kv: &Value, name: &str| kv[name].as_i64().unwrap_or(0);
    answer["kvs"]
        .as_array()
        .expect("kvs")
        .iter()
        .map(|kv| {
            let value = kv["value"].as_str().map(base64).unwrap_or_default();
            let key = base64(kv["key"].as_str().expect("key"));
            (
                key,
                int(kv, "create_revision"),
                int(kv, "mod_revision"),
                int(kv, "version"),
                value,
                int(kv, "lease"),
            )
        })
        .collect()
}

/// The live keys at revision `at` computed from the revision history: each
/// key's last revision at or below `at`, unless that revision deleted it.
fn live_at(db: &EtcdDb, at: i64) -> Vec<Live> {
    let mut last: std::collections::BTreeMap<&[u8], &KeyRevision> = Default::default();
    for revision in db.revisions.iter().filter(|revision| revision.main <= at) {
        last.insert(&revision.key, revision);
    }
    last.values()
        .filter(|revision| !revision.tombstone)
        .map(|r| {
            (
                r.key.clone(),
                r.create_revision,
                r.mod_revision,
                r.version,
                r.value.clone(),
                r.lease,
            )
        })
        .collect()
}

#[test]
fn the_snapshot_has_a_verified_hash_and_a_bbolt_magic() {
    assert!(looks_like_etcd_db(FIXTURE));
    assert!(!looks_like_etcd_db(b"not an etcd database at all"));
    assert_eq!(FIXTURE.len() % 512, 32, "etcdctl appends a 32-byte SHA-256");
    assert!(db().hash_verified);
}

#[test]
fn every_live_key_matches_etcdctl_at_the_head_and_after_the_compaction() {
    let db = db();
    let expected = expected();
    let head = expected["head"]["header"]["revision"].as_i64().expect("head revision");
    assert_eq!(head, 19);
    assert_eq!(db.revisions.last().map(|revision| revision.main), Some(head));
    let live = live_at(&db, head);
    assert_eq!(live.len(), 48, "8 named keys and /many/00 .. /many/39");
    assert_eq!(live, expected_live(&expected["head"]));
    assert_eq!(live_at(&db, 12), expected_live(&expected["rev12"]));
}

#[test]
fn the_revision_history_is_what_the_fixture_script_wrote_minus_the_compacted_part() {
    let db = db();
    let mut want: Vec<(i64, i64, bool, Vec<u8>)> = vec![
        (5, 0, false, b"/a".to_vec()), // /a's last revision at the compaction (9) stays
        (7, 0, false, b"/t1".to_vec()),
        (7, 1, false, b"/t2".to_vec()),
        (8, 0, false, b"/leased1".to_vec()),
        (9, 0, false, b"/leased2".to_vec()),
        (10, 0, false, b"/empty".to_vec()),
        (11, 0, false, b"bin\x01\x7f\xfe\xff".to_vec()),
        (12, 0, false, b"/c".to_vec()),
        (13, 0, true, b"/c".to_vec()),
        (14, 0, false, b"/a".to_vec()),
        (15, 0, false, b"/b".to_vec()),
        (16, 0, true, b"/t1".to_vec()),
        (16, 1, true, b"/t2".to_vec()),
        (17, 0, false, b"/d".to_vec()),
    ];
    want.extend((0..40).map(|i| (18, i, false, format!("/many/{i:02}").into_bytes())));
    want.push((19, 0, false, b"/big".to_vec()));
    let got: Vec<_> = db
        .revisions
        .iter()
        .map(|r| (r.main, r.sub, r.tombstone, r.key.clone()))
        .collect();
    assert_eq!(
        got, want,
        "revisions 2, 3, 4 (/a, /b, /a) and 6 (/b's deletion) were compacted away"
    );
}

#[test]
fn versions_values_and_tombstones_are_etcds() {
    let db = db();
    let at = |main: i64, sub: i64| {
        db.revisions
            .iter()
            .find(|r| (r.main, r.sub) == (main, sub))
            .unwrap_or_else(|| panic!("revision {main}_{sub}"))
    };
    let a5 = at(5, 0);
    assert_eq!(
        (a5.create_revision, a5.mod_revision, a5.version, a5.value.as_slice()),
        (2, 5, 3, &b"3"[..])
    );
    let a14 = at(14, 0);
    assert_eq!(
        (a14.create_revision, a14.mod_revision, a14.version, a14.value.as_slice()),
        (2, 14, 4, &b"4"[..])
    );
    let b15 = at(15, 0);
    assert_eq!(
        (b15.create_revision, b15.version, b15.value.as_slice()),
        (15, 1, &b"again"[..])
    );
    let empty = at(10, 0);
    assert!(!empty.tombstone && empty.value.is_empty() && empty.version == 1);
    assert_eq!(at(11, 0).value, b"\xc3\x28\x01");
    assert_eq!(
        at(19, 0).value,
        vec![b'B'; 6000],
        "a value bigger than a page, in an overflow page"
    );
    for (main, sub, key) in [(13, 0, "/c"), (16, 0, "/t1"), (16, 1, "/t2")] {
        let deleted = at(main, sub);
        // etcd stores a deletion as a KeyValue holding only the key.
        let want = KeyRevision {
            main,
            sub,
            tombstone: true,
            key: key.into(),
            create_revision: 0,
            mod_revision: 0,
            version: 0,
            value: vec![],
            lease: 0,
        };
        assert_eq!(deleted, &want);
    }
    for i in 0..40 {
        let many = at(18, i);
        assert_eq!((many.create_revision, many.mod_revision, many.version), (18, 18, 1));
        assert_eq!(many.value, format!("value-{i:02}-{i:050}").into_bytes());
    }
}

#[test]
fn leases_and_their_keys_are_etcds() {
    let db = db();
    let expected = expected();
    let leases = expected["leases"].as_array().expect("leases");
    let mut want: Vec<EtcdLease> = leases
        .iter()
        .map(|lease| EtcdLease {
            id: lease["id"].as_i64().expect("id"),
            ttl_seconds: lease["granted-ttl"].as_i64().expect("ttl"),
        })
        .collect();
    assert_eq!(
        want.iter().map(|lease| lease.ttl_seconds).collect::<Vec<_>>(),
        [600, 300]
    );
    want.sort_by_key(|lease| lease.id);
    assert_eq!(db.leases, want);
    let mut listed: Vec<i64> = expected["lease_list"]["leases"]
        .as_array()
        .expect("list")
        .iter()
        .map(|l| l["id"].as_i64().expect("id"))
        .collect();
    listed.sort();
    assert_eq!(db.leases.iter().map(|lease| lease.id).collect::<Vec<_>>(), listed);
    // The keys attached to the 600 s lease, and none to the 300 s one.
    for lease in leases {
        let id = lease["id"].as_i64().expect("id");
        let want: Vec<Vec<u8>> = lease["keys"]
            .as_array()
            .map(|keys| keys.iter().map(|k| base64(k.as_str().expect("key"))).collect())
            .unwrap_or_default();
        let got: Vec<Vec<u8>> = live_at(&db, 19)
            .into_iter()
            .filter(|live| live.5 == id)
            .map(|live| live.0)
            .collect();
        assert_eq!(got, want, "keys of lease {id}");
    }
}

#[test]
fn the_meta_bucket_holds_the_compaction_and_the_consistent_index() {
    let db = db();
    let compacted = expected()["compact_revision"].as_i64();
    assert_eq!(compacted, Some(9));
    assert_eq!(db.scheduled_compact_revision, compacted);
    assert_eq!(db.finished_compact_revision, compacted);
    // One raft entry at least per write (18 revisions, 2 lease grants, 1 compaction).
    assert!(
        db.consistent_index.is_some_and(|index| index >= 21),
        "{:?}",
        db.consistent_index
    );
}

#[test]
fn without_its_hash_the_database_still_reads_but_unverified() {
    let bare = read(&FIXTURE[..FIXTURE.len() - 32]).expect("the bare database reads");
    assert!(!bare.hash_verified);
    assert_eq!(
        bare,
        EtcdDb {
            hash_verified: false,
            ..db()
        }
    );
}
