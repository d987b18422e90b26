//! The clients' history: every write and lease read with its call and return
//! times, checked for linearizability at the end of a run.

use crate::linearizability::{check, Budget, CheckResult, Operation, RegisterInput, RegisterModel, RegisterOutput};

/// The linearizability checker's answer for one history.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Verdict {
    Linearizable,
    Violation(String),
    /// The search ran out of its step budget: neither pass nor fail.
    Inconclusive,
}

/// What an operation did.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum OperationKind {
    Write(String),
    /// The value read; `None` inside means the key was absent.
    Read(Option<Option<String>>),
}

#[derive(Clone, Debug)]
pub struct Recorded {
    pub client: usize,
    pub key: String,
    pub kind: OperationKind,
    pub call: u64,
    /// `None`: the outcome is unknown (it may or may not have taken effect).
    pub returned: Option<u64>,
    /// Definitely did not take effect (a rejected submit).
    pub failed: bool,
}

/// Times are logical: a counter bumped at every call and return, so real-time
/// order in the simulation is exact.
#[derive(Debug, Default)]
pub struct History {
    operations: Vec<Recorded>,
    clock: u64,
    liveness_mark: Option<u64>,
}

impl History {
    pub fn next_time(&mut self) -> u64 {
        self.clock += 1;
        self.clock
    }

    pub fn len(&self) -> usize {
        self.operations.len()
    }

    pub fn is_empty(&self) -> bool {
        self.operations.is_empty()
    }

    pub fn operations(&self) -> &[Recorded] {
        &self.operations
    }

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
