//! `set`: clients add unique keys, and at the end one linearizable listing
//! must hold every key whose put was acknowledged.
//!
//! Each key is written once and never deleted, so the check needs no
//! timing: an acknowledged key missing from the listing is a lost write; a
//! listed key no client tried to write, or one whose put was refused in a way
//! that proves it did not happen, came from nowhere. A key whose put has an
//! unknown outcome may be there or not.

use std::collections::{BTreeMap, BTreeSet};

use synod_proto::etcdserverpb::kv_client::KvClient;
use synod_proto::etcdserverpb::{PutRequest, RangeRequest};
use synod_proto::prefix_end;
use tonic::transport::Channel;

use super::client::{self, Counts, Outcome};
use super::{SharedContext, Verdict, WorkloadReport};

/// The workload's name.
pub const NAME: &str = "set";
/// Every key of the workload is under this prefix.
pub const PREFIX: &str = "chaos/set/";
/// Concurrent clients, each with one put in flight.
pub const CLIENTS: u64 = 3;
/// Puts each client issues per second at most.
pub const OPS_PER_S_PER_CLIENT: u32 = 20;
/// Puts each client issues at most over the whole run.
pub const PUTS_PER_CLIENT_MAX: u64 = 10_000;
/// Keys per page of the final listing.
const PAGE_KEYS: i64 = 1_000;

/// How a put ended, as far as the checker cares.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PutOutcome {
    /// Acknowledged: the key must be there.
    Acknowledged,
    /// Refused before taking effect: the key must not be there.
    Refused,
    /// Unknown: either.
    Unknown,
}

/// The key of `client`'s `n`th put.
pub fn key(client: u64, n: u64) -> String {
    format!("{PREFIX}{client}/{n}")
}

