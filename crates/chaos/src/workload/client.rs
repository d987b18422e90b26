//! Client plumbing every workload shares: channels to the members, deadlines
//! on every request, what an error says about a request's outcome, counts of
//! outcomes, pacing, and the seeded random choices.
//!
//! # Outcomes
//!
//! Under faults most errors say nothing about whether a write happened: a
//! timeout, a lost connection, `Unavailable` (`no leader`, `leader changed`,
//! `request timed out`), `DeadlineExceeded`, `Unknown`, `Internal`,
//! `Cancelled` may all come after the request was proposed, and the proposal
//! may still be chosen. Such a request is [`Outcome::Unknown`]. Only an
//! answer the server gives after deciding the request changes nothing
//! (`InvalidArgument`, `FailedPrecondition` such as a stale sequencer,
//! `NotFound` such as a missing lease, `OutOfRange`, ...) is
//! [`Outcome::Failed`]. When in doubt a code counts as unknown, which can only
//! make a checker more lenient, never report an anomaly that is not one.

use std::future::Future;
use std::time::Duration;

use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;
use synod_proto::etcdserverpb::kv_client::KvClient;
use synod_proto::etcdserverpb::lease_client::LeaseClient;
use synod_proto::etcdserverpb::{
    DeleteRangeRequest, LeaseKeepAliveRequest, LeaseKeepAliveResponse, LeaseRevokeRequest, RangeRequest,
};
use synod_proto::prefix_end;
use tokio::sync::mpsc;
use tokio::time::{Interval, MissedTickBehavior};
use tokio_stream::wrappers::ReceiverStream;
use tokio_util::sync::CancellationToken;
use tonic::transport::{Channel, Endpoint};
use tonic::{Code, Status, Streaming};

use super::Context;

/// How long any single request may take before its outcome counts as unknown.
pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(2);
/// How long the final reads and the initial reset keep retrying: the group
/// may still be settling (electing, catching up a restarted member) when the
/// harness says the faults are healed.
pub const SETTLE_DEADLINE: Duration = Duration::from_secs(30);
/// The pause after a request that failed or timed out, so a client does not
/// spin against a member that is down.
pub const RETRY_PAUSE: Duration = Duration::from_millis(100);
/// How long opening one TCP connection may take.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(1);
/// HTTP/2 pings on every connection, so a connection through a partition
/// that silently drops traffic is noticed and reopened, not waited on.
const HTTP2_KEEP_ALIVE_INTERVAL: Duration = Duration::from_secs(1);
/// How long an HTTP/2 ping may go unanswered before the connection is dropped.
const HTTP2_KEEP_ALIVE_TIMEOUT: Duration = Duration::from_secs(2);
/// Longest server message kept in an outcome, in characters.
const ERROR_MESSAGE_CHARS_MAX: usize = 120;
/// Keep-alive requests queued on one stream; one is in flight at a time.
const KEEP_ALIVE_QUEUE_MAX: usize = 4;

/// One channel per member, in member order. Channels connect lazily and
/// reconnect by themselves, so a member that is down now is usable later.
///
/// # Errors
///
/// An endpoint that is not a valid URL.
pub fn channels(endpoints: &[String]) -> Result<Vec<Channel>, String> {
    if endpoints.is_empty() {
        return Err("no endpoints to run against".to_string());
    }
    endpoints
        .iter()
        .map(|url| {
            let endpoint = Endpoint::from_shared(url.clone())
                .map_err(|error| format!("{url}: {error}"))?
                .connect_timeout(CONNECT_TIMEOUT)
                .tcp_nodelay(true)
                .http2_keep_alive_interval(HTTP2_KEEP_ALIVE_INTERVAL)
                .keep_alive_timeout(HTTP2_KEEP_ALIVE_TIMEOUT)
                .keep_alive_while_idle(true);
            Ok(endpoint.connect_lazy())
        })
        .collect()
}

/// How a request ended, as far as the client can tell.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Outcome<T> {
    /// Answered with success.
    Ok(T),
    /// Refused in a way that proves nothing changed; says why.
    Failed(String),
    /// No answer, or one that leaves open whether the request took effect; says why.
    Unknown(String),
}

impl<T> Outcome<T> {
    /// The answer, if the request succeeded.
    pub fn ok(self) -> Option<T> {
        match self {
            Outcome::Ok(value) => Some(value),
            Outcome::Failed(_) | Outcome::Unknown(_) => None,
        }
    }

    /// Whether the request succeeded.
    pub fn is_ok(&self) -> bool {
        matches!(self, Outcome::Ok(_))
    }

