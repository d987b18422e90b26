//! Checks that the compiled messages put etcd's field numbers on the wire.
//!
//! A wrong number in a `.proto` file still compiles and still round-trips
//! against itself; only comparing encoded bytes with the numbers etcd uses
//! catches it, so each test pins the tag bytes of the fields it sets.

use prost::bytes::Bytes;
use prost::Message;
use synod_proto::etcdserverpb::{
    compare, request_op, watch_request, Compare, LeaseGrantRequest, PutRequest, RangeRequest, RequestOp,
    ResponseHeader, StatusResponse, TxnRequest, WatchCreateRequest, WatchRequest, WatchResponse,
};
use synod_proto::mvccpb::{event::EventType, Event, KeyValue};

/// The tag byte of a field with a number below 16: `number << 3 | wire_type`.
fn tag(number: u8, wire_type: u8) -> u8 {
    assert!(number < 16, "field {number} needs a multi-byte tag");
    (number << 3) | wire_type
}

const VARINT: u8 = 0;
const LENGTH_DELIMITED: u8 = 2;

#[test]
fn response_header_fields_are_numbered_one_to_four() {
    let header = ResponseHeader {
        cluster_id: 7,
        member_id: 8,
        revision: 9,
        raft_term: 10,
    };
    let encoded = header.encode_to_vec();
    assert_eq!(
        encoded,
        [
            tag(1, VARINT),
            7,
            tag(2, VARINT),
            8,
            tag(3, VARINT),
            9,
            tag(4, VARINT),
            10
        ]
    );
    assert_eq!(ResponseHeader::decode(encoded.as_slice()).unwrap(), header);
}

#[test]
fn raft_term_alone_is_field_four() {
    let header = ResponseHeader {
        raft_term: 3,
        ..Default::default()
    };
    assert_eq!(header.encode_to_vec(), [0x20, 3]);
}

#[test]
fn key_value_round_trips_with_lease_as_field_six() {
    let key_value = KeyValue {
        key: Bytes::from_static(b"k"),
        create_revision: 2,
        mod_revision: 3,
        version: 4,
        value: Bytes::from_static(b"v"),
        lease: 5,
    };
    let encoded = key_value.encode_to_vec();
    assert_eq!(
        encoded,
        [
            tag(1, LENGTH_DELIMITED),
            1,
            b'k',
            tag(2, VARINT),
            2,
            tag(3, VARINT),
            3,
            tag(4, VARINT),
            4,
            tag(5, LENGTH_DELIMITED),
            1,
            b'v',
            tag(6, VARINT),
            5
        ]
    );
    assert_eq!(KeyValue::decode(encoded.as_slice()).unwrap(), key_value);
}

#[test]
fn compare_range_end_is_field_sixty_four() {
    let comparison = Compare {
        range_end: Bytes::from_static(b"z"),
        ..Default::default()
    };
    // 64 << 3 | 2 = 514, a two-byte varint.
    assert_eq!(comparison.encode_to_vec(), [0x82, 0x04, 1, b'z']);

    let comparison = Compare {
        target_union: Some(compare::TargetUnion::CreateRevision(0)),
        ..Default::default()
    };
    // A oneof member is written even when it holds its default value.
    assert_eq!(comparison.encode_to_vec(), [tag(5, VARINT), 0]);
}

#[test]
fn watch_response_events_are_field_eleven() {
    let response = WatchResponse {
        watch_id: 1,
        events: vec![Event {
            r#type: EventType::Delete as i32,
            kv: None,
            prev_kv: None,
        }],
        ..Default::default()
    };
    let encoded = response.encode_to_vec();
    assert_eq!(
        encoded,
        [tag(2, VARINT), 1, tag(11, LENGTH_DELIMITED), 2, tag(1, VARINT), 1]
    );
    assert_eq!(WatchResponse::decode(encoded.as_slice()).unwrap(), response);
}

