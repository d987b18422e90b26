//! What the core asks its host to do, and what the host hands back on restart.

use bytes::Bytes;

use crate::message::{Batch, Epoch, Message};
use crate::{Ballot, Instance, NodeId};

/// The acceptor's small, overwritten-in-place state.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct Meta {
    /// Highest Multi-Paxos ballot promised. Never goes down.
    pub promised: Ballot,
    /// Bumped on every start, so ballots issued after a restart never repeat one
    /// issued before.
    pub incarnation: u64,
    /// Whether this acceptor may vote, or what it still has to learn first after
    /// starting with an empty disk (see ARCHITECTURE.md, "Safe rejoin").
    pub voting: Voting,
}

/// An acceptor's right to vote. Only `Voter` answers prepares and accepts.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum Voting {
    /// Votes: answers prepares and accepts.
    #[default]
    Voter,
    /// Started with an empty disk; must ask its peers for their promises first.
    /// `new_group`: the operator said the group is new, so this replica knows it
    /// never voted (its answers to others' probes count).
    ProbePending {
        /// The operator said the group is new.
        new_group: bool,
    },
    /// Has adopted its peers' highest promise; waits to hear a master whose
    /// ballot is at least that promise, to learn how far that master proposed.
    AwaitMaster,
    /// Learns, without voting, until every instance up to here is known chosen.
    LearnUntil(Instance),
}

/// A write the host must make durable.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Persist {
    /// Overwrite the acceptor metadata.
    Meta(Meta),
    /// The acceptor accepted `batch` at `ballot` for `instance` (replacing what it had).
    Accepted {
        /// The instance.
        instance: Instance,
        /// The ballot accepted.
        ballot: Ballot,
        /// The value accepted.
        batch: Batch,
    },
    /// `batch` is known to be chosen for `instance` (learned from a peer).
    Chosen {
        /// The instance.
        instance: Instance,
        /// The chosen value.
        batch: Batch,
    },
    /// Every instance up to `through` is chosen, and the log holds each chosen value.
    ChosenThrough {
        /// The new commit point.
        through: Instance,
    },
}

/// An instance whose value is chosen, delivered in instance order, each exactly once.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Committed {
    /// The instance, one after the previous `Committed`.
    pub instance: Instance,
    /// Its chosen value.
    pub batch: Batch,
    /// Indexes into `batch.entries` of values rejected because the master changed
    /// between their submit and their commit; the state machine must skip them.
    /// Every replica computes the same set.
    pub rejected: Vec<u32>,
}

impl Committed {
    /// The values to apply, in order, with the epoch-rejected ones left out.
    pub fn applied_values(&self) -> impl Iterator<Item = &Bytes> + '_ {
        self.batch
            .entries
            .iter()
            .enumerate()
            .filter(|(index, _)| !self.rejected.contains(&(*index as u32)))
            .map(|(_, entry)| &entry.value)
    }
}

/// Names one `submit` call at one replica.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct SubmitId(pub u64);

/// Why a submit was refused. The value is handed back with it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum RejectReason {
    /// This replica is not the master; `master` is the one it last heard from.
    NotMaster {
        /// The master last heard from, if any: where to retry.
        master: Option<NodeId>,
    },
    /// The master changed between the submitter's look at the epoch and the commit.
    EpochChanged {
        /// The epoch now, if this replica knows one.
        current: Option<Epoch>,
    },
    /// The value is larger than `value_bytes_max`.
    TooLarge {
        /// The value's length.
        bytes: usize,
        /// `Config::value_bytes_max`.
        bytes_max: usize,
    },
    /// The submit queue is at its bound.
    QueueFull,
}

/// A definite "no": the value was not and will never be committed.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Rejected {
    /// Why.
    pub reason: RejectReason,
    /// The value submitted, handed back.
    pub value: Bytes,
}

