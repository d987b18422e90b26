//! Scripted scenarios on a fault-free group: the submit API's definite answers,
//! epochs, master leases under a pause and across restarts of the lease's
//! grantors, rejoining with an empty disk, and an `Accept` from a deposed
//! master delivered late.

use std::time::Duration;

use bytes::Bytes;
use synod_paxos::{
    Ballot, Epoch, FreshStart, Instance, Message, NodeId, PlantedBugs, ReadError, RejectReason, Replica, StoredSlot,
    Time, TransferError, Voting,
};
use synod_sim::cluster::sim_paxos_config;
use synod_sim::group::{numbered_batch, voter_state, Group};

fn elected(size: usize) -> (Group, usize) {
    let mut group = Group::new(size, |_| {});
    assert!(group.run_until(Duration::from_millis(1), Duration::from_secs(30), |g| g
        .serving_master()
        .is_some()));
    let master = group.serving_master().expect("a master");
    (group, master)
}

/// Ticks only `replicas`, a millisecond at a time for at most `steps_max`
/// steps, until `found` finds something: every other replica stays paused
/// (not ticked), as a stopped process would.
fn tick_only_until<T>(
    group: &mut Group,
    replicas: &[usize],
    steps_max: u32,
    mut found: impl FnMut(&Group) -> Option<T>,
) -> Option<T> {
    for _ in 0..steps_max {
        group.now = group.now + Duration::from_millis(1);
        for &index in replicas {
            let now = group.now;
            group.replicas[index].tick(now);
            group.drain(index);
        }
        group.pump();
        if let Some(thing) = found(group) {
            return Some(thing);
        }
    }
    None
}

#[test]
fn a_follower_refuses_submits_and_names_the_master() {
    let (mut group, master) = elected(3);
    let follower = (master + 1) % 3;
    let now = group.now;
    let rejected = group.replicas[follower]
        .submit(now, Bytes::from_static(b"v"), None)
        .expect_err("followers do not take submits");
    assert_eq!(
        rejected.reason,
        RejectReason::NotMaster {
            master: Some(group.replicas[master].node())
        }
    );
    assert_eq!(rejected.value, Bytes::from_static(b"v"), "the value is handed back");
}

#[test]
fn oversize_values_and_a_full_queue_are_refused_with_the_value() {
    let mut group = Group::new(3, |config| {
        config.submit_queue_values_max = config.batch_values_max;
    });
    assert!(group.run_until(Duration::from_millis(1), Duration::from_secs(30), |g| g
        .serving_master()
        .is_some()));
    let master = group.serving_master().unwrap();
    let now = group.now;
    let too_large = Bytes::from(vec![0u8; group.replicas[master].config().value_bytes_max + 1]);
    let rejected = group.replicas[master].submit(now, too_large, None).unwrap_err();
    assert!(matches!(rejected.reason, RejectReason::TooLarge { .. }));
    // Without pumping messages nothing commits, so the window and then the queue fill.
    let mut queue_full = false;
    for index in 0..100_000u32 {
        match group.replicas[master].submit(now, Bytes::from(index.to_string()), None) {
            Ok(_) => {}
            Err(rejected) => {
                assert_eq!(rejected.reason, RejectReason::QueueFull);
                assert_eq!(rejected.value, Bytes::from(index.to_string()));
                queue_full = true;
                break;
            }
        }
    }
    assert!(queue_full, "the submit queue is bounded");
}

