//! Running a workload: connections, clients, preload, measurement, progress.
//!
//! `connections` tonic channels (one HTTP/2 connection each) are opened
//! round-robin over the endpoints, and the `clients` request loops are spread
//! round-robin over the channels, so a few connections can carry many
//! clients, as etcd's own clients multiplex requests. Every loop takes its
//! operations from one shared [`Schedule`], so `--total` and `--rate-per-s`
//! hold for the whole run, not per client.

use std::io::IsTerminal;
use std::sync::atomic::{AtomicBool, AtomicI64, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use indicatif::{ProgressBar, ProgressStyle};
use synod_proto::etcdserverpb::compare::{CompareResult, CompareTarget, TargetUnion};
use synod_proto::etcdserverpb::kv_client::KvClient;
use synod_proto::etcdserverpb::lease_client::LeaseClient;
use synod_proto::etcdserverpb::request_op::Request as RequestOpRequest;
use synod_proto::etcdserverpb::response_op::Response as ResponseOpResponse;
use synod_proto::etcdserverpb::watch_client::WatchClient;
use synod_proto::etcdserverpb::watch_request::RequestUnion;
use synod_proto::etcdserverpb::{
    Compare, LeaseGrantRequest, LeaseKeepAliveRequest, LeaseKeepAliveResponse, LeaseRevokeRequest, PutRequest,
    RangeRequest, RequestOp, TxnRequest, WatchCreateRequest, WatchRequest, WatchResponse,
};
use synod_proto::prefix_end;
use tokio::sync::mpsc;
use tokio::time::Instant;
use tokio_stream::wrappers::ReceiverStream;
use tonic::metadata::{Ascii, MetadataValue};
use tonic::service::interceptor::InterceptedService;
use tonic::transport::{Certificate, Channel, ClientTlsConfig, Endpoint, Identity};
use tonic::{Status, Streaming};

use crate::args::{Args, Workload, KEY_PREFIX, STAMP_BYTES};
use crate::keys::{KeyPicker, KeySpace};
use crate::report::{Recorder, Report};
use crate::schedule::{Plan, Schedule, Stop};

/// How long opening one connection may take.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// TTL of the lease workload's leases, in seconds: far longer than a keep-alive round trip.
const LEASE_TTL_S: i64 = 60;
/// How long watchers wait, after the last put, for events still on their way.
const WATCH_DRAIN_TIMEOUT: Duration = Duration::from_secs(10);
/// How often the progress bar is redrawn.
const PROGRESS_INTERVAL: Duration = Duration::from_millis(200);

/// Counters the progress bar reads while the clients run.
#[derive(Debug, Default)]
struct Live {
    ops: AtomicU64,
    errors: AtomicU64,
}

/// The longest error message kept in an error's kind, in characters.
const ERROR_MESSAGE_CHARS_MAX: usize = 80;

/// The name an error is counted under: the gRPC status code's name and the server's message
/// (etcd and synod say "no leader", "too many requests", ... under the same code).
fn error_kind(status: &Status) -> String {
    let message: String = status.message().chars().take(ERROR_MESSAGE_CHARS_MAX).collect();
    if message.is_empty() {
        format!("{:?}", status.code())
    } else {
        format!("{:?} ({message})", status.code())
    }
}

/// What every request carries: the token of `--user`, if given.
#[derive(Clone, Debug, Default)]
pub struct Credentials {
    token: Option<MetadataValue<Ascii>>,
}

impl tonic::service::Interceptor for Credentials {
    fn call(&mut self, mut request: tonic::Request<()>) -> Result<tonic::Request<()>, Status> {
        if let Some(token) = &self.token {
            request.metadata_mut().insert("token", token.clone());
        }
        Ok(request)
    }
}

/// One connection, with the run's credentials on every request.
pub type Conn = InterceptedService<Channel, Credentials>;

fn read_pem(flag: &str, path: &std::path::Path) -> Result<Vec<u8>, String> {
    std::fs::read(path).map_err(|error| format!("{flag} {}: {error}", path.display()))
}

/// The TLS settings the flags ask for, if the endpoints are https://.
fn tls_config(args: &Args) -> Result<Option<ClientTlsConfig>, String> {
    let Some(cacert) = &args.cacert else {
        return Ok(None);
    };
    let mut config = ClientTlsConfig::new().ca_certificate(Certificate::from_pem(read_pem("--cacert", cacert)?));
    if let (Some(cert), Some(key)) = (&args.cert, &args.key) {
        config = config.identity(Identity::from_pem(read_pem("--cert", cert)?, read_pem("--key", key)?));
    }
    Ok(Some(config))
}

/// Authenticates as `--user` NAME:PASSWORD over `channel` and returns the token.
async fn authenticate(args: &Args, channel: &Channel) -> Result<Credentials, String> {
    let Some(user) = &args.user else {
        return Ok(Credentials::default());
    };
    let (name, password) = user.split_once(':').ok_or("--user: expected NAME:PASSWORD")?;
    let request = synod_proto::etcdserverpb::AuthenticateRequest {
        name: name.to_string(),
        password: password.to_string(),
    };
    let response = synod_proto::etcdserverpb::auth_client::AuthClient::new(channel.clone())
        .authenticate(request)
        .await
        .map_err(|status| format!("cannot authenticate as {name}: {}", status.message()))?;
    let token = response
        .into_inner()
        .token
        .parse()
        .map_err(|_| "the token is not valid metadata".to_string())?;
    Ok(Credentials { token: Some(token) })
}

/// Opens `args.connections` channels round-robin over the endpoints, failing with the first
/// endpoint that cannot be reached, and authenticates once if `--user` asks.
async fn connect(args: &Args) -> Result<Vec<Conn>, String> {
    let tls = tls_config(args)?;
    let mut channels = Vec::new();
    for index in 0..args.connections as usize {
        let url = &args.endpoints[index % args.endpoints.len()];
        let mut endpoint = Endpoint::from_shared(url.clone())
            .map_err(|error| format!("{url}: {error}"))?
            .connect_timeout(CONNECT_TIMEOUT)
            .tcp_nodelay(true);
        if let Some(tls) = &tls {
            endpoint = endpoint
                .tls_config(tls.clone())
                .map_err(|error| format!("{url}: {error}"))?;
        }
        let channel = endpoint
            .connect()
            .await
            .map_err(|error| format!("cannot connect to {url}: {error}"))?;
        channels.push(channel);
    }
    let credentials = authenticate(args, &channels[0]).await?;
    Ok(channels
        .into_iter()
        .map(|channel| InterceptedService::new(channel, credentials.clone()))
        .collect())
}

/// A value of `size` bytes: a recognisable filler, so a value seen in a dump says where it
/// came from.
fn filler(size: u64) -> Vec<u8> {
    b"synod-bench-".iter().copied().cycle().take(size as usize).collect()
}

/// The mod_revision last seen of each key, shared by the txn workload's clients, so a
/// compare fails only when another client really changed the key in between.
type Revisions = Arc<Vec<AtomicI64>>;

/// Tries of one preload put that finds the group without a master.
const PRELOAD_ATTEMPTS_MAX: u32 = 50;
/// The pause between two such tries.
const PRELOAD_RETRY_PAUSE: std::time::Duration = std::time::Duration::from_millis(100);

/// Writes every key of the key space once, so reads and compares find a value, and notes
/// each key's mod_revision in `revisions` (when it has room for the key). Not measured.
async fn preload(args: &Args, channels: &[Conn], keys: &KeySpace, revisions: &Revisions) -> Result<(), String> {
    let bar = progress_bar(args, keys.len(), "preloading keys");
    let next = Arc::new(AtomicU64::new(0));
    let value = prost::bytes::Bytes::from(filler(args.value_size_bytes));
    let mut tasks = tokio::task::JoinSet::new();
    for client in 0..args.clients as usize {
        let mut kv = KvClient::new(channels[client % channels.len()].clone());
        let next = next.clone();
        let keys = keys.clone();
        let value = value.clone();
        let timeout = args.request_timeout();
        let bar = bar.clone();
        let revisions = revisions.clone();
        tasks.spawn(async move {
            loop {
                let index = next.fetch_add(1, Ordering::Relaxed);
                if index >= keys.len() {
                    return Ok(());
                }
                let request = PutRequest {
                    key: keys.key(index).into(),
                    value: value.clone(),
                    ..PutRequest::default()
                };
                let mut attempt = 1;
                loop {
                    match tokio::time::timeout(timeout, kv.put(request.clone())).await {
                        Ok(Ok(response)) => {
                            if let (Some(seen), Some(header)) =
                                (revisions.get(index as usize), response.into_inner().header)
                            {
                                seen.store(header.revision, Ordering::Relaxed);
                            }
                            bar.inc(1);
                            break;
                        }
                        // A master change (`no leader`) passes: the same put again
                        // writes the same value, so a retry is harmless here.
                        Ok(Err(status))
                            if status.code() == tonic::Code::Unavailable && attempt < PRELOAD_ATTEMPTS_MAX =>
                        {
                            attempt += 1;
                            tokio::time::sleep(PRELOAD_RETRY_PAUSE).await;
                        }
                        Ok(Err(status)) => return Err(format!("preload: put failed: {}", status.message())),
                        Err(_) => return Err(format!("preload: a put took longer than {timeout:?}")),
                    }
                }
            }
        });
    }
    let mut result = Ok(());
    while let Some(outcome) = tasks.join_next().await {
        let outcome = outcome
            .map_err(|error| format!("preload: {error}"))
            .and_then(|outcome| outcome);
        if let Err(error) = outcome {
            tasks.abort_all();
            result = result.and(Err(error));
        }
    }
    bar.finish_and_clear();
    result
}

/// One client's state for the key-value workloads.
struct KvWorker {
    kv: KvClient<Conn>,
    workload: Workload,
    keys: KeyPicker,
    key_space: KeySpace,
    value: prost::bytes::Bytes,
    read_percent: u8,
    /// For the watch workload: the clock the send time in each value is read against.
    stamp_epoch: Option<Instant>,
    /// For txn: the mod_revision last seen of each key.
    revisions: Revisions,
}

impl KvWorker {
    /// One operation; `Ok(Some(name))` counts an outcome besides its latency.
    async fn once(&mut self) -> Result<Option<&'static str>, Status> {
        let index = self.keys.next_index();
        let key: prost::bytes::Bytes = self.key_space.key(index).into();
        match self.workload {
            Workload::Range | Workload::RangeSerializable => {
                self.range(key, self.workload == Workload::RangeSerializable).await?;
                Ok(None)
            }
            Workload::Mixed if self.keys.percent() < self.read_percent => {
                self.range(key, false).await?;
                Ok(Some("reads"))
            }
            Workload::Txn => self.compare_and_swap(index, key).await,
            Workload::Put | Workload::Mixed | Workload::Watch | Workload::Lease => {
                let value = match self.stamp_epoch {
                    Some(epoch) => stamped(&self.value, epoch.elapsed()),
                    None => self.value.clone(),
                };
                let request = PutRequest {
                    key,
                    value,
                    ..PutRequest::default()
                };
                self.kv.put(request).await?;
                Ok((self.workload == Workload::Mixed).then_some("writes"))
            }
        }
    }

    async fn range(&mut self, key: prost::bytes::Bytes, serializable: bool) -> Result<(), Status> {
        let request = RangeRequest {
            key,
            serializable,
            ..RangeRequest::default()
        };
        let response = self.kv.range(request).await?.into_inner();
        if response.kvs.is_empty() {
            return Err(Status::not_found("a preloaded key was missing"));
        }
        Ok(())
    }

    /// A txn that puts `key` if its mod_revision is the one last seen, and reads it otherwise.
    async fn compare_and_swap(&mut self, index: u64, key: prost::bytes::Bytes) -> Result<Option<&'static str>, Status> {
        let slot = self.revisions.get(index as usize);
        let seen = slot.map_or(0, |seen| seen.load(Ordering::Relaxed));
        let request = TxnRequest {
            compare: vec![Compare {
                result: CompareResult::Equal as i32,
                target: CompareTarget::Mod as i32,
                key: key.clone(),
                target_union: Some(TargetUnion::ModRevision(seen)),
                ..Compare::default()
            }],
            success: vec![RequestOp {
                request: Some(RequestOpRequest::RequestPut(PutRequest {
                    key: key.clone(),
                    value: self.value.clone(),
                    ..PutRequest::default()
                })),
            }],
            failure: vec![RequestOp {
                request: Some(RequestOpRequest::RequestRange(RangeRequest {
                    key,
                    ..RangeRequest::default()
                })),
            }],
        };
        let response = self.kv.txn(request).await?.into_inner();
        if response.succeeded {
            // The put's revision is the key's new mod_revision.
            let revision = response.header.map_or(0, |header| header.revision);
            if let Some(slot) = slot {
                slot.store(revision, Ordering::Relaxed);
            }
            return Ok(Some("swapped"));
        }
        let current = response
            .responses
            .into_iter()
            .find_map(|op| match op.response {
                Some(ResponseOpResponse::ResponseRange(range)) => range.kvs.into_iter().next(),
                _ => None,
            })
            .map_or(0, |kv| kv.mod_revision);
        if let Some(slot) = slot {
            slot.store(current, Ordering::Relaxed);
        }
        Ok(Some("compare_failed"))
    }
}

