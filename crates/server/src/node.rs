//! The core task: one tokio task that owns the Paxos [`Replica`] and drives it.
//!
//! Every input (a tick of the clock, a peer's message, a client's command)
//! goes through this one task, so the replica and the order of its outputs
//! need no lock. After each burst of inputs the task takes the replica's
//! [`synod_paxos::Ready`] and acts on it in the documented order:
//!
//! 1. hand the persist records to the group commit (synod-storage's writer threads) and **wait until they are
//!    durable** (an async wait: the task yields, it never blocks a thread);
//! 2. queue the messages to the peers;
//! 3. apply the committed values to the key-value store, feed the watch hubs
//!    and the lessor, then answer the clients whose submits ended.
//!
//! The store sits behind a mutex shared with the client API, which reads it
//! directly (serializable reads, watches); only this task writes it.
//!
//! Nothing that costs time in proportion to the store runs on this task.
//! Snapshots follow Paxos Made Live; `node/snapshot_keeper.rs` holds their
//! state and its module doc tells the flows: the task freezes the store under its
//! lock ([`Store::freeze`], a copy of the key index's chunk directory), a
//! blocking-pool thread streams the frozen copy into a snapshot writer while
//! commits go on, and only once that snapshot is durable does the group commit's writer
//! trim the log below it and this task trim the replica's log. A snapshot
//! served to a lagging peer is serialized from a frozen copy on a
//! blocking-pool thread too, and a peer's snapshot is restored and written
//! there while this task waits for it.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use bytes::Bytes;
use synod_kv::{
    AlarmAction, AlarmRequest, AlarmType, Applied, LeaseRevokeRequest, LeaseTimeToLiveResponse, Lessor, PutRequest,
    Request, Store, TxnRequest, WatchHub,
};
use synod_paxos::{
    Committed, Envelope, NodeId, Outcome, Persist, Ready, RejectReason, Replica, SubmitId, SubmitOutcome, Time,
};
use synod_storage::SnapshotStore;
use tokio::sync::{mpsc, oneshot, watch, Notify};
use tokio_util::sync::CancellationToken;

use crate::config::Tunables;
use crate::disk_writer::{DiskError, DiskWriter};
use crate::identity::Identity;
use crate::metrics::Metrics;
use crate::peer::{PeerEvents, PeerInput, PeerSender};
use crate::snapshot_transfer::SnapshotChunk;
use crate::tokens::TokenKeeper;

mod consistency;
mod snapshot_keeper;

pub use consistency::CheckReport;
use consistency::{ConsistencyChecker, Verdict};
use snapshot_keeper::{PeerSnapshot, SnapshotKeeper};

/// How often the core's timers are advanced.
pub const TICK_INTERVAL: Duration = Duration::from_millis(5);
/// How often the master looks for expired client leases.
const LEASE_EXPIRY_INTERVAL: Duration = Duration::from_millis(250);
/// While a compaction's physical part is pending, the master proposes an
/// empty Txn this often, so that the steps (one per committed instance) go on
/// when no client writes: otherwise the history they free stays in memory.
const COMPACTION_NUDGE_INTERVAL: Duration = Duration::from_millis(20);
/// Expired leases revoked per expiry check.
const LEASE_REVOKES_PER_CHECK_MAX: usize = 64;
/// A revoke that has not taken effect is proposed again after this long, in milliseconds.
const LEASE_REVOKE_RETRY_MS: u64 = 2_000;

/// Keys a compaction's physical part visits per committed instance (one step
/// per instance, whatever its number of entries), in keys: a few milliseconds
/// (kvbench: 18.85 ms for the longest step of 10,000 keys), so the
/// up to `window_instances_max` instances one Ready may commit do not hold the
/// core task for long.
const COMPACTION_KEYS_PER_INSTANCE_MAX: usize = 2_000;

/// The state machine's limits; every member must use the same.
pub fn kv_config() -> synod_kv::Config {
    synod_kv::Config {
        compaction_keys_per_entry_max: COMPACTION_KEYS_PER_INSTANCE_MAX,
        ..synod_kv::Config::default()
    }
}

/// Inputs handled before the Ready is processed, so one slow stream of input
/// cannot starve the others and every Ready stays bounded.
const INPUTS_PER_ROUND_MAX: usize = 512;

/// Why a write was not applied.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum WriteError {
    /// This member is not the master (the one it last heard of, if any).
    NotMaster(Option<NodeId>),
    /// The master changed before the write was committed: it was not applied.
    MasterChanged,
    /// The request is larger than the core's value bound.
    TooLarge,
    /// The master's submit queue is full: retry later.
    QueueFull,
    /// The write may or may not have been applied.
    Unknown,
    /// The server is stopping.
    Stopped,
}

