//! The MVCC store: the replicated state and the deterministic `apply`.

use std::collections::{BTreeMap, BTreeSet, BinaryHeap};

use crate::applied::{Applied, LeaseEffect};
use crate::auth::{Access, AuthState};
use crate::error::KvError;
use crate::index::KeyIndex;
use crate::request::{Request, Response, TXN_DEPTH_MAX};
use crate::types::*;

/// etcd's default request size limit, in bytes (1.5 MiB).
pub const REQUEST_BYTES_MAX_DEFAULT: usize = 1_572_864;
/// etcd's largest lease TTL, in seconds.
pub const LEASE_TTL_SECONDS_MAX: i64 = 9_000_000_000;
/// Most alarms the store holds at once (one per member and kind; a group
/// of 7 members raises at most 14).
pub const ALARMS_MAX: usize = 1_024;
/// Default of [`Config::compaction_keys_per_entry_max`], in keys: about 10 ms
/// of work per applied entry (a whole compaction walks 1,000,000 keys in
/// about a second).
pub const COMPACTION_KEYS_PER_ENTRY_MAX: usize = 10_000;

/// Limits of the store. Every replica must use the same values: they decide
/// outcomes of applied requests (auto-compaction, quota refusals).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Config {
    /// Largest encoded request accepted, in bytes (`etcdserver: request is too large`).
    pub request_bytes_max: usize,
    /// Most kvs one Range returns, whatever its `limit`; beyond it `more` is set
    /// so the client pages on.
    pub range_keys_max: usize,
    /// Most compares, and most ops per branch, in one Txn (etcd's `--max-txn-ops`).
    pub txn_operations_max: usize,
    /// Most revisions of history retained. When the store revision runs more
    /// than this ahead of the compacted revision, apply compacts automatically
    /// to `revision - history_revisions_max / 2` (so compactions are batched),
    /// as part of the same applied entry on every replica. 0 disables it.
    pub history_revisions_max: i64,
    /// Quota on retained key and value bytes (all revisions). Above it, puts,
    /// Txns with puts and lease grants fail with
    /// `etcdserver: mvcc: database space exceeded` until a compaction or deletes free space.
    pub database_bytes_max: u64,
    /// Smallest lease TTL granted, in seconds; smaller requests are raised to it
    /// (etcd uses about 1.5 x the election timeout).
    pub lease_ttl_seconds_min: i64,
    /// Most keys the physical part of a compaction visits per step, in keys
    /// (see [`Store::pending_compaction`]); a step runs once per applied
    /// entry, or once per batch for a host that defers it
    /// ([`Store::apply_bytes_deferring_compaction`]). Bounds the time one
    /// apply spends on it.
    pub compaction_keys_per_entry_max: usize,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            request_bytes_max: REQUEST_BYTES_MAX_DEFAULT,
            range_keys_max: 100_000,
            txn_operations_max: 128,
            history_revisions_max: 1_000_000,
            database_bytes_max: 8 << 30,
            lease_ttl_seconds_min: 2,
            compaction_keys_per_entry_max: COMPACTION_KEYS_PER_ENTRY_MAX,
        }
    }
}

impl Config {
    /// Checks that the limits make sense together.
    pub fn validate(&self) -> Result<(), &'static str> {
        if self.request_bytes_max < 64 {
            return Err("request_bytes_max must be at least 64 bytes");
        }
        if self.range_keys_max == 0 {
            return Err("range_keys_max must be at least 1");
        }
        if self.txn_operations_max == 0 {
            return Err("txn_operations_max must be at least 1");
        }
        if self.history_revisions_max < 0 {
            return Err("history_revisions_max must be 0 (off) or positive");
        }
        if !(1..=LEASE_TTL_SECONDS_MAX).contains(&self.lease_ttl_seconds_min) {
            return Err("lease_ttl_seconds_min must be between 1 and LEASE_TTL_SECONDS_MAX");
        }
        if self.compaction_keys_per_entry_max == 0 {
            return Err("compaction_keys_per_entry_max must be at least 1");
        }
        Ok(())
    }
}

/// One change of one key; `value == None` is a deletion (tombstone).
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct Change {
    pub(crate) mod_revision: i64,
    pub(crate) create_revision: i64,
    pub(crate) version: i64,
    pub(crate) lease: i64,
    pub(crate) value: Option<Box<[u8]>>,
    /// Position of this change among the changes of its revision (etcd's sub revision).
    pub(crate) sub: u32,
}

impl Change {
    pub(crate) fn is_live(&self) -> bool {
        self.value.is_some()
    }

    pub(crate) fn key_value(&self, key: &[u8], with_value: bool) -> KeyValue {
        KeyValue {
            key: key.to_vec(),
            create_revision: self.create_revision,
            mod_revision: self.mod_revision,
            version: self.version,
            value: match (&self.value, with_value) {
                (Some(value), true) => value.to_vec(),
                _ => Vec::new(),
            },
            lease: self.lease,
        }
    }

    fn retained_bytes(&self, key_bytes: usize) -> u64 {
        (key_bytes + self.value.as_ref().map_or(0, |value| value.len())) as u64
    }
}

/// All retained changes of one key, oldest first; the newest is kept inline
/// because most keys have exactly one.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct KeyHistory {
    pub(crate) latest: Change,
    #[allow(
        clippy::box_collection,
        reason = "8 bytes per key instead of 24 for the common case of no older changes"
    )]
    pub(crate) older: Option<Box<Vec<Change>>>,
}

impl KeyHistory {
    fn new(change: Change) -> Self {
        KeyHistory {
            latest: change,
            older: None,
        }
    }

    /// The state of the key at `revision`: the newest change at or below it.
    pub(crate) fn at(&self, revision: i64) -> Option<&Change> {
        if self.latest.mod_revision <= revision {
            return Some(&self.latest);
        }
        let older = self.older.as_deref()?;
        let position = older.partition_point(|change| change.mod_revision <= revision);
        position.checked_sub(1).map(|index| &older[index])
    }

    /// The live state now, if the key exists.
    pub(crate) fn live(&self) -> Option<&Change> {
        Some(&self.latest).filter(|change| change.is_live())
    }

    pub(crate) fn changes(&self) -> impl DoubleEndedIterator<Item = &Change> {
        self.older
            .as_deref()
            .into_iter()
            .flatten()
            .chain(std::iter::once(&self.latest))
    }

    fn push(&mut self, change: Change) {
        assert!(change.mod_revision > self.latest.mod_revision);
        let previous = std::mem::replace(&mut self.latest, change);
        self.older.get_or_insert_with(Default::default).push(previous);
    }

