//! Client workloads and the checkers of their histories.
//!
//! Every workload runs its clients over the etcd v3 API against the members'
//! client endpoints while the harness injects faults, records what each
//! operation was asked and answered (an operation whose answer never came is
//! recorded as of unknown outcome, never dropped and never guessed), and,
//! once [`Context::stop`] is cancelled (every fault healed, the group
//! live again), makes its final reads and checks its history.

use std::sync::Arc;
use std::time::Instant;

use tokio_util::sync::CancellationToken;

/// What a workload is given by the harness.
#[derive(Clone, Debug)]
pub struct Context {
    /// Client URLs (`http://127.0.0.1:PORT`), one per member, in member order.
    pub endpoints: Vec<String>,
    /// Times in histories are microseconds since this instant.
    pub origin: Instant,
    /// Seeds the workload's own random choices (keys, values, members).
    pub seed: u64,
    /// Cancelled when the safety phase is over and every fault is healed:
    /// stop issuing operations, make final reads, return the report.
    pub stop: CancellationToken,
}

impl Context {
    /// Microseconds since [`Context::origin`].
    pub fn now_us(&self) -> u64 {
        self.origin.elapsed().as_micros() as u64
    }
}

/// What a workload did and what its checker found.
#[derive(Clone, Debug, Default, serde::Serialize)]
pub struct WorkloadReport {
    /// The workload's name, e.g. `register`.
    pub name: String,
    /// Operations issued.
    pub attempted: u64,
    /// Operations answered with success.
    pub ok: u64,
    /// Operations answered with an error that proves they did not take effect.
    pub failed: u64,
    /// Operations whose outcome is unknown (timeout, lost connection).
    pub unknown: u64,
    /// What was checked, in one line (e.g. "16 keys, 3,200 operations: linearizable").
    pub checked: String,
    /// Violations found; each names what it saw. Must be empty.
    pub anomalies: Vec<String>,
    /// The checker could not decide (e.g. the search ran out of budget):
    /// never read as a pass.
    pub inconclusive: Vec<String>,
}

/// Shared handle to a workload's context.
pub type SharedContext = Arc<Context>;
