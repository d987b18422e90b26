//! WAL benchmark on real files.
//!
//! ```text
//! walbench append   --dir D [--submitters 1,16,256] [--value-bytes 256] [--seconds 5]
//!                   [--driver-threads K]
//! walbench recovery --dir D [--log-bytes 1073741824] [--value-bytes 4096] [--reuse]
//! ```
//!
//! `append` runs one group-commit writer with N submitters, each waiting for
//! its record to be durable before sending the next (one OS thread per
//! submitter, or with `--driver-threads K` the submitters spread over K
//! threads as async tasks would be), and prints
//! records/s, MB/s, and the mean batch (the block size to give fio for a
//! like-for-like comparison). `recovery` writes a log of the given size
//! (unless `--reuse`) and times `Wal::open`: reading every segment and
//! verifying every checksum; it prints the CPU time the open took too.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use synod_paxos::{Ballot, Instance, NodeId};
use synod_storage::{Disk, FsDisk, GroupCommit, GroupCommitConfig, Record, SyncFailurePolicy, Wal, WalConfig};

struct Options {
    command: String,
    directory: String,
    submitters: Vec<usize>,
    value_bytes: usize,
    seconds: u64,
    log_bytes: u64,
    reuse: bool,
    driver_threads: usize,
}

fn parse() -> Result<Options, String> {
    let mut arguments = std::env::args().skip(1);
    let command = arguments.next().ok_or("missing command: append or recovery")?;
    let mut options = Options {
        command,
        directory: String::new(),
        submitters: vec![1, 16, 256],
        value_bytes: 0,
        seconds: 5,
        log_bytes: 1 << 30,
        reuse: false,
        driver_threads: 0,
    };
    while let Some(flag) = arguments.next() {
        let mut value = || arguments.next().ok_or(format!("{flag} needs a value"));
        match flag.as_str() {
            "--dir" => options.directory = value()?,
            "--submitters" => {
                options.submitters = value()?
                    .split(',')
                    .map(|n| n.parse().map_err(|e| format!("--submitters: {e}")))
                    .collect::<Result<_, _>>()?
            }
            "--value-bytes" => options.value_bytes = value()?.parse().map_err(|e| format!("{e}"))?,
            "--seconds" => options.seconds = value()?.parse().map_err(|e| format!("{e}"))?,
            "--log-bytes" => options.log_bytes = value()?.parse().map_err(|e| format!("{e}"))?,
            "--reuse" => options.reuse = true,
            "--driver-threads" => options.driver_threads = value()?.parse().map_err(|e| format!("{e}"))?,
            other => return Err(format!("unknown flag {other}")),
        }
    }
    if options.directory.is_empty() {
        return Err("--dir is required".to_string());
    }
    Ok(options)
}

fn record(instance: u64, value: &Bytes) -> Record {
    Record::Accepted {
        instance: Instance(instance),
        ballot: Ballot::new(1, 1, NodeId(1)),
        value: value.clone(),
    }
}

fn fresh_directory(path: &str) -> Arc<dyn Disk> {
    let _ = std::fs::remove_dir_all(path);
    Arc::new(FsDisk::open(path).expect("benchmark directory"))
}