/// A snapshot of the core's state, published after every round.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Status {
    /// Highest instance applied to the store; it changes only while the
    /// store's lock is held.
    pub applied_instance: u64,
    /// Highest instance known chosen.
    pub chosen_through: u64,
    /// Whether this member is the master now.
    pub is_master: bool,
    /// The master as far as this member knows.
    pub master: Option<u64>,
    /// The highest ballot round seen (etcd's raft_term).
    pub round: u64,
}

/// What the client API asks of the core task.
#[derive(Debug)]
pub enum Command {
    /// Append a kv request to the log; answered when applied here.
    Submit {
        /// The encoded kv request.
        value: Bytes,
        /// The applied result, or why it was not applied.
        reply: oneshot::Sender<Result<Applied, WriteError>>,
    },
    /// A linearizable read point: the instance to have applied, if this member
    /// holds the master lease now.
    ReadIndex {
        /// The instance to wait for, or why this member cannot say.
        reply: oneshot::Sender<Result<u64, WriteError>>,
    },
    /// Refresh a client lease's deadline. `None`: not the master.
    KeepAlive {
        /// The lease.
        id: i64,
        /// What the lessor answered.
        reply: oneshot::Sender<Option<i64>>,
    },
    /// A client lease's remaining time. `None`: not the master.
    TimeToLive {
        /// The lease.
        id: i64,
        /// Whether to list the keys attached to it.
        keys: bool,
        /// The answer.
        reply: oneshot::Sender<Option<LeaseTimeToLiveResponse>>,
    },
    /// Hand the master's role to member `to` (etcd's MoveLeader): answered
    /// once the handover has started; the caller watches the status to see
    /// `to` become master.
    TransferMaster {
        /// The member ID of the new master.
        to: u64,
        /// Whether the handover started, or why not.
        reply: oneshot::Sender<Result<(), synod_paxos::TransferError>>,
    },
    /// Run a consistency check now (the master only) and report it when
    /// every member answered or the check's deadline passed.
    CheckConsistency {
        /// The report, or why this member cannot run one.
        reply: oneshot::Sender<Result<CheckReport, WriteError>>,
    },
}

/// One registered watch stream's hub.
#[derive(Clone, Debug)]
pub struct HubEntry {
    /// The stream's watchers and their pending events.
    pub hub: Arc<Mutex<WatchHub>>,
    /// Woken when events were added to the hub.
    pub notify: Arc<Notify>,
}

/// State shared between the core task and the client API.
pub struct Shared {
    /// Who this member is and the cluster it belongs to.
    pub identity: Identity,
    /// This member's advertised client URL.
    pub client_url: String,
    /// The server's tunables.
    pub tunables: Tunables,
    /// The `/metrics` counters.
    pub metrics: Arc<Metrics>,
    store: Mutex<Store>,
    /// The core's latest status.
    pub status: watch::Receiver<Status>,
    /// Into the core task; bounded by `Tunables::command_queue_max`.
    pub commands: mpsc::Sender<Command>,
    client_urls: Mutex<HashMap<u64, String>>,
    hubs: Mutex<HashMap<u64, HubEntry>>,
    next_hub_id: AtomicU64,
    /// The auth tokens this member knows.
    pub tokens: TokenKeeper,
    /// `--unsafe-bug keepalive-lapsed-master`: client lease keep-alives and
    /// time to live are answered whenever this member believes it is master,
    /// with or without the master lease: the API skips its read point (which
    /// a lapsed master cannot find) and the core answers on `is_master()`
    /// alone. Unsafe; for fault testing.
    pub keepalive_lapsed_master: std::sync::atomic::AtomicBool,
    /// This member's CORRUPT alarm is raised (its state hash disagreed with
    /// a majority's): it answers no reads and no writes until the alarm is
    /// disarmed. Set by the core task when it applies the alarm.
    pub corrupt: std::sync::atomic::AtomicBool,
}

/// Locks a mutex, taking over a poisoned one: the state it guards is only
/// written by the core task, which stops the server if it panics.
pub fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

