//! `register`: clients read, write and compare-and-swap a few keys, each a
//! register, and the history is checked for linearizability.
//!
//! Reads are linearizable Ranges (a serializable read may be stale, so it has
//! no place in a linearizable history). A compare-and-swap is a Txn that
//! compares the key's value with the one this client last saw (or its create
//! revision with 0 when it saw none) and puts a new value if it matches, and
//! reads the key otherwise; that read is recorded as a read over the same
//! interval, which only narrows the search. Every write has a value no other
//! write uses, and nothing deletes a register, so comparing the value is
//! comparing the mod revision: a key still holds the value a client saw
//! exactly when it still holds the write that client saw. A write or swap that timed out is recorded with an unknown
//! outcome; a read that failed is dropped, since it changed nothing.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use rand::Rng;
use synod_proto::etcdserverpb::compare::{CompareResult, CompareTarget, TargetUnion};
use synod_proto::etcdserverpb::kv_client::KvClient;
use synod_proto::etcdserverpb::request_op::Request as RequestOpRequest;
use synod_proto::etcdserverpb::response_op::Response as ResponseOpResponse;
use synod_proto::etcdserverpb::{Compare, PutRequest, RangeRequest, RequestOp, TxnRequest};
use synod_sim::linearizability::{check, Budget, CheckResult, Operation, RegisterInput, RegisterModel, RegisterOutput};
use tonic::transport::Channel;

use super::client::{self, Counts, Outcome};
use super::{SharedContext, Verdict, WorkloadReport};

/// The workload's name.
pub const NAME: &str = "register";
/// Every key of the workload is under this prefix.
pub const PREFIX: &str = "chaos/reg/";
/// Concurrent clients, each with one operation in flight.
pub const CLIENTS: u64 = 10;
/// Registers the clients share.
pub const KEYS: u64 = 16;
/// Operations each client issues per second at most.
pub const OPS_PER_S_PER_CLIENT: u32 = 10;
/// Operations recorded at most; clients stop issuing once there are this
/// many, so a long run stays within what the checker can search.
pub const HISTORY_OPS_MAX: u64 = 20_000;
/// Search steps the checker may spend on the whole history.
pub const BUDGET_STEPS: u64 = 50_000_000;

/// Keys and values as the checker sees them.
pub type Input = RegisterInput<String, String>;
/// Answers as the checker sees them.
pub type Output = RegisterOutput<String>;
/// One recorded operation.
pub type Op = Operation<Input, Output>;

/// The key of register `index`.
pub fn key(index: u64) -> String {
    format!("{PREFIX}{index}")
}

/// Runs the workload until `ctx.stop`, then checks the history.
pub async fn run(ctx: SharedContext) -> WorkloadReport {
    let mut report = WorkloadReport::named(NAME);
    let channels = match client::open_cleared(&ctx.endpoints, PREFIX).await {
        Ok((channels, _)) => channels,
        Err(why) => {
            report.inconclusive.push(why);
            return report;
        }
    };
    let recorded = Arc::new(AtomicU64::new(0));
    let mut tasks = tokio::task::JoinSet::new();
    for client_id in 0..CLIENTS {
        tasks.spawn(client_loop(ctx.clone(), channels.clone(), client_id, recorded.clone()));
    }
    let mut history = Vec::new();
    let mut counts = Counts::default();
    while let Some(joined) = tasks.join_next().await {
        match joined {
            Ok((ops, client_counts)) => {
                history.extend(ops);
                counts.merge(&client_counts);
            }
            Err(error) => report.inconclusive.push(format!("a client task failed: {error}")),
        }
    }
    report.add_counts(&counts);
    let verdict = tokio::task::spawn_blocking(move || check_history(&history, Budget::steps(BUDGET_STEPS))).await;
    match verdict {
        Ok(verdict) => report.add_verdict(verdict),
        Err(error) => report.inconclusive.push(format!("the checker failed: {error}")),
    }
    report
}

/// One client's state: its history, counts, and the value it last saw in
/// each register (what its swaps expect).
struct Client {
    ctx: SharedContext,
    client_id: u64,
    counts: Counts,
    history: Vec<Op>,
    seen: HashMap<u64, Option<String>>,
}

