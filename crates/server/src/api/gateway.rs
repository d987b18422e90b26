//! etcd's JSON gateway (grpc-gateway, as etcd 3.4 serves it): every KV,
//! Watch, Lease, Cluster, Maintenance, Auth, Lock and Election call as an
//! HTTP POST with a JSON body on the client port, at etcd's paths under
//! `/v3/` and, as 3.4 still answers them, `/v3beta/`. `curl` examples from
//! etcd's documentation and gateway clients (Python's `etcd3gw`) work
//! unchanged.
//!
//! Like etcd's, the gateway is a gRPC client of this member's own client
//! port: a body is decoded into the request message (serde impls generated
//! from the same .proto files by pbjson, so no call is translated by hand),
//! sent over a loopback channel carrying the caller's `Authorization` header
//! (and any `Grpc-Metadata-*` header) as metadata, so authentication and
//! every check apply exactly as to a gRPC client; the answer comes back as
//! JSON. On a TLS port the loopback channel presents no certificate: a
//! gateway call never runs as a certificate's name (with
//! `--client-cert-auth` the port refuses it, and callers use gRPC). The JSON is grpc-gateway's: field names as in the .proto, 64-bit
//! integers as strings, bytes in base64, default values left out; an error is
//! `{"error": MESSAGE, "code": GRPC_CODE, "message": MESSAGE}` with the HTTP
//! status grpc-gateway maps the code to. A stream (watch, keep-alive,
//! snapshot, observe) answers one `{"result": ...}` object per line and ends
//! with `{"error": {...}}` if the call fails; its request body may hold
//! several JSON objects one after another (a watch's create, then cancel).

use std::future::Future;

use axum::body::{Body, Bytes};
use axum::extract::DefaultBodyLimit;
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{post, MethodRouter};
use axum::Router;
use futures_util::StreamExt;
use serde::de::DeserializeOwned;
use serde::Serialize;
use synod_proto::etcdserverpb::auth_client::AuthClient;
use synod_proto::etcdserverpb::cluster_client::ClusterClient;
use synod_proto::etcdserverpb::kv_client::KvClient;
use synod_proto::etcdserverpb::lease_client::LeaseClient;
use synod_proto::etcdserverpb::maintenance_client::MaintenanceClient;
use synod_proto::etcdserverpb::watch_client::WatchClient;
use synod_proto::v3electionpb::election_client::ElectionClient;
use synod_proto::v3lockpb::lock_client::LockClient;
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::transport::{Channel, Endpoint};
use tonic::{Code, Status};

use super::{Api, GRPC_MESSAGE_BYTES_MAX};

/// Requests a stream's body may carry that wait for the call to take them.
const STREAM_REQUESTS_QUEUED_MAX: usize = 16;

/// The gateway's loopback channel to this member's gRPC services.
#[derive(Clone)]
struct Gateway {
    channel: Channel,
}

/// The gateway's routes, or `None` when this member's own client URL cannot
/// be dialled (the gateway is then left out, and the reason logged).
pub fn router(api: &Api) -> Option<Router> {
    let url = api.shared().client_url.clone();
    let mut endpoint = match Endpoint::from_shared(url.clone()) {
        Ok(endpoint) => endpoint,
        Err(error) => {
            tracing::warn!(%url, %error, "the JSON gateway is off: this member's client URL is not dialable");
            return None;
        }
    };
    if url.starts_with("https://") {
        let Some(tls) = &api.gateway_tls else {
            tracing::warn!(%url, "the JSON gateway is off: no TLS settings to dial this member's port");
            return None;
        };
        endpoint = match endpoint.tls_config(tls.clone()) {
            Ok(endpoint) => endpoint,
            Err(error) => {
                tracing::warn!(%url, %error, "the JSON gateway is off: no TLS client for this member's port");
                return None;
            }
        };
    }
    let gateway = Gateway {
        channel: endpoint.connect_lazy(),
    };
    Some(routes(gateway).layer(DefaultBodyLimit::max(GRPC_MESSAGE_BYTES_MAX)))
}

/// One unary call: `$client::$method` at `$path`.
macro_rules! unary {
    ($router:ident, $gateway:ident, $path:literal, $client:ident :: $method:ident) => {
        call!($router, $gateway, $path, unary, Bytes, $client::$method)
    };
}

