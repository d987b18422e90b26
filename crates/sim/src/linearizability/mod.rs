//! A linearizability checker for recorded client histories.
//!
//! A test records, for every client operation, when it was called, when it returned (if it did)
//! and what it returned, then asks [`check`] whether some sequential execution of a [`Model`]
//! explains every output while respecting real-time order: if operation A returned before
//! operation B was called, A must take effect before B.
//!
//! # Algorithm
//!
//! Wing & Gong's search with Lowe's memoization, the design Porcupine also uses:
//!
//! - Calls and returns are laid out in one list ordered by time. The search walks the list from
//!   the front; at a call it tries to *linearize* that operation now (apply it to the model);
//!   reaching a return whose operation is still pending means an operation that had to take
//!   effect by then did not, so the search backtracks.
//! - A cache of (set of linearized operations, model state) pairs already explored prunes the
//!   search: two paths reaching the same pair face the same remaining problem. This is what
//!   makes histories with thousands of operations check in milliseconds.
//! - The history is split by [`Model::partition_key`] (P-compositionality: a history is
//!   linearizable iff every per-key sub-history is) and each part is checked alone, which keeps
//!   the exponential part of the search small.
//!
//! # Unknown outcomes
//!
//! A client that timed out does not know whether its operation took effect. Such an operation is
//! recorded with `return_time: None` and `output: None`. It is treated as returning at infinity
//! with any output: the search may linearize it anywhere after its call (through
//! [`Model::step_unknown_output`]) or leave it out altogether, as a write that never happened.
//!
//! Timeouts are what make real histories hard, because an operation that never returns stays
//! concurrent with everything after it. Two rules keep that in check:
//!
//! - The search lets an unknown-outcome operation take effect only when no known-outcome one
//!   can go next, since it never *has* to take effect.
//! - The memoization treats a node as covered by an earlier one with the same state, the same
//!   known-outcome operations linearized and a *subset* of the unknown-outcome ones: the earlier
//!   node can still do everything the later one can. So pending timeouts that nobody observed
//!   cost a few visits each instead of every subset of them.
//!
//! # Budget
//!
//! The search is exponential in the worst case, so it counts its steps against a [`Budget`].
//! Running out yields [`CheckResult::Unknown`], never [`CheckResult::Ok`]: a checker that gives
//! up must not be read as a pass.
//!
//! # Recording a history
//!
//! Record `call_time` when the client hands the request to the system and `return_time` when
//! it sees the answer, both in simulated ticks. A request the client gave up on (timeout,
//! crash, lost connection) is recorded with [`Operation::unknown_outcome`], never dropped and
//! never given a guessed output. Give every write a value no other write uses: reads then pin
//! down which write they saw, which keeps the search narrow and the reports readable.
//!
//! # Limits
//!
//! Measured in a release build on the project's machine, 2,000 register operations: from ten
//! closed-loop clients on a single key, a legal history checks in 0.1 to 0.5 s and a planted
//! stale read is proven illegal in 2 to 6 s; from twenty clients over eight keys with 5% of the
//! operations timing out, either verdict takes well under a second. Twenty clients all on one
//! key exhaust the default budget. Spread a workload over keys rather than raise the budget.
//!
//! # Architecture invariants
//!
//! **The checker does no I/O and reads no clock:** the budget is counted in search steps, so the
//! same history and budget always give the same answer.
//!
//! # Example
//!
//! ```
//! use synod_sim::linearizability::{
//!     check, Budget, CheckResult, Operation, RegisterInput, RegisterModel, RegisterOutput,
//! };
//!
//! let history = vec![
//!     Operation::returned(1, RegisterInput::Write { key: "x", value: 1 }, 0, 10, RegisterOutput::Write),
//!     // Overlaps the write, so it may see either the old or the new value.
//!     Operation::returned(2, RegisterInput::Read { key: "x" }, 5, 15, RegisterOutput::Read(None)),
//!     // A timed-out write: it may or may not have happened.
//!     Operation::unknown_outcome(3, RegisterInput::Write { key: "x", value: 2 }, 20),
//!     Operation::returned(2, RegisterInput::Read { key: "x" }, 30, 40, RegisterOutput::Read(Some(2))),
//! ];
//! let result = check(&RegisterModel::new(), &history, Budget::default()).unwrap();
//! assert_eq!(result, CheckResult::Ok);
//! ```

mod append_log;
mod register;
mod search;

use std::collections::BTreeMap;
use std::fmt;
use std::hash::Hash;

pub use append_log::{AppendLogInput, AppendLogModel, AppendLogOutput};
pub use register::{RegisterInput, RegisterModel, RegisterOutput};

/// The sequential specification the history is checked against.
///
/// The model is pure: `step` must depend only on its arguments, or the memoization in the
/// search (which assumes equal states behave equally) gives wrong answers.
pub trait Model {
    /// The state of one partition. Equality and hashing must capture everything that affects
    /// future steps, since the search merges paths that reach equal states.
    type State: Clone + Eq + Hash + fmt::Debug;
    /// What a client asked for.
    type Input: fmt::Debug;
    /// What the system answered.
    type Output: fmt::Debug;
    /// Names one independent part of the state, such as a key in a key-value store.
    type PartitionKey: Clone + Ord + fmt::Debug;

