//! One replica: acceptor, learner, PaxosLease participant and, while it holds the
//! lease, the Multi-Paxos master, in one state machine.
//!
//! This file holds the replica's state, its construction (fresh or from disk),
//! its queries, the sending helpers, the entry points the host calls (`tick`,
//! `step`, `submit`, `install_snapshot`, `trim`) and `handle`, which hands each
//! message to the role it is for. Each role is one file, like the papers:
//! - `acceptor`: Multi-Paxos phase 1b and 2b (promise, accept, refuse);
//! - `learner`: commit point, delivery in instance order, catch-up;
//! - `master`: phase 1a as candidate, phase 2a as master, recovery of the
//!   values found in phase 1, stepping down;
//! - `election`: the replica's side of PaxosLease (attempts, renewals, back-off);
//! - `rejoin`: the probe a replica with an empty disk runs before voting.

use std::collections::{BTreeMap, VecDeque};
use std::time::Duration;

use bytes::Bytes;

use crate::master_lease::{LeaseAcceptor, LeaseProposer};
use crate::message::{Batch, Entry, Epoch, Message, PromiseEntry};
use crate::output::{
    DurableState, Envelope, FreshStart, Meta, Outcome, Persist, Ready, RejectReason, Rejected, StoredSlot, SubmitId,
    SubmitOutcome, Voting,
};
use crate::{Ballot, Config, Instance, NodeId, SplitMix64, Time};

mod acceptor;
mod election;
mod learner;
mod master;
mod rejoin;
#[cfg(test)]
mod tests;

/// Planted bugs, for showing that the simulator's checkers (and the fault
/// harness's, through the server's hidden `--unsafe-bug` flag) catch them.
/// Never set outside tests.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct PlantedBugs {
    /// Count a majority as `n / 2` instead of `n / 2 + 1`.
    pub quorum_of_half: bool,
    /// Accept proposals the acceptor promised to refuse: the log's acceptor
    /// takes an `Accept` whose ballot is lower than its promise, and the
    /// PaxosLease acceptor a propose below its promise or while another
    /// owner's grant runs.
    pub accept_lower_ballot: bool,
    /// A restarted PaxosLease acceptor answers at once instead of staying silent.
    pub no_lease_silence_after_restart: bool,
    /// Phase 1 re-proposes the value of the lowest ballot its promises report
    /// instead of the highest (the textbook mistake: it can overwrite a chosen
    /// value with an older one).
    pub phase1_lowest_ballot: bool,
    /// `step` acts on peer messages without [`Message::validate`]: a round at
    /// `u64::MAX` wraps the next candidate's round to zero (or panics, with
    /// overflow checks), and a ballot naming another member is taken as theirs.
    pub skip_message_validation: bool,
    /// [`Replica::read_lease`] answers on any member that believes it is
    /// master, whether or not it holds the master lease: a master paused or
    /// cut off past its lease, which has not yet noticed it was deposed,
    /// serves stale reads. Also a server's `--unsafe-bug read-without-lease`.
    pub read_without_lease: bool,
    /// A master whose lease ran out does not step down until it hears of a
    /// higher ballot, as a master with no lease check of its own would. A
    /// correct core steps down on its first tick past the lease, which leaves
    /// a lapsed master only the moment before that tick (after SIGCONT, say)
    /// to misuse; with this bug a master cut off or paused past its lease
    /// stays master for as long as it hears nothing, so what it answers
    /// without checking the lease (`read_without_lease`, a server answering
    /// keep-alives on `is_master()`) is wrong for that whole time. Alone it
    /// breaks nothing: a master without its lease answers no read, and its
    /// proposals still need a majority.
    pub master_outlives_lease: bool,
    /// A PaxosLease acceptor takes a [`Message::LeaseRelease`] as forgetting
    /// every grant to its sender, not only those at or below the released
    /// ballot in its incarnation: a release held back past the sender's next
    /// lease takes that lease away while the sender holds it.
    pub release_any_grant: bool,
}

/// Why a lease read cannot be answered here.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub enum ReadError {
    /// Ask the master instead.
    #[error("not the master (last heard from {master:?})")]
    NotMaster {
        /// The master last heard from, if any.
        master: Option<NodeId>,
    },
    /// Wait: the state is not yet known to include every chosen value.
    #[error("master, but still recovering the values found in phase 1")]
    Recovering,
}