/// `value` with its first [`STAMP_BYTES`] replaced by `since_epoch` in microseconds.
fn stamped(value: &prost::bytes::Bytes, since_epoch: Duration) -> prost::bytes::Bytes {
    let mut bytes = value.to_vec();
    let micros = u64::try_from(since_epoch.as_micros()).unwrap_or(u64::MAX);
    bytes[..STAMP_BYTES as usize].copy_from_slice(&micros.to_le_bytes());
    bytes.into()
}

/// The send time carried by a watch workload's value, if it has one.
fn stamp_of(value: &[u8]) -> Option<Duration> {
    let bytes: [u8; STAMP_BYTES as usize] = value.get(..STAMP_BYTES as usize)?.try_into().ok()?;
    Some(Duration::from_micros(u64::from_le_bytes(bytes)))
}

/// One client of the lease workload: a lease and its keep-alive stream.
struct LeaseWorker {
    leases: LeaseClient<Conn>,
    id: i64,
    requests: mpsc::Sender<LeaseKeepAliveRequest>,
    responses: Streaming<LeaseKeepAliveResponse>,
}

impl LeaseWorker {
    /// Grants a lease and opens its keep-alive stream, within `timeout`.
    async fn open(channel: Conn, timeout: Duration) -> Result<LeaseWorker, String> {
        tokio::time::timeout(timeout, LeaseWorker::open_now(channel))
            .await
            .map_err(|_| format!("lease: no keep-alive stream within {timeout:?}"))?
    }

