//! What replicas say to each other, and the values they agree on.

use std::sync::Arc;

use bytes::Bytes;

use crate::{Ballot, Instance, NodeId};

/// Identifies a master's reign: the ballot with which it finished phase 1. Every
/// master change changes the epoch. A submit may carry the epoch it saw; the value
/// is then rejected if it is not committed within that same epoch.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct Epoch(pub Ballot);

/// One submitted value inside a batch.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Entry {
    /// The submitted bytes, opaque to the core.
    pub value: Bytes,
    /// The epoch the submitter saw, if it asked to be rejected on a master change.
    pub expected_epoch: Option<Epoch>,
}

/// Names a batch uniquely: a master proposes at most one batch per instance per
/// ballot, and a batch keeps its identity when a later master re-proposes it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct BatchId {
    /// The ballot of the master that formed the batch; its epoch.
    pub ballot: Ballot,
    /// The instance it was formed for.
    pub instance: Instance,
}

/// The value of one Paxos instance: the submitted values a master put together,
/// or none at all (a no-op that fills a gap after a master change).
/// Cheap to clone: the entries are shared.
#[derive(Clone, Debug)]
pub struct Batch {
    /// Who formed it, for which instance.
    pub id: BatchId,
    /// The values, in submit order; empty for a no-op.
    pub entries: Arc<[Entry]>,
}

impl PartialEq for Batch {
    fn eq(&self, other: &Batch) -> bool {
        self.id == other.id && (Arc::ptr_eq(&self.entries, &other.entries) || self.entries == other.entries)
    }
}
impl Eq for Batch {}

impl Batch {
    /// A batch of `entries`, named `id`.
    pub fn new(id: BatchId, entries: Vec<Entry>) -> Batch {
        Batch {
            id,
            entries: entries.into(),
        }
    }

    /// The no-op a new master proposes where phase 1 found nothing.
    pub fn noop(id: BatchId) -> Batch {
        Batch::new(id, Vec::new())
    }

    /// Whether this batch carries no value.
    pub fn is_noop(&self) -> bool {
        self.entries.is_empty()
    }

    /// The epoch of the master that formed it.
    pub fn epoch(&self) -> Epoch {
        Epoch(self.id.ballot)
    }

    /// Bytes of values, the measure batch and message bounds use.
    pub fn value_bytes(&self) -> usize {
        self.entries.iter().map(|entry| entry.value.len()).sum()
    }

    /// A bound on this batch's encoded size.
    pub fn encoded_bytes(&self) -> usize {
        64 + self.entries.iter().map(|entry| entry.value.len() + 48).sum::<usize>()
    }
}

/// What an acceptor knows of one instance, as reported in a promise.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum PromiseEntry {
    /// Accepted at `ballot`, not known to be chosen.
    Accepted {
        /// The instance.
        instance: Instance,
        /// The ballot of the proposal accepted last.
        ballot: Ballot,
        /// Its value.
        batch: Batch,
    },
    /// Known to be chosen.
    Chosen {
        /// The instance.
        instance: Instance,
        /// The chosen value.
        batch: Batch,
    },
    /// Accepted at `ballot` (if the entry's identifier survived), but the stored
    /// value failed its checksum: the proposer must find a good copy elsewhere.
    Faulty {
        /// The instance.
        instance: Instance,
        /// The ballot read back from the damaged entry, when it was readable.
        ballot: Option<Ballot>,
    },
}

impl PromiseEntry {
    /// The instance this entry is about.
    pub fn instance(&self) -> Instance {
        match self {
            PromiseEntry::Accepted { instance, .. }
            | PromiseEntry::Chosen { instance, .. }
            | PromiseEntry::Faulty { instance, .. } => *instance,
        }
    }

    fn encoded_bytes(&self) -> usize {
        match self {
            PromiseEntry::Accepted { batch, .. } | PromiseEntry::Chosen { batch, .. } => 40 + batch.encoded_bytes(),
            PromiseEntry::Faulty { .. } => 40,
        }
    }
}

