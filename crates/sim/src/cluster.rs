//! One simulated run: a whole group in one thread, in virtual time, driven by one
//! seed. The replicas run the very same `synod_paxos::Replica` the server runs.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::panic::{self, AssertUnwindSafe};
use std::time::Duration;

use bytes::Bytes;
use rand::Rng;
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;

use synod_paxos::{
    Ballot, Batch, BatchId, Config, Envelope, Epoch, FreshStart, Instance, Message, NodeId, Outcome, Persist, Ready,
    Replica, SubmitId, Time, Voting,
};

use crate::history::{History, OperationKind, Verdict};
use crate::hostile;
use crate::network::{Network, PartitionKind};
use crate::replica_disk::{add_counts, NodeDisk, Snapshot, Transfer};
use crate::swarm::{ChurnMix, FaultMix, SimBugs};
use synod_storage::{FaultConfig, FaultCounts};

/// Simulated milliseconds between two ticks of a replica.
const TICK_MS: u64 = 5;
/// A client gives up on a write after this long: its outcome is then unknown.
const CLIENT_TIMEOUT_MS: u64 = 3_000;
/// Instances between two snapshots of a replica's state machine.
const SNAPSHOT_EVERY_INSTANCES: u64 = 64;
const KEYS: [&str; 3] = ["x", "y", "z"];
/// How often the host with the planted "send before sync" bug gets round to syncing.
const LAZY_SYNC_MS: u64 = 500;
/// The last milliseconds of a run carry no new client operations.
const QUIET_MS: u64 = 2_000;
/// Mixed into the seed for the master-churn faults' own generator.
const CHURN_SEED_MASK: u64 = 0x6368_7572_6e5f_6d78;
/// Seeds the generator of master handovers, apart from the others, so that a
/// seed that draws none runs exactly as it did before handovers existed.
const HANDOVER_SEED_MASK: u64 = 0x6861_6e64_6f76_6572;
/// A handover not done within this many lease durations is not counted as done.
const HANDOVER_LEASES_MAX: u64 = 4;
/// Mixed into the seed for the hostile messages' own generator.
const HOSTILE_SEED_MASK: u64 = 0x686f_7374_696c_655f;

/// Everything one run needs: the seed decides all the rest.
#[derive(Clone, Debug)]
pub struct RunConfig {
    /// Seeds the one generator every random choice of the run comes from: the
    /// fault mix, clock drifts, latencies, faults and client operations.
    pub seed: u64,
    /// Members of the group, all voters from the start.
    pub replicas: usize,
    /// Bugs planted on purpose (none in a normal run), to show the checks catch them.
    pub bugs: SimBugs,
    /// Whether the seed also draws faults aimed at the master ([`ChurnMix`]).
    /// Off only to replay seeds recorded before those faults existed.
    pub churn: bool,
    /// Whether the network may carry hostile messages
    /// ([`FaultMix::hostile_probability`]). Refused unread, they change
    /// nothing else, so seeds replay the same either way; off to show that.
    pub hostile: bool,
}

/// Counts of what a run did, for the long mode's report.
#[derive(Clone, Debug, Default)]
pub struct Stats {
    /// Virtual time the run lasted, in milliseconds.
    pub simulated_ms: u64,
    /// Messages the replicas handed to the network (a duplicated one counts once).
    pub messages_sent: u64,
    /// Messages lost, at random or on a partitioned link.
    pub messages_dropped: u64,
    /// Messages the network sent as two copies.
    pub messages_duplicated: u64,
    /// Message copies held up far longer than usual, so they arrive out of order.
    pub messages_long_delayed: u64,
    /// Hostile variants of messages the network carried along
    /// ([`FaultMix::hostile_probability`]), counted in no other message count.
    pub messages_hostile: u64,
    /// Of those, the ones that reached a running replica's `step` and that it
    /// refused ([`Replica::messages_invalid`]): all that reached one.
    pub hostile_messages_refused: u64,
    /// Partitions started, by [`PartitionKind`] in the order it declares them:
    /// symmetric, one-way, majority/minority, bridge.
    pub partitions: [u64; 4],
    /// Replica crashes: each loses its disk's unsynced writes.
    pub crashes: u64,
    /// Crashes that also lost the replica's whole disk.
    pub wipes: u64,
    /// Crashes aimed at the master ([`ChurnMix`]), counted in `crashes` too.
    pub master_crashes: u64,
    /// Of those, crashes right after only some of a master's `Accept`s left.
    pub partial_accept_crashes: u64,
    /// `Commit` messages lost on purpose ([`ChurnMix`]).
    pub commits_dropped: u64,
    /// Runs whose core timeouts were shortened ([`ChurnMix::timeout_divisor`]).
    pub short_timeout_runs: u64,
    /// Handovers a master started on request ([`Replica::transfer_master`],
    /// etcd's MoveLeader), to a member drawn at random.
    pub handovers: u64,
    /// Of those, the ones whose target became master within
    /// `HANDOVER_LEASES_MAX` lease durations.
    pub handovers_done: u64,
    /// Times a replica stopped for a while (as in a long GC pause) and went on
    /// with its state intact.
    pub pauses: u64,
    /// Snapshots a replica installed from a peer.
    pub snapshots_installed: u64,
    /// Values applied to a replica's state machine, once per replica that applied them.
    pub values_committed: u64,
    /// Lease reads a master answered from its own state.
    pub reads_answered: u64,
    /// Client operations in the history, writes and reads.
    pub operations: u64,
    /// Instances whose chosen value the agreement check has seen.
    pub instances_chosen: u64,
    /// Replicas that could not start from their disk and were given an empty one.
    pub disks_replaced: u64,
    /// Replicas stopped by a failed write or sync.
    pub io_crashes: u64,
    /// Power failures injected during a sync.
    pub power_failures: u64,
    /// Snapshot transfers cut short by the sending peer's death.
    pub snapshot_transfers_interrupted: u64,
    /// Snapshot transfers that resumed after chunks an earlier one delivered.
    pub snapshot_transfers_resumed: u64,
    /// Transfers refused because the sending peer's snapshot failed its checks.
    pub damaged_snapshots_refused: u64,
    /// Faults the simulated disks injected, summed over the replicas.
    pub disk_faults: FaultCounts,
    /// Client histories found linearizable.
    pub histories_checked: u64,
    /// Histories whose check ran out of its step budget.
    pub histories_inconclusive: u64,
}