    async fn open_now(channel: Conn) -> Result<LeaseWorker, String> {
        let mut leases = LeaseClient::new(channel);
        let granted = leases
            .lease_grant(LeaseGrantRequest {
                ttl: LEASE_TTL_S,
                id: 0,
            })
            .await
            .map_err(|status| format!("lease grant failed: {}", status.message()))?
            .into_inner();
        let (requests, receiver) = mpsc::channel(1);
        // A first keep-alive goes out with the call: etcd (grpc-go) sends the stream's
        // response headers only with its first message, which would otherwise never come.
        requests
            .send(LeaseKeepAliveRequest { id: granted.id })
            .await
            .map_err(|_| "lease: the request stream closed".to_string())?;
        let mut responses = leases
            .lease_keep_alive(ReceiverStream::new(receiver))
            .await
            .map_err(|status| format!("lease keep-alive stream failed: {}", status.message()))?
            .into_inner();
        match responses.message().await {
            Ok(Some(response)) if response.ttl > 0 => Ok(LeaseWorker {
                leases,
                id: granted.id,
                requests,
                responses,
            }),
            Ok(Some(_)) => Err("lease: expired before its first keep-alive".into()),
            Ok(None) => Err("lease: the server closed the keep-alive stream".into()),
            Err(status) => Err(format!("lease keep-alive failed: {}", status.message())),
        }
    }

