//! The etcd v3 client API over gRPC, and `/health`, `/version`, `/metrics`
//! over HTTP/1, on one port.
//!
//! # Who answers what
//!
//! - **Writes** (Put, DeleteRange, Txn, Compact, LeaseGrant, LeaseRevoke,
//!   Alarm ACTIVATE and DEACTIVATE) go through the log. At the master: encode the request (synod-kv's
//!   `Store::prepare`), submit it, answer once it is applied here. At a
//!   follower: **forwarded** to the master's client port as the same gRPC
//!   call, so a client may talk to any member. With no master known the answer
//!   is Unavailable `etcdserver: no leader`, on which etcd clients retry.
//! - **Linearizable reads** are answered by the master under its master lease
//!   (no log round): take a read point with a fresh clock reading, wait until
//!   it is applied, read. Followers forward them. **Serializable reads** are
//!   answered by any member from its own store. A range that looks at more
//!   than `RANGE_KEYS_IN_PLACE_MAX` keys is answered from a frozen copy of
//!   the store on a blocking-pool thread, not under the store's lock here.
//! - **Lease keep-alives, time-to-live and the list of leases** are answered
//!   by the master after the same read point (it alone knows the deadlines);
//!   followers forward them. So are alarm listings, Election's Leader and
//!   the first answer of Observe: every read but a serializable Range, Watch,
//!   Status, Hash and HashKV (each about the member asked) is linearizable
//!   on every member.
//! - **Watches** are served by the member the client is connected to, from
//!   its own applied log.
//!
//! A forwarded call carries the [`FORWARDED_HEADER`] metadata; a member that
//! is not the master refuses such a call instead of forwarding it again, so a
//! stale view of the master can never loop a request between members.

mod auth;
mod convert;
mod gateway;
mod http;
mod kv;
mod lease;
mod lock;
mod maintenance;
mod ui;
mod watch;

/// The conversions of client requests from their wire types, which the
/// services run on every call: public so that they can be fuzzed.
pub mod client_requests {
    pub use super::convert::{delete_request, put_request, range_request, txn_request, watch_create};
}

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use synod_kv::{Request, Response};
use synod_paxos::NodeId;
use tokio::sync::oneshot;
use tonic::transport::{Channel, Endpoint};
use tonic::Status;

use crate::node::{lock as lock_mutex, Command, Shared, WriteError};
pub use auth::{forward, forwarded_metadata, with_credentials_of, Caller};
pub use convert::HeaderIdentity;

/// Metadata key marking a call forwarded by a follower to the master.
pub const FORWARDED_HEADER: &str = "synod-forwarded";
/// Largest gRPC message accepted from a client, in bytes. Requests between
/// etcd's 1.5 MiB limit and this are refused with etcd's own
/// `request is too large`; beyond it, by the gRPC layer.
pub const GRPC_MESSAGE_BYTES_MAX: usize = 8 << 20;
/// Timeout for connecting to the master when forwarding.
const FORWARD_CONNECT_TIMEOUT: Duration = Duration::from_secs(2);
/// Most keys a client's Range looks at under the store's lock on an async
/// thread (well under a millisecond); a larger one runs on a frozen copy of
/// the store on a blocking-pool thread.
const RANGE_KEYS_IN_PLACE_MAX: usize = 4_096;

/// The etcd-compatible client API of one member.
#[derive(Clone, Debug)]
pub struct Api {
    shared: Arc<Shared>,
    /// Channels to other members' client ports, by URL and whether calls
    /// on them time out.
    channels: Arc<Mutex<HashMap<(String, bool), Channel>>>,
    /// Backup downloads (`Maintenance.Snapshot`) under way, at most
    /// [`maintenance::BACKUP_STREAMS_MAX`]: each holds a frozen store, whose
    /// chunks stay alive while the live store moves on.
    backups: Arc<tokio::sync::Semaphore>,
    /// How to reach other members' client ports when they speak TLS.
    forward_tls: Option<tonic::transport::ClientTlsConfig>,
    /// TLS of the JSON gateway's channel to this member's own port.
    gateway_tls: Option<tonic::transport::ClientTlsConfig>,
    /// Whether a client certificate's common name names the caller
    /// (`--client-cert-auth`).
    certificate_users: bool,
    /// Password hashes computed or checked at once ([`auth::PASSWORD_CHECKS_MAX`]).
    password_checks: Arc<tokio::sync::Semaphore>,
    /// JWT keys, when tokens are JWTs rather than simple tokens.
    jwt: Option<Arc<crate::jwt::JwtKeys>>,
}

