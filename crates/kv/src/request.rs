//! The requests the log carries, their results, and their binary encoding.

use crate::auth::{AuthRequest, AuthResponse};
use crate::error::KvError;
use crate::types::*;
use crate::varint::{Decoder, Encoder};

/// Nesting depth of Txns a decoder accepts; bounds recursion on hostile input.
pub const TXN_DEPTH_MAX: usize = 16;

/// Every operation that goes through the log (everything that may change the
/// store). Reads are served by [`crate::Store::range`] without the log.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Request {
    /// `KV.Put`.
    Put(PutRequest),
    /// `KV.DeleteRange`.
    DeleteRange(DeleteRangeRequest),
    /// `KV.Txn`.
    Txn(TxnRequest),
    /// `KV.Compact`.
    Compaction(CompactionRequest),
    /// `Lease.LeaseGrant`.
    LeaseGrant(LeaseGrantRequest),
    /// `Lease.LeaseRevoke`, and the master's revocation of an expired lease.
    LeaseRevoke(LeaseRevokeRequest),
    /// `Maintenance.Alarm` with action `ACTIVATE` or `DEACTIVATE`. A build
    /// older than this variant applies it as an error (`unknown request
    /// tag`), so every member must know it before anyone raises an alarm.
    Alarm(AlarmRequest),
    /// `Auth`'s changes (users, roles, permissions, enable, disable,
    /// authenticate). A build older than this variant applies it as an error.
    Auth(AuthRequest),
    /// A client's request and the user it runs as (`None`: the call carried
    /// no credentials), checked against the auth state when it is applied.
    /// The server wraps every client write in one; a request without it is
    /// the server's own (a lease the master expires, an alarm it raises) and
    /// is not checked. Never nested.
    Client {
        /// The authenticated user, if any.
        user: Option<String>,
        /// The request.
        request: Box<Request>,
    },
}

/// The successful result of applying a [`Request`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Response {
    /// Result of [`Request::Put`].
    Put(PutResponse),
    /// Result of [`Request::DeleteRange`].
    DeleteRange(DeleteRangeResponse),
    /// Result of [`Request::Txn`].
    Txn(TxnResponse),
    /// Result of [`Request::Compaction`].
    Compaction(CompactionResponse),
    /// Result of [`Request::LeaseGrant`].
    LeaseGrant(LeaseGrantResponse),
    /// Result of [`Request::LeaseRevoke`].
    LeaseRevoke(LeaseRevokeResponse),
    /// Result of [`Request::Alarm`].
    Alarm(AlarmResponse),
    /// Result of [`Request::Auth`].
    Auth(AuthResponse),
}

impl Response {
    /// The response header.
    pub fn header(&self) -> &ResponseHeader {
        match self {
            Response::Put(response) => &response.header,
            Response::DeleteRange(response) => &response.header,
            Response::Txn(response) => &response.header,
            Response::Compaction(response) => &response.header,
            Response::LeaseGrant(response) => &response.header,
            Response::LeaseRevoke(response) => &response.header,
            Response::Alarm(response) => &response.header,
            Response::Auth(response) => &response.header,
        }
    }
}

const TAG_PUT: u8 = 1;
const TAG_DELETE_RANGE: u8 = 2;
const TAG_TXN: u8 = 3;
const TAG_COMPACTION: u8 = 4;
const TAG_LEASE_GRANT: u8 = 5;
const TAG_LEASE_REVOKE: u8 = 6;
const TAG_ALARM: u8 = 7;
const TAG_AUTH: u8 = 8;
const TAG_CLIENT: u8 = 9;
/// Longest user name in a [`Request::Client`], in bytes.
const USER_BYTES_MAX: usize = crate::auth::NAME_BYTES_MAX;
const TAG_OP_RANGE: u8 = 1;
const TAG_OP_PUT: u8 = 2;
const TAG_OP_DELETE_RANGE: u8 = 3;
const TAG_OP_TXN: u8 = 4;
/// First byte of every encoded request, so a format change is detectable.
const FORMAT_VERSION: u8 = 1;

fn put_bytes(put: &PutRequest) -> u64 {
    (put.key.len() + put.value.len()) as u64
}

/// The bytes a txn's puts may add, both branches and nested txns counted;
/// `None` if it puts nothing.
fn txn_put_bytes(txn: &TxnRequest) -> Option<u64> {
    let mut total = None;
    for op in txn.success.iter().chain(&txn.failure) {
        let bytes = match op {
            RequestOp::Put(put) => Some(put_bytes(put)),
            RequestOp::Txn(nested) => txn_put_bytes(nested),
            RequestOp::Range(_) | RequestOp::DeleteRange(_) => None,
        };
        if let Some(bytes) = bytes {
            total = Some(total.unwrap_or(0) + bytes);
        }
    }
    total
}

