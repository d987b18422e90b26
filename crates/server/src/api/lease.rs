//! `etcdserverpb.Lease`: grant and revoke through the log; keep-alive,
//! time-to-live and the list of leases at the master, after a linearizable
//! read point, so each of them sees every grant and revoke that finished
//! before it was asked, whichever member it is asked of. (The master alone
//! tracks deadlines; etcd 3.4 answers the list from the asked member's own
//! lessor, which on a follower may miss a lease just granted.)

use std::pin::Pin;

use futures_util::{Stream, StreamExt};
use synod_kv::{LeaseGrantRequest as KvGrant, LeaseRevokeRequest as KvRevoke, Request, Response};
use synod_proto::etcdserverpb::lease_client::LeaseClient;
use synod_proto::etcdserverpb::lease_server::Lease;
use synod_proto::etcdserverpb::{
    LeaseGrantRequest, LeaseGrantResponse, LeaseKeepAliveRequest, LeaseKeepAliveResponse, LeaseLeasesRequest,
    LeaseLeasesResponse, LeaseRevokeRequest, LeaseRevokeResponse, LeaseStatus, LeaseTimeToLiveRequest,
    LeaseTimeToLiveResponse,
};
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::metadata::MetadataMap;
use tonic::{Request as GrpcRequest, Response as GrpcResponse, Status, Streaming};

use super::{convert, forward, forwarded_metadata, no_leader, Api};
use crate::node::Command;

/// Keep-alive responses queued for one client stream before it stops reading requests.
const KEEP_ALIVE_QUEUE_MAX: usize = 64;

type KeepAliveStream = Pin<Box<dyn Stream<Item = Result<LeaseKeepAliveResponse, Status>> + Send + 'static>>;

/// One client keep-alive stream's stream to the master, kept open while the
/// master stays the same, so a follower forwards each refresh without opening
/// a stream per request.
struct Upstream {
    requests: mpsc::Sender<LeaseKeepAliveRequest>,
    responses: Streaming<LeaseKeepAliveResponse>,
}

impl Api {
    /// One keep-alive at this member, the master: refresh the deadline. The
    /// read point first: a master that has not yet applied a grant committed
    /// under its predecessor would answer TTL 0, lease gone.
    async fn keep_alive_here(&self, id: i64) -> Result<LeaseKeepAliveResponse, Status> {
        if !self
            .shared
            .keepalive_lapsed_master
            .load(std::sync::atomic::Ordering::Relaxed)
        {
            self.linearizable_point().await?;
        }
        let identity = self.identity();
        let ttl = self
            .ask(|reply| Command::KeepAlive { id, reply })
            .await?
            .ok_or_else(no_leader)?;
        let revision = self.shared.store().revision();
        Ok(LeaseKeepAliveResponse {
            header: identity.header(revision),
            id,
            ttl,
        })
    }

    /// One keep-alive through `upstream`, opened to the master on first use.
    async fn keep_alive_forwarded(
        &self,
        channel: tonic::transport::Channel,
        upstream: &mut Option<Upstream>,
        metadata: &MetadataMap,
        id: i64,
    ) -> Result<LeaseKeepAliveResponse, Status> {
        if upstream.is_none() {
            let (requests, receiver) = mpsc::channel(KEEP_ALIVE_QUEUE_MAX);
            let mut outgoing = GrpcRequest::new(ReceiverStream::new(receiver));
            *outgoing.metadata_mut() = metadata.clone();
            let responses = LeaseClient::new(channel).lease_keep_alive(outgoing).await?.into_inner();
            *upstream = Some(Upstream { requests, responses });
        }
        let Some(open) = upstream.as_mut() else {
            return Err(no_leader());
        };
        let answer = match open.requests.send(LeaseKeepAliveRequest { id }).await {
            Ok(()) => open
                .responses
                .message()
                .await
                .and_then(|message| message.ok_or_else(no_leader)),
            Err(_) => Err(no_leader()),
        };
        if answer.is_err() {
            *upstream = None;
        }
        answer
    }

    /// One keep-alive from a client stream: here at the master, forwarded
    /// elsewhere (once more on a fresh stream if the old one broke, say because
    /// the master changed).
    async fn keep_alive(
        &self,
        upstream: &mut Option<Upstream>,
        metadata: &MetadataMap,
        id: i64,
    ) -> Result<LeaseKeepAliveResponse, Status> {
        let probe = GrpcRequest::new(());
        let Some(channel) = self.route(&probe)? else {
            *upstream = None;
            return self.keep_alive_here(id).await;
        };
        let had_upstream = upstream.is_some();
        match self.keep_alive_forwarded(channel, upstream, metadata, id).await {
            Err(_) if had_upstream => match self.route(&probe)? {
                Some(channel) => self.keep_alive_forwarded(channel, upstream, metadata, id).await,
                None => self.keep_alive_here(id).await,
            },
            answer => answer,
        }
    }
}