fn append(options: &Options) {
    let value_bytes = if options.value_bytes == 0 {
        256
    } else {
        options.value_bytes
    };
    for &submitters in &options.submitters {
        let directory = format!("{}/append-{submitters}", options.directory);
        let disk = fresh_directory(&directory);
        let config = WalConfig::default();
        let (wal, _) = Wal::open(disk, config).expect("open");
        let group = Arc::new(
            GroupCommit::start(
                wal,
                GroupCommitConfig {
                    queue_submissions_max: 4096,
                    batch_bytes_max: 4 << 20,
                    pipeline_batches_max: 1,
                    sync_failure_policy: SyncFailurePolicy::Abort,
                },
            )
            .expect("start"),
        );
        let stop = Arc::new(AtomicBool::new(false));
        let completed = Arc::new(AtomicU64::new(0));
        let started = Instant::now();
        let threads: Vec<_> = if options.driver_threads == 0 {
            (0..submitters)
                .map(|submitter| {
                    let group = group.clone();
                    let stop = stop.clone();
                    let completed = completed.clone();
                    std::thread::spawn(move || {
                        let value = Bytes::from(vec![submitter as u8; value_bytes]);
                        let mut instance = submitter as u64 * (1 << 32);
                        while !stop.load(Ordering::Relaxed) {
                            instance += 1;
                            let receiver = group.submit_and_receive(record(instance, &value)).expect("submit");
                            receiver.recv().expect("completion").expect("durable");
                            completed.fetch_add(1, Ordering::Relaxed);
                        }
                    })
                })
                .collect()
        } else {
            // Submitters as logical clients spread over a few driver
            // threads, as async tasks on a small runtime would be: each
            // keeps one record in flight and sends the next when its
            // completion arrives on the driver's channel.
            let drivers = options.driver_threads.min(submitters);
            (0..drivers)
                .map(|driver| {
                    let group = group.clone();
                    let stop = stop.clone();
                    let completed = completed.clone();
                    let mine: Vec<usize> = (0..submitters).filter(|s| s % drivers == driver).collect();
                    std::thread::spawn(move || {
                        let (sender, receiver) = std::sync::mpsc::channel::<(usize, bool)>();
                        let value = Bytes::from(vec![driver as u8; value_bytes]);
                        let mut instances: Vec<u64> = mine.iter().map(|s| *s as u64 * (1 << 32)).collect();
                        let submit = |slot: usize, instance: u64| {
                            let sender = sender.clone();
                            group
                                .submit(
                                    record(instance, &value),
                                    Box::new(move |outcome| {
                                        let _ = sender.send((slot, outcome.is_ok()));
                                    }),
                                )
                                .expect("submit");
                        };
                        for (slot, instance) in instances.iter_mut().enumerate() {
                            *instance += 1;
                            submit(slot, *instance);
                        }
                        let mut in_flight = mine.len();
                        while in_flight > 0 {
                            let (slot, durable) = receiver.recv().expect("completion");
                            assert!(durable);
                            completed.fetch_add(1, Ordering::Relaxed);
                            in_flight -= 1;
                            if !stop.load(Ordering::Relaxed) {
                                instances[slot] += 1;
                                submit(slot, instances[slot]);
                                in_flight += 1;
                            }
                        }
                    })
                })
                .collect()
        };
        std::thread::sleep(Duration::from_secs(options.seconds));
        stop.store(true, Ordering::Relaxed);
        for thread in threads {
            thread.join().expect("submitter");
        }
        let elapsed = started.elapsed().as_secs_f64();
        let group = Arc::into_inner(group).expect("submitters done");
        let (_, stats) = group.stop();
        let records = completed.load(Ordering::Relaxed);
        let frame_bytes = Record::Accepted {
            instance: Instance(1),
            ballot: Ballot::ZERO,
            value: Bytes::from(vec![0; value_bytes]),
        }
        .frame_bytes() as u64;
        let log_bytes = records * frame_bytes;
        let identifier_bytes = records * synod_storage::IDENTIFIER_BYTES as u64;
        let records_per_batch = stats.records as f64 / stats.batches.max(1) as f64;
        println!(
            "submitters={submitters} driver_threads={} value_bytes={value_bytes} seconds={elapsed:.2} records={records} \
             records_per_s={:.0} value_MB_per_s={:.2} log_MB_per_s={:.2} log_plus_ids_MB_per_s={:.2} \
             batches={} records_per_batch={records_per_batch:.1} log_bytes_per_batch={:.0} syncs_per_s={:.0} log_sync_busy={:.2} ids_sync_busy={:.2}",
            options.driver_threads,
            records as f64 / elapsed,
            (records * value_bytes as u64) as f64 / elapsed / 1e6,
            log_bytes as f64 / elapsed / 1e6,
            (log_bytes + identifier_bytes) as f64 / elapsed / 1e6,
            stats.batches,
            records_per_batch * frame_bytes as f64,
            2.0 * stats.batches as f64 / elapsed,
            stats.sync_micros as f64 / 1e6 / elapsed,
            stats.identifier_sync_micros as f64 / 1e6 / elapsed,
        );
        let _ = std::fs::remove_dir_all(&directory);
    }
}

