//! The faults the harness injects, drawn from a seeded schedule.
//!
//! One fault is active at a time: it is applied, held for a while, healed,
//! and the schedule waits a little before the next. What each kind does:
//!
//! | kind             | applied                                               | healed                  |
//! |------------------|-------------------------------------------------------|-------------------------|
//! | `kill`           | SIGKILL of a random member                            | restart                 |
//! | `kill-master`    | SIGKILL of the master                                 | restart                 |
//! | `crash-all`      | SIGKILL of every member at once                       | restart all             |
//! | `pause`          | SIGSTOP of a random member, longer than the master lease | SIGCONT              |
//! | `pause-master`   | SIGSTOP of the master, longer than the master lease   | SIGCONT                 |
//! | `isolate`        | every link to and from a random member held           | links released          |
//! | `isolate-master` | every link to and from the master held                | links released          |
//! | `split`          | links between a minority and the majority held        | links released          |
//! | `one-way`        | a random member's outgoing links held; it still hears | links released          |
//! | `bridge`         | two halves cut apart, one member still hears both     | links released          |
//! | `delay`          | every link delays each frame by 10-150 ms             | delays removed          |
//! | `flaky`          | every frame may reset its connection (0.1-2%)         | links clean             |
//! | `bitflip`        | a stopped member's file gets one bit flipped, among the bytes written | restart |
//! | `truncate`       | a stopped member's file is cut short, among the bytes written | restart          |
//! | `power-loss`     | a member loses every write it had not synced, and dies | restart                |
//! | `power-loss-all` | every member at once                                  | restart all             |
//!
//! Held links are released either delivering what they held, late, or by
//! resetting the connections (see [`crate::proxy`]).
//!
//! A member damaged by `bitflip` or `truncate` may refuse to start: that is
//! a correct answer to a damaged disk, recorded with its reason; the
//! harness then puts the member's files back as they were before the damage
//! (a copy taken while it was stopped) and starts it again.

use std::fmt;
use std::fs;
use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::time::Duration;

use rand::seq::IndexedRandom;
use rand::Rng;
use rand_chacha::ChaCha8Rng;

use crate::cluster::{Cluster, ClusterError, MASTER_LEASE};
use crate::proxy::{LinkRule, LinkRules};

/// How long a member damaged on disk gets to either start serving or give up.
pub const DAMAGED_START_GRACE: Duration = Duration::from_secs(5);
/// How long a member given SIGUSR1 gets to roll back and end.
const POWER_LOSS_TIMEOUT: Duration = Duration::from_secs(5);
/// Longest a partition is held: past a takeover (election timeout and
/// master lease, about 1.5 s with the harness's timing) plus a client
/// lease's TTL, so that a lease can run out on the majority's side.
const PARTITION_HOLD_MAX: Duration = Duration::from_secs(10);
/// Largest data directory copied before damaging it, in bytes.
const DAMAGE_COPY_BYTES_MAX: u64 = 1 << 30;

/// A kind of fault.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, serde::Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum FaultKind {
    /// SIGKILL of a random member.
    Kill,
    /// SIGKILL of the master.
    KillMaster,
    /// SIGKILL of every member.
    CrashAll,
    /// SIGSTOP of a random member.
    Pause,
    /// SIGSTOP of the master.
    PauseMaster,
    /// A random member cut off both ways.
    Isolate,
    /// The master cut off both ways.
    IsolateMaster,
    /// A minority cut off from the majority.
    Split,
    /// A member's messages lost, while it still hears the others.
    OneWay,
    /// Two halves apart, one member in both.
    Bridge,
    /// Every frame delayed.
    Delay,
    /// Connections reset at random.
    Flaky,
    /// One bit flipped in a stopped member's file.
    Bitflip,
    /// A stopped member's file cut short.
    Truncate,
    /// A member loses its unsynced writes and dies.
    PowerLoss,
    /// Every member loses its unsynced writes and dies.
    PowerLossAll,
}

impl FaultKind {
    /// Every kind, in the order of the table above.
    pub const ALL: [FaultKind; 16] = [
        FaultKind::Kill,
        FaultKind::KillMaster,
        FaultKind::CrashAll,
        FaultKind::Pause,
        FaultKind::PauseMaster,
        FaultKind::Isolate,
        FaultKind::IsolateMaster,
        FaultKind::Split,
        FaultKind::OneWay,
        FaultKind::Bridge,
        FaultKind::Delay,
        FaultKind::Flaky,
        FaultKind::Bitflip,
        FaultKind::Truncate,
        FaultKind::PowerLoss,
        FaultKind::PowerLossAll,
    ];