#[test]
fn a_stale_epoch_is_refused_and_a_current_one_commits() {
    let (mut group, master) = elected(3);
    let now = group.now;
    let epoch = group.replicas[master].epoch().expect("the master has an epoch");
    let stale = Epoch(synod_paxos::Ballot::ZERO);
    let rejected = group.replicas[master]
        .submit(now, Bytes::from_static(b"a"), Some(stale))
        .unwrap_err();
    assert!(matches!(rejected.reason, RejectReason::EpochChanged { .. }));
    group.replicas[master]
        .submit(now, Bytes::from_static(b"b"), Some(epoch))
        .unwrap();
    group.drain(master);
    group.pump();
    let chosen_through = group.replicas[master].chosen_through();
    let found = (1..=chosen_through.0).any(|instance| {
        group.replicas[master]
            .chosen_value(synod_paxos::Instance(instance))
            .is_some_and(|batch| {
                batch
                    .entries
                    .iter()
                    .any(|entry| entry.value == Bytes::from_static(b"b"))
            })
    });
    assert!(found, "a value with the current epoch commits");
}

#[test]
fn a_master_paused_past_its_lease_refuses_reads_on_resume() {
    let (group, master) = elected(3);
    let replica = &group.replicas[master];
    assert!(replica.read_lease(group.now).is_ok());
    let expiry = replica.lease_expires_at().expect("the master holds a lease");
    // Resumes after a pause longer than the lease: its own clock tells it at once.
    let resumed = expiry + Duration::from_millis(1);
    assert!(matches!(replica.read_lease(resumed), Err(ReadError::NotMaster { .. })));
    assert!(!replica.holds_lease(resumed));
}

/// The master is paused (not ticked, cut off) past its lease; the two others
/// elect a new master and commit a value. The old master wakes and is asked
/// for a lease read before its first tick, as a resumed process may read a
/// queued request before its timers fire. Returns whether it answered, from
/// a state without the value the new master committed: a stale read.
fn a_deposed_master_answers_a_read(bugs: PlantedBugs) -> bool {
    let (mut group, old) = elected(3);
    group.replicas[old].plant_bugs(bugs);
    let others: Vec<usize> = (0..3).filter(|index| *index != old).collect();
    group.isolated.push(group.replicas[old].node());
    let new = tick_only_until(&mut group, &others, 30_000, |group| {
        others
            .iter()
            .copied()
            .find(|index| group.replicas[*index].read_lease(group.now).is_ok())
    })
    .expect("the two others elect a master");
    let now = group.now;
    group.replicas[new]
        .submit(now, Bytes::from_static(b"new"), None)
        .expect("the new master takes a submit");
    group.drain(new);
    group.pump();
    let committed = tick_only_until(&mut group, &others, 2_000, |group| {
        group.delivered[new]
            .iter()
            .find(|(_, batch)| batch.entries.iter().any(|entry| entry.value.as_ref() == b"new"))
            .map(|(instance, _)| *instance)
    })
    .expect("the new master commits the value");
    assert!(group.replicas[old].is_master(), "the old master has not noticed yet");
    match group.replicas[old].read_lease(group.now) {
        Ok(through) => {
            assert!(through < committed, "the old master cannot know the new value");
            true
        }
        Err(_) => false,
    }
}

#[test]
fn a_deposed_master_refuses_reads_before_it_notices() {
    assert!(!a_deposed_master_answers_a_read(PlantedBugs::default()));
}

#[test]
fn planted_bug_reading_without_the_lease_is_caught_by_a_script() {
    let bugs = PlantedBugs {
        read_without_lease: true,
        ..PlantedBugs::default()
    };
    assert!(
        a_deposed_master_answers_a_read(bugs),
        "a master that reads without its lease serves a read that misses a committed write"
    );
}

