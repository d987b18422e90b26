//! A lock holder as a process of its own, for the paused-holder test
//! (`tests/paused_holder.rs`): it takes a lock on a lease it keeps alive,
//! then writes a key every 200 ms, fenced by the lock's sequencer
//! (`synod-sequencer` metadata) unless `--no-sequencer` is given, and prints
//! one line per write. Stopping the process with SIGSTOP stops its
//! keep-alives too, as a real pause would, so its lease and lock end while
//! it does not know.
//!
//! Usage: `lock_holder ENDPOINT LOCK_NAME KEY [--no-sequencer]`.

use std::io::Write;
use std::time::Duration;

use synod_proto::etcdserverpb::kv_client::KvClient;
use synod_proto::etcdserverpb::lease_client::LeaseClient;
use synod_proto::etcdserverpb::{LeaseGrantRequest, LeaseKeepAliveRequest, PutRequest, RangeRequest};
use synod_proto::v3lockpb::lock_client::LockClient;
use synod_proto::v3lockpb::LockRequest;

/// The holder's lease, in seconds.
const LEASE_TTL_S: i64 = 2;

fn say(line: String) {
    let mut out = std::io::stdout().lock();
    let _ = writeln!(out, "{line}");
    let _ = out.flush();
}

#[tokio::main(flavor = "current_thread")]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args: Vec<String> = std::env::args().collect();
    let [_, endpoint, lock_name, key, rest @ ..] = args.as_slice() else {
        return Err("usage: lock_holder ENDPOINT LOCK_NAME KEY [--no-sequencer]".into());
    };
    let fenced = !rest.iter().any(|arg| arg == "--no-sequencer");
    let channel = tonic::transport::Endpoint::from_shared(format!("http://{endpoint}"))?
        .connect()
        .await?;
    let mut kv = KvClient::new(channel.clone());
    let mut leases = LeaseClient::new(channel.clone());
    let lease = leases
        .lease_grant(LeaseGrantRequest {
            ttl: LEASE_TTL_S,
            id: 0,
        })
        .await?
        .into_inner()
        .id;
    let (keep_alive, requests) = tokio::sync::mpsc::channel(4);
    let mut responses = leases
        .lease_keep_alive(tokio_stream::wrappers::ReceiverStream::new(requests))
        .await?
        .into_inner();
    tokio::spawn(async move {
        loop {
            if keep_alive.send(LeaseKeepAliveRequest { id: lease }).await.is_err() {
                return;
            }
            let _ = responses.message().await;
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
    });
    let held = LockClient::new(channel)
        .lock(LockRequest {
            name: lock_name.clone().into_bytes().into(),
            lease,
        })
        .await?
        .into_inner()
        .key;
    let created = kv
        .range(RangeRequest {
            key: held.clone(),
            ..RangeRequest::default()
        })
        .await?
        .into_inner()
        .kvs
        .first()
        .ok_or("the lock key is gone")?
        .create_revision;
    let hex: String = held.iter().map(|byte| format!("{byte:02x}")).collect();
    let sequencer = format!("{hex}/{created}/{lease:x}");
    say(format!("locked {sequencer}"));
    for write in 1u64.. {
        let mut put = tonic::Request::new(PutRequest {
            key: key.clone().into_bytes().into(),
            value: format!("holder-{write}").into_bytes().into(),
            ..PutRequest::default()
        });
        if fenced {
            put.metadata_mut().insert("synod-sequencer", sequencer.parse()?);
        }
        match kv.put(put).await {
            Ok(_) => say(format!("put {write} ok")),
            Err(status) => say(format!("put {write} refused: {}", status.message())),
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    Ok(())
}