    /// The kind's name on the command line.
    pub fn name(self) -> &'static str {
        match self {
            FaultKind::Kill => "kill",
            FaultKind::KillMaster => "kill-master",
            FaultKind::CrashAll => "crash-all",
            FaultKind::Pause => "pause",
            FaultKind::PauseMaster => "pause-master",
            FaultKind::Isolate => "isolate",
            FaultKind::IsolateMaster => "isolate-master",
            FaultKind::Split => "split",
            FaultKind::OneWay => "one-way",
            FaultKind::Bridge => "bridge",
            FaultKind::Delay => "delay",
            FaultKind::Flaky => "flaky",
            FaultKind::Bitflip => "bitflip",
            FaultKind::Truncate => "truncate",
            FaultKind::PowerLoss => "power-loss",
            FaultKind::PowerLossAll => "power-loss-all",
        }
    }

    /// Whether members must run with `--failpoint-power-loss` for this kind.
    pub fn needs_power_loss_failpoint(self) -> bool {
        matches!(self, FaultKind::PowerLoss | FaultKind::PowerLossAll)
    }
}

impl fmt::Display for FaultKind {
    fn fmt(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
        formatter.write_str(self.name())
    }
}

impl FromStr for FaultKind {
    type Err = String;

    fn from_str(name: &str) -> Result<Self, String> {
        FaultKind::ALL
            .into_iter()
            .find(|kind| kind.name() == name)
            .ok_or_else(|| {
                let names: Vec<&str> = FaultKind::ALL.iter().map(|kind| kind.name()).collect();
                format!("unknown fault {name:?}; known: {}", names.join(", "))
            })
    }
}

/// A fault in force, and what healing it takes.
#[derive(Debug)]
pub struct ActiveFault {
    /// What it is.
    pub kind: FaultKind,
    /// One line saying what was done, for the log.
    pub description: String,
    /// How long to leave it in force.
    pub hold: Duration,
    killed: Vec<usize>,
    paused: Vec<usize>,
    links_held: bool,
    damaged: Option<Damage>,
}

/// A member whose files were damaged, and the copy of them from before.
#[derive(Debug)]
struct Damage {
    member: usize,
    copy: PathBuf,
}

/// A member that refused to start on damaged files, and why.
#[derive(Clone, Debug, serde::Serialize)]
pub struct RefusedStart {
    /// The member.
    pub member: String,
    /// What was done to its files.
    pub damage: String,
    /// The last lines of its log.
    pub reason: Vec<String>,
}

fn random_duration(rng: &mut ChaCha8Rng, low: Duration, high: Duration) -> Duration {
    Duration::from_millis(rng.random_range(low.as_millis() as u64..=high.as_millis() as u64))
}

/// Members cut into two sides with every link between them held.
fn hold_between(side_a: &[usize], side_b: &[usize], reset_on_release: bool) -> LinkRules {
    let rule = LinkRule {
        held: true,
        reset_on_release,
        ..LinkRule::default()
    };
    let mut rules = LinkRules::default();
    for &a in side_a {
        for &b in side_b {
            rules.set(a, b, rule);
            rules.set(b, a, rule);
        }
    }
    rules
}

/// The same rule on every directed link between `size` members.
fn every_link(size: usize, rule: LinkRule) -> LinkRules {
    let mut rules = LinkRules::default();
    for from in 0..size {
        for to in (0..size).filter(|&to| to != from) {
            rules.set(from, to, rule);
        }
    }
    rules
}