impl Stats {
    /// Adds another run's counts to these, for a total over many seeds.
    pub fn add(&mut self, other: &Stats) {
        self.simulated_ms += other.simulated_ms;
        self.messages_sent += other.messages_sent;
        self.messages_dropped += other.messages_dropped;
        self.messages_duplicated += other.messages_duplicated;
        self.messages_long_delayed += other.messages_long_delayed;
        self.messages_hostile += other.messages_hostile;
        self.hostile_messages_refused += other.hostile_messages_refused;
        for (mine, theirs) in self.partitions.iter_mut().zip(other.partitions) {
            *mine += theirs;
        }
        self.crashes += other.crashes;
        self.wipes += other.wipes;
        self.master_crashes += other.master_crashes;
        self.partial_accept_crashes += other.partial_accept_crashes;
        self.commits_dropped += other.commits_dropped;
        self.short_timeout_runs += other.short_timeout_runs;
        self.handovers += other.handovers;
        self.handovers_done += other.handovers_done;
        self.pauses += other.pauses;
        self.snapshots_installed += other.snapshots_installed;
        self.values_committed += other.values_committed;
        self.reads_answered += other.reads_answered;
        self.operations += other.operations;
        self.instances_chosen += other.instances_chosen;
        self.histories_checked += other.histories_checked;
        self.disks_replaced += other.disks_replaced;
        self.io_crashes += other.io_crashes;
        self.power_failures += other.power_failures;
        self.snapshot_transfers_interrupted += other.snapshot_transfers_interrupted;
        self.snapshot_transfers_resumed += other.snapshot_transfers_resumed;
        self.damaged_snapshots_refused += other.damaged_snapshots_refused;
        self.disk_faults = add_counts(self.disk_faults, other.disk_faults);
        self.histories_inconclusive += other.histories_inconclusive;
    }
}

/// How a run ended.
#[derive(Clone, Debug)]
pub struct RunReport {
    /// The seed that ran: replaying it gives this report again.
    pub seed: u64,
    /// Members of the group.
    pub replicas: usize,
    /// The fault rates the seed drew.
    pub mix: FaultMix,
    /// The faults aimed at the master that the seed drew.
    pub churn: ChurnMix,
    /// The first violated property, if any.
    pub failure: Option<String>,
    /// What the run did.
    pub stats: Stats,
    /// Each replica's state at the end of a failed run.
    pub trace: Vec<String>,
}

struct Node {
    id: NodeId,
    replica: Option<Replica>,
    disk: NodeDisk,
    state: BTreeMap<String, String>,
    applied: Instance,
    /// Clock rate offset from real time, in ppm.
    clock_ppm: i64,
    paused_until_ms: Option<u64>,
    down_until_ms: Option<u64>,
    next_tick_ms: u64,
    submits: HashMap<SubmitId, (usize, usize)>,
}

impl Node {
    fn local_now(&self, now_us: u64) -> Time {
        let nanos = now_us as i128 * 1_000 * (1_000_000 + self.clock_ppm as i128) / 1_000_000;
        Time::from_nanos(nanos as u64 + 1_000_000_000)
    }

    fn is_up(&self) -> bool {
        self.replica.is_some()
    }

    fn is_running(&self) -> bool {
        self.replica.is_some() && self.paused_until_ms.is_none()
    }
}

struct Client {
    target: usize,
    /// History index of the operation in flight, and when it started.
    in_flight: Option<(usize, u64)>,
    next_op_ms: u64,
    written: u64,
}

/// One seeded run of a group.
pub struct Simulation {
    rng: ChaCha8Rng,
    config: RunConfig,
    mix: FaultMix,
    /// The master-churn faults and their own generator.
    churn: ChurnMix,
    churn_rng: ChaCha8Rng,
    /// Chance per simulated millisecond that the master is asked to hand
    /// over to another member (in about a quarter of the churned seeds).
    handover_per_ms: f64,
    handover_rng: ChaCha8Rng,
    /// The handover asked for last: its target and when, in simulated ms.
    handover_pending: Option<(NodeId, u64)>,
    /// Chooses which messages get a hostile variant, and the variants.
    hostile_rng: ChaCha8Rng,
    /// The first message a replica's `step` got wrong: a hostile one it did
    /// not refuse, or one of the replicas' own that it refused. Reported after
    /// the other checks, so that what a taken message led to is named first.
    misjudged: Option<String>,
    paxos: Config,
    nodes: Vec<Node>,
    network: Network,
    clients: Vec<Client>,
    history: History,
    now_us: u64,
    partition_heals_at_ms: Option<u64>,
    /// The one value ever chosen for each instance, as first seen delivered anywhere.
    chosen: BTreeMap<Instance, BatchId>,
    /// Every acceptance made durable (or sent, with a host that sends before
    /// it syncs), by instance and ballot: the value and the acceptors, as bits.
    acceptances: BTreeMap<Instance, BTreeMap<Ballot, (BatchId, u64)>>,
    /// For each instance a majority accepted a value at: the lowest such
    /// ballot and its value. Chosen, whether or not anyone learns it.
    chosen_at: BTreeMap<Instance, (Ballot, BatchId)>,
    submitted: HashSet<Bytes>,
    stats: Stats,
    failure: Option<String>,
    trace: Vec<String>,
}