#[test]
fn a_replica_with_an_empty_disk_learns_before_it_votes() {
    let (mut group, master) = elected(3);
    // Commit some values.
    for index in 0..50u32 {
        let now = group.now;
        group.replicas[master]
            .submit(now, Bytes::from(index.to_string()), None)
            .unwrap();
        group.drain(master);
        group.pump();
    }
    assert!(group.run_until(Duration::from_millis(1), Duration::from_secs(5), |g| {
        g.replicas
            .iter()
            .all(|r| r.chosen_through() >= synod_paxos::Instance(2))
    }));
    // Replica `wiped` loses its disk and comes back empty.
    let wiped = (master + 1) % 3;
    let members = group.replicas[wiped].config().members.clone();
    let config = sim_paxos_config(group.replicas[wiped].node(), members);
    group.replicas[wiped] = Replica::fresh(config, FreshStart::Rejoin, group.now, 99);
    group.drain(wiped);
    assert!(matches!(
        group.replicas[wiped].meta().voting,
        Voting::ProbePending { new_group: false }
    ));
    let target = group.replicas[master].chosen_through();
    assert!(group.run_until(Duration::from_millis(1), Duration::from_secs(20), |g| {
        g.replicas[wiped].meta().voting == Voting::Voter
    }));
    let rejoined = &group.replicas[wiped];
    assert!(
        rejoined.chosen_through() >= target,
        "it learned everything chosen before voting"
    );
    assert!(
        rejoined.meta().promised > synod_paxos::Ballot::ZERO,
        "it adopted its peers' promise instead of starting from nothing"
    );
}

#[test]
fn a_member_of_a_new_group_that_starts_late_votes_at_once() {
    let (mut group, master) = elected(3);
    let late = (master + 1) % 3;
    let members = group.replicas[late].config().members.clone();
    let config = sim_paxos_config(group.replicas[late].node(), members);
    group.replicas[late] = Replica::fresh(config, FreshStart::NewGroup, group.now, 5);
    group.drain(late);
    assert!(group.run_until(Duration::from_millis(1), Duration::from_secs(5), |g| {
        g.replicas[late].meta().voting == Voting::Voter
    }));
    assert!(group.replicas[late].joined_group_with_history());
    assert!(group.replicas[late].meta().promised > synod_paxos::Ballot::ZERO);
}

/// The master is cut off while it holds its lease, and both followers crash and
/// restart at once. PaxosLease acceptors keep no disk, so a restarted acceptor
/// must stay silent for a lease's length: otherwise the two followers grant one
/// of themselves a lease while the cut-off master still serves reads under its
/// own. Returns whether two replicas ever held a lease at the same instant, and
/// whether a follower got one in the end.
fn leases_after_the_grantors_restart(bugs: PlantedBugs) -> (bool, bool) {
    let (mut group, master) = elected(3);
    group.isolated.push(group.replicas[master].node());
    for follower in (0..3).filter(|index| *index != master) {
        group.crash_restart(follower, 40 + follower as u64);
        group.replicas[follower].plant_bugs(bugs);
    }
    let mut overlap = false;
    let follower_holds = group.run_until(Duration::from_millis(1), Duration::from_secs(30), |g| {
        let holders = g.replicas.iter().filter(|r| r.holds_lease(g.now)).count();
        overlap |= holders > 1;
        overlap
            || g.replicas
                .iter()
                .enumerate()
                .any(|(index, r)| index != master && r.holds_lease(g.now))
    });
    (overlap, follower_holds && !overlap)
}

#[test]
fn restarted_lease_grantors_wait_out_the_lease_they_may_have_granted() {
    let (overlap, follower_took_over) = leases_after_the_grantors_restart(PlantedBugs::default());
    assert!(!overlap, "two replicas held a lease at once");
    assert!(
        follower_took_over,
        "a follower takes the lease once the old one has run out"
    );
}

#[test]
fn planted_bug_lease_without_silence_after_restart_is_caught_by_a_script() {
    let bugs = PlantedBugs {
        no_lease_silence_after_restart: true,
        ..PlantedBugs::default()
    };
    let (overlap, _) = leases_after_the_grantors_restart(bugs);
    assert!(
        overlap,
        "without silence after a restart, a second lease is granted while the first is held"
    );
}