/// Applies a fault of `kind`. `scratch` holds copies of damaged members' files.
pub async fn apply(
    kind: FaultKind,
    cluster: &mut Cluster,
    rng: &mut ChaCha8Rng,
    scratch: &Path,
) -> Result<ActiveFault, ClusterError> {
    let size = cluster.members.len();
    let everyone: Vec<usize> = (0..size).collect();
    let random_member = *everyone.choose(rng).expect("a cluster has members");
    let master_or_random = match kind {
        FaultKind::KillMaster | FaultKind::PauseMaster | FaultKind::IsolateMaster => {
            cluster.master().await.unwrap_or(random_member)
        }
        _ => random_member,
    };
    let names: Vec<String> = cluster.members.iter().map(|member| member.name.clone()).collect();
    let name = |index: usize| names[index].clone();
    let mut fault = ActiveFault {
        kind,
        description: String::new(),
        hold: random_duration(rng, Duration::from_secs(1), Duration::from_secs(6)),
        killed: Vec::new(),
        paused: Vec::new(),
        links_held: false,
        damaged: None,
    };
    if matches!(
        kind,
        FaultKind::Isolate | FaultKind::IsolateMaster | FaultKind::Split | FaultKind::OneWay | FaultKind::Bridge
    ) {
        // Long enough, at the top, for a new master to take over and a
        // client lease's TTL to run out on the other side.
        fault.hold = random_duration(rng, Duration::from_secs(1), PARTITION_HOLD_MAX);
    }
    let reset_on_release = rng.random_bool(0.5);
    let release = if reset_on_release { "reset" } else { "delivered late" };
    match kind {
        FaultKind::Kill | FaultKind::KillMaster => {
            fault.description = format!("SIGKILL {}", name(master_or_random));
            cluster.kill(master_or_random);
            fault.killed.push(master_or_random);
        }
        FaultKind::CrashAll => {
            fault.description = "SIGKILL every member".to_string();
            fault.hold = random_duration(rng, Duration::from_millis(100), Duration::from_secs(2));
            for index in 0..size {
                cluster.kill(index);
                fault.killed.push(index);
            }
        }
        FaultKind::Pause | FaultKind::PauseMaster => {
            fault.hold = random_duration(rng, MASTER_LEASE * 3 / 2, MASTER_LEASE * 5);
            fault.description = format!("SIGSTOP {} for {:?}", name(master_or_random), fault.hold);
            cluster.pause(master_or_random);
            fault.paused.push(master_or_random);
        }
        FaultKind::Isolate | FaultKind::IsolateMaster => {
            let others: Vec<usize> = everyone.iter().copied().filter(|&i| i != master_or_random).collect();
            fault.description = format!("isolate {} (links {release})", name(master_or_random));
            cluster
                .network
                .set_rules(hold_between(&[master_or_random], &others, reset_on_release));
            fault.links_held = true;
        }
        FaultKind::Split => {
            let mut shuffled = everyone.clone();
            rand::seq::SliceRandom::shuffle(shuffled.as_mut_slice(), rng);
            let minority = (size - 1) / 2;
            let (small, large) = shuffled.split_at(minority.max(1));
            fault.description = format!(
                "split {:?} from {:?} (links {release})",
                small.iter().map(|&i| name(i)).collect::<Vec<_>>(),
                large.iter().map(|&i| name(i)).collect::<Vec<_>>()
            );
            cluster.network.set_rules(hold_between(small, large, reset_on_release));
            fault.links_held = true;
        }
        FaultKind::OneWay => {
            let mut rules = LinkRules::default();
            for other in everyone.iter().copied().filter(|&i| i != random_member) {
                rules.set(
                    random_member,
                    other,
                    LinkRule {
                        held: true,
                        reset_on_release,
                        ..LinkRule::default()
                    },
                );
            }
            fault.description = format!("{}'s messages held (links {release})", name(random_member));
            cluster.network.set_rules(rules);
            fault.links_held = true;
        }
        FaultKind::Bridge => {
            let mut shuffled = everyone.clone();
            rand::seq::SliceRandom::shuffle(shuffled.as_mut_slice(), rng);
            let bridge = shuffled[0];
            let rest = &shuffled[1..];
            let (left, right) = rest.split_at(rest.len() / 2);
            fault.description = format!(
                "bridge {}: {:?} and {:?} apart (links {release})",
                name(bridge),
                left.iter().map(|&i| name(i)).collect::<Vec<_>>(),
                right.iter().map(|&i| name(i)).collect::<Vec<_>>()
            );
            cluster.network.set_rules(hold_between(left, right, reset_on_release));
            fault.links_held = true;
        }
        FaultKind::Delay => {
            let delay_ms = rng.random_range(10..=150);
            fault.description = format!("every link delayed {delay_ms} ms");
            cluster.network.set_rules(every_link(
                size,
                LinkRule {
                    delay_ms,
                    ..LinkRule::default()
                },
            ));
        }
        FaultKind::Flaky => {
            let reset_per_million = rng.random_range(1_000..=20_000);
            fault.description = format!("every frame resets its connection with p = {reset_per_million} ppm");
            cluster.network.set_rules(every_link(
                size,
                LinkRule {
                    reset_per_million,
                    ..LinkRule::default()
                },
            ));
        }
        FaultKind::Bitflip | FaultKind::Truncate => {
            cluster.kill(random_member);
            fault.killed.push(random_member);
            let data_dir = cluster.members[random_member].data_dir.clone();
            let copy = scratch.join(format!("{}-before-damage", name(random_member)));
            let _ = fs::remove_dir_all(&copy);
            copy_dir(&data_dir, &copy, DAMAGE_COPY_BYTES_MAX).map_err(|source| ClusterError::Io {
                what: format!("copy {}", data_dir.display()),
                source,
            })?;
            fault.description = match damage_file(&data_dir, kind == FaultKind::Bitflip, rng) {
                Ok(Some(what)) => format!("{}: {what}", name(random_member)),
                Ok(None) => format!("{}: no file with data to damage", name(random_member)),
                Err(error) => format!("{}: damage failed: {error}", name(random_member)),
            };
            fault.damaged = Some(Damage {
                member: random_member,
                copy,
            });
            fault.hold = random_duration(rng, Duration::from_millis(100), Duration::from_secs(1));
        }
        FaultKind::PowerLoss => {
            fault.description = format!("power loss of {}", name(random_member));
            cluster.power_loss(random_member, POWER_LOSS_TIMEOUT).await;
            fault.killed.push(random_member);
        }
        FaultKind::PowerLossAll => {
            fault.description = "power loss of every member".to_string();
            fault.hold = random_duration(rng, Duration::from_millis(100), Duration::from_secs(2));
            for index in 0..size {
                cluster.power_loss(index, POWER_LOSS_TIMEOUT).await;
                fault.killed.push(index);
            }
        }
    }
    Ok(fault)
}