    /// The same outcome with the answer transformed.
    pub fn map<U>(self, transform: impl FnOnce(T) -> U) -> Outcome<U> {
        match self {
            Outcome::Ok(value) => Outcome::Ok(transform(value)),
            Outcome::Failed(why) => Outcome::Failed(why),
            Outcome::Unknown(why) => Outcome::Unknown(why),
        }
    }

    /// Why the request did not succeed, if it did not.
    pub fn error(&self) -> Option<&str> {
        match self {
            Outcome::Ok(_) => None,
            Outcome::Failed(why) | Outcome::Unknown(why) => Some(why),
        }
    }
}

/// A status in a line: its code and the server's message.
pub fn describe(status: &Status) -> String {
    let message: String = status.message().chars().take(ERROR_MESSAGE_CHARS_MAX).collect();
    if message.is_empty() {
        format!("{:?}", status.code())
    } else {
        format!("{:?}: {message}", status.code())
    }
}

/// Whether a status proves that its request changed nothing. Every code a
/// transport failure, a timeout or a master change can produce is excluded.
pub fn proves_nothing_happened(code: Code) -> bool {
    matches!(
        code,
        Code::InvalidArgument
            | Code::FailedPrecondition
            | Code::NotFound
            | Code::OutOfRange
            | Code::PermissionDenied
            | Code::Unauthenticated
            | Code::AlreadyExists
            | Code::Unimplemented
    )
}

/// The outcome an error status gives its request.
pub fn status_outcome<T>(status: &Status) -> Outcome<T> {
    if proves_nothing_happened(status.code()) {
        Outcome::Failed(describe(status))
    } else {
        Outcome::Unknown(describe(status))
    }
}

/// Awaits a gRPC call for at most [`REQUEST_TIMEOUT`].
pub async fn call<T>(future: impl Future<Output = Result<tonic::Response<T>, Status>>) -> Outcome<T> {
    call_within(REQUEST_TIMEOUT, future).await
}

/// Awaits a gRPC call for at most `timeout`; a call still unanswered then is
/// of unknown outcome (dropping it cancels it on the client side only).
pub async fn call_within<T>(
    timeout: Duration,
    future: impl Future<Output = Result<tonic::Response<T>, Status>>,
) -> Outcome<T> {
    match tokio::time::timeout(timeout, future).await {
        Ok(Ok(response)) => Outcome::Ok(response.into_inner()),
        Ok(Err(status)) => status_outcome(&status),
        Err(_) => Outcome::Unknown(format!("no answer within {} ms", timeout.as_millis())),
    }
}

/// `message` as a request that tells the server the client's deadline too.
pub fn request<T>(message: T) -> tonic::Request<T> {
    let mut request = tonic::Request::new(message);
    request.set_timeout(REQUEST_TIMEOUT);
    request
}

/// How many operations ended which way.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Counts {
    /// Operations issued.
    pub attempted: u64,
    /// Answered with success.
    pub ok: u64,
    /// Refused in a way that proves nothing changed.
    pub failed: u64,
    /// Outcome unknown.
    pub unknown: u64,
}

impl Counts {
    /// Counts one operation that ended with `outcome`.
    pub fn record<T>(&mut self, outcome: &Outcome<T>) {
        self.attempted += 1;
        match outcome {
            Outcome::Ok(_) => self.ok += 1,
            Outcome::Failed(_) => self.failed += 1,
            Outcome::Unknown(_) => self.unknown += 1,
        }
    }

    /// Adds another client's counts.
    pub fn merge(&mut self, other: &Counts) {
        self.attempted += other.attempted;
        self.ok += other.ok;
        self.failed += other.failed;
        self.unknown += other.unknown;
    }
}

/// One operation as the client saw it: when it was handed to the client
/// library, when its answer (or the client's giving up) came, and how it ended.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Timed<T> {
    /// Microseconds since the context's origin when the request was issued.
    pub call_us: u64,
    /// Microseconds since the origin when the answer came or the client gave
    /// up; for an unknown outcome this bounds nothing.
    pub return_us: u64,
    /// How it ended.
    pub outcome: Outcome<T>,
}

/// Runs one operation, timing it against the context's clock and counting its outcome.
pub async fn issue<T>(ctx: &Context, counts: &mut Counts, operation: impl Future<Output = Outcome<T>>) -> Timed<T> {
    let call_us = ctx.now_us();
    let outcome = operation.await;
    let return_us = ctx.now_us();
    counts.record(&outcome);
    Timed {
        call_us,
        return_us,
        outcome,
    }
}

