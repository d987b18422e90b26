//! How long one poll of a watcher catching up from history takes, over a
//! range of many keys: the stretch a watch stream holds the store for.
//!
//! `cargo run --release -p synod-kv --example watchcatchup [keys] [polls]`
//! (default 1,000,000 keys of 256-byte values, 20 polls). The watcher covers
//! every key and starts at revision 2, so each poll returns the next
//! `catch_up_events_max` events (the default) and walks the whole range.

use std::time::Instant;

use synod_kv::*;

const VALUE_BYTES: usize = 256;

fn main() {
    let mut arguments = std::env::args().skip(1);
    let keys: usize = arguments.next().map_or(1_000_000, |a| a.parse().expect("keys"));
    let polls_max: u64 = arguments.next().map_or(20, |a| a.parse().expect("polls"));
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
    let events_per_poll = config.catch_up_events_max;
    let mut hub = WatchHub::new(config);
    hub.create(
        &store,
        &WatchCreateRequest {
            key: b"k".to_vec(),
            range_end: b"l".to_vec(),
            start_revision: 2,
            ..WatchCreateRequest::default()
        },
    )
    .expect("watch");
    let mut polls = 0u64;
    let mut events = 0usize;
    let mut longest_s = 0f64;
    let mut total_s = 0f64;
    while hub.catching_up() && polls < polls_max {
        let started = Instant::now();
        let responses = hub.poll(&store);
        let elapsed = started.elapsed().as_secs_f64();
        longest_s = longest_s.max(elapsed);
        total_s += elapsed;
        polls += 1;
        events += responses.iter().map(|response| response.events.len()).sum::<usize>();
    }
    println!(
        "watch catch-up: keys={keys} events_per_poll={events_per_poll} polls={polls} events={events} \
         mean_poll_ms={:.1} longest_poll_ms={:.1}",
        total_s * 1e3 / polls.max(1) as f64,
        longest_s * 1e3
    );
}