/// Why an acceptor refused a prepare or an accept.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RefuseReason {
    /// It promised a higher ballot, carried in the refusal.
    Promised,
    /// Its PaxosLease timer runs for another holder.
    LeaseHeld,
    /// It restarted (or is rejoining) and stays silent for a full lease time.
    Silent,
}

/// A message between two replicas of one group.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Message {
    // PaxosLease: master election, nothing on disk.
    /// PaxosLease phase 1a: a candidate for the master lease asks for promises.
    LeasePrepare {
        /// The candidate's ballot.
        ballot: Ballot,
    },
    /// PaxosLease phase 1b.
    LeasePrepareReply {
        /// The ballot answered.
        ballot: Ballot,
        /// Whether the acceptor promised.
        granted: bool,
        /// The acceptor's promised ballot, so a refused proposer can outbid it.
        promised: Ballot,
        /// The owner of a lease this acceptor accepted and whose timer still runs.
        open_owner: Option<NodeId>,
    },
    /// PaxosLease phase 2a: grant the lease to the proposer for a duration.
    LeasePropose {
        /// The proposer's ballot.
        ballot: Ballot,
        /// How long the acceptor's timer for this grant runs, measured on its own clock.
        duration_nanos: u64,
    },
    /// PaxosLease phase 2b.
    LeaseProposeReply {
        /// The ballot answered.
        ballot: Ballot,
        /// Whether the acceptor accepted the grant.
        granted: bool,
        /// The acceptor's promised ballot.
        promised: Ballot,
    },

    /// PaxosLease release: the sender no longer believes in any lease it was
    /// granted at `ballot` or below in `ballot`'s incarnation, so an acceptor
    /// may forget such a grant before its timer runs out. Sent by a master
    /// handing its role over ([`Message::MasterHandover`]) after it dropped
    /// the lease itself; a grant at a higher ballot, or from another
    /// incarnation, is one the sender may believe in and is kept.
    LeaseRelease {
        /// The highest lease ballot the sender used in this incarnation.
        ballot: Ballot,
    },
    /// The master stepped down for the receiver (etcd's MoveLeader): try for
    /// the lease at once, without waiting for the election timeout, once
    /// every instance up to `through` is chosen and applied here.
    MasterHandover {
        /// The sender's highest lease ballot (it names the sender).
        ballot: Ballot,
        /// The sender's chosen prefix when it stepped down.
        through: Instance,
    },

    // Multi-Paxos phase 1, once for every instance from `from` on.
    /// Phase 1a for every instance from `from` on.
    Prepare {
        /// The candidate's ballot.
        ballot: Ballot,
        /// The first instance the candidate does not know chosen.
        from: Instance,
    },
    /// One piece of an acceptor's answer; the answer is complete with `last`.
    Promise {
        /// The ballot promised.
        ballot: Ballot,
        /// The acceptor's known-chosen prefix.
        chosen_through: Instance,
        /// What the acceptor holds from `from` on, in instance order.
        entries: Vec<PromiseEntry>,
        /// There were more accepted entries than `accept_ahead_instances_max`:
        /// the proposer is far behind and must catch up first.
        truncated: bool,
        /// The last piece of this answer.
        last: bool,
    },
    /// Refusal of a prepare or an accept.
    Refuse {
        /// The ballot refused.
        ballot: Ballot,
        /// The acceptor's promise, for the proposer to outbid.
        promised: Ballot,
        /// Why.
        reason: RefuseReason,
    },

    // Multi-Paxos phase 2.
    /// Phase 2a: accept `batch` in `instance` at `ballot`.
    Accept {
        /// The master's ballot.
        ballot: Ballot,
        /// The instance.
        instance: Instance,
        /// The proposed value.
        batch: Batch,
        /// The master's commit point (piggybacked commit notification).
        chosen_through: Instance,
    },
    /// Phase 2b: the acceptance is on the acceptor's disk.
    Accepted {
        /// The ballot accepted.
        ballot: Ballot,
        /// The instance.
        instance: Instance,
    },
    /// Commit notification and heartbeat: every instance up to `chosen_through` is
    /// chosen, and where the receiver accepted `ballot` there, that value is it.
    Commit {
        /// The master's ballot.
        ballot: Ballot,
        /// The master's commit point.
        chosen_through: Instance,
        /// The highest instance this master has proposed in; a rejoining replica
        /// learns up to here before it votes again.
        proposed_through: Instance,
    },

    // Learning what was chosen.
    /// Asks a peer for the chosen values of instances `from..=to`.
    CatchupRequest {
        /// The first instance wanted.
        from: Instance,
        /// The last instance wanted.
        to: Instance,
    },
    /// Chosen values, in instance order, bounded by `message_bytes_max`.
    CatchupReply {
        /// The chosen batches sent.
        entries: Vec<(Instance, Batch)>,
        /// The sender's known-chosen prefix.
        chosen_through: Instance,
    },
    /// The requested instances are below the sender's snapshot: install a snapshot
    /// of at least `snapshot_instance` from this sender first.
    SnapshotNeeded {
        /// The instance the sender's snapshot covers.
        snapshot_instance: Instance,
    },

    // Rejoining with an empty disk.
    /// A replica that lost its disk asks what it may have promised or accepted.
    Probe,
    /// The answer to a probe.
    ProbeReply {
        /// The sender itself has lost its state and knows nothing to tell.
        amnesiac: bool,
        /// The sender's promise: the prober adopts the highest it hears.
        promised: Ballot,
        /// The sender has promised or accepted something: the group is not new.
        has_history: bool,
        /// The highest incarnation of the prober that the sender has seen.
        incarnation_seen: u64,
    },
    /// A replica that lost its disk, awaiting a master whose ballot equals
    /// the promise it adopted, asks that master what it has proposed: a
    /// heartbeat's `proposed_through` may have been sent before the disk was
    /// lost, and miss an instance this replica accepted then.
    ProposedQuery {
        /// The asker's incarnation, echoed in the answer so that an answer to
        /// an earlier incarnation (before another loss) is not taken.
        incarnation: u64,
    },
    /// A master's answer to [`Message::ProposedQuery`], given after the
    /// question was asked.
    ProposedReply {
        /// The master's ballot.
        ballot: Ballot,
        /// The highest instance it has proposed in, when it answered.
        proposed_through: Instance,
        /// The incarnation the question carried.
        incarnation: u64,
    },
}

