//! The Wing & Gong search with Lowe's memoization over one partition.
//!
//! Calls and returns sit in a doubly linked list ordered by time. Linearizing an operation
//! *lifts* its call and return out of the list; backtracking puts them back. Because the search
//! is depth-first, entries are always restored in the reverse order of their removal, so each
//! entry still remembers its neighbours and re-linking is constant time ("dancing links").

use std::collections::{HashMap, HashSet};

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
        let mut keyed: Vec<((bool, u64, bool, usize), Entry)> = Vec::with_capacity(2 * operations.len());
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
        let next = (0..node_count).map(|node| (node + 1) % node_count).collect();
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

    /// The members of `self` that are also in `mask`, and those that are not.
    fn split(&self, mask: &OperationSet) -> (OperationSet, OperationSet) {
        let inside = self.words.iter().zip(&mask.words);
        let outside = inside.clone();
        (
            OperationSet {
                words: inside.map(|(word, mask)| word & mask).collect(),
            },
            OperationSet {
                words: outside.map(|(word, mask)| word & !mask).collect(),
            },
        )
    }

    fn is_empty(&self) -> bool {
        self.words.iter().all(|&word| word == 0)
    }

    fn is_subset_of(&self, other: &OperationSet) -> bool {
        self.words
            .iter()
            .zip(&other.words)
            .all(|(word, other)| word & !other == 0)
    }
}

/// The search nodes already visited, for Lowe's memoization, extended to unknown outcomes.
///
/// A node is the set of linearized operations and the model state. Two nodes with the same
/// state and the same known-outcome operations linearized, where one has linearized only a
/// subset of the other's unknown-outcome operations, are related: the smaller one can do
/// everything the larger one can, because an unknown-outcome operation never has to take
/// effect and never blocks another. So once the smaller one was visited the larger one needs
/// no visit. (A visited node has either failed, or will still be searched because it is on
/// the current path or is a recorded move not yet followed; on the current path, a completion
/// through the larger node would also exist through the smaller one without the extra unknown
/// operations, which the search tries.)
struct Explored<State> {
    /// Members are the partition's operations with unknown outcomes.
    unknown_outcomes: OperationSet,
    /// For each (known-outcome operations linearized, state): the minimal sets of
    /// unknown-outcome operations linearized it was visited with.
    visits: HashMap<(OperationSet, State), Vec<OperationSet>>,
    /// The plain visited set, used instead of `visits` when every outcome is known: the same
    /// answers at about half the cost.
    exact_visits: HashSet<(OperationSet, State)>,
}

impl<State: Clone + Eq + std::hash::Hash> Explored<State> {
    fn new<Input, Output>(history: &[Operation<Input, Output>], operations: &[usize]) -> Self {
        let mut unknown_outcomes = OperationSet::new(operations.len());
        for (operation, &history_index) in operations.iter().enumerate() {
            if !history[history_index].has_known_outcome() {
                unknown_outcomes.insert(operation);
            }
        }
        Self {
            unknown_outcomes,
            visits: HashMap::new(),
            exact_visits: HashSet::new(),
        }
    }

    /// Records a visit to (`linearized`, `state`); false if it or a node that can do
    /// everything it can was visited before.
    fn visit(&mut self, linearized: &OperationSet, state: &State) -> bool {
        if self.unknown_outcomes.is_empty() {
            return self.exact_visits.insert((linearized.clone(), state.clone()));
        }
        let (unknown, known) = linearized.split(&self.unknown_outcomes);
        let minimal_sets = self.visits.entry((known, state.clone())).or_default();
        if minimal_sets.iter().any(|visited| visited.is_subset_of(&unknown)) {
            return false;
        }
        minimal_sets.retain(|visited| !unknown.is_subset_of(visited));
        minimal_sets.push(unknown);
        true
    }
}

/// One linearized operation on the search stack, and the choices left at its node.
struct Frame<State> {
    operation: usize,
    state_before: State,
    /// Other moves from the same node, tried on backtrack, the next one last. Only unknown
    /// outcomes leave any: their moves are all generated, and recorded as visited, at once.
    alternatives: Vec<(usize, State)>,
}