    /// How many of this key's changes, oldest first, a compaction at
    /// `revision` makes unreachable: every change below the newest one at or
    /// below `revision`, and that one too if it is a tombstone strictly below
    /// `revision` (a tombstone at `revision` itself is kept so a watch starting
    /// at the compacted revision still sees it). All of them (`older` and
    /// `latest`) means the key goes.
    fn compaction_drops(&self, revision: i64) -> usize {
        let older: &[Change] = self.older.as_deref().map_or(&[], |older| older.as_slice());
        let at_or_below = if self.latest.mod_revision <= revision {
            older.len() + 1
        } else {
            older.partition_point(|change| change.mod_revision <= revision)
        };
        let Some(kept_index) = at_or_below.checked_sub(1) else {
            return 0;
        };
        let kept = older.get(kept_index).unwrap_or(&self.latest);
        if !kept.is_live() && kept.mod_revision < revision {
            at_or_below
        } else {
            kept_index
        }
    }

    /// Drops what a compaction at `revision` makes unreachable (see
    /// [`KeyHistory::compaction_drops`]). Returns the bytes freed and whether
    /// anything remains.
    fn compact(&mut self, revision: i64, key_bytes: usize) -> (u64, bool) {
        let bytes = |changes: &[Change]| -> u64 { changes.iter().map(|change| change.retained_bytes(key_bytes)).sum() };
        let dropped = self.compaction_drops(revision);
        if dropped == 0 {
            return (0, true);
        }
        let Some(older) = self.older.as_mut().filter(|older| dropped <= older.len()) else {
            // Every change goes, the latest included.
            let freed = self.older.take().map_or(0, |older| bytes(&older));
            return (freed + self.latest.retained_bytes(key_bytes), false);
        };
        let freed = bytes(&older[..dropped]);
        older.drain(..dropped);
        if older.is_empty() {
            self.older = None;
        } else {
            older.shrink_to_fit();
        }
        (freed, true)
    }
}

/// A lease as the replicated state knows it. Deadlines are not replicated;
/// the master's [`crate::Lessor`] tracks them.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Lease {
    /// TTL granted, in seconds.
    pub ttl_seconds: i64,
    /// Keys currently attached, in key order.
    pub keys: BTreeSet<Box<[u8]>>,
}

/// The state of a write in progress: one revision shared by all its changes.
struct Write {
    revision: i64,
    sub: u32,
    events: Vec<Event>,
}

impl Write {
    fn changed(&self) -> bool {
        self.sub > 0
    }

    /// The revision a read inside this write sees.
    fn read_revision(&self) -> i64 {
        if self.changed() {
            self.revision
        } else {
            self.revision - 1
        }
    }
}

/// The branch choices of a Txn and its nested Txns, decided on the state
/// before any of its ops run (as etcd does).
struct TxnPath {
    succeeded: bool,
    nested: Vec<TxnPath>,
}

/// Where a key range ends.
#[derive(Clone, Copy)]
pub(crate) enum RangeEnd<'a> {
    /// Exactly one key.
    Single,
    /// All keys `>= key` (range_end `"\0"`).
    Unbounded,
    /// Keys `< end`.
    Before(&'a [u8]),
}

impl<'a> RangeEnd<'a> {
    pub(crate) fn of(range_end: &'a [u8]) -> Self {
        match range_end {
            [] => RangeEnd::Single,
            [0] => RangeEnd::Unbounded,
            end => RangeEnd::Before(end),
        }
    }

    pub(crate) fn contains(self, start: &[u8], key: &[u8]) -> bool {
        match self {
            RangeEnd::Single => key == start,
            RangeEnd::Unbounded => key >= start,
            RangeEnd::Before(end) => key >= start && key < end,
        }
    }
}

/// The physical part of a compaction still to do: dropping, key by key, the
/// changes a compaction at `target` made unreachable.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct PendingCompaction {
    /// The compacted revision (always the store's `compact_revision`).
    pub(crate) target: i64,
    /// The next key to visit: every key below it is compacted to `target`.
    pub(crate) cursor: Box<[u8]>,
}

/// The replicated key-value state machine. See the crate docs for how the
/// server drives it.
pub struct Store {
    pub(crate) config: Config,
    pub(crate) index: KeyIndex<KeyHistory>,
    pub(crate) revision: i64,
    pub(crate) compact_revision: i64,
    pub(crate) leases: BTreeMap<i64, Lease>,
    /// Raised alarms, by member then kind; never [`AlarmType::None`].
    pub(crate) alarms: BTreeSet<AlarmMember>,
    /// Users, roles and permissions, and whether auth is enabled.
    pub(crate) auth: AuthState,
    pub(crate) applied_index: u64,
    pub(crate) state_hash: u64,
    pub(crate) retained_bytes: u64,
    pub(crate) compaction: Option<PendingCompaction>,
}

impl Store {
    /// An empty store at revision 1.
    ///
    /// # Panics
    /// If `config` fails [`Config::validate`] (a configuration error, caught at startup).
    pub fn new(config: Config) -> Self {
        if let Err(reason) = config.validate() {
            panic!("invalid synod-kv config: {reason}");
        }
        Store {
            config,
            index: KeyIndex::default(),
            revision: 1,
            compact_revision: 0,
            leases: BTreeMap::new(),
            alarms: BTreeSet::new(),
            auth: AuthState::default(),
            applied_index: 0,
            state_hash: 0,
            retained_bytes: 0,
            compaction: None,
        }
    }

    /// The limits in force.
    pub fn config(&self) -> &Config {
        &self.config
    }

    /// The current store revision.
    pub fn revision(&self) -> i64 {
        self.revision
    }

    /// The revision of the last compaction (0 if none); reads below it fail.
    pub fn compact_revision(&self) -> i64 {
        self.compact_revision
    }

    /// How many log entries have been applied.
    pub fn applied_index(&self) -> u64 {
        self.applied_index
    }

    /// A hash chained over every applied entry's effects; replicas with the
    /// same applied index must report the same value.
    pub fn state_hash(&self) -> u64 {
        self.state_hash
    }

