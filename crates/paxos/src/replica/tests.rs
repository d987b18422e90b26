//! Unit tests of one replica driven by hand: the acceptor's promises, restart
//! from disk, and the phase-1 recovery rule.

use super::master::{decide_instance, Decision};
use super::*;
use crate::message::{BatchId, RefuseReason, COUNTER_MAX};
use crate::output::Meta;

/// The metadata of a voter that promised `promised` in its first incarnation.
fn voter(promised: Ballot) -> Meta {
    Meta {
        promised,
        incarnation: 1,
        voting: Voting::Voter,
    }
}

fn acceptor(bugs: PlantedBugs) -> Replica {
    let members = vec![NodeId(1), NodeId(2), NodeId(3)];
    let durable = DurableState {
        meta: voter(Ballot::new(1, 1, NodeId(2))),
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
        meta: voter(ballot),
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
        meta: voter(ballot),
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
            ballot: Ballot::new(2, 0, NodeId(3)),
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
    assert!(matches!(decide_instance(&[&good], 2, 2, false), Decision::Value(_)));
    assert!(matches!(decide_instance(&[], 2, 2, false), Decision::Free));
    // One good, one faulty of the same ballot: the good copy is that value.
    assert!(matches!(
        decide_instance(&[&good, &faulty_same], 2, 2, false),
        Decision::Value(_)
    ));
    // The faulty copy has the higher ballot: its value may be the chosen one.
    assert!(matches!(
        decide_instance(&[&good, &faulty_higher], 2, 2, false),
        Decision::Unresolved
    ));
    // Every copy bad: never invent a value.
    assert!(matches!(
        decide_instance(&[&faulty_same, &faulty_same], 2, 2, false),
        Decision::Unresolved
    ));
}

/// Whether an acceptor holding `accepted` acceptances (instances 1 on, none
/// known chosen) answers a prepare from `from` with a truncated promise.
fn promise_is_truncated(accepted: u64, from: Instance) -> bool {
    promise_pieces(
        Config::new(NodeId(1), vec![NodeId(1), NodeId(2), NodeId(3)]),
        accepted,
        from,
    )[0]
    .1
}

/// The promise an acceptor holding `accepted` acceptances (instances 1 on)
/// sends for a prepare from `from`: each piece's entries, truncated and last
/// flags.
fn promise_pieces(config: Config, accepted: u64, from: Instance) -> Vec<(Vec<PromiseEntry>, bool, bool)> {
    let ballot = Ballot::new(1, 1, NodeId(2));
    let durable = DurableState {
        meta: voter(ballot),
        slots: (1..=accepted)
            .map(|instance| {
                let slot = StoredSlot::Accepted {
                    ballot,
                    batch: batch(ballot, instance),
                };
                (Instance(instance), slot)
            })
            .collect(),
        ..DurableState::default()
    };
    let mut replica = Replica::restart(config, durable, Time::ZERO, 7);
    replica.take_ready();
    let prepare = Message::Prepare {
        ballot: Ballot::new(2, 1, NodeId(3)),
        from,
    };
    replica.step(LATER, NodeId(3), prepare);
    let promises: Vec<_> = replica
        .take_ready()
        .messages
        .into_iter()
        .filter_map(|envelope| match envelope.message {
            Message::Promise {
                entries,
                truncated,
                last,
                ..
            } => Some((entries, truncated, last)),
            _ => None,
        })
        .collect();
    assert!(!promises.is_empty(), "the prepare is answered");
    promises
}

#[test]
fn a_long_promise_is_cut_into_pieces_within_the_message_bound() {
    let mut config = Config::new(NodeId(1), vec![NodeId(1), NodeId(2), NodeId(3)]);
    config.value_bytes_max = 1;
    config.batch_bytes_max = 1;
    // 37 entries of 104 bytes fill a piece exactly.
    config.message_bytes_max = 104 * 37 + 256;
    config.validate().expect("a valid configuration");
    let pieces = promise_pieces(config.clone(), 100, Instance(1));
    // The acceptor leaves 256 bytes of each message for the framing.
    let budget = config.message_bytes_max - 256;
    assert!(pieces.len() > 1, "100 entries do not fit one message of {budget} bytes");
    let mut instances = Vec::new();
    for (index, (entries, truncated, last)) in pieces.iter().enumerate() {
        assert!(!entries.is_empty() && !truncated);
        assert_eq!(*last, index + 1 == pieces.len(), "only the final piece is the last");
        let bytes: usize = entries.iter().map(Message::promise_entry_bytes).sum();
        assert!(bytes <= budget, "piece {index}: {bytes} bytes over {budget}");
        if index + 1 < pieces.len() {
            let next = Message::promise_entry_bytes(&pieces[index + 1].0[0]);
            assert!(bytes + next > budget, "piece {index} could have taken the next entry");
        }
        instances.extend(entries.iter().map(PromiseEntry::instance));
    }
    assert_eq!(
        instances,
        (1..=100).map(Instance).collect::<Vec<_>>(),
        "every entry, in order, once"
    );
}

#[test]
fn a_promise_is_truncated_only_past_the_accept_ahead_and_window_bounds() {
    // The bound is what an acceptor can hold beyond a candidate's commit
    // point: accept_ahead_instances_max plus the pipelining window.
    let config = Config::new(NodeId(1), vec![NodeId(1)]);
    let bound = config.accept_ahead_instances_max + config.window_instances_max;
    assert!(!promise_is_truncated(bound, Instance(1)), "exactly at the bound: whole");
    assert!(
        promise_is_truncated(bound + 1, Instance(1)),
        "one past the bound: truncated"
    );
    // With no snapshot (log base 0), even a prepare from instance 0 gets it all.
    assert!(!promise_is_truncated(3, Instance(0)));
}

/// What an acceptor answers to one `Accept` from node 2.
fn answer_to_accept(replica: &mut Replica, ballot: Ballot, instance: u64, batch_ballot: Ballot) -> Vec<Message> {
    let accept = Message::Accept {
        ballot,
        instance: Instance(instance),
        batch: batch(batch_ballot, instance),
        chosen_through: Instance::ZERO,
    };
    replica.step(LATER, ballot.node, accept);
    let ready = replica.take_ready();
    ready
        .messages
        .into_iter()
        .filter(|envelope| envelope.to == ballot.node)
        .map(|envelope| envelope.message)
        .collect()
}

#[test]
fn an_acceptor_accepts_no_further_ahead_than_its_bound() {
    let mut replica = acceptor(PlantedBugs::default());
    let ballot = Ballot::new(1, 1, NodeId(2));
    let ahead = replica.config().accept_ahead_instances_max;
    let accepted = |answers: &[Message]| answers.iter().any(|m| matches!(m, Message::Accepted { .. }));
    assert!(
        accepted(&answer_to_accept(&mut replica, ballot, ahead, ballot)),
        "at the bound"
    );
    assert!(
        !accepted(&answer_to_accept(&mut replica, ballot, ahead + 2, ballot)),
        "past it"
    );
}

#[test]
fn an_accept_of_another_value_for_a_chosen_instance_gets_no_answer() {
    let members = vec![NodeId(1), NodeId(2), NodeId(3)];
    let chosen_at = Ballot::new(1, 1, NodeId(3));
    let durable = DurableState {
        meta: voter(chosen_at),
        slots: vec![(
            Instance(5),
            StoredSlot::Chosen {
                batch: batch(chosen_at, 5),
            },
        )],
        ..DurableState::default()
    };
    let mut replica = Replica::restart(Config::new(NodeId(1), members), durable, Time::ZERO, 7);
    replica.take_ready();
    // Not the chosen batch: neither vouched for nor answered with a snapshot
    // (the value is still in the log, so no snapshot is needed).
    let higher = Ballot::new(2, 1, NodeId(2));
    let answers = answer_to_accept(&mut replica, higher, 5, higher);
    assert!(
        !answers
            .iter()
            .any(|m| matches!(m, Message::Accepted { .. } | Message::SnapshotNeeded { .. })),
        "{answers:?}"
    );
    // The chosen batch itself is vouched for.
    let answers = answer_to_accept(&mut replica, higher, 5, chosen_at);
    assert!(
        answers.iter().any(|m| matches!(m, Message::Accepted { .. })),
        "{answers:?}"
    );
}

#[test]
fn an_accept_raises_the_promise_and_only_when_higher_writes_it() {
    let mut replica = acceptor(PlantedBugs::default());
    let promised = replica.meta().promised;
    // At the promised ballot: the acceptance alone is written.
    replica.step(
        LATER,
        NodeId(2),
        Message::Accept {
            ballot: promised,
            instance: Instance(1),
            batch: batch(promised, 1),
            chosen_through: Instance::ZERO,
        },
    );
    let ready = replica.take_ready();
    assert!(
        !ready.persist.iter().any(|p| matches!(p, Persist::Meta(_))),
        "{:?}",
        ready.persist
    );
    // Above it: the promise goes up with the acceptance, so a ballot in
    // between is refused afterwards.
    let high = Ballot::new(3, 1, NodeId(2));
    let answers = answer_to_accept(&mut replica, high, 2, high);
    assert!(answers.iter().any(|m| matches!(m, Message::Accepted { .. })));
    assert_eq!(replica.meta().promised, high);
    let between = Ballot::new(2, 1, NodeId(3));
    let answers = answer_to_accept(&mut replica, between, 3, between);
    assert!(
        answers.iter().any(|m| matches!(
            m,
            Message::Refuse {
                reason: RefuseReason::Promised,
                ..
            }
        )),
        "{answers:?}"
    );
}

#[test]
fn a_peer_message_with_a_counter_out_of_range_or_a_foreign_ballot_is_refused_unread() {
    let mut replica = acceptor(PlantedBugs::default());
    let promised = replica.meta().promised;
    let hostile = [
        (
            NodeId(2),
            Message::Prepare {
                ballot: Ballot::new(u64::MAX, 1, NodeId(2)),
                from: Instance(1),
            },
        ),
        (
            NodeId(2),
            Message::LeasePrepare {
                ballot: Ballot::new(1, u64::MAX, NodeId(2)),
            },
        ),
        (
            NodeId(3),
            Message::Prepare {
                ballot: Ballot::new(9, 1, NodeId(2)),
                from: Instance(1),
            },
        ),
        (
            NodeId(2),
            Message::Commit {
                ballot: promised,
                chosen_through: Instance(u64::MAX),
                proposed_through: Instance(u64::MAX),
            },
        ),
        (
            NodeId(3),
            Message::CatchupRequest {
                from: Instance(1),
                to: Instance(u64::MAX),
            },
        ),
    ];
    let count = hostile.len() as u64;
    for (from, message) in hostile {
        replica.step(LATER, from, message);
        let ready = replica.take_ready();
        assert!(ready.messages.is_empty() && ready.persist.is_empty(), "{ready:?}");
    }
    assert_eq!(replica.messages_invalid(), count);
    assert_eq!(replica.meta().promised, promised);
    assert_eq!(replica.round(), promised.round);
    // At the bound itself the message is taken.
    let highest = Ballot::new(COUNTER_MAX, 1, NodeId(2));
    replica.step(
        LATER,
        NodeId(2),
        Message::Prepare {
            ballot: highest,
            from: Instance(1),
        },
    );
    assert!(matches!(replica.take_ready().messages[0].message, Message::Promise { ballot, .. } if ballot == highest));
    assert_eq!(replica.messages_invalid(), count);
}

#[test]
fn the_planted_bug_takes_a_round_out_of_range() {
    // What the simulator must catch: the promise reaches `u64::MAX`, so no
    // candidate can outbid it again.
    let mut buggy = acceptor(PlantedBugs {
        skip_message_validation: true,
        ..PlantedBugs::default()
    });
    let hostile = Ballot::new(u64::MAX, 1, NodeId(2));
    buggy.step(
        LATER,
        NodeId(2),
        Message::Prepare {
            ballot: hostile,
            from: Instance(1),
        },
    );
    assert_eq!(buggy.meta().promised, hostile);
    assert_eq!(buggy.messages_invalid(), 0);
}