/// Why [`Replica::transfer_master`] could not start a handover.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub enum TransferError {
    /// Only a master holding the lease hands it over.
    #[error("not the master")]
    NotMaster,
    /// The member named is not in the group.
    #[error("{0} is not a member")]
    NotAMember(NodeId),
}

/// What this replica's log holds for one instance.
#[derive(Clone, Debug)]
enum Slot {
    Accepted { ballot: Ballot, batch: Batch },
    Chosen { batch: Batch },
    Faulty { ballot: Option<Ballot> },
}

#[derive(Debug)]
struct Inflight {
    batch: Batch,
    acks: u64,
    sent_at: Time,
}

#[derive(Debug)]
struct MasterState {
    ballot: Ballot,
    next: Instance,
    inflight: BTreeMap<Instance, Inflight>,
    /// Phase 1 found values up to here; lease reads wait until they are applied.
    recovery_through: Instance,
    /// Instances phase 1 could not decide (no good copy among the answers):
    /// never proposed, never invented.
    unresolved: Vec<Instance>,
    /// While `unresolved` is not empty, when to run phase 1 again.
    unresolved_retry_at: Time,
    commit_sent_at: Time,
    /// A handover asked for by the host ([`Replica::transfer_master`]).
    transfer: Option<Transfer>,
}

/// A master's handover in progress: no new proposals while the ones in
/// flight are chosen, then the lease is released and `to` told to take it.
#[derive(Clone, Copy, Debug)]
struct Transfer {
    to: NodeId,
    /// Given up here if the instances in flight are not all chosen by then.
    until: Time,
}

/// This replica stepped down for `to`: it repeats its release and handover
/// every retransmit interval, since either may be lost, until it hears of a
/// master or `until` passes.
#[derive(Clone, Copy, Debug)]
struct HandingOver {
    to: NodeId,
    ballot: Ballot,
    through: Instance,
    until: Time,
    sent_at: Time,
}

/// A master stepped down for this replica: try for the lease at once, once
/// chosen through `through`, until `until`.
#[derive(Clone, Copy, Debug)]
struct Handover {
    through: Instance,
    until: Time,
}

#[derive(Debug)]
struct CandidateState {
    ballot: Ballot,
    from: Instance,
    started_at: Time,
    entries: BTreeMap<NodeId, Vec<PromiseEntry>>,
    done: u64,
    refused: u64,
    /// A promiser knows chosen values far beyond us: catch up from it first.
    lagging_behind: Option<(NodeId, Instance)>,
}

#[derive(Debug)]
enum Role {
    Follower,
    Candidate(CandidateState),
    Master(MasterState),
}

#[derive(Debug)]
struct PendingBatch {
    batch: Batch,
    submits: Vec<SubmitId>,
}

#[derive(Debug)]
struct Probing {
    replies: u64,
    promised_max: Ballot,
    history: bool,
    incarnation_seen: u64,
    sent_at: Time,
}

/// One member of a Multi-Paxos group. Drive it with [`Replica::tick`],
/// [`Replica::step`] and [`Replica::submit`]; after each call take the
/// [`Ready`] with [`Replica::take_ready`] and act on it in its documented order.
#[derive(Debug)]
pub struct Replica {
    config: Config,
    quorum: usize,
    bugs: PlantedBugs,
    /// The only randomness the core uses: back-off jitter.
    rng: SplitMix64,
    meta: Meta,
    /// The promise last handed to the host to persist: `meta.promised` never
    /// goes below it (checked in `persist_meta`).
    promised_persisted: Ballot,
    /// Peer messages refused by [`Message::validate`] before the core acted on them.
    messages_invalid: u64,
    probing: Option<Probing>,
    lease_acceptor: LeaseAcceptor,
    lease_proposer: LeaseProposer,
    log: BTreeMap<Instance, Slot>,
    /// Everything up to here is in the host's snapshot and gone from `log`.
    log_base: Instance,
    /// Known-chosen, delivered prefix.
    chosen_through: Instance,
    /// Highest instance anyone said was chosen.
    commit_hint: Instance,
    round_seen: u64,
    role: Role,
    master_hint: Option<NodeId>,
    last_master_contact: Time,
    max_epoch_applied: Epoch,
    catchup_sent: Option<(NodeId, Time)>,
    catchup_rotation: usize,
    queue: VecDeque<(SubmitId, Entry)>,
    queue_bytes: usize,
    next_submit_id: u64,
    pending: BTreeMap<Instance, PendingBatch>,
    incarnations_seen: BTreeMap<NodeId, u64>,
    inbox: VecDeque<(NodeId, Message)>,
    ready: Ready,
    last_tick: Time,
    /// The probe after an empty start found that others had voted already.
    joined_group_with_history: bool,
    /// A master handed its role to this replica.
    handover: Option<Handover>,
    /// This replica handed its role to another.
    handing_over: Option<HandingOver>,
}