/// Runs the workload until `ctx.stop`, then lists the keys and checks them.
pub async fn run(ctx: SharedContext) -> WorkloadReport {
    let mut report = WorkloadReport::named(NAME);
    let channels = match client::open_cleared(&ctx.endpoints, PREFIX).await {
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
    let mut attempted = BTreeMap::new();
    let mut counts = Counts::default();
    while let Some(joined) = tasks.join_next().await {
        match joined {
            Ok((puts, client_counts)) => {
                attempted.extend(puts);
                counts.merge(&client_counts);
            }
            Err(error) => report.inconclusive.push(format!("a client task failed: {error}")),
        }
    }
    report.add_counts(&counts);
    match list(&channels).await {
        Ok(present) => report.add_verdict(check_set(&attempted, &present)),
        Err(why) => report
            .inconclusive
            .push(format!("the final listing of {PREFIX} failed: {why}")),
    }
    report
}

async fn client_loop(
    ctx: SharedContext,
    channels: Vec<Channel>,
    client_id: u64,
) -> (Vec<(String, PutOutcome)>, Counts) {
    use rand::Rng;
    let mut rng = client::rng(ctx.seed, NAME, client_id);
    let mut pacer = client::pacer(OPS_PER_S_PER_CLIENT);
    let mut puts = Vec::new();
    let mut counts = Counts::default();
    for n in 0..PUTS_PER_CLIENT_MAX {
        if !client::next_tick(&ctx.stop, &mut pacer).await {
            break;
        }
        let key = key(client_id, n);
        let mut kv = KvClient::new(channels[rng.random_range(0..channels.len())].clone());
        let put = PutRequest {
            key: key.as_bytes().to_vec().into(),
            value: key.as_bytes().to_vec().into(),
            ..PutRequest::default()
        };
        let done = client::issue(&ctx, &mut counts, client::call(kv.put(client::request(put)))).await;
        let outcome = match done.outcome {
            Outcome::Ok(_) => PutOutcome::Acknowledged,
            Outcome::Failed(_) => PutOutcome::Refused,
            Outcome::Unknown(_) => PutOutcome::Unknown,
        };
        puts.push((key, outcome));
        if outcome != PutOutcome::Acknowledged && !client::pause(&ctx.stop, client::RETRY_PAUSE).await {
            break;
        }
    }
    (puts, counts)
}

/// Every key under [`PREFIX`], by linearizable Ranges a page at a time,
/// each page retried over the members until [`client::SETTLE_DEADLINE`].
async fn list(channels: &[Channel]) -> Result<BTreeSet<String>, String> {
    let mut present = BTreeSet::new();
    let end = prefix_end(PREFIX.as_bytes());
    let mut from = PREFIX.as_bytes().to_vec();
    loop {
        let range = RangeRequest {
            key: from.clone().into(),
            range_end: end.clone().into(),
            limit: PAGE_KEYS,
            keys_only: true,
            ..RangeRequest::default()
        };
        let page = client::until_ok(client::SETTLE_DEADLINE, |attempt| {
            let mut kv = KvClient::new(channels[attempt as usize % channels.len()].clone());
            let range = range.clone();
            async move { client::call(kv.range(client::request(range))).await }
        })
        .await?;
        let Some(last) = page.kvs.last() else {
            return Ok(present);
        };
        // The next page starts just after the last key of this one.
        from = last.key.to_vec();
        from.push(0);
        for kv in &page.kvs {
            present.insert(String::from_utf8_lossy(&kv.key).into_owned());
        }
        if !page.more {
            return Ok(present);
        }
    }
}

/// Checks the keys `present` at the end against the puts `attempted`.
pub fn check_set(attempted: &BTreeMap<String, PutOutcome>, present: &BTreeSet<String>) -> Verdict {
    let mut verdict = Verdict::default();
    let count = |wanted: PutOutcome| attempted.values().filter(|outcome| **outcome == wanted).count();
    let lost: Vec<&String> = attempted
        .iter()
        .filter(|(key, outcome)| **outcome == PutOutcome::Acknowledged && !present.contains(*key))
        .map(|(key, _)| key)
        .collect();
    let refused_present: Vec<&String> = attempted
        .iter()
        .filter(|(key, outcome)| **outcome == PutOutcome::Refused && present.contains(*key))
        .map(|(key, _)| key)
        .collect();
    let never_written: Vec<&String> = present.iter().filter(|key| !attempted.contains_key(*key)).collect();
    let unknown_present = attempted
        .iter()
        .filter(|(key, outcome)| **outcome == PutOutcome::Unknown && present.contains(*key))
        .count();
    verdict.checked = format!(
        "{} puts ({} acknowledged, {} refused, {} unknown of which {unknown_present} present), {} keys listed",
        attempted.len(),
        count(PutOutcome::Acknowledged),
        count(PutOutcome::Refused),
        count(PutOutcome::Unknown),
        present.len()
    );
    let sample = |keys: &[&String]| {
        keys.iter()
            .take(10)
            .map(|key| key.as_str())
            .collect::<Vec<_>>()
            .join(", ")
    };
    if !lost.is_empty() {
        verdict.anomalies.push(format!(
            "{} acknowledged puts are missing from the final listing (lost writes), e.g. {}",
            lost.len(),
            sample(&lost)
        ));
    }
    if !refused_present.is_empty() {
        verdict.anomalies.push(format!(
            "{} puts refused as not done are in the final listing, e.g. {}",
            refused_present.len(),
            sample(&refused_present)
        ));
    }
    if !never_written.is_empty() {
        verdict.anomalies.push(format!(
            "{} keys in the final listing were never written, e.g. {}",
            never_written.len(),
            sample(&never_written)
        ));
    }
    verdict
}

#[cfg(test)]
mod tests {
    use super::*;

    fn attempted() -> BTreeMap<String, PutOutcome> {
        BTreeMap::from([
            (key(0, 0), PutOutcome::Acknowledged),
            (key(0, 1), PutOutcome::Unknown),
            (key(1, 0), PutOutcome::Acknowledged),
            (key(1, 1), PutOutcome::Refused),
            (key(1, 2), PutOutcome::Unknown),
        ])
    }

    #[test]
    fn acknowledged_keys_present_pass_whatever_the_unknown_ones_did() {
        let present = BTreeSet::from([key(0, 0), key(0, 1), key(1, 0)]);
        let verdict = check_set(&attempted(), &present);
        assert!(verdict.anomalies.is_empty(), "{verdict:?}");
        assert!(verdict.inconclusive.is_empty(), "{verdict:?}");
    }

    #[test]
    fn a_lost_acknowledged_key_is_an_anomaly() {
        let present = BTreeSet::from([key(0, 0), key(0, 1)]);
        let verdict = check_set(&attempted(), &present);
        assert_eq!(verdict.anomalies.len(), 1, "{verdict:?}");
        assert!(verdict.anomalies[0].contains(&key(1, 0)), "{verdict:?}");
    }

    #[test]
    fn keys_from_nowhere_are_anomalies() {
        let present = BTreeSet::from([key(0, 0), key(1, 0), key(1, 1), key(7, 7)]);
        let verdict = check_set(&attempted(), &present);
        assert_eq!(verdict.anomalies.len(), 2, "{verdict:?}");
        assert!(verdict.anomalies.iter().any(|anomaly| anomaly.contains(&key(7, 7))));
        assert!(verdict.anomalies.iter().any(|anomaly| anomaly.contains(&key(1, 1))));
    }
}