/// etcd's answer when no master is known.
pub fn no_leader() -> Status {
    Status::unavailable("etcdserver: no leader")
}

/// etcd's answer when a request's outcome is not known in time.
pub fn timed_out() -> Status {
    Status::unavailable("etcdserver: request timed out")
}

fn write_error(error: WriteError) -> Status {
    match error {
        WriteError::NotMaster(_) => no_leader(),
        WriteError::MasterChanged => Status::unavailable("etcdserver: leader changed"),
        WriteError::TooLarge => Status::invalid_argument("etcdserver: request is too large"),
        WriteError::QueueFull => Status::unavailable("etcdserver: too many requests"),
        WriteError::Unknown => timed_out(),
        WriteError::Stopped => Status::unavailable("etcdserver: server stopped"),
    }
}

/// Marks a request as forwarded.
pub fn forwarded<T>(message: T) -> tonic::Request<T> {
    let mut request = tonic::Request::new(message);
    request
        .metadata_mut()
        .insert(FORWARDED_HEADER, tonic::metadata::MetadataValue::from_static("1"));
    request
}

impl Api {
    /// The API over the state shared with the core.
    pub fn new(
        shared: Arc<Shared>,
        forward_tls: Option<tonic::transport::ClientTlsConfig>,
        certificate_users: bool,
        jwt: Option<Arc<crate::jwt::JwtKeys>>,
    ) -> Api {
        Api {
            shared,
            forward_tls,
            gateway_tls: None,
            certificate_users,
            jwt,
            password_checks: auth::password_checks(),
            channels: Arc::new(Mutex::new(HashMap::new())),
            backups: Arc::new(tokio::sync::Semaphore::new(maintenance::BACKUP_STREAMS_MAX)),
        }
    }

    /// Sets the TLS the JSON gateway dials this member's own port with
    /// (`ClientTls::gateway`); without it an `https://` port gets no gateway.
    pub fn with_gateway_tls(mut self, tls: Option<tonic::transport::ClientTlsConfig>) -> Api {
        self.gateway_tls = tls;
        self
    }

    /// The state shared with the core.
    pub fn shared(&self) -> &Arc<Shared> {
        &self.shared
    }

    /// Header identity fields as of now.
    pub fn identity(&self) -> HeaderIdentity {
        HeaderIdentity {
            cluster_id: self.shared.identity.cluster_id,
            member_id: self.shared.identity.member_id,
            raft_term: self.shared.current_status().round,
        }
    }

    /// Where a request only the master may answer goes: `None` to answer it
    /// here, or a channel to the master whose calls time out after the
    /// request timeout.
    pub fn route<T>(&self, request: &tonic::Request<T>) -> Result<Option<Channel>, Status> {
        self.route_with(request, true)
    }

    /// [`Api::route`] for a call that waits as long as its client does (Lock,
    /// Campaign, as in etcd): the channel to the master sets no timeout of its
    /// own.
    pub fn route_waiting<T>(&self, request: &tonic::Request<T>) -> Result<Option<Channel>, Status> {
        self.route_with(request, false)
    }

    fn route_with<T>(&self, request: &tonic::Request<T>, timed: bool) -> Result<Option<Channel>, Status> {
        let status = self.shared.current_status();
        if status.is_master {
            return Ok(None);
        }
        if request.metadata().contains_key(FORWARDED_HEADER) {
            return Err(no_leader());
        }
        let master = status.master.ok_or_else(no_leader)?;
        let url = self.shared.client_url_of(master).ok_or_else(no_leader)?;
        self.shared
            .metrics
            .proposals_forwarded
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let mut channels = lock_mutex(&self.channels);
        if let Some(channel) = channels.get(&(url.clone(), timed)) {
            return Ok(Some(channel.clone()));
        }
        let mut endpoint = Endpoint::from_shared(url.clone())
            .map_err(|_| no_leader())?
            .connect_timeout(FORWARD_CONNECT_TIMEOUT);
        if timed {
            endpoint = endpoint.timeout(self.shared.tunables.request_timeout);
        }
        if let Some(tls) = &self.forward_tls {
            endpoint = endpoint.tls_config(tls.clone()).map_err(|_| no_leader())?;
        }
        let channel = endpoint.connect_lazy();
        channels.insert((url, timed), channel.clone());
        Ok(Some(channel))
    }