/// The Paxos configuration the simulator runs with: short timeouts, small
/// windows, so that a few simulated seconds see many master changes.
pub fn sim_paxos_config(node: NodeId, members: Vec<NodeId>) -> Config {
    let mut config = Config::new(node, members);
    config.lease_duration = Duration::from_millis(1_000);
    config.lease_renew_interval = Duration::from_millis(250);
    config.election_timeout = Duration::from_millis(500);
    config.heartbeat_interval = Duration::from_millis(50);
    config.retransmit_interval = Duration::from_millis(100);
    config.backoff_max = Duration::from_millis(250);
    config.clock_drift_max_ppm = 20_000;
    config.window_instances_max = 4;
    config.batch_values_max = 8;
    config.accept_ahead_instances_max = 16;
    config.catchup_instances_max = 8;
    config
}

impl Simulation {
    /// Sets up a run: draws the fault mix and each replica's clock drift from
    /// the seed and starts every replica as a member of a new group.
    pub fn new(config: RunConfig) -> Simulation {
        let mut rng = ChaCha8Rng::seed_from_u64(config.seed);
        let members: Vec<NodeId> = (1..=config.replicas as u64).map(NodeId).collect();
        let mut paxos = sim_paxos_config(members[0], members.clone());
        let mut hostile_rng = ChaCha8Rng::seed_from_u64(config.seed ^ HOSTILE_SEED_MASK);
        let mut mix = FaultMix::draw(&mut rng, &mut hostile_rng, config.replicas, paxos.clock_drift_max_ppm);
        if !config.hostile {
            mix.hostile_probability = 0.0;
        }
        let mut churn_rng = ChaCha8Rng::seed_from_u64(config.seed ^ CHURN_SEED_MASK);
        let churn = if config.churn && !mix.calm {
            ChurnMix::draw(&mut churn_rng)
        } else {
            ChurnMix::default()
        };
        let mut handover_rng = ChaCha8Rng::seed_from_u64(config.seed ^ HANDOVER_SEED_MASK);
        let handover_per_ms = if config.churn && !mix.calm && handover_rng.random_bool(0.25) {
            handover_rng.random_range(0.0..0.01)
        } else {
            0.0
        };
        // A lease must leave room for its two round trips at the worst
        // latency, or no master could ever be elected.
        let divisor = churn.timeout_divisor;
        let short_timeouts =
            divisor > 1 && paxos.lease_duration.as_millis() as u64 / u64::from(divisor) >= 8 * mix.latency_max_ms;
        if short_timeouts {
            paxos.lease_duration /= divisor;
            paxos.lease_renew_interval /= divisor;
            paxos.election_timeout /= divisor;
            paxos.heartbeat_interval /= divisor;
            paxos.retransmit_interval /= divisor;
            paxos.backoff_max /= divisor;
        }
        let mut nodes = Vec::new();
        for (index, id) in members.iter().enumerate() {
            let drift = mix.clock_drift_ppm as i64;
            let clock_ppm = if drift == 0 {
                0
            } else {
                rng.random_range(-drift..=drift)
            };
            let mut faults = if index < mix.corrupting_disks {
                mix.disk_faults.clone()
            } else {
                FaultConfig::default()
            };
            faults.torn_write_probability = mix.torn_write_probability;
            nodes.push(Node {
                id: *id,
                replica: None,
                disk: NodeDisk::new(rng.random(), faults),
                state: BTreeMap::new(),
                applied: Instance::ZERO,
                clock_ppm,
                paused_until_ms: None,
                down_until_ms: None,
                next_tick_ms: rng.random_range(0..TICK_MS),
                submits: HashMap::new(),
            });
        }
        let clients = (0..mix.clients)
            .map(|_| Client {
                target: rng.random_range(0..config.replicas),
                in_flight: None,
                next_op_ms: rng.random_range(0..50),
                written: 0,
            })
            .collect();
        let mut simulation = Simulation {
            rng,
            config,
            mix,
            churn,
            churn_rng,
            handover_per_ms,
            handover_rng,
            handover_pending: None,
            hostile_rng,
            misjudged: None,
            paxos,
            nodes,
            network: Network::new(),
            clients,
            history: History::default(),
            now_us: 0,
            partition_heals_at_ms: None,
            chosen: BTreeMap::new(),
            acceptances: BTreeMap::new(),
            chosen_at: BTreeMap::new(),
            submitted: HashSet::new(),
            stats: Stats::default(),
            failure: None,
            trace: Vec::new(),
        };
        simulation.stats.short_timeout_runs = u64::from(short_timeouts);
        for index in 0..simulation.nodes.len() {
            simulation.start_node(index, Some(FreshStart::NewGroup));
        }
        simulation
    }

    fn node_config(&self, index: usize) -> Config {
        let mut config = self.paxos.clone();
        config.node = self.nodes[index].id;
        config
    }

    fn start_node(&mut self, index: usize, fresh: Option<FreshStart>) {
        let config = self.node_config(index);
        let now = self.nodes[index].local_now(self.now_us);
        let seed = self.rng.random();
        let opened = match self.nodes[index].disk.open() {
            Ok(opened) => opened,
            Err(_) => {
                // The replica refuses to start from this disk (both metadata copies
                // bad, say): the operator gives it an empty one and it rejoins.
                self.stats.disks_replaced += 1;
                self.nodes[index].disk.wipe();
                match self.nodes[index].disk.open() {
                    Ok(opened) => opened,
                    Err(error) if error.contains("injected") => {
                        // An injected I/O error while the new disk is laid
                        // out stops the process, as any failed write or sync
                        // does; it starts again later.
                        self.stats.io_crashes += 1;
                        let down = self.rng.random_range(10..=300);
                        self.nodes[index].down_until_ms = Some(self.now_ms() + down);
                        return;
                    }
                    Err(error) => return self.fail(format!("an empty disk failed to open: {error}")),
                }
            }
        };
        let mut replica = match opened.durable {
            None => Replica::fresh(config, fresh.unwrap_or(FreshStart::Rejoin), now, seed),
            Some(durable) => Replica::restart(config, durable, now, seed),
        };
        replica.plant_bugs(self.config.bugs.core);
        let node = &mut self.nodes[index];
        // The state machine restarts from the snapshot and replays the log.
        match opened.snapshot {
            Some(snapshot) => {
                node.state = snapshot.state;
                node.applied = snapshot.instance;
            }
            None => {
                node.state.clear();
                node.applied = Instance::ZERO;
            }
        }
        node.replica = Some(replica);
        node.down_until_ms = None;
        node.paused_until_ms = None;
        self.process_ready(index);
    }