    /// One keep-alive round trip.
    async fn once(&mut self) -> Result<Option<&'static str>, Status> {
        self.requests
            .send(LeaseKeepAliveRequest { id: self.id })
            .await
            .map_err(|_| Status::cancelled("keep-alive stream closed"))?;
        match self.responses.message().await? {
            Some(response) if response.ttl > 0 => Ok(None),
            Some(_) => Err(Status::not_found("lease expired")),
            None => Err(Status::cancelled("keep-alive stream closed")),
        }
    }
}

/// A client of any workload (boxed: each is a few hundred bytes, moved once into its task).
enum Worker {
    Kv(Box<KvWorker>),
    Lease(Box<LeaseWorker>),
}

impl Worker {
    async fn once(&mut self) -> Result<Option<&'static str>, Status> {
        match self {
            Worker::Kv(worker) => worker.once().await,
            Worker::Lease(worker) => worker.once().await,
        }
    }
}

/// Runs one client's operations until the schedule ends.
async fn drive(mut worker: Worker, schedule: Arc<Schedule>, timeout: Duration, live: Arc<Live>) -> Recorder {
    let mut recorder = Recorder::new();
    while let Some(ticket) = schedule.next().await {
        match tokio::time::timeout(timeout, worker.once()).await {
            Ok(Ok(outcome)) => {
                let now = Instant::now();
                recorder.success(now - ticket.start, now - schedule.started());
                if let Some(name) = outcome {
                    recorder.count(name, 1);
                }
                live.ops.fetch_add(1, Ordering::Relaxed);
            }
            Ok(Err(status)) => {
                recorder.error(&error_kind(&status));
                live.errors.fetch_add(1, Ordering::Relaxed);
            }
            Err(_) => {
                recorder.error("timeout");
                live.errors.fetch_add(1, Ordering::Relaxed);
            }
        }
    }
    if let Worker::Lease(mut lease) = worker {
        drop(lease.requests);
        // Best effort: a lease left behind expires after its TTL anyway.
        let revoke = lease.leases.lease_revoke(LeaseRevokeRequest { id: lease.id });
        let _ = tokio::time::timeout(timeout, revoke).await;
    }
    recorder
}

