//! `etcdserverpb.KV`: Range, Put, DeleteRange, Txn, Compact.
//!
//! A Put, DeleteRange or Txn may carry a Chubby sequencer in the
//! [`SEQUENCER_HEADER`] metadata: it then runs only while the lock it names
//! is still held by the same holder, inside one Txn guarded by the lock key's
//! create revision and lease ([`Sequencer::guard`]), so a holder paused past
//! its lease cannot write once another client has the lock. A follower
//! forwards the header with the call.

use synod_kv::{KvError, RequestOp, ResponseOp, Sequencer};
use synod_kv::{Request, Response};
use synod_proto::etcdserverpb::kv_client::KvClient;
use synod_proto::etcdserverpb::kv_server::Kv;
use synod_proto::etcdserverpb::{
    CompactionRequest, CompactionResponse, DeleteRangeRequest, DeleteRangeResponse, PutRequest, PutResponse,
    RangeRequest, RangeResponse, TxnRequest, TxnResponse,
};
use tonic::{Request as GrpcRequest, Response as GrpcResponse, Status};

use super::{convert, forward, Api, Caller, GRPC_MESSAGE_BYTES_MAX};

/// Metadata key of a sequencer: `LOCK_KEY_HEX/CREATE_REVISION/LEASE_HEX`
/// (the lock key's bytes in hex, its create revision in decimal, its lease ID
/// in hex as etcdctl prints it).
pub const SEQUENCER_HEADER: &str = "synod-sequencer";
/// Longest sequencer header accepted, in bytes.
const SEQUENCER_HEADER_BYTES_MAX: usize = 8 * 1024;

/// The sequencer a call carries, if any; a malformed one is refused.
fn sequencer_of<T>(request: &GrpcRequest<T>) -> Result<Option<Sequencer>, Status> {
    let Some(value) = request.metadata().get(SEQUENCER_HEADER) else {
        return Ok(None);
    };
    let invalid = |why: &str| {
        Status::invalid_argument(format!(
            "synod: {SEQUENCER_HEADER} must be LOCK_KEY_HEX/CREATE_REVISION/LEASE_HEX: {why}"
        ))
    };
    let text = value.to_str().map_err(|_| invalid("not ASCII"))?;
    if text.len() > SEQUENCER_HEADER_BYTES_MAX {
        return Err(invalid("too long"));
    }
    let mut parts = text.split('/');
    let (Some(key), Some(create_revision), Some(lease), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return Err(invalid("not three parts"));
    };
    if key.is_empty() || key.len() % 2 != 0 {
        return Err(invalid("the key is not hex"));
    }
    let key = (0..key.len())
        .step_by(2)
        .map(|at| u8::from_str_radix(&key[at..at + 2], 16))
        .collect::<Result<Vec<u8>, _>>()
        .map_err(|_| invalid("the key is not hex"))?;
    let create_revision = create_revision
        .parse::<i64>()
        .ok()
        .filter(|revision| *revision > 0)
        .ok_or_else(|| invalid("the create revision is not a positive number"))?;
    let lease = i64::from_str_radix(lease, 16).map_err(|_| invalid("the lease ID is not hex"))?;
    Ok(Some(Sequencer {
        key,
        create_revision,
        lease,
    }))
}

impl Api {
    /// A Put, DeleteRange or Txn through the log, guarded by `sequencer` if
    /// there is one: refused with `sequencer is stale` (and nothing changed)
    /// once the lock it names has another holder or none.
    async fn write_guarded(
        &self,
        caller: &Caller,
        sequencer: Option<Sequencer>,
        request: Request,
    ) -> Result<Response, Status> {
        let Some(sequencer) = sequencer else {
            return self.write(caller, request).await;
        };
        let op = match request {
            Request::Put(put) => RequestOp::Put(put),
            Request::DeleteRange(delete) => RequestOp::DeleteRange(delete),
            Request::Txn(txn) => RequestOp::Txn(txn),
            _ => return Err(unexpected()),
        };
        let Response::Txn(mut guarded) = self.write(caller, Request::Txn(sequencer.guard(vec![op]))).await? else {
            return Err(unexpected());
        };
        if !guarded.succeeded {
            return Err(convert::kv_error(KvError::StaleSequencer));
        }
        let header = guarded.header;
        match guarded.responses.pop() {
            Some(ResponseOp::Put(mut put)) => {
                put.header = header;
                Ok(Response::Put(put))
            }
            Some(ResponseOp::DeleteRange(mut delete)) => {
                delete.header = header;
                Ok(Response::DeleteRange(delete))
            }
            Some(ResponseOp::Txn(mut txn)) => {
                txn.header = header;
                Ok(Response::Txn(txn))
            }
            _ => Err(unexpected()),
        }
    }
}

