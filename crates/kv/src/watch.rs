//! Watches: the events of applied entries routed to the watchers of one
//! client watch stream.
//!
//! One [`WatchHub`] serves one gRPC `Watch` stream (watch IDs are per stream,
//! as in etcd). The server drives it:
//! 1. [`WatchHub::create`] / [`WatchHub::cancel`] for the stream's requests;
//! 2. [`WatchHub::observe`] with every [`crate::Applied`], in apply order;
//! 3. [`WatchHub::poll`] to take the responses ready to send (it also catches
//!    up watchers that start in the past, from the store's history).
//!
//! Each watcher is either *synced* (it has seen everything up to the store
//! revision, and `observe` hands it new events directly) or *catching up*
//! (`poll` reads its next batch from history). A response never splits a
//! revision and revisions arrive in order with no gaps.
//!
//! Slow watchers: each watcher buffers at most `pending_events_max` events of
//! unsent responses. When a new revision would exceed that, its unsent
//! responses are dropped and it goes back to catching up from the first
//! revision it has not been sent, so memory stays bounded and nothing is
//! lost, unless compaction overtakes it: then it is cancelled with
//! `compact_revision` set, as etcd does, and the client resumes from there.
//!
//! Cost of catching up: each [`WatchHub::poll`] of a catching-up watcher walks
//! the keys of its range and their retained changes once, and returns up to
//! `catch_up_events_max` events. Over a large range that walk is long, so a
//! host that must not hold the store meanwhile catches up off its locks
//! instead: [`WatchHub::catch_up_jobs`] names what each catching-up watcher
//! needs from a [`FrozenStore`], [`CatchUpJob::run`] reads it there (on any
//! thread), and [`WatchHub::catch_up_done`] hands the events back. Meanwhile
//! [`WatchHub::observe`] keeps each such watcher's live events above the
//! frozen revision (its *tail*, bounded like its unsent events), so a watcher
//! that reaches the frozen revision continues with its tail and is synced
//! without another walk. [`WatchHub::take_ready`] then takes the responses.

use std::collections::{BTreeMap, VecDeque};

use crate::applied::Applied;
use crate::error::KvError;
use crate::store::{RangeEnd, Store};
use crate::store_snapshot::FrozenStore;
use crate::types::*;

/// Bounds of a [`WatchHub`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct WatchConfig {
    /// Events a watcher may have waiting to be sent before it is made to catch
    /// up from history instead.
    pub pending_events_max: usize,
    /// Events read from history per catching-up watcher per [`WatchHub::poll`]
    /// (whole revisions, so a larger revision may exceed it).
    pub catch_up_events_max: usize,
    /// Watchers per stream.
    pub watchers_max: usize,
}

impl Default for WatchConfig {
    fn default() -> Self {
        WatchConfig {
            pending_events_max: 10_000,
            catch_up_events_max: 1_000,
            watchers_max: 10_000,
        }
    }
}

#[derive(Debug)]
struct Watcher {
    key: Vec<u8>,
    range_end: Vec<u8>,
    prev_kv: bool,
    no_put: bool,
    no_delete: bool,
    progress_notify: bool,
    /// The first revision this watcher has not been given (sent or pending).
    next_revision: i64,
    synced: bool,
    pending: VecDeque<WatchResponse>,
    pending_events: usize,
    /// While catching up from a frozen copy at revision `r`: the live events
    /// from `r + 1` on, as responses, kept by [`WatchHub::observe`].
    tail: Option<Tail>,
    /// Counts catch-up jobs, so a result for an older job (or an earlier
    /// watcher with the same ID) is told apart.
    catch_up_generation: u64,
}

#[derive(Debug)]
struct Tail {
    /// The frozen copy's revision: the tail holds what came after it.
    frozen_revision: i64,
    /// The first revision the tail has not seen.
    next_revision: i64,
    responses: VecDeque<WatchResponse>,
    events: usize,
}

/// What one catching-up watcher needs read from a [`FrozenStore`]: made by
/// [`WatchHub::catch_up_jobs`], run anywhere with [`CatchUpJob::run`], its
/// result handed to [`WatchHub::catch_up_done`].
#[derive(Clone, Debug)]
pub struct CatchUpJob {
    watch_id: i64,
    generation: u64,
    key: Vec<u8>,
    range_end: Vec<u8>,
    next_revision: i64,
    /// Events read per history batch, and in all.
    events_per_batch: usize,
    events_max: usize,
}

