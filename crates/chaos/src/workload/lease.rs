//! `lease`: a lease the server promised alive must not be gone before the
//! promise runs out.
//!
//! Each client grants a lease, puts a key on it, and keeps the lease alive
//! through one fixed member, never another: a member that answers a
//! keep-alive after it lost the master lease promises a deadline its
//! successor does not know about, and failing over would hide that. Every
//! answered grant and keep-alive is a promise: the lease lives at least
//! until the request's call time plus the TTL answered (the server starts
//! the TTL when it processes the request, which is after the call; a new
//! master restarts every deadline when it takes over, which only extends
//! them). After a few seconds the client revokes the lease or abandons it
//! (stops its keep-alives and lets it expire), then starts another.
//!
//! Pollers read the keys with linearizable Ranges, and the leases with
//! TimeToLive, through the other members. A read that returned at `r`
//! showing the key (or the lease) gone, although it was called after the key
//! was put and some answered keep-alive promised the lease alive past `r`
//! (less a drift allowance of 1% of the TTL plus 20 ms), is an anomaly; so
//! is a keep-alive answered "lease not found" under such a promise. Reads
//! that may have come after the workload's own revoke was issued prove
//! nothing and are left out.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use rand::Rng;
use synod_proto::etcdserverpb::kv_client::KvClient;
use synod_proto::etcdserverpb::lease_client::LeaseClient;
use synod_proto::etcdserverpb::{LeaseGrantRequest, LeaseTimeToLiveRequest, PutRequest};
use tonic::transport::Channel;

use super::client::{self, Counts, KeepAlive, Outcome};
use super::{SharedContext, Verdict, WorkloadReport};

/// The workload's name.
pub const NAME: &str = "lease";
/// Every key of the workload is under this prefix.
pub const PREFIX: &str = "chaos/lease/";
/// Clients, each with one lease at a time, each bound to one member.
pub const CLIENTS: u64 = 4;
/// Tasks reading the keys and leases.
pub const POLLERS: u64 = 2;
/// Reads each poller issues per second at most.
pub const POLLS_PER_S: u32 = 20;
/// Reads recorded at most, so a long run stays bounded.
pub const READS_MAX: usize = 50_000;
/// Leases granted at most by each client over the run.
pub const LEASES_PER_CLIENT_MAX: usize = 1_000;
/// TTL asked for each lease, in seconds (the server may raise it; the TTL
/// it answers is what is promised).
pub const LEASE_TTL_S: i64 = 3;
/// Time between two keep-alives of one lease, in milliseconds.
pub const KEEP_ALIVE_INTERVAL_MS: u64 = 500;
/// Shortest and longest time a client keeps one lease alive, in milliseconds:
/// long enough, at the top, to outlive a partition of its member and the
/// new master's restart of every lease's TTL.
pub const LEASE_LIFE_MS: std::ops::Range<u64> = 4_000..16_000;
/// Chance that a client lets a lease expire instead of revoking it.
pub const ABANDON_PROBABILITY: f64 = 0.5;
/// Fixed part of the allowance for clock drift between client and server, in microseconds.
pub const DRIFT_FIXED_US: u64 = 20_000;
/// Part of the allowance proportional to the TTL, in parts per hundred.
pub const DRIFT_PERCENT: u64 = 1;
/// How long after its last keep-alive an abandoned lease is still polled,
/// beyond its TTL, in milliseconds: its expiry is the interesting moment.
const POLL_AFTER_EXPIRY_MS: u64 = 2_000;

/// An answered grant or keep-alive: the lease lives at least until
/// `call_us + ttl_s` seconds.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Promise {
    /// When the request was issued, in microseconds since the origin.
    pub call_us: u64,
    /// The TTL answered, in seconds (positive).
    pub ttl_s: i64,
}

impl Promise {
    /// The latest time a read may show the lease gone without breaking this
    /// promise, drift allowance included, in microseconds since the origin.
    pub fn alive_until_us(&self) -> u64 {
        let ttl_us = u64::try_from(self.ttl_s).unwrap_or(0).saturating_mul(1_000_000);
        let drift_us = ttl_us * DRIFT_PERCENT / 100 + DRIFT_FIXED_US;
        (self.call_us + ttl_us).saturating_sub(drift_us)
    }
}