/// Undoes `fault`: restarts killed members, resumes paused ones, releases
/// links. A damaged member that refuses to start is reported, given its
/// files back as they were, and started again.
pub async fn heal(fault: ActiveFault, cluster: &mut Cluster) -> Result<Option<RefusedStart>, ClusterError> {
    if fault.links_held || !cluster.network.rules().is_clean() {
        cluster.network.heal();
    }
    for &index in &fault.paused {
        cluster.resume(index);
    }
    let damaged = fault.damaged.as_ref().map(|damage| damage.member);
    for &index in &fault.killed {
        if Some(index) != damaged {
            cluster.launch(index)?;
        }
    }
    let Some(damage) = fault.damaged else { return Ok(None) };
    cluster.launch(damage.member)?;
    let deadline = tokio::time::Instant::now() + DAMAGED_START_GRACE;
    while tokio::time::Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(100)).await;
        let exits = cluster.reap();
        if let Some(exit) = exits
            .into_iter()
            .find(|exit| exit.member == cluster.members[damage.member].name)
        {
            let data_dir = cluster.members[damage.member].data_dir.clone();
            let restore = fs::remove_dir_all(&data_dir).and_then(|()| fs::rename(&damage.copy, &data_dir));
            restore.map_err(|source| ClusterError::Io {
                what: format!("restore {}", data_dir.display()),
                source,
            })?;
            cluster.launch(damage.member)?;
            return Ok(Some(RefusedStart {
                member: exit.member,
                damage: fault.description,
                reason: exit.log_tail,
            }));
        }
    }
    let _ = fs::remove_dir_all(&damage.copy);
    Ok(None)
}

/// Copies a directory tree, refusing one larger than `bytes_max`.
fn copy_dir(from: &Path, to: &Path, bytes_max: u64) -> std::io::Result<()> {
    let mut copied = 0u64;
    copy_dir_counted(from, to, bytes_max, &mut copied)
}

fn copy_dir_counted(from: &Path, to: &Path, bytes_max: u64, copied: &mut u64) -> std::io::Result<()> {
    fs::create_dir_all(to)?;
    for entry in fs::read_dir(from)? {
        let entry = entry?;
        let target = to.join(entry.file_name());
        if entry.file_type()?.is_dir() {
            copy_dir_counted(&entry.path(), &target, bytes_max, copied)?;
        } else {
            *copied += entry.metadata()?.len();
            if *copied > bytes_max {
                return Err(std::io::Error::other(format!("more than {bytes_max} bytes to copy")));
            }
            fs::copy(entry.path(), target)?;
        }
    }
    Ok(())
}

/// Every regular file under `directory`, in a stable order.
fn files_under(directory: &Path) -> Vec<PathBuf> {
    let mut files = Vec::new();
    let mut pending = vec![directory.to_path_buf()];
    while let Some(next) = pending.pop() {
        let Ok(entries) = fs::read_dir(&next) else { continue };
        for entry in entries.flatten() {
            match entry.file_type() {
                Ok(kind) if kind.is_dir() => pending.push(entry.path()),
                Ok(kind) if kind.is_file() => files.push(entry.path()),
                _ => {}
            }
        }
    }
    files.sort();
    files
}

