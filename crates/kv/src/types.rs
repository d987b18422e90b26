//! Request and response structs mirroring etcd's `etcdserverpb` and `mvccpb`
//! messages field for field, so the server maps gRPC messages onto them 1:1.
//! Field names are the ones `prost` generates (`TTL` becomes `ttl`, `ID` becomes `id`).

/// `mvccpb.KeyValue`.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct KeyValue {
    /// The key.
    pub key: Vec<u8>,
    /// Revision of the put that last created the key.
    pub create_revision: i64,
    /// Revision of the last change to the key.
    pub mod_revision: i64,
    /// 1 at creation, +1 on each put, reset by delete.
    pub version: i64,
    /// The value (empty when `keys_only`).
    pub value: Vec<u8>,
    /// Attached lease ID, 0 for none.
    pub lease: i64,
}

/// `mvccpb.Event.EventType`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum EventType {
    /// A put created or changed the key.
    Put,
    /// A delete (or lease revoke/expiry) removed the key.
    Delete,
}

/// `mvccpb.Event`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Event {
    /// PUT or DELETE.
    pub r#type: EventType,
    /// The key after the change; for DELETE only `key` and `mod_revision` (the
    /// deleting revision) are set, as in etcd.
    pub kv: KeyValue,
    /// The key before the change, when the watcher asked for it and it is retained.
    pub prev_kv: Option<KeyValue>,
}

/// `etcdserverpb.ResponseHeader`. The store fills `revision`; the server fills
/// the identity fields.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ResponseHeader {
    /// Cluster identity (set by the server).
    pub cluster_id: u64,
    /// Member identity (set by the server).
    pub member_id: u64,
    /// Store revision when the request was applied or read.
    pub revision: i64,
    /// Paxos epoch (set by the server).
    pub raft_term: u64,
}

impl ResponseHeader {
    pub(crate) fn at(revision: i64) -> Self {
        ResponseHeader {
            revision,
            ..ResponseHeader::default()
        }
    }
}

/// `RangeRequest.SortOrder`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum SortOrder {
    /// Key order, ascending (the natural order).
    #[default]
    None,
    /// Ascending by the sort target.
    Ascend,
    /// Descending by the sort target.
    Descend,
}

/// `RangeRequest.SortTarget`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum SortTarget {
    /// By key.
    #[default]
    Key,
    /// By version.
    Version,
    /// By create_revision.
    Create,
    /// By mod_revision.
    Mod,
    /// By value bytes.
    Value,
}

/// `etcdserverpb.RangeRequest`.
///
/// Range conventions: empty `range_end` reads one key; `range_end = "\0"`
/// reads every key `>= key`; `range_end = key + 1` (last byte incremented)
/// reads a prefix; key `"\0"` with `range_end` `"\0"` reads everything.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct RangeRequest {
    /// First key (or the only key).
    pub key: Vec<u8>,
    /// End of the range, exclusive.
    pub range_end: Vec<u8>,
    /// At most this many kvs; 0 = the store's `range_keys_max`.
    pub limit: i64,
    /// Read at this revision; 0 or less = current.
    pub revision: i64,
    /// Sort order. Sorting is stable over key order, so ties stay in key order.
    pub sort_order: SortOrder,
    /// Sort target.
    pub sort_target: SortTarget,
    /// Local read allowed (a server concern, ignored by the store).
    pub serializable: bool,
    /// Omit values.
    pub keys_only: bool,
    /// Return only the count.
    pub count_only: bool,
    /// Drop kvs with mod_revision below this (0 = no bound).
    pub min_mod_revision: i64,
    /// Drop kvs with mod_revision above this (0 = no bound).
    pub max_mod_revision: i64,
    /// Drop kvs with create_revision below this (0 = no bound).
    pub min_create_revision: i64,
    /// Drop kvs with create_revision above this (0 = no bound).
    pub max_create_revision: i64,
}

/// `etcdserverpb.RangeResponse`.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct RangeResponse {
    /// Header; `revision` is the current store revision, as in etcd.
    pub header: ResponseHeader,
    /// Matching kvs after filters, sort and limit.
    pub kvs: Vec<KeyValue>,
    /// More kvs matched than were returned.
    pub more: bool,
    /// Number of keys in the range at the read revision (ignores limit and filters).
    pub count: i64,
}

/// `etcdserverpb.PutRequest`.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct PutRequest {
    /// Key.
    pub key: Vec<u8>,
    /// Value.
    pub value: Vec<u8>,
    /// Lease to attach, 0 for none.
    pub lease: i64,
    /// Return the previous kv.
    pub prev_kv: bool,
    /// Keep the current value (key must exist).
    pub ignore_value: bool,
    /// Keep the current lease (key must exist).
    pub ignore_lease: bool,
}