/// A master's `Accept` is held back while it pauses; the two others elect a
/// new master, and the held `Accept` then reaches the follower that promised
/// the new ballot; the paused master wakes and counts the answers before its
/// first tick (as a resumed process reads its socket before its timers
/// fire). Then a client value is committed at the new master. Returns the
/// instances whose chosen values differ between replicas.
fn values_chosen_twice(bugs: PlantedBugs) -> Vec<Instance> {
    let (mut group, old) = elected(3);
    for replica in &mut group.replicas {
        replica.plant_bugs(bugs);
    }
    let others: Vec<usize> = (0..3).filter(|index| *index != old).collect();
    let old_node = group.replicas[old].node();
    let now = group.now;
    group.replicas[old]
        .submit(now, Bytes::from_static(b"old"), None)
        .expect("the master takes a submit");
    group.drain(old);
    let held = group.take_messages(|from, _, message| from == old_node && matches!(message, Message::Accept { .. }));
    assert_eq!(held.len(), 2, "one Accept to each follower");

    // The old master is paused: not ticked, cut off.
    group.isolated.push(old_node);
    let new = tick_only_until(&mut group, &others, 30_000, |group| {
        others
            .iter()
            .copied()
            .find(|index| group.replicas[*index].read_lease(group.now).is_ok())
    })
    .expect("the two others elect a master");
    let follower = others.iter().copied().find(|index| *index != new).expect("two others");

    // The held Accept reaches the follower, and the old master wakes.
    group.isolated.clear();
    let follower_node = group.replicas[follower].node();
    for (from, to, message) in held {
        if to == follower_node {
            group.send(from, to, message);
        }
    }
    group.pump();

    // A client value at the new master.
    let now = group.now;
    group.replicas[new]
        .submit(now, Bytes::from_static(b"new"), None)
        .expect("the new master takes a submit");
    group.drain(new);
    group.pump();
    for _ in 0..2_000 {
        group.now = group.now + Duration::from_millis(1);
        group.tick_all();
    }
    let mut differing = Vec::new();
    for (instance, batch) in &group.delivered[old] {
        if group.delivered[new].get(instance).is_some_and(|other| other != batch) {
            differing.push(*instance);
        }
    }
    differing
}

#[test]
fn a_held_accept_from_a_deposed_master_changes_nothing() {
    assert_eq!(values_chosen_twice(PlantedBugs::default()), Vec::<Instance>::new());
}

#[test]
fn planted_bug_accepting_a_lower_ballot_in_the_log_is_caught_by_a_script() {
    let bugs = PlantedBugs {
        accept_lower_ballot: true,
        ..PlantedBugs::default()
    };
    assert!(
        !values_chosen_twice(bugs).is_empty(),
        "an Accept below the promise, once accepted, lets the deposed master choose a value the new one overwrites"
    );
}

/// Instance 1 was chosen (accepted at one ballot by replicas 1 and 3), but
/// replica 1's copy is damaged and replica 2 never had it; replica 3, with the
/// only good copy, misses phase 1. The master may not decide the instance from
/// the answers it has, and must ask again once replica 3 can answer: a second
/// prepare at the same ballot would be refused, so it runs phase 1 again.
#[test]
fn a_good_copy_that_missed_phase_one_is_found_by_the_next() {
    let ballot = Ballot::new(1, 1, NodeId(1));
    let batch = numbered_batch(ballot, 1);
    let slot = |slot: StoredSlot| vec![(Instance(1), slot)];
    let states = vec![
        voter_state(ballot, slot(StoredSlot::Faulty { ballot: Some(ballot) }), 0),
        voter_state(ballot, Vec::new(), 0),
        voter_state(
            ballot,
            slot(StoredSlot::Accepted {
                ballot,
                batch: batch.clone(),
            }),
            0,
        ),
    ];
    let mut group = Group::restart(3, states, Time::ZERO, |_| {});
    group.isolated.push(NodeId(3));
    group.run_until(Duration::from_millis(1), Duration::from_secs(5), |_| false);
    assert!(
        group
            .replicas
            .iter()
            .all(|replica| replica.chosen_value(Instance(1)).is_none()),
        "decided without a good copy"
    );
    assert!(
        group.replicas[..2].iter().any(|replica| replica.is_master()),
        "one of the two became master, with the instance unresolved"
    );
    group.isolated.clear();
    assert!(
        group.run_until(Duration::from_millis(1), Duration::from_secs(10), |group| group
            .replicas
            .iter()
            .all(|replica| replica.chosen_value(Instance(1)) == Some(&batch))),
        "the good copy is found once its holder answers"
    );
}