    /// Sends a command to the core and waits for its answer within the request timeout.
    async fn ask<T>(&self, command: impl FnOnce(oneshot::Sender<T>) -> Command) -> Result<T, Status> {
        let (reply, answer) = oneshot::channel();
        let timeout = self.shared.tunables.request_timeout;
        let send = self.shared.commands.send(command(reply));
        match tokio::time::timeout(timeout, send).await {
            Ok(Ok(())) => {}
            Ok(Err(_)) => return Err(write_error(WriteError::Stopped)),
            Err(_) => return Err(timed_out()),
        }
        match tokio::time::timeout(timeout, answer).await {
            Ok(Ok(answer)) => Ok(answer),
            Ok(Err(_)) => Err(write_error(WriteError::Stopped)),
            Err(_) => {
                self.shared
                    .metrics
                    .proposals_timed_out
                    .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                Err(timed_out())
            }
        }
    }

    /// Puts a request through the log at this member (the master) on behalf
    /// of `caller` and returns its applied result.
    pub async fn write(&self, caller: &Caller, request: Request) -> Result<Response, Status> {
        // Alarms go through: the operator disarms CORRUPT through them.
        if !matches!(request, Request::Alarm(_)) {
            refuse_if_corrupt(&self.shared)?;
        }
        let request = caller.wrap(request);
        if let Some(adds) = request.quota_bytes() {
            let used = self.shared.store().retained_bytes();
            if used.saturating_add(adds) > self.shared.tunables.quota_backend_bytes {
                self.raise_nospace(used).await;
                return Err(convert::kv_error(synod_kv::KvError::DatabaseSpaceExceeded));
            }
        }
        self.submit_entry(request).await
    }

    /// Raises this member's NOSPACE alarm through the log, unless it is
    /// raised already, as etcd's quota check does: from then on every member
    /// refuses puts until an operator disarms it. Failing to raise it (no
    /// master, say) is logged; the write that found the quota passed is
    /// refused either way.
    async fn raise_nospace(&self, used_bytes: u64) {
        let member_id = self.shared.identity.member_id;
        let raised = self
            .shared
            .store()
            .alarms(synod_kv::AlarmType::Nospace)
            .alarms
            .iter()
            .any(|alarm| alarm.member_id == member_id);
        if raised {
            return;
        }
        let quota_bytes = self.shared.tunables.quota_backend_bytes;
        tracing::warn!(used_bytes, quota_bytes, "space quota passed: raising the NOSPACE alarm");
        let alarm = Request::Alarm(synod_kv::AlarmRequest {
            action: synod_kv::AlarmAction::Activate,
            member_id,
            alarm: synod_kv::AlarmType::Nospace,
        });
        if let Err(error) = self.submit_entry(alarm).await {
            tracing::warn!(%error, "cannot raise the NOSPACE alarm");
        }
    }

    /// One entry through the log, no quota checked.
    async fn submit_entry(&self, request: Request) -> Result<Response, Status> {
        let bytes = self.shared.store().prepare(&request).map_err(convert::kv_error)?;
        let value = bytes::Bytes::from(bytes);
        let applied = self
            .ask(|reply| Command::Submit { value, reply })
            .await?
            .map_err(write_error)?;
        applied.result.map_err(convert::kv_error)
    }

    /// Runs a consistency check now (see `node/consistency.rs`), at the
    /// master only.
    pub async fn check_consistency(&self) -> Result<crate::node::CheckReport, CheckRefused> {
        let refused = |reason: String, master: Option<NodeId>| CheckRefused {
            reason,
            master_url: master.and_then(|node| self.shared.client_url_of(node.0)),
        };
        match self.ask(|reply| Command::CheckConsistency { reply }).await {
            Ok(Ok(report)) => Ok(report),
            Ok(Err(WriteError::NotMaster(master))) => Err(refused("not the master".to_string(), master)),
            Ok(Err(error)) => Err(refused(write_error(error).message().to_string(), None)),
            Err(status) => Err(refused(status.message().to_string(), None)),
        }
    }

