//! Lease deadlines, tracked only by the current master.
//!
//! Which leases exist (and their keys) is replicated in the [`Store`]; when
//! they expire is not. Only the master, while it holds its master lease, runs
//! a `Lessor`: it learns grants and revokes from applied entries, extends
//! deadlines on keep-alive, and lists expired leases, which it then revokes by
//! proposing [`crate::Request::LeaseRevoke`] through the log like any write.
//! So every replica deletes the same keys at the same revision. After a master
//! change the new master calls [`Lessor::promote`], which renews every lease's
//! full TTL, as etcd does after a leader change. Time is injected as
//! milliseconds of a monotonic clock; the `Lessor` never reads a clock.

use std::collections::{BTreeMap, BTreeSet};

use crate::applied::{Applied, LeaseEffect};
use crate::store::Store;
use crate::types::{LeaseKeepAliveResponse, LeaseTimeToLiveResponse, ResponseHeader};

/// See the module docs.
#[derive(Debug, Default)]
pub struct Lessor {
    /// Deadline (monotonic ms) of each lease, when primary.
    deadlines: BTreeMap<i64, u64>,
    /// The same deadlines ordered by time, for [`Lessor::expired`].
    queue: BTreeSet<(u64, i64)>,
    primary: bool,
    /// How long after being reported expired a lease is reported again if its
    /// revoke has not been applied (the proposal may have been lost).
    revoke_retry_ms: u64,
}

impl Lessor {
    /// A lessor that is not primary (a replica that is not master).
    /// `revoke_retry_ms`: see [`Lessor::expired`].
    pub fn new(revoke_retry_ms: u64) -> Self {
        Lessor {
            revoke_retry_ms,
            ..Lessor::default()
        }
    }

    /// Whether this replica tracks deadlines (it is master).
    pub fn is_primary(&self) -> bool {
        self.primary
    }

    /// Become master: every lease in the store gets a full TTL from `now_ms`.
    pub fn promote(&mut self, store: &Store, now_ms: u64) {
        self.deadlines.clear();
        self.queue.clear();
        self.primary = true;
        for (id, lease) in store.leases() {
            self.set_deadline(id, now_ms, lease.ttl_seconds);
        }
    }

    /// Stop being master: forget all deadlines.
    pub fn demote(&mut self) {
        self.deadlines.clear();
        self.queue.clear();
        self.primary = false;
    }

    fn set_deadline(&mut self, id: i64, now_ms: u64, ttl_seconds: i64) {
        let ttl_ms = u64::try_from(ttl_seconds).unwrap_or(0).saturating_mul(1000);
        let deadline = now_ms.saturating_add(ttl_ms);
        if let Some(previous) = self.deadlines.insert(id, deadline) {
            self.queue.remove(&(previous, id));
        }
        self.queue.insert((deadline, id));
        debug_assert_eq!(self.deadlines.len(), self.queue.len());
    }

    fn forget(&mut self, id: i64) {
        if let Some(previous) = self.deadlines.remove(&id) {
            self.queue.remove(&(previous, id));
        }
    }

    /// Learn grants and revokes from every applied entry (call on each apply).
    pub fn observe(&mut self, applied: &Applied, now_ms: u64) {
        if !self.primary {
            return;
        }
        match applied.lease_effect {
            Some(LeaseEffect::Granted { id, ttl_seconds }) => self.set_deadline(id, now_ms, ttl_seconds),
            Some(LeaseEffect::Revoked { id }) => self.forget(id),
            None => {}
        }
    }

    /// `Lease.LeaseKeepAlive`: renews the full TTL and returns it, or 0 when
    /// the lease does not exist (etcd replies TTL=0, not an error).
    pub fn keep_alive(&mut self, store: &Store, id: i64, now_ms: u64) -> i64 {
        let Some(lease) = store.lease(id) else {
            self.forget(id);
            return 0;
        };
        if self.primary {
            self.set_deadline(id, now_ms, lease.ttl_seconds);
        }
        lease.ttl_seconds
    }

    /// [`Lessor::keep_alive`] as the `LeaseKeepAlive` stream's reply.
    pub fn keep_alive_response(&mut self, store: &Store, id: i64, now_ms: u64) -> LeaseKeepAliveResponse {
        LeaseKeepAliveResponse {
            header: ResponseHeader {
                revision: store.revision(),
                ..ResponseHeader::default()
            },
            id,
            ttl: self.keep_alive(store, id, now_ms),
        }
    }

    /// Leases whose deadline has passed, earliest first, at most `leases_max`.
    /// Each one reported is given `revoke_retry_ms` more before it is reported
    /// again, so a lost revoke proposal is retried without flooding the log.
    pub fn expired(&mut self, store: &Store, now_ms: u64, leases_max: usize) -> Vec<i64> {
        let mut expired = Vec::new();
        while expired.len() < leases_max {
            let Some(&(deadline, id)) = self.queue.first() else {
                break;
            };
            if deadline > now_ms {
                break;
            }
            if store.lease(id).is_none() {
                self.forget(id);
                continue;
            }
            self.queue.remove(&(deadline, id));
            let retry = now_ms.saturating_add(self.revoke_retry_ms.max(1));
            self.deadlines.insert(id, retry);
            self.queue.insert((retry, id));
            expired.push(id);
        }
        expired
    }

    /// Remaining whole seconds (rounded up) of a lease, if tracked.
    pub fn remaining_ttl_seconds(&self, id: i64, now_ms: u64) -> Option<i64> {
        let deadline = *self.deadlines.get(&id)?;
        let remaining_ms = deadline.saturating_sub(now_ms);
        Some(remaining_ms.div_ceil(1000) as i64)
    }

    /// `Lease.LeaseTimeToLive`: TTL -1 when the lease does not exist (etcd).
    /// On a replica that does not track the lease, the granted TTL is reported.
    pub fn time_to_live(&self, store: &Store, id: i64, keys: bool, now_ms: u64) -> LeaseTimeToLiveResponse {
        let header = ResponseHeader {
            revision: store.revision(),
            ..ResponseHeader::default()
        };
        let Some(lease) = store.lease(id) else {
            return LeaseTimeToLiveResponse {
                header,
                id,
                ttl: -1,
                ..LeaseTimeToLiveResponse::default()
            };
        };
        LeaseTimeToLiveResponse {
            header,
            id,
            ttl: self.remaining_ttl_seconds(id, now_ms).unwrap_or(lease.ttl_seconds),
            granted_ttl: lease.ttl_seconds,
            keys: if keys {
                lease.keys.iter().map(|key| key.to_vec()).collect()
            } else {
                Vec::new()
            },
        }
    }
}
