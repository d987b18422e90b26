//! The Multi-Paxos acceptor (Lamport, "Paxos Made Simple", 2001; one acceptor
//! for every instance at once, as in "Paxos Made Live").
//!
//! Rules kept: a promise never goes down, and is persisted before the promise
//! message that reveals it; an accept below the promise is refused; an
//! acceptance is persisted before the `Accepted` that reports it; a prepare is
//! refused while this acceptor is silent after a restart or while another
//! replica holds the master lease here; an already chosen instance is vouched
//! for only with its chosen batch.

use super::{Replica, Slot};
use crate::message::{Batch, BatchId, Message, PromiseEntry, RefuseReason};
use crate::output::Persist;
use crate::{Ballot, Instance, NodeId, Time};

impl Replica {
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

    pub(super) fn on_prepare(&mut self, now: Time, from: NodeId, ballot: Ballot, start: Instance) {
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

    pub(super) fn on_accept(
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
}
