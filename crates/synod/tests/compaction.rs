//! A compaction's physical part runs one bounded step per committed instance;
//! once clients stop writing, the master keeps proposing empty Txns until it
//! is done, so the history it frees does not stay in memory on an idle
//! cluster.

mod common;

use std::time::{Duration, Instant};

use common::{http_get, Cluster};
use synod_proto::etcdserverpb::kv_client::KvClient;
use synod_proto::etcdserverpb::request_op::Request as Op;
use synod_proto::etcdserverpb::{CompactionRequest, PutRequest, RequestOp, TxnRequest};
use tonic::transport::Endpoint;

/// More keys than one step visits (2,000 per committed instance), so the
/// compaction cannot finish within the instance that asks for it.
const KEYS: usize = 6_000;
const KEYS_PER_TXN: usize = 100;

/// The master's `synod_compaction_pending_revision` gauge.
fn pending_revision(client_port: u16) -> Option<i64> {
    let (code, body) = http_get(client_port, "/metrics");
    if code != 200 {
        return None;
    }
    body.lines()
        .find_map(|line| line.strip_prefix("synod_compaction_pending_revision "))
        .and_then(|value| value.trim().parse().ok())
}

#[test]
fn an_idle_cluster_finishes_a_compaction() {
    let cluster = Cluster::start(3, "compaction");
    let master = cluster.wait_for_master(Duration::from_secs(10));
    let url = cluster.members[master].url();
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    let revision = runtime.block_on(async {
        let channel = Endpoint::from_shared(url).expect("url").connect_lazy();
        let mut client = KvClient::new(channel);
        // Every key twice, so the compaction has history to drop everywhere.
        for round in 0..2 {
            for first in (0..KEYS).step_by(KEYS_PER_TXN) {
                let success = (first..first + KEYS_PER_TXN)
                    .map(|index| RequestOp {
                        request: Some(Op::RequestPut(PutRequest {
                            key: format!("k{index:05}").into(),
                            value: format!("v{round}").into(),
                            ..PutRequest::default()
                        })),
                    })
                    .collect();
                let request = TxnRequest {
                    success,
                    ..TxnRequest::default()
                };
                client.txn(request).await.expect("txn");
            }
        }
        let put = client
            .put(PutRequest {
                key: "last".into(),
                value: "v".into(),
                ..PutRequest::default()
            })
            .await
            .expect("put");
        let revision = put.into_inner().header.expect("header").revision;
        client
            .compact(CompactionRequest {
                revision,
                physical: false,
            })
            .await
            .expect("compact");
        revision
    });
    // No more client writes from here on.
    let port = cluster.members[master].client_port;
    let deadline = Instant::now() + Duration::from_secs(20);
    let mut last = None;
    while Instant::now() < deadline {
        last = pending_revision(port);
        if last == Some(0) {
            return;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    panic!("compaction to {revision} still pending on the master after 20 s: {last:?}");
}