    /// A failed write or sync stops the process (a sync is never retried).
    fn io_failure(&mut self, index: usize) {
        self.stats.io_crashes += 1;
        self.crash(index);
    }

    fn now_ms(&self) -> u64 {
        self.now_us / 1_000
    }

    fn fail(&mut self, message: String) {
        if self.failure.is_none() {
            self.failure = Some(format!("t={}ms: {}", self.now_ms(), message));
        }
    }

    /// Acts on a replica's Ready, in the documented order.
    fn process_ready(&mut self, index: usize) {
        let Some(replica) = self.nodes[index].replica.as_mut() else {
            return;
        };
        let ready: Ready = replica.take_ready();
        if ready.is_empty() {
            return;
        }
        let from = self.nodes[index].id;
        let mut written = self.nodes[index].disk.write(&ready.persist);
        if written.is_ok()
            && !ready.persist.is_empty()
            && !self.in_liveness_phase()
            && self.mix.crash_before_sync_probability > 0.0
            && self.rng.random_bool(self.mix.crash_before_sync_probability)
        {
            // Power fails while the writes are on their way to the platters.
            let identifiers = self.rng.random_bool(0.5);
            self.nodes[index].disk.fail_next_sync(identifiers);
            self.stats.power_failures += 1;
        }
        if written.is_ok() && !self.config.bugs.send_before_sync {
            written = self.nodes[index].disk.sync();
        }
        if written.is_err() {
            // Nothing of this Ready leaves the process.
            return self.io_failure(index);
        }
        self.check_acceptances(index, &ready.persist);
        let latency = (self.mix.latency_min_ms * 1_000, self.mix.latency_max_ms * 1_000);
        let (drop, duplicate, long_delay) = if self.in_liveness_phase() {
            (0.0, 0.0, (0.0, 0))
        } else {
            (
                self.mix.drop_probability,
                self.mix.duplicate_probability,
                (self.mix.long_delay_probability, self.mix.long_delay_ms_max * 1_000),
            )
        };
        let mut messages = ready.messages;
        let crash_after_send = self.churn_messages(index, &mut messages);
        for envelope in messages {
            // Once a replica took one, the run has failed: more would only
            // hide what that one led to, which the other checks then name.
            if !self.in_liveness_phase()
                && self.misjudged.is_none()
                && self.mix.hostile_probability > 0.0
                && self.hostile_rng.random_bool(self.mix.hostile_probability)
            {
                let rng = &mut self.hostile_rng;
                if let Some(variant) = hostile::variant(rng, &envelope.message, from, &self.paxos.members) {
                    let latency_us = rng.random_range(latency.0..=latency.1);
                    self.network
                        .inject_hostile(self.now_us + latency_us, from, envelope.to, variant);
                }
            }
            self.network.send(
                &mut self.rng,
                self.now_us,
                from,
                envelope.to,
                envelope.message,
                drop,
                duplicate,
                latency,
                long_delay,
            );
        }
        for committed in ready.committed {
            self.check_chosen(index, committed.instance, &committed.batch);
            let node = &mut self.nodes[index];
            if committed.instance != node.applied.next() {
                let message = format!(
                    "{} applied {} after {}: not in order, exactly once",
                    node.id, committed.instance, node.applied
                );
                self.fail(message);
                return;
            }
            node.applied = committed.instance;
            for value in committed.applied_values() {
                let text = String::from_utf8_lossy(value);
                if let Some((key, val)) = text.split_once('=') {
                    node.state.insert(key.to_string(), val.to_string());
                }
            }
            self.stats.values_committed += committed.applied_values().count() as u64;
        }
        for outcome in ready.outcomes {
            let Some((client, op)) = self.nodes[index].submits.remove(&outcome.id) else {
                continue;
            };
            let returned = self.history.next_time();
            match outcome.outcome {
                Outcome::Committed { .. } => self.history.complete(op, returned, None),
                Outcome::Rejected(_) => self.history.fail(op),
                Outcome::Unknown => {}
            }
            if self.clients[client].in_flight.is_some_and(|(current, _)| current == op) {
                self.clients[client].in_flight = None;
                self.clients[client].next_op_ms = self.now_ms() + self.rng.random_range(1..20);
            }
        }
        if let Some((peer, instance)) = ready.snapshot_needed {
            self.transfer_snapshot(index, peer, instance);
        }
        if crash_after_send {
            self.stats.master_crashes += 1;
            self.stats.partial_accept_crashes += 1;
            return self.crash(index);
        }
        self.maybe_snapshot(index);
    }

    /// Applies the master-churn faults to a Ready's messages: drops lost
    /// commits and, now and then, all but some of a master's `Accept`s;
    /// returns whether the master must then crash.
    fn churn_messages(&mut self, index: usize, messages: &mut Vec<Envelope>) -> bool {
        if self.in_liveness_phase() {
            return false;
        }
        let churn = &self.churn;
        if churn.commit_drop_probability > 0.0 {
            let (rng, p) = (&mut self.churn_rng, churn.commit_drop_probability);
            let before = messages.len();
            messages.retain(|envelope| !matches!(envelope.message, Message::Commit { .. }) || !rng.random_bool(p));
            self.stats.commits_dropped += (before - messages.len()) as u64;
        }
        let is_master = self.nodes[index].replica.as_ref().is_some_and(Replica::is_master);
        let has_accepts = messages
            .iter()
            .any(|envelope| matches!(envelope.message, Message::Accept { .. }));
        if !is_master
            || !has_accepts
            || churn.partial_accept_crash_probability == 0.0
            || !self.churn_rng.random_bool(churn.partial_accept_crash_probability)
        {
            return false;
        }
        let kept: Vec<bool> = (0..self.nodes.len()).map(|_| self.churn_rng.random_bool(0.5)).collect();
        let nodes = &self.nodes;
        messages.retain(|envelope| {
            nodes
                .iter()
                .position(|node| node.id == envelope.to)
                .is_some_and(|peer| kept[peer])
        });
        true
    }

