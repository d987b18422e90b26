//! A fault-free group in one thread: messages handed over in memory, in order,
//! at once. For throughput measurements and scripted scenarios (such as the
//! protocol-aware-recovery matrix) that need no random fault injection. A
//! script may still cut replicas off ([`Group::isolated`]) and crash and
//! restart one from what it persisted ([`Group::crash_restart`]).

use std::collections::{BTreeMap, VecDeque};
use std::time::Duration;

use synod_paxos::{
    Ballot, Batch, BatchId, Config, DurableState, Entry, FreshStart, Instance, Message, Meta, NodeId, Outcome, Persist,
    Ready, Replica, StoredSlot, Time, Voting,
};

/// What the group saw go by, for counting messages and commits.
#[derive(Clone, Debug, Default)]
pub struct GroupCounters {
    /// Messages any replica sent.
    pub messages: u64,
    /// Accept messages (phase 2a) any replica sent.
    pub accepts: u64,
    /// Accepted messages (phase 2b) any replica sent.
    pub accepteds: u64,
    /// Values whose submit at the watched replica ended committed.
    pub committed_values: u64,
    /// Instances delivered at the watched replica.
    pub committed_batches: u64,
}

/// A group of replicas in one thread, with a perfect network and perfect
/// disks; time moves only when a script moves it.
pub struct Group {
    /// The replicas; replica `i` is `NodeId(i + 1)`.
    pub replicas: Vec<Replica>,
    network: VecDeque<(NodeId, NodeId, Message)>,
    /// The one clock every replica reads.
    pub now: Time,
    /// The replica whose commits and outcomes are counted.
    pub watched: Option<usize>,
    /// What went by so far.
    pub counters: GroupCounters,
    /// Replicas cut off from every other: messages to or from them are dropped.
    pub isolated: Vec<NodeId>,
    /// What each replica persisted, as a perfect disk would hold it.
    disks: Vec<MemoryDisk>,
    /// What each replica delivered as chosen, by instance.
    pub delivered: Vec<BTreeMap<Instance, Batch>>,
}

/// A replica's persisted records, folded as a restart reads them back.
#[derive(Clone, Debug, Default)]
struct MemoryDisk {
    meta: Option<synod_paxos::Meta>,
    slots: BTreeMap<Instance, StoredSlot>,
    chosen_through: Instance,
}

impl MemoryDisk {
    fn persist(&mut self, records: &[Persist]) {
        for record in records {
            match record {
                Persist::Meta(meta) => self.meta = Some(*meta),
                Persist::Accepted {
                    instance,
                    ballot,
                    batch,
                } => {
                    self.slots.insert(
                        *instance,
                        StoredSlot::Accepted {
                            ballot: *ballot,
                            batch: batch.clone(),
                        },
                    );
                }
                Persist::Chosen { instance, batch } => {
                    self.slots
                        .insert(*instance, StoredSlot::Chosen { batch: batch.clone() });
                }
                Persist::ChosenThrough { through } => self.chosen_through = self.chosen_through.max(*through),
            }
        }
    }

    fn durable_state(&self) -> Option<DurableState> {
        Some(DurableState {
            meta: self.meta?,
            snapshot_instance: Instance::ZERO,
            snapshot_epoch: Default::default(),
            slots: self
                .slots
                .iter()
                .map(|(instance, slot)| (*instance, slot.clone()))
                .collect(),
            chosen_through: self.chosen_through,
            snapshot_lost_through: Instance::ZERO,
        })
    }
}

impl Group {
    /// A new group of `size` replicas; `configure` adjusts each replica's config.
    pub fn new(size: usize, configure: impl Fn(&mut Config)) -> Group {
        let members: Vec<NodeId> = (1..=size as u64).map(NodeId).collect();
        let replicas = members
            .iter()
            .map(|id| {
                let mut config = crate::cluster::sim_paxos_config(*id, members.clone());
                configure(&mut config);
                Replica::fresh(config, FreshStart::NewGroup, Time::ZERO, id.0)
            })
            .collect();
        Group::from_replicas(replicas, Time::ZERO)
    }

    /// Restarts every replica from the given durable states (index = replica).
    pub fn restart(size: usize, states: Vec<DurableState>, now: Time, configure: impl Fn(&mut Config)) -> Group {
        let members: Vec<NodeId> = (1..=size as u64).map(NodeId).collect();
        let replicas = members
            .iter()
            .zip(states)
            .map(|(id, durable)| {
                let mut config = crate::cluster::sim_paxos_config(*id, members.clone());
                configure(&mut config);
                Replica::restart(config, durable, now, id.0)
            })
            .collect();
        Group::from_replicas(replicas, now)
    }

    fn from_replicas(replicas: Vec<Replica>, now: Time) -> Group {
        let replicas_len = replicas.len();
        let mut group = Group {
            replicas,
            network: VecDeque::new(),
            now,
            watched: None,
            counters: GroupCounters::default(),
            isolated: Vec::new(),
            disks: vec![MemoryDisk::default(); replicas_len],
            delivered: vec![BTreeMap::new(); replicas_len],
        };
        for index in 0..group.replicas.len() {
            group.drain(index);
        }
        group
    }