/// One lease's life as its client saw it.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct LeaseLife {
    /// The client that granted it.
    pub client: u64,
    /// The lease ID.
    pub id: i64,
    /// The key put on it.
    pub key: String,
    /// The member its grant, put and keep-alives went through.
    pub member: usize,
    /// When the grant was answered: the lease exists from then on.
    pub granted_us: u64,
    /// When the put of the key was answered, if it was: the key exists from then on.
    pub put_us: Option<u64>,
    /// The grant and every keep-alive answered with a positive TTL.
    pub promises: Vec<Promise>,
    /// When the client issued its revoke, if it did.
    pub revoke_call_us: Option<u64>,
    /// When the client stopped its keep-alives, if it has.
    pub ended_us: Option<u64>,
}

/// What a read saw.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Seen {
    /// A linearizable Range of the lease's key: whether the key was there.
    Key {
        /// The key was there.
        present: bool,
    },
    /// TimeToLive of the lease: the remaining TTL answered (-1: no such lease).
    TimeToLive {
        /// Remaining seconds, rounded up.
        ttl_s: i64,
    },
    /// A keep-alive of the lease answered this TTL (0 or less: no such lease).
    KeepAlive {
        /// The TTL answered.
        ttl_s: i64,
    },
}

impl Seen {
    /// Whether the read says the lease (or its key) is gone.
    pub fn gone(&self) -> bool {
        match *self {
            Seen::Key { present } => !present,
            Seen::TimeToLive { ttl_s } | Seen::KeepAlive { ttl_s } => ttl_s <= 0,
        }
    }
}

/// One answered read of a lease or its key.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LeaseRead {
    /// The lease read.
    pub lease: i64,
    /// The member asked.
    pub member: usize,
    /// When the read was issued, in microseconds since the origin.
    pub call_us: u64,
    /// When its answer came, in microseconds since the origin.
    pub return_us: u64,
    /// What it saw.
    pub seen: Seen,
}

/// What the clients and pollers share: every lease's life so far.
type Lives = Arc<Mutex<Vec<LeaseLife>>>;

fn lock(lives: &Lives) -> std::sync::MutexGuard<'_, Vec<LeaseLife>> {
    lives.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// Runs the workload until `ctx.stop`, then checks every read against the promises.
pub async fn run(ctx: SharedContext) -> WorkloadReport {
    let mut report = WorkloadReport::named(NAME);
    let channels = match client::open_cleared(&ctx.endpoints, PREFIX).await {
        Ok((channels, _)) => channels,
        Err(why) => {
            report.inconclusive.push(why);
            return report;
        }
    };
    let lives: Lives = Arc::default();
    let mut clients = tokio::task::JoinSet::new();
    for client_id in 0..CLIENTS {
        clients.spawn(client_loop(ctx.clone(), channels.clone(), client_id, lives.clone()));
    }
    let mut pollers = tokio::task::JoinSet::new();
    for poller in 0..POLLERS {
        pollers.spawn(poll_loop(ctx.clone(), channels.clone(), poller, lives.clone()));
    }
    let mut reads = Vec::new();
    let mut counts = Counts::default();
    for tasks in [&mut clients, &mut pollers] {
        while let Some(joined) = tasks.join_next().await {
            match joined {
                Ok((task_reads, task_counts)) => {
                    reads.extend(task_reads);
                    counts.merge(&task_counts);
                }
                Err(error) => report.inconclusive.push(format!("a task failed: {error}")),
            }
        }
    }
    report.add_counts(&counts);
    let lives = lock(&lives).clone();
    report.add_verdict(check_leases(&lives, &reads));
    report
}

