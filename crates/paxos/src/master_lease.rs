//! PaxosLease (Trencseni, Gazsó, Reinhardt, 2009): a diskless master lease.
//!
//! Only durations are used, never clock readings from another machine. The
//! proposer starts its timer *before* it sends its prepare; an acceptor starts its
//! own timer when it accepts, which is later. So while clock rates stay within the
//! configured drift bound, every acceptor's timer outlives the proposer's, and no
//! two proposers can each believe they hold the lease at the same instant.

use std::time::Duration;

use crate::message::Message;
use crate::{Ballot, NodeId, Time};

/// The acceptor half. Nothing here is persisted: a restarted acceptor instead
/// stays silent until any lease it may have granted before has run out.
#[derive(Debug)]
pub(crate) struct LeaseAcceptor {
    /// Planted bug (simulator tests only): accept proposals this acceptor
    /// promised to refuse (below its promise, or while another owner's grant
    /// runs).
    pub(crate) accept_lower_ballot: bool,
    /// Planted bug (simulator tests only): a release forgets its sender's
    /// grant whatever ballot the grant was made at.
    pub(crate) release_any_grant: bool,
    promised: Ballot,
    accepted: Option<Grant>,
    silent_until: Time,
}

#[derive(Debug, Clone, Copy)]
struct Grant {
    owner: NodeId,
    /// The ballot it was granted at: a release covers it only at or below
    /// the released ballot, in the same incarnation.
    ballot: Ballot,
    expires_at: Time,
}

impl LeaseAcceptor {
    pub(crate) fn new(silent_until: Time) -> LeaseAcceptor {
        LeaseAcceptor {
            accept_lower_ballot: false,
            release_any_grant: false,
            promised: Ballot::ZERO,
            accepted: None,
            silent_until,
        }
    }

    pub(crate) fn is_silent(&self, now: Time) -> bool {
        now < self.silent_until
    }

    /// The owner of a lease whose timer still runs here.
    pub(crate) fn holder(&self, now: Time) -> Option<NodeId> {
        self.accepted
            .filter(|grant| now < grant.expires_at)
            .map(|grant| grant.owner)
    }

    /// Forgets a grant to `owner`, called by `owner`'s own proposer when its
    /// attempt failed and it holds no lease: nobody believes in that grant, and
    /// left in place it would block every other proposer for a lease time.
    /// Grants to any other owner are never released early.
    pub(crate) fn release_own(&mut self, owner: NodeId) {
        if self.accepted.is_some_and(|grant| grant.owner == owner) {
            self.accepted = None;
        }
    }

    /// Forgets a grant to `owner` at `ballot` or below in `ballot`'s
    /// incarnation, on `owner`'s own word ([`Message::LeaseRelease`]). Safe
    /// because `owner` dropped its belief in every such grant before it sent
    /// the release: each later attempt of that incarnation uses a higher
    /// round, and a restarted owner a higher incarnation, so a release that
    /// arrives late never takes away a grant its owner believes in.
    pub(crate) fn release(&mut self, owner: NodeId, ballot: Ballot) {
        let covered = |grant: &Grant| grant.ballot.incarnation == ballot.incarnation && grant.ballot <= ballot;
        if self
            .accepted
            .is_some_and(|grant| grant.owner == owner && (covered(&grant) || self.release_any_grant))
        {
            self.accepted = None;
        }
    }

    /// Answers a prepare; `None` while silent.
    pub(crate) fn on_prepare(&mut self, now: Time, ballot: Ballot) -> Option<Message> {
        if self.is_silent(now) {
            return None;
        }
        if ballot <= self.promised {
            return Some(Message::LeasePrepareReply {
                ballot,
                granted: false,
                promised: self.promised,
                open_owner: None,
            });
        }
        self.promised = ballot;
        Some(Message::LeasePrepareReply {
            ballot,
            granted: true,
            promised: ballot,
            open_owner: self.holder(now),
        })
    }

