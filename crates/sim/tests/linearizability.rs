//! Tests of the linearizability checker: planted bugs it must catch, legal histories it must
//! pass, and a brute-force oracle it must agree with.

use std::time::{Duration, Instant};

use proptest::prelude::*;
use synod_sim::linearizability::{
    check, AppendLogInput, AppendLogModel, AppendLogOutput, Budget, CheckResult, HistoryError, Model, Operation,
    RegisterInput, RegisterModel, RegisterOutput,
};

type Register = RegisterModel<&'static str, u64>;
type RegisterOperation = Operation<RegisterInput<&'static str, u64>, RegisterOutput<u64>>;

fn write(client_id: u64, key: &'static str, value: u64, call: u64, ret: u64) -> RegisterOperation {
    Operation::returned(
        client_id,
        RegisterInput::Write { key, value },
        call,
        ret,
        RegisterOutput::Write,
    )
}

fn read(client_id: u64, key: &'static str, value: Option<u64>, call: u64, ret: u64) -> RegisterOperation {
    Operation::returned(
        client_id,
        RegisterInput::Read { key },
        call,
        ret,
        RegisterOutput::Read(value),
    )
}

fn unknown_write(client_id: u64, key: &'static str, value: u64, call: u64) -> RegisterOperation {
    Operation::unknown_outcome(client_id, RegisterInput::Write { key, value }, call)
}

fn compare_and_swap(
    client_id: u64,
    key: &'static str,
    expected: Option<u64>,
    new: u64,
    swapped: bool,
    call: u64,
    ret: u64,
) -> RegisterOperation {
    Operation::returned(
        client_id,
        RegisterInput::CompareAndSwap { key, expected, new },
        call,
        ret,
        RegisterOutput::CompareAndSwap(swapped),
    )
}

fn check_register(history: &[RegisterOperation]) -> CheckResult<&'static str, Option<u64>> {
    check(&Register::new(), history, Budget::default()).expect("well-formed history")
}

#[test]
fn empty_history_is_linearizable() {
    assert_eq!(check_register(&[]), CheckResult::Ok);
}

#[test]
fn correct_concurrent_history_passes() {
    let history = vec![
        write(1, "x", 1, 0, 10),
        read(2, "x", Some(1), 2, 12), // overlaps the write and sees it
        read(3, "x", None, 3, 8),     // overlaps the write and misses it
        write(1, "x", 2, 20, 30),
        read(2, "x", Some(2), 25, 35),
        read(3, "x", Some(2), 40, 50),
        compare_and_swap(1, "x", Some(2), 3, true, 41, 45),
        read(2, "x", Some(3), 60, 61),
        compare_and_swap(3, "x", Some(2), 4, false, 70, 71),
        read(1, "x", Some(3), 80, 81),
    ];
    assert_eq!(check_register(&history), CheckResult::Ok);
}

#[test]
fn stale_read_is_caught() {
    let history = vec![
        write(1, "x", 1, 0, 10),
        write(1, "x", 2, 20, 30),
        read(2, "x", Some(1), 40, 50),
    ];
    let CheckResult::Illegal(report) = check_register(&history) else {
        panic!("a stale read must be illegal");
    };
    assert_eq!(report.partition, Some("x"));
    assert_eq!(report.operation_not_placed, 2);
    assert_eq!(report.longest_linearized_prefix, vec![0, 1]);
    assert_eq!(report.state_after_prefix, Some(2));
    assert!(report.to_string().contains("could not be placed"));
}

#[test]
fn lost_write_is_caught() {
    // The write was acknowledged before the read began, yet the read misses it.
    let history = vec![write(1, "x", 1, 0, 10), read(2, "x", None, 11, 20)];
    assert!(check_register(&history).is_illegal());
}

#[test]
fn read_at_the_instant_a_write_returns_may_miss_it() {
    // Equal times count as overlapping: the read may be ordered first.
    let history = vec![write(1, "x", 1, 0, 10), read(2, "x", None, 10, 20)];
    assert_eq!(check_register(&history), CheckResult::Ok);
}