impl Replica {
    /// A replica with an empty disk. `seed` is its only source of randomness.
    pub fn fresh(config: Config, start: FreshStart, now: Time, seed: u64) -> Replica {
        let meta = Meta {
            promised: Ballot::ZERO,
            incarnation: 1,
            voting: Voting::ProbePending {
                new_group: start == FreshStart::NewGroup,
            },
        };
        let mut replica = Replica::build(config, meta, now, seed);
        if start == FreshStart::NewGroup {
            // This replica knows it never voted: its answers to probes count.
            replica.persist_meta();
        }
        replica.start_probe(now);
        replica
    }

    /// A replica restarting from what its disk held.
    pub fn restart(config: Config, durable: DurableState, now: Time, seed: u64) -> Replica {
        let mut meta = durable.meta;
        meta.incarnation += 1;
        let mut replica = Replica::build(config, meta, now, seed);
        replica.log_base = durable.snapshot_instance;
        replica.chosen_through = durable.snapshot_instance;
        replica.commit_hint = durable.chosen_through.max(durable.snapshot_instance);
        replica.max_epoch_applied = durable.snapshot_epoch;
        for (instance, slot) in durable.slots {
            if instance <= replica.log_base {
                continue;
            }
            let slot = match slot {
                StoredSlot::Accepted { batch, .. }
                    if instance <= durable.chosen_through && instance > durable.snapshot_lost_through =>
                {
                    Slot::Chosen { batch }
                }
                StoredSlot::Accepted { ballot, batch } => Slot::Accepted { ballot, batch },
                StoredSlot::Chosen { batch } => Slot::Chosen { batch },
                StoredSlot::Faulty { ballot } => Slot::Faulty { ballot },
            };
            replica.log.insert(instance, slot);
        }
        replica.round_seen = replica.meta.promised.round;
        // The new incarnation must be durable before any ballot that uses it is sent.
        replica.persist_meta();
        if let Voting::ProbePending { .. } = replica.meta.voting {
            replica.start_probe(now);
        }
        replica.deliver_chosen();
        replica
    }

    fn build(config: Config, meta: Meta, now: Time, seed: u64) -> Replica {
        config.validate().expect("configuration must be validated by the host");
        let quorum = config.quorum();
        let silent_until = now + config.lease_duration;
        let mut rng = SplitMix64::new(seed ^ config.node.0.wrapping_mul(0x2545_F491_4F6C_DD1D));
        let first_attempt = now + config.election_timeout + rng.duration_below(config.backoff_max);
        Replica {
            quorum,
            bugs: PlantedBugs::default(),
            rng,
            promised_persisted: meta.promised,
            messages_invalid: 0,
            meta,
            probing: None,
            lease_acceptor: LeaseAcceptor::new(silent_until),
            lease_proposer: LeaseProposer::new(first_attempt),
            log: BTreeMap::new(),
            log_base: Instance::ZERO,
            chosen_through: Instance::ZERO,
            commit_hint: Instance::ZERO,
            round_seen: 0,
            role: Role::Follower,
            master_hint: None,
            last_master_contact: now,
            max_epoch_applied: Epoch::default(),
            catchup_sent: None,
            catchup_rotation: 0,
            queue: VecDeque::new(),
            queue_bytes: 0,
            next_submit_id: 1,
            pending: BTreeMap::new(),
            incarnations_seen: BTreeMap::new(),
            inbox: VecDeque::new(),
            ready: Ready::default(),
            last_tick: now,
            joined_group_with_history: false,
            handover: None,
            handing_over: None,
            config,
        }
    }