/// One client: leases one after another, all through member `client_id % members`.
async fn client_loop(
    ctx: SharedContext,
    channels: Vec<Channel>,
    client_id: u64,
    lives: Lives,
) -> (Vec<LeaseRead>, Counts) {
    let mut rng = client::rng(ctx.seed, NAME, client_id);
    let member = client_id as usize % channels.len();
    let channel = channels[member].clone();
    let mut counts = Counts::default();
    let mut reads = Vec::new();
    let mut keep_alive = KeepAlive::new(channel.clone());
    for serial in 0..LEASES_PER_CLIENT_MAX {
        if ctx.stop.is_cancelled() {
            break;
        }
        let grant = LeaseGrantRequest {
            ttl: LEASE_TTL_S,
            id: 0,
        };
        let granted = client::issue(
            &ctx,
            &mut counts,
            client::call(LeaseClient::new(channel.clone()).lease_grant(client::request(grant))),
        )
        .await;
        let granted_call_us = granted.call_us;
        let granted_us = granted.return_us;
        let granted = match granted.outcome {
            Outcome::Ok(granted) if granted.error.is_empty() && granted.ttl > 0 => granted,
            // A lease granted without an answer is never kept alive: it expires.
            _ => {
                if !client::pause(&ctx.stop, client::RETRY_PAUSE).await {
                    break;
                }
                continue;
            }
        };
        let id = granted.id;
        let key = format!("{PREFIX}{client_id}/{serial}");
        let index = {
            let mut lives = lock(&lives);
            lives.push(LeaseLife {
                client: client_id,
                id,
                key: key.clone(),
                member,
                granted_us,
                promises: vec![Promise {
                    call_us: granted_call_us,
                    ttl_s: granted.ttl,
                }],
                ..LeaseLife::default()
            });
            lives.len() - 1
        };
        let put = PutRequest {
            key: key.as_bytes().to_vec().into(),
            value: format!("{id:x}").into_bytes().into(),
            lease: id,
            ..PutRequest::default()
        };
        let put = client::issue(
            &ctx,
            &mut counts,
            client::call(KvClient::new(channel.clone()).put(client::request(put))),
        )
        .await;
        if put.outcome.is_ok() {
            lock(&lives)[index].put_us = Some(put.return_us);
            let life_ms = rng.random_range(LEASE_LIFE_MS);
            keep_alive_for(
                &ctx,
                &mut keep_alive,
                &mut counts,
                &mut reads,
                &lives,
                index,
                member,
                life_ms,
            )
            .await;
        }
        let abandon = put.outcome.is_ok() && !ctx.stop.is_cancelled() && rng.random_bool(ABANDON_PROBABILITY);
        {
            let now_us = ctx.now_us();
            let mut lives = lock(&lives);
            lives[index].ended_us = Some(now_us);
            if !abandon {
                lives[index].revoke_call_us = Some(now_us);
            }
        }
        if !abandon {
            client::revoke(&channel, &mut counts, id).await;
        }
    }
    (reads, counts)
}

/// Keeps lease `lives[index]` alive for `life_ms` or until stopped or the
/// lease is gone, recording every promise, and every answer that says the
/// lease is gone as a read.
#[expect(
    clippy::too_many_arguments,
    reason = "one client's state, passed apart to keep borrows simple"
)]
async fn keep_alive_for(
    ctx: &SharedContext,
    keep_alive: &mut KeepAlive,
    counts: &mut Counts,
    reads: &mut Vec<LeaseRead>,
    lives: &Lives,
    index: usize,
    member: usize,
    life_ms: u64,
) {
    let id = lock(lives)[index].id;
    let until = tokio::time::Instant::now() + Duration::from_millis(life_ms);
    while tokio::time::Instant::now() < until
        && client::pause(&ctx.stop, Duration::from_millis(KEEP_ALIVE_INTERVAL_MS)).await
    {
        let done = client::issue(ctx, counts, keep_alive.once(id)).await;
        match done.outcome {
            Outcome::Ok(ttl_s) if ttl_s > 0 => lock(lives)[index].promises.push(Promise {
                call_us: done.call_us,
                ttl_s,
            }),
            Outcome::Ok(ttl_s) => {
                reads.push(LeaseRead {
                    lease: id,
                    member,
                    call_us: done.call_us,
                    return_us: done.return_us,
                    seen: Seen::KeepAlive { ttl_s },
                });
                return;
            }
            // The stream is reopened with the next keep-alive, to the same member.
            Outcome::Failed(_) | Outcome::Unknown(_) => {}
        }
    }
}

/// A lease worth polling: its key is put and it is alive or recently abandoned.
struct Target {
    id: i64,
    key: String,
    member: usize,
}

fn targets(lives: &Lives, now_us: u64) -> Vec<Target> {
    lock(lives)
        .iter()
        .filter(|life| life.put_us.is_some() && life.revoke_call_us.is_none())
        .filter(|life| {
            let ttl_ms = life
                .promises
                .last()
                .map_or(0, |promise| promise.ttl_s.max(0) as u64 * 1_000);
            life.ended_us
                .is_none_or(|ended| now_us < ended + (ttl_ms + POLL_AFTER_EXPIRY_MS) * 1_000)
        })
        .map(|life| Target {
            id: life.id,
            key: life.key.clone(),
            member: life.member,
        })
        .collect()
}