    /// Waits until this member (the master) may answer a linearizable read.
    pub async fn linearizable_point(&self) -> Result<(), Status> {
        let instance = self
            .ask(|reply| Command::ReadIndex { reply })
            .await?
            .map_err(write_error)?;
        if self
            .shared
            .wait_applied(instance, self.shared.tunables.request_timeout)
            .await
        {
            Ok(())
        } else {
            Err(timed_out())
        }
    }

    /// A read at this member, linearizable or not.
    pub async fn read_here(
        &self,
        request: synod_kv::RangeRequest,
        linearizable: bool,
    ) -> Result<synod_proto::etcdserverpb::RangeResponse, Status> {
        if linearizable {
            self.linearizable_point().await?;
        }
        let identity = self.identity();
        let response = range(&self.shared, request, RANGE_KEYS_IN_PLACE_MAX).await?;
        Ok(convert::range_response(identity, response))
    }
}

/// A Range on this member's store. One that looks at more than
/// `keys_in_place_max` keys costs time in proportion to the store: it gives up
/// and runs again on a frozen copy (taken under the lock, cheap) on a
/// blocking-pool thread, so neither this async thread nor the core task,
/// which needs the lock to apply, waits for it.
async fn range(
    shared: &Shared,
    request: synod_kv::RangeRequest,
    keys_in_place_max: usize,
) -> Result<synod_kv::RangeResponse, Status> {
    refuse_if_corrupt(shared)?;
    let in_place = shared.store().range_within(&request, keys_in_place_max);
    let response = match in_place {
        Some(response) => response,
        None => {
            let frozen = shared.store().freeze();
            match tokio::task::spawn_blocking(move || frozen.range(&request)).await {
                Ok(response) => response,
                Err(error) if error.is_panic() => std::panic::resume_unwind(error.into_panic()),
                Err(_) => return Err(write_error(WriteError::Stopped)),
            }
        }
    };
    response.map_err(convert::kv_error)
}

/// Why `/consistency` ran no check here.
#[derive(Debug)]
pub struct CheckRefused {
    /// What stopped it.
    pub reason: String,
    /// The master's client URL, when this member is not it and knows it.
    pub master_url: Option<String>,
}

/// etcd's answer from a member whose state is known corrupt: such a member's
/// CORRUPT alarm is raised (the consistency check found its state hash in the
/// minority), so nothing it would answer from its store can be trusted.
pub fn refuse_if_corrupt(shared: &Shared) -> Result<(), Status> {
    if shared.corrupt.load(std::sync::atomic::Ordering::Relaxed) {
        return Err(Status::data_loss("etcdserver: corrupt cluster"));
    }
    Ok(())
}

pub use http::serve;

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use synod_kv::{PutRequest, RangeRequest, Request, Store};

    use super::*;
    use crate::config::Tunables;
    use crate::identity::Identity;
    use crate::metrics::Metrics;

    #[tokio::test]
    async fn a_large_range_gives_the_same_answer_from_a_frozen_copy() {
        let mut store = Store::new(crate::node::kv_config());
        for key in 0..300 {
            let put = Request::Put(PutRequest {
                key: format!("key-{key:03}").into_bytes(),
                value: b"v".to_vec(),
                ..PutRequest::default()
            });
            assert!(store.apply(&put).result.is_ok());
        }
        let identity = Identity {
            name: "a".to_string(),
            member_id: 1,
            cluster_id: 1,
            initial_cluster: String::new(),
            token: String::new(),
            members: Vec::new(),
        };
        let (shared, _, _) = crate::node::shared(
            identity,
            String::new(),
            Tunables::default(),
            Arc::new(Metrics::default()),
            store,
        );
        let request = RangeRequest {
            key: b"key-".to_vec(),
            range_end: b"key.".to_vec(),
            limit: 10,
            ..RangeRequest::default()
        };
        let expected = shared.store().range(&request).unwrap();
        assert_eq!(expected.count, 300);
        assert_eq!(range(&shared, request.clone(), 1_000).await.unwrap(), expected);
        assert_eq!(range(&shared, request.clone(), 10).await.unwrap(), expected);
        let empty = RangeRequest::default();
        assert!(range(&shared, empty, 10).await.is_err());
    }
}