    /// Takes a replica's Ready: persists its records, queues its messages and
    /// counts what is watched.
    pub fn drain(&mut self, index: usize) -> Ready {
        let mut ready = self.replicas[index].take_ready();
        self.disks[index].persist(&ready.persist);
        for committed in &ready.committed {
            self.delivered[index].insert(committed.instance, committed.batch.clone());
        }
        let from = self.replicas[index].node();
        for envelope in ready.messages.drain(..) {
            self.counters.messages += 1;
            match envelope.message {
                Message::Accept { .. } => self.counters.accepts += 1,
                Message::Accepted { .. } => self.counters.accepteds += 1,
                _ => {}
            }
            self.network.push_back((from, envelope.to, envelope.message));
        }
        if Some(index) == self.watched {
            self.counters.committed_batches += ready.committed.len() as u64;
            for outcome in &ready.outcomes {
                if matches!(outcome.outcome, Outcome::Committed { .. }) {
                    self.counters.committed_values += 1;
                }
            }
        }
        ready
    }

    /// Takes the queued messages `select` picks out of the network, so a
    /// script can deliver them later ([`Group::send`]) or never.
    pub fn take_messages(
        &mut self,
        mut select: impl FnMut(NodeId, NodeId, &Message) -> bool,
    ) -> Vec<(NodeId, NodeId, Message)> {
        let (taken, kept) = self
            .network
            .drain(..)
            .partition(|(from, to, message)| select(*from, *to, message));
        self.network = kept;
        taken.into_iter().collect()
    }

    /// Queues a message, as if `from` had just sent it.
    pub fn send(&mut self, from: NodeId, to: NodeId, message: Message) {
        self.network.push_back((from, to, message));
    }

    /// Delivers every queued message, and every message that causes.
    pub fn pump(&mut self) {
        while let Some((from, to, message)) = self.network.pop_front() {
            if self.isolated.contains(&from) || self.isolated.contains(&to) {
                continue;
            }
            let index = (to.0 - 1) as usize;
            self.replicas[index].step(self.now, from, message);
            self.drain(index);
        }
    }

    /// Crashes replica `index` (its unsent messages are lost) and restarts it
    /// from what it persisted; `seed` feeds its randomness.
    ///
    /// # Panics
    /// If the replica never persisted its metadata.
    pub fn crash_restart(&mut self, index: usize, seed: u64) {
        let node = self.replicas[index].node();
        self.network.retain(|(from, _, _)| *from != node);
        let durable = self.disks[index]
            .durable_state()
            .expect("a replica persists its metadata before it takes part");
        let config = self.replicas[index].config().clone();
        self.replicas[index] = Replica::restart(config, durable, self.now, seed);
        self.drain(index);
    }

    /// Crashes replica `index` and restarts it with an empty disk, as a
    /// member that lost its disk rejoins (`FreshStart::Rejoin`).
    pub fn wipe_restart(&mut self, index: usize, seed: u64) {
        let node = self.replicas[index].node();
        self.network.retain(|(from, _, _)| *from != node);
        self.disks[index] = MemoryDisk::default();
        let config = self.replicas[index].config().clone();
        self.replicas[index] = Replica::fresh(config, synod_paxos::FreshStart::Rejoin, self.now, seed);
        self.drain(index);
    }

    /// Ticks every replica at [`Group::now`], then delivers every message that causes.
    pub fn tick_all(&mut self) {
        for index in 0..self.replicas.len() {
            self.replicas[index].tick(self.now);
            self.drain(index);
        }
        self.pump();
    }

    /// Advances time by `step` and ticks, until `done` holds or `limit` passes.
    pub fn run_until(&mut self, step: Duration, limit: Duration, mut done: impl FnMut(&Group) -> bool) -> bool {
        let deadline = self.now + limit;
        while self.now < deadline {
            if done(self) {
                return true;
            }
            self.now = self.now + step;
            self.tick_all();
        }
        done(self)
    }

    /// The replica that may answer lease reads now, if any.
    pub fn serving_master(&self) -> Option<usize> {
        self.replicas
            .iter()
            .position(|replica| replica.read_lease(self.now).is_ok())
    }
}

/// A batch of one value, `value-<instance>`, first proposed at `ballot` for
/// `instance`: what scripted scenarios write into logs.
pub fn numbered_batch(ballot: Ballot, instance: u64) -> Batch {
    Batch::new(
        BatchId {
            ballot,
            instance: Instance(instance),
        },
        vec![Entry {
            value: bytes::Bytes::from(format!("value-{instance}")),
            expected_epoch: None,
        }],
    )
}

/// What a voter that promised `promised` reads back from its disk: `slots`
/// and a commit point, no snapshot.
pub fn voter_state(promised: Ballot, slots: Vec<(Instance, StoredSlot)>, chosen_through: u64) -> DurableState {
    DurableState {
        meta: Meta {
            promised,
            incarnation: 1,
            voting: Voting::Voter,
        },
        snapshot_instance: Instance::ZERO,
        snapshot_epoch: Default::default(),
        slots,
        chosen_through: Instance(chosen_through),
        snapshot_lost_through: Instance::ZERO,
    }
}