/// Flips one bit, or cuts the file short, at an offset among the bytes the
/// member wrote: before the last non-zero byte, so a flip never lands in a
/// preallocated hole where it tests nothing. Returns what was done.
fn damage_file(directory: &Path, flip: bool, rng: &mut ChaCha8Rng) -> std::io::Result<Option<String>> {
    let mut candidates = Vec::new();
    for path in files_under(directory) {
        let bytes = fs::read(&path)?;
        let written = bytes.iter().rposition(|&byte| byte != 0).map_or(0, |last| last + 1);
        if written > 0 {
            candidates.push((path, bytes, written));
        }
    }
    let Some((path, mut bytes, written)) = candidates.choose(rng).cloned() else {
        return Ok(None);
    };
    let offset = rng.random_range(0..written);
    let relative = path.strip_prefix(directory).unwrap_or(&path).display().to_string();
    if flip {
        let bit = rng.random_range(0..8u32);
        bytes[offset] ^= 1 << bit;
        fs::write(&path, &bytes)?;
        Ok(Some(format!(
            "bit {bit} of byte {offset} of {relative} ({written} bytes written) flipped"
        )))
    } else {
        let file = fs::OpenOptions::new().write(true).open(&path)?;
        file.set_len(offset as u64)?;
        Ok(Some(format!("{relative} cut from {written} written bytes to {offset}")))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::SeedableRng;

    fn scratch(tag: &str) -> PathBuf {
        let path = std::env::temp_dir().join(format!("synod-chaos-faults-{tag}-{}", std::process::id()));
        let _ = fs::remove_dir_all(&path);
        fs::create_dir_all(path.join("sub")).expect("create scratch");
        path
    }

    #[test]
    fn damage_lands_among_the_bytes_written_never_in_the_preallocated_tail() {
        let directory = scratch("damage");
        let mut image = vec![0u8; 4096];
        image[..100].fill(0xAB);
        fs::write(directory.join("sub").join("wal"), &image).expect("write");
        fs::write(directory.join("empty"), vec![0u8; 512]).expect("write");
        for seed in 0..50 {
            let mut rng = ChaCha8Rng::seed_from_u64(seed);
            fs::write(directory.join("sub").join("wal"), &image).expect("write");
            let what = damage_file(&directory, true, &mut rng)
                .expect("damage")
                .expect("a file with data");
            assert!(what.contains("wal"), "{what}");
            let damaged = fs::read(directory.join("sub").join("wal")).expect("read");
            let changed: Vec<usize> = (0..image.len()).filter(|&i| damaged[i] != image[i]).collect();
            assert_eq!(changed.len(), 1, "{what}");
            assert!(changed[0] < 100, "{what}");
            assert_eq!((damaged[changed[0]] ^ image[changed[0]]).count_ones(), 1);
        }
        let mut rng = ChaCha8Rng::seed_from_u64(1);
        damage_file(&directory, false, &mut rng)
            .expect("truncate")
            .expect("a file with data");
        assert!(fs::metadata(directory.join("sub").join("wal")).expect("stat").len() < 100);
        let _ = fs::remove_dir_all(&directory);
    }

    #[test]
    fn a_directory_without_data_is_left_alone() {
        let directory = scratch("nodata");
        fs::write(directory.join("zeros"), vec![0u8; 64]).expect("write");
        let mut rng = ChaCha8Rng::seed_from_u64(3);
        assert_eq!(damage_file(&directory, true, &mut rng).expect("no error"), None);
        let _ = fs::remove_dir_all(&directory);
    }

    #[test]
    fn copies_refuse_more_than_the_limit() {
        let directory = scratch("copy");
        fs::write(directory.join("sub").join("a"), vec![1u8; 100]).expect("write");
        let target = directory.with_extension("copy");
        copy_dir(&directory, &target, 1_000).expect("copy");
        assert_eq!(fs::read(target.join("sub").join("a")).expect("read"), vec![1u8; 100]);
        let _ = fs::remove_dir_all(&target);
        assert!(copy_dir(&directory, &target, 10).is_err());
        let _ = fs::remove_dir_all(&target);
        let _ = fs::remove_dir_all(&directory);
    }

    #[test]
    fn fault_names_parse_back() {
        for kind in FaultKind::ALL {
            assert_eq!(kind.name().parse::<FaultKind>(), Ok(kind));
        }
        assert!("meteor".parse::<FaultKind>().is_err());
    }
}