    /// The invariant behind Paxos's safety proof (Lamport 2001, P2c): once a
    /// majority accepted value `v` at ballot `b`, every acceptance at a ballot
    /// above `b` is of `v`. Checked on every acceptance as it becomes real (its
    /// Ready's messages leave), so a wrong re-proposal fails the run at once,
    /// before anyone delivers it, even if nobody ever learns the instance.
    fn check_acceptances(&mut self, index: usize, persist: &[Persist]) {
        let majority = self.config.replicas / 2 + 1;
        let bit = 1u64 << index;
        let node = self.nodes[index].id;
        for record in persist {
            let Persist::Accepted {
                instance,
                ballot,
                batch,
            } = record
            else {
                continue;
            };
            let (instance, ballot, id) = (*instance, *ballot, batch.id);
            let at_instance = self.acceptances.entry(instance).or_default();
            let (value, acceptors) = at_instance.entry(ballot).or_insert((id, 0));
            if *value != id {
                let message = format!(
                    "two values proposed at {instance} in ballot {ballot}: {:?} and {:?} (accepted by {node})",
                    value, id
                );
                return self.fail(message);
            }
            *acceptors |= bit;
            let quorum_reached = acceptors.count_ones() as usize >= majority;
            if let Some(&(chosen_ballot, chosen)) = self.chosen_at.get(&instance) {
                if ballot > chosen_ballot && id != chosen {
                    let message = format!(
                        "{node} accepted {id:?} at {instance} in ballot {ballot}, \
                         but a majority accepted {chosen:?} there in ballot {chosen_ballot}"
                    );
                    return self.fail(message);
                }
            }
            if !quorum_reached
                || self
                    .chosen_at
                    .get(&instance)
                    .is_some_and(|(lowest, _)| *lowest <= ballot)
            {
                continue;
            }
            // A majority at a ballot lower than any seen so far: every
            // acceptance above it must agree.
            if let Some((higher, (other, _))) = at_instance
                .range(ballot..)
                .find(|(_, (other, _))| *other != id)
                .map(|(b, v)| (*b, *v))
            {
                let message = format!(
                    "a majority accepted {id:?} at {instance} in ballot {ballot}, \
                     but {other:?} was accepted there in the higher ballot {higher}"
                );
                return self.fail(message);
            }
            self.chosen_at.insert(instance, (ballot, id));
        }
    }

    fn check_chosen(&mut self, index: usize, instance: Instance, batch: &Batch) {
        match self.chosen.get(&instance) {
            Some(id) if *id != batch.id => {
                let message = format!(
                    "agreement violated at {instance}: {} delivered {:?}, earlier {:?}",
                    self.nodes[index].id, batch.id, id
                );
                self.fail(message);
            }
            Some(_) => {}
            None => {
                for entry in batch.entries.iter() {
                    if !self.submitted.contains(&entry.value) {
                        let message = format!("validity violated at {instance}: a value nobody submitted");
                        self.fail(message);
                    }
                }
                self.chosen.insert(instance, batch.id);
                self.stats.instances_chosen += 1;
            }
        }
    }

    /// A Ready asked for a peer's snapshot: copy the peer's durable snapshot over,
    /// as the storage layer's transfer would.
    fn transfer_snapshot(&mut self, index: usize, peer: NodeId, instance: Instance) {
        let Some(peer_index) = self.nodes.iter().position(|node| node.id == peer) else {
            return;
        };
        if !self.nodes[peer_index].is_up() {
            return;
        }
        let Ok(Some(reader)) = self.nodes[peer_index].disk.snapshot_reader() else {
            return;
        };
        let manifest = reader.manifest();
        if manifest.instance < instance || manifest.instance <= self.nodes[index].applied {
            return;
        }
        // Now and then the sending peer dies part-way; the replica asks again
        // later (the core repeats its catch-up) and resumes, from whichever peer.
        let interruption = (!self.in_liveness_phase() && self.rng.random_bool(0.3))
            .then(|| self.rng.random_range(0..manifest.chunk_count.max(1)));
        let (transfer, resumed_from) = match self.nodes[index].disk.receive_snapshot(&reader, interruption) {
            Ok(result) => result,
            Err(_) => return self.io_failure(index),
        };
        if resumed_from > 0 {
            self.stats.snapshot_transfers_resumed += 1;
        }
        let snapshot = match transfer {
            Transfer::Interrupted => {
                self.stats.snapshot_transfers_interrupted += 1;
                return;
            }
            Transfer::PeerSnapshotDamaged => {
                // The sender finds its own copy damaged while reading it out and
                // writes a fresh one from its state machine; the receiver asks
                // again.
                self.stats.damaged_snapshots_refused += 1;
                self.snapshot_now(peer_index);
                return;
            }
            Transfer::Installed(snapshot) => snapshot,
        };
        let node = &mut self.nodes[index];
        node.applied = snapshot.instance;
        node.state = snapshot.state;
        self.stats.snapshots_installed += 1;
        if let Some(replica) = node.replica.as_mut() {
            replica.install_snapshot(snapshot.instance, snapshot.epoch);
        }
        self.process_ready(index);
    }

    /// Every so often a replica snapshots its state machine and hands the handle
    /// back, so its log is trimmed.
    fn maybe_snapshot(&mut self, index: usize) {
        let node = &self.nodes[index];
        let base = node.disk.snapshot_instance();
        if node.applied.0 < base.0 + SNAPSHOT_EVERY_INSTANCES {
            return;
        }
        self.snapshot_now(index);
    }