impl Shared {
    /// The store, for reads. Lock order: store, then the hub map, then a hub.
    pub fn store(&self) -> MutexGuard<'_, Store> {
        lock(&self.store)
    }

    /// Replaces the whole store (a snapshot from a peer was installed, through
    /// `instance`) and returns the old one. The status's applied instance
    /// moves under the store's lock, as it does when the core applies, so a
    /// reader holding the lock sees a store and the instance it is at
    /// together (the status page pairs the state hash with it).
    fn replace_store(&self, store: Store, instance: u64, status: &watch::Sender<Status>) -> Store {
        // The entries the snapshot stands for may have voided tokens.
        self.tokens.clear();
        let mut guard = lock(&self.store);
        let replaced = std::mem::replace(&mut *guard, store);
        status.send_modify(|status| status.applied_instance = instance);
        replaced
    }

    /// The client URL of `member_id`, as it announced it (this member's own too).
    pub fn client_url_of(&self, member_id: u64) -> Option<String> {
        if member_id == self.identity.member_id {
            return Some(self.client_url.clone());
        }
        lock(&self.client_urls).get(&member_id).cloned()
    }

    /// Registers a watch stream's hub; events applied from now on reach it.
    pub fn register_hub(&self, hub: HubEntry) -> u64 {
        let id = self.next_hub_id.fetch_add(1, Ordering::Relaxed);
        lock(&self.hubs).insert(id, hub);
        id
    }

    /// Stops delivering events to the hub registered as `id`.
    pub fn unregister_hub(&self, id: u64) {
        lock(&self.hubs).remove(&id);
    }

    /// The core's status after its latest round.
    pub fn current_status(&self) -> Status {
        *self.status.borrow()
    }

    /// Waits until the store has applied `instance`, or `timeout` passes.
    pub async fn wait_applied(&self, instance: u64, timeout: Duration) -> bool {
        let mut status = self.status.clone();
        let reached = tokio::time::timeout(timeout, async {
            status
                .wait_for(|status| status.applied_instance >= instance)
                .await
                .is_ok()
        })
        .await;
        matches!(reached, Ok(true))
    }
}

impl std::fmt::Debug for Shared {
    fn fmt(&self, formatter: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        formatter
            .debug_struct("Shared")
            .field("member", &self.identity.name)
            .field("status", &*self.status.borrow())
            .finish_non_exhaustive()
    }
}

impl PeerEvents for Shared {
    fn client_url(&self, peer: NodeId, url: String) {
        let previous = lock(&self.client_urls).insert(peer.0, url.clone());
        if previous.as_deref() != Some(url.as_str()) {
            tracing::info!(peer = %format!("{:x}", peer.0), %url, "learned a peer's client URL");
        }
    }
}

/// The core task's state.
pub struct Core {
    replica: Replica,
    shared: Arc<Shared>,
    peers: PeerSender,
    disk: DiskWriter,
    lessor: Lessor,
    pending: HashMap<SubmitId, (oneshot::Sender<Result<Applied, WriteError>>, Instant)>,
    status: watch::Sender<Status>,
    origin: Instant,
    was_master: bool,
    last_master: Option<NodeId>,
    next_expiry_check: Instant,
    next_compaction_nudge: Instant,
    /// Our own snapshots, the one served to lagging peers, and a peer's
    /// being pulled.
    snapshots: SnapshotKeeper,
    /// A Ready's persist is on its way to disk: its messages wait.
    persisting: bool,
    /// The run-time consistency check: this member's state hashes by
    /// instance, and the master's open check.
    consistency: ConsistencyChecker,
    /// `--failpoint-diverge-key`: the first put of this key applied here is
    /// followed by a local change no other member makes. Tests only.
    diverge_key: Option<Vec<u8>>,
}

/// Why the core task stopped.
#[derive(Debug, thiserror::Error)]
pub enum CoreError {
    /// Acceptor state could not be made durable: the member must stop.
    #[error("making acceptor state durable failed: {0}")]
    Persist(DiskError),
}

/// Channels into a core that is not started yet.
pub struct CoreInputs {
    /// What the client API asks.
    pub commands: mpsc::Receiver<Command>,
    /// What the peers send.
    pub inbound: mpsc::Receiver<(NodeId, PeerInput)>,
}

/// Builds the shared state and the command channel.
pub fn shared(
    identity: Identity,
    client_url: String,
    tunables: Tunables,
    metrics: Arc<Metrics>,
    store: Store,
) -> (Arc<Shared>, mpsc::Receiver<Command>, watch::Sender<Status>) {
    let (commands, command_receiver) = mpsc::channel(tunables.command_queue_max);
    let tunables_auth_token_ttl = tunables.auth_token_ttl;
    let (status_sender, status) = watch::channel(Status::default());
    let shared = Arc::new(Shared {
        identity,
        client_url,
        tunables,
        metrics,
        store: Mutex::new(store),
        status,
        commands,
        client_urls: Mutex::new(HashMap::new()),
        hubs: Mutex::new(HashMap::new()),
        next_hub_id: AtomicU64::new(1),
        tokens: TokenKeeper::new(tunables_auth_token_ttl),
        keepalive_lapsed_master: std::sync::atomic::AtomicBool::new(false),
        corrupt: std::sync::atomic::AtomicBool::new(false),
    });
    (shared, command_receiver, status_sender)
}