    /// Answers a propose; `None` while silent. `duration` is capped at the
    /// acceptor's own configured lease length.
    pub(crate) fn on_propose(
        &mut self,
        now: Time,
        from: NodeId,
        ballot: Ballot,
        duration: Duration,
        duration_max: Duration,
    ) -> Option<Message> {
        if self.is_silent(now) {
            return None;
        }
        // A grant whose timer still runs here is never replaced by another
        // owner's. Safety rests on every holder's majority keeping its grant
        // until the holder's lease is over, so that any later prepare
        // majority meets it; the ballot check alone does not ensure that
        // once an acceptor has restarted (its promises are not on disk): a
        // propose delayed from before the restart, at a ballot above
        // everything the new incarnation promised, would overwrite the grant
        // of the lease held now. A proposer that legitimately follows an
        // expired holder never needs this: its own prepare would have been
        // answered with the open grant.
        let open_for_other = self.holder(now).is_some_and(|owner| owner != from);
        if (ballot < self.promised || open_for_other) && !self.accept_lower_ballot {
            return Some(Message::LeaseProposeReply {
                ballot,
                granted: false,
                promised: self.promised,
            });
        }
        debug_assert_eq!(ballot.node, from, "a lease is proposed by its owner");
        self.promised = self.promised.max(ballot);
        self.accepted = Some(Grant {
            owner: from,
            ballot,
            expires_at: now + duration.min(duration_max),
        });
        Some(Message::LeaseProposeReply {
            ballot,
            granted: true,
            promised: self.promised,
        })
    }
}

/// Answers to one phase of an attempt, one bit per member.
#[derive(Debug, Default, Clone, Copy)]
pub(crate) struct Tally {
    granted: u64,
    refused: u64,
}

/// Where a phase stands after an answer.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum TallyResult {
    Pending,
    /// A quorum granted.
    Granted,
    /// So many refused that no quorum can grant.
    Refused,
}

impl Tally {
    pub(crate) fn record(&mut self, member_bit: u64, granted: bool, quorum: usize, members: usize) -> TallyResult {
        if granted {
            self.granted |= member_bit;
        } else {
            self.refused |= member_bit;
        }
        if self.granted.count_ones() as usize >= quorum {
            TallyResult::Granted
        } else if self.refused.count_ones() as usize > members - quorum {
            TallyResult::Refused
        } else {
            TallyResult::Pending
        }
    }
}

#[derive(Debug)]
pub(crate) enum Attempt {
    Idle,
    Preparing {
        ballot: Ballot,
        started_at: Time,
        tally: Tally,
        open_other: bool,
    },
    Proposing {
        ballot: Ballot,
        started_at: Time,
        tally: Tally,
    },
}

/// The proposer half: acquires and renews this replica's lease.
#[derive(Debug)]
pub(crate) struct LeaseProposer {
    pub(crate) attempt: Attempt,
    /// Highest lease round seen anywhere, so the next ballot outbids it.
    round_seen: u64,
    /// The lease this replica holds ends here, on its own clock.
    held_until: Option<Time>,
    /// When the held lease's attempt started; renewal is timed from it.
    held_since: Time,
    /// No acquisition attempt before this.
    pub(crate) next_attempt_at: Time,
    /// Attempts failed in a row; the random back-off doubles with each, up to 2^3.
    pub(crate) failures: u32,
    /// The ballot of the latest attempt started: every grant this proposer
    /// may have won in this incarnation is at or below it.
    last_ballot: Option<Ballot>,
}

/// What a reply did to the attempt.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum LeaseEvent {
    None,
    /// Send this propose to every member.
    Propose {
        ballot: Ballot,
    },
    /// The lease is held (newly or renewed).
    Acquired {
        was_held: bool,
    },
    /// The attempt failed; back off.
    Failed,
    /// Another replica holds the lease: wait for it to run out or be renewed.
    HeldElsewhere,
}

impl LeaseProposer {
    pub(crate) fn new(first_attempt_at: Time) -> LeaseProposer {
        LeaseProposer {
            attempt: Attempt::Idle,
            round_seen: 0,
            held_until: None,
            held_since: Time::ZERO,
            next_attempt_at: first_attempt_at,
            failures: 0,
            last_ballot: None,
        }
    }

    pub(crate) fn is_held(&self, now: Time) -> bool {
        self.held_until.is_some_and(|until| now < until)
    }

    pub(crate) fn held_until(&self) -> Option<Time> {
        self.held_until
    }

    pub(crate) fn is_idle(&self) -> bool {
        matches!(self.attempt, Attempt::Idle)
    }

    pub(crate) fn renewal_due(&self, now: Time, renew_interval: Duration) -> bool {
        self.is_held(now) && now >= self.held_since + renew_interval
    }

    pub(crate) fn observe_round(&mut self, round: u64) {
        self.round_seen = self.round_seen.max(round);
    }

