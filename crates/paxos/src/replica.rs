//! One replica: acceptor, learner, PaxosLease participant and, while it holds the
//! lease, the Multi-Paxos master.

use std::collections::{BTreeMap, VecDeque};
use std::time::Duration;

use bytes::Bytes;

use crate::master_lease::{LeaseAcceptor, LeaseEvent, LeaseProposer};
use crate::message::{Batch, BatchId, Entry, Epoch, Message, PromiseEntry, RefuseReason};
use crate::output::{
    Committed, DurableState, Envelope, FreshStart, Meta, Outcome, Persist, Ready, RejectReason, Rejected, StoredSlot,
    SubmitId, SubmitOutcome, Voting,
};
use crate::{Ballot, Config, Instance, NodeId, Time};

/// Planted bugs, for showing that the simulator's checkers catch them. Never set
/// outside tests.
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
}

/// Why a lease read cannot be answered here.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub enum ReadError {
    #[error("not the master (last heard from {master:?})")]
    NotMaster { master: Option<NodeId> },
    #[error("master, but still recovering the values found in phase 1")]
    Recovering,
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

/// Small, fast, seeded PRNG (SplitMix64): the only randomness the core uses.
#[derive(Debug)]
struct Rng(u64);

impl Rng {
    fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    fn duration_below(&mut self, max: Duration) -> Duration {
        let nanos = max.as_nanos() as u64;
        if nanos == 0 {
            return Duration::ZERO;
        }
        Duration::from_nanos(self.next_u64() % nanos)
    }
}