/// The outcome of a [`CatchUpJob`].
#[derive(Debug)]
pub struct CatchUpResult {
    watch_id: i64,
    generation: u64,
    frozen_revision: i64,
    compact_revision: i64,
    /// Batches of events (whole revisions each), and the next revision to
    /// read; `Err` if the history was compacted away.
    outcome: Result<(Vec<Vec<Event>>, i64), KvError>,
}

impl CatchUpJob {
    /// Reads the watcher's next events from `frozen`, in batches of about
    /// `catch_up_events_max`, until it reaches the frozen revision or has
    /// `pending_events_max` events. Walks the watcher's range once per batch:
    /// run it where holding no lock and blocking are fine.
    pub fn run(&self, frozen: &FrozenStore) -> CatchUpResult {
        let store = &frozen.store;
        let mut batches = Vec::new();
        let mut next_revision = self.next_revision;
        let mut events = 0;
        let outcome = loop {
            if next_revision > store.revision() || events >= self.events_max {
                break Ok((batches, next_revision));
            }
            match store.history_events(&self.key, &self.range_end, next_revision, self.events_per_batch) {
                Err(error) => break Err(error),
                Ok((batch, next)) => {
                    assert!(next > next_revision || batch.is_empty());
                    events += batch.len();
                    next_revision = next;
                    batches.push(batch);
                }
            }
        };
        CatchUpResult {
            watch_id: self.watch_id,
            generation: self.generation,
            frozen_revision: store.revision(),
            compact_revision: store.compact_revision(),
            outcome,
        }
    }
}

impl Watcher {
    fn wants(&self, event: &Event) -> bool {
        let kind_wanted = match event.r#type {
            EventType::Put => !self.no_put,
            EventType::Delete => !self.no_delete,
        };
        kind_wanted && RangeEnd::of(&self.range_end).contains(&self.key, &event.kv.key)
    }

    /// The events of `events` this watcher wants, shaped for it.
    fn select(&self, events: &[Event]) -> Vec<Event> {
        events
            .iter()
            .filter(|event| self.wants(event))
            .map(|event| self.shape(event))
            .collect()
    }

    fn shape(&self, event: &Event) -> Event {
        Event {
            r#type: event.r#type,
            kv: event.kv.clone(),
            prev_kv: if self.prev_kv { event.prev_kv.clone() } else { None },
        }
    }
}

/// See the module docs.
#[derive(Debug, Default)]
pub struct WatchHub {
    config: WatchConfig,
    watchers: BTreeMap<i64, Watcher>,
    /// Replies to create/cancel and cancellations, in order.
    control: VecDeque<WatchResponse>,
    next_watch_id: i64,
    /// A `WatchProgressRequest` waits until every watcher is synced.
    progress_requested: bool,
}

impl WatchHub {
    /// An empty hub.
    pub fn new(config: WatchConfig) -> Self {
        WatchHub {
            config,
            ..WatchHub::default()
        }
    }

    /// Number of active watchers.
    pub fn len(&self) -> usize {
        self.watchers.len()
    }

    /// Whether there are no watchers.
    pub fn is_empty(&self) -> bool {
        self.watchers.is_empty()
    }

    /// Whether some watcher is still catching up (call [`WatchHub::poll`] again).
    pub fn catching_up(&self) -> bool {
        self.watchers.values().any(|watcher| !watcher.synced)
    }

    /// Refuses a `WatchCreateRequest` the server would not allow (say, a
    /// range its caller may not read), as etcd does: a reply that is both
    /// `created` and `canceled`, for watch ID -1, with `error` as the reason.
    pub fn refuse(&mut self, store: &Store, error: &KvError) {
        self.refuse_with_id(store, -1, error);
    }

    fn refuse_with_id(&mut self, store: &Store, watch_id: i64, error: &KvError) {
        self.control.push_back(WatchResponse {
            header: ResponseHeader {
                revision: store.revision(),
                ..ResponseHeader::default()
            },
            watch_id,
            created: true,
            canceled: true,
            cancel_reason: error.to_string(),
            ..WatchResponse::default()
        });
    }