    /// `Maintenance.HashKV`: a CRC-32C (Castagnoli, as etcd's) of every key's
    /// changes that a read at some revision from `compact_revision` through
    /// `revision` can see, in key order: the change each key holds at the
    /// compacted revision, unless a compaction there drops it, and every later
    /// one up to `revision` (0: the current revision). Like etcd's, it depends
    /// only on the history, not on how far the physical part of a compaction
    /// has got, so members compare it at one revision whatever their own.
    /// Returns the hash and the compacted revision it started from.
    pub fn hash_kv(&self, revision: i64) -> Result<(u32, i64), KvError> {
        let revision = if revision <= 0 { self.revision } else { revision };
        if revision > self.revision {
            return Err(KvError::FutureRevision);
        }
        if revision < self.compact_revision {
            return Err(KvError::Compacted);
        }
        let mut crc = 0u32;
        for (key, history) in self.index.iter() {
            let dropped = history.compaction_drops(self.compact_revision);
            for change in history.changes().skip(dropped) {
                if change.mod_revision > revision {
                    break;
                }
                crc = crc32c::crc32c_append(crc, &(key.len() as u64).to_le_bytes());
                crc = crc32c::crc32c_append(crc, key);
                for number in [
                    change.mod_revision,
                    i64::from(change.sub),
                    change.create_revision,
                    change.version,
                    change.lease,
                ] {
                    crc = crc32c::crc32c_append(crc, &number.to_le_bytes());
                }
                match &change.value {
                    Some(value) => {
                        crc = crc32c::crc32c_append(crc, &[1]);
                        crc = crc32c::crc32c_append(crc, &(value.len() as u64).to_le_bytes());
                        crc = crc32c::crc32c_append(crc, value);
                    }
                    None => crc = crc32c::crc32c_append(crc, &[0]),
                }
            }
        }
        Ok((crc, self.compact_revision))
    }

    /// Key and value bytes retained over all revisions (what the quota
    /// counts). While a compaction's physical part is pending (see
    /// [`Store::pending_compaction`]) this still counts the changes it has yet
    /// to drop, so the quota may refuse a write for a few entries longer than
    /// the compaction alone would explain.
    pub fn retained_bytes(&self) -> u64 {
        self.retained_bytes
    }

    /// Number of keys with retained history (live or deleted but not
    /// compacted, or not yet visited by a pending compaction).
    pub fn indexed_keys(&self) -> usize {
        self.index.len()
    }

    /// The revision of a compaction whose physical part is still under way,
    /// if any.
    ///
    /// Applying a compaction (asked for, or automatic) only sets
    /// [`Store::compact_revision`]: reads and watches below it fail from that
    /// entry on. Dropping the changes it made unreachable then advances by at
    /// most [`Config::compaction_keys_per_entry_max`] keys, in key order, as
    /// part of applying that entry and each one after it, so every replica
    /// holds the same history at the same applied index and no single apply
    /// walks the whole store. Reads at or above the compacted revision give
    /// the same answers whether or not a key was visited yet. A new
    /// compaction while one is pending restarts the walk from the first key,
    /// towards the new revision.
    pub fn pending_compaction(&self) -> Option<i64> {
        self.compaction.as_ref().map(|pending| pending.target)
    }

    /// The auth state: users, roles, permissions, and whether auth is on.
    pub fn auth(&self) -> &AuthState {
        &self.auth
    }

    /// Whether `user` may run `request` (the request inside a
    /// [`Request::Client`]), as etcd's auth applier decides: always while auth
    /// is disabled; else a Put or DeleteRange needs write on its keys (and read
    /// with `prev_kv`), a Txn read on every key it compares or reads and write
    /// on every key it changes, a LeaseRevoke write on every key attached to
    /// the lease (or root), a Compaction or alarm change root, a LeaseGrant any
    /// user. Auth requests are checked when they are applied.
    pub fn authorize(&self, user: Option<&str>, request: &Request) -> Result<(), KvError> {
        let auth = &self.auth;
        if !auth.enabled() {
            return Ok(());
        }
        match request {
            Request::Put(put) => {
                auth.check_range(user, Access::Write, &put.key, &[])?;
                if put.prev_kv {
                    auth.check_range(user, Access::Read, &put.key, &[])?;
                }
                Ok(())
            }
            Request::DeleteRange(delete) => {
                auth.check_range(user, Access::Write, &delete.key, &delete.range_end)?;
                if delete.prev_kv {
                    auth.check_range(user, Access::Read, &delete.key, &delete.range_end)?;
                }
                Ok(())
            }
            Request::Txn(txn) => auth.check_txn(user, txn),
            Request::Compaction(_) | Request::Alarm(_) => auth.check_admin(user),
            Request::LeaseGrant(_) => auth.check_authenticated(user),
            Request::LeaseRevoke(revoke) => {
                if auth.check_admin(user).is_ok() {
                    return Ok(());
                }
                match self.leases.get(&revoke.id) {
                    Some(lease) => lease
                        .keys
                        .iter()
                        .try_for_each(|key| auth.check_range(user, Access::Write, key, &[])),
                    None => auth.check_authenticated(user),
                }
            }
            Request::Auth(_) => Ok(()),
            Request::Client { .. } => Err(KvError::Corrupt("a client envelope inside another")),
        }
    }

    /// A lease, if it exists.
    pub fn lease(&self, id: i64) -> Option<&Lease> {
        self.leases.get(&id)
    }

    /// All leases, by ID.
    pub fn leases(&self) -> impl Iterator<Item = (i64, &Lease)> {
        self.leases.iter().map(|(id, lease)| (*id, lease))
    }

    /// `Lease.LeaseLeases`.
    pub fn lease_leases(&self) -> LeaseLeasesResponse {
        LeaseLeasesResponse {
            header: ResponseHeader::at(self.revision),
            leases: self.leases.keys().copied().collect(),
        }
    }

    /// `Maintenance.Alarm` with action `GET`: the raised alarms of kind
    /// `alarm` (every kind for [`AlarmType::None`]), by member then kind.
    pub fn alarms(&self, alarm: AlarmType) -> AlarmResponse {
        AlarmResponse {
            header: ResponseHeader::at(self.revision),
            alarms: self
                .alarms
                .iter()
                .filter(|raised| alarm == AlarmType::None || raised.alarm == alarm)
                .copied()
                .collect(),
        }
    }

    /// Whether `alarm` is raised for `member_id` (no allocation: read on
    /// every client request by the consistency check's refusal).
    pub fn has_alarm(&self, member_id: u64, alarm: AlarmType) -> bool {
        self.alarms
            .iter()
            .any(|raised| raised.member_id == member_id && raised.alarm == alarm)
    }

    /// Stateless checks the server runs before proposing (so bad requests
    /// never reach the log), then the encoding to propose.
    pub fn prepare(&self, request: &Request) -> Result<Vec<u8>, KvError> {
        self.validate(request)?;
        let bytes = request.encode();
        if bytes.len() > self.config.request_bytes_max {
            return Err(KvError::RequestTooLarge);
        }
        Ok(bytes)
    }

    /// Applies one log entry as bytes. A malformed or oversized entry is
    /// applied as an error (every replica sees the same bytes, so the same error).
    /// Advances a pending compaction by one step ([`Store::compaction_step`]).
    pub fn apply_bytes(&mut self, entry: &[u8]) -> Applied {
        let applied = self.apply_bytes_deferring_compaction(entry);
        self.compaction_step();
        applied
    }

