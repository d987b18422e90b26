//! The simulated network: per-message latency, loss, duplication and reordering,
//! partitions of every shape, and hostile variants of messages carried along.

use std::cmp::Reverse;
use std::collections::{BTreeSet, BinaryHeap};

use rand::seq::SliceRandom;
use rand::Rng;
use rand_chacha::ChaCha8Rng;

use synod_paxos::{Message, NodeId};

#[derive(Debug)]
struct InFlight {
    deliver_at_us: u64,
    sequence: u64,
    delivery: Delivery,
}

/// A message copy handed to its receiver.
#[derive(Debug)]
pub struct Delivery {
    /// The sender: the connection the copy came on.
    pub from: NodeId,
    /// The receiver.
    pub to: NodeId,
    /// What it carries.
    pub message: Message,
    /// Injected by [`Network::inject_hostile`]: the receiver must refuse it.
    pub hostile: bool,
}

impl PartialEq for InFlight {
    fn eq(&self, other: &Self) -> bool {
        (self.deliver_at_us, self.sequence) == (other.deliver_at_us, other.sequence)
    }
}
impl Eq for InFlight {}
impl PartialOrd for InFlight {
    fn partial_cmp(&self, other: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(other))
    }
}
impl Ord for InFlight {
    fn cmp(&self, other: &Self) -> std::cmp::Ordering {
        (self.deliver_at_us, self.sequence).cmp(&(other.deliver_at_us, other.sequence))
    }
}

/// Shapes of partition the simulator injects.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PartitionKind {
    /// Two random sides that cannot talk.
    Symmetric,
    /// One side cannot reach the other, but hears it.
    OneWay,
    /// A minority cut off from the majority.
    MajorityMinority,
    /// Two sides that cannot talk, and one bridge node that talks to both.
    Bridge,
}

/// What the network did to the messages handed to it.
#[derive(Debug, Default)]
pub struct NetworkCounters {
    /// Messages handed to [`Network::send`].
    pub sent: u64,
    /// Message copies handed to their receiver.
    pub delivered: u64,
    /// Messages lost at random, and copies lost on a blocked link.
    pub dropped: u64,
    /// Messages sent as two copies.
    pub duplicated: u64,
    /// Copies given an extra long delay.
    pub long_delays: u64,
    /// Partitions started, indexed by `PartitionKind as usize`.
    pub partitions: [u64; 4],
    /// Hostile messages injected; counted in none of the above, so that a run
    /// whose replicas refuse them counts the same as without them.
    pub hostile: u64,
}

/// Messages in flight, ordered by delivery time (ties in send order), and
/// the links a partition blocks. Every random choice comes from the run's
/// generator, so a seed replays the same deliveries.
#[derive(Debug)]
pub struct Network {
    queue: BinaryHeap<Reverse<InFlight>>,
    sequence: u64,
    /// Directed links that lose every message.
    blocked: BTreeSet<(NodeId, NodeId)>,
    /// What happened so far.
    pub counters: NetworkCounters,
}

impl Network {
    /// A network with nothing in flight and no partition.
    pub fn new() -> Network {
        Network {
            queue: BinaryHeap::new(),
            sequence: 0,
            blocked: BTreeSet::new(),
            counters: NetworkCounters::default(),
        }
    }