    /// `WatchCreateRequest`. Queues the `created` reply (and, for a start below
    /// the compacted revision, the cancellation with `compact_revision`).
    /// Returns the watch ID, or the error also sent as the cancel reason.
    pub fn create(&mut self, store: &Store, request: &WatchCreateRequest) -> Result<i64, KvError> {
        let header = ResponseHeader {
            revision: store.revision(),
            ..ResponseHeader::default()
        };
        let refuse = |hub: &mut WatchHub, watch_id: i64, error: KvError| {
            hub.refuse_with_id(store, watch_id, &error);
            Err(error)
        };
        if request.key.is_empty() {
            return refuse(self, -1, KvError::KeyNotProvided);
        }
        if self.watchers.len() >= self.config.watchers_max {
            return refuse(self, -1, KvError::TooManyWatchers);
        }
        let watch_id = if request.watch_id != 0 {
            if self.watchers.contains_key(&request.watch_id) {
                return refuse(self, request.watch_id, KvError::DuplicateWatchId);
            }
            request.watch_id
        } else {
            // Assigned IDs only grow, so a late response is never taken for a new watch's.
            while self.watchers.contains_key(&self.next_watch_id) {
                self.next_watch_id += 1;
            }
            self.next_watch_id += 1;
            self.next_watch_id - 1
        };
        self.control.push_back(WatchResponse {
            header,
            watch_id,
            created: true,
            ..WatchResponse::default()
        });
        if request.start_revision > 0 && request.start_revision < store.compact_revision() {
            self.control.push_back(self.compacted(store, watch_id));
            return Ok(watch_id);
        }
        let next_revision = if request.start_revision > 0 {
            request.start_revision
        } else {
            store.revision() + 1
        };
        let synced = next_revision > store.revision();
        self.watchers.insert(
            watch_id,
            Watcher {
                key: request.key.clone(),
                range_end: request.range_end.clone(),
                prev_kv: request.prev_kv,
                no_put: request.filters.contains(&WatchFilter::NoPut),
                no_delete: request.filters.contains(&WatchFilter::NoDelete),
                progress_notify: request.progress_notify,
                next_revision,
                synced,
                pending: VecDeque::new(),
                pending_events: 0,
                tail: None,
                catch_up_generation: 0,
            },
        );
        Ok(watch_id)
    }

    fn compacted(&self, store: &Store, watch_id: i64) -> WatchResponse {
        compacted_response(watch_id, store.revision(), store.compact_revision())
    }

    /// `WatchCancelRequest`. Drops unsent events and queues the `canceled`
    /// reply; false if no such watch.
    pub fn cancel(&mut self, store: &Store, watch_id: i64) -> bool {
        if self.watchers.remove(&watch_id).is_none() {
            return false;
        }
        self.control.push_back(WatchResponse {
            header: ResponseHeader {
                revision: store.revision(),
                ..ResponseHeader::default()
            },
            watch_id,
            canceled: true,
            ..WatchResponse::default()
        });
        true
    }

    /// The store was replaced by a snapshot from a peer: revisions between the
    /// watchers' positions and the snapshot were never observed here. Every
    /// watcher replays from its next revision out of the new store's history
    /// at the next [`WatchHub::poll`], or is cancelled with `compact_revision`
    /// if that history is gone; none silently skips them.
    pub fn resync_all(&mut self) {
        for watcher in self.watchers.values_mut() {
            watcher.synced = false;
            watcher.tail = None;
            // A catch-up read from the replaced store is not used.
            watcher.catch_up_generation += 1;
        }
    }

