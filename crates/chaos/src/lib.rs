//! Fault testing of the running binary: `synod chaos`.
//!
//! The simulator proves the protocol on simulated time, disks and networks;
//! this proves the server users run, with its sockets, threads, files and
//! timers. A run:
//!
//! 1. starts a group of real `synod server` processes on loopback, each
//!    behind a fault-injecting proxy on its peer port ([`cluster`], [`proxy`]);
//! 2. runs the client [`workload`]s over the etcd v3 API while the seeded
//!    schedule applies and heals one fault after another ([`faults`]) for the
//!    safety phase;
//! 3. heals everything and measures how long the group takes to accept a
//!    write again; that, and a write through every running member, must
//!    happen within the liveness deadline;
//! 4. tells the workloads to stop, and each makes its final reads and checks
//!    its history.
//!
//! Every run prints its seed; the same seed draws the same faults at the
//! same points of the schedule (the processes' own timing is not
//! deterministic, so a replay reproduces the schedule, not the interleaving).
//!
//! The run fails (exit status 1) on any anomaly: a checker's violation, a
//! member that ended on its own (other than refusing to start on a damaged
//! disk), or a group that does not accept writes within the deadline after
//! healing. A checker that could not decide fails it too (status 3): an
//! undecided check is never a pass.

pub mod cluster;
pub mod faults;
pub mod proxy;
pub mod workload;

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use rand::seq::IndexedRandom;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use synod_proto::etcdserverpb::kv_client::KvClient;
use synod_proto::etcdserverpb::PutRequest;
use tokio_util::sync::CancellationToken;

use crate::cluster::{Cluster, UnexpectedExit};
use crate::faults::{FaultKind, RefusedStart};
use crate::proxy::NetworkCounters;
use crate::workload::{Context, WorkloadReport};

/// How long one liveness write may take.
const LIVENESS_WRITE_TIMEOUT: Duration = Duration::from_secs(2);
/// Anomalies of one workload quoted in the report; the rest are counted.
const ANOMALIES_PER_WORKLOAD_MAX: usize = 10;
/// Times a member that ended on its own is started again.
const RESTARTS_AFTER_EXIT_MAX: usize = 3;
/// How long the group gets to elect a master at the start.
const STARTUP_TIMEOUT: Duration = Duration::from_secs(30);

/// The faults drawn when `--faults` is not given: all of them.
pub const DEFAULT_FAULTS: &[FaultKind] = &FaultKind::ALL;

/// `synod chaos`'s flags.
#[derive(clap::Args, Debug, Clone)]
pub struct Args {
    /// Seed of the fault schedule and the workloads' choices; random when absent (and printed).
    #[arg(long)]
    pub seed: Option<u64>,
    /// Length of the safety phase, in seconds: faults are injected throughout.
    #[arg(long, default_value_t = 60)]
    pub duration_s: u64,
    /// Members in the group.
    #[arg(long, default_value_t = 3, value_parser = clap::value_parser!(u64).range(1..=7))]
    pub members: u64,
    /// Workloads to run, comma-separated (default: all).
    #[arg(long, value_delimiter = ',')]
    pub workloads: Vec<String>,
    /// Faults to draw from, comma-separated (default: all).
    #[arg(long, value_delimiter = ',')]
    pub faults: Vec<FaultKind>,
    /// Longest pause between two faults, in milliseconds.
    #[arg(long, default_value_t = 3_000)]
    pub fault_gap_ms_max: u64,
    /// How long after the last fault is healed the group must accept a write, in seconds.
    #[arg(long, default_value_t = 30)]
    pub liveness_deadline_s: u64,
    /// An unsafe mode passed to every member (`--unsafe-bug`), for showing
    /// that the checkers catch it; repeatable.
    #[arg(long)]
    pub unsafe_bug: Vec<String>,
    /// Directory for the members' data and logs (default: a new one under
    /// the system temp dir, removed after a clean run).
    #[arg(long)]
    pub dir: Option<PathBuf>,
    /// Write the report as JSON to this file.
    #[arg(long)]
    pub json: Option<PathBuf>,
    /// The `synod` binary to run members with (default: this one).
    #[arg(long)]
    pub synod_binary: Option<PathBuf>,
}

/// What a run did and found.
#[derive(Debug, Default, serde::Serialize)]
pub struct Report {
    /// The seed that replays the schedule.
    pub seed: u64,
    /// Members in the group.
    pub members: u64,
    /// Faults applied, by kind.
    pub faults: BTreeMap<String, u64>,
    /// Every fault applied, in order, with when (seconds into the run).
    pub fault_log: Vec<String>,
    /// What the proxies did.
    pub network: NetworkCounters,
    /// Each workload's report.
    pub workloads: Vec<WorkloadReport>,
    /// Members that refused to start on damaged files, and why.
    pub refused_starts: Vec<RefusedStart>,
    /// Members that ended on their own.
    pub unexpected_exits: Vec<UnexpectedExit>,
    /// Seconds from healing the last fault to the first write accepted.
    pub recovery_s: Option<f64>,
    /// Every anomaly found, by any checker or by the harness.
    pub anomalies: Vec<String>,
    /// Checks that could not decide.
    pub inconclusive: Vec<String>,
    /// Where the members' data and logs are (kept when the run failed).
    pub dir: PathBuf,
}

