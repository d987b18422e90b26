//! When each operation starts and when the run stops.
//!
//! Closed loop: each client sends its next request as soon as the previous
//! reply arrives, so the offered load follows the system's speed. Open loop
//! (`--rate-per-s`): operation `n` is due at `n / rate` seconds after the
//! start whatever happened before, and its latency is measured from that due
//! time, not from when a client got round to sending it; otherwise a stall
//! would delay the requests behind it and hide their wait (coordinated
//! omission).
//!
//! Operations are numbered by one shared counter, so `--total` is exact across
//! clients and the open-loop schedule is global.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use tokio::time::Instant;

/// What ends a run.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Stop {
    /// Stop starting operations once this long has passed.
    After(Duration),
    /// Stop after this many operations.
    Total(u64),
}

/// Pacing and stopping, without the clock: pure, so it can be tested exactly.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Plan {
    /// What ends the run.
    pub stop: Stop,
    /// Operations per second in open loop; `None` for closed loop.
    pub rate_per_s: Option<u64>,
}

impl Plan {
    /// When operation `op` is due, measured from the start; `None` in closed loop (now).
    pub fn due(&self, op: u64) -> Option<Duration> {
        let rate = self.rate_per_s?.max(1);
        let nanos = u128::from(op) * 1_000_000_000 / u128::from(rate);
        Some(Duration::from_nanos(u64::try_from(nanos).unwrap_or(u64::MAX)))
    }

    /// Whether operation `op` may start when `elapsed` has passed since the start.
    pub fn admits(&self, op: u64, elapsed: Duration) -> bool {
        match self.stop {
            Stop::Total(total) => op < total,
            // In open loop an operation belongs to the run if it is due within it, so a
            // client that fell behind still sends what was scheduled before the end.
            Stop::After(length) => self.due(op).unwrap_or(elapsed) < length,
        }
    }

    /// The number of operations the run will issue, if known in advance.
    pub fn expected_ops(&self) -> Option<u64> {
        match (self.stop, self.rate_per_s) {
            (Stop::Total(total), _) => Some(total),
            (Stop::After(length), Some(rate)) => {
                let ops = length.as_nanos() * u128::from(rate) / 1_000_000_000;
                Some(u64::try_from(ops).unwrap_or(u64::MAX))
            }
            (Stop::After(_), None) => None,
        }
    }
}

/// A started operation: its number and when it counts as started.
#[derive(Clone, Copy, Debug)]
pub struct Ticket {
    /// The operation's number, from 0.
    pub op: u64,
    /// The time its latency is measured from (its due time in open loop).
    pub start: Instant,
}

/// The shared schedule of a running measurement.
#[derive(Debug)]
pub struct Schedule {
    plan: Plan,
    start: Instant,
    next: AtomicU64,
}

impl Schedule {
    /// A schedule starting now.
    pub fn start(plan: Plan) -> Schedule {
        Schedule {
            plan,
            start: Instant::now(),
            next: AtomicU64::new(0),
        }
    }

    /// When the measurement started.
    pub fn started(&self) -> Instant {
        self.start
    }

    /// The plan this schedule follows.
    pub fn plan(&self) -> Plan {
        self.plan
    }

    /// Operations handed out so far.
    pub fn issued(&self) -> u64 {
        self.next.load(Ordering::Relaxed)
    }

    /// Takes the next operation, waiting for its due time in open loop; `None` when the run
    /// is over.
    pub async fn next(&self) -> Option<Ticket> {
        let op = self.next.fetch_add(1, Ordering::Relaxed);
        if !self.plan.admits(op, self.start.elapsed()) {
            return None;
        }
        match self.plan.due(op) {
            Some(due) => {
                let start = self.start + due;
                tokio::time::sleep_until(start).await;
                Some(Ticket { op, start })
            }
            None => Some(Ticket {
                op,
                start: Instant::now(),
            }),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn closed_loop_has_no_due_times() {
        let plan = Plan {
            stop: Stop::Total(3),
            rate_per_s: None,
        };
        assert_eq!(plan.due(5), None);
        assert!(plan.admits(2, Duration::from_secs(100)));
        assert!(!plan.admits(3, Duration::ZERO));
        assert_eq!(plan.expected_ops(), Some(3));
    }

    #[test]
    fn open_loop_spaces_operations_by_the_rate() {
        let plan = Plan {
            stop: Stop::After(Duration::from_secs(2)),
            rate_per_s: Some(4),
        };
        assert_eq!(plan.due(0), Some(Duration::ZERO));
        assert_eq!(plan.due(1), Some(Duration::from_millis(250)));
        assert_eq!(plan.due(6), Some(Duration::from_millis(1_500)));
        // Operations due inside the run are admitted even when the clock has passed its end.
        assert!(plan.admits(7, Duration::from_secs(5)));
        assert!(!plan.admits(8, Duration::ZERO));
        assert_eq!(plan.expected_ops(), Some(8));
    }

    #[test]
    fn duration_bounds_a_closed_loop_by_the_clock() {
        let plan = Plan {
            stop: Stop::After(Duration::from_secs(1)),
            rate_per_s: None,
        };
        assert!(plan.admits(1_000_000, Duration::from_millis(999)));
        assert!(!plan.admits(0, Duration::from_secs(1)));
        assert_eq!(plan.expected_ops(), None);
    }

    #[tokio::test(start_paused = true)]
    async fn a_schedule_hands_out_each_operation_once() {
        let schedule = Schedule::start(Plan {
            stop: Stop::Total(4),
            rate_per_s: Some(10),
        });
        let mut ops = Vec::new();
        while let Some(ticket) = schedule.next().await {
            ops.push(ticket.op);
            assert_eq!(
                ticket.start - schedule.started(),
                Duration::from_millis(100 * ticket.op)
            );
        }
        assert_eq!(ops, [0, 1, 2, 3]);
        assert!(schedule.next().await.is_none());
    }
}