    /// Routes one applied entry's events to the synced watchers. Must be
    /// called for every applied entry, in order.
    pub fn observe(&mut self, applied: &Applied) {
        let Some(first) = applied.events.first() else {
            return;
        };
        let revision = first.kv.mod_revision;
        assert_eq!(revision, applied.revision, "events carry the applied revision");
        let pending_events_max = self.config.pending_events_max;
        for (&watch_id, watcher) in &mut self.watchers {
            if !watcher.synced {
                keep_in_tail(watcher, watch_id, applied, revision, pending_events_max);
                continue;
            }
            if watcher.next_revision > revision {
                // Started at a future revision.
                continue;
            }
            if watcher.next_revision < revision {
                // An apply was not observed; recover from history.
                watcher.synced = false;
                continue;
            }
            let events: Vec<Event> = watcher.select(&applied.events);
            watcher.next_revision = revision + 1;
            if events.is_empty() {
                continue;
            }
            if watcher.pending_events + events.len() > pending_events_max {
                // Too slow: resend from history, starting at its first unsent revision.
                let first_unsent = watcher
                    .pending
                    .front()
                    .and_then(|response| response.events.first())
                    .map_or(revision, |event| event.kv.mod_revision);
                watcher.pending.clear();
                watcher.pending_events = 0;
                watcher.next_revision = first_unsent;
                watcher.synced = false;
                continue;
            }
            watcher.pending_events += events.len();
            watcher.pending.push_back(events_response(watch_id, revision, events));
        }
    }

    /// Takes every response ready to send: control replies first, then each
    /// watcher's events (by watch ID). Catching-up watchers get their next
    /// batch from history, read from `store` here; call again while
    /// [`WatchHub::catching_up`].
    pub fn poll(&mut self, store: &Store) -> Vec<WatchResponse> {
        let mut compacted = Vec::new();
        for (&watch_id, watcher) in &mut self.watchers {
            if watcher.synced {
                continue;
            }
            match store.history_events(
                &watcher.key,
                &watcher.range_end,
                watcher.next_revision,
                self.config.catch_up_events_max,
            ) {
                Err(_) => compacted.push(watch_id),
                Ok((events, next_revision)) => {
                    assert!(next_revision > watcher.next_revision || events.is_empty());
                    deliver_history(watcher, watch_id, &events, store.revision());
                    watcher.next_revision = next_revision;
                    watcher.synced = next_revision > store.revision();
                    watcher.tail = None;
                }
            }
        }
        for watch_id in compacted {
            self.watchers.remove(&watch_id);
            let response = self.compacted(store, watch_id);
            self.control.push_back(response);
        }
        self.take_ready(store)
    }

    /// For each catching-up watcher, the job that reads its next events from
    /// a copy of the store frozen at `frozen_revision` (the caller freezes it
    /// under the same store lock, so no entry is applied in between). From
    /// now on [`WatchHub::observe`] keeps the watcher's live events above
    /// that revision.
    pub fn catch_up_jobs(&mut self, frozen_revision: i64) -> Vec<CatchUpJob> {
        let mut jobs = Vec::new();
        for (&watch_id, watcher) in &mut self.watchers {
            if watcher.synced {
                continue;
            }
            watcher.catch_up_generation += 1;
            watcher.tail = Some(Tail {
                frozen_revision,
                next_revision: frozen_revision + 1,
                responses: VecDeque::new(),
                events: 0,
            });
            jobs.push(CatchUpJob {
                watch_id,
                generation: watcher.catch_up_generation,
                key: watcher.key.clone(),
                range_end: watcher.range_end.clone(),
                next_revision: watcher.next_revision,
                events_per_batch: self.config.catch_up_events_max,
                events_max: self.config.pending_events_max,
            });
        }
        jobs
    }

    /// Hands back what [`CatchUpJob::run`] read. A watcher that reached the
    /// frozen revision continues with its tail and is synced; one whose
    /// history was compacted is cancelled with `compact_revision`; results for
    /// watchers cancelled or re-queued since are dropped.
    pub fn catch_up_done(&mut self, results: Vec<CatchUpResult>) {
        for result in results {
            let Some(watcher) = self.watchers.get_mut(&result.watch_id) else {
                continue;
            };
            if watcher.synced || watcher.catch_up_generation != result.generation {
                continue;
            }
            match result.outcome {
                Err(_) => {
                    self.watchers.remove(&result.watch_id);
                    self.control.push_back(compacted_response(
                        result.watch_id,
                        result.frozen_revision,
                        result.compact_revision,
                    ));
                }
                Ok((batches, next_revision)) => {
                    for events in &batches {
                        deliver_history(watcher, result.watch_id, events, result.frozen_revision);
                    }
                    watcher.next_revision = next_revision;
                    let tail = watcher.tail.take();
                    if next_revision <= result.frozen_revision {
                        // More history to read: the next job starts a new tail.
                        continue;
                    }
                    // Caught up to the frozen copy: the tail, if whole, holds
                    // everything after it.
                    if let Some(tail) = tail.filter(|tail| tail.frozen_revision == result.frozen_revision) {
                        watcher.pending_events += tail.events;
                        watcher.pending.extend(tail.responses);
                        watcher.next_revision = tail.next_revision;
                        watcher.synced = true;
                    }
                }
            }
        }
    }

