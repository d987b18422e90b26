//! The Wing & Gong search with Lowe's memoization over one partition.
//!
//! Calls and returns sit in a doubly linked list ordered by time. Linearizing an operation
//! *lifts* its call and return out of the list; backtracking puts them back. Because the search
//! is depth-first, entries are always restored in the reverse order of their removal, so each
//! entry still remembers its neighbours and re-linking is constant time ("dancing links").

use std::collections::HashSet;

use super::{Model, Operation};

/// How the search of one partition ended.
pub(super) enum SearchOutcome<State> {
    Linearizable,
    NotLinearizable(Deepest<State>),
    BudgetExhausted,
}

/// The furthest the search got in a partition with no linearization.
pub(super) struct Deepest<State> {
    /// History indices in linearization order.
    pub(super) linearized_prefix: Vec<usize>,
    pub(super) state_after_prefix: State,
    /// History index of the operation that had to be linearized next but could not be.
    pub(super) operation_not_placed: usize,
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum EntryKind {
    Call,
    Return,
}

/// One call or return in the time-ordered list.
#[derive(Clone, Copy)]
struct Entry {
    kind: EntryKind,
    /// Index into the partition's operation list, not the whole history.
    operation: usize,
}

/// The list node index of the sentinel: the list is circular through it and empty when the
/// sentinel points at itself.
const SENTINEL: usize = 0;

/// Calls and returns of one partition as a circular doubly linked list over array indices.
struct EntryList {
    /// `entries[node]`; the sentinel's slot holds a placeholder never read.
    entries: Vec<Entry>,
    next: Vec<usize>,
    previous: Vec<usize>,
    /// List node of each operation's call; its return is `return_node[operation]`.
    call_node: Vec<usize>,
    return_node: Vec<usize>,
}

impl EntryList {
    /// Orders calls and returns by time. At equal times calls come first, so operations that
    /// touch the same instant count as overlapping. Unknown returns go last (infinite time);
    /// ties break on the operation's position, which keeps the order deterministic.
    fn new<Input, Output>(history: &[Operation<Input, Output>], operations: &[usize]) -> Self {
        let mut keyed: Vec<((bool, u64, bool, usize), Entry)> =
            Vec::with_capacity(2 * operations.len());
        for (operation, &history_index) in operations.iter().enumerate() {
            let recorded = &history[history_index];
            keyed.push((
                (false, recorded.call_time, false, operation),
                Entry {
                    kind: EntryKind::Call,
                    operation,
                },
            ));
            let return_key = match recorded.return_time {
                Some(return_time) => (false, return_time, true, operation),
                None => (true, 0, true, operation),
            };
            keyed.push((
                return_key,
                Entry {
                    kind: EntryKind::Return,
                    operation,
                },
            ));
        }
        keyed.sort_unstable_by_key(|(key, _)| *key);

        let node_count = keyed.len() + 1;
        let placeholder = Entry {
            kind: EntryKind::Call,
            operation: usize::MAX,
        };
        let mut entries = Vec::with_capacity(node_count);
        entries.push(placeholder);
        let mut call_node = vec![SENTINEL; operations.len()];
        let mut return_node = vec![SENTINEL; operations.len()];
        for (position, (_, entry)) in keyed.into_iter().enumerate() {
            let node = position + 1;
            match entry.kind {
                EntryKind::Call => call_node[entry.operation] = node,
                EntryKind::Return => return_node[entry.operation] = node,
            }
            entries.push(entry);
        }
        let next = (0..node_count)
            .map(|node| (node + 1) % node_count)
            .collect();
        let previous = (0..node_count)
            .map(|node| (node + node_count - 1) % node_count)
            .collect();
        Self {
            entries,
            next,
            previous,
            call_node,
            return_node,
        }
    }

    fn first(&self) -> usize {
        self.next[SENTINEL]
    }

    fn is_empty(&self) -> bool {
        self.first() == SENTINEL
    }

    fn unlink(&mut self, node: usize) {
        let (previous, next) = (self.previous[node], self.next[node]);
        self.next[previous] = next;
        self.previous[next] = previous;
    }

    /// Puts back a node removed by [`Self::unlink`]; valid only in reverse order of removal.
    fn relink(&mut self, node: usize) {
        let (previous, next) = (self.previous[node], self.next[node]);
        self.next[previous] = node;
        self.previous[next] = node;
    }

    /// Removes an operation's call and return: it has been linearized.
    fn lift(&mut self, operation: usize) {
        self.unlink(self.call_node[operation]);
        self.unlink(self.return_node[operation]);
    }

