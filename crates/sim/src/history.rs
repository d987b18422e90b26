//! The clients' history: every write and lease read with its call and return
//! times, checked for linearizability at the end of a run.

use crate::linearizability::{check, Budget, CheckResult, Operation, RegisterInput, RegisterModel, RegisterOutput};

/// The linearizability checker's answer for one history.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Verdict {
    /// Some order of the operations, each taking effect between its call and
    /// its return, explains every read.
    Linearizable,
    /// No such order exists, or the history is malformed: what went wrong.
    Violation(String),
    /// The search ran out of its step budget: neither pass nor fail.
    Inconclusive,
}

/// What an operation did.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum OperationKind {
    /// A write of this value.
    Write(String),
    /// A read: `None` while it has not returned, then the value read, where
    /// `None` inside means the key was absent.
    Read(Option<Option<String>>),
}

/// One client operation as the history records it.
#[derive(Clone, Debug)]
pub struct Recorded {
    /// The client that invoked it.
    pub client: usize,
    /// The key it read or wrote.
    pub key: String,
    /// The write, or the read and what it saw.
    pub kind: OperationKind,
    /// Logical time of the call (see [`History`]).
    pub call: u64,
    /// `None`: the outcome is unknown (it may or may not have taken effect).
    pub returned: Option<u64>,
    /// Definitely did not take effect (a rejected submit).
    pub failed: bool,
}

/// Every client operation of a run, in the order invoked. Times are logical:
/// a counter bumped at every call and return, so real-time order in the
/// simulation is exact.
#[derive(Debug, Default)]
pub struct History {
    operations: Vec<Recorded>,
    clock: u64,
    liveness_mark: Option<u64>,
}

impl History {
    /// Advances the logical clock and returns the new time, for a call or a return.
    pub fn next_time(&mut self) -> u64 {
        self.clock += 1;
        self.clock
    }

    /// Number of operations invoked.
    pub fn len(&self) -> usize {
        self.operations.len()
    }

    /// Whether no operation was invoked yet.
    pub fn is_empty(&self) -> bool {
        self.operations.is_empty()
    }

    /// The operations, in the order invoked.
    pub fn operations(&self) -> &[Recorded] {
        &self.operations
    }

    /// Records a call, with its outcome unknown until [`History::complete`] or
    /// [`History::fail`]; returns the operation's index.
    pub fn invoke(&mut self, client: usize, key: &str, kind: OperationKind, call: u64) -> usize {
        self.operations.push(Recorded {
            client,
            key: key.to_string(),
            kind,
            call,
            returned: None,
            failed: false,
        });
        self.operations.len() - 1
    }

    /// Completes an operation; a read passes the value it saw.
    pub fn complete(&mut self, op: usize, returned: u64, read: Option<Option<String>>) {
        let operation = &mut self.operations[op];
        operation.returned = Some(returned);
        if let Some(value) = read {
            operation.kind = OperationKind::Read(Some(value));
        }
    }

    /// Records that an operation definitely did not take effect (a rejected submit).
    pub fn fail(&mut self, op: usize) {
        self.operations[op].failed = true;
    }

    /// Marks the start of the liveness phase.
    pub fn mark_liveness(&mut self) {
        self.liveness_mark = Some(self.next_time());
    }

    /// The first write invoked after the liveness mark that committed.
    pub fn first_write_committed_after_mark(&self) -> Option<usize> {
        let mark = self.liveness_mark?;
        self.operations.iter().position(|op| {
            matches!(op.kind, OperationKind::Write(_)) && op.call >= mark && op.returned.is_some() && !op.failed
        })
    }

    /// Checks the history for linearizability, per key, against a register model.
    /// Writes that definitely failed are left out; writes whose outcome is unknown
    /// may or may not have happened.
    pub fn check(&self) -> Verdict {
        let model = RegisterModel::<String, String>::new();
        let mut operations = Vec::with_capacity(self.operations.len());
        for op in self.operations.iter().filter(|op| !op.failed) {
            let client = op.client as u64;
            let key = op.key.clone();
            let operation = match (&op.kind, op.returned) {
                (OperationKind::Write(value), Some(returned)) => Operation::returned(
                    client,
                    RegisterInput::Write {
                        key,
                        value: value.clone(),
                    },
                    op.call,
                    returned,
                    RegisterOutput::Write,
                ),
                (OperationKind::Write(value), None) => Operation::unknown_outcome(
                    client,
                    RegisterInput::Write {
                        key,
                        value: value.clone(),
                    },
                    op.call,
                ),
                (OperationKind::Read(Some(value)), Some(returned)) => Operation::returned(
                    client,
                    RegisterInput::Read { key },
                    op.call,
                    returned,
                    RegisterOutput::Read(value.clone()),
                ),
                // A read with no answer constrains nothing.
                (OperationKind::Read(_), _) => continue,
            };
            operations.push(operation);
        }
        match check(&model, &operations, Budget::default()) {
            Ok(CheckResult::Ok) => Verdict::Linearizable,
            Ok(CheckResult::Illegal(report)) => Verdict::Violation(format!("not linearizable: {report}")),
            Ok(CheckResult::Unknown { .. }) => Verdict::Inconclusive,
            Err(error) => Verdict::Violation(format!("malformed history: {error:?}")),
        }
    }
}
