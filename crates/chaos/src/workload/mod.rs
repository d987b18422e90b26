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

pub mod client;
pub mod lease;
pub mod lock;
pub mod register;
pub mod set;
pub mod watch;

/// The names of every workload, in the order the harness runs them.
pub const ALL: &[&str] = &["register", "set", "lock", "lease", "watch"];

/// Runs the workload called `name` (one of [`ALL`]) until `ctx.stop` is
/// cancelled, then checks its history.
///
/// An unknown name gives a report whose `inconclusive` says so: no history
/// was checked, so it must not read as a pass.
pub async fn run(name: &str, ctx: SharedContext) -> WorkloadReport {
    match name {
        "register" => register::run(ctx).await,
        "set" => set::run(ctx).await,
        "lock" => lock::run(ctx).await,
        "lease" => lease::run(ctx).await,
        "watch" => watch::run(ctx).await,
        _ => WorkloadReport {
            name: name.to_string(),
            inconclusive: vec![format!("no workload is called {name:?}; the workloads are {ALL:?}")],
            ..WorkloadReport::default()
        },
    }
}

/// What a checker concluded about one history.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Verdict {
    /// What was checked, in one line.
    pub checked: String,
    /// Violations found.
    pub anomalies: Vec<String>,
    /// Questions the checker could not decide.
    pub inconclusive: Vec<String>,
}

impl WorkloadReport {
    /// A report for workload `name` with nothing done yet.
    pub fn named(name: &str) -> WorkloadReport {
        WorkloadReport {
            name: name.to_string(),
            ..WorkloadReport::default()
        }
    }

    /// Adds a checker's findings to the report.
    pub fn add_verdict(&mut self, verdict: Verdict) {
        if !verdict.checked.is_empty() {
            if !self.checked.is_empty() {
                self.checked.push_str("; ");
            }
            self.checked.push_str(&verdict.checked);
        }
        self.anomalies.extend(verdict.anomalies);
        self.inconclusive.extend(verdict.inconclusive);
    }

    /// Adds operation counts to the report.
    pub fn add_counts(&mut self, counts: &client::Counts) {
        self.attempted += counts.attempted;
        self.ok += counts.ok;
        self.failed += counts.failed;
        self.unknown += counts.unknown;
    }
}