impl Request {
    /// The bytes this request may add to the store, if a space quota
    /// applies to it at all: puts (key and value), txns with puts (the sum
    /// over both branches, as either may run) and lease grants (nothing of
    /// their own, but refused when out of space, as etcd's are). Deletes,
    /// compactions, revokes and alarms are `None`: they must go on when
    /// space runs out, or it could never be freed.
    pub fn quota_bytes(&self) -> Option<u64> {
        match self {
            Request::Put(put) => Some(put_bytes(put)),
            Request::Txn(txn) => txn_put_bytes(txn),
            Request::LeaseGrant(_) => Some(0),
            Request::Client { request, .. } => request.quota_bytes(),
            Request::DeleteRange(_)
            | Request::Compaction(_)
            | Request::LeaseRevoke(_)
            | Request::Alarm(_)
            | Request::Auth(_) => None,
        }
    }

    /// The request itself, without a [`Request::Client`] envelope.
    pub fn inner(&self) -> &Request {
        match self {
            Request::Client { request, .. } => request,
            request => request,
        }
    }

    /// The deterministic encoding written to the log.
    pub fn encode(&self) -> Vec<u8> {
        let mut encoder = Encoder::default();
        encoder.u8(FORMAT_VERSION);
        self.encode_body(&mut encoder);
        encoder.bytes
    }

    fn encode_body(&self, encoder: &mut Encoder) {
        match self {
            Request::Put(put) => {
                encoder.u8(TAG_PUT);
                encode_put(encoder, put);
            }
            Request::DeleteRange(delete) => {
                encoder.u8(TAG_DELETE_RANGE);
                encode_delete(encoder, delete);
            }
            Request::Txn(txn) => {
                encoder.u8(TAG_TXN);
                encode_txn(encoder, txn);
            }
            Request::Compaction(compaction) => {
                encoder.u8(TAG_COMPACTION);
                encoder.i64(compaction.revision);
                encoder.bool(compaction.physical);
            }
            Request::LeaseGrant(grant) => {
                encoder.u8(TAG_LEASE_GRANT);
                encoder.i64(grant.ttl);
                encoder.i64(grant.id);
            }
            Request::LeaseRevoke(revoke) => {
                encoder.u8(TAG_LEASE_REVOKE);
                encoder.i64(revoke.id);
            }
            Request::Alarm(alarm) => {
                encoder.u8(TAG_ALARM);
                encoder.u8(match alarm.action {
                    AlarmAction::Activate => 0,
                    AlarmAction::Deactivate => 1,
                });
                encoder.u64(alarm.member_id);
                encoder.u8(alarm_type_code(alarm.alarm));
            }
            Request::Auth(auth) => {
                encoder.u8(TAG_AUTH);
                auth.encode(encoder);
            }
            Request::Client { user, request } => {
                assert!(
                    !matches!(**request, Request::Client { .. }),
                    "a client envelope is never nested"
                );
                encoder.u8(TAG_CLIENT);
                encoder.bool(user.is_some());
                if let Some(user) = user {
                    encoder.bytes(user.as_bytes());
                }
                request.encode_body(encoder);
            }
        }
    }

    /// Decodes [`Request::encode`]'s output; any other input is an error,
    /// never a panic, and allocates at most about its own length.
    pub fn decode(bytes: &[u8]) -> Result<Request, KvError> {
        let mut decoder = Decoder::new(bytes);
        if decoder.u8()? != FORMAT_VERSION {
            return Err(KvError::Corrupt("unknown request format"));
        }
        let request = Self::decode_body(&mut decoder, true)?;
        decoder.finish()?;
        Ok(request)
    }

