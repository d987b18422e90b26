//! Unit tests of the store, lessor, watch hub and snapshots, one behaviour each.

use crate::*;

fn store() -> Store {
    Store::new(Config::default())
}

fn ok(store: &mut Store, request: Request) -> Response {
    let bytes = store.prepare(&request).expect("valid request");
    store.apply_bytes(&bytes).result.expect("request succeeds")
}

fn err(store: &mut Store, request: Request) -> KvError {
    store.apply(&request).result.expect_err("request fails")
}

fn put(key: &str, value: &str) -> Request {
    Request::Put(put_request(key, value))
}

fn put_request(key: &str, value: &str) -> PutRequest {
    PutRequest {
        key: key.into(),
        value: value.into(),
        ..PutRequest::default()
    }
}

fn delete(key: &str, range_end: &str) -> Request {
    Request::DeleteRange(DeleteRangeRequest {
        key: key.into(),
        range_end: range_end.into(),
        prev_kv: true,
    })
}

fn range(key: &str, range_end: &str) -> RangeRequest {
    RangeRequest {
        key: key.into(),
        range_end: range_end.into(),
        ..RangeRequest::default()
    }
}

fn keys(response: &RangeResponse) -> Vec<String> {
    response
        .kvs
        .iter()
        .map(|kv| String::from_utf8(kv.key.clone()).unwrap())
        .collect()
}

fn get(store: &Store, key: &str) -> Option<KeyValue> {
    store.range(&range(key, "")).unwrap().kvs.pop()
}

#[test]
fn revisions_follow_etcd_rules() {
    let mut store = store();
    assert_eq!(store.revision(), 1);
    ok(&mut store, put("a", "1"));
    assert_eq!(store.revision(), 2);
    ok(&mut store, put("a", "2"));
    ok(&mut store, put("b", "1"));
    let a = get(&store, "a").unwrap();
    assert_eq!((a.create_revision, a.mod_revision, a.version), (2, 3, 2));
    // A delete matching nothing changes nothing.
    let Response::DeleteRange(deleted) = ok(&mut store, delete("zzz", "")) else {
        panic!()
    };
    assert_eq!((deleted.deleted, deleted.header.revision), (0, 4));
    assert_eq!(store.revision(), 4);
    // A read-only txn changes nothing.
    ok(
        &mut store,
        Request::Txn(TxnRequest {
            success: vec![RequestOp::Range(range("a", ""))],
            ..TxnRequest::default()
        }),
    );
    assert_eq!(store.revision(), 4);
    // Delete then recreate resets version and create_revision.
    ok(&mut store, delete("a", ""));
    ok(&mut store, put("a", "3"));
    let a = get(&store, "a").unwrap();
    assert_eq!((a.create_revision, a.mod_revision, a.version), (6, 6, 1));
}

#[test]
fn a_txn_shares_one_revision() {
    let mut store = store();
    let Response::Txn(txn) = ok(
        &mut store,
        Request::Txn(TxnRequest {
            success: vec![
                RequestOp::Put(put_request("a", "1")),
                RequestOp::Put(put_request("b", "1")),
                RequestOp::Range(range("a", "c")),
            ],
            ..TxnRequest::default()
        }),
    ) else {
        panic!()
    };
    assert_eq!(txn.header.revision, 2);
    let ResponseOp::Range(read) = &txn.responses[2] else {
        panic!()
    };
    // Reads inside the txn see its earlier writes.
    assert_eq!(read.count, 2);
    assert!(read.kvs.iter().all(|kv| kv.mod_revision == 2));
}

#[test]
fn range_conventions_and_options() {
    let mut store = store();
    for (key, value) in [("a", "3"), ("ab", "1"), ("abc", "2"), ("b", "0"), ("c", "9")] {
        ok(&mut store, put(key, value));
    }
    ok(&mut store, put("ab", "5"));
    assert_eq!(keys(&store.range(&range("ab", "")).unwrap()), ["ab"]);
    assert_eq!(keys(&store.range(&range("ab", "ac")).unwrap()), ["ab", "abc"]);
    assert_eq!(keys(&store.range(&range("b", "\0")).unwrap()), ["b", "c"]);
    assert_eq!(store.range(&range("\0", "\0")).unwrap().kvs.len(), 5);
    let limited = store
        .range(&RangeRequest {
            limit: 2,
            ..range("a", "\0")
        })
        .unwrap();
    assert_eq!(
        (keys(&limited), limited.more, limited.count),
        (vec!["a".into(), "ab".into()], true, 5)
    );
    let counted = store
        .range(&RangeRequest {
            count_only: true,
            ..range("a", "\0")
        })
        .unwrap();
    assert!(counted.kvs.is_empty() && counted.count == 5 && !counted.more);
    let keys_only = store
        .range(&RangeRequest {
            keys_only: true,
            ..range("a", "")
        })
        .unwrap();
    assert!(keys_only.kvs[0].value.is_empty());
    let by_value_descending = store
        .range(&RangeRequest {
            sort_order: SortOrder::Descend,
            sort_target: SortTarget::Value,
            ..range("a", "\0")
        })
        .unwrap();
    assert_eq!(keys(&by_value_descending), ["c", "ab", "a", "abc", "b"]);
    let by_key_descending = store
        .range(&RangeRequest {
            sort_order: SortOrder::Descend,
            limit: 2,
            ..range("a", "\0")
        })
        .unwrap();
    assert_eq!(keys(&by_key_descending), ["c", "b"]);
    // Target without order sorts ascending (etcd).
    let by_version = store
        .range(&RangeRequest {
            sort_target: SortTarget::Version,
            ..range("a", "\0")
        })
        .unwrap();
    assert_eq!(keys(&by_version).last().unwrap(), "ab");
    let filtered = store
        .range(&RangeRequest {
            min_mod_revision: 4,
            max_mod_revision: 6,
            min_create_revision: 4,
            ..range("a", "\0")
        })
        .unwrap();
    assert_eq!(keys(&filtered), ["abc", "b", "c"]);
    assert_eq!(filtered.count, 5, "count ignores filters, as in etcd");
    let old = store
        .range(&RangeRequest {
            revision: 3,
            ..range("a", "\0")
        })
        .unwrap();
    assert_eq!(keys(&old), ["a", "ab"]);
    assert_eq!(old.header.revision, store.revision());
    assert_eq!(
        store.range(&RangeRequest {
            revision: 99,
            ..range("a", "")
        }),
        Err(KvError::FutureRevision)
    );
    assert_eq!(store.range(&range("", "")), Err(KvError::KeyNotProvided));
}

#[test]
fn range_keys_max_bounds_every_response() {
    let mut store = Store::new(Config {
        range_keys_max: 2,
        ..Config::default()
    });
    for key in ["a", "b", "c"] {
        ok(&mut store, put(key, "v"));
    }
    let response = store.range(&range("a", "\0")).unwrap();
    assert_eq!((response.kvs.len(), response.more, response.count), (2, true, 3));
}

#[test]
fn put_options_and_errors() {
    let mut store = store();
    assert_eq!(
        err(
            &mut store,
            Request::Put(PutRequest {
                ignore_value: true,
                ..put_request("a", "")
            })
        ),
        KvError::KeyNotFound
    );
    assert_eq!(
        err(
            &mut store,
            Request::Put(PutRequest {
                ignore_lease: true,
                ..put_request("a", "x")
            })
        ),
        KvError::KeyNotFound
    );
    assert_eq!(
        err(
            &mut store,
            Request::Put(PutRequest {
                lease: 7,
                ..put_request("a", "x")
            })
        ),
        KvError::LeaseNotFound
    );
    assert_eq!(err(&mut store, put("", "x")), KvError::KeyNotProvided);
    assert_eq!(store.revision(), 1);
    ok(&mut store, Request::LeaseGrant(LeaseGrantRequest { ttl: 60, id: 7 }));
    ok(
        &mut store,
        Request::Put(PutRequest {
            lease: 7,
            ..put_request("a", "x")
        }),
    );
    let Response::Put(response) = ok(
        &mut store,
        Request::Put(PutRequest {
            ignore_value: true,
            ignore_lease: true,
            prev_kv: true,
            ..put_request("a", "")
        }),
    ) else {
        panic!()
    };
    assert_eq!(response.prev_kv.unwrap().value, b"x");
    let a = get(&store, "a").unwrap();
    assert_eq!((a.value.as_slice(), a.lease, a.version), (&b"x"[..], 7, 2));
    assert_eq!(
        err(
            &mut store,
            Request::Put(PutRequest {
                ignore_value: true,
                ..put_request("a", "y")
            })
        ),
        KvError::ValueProvided
    );
}

#[test]
fn delete_range_returns_prev_kvs() {
    let mut store = store();
    for key in ["a", "b", "c"] {
        ok(&mut store, put(key, key));
    }
    let Response::DeleteRange(response) = ok(&mut store, delete("a", "c")) else {
        panic!()
    };
    assert_eq!(response.deleted, 2);
    assert_eq!(response.prev_kvs.len(), 2);
    assert_eq!(store.revision(), 5);
    assert_eq!(keys(&store.range(&range("a", "\0")).unwrap()), ["c"]);
}