/// A progress bar of `length` steps, or a hidden one when it would only clutter a log.
fn progress_bar(args: &Args, length: u64, unit: &str) -> ProgressBar {
    if args.quiet || !std::io::stderr().is_terminal() {
        return ProgressBar::hidden();
    }
    let bar = ProgressBar::new(length);
    let template = format!("{{elapsed_precise}} [{{bar:40}}] {{pos}}/{{len}} {unit}  {{msg}}");
    if let Ok(style) = ProgressStyle::with_template(&template) {
        bar.set_style(style.progress_chars("=> "));
    }
    bar
}

/// Redraws `bar` until `done`: operations done (with --total) or seconds passed.
fn show_progress(bar: ProgressBar, plan: Plan, live: Arc<Live>, done: Arc<AtomicBool>) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        let start = Instant::now();
        while !done.load(Ordering::Relaxed) {
            let ops = live.ops.load(Ordering::Relaxed);
            let errors = live.errors.load(Ordering::Relaxed);
            let elapsed = start.elapsed();
            match plan.stop {
                Stop::Total(_) => bar.set_position(ops + errors),
                Stop::After(_) => bar.set_position(elapsed.as_secs()),
            }
            let rate = ops as f64 / elapsed.as_secs_f64().max(1e-3);
            bar.set_message(format!("{rate:.0} ops/s, {errors} errors"));
            tokio::time::sleep(PROGRESS_INTERVAL).await;
        }
        bar.finish_and_clear();
    })
}

/// The schedule's plan from the flags.
fn plan(args: &Args) -> Plan {
    Plan {
        stop: match (args.total, args.duration()) {
            (Some(total), _) => Stop::Total(total),
            (None, length) => Stop::After(length.unwrap_or_default()),
        },
        rate_per_s: args.rate_per_s,
    }
}