/// Retries `attempt` until it succeeds, pausing [`RETRY_PAUSE`] between
/// tries, for at most `deadline`.
///
/// # Errors
///
/// The last try's error once the deadline has passed.
pub async fn until_ok<T, Attempt, Fut>(deadline: Duration, mut attempt: Attempt) -> Result<T, String>
where
    Attempt: FnMut(u64) -> Fut,
    Fut: Future<Output = Outcome<T>>,
{
    let give_up = tokio::time::Instant::now() + deadline;
    let mut tries = 0;
    loop {
        let outcome = attempt(tries).await;
        tries += 1;
        match outcome {
            Outcome::Ok(value) => return Ok(value),
            Outcome::Failed(why) | Outcome::Unknown(why) => {
                if tokio::time::Instant::now() + RETRY_PAUSE >= give_up {
                    return Err(format!("{tries} tries in {} s, the last: {why}", deadline.as_secs()));
                }
                tokio::time::sleep(RETRY_PAUSE).await;
            }
        }
    }
}

/// A tick source for `ops_per_s` operations a second; a client that falls
/// behind does not burst to catch up.
pub fn pacer(ops_per_s: u32) -> Interval {
    let period = Duration::from_secs(1) / ops_per_s.max(1);
    let mut interval = tokio::time::interval(period);
    interval.set_missed_tick_behavior(MissedTickBehavior::Delay);
    interval
}

/// Waits for the next tick of `pacer`; false once `stop` is cancelled.
pub async fn next_tick(stop: &CancellationToken, pacer: &mut Interval) -> bool {
    if stop.is_cancelled() {
        return false;
    }
    tokio::select! {
        () = stop.cancelled() => false,
        _ = pacer.tick() => true,
    }
}

/// Sleeps for `pause`, or less if `stop` is cancelled meanwhile; false then.
pub async fn pause(stop: &CancellationToken, pause: Duration) -> bool {
    tokio::select! {
        () = stop.cancelled() => false,
        () = tokio::time::sleep(pause) => true,
    }
}

/// A random source for one part of one workload: the run's seed, the
/// workload's name and `stream` (a client number, say) give each its own
/// reproducible sequence.
pub fn rng(seed: u64, workload: &str, stream: u64) -> ChaCha8Rng {
    // FNV-1a: a fixed hash, so a seed means the same on every build.
    let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
    for byte in workload.bytes().chain(stream.to_le_bytes()) {
        hash ^= u64::from(byte);
        hash = hash.wrapping_mul(0x0100_0000_01b3);
    }
    ChaCha8Rng::seed_from_u64(seed ^ hash)
}

/// A linearizable Range of one key.
pub fn get(key: &str) -> RangeRequest {
    RangeRequest {
        key: key.as_bytes().to_vec().into(),
        ..RangeRequest::default()
    }
}

/// The value of the key a Range answered with, if it found one (lossily as text:
/// the workloads write only text).
pub fn value_of(response: &synod_proto::etcdserverpb::RangeResponse) -> Option<String> {
    response
        .kvs
        .first()
        .map(|kv| String::from_utf8_lossy(&kv.value).into_owned())
}

/// Opens channels to `endpoints` and clears `prefix` ([`reset_prefix`]):
/// every workload's start. Returns the channels and the revision of the
/// clearing delete.
///
/// # Errors
///
/// As [`channels`] and [`reset_prefix`].
pub async fn open_cleared(endpoints: &[String], prefix: &str) -> Result<(Vec<Channel>, i64), String> {
    let channels = channels(endpoints)?;
    let revision = reset_prefix(&channels, prefix).await?;
    Ok((channels, revision))
}

/// Deletes every key under `prefix`, retrying over the members until one
/// delete is acknowledged, so a workload starts from a known empty state.
/// Returns the revision of that delete.
///
/// A try of unknown outcome may still be applied later, in the middle of
/// the run, and delete what the workload wrote. So when one came before the
/// acknowledged delete, the reset waits [`RESET_QUIET`] for stragglers and
/// runs again, up to [`RESET_ROUNDS_MAX`] rounds, until a round's first try
/// is acknowledged. (Past the last round it goes ahead: the group is then
/// too slow to start against, and the run's faults are not yet under way.)
///
/// # Errors
///
/// No delete was acknowledged within [`SETTLE_DEADLINE`].
pub async fn reset_prefix(channels: &[Channel], prefix: &str) -> Result<i64, String> {
    let mut round = 0;
    loop {
        round += 1;
        let mut unanswered = 0u64;
        let revision = until_ok(SETTLE_DEADLINE, |attempt| {
            unanswered = attempt;
            let mut kv = KvClient::new(channels[attempt as usize % channels.len()].clone());
            let delete = DeleteRangeRequest {
                key: prefix.as_bytes().to_vec().into(),
                range_end: prefix_end(prefix.as_bytes()).into(),
                ..DeleteRangeRequest::default()
            };
            async move { call(kv.delete_range(request(delete))).await }
        })
        .await
        .map(|response| response.header.map_or(0, |header| header.revision))
        .map_err(|why| format!("could not clear {prefix} before the run: {why}"))?;
        // `unanswered` is the number of tries before the acknowledged one;
        // any of them may have been proposed.
        if unanswered == 0 || round >= RESET_ROUNDS_MAX {
            return Ok(revision);
        }
        tokio::time::sleep(RESET_QUIET).await;
    }
}