impl Core {
    /// A core over `replica`; run it with [`Core::run`].
    #[allow(clippy::too_many_arguments, reason = "each is a distinct part the server built")]
    pub fn new(
        replica: Replica,
        shared: Arc<Shared>,
        peers: PeerSender,
        disk: DiskWriter,
        snapshots: SnapshotStore,
        status: watch::Sender<Status>,
        origin: Instant,
        snapshot_instance: u64,
    ) -> Core {
        let mut consistency = ConsistencyChecker::new(shared.tunables.consistency_check_interval, Instant::now());
        {
            let store = shared.store();
            status.send_modify(|status| status.applied_instance = snapshot_instance);
            consistency.history.reset(snapshot_instance, store.state_hash());
            note_corrupt_alarm(&shared, &store, snapshot_instance);
        }
        Core {
            replica,
            shared,
            peers,
            disk,
            lessor: Lessor::new(LEASE_REVOKE_RETRY_MS),
            pending: HashMap::new(),
            status,
            origin,
            was_master: false,
            last_master: None,
            next_expiry_check: Instant::now(),
            next_compaction_nudge: Instant::now(),
            snapshots: SnapshotKeeper::new(snapshots, snapshot_instance),
            persisting: false,
            consistency,
            diverge_key: None,
        }
    }

    /// Arms `--failpoint-diverge-key`: the first put of `key` this member
    /// applies is followed by a local put no other member makes, so its state
    /// diverges, as a bug or an unseen corruption would make it.
    pub fn arm_diverge_failpoint(&mut self, key: Vec<u8>) {
        tracing::warn!(
            key = %String::from_utf8_lossy(&key),
            "failpoint: this member's state will diverge after the first put of the key"
        );
        self.diverge_key = Some(key);
    }

    /// The core's clock: monotonic, from the server's start.
    fn now(&self) -> Time {
        core_time(self.origin)
    }

    fn now_ms(&self) -> u64 {
        self.origin.elapsed().as_millis() as u64
    }

    /// Runs until `shutdown` is cancelled or the disk fails.
    pub async fn run(mut self, mut inputs: CoreInputs, shutdown: CancellationToken) -> Result<(), CoreError> {
        let mut ticker = tokio::time::interval(TICK_INTERVAL);
        ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        self.process_ready().await?;
        loop {
            tokio::select! {
                _ = shutdown.cancelled() => break,
                _ = ticker.tick() => {
                    let now = self.now();
                    self.replica.tick(now);
                    self.expire_leases();
                    self.nudge_compaction();
                    self.check_consistency();
                }
                Some((from, input)) = inputs.inbound.recv() => {
                    self.peer_input(from, input).await?;
                    for _ in 0..INPUTS_PER_ROUND_MAX {
                        let Ok((from, input)) = inputs.inbound.try_recv() else { break };
                        self.peer_input(from, input).await?;
                    }
                }
                Some(command) = inputs.commands.recv() => {
                    self.handle(command);
                    for _ in 0..INPUTS_PER_ROUND_MAX {
                        let Ok(command) = inputs.commands.try_recv() else { break };
                        self.handle(command);
                    }
                }
            }
            self.process_ready().await?;
            self.snapshots.poll_own(&self.disk, &mut self.replica);
            self.snapshots
                .poll_serving(&self.shared, &self.replica, &self.peers, &self.status);
            self.snapshots.take_if_due(&self.shared, &self.replica, &self.status);
        }
        for (_, (reply, _)) in self.pending.drain() {
            let _ = reply.send(Err(WriteError::Stopped));
        }
        Ok(())
    }

    async fn peer_input(&mut self, from: NodeId, input: PeerInput) -> Result<(), CoreError> {
        match input {
            PeerInput::Message(message) => {
                let now = self.now();
                let invalid_before = self.replica.messages_invalid();
                self.replica.step(now, from, message);
                if self.replica.messages_invalid() > invalid_before {
                    self.shared
                        .metrics
                        .peer_messages_invalid
                        .fetch_add(1, Ordering::Relaxed);
                    tracing::warn!(peer = from.0, "refused a peer message: a round, incarnation or instance out of range, or a ballot not of its sender");
                }
            }
            PeerInput::SnapshotRequest { instance, chunk_index } => self.snapshots.serve(
                from,
                instance,
                chunk_index,
                &self.shared,
                &self.replica,
                &self.peers,
                &self.status,
            ),
            PeerInput::SnapshotChunk(chunk) => self.snapshot_chunk(from, chunk).await?,
            PeerInput::HashQuery { instance } => {
                if let Some(hash) = self.consistency.on_query(from.0, instance.0) {
                    self.peers
                        .send_payload(from, crate::peer::Payload::encode_hash_report(instance, hash));
                }
            }
            PeerInput::HashReport { instance, hash } => {
                let verdict = self.consistency.on_report(from.0, instance.0, hash);
                self.act_on_verdict(verdict);
            }
        }
        Ok(())
    }