fn unexpected() -> Status {
    Status::internal("synod: the state machine answered with another request's response")
}

fn client(channel: tonic::transport::Channel) -> KvClient<tonic::transport::Channel> {
    KvClient::new(channel)
        .max_decoding_message_size(GRPC_MESSAGE_BYTES_MAX)
        .max_encoding_message_size(GRPC_MESSAGE_BYTES_MAX)
}

#[tonic::async_trait]
impl Kv for Api {
    async fn range(&self, request: GrpcRequest<RangeRequest>) -> Result<GrpcResponse<RangeResponse>, Status> {
        let serializable = request.get_ref().serializable;
        if !serializable {
            if let Some(channel) = self.route(&request)? {
                return client(channel).range(forward(request)).await;
            }
        }
        let caller = self.caller(&request).await?;
        let range = convert::range_request(request.into_inner())?;
        // A linearizable read is checked after its read point, against an
        // auth state that holds every change finished before it was asked.
        if !serializable {
            self.linearizable_point().await?;
        }
        self.check_read(&caller, &range.key, &range.range_end)?;
        Ok(GrpcResponse::new(self.read_here(range, false).await?))
    }

    async fn put(&self, request: GrpcRequest<PutRequest>) -> Result<GrpcResponse<PutResponse>, Status> {
        if let Some(channel) = self.route(&request)? {
            return client(channel).put(forward(request)).await;
        }
        let identity = self.identity();
        let caller = self.caller(&request).await?;
        let sequencer = sequencer_of(&request)?;
        match self
            .write_guarded(
                &caller,
                sequencer,
                Request::Put(convert::put_request(request.into_inner())),
            )
            .await?
        {
            Response::Put(response) => Ok(GrpcResponse::new(convert::put_response(identity, response))),
            _ => Err(unexpected()),
        }
    }

    async fn delete_range(
        &self,
        request: GrpcRequest<DeleteRangeRequest>,
    ) -> Result<GrpcResponse<DeleteRangeResponse>, Status> {
        if let Some(channel) = self.route(&request)? {
            return client(channel).delete_range(forward(request)).await;
        }
        let identity = self.identity();
        let caller = self.caller(&request).await?;
        let sequencer = sequencer_of(&request)?;
        match self
            .write_guarded(
                &caller,
                sequencer,
                Request::DeleteRange(convert::delete_request(request.into_inner())),
            )
            .await?
        {
            Response::DeleteRange(response) => Ok(GrpcResponse::new(convert::delete_response(identity, response))),
            _ => Err(unexpected()),
        }
    }

    async fn txn(&self, request: GrpcRequest<TxnRequest>) -> Result<GrpcResponse<TxnResponse>, Status> {
        if let Some(channel) = self.route(&request)? {
            return client(channel).txn(forward(request)).await;
        }
        let identity = self.identity();
        let caller = self.caller(&request).await?;
        let sequencer = sequencer_of(&request)?;
        let txn = convert::txn_request(request.into_inner())?;
        match self.write_guarded(&caller, sequencer, Request::Txn(txn)).await? {
            Response::Txn(response) => Ok(GrpcResponse::new(convert::txn_response(identity, response))),
            _ => Err(unexpected()),
        }
    }

    async fn compact(
        &self,
        request: GrpcRequest<CompactionRequest>,
    ) -> Result<GrpcResponse<CompactionResponse>, Status> {
        if let Some(channel) = self.route(&request)? {
            return client(channel).compact(forward(request)).await;
        }
        let identity = self.identity();
        let caller = self.caller(&request).await?;
        let compaction = request.into_inner();
        let request = Request::Compaction(synod_kv::CompactionRequest {
            revision: compaction.revision,
            physical: compaction.physical,
        });
        match self.write(&caller, request).await? {
            Response::Compaction(response) => Ok(GrpcResponse::new(CompactionResponse {
                header: identity.header(response.header.revision),
            })),
            _ => Err(unexpected()),
        }
    }
}