#[test]
fn unknown_write_that_later_appears_passes() {
    let history = vec![
        write(1, "x", 1, 0, 10),
        unknown_write(2, "x", 2, 20),
        read(3, "x", Some(2), 100, 110),
    ];
    assert_eq!(check_register(&history), CheckResult::Ok);
}

#[test]
fn unknown_write_that_never_appears_passes() {
    let history = vec![
        write(1, "x", 1, 0, 10),
        unknown_write(2, "x", 2, 20),
        read(3, "x", Some(1), 100, 110),
        read(3, "x", Some(1), 200, 210),
    ];
    assert_eq!(check_register(&history), CheckResult::Ok);
}

#[test]
fn unknown_write_cannot_take_effect_before_it_is_called() {
    let history = vec![read(3, "x", Some(2), 0, 10), unknown_write(2, "x", 2, 20)];
    assert!(check_register(&history).is_illegal());
}

#[test]
fn unknown_write_cannot_be_undone() {
    // Once a read saw the unknown write, a later read cannot see the value it replaced.
    let history = vec![
        write(1, "x", 1, 0, 10),
        unknown_write(2, "x", 2, 20),
        read(3, "x", Some(2), 100, 110),
        read(3, "x", Some(1), 200, 210),
    ];
    assert!(check_register(&history).is_illegal());
}

#[test]
fn unknown_compare_and_swap_may_or_may_not_apply() {
    let swap = Operation::unknown_outcome(
        2,
        RegisterInput::CompareAndSwap {
            key: "x",
            expected: Some(1),
            new: 5,
        },
        20,
    );
    let applied = vec![write(1, "x", 1, 0, 10), swap.clone(), read(3, "x", Some(5), 30, 40)];
    let not_applied = vec![write(1, "x", 1, 0, 10), swap.clone(), read(3, "x", Some(1), 30, 40)];
    let impossible = vec![write(1, "x", 2, 0, 10), swap, read(3, "x", Some(5), 30, 40)];
    assert_eq!(check_register(&applied), CheckResult::Ok);
    assert_eq!(check_register(&not_applied), CheckResult::Ok);
    assert!(check_register(&impossible).is_illegal());
}

#[test]
fn unknown_reads_are_dropped_rather_than_searched() {
    // Sixty reads that never returned stay pending to the end; searching them would cost 2^60
    // subsets before the lost write could be reported.
    let mut history: Vec<RegisterOperation> = (0..60)
        .map(|client_id| Operation::unknown_outcome(client_id, RegisterInput::Read { key: "x" }, 0))
        .collect();
    history.push(write(100, "x", 1, 0, 10));
    history.push(read(101, "x", None, 20, 30));
    let result = check(&Register::new(), &history, Budget::steps(10_000)).unwrap();
    assert!(result.is_illegal(), "{result:?}");
}

#[test]
fn many_unobserved_unknown_writes_do_not_hide_a_stale_read() {
    // Twenty timed-out writes nobody ever read: each could take effect at any later point, but
    // none can explain the stale read. Searching every subset of them would take 2^20 visits.
    let mut history: Vec<RegisterOperation> = (0..20)
        .map(|index| unknown_write(index, "x", 100 + index, index))
        .collect();
    history.push(write(50, "x", 1, 100, 110));
    history.push(read(51, "x", Some(1), 120, 130));
    history.push(write(50, "x", 2, 140, 150));
    history.push(read(51, "x", Some(1), 160, 170));
    let result = check(&Register::new(), &history, Budget::steps(100_000)).unwrap();
    assert!(result.is_illegal(), "{result:?}");
}

#[test]
fn overlapping_writes_may_take_effect_in_either_order() {
    for (seen, expected_ok) in [(Some(1), true), (Some(2), true), (None, false)] {
        let history = vec![
            write(1, "x", 1, 0, 10),
            write(2, "x", 2, 5, 15),
            read(3, "x", seen, 20, 30),
        ];
        assert_eq!(check_register(&history).is_ok(), expected_ok, "read {seen:?}");
    }
}