    /// Snapshots a replica's state machine at its applied point and trims its log.
    fn snapshot_now(&mut self, index: usize) {
        let node = &mut self.nodes[index];
        let Some(replica) = node.replica.as_mut() else {
            return;
        };
        let through = node.applied;
        if replica.chosen_through() < through {
            return;
        }
        let snapshot = Snapshot {
            instance: through,
            epoch: replica.applied_epoch(),
            state: node.state.clone(),
        };
        if node.disk.save_snapshot(&snapshot).is_err() {
            return self.io_failure(index);
        }
        if let Some(replica) = self.nodes[index].replica.as_mut() {
            replica.trim(through);
        }
    }

    fn in_liveness_phase(&self) -> bool {
        self.now_ms() >= self.mix.safety_ms
    }

    /// Runs the safety phase, then the liveness phase; returns the report.
    pub fn run(mut self) -> RunReport {
        // A panic (an assert of the core, or arithmetic that overflows with
        // overflow checks on) fails the run like any check, with its seed,
        // instead of ending every other seed's run too.
        let ran = panic::catch_unwind(AssertUnwindSafe(|| self.run_phases()));
        if let Err(payload) = ran {
            let message = payload
                .downcast_ref::<&str>()
                .map(|message| message.to_string())
                .or_else(|| payload.downcast_ref::<String>().cloned())
                .unwrap_or_default();
            self.fail(format!("panicked: {message}"));
        }
        self.finish()
    }

    /// Steps the group through both phases until their end or a failure.
    fn run_phases(&mut self) {
        let end_ms = self.mix.safety_ms + self.mix.liveness_ms;
        let mut liveness_started = false;
        while self.now_ms() < end_ms && self.failure.is_none() {
            if !liveness_started && self.in_liveness_phase() {
                liveness_started = true;
                self.history.mark_liveness();
                self.heal_everything();
            }
            self.restart_due_nodes();
            if !self.in_liveness_phase() {
                self.inject_faults();
            }
            self.deliver_messages();
            self.tick_nodes();
            self.run_clients();
            self.follow_handover();
            self.check_single_lease_holder();
            if std::env::var_os("SYNOD_SIM_TRACE").is_some() && self.now_us.is_multiple_of(500_000) {
                for node in &self.nodes {
                    let state = match &node.replica {
                        Some(replica) => replica.describe(node.local_now(self.now_us)),
                        None => format!("{} down", node.id),
                    };
                    eprintln!("{} {} paused={:?}", self.now_ms(), state, node.paused_until_ms);
                }
            }
            self.now_us += 1_000;
        }
    }

    /// Runs the checks of the run's end and reports.
    fn finish(mut self) -> RunReport {
        if self.failure.is_none() {
            self.check_liveness();
        }
        if self.failure.is_none() {
            match self.history.check() {
                Verdict::Linearizable => self.stats.histories_checked += 1,
                Verdict::Inconclusive => self.stats.histories_inconclusive += 1,
                Verdict::Violation(message) => self.fail(message),
            }
        }
        if let Some(misjudged) = self.misjudged.take() {
            let misjudged = format!("message validation: {misjudged}");
            if self.failure.is_some() {
                // What the message led to was caught first; say what it was.
                self.trace.push(misjudged);
            } else {
                self.fail(misjudged);
            }
        }
        if self.failure.is_some() {
            for node in &self.nodes {
                let state = match &node.replica {
                    Some(replica) => replica.describe(node.local_now(self.now_us)),
                    None => format!("{} down", node.id),
                };
                self.trace.push(state);
            }
        }
        self.stats.simulated_ms = self.now_ms();
        self.stats.messages_sent = self.network.counters.sent;
        self.stats.messages_dropped = self.network.counters.dropped;
        self.stats.messages_duplicated = self.network.counters.duplicated;
        self.stats.messages_long_delayed = self.network.counters.long_delays;
        self.stats.messages_hostile = self.network.counters.hostile;
        self.stats.partitions = self.network.counters.partitions;
        self.stats.operations = self.history.len() as u64;
        for node in &self.nodes {
            self.stats.disk_faults = add_counts(self.stats.disk_faults, node.disk.fault_counts());
        }
        RunReport {
            seed: self.config.seed,
            replicas: self.config.replicas,
            mix: self.mix,
            churn: self.churn,
            failure: self.failure,
            stats: self.stats,
            trace: self.trace,
        }
    }

    fn heal_everything(&mut self) {
        self.network.heal();
        self.partition_heals_at_ms = None;
        for index in 0..self.nodes.len() {
            self.nodes[index].disk.stop_faults();
            if !self.nodes[index].is_up() {
                self.start_node(index, None);
            }
            self.nodes[index].paused_until_ms = None;
        }
    }

    fn check_liveness(&mut self) {
        if self.history.first_write_committed_after_mark().is_none() {
            let message = format!(
                "liveness: no write committed within {} ms after faults stopped",
                self.mix.liveness_ms
            );
            return self.fail(message);
        }
        // Every replica must have caught up with what was chosen.
        let highest = self.chosen.keys().next_back().copied().unwrap_or_default();
        let lagging: Vec<String> = self
            .nodes
            .iter()
            .filter(|node| node.applied < highest)
            .map(|node| format!("{} at {}", node.id, node.applied))
            .collect();
        let wiped_learning = self.nodes.iter().any(|node| {
            node.replica
                .as_ref()
                .is_some_and(|replica| replica.meta().voting != Voting::Voter)
        });
        if !lagging.is_empty() && !wiped_learning {
            self.fail(format!(
                "liveness: replicas never caught up to {highest}: {}",
                lagging.join(", ")
            ));
        }
    }

