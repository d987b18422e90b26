//! A watcher catching up from history over a range of many keys, both ways:
//! in place ([`WatchHub::poll`] on the live store: the whole walk is a stretch
//! under the store's lock) and off the lock (what the server does: freeze and
//! queue the jobs under the lock, run them elsewhere, hand the events back).
//!
//! `cargo run --release -p synod-kv --example watchcatchup [keys] [rounds]`
//! (default 1,000,000 keys of 256-byte values, 20 rounds of each). The
//! watcher covers every key and starts at revision 2; a poll returns the next
//! `catch_up_events_max` events, a job up to `pending_events_max`.

use std::time::Instant;

use synod_kv::*;

const VALUE_BYTES: usize = 256;

fn main() {
    let mut arguments = std::env::args().skip(1);
    let keys: usize = arguments.next().map_or(1_000_000, |a| a.parse().expect("keys"));
    let rounds_max: u64 = arguments.next().map_or(20, |a| a.parse().expect("rounds"));
    let mut store = Store::new(Config {
        history_revisions_max: 0,
        ..Config::default()
    });
    for index in 0..keys {
        store.apply(&Request::Put(PutRequest {
            key: format!("k{index:08}").into_bytes(),
            value: vec![7; VALUE_BYTES],
            ..PutRequest::default()
        }));
    }
    let config = WatchConfig::default();
    let request = WatchCreateRequest {
        key: b"k".to_vec(),
        range_end: b"l".to_vec(),
        start_revision: 2,
        ..WatchCreateRequest::default()
    };
    let milliseconds = |started: Instant| started.elapsed().as_secs_f64() * 1e3;

    let mut hub = WatchHub::new(config.clone());
    hub.create(&store, &request).expect("watch");
    let (mut rounds, mut events, mut longest_ms, mut total_ms) = (0u64, 0usize, 0f64, 0f64);
    while hub.catching_up() && rounds < rounds_max {
        let started = Instant::now();
        let responses = hub.poll(&store);
        let elapsed = milliseconds(started);
        (longest_ms, total_ms, rounds) = (longest_ms.max(elapsed), total_ms + elapsed, rounds + 1);
        events += responses.iter().map(|response| response.events.len()).sum::<usize>();
    }
    println!(
        "in place: keys={keys} events_per_poll={} polls={rounds} events={events} \
         mean_ms_under_lock={:.1} longest_ms_under_lock={longest_ms:.1}",
        config.catch_up_events_max,
        total_ms / rounds.max(1) as f64,
    );

    let mut hub = WatchHub::new(config.clone());
    hub.create(&store, &request).expect("watch");
    let (mut rounds, mut events, mut longest_locked_ms, mut total_locked_ms, mut total_off_ms) =
        (0u64, 0usize, 0f64, 0f64, 0f64);
    while hub.catching_up() && rounds < rounds_max {
        let started = Instant::now();
        let frozen = store.freeze();
        let jobs = hub.catch_up_jobs(frozen.revision());
        let locked = milliseconds(started);
        let started = Instant::now();
        let results = jobs.iter().map(|job| job.run(&frozen)).collect();
        total_off_ms += milliseconds(started);
        let started = Instant::now();
        hub.catch_up_done(results);
        let responses = hub.take_ready(&store);
        let locked = locked + milliseconds(started);
        longest_locked_ms = longest_locked_ms.max(locked);
        total_locked_ms += locked;
        rounds += 1;
        events += responses.iter().map(|response| response.events.len()).sum::<usize>();
    }
    println!(
        "off the lock: keys={keys} events_per_job={} rounds={rounds} events={events} \
         mean_ms_under_lock={:.1} longest_ms_under_lock={longest_locked_ms:.1} mean_ms_off_lock={:.1}",
        config.pending_events_max,
        total_locked_ms / rounds.max(1) as f64,
        total_off_ms / rounds.max(1) as f64,
    );
}
