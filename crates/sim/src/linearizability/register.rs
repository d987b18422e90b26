//! A key-value store seen as one register per key.

use std::fmt;
use std::hash::Hash;
use std::marker::PhantomData;

use super::Model;

/// A request to a key-value store whose keys are independent registers.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum RegisterInput<Key, Value> {
    /// Read the key's current value.
    Read {
        /// The register.
        key: Key,
    },
    /// Set the key to `value`.
    Write {
        /// The register.
        key: Key,
        /// The new value.
        value: Value,
    },
    /// Remove the key, so reads see `None` again.
    Delete {
        /// The register.
        key: Key,
    },
    /// Set the key to `new` only if it currently holds `expected` (`None`: only if absent).
    CompareAndSwap {
        /// The register.
        key: Key,
        /// The value the key must hold for the swap to happen.
        expected: Option<Value>,
        /// The value stored if it does.
        new: Value,
    },
}

impl<Key, Value> RegisterInput<Key, Value> {
    /// The register this request touches.
    pub fn key(&self) -> &Key {
        match self {
            Self::Read { key } | Self::Write { key, .. } | Self::Delete { key } | Self::CompareAndSwap { key, .. } => {
                key
            }
        }
    }
}

/// The answer to a [`RegisterInput`].
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum RegisterOutput<Value> {
    /// The value read; `None` if the key was absent.
    Read(Option<Value>),
    /// The write was applied.
    Write,
    /// The delete was applied.
    Delete,
    /// Whether the swap happened.
    CompareAndSwap(bool),
}

/// Sequential specification of a map of independent registers, all initially absent.
///
/// Each key is its own partition, so the state the search carries is just one register: the
/// key's value, or `None` while it is absent. An output of the wrong kind for its input (a
/// `Write` answered with `Read`) is impossible in every state, so it makes the history illegal.
pub struct RegisterModel<Key, Value> {
    types: PhantomData<fn() -> (Key, Value)>,
}

impl<Key, Value> RegisterModel<Key, Value> {
    /// The model; it has no configuration.
    pub fn new() -> Self {
        Self { types: PhantomData }
    }
}

impl<Key, Value> Default for RegisterModel<Key, Value> {
    fn default() -> Self {
        Self::new()
    }
}

impl<Key, Value> Model for RegisterModel<Key, Value>
where
    Key: Clone + Ord + fmt::Debug,
    Value: Clone + Eq + Hash + fmt::Debug,
{
    type State = Option<Value>;
    type Input = RegisterInput<Key, Value>;
    type Output = RegisterOutput<Value>;
    type PartitionKey = Key;

    fn init(&self) -> Self::State {
        None
    }

    fn step(&self, state: &Self::State, input: &Self::Input, output: &Self::Output) -> Option<Self::State> {
        match (input, output) {
            (RegisterInput::Read { .. }, RegisterOutput::Read(seen)) => (seen == state).then(|| state.clone()),
            (RegisterInput::Write { value, .. }, RegisterOutput::Write) => Some(Some(value.clone())),
            (RegisterInput::Delete { .. }, RegisterOutput::Delete) => Some(None),
            (RegisterInput::CompareAndSwap { expected, new, .. }, RegisterOutput::CompareAndSwap(swapped)) => {
                match (expected == state, *swapped) {
                    (true, true) => Some(Some(new.clone())),
                    (false, false) => Some(state.clone()),
                    _ => None,
                }
            }
            _ => None,
        }
    }

    fn step_unknown_output(&self, state: &Self::State, input: &Self::Input) -> Vec<Self::State> {
        match input {
            // A read changes nothing, so whether it happened does not matter.
            RegisterInput::Read { .. } => vec![state.clone()],
            RegisterInput::Write { value, .. } => vec![Some(value.clone())],
            RegisterInput::Delete { .. } => vec![None],
            RegisterInput::CompareAndSwap { expected, new, .. } => {
                if expected == state {
                    vec![Some(new.clone())]
                } else {
                    vec![state.clone()]
                }
            }
        }
    }

    fn partition_key(&self, input: &Self::Input) -> Option<Self::PartitionKey> {
        Some(input.key().clone())
    }

    fn is_read_only(&self, input: &Self::Input) -> bool {
        matches!(input, RegisterInput::Read { .. })
    }
}