/// Replica 1 restarts with 30 chosen instances in its log, the first one
/// damaged, so it cannot deliver any and its answer to a prepare from
/// instance 1 is too long to send: it is truncated. Replica 2 holds only the
/// last instance and replica 3, which has every value, is cut off. A phase 1
/// over replicas 1 and 2 has not seen instances 1 to 29 and must not fill
/// them with no-ops.
#[test]
fn a_truncated_promise_never_passes_for_an_empty_one() {
    const INSTANCES: u64 = 30;
    let ballot = Ballot::new(1, 1, NodeId(3));
    let batch = |instance: u64| numbered_batch(ballot, instance);
    let accepted = |from: u64| -> Vec<(Instance, StoredSlot)> {
        (from..=INSTANCES)
            .map(|instance| {
                let slot = StoredSlot::Accepted {
                    ballot,
                    batch: batch(instance),
                };
                (Instance(instance), slot)
            })
            .collect()
    };
    let mut damaged = vec![(Instance(1), StoredSlot::Faulty { ballot: Some(ballot) })];
    damaged.extend(accepted(2));
    let states = vec![
        voter_state(ballot, damaged, INSTANCES),
        voter_state(ballot, accepted(INSTANCES), 0),
        voter_state(ballot, accepted(1), INSTANCES),
    ];
    let mut group = Group::restart(3, states, Time::ZERO, |config| {
        assert!(INSTANCES > config.accept_ahead_instances_max + config.window_instances_max);
    });
    group.isolated.push(NodeId(3));
    group.run_until(Duration::from_millis(1), Duration::from_secs(5), |_| false);
    for (index, replica) in group.replicas.iter().enumerate() {
        for instance in 1..=INSTANCES {
            if let Some(chosen) = replica.chosen_value(Instance(instance)) {
                assert_eq!(chosen, &batch(instance), "replica {} at {instance}", index + 1);
            }
        }
    }
    // Once replica 3 answers, everything is learned.
    group.isolated.clear();

    assert!(
        group.run_until(Duration::from_millis(1), Duration::from_secs(20), |group| {
            group
                .replicas
                .iter()
                .all(|replica| (1..=INSTANCES).all(|i| replica.chosen_value(Instance(i)) == Some(&batch(i))))
        })
    );
}

/// Whether `value` is among what replica `index` delivered.
fn delivered_value(group: &Group, index: usize, value: &[u8]) -> bool {
    group.delivered[index]
        .values()
        .any(|batch| batch.entries.iter().any(|entry| entry.value.as_ref() == value))
}

