//! A key-value store whose values are append-only logs, read whole.
//!
//! Reads that return the full sequence expose ordering bugs a register hides: two appends
//! acknowledged in one order but read back in the other cannot be explained by any
//! linearization.

use std::fmt;
use std::hash::Hash;
use std::marker::PhantomData;

use super::Model;

/// A request to a store of append-only logs.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum AppendLogInput<Key, Value> {
    /// Add `value` to the end of the key's log.
    Append {
        /// The log.
        key: Key,
        /// The element added.
        value: Value,
    },
    /// Read the key's whole log.
    Read {
        /// The log.
        key: Key,
    },
}

impl<Key, Value> AppendLogInput<Key, Value> {
    /// The log this request touches.
    pub fn key(&self) -> &Key {
        match self {
            Self::Append { key, .. } | Self::Read { key } => key,
        }
    }
}

/// The answer to an [`AppendLogInput`].
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum AppendLogOutput<Value> {
    /// The append was applied.
    Append,
    /// Every element of the log, oldest first.
    Read(Vec<Value>),
}

/// Sequential specification of a map of independent append-only logs, all initially empty.
///
/// The state is the whole log, so memoization compares logs element by element; that is fine
/// for the short logs a test writes, and keeps the model obviously correct.
pub struct AppendLogModel<Key, Value> {
    types: PhantomData<fn() -> (Key, Value)>,
}

impl<Key, Value> AppendLogModel<Key, Value> {
    /// The model; it has no configuration.
    pub fn new() -> Self {
        Self { types: PhantomData }
    }
}

impl<Key, Value> Default for AppendLogModel<Key, Value> {
    fn default() -> Self {
        Self::new()
    }
}

impl<Key, Value> Model for AppendLogModel<Key, Value>
where
    Key: Clone + Ord + fmt::Debug,
    Value: Clone + Eq + Hash + fmt::Debug,
{
    type State = Vec<Value>;
    type Input = AppendLogInput<Key, Value>;
    type Output = AppendLogOutput<Value>;
    type PartitionKey = Key;

    fn init(&self) -> Self::State {
        Vec::new()
    }

    fn step(&self, state: &Self::State, input: &Self::Input, output: &Self::Output) -> Option<Self::State> {
        match (input, output) {
            (AppendLogInput::Append { value, .. }, AppendLogOutput::Append) => {
                let mut appended = state.clone();
                appended.push(value.clone());
                Some(appended)
            }
            (AppendLogInput::Read { .. }, AppendLogOutput::Read(seen)) => (seen == state).then(|| state.clone()),
            _ => None,
        }
    }

    fn step_unknown_output(&self, state: &Self::State, input: &Self::Input) -> Vec<Self::State> {
        match input {
            AppendLogInput::Append { value, .. } => {
                let mut appended = state.clone();
                appended.push(value.clone());
                vec![appended]
            }
            AppendLogInput::Read { .. } => vec![state.clone()],
        }
    }

    fn partition_key(&self, input: &Self::Input) -> Option<Self::PartitionKey> {
        Some(input.key().clone())
    }

    fn is_read_only(&self, input: &Self::Input) -> bool {
        matches!(input, AppendLogInput::Read { .. })
    }
}