    /// The state every partition starts in.
    fn init(&self) -> Self::State;

    /// Applies `input` to `state` given that the system answered `output`.
    ///
    /// Returns `None` when that output is impossible from this state, which is what rules out
    /// a candidate linearization.
    fn step(&self, state: &Self::State, input: &Self::Input, output: &Self::Output) -> Option<Self::State>;

    /// Every state `input` could lead to from `state` when its output was never seen.
    ///
    /// Used for operations with an unknown outcome that the search decides did take effect. An
    /// empty vector means the operation cannot have taken effect from this state (the search
    /// still tries leaving it out). The order of the states is the order the search tries them
    /// in, so it must be deterministic.
    fn step_unknown_output(&self, state: &Self::State, input: &Self::Input) -> Vec<Self::State>;

    /// The partition `input` belongs to, for P-compositionality.
    ///
    /// Return `None` for a model whose operations cannot be split, such as one with multi-key
    /// transactions. If any operation has no key the whole history is checked as a single
    /// partition (reported as partition `None`), because splitting it would be unsound.
    fn partition_key(&self, input: &Self::Input) -> Option<Self::PartitionKey>;

    /// Whether `input` never changes the state, like a read.
    ///
    /// The checker drops such operations when their outcome is unknown: they constrain nothing,
    /// yet each one would otherwise stay pending to the end of the history and double the
    /// space an unsuccessful search explores. The default, `false`, is always sound.
    fn is_read_only(&self, input: &Self::Input) -> bool {
        let _ = input;
        false
    }
}

/// One client operation as observed from outside the system.
///
/// Times are in any unit that is consistent across the history (simulated ticks, say). An
/// operation A precedes B in real time only if `A.return_time < B.call_time`; equal times are
/// treated as overlapping, which is the cautious choice when a clock cannot order two events.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Operation<Input, Output> {
    /// The client that issued the operation. Not used by the search itself (a client's own
    /// operations are already ordered by their times) but kept for reports.
    pub client_id: u64,
    /// What the client asked for.
    pub input: Input,
    /// When the client issued the request.
    pub call_time: u64,
    /// When the client saw the answer; `None` if it never did (timeout, crash), in which case
    /// the operation may or may not have taken effect.
    pub return_time: Option<u64>,
    /// The answer; `None` exactly when `return_time` is `None`.
    pub output: Option<Output>,
}

impl<Input, Output> Operation<Input, Output> {
    /// An operation whose answer the client received.
    pub fn returned(client_id: u64, input: Input, call_time: u64, return_time: u64, output: Output) -> Self {
        Self {
            client_id,
            input,
            call_time,
            return_time: Some(return_time),
            output: Some(output),
        }
    }

    /// An operation whose answer never arrived: it may or may not have taken effect.
    pub fn unknown_outcome(client_id: u64, input: Input, call_time: u64) -> Self {
        Self {
            client_id,
            input,
            call_time,
            return_time: None,
            output: None,
        }
    }

    /// Whether the client saw how the operation ended.
    pub fn has_known_outcome(&self) -> bool {
        self.return_time.is_some()
    }
}

/// A malformed history: a recording bug in the test, not a finding about the system.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum HistoryError {
    /// The operation at `operation_index` returned before it was called.
    ReturnBeforeCall {
        /// Index into the history slice.
        operation_index: usize,
    },
    /// The operation has an output but no return time, or a return time but no output.
    OutputAndReturnTimeDisagree {
        /// Index into the history slice.
        operation_index: usize,
    },
}

impl fmt::Display for HistoryError {
    fn fmt(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::ReturnBeforeCall { operation_index } => {
                write!(formatter, "operation {operation_index} returns before it is called")
            }
            Self::OutputAndReturnTimeDisagree { operation_index } => write!(
                formatter,
                "operation {operation_index} must have both a return time and an output, or neither"
            ),
        }
    }
}

impl std::error::Error for HistoryError {}

/// How much search the checker may do before giving up with [`CheckResult::Unknown`].
///
/// Counted in search steps (one step is one visit to a call or return in the search), not in
/// wall-clock time, so a check is reproducible on any machine.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Budget {
    /// Steps allowed for the whole history, all partitions together.
    pub steps_max: u64,
}

impl Budget {
    /// A budget of `steps_max` search steps.
    pub fn steps(steps_max: u64) -> Self {
        Self { steps_max }
    }
}

impl Default for Budget {
    /// Ten million steps: a few seconds at most (a step costs a few hundred nanoseconds in a
    /// release build). A legal history of a few thousand operations from about ten clients
    /// needs well under a tenth of that; proving one illegal can need most of it, because the
    /// search must rule out every order of the concurrent operations before the violation.
    fn default() -> Self {
        Self { steps_max: 10_000_000 }
    }
}