fn compare(target: CompareTarget, result: CompareResult, key: &str, operand: TargetUnion) -> Compare {
    Compare {
        result,
        target,
        key: key.into(),
        target_union: operand,
        range_end: Vec::new(),
    }
}

fn txn_succeeds(store: &mut Store, compares: Vec<Compare>) -> bool {
    let Response::Txn(txn) = ok(
        store,
        Request::Txn(TxnRequest {
            compare: compares,
            ..TxnRequest::default()
        }),
    ) else {
        panic!()
    };
    txn.succeeded
}

#[test]
fn txn_compares_every_target() {
    let mut store = store();
    ok(&mut store, Request::LeaseGrant(LeaseGrantRequest { ttl: 60, id: 9 }));
    ok(&mut store, put("a", "m"));
    ok(
        &mut store,
        Request::Put(PutRequest {
            lease: 9,
            ..put_request("a", "n")
        }),
    );
    ok(&mut store, put("b", "z"));
    use CompareResult::*;
    use CompareTarget::*;
    assert!(txn_succeeds(
        &mut store,
        vec![compare(Version, Equal, "a", TargetUnion::Version(2))]
    ));
    assert!(txn_succeeds(
        &mut store,
        vec![compare(Create, Equal, "a", TargetUnion::CreateRevision(2))]
    ));
    assert!(txn_succeeds(
        &mut store,
        vec![compare(Mod, Greater, "a", TargetUnion::ModRevision(2))]
    ));
    assert!(txn_succeeds(
        &mut store,
        vec![compare(Value, Less, "a", TargetUnion::Value(b"o".to_vec()))]
    ));
    assert!(txn_succeeds(
        &mut store,
        vec![compare(Lease, Equal, "a", TargetUnion::Lease(9))]
    ));
    assert!(txn_succeeds(
        &mut store,
        vec![compare(Version, NotEqual, "a", TargetUnion::Version(1))]
    ));
    // Missing keys compare as zero, except values, which always fail.
    assert!(txn_succeeds(
        &mut store,
        vec![compare(Create, Equal, "x", TargetUnion::CreateRevision(0))]
    ));
    assert!(!txn_succeeds(
        &mut store,
        vec![compare(Value, NotEqual, "x", TargetUnion::Value(b"q".to_vec()))]
    ));
    // With a range_end the compare must hold for every key.
    let mut ranged = compare(Version, Greater, "a", TargetUnion::Version(0));
    ranged.range_end = b"c".to_vec();
    assert!(txn_succeeds(&mut store, vec![ranged.clone()]));
    ranged.target_union = TargetUnion::Version(1);
    assert!(!txn_succeeds(&mut store, vec![ranged]));
}

#[test]
fn nested_txns_pick_branches_on_the_state_before_the_txn() {
    let mut store = store();
    let nested = TxnRequest {
        compare: vec![compare(
            CompareTarget::Version,
            CompareResult::Equal,
            "a",
            TargetUnion::Version(0),
        )],
        success: vec![RequestOp::Put(put_request("b", "nested-success"))],
        failure: vec![RequestOp::Put(put_request("b", "nested-failure"))],
    };
    ok(
        &mut store,
        Request::Txn(TxnRequest {
            success: vec![RequestOp::Put(put_request("a", "1")), RequestOp::Txn(nested)],
            ..TxnRequest::default()
        }),
    );
    assert_eq!(get(&store, "b").unwrap().value, b"nested-success");
    assert_eq!(store.revision(), 2);
}

#[test]
fn duplicate_keys_in_a_txn_are_rejected() {
    let mut store = store();
    let txn = |ops: Vec<RequestOp>| {
        Request::Txn(TxnRequest {
            success: ops,
            ..TxnRequest::default()
        })
    };
    let put_op = |key: &str| RequestOp::Put(put_request(key, "v"));
    let delete_op = |key: &str, end: &str| {
        RequestOp::DeleteRange(DeleteRangeRequest {
            key: key.into(),
            range_end: end.into(),
            prev_kv: false,
        })
    };
    assert_eq!(
        err(&mut store, txn(vec![put_op("a"), put_op("a")])),
        KvError::DuplicateKey
    );
    assert_eq!(
        err(&mut store, txn(vec![put_op("b"), delete_op("a", "c")])),
        KvError::DuplicateKey
    );
    let nested = RequestOp::Txn(TxnRequest {
        success: vec![put_op("a")],
        failure: vec![put_op("a")],
        ..TxnRequest::default()
    });
    assert_eq!(
        err(&mut store, txn(vec![put_op("a"), nested.clone()])),
        KvError::DuplicateKey
    );
    assert_eq!(
        err(&mut store, txn(vec![delete_op("a", "\0"), nested.clone()])),
        KvError::DuplicateKey
    );
    assert_eq!(
        store.prepare(&txn(vec![put_op("a"), put_op("a")])),
        Err(KvError::DuplicateKey)
    );
    // A put in one nested txn and a delete of the key in a later one.
    let nested_put = RequestOp::Txn(TxnRequest {
        success: vec![put_op("a")],
        ..TxnRequest::default()
    });
    let nested_delete = RequestOp::Txn(TxnRequest {
        success: vec![delete_op("a", "")],
        ..TxnRequest::default()
    });
    assert_eq!(
        err(&mut store, txn(vec![nested_put.clone(), nested_delete.clone()])),
        KvError::DuplicateKey
    );
    assert_eq!(
        err(&mut store, txn(vec![nested_delete, nested_put])),
        KvError::DuplicateKey
    );
    // Put in one branch, delete in the other branch of the same nested txn: fine.
    ok(
        &mut store,
        txn(vec![RequestOp::Txn(TxnRequest {
            success: vec![put_op("a")],
            failure: vec![delete_op("a", "")],
            ..TxnRequest::default()
        })]),
    );
    // Allowed: the same put in both branches of a nested txn, and overlapping deletes (etcd).
    ok(&mut store, txn(vec![nested]));
    ok(&mut store, txn(vec![delete_op("a", "c"), delete_op("a", "")]));
    assert_eq!(store.revision(), 4);
}

#[test]
fn failing_txn_ops_reject_the_whole_txn() {
    let mut store = store();
    let request = Request::Txn(TxnRequest {
        success: vec![
            RequestOp::Put(put_request("a", "1")),
            RequestOp::Put(PutRequest {
                lease: 42,
                ..put_request("b", "1")
            }),
        ],
        ..TxnRequest::default()
    });
    assert_eq!(err(&mut store, request), KvError::LeaseNotFound);
    assert_eq!(store.revision(), 1);
    assert!(get(&store, "a").is_none());
    let too_many = Request::Txn(TxnRequest {
        success: (0..129)
            .map(|i| RequestOp::Put(put_request(&format!("k{i}"), "")))
            .collect(),
        ..TxnRequest::default()
    });
    assert_eq!(err(&mut store, too_many), KvError::TooManyOperations);
}

#[test]
fn compaction_rules() {
    let mut store = store();
    ok(&mut store, put("a", "1"));
    ok(&mut store, put("a", "2"));
    ok(&mut store, delete("a", ""));
    ok(&mut store, put("b", "1"));
    let compact = |revision| {
        Request::Compaction(CompactionRequest {
            revision,
            physical: false,
        })
    };
    assert_eq!(err(&mut store, compact(9)), KvError::FutureRevision);
    ok(&mut store, compact(3));
    assert_eq!(store.revision(), 5);
    assert_eq!(err(&mut store, compact(3)), KvError::Compacted);
    assert_eq!(err(&mut store, compact(2)), KvError::Compacted);
    let at = |revision| RangeRequest {
        revision,
        ..range("a", "\0")
    };
    assert_eq!(store.range(&at(2)), Err(KvError::Compacted));
    assert_eq!(store.range(&at(3)).unwrap().kvs[0].value, b"2");
    assert!(store.range(&at(4)).unwrap().kvs.is_empty());
    ok(&mut store, compact(5));
    // The tombstone of "a" is gone, and with it the key.
    assert_eq!(store.indexed_keys(), 1);
}

#[test]
fn auto_compaction_bounds_history() {
    let mut store = Store::new(Config {
        history_revisions_max: 10,
        ..Config::default()
    });
    for i in 0..100 {
        ok(&mut store, put("a", &i.to_string()));
        assert!(store.revision() - store.compact_revision() <= 10);
    }
    assert!(store.compact_revision() > 80);
}

/// Deletes `key` and compacts at the revision that made.
fn delete_and_compact(store: &mut Store, key: &str) {
    ok(store, delete(key, ""));
    let revision = store.revision();
    ok(
        store,
        Request::Compaction(CompactionRequest {
            revision,
            physical: true,
        }),
    );
}

#[test]
fn quota_refuses_writes_but_not_deletes() {
    let mut store = Store::new(Config {
        database_bytes_max: 10,
        ..Config::default()
    });
    ok(&mut store, put("a", "0123456789"));
    assert_eq!(err(&mut store, put("b", "x")), KvError::DatabaseSpaceExceeded);
    assert_eq!(
        err(&mut store, Request::LeaseGrant(LeaseGrantRequest { ttl: 5, id: 0 })),
        KvError::DatabaseSpaceExceeded
    );
    delete_and_compact(&mut store, "a");
    ok(&mut store, put("b", "x"));
}