fn recovery(options: &Options) {
    let value_bytes = if options.value_bytes == 0 {
        4096
    } else {
        options.value_bytes
    };
    let directory = format!("{}/recovery", options.directory);
    let config = WalConfig::default();
    if !options.reuse {
        let disk = fresh_directory(&directory);
        let (mut wal, _) = Wal::open(disk, config.clone()).expect("open");
        let value = Bytes::from(vec![0x5a; value_bytes]);
        let mut written = 0u64;
        let mut instance = 0u64;
        let started = Instant::now();
        while written < options.log_bytes {
            instance += 1;
            let record = Record::Accepted {
                instance: Instance(instance),
                ballot: Ballot::new(1, 1, NodeId(1)),
                value: value.clone(),
            };
            written += record.frame_bytes() as u64;
            wal.append(&record).expect("append");
            if wal.staged_bytes() >= 8 << 20 {
                wal.sync().expect("sync");
            }
        }
        wal.sync().expect("sync");
        println!(
            "wrote log: records={instance} log_bytes={written} seconds={:.2}",
            started.elapsed().as_secs_f64()
        );
    }
    let disk: Arc<dyn Disk> = Arc::new(FsDisk::open(&directory).expect("directory"));
    let cpu_before = cpu_seconds();
    let started = Instant::now();
    let (wal, recovered) = Wal::open(disk, config).expect("recover");
    let elapsed = started.elapsed().as_secs_f64();
    let cpu = match (cpu_before, cpu_seconds()) {
        (Some((user_before, system_before)), Some((user, system))) => {
            format!(
                " cpu_user_s={:.2} cpu_sys_s={:.2}",
                user - user_before,
                system - system_before
            )
        }
        _ => String::new(),
    };
    assert!(recovered.corrupted.is_empty(), "benchmark log is intact");
    println!(
        "recovery: segments={} records={} bytes_scanned={} seconds={elapsed:.3} MB_per_s={:.0} MiB_per_s={:.0}{cpu}",
        wal.segment_count(),
        recovered.records,
        recovered.bytes_scanned,
        recovered.bytes_scanned as f64 / elapsed / 1e6,
        recovered.bytes_scanned as f64 / elapsed / (1 << 20) as f64,
    );
}

/// The user and system CPU seconds this process has used so far, its
/// finished threads included (Linux's `/proc/self/stat`, in clock ticks of
/// 1/100 s); `None` where that file is not there.
fn cpu_seconds() -> Option<(f64, f64)> {
    const TICKS_PER_SECOND: f64 = 100.0;
    let stat = std::fs::read_to_string("/proc/self/stat").ok()?;
    // Fields after the command name, which may hold spaces: the state is
    // the first of them, utime the 12th and stime the 13th.
    let fields: Vec<&str> = stat.rsplit_once(')')?.1.split_whitespace().collect();
    let ticks = |index: usize| fields.get(index)?.parse::<f64>().ok();
    Some((ticks(11)? / TICKS_PER_SECOND, ticks(12)? / TICKS_PER_SECOND))
}

fn main() {
    let options = match parse() {
        Ok(options) => options,
        Err(message) => {
            eprintln!("walbench: {message}");
            std::process::exit(2);
        }
    };
    match options.command.as_str() {
        "append" => append(&options),
        "recovery" => recovery(&options),
        other => {
            eprintln!("walbench: unknown command {other}");
            std::process::exit(2);
        }
    }
}
