//! Every fuzz target over its seeds and corpus, then over random mutations of
//! them for a bounded time, counting the bytes each call allocates.
//!
//! `SYNOD_FUZZ_SECONDS` sets the mutation time per target (default 1 s);
//! `SYNOD_FUZZ_SEED` changes the mutations (default: the same every run, so a
//! failure here replays). A failing input is written under
//! `target/fuzz-failures/` and named in the panic: add it to
//! `corpus/<target>/` with the fix, as a regression.
//!
//! One test, running the targets one after another: the counting allocator is
//! global, so nothing else may allocate while a call is measured.

use std::alloc::System;
use std::panic::{self, AssertUnwindSafe};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use stats_alloc::{Region, StatsAlloc, INSTRUMENTED_SYSTEM};
use synod_fuzz::{Target, ALLOCATION_PER_INPUT_BYTE, TARGETS};

#[global_allocator]
static GLOBAL: &StatsAlloc<System> = &INSTRUMENTED_SYSTEM;

/// Longest input a mutation may grow to, in bytes.
const INPUT_BYTES_MAX: usize = 64 * 1024;

/// Values that sit on the edges the decoders and the core check: zero, one,
/// the largest counter a peer may send and the first past it, and the top.
const EDGES: [u64; 7] = [0, 1, 0x7f, u64::MAX / 2, u64::MAX / 2 + 1, u32::MAX as u64, u64::MAX];

fn corpus_directory(target: &Target) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("corpus").join(target.name)
}

fn corpus(target: &Target) -> Vec<Vec<u8>> {
    let mut inputs = (target.seeds)();
    if let Ok(entries) = std::fs::read_dir(corpus_directory(target)) {
        let mut paths: Vec<PathBuf> = entries
            .filter_map(|entry| entry.ok().map(|entry| entry.path()))
            .collect();
        paths.sort();
        for path in paths {
            inputs.push(std::fs::read(&path).unwrap_or_else(|error| panic!("reading {}: {error}", path.display())));
        }
    }
    inputs
}

/// Runs one input, checking the allocation bound; on failure saves the input
/// and panics naming it.
fn run(target: &Target, input: &[u8]) {
    let region = Region::new(GLOBAL);
    let outcome = panic::catch_unwind(AssertUnwindSafe(|| (target.run)(input)));
    let stats = region.change();
    let allocated_bytes = stats.bytes_allocated + stats.bytes_reallocated.max(0) as usize;
    let bound_bytes = ALLOCATION_PER_INPUT_BYTE * input.len() + target.allocation_slack_bytes;
    let failure = match outcome {
        Err(_) => Some("panicked (its message is above)".to_string()),
        Ok(()) if allocated_bytes > bound_bytes => Some(format!(
            "allocated {allocated_bytes} bytes for a {}-byte input (bound {bound_bytes})",
            input.len()
        )),
        Ok(()) => None,
    };
    if let Some(why) = failure {
        let directory = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../target/fuzz-failures");
        let path = directory.join(format!("{}-{:016x}", target.name, crc(input)));
        let saved = std::fs::create_dir_all(&directory).and_then(|()| std::fs::write(&path, input));
        panic!(
            "fuzz target {} {why}; input ({} bytes) {}",
            target.name,
            input.len(),
            match saved {
                Ok(()) => format!("saved to {}", path.display()),
                Err(error) => format!("not saved ({error}): {input:02x?}"),
            }
        );
    }
}

fn crc(input: &[u8]) -> u64 {
    input.iter().fold(0xcbf2_9ce4_8422_2325u64, |hash, byte| {
        (hash ^ u64::from(*byte)).wrapping_mul(0x100_0000_01b3)
    })
}

/// One to eight random edits of `base`, some of them splicing in `other`.
fn mutate(random: &mut ChaCha8Rng, base: &[u8], other: &[u8]) -> Vec<u8> {
    let mut input = base.to_vec();
    for _ in 0..random.random_range(1..=8) {
        let length = input.len();
        let at = random.random_range(0..=length);
        match random.random_range(0..9) {
            0 if length > 0 => {
                let at = at.min(length - 1);
                input[at] ^= 1 << random.random_range(0..8);
            }
            1 if length > 0 => input[at.min(length - 1)] = random.random(),
            2 => {
                let edge = EDGES[random.random_range(0..EDGES.len())];
                let bytes = if random.random_bool(0.5) {
                    edge.to_be_bytes()
                } else {
                    edge.to_le_bytes()
                };
                let width = [1, 2, 4, 8][random.random_range(0..4)];
                let end = (at + width).min(length);
                input[at..end].copy_from_slice(&bytes[8 - (end - at)..]);
            }
            3 => {
                let count = random.random_range(1..=16);
                let bytes: Vec<u8> = (0..count).map(|_| random.random()).collect();
                input.splice(at..at, bytes);
            }
            4 => {
                let end = random.random_range(at..=length);
                input.drain(at..end);
            }
            5 => input.truncate(at),
            6 if length > 0 => {
                let start = random.random_range(0..length);
                let end = random.random_range(start..=length.min(start + 64));
                let copy = input[start..end].to_vec();
                input.splice(at..at, copy);
            }
            7 if !other.is_empty() => {
                let start = random.random_range(0..other.len());
                let end = random.random_range(start..=other.len());
                input.splice(at..length, other[start..end].iter().copied());
            }
            _ => {
                let count = random.random_range(0..=64);
                input = (0..count).map(|_| random.random()).collect();
            }
        }
        input.truncate(INPUT_BYTES_MAX);
    }
    input
}

fn seconds_per_target() -> Duration {
    let seconds = std::env::var("SYNOD_FUZZ_SECONDS").map_or(1.0, |text| {
        text.parse::<f64>()
            .unwrap_or_else(|_| panic!("SYNOD_FUZZ_SECONDS={text} is not a number of seconds"))
    });
    Duration::from_secs_f64(seconds)
}

fn seed() -> u64 {
    std::env::var("SYNOD_FUZZ_SEED").map_or(0x5EED, |text| {
        text.parse()
            .unwrap_or_else(|_| panic!("SYNOD_FUZZ_SEED={text} is not a number"))
    })
}

#[test]
fn every_target_keeps_its_properties_on_its_corpus_and_mutations() {
    let budget = seconds_per_target();
    for (index, target) in TARGETS.iter().enumerate() {
        let inputs = corpus(target);
        assert!(!inputs.is_empty(), "{} has seeds", target.name);
        for input in &inputs {
            run(target, input);
        }
        let mut random = ChaCha8Rng::seed_from_u64(seed() ^ index as u64);
        let started = Instant::now();
        let mut executions = 0u64;
        while started.elapsed() < budget {
            let base = &inputs[random.random_range(0..inputs.len())];
            let other = &inputs[random.random_range(0..inputs.len())];
            let input = mutate(&mut random, base, other);
            run(target, &input);
            executions += 1;
        }
        println!(
            "{}: {} corpus inputs, {executions} mutations in {:.1} s",
            target.name,
            inputs.len(),
            started.elapsed().as_secs_f64()
        );
    }
}
