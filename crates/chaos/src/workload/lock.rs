//! `lock`: a counter incremented only under a lock, checked for lost updates.
//!
//! Each client loops: grant a short lease and keep it alive in the
//! background, take the lock `chaos/lock` with the `v3lockpb.Lock` call on
//! that lease, look up the lock key's create revision, read the counter
//! (linearizably), and write the counter plus one in a Txn guarded twice:
//! the Txn's own compare that the lock key still has its create revision
//! (etcd's recipe), and Chubby's sequencer in the `synod-sequencer` metadata,
//! which the server checks against the lock key's create revision and lease
//! in the same step as the write. Then unlock and revoke the lease.
//!
//! Sometimes a holder stops its keep-alives and sleeps past its lease before
//! writing, as a paused process would: by then the lease has expired and the
//! lock may be someone else's, so its write must be refused. If a guard let
//! it through, two increments would write the same value.
//!
//! The check: no two acknowledged increments wrote the same value (a lost
//! update), and the final counter lies between the number of acknowledged
//! increments and that plus the number of unknown ones.

use std::collections::BTreeMap;
use std::time::Duration;

use rand::Rng;
use synod_proto::etcdserverpb::compare::{CompareResult, CompareTarget, TargetUnion};
use synod_proto::etcdserverpb::kv_client::KvClient;
use synod_proto::etcdserverpb::lease_client::LeaseClient;
use synod_proto::etcdserverpb::request_op::Request as RequestOpRequest;
use synod_proto::etcdserverpb::{Compare, LeaseGrantRequest, PutRequest, RequestOp, TxnRequest};
use synod_proto::v3lockpb::lock_client::LockClient;
use synod_proto::v3lockpb::{LockRequest, UnlockRequest};
use tokio_util::sync::CancellationToken;
use tonic::metadata::MetadataValue;
use tonic::transport::Channel;

use super::client::{self, Counts, KeepAlive, Outcome};
use super::{SharedContext, Verdict, WorkloadReport};

/// The workload's name.
pub const NAME: &str = "lock";
/// The lock's name; holders' keys are `chaos/lock/<lease>`.
pub const LOCK_NAME: &str = "chaos/lock";
/// The counter the lock protects.
pub const COUNTER_KEY: &str = "chaos/counter";
/// The metadata key of a sequencer, as the server reads it
/// (`LOCK_KEY_HEX/CREATE_REVISION/LEASE_HEX`).
pub const SEQUENCER_HEADER: &str = "synod-sequencer";
/// Concurrent clients contending for the lock.
pub const CLIENTS: u64 = 4;
/// TTL asked for each holder's lease, in seconds (the server may raise it
/// to its minimum; the granted TTL is what counts).
pub const LEASE_TTL_S: i64 = 2;
/// Lock cycles each client starts per second at most.
pub const CYCLES_PER_S_PER_CLIENT: u32 = 5;
/// Chance that a holder plays a paused process: stops its keep-alives and
/// sleeps past its lease before writing.
pub const PAUSED_HOLDER_PROBABILITY: f64 = 0.05;
/// How much longer than its lease's TTL a paused holder sleeps, in
/// milliseconds: time for the master to notice the expiry and revoke.
pub const PAUSE_BEYOND_TTL_MS: u64 = 1_500;
/// How long a Lock call may wait for the lock: behind a paused holder it
/// waits out that holder's lease.
pub const LOCK_TIMEOUT: Duration = Duration::from_secs(10);
/// Increments each client attempts at most over the run.
pub const INCREMENTS_PER_CLIENT_MAX: u64 = 5_000;

/// How an increment's write ended.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum IncrementOutcome {
    /// Acknowledged: the counter now holds its value, or held it.
    Acknowledged,
    /// Refused by a guard (the lock key's revision compare or the sequencer):
    /// nothing written.
    Fenced(String),
    /// Unknown: it may have written its value.
    Unknown(String),
}