impl Report {
    /// The exit status: 0 clean, 1 anomalies, 3 undecided checks.
    pub fn exit_status(&self) -> u8 {
        if !self.anomalies.is_empty() {
            1
        } else if !self.inconclusive.is_empty() {
            3
        } else {
            0
        }
    }

    /// The report as text, for the terminal.
    pub fn render(&self) -> String {
        let mut out = String::new();
        let faults: Vec<String> = self
            .faults
            .iter()
            .map(|(kind, count)| format!("{kind} {count}"))
            .collect();
        out.push_str(&format!("seed {} · {} members\n", self.seed, self.members));
        out.push_str(&format!(
            "faults: {}\n",
            if faults.is_empty() {
                "none".to_string()
            } else {
                faults.join(", ")
            }
        ));
        out.push_str(&format!(
            "network: {} connections, {} frames ({} held back), {} resets\n",
            self.network.connections, self.network.frames, self.network.frames_held, self.network.resets
        ));
        for workload in &self.workloads {
            out.push_str(&format!(
                "{:<9} attempted {} · ok {} · failed {} · unknown {} · {}\n",
                workload.name, workload.attempted, workload.ok, workload.failed, workload.unknown, workload.checked
            ));
        }
        for refused in &self.refused_starts {
            out.push_str(&format!(
                "refused to start: {} after {}: {}\n",
                refused.member,
                refused.damage,
                refused.reason.last().map_or("", String::as_str)
            ));
        }
        match self.recovery_s {
            Some(seconds) => out.push_str(&format!("recovery after healing: {seconds:.2} s\n")),
            None => out.push_str("recovery after healing: none within the deadline\n"),
        }
        for anomaly in &self.anomalies {
            out.push_str(&format!("ANOMALY: {anomaly}\n"));
        }
        for undecided in &self.inconclusive {
            out.push_str(&format!("UNDECIDED: {undecided}\n"));
        }
        out.push_str(&format!(
            "{} anomalies; replay with --seed {}\n",
            self.anomalies.len(),
            self.seed
        ));
        out
    }
}