#[test]
fn reads_cannot_disagree_on_the_order_of_overlapping_writes() {
    let history = vec![
        write(1, "x", 1, 0, 10),
        write(2, "x", 2, 0, 10),
        read(3, "x", Some(1), 20, 30),
        read(3, "x", Some(2), 40, 50),
    ];
    assert!(check_register(&history).is_illegal());
}

#[test]
fn compare_and_swap_outcomes_are_checked() {
    let succeeded_wrongly = vec![
        write(1, "x", 1, 0, 10),
        compare_and_swap(2, "x", Some(7), 3, true, 20, 30),
    ];
    let failed_wrongly = vec![
        write(1, "x", 1, 0, 10),
        compare_and_swap(2, "x", Some(1), 3, false, 20, 30),
    ];
    let swap_on_absent = vec![
        compare_and_swap(2, "x", None, 3, true, 0, 10),
        read(1, "x", Some(3), 20, 30),
    ];
    assert!(check_register(&succeeded_wrongly).is_illegal());
    assert!(check_register(&failed_wrongly).is_illegal());
    assert_eq!(check_register(&swap_on_absent), CheckResult::Ok);
}

#[test]
fn delete_makes_the_key_absent() {
    let delete = Operation::returned(1, RegisterInput::Delete { key: "x" }, 20, 30, RegisterOutput::Delete);
    let legal = vec![write(1, "x", 1, 0, 10), delete.clone(), read(2, "x", None, 40, 50)];
    let illegal = vec![write(1, "x", 1, 0, 10), delete, read(2, "x", Some(1), 40, 50)];
    assert_eq!(check_register(&legal), CheckResult::Ok);
    assert!(check_register(&illegal).is_illegal());
}

#[test]
fn output_of_the_wrong_kind_is_illegal() {
    let history = vec![Operation::returned(
        1,
        RegisterInput::Write { key: "x", value: 1 },
        0,
        10,
        RegisterOutput::Read(None),
    )];
    assert!(check_register(&history).is_illegal());
}

#[test]
fn keys_are_checked_independently_and_the_bad_one_is_named() {
    let history = vec![
        write(1, "a", 1, 0, 10),
        write(2, "b", 1, 0, 10),
        read(3, "a", Some(1), 20, 30),
        read(3, "b", None, 20, 30),
        read(4, "c", None, 0, 5),
    ];
    let CheckResult::Illegal(report) = check_register(&history) else {
        panic!("the lost write on key b must be caught");
    };
    assert_eq!(report.partition, Some("b"));
    assert_eq!(report.operation_not_placed, 3);
}

#[test]
fn malformed_histories_are_rejected() {
    let returns_early = vec![write(1, "x", 1, 0, 10), write(1, "x", 1, 10, 9)];
    assert_eq!(
        check(&Register::new(), &returns_early, Budget::default()),
        Err(HistoryError::ReturnBeforeCall { operation_index: 1 })
    );
    let mut output_without_return = unknown_write(1, "x", 1, 0);
    output_without_return.output = Some(RegisterOutput::Write);
    assert_eq!(
        check(&Register::new(), &[output_without_return], Budget::default()),
        Err(HistoryError::OutputAndReturnTimeDisagree { operation_index: 0 })
    );
    let mut return_without_output = write(1, "x", 1, 0, 10);
    return_without_output.output = None;
    assert_eq!(
        check(&Register::new(), &[return_without_output], Budget::default()),
        Err(HistoryError::OutputAndReturnTimeDisagree { operation_index: 0 })
    );
}