/// One increment's write of the counter.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Increment {
    /// The client that wrote it.
    pub client: u64,
    /// The value it wrote: the counter it read, plus one.
    pub value: u64,
    /// Whether the holder slept past its lease before writing.
    pub paused: bool,
    /// How the write ended.
    pub outcome: IncrementOutcome,
}

/// What one client did.
#[derive(Debug, Default)]
struct ClientLog {
    increments: Vec<Increment>,
    counts: Counts,
    /// Things the client saw that are wrong by themselves (a counter that is
    /// not a number, say).
    anomalies: Vec<String>,
}

/// The counter's value as written: the count, then who wrote it.
fn counter_value(count: u64, client: u64, cycle: u64) -> String {
    format!("{count}/c{client}-{cycle}")
}

/// The count in a counter value.
fn parse_counter(value: &str) -> Option<u64> {
    value.split('/').next()?.parse().ok()
}

/// Runs the workload until `ctx.stop`, then reads the counter and checks it.
pub async fn run(ctx: SharedContext) -> WorkloadReport {
    let mut report = WorkloadReport::named(NAME);
    let channels = match client::open_cleared(&ctx.endpoints, COUNTER_KEY).await {
        Ok((channels, _)) => channels,
        Err(why) => {
            report.inconclusive.push(why);
            return report;
        }
    };
    let mut tasks = tokio::task::JoinSet::new();
    for client_id in 0..CLIENTS {
        tasks.spawn(client_loop(ctx.clone(), channels.clone(), client_id));
    }
    let mut increments = Vec::new();
    let mut counts = Counts::default();
    while let Some(joined) = tasks.join_next().await {
        match joined {
            Ok(log) => {
                increments.extend(log.increments);
                counts.merge(&log.counts);
                report.anomalies.extend(log.anomalies);
            }
            Err(error) => report.inconclusive.push(format!("a client task failed: {error}")),
        }
    }
    let final_read = client::until_ok(client::SETTLE_DEADLINE, |attempt| {
        let mut kv = KvClient::new(channels[attempt as usize % channels.len()].clone());
        async move { client::call(kv.range(client::request(client::get(COUNTER_KEY)))).await }
    })
    .await;
    report.add_counts(&counts);
    match final_read {
        Ok(response) => match client::value_of(&response).map(|value| (parse_counter(&value), value)) {
            None => report.add_verdict(check_counter(&increments, 0)),
            Some((Some(count), _)) => report.add_verdict(check_counter(&increments, count)),
            Some((None, value)) => report
                .anomalies
                .push(format!("the final counter holds {value:?}, which no increment writes")),
        },
        Err(why) => report
            .inconclusive
            .push(format!("the final read of {COUNTER_KEY} failed: {why}")),
    }
    report
}

async fn client_loop(ctx: SharedContext, channels: Vec<Channel>, client_id: u64) -> ClientLog {
    let mut rng = client::rng(ctx.seed, NAME, client_id);
    let mut pacer = client::pacer(CYCLES_PER_S_PER_CLIENT);
    let mut log = ClientLog::default();
    let mut cycle = 0u64;
    while (log.increments.len() as u64) < INCREMENTS_PER_CLIENT_MAX && client::next_tick(&ctx.stop, &mut pacer).await {
        cycle += 1;
        let channel = channels[rng.random_range(0..channels.len())].clone();
        let paused = rng.random_bool(PAUSED_HOLDER_PROBABILITY);
        let succeeded = one_cycle(&channel, client_id, cycle, paused, &mut log).await;
        if !succeeded && !client::pause(&ctx.stop, client::RETRY_PAUSE).await {
            break;
        }
    }
    log
}

