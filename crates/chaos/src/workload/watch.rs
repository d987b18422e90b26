//! `watch`: every watcher sees the same history of a prefix, in order,
//! without gaps, duplicates or inventions.
//!
//! One writer puts unique values under `chaos/watch/` through the members in
//! turn. A few watchers, each connected to a different member, watch the
//! prefix from the revision after the workload's initial reset; on any error
//! or end of stream a watcher reconnects (to the same member) from the
//! revision after the last one it saw. At the end the writer stops and each
//! watcher waits until it has seen the revision of the last acknowledged put.
//!
//! The check, per watcher: revisions strictly increase (no duplicates, no
//! reordering); every event is a put this writer attempted, of that key and
//! value, at the revision its acknowledgement named if it was acknowledged;
//! every acknowledged put at or below the last revision the watcher saw is
//! among its events; a watch answered "compacted" is an anomaly (the harness
//! never compacts). Across watchers: each one's events are a prefix of the
//! longest one's.

use std::collections::HashMap;
use std::time::Duration;

use rand::Rng;
use synod_proto::etcdserverpb::kv_client::KvClient;
use synod_proto::etcdserverpb::watch_client::WatchClient;
use synod_proto::etcdserverpb::watch_request::RequestUnion;
use synod_proto::etcdserverpb::{PutRequest, WatchCreateRequest, WatchRequest};
use synod_proto::mvccpb::event::EventType;
use synod_proto::prefix_end;
use tokio::sync::{mpsc, watch as signal};
use tonic::transport::Channel;

use super::client::{self, Counts, Outcome};
use super::{SharedContext, Verdict, WorkloadReport};

/// The workload's name.
pub const NAME: &str = "watch";
/// Every key of the workload is under this prefix.
pub const PREFIX: &str = "chaos/watch/";
/// Watchers, each on its own member (round-robin if there are fewer members).
pub const WATCHERS: usize = 3;
/// Keys the writer cycles through.
pub const KEYS: u64 = 32;
/// Puts the writer issues per second at most.
pub const PUTS_PER_S: u32 = 50;
/// Puts the writer issues at most over the run.
pub const PUTS_MAX: u64 = 20_000;
/// Events one watcher records at most; more than the writer can cause, so
/// reaching it means the server invented events.
pub const EVENTS_PER_WATCHER_MAX: usize = 2 * PUTS_MAX as usize;
/// The pause before a watcher reconnects.
const RECONNECT_PAUSE: Duration = Duration::from_millis(200);
/// Watch requests queued on one stream: only the create is ever sent.
const WATCH_REQUEST_QUEUE_MAX: usize = 1;

/// One put the writer attempted.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Put {
    /// The key.
    pub key: String,
    /// The value, unique in the run.
    pub value: String,
    /// The revision the acknowledgement named; `None` if the put was not
    /// acknowledged (unknown, or refused).
    pub revision: Option<i64>,
    /// Refused in a way that proves it did not happen: it must never be seen.
    pub refused: bool,
}

/// One event a watcher was sent.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Event {
    /// The event's mod revision.
    pub revision: i64,
    /// The key.
    pub key: String,
    /// The value (empty for a delete).
    pub value: String,
    /// Whether it was a delete.
    pub delete: bool,
}

/// What one watcher saw.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct WatcherLog {
    /// The member it watched through.
    pub member: usize,
    /// Every event, in the order it came.
    pub events: Vec<Event>,
    /// How many times the stream was reopened.
    pub reconnects: u64,
    /// Compacted revisions the server answered watches with.
    pub compacted: Vec<i64>,
    /// Whether it had seen the target revision when it stopped.
    pub caught_up: bool,
    /// Why it stopped early, if it did.
    pub gave_up: Option<String>,
}