    /// Switches on planted bugs, for the simulator's tests and the server's
    /// `--unsafe-bug` modes; `PlantedBugs::default()` plants none.
    pub fn plant_bugs(&mut self, bugs: PlantedBugs) {
        self.bugs = bugs;
        if bugs.quorum_of_half {
            self.quorum = (self.config.members.len() / 2).max(1);
        }
        if bugs.no_lease_silence_after_restart {
            self.lease_acceptor = LeaseAcceptor::new(Time::ZERO);
        }
        self.lease_acceptor.accept_lower_ballot = bugs.accept_lower_ballot;
        self.lease_acceptor.release_any_grant = bugs.release_any_grant;
    }

    // ----- Queries -----

    /// This replica's identity.
    pub fn node(&self) -> NodeId {
        self.config.node
    }

    /// The configuration it was built with.
    pub fn config(&self) -> &Config {
        &self.config
    }

    /// Instances known chosen and delivered, in order, up to here.
    pub fn chosen_through(&self) -> Instance {
        self.chosen_through
    }

    /// The chosen value of `instance`, if this replica knows it and still has it.
    pub fn chosen_value(&self, instance: Instance) -> Option<&Batch> {
        match self.log.get(&instance) {
            Some(Slot::Chosen { batch }) => Some(batch),
            _ => None,
        }
    }

    /// The highest epoch among delivered instances; a snapshot records it.
    pub fn applied_epoch(&self) -> Epoch {
        self.max_epoch_applied
    }

    /// The current epoch, if this replica is the master.
    pub fn epoch(&self) -> Option<Epoch> {
        match &self.role {
            Role::Master(master) => Some(Epoch(master.ballot)),
            _ => None,
        }
    }

    /// Whether this replica is the master (phase 1 done, lease held or not).
    pub fn is_master(&self) -> bool {
        matches!(self.role, Role::Master(_))
    }

    /// The replica this one believes is master (itself included).
    pub fn master_hint(&self) -> Option<NodeId> {
        if self.is_master() {
            Some(self.config.node)
        } else {
            self.master_hint
        }
    }

    /// The member this master is handing its role to, while it drains the
    /// instances in flight ([`Replica::transfer_master`]).
    pub fn transfer_target(&self) -> Option<NodeId> {
        match &self.role {
            Role::Master(master) => master.transfer.map(|transfer| transfer.to),
            _ => None,
        }
    }

    /// Whether this replica believes it holds the PaxosLease at `now`.
    pub fn holds_lease(&self, now: Time) -> bool {
        self.lease_proposer.is_held(now)
    }

    /// When this replica's PaxosLease runs out by its own clock, if it holds one.
    pub fn lease_expires_at(&self) -> Option<Time> {
        self.lease_proposer.held_until()
    }

    /// The acceptor metadata: promise, incarnation, right to vote.
    pub fn meta(&self) -> Meta {
        self.meta
    }

    /// How many peer messages were refused unread: a counter out of range, or a
    /// proposer's ballot from another member than the sender ([`Message::validate`]).
    pub fn messages_invalid(&self) -> u64 {
        self.messages_invalid
    }

    /// The highest Multi-Paxos round this replica has seen; reported as etcd's raft_term.
    pub fn round(&self) -> u64 {
        self.round_seen.max(self.meta.promised.round)
    }

    /// Whether this replica may answer a linearizable read from its own state at
    /// `now`, and if so, through which instance the host must have applied the log.
    ///
    /// Only a master whose lease holds at `now`, and which has committed and
    /// applied every value its phase 1 found, may answer. Call it with a fresh
    /// clock reading taken when answering: a master that was paused longer than its
    /// lease sees at once that the lease may have run out.
    pub fn read_lease(&self, now: Time) -> Result<Instance, ReadError> {
        let Role::Master(master) = &self.role else {
            return Err(ReadError::NotMaster {
                master: self.master_hint,
            });
        };
        if !self.lease_proposer.is_held(now) && !self.bugs.read_without_lease {
            return Err(ReadError::NotMaster { master: None });
        }
        if self.chosen_through < master.recovery_through || !master.unresolved.is_empty() {
            return Err(ReadError::Recovering);
        }
        Ok(self.chosen_through)
    }