/// One poller: reads random live leases' keys (or TimeToLive) through
/// members other than the lease's own.
async fn poll_loop(ctx: SharedContext, channels: Vec<Channel>, poller: u64, lives: Lives) -> (Vec<LeaseRead>, Counts) {
    let mut rng = client::rng(ctx.seed, NAME, 1_000 + poller);
    let mut pacer = client::pacer(POLLS_PER_S);
    let mut reads = Vec::new();
    let mut counts = Counts::default();
    while reads.len() < READS_MAX && client::next_tick(&ctx.stop, &mut pacer).await {
        let candidates = targets(&lives, ctx.now_us());
        if candidates.is_empty() {
            continue;
        }
        let target = &candidates[rng.random_range(0..candidates.len())];
        let member = if channels.len() > 1 {
            (target.member + rng.random_range(1..channels.len())) % channels.len()
        } else {
            target.member
        };
        let channel = channels[member].clone();
        let done = if rng.random_bool(0.25) {
            let asked = LeaseTimeToLiveRequest {
                id: target.id,
                keys: false,
            };
            let done = client::issue(
                &ctx,
                &mut counts,
                client::call(LeaseClient::new(channel).lease_time_to_live(client::request(asked))),
            )
            .await;
            let call_us = done.call_us;
            let return_us = done.return_us;
            done.outcome
                .ok()
                .map(|answer| (call_us, return_us, Seen::TimeToLive { ttl_s: answer.ttl }))
        } else {
            let done = client::issue(
                &ctx,
                &mut counts,
                client::call(KvClient::new(channel).range(client::request(client::get(&target.key)))),
            )
            .await;
            let call_us = done.call_us;
            let return_us = done.return_us;
            done.outcome.ok().map(|answer| {
                (
                    call_us,
                    return_us,
                    Seen::Key {
                        present: !answer.kvs.is_empty(),
                    },
                )
            })
        };
        // A read that failed says nothing and is left out.
        if let Some((call_us, return_us, seen)) = done {
            reads.push(LeaseRead {
                lease: target.id,
                member,
                call_us,
                return_us,
                seen,
            });
        }
    }
    (reads, counts)
}

/// Checks every read that saw a lease or its key gone against the promises
/// its lease had been given.
pub fn check_leases(lives: &[LeaseLife], reads: &[LeaseRead]) -> Verdict {
    let mut verdict = Verdict::default();
    let by_id: HashMap<i64, &LeaseLife> = lives.iter().map(|life| (life.id, life)).collect();
    let mut gone_checked = 0usize;
    let mut excluded = 0usize;
    for read in reads.iter().filter(|read| read.seen.gone()) {
        let Some(life) = by_id.get(&read.lease) else {
            verdict
                .inconclusive
                .push(format!("a read of lease {:x}, which no client granted", read.lease));
            continue;
        };
        // The key exists from its put's answer on, the lease from its grant's.
        let exists_from_us = match read.seen {
            Seen::Key { .. } => life.put_us,
            Seen::TimeToLive { .. } | Seen::KeepAlive { .. } => Some(life.granted_us),
        };
        let called_after_creation = exists_from_us.is_some_and(|from| read.call_us > from);
        let before_revoke = life.revoke_call_us.is_none_or(|revoke| read.return_us < revoke);
        if !called_after_creation || !before_revoke {
            excluded += 1;
            continue;
        }
        gone_checked += 1;
        let Some(promise) = life.promises.iter().max_by_key(|promise| promise.alive_until_us()) else {
            continue;
        };
        if read.return_us < promise.alive_until_us() {
            verdict.anomalies.push(format!(
                "lease {:x} (client {}, kept alive through member {}) was seen gone by a {:?} through member {} \
                 that returned at {} us, but a request called at {} us was answered TTL {} s: alive until {} us \
                 at least (drift allowance included)",
                life.id,
                life.client,
                life.member,
                read.seen,
                read.member,
                read.return_us,
                promise.call_us,
                promise.ttl_s,
                promise.alive_until_us(),
            ));
        }
    }
    let promises: usize = lives.iter().map(|life| life.promises.len()).sum();
    verdict.checked = format!(
        "{} leases, {promises} promises, {} reads: {gone_checked} saw a lease gone and were checked against the \
         promises, {excluded} others were before the key was put or after a revoke",
        lives.len(),
        reads.len()
    );
    verdict
}