/// One client: random operations on random keys through random members.
async fn client_loop(
    ctx: SharedContext,
    channels: Vec<Channel>,
    client_id: u64,
    recorded: Arc<AtomicU64>,
) -> (Vec<Op>, Counts) {
    let mut rng = client::rng(ctx.seed, NAME, client_id);
    let mut pacer = client::pacer(OPS_PER_S_PER_CLIENT);
    let mut client = Client {
        ctx: ctx.clone(),
        client_id,
        counts: Counts::default(),
        history: Vec::new(),
        seen: HashMap::new(),
    };
    let mut writes = 0u64;
    while client::next_tick(&ctx.stop, &mut pacer).await {
        if recorded.load(Ordering::Relaxed) >= HISTORY_OPS_MAX {
            // Enough history: wait for the end without adding to it.
            ctx.stop.cancelled().await;
            break;
        }
        let index = rng.random_range(0..KEYS);
        let mut kv = KvClient::new(channels[rng.random_range(0..channels.len())].clone());
        let choice = rng.random_range(0..10);
        let before = client.history.len();
        let succeeded = if choice < 4 {
            client.read(&mut kv, index).await
        } else {
            writes += 1;
            let value = format!("c{client_id}-{writes}");
            if choice < 7 {
                client.write(&mut kv, index, value).await
            } else {
                client.swap(&mut kv, index, value).await
            }
        };
        recorded.fetch_add((client.history.len() - before) as u64, Ordering::Relaxed);
        if !succeeded && !client::pause(&ctx.stop, client::RETRY_PAUSE).await {
            break;
        }
    }
    (client.history, client.counts)
}

impl Client {
    /// A linearizable read of register `index`; returns whether it succeeded.
    async fn read(&mut self, kv: &mut KvClient<Channel>, index: u64) -> bool {
        let key = key(index);
        let ctx = self.ctx.clone();
        let done = client::issue(
            &ctx,
            &mut self.counts,
            client::call(kv.range(client::request(client::get(&key)))),
        )
        .await;
        match done.outcome {
            Outcome::Ok(response) => {
                let value = client::value_of(&response);
                self.seen.insert(index, value.clone());
                self.history.push(Operation::returned(
                    self.client_id,
                    RegisterInput::Read { key },
                    done.call_us,
                    done.return_us,
                    RegisterOutput::Read(value),
                ));
                true
            }
            // A read that failed changed nothing: it is left out.
            Outcome::Failed(_) | Outcome::Unknown(_) => false,
        }
    }

    /// A put of a fresh `value` into register `index`; returns whether it succeeded.
    async fn write(&mut self, kv: &mut KvClient<Channel>, index: u64, value: String) -> bool {
        let key = key(index);
        let put = PutRequest {
            key: key.as_bytes().to_vec().into(),
            value: value.as_bytes().to_vec().into(),
            ..PutRequest::default()
        };
        let ctx = self.ctx.clone();
        let done = client::issue(&ctx, &mut self.counts, client::call(kv.put(client::request(put)))).await;
        let input = RegisterInput::Write {
            key,
            value: value.clone(),
        };
        match done.outcome {
            Outcome::Ok(_) => {
                self.seen.insert(index, Some(value));
                self.history.push(Operation::returned(
                    self.client_id,
                    input,
                    done.call_us,
                    done.return_us,
                    RegisterOutput::Write,
                ));
                true
            }
            Outcome::Failed(_) => false,
            Outcome::Unknown(_) => {
                self.history
                    .push(Operation::unknown_outcome(self.client_id, input, done.call_us));
                false
            }
        }
    }

