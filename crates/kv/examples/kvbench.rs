//! In-process benchmark of the store: apply rates, memory per key,
//! compaction steps, freeze, snapshot and restore speed.
//!
//! `cargo run --release -p synod-kv --example kvbench [keys]` (default 1,000,000 keys).
//! Heap use is measured with a counting global allocator (requested bytes).

use std::alloc::System;
use std::time::Instant;

use stats_alloc::{Region, StatsAlloc, INSTRUMENTED_SYSTEM};
use synod_kv::*;

#[global_allocator]
static GLOBAL: &StatsAlloc<System> = &INSTRUMENTED_SYSTEM;

const KEY_BYTES: usize = 8;
const VALUE_BYTES: usize = 256;

/// A fixed permutation of `0..count` (an LCG walk over the next power of two),
/// so keys arrive in a scattered but reproducible order.
fn scattered(count: u64) -> impl Iterator<Item = u64> + Clone {
    let modulus = count.next_power_of_two().max(4);
    let mut state: u64 = 0;
    (0..modulus)
        .map(move |_| {
            state = (state
                .wrapping_mul(6_364_136_223_846_793_005)
                .wrapping_add(1_442_695_040_888_963_407))
                & (modulus - 1);
            state
        })
        .filter(move |value| *value < count)
}

fn key(index: u64) -> Vec<u8> {
    index.to_be_bytes().to_vec()
}

fn put(index: u64, value: &[u8]) -> Request {
    Request::Put(PutRequest {
        key: key(index),
        value: value.to_vec(),
        ..PutRequest::default()
    })
}

fn net_heap(region: &Region<'_, System>) -> i64 {
    let change = region.change();
    // Reallocations are already folded into both counters.
    change.bytes_allocated as i64 - change.bytes_deallocated as i64
}

fn rate(operations: u64, started: Instant) -> f64 {
    operations as f64 / started.elapsed().as_secs_f64()
}

/// Applies empty Txns until the pending compaction is done; returns how many
/// and the longest apply, in seconds.
fn finish_compaction(store: &mut Store) -> (u64, f64) {
    let mut entries = 0;
    let mut longest: f64 = 0.0;
    while store.pending_compaction().is_some() {
        let started = Instant::now();
        assert!(store.apply(&Request::Txn(TxnRequest::default())).result.is_ok());
        longest = longest.max(started.elapsed().as_secs_f64());
        entries += 1;
    }
    (entries, longest)
}

