//! Fault mixes drawn per seed (swarm testing): every seed runs with its own rates,
//! so that rare combinations of faults get their turn.

use rand::Rng;
use rand_chacha::ChaCha8Rng;

use synod_paxos::PlantedBugs;
use synod_storage::FaultConfig;

/// The faults one run injects and how often; all rates are probabilities per
/// opportunity (per message, or per node per simulated millisecond).
#[derive(Clone, Debug)]
pub struct FaultMix {
    /// Members of the group the mix was drawn for.
    pub replicas: usize,
    /// A calm seed (one in ten): no faults at all, only latency and drift.
    pub calm: bool,
    /// Chance that a message is lost.
    pub drop_probability: f64,
    /// Chance that a message is delivered twice.
    pub duplicate_probability: f64,
    /// Shortest latency of a message, in milliseconds.
    pub latency_min_ms: u64,
    /// Longest latency of a message (before any long delay), in milliseconds.
    pub latency_max_ms: u64,
    /// Chance that a message is held up far longer than usual (a congested link):
    /// it may then arrive after a master change.
    pub long_delay_probability: f64,
    /// A long delay adds up to this, in milliseconds.
    pub long_delay_ms_max: u64,
    /// Chance per simulated millisecond that a new partition starts (when none is active).
    pub partition_per_ms: f64,
    /// A partition heals after at most this, in milliseconds.
    pub partition_length_ms_max: u64,
    /// Chance per running replica per simulated millisecond that it crashes.
    pub crash_per_ms: f64,
    /// A crashed replica restarts after at most this, in milliseconds.
    pub down_ms_max: u64,
    /// Chance per running replica per simulated millisecond that it pauses.
    pub pause_per_ms: f64,
    /// Pauses last up to this long: longer than a lease, on purpose.
    pub pause_ms_max: u64,
    /// Chance that a crash also wipes the node's disk (it then rejoins empty).
    pub wipe_probability: f64,
    /// Each node's clock rate differs from real time by up to this, in ppm.
    pub clock_drift_ppm: u64,
    /// How many replicas (the first ones) have disks that corrupt data at the
    /// `disk_faults` rates: at most a minority, so that every chosen value
    /// keeps a good copy on the others.
    pub corrupting_disks: usize,
    /// The rates of bit flips, misdirected writes and I/O errors on those disks.
    pub disk_faults: FaultConfig,
    /// Every disk may tear its last unsynced write on a crash.
    pub torn_write_probability: f64,
    /// Chance per Ready that the process dies between its writes and their
    /// sync: the writes are lost or torn, and nothing of the Ready was sent.
    pub crash_before_sync_probability: f64,
    /// Clients issuing writes and lease reads, one operation in flight each.
    pub clients: usize,
    /// Length of the first phase, with faults, in which only safety is checked,
    /// in milliseconds.
    pub safety_ms: u64,
    /// Length of the second phase, without faults, by whose end a write must
    /// have committed and the replicas caught up, in milliseconds.
    pub liveness_ms: u64,
    /// Chance per message sent that the network also carries a hostile
    /// variant of it (`crate::hostile`): a counter out of range or a
    /// proposer's ballot naming another member. Every one must be refused
    /// unread, so a run with them goes exactly as the same run without.
    pub hostile_probability: f64,
}

