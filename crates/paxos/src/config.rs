//! Configuration of one replica, with [`Config::validate`].

use std::collections::BTreeSet;
use std::time::Duration;

use crate::NodeId;

/// Every tunable of the core, each with its unit in its name.
#[derive(Clone, Debug)]
pub struct Config {
    /// This replica.
    pub node: NodeId,
    /// Every member of the group, this replica included. Fixed for the group's life.
    pub members: Vec<NodeId>,
    /// PaxosLease lease length. An acceptor that grants a lease refuses every other
    /// proposer (and every other Multi-Paxos prepare) for this long on its own clock;
    /// a restarted acceptor stays silent for this long.
    pub lease_duration: Duration,
    /// How often the master runs PaxosLease again to extend its lease.
    pub lease_renew_interval: Duration,
    /// How long a replica that hears no master waits before it tries to take the lease.
    pub election_timeout: Duration,
    /// How often the master tells every replica its commit point (the heartbeat).
    pub heartbeat_interval: Duration,
    /// How long an unanswered prepare, accept or catch-up request waits before it is resent.
    pub retransmit_interval: Duration,
    /// Upper bound of the random back-off after a failed lease attempt (duelling proposers).
    pub backoff_max: Duration,
    /// Bound on how far any two replicas' clock rates may differ from real time, in
    /// parts per million. Master leases for reads are only as safe as this bound.
    pub clock_drift_max_ppm: u64,
    /// Pipelining window (alpha): instances the master may have proposed beyond its commit point.
    pub window_instances_max: u64,
    /// Values one batch (one instance) may carry.
    pub batch_values_max: usize,
    /// Bytes of values one batch may carry.
    pub batch_bytes_max: usize,
    /// Largest single value accepted by `submit`.
    pub value_bytes_max: usize,
    /// Values waiting at the master for a free instance.
    pub submit_queue_values_max: usize,
    /// Bytes waiting at the master for a free instance.
    pub submit_queue_bytes_max: usize,
    /// An acceptor accepts no instance more than this far above its known-chosen prefix;
    /// it catches up first. Bounds every acceptor's uncommitted log and every promise.
    pub accept_ahead_instances_max: u64,
    /// Instances one catch-up reply may carry.
    pub catchup_instances_max: u64,
    /// Payload bytes one message may carry; promises and catch-up replies are cut to it.
    pub message_bytes_max: usize,
}

/// A configuration that would be unsafe or unworkable.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid configuration: {0}")]
pub struct ConfigError(pub String);

impl Config {
    /// Defaults for a group of `members`, seen from `node`.
    pub fn new(node: NodeId, members: Vec<NodeId>) -> Config {
        Config {
            node,
            members,
            lease_duration: Duration::from_millis(2_000),
            lease_renew_interval: Duration::from_millis(500),
            election_timeout: Duration::from_millis(1_000),
            heartbeat_interval: Duration::from_millis(100),
            retransmit_interval: Duration::from_millis(200),
            backoff_max: Duration::from_millis(300),
            clock_drift_max_ppm: 10_000,
            window_instances_max: 32,
            batch_values_max: 4_096,
            batch_bytes_max: 4 << 20,
            value_bytes_max: 2 << 20,
            submit_queue_values_max: 65_536,
            submit_queue_bytes_max: 64 << 20,
            accept_ahead_instances_max: 256,
            catchup_instances_max: 64,
            message_bytes_max: 8 << 20,
        }
    }

    /// Majority size.
    pub fn quorum(&self) -> usize {
        self.members.len() / 2 + 1
    }

    /// How long the lease holder may count on its lease from the moment it started
    /// asking for it, on its own clock: the acceptors' timers (started later, on
    /// their clocks) run for `lease_duration`; with rates within `ρ` of real time,
    /// the holder's share is `lease_duration · (1 − ρ) / (1 + ρ)`.
    pub fn lease_holder_duration(&self) -> Duration {
        let rho = self.clock_drift_max_ppm as u128;
        let nanos = self.lease_duration.as_nanos() * (1_000_000 - rho) / (1_000_000 + rho);
        Duration::from_nanos(nanos as u64)
    }