/// One member of a Multi-Paxos group. Drive it with [`Replica::tick`],
/// [`Replica::step`] and [`Replica::submit`]; after each call take the
/// [`Ready`] with [`Replica::take_ready`] and act on it in its documented order.
#[derive(Debug)]
pub struct Replica {
    config: Config,
    quorum: usize,
    bugs: PlantedBugs,
    rng: Rng,
    meta: Meta,
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
            replica.ready.persist.push(Persist::Meta(replica.meta));
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
        replica.ready.persist.push(Persist::Meta(replica.meta));
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
        let mut rng = Rng(seed ^ config.node.0.wrapping_mul(0x2545_F491_4F6C_DD1D));
        let first_attempt = now + config.election_timeout + rng.duration_below(config.backoff_max);
        Replica {
            quorum,
            bugs: PlantedBugs::default(),
            rng,
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
            config,
        }
    }

    /// Switches on planted bugs (simulator tests only).
    pub fn plant_bugs(&mut self, bugs: PlantedBugs) {
        self.bugs = bugs;
        if bugs.quorum_of_half {
            self.quorum = (self.config.members.len() / 2).max(1);
        }
        if bugs.no_lease_silence_after_restart {
            self.lease_acceptor = LeaseAcceptor::new(Time::ZERO);
        }
        self.lease_acceptor.accept_lower_ballot = bugs.accept_lower_ballot;
    }

    // ----- Queries -----

    pub fn node(&self) -> NodeId {
        self.config.node
    }

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

    /// Whether this replica believes it holds the PaxosLease at `now`.
    pub fn holds_lease(&self, now: Time) -> bool {
        self.lease_proposer.is_held(now)
    }

    pub fn lease_expires_at(&self) -> Option<Time> {
        self.lease_proposer.held_until()
    }

    pub fn meta(&self) -> Meta {
        self.meta
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
        if !self.lease_proposer.is_held(now) {
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

    fn persist_meta(&mut self) {
        self.ready.persist.push(Persist::Meta(self.meta));
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
        self.chosen_through = instance;
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
            Message::LeasePrepare { ballot } | Message::LeasePropose { ballot, .. } => {
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

    // ----- PaxosLease -----

    fn on_lease_event(&mut self, now: Time, event: LeaseEvent) {
        match event {
            LeaseEvent::None => {}
            LeaseEvent::Propose { ballot } => {
                let duration_nanos = self.config.lease_duration.as_nanos() as u64;
                self.broadcast(Message::LeasePropose { ballot, duration_nanos });
            }
            LeaseEvent::Acquired { .. } => {
                if matches!(self.role, Role::Follower) {
                    self.become_candidate(now);
                }
            }
            LeaseEvent::Failed => self.back_off(now, Duration::ZERO),
            LeaseEvent::HeldElsewhere => {
                // The grant seen may be a leftover of a proposer that lost its
                // propose phase; it runs out within one lease time.
                self.back_off(now, self.config.lease_duration);
            }
        }
    }

    /// Randomized exponential back-off after a failed lease attempt, so that
    /// duelling proposers drift apart.
    fn back_off(&mut self, now: Time, wait_first: Duration) {
        if !self.lease_proposer.is_held(now) {
            self.lease_acceptor.release_own(self.config.node);
        }
        let failures = self.lease_proposer.failures.min(3);
        self.lease_proposer.failures += 1;
        let ceiling = self.config.backoff_max * (1u32 << failures);
        self.lease_proposer.next_attempt_at = now + wait_first + self.rng.duration_below(ceiling);
    }

    fn tick_lease(&mut self, now: Time) {
        // An attempt is worth waiting for while it could still leave a useful lease.
        let attempt_timeout = self.config.lease_holder_duration() / 2;
        if self.lease_proposer.expire_attempt(now, attempt_timeout) {
            self.back_off(now, Duration::ZERO);
        }
        if !self.is_voter() || self.lease_acceptor.is_silent(now) {
            return;
        }
        if !self.lease_proposer.is_held(now) && !matches!(self.role, Role::Follower) {
            self.step_down(now);
        }
        if !self.lease_proposer.is_idle() || now < self.lease_proposer.next_attempt_at {
            return;
        }
        let held = self.lease_proposer.is_held(now);
        let renew = held && self.lease_proposer.renewal_due(now, self.config.lease_renew_interval);
        let acquire = !held && now >= self.last_master_contact + self.config.election_timeout;
        if renew || acquire {
            let ballot = self.lease_proposer.start(now, self.config.node, self.meta.incarnation);
            self.broadcast(Message::LeasePrepare { ballot });
        }
    }

    // ----- Multi-Paxos acceptor -----

    fn refuse(&mut self, to: NodeId, ballot: Ballot, reason: RefuseReason) {
        let promised = self.meta.promised;
        self.send(
            to,
            Message::Refuse {
                ballot,
                promised,
                reason,
            },
        );
    }

    fn on_prepare(&mut self, now: Time, from: NodeId, ballot: Ballot, start: Instance) {
        if !self.is_voter() || self.lease_acceptor.is_silent(now) {
            return self.refuse(from, ballot, RefuseReason::Silent);
        }
        if self.lease_acceptor.holder(now).is_some_and(|holder| holder != from) {
            return self.refuse(from, ballot, RefuseReason::LeaseHeld);
        }
        if ballot <= self.meta.promised {
            return self.refuse(from, ballot, RefuseReason::Promised);
        }
        self.meta.promised = ballot;
        self.persist_meta();

        // Everything accepted from `start` on, cut into messages of bounded size.
        let limit = self.config.accept_ahead_instances_max as usize + self.config.window_instances_max as usize;
        let truncated =
            start <= self.log_base && self.log_base > Instance::ZERO || self.log.range(start..).count() > limit;
        let mut chunk: Vec<PromiseEntry> = Vec::new();
        let mut chunk_bytes = 0;
        let budget = self.config.message_bytes_max.saturating_sub(256);
        let mut pieces: Vec<Vec<PromiseEntry>> = Vec::new();
        if !truncated {
            for (instance, slot) in self.log.range(start..) {
                let entry = match slot {
                    Slot::Accepted { ballot, batch } => PromiseEntry::Accepted {
                        instance: *instance,
                        ballot: *ballot,
                        batch: batch.clone(),
                    },
                    Slot::Chosen { batch } => PromiseEntry::Chosen {
                        instance: *instance,
                        batch: batch.clone(),
                    },
                    Slot::Faulty { ballot } => PromiseEntry::Faulty {
                        instance: *instance,
                        ballot: *ballot,
                    },
                };
                let bytes = Message::promise_entry_bytes(&entry);
                if !chunk.is_empty() && chunk_bytes + bytes > budget {
                    pieces.push(std::mem::take(&mut chunk));
                    chunk_bytes = 0;
                }
                chunk_bytes += bytes;
                chunk.push(entry);
            }
        }
        pieces.push(chunk);
        let count = pieces.len();
        for (index, entries) in pieces.into_iter().enumerate() {
            let message = Message::Promise {
                ballot,
                chosen_through: self.chosen_through,
                entries,
                truncated,
                last: index + 1 == count,
            };
            self.send(from, message);
        }
    }

    fn on_accept(
        &mut self,
        now: Time,
        from: NodeId,
        ballot: Ballot,
        instance: Instance,
        batch: Batch,
        chosen_through: Instance,
    ) {
        if !self.is_voter() {
            self.learn_commit(now, from, ballot, chosen_through);
            return;
        }
        let promised = self.meta.promised;
        if ballot < promised && !self.bugs.accept_lower_ballot {
            return self.refuse(from, ballot, RefuseReason::Promised);
        }
        if let Some(chosen) = self.known_chosen(instance) {
            // Already chosen here. Vouch for the proposal only if it is the chosen
            // batch: a proposal from a ballot older than the choice may carry
            // another value, and an acceptance not really made must not count.
            if chosen == Some(batch.id) {
                self.send(from, Message::Accepted { ballot, instance });
            } else if chosen.is_none() && instance <= self.log_base {
                // Its value is only in this replica's snapshot now: the
                // master, which has not learned it, needs that snapshot.
                // Without this it would resend the instance for ever.
                let snapshot_instance = self.log_base;
                self.send(from, Message::SnapshotNeeded { snapshot_instance });
            }
            self.learn_commit(now, from, ballot, chosen_through);
            return;
        }
        if instance.0 > self.chosen_through.0 + self.config.accept_ahead_instances_max {
            // Too far ahead: learn what was chosen first (the master will resend).
            self.learn_commit(now, from, ballot, chosen_through);
            return;
        }
        if ballot > promised {
            self.meta.promised = ballot;
            self.persist_meta();
        }
        self.ready.persist.push(Persist::Accepted {
            instance,
            ballot,
            batch: batch.clone(),
        });
        self.log.insert(instance, Slot::Accepted { ballot, batch });
        self.send(from, Message::Accepted { ballot, instance });
        self.learn_commit(now, from, ballot, chosen_through);
    }

    /// `Some` if `instance` is known chosen here, with the chosen batch's id when
    /// the log still holds it (`None` inside: trimmed into a snapshot).
    fn known_chosen(&self, instance: Instance) -> Option<Option<BatchId>> {
        match self.log.get(&instance) {
            Some(Slot::Chosen { batch }) => Some(Some(batch.id)),
            _ if instance <= self.chosen_through => Some(None),
            _ => None,
        }
    }

    // ----- Learner -----

    fn on_commit(
        &mut self,
        now: Time,
        from: NodeId,
        ballot: Ballot,
        chosen_through: Instance,
        proposed_through: Instance,
    ) {
        if self.meta.voting == Voting::AwaitMaster && ballot >= self.meta.promised {
            self.meta.voting = Voting::LearnUntil(proposed_through);
            self.persist_meta();
        }
        self.learn_commit(now, from, ballot, chosen_through);
        self.check_learned_enough();
    }

    /// `from`, master at `ballot`, says every instance up to `through` is chosen.
    fn learn_commit(&mut self, now: Time, from: NodeId, ballot: Ballot, through: Instance) {
        // What a master said was chosen stays true after it is deposed, so the
        // commit point is learned from any ballot; only a current master is
        // followed as master.
        if let Role::Master(master) = &self.role {
            if master.ballot >= ballot {
                return;
            }
            self.step_down(now);
        }
        if ballot >= self.meta.promised {
            self.master_hint = Some(from);
            self.last_master_contact = now;
            let wait = self
                .config
                .election_timeout
                .saturating_add(self.rng.duration_below(self.config.backoff_max));
            self.lease_proposer.next_attempt_at = self.lease_proposer.next_attempt_at.max(now + wait);
        }
        self.commit_hint = self.commit_hint.max(through);
        let upto = through.min(Instance(self.chosen_through.0 + self.config.accept_ahead_instances_max));
        let mut newly_chosen = Vec::new();
        let start = self.chosen_through.next();
        let known = if start <= upto {
            self.log.range(start..=upto)
        } else {
            self.log.range(start..start)
        };
        for (instance, slot) in known {
            if let Slot::Accepted { ballot: accepted, .. } = slot {
                if *accepted == ballot {
                    newly_chosen.push(*instance);
                }
            }
        }
        for instance in newly_chosen {
            if let Some(Slot::Accepted { batch, .. }) = self.log.remove(&instance) {
                self.log.insert(instance, Slot::Chosen { batch });
            }
        }
        self.deliver_chosen();
        if self.chosen_through < self.commit_hint {
            self.request_catchup(now, Some(from));
        }
    }

    /// Delivers the contiguous chosen prefix, each instance exactly once.
    fn deliver_chosen(&mut self) {
        let before = self.chosen_through;
        while let Some(Slot::Chosen { batch }) = self.log.get(&self.chosen_through.next()) {
            let instance = self.chosen_through.next();
            let batch = batch.clone();
            self.chosen_through = instance;
            self.deliver(instance, batch);
        }
        if self.chosen_through > before {
            self.ready.persist.push(Persist::ChosenThrough {
                through: self.chosen_through,
            });
        }
    }

    fn deliver(&mut self, instance: Instance, batch: Batch) {
        let epoch = batch.epoch();
        let mut rejected = Vec::new();
        for (index, entry) in batch.entries.iter().enumerate() {
            if let Some(expected) = entry.expected_epoch {
                if expected != epoch || epoch < self.max_epoch_applied {
                    rejected.push(index as u32);
                }
            }
        }
        self.max_epoch_applied = self.max_epoch_applied.max(epoch);
        if let Some(pending) = self.pending.remove(&instance) {
            let ours = pending.batch.id == batch.id;
            for (index, id) in pending.submits.into_iter().enumerate() {
                let outcome = if ours && !rejected.contains(&(index as u32)) {
                    Outcome::Committed {
                        instance,
                        index: index as u32,
                    }
                } else {
                    let reason = if ours {
                        RejectReason::EpochChanged { current: self.epoch() }
                    } else {
                        RejectReason::NotMaster {
                            master: self.master_hint(),
                        }
                    };
                    Outcome::Rejected(Rejected {
                        reason,
                        value: pending.batch.entries[index].value.clone(),
                    })
                };
                self.ready.outcomes.push(SubmitOutcome { id, outcome });
            }
        }
        self.ready.committed.push(Committed {
            instance,
            batch,
            rejected,
        });
    }

    fn check_learned_enough(&mut self) {
        if let Voting::LearnUntil(target) = self.meta.voting {
            if self.chosen_through >= target {
                self.meta.voting = Voting::Voter;
                self.persist_meta();
            }
        }
    }

    fn request_catchup(&mut self, now: Time, preferred: Option<NodeId>) {
        if let Some((_, sent_at)) = self.catchup_sent {
            if now < sent_at + self.config.retransmit_interval {
                return;
            }
        }
        let peer = match preferred.filter(|peer| *peer != self.config.node) {
            Some(peer) if self.catchup_sent.is_none() => peer,
            _ => {
                let others: Vec<NodeId> = self
                    .config
                    .members
                    .iter()
                    .copied()
                    .filter(|member| *member != self.config.node)
                    .collect();
                if others.is_empty() {
                    return;
                }
                self.catchup_rotation = self.catchup_rotation.wrapping_add(1);
                others[self.catchup_rotation % others.len()]
            }
        };
        let from = self.chosen_through.next();
        let to = Instance(from.0 + self.config.catchup_instances_max - 1);
        self.catchup_sent = Some((peer, now));
        self.send(peer, Message::CatchupRequest { from, to });
    }

    fn tick_catchup(&mut self, now: Time) {
        if self.chosen_through < self.commit_hint {
            self.request_catchup(now, self.master_hint);
        }
    }

    fn on_catchup_request(&mut self, from: NodeId, start: Instance, to: Instance) {
        if start <= self.log_base && self.log_base > Instance::ZERO {
            return self.send(
                from,
                Message::SnapshotNeeded {
                    snapshot_instance: self.log_base,
                },
            );
        }
        let to = to.min(Instance(start.0.saturating_add(self.config.catchup_instances_max - 1)));
        let mut entries = Vec::new();
        let mut bytes = 0;
        let mut instance = start;
        while instance <= to {
            let Some(Slot::Chosen { batch }) = self.log.get(&instance) else {
                break;
            };
            bytes += batch.encoded_bytes() + 16;
            if !entries.is_empty() && bytes > self.config.message_bytes_max.saturating_sub(256) {
                break;
            }
            entries.push((instance, batch.clone()));
            instance = instance.next();
        }
        let chosen_through = self.chosen_through;
        self.send(
            from,
            Message::CatchupReply {
                entries,
                chosen_through,
            },
        );
    }

    fn on_catchup_reply(&mut self, now: Time, from: NodeId, entries: Vec<(Instance, Batch)>, through: Instance) {
        let progress = !entries.is_empty();
        if self.catchup_sent.is_some_and(|(peer, _)| peer == from) {
            // Without progress, wait out the retransmit interval and ask another peer.
            self.catchup_sent = if progress { None } else { Some((from, now)) };
        }
        self.commit_hint = self.commit_hint.max(through);
        for (instance, batch) in entries {
            if instance <= self.chosen_through || matches!(self.log.get(&instance), Some(Slot::Chosen { .. })) {
                continue;
            }
            self.ready.persist.push(Persist::Chosen {
                instance,
                batch: batch.clone(),
            });
            self.log.insert(instance, Slot::Chosen { batch });
        }
        self.deliver_chosen();
        self.check_learned_enough();
        if progress && self.chosen_through < self.commit_hint {
            self.request_catchup(now, Some(from));
        }
    }

    // ----- Rejoin (empty disk) -----

    fn start_probe(&mut self, now: Time) {
        if self.config.members.len() == 1 {
            // Nobody to ask; a lone replica that lost its disk lost everything.
            self.meta.voting = Voting::Voter;
            self.persist_meta();
            return;
        }
        self.probing = Some(Probing {
            replies: 0,
            promised_max: Ballot::ZERO,
            history: false,
            incarnation_seen: 0,
            sent_at: now,
        });
        self.broadcast_others(Message::Probe);
    }

    fn tick_probe(&mut self, now: Time) {
        let resend = match &self.probing {
            Some(probing) => now >= probing.sent_at + self.config.retransmit_interval,
            None => false,
        };
        if resend {
            if let Some(probing) = &mut self.probing {
                probing.sent_at = now;
            }
            self.broadcast_others(Message::Probe);
        }
    }

    fn on_probe(&mut self, from: NodeId) {
        let amnesiac = matches!(self.meta.voting, Voting::ProbePending { new_group: false });
        let has_history = self.meta.promised != Ballot::ZERO || !self.log.is_empty() || self.chosen_through.0 > 0;
        let incarnation_seen = self.incarnations_seen.get(&from).copied().unwrap_or(0);
        self.send(
            from,
            Message::ProbeReply {
                amnesiac,
                promised: self.meta.promised,
                has_history,
                incarnation_seen,
            },
        );
    }

    fn on_probe_reply(
        &mut self,
        _now: Time,
        from: NodeId,
        amnesiac: bool,
        promised: Ballot,
        has_history: bool,
        incarnation_seen: u64,
    ) {
        let Some(bit) = self.member_bit(from) else { return };
        let Some(probing) = &mut self.probing else { return };
        if amnesiac {
            return;
        }
        probing.replies |= bit;
        probing.promised_max = probing.promised_max.max(promised);
        probing.history |= has_history;
        probing.incarnation_seen = probing.incarnation_seen.max(incarnation_seen);
        // Every quorum that could have counted on this replica's lost promises
        // shares a member with any n - q + 1 others.
        let needed = self.config.members.len() - self.quorum + 1;
        if (probing.replies.count_ones() as usize) < needed {
            return;
        }
        let probing = self.probing.take().expect("probing");
        let new_group = matches!(self.meta.voting, Voting::ProbePending { new_group: true });
        self.meta.incarnation = self.meta.incarnation.max(probing.incarnation_seen + 1);
        self.meta.promised = self.meta.promised.max(probing.promised_max);
        self.round_seen = self.round_seen.max(self.meta.promised.round);
        // A member of a new group never voted, so it forgot nothing: with its
        // peers' highest promise adopted it may vote at once, even if the others
        // started earlier and already have history. A member that lost its disk
        // must first learn what it may have accepted.
        self.meta.voting = if new_group { Voting::Voter } else { Voting::AwaitMaster };
        self.joined_group_with_history = probing.history;
        self.persist_meta();
    }

    // ----- Multi-Paxos proposer (master) -----

    fn become_candidate(&mut self, now: Time) {
        let round = self.round_seen.max(self.meta.promised.round) + 1;
        self.round_seen = round;
        let ballot = Ballot::new(round, self.meta.incarnation, self.config.node);
        let from = self.chosen_through.next();
        self.role = Role::Candidate(CandidateState {
            ballot,
            from,
            started_at: now,
            entries: BTreeMap::new(),
            done: 0,
            refused: 0,
            lagging_behind: None,
        });
        self.broadcast(Message::Prepare { ballot, from });
    }

    #[allow(clippy::too_many_arguments)]
    fn on_promise(
        &mut self,
        now: Time,
        from: NodeId,
        ballot: Ballot,
        chosen_through: Instance,
        entries: Vec<PromiseEntry>,
        truncated: bool,
        last: bool,
    ) {
        let Some(bit) = self.member_bit(from) else { return };
        let quorum = self.quorum;
        let Role::Candidate(candidate) = &mut self.role else {
            return;
        };
        if candidate.ballot != ballot || candidate.done & bit != 0 {
            return;
        }
        candidate.entries.entry(from).or_default().extend(entries);
        if truncated {
            // A truncated answer leaves instances out, so this phase 1 must
            // not decide anything, whatever the answerer's commit point (it
            // may be this replica itself, whose log reaches far past a slot
            // it cannot deliver). Catch up from whoever is furthest ahead.
            if candidate.lagging_behind.is_none_or(|(_, at)| chosen_through > at) {
                candidate.lagging_behind = Some((from, chosen_through));
            }
        }
        if !last {
            return;
        }
        candidate.done |= bit;
        if (candidate.done.count_ones() as usize) < quorum {
            return;
        }
        if let Some((peer, through)) = candidate.lagging_behind {
            // Far behind: learn what is chosen, then try again with a new ballot.
            self.role = Role::Follower;
            self.commit_hint = self.commit_hint.max(through);
            self.request_catchup(now, Some(peer));
            return;
        }
        let everyone = candidate.done == self.all_members_bits();
        let (values, unresolved) = self.phase1_values();
        if !unresolved.is_empty() && !everyone {
            // A faulty copy may hide the deciding value: wait for more answers
            // (or for the phase-1 deadline in `tick_role`).
            return;
        }
        self.become_master(now, values, unresolved);
    }

    /// Decides, from the promises gathered, what to propose in every instance
    /// from the candidate's `from` on: the chosen value where anyone knows it,
    /// else the value of the highest ballot, else a no-op; an instance whose
    /// deciding copy is faulty everywhere is left unresolved.
    #[allow(clippy::type_complexity)]
    fn phase1_values(&self) -> (BTreeMap<Instance, Option<Batch>>, Vec<Instance>) {
        let Role::Candidate(candidate) = &self.role else {
            unreachable!("only a candidate decides phase 1")
        };
        let replied = candidate.done.count_ones() as usize;
        let mut per_instance: BTreeMap<Instance, Vec<&PromiseEntry>> = BTreeMap::new();
        for (node, entries) in &candidate.entries {
            let Some(bit) = self.member_bit(*node) else { continue };
            if candidate.done & bit == 0 {
                continue;
            }
            for entry in entries {
                per_instance.entry(entry.instance()).or_default().push(entry);
            }
        }
        let mut values = BTreeMap::new();
        let mut unresolved = Vec::new();
        let Some(highest) = per_instance.keys().next_back().copied() else {
            return (values, unresolved);
        };
        let mut instance = candidate.from;
        while instance <= highest {
            let reports = per_instance.get(&instance).map(Vec::as_slice).unwrap_or(&[]);
            match decide_instance(reports, replied, self.quorum) {
                Decision::Value(batch) => {
                    values.insert(instance, Some(batch));
                }
                Decision::Free => {
                    values.insert(instance, None);
                }
                Decision::Unresolved => unresolved.push(instance),
            }
            instance = instance.next();
        }
        (values, unresolved)
    }

    fn become_master(&mut self, now: Time, values: BTreeMap<Instance, Option<Batch>>, unresolved: Vec<Instance>) {
        let Role::Candidate(candidate) = &self.role else { return };
        let ballot = candidate.ballot;
        let from = candidate.from;
        let highest = values
            .keys()
            .next_back()
            .copied()
            .max(unresolved.last().copied())
            .unwrap_or(from.prev());
        self.role = Role::Master(MasterState {
            ballot,
            next: highest.next().max(from),
            inflight: BTreeMap::new(),
            recovery_through: highest,
            unresolved,
            unresolved_retry_at: now + self.config.election_timeout,
            commit_sent_at: now,
        });
        self.master_hint = Some(self.config.node);
        for (instance, value) in values {
            let batch = value.unwrap_or_else(|| Batch::noop(BatchId { ballot, instance }));
            self.propose(now, instance, batch);
        }
        self.send_commit(now);
        self.propose_queued(now);
    }

    fn propose(&mut self, now: Time, instance: Instance, batch: Batch) {
        let Role::Master(master) = &mut self.role else { return };
        let ballot = master.ballot;
        master.inflight.insert(
            instance,
            Inflight {
                batch: batch.clone(),
                acks: 0,
                sent_at: now,
            },
        );
        let chosen_through = self.chosen_through;
        self.broadcast(Message::Accept {
            ballot,
            instance,
            batch,
            chosen_through,
        });
    }

    /// Forms batches from the submit queue while the pipelining window has room.
    fn propose_queued(&mut self, now: Time) {
        if self.is_master() && !self.lease_proposer.is_held(now) {
            // Only the lease holder proposes: a master that was paused past its
            // lease finds out here, before it sends anything.
            self.step_down(now);
            return;
        }
        loop {
            let Role::Master(master) = &mut self.role else { return };
            if self.queue.is_empty() || master.next.0 > self.chosen_through.0 + self.config.window_instances_max {
                return;
            }
            let instance = master.next;
            master.next = instance.next();
            let id = BatchId {
                ballot: master.ballot,
                instance,
            };
            let mut entries = Vec::new();
            let mut submits = Vec::new();
            let mut bytes = 0;
            while let Some((_, entry)) = self.queue.front() {
                if entries.len() == self.config.batch_values_max
                    || (!entries.is_empty() && bytes + entry.value.len() > self.config.batch_bytes_max)
                {
                    break;
                }
                let (id, entry) = self.queue.pop_front().expect("front exists");
                bytes += entry.value.len();
                entries.push(entry);
                submits.push(id);
            }
            self.queue_bytes -= bytes;
            let batch = Batch::new(id, entries);
            self.pending.insert(
                instance,
                PendingBatch {
                    batch: batch.clone(),
                    submits,
                },
            );
            self.propose(now, instance, batch);
        }
    }

    fn on_accepted(&mut self, now: Time, from: NodeId, ballot: Ballot, instance: Instance) {
        let Some(bit) = self.member_bit(from) else { return };
        let quorum = self.quorum;
        let Role::Master(master) = &mut self.role else { return };
        if master.ballot != ballot {
            return;
        }
        let Some(inflight) = master.inflight.get_mut(&instance) else {
            return;
        };
        inflight.acks |= bit;
        if (inflight.acks.count_ones() as usize) < quorum {
            return;
        }
        let inflight = master.inflight.remove(&instance).expect("present");
        if instance > self.chosen_through {
            self.log.insert(instance, Slot::Chosen { batch: inflight.batch });
        }
        let before = self.chosen_through;
        self.deliver_chosen();
        if self.chosen_through > before {
            self.propose_queued(now);
            let drained = match &self.role {
                Role::Master(master) => master.inflight.is_empty(),
                _ => false,
            };
            if drained {
                // No accept is coming to carry the commit point: send it now.
                self.send_commit(now);
            }
        }
    }

    fn send_commit(&mut self, now: Time) {
        let Role::Master(master) = &mut self.role else { return };
        master.commit_sent_at = now;
        let message = Message::Commit {
            ballot: master.ballot,
            chosen_through: self.chosen_through,
            proposed_through: master.next.prev(),
        };
        self.broadcast_others(message);
    }

    fn on_refuse(&mut self, now: Time, from: NodeId, ballot: Ballot, promised: Ballot, reason: RefuseReason) {
        let Some(bit) = self.member_bit(from) else { return };
        let members = self.config.members.len();
        let quorum = self.quorum;
        match &mut self.role {
            Role::Candidate(candidate) if candidate.ballot == ballot => {
                candidate.refused |= bit;
                if candidate.refused.count_ones() as usize > members - quorum {
                    // Try again later with a ballot above the one that beat us.
                    self.role = Role::Follower;
                    let backoff = self.rng.duration_below(self.config.backoff_max);
                    self.lease_proposer.next_attempt_at = now + backoff;
                }
            }
            Role::Master(master)
                if master.ballot == ballot && reason == RefuseReason::Promised && promised > ballot =>
            {
                self.step_down(now);
            }
            _ => {}
        }
    }

    fn step_down(&mut self, now: Time) {
        if matches!(self.role, Role::Follower) {
            return;
        }
        self.role = Role::Follower;
        self.master_hint = None;
        self.last_master_contact = now;
        self.lease_proposer.drop_lease();
        let backoff = self.rng.duration_below(self.config.backoff_max);
        self.lease_proposer.next_attempt_at = now + self.config.election_timeout + backoff;
        // Values never proposed: a definite no.
        while let Some((id, entry)) = self.queue.pop_front() {
            self.ready.outcomes.push(SubmitOutcome {
                id,
                outcome: Outcome::Rejected(Rejected {
                    reason: RejectReason::NotMaster { master: None },
                    value: entry.value,
                }),
            });
        }
        self.queue_bytes = 0;
        // Proposed values stay pending: whether they were chosen is learned later.
    }

    fn tick_role(&mut self, now: Time) {
        let retransmit = self.config.retransmit_interval;
        if matches!(&self.role, Role::Master(master) if !master.unresolved.is_empty() && now >= master.unresolved_retry_at)
        {
            // Phase 1 ended with instances whose answers held no good copy of
            // the deciding value; a replica that did not answer then (its
            // promise lost, or it was down) may hold one, and it would refuse
            // a second prepare at this ballot. Phase 1 again, at a higher
            // ballot, asks everyone. If every copy is bad this repeats, every
            // `election_timeout`, and the instance stays unresolved.
            self.become_candidate(now);
            return;
        }
        match &mut self.role {
            Role::Follower => {
                if self.is_voter()
                    && self.lease_proposer.is_held(now)
                    && now >= self.lease_proposer.next_attempt_at
                    && self.catchup_sent.is_none()
                    && self.chosen_through >= self.commit_hint
                {
                    self.become_candidate(now);
                }
            }
            Role::Candidate(candidate) => {
                if now >= candidate.started_at + retransmit * 2 {
                    if candidate.done.count_ones() as usize >= self.quorum && candidate.lagging_behind.is_none() {
                        let (values, unresolved) = self.phase1_values();
                        self.become_master(now, values, unresolved);
                    } else {
                        self.become_candidate(now);
                    }
                }
            }
            Role::Master(master) => {
                let mut resend = Vec::new();
                for (instance, inflight) in master.inflight.iter_mut() {
                    if now >= inflight.sent_at + retransmit {
                        inflight.sent_at = now;
                        resend.push((*instance, inflight.batch.clone(), inflight.acks));
                    }
                }
                let ballot = master.ballot;
                let heartbeat_due = now >= master.commit_sent_at + self.config.heartbeat_interval;
                for (instance, batch, acks) in resend {
                    for index in 0..self.config.members.len() {
                        let to = self.config.members[index];
                        if acks & (1 << index) == 0 {
                            let chosen_through = self.chosen_through;
                            self.send(
                                to,
                                Message::Accept {
                                    ballot,
                                    instance,
                                    batch: batch.clone(),
                                    chosen_through,
                                },
                            );
                        }
                    }
                }
                if heartbeat_due {
                    self.send_commit(now);
                }
            }
        }
    }
}

enum Decision {
    Value(Batch),
    Free,
    Unresolved,
}

/// Protocol-aware recovery of one instance from a set of promises (`replied`
/// of them, at least a quorum). Paxos needs the highest-ballot value among any
/// quorum of answers; a faulty copy is an answer whose value is unknown.
fn decide_instance(reports: &[&PromiseEntry], replied: usize, quorum: usize) -> Decision {
    let mut best: Option<(Ballot, &Batch)> = None;
    let mut faulty_count = 0;
    let mut faulty_best: Option<Ballot> = None;
    let mut faulty_unknown = false;
    for report in reports {
        match report {
            PromiseEntry::Chosen { batch, .. } => return Decision::Value(batch.clone()),
            PromiseEntry::Accepted { ballot, batch, .. } => {
                if best.is_none_or(|(current, _)| *ballot > current) {
                    best = Some((*ballot, batch));
                }
            }
            PromiseEntry::Faulty { ballot, .. } => {
                faulty_count += 1;
                match ballot {
                    Some(ballot) => faulty_best = faulty_best.max(Some(*ballot)),
                    None => faulty_unknown = true,
                }
            }
        }
    }
    // The answers without a faulty copy form a quorum on their own: classic rule.
    if replied - faulty_count >= quorum {
        return match best {
            Some((_, batch)) => Decision::Value(batch.clone()),
            None => Decision::Free,
        };
    }
    // Otherwise the faulty copies' ballots (kept apart from the values) tell
    // whether a good copy of the highest-ballot value was seen.
    if faulty_unknown {
        return Decision::Unresolved;
    }
    match (best, faulty_best) {
        (Some((ballot, batch)), Some(faulty)) if ballot >= faulty => Decision::Value(batch.clone()),
        _ => Decision::Unresolved,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::output::Meta;

    fn acceptor(bugs: PlantedBugs) -> Replica {
        let members = vec![NodeId(1), NodeId(2), NodeId(3)];
        let durable = DurableState {
            meta: Meta {
                promised: Ballot::new(1, 1, NodeId(2)),
                incarnation: 1,
                voting: Voting::Voter,
            },
            ..DurableState::default()
        };
        let mut replica = Replica::restart(Config::new(NodeId(1), members), durable, Time::ZERO, 7);
        replica.plant_bugs(bugs);
        replica.take_ready();
        replica
    }

    #[test]
    fn slots_below_a_lost_snapshot_are_not_taken_as_chosen() {
        let members = vec![NodeId(1), NodeId(2), NodeId(3)];
        let ballot = Ballot::new(1, 1, NodeId(2));
        let accepted = |instance: u64| {
            (
                Instance(instance),
                StoredSlot::Accepted {
                    ballot,
                    batch: batch(ballot, instance),
                },
            )
        };
        let durable = DurableState {
            meta: Meta {
                promised: ballot,
                incarnation: 1,
                voting: Voting::Voter,
            },
            slots: vec![accepted(5), accepted(11)],
            chosen_through: Instance(12),
            snapshot_lost_through: Instance(10),
            ..DurableState::default()
        };
        let replica = Replica::restart(Config::new(NodeId(1), members), durable, Time::ZERO, 7);
        assert_eq!(replica.chosen_value(Instance(5)), None, "kept as an acceptance only");
        assert_eq!(replica.chosen_value(Instance(11)), Some(&batch(ballot, 11)));
    }

    #[test]
    fn an_accept_for_an_instance_only_in_the_snapshot_is_answered_with_it() {
        let members = vec![NodeId(1), NodeId(2), NodeId(3)];
        let ballot = Ballot::new(2, 1, NodeId(2));
        let durable = DurableState {
            meta: Meta {
                promised: ballot,
                incarnation: 1,
                voting: Voting::Voter,
            },
            snapshot_instance: Instance(10),
            chosen_through: Instance(10),
            ..DurableState::default()
        };
        let mut replica = Replica::restart(Config::new(NodeId(1), members), durable, Time::ZERO, 7);
        replica.take_ready();
        let accept = Message::Accept {
            ballot,
            instance: Instance(5),
            batch: batch(ballot, 5),
            chosen_through: Instance(4),
        };
        replica.step(Time::ZERO, NodeId(2), accept);
        let ready = replica.take_ready();
        assert!(
            ready.messages.iter().any(|envelope| envelope.to == NodeId(2)
                && envelope.message
                    == Message::SnapshotNeeded {
                        snapshot_instance: Instance(10)
                    }),
            "{:?}",
            ready.messages
        );
    }

    fn batch(ballot: Ballot, instance: u64) -> Batch {
        Batch::noop(BatchId {
            ballot,
            instance: Instance(instance),
        })
    }

    /// Past the restart silence, so prepares are answered.
    const LATER: Time = Time(10_000_000_000);

    #[test]
    fn acceptor_keeps_both_promises() {
        let mut replica = acceptor(PlantedBugs::default());
        let low = Ballot::new(1, 1, NodeId(3));
        let high = Ballot::new(2, 1, NodeId(2));
        replica.step(
            LATER,
            NodeId(2),
            Message::Prepare {
                ballot: high,
                from: Instance(1),
            },
        );
        let ready = replica.take_ready();
        assert_eq!(
            ready.persist[0],
            Persist::Meta(replica.meta()),
            "the promise is persisted"
        );
        assert!(matches!(ready.messages[0].message, Message::Promise { ballot, .. } if ballot == high));
        // No promise for a ballot <= the promise, no accept for a ballot < it.
        replica.step(
            LATER,
            NodeId(3),
            Message::Prepare {
                ballot: high,
                from: Instance(1),
            },
        );
        assert!(matches!(
            replica.take_ready().messages[0].message,
            Message::Refuse { .. }
        ));
        let accept = Message::Accept {
            ballot: low,
            instance: Instance(1),
            batch: batch(low, 1),
            chosen_through: Instance::ZERO,
        };
        replica.step(LATER, NodeId(3), accept.clone());
        let ready = replica.take_ready();
        assert!(ready.persist.is_empty());
        assert!(matches!(
            ready.messages[0].message,
            Message::Refuse {
                reason: RefuseReason::Promised,
                ..
            }
        ));
        // The planted bug accepts it: this is what the simulator must catch.
        let mut buggy = acceptor(PlantedBugs {
            accept_lower_ballot: true,
            ..PlantedBugs::default()
        });
        buggy.step(
            LATER,
            NodeId(2),
            Message::Prepare {
                ballot: high,
                from: Instance(1),
            },
        );
        buggy.take_ready();
        buggy.step(LATER, NodeId(3), accept);
        assert!(matches!(
            buggy.take_ready().messages[0].message,
            Message::Accepted { .. }
        ));
    }

    #[test]
    fn recovery_rule_uses_faulty_ballots() {
        let b1 = Ballot::new(1, 1, NodeId(1));
        let b2 = Ballot::new(2, 1, NodeId(2));
        let good = PromiseEntry::Accepted {
            instance: Instance(1),
            ballot: b1,
            batch: batch(b1, 1),
        };
        let faulty_higher = PromiseEntry::Faulty {
            instance: Instance(1),
            ballot: Some(b2),
        };
        let faulty_same = PromiseEntry::Faulty {
            instance: Instance(1),
            ballot: Some(b1),
        };
        // Two good answers of three: the classic rule.
        assert!(matches!(decide_instance(&[&good], 2, 2), Decision::Value(_)));
        assert!(matches!(decide_instance(&[], 2, 2), Decision::Free));
        // One good, one faulty of the same ballot: the good copy is that value.
        assert!(matches!(
            decide_instance(&[&good, &faulty_same], 2, 2),
            Decision::Value(_)
        ));
        // The faulty copy has the higher ballot: its value may be the chosen one.
        assert!(matches!(
            decide_instance(&[&good, &faulty_higher], 2, 2),
            Decision::Unresolved
        ));
        // Every copy bad: never invent a value.
        assert!(matches!(
            decide_instance(&[&faulty_same, &faulty_same], 2, 2),
            Decision::Unresolved
        ));
    }
}