#[test]
fn oversized_and_malformed_entries_are_errors() {
    let mut store = Store::new(Config {
        request_bytes_max: 100,
        ..Config::default()
    });
    let big = put("a", &"x".repeat(200));
    assert_eq!(store.prepare(&big), Err(KvError::RequestTooLarge));
    assert_eq!(store.apply_bytes(&big.encode()).result, Err(KvError::RequestTooLarge));
    assert!(matches!(store.apply_bytes(&[1, 99]).result, Err(KvError::Corrupt(_))));
    assert_eq!(store.applied_index(), 2);
    assert_eq!(store.revision(), 1);
}

#[test]
fn leases_grant_revoke_and_ids() {
    let mut store = store();
    let Response::LeaseGrant(granted) = ok(&mut store, Request::LeaseGrant(LeaseGrantRequest { ttl: 1, id: 0 })) else {
        panic!()
    };
    assert!(granted.id > 0);
    assert_eq!(granted.ttl, Config::default().lease_ttl_seconds_min);
    assert_eq!(
        err(
            &mut store,
            Request::LeaseGrant(LeaseGrantRequest { ttl: 5, id: granted.id })
        ),
        KvError::LeaseExists
    );
    assert_eq!(
        err(
            &mut store,
            Request::LeaseGrant(LeaseGrantRequest {
                ttl: LEASE_TTL_SECONDS_MAX + 1,
                id: 3
            })
        ),
        KvError::LeaseTtlTooLarge
    );
    // A second replica picks the same server-chosen ID.
    let mut replica = Store::new(Config::default());
    let Response::LeaseGrant(again) = ok(&mut replica, Request::LeaseGrant(LeaseGrantRequest { ttl: 1, id: 0 })) else {
        panic!()
    };
    assert_eq!(again.id, granted.id);
    for key in ["x", "y"] {
        ok(
            &mut store,
            Request::Put(PutRequest {
                lease: granted.id,
                ..put_request(key, "v")
            }),
        );
    }
    ok(&mut store, put("z", "v"));
    assert_eq!(store.lease(granted.id).unwrap().keys.len(), 2);
    // Re-putting without the lease detaches the key.
    ok(&mut store, put("y", "w"));
    assert_eq!(store.lease(granted.id).unwrap().keys.len(), 1);
    let before = store.revision();
    let applied = store.apply(&Request::LeaseRevoke(LeaseRevokeRequest { id: granted.id }));
    assert!(applied.result.is_ok());
    assert_eq!(applied.revision, before + 1);
    assert_eq!(applied.events.len(), 1);
    assert_eq!(applied.events[0].r#type, EventType::Delete);
    assert_eq!(applied.lease_effect, Some(LeaseEffect::Revoked { id: granted.id }));
    assert!(get(&store, "x").is_none() && get(&store, "y").is_some());
    assert_eq!(
        err(&mut store, Request::LeaseRevoke(LeaseRevokeRequest { id: granted.id })),
        KvError::LeaseNotFound
    );
    assert!(store.lease_leases().leases.is_empty());
}

#[test]
fn lessor_tracks_deadlines_and_renews_on_promotion() {
    let mut store = store();
    let mut lessor = Lessor::new(1_000);
    lessor.promote(&store, 0);
    let applied = store.apply(&Request::LeaseGrant(LeaseGrantRequest { ttl: 10, id: 5 }));
    lessor.observe(&applied, 1_000);
    ok(
        &mut store,
        Request::Put(PutRequest {
            lease: 5,
            ..put_request("k", "v")
        }),
    );
    assert_eq!(lessor.remaining_ttl_seconds(5, 2_500), Some(9));
    assert!(lessor.expired(&store, 10_999, 10).is_empty());
    assert_eq!(lessor.keep_alive(&store, 5, 6_000), 10);
    assert!(lessor.expired(&store, 15_999, 10).is_empty());
    assert_eq!(lessor.expired(&store, 16_000, 10), vec![5]);
    // Reported once, then again only after the retry delay.
    assert!(lessor.expired(&store, 16_500, 10).is_empty());
    assert_eq!(lessor.expired(&store, 17_000, 10), vec![5]);
    let ttl = lessor.time_to_live(&store, 5, true, 17_000);
    assert_eq!((ttl.granted_ttl, ttl.keys.clone()), (10, vec![b"k".to_vec()]));
    assert_eq!(lessor.time_to_live(&store, 77, false, 0).ttl, -1);
    assert_eq!(lessor.keep_alive(&store, 77, 0), 0);
    let reply = lessor.keep_alive_response(&store, 5, 17_000);
    assert_eq!((reply.id, reply.ttl, reply.header.revision), (5, 10, store.revision()));
    // A new master renews the full TTL.
    let mut successor = Lessor::new(1_000);
    successor.promote(&store, 50_000);
    assert!(successor.expired(&store, 59_999, 10).is_empty());
    assert_eq!(successor.expired(&store, 60_000, 10), vec![5]);
    let applied = store.apply(&Request::LeaseRevoke(LeaseRevokeRequest { id: 5 }));
    successor.observe(&applied, 60_000);
    assert!(successor.expired(&store, 100_000, 10).is_empty());
    lessor.demote();
    assert!(!lessor.is_primary());
}

fn drain(hub: &mut WatchHub, store: &Store) -> Vec<WatchResponse> {
    let mut all = hub.poll(store);
    while hub.catching_up() {
        all.extend(hub.poll(store));
    }
    all
}

fn events_of(responses: &[WatchResponse], watch_id: i64) -> Vec<(EventType, String, i64)> {
    responses
        .iter()
        .filter(|response| response.watch_id == watch_id)
        .flat_map(|response| response.events.iter())
        .map(|event| {
            (
                event.r#type,
                String::from_utf8(event.kv.key.clone()).unwrap(),
                event.kv.mod_revision,
            )
        })
        .collect()
}

#[test]
fn watches_live_and_from_history() {
    let mut store = store();
    let mut hub = WatchHub::new(WatchConfig::default());
    ok(&mut store, put("a", "1"));
    ok(&mut store, put("b", "1"));
    let live = hub
        .create(
            &store,
            &WatchCreateRequest {
                key: b"a".to_vec(),
                range_end: b"c".to_vec(),
                prev_kv: true,
                ..WatchCreateRequest::default()
            },
        )
        .unwrap();
    let past = hub
        .create(
            &store,
            &WatchCreateRequest {
                key: b"a".to_vec(),
                start_revision: 2,
                filters: vec![WatchFilter::NoDelete],
                watch_id: 100,
                ..WatchCreateRequest::default()
            },
        )
        .unwrap();
    assert_eq!(past, 100);
    assert_eq!(
        hub.create(
            &store,
            &WatchCreateRequest {
                key: b"a".to_vec(),
                watch_id: 100,
                ..WatchCreateRequest::default()
            }
        ),
        Err(KvError::DuplicateWatchId)
    );
    for request in [put("a", "2"), delete("a", "c"), put("c", "1")] {
        let applied = store.apply(&request);
        hub.observe(&applied);
    }
    let responses = drain(&mut hub, &store);
    assert!(responses[0].created && responses[1].created && responses[2].canceled);
    assert_eq!(
        events_of(&responses, live),
        vec![
            (EventType::Put, "a".into(), 4),
            (EventType::Delete, "a".into(), 5),
            (EventType::Delete, "b".into(), 5)
        ]
    );
    let with_prev = responses
        .iter()
        .find(|r| r.watch_id == live && !r.events.is_empty())
        .unwrap();
    assert_eq!(with_prev.events[0].prev_kv.as_ref().unwrap().value, b"1");
    assert_eq!(
        events_of(&responses, past),
        vec![(EventType::Put, "a".into(), 2), (EventType::Put, "a".into(), 4)]
    );
    // A revision is never split across responses.
    assert!(responses.iter().filter(|r| r.watch_id == live).all(|r| r
        .events
        .windows(2)
        .all(|pair| pair[0].kv.mod_revision == pair[1].kv.mod_revision)));
    assert!(hub.cancel(&store, live));
    assert!(!hub.cancel(&store, live));
    hub.request_progress();
    let responses = drain(&mut hub, &store);
    assert!(responses[0].canceled);
    assert_eq!(
        (responses[1].watch_id, responses[1].header.revision),
        (-1, store.revision())
    );
}

#[test]
fn watch_below_compaction_is_cancelled_with_compact_revision() {
    let mut store = store();
    for value in ["1", "2", "3"] {
        ok(&mut store, put("a", value));
    }
    ok(
        &mut store,
        Request::Compaction(CompactionRequest {
            revision: 3,
            physical: false,
        }),
    );
    let mut hub = WatchHub::new(WatchConfig::default());
    let id = hub
        .create(
            &store,
            &WatchCreateRequest {
                key: b"a".to_vec(),
                start_revision: 2,
                ..WatchCreateRequest::default()
            },
        )
        .unwrap();
    let responses = drain(&mut hub, &store);
    assert_eq!(responses.len(), 2);
    assert!(responses[1].canceled);
    assert_eq!((responses[1].watch_id, responses[1].compact_revision), (id, 3));
    // Resuming from the compacted revision works.
    hub.create(
        &store,
        &WatchCreateRequest {
            key: b"a".to_vec(),
            start_revision: 3,
            watch_id: 7,
            ..WatchCreateRequest::default()
        },
    )
    .unwrap();
    let responses = drain(&mut hub, &store);
    assert_eq!(
        events_of(&responses, 7),
        vec![(EventType::Put, "a".into(), 3), (EventType::Put, "a".into(), 4)]
    );
}

#[test]
fn slow_watcher_resyncs_from_history_without_gaps() {
    let mut store = store();
    let mut hub = WatchHub::new(WatchConfig {
        pending_events_max: 3,
        catch_up_events_max: 2,
        watchers_max: 4,
    });
    let id = hub
        .create(
            &store,
            &WatchCreateRequest {
                key: b"k".to_vec(),
                range_end: vec![0],
                progress_notify: true,
                ..WatchCreateRequest::default()
            },
        )
        .unwrap();
    for i in 0..10 {
        let applied = store.apply(&put(&format!("k{i}"), "v"));
        hub.observe(&applied);
    }
    let responses = drain(&mut hub, &store);
    let revisions: Vec<i64> = events_of(&responses, id).iter().map(|event| event.2).collect();
    assert_eq!(revisions, (2..=11).collect::<Vec<_>>());
    hub.progress_notify(&store);
    let responses = hub.poll(&store);
    assert_eq!((responses.len(), responses[0].header.revision), (1, 11));
    assert!(responses[0].events.is_empty());
}

#[test]
fn snapshots_are_deterministic_and_restore_exactly() {
    let mut store = store();
    let mut replica = Store::new(Config::default());
    let requests = vec![
        Request::LeaseGrant(LeaseGrantRequest { ttl: 30, id: 0 }),
        put("a", "1"),
        put("b", "2"),
        put("a", "3"),
        delete("b", ""),
        Request::Compaction(CompactionRequest {
            revision: 3,
            physical: false,
        }),
        put("c", &"x".repeat(500)),
    ];
    for request in &requests {
        store.apply(request);
        replica.apply(request);
        assert_eq!(store.state_hash(), replica.state_hash());
    }
    let lease = store.lease_leases().leases[0];
    let attach = Request::Put(PutRequest {
        lease,
        ..put_request("d", "4")
    });
    store.apply(&attach);
    replica.apply(&attach);
    assert_eq!(store.snapshot(), replica.snapshot());
    let chunks: Vec<Vec<u8>> = store.snapshot_chunks(64).collect();
    assert!(chunks.iter().all(|chunk| chunk.len() <= 64));
    let mut restored = Store::restore_chunks(Config::default(), chunks.iter().map(|c| c.as_slice())).unwrap();
    assert_eq!(restored.snapshot(), store.snapshot());
    assert_eq!(restored.state_hash(), store.state_hash());
    assert_eq!(restored.lease(lease).unwrap().keys.len(), 1);
    // Both continue identically.
    let next = put("e", "5");
    store.apply(&next);
    restored.apply(&next);
    assert_eq!(restored.state_hash(), store.state_hash());
    assert_eq!(restored.snapshot(), store.snapshot());
}

#[test]
fn damaged_snapshots_are_rejected_without_panics() {
    let mut store = store();
    for i in 0..5 {
        store.apply(&put(&format!("k{i}"), "value"));
    }
    let body = store.snapshot();
    for length in 0..body.len() {
        assert!(Store::restore(Config::default(), &body[..length]).is_err());
    }
    for position in 0..body.len() {
        let mut damaged = body.clone();
        damaged[position] ^= 0x10;
        assert!(Store::restore(Config::default(), &damaged).is_err());
    }
    // Another format version, behind a valid checksum.
    let mut other_version = body.clone();
    other_version[7] = b'5';
    let content_length = other_version.len() - 4;
    let checksum = crc32c::crc32c(&other_version[..content_length]);
    other_version[content_length..].copy_from_slice(&checksum.to_le_bytes());
    assert_eq!(
        Store::restore(Config::default(), &other_version).err(),
        Some(KvError::Corrupt("snapshot format version not supported"))
    );
    let chunks: Vec<Vec<u8>> = store.snapshot_chunks(40).collect();
    let refs = |chunks: &[Vec<u8>]| chunks.to_vec();
    let mut missing = refs(&chunks);
    missing.pop();
    assert!(Store::restore_chunks(Config::default(), missing.iter().map(|c| c.as_slice())).is_err());
    let mut swapped = refs(&chunks);
    swapped.swap(0, 1);
    assert!(Store::restore_chunks(Config::default(), swapped.iter().map(|c| c.as_slice())).is_err());
    let mut flipped = refs(&chunks);
    flipped[1][13] ^= 1;
    assert!(Store::restore_chunks(Config::default(), flipped.iter().map(|c| c.as_slice())).is_err());
}

#[test]
fn sequencer_check_follows_the_lock_key() {
    let mut store = store();
    ok(&mut store, Request::LeaseGrant(LeaseGrantRequest { ttl: 30, id: 1 }));
    ok(
        &mut store,
        Request::Put(PutRequest {
            lease: 1,
            ..put_request("lock", "")
        }),
    );
    let token = store.sequencer(b"lock").unwrap();
    assert_eq!((token.create_revision, token.lease), (2, 1));
    assert!(store.check_sequencer(&token).is_ok());
    // Re-putting keeps the token valid (same create revision and lease).
    ok(
        &mut store,
        Request::Put(PutRequest {
            ignore_lease: true,
            ..put_request("lock", "x")
        }),
    );
    assert!(store.check_sequencer(&token).is_ok());
    ok(&mut store, delete("lock", ""));
    assert_eq!(store.check_sequencer(&token), Err(KvError::StaleSequencer));
    assert!(store.sequencer(b"lock").is_none());
}

#[test]
fn config_validation() {
    assert!(Config::default().validate().is_ok());
    for config in [
        Config {
            range_keys_max: 0,
            ..Config::default()
        },
        Config {
            lease_ttl_seconds_min: 0,
            ..Config::default()
        },
        Config {
            compaction_keys_per_entry_max: 0,
            ..Config::default()
        },
        Config {
            request_bytes_max: 10,
            ..Config::default()
        },
    ] {
        assert!(config.validate().is_err());
    }
}

#[test]
fn watch_from_a_future_revision_waits_for_it() {
    let mut store = store();
    let mut hub = WatchHub::new(WatchConfig::default());
    let start = store.revision() + 3;
    let id = hub
        .create(
            &store,
            &WatchCreateRequest {
                key: b"k".to_vec(),
                start_revision: start,
                ..WatchCreateRequest::default()
            },
        )
        .unwrap();
    for value in ["1", "2", "3", "4", "5"] {
        let applied = store.apply(&put("k", value));
        hub.observe(&applied);
    }
    let responses = drain(&mut hub, &store);
    let revisions: Vec<i64> = events_of(&responses, id).iter().map(|event| event.2).collect();
    assert_eq!(revisions, (start..=store.revision()).collect::<Vec<_>>());
}

#[test]
fn state_hash_tracks_effects() {
    let mut first = store();
    let mut second = store();
    first.apply(&put("a", "1"));
    second.apply(&put("a", "2"));
    assert_ne!(first.state_hash(), second.state_hash());
    // The same effects in the same order agree; errors count as applied entries.
    let mut third = store();
    third.apply(&put("a", "1"));
    assert_eq!(first.state_hash(), third.state_hash());
    first.apply(&put("", "x"));
    assert_ne!(first.state_hash(), third.state_hash());
    third.apply(&put("", "x"));
    assert_eq!(first.state_hash(), third.state_hash());
    assert_eq!(first.applied_index(), 2);
}

#[test]
fn watchers_replay_what_a_snapshot_install_skipped() {
    let store = store();
    let mut hub = WatchHub::new(WatchConfig::default());
    let watch = hub
        .create(
            &store,
            &WatchCreateRequest {
                key: b"a".to_vec(),
                ..WatchCreateRequest::default()
            },
        )
        .unwrap();
    drain(&mut hub, &store);
    // The replica falls behind; a peer's store moves on and is installed here
    // as a snapshot: the hub never observes those applies.
    let mut peer = Store::restore(Config::default(), &store.snapshot()).unwrap();
    ok(&mut peer, put("a", "1"));
    ok(&mut peer, put("a", "2"));
    let installed = Store::restore(Config::default(), &peer.snapshot()).unwrap();
    hub.resync_all();
    let responses = drain(&mut hub, &installed);
    assert_eq!(
        events_of(&responses, watch),
        vec![(EventType::Put, "a".into(), 2), (EventType::Put, "a".into(), 3)]
    );
}

/// A frozen copy must be able to go to another thread and outlive the borrow.
#[test]
fn a_frozen_store_is_send_sync_and_static() {
    fn assert_movable<T: Send + Sync + 'static>(_: &T) {}
    assert_movable(&store().freeze());
}

fn lease_put(key: &str, value: &str, lease: i64) -> Request {
    Request::Put(PutRequest {
        lease,
        ..put_request(key, value)
    })
}

#[test]
fn a_frozen_store_keeps_the_state_it_was_frozen_at() {
    let mut store = store();
    // A twin that is never frozen: the live store must stay identical to it.
    let mut twin = self::store();
    let mut both = |request: Request, store: &mut Store| {
        let applied = store.apply(&request);
        assert_eq!(twin.apply(&request), applied);
    };
    both(Request::LeaseGrant(LeaseGrantRequest { ttl: 30, id: 7 }), &mut store);
    both(Request::LeaseGrant(LeaseGrantRequest { ttl: 60, id: 8 }), &mut store);
    for index in 0..300 {
        let key = format!("key-{index:04}");
        both(
            lease_put(&key, "first", if index % 10 == 0 { 7 } else { 0 }),
            &mut store,
        );
    }
    both(put("key-0001", "second"), &mut store);
    let frozen = store.freeze();
    let at_freeze = store.snapshot();
    assert_eq!(frozen.snapshot(), at_freeze);
    assert_eq!(
        (
            frozen.applied_index(),
            frozen.revision(),
            frozen.compact_revision(),
            frozen.state_hash()
        ),
        (
            store.applied_index(),
            store.revision(),
            store.compact_revision(),
            store.state_hash()
        )
    );

    // Puts (new keys, overwrites, a lease attached), deletes, a compaction and
    // lease changes, all after the freeze.
    both(put("key-0000", "third"), &mut store);
    both(put("a-new-key-below-every-other", "x"), &mut store);
    both(lease_put("key-0150", "leased", 8), &mut store);
    both(delete("key-0100", "key-0200"), &mut store);
    let revision = store.revision();
    both(
        Request::Compaction(CompactionRequest {
            revision,
            physical: true,
        }),
        &mut store,
    );
    both(Request::LeaseRevoke(LeaseRevokeRequest { id: 7 }), &mut store);
    both(Request::LeaseGrant(LeaseGrantRequest { ttl: 90, id: 9 }), &mut store);

    assert_eq!(frozen.snapshot(), at_freeze);
    assert_eq!(store.snapshot(), twin.snapshot());
    assert_eq!(store.state_hash(), twin.state_hash());
    for (id, lease) in twin.leases() {
        assert_eq!(store.lease(id), Some(lease));
    }
    // The frozen bytes restore to the store as it was.
    let restored = Store::restore(Config::default(), &frozen.snapshot()).unwrap();
    assert_eq!(restored.lease(7).unwrap().keys.len(), 30);
    assert_eq!(get(&restored, "key-0001").unwrap().value, b"second");
    assert_eq!(get(&restored, "key-0150").unwrap().value, b"first");
    assert!(get(&store, "key-0150").is_none());
}

#[test]
fn a_range_gives_up_past_its_key_bound_and_a_frozen_copy_answers_it() {
    let mut store = store();
    for index in 0..100 {
        ok(&mut store, put(&format!("key-{index:03}"), "v"));
    }
    ok(&mut store, delete("key-050", "key-060"));
    let everything = RangeRequest {
        limit: 5,
        ..range("key-", "key.")
    };
    let expected = store.range(&everything).unwrap();
    assert_eq!((expected.count, expected.kvs.len(), expected.more), (90, 5, true));
    // Deleted keys with history count as looked at: 100 in all.
    assert_eq!(store.range_within(&everything, 100), Some(Ok(expected.clone())));
    assert_eq!(store.range_within(&everything, 99), None);
    assert_eq!(
        store.range_within(&range("key-007", ""), 1),
        Some(store.range(&range("key-007", "")))
    );
    assert_eq!(
        store.range_within(&range("", ""), 0),
        Some(Err(KvError::KeyNotProvided))
    );

    let frozen = store.freeze();
    ok(&mut store, delete("key-", "key."));
    assert_eq!(frozen.range(&everything), Ok(expected));
    assert_eq!(store.range(&everything).unwrap().count, 0);
}

#[test]
fn a_snapshot_streams_in_bounded_pieces_and_stops_at_a_sink_error() {
    let mut store = store();
    let value = "v".repeat(1_000);
    for index in 0..500 {
        ok(&mut store, put(&format!("key-{index:04}"), &value));
    }
    let frozen = store.freeze();
    let mut pieces: Vec<Vec<u8>> = Vec::new();
    frozen
        .write_snapshot(|piece| {
            pieces.push(piece.to_vec());
            Ok::<(), ()>(())
        })
        .unwrap();
    assert!(pieces.len() > 4);
    assert!(pieces.iter().all(|piece| piece.len() <= 66 * 1024));
    assert_eq!(pieces.concat(), store.snapshot());

    let mut calls = 0;
    let result = frozen.write_snapshot(|_| {
        calls += 1;
        if calls == 2 {
            Err("disk full")
        } else {
            Ok(())
        }
    });
    assert_eq!((result, calls), (Err("disk full"), 2));
}

mod frozen {
    use proptest::prelude::*;

    use super::*;

    #[derive(Clone, Debug)]
    enum Step {
        Apply(Request),
        Compact(i64),
        Freeze,
    }

    fn key(index: u16) -> String {
        // Some keys are long enough to be stored on the heap.
        if index.is_multiple_of(5) {
            format!("a-key-long-enough-to-live-on-the-heap-{index:04}")
        } else {
            format!("k{index:04}")
        }
    }

    fn step() -> impl Strategy<Value = Step> {
        prop_oneof![
            12 => (0u16..400, 0i64..4).prop_map(|(index, lease)| Step::Apply(lease_put(&key(index), "v", lease))),
            2 => (0u16..400, 0u16..40).prop_map(|(index, span)| {
                Step::Apply(delete(&key(index), &key(index.saturating_add(span))))
            }),
            1 => (0i64..20).prop_map(Step::Compact),
            1 => (1i64..4).prop_map(|id| Step::Apply(Request::LeaseGrant(LeaseGrantRequest { ttl: 10, id }))),
            1 => (1i64..4).prop_map(|id| Step::Apply(Request::LeaseRevoke(LeaseRevokeRequest { id }))),
            1 => Just(Step::Freeze),
        ]
    }

    proptest! {
        #![proptest_config(ProptestConfig { cases: 200, failure_persistence: None, ..ProptestConfig::default() })]

        /// Every frozen copy still serializes to the bytes the store had when
        /// it was frozen, and the live store ends as a twin that was never
        /// frozen does.
        #[test]
        fn frozen_copies_never_change(steps in proptest::collection::vec(step(), 1..400)) {
            let mut store = Store::new(Config::default());
            let mut twin = Store::new(Config::default());
            let mut frozen: Vec<(FrozenStore, Vec<u8>)> = Vec::new();
            for step in steps {
                let request = match step {
                    Step::Apply(request) => request,
                    Step::Compact(back) => Request::Compaction(CompactionRequest {
                        revision: store.revision() - back,
                        physical: false,
                    }),
                    Step::Freeze => {
                        frozen.push((store.freeze(), store.snapshot()));
                        continue;
                    }
                };
                let applied = store.apply(&request);
                prop_assert_eq!(&twin.apply(&request), &applied);
            }
            for (copy, bytes) in &frozen {
                prop_assert_eq!(&copy.snapshot(), bytes);
            }
            prop_assert_eq!(store.snapshot(), twin.snapshot());
            for (id, lease) in twin.leases() {
                prop_assert_eq!(store.lease(id), Some(lease));
            }
        }
    }
}

// ------------------------------------------------- incremental compaction

fn compact_to(revision: i64) -> Request {
    Request::Compaction(CompactionRequest {
        revision,
        physical: false,
    })
}

/// A store whose compactions visit `keys_per_entry` keys per applied entry.
fn stepped_store(keys_per_entry: usize) -> Store {
    Store::new(Config {
        compaction_keys_per_entry_max: keys_per_entry,
        history_revisions_max: 0,
        ..Config::default()
    })
}

/// Entries that leave history to compact: 300 keys, most overwritten, some
/// deleted, some deleted and put again, some attached to a lease.
fn history_entries() -> Vec<Request> {
    let mut entries = vec![Request::LeaseGrant(LeaseGrantRequest { ttl: 30, id: 9 })];
    for round in 0..3 {
        for key in 0..300 {
            let name = format!("k{key:03}");
            if round == 1 && key % 7 == 0 {
                entries.push(delete(&name, ""));
            } else if key % 11 == 0 {
                entries.push(lease_put(&name, &format!("{round}"), 9));
            } else if round == 0 || key % 3 != 0 {
                entries.push(put(&name, &format!("{round}-{key}")));
            }
        }
    }
    // A deletion exactly at the revision compacted to below.
    entries.push(delete("k005", ""));
    entries
}

/// Entries applied while a compaction goes on: writes, deletes, and a Txn
/// whose compares look at keys the compaction has or has not visited.
fn entries_during(step: usize) -> Request {
    let name = format!("k{:03}", (step * 37) % 300);
    match step % 4 {
        0 => put(&name, &format!("during-{step}")),
        1 => delete(&name, ""),
        2 => Request::Txn(TxnRequest {
            compare: vec![
                compare(
                    CompareTarget::Version,
                    CompareResult::Greater,
                    "k",
                    TargetUnion::Version(1),
                ),
                compare(
                    CompareTarget::Create,
                    CompareResult::Less,
                    &name,
                    TargetUnion::CreateRevision(400),
                ),
            ],
            success: vec![RequestOp::Range(range("k1", "k2"))],
            failure: vec![RequestOp::Range(RangeRequest {
                count_only: true,
                ..range("k", "l")
            })],
        }),
        _ => Request::Txn(TxnRequest::default()),
    }
}

/// Everything a client can read: ranges with every option at every revision
/// the store still serves, and a watch catching up from the compacted revision.
fn observable(store: &Store) -> (Vec<Result<RangeResponse, KvError>>, Vec<WatchResponse>) {
    let mut reads = Vec::new();
    for revision in store.compact_revision().max(1) - 1..=store.revision() {
        let all = RangeRequest {
            revision,
            ..range("k", "l")
        };
        for request in [
            all.clone(),
            RangeRequest {
                count_only: true,
                ..all.clone()
            },
            RangeRequest {
                keys_only: true,
                limit: 17,
                ..all.clone()
            },
            RangeRequest {
                limit: 5,
                sort_target: SortTarget::Mod,
                sort_order: SortOrder::Descend,
                ..all.clone()
            },
            RangeRequest {
                min_mod_revision: 250,
                max_create_revision: 600,
                ..all.clone()
            },
            RangeRequest {
                max_mod_revision: 400,
                min_create_revision: 2,
                ..all.clone()
            },
            RangeRequest {
                revision,
                ..range("k005", "")
            },
            RangeRequest {
                revision,
                ..range("k000", "")
            },
        ] {
            reads.push(store.range(&request));
        }
    }
    let mut hub = WatchHub::new(WatchConfig {
        catch_up_events_max: 50,
        ..WatchConfig::default()
    });
    hub.create(
        store,
        &WatchCreateRequest {
            key: b"k".to_vec(),
            range_end: b"l".to_vec(),
            start_revision: store.compact_revision(),
            prev_kv: true,
            ..WatchCreateRequest::default()
        },
    )
    .unwrap();
    (reads, drain(&mut hub, store))
}

/// The same as `Store::apply`, checking the outcome against `reference`.
fn apply_both(store: &mut Store, reference: &mut Store, request: &Request) {
    let applied = store.apply(request);
    assert_eq!(applied, reference.apply(request));
    assert_eq!(store.state_hash(), reference.state_hash());
    assert_eq!(store.compact_revision(), reference.compact_revision());
}

#[test]
fn a_compaction_in_small_steps_reads_like_a_finished_one() {
    // The reference visits every key within the compacting entry.
    let mut reference = stepped_store(usize::MAX);
    let mut store = stepped_store(7);
    for request in history_entries() {
        apply_both(&mut store, &mut reference, &request);
    }
    let revision = store.revision();
    apply_both(&mut store, &mut reference, &compact_to(revision));
    assert_eq!(reference.pending_compaction(), None);
    assert_eq!(store.pending_compaction(), Some(revision));
    // Reads below the compacted revision fail at once.
    assert_eq!(
        store.range(&RangeRequest {
            revision: revision - 1,
            ..range("k", "l")
        }),
        Err(KvError::Compacted)
    );
    // Mid-way, the store still holds history the reference dropped.
    assert!(store.indexed_keys() > reference.indexed_keys());
    let mut steps = 0;
    while store.pending_compaction().is_some() {
        assert_eq!(observable(&store), observable(&reference));
        assert!(store.retained_bytes() >= reference.retained_bytes());
        apply_both(&mut store, &mut reference, &entries_during(steps));
        steps += 1;
    }
    // 300 keys or so, 7 per entry.
    assert!((40..=50).contains(&steps), "{steps} entries");
    assert_eq!(observable(&store), observable(&reference));
    assert_eq!(store.retained_bytes(), reference.retained_bytes());
    assert_eq!(store.indexed_keys(), reference.indexed_keys());
    assert_eq!(store.snapshot(), reference.snapshot());
    assert_eq!(store.lease(9), reference.lease(9));
}

#[test]
fn replicas_and_restored_snapshots_compact_identically() {
    let mut store = stepped_store(5);
    let mut replica = stepped_store(5);
    // Compacted all at once to the same revisions, for the end state.
    let mut reference = stepped_store(usize::MAX);
    for request in history_entries() {
        apply_both(&mut store, &mut replica, &request);
        reference.apply(&request);
    }
    let first = store.revision() - 400;
    let mut entries = vec![compact_to(first)];
    let mut restored: Option<Store> = None;
    let mut second = None;
    for steps in 0.. {
        for request in entries.drain(..) {
            let applied = store.apply(&request);
            assert_eq!(replica.apply(&request), applied);
            assert_eq!(reference.apply(&request), applied);
            if let Some(restored) = &mut restored {
                assert_eq!(restored.apply(&request), applied);
            }
        }
        // Byte-identical at every applied index, mid-compaction included.
        assert_eq!(store.snapshot(), replica.snapshot());
        assert_eq!(store.retained_bytes(), replica.retained_bytes());
        if let Some(restored) = &restored {
            assert_eq!(restored.snapshot(), store.snapshot());
        }
        if store.pending_compaction().is_none() {
            break;
        }
        if steps == 10 {
            // A snapshot taken halfway goes on from the same key.
            let mut bytes = Vec::new();
            let Ok(()) = store.freeze().write_snapshot(|piece| {
                bytes.extend_from_slice(piece);
                Ok::<(), std::convert::Infallible>(())
            });
            restored = Some(Store::restore(store.config().clone(), &bytes).unwrap());
        }
        if steps == 20 {
            // A second compaction mid-way: the walk starts again, towards it.
            assert_eq!(store.pending_compaction(), Some(first));
            second = Some(store.revision() - 100);
            entries.push(compact_to(second.unwrap()));
        }
        entries.push(entries_during(steps));
    }
    assert_eq!(store.compact_revision(), second.unwrap());
    assert!(restored.is_some());
    assert_eq!(store.snapshot(), reference.snapshot());
    assert_eq!(store.retained_bytes(), reference.retained_bytes());
}

#[test]
fn a_host_may_step_a_compaction_once_per_batch_instead_of_per_entry() {
    let config = Config {
        compaction_keys_per_entry_max: 5,
        ..Config::default()
    };
    let mut per_batch = Store::new(config.clone());
    let mut per_entry = Store::new(config);
    for index in 0..40 {
        for value in ["a", "b"] {
            let entry = put(&format!("k{index:02}"), value).encode();
            per_batch.apply_bytes_deferring_compaction(&entry);
            per_entry.apply_bytes(&entry);
        }
    }
    let compact = Request::Compaction(CompactionRequest {
        revision: 81,
        physical: false,
    })
    .encode();
    per_batch.apply_bytes_deferring_compaction(&compact);
    per_entry.apply_bytes(&compact);
    // A batch of many entries takes no step of its own.
    for _ in 0..20 {
        per_batch.apply_bytes_deferring_compaction(&put("x", "y").encode());
    }
    assert_eq!(per_batch.pending_compaction(), Some(81));
    let mut steps = 0;
    while per_batch.pending_compaction().is_some() {
        per_batch.compaction_step();
        steps += 1;
    }
    assert!((8..=10).contains(&steps), "40 keys at 5 per step took {steps} steps");
    for _ in 0..20 {
        per_entry.apply_bytes(&put("x", "y").encode());
    }
    assert_eq!(per_entry.pending_compaction(), None);
    // Where the steps fall changes nothing the replicas compare.
    assert_eq!(per_batch.snapshot(), per_entry.snapshot());
    assert_eq!(per_batch.state_hash(), per_entry.state_hash());
    assert_eq!(per_batch.retained_bytes(), per_entry.retained_bytes());
}

/// A snapshot of `store` (no leases) in an older layout: version 2 lacks
/// the alarm count after the (empty) lease list, version 1 also the
/// pending-compaction flag before it.
fn older_snapshot(store: &Store, version: u8) -> Vec<u8> {
    let body = store.snapshot();
    let mut header = crate::varint::Encoder::default();
    header.u64(store.applied_index());
    header.i64(store.revision());
    header.i64(store.compact_revision());
    header.u64_fixed(store.state_hash());
    header.u64(store.retained_bytes());
    let field = 8 + header.bytes.len();
    assert_eq!(
        body[field..field + 7],
        [0, 0, 0, 0, 1, 0, 0],
        "no compaction pending, no lease, no alarm, auth disabled at revision 1 with no user or role"
    );
    let mut older = body[..body.len() - 4].to_vec();
    older.drain(field + 3..field + 7);
    if version <= b'2' {
        older.remove(field + 2);
    }
    if version == b'1' {
        older.remove(field);
    }
    older[7] = version;
    let checksum = crc32c::crc32c(&older);
    older.extend_from_slice(&checksum.to_le_bytes());
    older
}

#[test]
fn a_version_1_snapshot_restores_with_no_compaction_pending() {
    let mut store = store();
    for i in 0..5 {
        store.apply(&put(&format!("k{i}"), "value"));
    }
    let version_1 = older_snapshot(&store, b'1');
    let restored = Store::restore(Config::default(), &version_1).expect("a version 1 snapshot restores");
    assert_eq!(restored.pending_compaction(), None);
    assert_eq!(restored.snapshot(), store.snapshot(), "and is the same state");
}

#[test]
fn a_version_2_snapshot_restores_with_no_alarm_raised() {
    let mut store = store();
    for i in 0..5 {
        store.apply(&put(&format!("k{i}"), "value"));
    }
    let version_2 = older_snapshot(&store, b'2');
    let restored = Store::restore(Config::default(), &version_2).expect("a version 2 snapshot restores");
    assert_eq!(restored.alarms(AlarmType::None).alarms, []);
    assert_eq!(restored.snapshot(), store.snapshot(), "and is the same state");
}

#[test]
fn a_version_3_snapshot_restores_with_auth_disabled() {
    let mut store = store();
    for i in 0..5 {
        store.apply(&put(&format!("k{i}"), "value"));
    }
    let version_3 = older_snapshot(&store, b'3');
    let restored = Store::restore(Config::default(), &version_3).expect("a version 3 snapshot restores");
    assert!(!restored.auth().enabled());
    assert_eq!(restored.snapshot(), store.snapshot(), "and is the same state");
}

fn alarm(action: AlarmAction, member_id: u64, alarm: AlarmType) -> Request {
    Request::Alarm(AlarmRequest {
        action,
        member_id,
        alarm,
    })
}

fn alarms_of(response: Response) -> Vec<AlarmMember> {
    match response {
        Response::Alarm(response) => response.alarms,
        other => panic!("not an alarm response: {other:?}"),
    }
}

#[test]
fn alarms_are_raised_listed_and_cleared_per_member_and_kind() {
    let mut store = store();
    store.apply(&put("k", "v"));
    let revision = store.revision();
    let nospace_2 = AlarmMember {
        member_id: 2,
        alarm: AlarmType::Nospace,
    };
    let corrupt_1 = AlarmMember {
        member_id: 1,
        alarm: AlarmType::Corrupt,
    };
    let nospace_1 = AlarmMember {
        member_id: 1,
        alarm: AlarmType::Nospace,
    };
    use AlarmAction::{Activate, Deactivate};
    assert_eq!(
        alarms_of(ok(&mut store, alarm(Activate, 2, AlarmType::Nospace))),
        [nospace_2]
    );
    // Raising it again answers the same alarm and changes nothing.
    assert_eq!(
        alarms_of(ok(&mut store, alarm(Activate, 2, AlarmType::Nospace))),
        [nospace_2]
    );
    assert_eq!(
        alarms_of(ok(&mut store, alarm(Activate, 1, AlarmType::Corrupt))),
        [corrupt_1]
    );
    assert_eq!(
        alarms_of(ok(&mut store, alarm(Activate, 1, AlarmType::Nospace))),
        [nospace_1]
    );
    // Raising NONE does nothing.
    assert_eq!(alarms_of(ok(&mut store, alarm(Activate, 3, AlarmType::None))), []);
    assert_eq!(store.revision(), revision, "alarms leave the revision alone");
    assert_eq!(store.alarms(AlarmType::None).alarms, [nospace_1, corrupt_1, nospace_2]);
    assert_eq!(store.alarms(AlarmType::Nospace).alarms, [nospace_1, nospace_2]);
    assert_eq!(store.alarms(AlarmType::Corrupt).alarms, [corrupt_1]);
    assert_eq!(store.alarms(AlarmType::None).header.revision, revision);
    // A snapshot keeps them.
    let restored = Store::restore(Config::default(), &store.snapshot()).unwrap();
    assert_eq!(restored.alarms(AlarmType::None), store.alarms(AlarmType::None));
    assert_eq!(restored.snapshot(), store.snapshot());
    // Deactivating clears exactly that alarm; NONE, another member or a
    // cleared alarm clears nothing (etcd's semantics).
    assert_eq!(alarms_of(ok(&mut store, alarm(Deactivate, 1, AlarmType::None))), []);
    assert_eq!(alarms_of(ok(&mut store, alarm(Deactivate, 3, AlarmType::Nospace))), []);
    assert_eq!(
        alarms_of(ok(&mut store, alarm(Deactivate, 1, AlarmType::Nospace))),
        [nospace_1]
    );
    assert_eq!(alarms_of(ok(&mut store, alarm(Deactivate, 1, AlarmType::Nospace))), []);
    assert_eq!(store.alarms(AlarmType::None).alarms, [corrupt_1, nospace_2]);
    assert_eq!(store.revision(), revision);
}

#[test]
fn alarms_are_bounded() {
    let mut store = store();
    for member_id in 0..ALARMS_MAX as u64 {
        ok(&mut store, alarm(AlarmAction::Activate, member_id, AlarmType::Corrupt));
    }
    assert_eq!(
        err(&mut store, alarm(AlarmAction::Activate, u64::MAX, AlarmType::Corrupt)),
        KvError::TooManyAlarms
    );
    // Raising one already raised still answers it.
    ok(&mut store, alarm(AlarmAction::Activate, 0, AlarmType::Corrupt));
    let restored = Store::restore(Config::default(), &store.snapshot()).unwrap();
    assert_eq!(restored.alarms(AlarmType::None).alarms.len(), ALARMS_MAX);
}

#[test]
fn alarms_enter_the_state_hash() {
    let mut raised = store();
    let mut other = store();
    ok(&mut raised, alarm(AlarmAction::Activate, 1, AlarmType::Nospace));
    ok(&mut other, alarm(AlarmAction::Activate, 2, AlarmType::Nospace));
    assert_ne!(raised.state_hash(), other.state_hash());
    let mut twin = store();
    ok(&mut twin, alarm(AlarmAction::Activate, 1, AlarmType::Nospace));
    assert_eq!(raised.state_hash(), twin.state_hash());
    assert_eq!(raised.snapshot(), twin.snapshot());
}

#[test]
fn hash_kv_at_a_revision_ignores_later_writes_and_how_far_compaction_got() {
    let history = [
        put("a", "1"),
        put("b", "1"),
        put("a", "2"),
        delete("b", ""),
        put("c", "1"),
        put("a", "3"),
    ];
    let mut done = store();
    let mut pending = store();
    for request in &history {
        ok(&mut done, request.clone());
        ok(&mut pending, request.clone());
    }
    let at_5 = done.hash_kv(5).unwrap();
    assert_eq!(at_5, pending.hash_kv(5).unwrap());
    assert_ne!(at_5, done.hash_kv(6).unwrap(), "the put at 6 is in the hash at 6");
    assert_eq!(done.hash_kv(0), done.hash_kv(7), "0 is the current revision");
    assert_eq!(done.hash_kv(8), Err(KvError::FutureRevision));

    // Revisions from 2: a=1 at 2, b=1 at 3, a=2 at 4, b deleted at 5, c=1 at
    // 6, a=3 at 7. A compaction at 6: finished at once on one store, its
    // physical part (b's history, a's first put) still pending on the other.
    // The hash at every revision from 6 agrees.
    let compact = Request::Compaction(CompactionRequest {
        revision: 6,
        physical: false,
    });
    ok(&mut done, compact.clone());
    let bytes = pending.prepare(&compact).unwrap();
    assert!(pending.apply_bytes_deferring_compaction(&bytes).result.is_ok());
    assert!(pending.pending_compaction().is_some());
    assert_ne!(
        done.indexed_keys(),
        pending.indexed_keys(),
        "one store still holds b's history"
    );
    for revision in 6..=7 {
        let hashed = done.hash_kv(revision).unwrap();
        assert_eq!(hashed, pending.hash_kv(revision).unwrap(), "at {revision}");
        assert_eq!(hashed.1, 6, "from the compacted revision");
    }
    assert_eq!(done.hash_kv(5), Err(KvError::Compacted));

    // Later writes leave the hash at an earlier revision as it was.
    let at_6 = done.hash_kv(6).unwrap();
    ok(&mut done, put("a", "4"));
    ok(&mut done, delete("c", ""));
    assert_eq!(done.hash_kv(6).unwrap(), at_6);

    // A different value at the same revision is a different hash.
    let mut other = store();
    for request in &history[..5] {
        ok(&mut other, request.clone());
    }
    ok(&mut other, put("a", "x"));
    let mut same = store();
    for request in &history {
        ok(&mut same, request.clone());
    }
    assert_eq!(other.hash_kv(6).unwrap(), same.hash_kv(6).unwrap());
    assert_ne!(other.hash_kv(7).unwrap(), same.hash_kv(7).unwrap());
}

#[test]
fn a_raised_nospace_alarm_refuses_puts_and_grants_until_disarmed() {
    let mut store = store();
    ok(&mut store, put("a", "1"));
    ok(&mut store, alarm(AlarmAction::Activate, 2, AlarmType::Corrupt));
    ok(&mut store, put("b", "1"));
    ok(&mut store, alarm(AlarmAction::Activate, 2, AlarmType::Nospace));
    assert_eq!(err(&mut store, put("c", "1")), KvError::DatabaseSpaceExceeded);
    assert_eq!(
        err(&mut store, Request::LeaseGrant(LeaseGrantRequest { ttl: 5, id: 0 })),
        KvError::DatabaseSpaceExceeded
    );
    let txn_put = Request::Txn(TxnRequest {
        success: vec![RequestOp::Put(put_request("c", "1"))],
        ..TxnRequest::default()
    });
    assert_eq!(err(&mut store, txn_put.clone()), KvError::DatabaseSpaceExceeded);
    // Reads, deletes and compactions go on.
    assert_eq!(store.range(&range("a", "")).unwrap().kvs.len(), 1);
    delete_and_compact(&mut store, "a");
    ok(&mut store, alarm(AlarmAction::Deactivate, 2, AlarmType::Nospace));
    ok(&mut store, put("c", "1"));
    ok(&mut store, txn_put);
}

#[test]
fn the_quota_counts_puts_in_both_branches_and_never_deletes() {
    assert_eq!(put("ab", "cde").quota_bytes(), Some(5));
    let nested = TxnRequest {
        failure: vec![RequestOp::Put(put_request("x", "yz"))],
        ..TxnRequest::default()
    };
    let txn = Request::Txn(TxnRequest {
        success: vec![
            RequestOp::Put(put_request("a", "b")),
            RequestOp::Range(range("a", "")),
            RequestOp::Txn(nested),
        ],
        failure: vec![RequestOp::Put(put_request("c", "dd"))],
        ..TxnRequest::default()
    });
    assert_eq!(txn.quota_bytes(), Some(2 + 3 + 3));
    let reads_and_deletes = Request::Txn(TxnRequest {
        success: vec![RequestOp::Range(range("a", ""))],
        failure: vec![RequestOp::DeleteRange(DeleteRangeRequest {
            key: b"a".to_vec(),
            ..DeleteRangeRequest::default()
        })],
        ..TxnRequest::default()
    });
    assert_eq!(reads_and_deletes.quota_bytes(), None);
    assert_eq!(delete("a", "").quota_bytes(), None);
    assert_eq!(
        Request::LeaseGrant(LeaseGrantRequest { ttl: 5, id: 0 }).quota_bytes(),
        Some(0)
    );
    assert_eq!(Request::LeaseRevoke(LeaseRevokeRequest { id: 5 }).quota_bytes(), None);
}

// ------------------------------------------------------------------- auth

fn as_user(user: Option<&str>, request: Request) -> Request {
    Request::Client {
        user: user.map(str::to_string),
        request: Box::new(request),
    }
}

fn auth(store: &mut Store, user: Option<&str>, request: AuthRequest) -> Result<Response, KvError> {
    store.apply(&as_user(user, Request::Auth(request))).result
}

/// A store with auth enabled: `root` (root role) and `alice`, whose role
/// `app` may read and write `app/` and only read `shared`.
fn store_with_auth() -> Store {
    let mut store = store();
    let grant = |key: &str, range_end: &str, perm_type| AuthRequest::RoleGrantPermission {
        name: "app".into(),
        permission: Permission {
            perm_type,
            key: key.into(),
            range_end: range_end.into(),
        },
    };
    for request in [
        AuthRequest::UserAdd {
            name: ROOT_USER.into(),
            password_hash: Some("hash".into()),
        },
        AuthRequest::UserGrantRole {
            user: ROOT_USER.into(),
            role: ROOT_ROLE.into(),
        },
        AuthRequest::UserAdd {
            name: "alice".into(),
            password_hash: Some("hash".into()),
        },
        AuthRequest::RoleAdd { name: "app".into() },
        grant("app/", "app0", PermissionType::ReadWrite),
        grant("shared", "", PermissionType::Read),
        AuthRequest::UserGrantRole {
            user: "alice".into(),
            role: "app".into(),
        },
        AuthRequest::Enable,
    ] {
        auth(&mut store, None, request).unwrap();
    }
    store
}

#[test]
fn with_auth_enabled_a_client_write_runs_only_within_its_permissions() {
    let mut store = store_with_auth();
    let alice = Some("alice");
    assert!(store.apply(&as_user(alice, put("app/x", "1"))).result.is_ok());
    assert_eq!(
        store.apply(&as_user(alice, put("shared", "1"))).result.err(),
        Some(KvError::PermissionDenied)
    );
    assert_eq!(
        store.apply(&as_user(None, put("app/x", "1"))).result.err(),
        Some(KvError::UserEmpty)
    );
    assert_eq!(
        store.apply(&as_user(Some("mallory"), put("app/x", "1"))).result.err(),
        Some(KvError::PermissionDenied)
    );
    assert!(store
        .apply(&as_user(Some(ROOT_USER), put("shared", "1")))
        .result
        .is_ok());
    // The server's own requests are not checked.
    assert!(store.apply(&put("elsewhere", "1")).result.is_ok());
    // A delete over a range wider than the permission is refused.
    assert_eq!(
        store.apply(&as_user(alice, delete("app/", "b"))).result.err(),
        Some(KvError::PermissionDenied)
    );
    assert!(store.apply(&as_user(alice, delete("app/", "app0"))).result.is_ok());
    // A compaction needs root.
    let compact = Request::Compaction(CompactionRequest {
        revision: 2,
        physical: false,
    });
    assert_eq!(
        store.apply(&as_user(alice, compact.clone())).result.err(),
        Some(KvError::PermissionDenied)
    );
    assert!(store.apply(&as_user(Some(ROOT_USER), compact)).result.is_ok());
}

#[test]
fn a_txn_that_touches_one_forbidden_key_is_refused_whole() {
    let mut store = store_with_auth();
    let revision = store.revision();
    let txn = |success: Vec<RequestOp>| {
        Request::Txn(TxnRequest {
            compare: Vec::new(),
            success,
            failure: Vec::new(),
        })
    };
    let allowed = RequestOp::Put(put_request("app/a", "1"));
    let forbidden = RequestOp::Put(put_request("shared", "1"));
    let refused = store.apply(&as_user(Some("alice"), txn(vec![allowed.clone(), forbidden])));
    assert_eq!(refused.result.err(), Some(KvError::PermissionDenied));
    assert_eq!(store.revision(), revision, "nothing of it ran");
    // A read of a key it may only read is fine; a compare on one it may not read is not.
    let read_shared = RequestOp::Range(RangeRequest {
        key: b"shared".to_vec(),
        ..RangeRequest::default()
    });
    assert!(store
        .apply(&as_user(Some("alice"), txn(vec![allowed.clone(), read_shared])))
        .result
        .is_ok());
    let compare_elsewhere = Request::Txn(TxnRequest {
        compare: vec![Compare {
            result: CompareResult::Equal,
            target: CompareTarget::Version,
            key: b"elsewhere".to_vec(),
            target_union: TargetUnion::Version(0),
            range_end: Vec::new(),
        }],
        success: vec![allowed],
        failure: Vec::new(),
    });
    assert_eq!(
        store.apply(&as_user(Some("alice"), compare_elsewhere)).result.err(),
        Some(KvError::PermissionDenied)
    );
}

#[test]
fn revoking_a_lease_needs_write_on_its_keys() {
    let mut store = store_with_auth();
    let grant = Request::LeaseGrant(LeaseGrantRequest { ttl: 60, id: 7 });
    assert!(store.apply(&as_user(Some("alice"), grant)).result.is_ok());
    let mut attach = put_request("shared", "1");
    attach.lease = 7;
    assert!(store
        .apply(&as_user(Some(ROOT_USER), Request::Put(attach)))
        .result
        .is_ok());
    let revoke = Request::LeaseRevoke(LeaseRevokeRequest { id: 7 });
    assert_eq!(
        store.apply(&as_user(Some("alice"), revoke.clone())).result.err(),
        Some(KvError::PermissionDenied)
    );
    assert!(store.apply(&as_user(Some(ROOT_USER), revoke)).result.is_ok());
}

#[test]
fn the_auth_state_survives_a_snapshot_and_moves_the_state_hash() {
    let mut store = store_with_auth();
    let restored = Store::restore(Config::default(), &store.snapshot()).expect("restores");
    assert_eq!(restored.auth(), store.auth());
    assert!(restored.auth().enabled());
    assert_eq!(
        restored.auth().user("alice").unwrap().roles.iter().collect::<Vec<_>>(),
        ["app"]
    );
    // Two stores that differ only in an auth change report different hashes.
    let mut other = Store::restore(Config::default(), &store.snapshot()).expect("restores");
    auth(&mut store, Some(ROOT_USER), AuthRequest::RoleAdd { name: "x".into() }).unwrap();
    auth(&mut other, Some(ROOT_USER), AuthRequest::RoleAdd { name: "y".into() }).unwrap();
    assert_eq!(store.auth().revision(), other.auth().revision());
    assert_ne!(store.snapshot(), other.snapshot());
    // Both requests round-trip through the log's encoding.
    let envelope = as_user(Some("alice"), put("app/x", "1"));
    assert_eq!(Request::decode(&envelope.encode()).unwrap(), envelope);
    let nested = as_user(Some("alice"), as_user(None, put("app/x", "1")));
    let mut bytes = envelope.encode();
    bytes.truncate(2);
    assert!(Request::decode(&bytes).is_err());
    assert_eq!(
        store.apply(&nested).result.err(),
        Some(KvError::Corrupt("a client envelope inside another"))
    );
}