/// `etcdserverpb.PutResponse`.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct PutResponse {
    /// Header.
    pub header: ResponseHeader,
    /// The kv before the put, if asked for and it existed.
    pub prev_kv: Option<KeyValue>,
}

/// `etcdserverpb.DeleteRangeRequest`.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct DeleteRangeRequest {
    /// First key (or the only key).
    pub key: Vec<u8>,
    /// End of the range, exclusive (same conventions as [`RangeRequest`]).
    pub range_end: Vec<u8>,
    /// Return the deleted kvs.
    pub prev_kv: bool,
}

/// `etcdserverpb.DeleteRangeResponse`.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct DeleteRangeResponse {
    /// Header.
    pub header: ResponseHeader,
    /// Number of keys deleted.
    pub deleted: i64,
    /// The deleted kvs, if asked for.
    pub prev_kvs: Vec<KeyValue>,
}

/// `Compare.CompareResult`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum CompareResult {
    /// `==`
    #[default]
    Equal,
    /// `>`
    Greater,
    /// `<`
    Less,
    /// `!=`
    NotEqual,
}

/// `Compare.CompareTarget`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum CompareTarget {
    /// The key's version.
    #[default]
    Version,
    /// The key's create_revision.
    Create,
    /// The key's mod_revision.
    Mod,
    /// The key's value.
    Value,
    /// The key's lease.
    Lease,
}

/// `Compare.target_union`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum TargetUnion {
    /// Compare against a version.
    Version(i64),
    /// Compare against a create_revision.
    CreateRevision(i64),
    /// Compare against a mod_revision.
    ModRevision(i64),
    /// Compare against a value.
    Value(Vec<u8>),
    /// Compare against a lease ID.
    Lease(i64),
}

impl Default for TargetUnion {
    fn default() -> Self {
        TargetUnion::Version(0)
    }
}

/// `etcdserverpb.Compare`. With a `range_end`, the compare holds only if it
/// holds for every key in the range; a missing key compares as all-zero
/// fields, except that a VALUE compare on a missing key always fails (etcd).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Compare {
    /// The relation.
    pub result: CompareResult,
    /// Which field to compare.
    pub target: CompareTarget,
    /// Key.
    pub key: Vec<u8>,
    /// The operand; a variant that does not match `target` reads as zero/empty, as in proto3.
    pub target_union: TargetUnion,
    /// End of the range, exclusive (same conventions as [`RangeRequest`]).
    pub range_end: Vec<u8>,
}

/// `etcdserverpb.RequestOp`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum RequestOp {
    /// A read.
    Range(RangeRequest),
    /// A put.
    Put(PutRequest),
    /// A delete.
    DeleteRange(DeleteRangeRequest),
    /// A nested transaction.
    Txn(TxnRequest),
}

/// `etcdserverpb.ResponseOp`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ResponseOp {
    /// A read's result.
    Range(RangeResponse),
    /// A put's result.
    Put(PutResponse),
    /// A delete's result.
    DeleteRange(DeleteRangeResponse),
    /// A nested transaction's result.
    Txn(TxnResponse),
}

/// `etcdserverpb.TxnRequest`.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct TxnRequest {
    /// All must hold for `success` to run.
    pub compare: Vec<Compare>,
    /// Run in order when every compare holds.
    pub success: Vec<RequestOp>,
    /// Run in order otherwise.
    pub failure: Vec<RequestOp>,
}

/// `etcdserverpb.TxnResponse`.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct TxnResponse {
    /// Header.
    pub header: ResponseHeader,
    /// Whether the compares held.
    pub succeeded: bool,
    /// One response per op of the branch that ran.
    pub responses: Vec<ResponseOp>,
}

/// `etcdserverpb.CompactionRequest`.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct CompactionRequest {
    /// Discard history below this revision.
    pub revision: i64,
    /// Wait for the physical compaction (etcd). Ignored: the response comes
    /// once the compaction is applied, when reads below it already fail; the
    /// history it frees goes over the following entries (see
    /// [`crate::Store::pending_compaction`]).
    pub physical: bool,
}

/// `etcdserverpb.CompactionResponse`.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct CompactionResponse {
    /// Header.
    pub header: ResponseHeader,
}

/// `etcdserverpb.LeaseGrantRequest`.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct LeaseGrantRequest {
    /// Requested time to live in seconds (raised to the configured minimum).
    pub ttl: i64,
    /// Requested ID; 0 = the store picks one.
    pub id: i64,
}