#[test]
fn append_log_catches_reordered_appends() {
    let append = |client_id, value, call, ret| {
        Operation::returned(
            client_id,
            AppendLogInput::Append { key: 0u8, value },
            call,
            ret,
            AppendLogOutput::Append,
        )
    };
    let read_log = |values: Vec<u64>, call, ret| {
        Operation::returned(
            9,
            AppendLogInput::Read { key: 0u8 },
            call,
            ret,
            AppendLogOutput::Read(values),
        )
    };
    let model = AppendLogModel::<u8, u64>::new();
    let ordered = vec![append(1, 1, 0, 10), append(2, 2, 20, 30), read_log(vec![1, 2], 40, 50)];
    let reordered = vec![append(1, 1, 0, 10), append(2, 2, 20, 30), read_log(vec![2, 1], 40, 50)];
    let concurrent = vec![append(1, 1, 0, 30), append(2, 2, 0, 30), read_log(vec![2, 1], 40, 50)];
    let unknown = vec![
        append(1, 1, 0, 10),
        Operation::unknown_outcome(2, AppendLogInput::Append { key: 0, value: 2 }, 20),
        read_log(vec![1], 40, 50),
        read_log(vec![1, 2], 60, 70),
    ];
    let budget = Budget::default();
    assert_eq!(check(&model, &ordered, budget), Ok(CheckResult::Ok));
    assert!(check(&model, &reordered, budget).unwrap().is_illegal());
    assert_eq!(check(&model, &concurrent, budget), Ok(CheckResult::Ok));
    assert_eq!(check(&model, &unknown, budget), Ok(CheckResult::Ok));
}

/// A counter with no keys: every operation touches the one global state.
struct GlobalCounter;

impl Model for GlobalCounter {
    type State = u64;
    type Input = ();
    type Output = u64;
    type PartitionKey = u8;

    fn init(&self) -> u64 {
        0
    }

    /// Increments and returns the new count.
    fn step(&self, state: &u64, _input: &(), output: &u64) -> Option<u64> {
        (*output == state + 1).then_some(*output)
    }

    fn step_unknown_output(&self, state: &u64, _input: &()) -> Vec<u64> {
        vec![state + 1]
    }

    fn partition_key(&self, _input: &()) -> Option<u8> {
        None
    }
}

#[test]
fn model_without_partitions_is_checked_whole() {
    let increment = |output, call, ret| Operation::returned(1, (), call, ret, output);
    let legal = vec![increment(2, 0, 10), increment(1, 5, 15), increment(3, 20, 30)];
    let illegal = vec![increment(1, 0, 10), increment(2, 20, 30), increment(2, 40, 50)];
    assert_eq!(check(&GlobalCounter, &legal, Budget::default()), Ok(CheckResult::Ok));
    let Ok(CheckResult::Illegal(report)) = check(&GlobalCounter, &illegal, Budget::default()) else {
        panic!("a repeated count must be illegal");
    };
    assert_eq!(report.partition, None);
}

/// A one-shot claim: the first claim succeeds and a second is impossible by specification
/// (the system must refuse it before it runs). Here an unknown-outcome operation can be
/// impossible in every state the search reaches, so passing requires leaving it out.
struct OneShotClaim;

impl Model for OneShotClaim {
    type State = bool;
    type Input = ();
    type Output = ();
    type PartitionKey = ();

    fn init(&self) -> bool {
        false
    }

    fn step(&self, claimed: &bool, _input: &(), _output: &()) -> Option<bool> {
        (!claimed).then_some(true)
    }

    fn step_unknown_output(&self, claimed: &bool, _input: &()) -> Vec<bool> {
        if *claimed {
            Vec::new()
        } else {
            vec![true]
        }
    }

    fn partition_key(&self, _input: &()) -> Option<()> {
        Some(())
    }
}

#[test]
fn unknown_operation_that_cannot_take_effect_may_be_left_out() {
    let claimed = Operation::returned(1, (), 0, 10, ());
    let history = vec![claimed.clone(), Operation::unknown_outcome(2, (), 20)];
    assert_eq!(check(&OneShotClaim, &history, Budget::default()), Ok(CheckResult::Ok));
    let twice = vec![claimed, Operation::returned(2, (), 20, 30, ())];
    assert!(check(&OneShotClaim, &twice, Budget::default()).unwrap().is_illegal());
}

/// A counter whose server picks the increment, one or two, and reports it. An increment whose
/// answer was lost could have led to either of two states, so the search must try both.
struct ServerChosenIncrement;

#[derive(Debug)]
enum CounterInput {
    Increment,
    Read,
}

#[derive(Debug)]
enum CounterOutput {
    Incremented(u8),
    Read(u8),
}