/// Runs the workload until `ctx.stop`, lets the watchers catch up, and checks them.
pub async fn run(ctx: SharedContext) -> WorkloadReport {
    let mut report = WorkloadReport::named(NAME);
    let (channels, start_revision) = match client::open_cleared(&ctx.endpoints, PREFIX).await {
        Ok((channels, revision)) => (channels, revision + 1),
        Err(why) => {
            report.inconclusive.push(why);
            return report;
        }
    };
    // The revision every watcher must reach before it stops; set once the writer is done.
    let (target_sender, target) = signal::channel(None);
    let mut watchers = tokio::task::JoinSet::new();
    for index in 0..WATCHERS {
        let member = index % channels.len();
        watchers.spawn(watcher(
            channels[member].clone(),
            member,
            start_revision,
            target.clone(),
        ));
    }
    let (puts, counts) = writer(&ctx, &channels).await;
    report.add_counts(&counts);
    let highest = puts.iter().filter_map(|put| put.revision).max().unwrap_or(0);
    // Nothing acknowledged: nothing any watcher must have seen.
    let _ = target_sender.send(Some(highest));
    let catch_up = tokio::time::sleep(client::SETTLE_DEADLINE);
    tokio::pin!(catch_up);
    let mut logs = Vec::new();
    loop {
        tokio::select! {
            joined = watchers.join_next() => match joined {
                Some(Ok(log)) => logs.push(log),
                Some(Err(error)) => report.inconclusive.push(format!("a watcher task failed: {error}")),
                None => break,
            },
            () = &mut catch_up => {
                // Those still running never saw the target revision.
                watchers.abort_all();
                while let Some(joined) = watchers.join_next().await {
                    if let Err(error) = joined {
                        if !error.is_cancelled() {
                            report.inconclusive.push(format!("a watcher task failed: {error}"));
                        }
                    }
                }
                break;
            }
        }
    }
    let stuck = WATCHERS - logs.len();
    if stuck > 0 {
        report.anomalies.push(format!(
            "{stuck} watchers had not delivered revision {highest} (the last acknowledged put) {} s after the \
             writer stopped",
            client::SETTLE_DEADLINE.as_secs()
        ));
    }
    logs.sort_by_key(|log| log.member);
    report.add_verdict(check_watches(&puts, &logs, start_revision));
    report
}

/// The writer: unique values on a few keys, through the members in turn.
async fn writer(ctx: &SharedContext, channels: &[Channel]) -> (Vec<Put>, Counts) {
    let mut rng = client::rng(ctx.seed, NAME, 0);
    let mut pacer = client::pacer(PUTS_PER_S);
    let mut puts = Vec::new();
    let mut counts = Counts::default();
    for n in 0..PUTS_MAX {
        if !client::next_tick(&ctx.stop, &mut pacer).await {
            break;
        }
        let key = format!("{PREFIX}{}", rng.random_range(0..KEYS));
        let value = format!("w-{n}");
        let put = PutRequest {
            key: key.as_bytes().to_vec().into(),
            value: value.as_bytes().to_vec().into(),
            ..PutRequest::default()
        };
        let mut kv = KvClient::new(channels[n as usize % channels.len()].clone());
        let outcome = client::call(kv.put(client::request(put))).await;
        counts.record(&outcome);
        let acknowledged = outcome.is_ok();
        let refused = matches!(outcome, Outcome::Failed(_));
        let revision = outcome
            .ok()
            .map(|response| response.header.map_or(0, |header| header.revision));
        puts.push(Put {
            key,
            value,
            revision,
            refused,
        });
        if !acknowledged && !client::pause(&ctx.stop, client::RETRY_PAUSE).await {
            break;
        }
    }
    (puts, counts)
}

/// One watcher on `channel` from `start_revision` until it has seen the
/// revision `target` names once it names one.
async fn watcher(
    channel: Channel,
    member: usize,
    start_revision: i64,
    mut target: signal::Receiver<Option<i64>>,
) -> WatcherLog {
    let mut log = WatcherLog {
        member,
        ..WatcherLog::default()
    };
    let mut next = start_revision;
    let reached = |next: i64, target: &signal::Receiver<Option<i64>>| target.borrow().is_some_and(|goal| next > goal);
    let mut first = true;
    loop {
        if reached(next, &target) {
            log.caught_up = true;
            return log;
        }
        if !first {
            log.reconnects += 1;
            tokio::time::sleep(RECONNECT_PAUSE).await;
        }
        first = false;
        let (requests, receiver) = mpsc::channel(WATCH_REQUEST_QUEUE_MAX);
        let create = WatchRequest {
            request_union: Some(RequestUnion::CreateRequest(WatchCreateRequest {
                key: PREFIX.as_bytes().to_vec().into(),
                range_end: prefix_end(PREFIX.as_bytes()).into(),
                start_revision: next,
                ..WatchCreateRequest::default()
            })),
        };
        if requests.send(create).await.is_err() {
            continue;
        }
        let opened = client::call(
            WatchClient::new(channel.clone()).watch(tokio_stream::wrappers::ReceiverStream::new(receiver)),
        )
        .await;
        let Outcome::Ok(mut stream) = opened else {
            continue;
        };
        loop {
            let message = tokio::select! {
                message = stream.message() => message,
                changed = target.changed() => {
                    if changed.is_err() {
                        // The workload is gone; nobody will read this log.
                        return log;
                    }
                    if reached(next, &target) {
                        log.caught_up = true;
                        return log;
                    }
                    continue;
                }
            };
            let response = match message {
                Ok(Some(response)) => response,
                // An error or the end of the stream: reconnect from `next`.
                Ok(None) | Err(_) => break,
            };
            if response.compact_revision > 0 {
                log.compacted.push(response.compact_revision);
                log.gave_up = Some(format!(
                    "the watch from revision {next} was answered: compacted at {}",
                    response.compact_revision
                ));
                return log;
            }
            if response.canceled {
                break;
            }
            for event in response.events {
                let Some(kv) = event.kv else {
                    continue;
                };
                next = next.max(kv.mod_revision + 1);
                log.events.push(Event {
                    revision: kv.mod_revision,
                    key: String::from_utf8_lossy(&kv.key).into_owned(),
                    value: String::from_utf8_lossy(&kv.value).into_owned(),
                    delete: event.r#type == EventType::Delete as i32,
                });
            }
            if log.events.len() >= EVENTS_PER_WATCHER_MAX {
                log.gave_up = Some(format!("more than {EVENTS_PER_WATCHER_MAX} events"));
                return log;
            }
            if reached(next, &target) {
                log.caught_up = true;
                return log;
            }
        }
    }
}