#[test]
fn watch_create_request_round_trips_inside_the_oneof() {
    let request = WatchRequest {
        request_union: Some(watch_request::RequestUnion::CreateRequest(WatchCreateRequest {
            key: Bytes::from_static(b"a"),
            start_revision: 5,
            watch_id: 9,
            ..Default::default()
        })),
    };
    let encoded = request.encode_to_vec();
    assert_eq!(
        encoded,
        [
            tag(1, LENGTH_DELIMITED),
            7,
            tag(1, LENGTH_DELIMITED),
            1,
            b'a',
            tag(3, VARINT),
            5,
            tag(7, VARINT),
            9
        ]
    );
    assert_eq!(WatchRequest::decode(encoded.as_slice()).unwrap(), request);
}

#[test]
fn nested_txn_round_trips() {
    let inner = TxnRequest {
        success: vec![RequestOp {
            request: Some(request_op::Request::RequestPut(PutRequest {
                key: Bytes::from_static(b"k"),
                value: Bytes::from_static(b"v"),
                prev_kv: true,
                ..Default::default()
            })),
        }],
        ..Default::default()
    };
    let outer = TxnRequest {
        compare: vec![Compare::default()],
        success: vec![RequestOp {
            request: Some(request_op::Request::RequestTxn(inner)),
        }],
        failure: vec![RequestOp {
            request: Some(request_op::Request::RequestRange(RangeRequest {
                key: Bytes::from_static(b"k"),
                sort_order: 2,
                sort_target: 2,
                limit: 1,
                ..Default::default()
            })),
        }],
    };
    let encoded = outer.encode_to_vec();
    assert_eq!(TxnRequest::decode(encoded.as_slice()).unwrap(), outer);

    let nested = RequestOp {
        request: Some(request_op::Request::RequestTxn(TxnRequest::default())),
    };
    assert_eq!(nested.encode_to_vec(), [tag(4, LENGTH_DELIMITED), 0]);
}

#[test]
fn lease_and_status_fields_use_etcd_numbers() {
    let grant = LeaseGrantRequest { ttl: 60, id: 1 };
    assert_eq!(grant.encode_to_vec(), [tag(1, VARINT), 60, tag(2, VARINT), 1]);

    let status = StatusResponse {
        leader: 1,
        raft_term: 2,
        is_learner: true,
        ..Default::default()
    };
    assert_eq!(
        status.encode_to_vec(),
        [tag(4, VARINT), 1, tag(6, VARINT), 2, tag(10, VARINT), 1]
    );
}

#[test]
fn unknown_fields_from_newer_peers_are_skipped() {
    // Field 15 (varint) does not exist in ResponseHeader; decoding ignores it.
    let bytes = [tag(1, VARINT), 1, tag(15, VARINT), 99];
    let header = ResponseHeader::decode(bytes.as_slice()).unwrap();
    assert_eq!(header.cluster_id, 1);
}

#[test]
fn grpc_service_names_match_etcd_paths() {
    use synod_proto::etcdserverpb::{
        auth_server, cluster_server, kv_server, lease_server, maintenance_server, watch_server,
    };
    assert_eq!(kv_server::SERVICE_NAME, "etcdserverpb.KV");
    assert_eq!(watch_server::SERVICE_NAME, "etcdserverpb.Watch");
    assert_eq!(lease_server::SERVICE_NAME, "etcdserverpb.Lease");
    assert_eq!(cluster_server::SERVICE_NAME, "etcdserverpb.Cluster");
    assert_eq!(maintenance_server::SERVICE_NAME, "etcdserverpb.Maintenance");
    assert_eq!(auth_server::SERVICE_NAME, "etcdserverpb.Auth");
    assert_eq!(synod_proto::v3lockpb::lock_server::SERVICE_NAME, "v3lockpb.Lock");
    assert_eq!(
        synod_proto::v3electionpb::election_server::SERVICE_NAME,
        "v3electionpb.Election"
    );
    assert_eq!(
        synod_proto::grpc::health::v1::health_server::SERVICE_NAME,
        "grpc.health.v1.Health"
    );
}
