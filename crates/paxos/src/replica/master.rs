//! The Multi-Paxos proposer (Lamport, "Paxos Made Simple", 2001, section 3;
//! "Paxos Made Live", 2007): phase 1 as candidate over every instance from the
//! commit point on, then phase 2 as master, one instance per batch, pipelined.
//!
//! Rules kept: a candidate decides an instance only from a quorum of complete
//! answers (`decide_instance`): a chosen value wins, else the highest-ballot
//! value, else a no-op; a value hidden behind a faulty copy is never invented
//! (the instance stays unresolved, and phase 1 runs again); only the holder of
//! the master lease proposes; a value counts as chosen once a quorum accepted it
//! at the master's ballot; a master that meets a higher promise steps down.

use std::collections::BTreeMap;

use super::{
    CandidateState, HandingOver, Inflight, MasterState, PendingBatch, Replica, Role, Slot, Transfer, TransferError,
};
use crate::message::{Batch, BatchId, Message, PromiseEntry, RefuseReason};
use crate::output::{Outcome, RejectReason, Rejected, SubmitOutcome};
use crate::{Ballot, Instance, NodeId, Time};

/// What phase 1 decided: for every instance from the candidate's `from` on,
/// the batch to propose (`None`: a no-op fills the gap), and the instances no
/// answer could decide.
type Phase1Values = (BTreeMap<Instance, Option<Batch>>, Vec<Instance>);