/// One lock cycle through `channel`: lease, lock, read, guarded write,
/// unlock. Returns whether every step up to the write was answered.
async fn one_cycle(channel: &Channel, client_id: u64, cycle: u64, paused: bool, log: &mut ClientLog) -> bool {
    let grant = LeaseGrantRequest {
        ttl: LEASE_TTL_S,
        id: 0,
    };
    let granted = client::call(LeaseClient::new(channel.clone()).lease_grant(client::request(grant))).await;
    log.counts.record(&granted);
    let granted = match granted {
        Outcome::Ok(granted) if granted.error.is_empty() && granted.ttl > 0 => granted,
        // A lease granted without an answer expires by itself.
        _ => return false,
    };
    let lease = granted.id;
    let ttl_s = granted.ttl;
    let refresher = KeepAliveTask::start(channel.clone(), lease, ttl_s);
    let succeeded = holding(channel, client_id, cycle, paused, lease, ttl_s, refresher, log).await;
    // Revoking deletes the lock key too, whatever happened above.
    client::revoke(channel, &mut log.counts, lease).await;
    succeeded
}

/// The part of a cycle with the lease granted and refreshed by `refresher`.
#[expect(
    clippy::too_many_arguments,
    reason = "the cycle's state, passed apart to keep borrows simple"
)]
async fn holding(
    channel: &Channel,
    client_id: u64,
    cycle: u64,
    paused: bool,
    lease: i64,
    ttl_s: i64,
    refresher: KeepAliveTask,
    log: &mut ClientLog,
) -> bool {
    let mut refresher = Some(refresher);
    let lock = LockRequest {
        name: LOCK_NAME.as_bytes().to_vec().into(),
        lease,
    };
    let locked = client::call_within(LOCK_TIMEOUT, LockClient::new(channel.clone()).lock(lock)).await;
    log.counts.record(&locked);
    let Outcome::Ok(locked) = locked else {
        if let Some(refresher) = refresher.take() {
            refresher.stop(&mut log.counts).await;
        }
        return false;
    };
    let lock_key = locked.key;
    let mut kv = KvClient::new(channel.clone());
    let succeeded = 'held: {
        // The lock key's create revision is the fencing token.
        let lookup = client::call(kv.range(client::request(synod_proto::etcdserverpb::RangeRequest {
            key: lock_key.clone(),
            ..Default::default()
        })))
        .await;
        log.counts.record(&lookup);
        let Outcome::Ok(lookup) = lookup else {
            break 'held false;
        };
        let Some(held) = lookup.kvs.into_iter().next().filter(|kv| kv.lease == lease) else {
            // The lease ran out between the lock and the lookup: nothing to fence.
            break 'held true;
        };
        let create_revision = held.create_revision;
        let read = client::call(kv.range(client::request(client::get(COUNTER_KEY)))).await;
        log.counts.record(&read);
        let Outcome::Ok(read) = read else {
            break 'held false;
        };
        let current = match client::value_of(&read) {
            None => 0,
            Some(value) => match parse_counter(&value) {
                Some(count) => count,
                None => {
                    log.anomalies.push(format!(
                        "client {client_id} read {COUNTER_KEY} = {value:?}, which no increment writes"
                    ));
                    break 'held true;
                }
            },
        };
        if paused {
            // A paused process sends no keep-alives; wait until the one in
            // flight, if any, is answered, then outlive the lease.
            if let Some(refresher) = refresher.take() {
                refresher.stop(&mut log.counts).await;
            }
            let ttl_ms = u64::try_from(ttl_s).unwrap_or(0).saturating_mul(1_000);
            tokio::time::sleep(Duration::from_millis(ttl_ms + PAUSE_BEYOND_TTL_MS)).await;
        }
        let value = current + 1;
        let outcome = guarded_write(
            &mut kv,
            &lock_key,
            create_revision,
            lease,
            counter_value(value, client_id, cycle),
        )
        .await;
        log.counts.record(&outcome);
        let outcome = match outcome {
            Outcome::Ok(true) => IncrementOutcome::Acknowledged,
            Outcome::Ok(false) => IncrementOutcome::Fenced("the lock key's create revision changed".to_string()),
            Outcome::Failed(why) => IncrementOutcome::Fenced(why),
            Outcome::Unknown(why) => IncrementOutcome::Unknown(why),
        };
        log.increments.push(Increment {
            client: client_id,
            value,
            paused,
            outcome,
        });
        true
    };
    if let Some(refresher) = refresher.take() {
        refresher.stop(&mut log.counts).await;
    }
    let unlocked =
        client::call(LockClient::new(channel.clone()).unlock(client::request(UnlockRequest { key: lock_key }))).await;
    log.counts.record(&unlocked);
    succeeded
}

