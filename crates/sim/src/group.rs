//! A fault-free group in one thread: messages handed over in memory, in order,
//! at once; no disk. For throughput measurements and scripted scenarios (such
//! as the protocol-aware-recovery matrix) that need no fault injection.

use std::collections::VecDeque;
use std::time::Duration;

use synod_paxos::{Config, DurableState, FreshStart, Message, NodeId, Outcome, Ready, Replica, Time};

/// What the group saw go by, for counting messages and commits.
#[derive(Clone, Debug, Default)]
pub struct GroupCounters {
    pub messages: u64,
    pub accepts: u64,
    pub accepteds: u64,
    /// Values whose submit at the watched replica ended committed.
    pub committed_values: u64,
    /// Instances delivered at the watched replica.
    pub committed_batches: u64,
}

pub struct Group {
    pub replicas: Vec<Replica>,
    network: VecDeque<(NodeId, NodeId, Message)>,
    pub now: Time,
    /// The replica whose commits and outcomes are counted.
    pub watched: Option<usize>,
    pub counters: GroupCounters,
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
        let mut group = Group {
            replicas,
            network: VecDeque::new(),
            now,
            watched: None,
            counters: GroupCounters::default(),
        };
        for index in 0..group.replicas.len() {
            group.drain(index);
        }
        group
    }

    /// Takes a replica's Ready: queues its messages and counts what is watched.
    /// Persisting is a no-op here (nothing crashes).
    pub fn drain(&mut self, index: usize) -> Ready {
        let mut ready = self.replicas[index].take_ready();
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

    /// Delivers every queued message, and every message that causes.
    pub fn pump(&mut self) {
        while let Some((from, to, message)) = self.network.pop_front() {
            let index = (to.0 - 1) as usize;
            self.replicas[index].step(self.now, from, message);
            self.drain(index);
        }
    }

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