    /// A chunk of a peer's snapshot; the last one installs the whole snapshot.
    async fn snapshot_chunk(&mut self, from: NodeId, chunk: SnapshotChunk) -> Result<(), CoreError> {
        let Some(snapshot) = self.snapshots.accept_chunk(from, chunk, &self.peers, &self.status) else {
            return Ok(());
        };
        // What the replica asked for so far must be durable before the
        // snapshot replaces the state it was built on.
        self.process_ready().await?;
        self.install_snapshot(from, snapshot).await;
        Ok(())
    }

    /// Installs a peer's snapshot (see [`SnapshotKeeper::install`]); a master
    /// then takes its client leases from the new store.
    async fn install_snapshot(&mut self, from: NodeId, snapshot: PeerSnapshot) {
        let instance = snapshot.instance;
        let installed = self
            .snapshots
            .install(
                from,
                snapshot,
                &self.shared,
                &mut self.replica,
                &self.disk,
                &self.status,
            )
            .await;
        if !installed {
            return;
        }
        let hash = {
            let store = self.shared.store();
            note_corrupt_alarm(&self.shared, &store, instance.0);
            store.state_hash()
        };
        self.consistency.history.reset(instance.0, hash);
        self.answer_owed_hashes();
        if self.replica.is_master() {
            let store = self.shared.store();
            self.lessor.promote(&store, self.origin.elapsed().as_millis() as u64);
        }
        tracing::info!(peer = %from, %instance, "installed a peer's snapshot");
    }

    fn handle(&mut self, command: Command) {
        let now = self.now();
        match command {
            Command::Submit { value, reply } => {
                let epoch = self.replica.epoch();
                match self.replica.submit(now, value, epoch) {
                    Ok(id) => {
                        self.pending.insert(id, (reply, Instant::now()));
                    }
                    Err(rejected) => {
                        self.shared.metrics.proposals_rejected.fetch_add(1, Ordering::Relaxed);
                        let _ = reply.send(Err(write_error(rejected.reason)));
                    }
                }
            }
            Command::ReadIndex { reply } => {
                let result = match self.replica.read_lease(self.now()) {
                    Ok(instance) => Ok(instance.0),
                    Err(synod_paxos::ReadError::NotMaster { master }) => Err(WriteError::NotMaster(master)),
                    Err(synod_paxos::ReadError::Recovering) => Err(WriteError::NotMaster(None)),
                };
                let _ = reply.send(result);
            }
            Command::KeepAlive { id, reply } => {
                let answer = self.answers_for_leases().then(|| {
                    let store = self.shared.store();
                    self.lessor.keep_alive(&store, id, self.now_ms())
                });
                let _ = reply.send(answer);
            }
            Command::TimeToLive { id, keys, reply } => {
                let answer = self.answers_for_leases().then(|| {
                    let store = self.shared.store();
                    self.lessor.time_to_live(&store, id, keys, self.now_ms())
                });
                let _ = reply.send(answer);
            }
            Command::TransferMaster { to, reply } => {
                let result = self.replica.transfer_master(now, NodeId(to));
                match result {
                    Ok(()) => tracing::info!(to = %NodeId(to), "handing the master's role over"),
                    Err(error) => tracing::info!(to = %NodeId(to), %error, "handover refused"),
                }
                let _ = reply.send(result);
            }
            Command::CheckConsistency { reply } => {
                if !self.replica.is_master() {
                    let master = self.replica.master_hint();
                    let _ = reply.send(Err(WriteError::NotMaster(master)));
                    return;
                }
                let (tell, told) = oneshot::channel();
                self.open_check(Some(tell));
                tokio::spawn(async move {
                    let answer = told.await.map_err(|_| WriteError::Stopped);
                    let _ = reply.send(answer);
                });
            }
        }
    }

    /// The master opens a periodic consistency check when one is due, and
    /// closes one past its deadline.
    fn check_consistency(&mut self) {
        let verdict = self.consistency.expire(Instant::now());
        self.act_on_verdict(verdict);
        if self.replica.is_master() && self.consistency.due(Instant::now()) {
            self.open_check(None);
        }
    }