    /// [`Store::apply_bytes`] without the compaction step: for a host that
    /// applies the log in batches and calls [`Store::compaction_step`] once
    /// per batch instead, so that a batch of many entries right after a
    /// compaction costs one step, not one per entry. Every replica must follow
    /// the same rule (batches are part of the replicated log, so they can).
    pub fn apply_bytes_deferring_compaction(&mut self, entry: &[u8]) -> Applied {
        if entry.len() > self.config.request_bytes_max {
            return self.finish(Err(KvError::RequestTooLarge), None, None);
        }
        match Request::decode(entry) {
            Ok(request) => self.apply_deferring_compaction(&request),
            Err(error) => self.finish(Err(error), None, None),
        }
    }

    /// Applies one request. Deterministic: the same sequence of requests gives
    /// the same responses, events, revisions and state hash on every replica.
    /// Advances a pending compaction by one step ([`Store::compaction_step`]).
    pub fn apply(&mut self, request: &Request) -> Applied {
        let applied = self.apply_deferring_compaction(request);
        self.compaction_step();
        applied
    }

    fn apply_deferring_compaction(&mut self, request: &Request) -> Applied {
        if let Err(error) = self.validate(request) {
            return self.finish(Err(error), None, None);
        }
        // `None`: the server's own request, not checked; `Some(user)`: a client's.
        let (caller, request) = match request {
            Request::Client { user, request } => (Some(user.as_deref()), &**request),
            request => (None, request),
        };
        if let Some(user) = caller {
            if let Err(error) = self.authorize(user, request) {
                return self.finish(Err(error), None, None);
            }
        }
        let mut write = Write {
            revision: self.revision + 1,
            sub: 0,
            events: Vec::new(),
        };
        let mut lease_effect = None;
        let result = match request {
            Request::Put(put) => self.check_put(put).map(|()| Response::Put(self.put(&mut write, put))),
            Request::DeleteRange(delete) => Ok(Response::DeleteRange(self.delete_range(&mut write, delete))),
            Request::Txn(txn) => self
                .check_txn_quota(txn)
                .and_then(|()| self.txn(&mut write, txn))
                .map(Response::Txn),
            Request::Compaction(compaction) => self
                .compact(compaction.revision)
                .map(|()| Response::Compaction(CompactionResponse::default())),
            Request::LeaseGrant(grant) => self.lease_grant(grant).map(|response| {
                lease_effect = Some(LeaseEffect::Granted {
                    id: response.id,
                    ttl_seconds: response.ttl,
                });
                Response::LeaseGrant(response)
            }),
            Request::LeaseRevoke(revoke) => self.lease_revoke(&mut write, revoke.id).map(|()| {
                lease_effect = Some(LeaseEffect::Revoked { id: revoke.id });
                Response::LeaseRevoke(LeaseRevokeResponse::default())
            }),
            Request::Alarm(alarm) => self.alarm(alarm).map(Response::Alarm),
            Request::Auth(auth) => self.auth.apply(caller.flatten(), auth).map(Response::Auth),
            Request::Client { .. } => unreachable!("validate refuses a nested client envelope"),
        };
        assert!(result.is_ok() || !write.changed(), "a failed request changed the store");
        assert_eq!(write.events.len(), write.sub as usize, "one event per change");
        if write.changed() {
            // Every change of a request shares the next revision: the revision
            // only goes up, by one per request that changes a key.
            assert_eq!(write.revision, self.revision + 1);
            self.revision = write.revision;
            self.auto_compact();
        }
        self.finish(result, Some(write), lease_effect)
    }

    fn finish(
        &mut self,
        mut result: Result<Response, KvError>,
        write: Option<Write>,
        lease_effect: Option<LeaseEffect>,
    ) -> Applied {
        self.applied_index += 1;
        // Restore refuses a snapshot that breaks these, and compaction checks
        // its revision against both; so they hold after every entry.
        assert!(
            self.compact_revision <= self.revision,
            "compacted past the current revision"
        );
        assert!(
            self.compaction
                .as_ref()
                .is_none_or(|pending| pending.target == self.compact_revision),
            "a pending compaction is towards the compacted revision"
        );
        let events = write.map(|write| write.events).unwrap_or_default();
        if let Ok(response) = &mut result {
            set_header_revision(response, self.revision);
        }
        self.state_hash = crate::hash::chain(
            self.state_hash,
            self.applied_index,
            self.revision,
            self.compact_revision,
            &result,
            &events,
            lease_effect,
        );
        Applied {
            result,
            events,
            revision: self.revision,
            lease_effect,
        }
    }

    fn auto_compact(&mut self) {
        let retained = self.config.history_revisions_max;
        if retained > 0 && self.revision - self.compact_revision > retained {
            let target = self.revision - retained / 2;
            self.compact_unchecked(target);
        }
    }

    // ---------------------------------------------------------------- reads

    /// `KV.Range` at the current or an older revision.
    pub fn range(&self, request: &RangeRequest) -> Result<RangeResponse, KvError> {
        self.range_within(request, usize::MAX)
            .expect("a range allowed every key finishes")
    }

    /// `KV.Range`, unless it would look at more than `keys_visited_max` keys
    /// (those in its range with any retained history): then `None`, after
    /// looking at no more than that. A range costs time in proportion to the
    /// keys it looks at, whatever its `limit` (it counts them all), so a host
    /// answering under the store's lock on an async thread tries this first and
    /// on `None` runs [`crate::FrozenStore::range`] on a frozen copy elsewhere.
    pub fn range_within(
        &self,
        request: &RangeRequest,
        keys_visited_max: usize,
    ) -> Option<Result<RangeResponse, KvError>> {
        if request.key.is_empty() {
            return Some(Err(KvError::KeyNotProvided));
        }
        match self.read_revision(request.revision) {
            Ok(revision) => self
                .range_at(request, revision, self.revision, keys_visited_max)
                .map(Ok),
            Err(error) => Some(Err(error)),
        }
    }

    fn read_revision(&self, requested: i64) -> Result<i64, KvError> {
        if requested <= 0 {
            Ok(self.revision)
        } else if requested > self.revision {
            Err(KvError::FutureRevision)
        } else if requested < self.compact_revision {
            Err(KvError::Compacted)
        } else {
            Ok(requested)
        }
    }