#[tonic::async_trait]
impl Lease for Api {
    async fn lease_grant(
        &self,
        request: GrpcRequest<LeaseGrantRequest>,
    ) -> Result<GrpcResponse<LeaseGrantResponse>, Status> {
        if let Some(channel) = self.route(&request)? {
            return LeaseClient::new(channel).lease_grant(forward(request)).await;
        }
        let identity = self.identity();
        let caller = self.caller(&request).await?;
        let grant = request.into_inner();
        match self
            .write(
                &caller,
                Request::LeaseGrant(KvGrant {
                    ttl: grant.ttl,
                    id: grant.id,
                }),
            )
            .await?
        {
            Response::LeaseGrant(response) => Ok(GrpcResponse::new(LeaseGrantResponse {
                header: identity.header(response.header.revision),
                id: response.id,
                ttl: response.ttl,
                error: response.error,
            })),
            _ => Err(Status::internal("synod: unexpected response to a lease grant")),
        }
    }

    async fn lease_revoke(
        &self,
        request: GrpcRequest<LeaseRevokeRequest>,
    ) -> Result<GrpcResponse<LeaseRevokeResponse>, Status> {
        if let Some(channel) = self.route(&request)? {
            return LeaseClient::new(channel).lease_revoke(forward(request)).await;
        }
        let identity = self.identity();
        let caller = self.caller(&request).await?;
        let id = request.into_inner().id;
        match self.write(&caller, Request::LeaseRevoke(KvRevoke { id })).await? {
            Response::LeaseRevoke(response) => Ok(GrpcResponse::new(LeaseRevokeResponse {
                header: identity.header(response.header.revision),
            })),
            _ => Err(Status::internal("synod: unexpected response to a lease revoke")),
        }
    }

    type LeaseKeepAliveStream = KeepAliveStream;

    async fn lease_keep_alive(
        &self,
        request: GrpcRequest<Streaming<LeaseKeepAliveRequest>>,
    ) -> Result<GrpcResponse<Self::LeaseKeepAliveStream>, Status> {
        let is_forwarded = request.metadata().contains_key(super::FORWARDED_HEADER);
        // The caller is checked once, when the stream opens; a follower passes
        // the caller's credentials on to the master, which checks them again.
        self.check_authenticated(&self.caller(&request).await?)?;
        let metadata = forwarded_metadata(&request);
        let mut incoming = request.into_inner();
        let (sender, receiver) = mpsc::channel(KEEP_ALIVE_QUEUE_MAX);
        let api = self.clone();
        tokio::spawn(async move {
            let mut upstream = None;
            while let Some(Ok(keep_alive)) = incoming.next().await {
                let answer = if is_forwarded && !api.shared.current_status().is_master {
                    Err(no_leader())
                } else {
                    api.keep_alive(&mut upstream, &metadata, keep_alive.id).await
                };
                let failed = answer.is_err();
                if sender.send(answer).await.is_err() || failed {
                    break;
                }
            }
        });
        Ok(GrpcResponse::new(Box::pin(ReceiverStream::new(receiver))))
    }

    async fn lease_time_to_live(
        &self,
        request: GrpcRequest<LeaseTimeToLiveRequest>,
    ) -> Result<GrpcResponse<LeaseTimeToLiveResponse>, Status> {
        if let Some(channel) = self.route(&request)? {
            return LeaseClient::new(channel).lease_time_to_live(forward(request)).await;
        }
        let caller = self.caller(&request).await?;
        self.linearizable_point().await?;
        let identity = self.identity();
        let LeaseTimeToLiveRequest { id, keys } = request.into_inner();
        self.check_lease_read(&caller, id)?;
        let response = self
            .ask(|reply| Command::TimeToLive { id, keys, reply })
            .await?
            .ok_or_else(no_leader)?;
        Ok(GrpcResponse::new(convert::time_to_live_response(identity, response)))
    }

    async fn lease_leases(
        &self,
        request: GrpcRequest<LeaseLeasesRequest>,
    ) -> Result<GrpcResponse<LeaseLeasesResponse>, Status> {
        if let Some(channel) = self.route(&request)? {
            return LeaseClient::new(channel).lease_leases(forward(request)).await;
        }
        self.check_authenticated(&self.caller(&request).await?)?;
        self.linearizable_point().await?;
        let identity = self.identity();
        let leases = self.shared.store().lease_leases();
        Ok(GrpcResponse::new(LeaseLeasesResponse {
            header: identity.header(leases.header.revision),
            leases: leases.leases.into_iter().map(|id| LeaseStatus { id }).collect(),
        }))
    }
}
