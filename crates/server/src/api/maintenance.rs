//! `etcdserverpb.Cluster` (member list), `etcdserverpb.Maintenance` (status,
//! alarms, hashes) and `grpc.health.v1.Health`.
//!
//! Alarms are raised and cleared per member through the log, as etcd does,
//! and listed at the master after a linearizable read point (etcd 3.4 sends
//! even a listing through its log), so every member lists the same alarms.
//! A raised NOSPACE alarm refuses puts, txns that put and lease grants on
//! every member until it is disarmed (the store applies that rule, so it is
//! the same everywhere); a member raises its own when a write would pass its
//! `--quota-backend-bytes` (`Api::write`). CORRUPT is recorded only.
//!
//! Membership is fixed for a group's life, so member add, remove, update and
//! promote are refused; so are leader moves and downgrades. A snapshot
//! download is a backup ([`crate::backup`]).

use std::pin::Pin;

use futures_util::Stream;
use synod_kv::{
    AlarmAction as KvAlarmAction, AlarmRequest as KvAlarmRequest, AlarmType as KvAlarmType, Request, Response,
};
use synod_proto::etcdserverpb::alarm_request::AlarmAction;
use synod_proto::etcdserverpb::cluster_server::Cluster;
use synod_proto::etcdserverpb::maintenance_client::MaintenanceClient;
use synod_proto::etcdserverpb::maintenance_server::Maintenance;
use synod_proto::etcdserverpb::{
    AlarmRequest, AlarmResponse, DefragmentRequest, DefragmentResponse, DowngradeRequest, DowngradeResponse,
    HashKvRequest, HashKvResponse, HashRequest, HashResponse, Member, MemberAddRequest, MemberAddResponse,
    MemberListRequest, MemberListResponse, MemberPromoteRequest, MemberPromoteResponse, MemberRemoveRequest,
    MemberRemoveResponse, MemberUpdateRequest, MemberUpdateResponse, MoveLeaderRequest, MoveLeaderResponse,
    SnapshotRequest, SnapshotResponse, StatusRequest, StatusResponse,
};
use synod_proto::grpc::health::v1::health_check_response::ServingStatus;
use synod_proto::grpc::health::v1::health_server::Health;
use synod_proto::grpc::health::v1::{HealthCheckRequest, HealthCheckResponse};
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Request as GrpcRequest, Response as GrpcResponse, Status};

use crate::backup::{BackupPlan, DIGEST_BYTES};

use super::{convert, forward, Api};

/// The etcd version reported to clients (`Status`, `/version`): the API synod
/// speaks is etcd 3.4's. Nothing 3.5 added is served (`Downgrade` is refused,
/// `Defragment` answers no header), and where synod does better than 3.4
/// (linearizable lease lists, for one) a 3.4 client loses nothing.
pub const ETCD_VERSION: &str = "3.4.0";

/// Backup downloads one member serves at once.
pub const BACKUP_STREAMS_MAX: usize = 2;
/// The most bytes of a backup in one `SnapshotResponse`.
const BACKUP_MESSAGE_BYTES: usize = 64 * 1024;
/// Messages of a backup queued for a slow client before encoding waits.
const BACKUP_QUEUE_MESSAGES_MAX: usize = 16;
/// How long MoveLeader waits for the target to become master, in master
/// lease durations: one for the old master to drain what is in flight, one
/// for the target to win the lease (or for the old grants to run out, if a
/// release was late), one to spare.
const MOVE_LEADER_LEASES_MAX: u32 = 3;

fn fixed_membership() -> Status {
    Status::unimplemented("synod: membership is fixed for the group's life")
}

impl Api {
    fn members(&self) -> Vec<Member> {
        let identity = &self.shared.identity;
        identity
            .members
            .iter()
            .map(|member| Member {
                id: member.id,
                name: member.name.clone(),
                peer_urls: vec![format!("http://{}", member.peer_address)],
                client_urls: self.shared.client_url_of(member.id).into_iter().collect(),
                is_learner: false,
            })
            .collect()
    }

    fn revision(&self) -> i64 {
        self.shared.store().revision()
    }
}