/// How long a reset waits, after a try of unknown outcome, for that try to
/// be applied or lost before it clears the prefix again.
pub const RESET_QUIET: Duration = Duration::from_secs(5);
/// Rounds of a reset at most.
pub const RESET_ROUNDS_MAX: u32 = 3;

/// Revokes a lease, not waiting for or caring about the outcome beyond the
/// request timeout (a lease not revoked expires on its own).
pub async fn revoke(channel: &Channel, counts: &mut Counts, id: i64) -> Outcome<()> {
    let outcome = call(LeaseClient::new(channel.clone()).lease_revoke(request(LeaseRevokeRequest { id })))
        .await
        .map(|_| ());
    counts.record(&outcome);
    outcome
}

/// One lease keep-alive stream to one member, reopened after any error.
pub struct KeepAlive {
    channel: Channel,
    stream: Option<KeepAliveStream>,
}

struct KeepAliveStream {
    requests: mpsc::Sender<LeaseKeepAliveRequest>,
    responses: Streaming<LeaseKeepAliveResponse>,
}

impl KeepAlive {
    /// Keep-alives over `channel`; the stream opens with the first one.
    pub fn new(channel: Channel) -> KeepAlive {
        KeepAlive { channel, stream: None }
    }

    /// One keep-alive of lease `id` within [`REQUEST_TIMEOUT`]: the TTL the
    /// server answered, in seconds (0 or less: the lease does not exist).
    /// After an error or a timeout the stream is dropped, so an answer that
    /// comes late is never taken for the next request's.
    pub async fn once(&mut self, id: i64) -> Outcome<i64> {
        match tokio::time::timeout(REQUEST_TIMEOUT, self.once_now(id)).await {
            Ok(Ok(ttl_s)) => Outcome::Ok(ttl_s),
            Ok(Err(status)) => {
                self.stream = None;
                status_outcome(&status)
            }
            Err(_) => {
                self.stream = None;
                Outcome::Unknown(format!(
                    "no keep-alive answer within {} ms",
                    REQUEST_TIMEOUT.as_millis()
                ))
            }
        }
    }

    async fn once_now(&mut self, id: i64) -> Result<i64, Status> {
        let closed = || Status::unavailable("the keep-alive stream ended");
        let keep_alive = LeaseKeepAliveRequest { id };
        let stream = match self.stream.take() {
            Some(stream) => {
                stream.requests.send(keep_alive).await.map_err(|_| closed())?;
                stream
            }
            None => {
                let (requests, receiver) = mpsc::channel(KEEP_ALIVE_QUEUE_MAX);
                // The first request goes with the call: a server may send the
                // stream's headers only with its first message.
                requests.send(keep_alive).await.map_err(|_| closed())?;
                let responses = LeaseClient::new(self.channel.clone())
                    .lease_keep_alive(ReceiverStream::new(receiver))
                    .await?
                    .into_inner();
                KeepAliveStream { requests, responses }
            }
        };
        let mut stream = stream;
        let answer = stream.responses.message().await?.ok_or_else(closed)?;
        if answer.id != id {
            return Err(Status::internal(format!(
                "keep-alive of lease {id:x} answered for lease {:x}",
                answer.id
            )));
        }
        self.stream = Some(stream);
        Ok(answer.ttl)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_refusals_are_failures() {
        let failed: Outcome<()> = status_outcome(&Status::failed_precondition("synod: sequencer is stale"));
        assert!(matches!(failed, Outcome::Failed(_)));
        for status in [
            Status::unavailable("etcdserver: no leader"),
            Status::unavailable("etcdserver: request timed out"),
            Status::deadline_exceeded("deadline"),
            Status::unknown("transport error"),
            Status::internal("h2 protocol error"),
            Status::cancelled("cancelled"),
            Status::aborted("aborted"),
        ] {
            let outcome: Outcome<()> = status_outcome(&status);
            assert!(matches!(outcome, Outcome::Unknown(_)), "{status:?}");
        }
    }

    #[test]
    fn rngs_differ_by_stream_and_repeat_by_seed() {
        use rand::Rng;
        let a: u64 = rng(1, "register", 0).random();
        let b: u64 = rng(1, "register", 1).random();
        let again: u64 = rng(1, "register", 0).random();
        assert_ne!(a, b);
        assert_eq!(a, again);
    }
}