    fn decode_body(decoder: &mut Decoder<'_>, envelope_allowed: bool) -> Result<Request, KvError> {
        let request = match decoder.u8()? {
            TAG_PUT => Request::Put(decode_put(decoder)?),
            TAG_DELETE_RANGE => Request::DeleteRange(decode_delete(decoder)?),
            TAG_TXN => Request::Txn(decode_txn(decoder, 0)?),
            TAG_COMPACTION => Request::Compaction(CompactionRequest {
                revision: decoder.i64()?,
                physical: decoder.bool()?,
            }),
            TAG_LEASE_GRANT => Request::LeaseGrant(LeaseGrantRequest {
                ttl: decoder.i64()?,
                id: decoder.i64()?,
            }),
            TAG_LEASE_REVOKE => Request::LeaseRevoke(LeaseRevokeRequest { id: decoder.i64()? }),
            TAG_ALARM => Request::Alarm(AlarmRequest {
                action: match decoder.u8()? {
                    0 => AlarmAction::Activate,
                    1 => AlarmAction::Deactivate,
                    _ => return Err(KvError::Corrupt("unknown alarm action")),
                },
                member_id: decoder.u64()?,
                alarm: alarm_type_of(decoder.u8()?).ok_or(KvError::Corrupt("unknown alarm type"))?,
            }),
            TAG_AUTH => Request::Auth(AuthRequest::decode(decoder)?),
            TAG_CLIENT if envelope_allowed => {
                let user = if decoder.bool()? {
                    let user = decoder.bytes()?;
                    if user.len() > USER_BYTES_MAX {
                        return Err(KvError::Corrupt("a user name is too long"));
                    }
                    Some(String::from_utf8(user).map_err(|_| KvError::Corrupt("a user name is not UTF-8"))?)
                } else {
                    None
                };
                Request::Client {
                    user,
                    request: Box::new(Self::decode_body(decoder, false)?),
                }
            }
            _ => return Err(KvError::Corrupt("unknown request tag")),
        };
        Ok(request)
    }
}

/// An alarm type's code in the log and in snapshots (etcd's enum numbers).
pub(crate) fn alarm_type_code(alarm: AlarmType) -> u8 {
    match alarm {
        AlarmType::None => 0,
        AlarmType::Nospace => 1,
        AlarmType::Corrupt => 2,
    }
}

/// The alarm type of a code, if it is one.
pub(crate) fn alarm_type_of(code: u8) -> Option<AlarmType> {
    match code {
        0 => Some(AlarmType::None),
        1 => Some(AlarmType::Nospace),
        2 => Some(AlarmType::Corrupt),
        _ => None,
    }
}

fn encode_put(encoder: &mut Encoder, put: &PutRequest) {
    encoder.bytes(&put.key);
    encoder.bytes(&put.value);
    encoder.i64(put.lease);
    encoder.bool(put.prev_kv);
    encoder.bool(put.ignore_value);
    encoder.bool(put.ignore_lease);
}

fn decode_put(decoder: &mut Decoder<'_>) -> Result<PutRequest, KvError> {
    Ok(PutRequest {
        key: decoder.bytes()?,
        value: decoder.bytes()?,
        lease: decoder.i64()?,
        prev_kv: decoder.bool()?,
        ignore_value: decoder.bool()?,
        ignore_lease: decoder.bool()?,
    })
}

fn encode_delete(encoder: &mut Encoder, delete: &DeleteRangeRequest) {
    encoder.bytes(&delete.key);
    encoder.bytes(&delete.range_end);
    encoder.bool(delete.prev_kv);
}

fn decode_delete(decoder: &mut Decoder<'_>) -> Result<DeleteRangeRequest, KvError> {
    Ok(DeleteRangeRequest {
        key: decoder.bytes()?,
        range_end: decoder.bytes()?,
        prev_kv: decoder.bool()?,
    })
}

fn encode_range(encoder: &mut Encoder, range: &RangeRequest) {
    encoder.bytes(&range.key);
    encoder.bytes(&range.range_end);
    encoder.i64(range.limit);
    encoder.i64(range.revision);
    encoder.u8(match range.sort_order {
        SortOrder::None => 0,
        SortOrder::Ascend => 1,
        SortOrder::Descend => 2,
    });
    encoder.u8(match range.sort_target {
        SortTarget::Key => 0,
        SortTarget::Version => 1,
        SortTarget::Create => 2,
        SortTarget::Mod => 3,
        SortTarget::Value => 4,
    });
    encoder.bool(range.serializable);
    encoder.bool(range.keys_only);
    encoder.bool(range.count_only);
    encoder.i64(range.min_mod_revision);
    encoder.i64(range.max_mod_revision);
    encoder.i64(range.min_create_revision);
    encoder.i64(range.max_create_revision);
}