#[tonic::async_trait]
impl Cluster for Api {
    async fn member_add(&self, _: GrpcRequest<MemberAddRequest>) -> Result<GrpcResponse<MemberAddResponse>, Status> {
        Err(fixed_membership())
    }

    async fn member_remove(
        &self,
        _: GrpcRequest<MemberRemoveRequest>,
    ) -> Result<GrpcResponse<MemberRemoveResponse>, Status> {
        Err(fixed_membership())
    }

    async fn member_update(
        &self,
        _: GrpcRequest<MemberUpdateRequest>,
    ) -> Result<GrpcResponse<MemberUpdateResponse>, Status> {
        Err(fixed_membership())
    }

    async fn member_list(&self, _: GrpcRequest<MemberListRequest>) -> Result<GrpcResponse<MemberListResponse>, Status> {
        Ok(GrpcResponse::new(MemberListResponse {
            header: self.identity().header(self.revision()),
            members: self.members(),
        }))
    }

    async fn member_promote(
        &self,
        _: GrpcRequest<MemberPromoteRequest>,
    ) -> Result<GrpcResponse<MemberPromoteResponse>, Status> {
        Err(fixed_membership())
    }
}

type SnapshotStream = Pin<Box<dyn Stream<Item = Result<SnapshotResponse, Status>> + Send + 'static>>;

#[tonic::async_trait]
impl Maintenance for Api {
    async fn alarm(&self, request: GrpcRequest<AlarmRequest>) -> Result<GrpcResponse<AlarmResponse>, Status> {
        if let Some(channel) = self.route(&request)? {
            return MaintenanceClient::new(channel).alarm(forward(request)).await;
        }
        let caller = self.caller(&request).await?;
        let AlarmRequest {
            action,
            member_id,
            alarm,
        } = request.into_inner();
        let alarm = convert::alarm_type(alarm)?;
        let action = match AlarmAction::try_from(action) {
            Ok(AlarmAction::Get) => {
                self.linearizable_point().await?;
                let identity = self.identity();
                let alarms = self.shared.store().alarms(alarm);
                return Ok(GrpcResponse::new(convert::alarm_response(identity, alarms)));
            }
            Ok(AlarmAction::Activate) => KvAlarmAction::Activate,
            Ok(AlarmAction::Deactivate) => KvAlarmAction::Deactivate,
            Err(_) => return Err(Status::invalid_argument("etcdserver: invalid alarm action")),
        };
        let is_member = self.shared.identity.members.iter().any(|member| member.id == member_id);
        if action == KvAlarmAction::Activate && alarm != KvAlarmType::None && !is_member {
            return Err(Status::not_found("etcdserver: member not found"));
        }
        let identity = self.identity();
        match self
            .write(
                &caller,
                Request::Alarm(KvAlarmRequest {
                    action,
                    member_id,
                    alarm,
                }),
            )
            .await?
        {
            Response::Alarm(response) => Ok(GrpcResponse::new(convert::alarm_response(identity, response))),
            _ => Err(Status::internal("synod: unexpected response to an alarm")),
        }
    }

    async fn status(&self, _: GrpcRequest<StatusRequest>) -> Result<GrpcResponse<StatusResponse>, Status> {
        let status = self.shared.current_status();
        let (revision, bytes, alarms) = {
            let store = self.shared.store();
            (
                store.revision(),
                store.retained_bytes() as i64,
                store.alarms(KvAlarmType::None).alarms,
            )
        };
        // etcd lists a missing leader, then this member's view of the
        // alarms, among the errors.
        let mut errors = Vec::new();
        if status.master.is_none() {
            errors.push("etcdserver: no leader".to_string());
        }
        errors.extend(alarms.into_iter().map(convert::alarm_text));
        Ok(GrpcResponse::new(StatusResponse {
            header: self.identity().header(revision),
            version: ETCD_VERSION.to_string(),
            db_size: bytes,
            leader: status.master.unwrap_or(0),
            raft_index: status.chosen_through,
            raft_term: status.round,
            raft_applied_index: status.applied_instance,
            errors,
            db_size_in_use: bytes,
            is_learner: false,
            ..StatusResponse::default()
        }))
    }

