//! `v3lockpb.Lock` and `v3electionpb.Election`: etcd's lock and election
//! recipes, run at the master on top of the same log and store.
//!
//! A lock or candidacy is a key `name/<lease in hex>` attached to the
//! caller's lease, created only if absent. The holder (the leader) is the key
//! with the lowest create revision under `name/`; a waiter waits until no key
//! under `name/` was created before its own. The key's create revision is a
//! fencing token: it only grows from holder to holder.
//!
//! Waiting re-checks the store each time the core applies something, so a
//! holder's key deleted by unlock, resign or lease expiry wakes the next one.
//! Followers forward these calls to the master; a Lock or Campaign waits
//! there as long as its client does, not only the request timeout.
//!
//! A Lock or Campaign with lease 0 runs on a session of its own, as etcd's
//! lock and election services do (`concurrency.NewSession`): the master
//! grants a lease of [`SESSION_TTL_SECONDS`] and the key is put on it. The
//! call refreshes that lease while it waits (etcd stops refreshing at once,
//! so a wait longer than the TTL loses the key there); once the lock or
//! leadership is won, the lease is the caller's to keep alive (its ID is the
//! key's suffix and the `LeaderKey`'s lease) or to let expire. A call that
//! fails or is cancelled before it wins revokes the session lease it granted,
//! or deletes the key it created on the caller's lease (as etcd's mutex does),
//! so an abandoned waiter never blocks the ones behind it.

use std::future::Future;
use std::pin::Pin;
use std::time::Duration;

use futures_util::Stream;
use synod_kv::{
    Compare, CompareResult, CompareTarget, DeleteRangeRequest, KeyValue, LeaseGrantRequest, LeaseRevokeRequest,
    PutRequest, RangeRequest, Request, RequestOp, Response, ResponseOp, SortOrder, SortTarget, TargetUnion, TxnRequest,
    TxnResponse,
};
use synod_proto::prefix_end;
use synod_proto::v3electionpb::election_client::ElectionClient;
use synod_proto::v3electionpb::election_server::Election;
use synod_proto::v3electionpb::{
    CampaignRequest, CampaignResponse, LeaderKey, LeaderRequest, LeaderResponse, ProclaimRequest, ProclaimResponse,
    ResignRequest, ResignResponse,
};
use synod_proto::v3lockpb::lock_client::LockClient;
use synod_proto::v3lockpb::lock_server::Lock;
use synod_proto::v3lockpb::{LockRequest, LockResponse, UnlockRequest, UnlockResponse};
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Request as GrpcRequest, Response as GrpcResponse, Status};

use super::{convert, forward, with_credentials_of, Api, Caller};
use crate::node::Command;

/// Observe responses queued for one client before its task waits.
const OBSERVE_QUEUE_MAX: usize = 16;
/// A waiter re-checks at least this often even if nothing is applied.
const WAIT_RECHECK: Duration = Duration::from_millis(500);
/// Longest lock or election name, in bytes.
const NAME_BYTES_MAX: usize = 4_096;
/// TTL of the session lease granted for a Lock or Campaign given lease 0,
/// in seconds (etcd's `concurrency` default).
pub const SESSION_TTL_SECONDS: i64 = 60;
/// How often a waiting call refreshes its session lease: a third of its TTL.
const SESSION_KEEP_ALIVE_INTERVAL: Duration = Duration::from_secs(SESSION_TTL_SECONDS as u64 / 3);

/// The lease a Lock or Campaign holds its key on.
#[derive(Clone, Copy, Debug)]
struct Session {
    lease: i64,
    /// Granted by this call (lease 0 asked), not the caller's.
    owned: bool,
}

/// Undoes a Lock or Campaign that did not win: revokes the session lease it
/// granted, or deletes the key it created on the caller's lease. Runs on
/// drop, so a call cancelled by its client is undone too.
struct Abandon {
    api: Api,
    session: Session,
    created_key: Option<Vec<u8>>,
    armed: bool,
}

impl Abandon {
    fn new(api: &Api, session: Session) -> Abandon {
        Abandon {
            api: api.clone(),
            session,
            created_key: None,
            armed: true,
        }
    }

