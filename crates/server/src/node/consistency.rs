//! The run-time consistency check: members compare their state hash at one
//! applied instance.
//!
//! Paxos Made Live (section 5.6, "database consistency") has replicas compare
//! checksums of their databases, because a bug in the state machine or a
//! corruption the disk's checksums did not see makes a replica diverge
//! silently; Ceph's monitors scrub their stores for the same reason. Here the
//! store's [`state_hash`](synod_kv::Store::state_hash), chained over every
//! applied entry's effects, is what is compared: two members that applied the
//! same instances must report the same value, and once one diverges, every
//! later hash of it differs.
//!
//! # The protocol
//!
//! 1. Every member records the state hash after each instance it applies, for
//!    the last [`HASH_HISTORY_INSTANCES_MAX`] instances ([`HashHistory`]).
//! 2. The master, every check interval (or on demand), opens a [`Check`] at
//!    the instance it has applied, with its own hash, and asks every peer for
//!    its hash at that instance (`HashQuery`).
//! 3. A peer answers from its history (`HashReport`); one that has not applied
//!    the instance yet answers once it has; one whose history no longer holds
//!    it (it installed a snapshot past it) answers that it does not know.
//! 4. As soon as a quorum of members agrees on one hash, every member that
//!    reported another is in the minority: the master raises the CORRUPT
//!    alarm for it through the log. The member learns of it when it applies
//!    the alarm and from then on serves no reads or writes (see
//!    `Core::apply`), until an operator disarms the alarm.
//!
//! No hash has a quorum when too few members answer, or when the members
//! disagree with no majority: nothing is raised then, and the check's report
//! says so. A peer can only report its own hash, so a lying peer can only put
//! itself in the minority. Everything a peer sends is bounded: one waiting
//! query per peer, reports only for the open check and only once per member.

use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::time::{Duration, Instant};

/// Instances whose state hash each member keeps, so that a peer that is a
/// little behind or ahead of the master can still answer: 16 bytes each.
pub const HASH_HISTORY_INSTANCES_MAX: usize = 4_096;

/// How long the master waits for every member's report before it closes a
/// check with what it has.
pub const CHECK_DEADLINE: Duration = Duration::from_secs(5);

/// What a member's history says of its state hash at one instance.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum HashAt {
    /// The hash after applying the instance.
    Known(u64),
    /// Not applied yet.
    NotYet,
    /// Older than the history holds (or before a snapshot installed past it).
    Forgotten,
}

/// The state hash after each of the last applied instances; instances are
/// contiguous from the oldest kept.
#[derive(Debug, Default)]
pub struct HashHistory {
    entries: VecDeque<(u64, u64)>,
}

impl HashHistory {
    /// Forgets everything and starts again at `instance` (a start, or a
    /// snapshot installed): the hashes before it are no longer this member's.
    pub fn reset(&mut self, instance: u64, hash: u64) {
        self.entries.clear();
        self.entries.push_back((instance, hash));
    }

    /// Records the hash after applying `instance`, the one after the last
    /// recorded.
    pub fn record(&mut self, instance: u64, hash: u64) {
        if let Some(&(last, _)) = self.entries.back() {
            assert_eq!(instance, last + 1, "state hashes recorded out of instance order");
        }
        if self.entries.len() == HASH_HISTORY_INSTANCES_MAX {
            self.entries.pop_front();
        }
        self.entries.push_back((instance, hash));
    }

    /// The last instance recorded and its hash.
    pub fn latest(&self) -> Option<(u64, u64)> {
        self.entries.back().copied()
    }

    /// The hash after applying `instance`, if still kept.
    pub fn at(&self, instance: u64) -> HashAt {
        let (Some(&(first, _)), Some(&(last, _))) = (self.entries.front(), self.entries.back()) else {
            return HashAt::NotYet;
        };
        if instance > last {
            HashAt::NotYet
        } else if instance < first {
            HashAt::Forgotten
        } else {
            HashAt::Known(self.entries[(instance - first) as usize].1)
        }
    }
}

/// What one check found, for an on-demand caller and the log.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CheckReport {
    /// The instance compared.
    pub instance: u64,
    /// Each member's hash there: `None` when it did not know it or did not
    /// answer in time.
    pub hashes: BTreeMap<u64, Option<u64>>,
    /// The hash a quorum agrees on, if any.
    pub majority: Option<u64>,
    /// Members whose hash differs from the majority's.
    pub minority: Vec<u64>,
}