fn decode_range(decoder: &mut Decoder<'_>) -> Result<RangeRequest, KvError> {
    Ok(RangeRequest {
        key: decoder.bytes()?,
        range_end: decoder.bytes()?,
        limit: decoder.i64()?,
        revision: decoder.i64()?,
        sort_order: match decoder.u8()? {
            0 => SortOrder::None,
            1 => SortOrder::Ascend,
            2 => SortOrder::Descend,
            _ => return Err(KvError::Corrupt("unknown sort order")),
        },
        sort_target: match decoder.u8()? {
            0 => SortTarget::Key,
            1 => SortTarget::Version,
            2 => SortTarget::Create,
            3 => SortTarget::Mod,
            4 => SortTarget::Value,
            _ => return Err(KvError::Corrupt("unknown sort target")),
        },
        serializable: decoder.bool()?,
        keys_only: decoder.bool()?,
        count_only: decoder.bool()?,
        min_mod_revision: decoder.i64()?,
        max_mod_revision: decoder.i64()?,
        min_create_revision: decoder.i64()?,
        max_create_revision: decoder.i64()?,
    })
}

fn encode_compare(encoder: &mut Encoder, compare: &Compare) {
    encoder.u8(match compare.result {
        CompareResult::Equal => 0,
        CompareResult::Greater => 1,
        CompareResult::Less => 2,
        CompareResult::NotEqual => 3,
    });
    encoder.u8(match compare.target {
        CompareTarget::Version => 0,
        CompareTarget::Create => 1,
        CompareTarget::Mod => 2,
        CompareTarget::Value => 3,
        CompareTarget::Lease => 4,
    });
    encoder.bytes(&compare.key);
    match &compare.target_union {
        TargetUnion::Version(value) => {
            encoder.u8(0);
            encoder.i64(*value);
        }
        TargetUnion::CreateRevision(value) => {
            encoder.u8(1);
            encoder.i64(*value);
        }
        TargetUnion::ModRevision(value) => {
            encoder.u8(2);
            encoder.i64(*value);
        }
        TargetUnion::Value(value) => {
            encoder.u8(3);
            encoder.bytes(value);
        }
        TargetUnion::Lease(value) => {
            encoder.u8(4);
            encoder.i64(*value);
        }
    }
    encoder.bytes(&compare.range_end);
}

fn decode_compare(decoder: &mut Decoder<'_>) -> Result<Compare, KvError> {
    let result = match decoder.u8()? {
        0 => CompareResult::Equal,
        1 => CompareResult::Greater,
        2 => CompareResult::Less,
        3 => CompareResult::NotEqual,
        _ => return Err(KvError::Corrupt("unknown compare result")),
    };
    let target = match decoder.u8()? {
        0 => CompareTarget::Version,
        1 => CompareTarget::Create,
        2 => CompareTarget::Mod,
        3 => CompareTarget::Value,
        4 => CompareTarget::Lease,
        _ => return Err(KvError::Corrupt("unknown compare target")),
    };
    let key = decoder.bytes()?;
    let target_union = match decoder.u8()? {
        0 => TargetUnion::Version(decoder.i64()?),
        1 => TargetUnion::CreateRevision(decoder.i64()?),
        2 => TargetUnion::ModRevision(decoder.i64()?),
        3 => TargetUnion::Value(decoder.bytes()?),
        4 => TargetUnion::Lease(decoder.i64()?),
        _ => return Err(KvError::Corrupt("unknown compare operand")),
    };
    Ok(Compare {
        result,
        target,
        key,
        target_union,
        range_end: decoder.bytes()?,
    })
}

fn encode_txn(encoder: &mut Encoder, txn: &TxnRequest) {
    encoder.len(txn.compare.len());
    for compare in &txn.compare {
        encode_compare(encoder, compare);
    }
    for branch in [&txn.success, &txn.failure] {
        encoder.len(branch.len());
        for op in branch {
            match op {
                RequestOp::Range(range) => {
                    encoder.u8(TAG_OP_RANGE);
                    encode_range(encoder, range);
                }
                RequestOp::Put(put) => {
                    encoder.u8(TAG_OP_PUT);
                    encode_put(encoder, put);
                }
                RequestOp::DeleteRange(delete) => {
                    encoder.u8(TAG_OP_DELETE_RANGE);
                    encode_delete(encoder, delete);
                }
                RequestOp::Txn(nested) => {
                    encoder.u8(TAG_OP_TXN);
                    encode_txn(encoder, nested);
                }
            }
        }
    }
}