/// Why a run could not be carried out at all (as opposed to finding anomalies).
#[derive(Debug, thiserror::Error)]
pub enum ChaosError {
    /// Setting up or driving the members failed.
    #[error(transparent)]
    Cluster(#[from] cluster::ClusterError),
    /// A flag is wrong.
    #[error("{0}")]
    Usage(String),
    /// The group never elected a master.
    #[error("no master within {0:?} of starting; member logs are in {1}")]
    NoMaster(Duration, PathBuf),
}

/// Runs `synod chaos`: prints progress and the report, returns the exit status.
pub async fn run_cli(args: Args) -> Result<u8, ChaosError> {
    let report = run(args.clone()).await?;
    print!("{}", report.render());
    if let Some(path) = &args.json {
        let text = serde_json::to_string_pretty(&report).map_err(|error| ChaosError::Usage(error.to_string()))?;
        std::fs::write(path, text).map_err(|error| ChaosError::Usage(format!("{}: {error}", path.display())))?;
    }
    if report.exit_status() == 0 && args.dir.is_none() {
        let _ = std::fs::remove_dir_all(&report.dir);
    } else {
        println!("member data and logs: {}", report.dir.display());
    }
    Ok(report.exit_status())
}

/// One run, as [`run_cli`] without the printing.
pub async fn run(args: Args) -> Result<Report, ChaosError> {
    let seed = args.seed.unwrap_or_else(|| {
        let since_epoch = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap_or_default();
        ChaCha8Rng::seed_from_u64(since_epoch.as_nanos() as u64 ^ u64::from(std::process::id())).random()
    });
    eprintln!("chaos: seed {seed}");
    let workloads: Vec<String> = if args.workloads.is_empty() {
        workload::ALL.iter().map(|name| name.to_string()).collect()
    } else {
        args.workloads.clone()
    };
    if let Some(unknown) = workloads.iter().find(|name| !workload::ALL.contains(&name.as_str())) {
        return Err(ChaosError::Usage(format!(
            "unknown workload {unknown:?}; known: {}",
            workload::ALL.join(", ")
        )));
    }
    let faults: Vec<FaultKind> = if args.faults.is_empty() {
        DEFAULT_FAULTS.to_vec()
    } else {
        args.faults.clone()
    };
    let binary = match &args.synod_binary {
        Some(path) => path.clone(),
        None => std::env::current_exe().map_err(|error| ChaosError::Usage(format!("own executable: {error}")))?,
    };
    let dir = args
        .dir
        .clone()
        .unwrap_or_else(|| std::env::temp_dir().join(format!("synod-chaos-{seed}-{}", std::process::id())));
    let mut member_args: Vec<String> = Vec::new();
    for bug in &args.unsafe_bug {
        member_args.extend(["--unsafe-bug".to_string(), bug.clone()]);
    }
    if faults.iter().any(|kind| kind.needs_power_loss_failpoint()) {
        member_args.push("--failpoint-power-loss".to_string());
    }

    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    let origin = Instant::now();
    let mut cluster = Cluster::start(binary, &dir, args.members as usize, member_args, rng.random()).await?;
    let mut report = Report {
        seed,
        members: args.members,
        dir: dir.clone(),
        ..Report::default()
    };
    let started = Instant::now();
    while cluster.master().await.is_none() {
        if started.elapsed() > STARTUP_TIMEOUT {
            return Err(ChaosError::NoMaster(STARTUP_TIMEOUT, dir));
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }

    let stop = CancellationToken::new();
    let context = Arc::new(Context {
        endpoints: cluster.endpoints(),
        origin,
        seed: rng.random(),
        stop: stop.clone(),
    });
    let running: Vec<_> = workloads
        .iter()
        .map(|name| {
            let context = context.clone();
            let name = name.clone();
            tokio::spawn(async move { workload::run(&name, context).await })
        })
        .collect();

    // The safety phase: one fault after another.
    let scratch = dir.join("scratch");
    std::fs::create_dir_all(&scratch).map_err(|source| cluster::ClusterError::Io {
        what: format!("create {}", scratch.display()),
        source,
    })?;
    let safety_end = Instant::now() + Duration::from_secs(args.duration_s);
    while Instant::now() < safety_end {
        let gap = Duration::from_millis(rng.random_range(200..=args.fault_gap_ms_max.max(200)));
        watch_members(&mut cluster, &mut report, gap).await;
        if Instant::now() >= safety_end {
            break;
        }
        let kind = *faults.choose(&mut rng).expect("at least one fault kind");
        let fault = faults::apply(kind, &mut cluster, &mut rng, &scratch).await?;
        let line = format!(
            "{:>7.2} s  {kind}: {}",
            origin.elapsed().as_secs_f64(),
            fault.description
        );
        eprintln!("chaos: {line}");
        report.fault_log.push(line);
        *report.faults.entry(kind.to_string()).or_default() += 1;
        watch_members(&mut cluster, &mut report, fault.hold).await;
        if let Some(refused) = faults::heal(fault, &mut cluster).await? {
            eprintln!(
                "chaos: {} refused to start: {}",
                refused.member,
                refused.reason.last().map_or("", String::as_str)
            );
            report.refused_starts.push(refused);
        }
    }
    cluster.network.heal();
    for index in 0..cluster.members.len() {
        cluster.resume(index);
    }

    // Liveness: the healed group must take a write within the deadline,
    // and then one through every running member (followers forward).
    let healed = Instant::now();
    let deadline = Duration::from_secs(args.liveness_deadline_s);
    let endpoints = cluster.endpoints();
    report.recovery_s = first_write(&endpoints, deadline)
        .await
        .then(|| healed.elapsed().as_secs_f64());
    if report.recovery_s.is_none() {
        report
            .anomalies
            .push(format!("no write accepted within {deadline:?} of healing every fault"));
    } else {
        for (index, endpoint) in endpoints.iter().enumerate() {
            if cluster.state(index) != cluster::MemberState::Up {
                continue;
            }
            // At least one try each, however long the first write took.
            let left = deadline.saturating_sub(healed.elapsed()).max(LIVENESS_WRITE_TIMEOUT);
            if !first_write(std::slice::from_ref(endpoint), left).await {
                report.anomalies.push(format!(
                    "{} accepted no write within {deadline:?} of healing every fault",
                    cluster.members[index].name
                ));
            }
        }
    }

    if report.recovery_s.is_some() {
        // The members compared their state hashes every second all along
        // (`cluster::CONSISTENCY_FLAGS`); one more check's time, then no member may
        // carry a CORRUPT alarm.
        tokio::time::sleep(CONSISTENCY_SETTLE).await;
        match corrupt_alarms(&endpoints, deadline).await {
            Some(members) => {
                for member in members {
                    report.anomalies.push(format!(
                        "member {member:x} got a CORRUPT alarm: its state hash differed from the majority's"
                    ));
                }
            }
            None => report
                .inconclusive
                .push("the alarm list could not be read after healing".to_string()),
        }
    }

    stop.cancel();
    for handle in running {
        match handle.await {
            Ok(workload) => {
                for anomaly in workload.anomalies.iter().take(ANOMALIES_PER_WORKLOAD_MAX) {
                    report.anomalies.push(format!("{}: {anomaly}", workload.name));
                }
                if workload.anomalies.len() > ANOMALIES_PER_WORKLOAD_MAX {
                    report.anomalies.push(format!(
                        "{}: and {} more anomalies",
                        workload.name,
                        workload.anomalies.len() - ANOMALIES_PER_WORKLOAD_MAX
                    ));
                }
                for undecided in &workload.inconclusive {
                    report.inconclusive.push(format!("{}: {undecided}", workload.name));
                }
                report.workloads.push(workload);
            }
            Err(error) => report.anomalies.push(format!("a workload task failed: {error}")),
        }
    }
    record_exits(&mut cluster, &mut report);
    report.network = cluster.network.counters();
    cluster.shutdown();
    Ok(report)
}

/// Waits `duration`, noticing members that end on their own meanwhile.
async fn watch_members(cluster: &mut Cluster, report: &mut Report, duration: Duration) {
    let end = tokio::time::Instant::now() + duration;
    loop {
        record_exits(cluster, report);
        let now = tokio::time::Instant::now();
        if now >= end {
            return;
        }
        tokio::time::sleep((end - now).min(Duration::from_millis(200))).await;
    }
}

/// A member that ended without being killed is an anomaly: a crash, a
/// panic, or a refusal to start that no damage explains. It is restarted so
/// that the run goes on, up to [`RESTARTS_AFTER_EXIT_MAX`] times: one that
/// keeps refusing stays down.
fn record_exits(cluster: &mut Cluster, report: &mut Report) {
    for exit in cluster.reap() {
        let earlier = report
            .unexpected_exits
            .iter()
            .filter(|earlier| earlier.member == exit.member)
            .count();
        let line = format!(
            "{} ended on its own ({}): {}",
            exit.member,
            exit.status,
            exit.log_tail.last().map_or("", String::as_str)
        );
        eprintln!("chaos: {line}");
        report.anomalies.push(line);
        if earlier < RESTARTS_AFTER_EXIT_MAX {
            if let Some(index) = cluster.members.iter().position(|member| member.name == exit.member) {
                let _ = cluster.launch(index);
            }
        }
        report.unexpected_exits.push(exit);
    }
}

/// Tries writes through each of `endpoints` in turn until one is accepted
/// or `deadline` passes.
/// How long the harness waits after the liveness phase for one more
/// consistency check to run and its alarms to apply.
const CONSISTENCY_SETTLE: Duration = Duration::from_secs(2);

/// The members with a CORRUPT alarm, from any member that answers the alarm
/// list within `deadline`; `None` if none does.
async fn corrupt_alarms(endpoints: &[String], deadline: Duration) -> Option<Vec<u64>> {
    use synod_proto::etcdserverpb::maintenance_client::MaintenanceClient;
    use synod_proto::etcdserverpb::{alarm_request::AlarmAction, AlarmRequest, AlarmType};
    let end = Instant::now() + deadline;
    let mut attempt = 0usize;
    while Instant::now() < end {
        let endpoint = endpoints[attempt % endpoints.len()].clone();
        attempt += 1;
        let list = async {
            let mut client = MaintenanceClient::connect(endpoint).await.ok()?;
            client
                .alarm(AlarmRequest {
                    action: AlarmAction::Get as i32,
                    member_id: 0,
                    alarm: AlarmType::Corrupt as i32,
                })
                .await
                .ok()
        };
        if let Ok(Some(response)) = tokio::time::timeout(LIVENESS_WRITE_TIMEOUT, list).await {
            let alarms = response.into_inner().alarms;
            return Some(
                alarms
                    .iter()
                    .filter(|alarm| alarm.alarm == AlarmType::Corrupt as i32)
                    .map(|alarm| alarm.member_id)
                    .collect(),
            );
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    None
}

async fn first_write(endpoints: &[String], deadline: Duration) -> bool {
    let end = Instant::now() + deadline;
    let mut attempt = 0u64;
    while Instant::now() < end {
        let endpoint = endpoints[attempt as usize % endpoints.len()].clone();
        attempt += 1;
        let write = async {
            let mut client = KvClient::connect(endpoint).await.ok()?;
            client
                .put(PutRequest {
                    key: format!("chaos/liveness/{attempt}").into_bytes().into(),
                    value: bytes::Bytes::from_static(b"alive"),
                    ..PutRequest::default()
                })
                .await
                .ok()
        };
        if let Ok(Some(_)) = tokio::time::timeout(LIVENESS_WRITE_TIMEOUT, write).await {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    false
}