/// Runs the workload the flags describe and returns its report.
pub async fn run(args: &Args) -> Result<Report, String> {
    args.validate()?;
    let channels = connect(args).await?;
    let keys = KeySpace::new(args.key_space, args.key_size_bytes);
    let tracked = if args.workload == Workload::Txn { keys.len() } else { 0 };
    let revisions: Revisions = Arc::new((0..tracked).map(|_| AtomicI64::new(0)).collect());
    if args.workload.needs_preload() {
        preload(args, &channels, &keys, &revisions).await?;
    }
    let plan = plan(args);
    let live = Arc::new(Live::default());
    let stamp_epoch = Instant::now();
    let value = prost::bytes::Bytes::from(filler(args.value_size_bytes));

    // The watch workload's watchers are in place before the first put.
    let mut watchers = Vec::new();
    if args.workload == Workload::Watch {
        for index in 0..args.watchers as usize {
            let opening = open_watch(channels[index % channels.len()].clone());
            let watcher = tokio::time::timeout(args.request_timeout(), opening)
                .await
                .map_err(|_| format!("watch: not created within {:?}", args.request_timeout()))??;
            watchers.push(watcher);
        }
    }

    let mut workers = Vec::new();
    for client in 0..args.clients as usize {
        let channel = channels[client % channels.len()].clone();
        let worker = match args.workload {
            Workload::Lease => Worker::Lease(Box::new(LeaseWorker::open(channel, args.request_timeout()).await?)),
            workload => Worker::Kv(Box::new(KvWorker {
                kv: KvClient::new(channel),
                workload,
                keys: keys.picker(args.seed, client as u64),
                key_space: keys.clone(),
                value: value.clone(),
                read_percent: args.read_percent,
                stamp_epoch: (workload == Workload::Watch).then_some(stamp_epoch),
                revisions: revisions.clone(),
            })),
        };
        workers.push(worker);
    }

    let bar_length = match plan.stop {
        Stop::Total(total) => total,
        Stop::After(length) => length.as_secs(),
    };
    let unit = match plan.stop {
        Stop::Total(_) if args.workload == Workload::Watch => "puts",
        Stop::Total(_) => "ops",
        Stop::After(_) => "s",
    };
    let done = Arc::new(AtomicBool::new(false));
    let schedule = Arc::new(Schedule::start(plan));
    let puts_finished = Arc::new(AtomicBool::new(false));
    let puts_acked = Arc::new(AtomicU64::new(0));
    let watch_tasks: Vec<_> = watchers
        .into_iter()
        .map(|(sender, stream)| {
            tokio::spawn(receive_events(WatchReceiver {
                stream,
                _sender: sender,
                epoch: stamp_epoch,
                start: schedule.started(),
                finished: puts_finished.clone(),
                acked: puts_acked.clone(),
            }))
        })
        .collect();
    // For watch, progress counts puts; the report counts deliveries.
    let progress = show_progress(progress_bar(args, bar_length, unit), plan, live.clone(), done.clone());
    let timeout = args.request_timeout();
    let tasks: Vec<_> = workers
        .into_iter()
        .map(|worker| tokio::spawn(drive(worker, schedule.clone(), timeout, live.clone())))
        .collect();
    let mut writes = Recorder::new();
    for task in tasks {
        let recorder = task.await.map_err(|error| format!("a client failed: {error}"))?;
        writes.merge(&recorder);
    }
    let report = if args.workload == Workload::Watch {
        puts_acked.store(writes.successes(), Ordering::Relaxed);
        // Release: a watcher that sees the writers finished sees their count too.
        puts_finished.store(true, Ordering::Release);
        let mut deliveries = Recorder::new();
        for task in watch_tasks {
            let recorder = task.await.map_err(|error| format!("a watcher failed: {error}"))?;
            deliveries.merge(&recorder);
        }
        // Put errors are the run's errors too; the puts themselves are counted, not timed.
        deliveries.count("puts", writes.successes());
        deliveries.merge_errors(&writes);
        deliveries.report(args.workload.name(), schedule.started().elapsed())
    } else {
        writes.report(args.workload.name(), schedule.started().elapsed())
    };
    done.store(true, Ordering::Relaxed);
    let _ = progress.await;
    Ok(report)
}