    /// A compare-and-swap of register `index` from the value this client last
    /// saw there to `new`; returns whether it was answered.
    async fn swap(&mut self, kv: &mut KvClient<Channel>, index: u64, new: String) -> bool {
        let key = key(index);
        let expected = self.seen.get(&index).cloned().flatten();
        let key_bytes: prost::bytes::Bytes = key.as_bytes().to_vec().into();
        let compare = match &expected {
            Some(value) => Compare {
                result: CompareResult::Equal as i32,
                target: CompareTarget::Value as i32,
                key: key_bytes.clone(),
                target_union: Some(TargetUnion::Value(value.as_bytes().to_vec().into())),
                ..Compare::default()
            },
            None => Compare {
                result: CompareResult::Equal as i32,
                target: CompareTarget::Create as i32,
                key: key_bytes.clone(),
                target_union: Some(TargetUnion::CreateRevision(0)),
                ..Compare::default()
            },
        };
        let txn = TxnRequest {
            compare: vec![compare],
            success: vec![RequestOp {
                request: Some(RequestOpRequest::RequestPut(PutRequest {
                    key: key_bytes.clone(),
                    value: new.as_bytes().to_vec().into(),
                    ..PutRequest::default()
                })),
            }],
            failure: vec![RequestOp {
                request: Some(RequestOpRequest::RequestRange(RangeRequest {
                    key: key_bytes,
                    ..RangeRequest::default()
                })),
            }],
        };
        let ctx = self.ctx.clone();
        let done = client::issue(&ctx, &mut self.counts, client::call(kv.txn(client::request(txn)))).await;
        let input = RegisterInput::CompareAndSwap {
            key: key.clone(),
            expected,
            new: new.clone(),
        };
        match done.outcome {
            Outcome::Ok(response) => {
                self.history.push(Operation::returned(
                    self.client_id,
                    input,
                    done.call_us,
                    done.return_us,
                    RegisterOutput::CompareAndSwap(response.succeeded),
                ));
                if response.succeeded {
                    self.seen.insert(index, Some(new));
                } else {
                    // The failure branch read the key in the same transaction.
                    let current = response.responses.into_iter().find_map(|op| match op.response {
                        Some(ResponseOpResponse::ResponseRange(range)) => Some(client::value_of(&range)),
                        _ => None,
                    });
                    if let Some(current) = current {
                        self.seen.insert(index, current.clone());
                        self.history.push(Operation::returned(
                            self.client_id,
                            RegisterInput::Read { key },
                            done.call_us,
                            done.return_us,
                            RegisterOutput::Read(current),
                        ));
                    }
                }
                true
            }
            Outcome::Failed(_) => false,
            Outcome::Unknown(_) => {
                self.history
                    .push(Operation::unknown_outcome(self.client_id, input, done.call_us));
                false
            }
        }
    }
}

/// One operation in a line, for reports.
fn describe(index: usize, op: &Op) -> String {
    let returned = match (op.return_time, &op.output) {
        (Some(at), Some(output)) => format!("returned {output:?} at {at} us"),
        _ => "outcome unknown".to_string(),
    };
    format!(
        "#{index} client {} {:?} called at {} us, {returned}",
        op.client_id, op.input, op.call_time
    )
}

/// Checks `history` against a map of registers, all absent at the start.
pub fn check_history(history: &[Op], budget: Budget) -> Verdict {
    let mut verdict = Verdict::default();
    let keys = history
        .iter()
        .map(|op| op.input.key())
        .collect::<std::collections::BTreeSet<_>>()
        .len();
    let unknown = history.iter().filter(|op| !op.has_known_outcome()).count();
    let summary = format!(
        "{keys} keys, {} operations ({unknown} of unknown outcome)",
        history.len()
    );
    match check(&RegisterModel::new(), history, budget) {
        Ok(CheckResult::Ok) => verdict.checked = format!("{summary}: linearizable"),
        Ok(CheckResult::Illegal(illegal)) => {
            verdict.checked = format!("{summary}: NOT linearizable");
            let key = illegal.partition.clone().unwrap_or_else(|| "(all keys)".to_string());
            let not_placed = history
                .get(illegal.operation_not_placed)
                .map(|op| describe(illegal.operation_not_placed, op))
                .unwrap_or_default();
            let recent: Vec<String> = illegal
                .longest_linearized_prefix
                .iter()
                .rev()
                .take(5)
                .rev()
                .filter_map(|&index| history.get(index).map(|op| describe(index, op)))
                .collect();
            verdict.anomalies.push(format!(
                "key {key} is not linearizable: after {} operations leaving it at {:?}, this one cannot \
                 take effect: {not_placed}; the last ones placed: [{}]",
                illegal.longest_linearized_prefix.len(),
                illegal.state_after_prefix,
                recent.join("; ")
            ));
        }
        Ok(CheckResult::Unknown { partition, steps_used }) => {
            verdict.checked = format!("{summary}: undecided");
            verdict.inconclusive.push(format!(
                "the linearizability search ran out of its budget on key {} after {steps_used} steps",
                partition.unwrap_or_else(|| "(all keys)".to_string())
            ));
        }
        Err(error) => {
            verdict.checked = format!("{summary}: malformed history");
            verdict.inconclusive.push(format!("the history is malformed: {error}"));
        }
    }
    verdict
}