/// One call: `$client::$method` at `$path`, through `Gateway::$kind`
/// (unary, bidirectional or server streaming) with a body taken as `$body`.
macro_rules! call {
    ($router:ident, $gateway:ident, $path:literal, $kind:ident, $body:ty, $client:ident :: $method:ident) => {
        $router = at(
            $router,
            $path,
            post({
                let gateway = $gateway.clone();
                move |headers: HeaderMap, body: $body| {
                    let gateway = gateway.clone();
                    async move {
                        gateway
                            .$kind(headers, body, |channel, request| async move {
                                client!($client, channel).$method(request).await
                            })
                            .await
                    }
                }
            }),
        );
    };
}

/// A client on the loopback channel, taking answers as large as a member sends.
macro_rules! client {
    ($client:ident, $channel:expr) => {
        $client::new($channel)
            .max_decoding_message_size(GRPC_MESSAGE_BYTES_MAX)
            .max_encoding_message_size(GRPC_MESSAGE_BYTES_MAX)
    };
}

fn routes(gateway: Gateway) -> Router {
    let mut router = Router::new();
    unary!(router, gateway, "/kv/range", KvClient::range);
    unary!(router, gateway, "/kv/put", KvClient::put);
    unary!(router, gateway, "/kv/deleterange", KvClient::delete_range);
    unary!(router, gateway, "/kv/txn", KvClient::txn);
    unary!(router, gateway, "/kv/compaction", KvClient::compact);
    unary!(router, gateway, "/lease/grant", LeaseClient::lease_grant);
    unary!(router, gateway, "/lease/revoke", LeaseClient::lease_revoke);
    unary!(router, gateway, "/kv/lease/revoke", LeaseClient::lease_revoke);
    unary!(router, gateway, "/lease/timetolive", LeaseClient::lease_time_to_live);
    unary!(router, gateway, "/kv/lease/timetolive", LeaseClient::lease_time_to_live);
    unary!(router, gateway, "/lease/leases", LeaseClient::lease_leases);
    unary!(router, gateway, "/kv/lease/leases", LeaseClient::lease_leases);
    unary!(router, gateway, "/cluster/member/add", ClusterClient::member_add);
    unary!(router, gateway, "/cluster/member/remove", ClusterClient::member_remove);
    unary!(router, gateway, "/cluster/member/update", ClusterClient::member_update);
    unary!(router, gateway, "/cluster/member/list", ClusterClient::member_list);
    unary!(
        router,
        gateway,
        "/cluster/member/promote",
        ClusterClient::member_promote
    );
    unary!(router, gateway, "/maintenance/alarm", MaintenanceClient::alarm);
    unary!(router, gateway, "/maintenance/status", MaintenanceClient::status);
    unary!(
        router,
        gateway,
        "/maintenance/defragment",
        MaintenanceClient::defragment
    );
    // etcd 3.4 declares Hash and HashKV at the same path; its gateway
    // answers Hash there (seen against etcd 3.4.23), so HashKV has no path.
    unary!(router, gateway, "/maintenance/hash", MaintenanceClient::hash);
    unary!(
        router,
        gateway,
        "/maintenance/transfer-leadership",
        MaintenanceClient::move_leader
    );
    unary!(router, gateway, "/auth/enable", AuthClient::auth_enable);
    unary!(router, gateway, "/auth/disable", AuthClient::auth_disable);
    unary!(router, gateway, "/auth/status", AuthClient::auth_status);
    unary!(router, gateway, "/auth/authenticate", AuthClient::authenticate);
    unary!(router, gateway, "/auth/user/add", AuthClient::user_add);
    unary!(router, gateway, "/auth/user/get", AuthClient::user_get);
    unary!(router, gateway, "/auth/user/list", AuthClient::user_list);
    unary!(router, gateway, "/auth/user/delete", AuthClient::user_delete);
    unary!(router, gateway, "/auth/user/changepw", AuthClient::user_change_password);
    unary!(router, gateway, "/auth/user/grant", AuthClient::user_grant_role);
    unary!(router, gateway, "/auth/user/revoke", AuthClient::user_revoke_role);
    unary!(router, gateway, "/auth/role/add", AuthClient::role_add);
    unary!(router, gateway, "/auth/role/get", AuthClient::role_get);
    unary!(router, gateway, "/auth/role/list", AuthClient::role_list);
    unary!(router, gateway, "/auth/role/delete", AuthClient::role_delete);
    unary!(router, gateway, "/auth/role/grant", AuthClient::role_grant_permission);
    unary!(router, gateway, "/auth/role/revoke", AuthClient::role_revoke_permission);
    unary!(router, gateway, "/lock/lock", LockClient::lock);
    unary!(router, gateway, "/lock/unlock", LockClient::unlock);
    unary!(router, gateway, "/election/campaign", ElectionClient::campaign);
    unary!(router, gateway, "/election/proclaim", ElectionClient::proclaim);
    unary!(router, gateway, "/election/leader", ElectionClient::leader);
    unary!(router, gateway, "/election/resign", ElectionClient::resign);

    call!(router, gateway, "/watch", bidirectional, Body, WatchClient::watch);
    call!(
        router,
        gateway,
        "/lease/keepalive",
        bidirectional,
        Body,
        LeaseClient::lease_keep_alive
    );
    call!(
        router,
        gateway,
        "/maintenance/snapshot",
        server_streaming,
        Bytes,
        MaintenanceClient::snapshot
    );
    call!(
        router,
        gateway,
        "/election/observe",
        server_streaming,
        Bytes,
        ElectionClient::observe
    );
    router
}