#[test]
fn a_master_hands_over_to_the_member_named_before_an_election_could() {
    let (mut group, master) = elected(3);
    let target = (master + 1) % 3;
    let target_id = group.replicas[target].node();
    let now = group.now;
    let window = group.replicas[master].config().window_instances_max;
    for index in 0..window {
        group.replicas[master]
            .submit(now, Bytes::from(format!("before-{index}")), None)
            .expect("the master takes submits");
    }
    // The values are in flight (their Accepts queued, not delivered) when
    // the handover is asked for.
    group.drain(master);
    group.replicas[master]
        .transfer_master(now, target_id)
        .expect("the master hands over");
    assert_eq!(group.replicas[master].transfer_target(), Some(target_id));
    assert!(group.replicas[master].is_master(), "it drains what is in flight first");
    let refused = group.replicas[master]
        .submit(now, Bytes::from_static(b"during"), None)
        .expect_err("no new proposals while handing over");
    assert_eq!(
        refused.reason,
        RejectReason::NotMaster {
            master: Some(target_id)
        }
    );
    group.drain(master);
    let asked = group.now;
    assert!(group.run_until(Duration::from_millis(1), Duration::from_secs(30), |g| {
        g.serving_master() == Some(target)
    }));
    let took = group.now.since(asked);
    let election_timeout = group.replicas[target].config().election_timeout;
    assert!(
        took < election_timeout,
        "the target took over in {took:?}, not after an election timeout ({election_timeout:?})"
    );
    assert!(!group.replicas[master].is_master());
    assert_eq!(group.replicas[master].master_hint(), Some(target_id));
    for index in 0..window {
        let value = format!("before-{index}");
        assert!(delivered_value(&group, target, value.as_bytes()), "{value} is chosen");
    }
    assert!(!delivered_value(&group, target, b"during"));
    // The new master serves writes.
    let now = group.now;
    group.replicas[target]
        .submit(now, Bytes::from_static(b"after"), None)
        .expect("the new master takes submits");
    group.drain(target);
    group.pump();
    assert!(delivered_value(&group, target, b"after"));
}

#[test]
fn a_handover_refuses_non_members_and_followers() {
    let (mut group, master) = elected(3);
    let follower = (master + 1) % 3;
    let now = group.now;
    assert_eq!(
        group.replicas[master].transfer_master(now, NodeId(9)),
        Err(TransferError::NotAMember(NodeId(9)))
    );
    let other = group.replicas[master].node();
    assert_eq!(
        group.replicas[follower].transfer_master(now, other),
        Err(TransferError::NotMaster)
    );
    // To itself: nothing to do, and it stays master.
    assert_eq!(group.replicas[master].transfer_master(now, other), Ok(()));
    assert_eq!(group.replicas[master].transfer_target(), None);
}

#[test]
fn a_handover_to_an_unreachable_member_ends_in_an_ordinary_election() {
    let (mut group, master) = elected(3);
    let target = (master + 1) % 3;
    let target_id = group.replicas[target].node();
    group.isolated.push(target_id);
    let now = group.now;
    group.replicas[master].transfer_master(now, target_id).unwrap();
    group.drain(master);
    let third = 3 - master - target;
    assert!(group.run_until(Duration::from_millis(1), Duration::from_secs(30), |g| {
        g.serving_master().is_some_and(|serving| serving != target)
    }));
    let serving = group.serving_master().unwrap();
    assert!(serving == master || serving == third);
}

#[test]
fn a_held_back_release_leaves_a_later_lease_in_force() {
    assert!(!two_lease_holders_after_a_held_back_release(PlantedBugs::default()));
}

#[test]
fn planted_bug_releasing_any_grant_is_caught_by_a_script() {
    let bugs = PlantedBugs {
        release_any_grant: true,
        ..PlantedBugs::default()
    };
    assert!(two_lease_holders_after_a_held_back_release(bugs));
}