    /// The call won: keep what it made.
    fn disarm(mut self) {
        self.armed = false;
    }
}

impl Drop for Abandon {
    fn drop(&mut self) {
        if !self.armed {
            return;
        }
        let request = if self.session.owned {
            Request::LeaseRevoke(LeaseRevokeRequest { id: self.session.lease })
        } else if let Some(key) = self.created_key.take() {
            Request::DeleteRange(DeleteRangeRequest {
                key,
                ..DeleteRangeRequest::default()
            })
        } else {
            return;
        };
        let api = self.api.clone();
        // Not awaited by anyone: if it fails (say, the master changed), an
        // owned session lease still expires, and a key on the caller's
        // lease goes with that lease.
        tokio::spawn(async move {
            if let Err(error) = api.write(&Caller::Server, request).await {
                tracing::debug!(%error, "undoing an abandoned lock or campaign failed");
            }
        });
    }
}

fn candidate_key(name: &[u8], lease: i64) -> Vec<u8> {
    let mut key = name.to_vec();
    key.extend_from_slice(format!("/{lease:x}").as_bytes());
    key
}

fn check_name(name: &[u8]) -> Result<(), Status> {
    if name.is_empty() {
        return Err(Status::invalid_argument("etcdserver: key is not provided"));
    }
    if name.len() > NAME_BYTES_MAX {
        return Err(Status::invalid_argument("etcdserver: request is too large"));
    }
    Ok(())
}

fn prefix_of(name: &[u8]) -> Vec<u8> {
    let mut prefix = name.to_vec();
    prefix.push(b'/');
    prefix
}

impl Api {
    async fn txn(&self, caller: &Caller, txn: TxnRequest) -> Result<TxnResponse, Status> {
        match self.write(caller, Request::Txn(txn)).await? {
            Response::Txn(response) => Ok(response),
            _ => Err(Status::internal("synod: unexpected response to a txn")),
        }
    }

    /// The lease a Lock or Campaign holds its key on: the caller's, or for
    /// lease 0 a session lease granted now.
    async fn session(&self, caller: &Caller, lease: i64) -> Result<Session, Status> {
        if lease != 0 {
            return Ok(Session { lease, owned: false });
        }
        match self
            .write(
                caller,
                Request::LeaseGrant(LeaseGrantRequest {
                    ttl: SESSION_TTL_SECONDS,
                    id: 0,
                }),
            )
            .await?
        {
            Response::LeaseGrant(granted) => Ok(Session {
                lease: granted.id,
                owned: true,
            }),
            _ => Err(Status::internal("synod: unexpected response to a lease grant")),
        }
    }

    /// Runs `work`, refreshing the session lease meanwhile if this call owns it.
    async fn keeping_alive<T>(
        &self,
        session: Session,
        work: impl Future<Output = Result<T, Status>>,
    ) -> Result<T, Status> {
        if !session.owned {
            return work.await;
        }
        let refresh = async {
            let mut interval = tokio::time::interval(SESSION_KEEP_ALIVE_INTERVAL);
            interval.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            interval.tick().await;
            loop {
                interval.tick().await;
                // A refresh that fails (no longer master) needs no answer:
                // the wait fails on its own.
                let _ = self
                    .ask(|reply| Command::KeepAlive {
                        id: session.lease,
                        reply,
                    })
                    .await;
            }
        };
        tokio::select! {
            result = work => result,
            () = refresh => Err(super::timed_out()),
        }
    }

    /// Puts the key of a Lock or Campaign on its session and waits for its
    /// turn; returns the key's create revision. Undone if it does not win.
    async fn acquire(
        &self,
        caller: &Caller,
        name: &[u8],
        session: Session,
        value: &[u8],
    ) -> Result<(Vec<u8>, i64), Status> {
        let key = candidate_key(name, session.lease);
        let mut abandon = Abandon::new(self, session);
        let won = self
            .keeping_alive(session, async {
                let (revision, created) = self.create_candidate(caller, &key, session.lease, value).await?;
                if created {
                    abandon.created_key = Some(key.clone());
                }
                self.wait_turn(&prefix_of(name), &key, revision).await?;
                Ok(revision)
            })
            .await;
        let revision = won?;
        abandon.disarm();
        Ok((key, revision))
    }