#[cfg(test)]
mod tests {
    use super::*;

    fn write(client: u64, key: &str, value: &str, call: u64, ret: u64) -> Op {
        Operation::returned(
            client,
            RegisterInput::Write {
                key: key.to_string(),
                value: value.to_string(),
            },
            call,
            ret,
            RegisterOutput::Write,
        )
    }

    fn read(client: u64, key: &str, value: Option<&str>, call: u64, ret: u64) -> Op {
        Operation::returned(
            client,
            RegisterInput::Read { key: key.to_string() },
            call,
            ret,
            RegisterOutput::Read(value.map(str::to_string)),
        )
    }

    fn swap(client: u64, key: &str, expected: Option<&str>, new: &str, call: u64, ret: u64, swapped: bool) -> Op {
        Operation::returned(
            client,
            RegisterInput::CompareAndSwap {
                key: key.to_string(),
                expected: expected.map(str::to_string),
                new: new.to_string(),
            },
            call,
            ret,
            RegisterOutput::CompareAndSwap(swapped),
        )
    }

    #[test]
    fn a_legal_history_passes() {
        let history = vec![
            write(1, "chaos/reg/0", "c1-1", 0, 10),
            read(2, "chaos/reg/0", Some("c1-1"), 20, 30),
            swap(2, "chaos/reg/0", Some("c1-1"), "c2-1", 40, 50, true),
            // Timed out: may or may not have happened; the read after shows it did.
            Operation::unknown_outcome(
                3,
                RegisterInput::Write {
                    key: "chaos/reg/0".to_string(),
                    value: "c3-1".to_string(),
                },
                60,
            ),
            read(1, "chaos/reg/0", Some("c3-1"), 70, 80),
            swap(1, "chaos/reg/1", None, "c1-2", 0, 10, true),
            swap(2, "chaos/reg/1", None, "c2-2", 20, 30, false),
        ];
        let verdict = check_history(&history, Budget::default());
        assert!(verdict.anomalies.is_empty(), "{verdict:?}");
        assert!(verdict.inconclusive.is_empty(), "{verdict:?}");
        assert!(verdict.checked.contains("linearizable"), "{verdict:?}");
    }

    #[test]
    fn a_stale_read_is_an_anomaly_naming_its_key() {
        let history = vec![
            write(1, "chaos/reg/0", "c1-1", 0, 10),
            write(1, "chaos/reg/3", "c1-2", 20, 30),
            // Called after the second write returned, yet saw nothing.
            read(2, "chaos/reg/3", None, 40, 50),
        ];
        let verdict = check_history(&history, Budget::default());
        assert_eq!(verdict.anomalies.len(), 1, "{verdict:?}");
        assert!(verdict.anomalies[0].contains("chaos/reg/3"), "{verdict:?}");
    }

    #[test]
    fn two_swaps_from_one_value_is_an_anomaly() {
        let history = vec![
            write(1, "chaos/reg/0", "c1-1", 0, 10),
            swap(2, "chaos/reg/0", Some("c1-1"), "c2-1", 20, 30, true),
            swap(3, "chaos/reg/0", Some("c1-1"), "c3-1", 40, 50, true),
        ];
        let verdict = check_history(&history, Budget::default());
        assert_eq!(verdict.anomalies.len(), 1, "{verdict:?}");
    }

    #[test]
    fn an_exhausted_budget_is_inconclusive_not_a_pass() {
        let history = vec![
            write(1, "chaos/reg/0", "c1-1", 0, 10),
            read(2, "chaos/reg/0", Some("c1-1"), 20, 30),
        ];
        let verdict = check_history(&history, Budget::steps(1));
        assert!(verdict.anomalies.is_empty(), "{verdict:?}");
        assert_eq!(verdict.inconclusive.len(), 1, "{verdict:?}");
    }
}