impl Model for ServerChosenIncrement {
    type State = u8;
    type Input = CounterInput;
    type Output = CounterOutput;
    type PartitionKey = ();

    fn init(&self) -> u8 {
        0
    }

    fn step(&self, count: &u8, input: &CounterInput, output: &CounterOutput) -> Option<u8> {
        match (input, output) {
            (CounterInput::Increment, CounterOutput::Incremented(amount @ 1..=2)) => count.checked_add(*amount),
            (CounterInput::Read, CounterOutput::Read(seen)) => (seen == count).then_some(*count),
            _ => None,
        }
    }

    fn step_unknown_output(&self, count: &u8, input: &CounterInput) -> Vec<u8> {
        match input {
            CounterInput::Increment => [1, 2]
                .into_iter()
                .filter_map(|amount| count.checked_add(amount))
                .collect(),
            CounterInput::Read => vec![*count],
        }
    }

    fn partition_key(&self, _input: &CounterInput) -> Option<()> {
        Some(())
    }
}

#[test]
fn every_state_an_unknown_operation_could_reach_is_tried() {
    let unknown = || Operation::unknown_outcome(1, CounterInput::Increment, 0);
    let read = |count, call| Operation::returned(2, CounterInput::Read, call, call + 5, CounterOutput::Read(count));
    let model = ServerChosenIncrement;
    let budget = Budget::default();
    // Trying "plus one" first fails at the read, so "plus two" must be tried on backtrack.
    assert_eq!(check(&model, &[unknown(), read(2, 10)], budget), Ok(CheckResult::Ok));
    assert_eq!(
        check(&model, &[unknown(), unknown(), read(3, 10), read(3, 20)], budget),
        Ok(CheckResult::Ok)
    );
    let known = Operation::returned(3, CounterInput::Increment, 0, 5, CounterOutput::Incremented(2));
    assert_eq!(
        check(&model, &[known, unknown(), read(3, 10)], budget),
        Ok(CheckResult::Ok)
    );
    assert!(check(&model, &[unknown(), read(3, 10)], budget).unwrap().is_illegal());
    assert!(check(&model, &[unknown(), read(2, 10), read(1, 20)], budget)
        .unwrap()
        .is_illegal());
}

/// A small deterministic generator, so large histories need no seed plumbing.
struct SplitMix(synod_paxos::SplitMix64);

impl SplitMix {
    fn below(&mut self, bound: u64) -> u64 {
        self.0.next_u64() % bound
    }
}

type SmallOperation = Operation<RegisterInput<u8, u32>, RegisterOutput<u32>>;

/// How an operation in a generated history ends.
#[derive(Clone, Copy, Debug)]
enum Ending {
    Returned,
    /// Took effect, but the client never heard back.
    TimedOutApplied,
    /// Never took effect, and the client never heard back.
    TimedOutLost,
}

/// One step of a generated execution, before it is run.
#[derive(Clone, Debug)]
struct PlannedOperation {
    key: u8,
    /// 0 read, 1 write, 2 delete, 3 compare-and-swap.
    kind: u8,
    value: u32,
    expected: Option<u32>,
    call_lead: u64,
    return_lag: u64,
    ending: Ending,
}

