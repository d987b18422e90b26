//! Between the wire types (`synod-proto`, prost) and the state machine's own
//! types (`synod-kv`). Field for field; enums out of range are refused as
//! InvalidArgument rather than guessed.

use prost::bytes::Bytes;
use synod_kv as kv;
use synod_proto::etcdserverpb as pb;
use synod_proto::mvccpb;
use tonic::Status;

fn invalid(what: &str) -> Status {
    Status::invalid_argument(format!("etcdserver: invalid {what}"))
}

/// A client's Range, refused as InvalidArgument if its sort order or target is out of range.
pub fn range_request(request: pb::RangeRequest) -> Result<kv::RangeRequest, Status> {
    Ok(kv::RangeRequest {
        key: request.key.to_vec(),
        range_end: request.range_end.to_vec(),
        limit: request.limit,
        revision: request.revision,
        sort_order: match request.sort_order {
            0 => kv::SortOrder::None,
            1 => kv::SortOrder::Ascend,
            2 => kv::SortOrder::Descend,
            _ => return Err(invalid("sort order")),
        },
        sort_target: match request.sort_target {
            0 => kv::SortTarget::Key,
            1 => kv::SortTarget::Version,
            2 => kv::SortTarget::Create,
            3 => kv::SortTarget::Mod,
            4 => kv::SortTarget::Value,
            _ => return Err(invalid("sort target")),
        },
        serializable: request.serializable,
        keys_only: request.keys_only,
        count_only: request.count_only,
        min_mod_revision: request.min_mod_revision,
        max_mod_revision: request.max_mod_revision,
        min_create_revision: request.min_create_revision,
        max_create_revision: request.max_create_revision,
    })
}

/// A client's Put.
pub fn put_request(request: pb::PutRequest) -> kv::PutRequest {
    kv::PutRequest {
        key: request.key.to_vec(),
        value: request.value.to_vec(),
        lease: request.lease,
        prev_kv: request.prev_kv,
        ignore_value: request.ignore_value,
        ignore_lease: request.ignore_lease,
    }
}

/// A client's DeleteRange.
pub fn delete_request(request: pb::DeleteRangeRequest) -> kv::DeleteRangeRequest {
    kv::DeleteRangeRequest {
        key: request.key.to_vec(),
        range_end: request.range_end.to_vec(),
        prev_kv: request.prev_kv,
    }
}

/// Txns nest; the depth is bounded so hostile input cannot recurse without end.
pub fn txn_request(request: pb::TxnRequest) -> Result<kv::TxnRequest, Status> {
    txn_request_at(request, 0)
}

fn txn_request_at(request: pb::TxnRequest, depth: usize) -> Result<kv::TxnRequest, Status> {
    if depth > kv::TXN_DEPTH_MAX {
        return Err(invalid("txn: nested too deeply"));
    }
    let compare = request.compare.into_iter().map(compare).collect::<Result<_, _>>()?;
    let ops = |ops: Vec<pb::RequestOp>| -> Result<Vec<kv::RequestOp>, Status> {
        ops.into_iter().map(|op| request_op(op, depth)).collect()
    };
    Ok(kv::TxnRequest {
        compare,
        success: ops(request.success)?,
        failure: ops(request.failure)?,
    })
}

fn request_op(op: pb::RequestOp, depth: usize) -> Result<kv::RequestOp, Status> {
    use pb::request_op::Request;
    Ok(match op.request {
        Some(Request::RequestRange(range)) => kv::RequestOp::Range(range_request(range)?),
        Some(Request::RequestPut(put)) => kv::RequestOp::Put(put_request(put)),
        Some(Request::RequestDeleteRange(delete)) => kv::RequestOp::DeleteRange(delete_request(delete)),
        Some(Request::RequestTxn(txn)) => kv::RequestOp::Txn(txn_request_at(txn, depth + 1)?),
        None => return Err(invalid("txn: empty request op")),
    })
}