/// Largest ballot round or incarnation, and largest instance, a peer's message
/// may carry. Half of `u64`: a replica adds one to the highest round and
/// incarnation it has seen, and to instances, so a peer that sends `u64::MAX`
/// would otherwise wrap them (or panic) and stop the group from ever electing
/// again. At a million ballots or instances a second the bound is 290,000 years away.
pub const COUNTER_MAX: u64 = u64::MAX / 2;

/// Why a peer's message was refused before the core acted on it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum InvalidMessage {
    /// A round, incarnation or instance above [`COUNTER_MAX`].
    OutOfRange,
    /// A ballot that only its proposer sends names another member than the sender.
    ForeignBallot,
}

impl Message {
    /// Checks what the core would otherwise take at face value: that every
    /// counter is within [`COUNTER_MAX`], and that a message only a proposer
    /// sends (lease prepare, propose and release, master handover, prepare,
    /// accept, commit) carries a
    /// ballot of the member it came from.
    pub fn validate(&self, from: NodeId) -> Result<(), InvalidMessage> {
        let ballot_ok = |ballot: &Ballot| ballot.round <= COUNTER_MAX && ballot.incarnation <= COUNTER_MAX;
        let instance_ok = |instance: &Instance| instance.0 <= COUNTER_MAX;
        let in_range = match self {
            Message::LeasePrepare { ballot }
            | Message::LeasePropose { ballot, .. }
            | Message::LeaseRelease { ballot } => ballot_ok(ballot),
            Message::MasterHandover { ballot, through } => ballot_ok(ballot) && instance_ok(through),
            Message::LeasePrepareReply { ballot, promised, .. }
            | Message::LeaseProposeReply { ballot, promised, .. }
            | Message::Refuse { ballot, promised, .. } => ballot_ok(ballot) && ballot_ok(promised),
            Message::Prepare { ballot, from } => ballot_ok(ballot) && instance_ok(from),
            Message::Promise {
                ballot,
                chosen_through,
                entries,
                ..
            } => {
                ballot_ok(ballot)
                    && instance_ok(chosen_through)
                    && entries.iter().all(|entry| {
                        instance_ok(&entry.instance())
                            && match entry {
                                PromiseEntry::Accepted { ballot, .. } => ballot_ok(ballot),
                                PromiseEntry::Faulty { ballot, .. } => ballot.as_ref().is_none_or(ballot_ok),
                                PromiseEntry::Chosen { .. } => true,
                            }
                    })
            }
            Message::Accept {
                ballot,
                instance,
                chosen_through,
                ..
            } => ballot_ok(ballot) && instance_ok(instance) && instance_ok(chosen_through),
            Message::Accepted { ballot, instance } => ballot_ok(ballot) && instance_ok(instance),
            Message::Commit {
                ballot,
                chosen_through,
                proposed_through,
            } => ballot_ok(ballot) && instance_ok(chosen_through) && instance_ok(proposed_through),
            Message::CatchupRequest { from, to } => instance_ok(from) && instance_ok(to),
            Message::CatchupReply {
                entries,
                chosen_through,
            } => instance_ok(chosen_through) && entries.iter().all(|(instance, _)| instance_ok(instance)),
            Message::SnapshotNeeded { snapshot_instance } => instance_ok(snapshot_instance),
            Message::Probe => true,
            Message::ProposedQuery { incarnation } => *incarnation <= COUNTER_MAX,
            Message::ProposedReply {
                ballot,
                proposed_through,
                incarnation,
            } => ballot_ok(ballot) && instance_ok(proposed_through) && *incarnation <= COUNTER_MAX,
            Message::ProbeReply {
                promised,
                incarnation_seen,
                ..
            } => ballot_ok(promised) && *incarnation_seen <= COUNTER_MAX,
        };
        if !in_range {
            return Err(InvalidMessage::OutOfRange);
        }
        match self {
            Message::LeasePrepare { ballot }
            | Message::LeasePropose { ballot, .. }
            | Message::LeaseRelease { ballot }
            | Message::MasterHandover { ballot, .. }
            | Message::ProposedReply { ballot, .. }
            | Message::Prepare { ballot, .. }
            | Message::Accept { ballot, .. }
            | Message::Commit { ballot, .. }
                if ballot.node != from =>
            {
                Err(InvalidMessage::ForeignBallot)
            }
            _ => Ok(()),
        }
    }

    /// A bound on this message's encoded size, for cutting replies to `message_bytes_max`.
    pub fn encoded_bytes(&self) -> usize {
        match self {
            Message::Promise { entries, .. } => 64 + entries.iter().map(PromiseEntry::encoded_bytes).sum::<usize>(),
            Message::Accept { batch, .. } => 64 + batch.encoded_bytes(),
            Message::CatchupReply { entries, .. } => {
                64 + entries
                    .iter()
                    .map(|(_, batch)| 16 + batch.encoded_bytes())
                    .sum::<usize>()
            }
            _ => 96,
        }
    }

    pub(crate) fn promise_entry_bytes(entry: &PromiseEntry) -> usize {
        entry.encoded_bytes()
    }
}