fn decode_txn(decoder: &mut Decoder<'_>, depth: usize) -> Result<TxnRequest, KvError> {
    if depth >= TXN_DEPTH_MAX {
        return Err(KvError::Corrupt("txn nested too deeply"));
    }
    // Smallest encodings: a compare takes 6 bytes, an op 4.
    let compare_count = decoder.count(6)?;
    let mut compare = Vec::with_capacity(compare_count);
    for _ in 0..compare_count {
        compare.push(decode_compare(decoder)?);
    }
    let mut branches = [Vec::new(), Vec::new()];
    for branch in &mut branches {
        let op_count = decoder.count(4)?;
        branch.reserve(op_count);
        for _ in 0..op_count {
            branch.push(match decoder.u8()? {
                TAG_OP_RANGE => RequestOp::Range(decode_range(decoder)?),
                TAG_OP_PUT => RequestOp::Put(decode_put(decoder)?),
                TAG_OP_DELETE_RANGE => RequestOp::DeleteRange(decode_delete(decoder)?),
                TAG_OP_TXN => RequestOp::Txn(decode_txn(decoder, depth + 1)?),
                _ => return Err(KvError::Corrupt("unknown txn op tag")),
            });
        }
    }
    let [success, failure] = branches;
    Ok(TxnRequest {
        compare,
        success,
        failure,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample_txn() -> Request {
        Request::Txn(TxnRequest {
            compare: vec![Compare {
                result: CompareResult::Greater,
                target: CompareTarget::Value,
                key: b"a".to_vec(),
                target_union: TargetUnion::Value(b"x".to_vec()),
                range_end: b"b".to_vec(),
            }],
            success: vec![
                RequestOp::Put(PutRequest {
                    key: b"k".to_vec(),
                    value: vec![7; 300],
                    lease: -5,
                    prev_kv: true,
                    ..PutRequest::default()
                }),
                RequestOp::Range(RangeRequest {
                    key: b"a".to_vec(),
                    sort_order: SortOrder::Descend,
                    sort_target: SortTarget::Mod,
                    max_create_revision: 9,
                    ..RangeRequest::default()
                }),
            ],
            failure: vec![RequestOp::Txn(TxnRequest {
                compare: vec![],
                success: vec![RequestOp::DeleteRange(DeleteRangeRequest {
                    key: b"z".to_vec(),
                    range_end: vec![0],
                    prev_kv: true,
                })],
                failure: vec![],
            })],
        })
    }

    #[test]
    fn every_request_round_trips() {
        let requests = [
            sample_txn(),
            Request::Put(PutRequest {
                key: b"k".to_vec(),
                ignore_lease: true,
                ..PutRequest::default()
            }),
            Request::Compaction(CompactionRequest {
                revision: 12,
                physical: true,
            }),
            Request::LeaseGrant(LeaseGrantRequest { ttl: 60, id: 0 }),
            Request::LeaseRevoke(LeaseRevokeRequest { id: i64::MAX }),
            Request::Alarm(AlarmRequest {
                action: AlarmAction::Activate,
                member_id: u64::MAX,
                alarm: AlarmType::Nospace,
            }),
            Request::Alarm(AlarmRequest {
                action: AlarmAction::Deactivate,
                member_id: 7,
                alarm: AlarmType::Corrupt,
            }),
        ];
        for request in requests {
            let bytes = request.encode();
            assert_eq!(Request::decode(&bytes).unwrap(), request);
        }
    }

    #[test]
    fn every_truncation_and_bit_flip_is_an_error_or_a_valid_request() {
        let bytes = sample_txn().encode();
        for length in 0..bytes.len() {
            assert!(Request::decode(&bytes[..length]).is_err());
        }
        for position in 0..bytes.len() {
            for bit in 0..8 {
                let mut damaged = bytes.clone();
                damaged[position] ^= 1 << bit;
                // Must not panic; a flip inside a value may still decode.
                let _ = Request::decode(&damaged);
            }
        }
    }

    #[test]
    fn an_unknown_alarm_action_or_type_is_an_error() {
        let bytes = Request::Alarm(AlarmRequest {
            action: AlarmAction::Deactivate,
            member_id: 3,
            alarm: AlarmType::Corrupt,
        })
        .encode();
        let mut action = bytes.clone();
        action[2] = 2;
        assert_eq!(Request::decode(&action), Err(KvError::Corrupt("unknown alarm action")));
        let mut kind = bytes.clone();
        *kind.last_mut().unwrap() = 3;
        assert_eq!(Request::decode(&kind), Err(KvError::Corrupt("unknown alarm type")));
    }

    #[test]
    fn deep_nesting_is_rejected() {
        let mut txn = TxnRequest::default();
        for _ in 0..TXN_DEPTH_MAX + 1 {
            txn = TxnRequest {
                success: vec![RequestOp::Txn(txn)],
                ..TxnRequest::default()
            };
        }
        assert!(Request::decode(&Request::Txn(txn).encode()).is_err());
    }
}
