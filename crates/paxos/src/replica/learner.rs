//! The learner (Lamport, "Paxos Made Simple", 2001): learns which instances are
//! chosen, from the master's commit point or from a peer's log (catch-up), and
//! delivers them to the host.
//!
//! Rules kept: the chosen prefix (`chosen_through`) only grows; values are
//! delivered in instance order, each exactly once; an accepted value is taken
//! as chosen only when the master's commit point covers it and it was accepted
//! at that master's ballot; a commit point is learned from any ballot (a value
//! once chosen stays chosen), but only a current master is followed as master.

use super::{Replica, Role, Slot};
use crate::message::{Batch, Message};
use crate::output::{Committed, Outcome, Persist, RejectReason, Rejected, SubmitOutcome, Voting};
use crate::{Ballot, Instance, NodeId, Time};

impl Replica {
    pub(super) fn on_commit(
        &mut self,
        now: Time,
        from: NodeId,
        ballot: Ballot,
        chosen_through: Instance,
        proposed_through: Instance,
    ) {
        if self.meta.voting == Voting::AwaitMaster && ballot > self.meta.promised {
            self.learn_until(proposed_through);
        } else if self.meta.voting == Voting::AwaitMaster && ballot == self.meta.promised {
            // A master at the very ballot this replica may have promised may
            // also have had it accept instances beyond what this heartbeat
            // says, if the heartbeat was sent before the disk was lost and
            // delivered after: ask the master now (see `on_proposed_reply`).
            let incarnation = self.meta.incarnation;
            self.send(from, Message::ProposedQuery { incarnation });
        }
        self.learn_commit(now, from, ballot, chosen_through);
        self.check_learned_enough();
    }

    /// `from`, master at `ballot`, says every instance up to `through` is chosen.
    pub(super) fn learn_commit(&mut self, now: Time, from: NodeId, ballot: Ballot, through: Instance) {
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
    pub(super) fn deliver_chosen(&mut self) {
        let before = self.chosen_through;
        while let Some(Slot::Chosen { batch }) = self.log.get(&self.chosen_through.next()) {
            let instance = self.chosen_through.next();
            let batch = batch.clone();
            self.advance_chosen_through(instance);
            self.deliver(instance, batch);
        }
        if self.chosen_through > before {
            self.ready.persist.push(Persist::ChosenThrough {
                through: self.chosen_through,
            });
        }
    }

    fn deliver(&mut self, instance: Instance, batch: Batch) {
        // Delivered in instance order: the host's applied index is one behind.
        assert_eq!(instance, self.chosen_through, "delivered out of order");
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

    /// A replica that lost its disk learns, without voting, every instance
    /// up to `proposed_through` of a master it may trust (docs/protocol.md,
    /// "Safe rejoin").
    fn learn_until(&mut self, proposed_through: Instance) {
        self.meta.voting = Voting::LearnUntil(proposed_through);
        self.persist_meta();
    }

    /// The master answers a rejoining replica what it has proposed so far.
    pub(super) fn on_proposed_query(&mut self, from: NodeId, incarnation: u64) {
        let Role::Master(master) = &self.role else { return };
        let reply = Message::ProposedReply {
            ballot: master.ballot,
            proposed_through: master.next.prev(),
            incarnation,
        };
        self.send(from, reply);
    }

    /// The answer to a question this incarnation asked, so given after this
    /// replica lost its disk: every instance the master proposed before the
    /// loss (and so every one this replica may have accepted from it) is at
    /// or below `proposed_through`.
    pub(super) fn on_proposed_reply(&mut self, ballot: Ballot, proposed_through: Instance, incarnation: u64) {
        if self.meta.voting == Voting::AwaitMaster
            && ballot >= self.meta.promised
            && incarnation == self.meta.incarnation
        {
            self.learn_until(proposed_through);
            self.check_learned_enough();
        }
    }

    pub(super) fn check_learned_enough(&mut self) {
        if let Voting::LearnUntil(target) = self.meta.voting {
            if self.chosen_through >= target {
                self.meta.voting = Voting::Voter;
                self.persist_meta();
            }
        }
    }

    pub(super) fn request_catchup(&mut self, now: Time, preferred: Option<NodeId>) {
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

    pub(super) fn tick_catchup(&mut self, now: Time) {
        if self.chosen_through < self.commit_hint {
            self.request_catchup(now, self.master_hint);
        }
    }

    pub(super) fn on_catchup_request(&mut self, from: NodeId, start: Instance, to: Instance) {
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

    pub(super) fn on_catchup_reply(
        &mut self,
        now: Time,
        from: NodeId,
        entries: Vec<(Instance, Batch)>,
        through: Instance,
    ) {
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
}