/// One open check, at the master.
#[derive(Debug)]
struct Check {
    instance: u64,
    started_at: Instant,
    members: Vec<u64>,
    quorum: usize,
    hashes: BTreeMap<u64, u64>,
    unknown: BTreeSet<u64>,
    minority_found: BTreeSet<u64>,
    waiters: Vec<tokio::sync::oneshot::Sender<CheckReport>>,
}

impl Check {
    fn majority(&self) -> Option<u64> {
        let mut counts: BTreeMap<u64, usize> = BTreeMap::new();
        for hash in self.hashes.values() {
            *counts.entry(*hash).or_default() += 1;
        }
        counts
            .into_iter()
            .find(|&(_, count)| count >= self.quorum)
            .map(|(hash, _)| hash)
    }

    fn is_complete(&self) -> bool {
        self.hashes.len() + self.unknown.len() == self.members.len()
    }

    fn report(&self) -> CheckReport {
        let majority = self.majority();
        CheckReport {
            instance: self.instance,
            hashes: self
                .members
                .iter()
                .map(|member| (*member, self.hashes.get(member).copied()))
                .collect(),
            majority,
            minority: majority.map_or_else(Vec::new, |agreed| {
                self.hashes
                    .iter()
                    .filter(|&(_, hash)| *hash != agreed)
                    .map(|(member, _)| *member)
                    .collect()
            }),
        }
    }

    /// Members newly found in the minority.
    fn newly_in_minority(&mut self) -> Vec<u64> {
        let Some(agreed) = self.majority() else {
            return Vec::new();
        };
        let found: Vec<u64> = self
            .hashes
            .iter()
            .filter(|&(member, hash)| *hash != agreed && !self.minority_found.contains(member))
            .map(|(member, _)| *member)
            .collect();
        self.minority_found.extend(found.iter().copied());
        found
    }
}

/// What the core must do after the checker took an input.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Verdict {
    /// Members to raise the CORRUPT alarm for, with the instance compared.
    pub corrupt: Vec<(u64, u64)>,
    /// A check closed with this report.
    pub closed: Option<CheckReport>,
}

/// Both sides of the check: the history every member keeps, the master's
/// open check, and the queries this member still owes an answer.
#[derive(Debug)]
pub struct ConsistencyChecker {
    /// This member's state hash by applied instance.
    pub history: HashHistory,
    interval: Duration,
    next_check_at: Instant,
    check: Option<Check>,
    owed: BTreeMap<u64, u64>,
}

impl ConsistencyChecker {
    /// A checker that opens a check every `interval` while master (never,
    /// but on demand, if zero).
    pub fn new(interval: Duration, now: Instant) -> ConsistencyChecker {
        ConsistencyChecker {
            history: HashHistory::default(),
            interval,
            next_check_at: now + interval,
            check: None,
            owed: BTreeMap::new(),
        }
    }

    /// Whether the master should open a periodic check now.
    pub fn due(&self, now: Instant) -> bool {
        !self.interval.is_zero() && now >= self.next_check_at
    }

    /// Opens a check at this member's last applied instance among `members`
    /// (this member, `me`, included) and returns the instance to ask the
    /// peers about; an open check is closed first. `waiter`, if any, gets the
    /// report when the check closes.
    pub fn open(
        &mut self,
        now: Instant,
        me: u64,
        members: &[u64],
        waiter: Option<tokio::sync::oneshot::Sender<CheckReport>>,
    ) -> (Option<u64>, Verdict) {
        let closed = self.close();
        self.next_check_at = now + self.interval;
        let Some((instance, hash)) = self.history.latest() else {
            return (None, closed);
        };
        let mut check = Check {
            instance,
            started_at: now,
            members: members.to_vec(),
            quorum: members.len() / 2 + 1,
            hashes: BTreeMap::from([(me, hash)]),
            unknown: BTreeSet::new(),
            minority_found: BTreeSet::new(),
            waiters: Vec::new(),
        };
        check.waiters.extend(waiter);
        self.check = Some(check);
        let mut verdict = self.settle(instance);
        verdict.closed = closed.closed;
        verdict.corrupt.extend(closed.corrupt);
        (Some(instance), verdict)
    }