    /// Starts an attempt; the caller sends `LeasePrepare` to every member.
    pub(crate) fn start(&mut self, now: Time, node: NodeId, incarnation: u64) -> Ballot {
        self.round_seen += 1;
        let ballot = Ballot::new(self.round_seen, incarnation, node);
        self.last_ballot = Some(ballot);
        self.attempt = Attempt::Preparing {
            ballot,
            started_at: now,
            tally: Tally::default(),
            open_other: false,
        };
        ballot
    }

    /// Gives up an attempt that got no answer in time.
    pub(crate) fn expire_attempt(&mut self, now: Time, timeout: Duration) -> bool {
        let started = match self.attempt {
            Attempt::Idle => return false,
            Attempt::Preparing { started_at, .. } | Attempt::Proposing { started_at, .. } => started_at,
        };
        if now >= started + timeout {
            self.attempt = Attempt::Idle;
            return true;
        }
        false
    }

    /// The ballot of the latest attempt started, if any.
    pub(crate) fn last_ballot(&self) -> Option<Ballot> {
        self.last_ballot
    }

    pub(crate) fn drop_lease(&mut self) {
        self.held_until = None;
        self.attempt = Attempt::Idle;
    }

    #[allow(
        clippy::too_many_arguments,
        reason = "one PaxosLease reply's fields and the replica's group facts (quorum, members) that the lease state does not own"
    )]
    pub(crate) fn on_prepare_reply(
        &mut self,
        node: NodeId,
        member_bit: u64,
        quorum: usize,
        members: usize,
        ballot: Ballot,
        granted_reply: bool,
        promised: Ballot,
        open_owner: Option<NodeId>,
    ) -> LeaseEvent {
        self.observe_round(promised.round);
        let Attempt::Preparing {
            ballot: current,
            tally,
            open_other,
            ..
        } = &mut self.attempt
        else {
            return LeaseEvent::None;
        };
        if *current != ballot {
            return LeaseEvent::None;
        }
        if granted_reply && open_owner.is_some_and(|owner| owner != node) {
            *open_other = true;
        }
        match tally.record(member_bit, granted_reply, quorum, members) {
            TallyResult::Pending => LeaseEvent::None,
            TallyResult::Refused => {
                self.attempt = Attempt::Idle;
                LeaseEvent::Failed
            }
            TallyResult::Granted if *open_other => {
                self.attempt = Attempt::Idle;
                LeaseEvent::HeldElsewhere
            }
            TallyResult::Granted => {
                let ballot = *current;
                let Attempt::Preparing { started_at, .. } = self.attempt else {
                    unreachable!("matched above")
                };
                self.attempt = Attempt::Proposing {
                    ballot,
                    started_at,
                    tally: Tally::default(),
                };
                LeaseEvent::Propose { ballot }
            }
        }
    }

    #[allow(
        clippy::too_many_arguments,
        reason = "one PaxosLease reply's fields and the replica's group facts (quorum, members) that the lease state does not own"
    )]
    pub(crate) fn on_propose_reply(
        &mut self,
        now: Time,
        member_bit: u64,
        quorum: usize,
        members: usize,
        holder_duration: Duration,
        ballot: Ballot,
        granted_reply: bool,
        promised: Ballot,
    ) -> LeaseEvent {
        self.observe_round(promised.round);
        let Attempt::Proposing {
            ballot: current,
            started_at,
            tally,
        } = &mut self.attempt
        else {
            return LeaseEvent::None;
        };
        if *current != ballot {
            return LeaseEvent::None;
        }
        let started = *started_at;
        match tally.record(member_bit, granted_reply, quorum, members) {
            TallyResult::Pending => LeaseEvent::None,
            TallyResult::Refused => {
                self.attempt = Attempt::Idle;
                LeaseEvent::Failed
            }
            TallyResult::Granted => {
                self.attempt = Attempt::Idle;
                let until = started + holder_duration;
                if now >= until {
                    return LeaseEvent::Failed;
                }
                let was_held = self.is_held(now);
                self.failures = 0;
                self.held_until = Some(until);
                self.held_since = started;
                LeaseEvent::Acquired { was_held }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn acceptor_refuses_lower_or_equal_prepare_and_reports_open_lease() {
        let mut acceptor = LeaseAcceptor::new(Time::ZERO);
        let b1 = Ballot::new(1, 1, NodeId(1));
        let b2 = Ballot::new(2, 1, NodeId(2));
        assert!(matches!(
            acceptor.on_prepare(Time(0), b1),
            Some(Message::LeasePrepareReply { granted: true, .. })
        ));
        let max = Duration::from_secs(10);
        acceptor.on_propose(Time(0), NodeId(1), b1, Duration::from_secs(1), max);
        assert_eq!(acceptor.holder(Time(10)), Some(NodeId(1)));
        assert!(matches!(
            acceptor.on_prepare(Time(10), b1),
            Some(Message::LeasePrepareReply { granted: false, .. })
        ));
        assert!(matches!(
            acceptor.on_prepare(Time(20), b2),
            Some(Message::LeasePrepareReply {
                granted: true,
                open_owner: Some(NodeId(1)),
                ..
            })
        ));
        // After the timer runs out the lease is no longer reported.
        assert_eq!(acceptor.holder(Time(2_000_000_000)), None);
    }

    #[test]
    fn an_open_grant_is_not_replaced_by_another_owner() {
        // A restarted acceptor (promise forgotten) grants node 3 a lease at a
        // low ballot; a propose node 2 sent before the restart, at a higher
        // ballot, arrives late. It must not take node 3's grant away.
        let mut acceptor = LeaseAcceptor::new(Time::ZERO);
        let max = Duration::from_secs(10);
        let low = Ballot::new(1, 3, NodeId(3));
        let stale = Ballot::new(5, 1, NodeId(2));
        acceptor.on_prepare(Time(0), low);
        acceptor.on_propose(Time(0), NodeId(3), low, Duration::from_secs(1), max);
        assert!(matches!(
            acceptor.on_propose(Time(10), NodeId(2), stale, Duration::from_secs(1), max),
            Some(Message::LeaseProposeReply { granted: false, .. })
        ));
        assert_eq!(acceptor.holder(Time(20)), Some(NodeId(3)));
        // Its owner renews it; once it has run out, node 2 may have it.
        let renewal = Ballot::new(6, 3, NodeId(3));
        assert!(matches!(
            acceptor.on_propose(Time(30), NodeId(3), renewal, Duration::from_secs(1), max),
            Some(Message::LeaseProposeReply { granted: true, .. })
        ));
        let later = Ballot::new(7, 1, NodeId(2));
        let after = Time(30 + 1_000_000_000);
        assert!(matches!(
            acceptor.on_propose(after, NodeId(2), later, Duration::from_secs(1), max),
            Some(Message::LeaseProposeReply { granted: true, .. })
        ));
        assert_eq!(acceptor.holder(after), Some(NodeId(2)));
    }

    #[test]
    fn a_release_forgets_only_the_grants_its_owner_gave_up() {
        let max = Duration::from_secs(10);
        let second = Duration::from_secs(1);
        let granted = |round: u64, incarnation: u64| {
            let mut acceptor = LeaseAcceptor::new(Time::ZERO);
            let ballot = Ballot::new(round, incarnation, NodeId(1));
            acceptor.on_prepare(Time(0), ballot);
            acceptor.on_propose(Time(0), NodeId(1), ballot, second, max);
            assert_eq!(acceptor.holder(Time(1)), Some(NodeId(1)));
            acceptor
        };
        // At or below the released ballot, same incarnation: forgotten.
        for round in [4, 5] {
            let mut acceptor = granted(round, 2);
            acceptor.release(NodeId(1), Ballot::new(5, 2, NodeId(1)));
            assert_eq!(acceptor.holder(Time(1)), None, "round {round}");
        }
        // A later attempt's grant, held-back release: kept.
        let mut acceptor = granted(6, 2);
        acceptor.release(NodeId(1), Ballot::new(5, 2, NodeId(1)));
        assert_eq!(acceptor.holder(Time(1)), Some(NodeId(1)));
        // The owner restarted (a new incarnation starts from low rounds): a
        // release from before the restart keeps the new grant.
        let mut acceptor = granted(1, 3);
        acceptor.release(NodeId(1), Ballot::new(5, 2, NodeId(1)));
        assert_eq!(acceptor.holder(Time(1)), Some(NodeId(1)));
        // Another member cannot release the owner's grant.
        let mut acceptor = granted(4, 2);
        acceptor.release(NodeId(2), Ballot::new(9, 2, NodeId(2)));
        assert_eq!(acceptor.holder(Time(1)), Some(NodeId(1)));
    }

    #[test]
    fn silent_acceptor_answers_nothing() {
        let mut acceptor = LeaseAcceptor::new(Time(100));
        assert!(acceptor.on_prepare(Time(50), Ballot::new(1, 1, NodeId(1))).is_none());
        assert!(acceptor.on_prepare(Time(100), Ballot::new(1, 1, NodeId(1))).is_some());
    }
}