/// Checks the watchers' events against the writer's puts; watches started
/// at `start_revision`.
pub fn check_watches(puts: &[Put], logs: &[WatcherLog], start_revision: i64) -> Verdict {
    let mut verdict = Verdict::default();
    let by_value: HashMap<&str, &Put> = puts.iter().map(|put| (put.value.as_str(), put)).collect();
    let acknowledged: Vec<&Put> = puts.iter().filter(|put| put.revision.is_some()).collect();
    for log in logs {
        let watcher = format!("the watcher on member {}", log.member);
        if let Some(why) = &log.gave_up {
            verdict.anomalies.push(format!("{watcher} stopped early: {why}"));
        }
        for (at, pair) in log.events.windows(2).enumerate() {
            if pair[1].revision <= pair[0].revision {
                verdict.anomalies.push(format!(
                    "{watcher} got revision {} after revision {} (events {at} and {})",
                    pair[1].revision,
                    pair[0].revision,
                    at + 1
                ));
                break;
            }
        }
        if let Some(early) = log.events.iter().find(|event| event.revision < start_revision) {
            verdict.anomalies.push(format!(
                "{watcher} got revision {} from a watch started at revision {start_revision}",
                early.revision
            ));
        }
        for event in &log.events {
            let put = by_value.get(event.value.as_str());
            let wrong = match put {
                _ if event.delete => Some("a delete, which the workload never issues".to_string()),
                None => Some("a value the writer never put".to_string()),
                Some(put) if put.key != event.key => Some(format!("the writer put that value on {}", put.key)),
                Some(put) if put.refused => Some("that put was refused as not done".to_string()),
                Some(put) => match put.revision {
                    Some(revision) if revision != event.revision => {
                        Some(format!("the put was acknowledged at revision {revision}"))
                    }
                    _ => None,
                },
            };
            if let Some(wrong) = wrong {
                verdict.anomalies.push(format!(
                    "{watcher} got {} = {:?} at revision {}: {wrong}",
                    event.key, event.value, event.revision
                ));
                break;
            }
        }
        let seen: HashMap<i64, &Event> = log.events.iter().map(|event| (event.revision, event)).collect();
        let last = log.events.iter().map(|event| event.revision).max().unwrap_or(0);
        let missing: Vec<String> = acknowledged
            .iter()
            .filter_map(|put| {
                let revision = put.revision?;
                let delivered = seen
                    .get(&revision)
                    .is_some_and(|event| event.value == put.value && event.key == put.key);
                (revision <= last && !delivered)
                    .then(|| format!("{} = {:?} at revision {revision}", put.key, put.value))
            })
            .collect();
        if !missing.is_empty() {
            verdict.anomalies.push(format!(
                "{watcher} saw revision {last} but not {} acknowledged puts below it, e.g. {}",
                missing.len(),
                missing.iter().take(5).cloned().collect::<Vec<_>>().join(", ")
            ));
        }
        for compacted in &log.compacted {
            verdict.anomalies.push(format!(
                "{watcher} was told revision {compacted} is compacted; nothing compacts during the run"
            ));
        }
    }
    if let Some(longest) = logs.iter().max_by_key(|log| log.events.len()) {
        for log in logs {
            let agree =
                log.events.len() <= longest.events.len() && longest.events[..log.events.len()] == log.events[..];
            if !agree {
                let at = log
                    .events
                    .iter()
                    .zip(&longest.events)
                    .position(|(one, other)| one != other)
                    .unwrap_or(log.events.len().min(longest.events.len()));
                verdict.anomalies.push(format!(
                    "the watchers on members {} and {} disagree at event {at}: {:?} against {:?}",
                    log.member,
                    longest.member,
                    log.events.get(at),
                    longest.events.get(at)
                ));
            }
        }
    }
    let events: usize = logs.iter().map(|log| log.events.len()).sum();
    let reconnects: u64 = logs.iter().map(|log| log.reconnects).sum();
    verdict.checked = format!(
        "{} puts ({} acknowledged), {} watchers: {events} events delivered, {reconnects} reconnects",
        puts.len(),
        acknowledged.len(),
        logs.len()
    );
    verdict
}