#[cfg(test)]
mod tests {
    use super::*;

    const SECOND_US: u64 = 1_000_000;

    fn life() -> LeaseLife {
        LeaseLife {
            client: 0,
            id: 0x42,
            key: format!("{PREFIX}0/0"),
            member: 0,
            granted_us: 10_000,
            put_us: Some(20_000),
            promises: vec![
                Promise { call_us: 0, ttl_s: 3 },
                Promise {
                    call_us: 2 * SECOND_US,
                    ttl_s: 3,
                },
            ],
            revoke_call_us: None,
            ended_us: Some(2 * SECOND_US + 10_000),
        }
    }

    fn read(call_us: u64, return_us: u64, seen: Seen) -> LeaseRead {
        LeaseRead {
            lease: 0x42,
            member: 1,
            call_us,
            return_us,
            seen,
        }
    }

    #[test]
    fn a_lease_gone_after_its_promises_passes() {
        let reads = vec![
            // Before the put: the key may not be there yet.
            read(5_000, 25_000, Seen::Key { present: false }),
            read(SECOND_US, SECOND_US + 1_000, Seen::Key { present: true }),
            read(4 * SECOND_US, 4 * SECOND_US + 1_000, Seen::TimeToLive { ttl_s: 1 }),
            // The last promise: alive until 5 s; gone at 5.1 s is fine.
            read(
                5 * SECOND_US + 100_000,
                5 * SECOND_US + 101_000,
                Seen::Key { present: false },
            ),
            read(
                5 * SECOND_US + 100_000,
                5 * SECOND_US + 101_000,
                Seen::TimeToLive { ttl_s: -1 },
            ),
        ];
        let verdict = check_leases(&[life()], &reads);
        assert!(verdict.anomalies.is_empty(), "{verdict:?}");
        assert!(verdict.inconclusive.is_empty(), "{verdict:?}");
    }

    #[test]
    fn a_key_gone_before_the_promise_runs_out_is_an_anomaly() {
        let reads = vec![read(4 * SECOND_US, 4 * SECOND_US + 1_000, Seen::Key { present: false })];
        let verdict = check_leases(&[life()], &reads);
        assert_eq!(verdict.anomalies.len(), 1, "{verdict:?}");
        assert!(verdict.anomalies[0].contains("lease 42"), "{verdict:?}");
    }

    #[test]
    fn time_to_live_and_keep_alive_answers_are_checked_too() {
        let reads = vec![
            read(3 * SECOND_US, 3 * SECOND_US + 1_000, Seen::TimeToLive { ttl_s: -1 }),
            read(4 * SECOND_US, 4 * SECOND_US + 1_000, Seen::KeepAlive { ttl_s: 0 }),
        ];
        let verdict = check_leases(&[life()], &reads);
        assert_eq!(verdict.anomalies.len(), 2, "{verdict:?}");
    }

    #[test]
    fn reads_after_the_revoke_is_issued_prove_nothing() {
        let revoked = LeaseLife {
            revoke_call_us: Some(3 * SECOND_US),
            ..life()
        };
        let reads = vec![read(
            2 * SECOND_US + 900_000,
            3 * SECOND_US + 1_000,
            Seen::Key { present: false },
        )];
        let verdict = check_leases(std::slice::from_ref(&revoked), &reads);
        assert!(verdict.anomalies.is_empty(), "{verdict:?}");
        // The same read returning before the revoke was issued is an anomaly.
        let early = vec![read(
            2 * SECOND_US + 900_000,
            2 * SECOND_US + 950_000,
            Seen::Key { present: false },
        )];
        assert_eq!(check_leases(&[revoked], &early).anomalies.len(), 1);
    }

    #[test]
    fn the_drift_allowance_forgives_a_few_milliseconds() {
        // Promised until 5 s; allowance 30 ms + 20 ms.
        let reads = vec![read(
            4 * SECOND_US,
            5 * SECOND_US - 40_000,
            Seen::Key { present: false },
        )];
        assert!(check_leases(&[life()], &reads).anomalies.is_empty());
    }
}