/// Puts the counter's new value if the lock key still has `create_revision`,
/// with the sequencer as well; the answer says whether the Txn's compare held.
async fn guarded_write(
    kv: &mut KvClient<Channel>,
    lock_key: &[u8],
    create_revision: i64,
    lease: i64,
    value: String,
) -> Outcome<bool> {
    let txn = TxnRequest {
        compare: vec![Compare {
            result: CompareResult::Equal as i32,
            target: CompareTarget::Create as i32,
            key: lock_key.to_vec().into(),
            target_union: Some(TargetUnion::CreateRevision(create_revision)),
            ..Compare::default()
        }],
        success: vec![RequestOp {
            request: Some(RequestOpRequest::RequestPut(PutRequest {
                key: COUNTER_KEY.as_bytes().to_vec().into(),
                value: value.into_bytes().into(),
                ..PutRequest::default()
            })),
        }],
        failure: Vec::new(),
    };
    let mut request = client::request(txn);
    let hex: String = lock_key.iter().map(|byte| format!("{byte:02x}")).collect();
    match MetadataValue::try_from(format!("{hex}/{create_revision}/{lease:x}")) {
        Ok(sequencer) => {
            request.metadata_mut().insert(SEQUENCER_HEADER, sequencer);
        }
        Err(_) => return Outcome::Failed("the sequencer is not valid metadata".to_string()),
    }
    client::call(kv.txn(request)).await.map(|response| response.succeeded)
}

/// A lease's keep-alives, in the background until stopped.
struct KeepAliveTask {
    stop: CancellationToken,
    task: tokio::task::JoinHandle<Counts>,
}

impl KeepAliveTask {
    /// Refreshes `lease` through `channel` three times a TTL.
    fn start(channel: Channel, lease: i64, ttl_s: i64) -> KeepAliveTask {
        let stop = CancellationToken::new();
        let period = Duration::from_millis(u64::try_from(ttl_s).unwrap_or(1).max(1) * 1_000 / 3);
        let task = tokio::spawn({
            let stop = stop.clone();
            async move {
                let mut keep_alive = KeepAlive::new(channel);
                let mut counts = Counts::default();
                while client::pause(&stop, period).await {
                    let outcome = keep_alive.once(lease).await;
                    counts.record(&outcome);
                    if matches!(outcome, Outcome::Ok(ttl_s) if ttl_s <= 0) {
                        break;
                    }
                }
                counts
            }
        });
        KeepAliveTask { stop, task }
    }

    /// Stops the keep-alives once the one in flight, if any, has ended, and
    /// adds their counts to `counts`.
    async fn stop(self, counts: &mut Counts) {
        self.stop.cancel();
        if let Ok(refreshed) = self.task.await {
            counts.merge(&refreshed);
        }
    }
}

