//! The replica's side of PaxosLease (Trencseni, Gazsó, Reinhardt, 2009): when
//! to try for the master lease, when to renew it, and the randomized back-off
//! after a failed attempt. The lease's own acceptor and proposer live in
//! `crate::master_lease`; this file turns their events into roles.
//!
//! Rules kept: only a voter that is past its restart silence starts an attempt;
//! a master whose lease is no longer held steps down before doing anything else;
//! a failed attempt waits a random time that doubles with each failure (up to
//! eight times `backoff_max`), so duelling proposers drift apart.

use std::time::Duration;

use super::{Handover, Replica, Role};
use crate::master_lease::LeaseEvent;
use crate::message::Message;
use crate::{Ballot, Instance, NodeId, Time};

impl Replica {
    pub(super) fn on_lease_event(&mut self, now: Time, event: LeaseEvent) {
        match event {
            LeaseEvent::None => {}
            LeaseEvent::Propose { ballot } => {
                let duration_nanos = self.config.lease_duration.as_nanos() as u64;
                self.broadcast(Message::LeasePropose { ballot, duration_nanos });
            }
            LeaseEvent::Acquired { .. } => {
                self.handover = None;
                if matches!(self.role, Role::Follower) {
                    self.become_candidate(now);
                }
            }
            LeaseEvent::Failed => self.back_off(now, Duration::ZERO),
            LeaseEvent::HeldElsewhere if self.handover.is_some() => {
                // Most likely the old master's grant, whose release has not
                // reached every acceptor yet: try again soon.
                self.back_off(now, Duration::ZERO);
            }
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

    /// A master stepped down for this replica (etcd's MoveLeader): try for
    /// the lease on the next tick instead of after the election timeout,
    /// once every instance the old master had chosen is learned here. Only
    /// liveness rests on this: a stale or forged handover at worst starts an
    /// attempt that the acceptors refuse while another master's grant runs.
    pub(super) fn on_handover(&mut self, now: Time, from: NodeId, ballot: Ballot, through: Instance) {
        // The handover is a release too (the old master sends it after its
        // releases, but a network may reorder them), so that this replica's
        // own acceptor does not hold the old grant against its own attempt.
        self.lease_acceptor.release(from, ballot);
        if !self.is_voter() || !matches!(self.role, Role::Follower) {
            return;
        }
        self.commit_hint = self.commit_hint.max(through);
        self.handover = Some(Handover {
            through,
            until: now + self.config.lease_duration,
        });
        self.lease_proposer.next_attempt_at = self.lease_proposer.next_attempt_at.min(now);
    }

    pub(super) fn tick_lease(&mut self, now: Time) {
        // An attempt is worth waiting for while it could still leave a useful lease.
        let attempt_timeout = self.config.lease_holder_duration() / 2;
        if self.lease_proposer.expire_attempt(now, attempt_timeout) {
            self.back_off(now, Duration::ZERO);
        }
        if !self.is_voter() || self.lease_acceptor.is_silent(now) {
            return;
        }
        if !self.lease_proposer.is_held(now) && !matches!(self.role, Role::Follower) && !self.bugs.master_outlives_lease
        {
            self.step_down(now);
        }
        if self.handover.is_some_and(|handover| now >= handover.until) {
            self.handover = None;
        }
        if !self.lease_proposer.is_idle() || now < self.lease_proposer.next_attempt_at {
            return;
        }
        // Handed the role: no election timeout to wait out, only the
        // instances the old master had chosen to learn.
        let handed_over = self
            .handover
            .is_some_and(|handover| self.chosen_through >= handover.through && matches!(self.role, Role::Follower));
        let held = self.lease_proposer.is_held(now);
        let renew = held && self.lease_proposer.renewal_due(now, self.config.lease_renew_interval);
        let acquire = !held && (handed_over || now >= self.last_master_contact + self.config.election_timeout);
        if renew || acquire {
            let ballot = self.lease_proposer.start(now, self.config.node, self.meta.incarnation);
            self.broadcast(Message::LeasePrepare { ballot });
        }
    }
}
