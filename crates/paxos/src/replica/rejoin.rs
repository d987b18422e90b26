//! Safe rejoin after an empty disk (the probe of "Paxos Made Live", section 5.1,
//! as a state machine): a replica that may have voted and lost its disk must not
//! vote again until it cannot contradict what it promised or accepted before.
//!
//! Rules kept: the probe waits for `n - q + 1` non-amnesiac answers, so it meets
//! every quorum that could have counted on a lost promise; the replica adopts the
//! highest promise and an incarnation above every one seen; a member of a new
//! group votes at once, a member that lost its disk first waits for a master
//! (`AwaitMaster`) and learns through what it proposed (`LearnUntil`).

use super::{Probing, Replica};
use crate::message::Message;
use crate::output::Voting;
use crate::{Ballot, NodeId, Time};

impl Replica {
    pub(super) fn start_probe(&mut self, now: Time) {
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

    pub(super) fn tick_probe(&mut self, now: Time) {
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

    pub(super) fn on_probe(&mut self, from: NodeId) {
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

    pub(super) fn on_probe_reply(
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
}