    /// Whether this replica started with an empty disk and found that its peers
    /// had voted before it. For a member started as part of a new group this is
    /// normal when it started late; the host may say so, since a member whose disk
    /// was lost must instead be started as rejoining (`FreshStart::Rejoin`).
    pub fn joined_group_with_history(&self) -> bool {
        self.joined_group_with_history
    }

    /// A one-line description of this replica's state, for diagnostics.
    pub fn describe(&self, now: Time) -> String {
        let role = match &self.role {
            Role::Follower => "follower".to_string(),
            Role::Candidate(candidate) => format!("candidate {}", candidate.ballot),
            Role::Master(master) => format!(
                "master {} next {} inflight {} recovery_through {}",
                master.ballot,
                master.next,
                master.inflight.len(),
                master.recovery_through
            ),
        };
        format!(
            "{} {:?} {} promised {} chosen_through {} hint {} lease_held {} silent {} next_attempt_in {:?} queue {}",
            self.config.node,
            self.meta.voting,
            role,
            self.meta.promised,
            self.chosen_through,
            self.commit_hint,
            self.lease_proposer.is_held(now),
            self.lease_acceptor.is_silent(now),
            self.lease_proposer.next_attempt_at.since(now),
            self.queue.len()
        )
    }

    /// Takes what the host must now do.
    pub fn take_ready(&mut self) -> Ready {
        std::mem::take(&mut self.ready)
    }

    fn is_voter(&self) -> bool {
        self.meta.voting == Voting::Voter
    }

    fn member_bit(&self, node: NodeId) -> Option<u64> {
        self.config
            .members
            .iter()
            .position(|member| *member == node)
            .map(|index| 1u64 << index)
    }

    fn all_members_bits(&self) -> u64 {
        (1u64 << self.config.members.len()) - 1
    }

    // ----- Sending -----

    fn send(&mut self, to: NodeId, message: Message) {
        if to == self.config.node {
            self.inbox.push_back((to, message));
        } else {
            self.ready.messages.push(Envelope { to, message });
        }
    }

    fn broadcast(&mut self, message: Message) {
        for index in 0..self.config.members.len() {
            let to = self.config.members[index];
            self.send(to, message.clone());
        }
    }

    fn broadcast_others(&mut self, message: Message) {
        for index in 0..self.config.members.len() {
            let to = self.config.members[index];
            if to != self.config.node {
                self.ready.messages.push(Envelope {
                    to,
                    message: message.clone(),
                });
            }
        }
    }

    fn drain_inbox(&mut self, now: Time) {
        while let Some((from, message)) = self.inbox.pop_front() {
            self.handle(now, from, message);
        }
    }

    /// Hands the metadata to the host to persist. Every change of the promise
    /// passes here before any message that reveals it, so this is where "a
    /// promise never goes down" must hold (Lamport 2001, P1a): an acceptor that
    /// lowered its promise could accept what it swore to refuse.
    fn persist_meta(&mut self) {
        assert!(
            self.meta.promised >= self.promised_persisted,
            "promise went down from {:?} to {:?}",
            self.promised_persisted,
            self.meta.promised
        );
        self.promised_persisted = self.meta.promised;
        self.ready.persist.push(Persist::Meta(self.meta));
    }

    /// Moves the delivered, known-chosen prefix forward to `through`. The
    /// prefix only grows: an instance once delivered is never delivered again,
    /// and the host applies each exactly once, in order.
    fn advance_chosen_through(&mut self, through: Instance) {
        assert!(
            through > self.chosen_through,
            "chosen prefix would shrink or stall: {:?} -> {:?}",
            self.chosen_through,
            through
        );
        self.chosen_through = through;
    }

    // ----- Entry points -----

    /// Advances timers. Call it often (every few milliseconds of `now`).
    pub fn tick(&mut self, now: Time) {
        debug_assert!(now >= self.last_tick, "time never goes backwards");
        self.last_tick = now;
        self.tick_probe(now);
        self.tick_lease(now);
        self.tick_role(now);
        self.tick_catchup(now);
        self.drain_inbox(now);
    }

    /// Handles one message from a peer.
    pub fn step(&mut self, now: Time, from: NodeId, message: Message) {
        if self.member_bit(from).is_none() || from == self.config.node {
            return;
        }
        if !self.bugs.skip_message_validation && message.validate(from).is_err() {
            self.messages_invalid += 1;
            return;
        }
        self.handle(now, from, message);
        self.drain_inbox(now);
    }