fn compare(compare: pb::Compare) -> Result<kv::Compare, Status> {
    use pb::compare::TargetUnion;
    Ok(kv::Compare {
        result: match compare.result {
            0 => kv::CompareResult::Equal,
            1 => kv::CompareResult::Greater,
            2 => kv::CompareResult::Less,
            3 => kv::CompareResult::NotEqual,
            _ => return Err(invalid("compare result")),
        },
        target: match compare.target {
            0 => kv::CompareTarget::Version,
            1 => kv::CompareTarget::Create,
            2 => kv::CompareTarget::Mod,
            3 => kv::CompareTarget::Value,
            4 => kv::CompareTarget::Lease,
            _ => return Err(invalid("compare target")),
        },
        key: compare.key.to_vec(),
        target_union: match compare.target_union {
            Some(TargetUnion::Version(value)) => kv::TargetUnion::Version(value),
            Some(TargetUnion::CreateRevision(value)) => kv::TargetUnion::CreateRevision(value),
            Some(TargetUnion::ModRevision(value)) => kv::TargetUnion::ModRevision(value),
            Some(TargetUnion::Value(value)) => kv::TargetUnion::Value(value.to_vec()),
            Some(TargetUnion::Lease(value)) => kv::TargetUnion::Lease(value),
            // Absent means the proto default of the target's field.
            None => match compare.target {
                1 => kv::TargetUnion::CreateRevision(0),
                2 => kv::TargetUnion::ModRevision(0),
                3 => kv::TargetUnion::Value(Vec::new()),
                4 => kv::TargetUnion::Lease(0),
                _ => kv::TargetUnion::Version(0),
            },
        },
        range_end: compare.range_end.to_vec(),
    })
}

/// A client's watch creation, refused as InvalidArgument if a filter is out of range.
pub fn watch_create(request: pb::WatchCreateRequest) -> Result<kv::WatchCreateRequest, Status> {
    let filters = request
        .filters
        .iter()
        .map(|filter| match filter {
            0 => Ok(kv::WatchFilter::NoPut),
            1 => Ok(kv::WatchFilter::NoDelete),
            _ => Err(invalid("watch filter")),
        })
        .collect::<Result<_, _>>()?;
    Ok(kv::WatchCreateRequest {
        key: request.key.to_vec(),
        range_end: request.range_end.to_vec(),
        start_revision: request.start_revision,
        progress_notify: request.progress_notify,
        filters,
        prev_kv: request.prev_kv,
        watch_id: request.watch_id,
        fragment: request.fragment,
    })
}

/// `AlarmType` from the wire.
pub fn alarm_type(alarm: i32) -> Result<kv::AlarmType, Status> {
    match pb::AlarmType::try_from(alarm) {
        Ok(pb::AlarmType::None) => Ok(kv::AlarmType::None),
        Ok(pb::AlarmType::Nospace) => Ok(kv::AlarmType::Nospace),
        Ok(pb::AlarmType::Corrupt) => Ok(kv::AlarmType::Corrupt),
        Err(_) => Err(invalid("alarm type")),
    }
}

// ----- Responses -----

/// Identity fields the store leaves to the server.
#[derive(Clone, Copy, Debug)]
pub struct HeaderIdentity {
    /// The cluster's ID.
    pub cluster_id: u64,
    /// The answering member's ID.
    pub member_id: u64,
    /// The highest ballot round seen, reported as etcd's raft term.
    pub raft_term: u64,
}

impl HeaderIdentity {
    /// A response header at `revision`.
    pub fn header(&self, revision: i64) -> Option<pb::ResponseHeader> {
        Some(pb::ResponseHeader {
            cluster_id: self.cluster_id,
            member_id: self.member_id,
            revision,
            raft_term: self.raft_term,
        })
    }

    fn of(&self, header: &kv::ResponseHeader) -> Option<pb::ResponseHeader> {
        self.header(header.revision)
    }
}

pub fn key_value(kv: kv::KeyValue) -> mvccpb::KeyValue {
    mvccpb::KeyValue {
        key: Bytes::from(kv.key),
        create_revision: kv.create_revision,
        mod_revision: kv.mod_revision,
        version: kv.version,
        value: Bytes::from(kv.value),
        lease: kv.lease,
    }
}

pub fn event(event: kv::Event) -> mvccpb::Event {
    mvccpb::Event {
        r#type: match event.r#type {
            kv::EventType::Put => mvccpb::event::EventType::Put as i32,
            kv::EventType::Delete => mvccpb::event::EventType::Delete as i32,
        },
        kv: Some(key_value(event.kv)),
        prev_kv: event.prev_kv.map(key_value),
    }
}

pub fn range_response(identity: HeaderIdentity, response: kv::RangeResponse) -> pb::RangeResponse {
    pb::RangeResponse {
        header: identity.of(&response.header),
        kvs: response.kvs.into_iter().map(key_value).collect(),
        more: response.more,
        count: response.count,
    }
}