impl Replica {
    pub(super) fn become_candidate(&mut self, now: Time) {
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

    #[allow(
        clippy::too_many_arguments,
        reason = "the fields of Message::Promise, unpacked like every other handler's"
    )]
    pub(super) fn on_promise(
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
    fn phase1_values(&self) -> Phase1Values {
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
            match decide_instance(reports, replied, self.quorum, self.bugs.phase1_lowest_ballot) {
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
            transfer: None,
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
    pub(super) fn propose_queued(&mut self, now: Time) {
        if self.is_master() && !self.lease_proposer.is_held(now) {
            // Only the lease holder proposes: a master that was paused past its
            // lease finds out here, before it sends anything.
            self.step_down(now);
            return;
        }
        loop {
            let Role::Master(master) = &mut self.role else { return };
            if master.transfer.is_some()
                || self.queue.is_empty()
                || master.next.0 > self.chosen_through.0 + self.config.window_instances_max
            {
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

    pub(super) fn on_accepted(&mut self, now: Time, from: NodeId, ballot: Ballot, instance: Instance) {
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
            self.hand_over_when_drained(now);
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

    pub(super) fn on_refuse(
        &mut self,
        now: Time,
        from: NodeId,
        ballot: Ballot,
        promised: Ballot,
        reason: RefuseReason,
    ) {
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

    pub(super) fn step_down(&mut self, now: Time) {
        if matches!(self.role, Role::Follower) {
            return;
        }
        self.role = Role::Follower;
        self.master_hint = None;
        self.last_master_contact = now;
        self.lease_proposer.drop_lease();
        let backoff = self.rng.duration_below(self.config.backoff_max);
        self.lease_proposer.next_attempt_at = now + self.config.election_timeout + backoff;
        self.reject_queue(None);
        // Proposed values stay pending: whether they were chosen is learned later.
    }

    /// Values never proposed: a definite no, naming the master to ask instead.
    fn reject_queue(&mut self, master: Option<NodeId>) {
        while let Some((id, entry)) = self.queue.pop_front() {
            self.ready.outcomes.push(SubmitOutcome {
                id,
                outcome: Outcome::Rejected(Rejected {
                    reason: RejectReason::NotMaster { master },
                    value: entry.value,
                }),
            });
        }
        self.queue_bytes = 0;
    }

    /// Starts handing the master's role to `to` (etcd's MoveLeader): no new
    /// values are proposed from now on, and once every instance in flight is
    /// chosen this master drops its lease, tells the acceptors so
    /// ([`Message::LeaseRelease`]), steps down and tells `to` to take the
    /// lease at once ([`Message::MasterHandover`]). Values submitted meanwhile
    /// are refused as `NotMaster` naming `to`. If the instances in flight are
    /// not all chosen within one lease duration, the handover is given up and
    /// this master goes on. Asking again replaces the target; asking for this
    /// replica itself is a no-op.
    ///
    /// Safety does not rest on `to` being caught up: it runs phase 1 like any
    /// new master. `to` waits until it has learned every instance this master
    /// had chosen before it tries, so that it takes over without a catch-up
    /// gap; the host learns the outcome by watching who is master.
    pub fn transfer_master(&mut self, now: Time, to: NodeId) -> Result<(), TransferError> {
        if self.member_bit(to).is_none() {
            return Err(TransferError::NotAMember(to));
        }
        if !self.lease_proposer.is_held(now) {
            return Err(TransferError::NotMaster);
        }
        let until = now + self.config.lease_duration;
        let Role::Master(master) = &mut self.role else {
            return Err(TransferError::NotMaster);
        };
        if to == self.config.node {
            return Ok(());
        }
        master.transfer = Some(Transfer { to, until });
        self.hand_over_when_drained(now);
        self.drain_inbox(now);
        Ok(())
    }

    /// The second half of a handover: once nothing is in flight, release the
    /// lease and step down for the target. Gives the handover up when its
    /// time has run out first.
    pub(super) fn hand_over_when_drained(&mut self, now: Time) {
        let Role::Master(master) = &mut self.role else { return };
        let Some(transfer) = master.transfer else { return };
        if now >= transfer.until {
            master.transfer = None;
            self.propose_queued(now);
            return;
        }
        if !master.inflight.is_empty() {
            return;
        }
        let through = self.chosen_through;
        self.reject_queue(Some(transfer.to));
        // Belief in the lease goes first: from here on this replica
        // believes in no grant at or below `last`, which is what makes the
        // release safe (see `LeaseAcceptor::release`).
        // The master hint stays empty until `to` is heard from as master,
        // so that a host watching it sees the handover done, not asked for.
        self.step_down(now);
        let Some(last) = self.lease_proposer.last_ballot() else {
            return;
        };
        self.lease_acceptor.release(self.config.node, last);
        self.handing_over = Some(HandingOver {
            to: transfer.to,
            ballot: last,
            through,
            until: now + self.config.lease_duration,
            sent_at: now,
        });
        self.send_handover();
    }

    /// Sends the release to every other member and the handover to its
    /// target; repeated by [`Replica::tick_handing_over`].
    fn send_handover(&mut self) {
        let Some(handing_over) = self.handing_over else { return };
        self.broadcast_others(Message::LeaseRelease {
            ballot: handing_over.ballot,
        });
        self.send(
            handing_over.to,
            Message::MasterHandover {
                ballot: handing_over.ballot,
                through: handing_over.through,
            },
        );
    }

    /// Repeats a handover's messages, which a network may lose, every
    /// retransmit interval until a master is heard from (the target or
    /// another) or one lease duration has passed.
    pub(super) fn tick_handing_over(&mut self, now: Time) {
        let Some(handing_over) = &mut self.handing_over else {
            return;
        };
        if self.master_hint.is_some() || !matches!(self.role, Role::Follower) || now >= handing_over.until {
            self.handing_over = None;
            return;
        }
        if now >= handing_over.sent_at + self.config.retransmit_interval {
            handing_over.sent_at = now;
            self.send_handover();
        }
    }

    pub(super) fn tick_role(&mut self, now: Time) {
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
        self.tick_handing_over(now);
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
            Role::Master(master) if master.transfer.is_some() => {
                self.hand_over_when_drained(now);
                if self.is_master() {
                    self.tick_master(now);
                }
            }
            Role::Master(_) => self.tick_master(now),
        }
    }

    /// Retransmits accepts not yet acknowledged, and sends the heartbeat.
    fn tick_master(&mut self, now: Time) {
        let retransmit = self.config.retransmit_interval;
        let Role::Master(master) = &mut self.role else { return };
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

pub(super) enum Decision {
    Value(Batch),
    Free,
    Unresolved,
}

/// Protocol-aware recovery of one instance from a set of promises (`replied`
/// of them, at least a quorum). Paxos needs the highest-ballot value among any
/// quorum of answers; a faulty copy is an answer whose value is unknown.
pub(super) fn decide_instance(
    reports: &[&PromiseEntry],
    replied: usize,
    quorum: usize,
    planted_lowest_ballot: bool,
) -> Decision {
    let mut best: Option<(Ballot, &Batch)> = None;
    let mut faulty_count = 0;
    let mut faulty_best: Option<Ballot> = None;
    let mut faulty_unknown = false;
    for report in reports {
        match report {
            PromiseEntry::Chosen { batch, .. } => return Decision::Value(batch.clone()),
            PromiseEntry::Accepted { ballot, batch, .. } => {
                let better = |current: Ballot| {
                    if planted_lowest_ballot {
                        *ballot < current
                    } else {
                        *ballot > current
                    }
                };
                if best.is_none_or(|(current, _)| better(current)) {
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