#[cfg(test)]
mod tests {
    use super::*;

    fn put(n: u64, revision: Option<i64>) -> Put {
        Put {
            key: format!("{PREFIX}{}", n % 2),
            value: format!("w-{n}"),
            revision,
            refused: false,
        }
    }

    fn event(n: u64, revision: i64) -> Event {
        Event {
            revision,
            key: format!("{PREFIX}{}", n % 2),
            value: format!("w-{n}"),
            delete: false,
        }
    }

    fn log(member: usize, events: Vec<Event>) -> WatcherLog {
        WatcherLog {
            member,
            events,
            caught_up: true,
            ..WatcherLog::default()
        }
    }

    fn puts() -> Vec<Put> {
        // The put of w-2 timed out but happened, at revision 12.
        vec![put(0, Some(10)), put(1, Some(11)), put(2, None), put(3, Some(13))]
    }

    #[test]
    fn agreeing_complete_watchers_pass() {
        let full = vec![event(0, 10), event(1, 11), event(2, 12), event(3, 13)];
        let logs = vec![log(0, full.clone()), log(1, full[..2].to_vec()), log(2, full)];
        let verdict = check_watches(&puts(), &logs, 10);
        assert!(verdict.anomalies.is_empty(), "{verdict:?}");
        assert!(verdict.inconclusive.is_empty(), "{verdict:?}");
    }

    #[test]
    fn a_gap_is_an_anomaly() {
        let logs = vec![log(0, vec![event(0, 10), event(3, 13)])];
        let verdict = check_watches(&puts(), &logs, 10);
        assert_eq!(verdict.anomalies.len(), 1, "{verdict:?}");
        assert!(verdict.anomalies[0].contains("w-1"), "{verdict:?}");
    }

    #[test]
    fn duplicates_reordering_and_inventions_are_anomalies() {
        let duplicate = log(0, vec![event(0, 10), event(1, 11), event(1, 11)]);
        assert!(!check_watches(&puts(), &[duplicate], 10).anomalies.is_empty());
        let invented = log(0, vec![event(0, 10), event(9, 11)]);
        assert!(!check_watches(&puts(), &[invented], 10).anomalies.is_empty());
        let wrong_revision = log(0, vec![event(0, 10), event(1, 12)]);
        assert!(!check_watches(&puts(), &[wrong_revision], 10).anomalies.is_empty());
        let mut refused = puts();
        refused[2].refused = true;
        let seen_refused = log(0, vec![event(0, 10), event(1, 11), event(2, 12)]);
        assert!(!check_watches(&refused, &[seen_refused], 10).anomalies.is_empty());
    }

    #[test]
    fn disagreeing_watchers_are_an_anomaly() {
        // Each alone is plausible (w-2 had an unknown outcome), but not both.
        let one = log(0, vec![event(0, 10), event(1, 11), event(2, 12)]);
        let other = log(1, vec![event(0, 10), event(1, 11), event(3, 13)]);
        let verdict = check_watches(&puts(), &[one, other], 10);
        assert!(
            verdict.anomalies.iter().any(|anomaly| anomaly.contains("disagree")),
            "{verdict:?}"
        );
    }

    #[test]
    fn a_compacted_answer_is_an_anomaly() {
        let mut compacted = log(0, vec![event(0, 10)]);
        compacted.compacted.push(10);
        compacted.gave_up = Some("compacted".to_string());
        assert!(!check_watches(&puts(), &[compacted], 10).anomalies.is_empty());
    }
}