    /// Submits a value to the log. On success the value's fate arrives later as a
    /// [`SubmitOutcome`]; a definite refusal hands the value back at once.
    pub fn submit(&mut self, now: Time, value: Bytes, expected_epoch: Option<Epoch>) -> Result<SubmitId, Rejected> {
        let reject = |reason: RejectReason, value: Bytes| Err(Rejected { reason, value });
        if value.len() > self.config.value_bytes_max {
            return reject(
                RejectReason::TooLarge {
                    bytes: value.len(),
                    bytes_max: self.config.value_bytes_max,
                },
                value,
            );
        }
        let ballot = match &self.role {
            Role::Master(MasterState {
                transfer: Some(transfer),
                ..
            }) => {
                // Handing over: what this master would propose now might be
                // cut off by the step-down; the host retries at `to`.
                return reject(
                    RejectReason::NotMaster {
                        master: Some(transfer.to),
                    },
                    value,
                );
            }
            Role::Master(master) if self.lease_proposer.is_held(now) => master.ballot,
            _ => {
                let master = if self.is_master() { None } else { self.master_hint };
                return reject(RejectReason::NotMaster { master }, value);
            }
        };
        if let Some(expected) = expected_epoch {
            if expected != Epoch(ballot) {
                return reject(
                    RejectReason::EpochChanged {
                        current: Some(Epoch(ballot)),
                    },
                    value,
                );
            }
        }
        if self.queue.len() >= self.config.submit_queue_values_max
            || self.queue_bytes + value.len() > self.config.submit_queue_bytes_max
        {
            return reject(RejectReason::QueueFull, value);
        }
        let id = SubmitId(self.next_submit_id);
        self.next_submit_id += 1;
        self.queue_bytes += value.len();
        self.queue.push_back((id, Entry { value, expected_epoch }));
        self.propose_queued(now);
        self.drain_inbox(now);
        Ok(id)
    }

    /// The host installed a state-machine snapshot covering every instance up to
    /// `instance` (taken from a peer, whose epoch at that point was `epoch`).
    pub fn install_snapshot(&mut self, instance: Instance, epoch: Epoch) {
        if instance <= self.chosen_through {
            return;
        }
        self.trim_below(instance);
        self.advance_chosen_through(instance);
        self.commit_hint = self.commit_hint.max(instance);
        if let Role::Master(master) = &mut self.role {
            // A master behind its acceptors stops proposing what the
            // snapshot covers.
            master.inflight = master.inflight.split_off(&instance.next());
            master.unresolved.retain(|unresolved| *unresolved > instance);
            master.next = master.next.max(instance.next());
        }
        self.max_epoch_applied = self.max_epoch_applied.max(epoch);
        let skipped: Vec<Instance> = self.pending.range(..=instance).map(|(i, _)| *i).collect();
        for instance in skipped {
            let pending = self.pending.remove(&instance).expect("listed");
            for id in pending.submits {
                // Its fate is inside a snapshot this replica did not apply itself.
                self.ready.outcomes.push(SubmitOutcome {
                    id,
                    outcome: Outcome::Unknown,
                });
            }
        }
        self.ready.persist.push(Persist::ChosenThrough { through: instance });
        self.deliver_chosen();
        self.check_learned_enough();
    }

    /// The host has a snapshot covering every instance up to `through` and hands
    /// the handle back: the log below it may go.
    pub fn trim(&mut self, through: Instance) {
        assert!(through <= self.chosen_through, "only applied instances may be trimmed");
        self.trim_below(through);
    }

    fn trim_below(&mut self, through: Instance) {
        self.log = self.log.split_off(&through.next());
        self.log_base = self.log_base.max(through);
    }

    // ----- Message handling -----