/// How one submit ended.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Outcome {
    /// Chosen at `instance`, at position `index` of its batch.
    Committed {
        /// The instance.
        instance: Instance,
        /// The position in its batch.
        index: u32,
    },
    /// Never committed.
    Rejected(Rejected),
    /// Cannot be known here: the instance was skipped by installing a peer's
    /// snapshot. The submitter must find out from the state machine.
    Unknown,
}

/// The end of one submit, reported in a [`Ready`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SubmitOutcome {
    /// The submit, as `Replica::submit` named it.
    pub id: SubmitId,
    /// How it ended.
    pub outcome: Outcome,
}

/// A message to one peer.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Envelope {
    /// The peer.
    pub to: NodeId,
    /// What to tell it.
    pub message: Message,
}

/// Everything the host must do after a call into the core.
///
/// Act on it strictly in field order:
/// 1. write every `persist` record and make it durable (fsync): the promises and
///    acceptances it holds must survive a crash before anyone hears of them;
/// 2. only then send `messages`;
/// 3. then apply `committed` to the state machine, in order, and report `outcomes`
///    (an outcome may report a value committed, so it comes after the apply).
///
/// A Ready's messages may depend on the persists of every earlier Ready: a host
/// that pipelines disk writes must not send a Ready's messages before all earlier
/// persists are durable too.
#[derive(Clone, Debug, Default)]
pub struct Ready {
    /// Step 1: make these durable, in order.
    pub persist: Vec<Persist>,
    /// Step 2: send these, after the persists are durable.
    pub messages: Vec<Envelope>,
    /// Step 3: apply these, in instance order.
    pub committed: Vec<Committed>,
    /// Step 4: answer the submitters.
    pub outcomes: Vec<SubmitOutcome>,
    /// This replica is behind every peer's log: install a snapshot of at least
    /// `instance` from `peer`, then call `Replica::install_snapshot`.
    pub snapshot_needed: Option<(NodeId, Instance)>,
}

impl Ready {
    /// Nothing to do.
    pub fn is_empty(&self) -> bool {
        self.persist.is_empty()
            && self.messages.is_empty()
            && self.committed.is_empty()
            && self.outcomes.is_empty()
            && self.snapshot_needed.is_none()
    }
}

/// One stored log slot, as found on disk at restart.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum StoredSlot {
    /// An acceptance (`Persist::Accepted`).
    Accepted {
        /// The ballot accepted.
        ballot: Ballot,
        /// The value accepted.
        batch: Batch,
    },
    /// A chosen value learned from a peer (`Persist::Chosen`).
    Chosen {
        /// The chosen value.
        batch: Batch,
    },
    /// The value failed its checksum; the ballot is known if its identifier survived.
    Faulty {
        /// The ballot, when its identifier survived.
        ballot: Option<Ballot>,
    },
}

/// What the host read back from disk at restart.
#[derive(Clone, Debug, Default)]
pub struct DurableState {
    /// The last `Persist::Meta` read back.
    pub meta: Meta,
    /// The instance the host's state machine snapshot covers (its applied point at
    /// restart).
    pub snapshot_instance: Instance,
    /// The highest epoch applied by `snapshot_instance`.
    pub snapshot_epoch: Epoch,
    /// Log slots above the snapshot, in any order.
    pub slots: Vec<(Instance, StoredSlot)>,
    /// The highest `Persist::ChosenThrough` read back.
    pub chosen_through: Instance,
    /// The host had a snapshot through this instance that it could not read
    /// back (zero: none lost). A snapshot installed from a peer moves the
    /// commit point over instances whose values this replica never learned,
    /// so an accepted slot at or below this instance is kept as an
    /// acceptance (it is still one) but never taken as chosen.
    pub snapshot_lost_through: Instance,
}

/// How a replica with an empty disk starts.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FreshStart {
    /// A member of a group being created: it has never voted.
    NewGroup,
    /// A member that may have voted before and lost its disk.
    Rejoin,
}