    /// Rejects unsafe or unworkable combinations.
    pub fn validate(&self) -> Result<(), ConfigError> {
        let fail = |message: String| Err(ConfigError(message));
        if self.members.is_empty() {
            return fail("members is empty".into());
        }
        let unique: BTreeSet<NodeId> = self.members.iter().copied().collect();
        if unique.len() != self.members.len() {
            return fail("members lists a node twice".into());
        }
        if self.members.len() > 63 {
            return fail("at most 63 members".into());
        }
        if unique.contains(&NodeId(0)) {
            return fail("node id 0 is reserved".into());
        }
        if !unique.contains(&self.node) {
            return fail(format!("node {} is not among the members", self.node));
        }
        if self.clock_drift_max_ppm >= 100_000 {
            return fail("clock_drift_max_ppm must be below 100000 (10%)".into());
        }
        let holder = self.lease_holder_duration();
        if self.lease_renew_interval.is_zero() || self.lease_renew_interval * 2 > holder {
            return fail(format!(
                "lease_renew_interval ({:?}) must be at most half the lease the holder may count on ({:?} after clock drift)",
                self.lease_renew_interval, holder
            ));
        }
        if self.retransmit_interval.is_zero() || self.retransmit_interval * 2 > holder {
            return fail("retransmit_interval must be at most half the holder's lease".into());
        }
        if self.heartbeat_interval.is_zero() || self.heartbeat_interval * 2 > self.election_timeout {
            return fail(
                "heartbeat_interval must be at most half the election_timeout, or followers depose a live master"
                    .into(),
            );
        }
        if self.lease_duration > self.election_timeout * 10 {
            return fail(format!(
                "lease_duration ({:?}) is more than 10 election timeouts ({:?}): a dead master would block the group that long",
                self.lease_duration, self.election_timeout
            ));
        }
        if self.backoff_max.is_zero() {
            return fail(
                "backoff_max must be positive: without random back-off duelling proposers can livelock".into(),
            );
        }
        if self.window_instances_max == 0 || self.window_instances_max > 4_096 {
            return fail("window_instances_max must be in 1..=4096".into());
        }
        if self.accept_ahead_instances_max < self.window_instances_max * 2 {
            return fail("accept_ahead_instances_max must be at least twice window_instances_max".into());
        }
        if self.batch_values_max == 0 || self.submit_queue_values_max < self.batch_values_max {
            return fail("need 0 < batch_values_max <= submit_queue_values_max".into());
        }
        if self.value_bytes_max == 0 || self.value_bytes_max > self.batch_bytes_max {
            return fail("value_bytes_max must be positive and at most batch_bytes_max".into());
        }
        if self.submit_queue_bytes_max < self.batch_bytes_max {
            return fail("submit_queue_bytes_max must be at least batch_bytes_max".into());
        }
        if self.message_bytes_max < self.batch_bytes_max + 4_096 {
            return fail("message_bytes_max must exceed batch_bytes_max by at least 4096 bytes of framing".into());
        }
        if self.catchup_instances_max == 0 {
            return fail("catchup_instances_max must be positive".into());
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn three() -> Config {
        Config::new(NodeId(1), vec![NodeId(1), NodeId(2), NodeId(3)])
    }

    #[test]
    fn defaults_are_valid() {
        three().validate().unwrap();
        assert_eq!(three().quorum(), 2);
    }

    #[test]
    fn unsafe_combinations_are_rejected() {
        let mut c = three();
        c.lease_renew_interval = c.lease_duration;
        assert!(c.validate().is_err(), "renewing no faster than the lease runs out");
        let mut c = three();
        c.clock_drift_max_ppm = 200_000;
        assert!(c.validate().is_err());
        let mut c = three();
        c.heartbeat_interval = c.election_timeout;
        assert!(c.validate().is_err());
        let mut c = three();
        c.node = NodeId(9);
        assert!(c.validate().is_err());
        let mut c = three();
        c.members.push(NodeId(2));
        assert!(c.validate().is_err());
        let mut c = three();
        c.value_bytes_max = c.batch_bytes_max + 1;
        assert!(c.validate().is_err());
    }

    #[test]
    fn holder_counts_on_less_than_the_acceptors() {
        let c = three();
        let holder = c.lease_holder_duration();
        assert!(holder < c.lease_duration);
        // 2 s at 1% drift: 2 * 0.99 / 1.01
        assert_eq!(holder.as_millis(), 1960);
    }
}