    /// Creates `key` on `lease` with `value` unless it exists; returns its
    /// create revision, and whether this call created it.
    async fn create_candidate(
        &self,
        caller: &Caller,
        key: &[u8],
        lease: i64,
        value: &[u8],
    ) -> Result<(i64, bool), Status> {
        if self.shared.store().lease(lease).is_none() {
            return Err(Status::not_found("etcdserver: requested lease not found"));
        }
        let response = self
            .txn(
                caller,
                TxnRequest {
                    compare: vec![Compare {
                        result: CompareResult::Equal,
                        target: CompareTarget::Create,
                        key: key.to_vec(),
                        target_union: TargetUnion::CreateRevision(0),
                        range_end: Vec::new(),
                    }],
                    success: vec![RequestOp::Put(PutRequest {
                        key: key.to_vec(),
                        value: value.to_vec(),
                        lease,
                        ..PutRequest::default()
                    })],
                    failure: vec![RequestOp::Range(RangeRequest {
                        key: key.to_vec(),
                        ..RangeRequest::default()
                    })],
                },
            )
            .await?;
        if response.succeeded {
            return Ok((response.header.revision, true));
        }
        match response.responses.first() {
            Some(ResponseOp::Range(range)) => range
                .kvs
                .first()
                .map(|kv| (kv.create_revision, false))
                .ok_or_else(|| Status::aborted("synod: candidate key vanished; retry")),
            _ => Err(Status::internal("synod: unexpected txn response")),
        }
    }

    /// The key under `prefix` created last before `revision`, if any.
    fn predecessor(&self, prefix: &[u8], revision: i64) -> Result<Option<KeyValue>, Status> {
        let request = RangeRequest {
            key: prefix.to_vec(),
            range_end: prefix_end(prefix),
            limit: 1,
            sort_order: SortOrder::Descend,
            sort_target: SortTarget::Create,
            max_create_revision: revision - 1,
            keys_only: true,
            ..RangeRequest::default()
        };
        let response = self.shared.store().range(&request).map_err(convert::kv_error)?;
        Ok(response.kvs.into_iter().next())
    }

    /// The oldest key under `prefix`: the holder.
    fn holder(&self, prefix: &[u8]) -> Result<Option<KeyValue>, Status> {
        let request = RangeRequest {
            key: prefix.to_vec(),
            range_end: prefix_end(prefix),
            limit: 1,
            sort_order: SortOrder::Ascend,
            sort_target: SortTarget::Create,
            ..RangeRequest::default()
        };
        let response = self.shared.store().range(&request).map_err(convert::kv_error)?;
        Ok(response.kvs.into_iter().next())
    }

    fn exists(&self, key: &[u8]) -> Result<bool, Status> {
        let request = RangeRequest {
            key: key.to_vec(),
            count_only: true,
            ..RangeRequest::default()
        };
        let response = self.shared.store().range(&request).map_err(convert::kv_error)?;
        Ok(response.count > 0)
    }

    /// Waits until no key under `prefix` was created before `revision`, while
    /// `key` (the caller's) still exists.
    async fn wait_turn(&self, prefix: &[u8], key: &[u8], revision: i64) -> Result<(), Status> {
        let mut status = self.shared.status.clone();
        loop {
            status.borrow_and_update();
            if !self.exists(key)? {
                return Err(Status::not_found("etcdserver: requested lease not found"));
            }
            if self.predecessor(prefix, revision)?.is_none() {
                return Ok(());
            }
            if !self.shared.current_status().is_master {
                return Err(super::no_leader());
            }
            let _ = tokio::time::timeout(WAIT_RECHECK, status.changed()).await;
        }
    }

    async fn delete_key(&self, caller: &Caller, key: Vec<u8>) -> Result<i64, Status> {
        match self
            .write(
                caller,
                Request::DeleteRange(DeleteRangeRequest {
                    key,
                    ..DeleteRangeRequest::default()
                }),
            )
            .await?
        {
            Response::DeleteRange(response) => Ok(response.header.revision),
            _ => Err(Status::internal("synod: unexpected response to a delete")),
        }
    }

