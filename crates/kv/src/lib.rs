//! synod-kv: the database layer of the Paxos Made Live stack
//! (log → **database** → lock service), with etcd v3's data model.
//!
//! The [`Store`] is a deterministic state machine applied from the committed
//! Paxos log. It does no I/O, reads no clock, starts no thread and draws no
//! random number: the same log gives the same responses, revisions, events,
//! snapshots and [`Store::state_hash`] on every replica.
//!
//! # How the server drives it
//!
//! * **Writes** (Put, DeleteRange, Txn, Compact, LeaseGrant, LeaseRevoke,
//!   Alarm ACTIVATE and DEACTIVATE):
//!   build a [`Request`], call [`Store::prepare`] (stateless checks and the
//!   size limit, then the bytes to propose), propose the bytes, and on every
//!   replica apply each chosen entry with [`Store::apply_bytes`]. The
//!   [`Applied`] result holds the response (or the etcd error to return), the
//!   events, and any lease change.
//! * **Reads**: [`Store::range`] directly (after a read barrier or under the
//!   master lease for linearizable reads).
//! * **Watches**: one [`WatchHub`] per client watch stream; hand every
//!   [`Applied`] to [`WatchHub::observe`] (in apply order) and send what
//!   [`WatchHub::poll`] returns; poll again while [`WatchHub::catching_up`].
//!   `WatchProgressRequest` is [`WatchHub::request_progress`]; the periodic
//!   progress timer calls [`WatchHub::progress_notify`].
//! * **Lease expiry**: the master keeps a [`Lessor`]: `promote` on becoming
//!   master (every lease gets its full TTL again), `demote` on losing it,
//!   `observe` every [`Applied`], [`Lessor::keep_alive_response`] for the
//!   keep-alive stream, [`Lessor::time_to_live`] for `LeaseTimeToLive`, and on
//!   a timer propose a [`Request::LeaseRevoke`] for each ID
//!   [`Lessor::expired`] lists. Expiry thus goes through the log and every
//!   replica deletes the same keys at the same revision. `LeaseLeases` is
//!   [`Store::lease_leases`].
//! * **Alarms**: raised and cleared per member through the log
//!   ([`Request::Alarm`]), kept in the state and its snapshots, listed by
//!   [`Store::alarms`]. The store only records them; what an alarm refuses is
//!   the server's business.
//! * **Snapshots**: [`Store::freeze`] under the store's lock (cheap: the key
//!   index's chunks are shared copy-on-write), then, on another thread while
//!   the live store goes on applying, [`FrozenStore::write_snapshot`] streams
//!   the bytes to a sink; [`Store::restore`] reads them back.
//!   [`Store::snapshot_chunks`] / [`Store::restore_chunks`] cut them into
//!   checksummed chunks. Compare [`Store::state_hash`] across replicas at
//!   equal applied indexes.
//! * **Fencing**: [`Sequencer`] (see the recipe below).
//!
//! # Revision rules (etcd's)
//!
//! The store revision starts at 1. Each request that changes at least one key
//! adds 1, and every change in one Txn shares that revision; a request that
//! changes nothing (a delete that matches nothing, a read-only Txn, a grant,
//! a compaction, a revoke of a lease without keys, an alarm) leaves it alone.
//!
//! # Where this differs from etcd, on purpose
//!
//! * A Txn that puts a key in one nested Txn and deletes it in a later one is
//!   rejected with `etcdserver: duplicate key given in txn request` (etcd
//!   accepts it); so a key changes at most once per revision. Everything else
//!   about duplicate detection follows etcd's `checkIntervals`, including
//!   that overlapping deletes are allowed.
//! * Compaction keeps a tombstone whose revision equals the compacted
//!   revision, so a watch resumed from `compact_revision` (what clients do
//!   after a compacted cancel) still sees a deletion made at that revision.
//! * Range responses are capped at `range_keys_max` kvs with `more = true`.
//! * History is bounded: see `history_revisions_max` below.
//! * Watch responses are never fragmented (`fragment` is ignored).
//!
//! # Bounds
//!
//! Named in [`Config`] with their units: `request_bytes_max` (1.5 MiB),
//! `range_keys_max`, `txn_operations_max`, `history_revisions_max`
//! (auto-compaction, so history never grows without bound), and
//! `database_bytes_max` (the quota; writes are refused above it), and
//! `compaction_keys_per_entry_max` (below). Watches are bounded by
//! [`WatchConfig`].
//!
//! # Compaction, a bounded step per entry
//!
//! Applying a compaction (asked for, or automatic) does only its logical part
//! at once: it sets the compacted revision, below which reads and watches
//! fail. Dropping the history it made unreachable then visits at most
//! `compaction_keys_per_entry_max` keys (default
//! [`COMPACTION_KEYS_PER_ENTRY_MAX`]), in key order from a cursor, as part of
//! applying that entry and each later one, whatever it is; so no apply walks
//! the whole store, and since progress is counted in applied entries every
//! replica holds the same history at the same applied index (snapshots carry
//! the cursor). Reads at or above the compacted revision cannot tell how far
//! it got. A new compaction while one is under way restarts the walk from
//! the first key. Until a key is visited its unreachable changes still count
//! in `retained_bytes`, so the quota frees up a few entries later than the
//! compaction. See [`Store::pending_compaction`].
//!
//! # Recipe: a lock with a fencing token
//!
//! A client takes a lock by creating a key attached to its lease; the
//! [`Sequencer`] of that key guards its writes. When the lease expires and
//! another client takes the lock, the old holder's guarded write is refused.
//!
//! ```
//! use synod_kv::*;
//!
//! let mut store = Store::new(Config::default());
//! let mut apply = |store: &mut Store, request: Request| {
//!     let bytes = store.prepare(&request).unwrap();
//!     store.apply_bytes(&bytes).result.unwrap()
//! };
//! let grant = |id| Request::LeaseGrant(LeaseGrantRequest { ttl: 10, id });
//! // Acquire: create the lock key only if nobody holds it.
//! let acquire = |lease| Request::Txn(TxnRequest {
//!     compare: vec![Compare {
//!         target: CompareTarget::Create,
//!         key: b"lock".to_vec(),
//!         target_union: TargetUnion::CreateRevision(0),
//!         ..Compare::default()
//!     }],
//!     success: vec![RequestOp::Put(PutRequest {
//!         key: b"lock".to_vec(),
//!         lease,
//!         ..PutRequest::default()
//!     })],
//!     failure: vec![],
//! });
//!
//! apply(&mut store, grant(1));
//! apply(&mut store, acquire(1));
//! let old_token = store.sequencer(b"lock").unwrap();
//!
//! // Holder 1 pauses; its lease expires and the master revokes it.
//! apply(&mut store, Request::LeaseRevoke(LeaseRevokeRequest { id: 1 }));
//! apply(&mut store, grant(2));
//! apply(&mut store, acquire(2));
//! let new_token = store.sequencer(b"lock").unwrap();
//!
//! // Holder 1 wakes up and writes with its stale token: refused.
//! let write = |token: &Sequencer| Request::Txn(token.guard(vec![RequestOp::Put(PutRequest {
//!     key: b"data".to_vec(),
//!     value: b"from holder".to_vec(),
//!     ..PutRequest::default()
//! })]));
//! let Response::Txn(stale) = apply(&mut store, write(&old_token)) else { unreachable!() };
//! assert!(!stale.succeeded);
//! assert_eq!(store.check_sequencer(&old_token), Err(KvError::StaleSequencer));
//!
//! // The current holder's write goes through.
//! let Response::Txn(fresh) = apply(&mut store, write(&new_token)) else { unreachable!() };
//! assert!(fresh.succeeded);
//! assert!(store.check_sequencer(&new_token).is_ok());
//! ```
//!
//! # Layout
//!
//! * `types` — request/response structs mirroring etcd's protos field for field.
//! * `request` — [`Request`] / [`Response`] and their binary encoding.
//! * `varint` — the varint encoder/decoder (bounded, panic-free decoding).
//! * `store` — [`Store`]: MVCC keyspace, apply, range, txn, compaction, leases.
//! * `applied` — [`Applied`] and [`LeaseEffect`]: what applying one entry did.
//! * `index` — the ordered key index (sorted chunks, compact in memory,
//!   shared copy-on-write between a store and its frozen copies).
//! * `lessor` — [`Lessor`]: the master's lease deadlines (time injected).
//! * `watch` — [`WatchHub`]: routing events, catch-up from history, progress.
//! * `sequencer` — [`Sequencer`]: Chubby's fencing tokens.
//! * `store_snapshot` — [`FrozenStore`], the streamed deterministic snapshot,
//!   chunking, validated restore.
//! * `hash` — the chained state hash.
//! * `error` — [`KvError`] with etcd's exact messages and [`Code`].
//!
//! **Invariants**: a failed request changes nothing but the applied index
//! (and a pending compaction's progress, which every entry advances); a
//! key changes at most once per revision; history at or above the compacted
//! revision is complete; nothing in this crate depends on time, threads or
//! randomness.

#![deny(missing_docs)]

mod applied;
mod auth;
mod error;
mod hash;
mod import;
mod index;
mod lessor;
mod request;
mod sequencer;
mod store;
mod store_snapshot;
mod types;
mod varint;
mod watch;

#[cfg(test)]
mod tests;

pub use applied::{Applied, LeaseEffect};
pub use auth::{
    Access, AuthEffect, AuthRequest, AuthResponse, AuthState, Permission, PermissionType, Role, User, NAME_BYTES_MAX,
    ROOT_ROLE, ROOT_USER, TOKEN_DIGEST_BYTES,
};
pub use error::{Code, KvError};
pub use import::{ImportedChange, ImportedKey, ImportedState};
pub use lessor::Lessor;
pub use request::{Request, Response, TXN_DEPTH_MAX};
pub use sequencer::Sequencer;
pub use store::{
    Config, Lease, Store, ALARMS_MAX, COMPACTION_KEYS_PER_ENTRY_MAX, LEASE_TTL_SECONDS_MAX, REQUEST_BYTES_MAX_DEFAULT,
};
pub use store_snapshot::FrozenStore;
pub use types::*;
pub use watch::{CatchUpJob, CatchUpResult, WatchConfig, WatchHub};