    /// Sends a message from `from` to `to` at `now_us`: it is dropped with
    /// `drop_probability`, else sent as two copies with
    /// `duplicate_probability`; each copy takes a latency drawn from
    /// `latency_us` (inclusive bounds, in microseconds), plus, with probability
    /// `long_delay.0`, up to `long_delay.1` microseconds more.
    #[expect(
        clippy::too_many_arguments,
        reason = "the fault rates are the run's, passed per call so the network holds no copy of the mix"
    )]
    pub fn send(
        &mut self,
        rng: &mut ChaCha8Rng,
        now_us: u64,
        from: NodeId,
        to: NodeId,
        message: Message,
        drop_probability: f64,
        duplicate_probability: f64,
        latency_us: (u64, u64),
        long_delay: (f64, u64),
    ) {
        self.counters.sent += 1;
        if drop_probability > 0.0 && rng.random_bool(drop_probability) {
            self.counters.dropped += 1;
            return;
        }
        let copies = if duplicate_probability > 0.0 && rng.random_bool(duplicate_probability) {
            self.counters.duplicated += 1;
            2
        } else {
            1
        };
        for _ in 0..copies {
            let mut latency = rng.random_range(latency_us.0..=latency_us.1);
            if long_delay.0 > 0.0 && rng.random_bool(long_delay.0) {
                latency += rng.random_range(0..=long_delay.1);
                self.counters.long_delays += 1;
            }
            self.push(
                now_us + latency,
                Delivery {
                    from,
                    to,
                    message: message.clone(),
                    hostile: false,
                },
            );
        }
    }

    /// Carries `message`, a hostile variant of one `from` sent, to `to` at
    /// `deliver_at_us`. It takes no random draw of the run's generator and
    /// goes through no counter but its own, so the run goes on as without it
    /// as long as the receiver refuses it unread.
    pub fn inject_hostile(&mut self, deliver_at_us: u64, from: NodeId, to: NodeId, message: Message) {
        self.counters.hostile += 1;
        self.push(
            deliver_at_us,
            Delivery {
                from,
                to,
                message,
                hostile: true,
            },
        );
    }

    fn push(&mut self, deliver_at_us: u64, delivery: Delivery) {
        self.sequence += 1;
        self.queue.push(Reverse(InFlight {
            deliver_at_us,
            sequence: self.sequence,
            delivery,
        }));
    }

    /// Takes the next message due by `now_us`, if any. Messages on a blocked link are lost.
    pub fn next_due(&mut self, now_us: u64) -> Option<Delivery> {
        loop {
            let due = self
                .queue
                .peek()
                .is_some_and(|Reverse(top)| top.deliver_at_us <= now_us);
            if !due {
                return None;
            }
            let Reverse(InFlight { delivery, .. }) = self.queue.pop().expect("peeked");
            let lost = self.blocked.contains(&(delivery.from, delivery.to));
            if !delivery.hostile {
                if lost {
                    self.counters.dropped += 1;
                } else {
                    self.counters.delivered += 1;
                }
            }
            if !lost {
                return Some(delivery);
            }
        }
    }

    /// Puts a copy back to be delivered later (its receiver is paused).
    pub fn delay(&mut self, deliver_at_us: u64, delivery: Delivery) {
        self.push(deliver_at_us, delivery);
    }

    /// Whether any link is blocked.
    pub fn is_partitioned(&self) -> bool {
        !self.blocked.is_empty()
    }

    /// Ends the partition: every link carries messages again (those lost stay lost).
    pub fn heal(&mut self) {
        self.blocked.clear();
    }

    /// Starts a partition of the given kind among `nodes`.
    pub fn partition(&mut self, rng: &mut ChaCha8Rng, nodes: &[NodeId], kind: PartitionKind) {
        let mut shuffled = nodes.to_vec();
        shuffled.shuffle(rng);
        let n = shuffled.len();
        let cut = |a: &[NodeId], b: &[NodeId], blocked: &mut BTreeSet<(NodeId, NodeId)>, both: bool| {
            for x in a {
                for y in b {
                    blocked.insert((*x, *y));
                    if both {
                        blocked.insert((*y, *x));
                    }
                }
            }
        };
        match kind {
            PartitionKind::Symmetric => {
                let split = rng.random_range(1..n);
                cut(&shuffled[..split], &shuffled[split..], &mut self.blocked, true);
            }
            PartitionKind::OneWay => {
                let split = rng.random_range(1..n);
                cut(&shuffled[..split], &shuffled[split..], &mut self.blocked, false);
            }
            PartitionKind::MajorityMinority => {
                let minority = rng.random_range(1..=(n - 1) / 2).max(1);
                cut(&shuffled[..minority], &shuffled[minority..], &mut self.blocked, true);
            }
            PartitionKind::Bridge => {
                if n < 3 {
                    return;
                }
                let rest = &shuffled[1..];
                let split = rng.random_range(1..rest.len());
                cut(&rest[..split], &rest[split..], &mut self.blocked, true);
            }
        }
        self.counters.partitions[kind as usize] += 1;
    }
}

impl Default for Network {
    fn default() -> Self {
        Network::new()
    }
}