/// Whether two replicas held the lease at once in this script.
fn two_lease_holders_after_a_held_back_release(bugs: PlantedBugs) -> bool {
    // A hands over to B, and its releases are held back. B takes the lease
    // once A's grants run out, then hands back to A, which takes the lease
    // again at a higher ballot. A's old releases then arrive, and, with A cut
    // off, B is prompted to try for the lease at once: the old releases must
    // not have taken A's new grants away, or B would hold the lease beside A.
    let (mut group, a) = elected(3);
    for replica in &mut group.replicas {
        replica.plant_bugs(bugs);
    }
    let b = (a + 1) % 3;
    let (a_id, b_id) = (group.replicas[a].node(), group.replicas[b].node());
    let now = group.now;
    group.replicas[a].transfer_master(now, b_id).unwrap();
    group.drain(a);
    let held = group.take_messages(|from, _, message| from == a_id && matches!(message, Message::LeaseRelease { .. }));
    assert_eq!(held.len(), 2, "one release to each other member");
    // Only B ticks, so only B tries for the lease.
    tick_only_until(&mut group, &[b], 30_000, |g| g.serving_master().filter(|m| *m == b))
        .expect("B takes over once A's grants have run out");
    let now = group.now;
    group.replicas[b].transfer_master(now, a_id).unwrap();
    group.drain(b);
    assert!(group.run_until(Duration::from_millis(1), Duration::from_secs(30), |g| {
        g.serving_master() == Some(a)
    }));
    for (from, to, message) in held {
        group.send(from, to, message);
    }
    group.pump();
    group.isolated.push(a_id);
    let now = group.now;
    let stale = Message::MasterHandover {
        ballot: Ballot::new(1, 1, a_id),
        through: Instance::ZERO,
    };
    group.replicas[b].step(now, a_id, stale);
    group.drain(b);
    let until = group.replicas[a].lease_expires_at().expect("A holds the lease");
    while group.now < until {
        group.now = group.now + Duration::from_millis(1);
        group.tick_all();
        let holders = (0..3)
            .filter(|&index| group.replicas[index].holds_lease(group.now))
            .count();
        if holders > 1 {
            return true;
        }
    }
    false
}

/// Runs the scenario of a replica that lost its disk and hears, after its
/// probe, a heartbeat its master sent before the loss: the master M proposed
/// `v` after that heartbeat, M and R accepted it (a majority of three: `v` is
/// chosen) while the third member X was cut off, and R lost its disk. M
/// then goes away. Returns the value X and R's new master finds at that
/// instance, if they elect one while M is away.
fn value_found_after_a_stale_heartbeat() -> Option<Option<synod_paxos::Batch>> {
    let (mut group, m) = elected(3);
    let (r, x) = ((m + 1) % 3, (m + 2) % 3);
    let (m_id, x_id) = (group.replicas[m].node(), group.replicas[x].node());
    let ballot = group.replicas[m].epoch().expect("a master").0;
    let before = group.replicas[m].chosen_through();
    let stale = Message::Commit {
        ballot,
        chosen_through: before,
        proposed_through: before,
    };
    group.isolated.push(x_id);
    let now = group.now;
    group.replicas[m]
        .submit(now, Bytes::from_static(b"v"), None)
        .expect("the master takes it");
    group.drain(m);
    group.pump();
    let instance = before.next();
    assert!(group.replicas[m].chosen_value(instance).is_some(), "M and R chose v");
    group.wipe_restart(r, 99);
    group.isolated.clear();
    group.pump();
    assert_eq!(group.replicas[r].meta().voting, Voting::AwaitMaster, "R probed");
    let now = group.now;
    group.replicas[r].step(now, m_id, stale);
    group.drain(r);
    group.isolated.push(m_id);
    let elected = tick_only_until(&mut group, &[r, x], 20_000, |g| {
        [r, x]
            .into_iter()
            .find(|&index| g.replicas[index].read_lease(g.now).is_ok())
    });
    elected.map(|index| group.replicas[index].chosen_value(instance).cloned())
}

#[test]
fn a_heartbeat_sent_before_a_disk_was_lost_does_not_let_the_replica_vote() {
    // Without M the two others cannot safely choose anything: R does not
    // vote until a master tells it, after the loss, what it has proposed.
    match value_found_after_a_stale_heartbeat() {
        None => {}
        Some(found) => {
            let found = found.expect("the new master holds no value where v was chosen: v was lost");
            assert!(
                found.entries.iter().any(|entry| entry.value.as_ref() == b"v"),
                "the new master lost the chosen value: {found:?}"
            );
        }
    }
}