    /// Opens a check at this member's applied instance and asks every peer
    /// for its hash there.
    fn open_check(&mut self, waiter: Option<oneshot::Sender<CheckReport>>) {
        let me = self.replica.node();
        let members: Vec<u64> = self.replica.config().members.iter().map(|node| node.0).collect();
        let (asked, verdict) = self.consistency.open(Instant::now(), me.0, &members, waiter);
        self.act_on_verdict(verdict);
        if let Some(instance) = asked {
            let query = crate::peer::Payload::encode_hash_query(synod_paxos::Instance(instance));
            for member in &self.replica.config().members {
                if *member != me {
                    self.peers.send_payload(*member, query.clone());
                }
            }
        }
    }

    /// Raises the CORRUPT alarm, through the log, for every member a check
    /// found in the minority, and counts what closed.
    fn act_on_verdict(&mut self, verdict: Verdict) {
        let metrics = &self.shared.metrics;
        if let Some(report) = &verdict.closed {
            metrics.consistency_checks.fetch_add(1, Ordering::Relaxed);
            if report.majority.is_none() {
                tracing::warn!(instance = report.instance, hashes = ?report.hashes, "consistency check: no quorum of members agrees on a state hash");
            }
        }
        for (member, instance) in verdict.corrupt {
            metrics.consistency_mismatches.fetch_add(1, Ordering::Relaxed);
            tracing::error!(
                member = %format!("{member:x}"),
                instance,
                "consistency check: the member's state hash after instance {instance} differs from the majority's; raising its CORRUPT alarm"
            );
            let alarm = Request::Alarm(AlarmRequest {
                action: AlarmAction::Activate,
                member_id: member,
                alarm: AlarmType::Corrupt,
            });
            let prepared = {
                let store = self.shared.store();
                if store.has_alarm(member, AlarmType::Corrupt) {
                    continue;
                }
                store.prepare(&alarm)
            };
            let Ok(bytes) = prepared else { continue };
            let epoch = self.replica.epoch();
            // Not awaited: if it fails, the next check finds the member again
            // (a diverged state hash never comes back).
            let _ = self.replica.submit(self.now(), Bytes::from(bytes), epoch);
        }
    }

    /// Sends the hash reports this member owed and can now give.
    fn answer_owed_hashes(&mut self) {
        for (peer, instance, hash) in self.consistency.answers_due() {
            self.peers.send_payload(
                NodeId(peer),
                crate::peer::Payload::encode_hash_report(synod_paxos::Instance(instance), hash),
            );
        }
    }

    /// Whether this member may answer a client lease's keep-alive or time to
    /// live: only while it holds the master lease by a clock read now, in the
    /// same step that answers. Being master is not enough: a master paused past
    /// its lease still thinks it is one until it hears otherwise, while its
    /// successor, which started every deadline afresh when it took over, may
    /// revoke the lease before the deadline the lapsed master would promise.
    fn answers_for_leases(&self) -> bool {
        if self.shared.keepalive_lapsed_master.load(Ordering::Relaxed) {
            return self.replica.is_master();
        }
        // `holds_lease` too, so a core planted with `read_without_lease`
        // still answers client leases safely: one unsafe mode at a time.
        let now = self.now();
        self.replica.holds_lease(now) && self.replica.read_lease(now).is_ok()
    }

    /// The master proposes a revoke for each client lease past its deadline.
    fn expire_leases(&mut self) {
        if Instant::now() < self.next_expiry_check || !self.replica.is_master() {
            return;
        }
        self.next_expiry_check = Instant::now() + LEASE_EXPIRY_INTERVAL;
        let now = self.now();
        if self.replica.read_lease(now).is_err() {
            return;
        }
        let now_ms = self.now_ms();
        let revokes: Vec<Vec<u8>> = {
            let store = self.shared.store();
            self.lessor
                .expired(&store, now_ms, LEASE_REVOKES_PER_CHECK_MAX)
                .into_iter()
                .filter_map(|id| store.prepare(&Request::LeaseRevoke(LeaseRevokeRequest { id })).ok())
                .collect()
        };
        for bytes in revokes {
            let epoch = self.replica.epoch();
            // The outcome is not awaited: a revoke that fails is proposed again.
            let _ = self.replica.submit(now, Bytes::from(bytes), epoch);
        }
    }