    fn inject_faults(&mut self) {
        let now_ms = self.now_ms();
        // Partitions come and go.
        if let Some(heal_at) = self.partition_heals_at_ms {
            if now_ms >= heal_at {
                self.network.heal();
                self.partition_heals_at_ms = None;
            }
        } else if self.rng.random_bool(self.mix.partition_per_ms) {
            let kind = match self.rng.random_range(0..4) {
                0 => PartitionKind::Symmetric,
                1 => PartitionKind::OneWay,
                2 => PartitionKind::MajorityMinority,
                _ => PartitionKind::Bridge,
            };
            let ids: Vec<NodeId> = self.nodes.iter().map(|node| node.id).collect();
            self.network.partition(&mut self.rng, &ids, kind);
            let length = self.rng.random_range(50..=self.mix.partition_length_ms_max);
            self.partition_heals_at_ms = Some(now_ms + length);
        }
        for index in 0..self.nodes.len() {
            if self.nodes[index].down_until_ms.is_some() {
                continue;
            }
            if let Some(until) = self.nodes[index].paused_until_ms {
                if now_ms >= until {
                    self.nodes[index].paused_until_ms = None;
                }
                continue;
            }
            if self.mix.crash_per_ms > 0.0 && self.rng.random_bool(self.mix.crash_per_ms) {
                self.crash(index);
            } else if self.mix.pause_per_ms > 0.0 && self.rng.random_bool(self.mix.pause_per_ms) {
                let length = self.rng.random_range(100..=self.mix.pause_ms_max);
                self.nodes[index].paused_until_ms = Some(now_ms + length);
                self.stats.pauses += 1;
            }
        }
        self.inject_handover();
        if self.churn.master_crash_per_ms > 0.0 && self.churn_rng.random_bool(self.churn.master_crash_per_ms) {
            let master = self.nodes.iter().position(|node| {
                node.paused_until_ms.is_none() && node.replica.as_ref().is_some_and(Replica::is_master)
            });
            if let Some(master) = master {
                self.stats.master_crashes += 1;
                self.crash(master);
            }
        }
    }

    /// Counts the handover asked for as done once its target is master, or
    /// forgets it after `HANDOVER_LEASES_MAX` lease durations. Runs every
    /// step, the fault-free liveness phase included.
    fn follow_handover(&mut self) {
        let Some((target, asked_ms)) = self.handover_pending else {
            return;
        };
        let lease_ms = self.paxos.lease_duration.as_millis() as u64;
        let index = (target.0 - 1) as usize;
        if self.nodes[index].replica.as_ref().is_some_and(Replica::is_master) {
            self.stats.handovers_done += 1;
            self.handover_pending = None;
        } else if self.now_ms() > asked_ms + HANDOVER_LEASES_MAX * lease_ms {
            self.handover_pending = None;
        }
    }

    /// Now and then asks the master to hand over to another member. The
    /// checks after every step (one lease holder at a time, agreement) hold
    /// through them as through any other master change.
    fn inject_handover(&mut self) {
        let now_ms = self.now_ms();
        // One at a time, so that each is counted done or not.
        if self.handover_pending.is_some()
            || self.handover_per_ms <= 0.0
            || !self.handover_rng.random_bool(self.handover_per_ms)
        {
            return;
        }
        let master = self
            .nodes
            .iter()
            .position(|node| node.paused_until_ms.is_none() && node.replica.as_ref().is_some_and(Replica::is_master));
        let Some(master) = master else { return };
        let others: Vec<usize> = (0..self.nodes.len()).filter(|index| *index != master).collect();
        let target = others[self.handover_rng.random_range(0..others.len())];
        let target_id = self.nodes[target].id;
        let now = self.nodes[master].local_now(self.now_us);
        let replica = self.nodes[master].replica.as_mut().expect("running");
        if replica.transfer_master(now, target_id).is_ok() {
            self.stats.handovers += 1;
            self.handover_pending = Some((target_id, now_ms));
            self.process_ready(master);
        }
    }

    /// Restarts every crashed replica whose down time is over.
    fn restart_due_nodes(&mut self) {
        let now_ms = self.now_ms();
        for index in 0..self.nodes.len() {
            if self.nodes[index].down_until_ms.is_some_and(|until| now_ms >= until) {
                self.start_node(index, None);
            }
        }
    }

    fn crash(&mut self, index: usize) {
        self.stats.crashes += 1;
        // Disks are lost only where the group can survive it: on the replicas
        // whose disks may corrupt data (at most a minority), or, when there are
        // none, on one replica at a time while every other is up and voting.
        let others_healthy = self.nodes.iter().enumerate().all(|(other, node)| {
            other == index
                || node
                    .replica
                    .as_ref()
                    .is_some_and(|replica| replica.meta().voting == Voting::Voter)
        });
        let may_lose_disk = if self.mix.corrupting_disks > 0 {
            index < self.mix.corrupting_disks
        } else {
            others_healthy
        };
        let wipe = may_lose_disk && self.mix.wipe_probability > 0.0 && self.rng.random_bool(self.mix.wipe_probability);
        let node = &mut self.nodes[index];
        node.replica = None;
        node.submits.clear();
        node.paused_until_ms = None;
        node.disk.crash();
        if wipe {
            node.disk.wipe();
            self.stats.wipes += 1;
        }
        // Half the restarts are quick (a process that reboots within a lease
        // time), half take as long as the mix allows.
        let down = if self.rng.random_bool(0.5) {
            self.rng.random_range(10..=300)
        } else {
            self.rng.random_range(10..=self.mix.down_ms_max)
        };
        self.nodes[index].down_until_ms = Some(self.now_ms() + down);
    }