/// Runs `plan` against a real sequential map, one operation at a time, and records it as a
/// history whose intervals stretch around each operation's instant of execution. Such a
/// history is linearizable by construction.
fn execute(plan: &[PlannedOperation]) -> Vec<SmallOperation> {
    let mut store: std::collections::BTreeMap<u8, u32> = std::collections::BTreeMap::new();
    let mut history = Vec::with_capacity(plan.len());
    for (position, planned) in plan.iter().enumerate() {
        let key = planned.key;
        let instant = 1_000 + 10 * position as u64;
        let input = match planned.kind {
            0 => RegisterInput::Read { key },
            1 => RegisterInput::Write {
                key,
                value: planned.value,
            },
            2 => RegisterInput::Delete { key },
            _ => RegisterInput::CompareAndSwap {
                key,
                expected: planned.expected,
                new: planned.value,
            },
        };
        let applies = !matches!(planned.ending, Ending::TimedOutLost);
        let output = match &input {
            RegisterInput::Read { .. } => RegisterOutput::Read(store.get(&key).copied()),
            RegisterInput::Write { value, .. } => {
                if applies {
                    store.insert(key, *value);
                }
                RegisterOutput::Write
            }
            RegisterInput::Delete { .. } => {
                if applies {
                    store.remove(&key);
                }
                RegisterOutput::Delete
            }
            RegisterInput::CompareAndSwap { expected, new, .. } => {
                let swapped = store.get(&key).copied() == *expected;
                if swapped && applies {
                    store.insert(key, *new);
                }
                RegisterOutput::CompareAndSwap(swapped)
            }
        };
        let call_time = instant - planned.call_lead;
        history.push(match planned.ending {
            Ending::Returned => {
                Operation::returned(position as u64, input, call_time, instant + planned.return_lag, output)
            }
            Ending::TimedOutApplied | Ending::TimedOutLost => {
                Operation::unknown_outcome(position as u64, input, call_time)
            }
        });
    }
    history
}

fn random_plan(random: &mut SplitMix, length: usize, keys: u8) -> Vec<PlannedOperation> {
    (0..length)
        .map(|_| PlannedOperation {
            key: random.below(u64::from(keys)) as u8,
            kind: random.below(4) as u8,
            value: random.below(1_000) as u32,
            expected: None,
            call_lead: random.below(40),
            return_lag: random.below(40),
            ending: if random.below(50) == 0 {
                Ending::TimedOutApplied
            } else {
                Ending::Returned
            },
        })
        .collect()
}

#[test]
fn thousands_of_operations_over_several_keys_check_quickly() {
    let mut random = SplitMix(synod_paxos::SplitMix64::new(7));
    let history = execute(&random_plan(&mut random, 2_000, 8));
    let started = Instant::now();
    let result = check(&RegisterModel::new(), &history, Budget::default());
    let elapsed = started.elapsed();
    assert_eq!(result, Ok(CheckResult::Ok));
    assert!(elapsed < Duration::from_secs(1), "took {elapsed:?}");
}

#[test]
fn a_planted_bug_in_a_large_history_is_found_quickly() {
    let mut random = SplitMix(synod_paxos::SplitMix64::new(11));
    let mut history = execute(&random_plan(&mut random, 2_000, 8));
    let read_position = history
        .iter()
        .rposition(|operation| {
            matches!(operation.output, Some(RegisterOutput::Read(_))) && operation.call_time > 15_000
        })
        .expect("the plan has reads late in the history");
    history[read_position].output = Some(RegisterOutput::Read(Some(u32::MAX)));
    let started = Instant::now();
    let result = check(&RegisterModel::new(), &history, Budget::default());
    let elapsed = started.elapsed();
    assert!(result.unwrap().is_illegal());
    assert!(elapsed < Duration::from_secs(1), "took {elapsed:?}");
}

/// Closed-loop clients, as the simulator runs them: each client waits for its answer before
/// the next call, except that it gives up after a timeout, leaving that operation's outcome
/// unknown (and the operation applied or not, at random). Values are unique.
fn closed_loop_history(
    random: &mut SplitMix,
    operation_count: u64,
    clients: u64,
    keys: u8,
    timeouts_per_thousand: u64,
) -> Vec<SmallOperation> {
    let mut next_call_time = vec![0; clients as usize];
    let mut planned = Vec::new();
    for position in 0..operation_count {
        let client = (position % clients) as usize;
        let call_lead = 1 + random.below(20);
        let instant = next_call_time[client] + call_lead;
        let timed_out = random.below(1_000) < timeouts_per_thousand;
        let return_lag = 1 + random.below(20);
        next_call_time[client] = if timed_out {
            instant + 50
        } else {
            instant + return_lag + random.below(5)
        };
        let ending = match (timed_out, random.below(2)) {
            (false, _) => Ending::Returned,
            (true, 0) => Ending::TimedOutApplied,
            (true, _) => Ending::TimedOutLost,
        };
        let plan = PlannedOperation {
            key: random.below(u64::from(keys)) as u8,
            kind: random.below(4) as u8,
            value: position as u32,
            expected: Some(random.below(position + 1) as u32),
            call_lead,
            return_lag,
            ending,
        };
        planned.push((instant, client, plan));
    }
    planned.sort_by_key(|(instant, client, _)| (*instant, *client));
    let plan: Vec<PlannedOperation> = planned.iter().map(|(_, _, plan)| plan.clone()).collect();
    let mut history = execute(&plan);
    // `execute` spaces instants evenly; put back the clients' own times.
    for (operation, (instant, client, plan)) in history.iter_mut().zip(&planned) {
        operation.client_id = *client as u64;
        operation.call_time = instant - plan.call_lead;
        if let Some(return_time) = operation.return_time.as_mut() {
            *return_time = instant + plan.return_lag;
        }
    }
    history
}