    /// A txn guarded by the leader key's create revision.
    async fn as_leader(&self, caller: &Caller, leader: &LeaderKey, op: RequestOp) -> Result<i64, Status> {
        let response = self
            .txn(
                caller,
                TxnRequest {
                    compare: vec![Compare {
                        result: CompareResult::Equal,
                        target: CompareTarget::Create,
                        key: leader.key.to_vec(),
                        target_union: TargetUnion::CreateRevision(leader.rev),
                        range_end: Vec::new(),
                    }],
                    success: vec![op],
                    failure: Vec::new(),
                },
            )
            .await?;
        if !response.succeeded {
            return Err(Status::failed_precondition("election: not leader"));
        }
        Ok(response.header.revision)
    }
}

#[tonic::async_trait]
impl Lock for Api {
    async fn lock(&self, request: GrpcRequest<LockRequest>) -> Result<GrpcResponse<LockResponse>, Status> {
        if let Some(channel) = self.route_waiting(&request)? {
            return LockClient::new(channel).lock(forward(request)).await;
        }
        let caller = self.caller(&request).await?;
        let LockRequest { name, lease } = request.into_inner();
        check_name(&name)?;
        let session = self.session(&caller, lease).await?;
        let (key, _) = self.acquire(&caller, &name, session, b"").await?;
        let current = self.shared.store().revision();
        Ok(GrpcResponse::new(LockResponse {
            header: self.identity().header(current),
            key: key.into(),
        }))
    }

    async fn unlock(&self, request: GrpcRequest<UnlockRequest>) -> Result<GrpcResponse<UnlockResponse>, Status> {
        if let Some(channel) = self.route(&request)? {
            return LockClient::new(channel).unlock(forward(request)).await;
        }
        let caller = self.caller(&request).await?;
        let key = request.into_inner().key.to_vec();
        let revision = self.delete_key(&caller, key).await?;
        Ok(GrpcResponse::new(UnlockResponse {
            header: self.identity().header(revision),
        }))
    }
}

type ObserveStream = Pin<Box<dyn Stream<Item = Result<LeaderResponse, Status>> + Send + 'static>>;

#[tonic::async_trait]
impl Election for Api {
    async fn campaign(&self, request: GrpcRequest<CampaignRequest>) -> Result<GrpcResponse<CampaignResponse>, Status> {
        if let Some(channel) = self.route_waiting(&request)? {
            return ElectionClient::new(channel).campaign(forward(request)).await;
        }
        let caller = self.caller(&request).await?;
        let CampaignRequest { name, lease, value } = request.into_inner();
        check_name(&name)?;
        let session = self.session(&caller, lease).await?;
        let (key, revision) = self.acquire(&caller, &name, session, &value).await?;
        let current = self.shared.store().revision();
        Ok(GrpcResponse::new(CampaignResponse {
            header: self.identity().header(current),
            leader: Some(LeaderKey {
                name,
                key: key.into(),
                rev: revision,
                lease: session.lease,
            }),
        }))
    }

    async fn proclaim(&self, request: GrpcRequest<ProclaimRequest>) -> Result<GrpcResponse<ProclaimResponse>, Status> {
        if let Some(channel) = self.route(&request)? {
            return ElectionClient::new(channel).proclaim(forward(request)).await;
        }
        let caller = self.caller(&request).await?;
        let ProclaimRequest { leader, value } = request.into_inner();
        let leader = leader.ok_or_else(|| Status::invalid_argument("election: no leader key given"))?;
        let put = RequestOp::Put(PutRequest {
            key: leader.key.to_vec(),
            value: value.to_vec(),
            lease: leader.lease,
            ..PutRequest::default()
        });
        let revision = self.as_leader(&caller, &leader, put).await?;
        Ok(GrpcResponse::new(ProclaimResponse {
            header: self.identity().header(revision),
        }))
    }