/// Serves `method` at `/v3{path}` and at `/v3beta{path}`.
fn at(router: Router, path: &str, method: MethodRouter) -> Router {
    router
        .route(&format!("/v3{path}"), method.clone())
        .route(&format!("/v3beta{path}"), method)
}

impl Gateway {
    async fn unary<Req, Resp, Call, Answer>(self, headers: HeaderMap, body: Bytes, call: Call) -> Response
    where
        Req: DeserializeOwned + Default,
        Resp: Serialize,
        Call: FnOnce(Channel, tonic::Request<Req>) -> Answer,
        Answer: Future<Output = Result<tonic::Response<Resp>, Status>>,
    {
        let request = match decode::<Req>(&body).and_then(|message| with_metadata(&headers, message)) {
            Ok(request) => request,
            Err(status) => return error_response(&status),
        };
        match call(self.channel, request).await {
            Ok(response) => match serde_json::to_vec(response.get_ref()) {
                Ok(json) => json_response(StatusCode::OK, json),
                Err(error) => error_response(&Status::internal(error.to_string())),
            },
            Err(status) => error_response(&status),
        }
    }

    /// A call whose request is a stream too: the body's JSON objects, as
    /// they arrive, the request stream ending with the body.
    async fn bidirectional<Req, Resp, Call, Answer>(self, headers: HeaderMap, body: Body, call: Call) -> Response
    where
        Req: DeserializeOwned + Send + 'static,
        Resp: Serialize + Send + 'static,
        Call: FnOnce(Channel, tonic::Request<ReceiverStream<Req>>) -> Answer,
        Answer: Future<Output = Result<tonic::Response<tonic::Streaming<Resp>>, Status>>,
    {
        let (sender, receiver) = mpsc::channel(STREAM_REQUESTS_QUEUED_MAX);
        let request = match with_metadata(&headers, ReceiverStream::new(receiver)) {
            Ok(request) => request,
            Err(status) => return error_response(&status),
        };
        let (parsed, mut parse_failed) = tokio::sync::oneshot::channel();
        // The reader owns the only sender: when the body ends the request
        // stream ends, as grpc-gateway closes its side, and the call goes on
        // as etcd's do then (a watch keeps watching, a keep-alive answers
        // what it was sent and ends).
        let reader = tokio::spawn(read_requests(body, sender, parsed));
        let answers = match call(self.channel, request).await {
            Ok(answers) => answers.into_inner(),
            Err(status) => {
                reader.abort();
                return error_response(&status);
            }
        };
        // A body that did not parse ends the call with its reason, as the
        // first and only line.
        if let Ok(status) = parse_failed.try_recv() {
            reader.abort();
            return error_response(&status);
        }
        stream_response(answers, AbortOnDrop(reader))
    }

    async fn server_streaming<Req, Resp, Call, Answer>(self, headers: HeaderMap, body: Bytes, call: Call) -> Response
    where
        Req: DeserializeOwned + Default,
        Resp: Serialize + Send + 'static,
        Call: FnOnce(Channel, tonic::Request<Req>) -> Answer,
        Answer: Future<Output = Result<tonic::Response<tonic::Streaming<Resp>>, Status>>,
    {
        let request = match decode::<Req>(&body).and_then(|message| with_metadata(&headers, message)) {
            Ok(request) => request,
            Err(status) => return error_response(&status),
        };
        match call(self.channel, request).await {
            Ok(answers) => stream_response(answers.into_inner(), ()),
            Err(status) => error_response(&status),
        }
    }
}