    /// Undoes [`Self::lift`] for the most recently lifted operation.
    fn unlift(&mut self, operation: usize) {
        self.relink(self.return_node[operation]);
        self.relink(self.call_node[operation]);
    }
}

/// A set of partition operation indices, hashed as part of the memoization key.
#[derive(Clone, PartialEq, Eq, Hash)]
struct OperationSet {
    words: Vec<u64>,
}

impl OperationSet {
    fn new(operation_count: usize) -> Self {
        Self {
            words: vec![0; operation_count.div_ceil(64)],
        }
    }

    fn insert(&mut self, operation: usize) {
        self.words[operation / 64] |= 1 << (operation % 64);
    }

    fn remove(&mut self, operation: usize) {
        self.words[operation / 64] &= !(1 << (operation % 64));
    }
}

/// One linearized operation on the search stack.
struct Frame<State> {
    operation: usize,
    state_before: State,
    /// Further states an unknown-outcome operation could have led to, tried on backtrack; the
    /// next one to try is last.
    alternatives: Vec<State>,
}

/// Searches one partition, counting steps into `steps_used` and stopping at `steps_max`.
pub(super) fn search<M: Model>(
    model: &M,
    history: &[Operation<M::Input, M::Output>],
    operations: &[usize],
    steps_used: &mut u64,
    steps_max: u64,
) -> SearchOutcome<M::State> {
    let mut list = EntryList::new(history, operations);
    let mut linearized = OperationSet::new(operations.len());
    let mut cache: HashSet<(OperationSet, M::State)> = HashSet::new();
    let mut stack: Vec<Frame<M::State>> = Vec::new();
    let mut state = model.init();
    let mut deepest: Option<Deepest<M::State>> = None;
    let mut node = list.first();

    while !list.is_empty() {
        if *steps_used >= steps_max {
            return SearchOutcome::BudgetExhausted;
        }
        *steps_used += 1;

        let entry = list.entries[node];
        let recorded = &history[operations[entry.operation]];
        if entry.kind == EntryKind::Call {
            let mut candidates = match &recorded.output {
                Some(output) => model
                    .step(&state, &recorded.input, output)
                    .into_iter()
                    .collect(),
                None => model.step_unknown_output(&state, &recorded.input),
            };
            candidates.reverse();
            linearized.insert(entry.operation);
            match take_unexplored(&mut cache, &linearized, &mut candidates) {
                Some(next_state) => {
                    stack.push(Frame {
                        operation: entry.operation,
                        state_before: std::mem::replace(&mut state, next_state),
                        alternatives: candidates,
                    });
                    list.lift(entry.operation);
                    node = list.first();
                }
                None => {
                    linearized.remove(entry.operation);
                    node = list.next[node];
                }
            }
            continue;
        }

        // A return whose operation is still pending. Return entries of unknown-outcome
        // operations sort after every known one, so if this one is unknown then every
        // operation left is unknown too: leaving them all out (none took effect) is allowed.
        if !recorded.has_known_outcome() {
            return SearchOutcome::Linearizable;
        }
        // Otherwise the operation had to take effect by now and could not: backtrack.
        if deepest
            .as_ref()
            .is_none_or(|best| stack.len() > best.linearized_prefix.len())
        {
            deepest = Some(Deepest {
                linearized_prefix: stack
                    .iter()
                    .map(|frame| operations[frame.operation])
                    .collect(),
                state_after_prefix: state.clone(),
                operation_not_placed: operations[entry.operation],
            });
        }
        let Some(mut frame) = stack.pop() else {
            let deepest = deepest.unwrap_or_else(|| Deepest {
                linearized_prefix: Vec::new(),
                state_after_prefix: state.clone(),
                operation_not_placed: operations[entry.operation],
            });
            return SearchOutcome::NotLinearizable(deepest);
        };
        list.unlift(frame.operation);
        // `linearized` still holds the frame's operation, as the cache key for its other
        // possible states needs.
        match take_unexplored(&mut cache, &linearized, &mut frame.alternatives) {
            Some(next_state) => {
                state = next_state;
                list.lift(frame.operation);
                stack.push(frame);
                node = list.first();
            }
            None => {
                linearized.remove(frame.operation);
                node = list.next[list.call_node[frame.operation]];
                state = frame.state_before;
            }
        }
    }
    SearchOutcome::Linearizable
}

/// Pops candidate states (last first) until one whose pairing with `linearized` has not been
/// explored, records it as explored and returns it.
fn take_unexplored<State: Clone + Eq + std::hash::Hash>(
    cache: &mut HashSet<(OperationSet, State)>,
    linearized: &OperationSet,
    candidates: &mut Vec<State>,
) -> Option<State> {
    while let Some(candidate) = candidates.pop() {
        if cache.insert((linearized.clone(), candidate.clone())) {
            return Some(candidate);
        }
    }
    None
}
