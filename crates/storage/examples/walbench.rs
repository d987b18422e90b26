//! WAL benchmark on real files.
//!
//! ```text
//! walbench append   --dir D [--submitters 1,16,256] [--value-bytes 256] [--seconds 5]
//!                   [--driver-threads K]
//! walbench recovery --dir D [--log-bytes 1073741824] [--value-bytes 4096] [--reuse]
//! walbench sync-floor --dir D [--log-bytes 40960] [--value-bytes 8192] [--seconds 3]
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
//!
//! `sync-floor` measures, below the WAL, what keeping identifiers apart costs
//! the disk: rounds per second of (a) one write of `--log-bytes` and an
//! fdatasync, (b) that write plus one of `--value-bytes` right after it, in a
//! write of its own, and one fdatasync, (c) the same two writes far apart in
//! the same file and one fdatasync (the WAL's layout), (d) the two writes in
//! two files synced at the same time by two threads, a round ending when both
//! syncs have returned. Files are preallocated with zeros, so every sync
//! flushes data only.

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
    let command = arguments
        .next()
        .ok_or("missing command: append, recovery or sync-floor")?;
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
                    pipeline_batches_max: 4,
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
             batches={} records_per_batch={records_per_batch:.1} log_bytes_per_batch={:.0} syncs_per_s={:.0} sync_busy={:.2}",
            options.driver_threads,
            records as f64 / elapsed,
            (records * value_bytes as u64) as f64 / elapsed / 1e6,
            log_bytes as f64 / elapsed / 1e6,
            (log_bytes + identifier_bytes) as f64 / elapsed / 1e6,
            stats.batches,
            records_per_batch * frame_bytes as f64,
            stats.syncs as f64 / elapsed,
            stats.sync_micros as f64 / 1e6 / elapsed,
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

/// Bytes of the region the log-sized writes of `sync-floor` cycle through.
const SYNC_FLOOR_LOG_SPACE_BYTES: u64 = 256 << 20;
/// Bytes of the region the identifier-sized writes cycle through.
const SYNC_FLOOR_IDS_SPACE_BYTES: u64 = 64 << 20;

fn preallocated(path: &str, length_bytes: u64) -> std::fs::File {
    use std::os::unix::fs::FileExt;
    let file = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(true)
        .open(path)
        .expect("create");
    let zeros = vec![0u8; 1 << 20];
    for offset in (0..length_bytes).step_by(zeros.len()) {
        file.write_all_at(&zeros, offset).expect("preallocate");
    }
    file.sync_all().expect("sync");
    file
}

/// Rounds per second of writing `log` (and `ids`, if given, far away in the
/// same file) then one fdatasync.
/// Where [`one_file_rounds_per_s`] writes the second block of a round.
#[derive(Clone, Copy)]
enum SecondWrite {
    /// None: the log's block alone.
    Absent,
    /// Right after the log's block, in a write of its own: what a log that
    /// kept each batch's identifiers beside the next batch's frames would
    /// write.
    Adjacent,
    /// In a region of its own past the log's space, as the WAL does.
    Apart,
}

/// Rounds per second of writing `log` (and `ids`, placed as `second` says)
/// into one preallocated file with one fdatasync per round.
fn one_file_rounds_per_s(path: &str, seconds: f64, log: &[u8], ids: &[u8], second: SecondWrite) -> f64 {
    use std::os::unix::fs::FileExt;
    let file = preallocated(path, SYNC_FLOOR_LOG_SPACE_BYTES + SYNC_FLOOR_IDS_SPACE_BYTES);
    let started = Instant::now();
    let mut rounds = 0u64;
    let stride = (log.len() + ids.len()) as u64;
    while started.elapsed().as_secs_f64() < seconds {
        let log_offset = (rounds * stride) % (SYNC_FLOOR_LOG_SPACE_BYTES - stride);
        file.write_all_at(log, log_offset).expect("write");
        match second {
            SecondWrite::Absent => {}
            SecondWrite::Adjacent => file.write_all_at(ids, log_offset + log.len() as u64).expect("write"),
            SecondWrite::Apart => {
                let ids_offset = (rounds * ids.len() as u64) % SYNC_FLOOR_IDS_SPACE_BYTES;
                file.write_all_at(ids, SYNC_FLOOR_LOG_SPACE_BYTES + ids_offset)
                    .expect("write");
            }
        }
        file.sync_data().expect("fdatasync");
        rounds += 1;
    }
    let _ = std::fs::remove_file(path);
    rounds as f64 / started.elapsed().as_secs_f64()
}