/// Aborts a task when the response that owns it is dropped (the client went away).
struct AbortOnDrop(tokio::task::JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// Parses the body's JSON objects one after another as its bytes arrive and
/// hands each to the call; a malformed one (or one past the message bound)
/// ends the reading and is reported once through `failed`.
async fn read_requests<Req: DeserializeOwned>(
    body: Body,
    sender: mpsc::Sender<Req>,
    failed: tokio::sync::oneshot::Sender<Status>,
) {
    let mut pieces = body.into_data_stream();
    let mut pending: Vec<u8> = Vec::new();
    let reason = loop {
        let Some(piece) = pieces.next().await else {
            if pending.iter().all(u8::is_ascii_whitespace) {
                return;
            }
            break Status::invalid_argument("the request body ends inside a JSON object");
        };
        let Ok(piece) = piece else { return };
        pending.extend_from_slice(&piece);
        let mut objects = serde_json::Deserializer::from_slice(&pending).into_iter::<Req>();
        let mut failure = None;
        let mut messages = Vec::new();
        for object in objects.by_ref() {
            match object {
                Ok(message) => messages.push(message),
                Err(error) if error.is_eof() => break,
                Err(error) => {
                    failure = Some(Status::invalid_argument(error.to_string()));
                    break;
                }
            }
        }
        let consumed = objects.byte_offset();
        for message in messages {
            if sender.send(message).await.is_err() {
                return;
            }
        }
        if let Some(status) = failure {
            break status;
        }
        pending.drain(..consumed);
        if pending.len() > GRPC_MESSAGE_BYTES_MAX {
            break Status::resource_exhausted(format!(
                "a request of over {GRPC_MESSAGE_BYTES_MAX} bytes in the stream"
            ));
        }
    };
    let _ = failed.send(reason);
}

/// One `{"result": ...}` line per answer, then `{"error": ...}` if the call
/// fails. `keep` lives as long as the answer does.
fn stream_response<Resp, Keep>(answers: tonic::Streaming<Resp>, keep: Keep) -> Response
where
    Resp: Serialize + Send + 'static,
    Keep: Send + 'static,
{
    let lines = futures_util::stream::unfold(Some((answers, keep)), |state| async move {
        let (mut answers, keep) = state?;
        let (line, more) = match answers.message().await {
            // Written around the message, not through a JSON map, so its
            // fields keep their .proto order, as grpc-gateway writes them.
            Ok(Some(answer)) => match serde_json::to_vec(&answer) {
                Ok(json) => ([b"{\"result\":".as_slice(), &json, b"}"].concat(), true),
                Err(error) => (stream_error(&Status::internal(error.to_string())), false),
            },
            Ok(None) => return None,
            Err(status) => (stream_error(&status), false),
        };
        let mut line = line;
        line.push(b'\n');
        let next = more.then_some((answers, keep));
        Some((Ok::<_, std::convert::Infallible>(Bytes::from(line)), next))
    });
    (
        StatusCode::OK,
        [(header::CONTENT_TYPE, "application/json")],
        Body::from_stream(lines),
    )
        .into_response()
}

/// A request body as its message; an empty body is the default message.
fn decode<Req: DeserializeOwned + Default>(body: &[u8]) -> Result<Req, Status> {
    if body.iter().all(u8::is_ascii_whitespace) {
        return Ok(Req::default());
    }
    serde_json::from_slice(body).map_err(|error| Status::invalid_argument(error.to_string()))
}

/// The message with the caller's credentials as gRPC metadata, as
/// grpc-gateway passes them: `Authorization` as `authorization`, and
/// `Grpc-Metadata-NAME` as `NAME`.
fn with_metadata<T>(headers: &HeaderMap, message: T) -> Result<tonic::Request<T>, Status> {
    let mut request = tonic::Request::new(message);
    for (name, value) in headers {
        let key = if name == header::AUTHORIZATION {
            "authorization"
        } else if let Some(rest) = name.as_str().strip_prefix("grpc-metadata-") {
            rest
        } else {
            continue;
        };
        let key = tonic::metadata::MetadataKey::from_bytes(key.as_bytes())
            .map_err(|_| Status::invalid_argument(format!("header {name} cannot be gRPC metadata")))?;
        let value = value
            .to_str()
            .ok()
            .and_then(|text| text.parse().ok())
            .ok_or_else(|| Status::invalid_argument(format!("header {name} is not ASCII")))?;
        request.metadata_mut().insert(key, value);
    }
    Ok(request)
}

fn json_response(status: StatusCode, json: Vec<u8>) -> Response {
    (status, [(header::CONTENT_TYPE, "application/json")], json).into_response()
}

/// grpc-gateway's error body and HTTP status for a failed call.
fn error_response(status: &Status) -> Response {
    let body = serde_json::json!({
        "error": status.message(),
        "code": status.code() as i32,
        "message": status.message(),
    });
    json_response(http_status(status.code()), body.to_string().into_bytes())
}

/// The last line of a stream whose call failed, as grpc-gateway writes it.
fn stream_error(status: &Status) -> Vec<u8> {
    let http = http_status(status.code());
    let body = serde_json::json!({
        "error": {
            "grpc_code": status.code() as i32,
            "http_code": http.as_u16(),
            "message": status.message(),
            "http_status": http.canonical_reason().unwrap_or(""),
        }
    });
    body.to_string().into_bytes()
}

/// The HTTP status etcd 3.4's gateway answers for a gRPC code (grpc-gateway
/// v1's table; FailedPrecondition is 412, as etcd 3.4.23 answers it, where
/// later grpc-gateway versions say 400).
fn http_status(code: Code) -> StatusCode {
    match code {
        Code::Ok => StatusCode::OK,
        Code::Cancelled => StatusCode::REQUEST_TIMEOUT,
        Code::FailedPrecondition => StatusCode::PRECONDITION_FAILED,
        Code::InvalidArgument | Code::OutOfRange => StatusCode::BAD_REQUEST,
        Code::DeadlineExceeded => StatusCode::GATEWAY_TIMEOUT,
        Code::NotFound => StatusCode::NOT_FOUND,
        Code::AlreadyExists | Code::Aborted => StatusCode::CONFLICT,
        Code::PermissionDenied => StatusCode::FORBIDDEN,
        Code::Unauthenticated => StatusCode::UNAUTHORIZED,
        Code::ResourceExhausted => StatusCode::TOO_MANY_REQUESTS,
        Code::Unimplemented => StatusCode::NOT_IMPLEMENTED,
        Code::Unavailable => StatusCode::SERVICE_UNAVAILABLE,
        Code::Unknown | Code::Internal | Code::DataLoss => StatusCode::INTERNAL_SERVER_ERROR,
    }
}

#[cfg(test)]
mod tests {
    use synod_proto::etcdserverpb::{PutRequest, RangeResponse, ResponseHeader, TxnRequest};
    use synod_proto::mvccpb::KeyValue;

    use super::*;

    #[test]
    fn json_is_grpc_gateways() {
        let response = RangeResponse {
            header: Some(ResponseHeader {
                cluster_id: u64::MAX,
                member_id: 1,
                revision: 7,
                raft_term: 2,
            }),
            kvs: vec![KeyValue {
                key: Bytes::from_static(b"foo"),
                create_revision: 2,
                mod_revision: 7,
                version: 3,
                value: Bytes::from_static(b"bar"),
                lease: 0,
            }],
            more: false,
            count: 1,
        };
        let json: serde_json::Value = serde_json::to_value(&response).unwrap();
        assert_eq!(json["header"]["cluster_id"], "18446744073709551615");
        assert_eq!(json["kvs"][0]["key"], "Zm9v");
        assert_eq!(json["kvs"][0]["create_revision"], "2");
        assert!(json["kvs"][0].get("lease").is_none(), "defaults are left out");
        assert!(json.get("more").is_none());
    }

    #[test]
    fn requests_take_either_field_spelling_and_an_empty_body() {
        let put: PutRequest = decode(br#"{"key": "Zm9v", "value": "YmFy", "prev_kv": true}"#).unwrap();
        assert_eq!(put.key.as_ref(), b"foo");
        assert!(put.prev_kv);
        let put: PutRequest = decode(br#"{"key": "Zm9v", "prevKv": true}"#).unwrap();
        assert!(put.prev_kv);
        let empty: TxnRequest = decode(b"  ").unwrap();
        assert_eq!(empty, TxnRequest::default());
        let refused = decode::<PutRequest>(br#"{"key": 12"#).unwrap_err();
        assert_eq!(refused.code(), Code::InvalidArgument);
    }

    #[test]
    fn errors_map_as_grpc_gateway_maps_them() {
        assert_eq!(http_status(Code::FailedPrecondition), StatusCode::PRECONDITION_FAILED);
        assert_eq!(http_status(Code::Unauthenticated), StatusCode::UNAUTHORIZED);
        assert_eq!(http_status(Code::Unavailable), StatusCode::SERVICE_UNAVAILABLE);
        let line = stream_error(&Status::not_found("gone"));
        let json: serde_json::Value = serde_json::from_slice(&line).unwrap();
        assert_eq!(json["error"]["http_code"], 404);
        assert_eq!(json["error"]["grpc_code"], 5);
    }
}