    /// Keys in `[key, range_end)` with their histories, in key order.
    pub(crate) fn keys_in<'a>(
        &'a self,
        key: &'a [u8],
        range_end: &'a [u8],
    ) -> impl Iterator<Item = (&'a [u8], &'a KeyHistory)> + 'a {
        let end = RangeEnd::of(range_end);
        let single = match end {
            RangeEnd::Single => self.index.get(key).map(|history| (key, history)),
            _ => None,
        };
        let ranged = match end {
            RangeEnd::Single => None,
            RangeEnd::Unbounded => Some(self.index.range(key, None)),
            RangeEnd::Before(end) => Some(self.index.range(key, Some(end))),
        };
        single.into_iter().chain(ranged.into_iter().flatten())
    }

    fn range_at(
        &self,
        request: &RangeRequest,
        revision: i64,
        header: i64,
        keys_visited_max: usize,
    ) -> Option<RangeResponse> {
        let mut sort_order = request.sort_order;
        if request.sort_target != SortTarget::Key && sort_order == SortOrder::None {
            sort_order = SortOrder::Ascend;
        } else if request.sort_target == SortTarget::Key && sort_order == SortOrder::Ascend {
            sort_order = SortOrder::None;
        }
        let limit = match usize::try_from(request.limit) {
            Ok(limit) if limit > 0 => limit.min(self.config.range_keys_max),
            _ => self.config.range_keys_max,
        };
        let passes = |change: &Change| {
            (request.min_mod_revision == 0 || change.mod_revision >= request.min_mod_revision)
                && (request.max_mod_revision == 0 || change.mod_revision <= request.max_mod_revision)
                && (request.min_create_revision == 0 || change.create_revision >= request.min_create_revision)
                && (request.max_create_revision == 0 || change.create_revision <= request.max_create_revision)
        };
        let mut count: i64 = 0;
        let mut matches: Vec<(&[u8], &Change)> = Vec::new();
        for (visited, (key, history)) in self.keys_in(&request.key, &request.range_end).enumerate() {
            if visited == keys_visited_max {
                return None;
            }
            let Some(change) = history.at(revision).filter(|change| change.is_live()) else {
                continue;
            };
            count += 1;
            if request.count_only || !passes(change) {
                continue;
            }
            // Without a sort, key order is final: one past the limit tells `more`.
            if sort_order == SortOrder::None && matches.len() > limit {
                continue;
            }
            matches.push((key, change));
        }
        let order = |a: &(&[u8], &Change), b: &(&[u8], &Change)| match request.sort_target {
            SortTarget::Key => a.0.cmp(b.0),
            SortTarget::Version => a.1.version.cmp(&b.1.version),
            SortTarget::Create => a.1.create_revision.cmp(&b.1.create_revision),
            SortTarget::Mod => a.1.mod_revision.cmp(&b.1.mod_revision),
            SortTarget::Value => a.1.value.cmp(&b.1.value),
        };
        // Stable sorts on key-ordered input: ties stay in key order.
        match sort_order {
            SortOrder::None => {}
            SortOrder::Ascend => matches.sort_by(order),
            SortOrder::Descend => matches.sort_by(|a, b| order(b, a)),
        }
        let more = matches.len() > limit;
        matches.truncate(limit);
        Some(RangeResponse {
            header: ResponseHeader::at(header),
            kvs: matches
                .into_iter()
                .map(|(key, change)| change.key_value(key, !request.keys_only))
                .collect(),
            more,
            count,
        })
    }

    /// Whether a key exists now.
    fn is_live(&self, key: &[u8]) -> bool {
        self.index.get(key).is_some_and(|history| history.latest.is_live())
    }

    /// The live kv of a key now.
    pub(crate) fn get_live(&self, key: &[u8]) -> Option<KeyValue> {
        let history = self.index.get(key)?;
        history.live().map(|change| change.key_value(key, true))
    }

    // ----------------------------------------------------------- validation

    fn validate(&self, request: &Request) -> Result<(), KvError> {
        match request {
            Request::Put(put) => validate_put(put),
            Request::DeleteRange(delete) => non_empty(&delete.key),
            Request::Txn(txn) => {
                self.validate_txn(txn, 0)?;
                check_intervals(&txn.success)?;
                check_intervals(&txn.failure)?;
                Ok(())
            }
            Request::Compaction(_) | Request::LeaseGrant(_) | Request::LeaseRevoke(_) | Request::Alarm(_) => Ok(()),
            Request::Auth(auth) => AuthState::validate(auth),
            Request::Client { request, .. } => match **request {
                Request::Client { .. } => Err(KvError::Corrupt("a client envelope inside another")),
                ref request => self.validate(request),
            },
        }
    }

    fn validate_txn(&self, txn: &TxnRequest, depth: usize) -> Result<(), KvError> {
        let operations_max = self.config.txn_operations_max;
        if txn.compare.len() > operations_max
            || txn.success.len() > operations_max
            || txn.failure.len() > operations_max
            || depth >= TXN_DEPTH_MAX
        {
            return Err(KvError::TooManyOperations);
        }
        for compare in &txn.compare {
            non_empty(&compare.key)?;
        }
        for op in txn.success.iter().chain(&txn.failure) {
            match op {
                RequestOp::Range(range) => non_empty(&range.key)?,
                RequestOp::Put(put) => validate_put(put)?,
                RequestOp::DeleteRange(delete) => non_empty(&delete.key)?,
                RequestOp::Txn(nested) => self.validate_txn(nested, depth + 1)?,
            }
        }
        Ok(())
    }

    /// Whether puts, txns that put and lease grants are refused for space:
    /// above the store's hard quota, or while any member's NOSPACE alarm is
    /// raised (etcd's capped applier: the alarm, being replicated, refuses the
    /// same entries on every member until an operator disarms it, whatever
    /// each member's own quota flag says). Deletes and compactions go on.
    fn out_of_space(&self) -> bool {
        self.retained_bytes > self.config.database_bytes_max
            || self.alarms.iter().any(|raised| raised.alarm == AlarmType::Nospace)
    }

    /// State checks on a put before it runs (etcd's `checkRequestPut`).
    fn check_put(&self, put: &PutRequest) -> Result<(), KvError> {
        if self.out_of_space() {
            return Err(KvError::DatabaseSpaceExceeded);
        }
        self.check_put_state(put)
    }

    fn check_put_state(&self, put: &PutRequest) -> Result<(), KvError> {
        if (put.ignore_value || put.ignore_lease) && !self.is_live(&put.key) {
            return Err(KvError::KeyNotFound);
        }
        if !put.ignore_lease && put.lease != 0 && !self.leases.contains_key(&put.lease) {
            return Err(KvError::LeaseNotFound);
        }
        Ok(())
    }

    fn check_txn_quota(&self, txn: &TxnRequest) -> Result<(), KvError> {
        fn has_put(ops: &[RequestOp]) -> bool {
            ops.iter().any(|op| match op {
                RequestOp::Put(_) => true,
                RequestOp::Txn(nested) => has_put(&nested.success) || has_put(&nested.failure),
                _ => false,
            })
        }
        if self.out_of_space() && (has_put(&txn.success) || has_put(&txn.failure)) {
            return Err(KvError::DatabaseSpaceExceeded);
        }
        Ok(())
    }

    // --------------------------------------------------------------- writes

    fn put(&mut self, write: &mut Write, put: &PutRequest) -> PutResponse {
        // One index lookup: the key's history, if any, is updated in place.
        let history = self.index.get_mut(&put.key);
        let previous = history
            .as_deref()
            .and_then(KeyHistory::live)
            .map(|change| change.key_value(&put.key, true));
        let value: Box<[u8]> = match (&previous, put.ignore_value) {
            (Some(previous), true) => previous.value.as_slice().into(),
            _ => put.value.as_slice().into(),
        };
        let lease = match (&previous, put.ignore_lease) {
            (Some(previous), true) => previous.lease,
            _ => put.lease,
        };
        let (create_revision, version) = match &previous {
            Some(previous) => (previous.create_revision, previous.version + 1),
            None => (write.revision, 1),
        };
        let change = Change {
            mod_revision: write.revision,
            create_revision,
            version,
            lease,
            value: Some(value),
            sub: write.sub,
        };
        let event = Event {
            r#type: EventType::Put,
            kv: change.key_value(&put.key, true),
            prev_kv: previous.clone(),
        };
        let change_bytes = change.retained_bytes(put.key.len());
        match history {
            Some(history) => history.push(change),
            None => self.index.insert(&put.key, KeyHistory::new(change)),
        }
        write.sub += 1;
        self.retained_bytes += change_bytes;
        let previous_lease = previous.as_ref().map_or(0, |previous| previous.lease);
        if previous_lease != lease {
            self.detach(previous_lease, &put.key);
            if let Some(attached) = self.leases.get_mut(&lease) {
                attached.keys.insert(put.key.as_slice().into());
            }
        }
        write.events.push(event);
        PutResponse {
            header: ResponseHeader::default(),
            prev_kv: if put.prev_kv { previous } else { None },
        }
    }

    fn detach(&mut self, lease: i64, key: &[u8]) {
        if lease != 0 {
            if let Some(attached) = self.leases.get_mut(&lease) {
                attached.keys.remove(key);
            }
        }
    }

    fn delete_range(&mut self, write: &mut Write, delete: &DeleteRangeRequest) -> DeleteRangeResponse {
        let keys: Vec<Vec<u8>> = self
            .keys_in(&delete.key, &delete.range_end)
            .filter(|(_, history)| history.latest.is_live())
            .map(|(key, _)| key.to_vec())
            .collect();
        let mut prev_kvs = Vec::new();
        for key in &keys {
            let previous = self.delete_key(write, key);
            if delete.prev_kv {
                prev_kvs.push(previous);
            }
        }
        DeleteRangeResponse {
            header: ResponseHeader::default(),
            deleted: keys.len() as i64,
            prev_kvs,
        }
    }

    /// Deletes one live key at the write's revision; returns its previous kv.
    fn delete_key(&mut self, write: &mut Write, key: &[u8]) -> KeyValue {
        let history = self.index.get_mut(key).expect("deleting an indexed key");
        let previous = history.live().expect("deleting a live key").key_value(key, true);
        history.push(Change {
            mod_revision: write.revision,
            create_revision: 0,
            version: 0,
            lease: 0,
            value: None,
            sub: write.sub,
        });
        write.sub += 1;
        self.retained_bytes += key.len() as u64;
        self.detach(previous.lease, key);
        write.events.push(Event {
            r#type: EventType::Delete,
            kv: KeyValue {
                key: key.to_vec(),
                mod_revision: write.revision,
                ..KeyValue::default()
            },
            prev_kv: Some(previous.clone()),
        });
        previous
    }

    fn txn(&mut self, write: &mut Write, txn: &TxnRequest) -> Result<TxnResponse, KvError> {
        let path = self.txn_path(txn);
        self.check_txn_ops(txn, &path)?;
        Ok(self.run_txn(write, txn, &path))
    }

    fn txn_path(&self, txn: &TxnRequest) -> TxnPath {
        let succeeded = txn.compare.iter().all(|compare| self.compare_holds(compare));
        let branch = if succeeded { &txn.success } else { &txn.failure };
        let nested = branch
            .iter()
            .filter_map(|op| match op {
                RequestOp::Txn(nested) => Some(self.txn_path(nested)),
                _ => None,
            })
            .collect();
        TxnPath { succeeded, nested }
    }

    fn check_txn_ops(&self, txn: &TxnRequest, path: &TxnPath) -> Result<(), KvError> {
        let branch = if path.succeeded { &txn.success } else { &txn.failure };
        let mut nested_paths = path.nested.iter();
        for op in branch {
            match op {
                RequestOp::Range(range) => {
                    self.read_revision(range.revision)?;
                }
                RequestOp::Put(put) => self.check_put_state(put)?,
                RequestOp::DeleteRange(_) => {}
                RequestOp::Txn(nested) => {
                    let nested_path = nested_paths.next().expect("one path per nested txn");
                    self.check_txn_ops(nested, nested_path)?;
                }
            }
        }
        Ok(())
    }

    fn run_txn(&mut self, write: &mut Write, txn: &TxnRequest, path: &TxnPath) -> TxnResponse {
        let branch = if path.succeeded { &txn.success } else { &txn.failure };
        let mut nested_paths = path.nested.iter();
        let mut responses = Vec::with_capacity(branch.len());
        for op in branch {
            responses.push(match op {
                RequestOp::Range(range) => {
                    let revision = if range.revision > 0 {
                        range.revision
                    } else {
                        write.read_revision()
                    };
                    let response = self.range_at(range, revision, 0, usize::MAX);
                    ResponseOp::Range(response.expect("a range allowed every key finishes"))
                }
                RequestOp::Put(put) => ResponseOp::Put(self.put(write, put)),
                RequestOp::DeleteRange(delete) => ResponseOp::DeleteRange(self.delete_range(write, delete)),
                RequestOp::Txn(nested) => {
                    let nested_path = nested_paths.next().expect("one path per nested txn");
                    ResponseOp::Txn(self.run_txn(write, nested, nested_path))
                }
            });
        }
        TxnResponse {
            header: ResponseHeader::default(),
            succeeded: path.succeeded,
            responses,
        }
    }

    /// Whether a Txn compare holds now (for every key of its range).
    pub(crate) fn compare_holds(&self, compare: &Compare) -> bool {
        let mut any = false;
        for (_, history) in self.keys_in(&compare.key, &compare.range_end) {
            let Some(change) = history.live() else {
                continue;
            };
            any = true;
            if !compare_change(compare, Some(change)) {
                return false;
            }
        }
        if !any {
            // A value compare on a missing key always fails (etcd).
            return compare.target != CompareTarget::Value && compare_change(compare, None);
        }
        true
    }

    // ------------------------------------------------------------- compaction

    fn compact(&mut self, revision: i64) -> Result<(), KvError> {
        if revision <= self.compact_revision {
            return Err(KvError::Compacted);
        }
        if revision > self.revision {
            return Err(KvError::FutureRevision);
        }
        self.compact_unchecked(revision);
        Ok(())
    }

    /// The logical part of a compaction: reads below `revision` fail from
    /// now on; the physical part is left to [`Store::compaction_step`].
    fn compact_unchecked(&mut self, revision: i64) {
        assert!(revision > self.compact_revision && revision <= self.revision);
        self.compact_revision = revision;
        // Keys already visited by a pending compaction were compacted only to
        // its older revision: start again from the first key.
        self.compaction = Some(PendingCompaction {
            target: revision,
            cursor: Box::default(),
        });
    }

    /// Advances the pending compaction, if any, by at most
    /// `compaction_keys_per_entry_max` keys. [`Store::apply`] and
    /// [`Store::apply_bytes`] run it once per entry; a host applying with
    /// [`Store::apply_bytes_deferring_compaction`] runs it once per batch.
    pub fn compaction_step(&mut self) {
        let Some(pending) = self.compaction.take() else {
            return;
        };
        let revision = pending.target;
        let mut freed = 0;
        // Chunks with nothing to compact stay untouched (and shared with a
        // frozen copy, if one exists).
        let next = self.index.retain_from(
            &pending.cursor,
            self.config.compaction_keys_per_entry_max,
            |_, history| history.compaction_drops(revision) > 0,
            |key, history| {
                let (bytes, keep) = history.compact(revision, key.len());
                freed += bytes;
                keep
            },
        );
        assert!(freed <= self.retained_bytes);
        self.retained_bytes -= freed;
        self.compaction = next.map(|cursor| PendingCompaction {
            target: revision,
            cursor,
        });
    }

    // ----------------------------------------------------------------- leases

    fn lease_grant(&mut self, grant: &LeaseGrantRequest) -> Result<LeaseGrantResponse, KvError> {
        if grant.ttl > LEASE_TTL_SECONDS_MAX {
            return Err(KvError::LeaseTtlTooLarge);
        }
        if self.out_of_space() {
            return Err(KvError::DatabaseSpaceExceeded);
        }
        let id = if grant.id == 0 {
            self.choose_lease_id()
        } else {
            grant.id
        };
        if self.leases.contains_key(&id) {
            return Err(KvError::LeaseExists);
        }
        let ttl_seconds = grant.ttl.max(self.config.lease_ttl_seconds_min);
        self.leases.insert(
            id,
            Lease {
                ttl_seconds,
                keys: BTreeSet::new(),
            },
        );
        Ok(LeaseGrantResponse {
            header: ResponseHeader::default(),
            id,
            ttl: ttl_seconds,
            error: String::new(),
        })
    }

    /// A positive, non-zero ID derived from the applied index, so every
    /// replica picks the same one.
    fn choose_lease_id(&self) -> i64 {
        let mut candidate = crate::hash::mix64(self.applied_index + 1) & (i64::MAX as u64);
        loop {
            let id = candidate as i64;
            if id != 0 && !self.leases.contains_key(&id) {
                return id;
            }
            candidate = (candidate + 1) & (i64::MAX as u64);
        }
    }

    fn lease_revoke(&mut self, write: &mut Write, id: i64) -> Result<(), KvError> {
        let lease = self.leases.remove(&id).ok_or(KvError::LeaseNotFound)?;
        for key in &lease.keys {
            self.delete_key(write, key);
        }
        Ok(())
    }

    // ----------------------------------------------------------------- alarms

    /// Raises or clears one alarm (etcd's `AlarmStore`): an activation
    /// answers the alarm whether it is new or was raised before, a
    /// deactivation the alarm it cleared, if any. Neither changes the
    /// revision. Activating [`AlarmType::None`] does nothing.
    fn alarm(&mut self, request: &AlarmRequest) -> Result<AlarmResponse, KvError> {
        let member = AlarmMember {
            member_id: request.member_id,
            alarm: request.alarm,
        };
        let mut response = AlarmResponse::default();
        match request.action {
            AlarmAction::Activate if member.alarm == AlarmType::None => {}
            AlarmAction::Activate => {
                if !self.alarms.contains(&member) && self.alarms.len() >= ALARMS_MAX {
                    return Err(KvError::TooManyAlarms);
                }
                self.alarms.insert(member);
                response.alarms.push(member);
            }
            AlarmAction::Deactivate => {
                if self.alarms.remove(&member) {
                    response.alarms.push(member);
                }
            }
        }
        Ok(response)
    }

    // ------------------------------------------------------------- watch support

    /// Events in `[key, range_end)` from `start_revision` on, in revision order,
    /// for a watcher catching up from history. At most about `events_max`
    /// events, but whole revisions only (at least one). Returns the events and
    /// the next revision to read from.
    ///
    /// Memory is bounded by the events returned, not by the history since
    /// `start_revision`: a first pass finds the revision of the
    /// `events_max`-th oldest event with a heap of `events_max` revisions, a
    /// second collects the events up to it.
    pub(crate) fn history_events(
        &self,
        key: &[u8],
        range_end: &[u8],
        start_revision: i64,
        events_max: usize,
    ) -> Result<(Vec<Event>, i64), KvError> {
        if start_revision < self.compact_revision {
            return Err(KvError::Compacted);
        }
        let events_max = events_max.max(1);
        // Revisions of a key's changes increase, so its changes at or after
        // `start_revision` are a suffix of its history.
        let mut oldest: BinaryHeap<i64> = BinaryHeap::with_capacity(events_max + 1);
        for (_, history) in self.keys_in(key, range_end) {
            for change in history.changes().rev() {
                if change.mod_revision < start_revision {
                    break;
                }
                if oldest.len() < events_max {
                    oldest.push(change.mod_revision);
                } else if oldest.peek().is_some_and(|newest| change.mod_revision < *newest) {
                    oldest.pop();
                    oldest.push(change.mod_revision);
                }
            }
        }
        // The last revision returned: every event of it goes, so a revision is
        // never split between two calls.
        let cut_revision = if oldest.len() < events_max {
            i64::MAX
        } else {
            oldest.peek().copied().unwrap_or(i64::MAX)
        };
        let mut next_revision = self.revision + 1;
        let mut found: Vec<(&Change, &[u8], Option<&Change>)> = Vec::new();
        for (key, history) in self.keys_in(key, range_end) {
            let mut previous: Option<&Change> = None;
            for change in history.changes() {
                if change.mod_revision > cut_revision {
                    next_revision = next_revision.min(change.mod_revision);
                    break;
                }
                if change.mod_revision >= start_revision {
                    found.push((change, key, previous));
                }
                previous = Some(change);
            }
        }
        found.sort_unstable_by_key(|(change, _, _)| (change.mod_revision, change.sub));
        let events = found
            .iter()
            .map(|(change, key, previous)| {
                let prev_kv = previous
                    .filter(|previous| previous.is_live())
                    .map(|previous| previous.key_value(key, true));
                if change.is_live() {
                    Event {
                        r#type: EventType::Put,
                        kv: change.key_value(key, true),
                        prev_kv,
                    }
                } else {
                    Event {
                        r#type: EventType::Delete,
                        kv: KeyValue {
                            key: key.to_vec(),
                            mod_revision: change.mod_revision,
                            ..KeyValue::default()
                        },
                        prev_kv,
                    }
                }
            })
            .collect();
        Ok((events, next_revision))
    }
}