    async fn defragment(
        &self,
        request: GrpcRequest<DefragmentRequest>,
    ) -> Result<GrpcResponse<DefragmentResponse>, Status> {
        self.check_admin(&self.caller(&request).await?)?;
        // The store is in memory; there is nothing to defragment. etcd
        // answers no header here, and clients check that.
        Ok(GrpcResponse::new(DefragmentResponse { header: None }))
    }

    async fn hash(&self, request: GrpcRequest<HashRequest>) -> Result<GrpcResponse<HashResponse>, Status> {
        self.check_admin(&self.caller(&request).await?)?;
        let (revision, hash) = {
            let store = self.shared.store();
            (store.revision(), store.state_hash())
        };
        Ok(GrpcResponse::new(HashResponse {
            header: self.identity().header(revision),
            hash: (hash ^ (hash >> 32)) as u32,
        }))
    }

    /// The hash of the key-value history visible from the compacted revision
    /// through the one asked for (0: the current one), as etcd's HashKV, so
    /// members at different revisions compare it at one revision. Computed
    /// on a frozen copy off the async threads: it reads every retained change.
    async fn hash_kv(&self, request: GrpcRequest<HashKvRequest>) -> Result<GrpcResponse<HashKvResponse>, Status> {
        self.check_admin(&self.caller(&request).await?)?;
        let asked = request.into_inner().revision;
        let frozen = self.shared.store().freeze();
        let current = frozen.revision();
        let hash_revision = if asked <= 0 { current } else { asked };
        let hashed = tokio::task::spawn_blocking(move || frozen.hash_kv(hash_revision))
            .await
            .map_err(|_| Status::internal("synod: the HashKV task stopped"))?;
        let (hash, compact_revision) = hashed.map_err(convert::kv_error)?;
        Ok(GrpcResponse::new(HashKvResponse {
            header: self.identity().header(current),
            hash,
            compact_revision,
            hash_revision,
        }))
    }

    type SnapshotStream = SnapshotStream;

    /// A backup of this member's state machine as it is now (see
    /// [`crate::backup`]): frozen under the store's lock with the instance it
    /// had applied, encoded and sent from a blocking-pool thread, the file's
    /// SHA-256 last, as etcd sends it. The answer is this member's state, as
    /// etcd's is: ask the master for the newest.
    async fn snapshot(&self, request: GrpcRequest<SnapshotRequest>) -> Result<GrpcResponse<SnapshotStream>, Status> {
        self.check_admin(&self.caller(&request).await?)?;
        let Ok(permit) = self.backups.clone().try_acquire_owned() else {
            return Err(Status::resource_exhausted(format!(
                "synod: {BACKUP_STREAMS_MAX} snapshot downloads are already under way at this member"
            )));
        };
        let (frozen, instance) = {
            let store = self.shared.store();
            let instance = self.shared.current_status().applied_instance;
            (store.freeze(), instance)
        };
        let header = self.identity().header(frozen.revision());
        let (sender, receiver) = mpsc::channel(BACKUP_QUEUE_MESSAGES_MAX);
        tokio::task::spawn_blocking(move || {
            let _permit = permit;
            let plan = BackupPlan::measure(&frozen, instance);
            let content_bytes = plan.summary().file_bytes - DIGEST_BYTES as u64;
            let send = |blob: Vec<u8>, remaining_bytes: u64| {
                sender
                    .blocking_send(Ok(SnapshotResponse {
                        header,
                        remaining_bytes,
                        blob: blob.into(),
                        version: String::new(),
                    }))
                    .map_err(|_| ())
            };
            let mut pending: Vec<u8> = Vec::with_capacity(2 * BACKUP_MESSAGE_BYTES);
            let mut sent = 0u64;
            let written = plan.write(&frozen, |piece| {
                pending.extend_from_slice(piece);
                // The digest (the file's last bytes) goes alone, last.
                while pending.len() >= BACKUP_MESSAGE_BYTES && sent + BACKUP_MESSAGE_BYTES as u64 <= content_bytes {
                    let rest = pending.split_off(BACKUP_MESSAGE_BYTES);
                    sent += BACKUP_MESSAGE_BYTES as u64;
                    send(std::mem::replace(&mut pending, rest), content_bytes - sent)?;
                }
                Ok::<(), ()>(())
            });
            if written.is_err() {
                return;
            }
            let digest = pending.split_off(pending.len() - DIGEST_BYTES);
            sent += pending.len() as u64;
            debug_assert_eq!(sent, content_bytes);
            if !pending.is_empty() && send(pending, 0).is_err() {
                return;
            }
            let _ = send(digest, 0);
        });
        Ok(GrpcResponse::new(Box::pin(ReceiverStream::new(receiver))))
    }

