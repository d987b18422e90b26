//! In-process throughput of the Paxos core: a whole group in one thread, no
//! disk, no sockets, messages handed over in memory. Reports committed values
//! per second and messages per committed batch, with and without batching.
//!
//!     cargo run --release -p synod-sim --example throughput -- [seconds-per-case]

use std::time::{Duration, Instant};

use bytes::Bytes;
use synod_paxos::RejectReason;
use synod_sim::group::Group;

/// Pipelining window (alpha) used for every case.
const WINDOW_INSTANCES: u64 = 32;

fn run(size: usize, batch_values_max: usize, seconds: f64) -> (f64, Group) {
    let mut group = Group::new(size, |config| {
        config.batch_values_max = batch_values_max;
        config.window_instances_max = WINDOW_INSTANCES;
        config.accept_ahead_instances_max = WINDOW_INSTANCES * 4;
        config.submit_queue_values_max = batch_values_max * WINDOW_INSTANCES as usize * 2;
    });
    assert!(group.run_until(Duration::from_millis(1), Duration::from_secs(60), |g| g
        .serving_master()
        .is_some()));
    let master = group.serving_master().expect("elected");
    group.watched = Some(master);
    group.counters = Default::default();
    let value = Bytes::from_static(b"0123456789abcdef");
    let started = Instant::now();
    let mut rounds = 0u64;
    while started.elapsed().as_secs_f64() < seconds {
        // Keep the master's queue full.
        loop {
            match group.replicas[master].submit(group.now, value.clone(), None) {
                Ok(_) => {}
                Err(rejected) if rejected.reason == RejectReason::QueueFull => break,
                Err(rejected) => panic!("the master refused a submit: {:?}", rejected.reason),
            }
        }
        group.drain(master);
        group.pump();
        rounds += 1;
        if rounds.is_multiple_of(64) {
            // Virtual time moves slowly: the lease stays fresh, timers rarely fire.
            group.now = group.now + Duration::from_micros(500);
            group.tick_all();
        }
    }
    (started.elapsed().as_secs_f64(), group)
}

fn main() {
    let seconds: f64 = std::env::args().nth(1).and_then(|s| s.parse().ok()).unwrap_or(3.0);
    println!("16-byte values, window {WINDOW_INSTANCES} instances, {seconds} s per case");
    println!("replicas  batching            values/s   values/batch  msgs/batch  accepts/batch  accepteds/batch");
    for size in [3, 5, 7] {
        for (label, batch) in [("on (<=4096/batch)", 4096), ("off (1/batch)", 1)] {
            let (elapsed, group) = run(size, batch, seconds);
            let counters = &group.counters;
            let batches = counters.committed_batches.max(1) as f64;
            println!(
                "{size:>8}  {label:<17} {:>11.0}  {:>12.1}  {:>10.2}  {:>13.2}  {:>15.2}",
                counters.committed_values as f64 / elapsed,
                counters.committed_values as f64 / batches,
                counters.messages as f64 / batches,
                counters.accepts as f64 / batches,
                counters.accepteds as f64 / batches
            );
        }
    }
}