    fn handle(&mut self, now: Time, from: NodeId, message: Message) {
        self.note_ballot(&message);
        match message {
            Message::LeasePrepare { ballot } => {
                if self.is_voter() {
                    if let Some(reply) = self.lease_acceptor.on_prepare(now, ballot) {
                        self.send(from, reply);
                    }
                }
            }
            Message::LeasePropose { ballot, duration_nanos } => {
                if self.is_voter() {
                    let duration = Duration::from_nanos(duration_nanos);
                    let max = self.config.lease_duration;
                    if let Some(reply) = self.lease_acceptor.on_propose(now, from, ballot, duration, max) {
                        self.send(from, reply);
                    }
                }
            }
            Message::LeaseRelease { ballot } => self.lease_acceptor.release(from, ballot),
            Message::MasterHandover { ballot, through } => self.on_handover(now, from, ballot, through),
            Message::LeasePrepareReply {
                ballot,
                granted,
                promised,
                open_owner,
            } => {
                let Some(bit) = self.member_bit(from) else { return };
                let event = self.lease_proposer.on_prepare_reply(
                    self.config.node,
                    bit,
                    self.quorum,
                    self.config.members.len(),
                    ballot,
                    granted,
                    promised,
                    open_owner,
                );
                self.on_lease_event(now, event);
            }
            Message::LeaseProposeReply {
                ballot,
                granted,
                promised,
            } => {
                let Some(bit) = self.member_bit(from) else { return };
                let holder = self.config.lease_holder_duration();
                let event = self.lease_proposer.on_propose_reply(
                    now,
                    bit,
                    self.quorum,
                    self.config.members.len(),
                    holder,
                    ballot,
                    granted,
                    promised,
                );
                self.on_lease_event(now, event);
            }
            Message::Prepare { ballot, from: start } => self.on_prepare(now, from, ballot, start),
            Message::Promise {
                ballot,
                chosen_through,
                entries,
                truncated,
                last,
            } => self.on_promise(now, from, ballot, chosen_through, entries, truncated, last),
            Message::Refuse {
                ballot,
                promised,
                reason,
            } => self.on_refuse(now, from, ballot, promised, reason),
            Message::Accept {
                ballot,
                instance,
                batch,
                chosen_through,
            } => self.on_accept(now, from, ballot, instance, batch, chosen_through),
            Message::Accepted { ballot, instance } => self.on_accepted(now, from, ballot, instance),
            Message::Commit {
                ballot,
                chosen_through,
                proposed_through,
            } => self.on_commit(now, from, ballot, chosen_through, proposed_through),
            Message::CatchupRequest { from: start, to } => self.on_catchup_request(from, start, to),
            Message::CatchupReply {
                entries,
                chosen_through,
            } => self.on_catchup_reply(now, from, entries, chosen_through),
            Message::SnapshotNeeded { snapshot_instance } => {
                self.catchup_sent = None;
                if snapshot_instance > self.chosen_through {
                    self.ready.snapshot_needed = Some((from, snapshot_instance));
                }
            }
            Message::Probe => self.on_probe(from),
            Message::ProposedQuery { incarnation } => self.on_proposed_query(from, incarnation),
            Message::ProposedReply {
                ballot,
                proposed_through,
                incarnation,
            } => self.on_proposed_reply(ballot, proposed_through, incarnation),
            Message::ProbeReply {
                amnesiac,
                promised,
                has_history,
                incarnation_seen,
            } => self.on_probe_reply(now, from, amnesiac, promised, has_history, incarnation_seen),
        }
    }

    /// Keeps the highest rounds and incarnations seen, so later ballots outbid them.
    fn note_ballot(&mut self, message: &Message) {
        let ballot = match message {
            Message::Prepare { ballot, .. }
            | Message::Accept { ballot, .. }
            | Message::Commit { ballot, .. }
            | Message::Promise { ballot, .. } => *ballot,
            Message::Refuse { promised, .. } => *promised,
            Message::LeasePrepare { ballot }
            | Message::LeasePropose { ballot, .. }
            | Message::LeaseRelease { ballot }
            | Message::MasterHandover { ballot, .. } => {
                self.note_incarnation(*ballot);
                return;
            }
            _ => return,
        };
        self.round_seen = self.round_seen.max(ballot.round);
        self.note_incarnation(ballot);
    }

    /// Bounded by the membership: ballots naming non-members are not remembered.
    fn note_incarnation(&mut self, ballot: Ballot) {
        if self.member_bit(ballot.node).is_some() {
            let seen = self.incarnations_seen.entry(ballot.node).or_default();
            *seen = (*seen).max(ballot.incarnation);
        }
    }
}