fn non_empty(key: &[u8]) -> Result<(), KvError> {
    if key.is_empty() {
        Err(KvError::KeyNotProvided)
    } else {
        Ok(())
    }
}

fn validate_put(put: &PutRequest) -> Result<(), KvError> {
    non_empty(&put.key)?;
    if put.ignore_value && !put.value.is_empty() {
        return Err(KvError::ValueProvided);
    }
    if put.ignore_lease && put.lease != 0 {
        return Err(KvError::LeaseProvided);
    }
    Ok(())
}

fn compare_change(compare: &Compare, change: Option<&Change>) -> bool {
    use std::cmp::Ordering;
    let operand_number = |expected: fn(&TargetUnion) -> Option<i64>| expected(&compare.target_union).unwrap_or(0);
    let ordering = match compare.target {
        CompareTarget::Version => change
            .map_or(0, |change| change.version)
            .cmp(&operand_number(|union| match union {
                TargetUnion::Version(value) => Some(*value),
                _ => None,
            })),
        CompareTarget::Create => change
            .map_or(0, |change| change.create_revision)
            .cmp(&operand_number(|union| match union {
                TargetUnion::CreateRevision(value) => Some(*value),
                _ => None,
            })),
        CompareTarget::Mod => {
            change
                .map_or(0, |change| change.mod_revision)
                .cmp(&operand_number(|union| match union {
                    TargetUnion::ModRevision(value) => Some(*value),
                    _ => None,
                }))
        }
        CompareTarget::Lease => change
            .map_or(0, |change| change.lease)
            .cmp(&operand_number(|union| match union {
                TargetUnion::Lease(value) => Some(*value),
                _ => None,
            })),
        CompareTarget::Value => {
            let operand: &[u8] = match &compare.target_union {
                TargetUnion::Value(value) => value,
                _ => &[],
            };
            let value: &[u8] = change.and_then(|change| change.value.as_deref()).unwrap_or(&[]);
            value.cmp(operand)
        }
    };
    match compare.result {
        CompareResult::Equal => ordering == Ordering::Equal,
        CompareResult::Greater => ordering == Ordering::Greater,
        CompareResult::Less => ordering == Ordering::Less,
        CompareResult::NotEqual => ordering != Ordering::Equal,
    }
}