    /// The master keeps a pending compaction stepping while no client writes:
    /// an empty Txn changes nothing but is one more committed instance.
    fn nudge_compaction(&mut self) {
        if Instant::now() < self.next_compaction_nudge || !self.replica.is_master() {
            return;
        }
        self.next_compaction_nudge = Instant::now() + COMPACTION_NUDGE_INTERVAL;
        let nudge = {
            let store = self.shared.store();
            if store.pending_compaction().is_none() {
                return;
            }
            store.prepare(&Request::Txn(TxnRequest::default()))
        };
        let Ok(bytes) = nudge else { return };
        let now = self.now();
        let epoch = self.replica.epoch();
        // Not awaited: a nudge that fails is made again.
        let _ = self.replica.submit(now, Bytes::from(bytes), epoch);
    }

    async fn process_ready(&mut self) -> Result<(), CoreError> {
        loop {
            let ready = self.replica.take_ready();
            if ready.is_empty() {
                break;
            }
            self.act(ready).await?;
        }
        self.publish_status();
        Ok(())
    }

    /// Acts on one Ready in the order it documents: persist, send, apply,
    /// answer; then, if this member is behind every peer's log, ask for a
    /// snapshot.
    async fn act(&mut self, ready: Ready) -> Result<(), CoreError> {
        let Ready {
            persist,
            messages,
            committed,
            outcomes,
            snapshot_needed,
        } = ready;
        self.persist(persist).await?;
        self.send(&messages);
        let results = self.apply(&committed);
        self.answer(outcomes, results);
        if let Some((peer, instance)) = snapshot_needed {
            self.snapshots.request(peer, instance, &self.peers);
        }
        Ok(())
    }

    /// 1. Makes the Ready's persist records durable; returns once they are
    ///    (and every earlier Ready's with them).
    async fn persist(&mut self, persist: Vec<Persist>) -> Result<(), CoreError> {
        if !persist.is_empty() {
            let started = Instant::now();
            self.persisting = true;
            self.disk.persist(persist).await.map_err(CoreError::Persist)?;
            self.persisting = false;
            self.shared.metrics.fsync_latency.observe_duration(started.elapsed());
        }
        Ok(())
    }

    /// 2. Queues the Ready's messages to the peers.
    fn send(&mut self, messages: &[Envelope]) {
        // A persist that did not complete (its future dropped, or failed) is
        // not known durable: nothing may be sent after it.
        assert!(!self.persisting, "messages sent before their persist is durable");
        for envelope in messages {
            self.peers.send(envelope.to, &envelope.message);
        }
    }

    /// 3. Applies the committed values to the store, in instance order, and
    ///    feeds the lessor and the watch hubs. Returns what each applied
    ///    value answered, by (instance, index in its batch).
    fn apply(&mut self, committed_instances: &[Committed]) -> HashMap<(u64, u32), Applied> {
        let mut results: HashMap<(u64, u32), Applied> = HashMap::new();
        if !committed_instances.is_empty() {
            let now_ms = self.now_ms();
            let mut store = self.shared.store();
            let hubs: Vec<HubEntry> = lock(&self.shared.hubs).values().cloned().collect();
            let mut events = false;
            for committed in committed_instances {
                // Instances are delivered in order, each exactly once, from
                // just above the applied one (a snapshot sets it).
                let applied = self.status.borrow().applied_instance;
                assert_eq!(
                    committed.instance.0,
                    applied + 1,
                    "a delivered instance is not the next one"
                );
                self.shared
                    .metrics
                    .batch_values
                    .observe(committed.batch.entries.len() as f64);
                for (index, entry) in committed.batch.entries.iter().enumerate() {
                    if committed.rejected.contains(&(index as u32)) {
                        continue;
                    }
                    let applied = store.apply_bytes_deferring_compaction(&entry.value);
                    if let Some(key) = &self.diverge_key {
                        if applied.events.iter().any(|event| event.kv.key == *key) {
                            let change = Request::Put(PutRequest {
                                key: key.clone(),
                                value: b"diverged by a failpoint".to_vec(),
                                ..PutRequest::default()
                            });
                            let _ = store.apply(&change);
                            tracing::warn!(
                                instance = committed.instance.0,
                                "failpoint: this member's state diverged"
                            );
                            self.diverge_key = None;
                        }
                    }
                    self.lessor.observe(&applied, now_ms);
                    if let Ok(synod_kv::Response::Auth(synod_kv::AuthResponse {
                        effect: Some(effect), ..
                    })) = &applied.result
                    {
                        self.shared.tokens.observe(effect);
                    }
                    if !applied.events.is_empty() {
                        events = true;
                        for entry in &hubs {
                            lock(&entry.hub).observe(&applied);
                        }
                    }
                    results.insert((committed.instance.0, index as u32), applied);
                }
                // One compaction step per committed instance on every member
                // (instances are replicated, so the rule is the same everywhere).
                store.compaction_step();
                self.shared
                    .metrics
                    .compaction_pending_revision
                    .store(store.pending_compaction().unwrap_or(0), Ordering::Relaxed);
                self.shared
                    .metrics
                    .applied_instance
                    .store(committed.instance.0, Ordering::Relaxed);
                self.status
                    .send_modify(|status| status.applied_instance = committed.instance.0);
                self.consistency
                    .history
                    .record(committed.instance.0, store.state_hash());
            }
            note_corrupt_alarm(&self.shared, &store, self.status.borrow().applied_instance);
            drop(store);
            if events {
                for entry in &hubs {
                    entry.notify.notify_one();
                }
            }
            self.answer_owed_hashes();
        }
        results
    }

