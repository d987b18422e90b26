//! Chubby's sequencer: a fencing token for a lock held through a lease.
//!
//! A lock holder owns `key`, created at `create_revision` and attached to
//! `lease`. If the lease expires (the holder paused, say) and another client
//! takes the lock, the key is recreated with a new create revision and lease,
//! so the old token no longer matches. A write guarded by the token, through
//! [`Sequencer::guard`], is then not applied; [`Store::check_sequencer`] answers
//! the same question for a server that acts on the holder's behalf.

use crate::error::KvError;
use crate::store::Store;
use crate::types::{Compare, CompareResult, CompareTarget, RequestOp, TargetUnion, TxnRequest};

/// A fencing token: (lock key, its create revision, its lease).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Sequencer {
    /// The lock key the holder created.
    pub key: Vec<u8>,
    /// The key's create revision when the lock was acquired.
    pub create_revision: i64,
    /// The lease the key is attached to.
    pub lease: i64,
}

impl Sequencer {
    /// The compares that hold exactly while the token is current:
    /// `create_revision(key) == token.create_revision` and `lease(key) == token.lease`.
    pub fn compares(&self) -> Vec<Compare> {
        vec![
            Compare {
                result: CompareResult::Equal,
                target: CompareTarget::Create,
                key: self.key.clone(),
                target_union: TargetUnion::CreateRevision(self.create_revision),
                range_end: Vec::new(),
            },
            Compare {
                result: CompareResult::Equal,
                target: CompareTarget::Lease,
                key: self.key.clone(),
                target_union: TargetUnion::Lease(self.lease),
                range_end: Vec::new(),
            },
        ]
    }

    /// A Txn that runs `ops` only while the token is current; otherwise it
    /// changes nothing and reports `succeeded = false`.
    pub fn guard(&self, ops: Vec<RequestOp>) -> TxnRequest {
        TxnRequest {
            compare: self.compares(),
            success: ops,
            failure: Vec::new(),
        }
    }
}

impl Store {
    /// The token for the current holder of `key` (None if the key does not exist).
    pub fn sequencer(&self, key: &[u8]) -> Option<Sequencer> {
        let kv = self.get_live(key)?;
        Some(Sequencer {
            key: kv.key,
            create_revision: kv.create_revision,
            lease: kv.lease,
        })
    }

    /// `CheckSequencer`: Ok while the token is current, else
    /// [`KvError::StaleSequencer`]. Read-only; run it on the master (or after a
    /// linearizable read barrier) to get an up-to-date answer.
    pub fn check_sequencer(&self, sequencer: &Sequencer) -> Result<(), KvError> {
        if sequencer.compares().iter().all(|compare| self.compare_holds(compare)) {
            Ok(())
        } else {
            Err(KvError::StaleSequencer)
        }
    }
}