    /// Takes every response ready to send: control replies first, then each
    /// watcher's events (by watch ID). Reads no history.
    pub fn take_ready(&mut self, store: &Store) -> Vec<WatchResponse> {
        let mut ready: Vec<WatchResponse> = self.control.drain(..).collect();
        for watcher in self.watchers.values_mut() {
            ready.extend(watcher.pending.drain(..));
            watcher.pending_events = 0;
        }
        if self.progress_requested && !self.catching_up() {
            self.progress_requested = false;
            ready.push(progress(store, -1));
        }
        ready
    }

    /// Periodic progress notifications (the server's timer, etcd: 10 min): an
    /// empty response with the current revision for each synced watcher that
    /// asked for `progress_notify` and has nothing unsent.
    pub fn progress_notify(&mut self, store: &Store) {
        for (&watch_id, watcher) in &mut self.watchers {
            if watcher.progress_notify && watcher.synced && watcher.pending.is_empty() {
                watcher.pending.push_back(progress(store, watch_id));
            }
        }
    }

    /// `WatchProgressRequest`: once every watcher is synced (and after the
    /// events before it), [`WatchHub::poll`] returns one empty response with
    /// the current revision and watch ID -1 (etcd 3.5).
    pub fn request_progress(&mut self) {
        self.progress_requested = true;
    }
}

/// Queues a batch of history events, filtered and shaped for the watcher,
/// in a response whose header carries `revision`.
fn deliver_history(watcher: &mut Watcher, watch_id: i64, events: &[Event], revision: i64) {
    let events: Vec<Event> = watcher.select(events);
    if !events.is_empty() {
        watcher.pending_events += events.len();
        watcher.pending.push_back(events_response(watch_id, revision, events));
    }
}

/// Keeps a catching-up watcher's live events above its frozen copy's
/// revision. A tail that would exceed `events_max`, or that missed a
/// revision, is dropped: the watcher then reads that part from history too.
fn keep_in_tail(watcher: &mut Watcher, watch_id: i64, applied: &Applied, revision: i64, events_max: usize) {
    let Some(tail_next) = watcher.tail.as_ref().map(|tail| tail.next_revision) else {
        return;
    };
    if revision < tail_next {
        return;
    }
    if revision > tail_next {
        watcher.tail = None;
        return;
    }
    let events: Vec<Event> = watcher.select(&applied.events);
    let tail = watcher.tail.as_mut().expect("checked above");
    tail.next_revision = revision + 1;
    if events.is_empty() {
        return;
    }
    if tail.events + events.len() > events_max {
        watcher.tail = None;
        return;
    }
    tail.events += events.len();
    tail.responses.push_back(events_response(watch_id, revision, events));
}

/// The cancellation of a watcher whose next revision was compacted away, as
/// etcd sends it: with `compact_revision` for the client to resume from.
fn compacted_response(watch_id: i64, revision: i64, compact_revision: i64) -> WatchResponse {
    WatchResponse {
        header: ResponseHeader {
            revision,
            ..ResponseHeader::default()
        },
        watch_id,
        canceled: true,
        compact_revision,
        cancel_reason: KvError::Compacted.to_string(),
        ..WatchResponse::default()
    }
}

fn events_response(watch_id: i64, revision: i64, events: Vec<Event>) -> WatchResponse {
    WatchResponse {
        header: ResponseHeader {
            revision,
            ..ResponseHeader::default()
        },
        watch_id,
        events,
        ..WatchResponse::default()
    }
}

fn progress(store: &Store, watch_id: i64) -> WatchResponse {
    WatchResponse {
        header: ResponseHeader {
            revision: store.revision(),
            ..ResponseHeader::default()
        },
        watch_id,
        ..WatchResponse::default()
    }
}