fn main() {
    let keys: u64 = std::env::args()
        .nth(1)
        .and_then(|argument| argument.parse().ok())
        .unwrap_or(1_000_000);
    let value = vec![0xabu8; VALUE_BYTES];
    println!("synod-kv kvbench: {keys} keys of {KEY_BYTES} B, values of {VALUE_BYTES} B");

    // Puts into an empty store, keys in scattered order; memory measured after.
    // Auto-compaction off, so each phase measures only its own work; the
    // compaction is measured on its own below.
    let config = Config {
        history_revisions_max: 0,
        ..Config::default()
    };
    let region = Region::new(GLOBAL);
    let mut store = Store::new(config.clone());
    let started = Instant::now();
    let mut applied = 0u64;
    for index in scattered(keys) {
        let result = store.apply(&put(index, &value)).result;
        assert!(result.is_ok());
        applied += 1;
    }
    assert_eq!(applied, keys);
    let puts_per_second = rate(keys, started);
    let heap_bytes = net_heap(&region);
    let payload_bytes = keys as i64 * (KEY_BYTES + VALUE_BYTES) as i64;
    println!("put (apply, new keys):        {puts_per_second:>12.0} /s");
    println!(
        "heap after {keys} puts:       {:>12.1} MiB ({:.1} B/key, {:.1} B/key beyond key and value bytes)",
        heap_bytes as f64 / (1 << 20) as f64,
        heap_bytes as f64 / keys as f64,
        (heap_bytes - payload_bytes) as f64 / keys as f64
    );

    // Puts through the log encoding (encode + apply_bytes), overwriting keys.
    let operations = keys.min(500_000);
    let started = Instant::now();
    for index in scattered(keys).take(operations as usize) {
        let bytes = put(index, &value).encode();
        assert!(store.apply_bytes(&bytes).result.is_ok());
    }
    println!("put (encode + apply_bytes):   {:>12.0} /s", rate(operations, started));

    // Point ranges.
    let operations = keys.min(1_000_000);
    let started = Instant::now();
    let mut found = 0u64;
    for index in scattered(keys).take(operations as usize) {
        let response = store
            .range(&RangeRequest {
                key: key(index),
                ..RangeRequest::default()
            })
            .unwrap();
        found += response.kvs.len() as u64;
    }
    assert_eq!(found, operations);
    println!("range (one key):              {:>12.0} /s", rate(operations, started));

    // Compaction of the history the overwrites left: the entry that asks for
    // it (the logical part and the first step of the physical part), then
    // one step per applied entry (empty Txns here) until it is done.
    let revision = store.revision();
    let indexed_keys = store.indexed_keys();
    let started = Instant::now();
    assert!(store
        .apply(&Request::Compaction(CompactionRequest {
            revision,
            physical: true,
        }))
        .result
        .is_ok());
    let first_seconds = started.elapsed().as_secs_f64();
    let (entries, longest_seconds) = finish_compaction(&mut store);
    let total_seconds = started.elapsed().as_secs_f64();
    println!(
        "compaction ({indexed_keys} keys, {} keys per entry):",
        store.config().compaction_keys_per_entry_max
    );
    println!(
        "  compact entry (logical + first step): {:>8.2} ms",
        first_seconds * 1e3
    );
    println!(
        "  longest later entry:                  {:>8.2} ms ({entries} entries after)",
        longest_seconds * 1e3
    );
    println!("  total:                                {:>8.2} s", total_seconds);

    // Txns of 10 puts each.
    let txns = 50_000u64.min(keys / 10).max(1);
    let mut indexes = scattered(keys).cycle();
    let started = Instant::now();
    for _ in 0..txns {
        let success = (0..10)
            .map(|_| {
                RequestOp::Put(PutRequest {
                    key: key(indexes.next().unwrap()),
                    value: value.clone(),
                    ..PutRequest::default()
                })
            })
            .collect();
        let txn = Request::Txn(TxnRequest {
            compare: vec![],
            success,
            failure: vec![],
        });
        assert!(store.apply(&txn).result.is_ok());
    }
    println!("txn (10 puts):                {:>12.0} /s", rate(txns, started));

    // Snapshot and restore of the latest state (history compacted first).
    let revision = store.revision();
    assert!(store
        .apply(&Request::Compaction(CompactionRequest {
            revision,
            physical: true,
        }))
        .result
        .is_ok());
    finish_compaction(&mut store);
    let started = Instant::now();
    let snapshot = store.snapshot();
    let snapshot_seconds = started.elapsed().as_secs_f64();
    let megabytes = snapshot.len() as f64 / 1e6;
    println!(
        "snapshot:                     {:>12.1} MB/s ({megabytes:.1} MB in {snapshot_seconds:.2} s)",
        megabytes / snapshot_seconds
    );
    // What the server does: freeze under the lock, stream on another thread.
    // Best of three: the first burst of small allocations after the
    // compaction above pays for the allocator sorting the chunks it freed
    // (tens of milliseconds here), which is not the freeze's own cost.
    let mut freeze_seconds = f64::MAX;
    for _ in 0..2 {
        let started = Instant::now();
        let frozen = store.freeze();
        freeze_seconds = freeze_seconds.min(started.elapsed().as_secs_f64());
        drop(frozen);
    }
    let region = Region::new(GLOBAL);
    let started = Instant::now();
    let frozen = store.freeze();
    freeze_seconds = freeze_seconds.min(started.elapsed().as_secs_f64());
    println!(
        "freeze ({} keys, best of 3):{:>10.2} ms ({:.2} MiB of heap)",
        store.indexed_keys(),
        freeze_seconds * 1e3,
        net_heap(&region) as f64 / (1 << 20) as f64
    );
    let started = Instant::now();
    let mut streamed = 0usize;
    let Ok(()) = frozen.write_snapshot(|piece| {
        streamed += piece.len();
        Ok::<(), std::convert::Infallible>(())
    });
    assert_eq!(streamed, snapshot.len());
    println!(
        "snapshot streamed (frozen):   {:>12.1} MB/s",
        megabytes / started.elapsed().as_secs_f64()
    );
    drop(frozen);
    let started = Instant::now();
    let chunks: Vec<Vec<u8>> = store.snapshot_chunks(4 << 20).collect();
    let chunk_seconds = started.elapsed().as_secs_f64();
    println!(
        "snapshot in 4 MiB chunks:     {:>12.1} MB/s ({} chunks)",
        megabytes / chunk_seconds,
        chunks.len()
    );
    let started = Instant::now();
    let restored = Store::restore_chunks(config, chunks.iter().map(|c| c.as_slice())).expect("restore");
    let restore_seconds = started.elapsed().as_secs_f64();
    println!(
        "restore from chunks:          {:>12.1} MB/s ({restore_seconds:.2} s)",
        megabytes / restore_seconds
    );
    assert_eq!(restored.state_hash(), store.state_hash());
    assert_eq!(restored.revision(), store.revision());
}
