//! The etcd v3 client API over gRPC, and `/health`, `/version`, `/metrics`
//! over HTTP/1, on one port.
//!
//! # Who answers what
//!
//! - **Writes** (Put, DeleteRange, Txn, Compact, LeaseGrant, LeaseRevoke) go
//!   through the log. At the master: encode the request (synod-kv's
//!   `Store::prepare`), submit it, answer once it is applied here. At a
//!   follower: **forwarded** to the master's client port as the same gRPC
//!   call, so a client may talk to any member. With no master known the answer
//!   is Unavailable `etcdserver: no leader`, on which etcd clients retry.
//! - **Linearizable reads** are answered by the master under its master lease
//!   (no log round): take a read point with a fresh clock reading, wait until
//!   it is applied, read. Followers forward them. **Serializable reads** are
//!   answered by any member from its own store.
//! - **Lease keep-alives and time-to-live** need the master's lease deadlines,
//!   so followers forward them too; the list of leases is read locally.
//! - **Watches** are served by the member the client is connected to, from
//!   its own applied log.
//!
//! A forwarded call carries the [`FORWARDED_HEADER`] metadata; a member that
//! is not the master refuses such a call instead of forwarding it again, so a
//! stale view of the master can never loop a request between members.

mod convert;
mod http;
mod kv;
mod lease;
mod lock;
mod maintenance;
mod watch;

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use synod_kv::{Request, Response};
use tokio::sync::oneshot;
use tonic::transport::{Channel, Endpoint};
use tonic::Status;

use crate::node::{lock as lock_mutex, Command, Shared, WriteError};
pub use convert::HeaderIdentity;

/// Metadata key marking a call forwarded by a follower to the master.
pub const FORWARDED_HEADER: &str = "synod-forwarded";
/// Largest gRPC message accepted from a client, in bytes. Requests between
/// etcd's 1.5 MiB limit and this are refused with etcd's own
/// `request is too large`; beyond it, by the gRPC layer.
pub const GRPC_MESSAGE_BYTES_MAX: usize = 8 << 20;
/// Timeout for connecting to the master when forwarding.
const FORWARD_CONNECT_TIMEOUT: Duration = Duration::from_secs(2);

/// The etcd-compatible client API of one member.
#[derive(Clone, Debug)]
pub struct Api {
    shared: Arc<Shared>,
    channels: Arc<Mutex<HashMap<String, Channel>>>,
}

pub fn no_leader() -> Status {
    Status::unavailable("etcdserver: no leader")
}

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
    pub fn new(shared: Arc<Shared>) -> Api {
        Api {
            shared,
            channels: Arc::new(Mutex::new(HashMap::new())),
        }
    }

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
    /// here, or a channel to the master.
    pub fn route<T>(&self, request: &tonic::Request<T>) -> Result<Option<Channel>, Status> {
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
        if let Some(channel) = channels.get(&url) {
            return Ok(Some(channel.clone()));
        }
        let endpoint = Endpoint::from_shared(url.clone())
            .map_err(|_| no_leader())?
            .connect_timeout(FORWARD_CONNECT_TIMEOUT)
            .timeout(self.shared.tunables.request_timeout);
        let channel = endpoint.connect_lazy();
        channels.insert(url, channel.clone());
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

    /// Puts a request through the log at this member (the master) and returns
    /// its applied result.
    pub async fn write(&self, request: Request) -> Result<Response, Status> {
        let bytes = self.shared.store().prepare(&request).map_err(convert::kv_error)?;
        let value = bytes::Bytes::from(bytes);
        let applied = self
            .ask(|reply| Command::Submit { value, reply })
            .await?
            .map_err(write_error)?;
        applied.result.map_err(convert::kv_error)
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
        let response = self.shared.store().range(&request).map_err(convert::kv_error)?;
        Ok(convert::range_response(identity, response))
    }
}

pub use http::serve;