/// The verdict on a history.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum CheckResult<PartitionKey, State> {
    /// Every partition has a linearization.
    Ok,
    /// Some partition has none: the system broke linearizability (or the model is wrong).
    Illegal(IllegalReport<PartitionKey, State>),
    /// The budget ran out before an answer was found. This is not a pass.
    Unknown {
        /// The partition being searched when the budget ran out; `None` for an unsplit history.
        partition: Option<PartitionKey>,
        /// Steps spent before giving up.
        steps_used: u64,
    },
}

impl<PartitionKey, State> CheckResult<PartitionKey, State> {
    /// Whether the history was shown linearizable.
    pub fn is_ok(&self) -> bool {
        matches!(self, Self::Ok)
    }

    /// Whether the history was shown not linearizable.
    pub fn is_illegal(&self) -> bool {
        matches!(self, Self::Illegal(_))
    }
}

/// The result type [`check`] gives for model `M`.
pub type ModelCheckResult<M> = CheckResult<<M as Model>::PartitionKey, <M as Model>::State>;

/// Why a partition is not linearizable, as far as the search could tell.
///
/// The search cannot name one culprit (any operation might be the wrong one), so it reports the
/// deepest point it reached: the longest sequence of operations it could linearize, the state
/// that left the model in, and the operation that then had to take effect but could not.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct IllegalReport<PartitionKey, State> {
    /// The partition with no linearization; `None` for an unsplit history.
    pub partition: Option<PartitionKey>,
    /// Indices into the history slice, in the order they were linearized, of the longest prefix
    /// the search found.
    pub longest_linearized_prefix: Vec<usize>,
    /// The model state after that prefix.
    pub state_after_prefix: State,
    /// Index into the history slice of an operation that had returned by this point in time
    /// but could not be linearized after the prefix.
    pub operation_not_placed: usize,
}

impl<PartitionKey: fmt::Debug, State: fmt::Debug> fmt::Display for IllegalReport<PartitionKey, State> {
    fn fmt(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            formatter,
            "partition {:?} is not linearizable: after operations {:?} (state {:?}) operation {} \
             could not be placed",
            self.partition, self.longest_linearized_prefix, self.state_after_prefix, self.operation_not_placed
        )
    }
}

/// Checks whether `history` is linearizable with respect to `model`.
///
/// Partitions are checked in key order and the first illegal one is reported. The budget is
/// shared by all partitions; when it runs out the result is [`CheckResult::Unknown`] even if
/// partitions checked earlier passed. An empty history is linearizable.
///
/// # Errors
///
/// [`HistoryError`] if an operation returns before it is called, or has an output without a
/// return time (or the reverse).
pub fn check<M: Model>(
    model: &M,
    history: &[Operation<M::Input, M::Output>],
    budget: Budget,
) -> Result<ModelCheckResult<M>, HistoryError> {
    validate(history)?;
    let mut steps_used = 0;
    for (partition, operation_indices) in partitions(model, history) {
        let outcome = search::search(model, history, &operation_indices, &mut steps_used, budget.steps_max);
        match outcome {
            search::SearchOutcome::Linearizable => {}
            search::SearchOutcome::BudgetExhausted => {
                return Ok(CheckResult::Unknown { partition, steps_used });
            }
            search::SearchOutcome::NotLinearizable(deepest) => {
                return Ok(CheckResult::Illegal(IllegalReport {
                    partition,
                    longest_linearized_prefix: deepest.linearized_prefix,
                    state_after_prefix: deepest.state_after_prefix,
                    operation_not_placed: deepest.operation_not_placed,
                }));
            }
        }
    }
    Ok(CheckResult::Ok)
}

fn validate<Input, Output>(history: &[Operation<Input, Output>]) -> Result<(), HistoryError> {
    for (operation_index, operation) in history.iter().enumerate() {
        if operation.return_time.is_some() != operation.output.is_some() {
            return Err(HistoryError::OutputAndReturnTimeDisagree { operation_index });
        }
        if let Some(return_time) = operation.return_time {
            if return_time < operation.call_time {
                return Err(HistoryError::ReturnBeforeCall { operation_index });
            }
        }
    }
    Ok(())
}

/// Groups operation indices by partition key, in key order, keeping history order inside each
/// group. Falls back to one group when any operation has no key (see [`Model::partition_key`]).
/// Leaves out read-only operations with unknown outcomes (see [`Model::is_read_only`]).
fn partitions<M: Model>(
    model: &M,
    history: &[Operation<M::Input, M::Output>],
) -> Vec<(Option<M::PartitionKey>, Vec<usize>)> {
    let mut groups: BTreeMap<M::PartitionKey, Vec<usize>> = BTreeMap::new();
    let matters = |operation: &Operation<M::Input, M::Output>| {
        operation.has_known_outcome() || !model.is_read_only(&operation.input)
    };
    for (operation_index, operation) in history.iter().enumerate() {
        if !matters(operation) {
            continue;
        }
        match model.partition_key(&operation.input) {
            Some(key) => groups.entry(key).or_default().push(operation_index),
            None => {
                let everything = (0..history.len()).filter(|&index| matters(&history[index])).collect();
                return vec![(None, everything)];
            }
        }
    }
    groups
        .into_iter()
        .map(|(key, operation_indices)| (Some(key), operation_indices))
        .collect()
}