    async fn leader(&self, request: GrpcRequest<LeaderRequest>) -> Result<GrpcResponse<LeaderResponse>, Status> {
        if let Some(channel) = self.route(&request)? {
            return ElectionClient::new(channel).leader(forward(request)).await;
        }
        let caller = self.caller(&request).await?;
        let name = request.into_inner().name;
        check_name(&name)?;
        let prefix = prefix_of(&name);
        self.linearizable_point().await?;
        self.check_read(&caller, &prefix, &prefix_end(&prefix))?;
        let holder = self
            .holder(&prefix)?
            .ok_or_else(|| Status::not_found("election: no leader"))?;
        let revision = self.shared.store().revision();
        Ok(GrpcResponse::new(LeaderResponse {
            header: self.identity().header(revision),
            kv: Some(convert::key_value(holder)),
        }))
    }

    type ObserveStream = ObserveStream;

    async fn observe(&self, request: GrpcRequest<LeaderRequest>) -> Result<GrpcResponse<ObserveStream>, Status> {
        let caller = self.caller(&request).await?;
        let first_request = with_credentials_of(&request, LeaderRequest::default());
        let name = request.into_inner().name;
        check_name(&name)?;
        let prefix = prefix_of(&name);
        self.check_read(&caller, &prefix, &prefix_end(&prefix))?;
        // The first answer is linearizable: it goes through Leader, which asks
        // the master. Later answers follow this replica's applied log, never
        // older than the first one (a follower may still be catching up to it).
        let mut first_request = first_request;
        first_request.get_mut().name = name.clone();
        let first = match self.leader(first_request).await {
            Ok(response) => response.into_inner(),
            Err(status) if status.code() == tonic::Code::NotFound => LeaderResponse::default(),
            Err(status) => return Err(status),
        };
        let floor = first.kv.as_ref().map_or(0, |kv| kv.mod_revision);
        let (sender, receiver) = mpsc::channel(OBSERVE_QUEUE_MAX);
        let api = self.clone();
        tokio::spawn(async move {
            let mut status = api.shared.status.clone();
            let mut last: Option<(Vec<u8>, i64)> = None;
            if let Some(kv) = &first.kv {
                last = Some((kv.key.to_vec(), kv.mod_revision));
                if sender.send(Ok(first.clone())).await.is_err() {
                    return;
                }
            }
            loop {
                status.borrow_and_update();
                let holder = match api.holder(&prefix) {
                    Ok(holder) => holder,
                    Err(error) => {
                        let _ = sender.send(Err(error)).await;
                        return;
                    }
                };
                if let Some(holder) = holder.filter(|holder| holder.mod_revision >= floor) {
                    let seen = (holder.key.to_vec(), holder.mod_revision);
                    if last.as_ref() != Some(&seen) {
                        last = Some(seen);
                        let revision = api.shared.store().revision();
                        let response = LeaderResponse {
                            header: api.identity().header(revision),
                            kv: Some(convert::key_value(holder)),
                        };
                        if sender.send(Ok(response)).await.is_err() {
                            return;
                        }
                    }
                }
                tokio::select! {
                    _ = sender.closed() => return,
                    _ = tokio::time::timeout(WAIT_RECHECK, status.changed()) => {}
                }
            }
        });
        Ok(GrpcResponse::new(Box::pin(ReceiverStream::new(receiver))))
    }

    async fn resign(&self, request: GrpcRequest<ResignRequest>) -> Result<GrpcResponse<ResignResponse>, Status> {
        if let Some(channel) = self.route(&request)? {
            return ElectionClient::new(channel).resign(forward(request)).await;
        }
        let caller = self.caller(&request).await?;
        let leader = request
            .into_inner()
            .leader
            .ok_or_else(|| Status::invalid_argument("election: no leader key given"))?;
        let delete = RequestOp::DeleteRange(DeleteRangeRequest {
            key: leader.key.to_vec(),
            ..DeleteRangeRequest::default()
        });
        let revision = self.as_leader(&caller, &leader, delete).await?;
        Ok(GrpcResponse::new(ResignResponse {
            header: self.identity().header(revision),
        }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn candidate_keys() {
        assert_eq!(candidate_key(b"job", 255), b"job/ff".to_vec());
    }
}
