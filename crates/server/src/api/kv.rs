//! `etcdserverpb.KV`: Range, Put, DeleteRange, Txn, Compact.

use synod_kv::{Request, Response};
use synod_proto::etcdserverpb::kv_client::KvClient;
use synod_proto::etcdserverpb::kv_server::Kv;
use synod_proto::etcdserverpb::{
    CompactionRequest, CompactionResponse, DeleteRangeRequest, DeleteRangeResponse, PutRequest, PutResponse,
    RangeRequest, RangeResponse, TxnRequest, TxnResponse,
};
use tonic::{Request as GrpcRequest, Response as GrpcResponse, Status};

use super::{convert, forwarded, Api, GRPC_MESSAGE_BYTES_MAX};

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
        if request.get_ref().serializable {
            let range = convert::range_request(request.into_inner())?;
            return Ok(GrpcResponse::new(self.read_here(range, false).await?));
        }
        if let Some(channel) = self.route(&request)? {
            return client(channel).range(forwarded(request.into_inner())).await;
        }
        let range = convert::range_request(request.into_inner())?;
        Ok(GrpcResponse::new(self.read_here(range, true).await?))
    }

    async fn put(&self, request: GrpcRequest<PutRequest>) -> Result<GrpcResponse<PutResponse>, Status> {
        if let Some(channel) = self.route(&request)? {
            return client(channel).put(forwarded(request.into_inner())).await;
        }
        let identity = self.identity();
        match self
            .write(Request::Put(convert::put_request(request.into_inner())))
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
            return client(channel).delete_range(forwarded(request.into_inner())).await;
        }
        let identity = self.identity();
        match self
            .write(Request::DeleteRange(convert::delete_request(request.into_inner())))
            .await?
        {
            Response::DeleteRange(response) => Ok(GrpcResponse::new(convert::delete_response(identity, response))),
            _ => Err(unexpected()),
        }
    }

    async fn txn(&self, request: GrpcRequest<TxnRequest>) -> Result<GrpcResponse<TxnResponse>, Status> {
        if let Some(channel) = self.route(&request)? {
            return client(channel).txn(forwarded(request.into_inner())).await;
        }
        let identity = self.identity();
        let txn = convert::txn_request(request.into_inner())?;
        match self.write(Request::Txn(txn)).await? {
            Response::Txn(response) => Ok(GrpcResponse::new(convert::txn_response(identity, response))),
            _ => Err(unexpected()),
        }
    }

    async fn compact(
        &self,
        request: GrpcRequest<CompactionRequest>,
    ) -> Result<GrpcResponse<CompactionResponse>, Status> {
        if let Some(channel) = self.route(&request)? {
            return client(channel).compact(forwarded(request.into_inner())).await;
        }
        let identity = self.identity();
        let compaction = request.into_inner();
        let request = Request::Compaction(synod_kv::CompactionRequest {
            revision: compaction.revision,
            physical: compaction.physical,
        });
        match self.write(request).await? {
            Response::Compaction(response) => Ok(GrpcResponse::new(CompactionResponse {
                header: identity.header(response.header.revision),
            })),
            _ => Err(unexpected()),
        }
    }
}