    /// etcd's MoveLeader: the master hands PaxosLease to the member named
    /// and steps down (`Replica::transfer_master`); answered once that
    /// member is master here, as etcd answers once the transferee leads.
    /// Asked of a follower it answers etcd's `not leader`, as etcd does:
    /// `etcdctl move-leader` finds the master among its endpoints itself.
    async fn move_leader(
        &self,
        request: GrpcRequest<MoveLeaderRequest>,
    ) -> Result<GrpcResponse<MoveLeaderResponse>, Status> {
        self.check_admin(&self.caller(&request).await?)?;
        let target = request.into_inner().target_id;
        let not_leader = || Status::failed_precondition("etcdserver: not leader");
        if !self.shared.current_status().is_master {
            return Err(not_leader());
        }
        if !self.shared.identity.members.iter().any(|member| member.id == target) {
            return Err(Status::failed_precondition("etcdserver: bad leader transferee"));
        }
        let mut status = self.shared.status.clone();
        match self
            .ask(|reply| crate::node::Command::TransferMaster { to: target, reply })
            .await?
        {
            Ok(()) => {}
            Err(synod_paxos::TransferError::NotMaster) => return Err(not_leader()),
            Err(synod_paxos::TransferError::NotAMember(_)) => {
                return Err(Status::failed_precondition("etcdserver: bad leader transferee"))
            }
        }
        // The target takes over within a lease time when it is caught up
        // and reachable; past that the handover was given up or the group
        // elected another master.
        let deadline = self.shared.tunables.lease_duration * MOVE_LEADER_LEASES_MAX;
        let moved = tokio::time::timeout(deadline, status.wait_for(|now| now.master == Some(target))).await;
        match moved {
            Ok(Ok(_)) => {
                let revision = self.shared.store().revision();
                Ok(GrpcResponse::new(MoveLeaderResponse {
                    header: self.identity().header(revision),
                }))
            }
            Ok(Err(_)) => Err(Status::unavailable("etcdserver: server stopped")),
            Err(_) => Err(Status::unknown(
                "etcdserver: request timed out, leader transfer took too long",
            )),
        }
    }

    async fn downgrade(&self, _: GrpcRequest<DowngradeRequest>) -> Result<GrpcResponse<DowngradeResponse>, Status> {
        Err(Status::unimplemented("synod: downgrade is not supported"))
    }
}

type HealthStream = Pin<Box<dyn Stream<Item = Result<HealthCheckResponse, Status>> + Send + 'static>>;

impl Api {
    fn serving(&self) -> HealthCheckResponse {
        let healthy = self.shared.current_status().master.is_some();
        let status = if healthy {
            ServingStatus::Serving
        } else {
            ServingStatus::NotServing
        };
        HealthCheckResponse { status: status as i32 }
    }
}

#[tonic::async_trait]
impl Health for Api {
    async fn check(&self, _: GrpcRequest<HealthCheckRequest>) -> Result<GrpcResponse<HealthCheckResponse>, Status> {
        Ok(GrpcResponse::new(self.serving()))
    }

    type WatchStream = HealthStream;

    async fn watch(&self, _: GrpcRequest<HealthCheckRequest>) -> Result<GrpcResponse<HealthStream>, Status> {
        let current = self.serving();
        Ok(GrpcResponse::new(Box::pin(futures_util::stream::iter([Ok(current)]))))
    }
}