pub fn put_response(identity: HeaderIdentity, response: kv::PutResponse) -> pb::PutResponse {
    pb::PutResponse {
        header: identity.of(&response.header),
        prev_kv: response.prev_kv.map(key_value),
    }
}

pub fn delete_response(identity: HeaderIdentity, response: kv::DeleteRangeResponse) -> pb::DeleteRangeResponse {
    pb::DeleteRangeResponse {
        header: identity.of(&response.header),
        deleted: response.deleted,
        prev_kvs: response.prev_kvs.into_iter().map(key_value).collect(),
    }
}

pub fn txn_response(identity: HeaderIdentity, response: kv::TxnResponse) -> pb::TxnResponse {
    use pb::response_op::Response;
    pb::TxnResponse {
        header: identity.of(&response.header),
        succeeded: response.succeeded,
        responses: response
            .responses
            .into_iter()
            .map(|op| pb::ResponseOp {
                response: Some(match op {
                    kv::ResponseOp::Range(range) => Response::ResponseRange(range_response(identity, range)),
                    kv::ResponseOp::Put(put) => Response::ResponsePut(put_response(identity, put)),
                    kv::ResponseOp::DeleteRange(delete) => {
                        Response::ResponseDeleteRange(delete_response(identity, delete))
                    }
                    kv::ResponseOp::Txn(txn) => Response::ResponseTxn(txn_response(identity, txn)),
                }),
            })
            .collect(),
    }
}

pub fn watch_response(identity: HeaderIdentity, response: kv::WatchResponse) -> pb::WatchResponse {
    pb::WatchResponse {
        header: identity.of(&response.header),
        watch_id: response.watch_id,
        created: response.created,
        canceled: response.canceled,
        compact_revision: response.compact_revision,
        cancel_reason: response.cancel_reason,
        fragment: response.fragment,
        events: response.events.into_iter().map(event).collect(),
    }
}

pub fn time_to_live_response(
    identity: HeaderIdentity,
    response: kv::LeaseTimeToLiveResponse,
) -> pb::LeaseTimeToLiveResponse {
    pb::LeaseTimeToLiveResponse {
        header: identity.of(&response.header),
        id: response.id,
        ttl: response.ttl,
        granted_ttl: response.granted_ttl,
        keys: response.keys.into_iter().map(Bytes::from).collect(),
    }
}

pub fn alarm_member(alarm: kv::AlarmMember) -> pb::AlarmMember {
    pb::AlarmMember {
        member_id: alarm.member_id,
        alarm: match alarm.alarm {
            kv::AlarmType::None => pb::AlarmType::None,
            kv::AlarmType::Nospace => pb::AlarmType::Nospace,
            kv::AlarmType::Corrupt => pb::AlarmType::Corrupt,
        } as i32,
    }
}

pub fn alarm_response(identity: HeaderIdentity, response: kv::AlarmResponse) -> pb::AlarmResponse {
    pb::AlarmResponse {
        header: identity.of(&response.header),
        alarms: response.alarms.into_iter().map(alarm_member).collect(),
    }
}

/// An alarm as etcd's `Status` lists it among its errors (the protobuf text
/// form of the `AlarmMember`).
pub fn alarm_text(alarm: kv::AlarmMember) -> String {
    let kind = match alarm.alarm {
        kv::AlarmType::None => "NONE",
        kv::AlarmType::Nospace => "NOSPACE",
        kv::AlarmType::Corrupt => "CORRUPT",
    };
    format!("memberID:{} alarm:{kind} ", alarm.member_id)
}

/// The gRPC status for a state machine error: etcd's exact message and code.
pub fn kv_error(error: kv::KvError) -> Status {
    let message = error.to_string();
    match error.code() {
        kv::Code::InvalidArgument => Status::invalid_argument(message),
        kv::Code::OutOfRange => Status::out_of_range(message),
        kv::Code::NotFound => Status::not_found(message),
        kv::Code::FailedPrecondition => Status::failed_precondition(message),
        kv::Code::ResourceExhausted => Status::resource_exhausted(message),
        kv::Code::DataLoss => Status::data_loss(message),
        kv::Code::PermissionDenied => Status::permission_denied(message),
        kv::Code::Unauthenticated => Status::unauthenticated(message),
    }
}