    /// A peer's hash at `instance` (`None`: it does not know it). Reports for
    /// any other than the open check's instance, or a second one from the
    /// same member, are ignored.
    pub fn on_report(&mut self, from: u64, instance: u64, hash: Option<u64>) -> Verdict {
        let Some(check) = &mut self.check else {
            return Verdict::default();
        };
        if check.instance != instance
            || !check.members.contains(&from)
            || check.hashes.contains_key(&from)
            || check.unknown.contains(&from)
        {
            return Verdict::default();
        }
        match hash {
            Some(hash) => {
                check.hashes.insert(from, hash);
            }
            None => {
                check.unknown.insert(from);
            }
        }
        self.settle(instance)
    }

    fn settle(&mut self, instance: u64) -> Verdict {
        let Some(check) = &mut self.check else {
            return Verdict::default();
        };
        let corrupt = check
            .newly_in_minority()
            .into_iter()
            .map(|member| (member, instance))
            .collect();
        let closed = if check.is_complete() { self.close().closed } else { None };
        Verdict { corrupt, closed }
    }

    /// Closes a check past its deadline.
    pub fn expire(&mut self, now: Instant) -> Verdict {
        match &self.check {
            Some(check) if now >= check.started_at + CHECK_DEADLINE => self.close(),
            _ => Verdict::default(),
        }
    }

    /// Closes the open check, if any, answering its waiters.
    fn close(&mut self) -> Verdict {
        let Some(check) = self.check.take() else {
            return Verdict::default();
        };
        let report = check.report();
        for waiter in check.waiters {
            let _ = waiter.send(report.clone());
        }
        Verdict {
            corrupt: Vec::new(),
            closed: Some(report),
        }
    }

    /// A peer asks for this member's hash at `instance`: the answer now, or
    /// `None` if it is owed once the instance is applied (one owed answer per
    /// peer: a newer query replaces an older one).
    pub fn on_query(&mut self, from: u64, instance: u64) -> Option<Option<u64>> {
        match self.history.at(instance) {
            HashAt::Known(hash) => Some(Some(hash)),
            HashAt::Forgotten => Some(None),
            HashAt::NotYet => {
                self.owed.insert(from, instance);
                None
            }
        }
    }