#[test]
fn timeouts_from_many_clients_neither_hide_a_bug_nor_exhaust_the_budget() {
    for seed in 0..3 {
        let mut random = SplitMix(synod_paxos::SplitMix64::new(seed));
        let mut history = closed_loop_history(&mut random, 2_000, 20, 8, 50);
        assert_eq!(
            check(&RegisterModel::new(), &history, Budget::default()),
            Ok(CheckResult::Ok),
            "seed {seed}"
        );
        let late_read = history
            .iter()
            .rposition(|operation| matches!(operation.output, Some(RegisterOutput::Read(_))))
            .expect("the history has reads");
        history[late_read].output = Some(RegisterOutput::Read(Some(u32::MAX)));
        let result = check(&RegisterModel::new(), &history, Budget::default()).unwrap();
        assert!(result.is_illegal(), "seed {seed}: {result:?}");
    }
}

/// Forty writes that all overlap, then a read of a value none of them wrote: proving this
/// illegal means trying every order of the writes, which the memoization cannot collapse.
fn adversarial_history() -> Vec<RegisterOperation> {
    let mut history: Vec<RegisterOperation> = (0..40).map(|value| write(value, "x", value, 0, 100)).collect();
    history.push(read(99, "x", Some(999), 200, 210));
    history
}

#[test]
fn exhausted_budget_reports_unknown_never_pass() {
    let result = check(&Register::new(), &adversarial_history(), Budget::steps(100_000));
    assert_eq!(
        result,
        Ok(CheckResult::Unknown {
            partition: Some("x"),
            steps_used: 100_000
        })
    );

    // Even a linearizable history is "unknown", not "ok", when the budget is too small.
    let mut random = SplitMix(synod_paxos::SplitMix64::new(3));
    let legal = execute(&random_plan(&mut random, 100, 2));
    let result = check(&RegisterModel::new(), &legal, Budget::steps(10)).unwrap();
    assert!(matches!(result, CheckResult::Unknown { .. }), "{result:?}");
    assert_eq!(
        check(&RegisterModel::new(), &legal, Budget::default()),
        Ok(CheckResult::Ok)
    );
}

fn planned_operation(max_value: u32, keys: u8) -> impl Strategy<Value = PlannedOperation> {
    (
        0..keys,
        0u8..4,
        0..max_value,
        proptest::option::of(0..max_value),
        0u64..60,
        0u64..60,
        prop_oneof![
            8 => Just(Ending::Returned),
            1 => Just(Ending::TimedOutApplied),
            1 => Just(Ending::TimedOutLost),
        ],
    )
        .prop_map(
            |(key, kind, value, expected, call_lead, return_lag, ending)| PlannedOperation {
                key,
                kind,
                value,
                expected,
                call_lead,
                return_lag,
                ending,
            },
        )
}