/// Searches one partition, counting steps into `steps_used` and stopping at `steps_max`.
///
/// Every pending call before the first return is a candidate to take effect next, and the
/// search may try them in any order. It walks the known-outcome calls first, in list order, as
/// Wing & Gong do. Only when none of them leads anywhere does it let an unknown-outcome
/// operation take effect: such an operation never has to, so applying one early mostly sends
/// the search down a path it must undo. The unknown-outcome moves of a node are generated and
/// recorded in [`Explored`] together before any is followed, so that following one never
/// re-explores a sibling with an extra unknown operation in front (which would otherwise make
/// the search visit every subset of the pending timeouts).
pub(super) fn search<M: Model>(
    model: &M,
    history: &[Operation<M::Input, M::Output>],
    operations: &[usize],
    steps_used: &mut u64,
    steps_max: u64,
) -> SearchOutcome<M::State> {
    let mut list = EntryList::new(history, operations);
    let mut linearized = OperationSet::new(operations.len());
    let mut explored = Explored::new(history, operations);
    let mut stack: Vec<Frame<M::State>> = Vec::new();
    let mut state = model.init();
    explored.visit(&linearized, &state);
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
            if let Some(output) = &recorded.output {
                linearized.insert(entry.operation);
                let next_state = model
                    .step(&state, &recorded.input, output)
                    .filter(|next_state| explored.visit(&linearized, next_state));
                match next_state {
                    Some(next_state) => {
                        stack.push(Frame {
                            operation: entry.operation,
                            state_before: std::mem::replace(&mut state, next_state),
                            alternatives: Vec::new(),
                        });
                        list.lift(entry.operation);
                        node = list.first();
                        continue;
                    }
                    None => linearized.remove(entry.operation),
                }
            }
            node = list.next[node];
            continue;
        }

        // Return entries of unknown-outcome operations sort after every known one, so reaching
        // one means every operation left has an unknown outcome: leaving them all out (none
        // took effect) is allowed.
        if !recorded.has_known_outcome() {
            return SearchOutcome::Linearizable;
        }

        // No known-outcome operation can take effect next; try the unknown-outcome ones.
        let mut moves = Vec::new();
        let mut candidate_node = list.first();
        while candidate_node != node {
            let candidate = list.entries[candidate_node];
            let candidate_recorded = &history[operations[candidate.operation]];
            if candidate.kind == EntryKind::Call && !candidate_recorded.has_known_outcome() {
                if *steps_used >= steps_max {
                    return SearchOutcome::BudgetExhausted;
                }
                *steps_used += 1;
                linearized.insert(candidate.operation);
                for next_state in model.step_unknown_output(&state, &candidate_recorded.input) {
                    // Taking effect without changing the state is never needed: leaving the
                    // operation pending keeps every option this would have.
                    if next_state != state && explored.visit(&linearized, &next_state) {
                        moves.push((candidate.operation, next_state));
                    }
                }
                linearized.remove(candidate.operation);
            }
            candidate_node = list.next[candidate_node];
        }
        if !moves.is_empty() {
            moves.reverse();
            let state_before = state.clone();
            follow_move(&mut list, &mut linearized, &mut stack, &mut state, state_before, moves);
            node = list.first();
            continue;
        }

        // This operation had to take effect by now and nothing pending can: backtrack.
        if deepest
            .as_ref()
            .is_none_or(|best| stack.len() > best.linearized_prefix.len())
        {
            deepest = Some(Deepest {
                linearized_prefix: stack.iter().map(|frame| operations[frame.operation]).collect(),
                state_after_prefix: state.clone(),
                operation_not_placed: operations[entry.operation],
            });
        }
        loop {
            let Some(frame) = stack.pop() else {
                let deepest = deepest.unwrap_or_else(|| Deepest {
                    linearized_prefix: Vec::new(),
                    state_after_prefix: state.clone(),
                    operation_not_placed: operations[entry.operation],
                });
                return SearchOutcome::NotLinearizable(deepest);
            };
            list.unlift(frame.operation);
            linearized.remove(frame.operation);
            if !frame.alternatives.is_empty() {
                follow_move(
                    &mut list,
                    &mut linearized,
                    &mut stack,
                    &mut state,
                    frame.state_before,
                    frame.alternatives,
                );
                node = list.first();
                break;
            }
            state = frame.state_before;
            if history[operations[frame.operation]].has_known_outcome() {
                // Carry on walking the known-outcome calls after this one.
                node = list.next[list.call_node[frame.operation]];
                break;
            }
            // The last unknown-outcome move of the node below failed too: it is exhausted.
        }
    }
    SearchOutcome::Linearizable
}

/// Linearizes the last of `moves` (already recorded as visited) from the node whose state was
/// `state_before`, keeping the rest as that node's alternatives.
fn follow_move<State>(
    list: &mut EntryList,
    linearized: &mut OperationSet,
    stack: &mut Vec<Frame<State>>,
    state: &mut State,
    state_before: State,
    mut moves: Vec<(usize, State)>,
) {
    let Some((operation, next_state)) = moves.pop() else {
        return;
    };
    linearized.insert(operation);
    list.lift(operation);
    *state = next_state;
    stack.push(Frame {
        operation,
        state_before,
        alternatives: moves,
    });
}