/// Rounds per second of writing `log` and `ids` to two files and syncing
/// both at once from two threads.
fn two_files_rounds_per_s(directory: &str, seconds: f64, log: &[u8], ids: &[u8]) -> f64 {
    use std::os::unix::fs::FileExt;
    let log_path = format!("{directory}/floor.log");
    let ids_path = format!("{directory}/floor.ids");
    let log_file = preallocated(&log_path, SYNC_FLOOR_LOG_SPACE_BYTES);
    let ids_file = preallocated(&ids_path, SYNC_FLOOR_IDS_SPACE_BYTES);
    let barrier = Arc::new(std::sync::Barrier::new(2));
    let stop = Arc::new(AtomicBool::new(false));
    let started = Instant::now();
    let rounds = std::thread::scope(|scope| {
        let (barrier_ids, stop_ids) = (barrier.clone(), stop.clone());
        scope.spawn(move || {
            let mut round = 0u64;
            loop {
                barrier_ids.wait();
                if stop_ids.load(Ordering::Relaxed) {
                    break;
                }
                let offset = (round * ids.len() as u64) % SYNC_FLOOR_IDS_SPACE_BYTES;
                ids_file.write_all_at(ids, offset).expect("write");
                ids_file.sync_data().expect("fdatasync");
                round += 1;
                barrier_ids.wait();
            }
        });
        let mut rounds = 0u64;
        loop {
            barrier.wait();
            if stop.load(Ordering::Relaxed) {
                break rounds;
            }
            let offset = (rounds * log.len() as u64) % SYNC_FLOOR_LOG_SPACE_BYTES;
            log_file.write_all_at(log, offset).expect("write");
            log_file.sync_data().expect("fdatasync");
            rounds += 1;
            // Decided before the round's closing barrier, so both threads see
            // the same answer at the next opening one.
            stop.store(started.elapsed().as_secs_f64() >= seconds, Ordering::Relaxed);
            barrier.wait();
        }
    });
    let _ = std::fs::remove_file(&log_path);
    let _ = std::fs::remove_file(&ids_path);
    rounds as f64 / started.elapsed().as_secs_f64()
}

fn sync_floor(options: &Options) {
    let log_bytes = if options.log_bytes == 1 << 30 {
        40 << 10
    } else {
        options.log_bytes
    };
    let ids_bytes = if options.value_bytes == 0 {
        8 << 10
    } else {
        options.value_bytes
    };
    let seconds = options.seconds as f64;
    std::fs::create_dir_all(&options.directory).expect("directory");
    let log = vec![0x5a; log_bytes as usize];
    let ids = vec![0xa5; ids_bytes];
    let single = format!("{}/floor.single", options.directory);
    let alone = one_file_rounds_per_s(&single, seconds, &log, &ids, SecondWrite::Absent);
    let adjacent = one_file_rounds_per_s(&single, seconds, &log, &ids, SecondWrite::Adjacent);
    let together = one_file_rounds_per_s(&single, seconds, &log, &ids, SecondWrite::Apart);
    let apart = two_files_rounds_per_s(&options.directory, seconds, &log, &ids);
    println!(
        "sync-floor: log_bytes={log_bytes} ids_bytes={ids_bytes} log_only_rounds_per_s={alone:.0} \
         adjacent_rounds_per_s={adjacent:.0} one_file_rounds_per_s={together:.0} two_files_rounds_per_s={apart:.0} \
         adjacent_ratio={:.2} one_file_ratio={:.2} two_files_ratio={:.2}",
        adjacent / alone,
        together / alone,
        apart / alone
    );
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
        "sync-floor" => sync_floor(&options),
        other => {
            eprintln!("walbench: unknown command {other}");
            std::process::exit(2);
        }
    }
}