    fn deliver_messages(&mut self) {
        while let Some(delivery) = self.network.next_due(self.now_us) {
            let Some(index) = self.nodes.iter().position(|node| node.id == delivery.to) else {
                continue;
            };
            let node = &mut self.nodes[index];
            if let Some(until) = node.paused_until_ms {
                // A paused process reads its socket when it wakes.
                self.network.delay(until * 1_000, delivery);
                continue;
            }
            let now = node.local_now(self.now_us);
            let Some(replica) = node.replica.as_mut() else { continue };
            let invalid_before = replica.messages_invalid();
            let (from, hostile) = (delivery.from, delivery.hostile);
            // Only the rare hostile copies are kept to be named in a report.
            let kept = (hostile && self.misjudged.is_none()).then(|| delivery.message.clone());
            replica.step(now, from, delivery.message);
            let refused = replica.messages_invalid() - invalid_before;
            assert!(refused <= 1, "one message, refused at most once");
            if hostile {
                self.stats.hostile_messages_refused += refused;
            }
            if hostile != (refused == 1) && self.misjudged.is_none() {
                let what = match kept {
                    Some(message) => format!("took a hostile message from {from}: {message:?}"),
                    None => format!("refused a message {from} sent"),
                };
                self.misjudged = Some(format!("t={}ms: {} {what}", self.now_ms(), delivery.to));
            }
            self.process_ready(index);
        }
    }

    fn tick_nodes(&mut self) {
        let now_ms = self.now_ms();
        for index in 0..self.nodes.len() {
            let node = &mut self.nodes[index];
            if !node.is_running() || now_ms < node.next_tick_ms {
                continue;
            }
            node.next_tick_ms = now_ms + TICK_MS;
            let now = node.local_now(self.now_us);
            if let Some(replica) = node.replica.as_mut() {
                replica.tick(now);
            }
            if self.config.bugs.send_before_sync
                && now_ms % LAZY_SYNC_MS < TICK_MS
                && self.nodes[index].disk.sync().is_err()
            {
                // The buggy host syncs lazily, now and then.
                self.io_failure(index);
                continue;
            }
            self.process_ready(index);
        }
    }

    fn run_clients(&mut self) {
        let now_ms = self.now_ms();
        if now_ms + QUIET_MS >= self.mix.safety_ms + self.mix.liveness_ms {
            // The end of the run is quiet, so every replica can catch up.
            return;
        }
        for client_index in 0..self.clients.len() {
            if let Some((op, started)) = self.clients[client_index].in_flight {
                if now_ms >= started + CLIENT_TIMEOUT_MS {
                    // Gives up: the write's outcome stays unknown.
                    self.clients[client_index].in_flight = None;
                    self.clients[client_index].next_op_ms = now_ms + 1;
                    let _ = op;
                }
                continue;
            }
            if now_ms < self.clients[client_index].next_op_ms {
                continue;
            }
            let target = self.clients[client_index].target;
            if !self.nodes[target].is_running() {
                self.clients[client_index].target = self.rng.random_range(0..self.nodes.len());
                self.clients[client_index].next_op_ms = now_ms + 5;
                continue;
            }
            let key = KEYS[self.rng.random_range(0..KEYS.len())];
            if self.rng.random_bool(0.5) {
                self.client_write(client_index, target, key);
            } else {
                self.client_read(client_index, target, key);
            }
        }
    }

    fn redirect(&mut self, client_index: usize, hint: Option<NodeId>) {
        let target = match hint.and_then(|id| self.nodes.iter().position(|node| node.id == id)) {
            Some(index) if self.rng.random_bool(0.8) => index,
            _ => self.rng.random_range(0..self.nodes.len()),
        };
        self.clients[client_index].target = target;
        self.clients[client_index].next_op_ms = self.now_ms() + self.rng.random_range(2..30);
    }

    fn client_write(&mut self, client_index: usize, target: usize, key: &str) {
        let client = &mut self.clients[client_index];
        client.written += 1;
        let value = format!("c{client_index}w{}", client.written);
        let bytes = Bytes::from(format!("{key}={value}"));
        let guard_epoch = self.rng.random_bool(0.3);
        let now = self.nodes[target].local_now(self.now_us);
        let replica = self.nodes[target].replica.as_mut().expect("running");
        let expected: Option<Epoch> = if guard_epoch { replica.epoch() } else { None };
        let call = self.history.next_time();
        self.submitted.insert(bytes.clone());
        match replica.submit(now, bytes, expected) {
            Ok(id) => {
                let op = self
                    .history
                    .invoke(client_index, key, OperationKind::Write(value), call);
                self.nodes[target].submits.insert(id, (client_index, op));
                self.clients[client_index].in_flight = Some((op, self.now_ms()));
                self.process_ready(target);
            }
            Err(rejected) => {
                let hint = match rejected.reason {
                    synod_paxos::RejectReason::NotMaster { master } => master,
                    _ => None,
                };
                self.redirect(client_index, hint);
            }
        }
    }

    fn client_read(&mut self, client_index: usize, target: usize, key: &str) {
        let node = &self.nodes[target];
        let now = node.local_now(self.now_us);
        let replica = node.replica.as_ref().expect("running");
        match replica.read_lease(now) {
            Ok(through) => {
                if node.applied < through {
                    let message = format!("{} answered a lease read before applying through {through}", node.id);
                    return self.fail(message);
                }
                let value = node.state.get(key).cloned();
                let call = self.history.next_time();
                let op = self.history.invoke(client_index, key, OperationKind::Read(None), call);
                let returned = self.history.next_time();
                self.history.complete(op, returned, Some(value));
                self.stats.reads_answered += 1;
                self.clients[client_index].next_op_ms = self.now_ms() + self.rng.random_range(1..10);
            }
            Err(synod_paxos::ReadError::NotMaster { master }) => self.redirect(client_index, master),
            Err(synod_paxos::ReadError::Recovering) => {
                self.clients[client_index].next_op_ms = self.now_ms() + 5;
            }
        }
    }

    /// At most one replica may believe it holds the master lease at any instant.
    fn check_single_lease_holder(&mut self) {
        let holders: Vec<NodeId> = self
            .nodes
            .iter()
            .filter(|node| {
                node.replica
                    .as_ref()
                    .is_some_and(|replica| replica.holds_lease(node.local_now(self.now_us)))
            })
            .map(|node| node.id)
            .collect();
        if holders.len() > 1 {
            self.fail(format!("two lease holders at once: {holders:?}"));
        }
    }
}

/// Runs one seed.
pub fn run_seed(config: RunConfig) -> RunReport {
    Simulation::new(config).run()
}