    /// 4. Answers the clients whose submits ended (after the apply: an
    ///    outcome may report a value committed).
    fn answer(&mut self, outcomes: Vec<SubmitOutcome>, mut results: HashMap<(u64, u32), Applied>) {
        for outcome in outcomes {
            let Some((reply, started)) = self.pending.remove(&outcome.id) else {
                continue;
            };
            let metrics = &self.shared.metrics;
            let answer = match outcome.outcome {
                Outcome::Committed { instance, index } => match results.remove(&(instance.0, index)) {
                    Some(applied) => {
                        metrics.proposals_committed.fetch_add(1, Ordering::Relaxed);
                        metrics.commit_latency.observe_duration(started.elapsed());
                        Ok(applied)
                    }
                    None => {
                        metrics.proposals_unknown.fetch_add(1, Ordering::Relaxed);
                        Err(WriteError::Unknown)
                    }
                },
                Outcome::Rejected(rejected) => {
                    metrics.proposals_rejected.fetch_add(1, Ordering::Relaxed);
                    Err(write_error(rejected.reason))
                }
                Outcome::Unknown => {
                    metrics.proposals_unknown.fetch_add(1, Ordering::Relaxed);
                    Err(WriteError::Unknown)
                }
            };
            let _ = reply.send(answer);
        }
    }

    fn publish_status(&mut self) {
        let is_master = self.replica.is_master();
        let master = self.replica.master_hint();
        if is_master != self.was_master {
            if is_master {
                tracing::info!(round = self.replica.round(), "became master");
                let store = self.shared.store();
                self.lessor.promote(&store, self.now_ms());
            } else {
                tracing::info!("no longer master");
                self.lessor.demote();
            }
            self.was_master = is_master;
        }
        if master.is_some() && master != self.last_master {
            self.shared.metrics.master_changes.fetch_add(1, Ordering::Relaxed);
            self.last_master = master;
        }
        self.shared
            .metrics
            .is_master
            .store(u64::from(is_master), Ordering::Relaxed);
        let chosen_through = self.replica.chosen_through().0;
        let round = self.replica.round();
        self.status.send_if_modified(|status| {
            let next = Status {
                applied_instance: status.applied_instance,
                chosen_through,
                is_master,
                master: master.map(|node| node.0),
                round,
            };
            let changed = *status != next;
            *status = next;
            changed
        });
    }
}

/// Keeps [`Shared::corrupt`] equal to whether this member's CORRUPT alarm is
/// raised in `store`, which has applied through `instance`, and says so in the
/// log when that changes.
fn note_corrupt_alarm(shared: &Shared, store: &Store, instance: u64) {
    let corrupt = store.has_alarm(shared.identity.member_id, AlarmType::Corrupt);
    if corrupt == shared.corrupt.swap(corrupt, Ordering::Relaxed) {
        return;
    }
    if corrupt {
        tracing::error!(
            instance,
            "this member's CORRUPT alarm is raised (applied by instance {instance}): its state hash disagreed with a majority's; it serves no reads or writes until the alarm is disarmed"
        );
    } else {
        tracing::warn!(instance, "this member's CORRUPT alarm is disarmed: serving again");
    }
}

/// A reading of the monotonic clock as the core's [`Time`]. Starts at one
/// second so that "zero" never means "now".
pub fn core_time(origin: Instant) -> Time {
    Time::from_nanos(origin.elapsed().as_nanos() as u64 + 1_000_000_000)
}

fn write_error(reason: RejectReason) -> WriteError {
    match reason {
        RejectReason::NotMaster { master } => WriteError::NotMaster(master),
        RejectReason::EpochChanged { .. } => WriteError::MasterChanged,
        RejectReason::TooLarge { .. } => WriteError::TooLarge,
        RejectReason::QueueFull => WriteError::QueueFull,
    }
}
