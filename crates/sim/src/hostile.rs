//! Hostile variants of the replicas' own messages: what a buggy or confused
//! peer (never a Byzantine one) might put on the wire. Each variant is a real
//! message with one thing wrong, so a core that skipped its checks would act
//! on it: a counter out of range, or a proposer's ballot that names another
//! member than the sender. [`Message::validate`] must refuse every one.

use rand::seq::IndexedRandom;
use rand::Rng;
use rand_chacha::ChaCha8Rng;

use synod_paxos::{Ballot, Message, NodeId, PromiseEntry, COUNTER_MAX};

/// A hostile variant of `message`, sent by `from` in a group of `members`,
/// drawn from `rng`; `None` for a message with nothing to spoil (`Probe`).
///
/// One field is spoiled, chosen uniformly among those that carry a counter
/// (a ballot's round and incarnation, an instance, an incarnation seen) and,
/// for a message only a proposer sends, its ballot's node: a counter becomes
/// `u64::MAX` half the time, else any value above [`COUNTER_MAX`]; the node
/// becomes another member.
pub fn variant(rng: &mut ChaCha8Rng, message: &Message, from: NodeId, members: &[NodeId]) -> Option<Message> {
    let mut variant = message.clone();
    let others: Vec<NodeId> = members.iter().copied().filter(|member| *member != from).collect();
    let forgeable = proposer_ballot(&mut variant).is_some() && !others.is_empty();
    let counters = counters(&mut variant).len();
    let choices = counters + usize::from(forgeable);
    if choices == 0 {
        return None;
    }
    let choice = rng.random_range(0..choices);
    if choice < counters {
        let value = if rng.random_bool(0.5) {
            u64::MAX
        } else {
            rng.random_range(COUNTER_MAX + 1..=u64::MAX)
        };
        *counters_of(&mut variant, choice) = value;
    } else {
        let ballot = proposer_ballot(&mut variant).expect("forgeable");
        ballot.node = *others.choose(rng).expect("another member");
    }
    Some(variant)
}

fn counters_of(message: &mut Message, index: usize) -> &mut u64 {
    counters(message).swap_remove(index)
}

/// The ballot of a message only its proposer sends, as `Message::validate` lists them.
fn proposer_ballot(message: &mut Message) -> Option<&mut Ballot> {
    match message {
        Message::LeasePrepare { ballot }
        | Message::LeasePropose { ballot, .. }
        | Message::LeaseRelease { ballot }
        | Message::MasterHandover { ballot, .. }
        | Message::ProposedReply { ballot, .. }
        | Message::Prepare { ballot, .. }
        | Message::Accept { ballot, .. }
        | Message::Commit { ballot, .. } => Some(ballot),
        _ => None,
    }
}

/// Every field of `message` that carries a round, an incarnation or an
/// instance. No wildcard arm: a new message kind must say what it carries.
fn counters(message: &mut Message) -> Vec<&mut u64> {
    fn of_ballot(ballot: &mut Ballot) -> [&mut u64; 2] {
        [&mut ballot.round, &mut ballot.incarnation]
    }
    let mut fields: Vec<&mut u64> = Vec::new();
    match message {
        Message::LeasePrepare { ballot } | Message::LeasePropose { ballot, .. } | Message::LeaseRelease { ballot } => {
            fields.extend(of_ballot(ballot))
        }
        Message::MasterHandover { ballot, through } => {
            fields.extend(of_ballot(ballot));
            fields.push(&mut through.0);
        }
        Message::LeasePrepareReply { ballot, promised, .. }
        | Message::LeaseProposeReply { ballot, promised, .. }
        | Message::Refuse { ballot, promised, .. } => {
            fields.extend(of_ballot(ballot));
            fields.extend(of_ballot(promised));
        }
        Message::Prepare { ballot, from } => {
            fields.extend(of_ballot(ballot));
            fields.push(&mut from.0);
        }
        Message::Promise {
            ballot,
            chosen_through,
            entries,
            ..
        } => {
            fields.extend(of_ballot(ballot));
            fields.push(&mut chosen_through.0);
            for entry in entries {
                match entry {
                    PromiseEntry::Accepted { instance, ballot, .. } => {
                        fields.push(&mut instance.0);
                        fields.extend(of_ballot(ballot));
                    }
                    PromiseEntry::Chosen { instance, .. } => fields.push(&mut instance.0),
                    PromiseEntry::Faulty { instance, ballot } => {
                        fields.push(&mut instance.0);
                        if let Some(ballot) = ballot {
                            fields.extend(of_ballot(ballot));
                        }
                    }
                }
            }
        }
        Message::Accept {
            ballot,
            instance,
            chosen_through,
            ..
        } => {
            fields.extend(of_ballot(ballot));
            fields.push(&mut instance.0);
            fields.push(&mut chosen_through.0);
        }
        Message::Accepted { ballot, instance } => {
            fields.extend(of_ballot(ballot));
            fields.push(&mut instance.0);
        }
        Message::Commit {
            ballot,
            chosen_through,
            proposed_through,
        } => {
            fields.extend(of_ballot(ballot));
            fields.push(&mut chosen_through.0);
            fields.push(&mut proposed_through.0);
        }
        Message::CatchupRequest { from, to } => {
            fields.push(&mut from.0);
            fields.push(&mut to.0);
        }
        Message::CatchupReply {
            entries,
            chosen_through,
        } => {
            fields.push(&mut chosen_through.0);
            fields.extend(entries.iter_mut().map(|(instance, _)| &mut instance.0));
        }
        Message::SnapshotNeeded { snapshot_instance } => fields.push(&mut snapshot_instance.0),
        Message::Probe => {}
        Message::ProposedQuery { incarnation } => fields.push(incarnation),
        Message::ProposedReply {
            ballot,
            proposed_through,
            incarnation,
        } => {
            fields.extend(of_ballot(ballot));
            fields.push(&mut proposed_through.0);
            fields.push(incarnation);
        }
        Message::ProbeReply {
            promised,
            incarnation_seen,
            ..
        } => {
            fields.extend(of_ballot(promised));
            fields.push(incarnation_seen);
        }
    }
    fields
}