/// Checks the increments against the counter's final value (0 if absent).
pub fn check_counter(increments: &[Increment], final_value: u64) -> Verdict {
    let mut verdict = Verdict::default();
    let acknowledged: Vec<&Increment> = increments
        .iter()
        .filter(|increment| increment.outcome == IncrementOutcome::Acknowledged)
        .collect();
    let unknown = increments
        .iter()
        .filter(|increment| matches!(increment.outcome, IncrementOutcome::Unknown(_)))
        .count() as u64;
    let fenced: Vec<&Increment> = increments
        .iter()
        .filter(|increment| matches!(increment.outcome, IncrementOutcome::Fenced(_)))
        .collect();
    let fenced_paused = fenced.iter().filter(|increment| increment.paused).count();
    let acknowledged_count = acknowledged.len() as u64;
    verdict.checked = format!(
        "{} increments ({acknowledged_count} acknowledged, {unknown} unknown, {} fenced of which {fenced_paused} \
         by holders paused past their lease), final counter {final_value}",
        increments.len(),
        fenced.len(),
    );
    let mut writers: BTreeMap<u64, Vec<&Increment>> = BTreeMap::new();
    for increment in &acknowledged {
        writers.entry(increment.value).or_default().push(increment);
    }
    for (value, by) in writers.iter().filter(|(_, by)| by.len() > 1) {
        let who: Vec<String> = by
            .iter()
            .map(|increment| {
                format!(
                    "client {}{}",
                    increment.client,
                    if increment.paused {
                        " (paused past its lease)"
                    } else {
                        ""
                    }
                )
            })
            .collect();
        verdict.anomalies.push(format!(
            "lost update: {} acknowledged increments all wrote the counter {value}: {}",
            by.len(),
            who.join(", ")
        ));
    }
    if final_value < acknowledged_count {
        verdict.anomalies.push(format!(
            "the final counter {final_value} is below the {acknowledged_count} acknowledged increments"
        ));
    }
    if final_value > acknowledged_count + unknown {
        verdict.anomalies.push(format!(
            "the final counter {final_value} is above the {acknowledged_count} acknowledged plus {unknown} unknown \
             increments"
        ));
    }
    if let Some(highest) = writers.keys().next_back().filter(|highest| **highest > final_value) {
        verdict.anomalies.push(format!(
            "an acknowledged increment wrote {highest}, above the final counter {final_value}"
        ));
    }
    let written = |value: u64| {
        increments
            .iter()
            .any(|increment| increment.value == value && !matches!(increment.outcome, IncrementOutcome::Fenced(_)))
    };
    if final_value > 0 && !written(final_value) {
        verdict.anomalies.push(format!(
            "the final counter {final_value} was written by no acknowledged or unknown increment"
        ));
    }
    verdict
}

#[cfg(test)]
mod tests {
    use super::*;

    fn increment(client: u64, value: u64, outcome: IncrementOutcome) -> Increment {
        Increment {
            client,
            value,
            paused: false,
            outcome,
        }
    }

    #[test]
    fn a_serial_history_passes() {
        let increments = vec![
            increment(0, 1, IncrementOutcome::Acknowledged),
            increment(1, 2, IncrementOutcome::Acknowledged),
            Increment {
                paused: true,
                ..increment(2, 3, IncrementOutcome::Fenced("synod: sequencer is stale".into()))
            },
            increment(0, 3, IncrementOutcome::Unknown("timeout".into())),
            increment(1, 3, IncrementOutcome::Acknowledged),
        ];
        // The unknown write did not happen (its holder lost the lock).
        let verdict = check_counter(&increments, 3);
        assert!(verdict.anomalies.is_empty(), "{verdict:?}");
        assert!(verdict.inconclusive.is_empty(), "{verdict:?}");
    }

    #[test]
    fn two_acknowledged_writes_of_one_value_are_a_lost_update() {
        let increments = vec![
            increment(0, 1, IncrementOutcome::Acknowledged),
            Increment {
                paused: true,
                ..increment(1, 2, IncrementOutcome::Acknowledged)
            },
            increment(2, 2, IncrementOutcome::Acknowledged),
        ];
        let verdict = check_counter(&increments, 2);
        assert!(
            verdict.anomalies.iter().any(|anomaly| anomaly.contains("lost update")),
            "{verdict:?}"
        );
        assert!(
            verdict.anomalies.iter().any(|anomaly| anomaly.contains("below")),
            "{verdict:?}"
        );
    }

    #[test]
    fn a_counter_beyond_what_was_written_is_an_anomaly() {
        let increments = vec![
            increment(0, 1, IncrementOutcome::Acknowledged),
            increment(1, 2, IncrementOutcome::Fenced("compare".into())),
        ];
        let verdict = check_counter(&increments, 2);
        assert!(
            verdict.anomalies.iter().any(|anomaly| anomaly.contains("above")),
            "{verdict:?}"
        );
    }

    #[test]
    fn counter_values_round_trip() {
        assert_eq!(parse_counter(&counter_value(17, 2, 9)), Some(17));
        assert_eq!(parse_counter("x"), None);
    }
}