    /// Answers owed that the history can now give: (peer, instance, hash).
    pub fn answers_due(&mut self) -> Vec<(u64, u64, Option<u64>)> {
        if self.owed.is_empty() {
            return Vec::new();
        }
        let mut due = Vec::new();
        let history = &self.history;
        self.owed.retain(|&peer, &mut instance| match history.at(instance) {
            HashAt::NotYet => true,
            HashAt::Known(hash) => {
                due.push((peer, instance, Some(hash)));
                false
            }
            HashAt::Forgotten => {
                due.push((peer, instance, None));
                false
            }
        });
        due
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn checker_with(instances: std::ops::RangeInclusive<u64>, hash_of: impl Fn(u64) -> u64) -> ConsistencyChecker {
        let mut checker = ConsistencyChecker::new(Duration::from_secs(1), Instant::now());
        let first = *instances.start();
        checker.history.reset(first, hash_of(first));
        for instance in first + 1..=*instances.end() {
            checker.history.record(instance, hash_of(instance));
        }
        checker
    }

    #[test]
    fn the_history_answers_known_not_yet_and_forgotten() {
        let mut history = HashHistory::default();
        assert_eq!(history.at(0), HashAt::NotYet);
        history.reset(10, 100);
        for instance in 11..=10 + HASH_HISTORY_INSTANCES_MAX as u64 {
            history.record(instance, instance * 10);
        }
        assert_eq!(history.at(10), HashAt::Forgotten);
        assert_eq!(history.at(11), HashAt::Known(110));
        assert_eq!(history.latest(), Some((4_106, 41_060)));
        assert_eq!(history.at(4_107), HashAt::NotYet);
    }

    #[test]
    #[should_panic(expected = "out of instance order")]
    fn the_history_refuses_a_gap() {
        let mut history = HashHistory::default();
        history.reset(1, 1);
        history.record(3, 3);
    }

    #[test]
    fn agreeing_members_raise_nothing_and_close_the_check() {
        let mut master = checker_with(1..=20, |instance| instance);
        let (asked, verdict) = master.open(Instant::now(), 1, &[1, 2, 3], None);
        assert_eq!(asked, Some(20));
        assert_eq!(verdict, Verdict::default());
        assert_eq!(master.on_report(2, 20, Some(20)).corrupt, vec![]);
        let verdict = master.on_report(3, 20, Some(20));
        assert!(verdict.corrupt.is_empty());
        let report = verdict.closed.expect("every member answered");
        assert_eq!(report.majority, Some(20));
        assert!(report.minority.is_empty());
    }

    #[test]
    fn a_member_in_the_minority_is_found_once_a_quorum_agrees() {
        let mut master = checker_with(1..=20, |instance| instance);
        let (tx, rx) = tokio::sync::oneshot::channel();
        master.open(Instant::now(), 1, &[1, 2, 3], Some(tx));
        // The diverged member answers first: no quorum agrees yet.
        assert_eq!(master.on_report(3, 20, Some(99)), Verdict::default());
        let verdict = master.on_report(2, 20, Some(20));
        assert_eq!(verdict.corrupt, vec![(3, 20)]);
        let report = verdict.closed.expect("complete");
        assert_eq!(report.minority, vec![3]);
        assert_eq!(rx.blocking_recv().unwrap(), report);
    }

    #[test]
    fn the_master_itself_can_be_the_minority() {
        let mut master = checker_with(1..=5, |_| 7);
        master.open(Instant::now(), 1, &[1, 2, 3], None);
        master.on_report(2, 5, Some(8));
        let verdict = master.on_report(3, 5, Some(8));
        assert_eq!(verdict.corrupt, vec![(1, 5)]);
    }

    #[test]
    fn without_a_quorum_nothing_is_raised() {
        let mut master = checker_with(1..=5, |_| 1);
        master.open(Instant::now(), 1, &[1, 2, 3], None);
        master.on_report(2, 5, Some(2));
        let verdict = master.on_report(3, 5, Some(3));
        assert!(verdict.corrupt.is_empty());
        assert_eq!(verdict.closed.unwrap().majority, None);
        // Unknown answers and a deadline close a check too.
        let mut master = checker_with(1..=5, |_| 1);
        let opened = Instant::now();
        master.open(opened, 1, &[1, 2, 3], None);
        assert_eq!(master.on_report(2, 5, None), Verdict::default());
        assert_eq!(master.expire(opened + CHECK_DEADLINE / 2), Verdict::default());
        let report = master.expire(opened + CHECK_DEADLINE).closed.unwrap();
        assert_eq!(report.hashes, BTreeMap::from([(1, Some(1)), (2, None), (3, None)]));
    }

    #[test]
    fn stray_duplicate_and_stranger_reports_are_ignored() {
        let mut master = checker_with(1..=5, |_| 1);
        assert_eq!(master.on_report(2, 5, Some(9)), Verdict::default());
        master.open(Instant::now(), 1, &[1, 2, 3, 4, 5], None);
        assert_eq!(master.on_report(2, 4, Some(9)), Verdict::default());
        assert_eq!(master.on_report(77, 5, Some(9)), Verdict::default());
        master.on_report(2, 5, Some(1));
        // A second report from member 2 cannot change its first.
        master.on_report(2, 5, Some(9));
        let verdict = master.on_report(3, 5, Some(1));
        assert!(verdict.corrupt.is_empty());
        let verdict = master.on_report(4, 5, Some(9));
        assert_eq!(verdict.corrupt, vec![(4, 5)]);
    }

    #[test]
    fn a_peer_behind_answers_once_it_applied_the_instance() {
        let mut peer = checker_with(1..=3, |instance| instance * 2);
        assert_eq!(peer.on_query(1, 2), Some(Some(4)));
        assert_eq!(peer.on_query(1, 5), None);
        // A newer query from the same peer replaces the one owed.
        assert_eq!(peer.on_query(1, 6), None);
        peer.history.record(4, 8);
        peer.history.record(5, 10);
        assert!(peer.answers_due().is_empty());
        peer.history.record(6, 12);
        assert_eq!(peer.answers_due(), vec![(1, 6, Some(12))]);
        assert!(peer.answers_due().is_empty());
        // Past a snapshot installed beyond it, the hash is not known.
        assert_eq!(peer.on_query(1, 9), None);
        peer.history.reset(20, 1);
        assert_eq!(peer.answers_due(), vec![(1, 9, None)]);
    }

    #[test]
    fn periodic_checks_follow_the_interval_and_zero_means_on_demand_only() {
        let start = Instant::now();
        let mut checker = checker_with(1..=1, |_| 0);
        checker.next_check_at = start + Duration::from_secs(1);
        assert!(!checker.due(start));
        assert!(checker.due(start + Duration::from_secs(1)));
        checker.open(start + Duration::from_secs(1), 1, &[1], None);
        assert!(!checker.due(start + Duration::from_millis(1_500)));
        let never = ConsistencyChecker::new(Duration::ZERO, start);
        assert!(!never.due(start + Duration::from_secs(3_600)));
    }
}