/// A written interval for duplicate detection: `[start, end)`, `end = None` unbounded.
struct Interval<'a> {
    start: &'a [u8],
    end: RangeEnd<'a>,
}

impl Interval<'_> {
    fn contains(&self, key: &[u8]) -> bool {
        self.end.contains(self.start, key)
    }
}

/// etcd's `checkIntervals`: within one branch (and its nested Txns), a key may
/// not be put twice nor put inside a deleted range, in either order. A put in
/// a nested Txn's success branch may repeat one in its failure branch (only
/// one runs). Overlapping deletes are allowed, as in etcd (the later finds
/// nothing). Put-then-nested-delete of one key is also rejected (see below),
/// so that a key changes at most once per revision.
fn check_intervals(ops: &[RequestOp]) -> Result<(BTreeSet<&[u8]>, Vec<Interval<'_>>), KvError> {
    let mut deletes: Vec<Interval<'_>> = ops
        .iter()
        .filter_map(|op| match op {
            RequestOp::DeleteRange(delete) => Some(Interval {
                start: &delete.key,
                end: RangeEnd::of(&delete.range_end),
            }),
            _ => None,
        })
        .collect();
    let mut puts: BTreeSet<&[u8]> = BTreeSet::new();
    let deleted = |deletes: &[Interval<'_>], key: &[u8]| deletes.iter().any(|d| d.contains(key));
    for op in ops {
        let RequestOp::Txn(nested) = op else {
            continue;
        };
        let (puts_success, deletes_success) = check_intervals(&nested.success)?;
        let (puts_failure, deletes_failure) = check_intervals(&nested.failure)?;
        // Stricter than etcd: a nested delete may not cover a key put earlier
        // in the branch (etcd accepts it and records both changes at one
        // revision; here a key changes at most once per revision).
        for delete in deletes_success.iter().chain(&deletes_failure) {
            if puts.iter().any(|key| delete.contains(key)) {
                return Err(KvError::DuplicateKey);
            }
        }
        for key in &puts_success {
            if puts.contains(key) || deleted(&deletes, key) {
                return Err(KvError::DuplicateKey);
            }
            puts.insert(key);
        }
        for key in &puts_failure {
            if (puts.contains(key) && !puts_success.contains(key)) || deleted(&deletes, key) {
                return Err(KvError::DuplicateKey);
            }
            puts.insert(key);
        }
        deletes.extend(deletes_success);
        deletes.extend(deletes_failure);
    }
    for op in ops {
        let RequestOp::Put(put) = op else {
            continue;
        };
        if puts.contains(put.key.as_slice()) || deleted(&deletes, &put.key) {
            return Err(KvError::DuplicateKey);
        }
        puts.insert(&put.key);
    }
    Ok((puts, deletes))
}

fn set_header_revision(response: &mut Response, revision: i64) {
    fn set_ops(responses: &mut [ResponseOp], revision: i64) {
        for response in responses {
            match response {
                ResponseOp::Range(range) => range.header.revision = revision,
                ResponseOp::Put(put) => put.header.revision = revision,
                ResponseOp::DeleteRange(delete) => delete.header.revision = revision,
                ResponseOp::Txn(txn) => {
                    txn.header.revision = revision;
                    set_ops(&mut txn.responses, revision);
                }
            }
        }
    }
    match response {
        Response::Put(put) => put.header.revision = revision,
        Response::DeleteRange(delete) => delete.header.revision = revision,
        Response::Txn(txn) => {
            txn.header.revision = revision;
            set_ops(&mut txn.responses, revision);
        }
        Response::Compaction(compaction) => compaction.header.revision = revision,
        Response::LeaseGrant(grant) => grant.header.revision = revision,
        Response::LeaseRevoke(revoke) => revoke.header.revision = revision,
        Response::Alarm(alarm) => alarm.header.revision = revision,
        Response::Auth(auth) => auth.header.revision = revision,
    }
}