/// `etcdserverpb.LeaseGrantResponse`.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct LeaseGrantResponse {
    /// Header.
    pub header: ResponseHeader,
    /// The granted lease's ID.
    pub id: i64,
    /// The granted TTL in seconds.
    pub ttl: i64,
    /// Unused by etcd v3 (errors are gRPC statuses).
    pub error: String,
}

/// `etcdserverpb.LeaseRevokeRequest`; also what the master proposes when a lease expires.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct LeaseRevokeRequest {
    /// Lease to revoke.
    pub id: i64,
}

/// `etcdserverpb.LeaseRevokeResponse`.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct LeaseRevokeResponse {
    /// Header.
    pub header: ResponseHeader,
}

/// `etcdserverpb.LeaseKeepAliveResponse`.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct LeaseKeepAliveResponse {
    /// Header.
    pub header: ResponseHeader,
    /// The lease.
    pub id: i64,
    /// The renewed TTL in seconds; 0 when the lease does not exist (etcd).
    pub ttl: i64,
}

/// `etcdserverpb.LeaseTimeToLiveResponse`.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct LeaseTimeToLiveResponse {
    /// Header.
    pub header: ResponseHeader,
    /// The lease.
    pub id: i64,
    /// Remaining seconds; -1 when the lease does not exist (etcd).
    pub ttl: i64,
    /// TTL given at grant.
    pub granted_ttl: i64,
    /// Attached keys, when asked for, in key order.
    pub keys: Vec<Vec<u8>>,
}

/// `etcdserverpb.LeaseLeasesResponse`.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct LeaseLeasesResponse {
    /// Header.
    pub header: ResponseHeader,
    /// IDs of all leases, ascending.
    pub leases: Vec<i64>,
}

/// `WatchCreateRequest.FilterType`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum WatchFilter {
    /// Drop PUT events.
    NoPut,
    /// Drop DELETE events.
    NoDelete,
}

/// `etcdserverpb.WatchCreateRequest`.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct WatchCreateRequest {
    /// First key (or the only key).
    pub key: Vec<u8>,
    /// End of the range, exclusive (same conventions as [`RangeRequest`]).
    pub range_end: Vec<u8>,
    /// First revision to deliver; 0 = the next revision.
    pub start_revision: i64,
    /// Ask for periodic progress notifications.
    pub progress_notify: bool,
    /// Event types to drop.
    pub filters: Vec<WatchFilter>,
    /// Attach the previous kv to each event.
    pub prev_kv: bool,
    /// Requested ID; 0 = the hub assigns one.
    pub watch_id: i64,
    /// Fragmenting large responses (a server concern).
    pub fragment: bool,
}

/// `etcdserverpb.WatchResponse`.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct WatchResponse {
    /// Header; `revision` is the revision the watcher has seen up to.
    pub header: ResponseHeader,
    /// The watch this response belongs to.
    pub watch_id: i64,
    /// Reply to a create.
    pub created: bool,
    /// The watch is cancelled.
    pub canceled: bool,
    /// Set when cancelled because its start is compacted.
    pub compact_revision: i64,
    /// Why it was cancelled.
    pub cancel_reason: String,
    /// More fragments follow (never set: responses are never split).
    pub fragment: bool,
    /// Events, ordered by revision; one revision is never split across responses.
    pub events: Vec<Event>,
}

/// `etcdserverpb.AlarmType`: what a member raised. `None` is never stored; in
/// a query it means every kind.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum AlarmType {
    /// No alarm; in [`crate::Store::alarms`], every kind.
    #[default]
    None,
    /// The member's space quota is exhausted.
    Nospace,
    /// The member found its state corrupt.
    Corrupt,
}

/// `etcdserverpb.AlarmMember`: one alarm raised on one member.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct AlarmMember {
    /// The member the alarm is raised on.
    pub member_id: u64,
    /// What was raised.
    pub alarm: AlarmType,
}

/// What an alarm request through the log does (`GET` is a read:
/// [`crate::Store::alarms`]).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum AlarmAction {
    /// Raise the alarm on the member; raising `None` does nothing.
    #[default]
    Activate,
    /// Clear the alarm on the member, if it is raised.
    Deactivate,
}

/// `etcdserverpb.AlarmRequest` with action `ACTIVATE` or `DEACTIVATE`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct AlarmRequest {
    /// Raise or clear.
    pub action: AlarmAction,
    /// The member the alarm is about.
    pub member_id: u64,
    /// The alarm.
    pub alarm: AlarmType,
}

/// `etcdserverpb.AlarmResponse`.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct AlarmResponse {
    /// Header.
    pub header: ResponseHeader,
    /// For an activation, the alarm (raised now or before); for a
    /// deactivation, the alarm cleared, if it was raised; for a query, every
    /// matching alarm, by member then kind.
    pub alarms: Vec<AlarmMember>,
}
