//! `synod-sim`: runs many seeds (the long mode) or replays one.
//!
//!     cargo run --release -p synod-sim -- --seeds 100000
//!     cargo run --release -p synod-sim -- --seed 42 --replicas 5

use std::process::ExitCode;
use std::time::Instant;

use clap::Parser;

use synod_sim::{run_seed, RunConfig, SimBugs, Stats};

#[derive(Parser, Debug)]
#[command(about = "Deterministic simulation of a synod group: many seeds, or one replayed")]
struct Arguments {
    /// Replay exactly this seed.
    #[arg(long)]
    seed: Option<u64>,
    /// Run this many seeds, starting at --first-seed.
    #[arg(long, default_value_t = 1_000)]
    seeds: u64,
    #[arg(long, default_value_t = 0)]
    first_seed: u64,
    /// Group size; by default 3, 5 and 7 in turn.
    #[arg(long)]
    replicas: Option<usize>,
    /// Plant a bug: quorum-of-half, accept-lower-ballot, no-lease-silence,
    /// send-before-sync, phase1-lowest-ballot, skip-message-validation,
    /// read-without-lease, release-any-grant.
    #[arg(long)]
    bug: Option<String>,
    /// Print every seed's outcome.
    #[arg(long)]
    verbose: bool,
    /// Draw no faults aimed at the master: replays seeds recorded before
    /// they existed.
    #[arg(long)]
    no_churn: bool,
    /// Carry no hostile messages: the run must go exactly as with them.
    #[arg(long)]
    no_hostile: bool,
}

fn parse_bug(name: &str) -> Result<SimBugs, String> {
    let mut bugs = SimBugs::default();
    match name {
        "quorum-of-half" => bugs.core.quorum_of_half = true,
        "accept-lower-ballot" => bugs.core.accept_lower_ballot = true,
        "no-lease-silence" => bugs.core.no_lease_silence_after_restart = true,
        "send-before-sync" => bugs.send_before_sync = true,
        "phase1-lowest-ballot" => bugs.core.phase1_lowest_ballot = true,
        "skip-message-validation" => bugs.core.skip_message_validation = true,
        "read-without-lease" => bugs.core.read_without_lease = true,
        "release-any-grant" => bugs.core.release_any_grant = true,
        other => return Err(format!("unknown bug {other:?}")),
    }
    Ok(bugs)
}

fn main() -> ExitCode {
    let arguments = Arguments::parse();
    let bugs = match arguments.bug.as_deref().map(parse_bug).transpose() {
        Ok(bugs) => bugs.unwrap_or_default(),
        Err(message) => {
            eprintln!("error: {message}");
            return ExitCode::from(2);
        }
    };
    let seeds: Vec<u64> = match arguments.seed {
        Some(seed) => vec![seed],
        None => (arguments.first_seed..arguments.first_seed + arguments.seeds).collect(),
    };
    let started = Instant::now();
    let mut total = Stats::default();
    let mut failures = 0u64;
    for seed in &seeds {
        let replicas = arguments.replicas.unwrap_or([3, 5, 7][(*seed % 3) as usize]);
        let report = run_seed(RunConfig {
            seed: *seed,
            replicas,
            bugs,
            churn: !arguments.no_churn,
            hostile: !arguments.no_hostile,
        });
        total.add(&report.stats);
        if arguments.verbose || arguments.seed.is_some() {
            println!("seed {seed} ({replicas} replicas): {:?}", report.failure);
            if arguments.seed.is_some() {
                println!("{:#?}\n{:#?}", report.mix, report.stats);
            }
        }
        if let Some(failure) = &report.failure {
            failures += 1;
            println!("FAILED seed {seed} ({replicas} replicas): {failure}");
            for line in &report.trace {
                println!("  {line}");
            }
            println!("  replay: cargo run --release -p synod-sim -- --seed {seed} --replicas {replicas}");
        }
    }
    let elapsed = started.elapsed().as_secs_f64();
    println!(
        "{} seeds in {:.1} s ({:.1} seeds/s), {} failed",
        seeds.len(),
        elapsed,
        seeds.len() as f64 / elapsed,
        failures
    );
    println!(
        "simulated {:.1} s; messages sent {}, dropped {}, duplicated {}, long-delayed {}; hostile {} (refused by a running replica {})",
        total.simulated_ms as f64 / 1000.0,
        total.messages_sent,
        total.messages_dropped,
        total.messages_duplicated,
        total.messages_long_delayed,
        total.messages_hostile,
        total.hostile_messages_refused
    );
    println!(
        "faults: partitions symmetric {} one-way {} majority/minority {} bridge {}; crashes {} (disk wiped {}, aimed at the master {}, of which after a partial Accept broadcast {}); commits dropped {}; runs with short timeouts {}; handovers {} (done {}); pauses {}; snapshots installed {} (transfers interrupted {}, resumed {}, refused as damaged at the sender {})",
        total.partitions[0],
        total.partitions[1],
        total.partitions[2],
        total.partitions[3],
        total.crashes,
        total.wipes,
        total.master_crashes,
        total.partial_accept_crashes,
        total.commits_dropped,
        total.short_timeout_runs,
        total.handovers,
        total.handovers_done,
        total.pauses,
        total.snapshots_installed,
        total.snapshot_transfers_interrupted,
        total.snapshot_transfers_resumed,
        total.damaged_snapshots_refused
    );
    let disk = &total.disk_faults;
    println!(
        "disk faults: torn writes {}, unsynced writes lost {}, bit flips on read {} / on write {}, misdirected writes {}, EIO on read {} / write {} / sync {}; power failures during sync {}; processes stopped by EIO {}, disks replaced {}",
        disk.torn_writes,
        disk.unsynced_writes_lost,
        disk.read_bit_flips,
        disk.write_bit_flips,
        disk.misdirected_writes,
        disk.read_errors,
        disk.write_errors,
        disk.sync_errors,
        total.power_failures,
        total.io_crashes,
        total.disks_replaced
    );
    println!(
        "operations {} (reads answered {}), values committed {}, instances chosen {}, histories checked {} (inconclusive {})",
        total.operations,
        total.reads_answered,
        total.values_committed,
        total.instances_chosen,
        total.histories_checked,
        total.histories_inconclusive
    );
    if failures > 0 {
        ExitCode::FAILURE
    } else {
        ExitCode::SUCCESS
    }
}
