//! What applying one log entry did: the response and the effects the
//! server passes on (events to the watch hubs, lease changes to the
//! [`crate::Lessor`]). The state hash folds the same effects in, so this
//! module sits below both the store and the hash.

use crate::error::KvError;
use crate::request::Response;
use crate::types::Event;

/// What a lease request changed, for the master's [`crate::Lessor`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LeaseEffect {
    /// A lease was granted.
    Granted {
        /// Its ID.
        id: i64,
        /// Its TTL in seconds.
        ttl_seconds: i64,
    },
    /// A lease was revoked (its keys deleted).
    Revoked {
        /// Its ID.
        id: i64,
    },
}

/// The outcome of applying one log entry.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Applied {
    /// The response, or the error to return to the client. Errors leave the
    /// state unchanged except for the applied index.
    pub result: Result<Response, KvError>,
    /// The changes made, all at [`Applied::revision`], in order (with
    /// `prev_kv` filled whenever the key existed). Feed them to
    /// [`crate::WatchHub::observe`].
    pub events: Vec<Event>,
    /// Store revision after the apply.
    pub revision: i64,
    /// Lease granted or revoked, for [`crate::Lessor::observe`].
    pub lease_effect: Option<LeaseEffect>,
}