/// Opens a watch on the key prefix and waits for the server to confirm it. The create request
/// goes out with the call, since etcd sends the stream's headers only with its first reply.
async fn open_watch(channel: Conn) -> Result<(mpsc::Sender<WatchRequest>, Streaming<WatchResponse>), String> {
    let (sender, receiver) = mpsc::channel(1);
    let prefix = KEY_PREFIX.as_bytes();
    sender
        .send(WatchRequest {
            request_union: Some(RequestUnion::CreateRequest(WatchCreateRequest {
                key: prefix.to_vec().into(),
                range_end: prefix_end(prefix).into(),
                ..WatchCreateRequest::default()
            })),
        })
        .await
        .map_err(|_| "watch: the request stream closed".to_string())?;
    let mut stream = WatchClient::new(channel)
        .watch(ReceiverStream::new(receiver))
        .await
        .map_err(|status| format!("watch failed: {}", status.message()))?
        .into_inner();
    match stream.message().await {
        Ok(Some(response)) if response.created && !response.canceled => Ok((sender, stream)),
        Ok(Some(response)) => Err(format!("watch was not created: {}", response.cancel_reason)),
        Ok(None) => Err("watch: the server closed the stream".into()),
        Err(status) => Err(format!("watch failed: {}", status.message())),
    }
}

/// One watcher's side of the watch workload.
struct WatchReceiver {
    stream: Streaming<WatchResponse>,
    /// Held so the request side of the stream stays open.
    _sender: mpsc::Sender<WatchRequest>,
    epoch: Instant,
    start: Instant,
    finished: Arc<AtomicBool>,
    acked: Arc<AtomicU64>,
}

/// Records each event's delivery latency (receive time minus the send time in its value)
/// until the writers are done and every acknowledged put has arrived.
async fn receive_events(mut watcher: WatchReceiver) -> Recorder {
    let mut recorder = Recorder::new();
    let mut received = 0u64;
    let mut drain_deadline = None;
    loop {
        if watcher.finished.load(Ordering::Acquire) {
            let acked = watcher.acked.load(Ordering::Relaxed);
            if received >= acked {
                break;
            }
            let deadline = *drain_deadline.get_or_insert_with(|| Instant::now() + WATCH_DRAIN_TIMEOUT);
            if Instant::now() >= deadline {
                for _ in received..acked {
                    recorder.error("event_missing");
                }
                break;
            }
        }
        let message = tokio::time::timeout(PROGRESS_INTERVAL, watcher.stream.message()).await;
        let response = match message {
            Err(_) => continue,
            Ok(Ok(Some(response))) => response,
            Ok(Ok(None)) => {
                recorder.error("watch_closed");
                break;
            }
            Ok(Err(status)) => {
                recorder.error(&error_kind(&status));
                break;
            }
        };
        if response.canceled {
            recorder.error("watch_canceled");
            break;
        }
        let now = Instant::now();
        for event in response.events {
            received += 1;
            match event.kv.as_ref().and_then(|kv| stamp_of(&kv.value)) {
                Some(sent) => {
                    let latency = (now - watcher.epoch).saturating_sub(sent);
                    recorder.success(latency, now - watcher.start);
                }
                None => recorder.error("event_without_stamp"),
            }
        }
    }
    recorder
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_stamp_round_trips_through_a_value() {
        let value = prost::bytes::Bytes::from(filler(32));
        let stamped = stamped(&value, Duration::from_micros(123_456_789));
        assert_eq!(stamped.len(), 32);
        assert_eq!(&stamped[8..], &value[8..]);
        assert_eq!(stamp_of(&stamped), Some(Duration::from_micros(123_456_789)));
        assert_eq!(stamp_of(b"short"), None);
    }

    #[test]
    fn filler_has_the_asked_size() {
        assert_eq!(filler(0).len(), 0);
        assert_eq!(filler(1_000).len(), 1_000);
    }
}