impl FaultMix {
    /// Draws a mix from the seed's generator; the hostile-message rate comes
    /// last and from a generator of its own, `hostile_rng`, so that no other
    /// draw of the run moves and every seed recorded before it existed runs
    /// as it did then. About half of the seeds that are not calm draw one.
    pub fn draw(rng: &mut ChaCha8Rng, hostile_rng: &mut ChaCha8Rng, replicas: usize, drift_max_ppm: u64) -> FaultMix {
        let calm = rng.random_bool(0.1);
        let scale = if calm { 0.0 } else { 1.0 };
        let latency_min_ms = rng.random_range(1..=5);
        FaultMix {
            replicas,
            calm,
            drop_probability: scale * rng.random_range(0.0..0.2),
            duplicate_probability: scale * rng.random_range(0.0..0.1),
            latency_min_ms,
            latency_max_ms: latency_min_ms + rng.random_range(1..=60),
            long_delay_probability: scale * rng.random_range(0.0..0.05),
            long_delay_ms_max: rng.random_range(100..=3_000),
            partition_per_ms: scale * rng.random_range(0.0..0.001),
            partition_length_ms_max: rng.random_range(200..=4_000),
            crash_per_ms: scale * rng.random_range(0.0..0.0005),
            down_ms_max: rng.random_range(100..=3_000),
            pause_per_ms: scale * rng.random_range(0.0..0.0003),
            pause_ms_max: rng.random_range(500..=4_000),
            wipe_probability: if rng.random_bool(0.3) {
                rng.random_range(0.0..0.5)
            } else {
                0.0
            },
            clock_drift_ppm: rng.random_range(0..=drift_max_ppm),
            corrupting_disks: if rng.random_bool(0.5) {
                rng.random_range(0..=(replicas - 1) / 2)
            } else {
                0
            },
            disk_faults: FaultConfig {
                read_bit_flip_probability: scale * rng.random_range(0.0..0.02),
                write_bit_flip_probability: scale * rng.random_range(0.0..0.005),
                misdirected_write_probability: scale * rng.random_range(0.0..0.002),
                read_error_probability: scale * rng.random_range(0.0..0.02),
                write_error_probability: scale * rng.random_range(0.0..0.0005),
                sync_error_probability: scale * rng.random_range(0.0..0.0005),
                torn_write_probability: 0.0,
            },
            torn_write_probability: rng.random_range(0.0..1.0),
            crash_before_sync_probability: scale * rng.random_range(0.0..0.002),
            clients: rng.random_range(1..=4),
            safety_ms: rng.random_range(3_000..=12_000),
            liveness_ms: 8_000,
            hostile_probability: if !calm && hostile_rng.random_bool(0.5) {
                hostile_rng.random_range(0.0..0.05)
            } else {
                0.0
            },
        }
    }
}

/// Bugs planted on purpose to show the checkers catch them.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct SimBugs {
    /// Bugs planted in the Paxos core itself.
    pub core: PlantedBugs,
    /// The host sends messages before the fsync covering its writes returns.
    pub send_before_sync: bool,
}

/// Faults aimed at the master, drawn per seed like [`FaultMix`] but from a
/// generator of their own, so a seed that draws none of them runs exactly as
/// it did before they existed.
///
/// They build the histories a wrong phase 1 needs to show itself: several
/// masters in a row, each leaving different values accepted at the same
/// instances on different acceptors, deposed before their commits spread.
/// PaxosLease keeps masters so well apart that the other faults almost never
/// do.
#[derive(Clone, Debug, Default)]
pub struct ChurnMix {
    /// Chance per simulated millisecond that the master crashes.
    pub master_crash_per_ms: f64,
    /// Chance per Ready of a master that carries `Accept`s that only some of
    /// them leave (each peer's with probability one half) and the master then
    /// crashes: its last values are accepted by a random part of the group.
    pub partial_accept_crash_probability: f64,
    /// Chance that a `Commit` is lost, so that acceptors go on reporting the
    /// values they accepted as merely accepted, not chosen.
    pub commit_drop_probability: f64,
    /// Every timeout of the core (lease, renewal, election, heartbeat,
    /// retransmission, back-off) is divided by this: with shorter leases a
    /// run sees many more master changes (0 or 1: as configured).
    pub timeout_divisor: u32,
}

impl ChurnMix {
    /// Draws a mix: about half of the seeds draw none (and run as the plain
    /// [`FaultMix`] alone would, which finds other bugs best); in the others
    /// each fault is switched on in about half of the seeds.
    pub fn draw(rng: &mut ChaCha8Rng) -> ChurnMix {
        if rng.random_bool(0.5) {
            return ChurnMix::default();
        }
        let mut rate = |max: f64| {
            if rng.random_bool(0.5) {
                rng.random_range(0.0..max)
            } else {
                0.0
            }
        };
        ChurnMix {
            master_crash_per_ms: rate(0.01),
            partial_accept_crash_probability: rate(0.5),
            commit_drop_probability: rate(0.8),
            timeout_divisor: [1, 2, 4][rng.random_range(0..3)],
        }
    }
}