#[cfg(test)]
mod tests {
    use super::*;

    use rand::SeedableRng;
    use synod_paxos::{Batch, BatchId, Instance, RefuseReason};

    fn samples() -> Vec<Message> {
        let ballot = Ballot::new(3, 2, NodeId(1));
        let batch = Batch::noop(BatchId {
            ballot,
            instance: Instance(5),
        });
        vec![
            Message::LeasePrepare { ballot },
            Message::LeasePrepareReply {
                ballot,
                granted: true,
                promised: ballot,
                open_owner: None,
            },
            Message::LeasePropose {
                ballot,
                duration_nanos: 1_000,
            },
            Message::LeaseProposeReply {
                ballot,
                granted: true,
                promised: ballot,
            },
            Message::LeaseRelease { ballot },
            Message::ProposedQuery { incarnation: 2 },
            Message::ProposedReply {
                ballot,
                proposed_through: Instance(4),
                incarnation: 2,
            },
            Message::MasterHandover {
                ballot,
                through: Instance(4),
            },
            Message::Prepare {
                ballot,
                from: Instance(4),
            },
            Message::Promise {
                ballot,
                chosen_through: Instance(3),
                entries: vec![
                    PromiseEntry::Accepted {
                        instance: Instance(4),
                        ballot,
                        batch: batch.clone(),
                    },
                    PromiseEntry::Chosen {
                        instance: Instance(5),
                        batch: batch.clone(),
                    },
                    PromiseEntry::Faulty {
                        instance: Instance(6),
                        ballot: Some(ballot),
                    },
                ],
                truncated: false,
                last: true,
            },
            Message::Refuse {
                ballot,
                promised: ballot,
                reason: RefuseReason::Promised,
            },
            Message::Accept {
                ballot,
                instance: Instance(5),
                batch: batch.clone(),
                chosen_through: Instance(4),
            },
            Message::Accepted {
                ballot,
                instance: Instance(5),
            },
            Message::Commit {
                ballot,
                chosen_through: Instance(4),
                proposed_through: Instance(5),
            },
            Message::CatchupRequest {
                from: Instance(1),
                to: Instance(4),
            },
            Message::CatchupReply {
                entries: vec![(Instance(5), batch)],
                chosen_through: Instance(5),
            },
            Message::SnapshotNeeded {
                snapshot_instance: Instance(64),
            },
            Message::ProbeReply {
                amnesiac: false,
                promised: ballot,
                has_history: true,
                incarnation_seen: 2,
            },
        ]
    }

    #[test]
    fn every_variant_is_refused_and_u64_max_is_drawn_in_every_field() {
        let members = [NodeId(1), NodeId(2), NodeId(3)];
        let mut rng = ChaCha8Rng::seed_from_u64(1);
        for message in samples() {
            assert!(message.validate(NodeId(1)).is_ok(), "{message:?}");
            let mut original = message.clone();
            let fields = counters(&mut original).len();
            let mut maxed = vec![false; fields];
            let mut forged = false;
            for _ in 0..400 {
                let variant = variant(&mut rng, &message, NodeId(1), &members).expect("a field to spoil");
                assert!(variant.validate(NodeId(1)).is_err(), "{variant:?} was taken");
                let mut spoiled = variant.clone();
                for (index, value) in counters(&mut spoiled).into_iter().enumerate() {
                    maxed[index] |= *value == u64::MAX;
                }
                forged |= proposer_ballot(&mut spoiled).is_some_and(|ballot| ballot.node != NodeId(1));
            }
            assert!(maxed.iter().all(|maxed| *maxed), "{message:?}: {maxed:?}");
            assert_eq!(forged, proposer_ballot(&mut original).is_some(), "{message:?}");
        }
        assert_eq!(variant(&mut rng, &Message::Probe, NodeId(1), &members), None);
    }
}