/// A brute-force oracle: tries every order of the operations that respects real time, and
/// every subset of the unknown-outcome ones, on one key. Exponential, so for tiny histories.
fn brute_force_linearizable(history: &[SmallOperation]) -> bool {
    fn precedes(before: &SmallOperation, after: &SmallOperation) -> bool {
        before
            .return_time
            .is_some_and(|return_time| return_time < after.call_time)
    }
    fn explore(
        model: &RegisterModel<u8, u32>,
        history: &[SmallOperation],
        remaining: &mut Vec<usize>,
        state: &Option<u32>,
    ) -> bool {
        if remaining.iter().all(|&index| !history[index].has_known_outcome()) {
            return true;
        }
        for position in 0..remaining.len() {
            let candidate = &history[remaining[position]];
            if remaining.iter().any(|&other| precedes(&history[other], candidate)) {
                continue;
            }
            let next_states = match &candidate.output {
                Some(output) => model.step(state, &candidate.input, output).into_iter().collect(),
                None => model.step_unknown_output(state, &candidate.input),
            };
            let taken = remaining.remove(position);
            let found = next_states
                .iter()
                .any(|next_state| explore(model, history, remaining, next_state));
            remaining.insert(position, taken);
            if found {
                return true;
            }
        }
        false
    }
    let mut remaining: Vec<usize> = (0..history.len()).collect();
    explore(&RegisterModel::new(), history, &mut remaining, &None)
}

/// An arbitrary (usually not linearizable) single-key history with small values, so that
/// reads often coincide with some legal state.
fn arbitrary_small_history() -> impl Strategy<Value = Vec<SmallOperation>> {
    let operation = (
        0u8..4,
        0u32..3,
        proptest::option::of(0u32..3),
        any::<bool>(),
        0u64..20,
        0u64..10,
        0u8..5,
    )
        .prop_map(|(kind, value, maybe_value, flag, call_time, duration, ending)| {
            let (input, output) = match kind {
                0 => (RegisterInput::Read { key: 0 }, RegisterOutput::Read(maybe_value)),
                1 => (RegisterInput::Write { key: 0, value }, RegisterOutput::Write),
                2 => (RegisterInput::Delete { key: 0 }, RegisterOutput::Delete),
                _ => (
                    RegisterInput::CompareAndSwap {
                        key: 0,
                        expected: maybe_value,
                        new: value,
                    },
                    RegisterOutput::CompareAndSwap(flag),
                ),
            };
            if ending == 0 {
                Operation::unknown_outcome(0, input, call_time)
            } else {
                Operation::returned(0, input, call_time, call_time + duration, output)
            }
        });
    proptest::collection::vec(operation, 0..7)
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 256, ..ProptestConfig::default() })]

    #[test]
    fn executed_histories_are_linearizable(
        plan in proptest::collection::vec(planned_operation(4, 3), 0..80)
    ) {
        let history = execute(&plan);
        prop_assert_eq!(
            check(&RegisterModel::new(), &history, Budget::default()),
            Ok(CheckResult::Ok)
        );
    }

    #[test]
    fn a_read_of_a_value_never_written_is_caught(
        plan in proptest::collection::vec(planned_operation(4, 3), 1..80),
        choice in any::<prop::sample::Index>(),
    ) {
        let mut history = execute(&plan);
        // Turn one operation, whatever it was, into a read that returned a value no operation
        // ever wrote.
        let mutated = choice.index(history.len());
        let operation = &mut history[mutated];
        operation.input = RegisterInput::Read { key: *operation.input.key() };
        operation.return_time = Some(operation.return_time.unwrap_or(operation.call_time + 1));
        operation.output = Some(RegisterOutput::Read(Some(u32::MAX)));
        let result = check(&RegisterModel::new(), &history, Budget::default()).unwrap();
        prop_assert!(result.is_illegal(), "{:?}", result);
        if let CheckResult::Illegal(report) = result {
            prop_assert_eq!(report.partition, Some(*history[mutated].input.key()));
        }
    }

    #[test]
    fn checker_agrees_with_brute_force(history in arbitrary_small_history()) {
        let result = check(&RegisterModel::new(), &history, Budget::default()).unwrap();
        prop_assert!(!matches!(result, CheckResult::Unknown { .. }), "{:?}", result);
        prop_assert_eq!(result.is_ok(), brute_force_linearizable(&history), "{:?}", result);
    }
}
