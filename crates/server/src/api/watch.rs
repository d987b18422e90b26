//! `etcdserverpb.Watch`: one bidirectional stream, many watchers.
//!
//! Each stream owns a synod-kv `WatchHub`, registered with the core task so
//! every applied entry reaches it; the stream's task sends what the hub has
//! ready whenever the core signals new events or the client asks for
//! something. Responses wait in a queue of [`WATCH_RESPONSES_QUEUE_MAX`]; when
//! the client reads too slowly the task waits, and the hub's own bounds decide
//! what happens to the watchers that fall behind.

use std::pin::Pin;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures_util::{Stream, StreamExt};
use synod_kv::{WatchConfig, WatchHub};
use synod_proto::etcdserverpb::watch_request::RequestUnion;
use synod_proto::etcdserverpb::watch_server::Watch;
use synod_proto::etcdserverpb::{WatchRequest, WatchResponse};
use tokio::sync::{mpsc, Notify};
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Request as GrpcRequest, Response as GrpcResponse, Status, Streaming};

use super::{convert, Api, Caller};
use crate::node::{lock, HubEntry};
use synod_kv::Access;

/// Responses queued for one watch stream before its task waits for the client.
pub const WATCH_RESPONSES_QUEUE_MAX: usize = 256;
/// How often watchers that asked for `progress_notify` get an empty response
/// with the current revision (etcd's default).
pub const WATCH_PROGRESS_INTERVAL: Duration = Duration::from_secs(600);

type WatchStream = Pin<Box<dyn Stream<Item = Result<WatchResponse, Status>> + Send + 'static>>;

#[tonic::async_trait]
impl Watch for Api {
    type WatchStream = WatchStream;

    async fn watch(&self, request: GrpcRequest<Streaming<WatchRequest>>) -> Result<GrpcResponse<WatchStream>, Status> {
        let metrics = self.shared.metrics.clone();
        if metrics.watch_streams.load(Ordering::Relaxed) >= self.shared.tunables.watch_streams_max as i64 {
            return Err(Status::resource_exhausted("synod: too many watch streams"));
        }
        // Who the stream runs as is settled when it opens: each watch it
        // creates must be on a range that caller may read.
        let caller = self.caller(&request).await?;
        super::refuse_if_corrupt(&self.shared)?;
        let mut incoming = request.into_inner();
        let (sender, receiver) = mpsc::channel(WATCH_RESPONSES_QUEUE_MAX);
        let entry = HubEntry {
            hub: Arc::new(Mutex::new(WatchHub::new(WatchConfig::default()))),
            notify: Arc::new(Notify::new()),
        };
        let api = self.clone();
        let hub_id = self.shared.register_hub(entry.clone());
        metrics.watch_streams.fetch_add(1, Ordering::Relaxed);
        tokio::spawn(async move {
            let shared = api.shared.clone();
            let mut watchers = 0usize;
            let mut progress = tokio::time::interval(WATCH_PROGRESS_INTERVAL);
            progress.tick().await;
            // A client that closes its side of the stream (as etcd's JSON
            // gateway does after a body's requests) keeps its watchers, as
            // with etcd: the stream ends when the client goes away.
            let mut requests_open = true;
            'stream: loop {
                tokio::select! {
                    request = incoming.next(), if requests_open => {
                        match request {
                            Some(Ok(request)) => {
                                if let Err(status) = handle(&api, &caller, &entry, request) {
                                    let _ = sender.send(Err(status)).await;
                                    break 'stream;
                                }
                            }
                            None => requests_open = false,
                            Some(Err(_)) => break 'stream,
                        }
                    }
                    _ = entry.notify.notified() => {}
                    _ = progress.tick() => {
                        let store = shared.store();
                        lock(&entry.hub).progress_notify(&store);
                    }
                    _ = sender.closed() => break 'stream,
                }
                loop {
                    let identity = api.identity();
                    let (responses, catching_up, count) = {
                        let store = shared.store();
                        let mut hub = lock(&entry.hub);
                        (hub.take_ready(&store), hub.catching_up(), hub.len())
                    };
                    metrics
                        .watchers
                        .fetch_add(count as i64 - watchers as i64, Ordering::Relaxed);
                    watchers = count;
                    for response in responses {
                        let response = convert::watch_response(identity, response);
                        if sender.send(Ok(response)).await.is_err() {
                            break 'stream;
                        }
                    }
                    if !catching_up {
                        break;
                    }
                    // Watchers starting in the past read their history from a
                    // frozen copy on a blocking-pool thread, holding neither
                    // the store nor the hub: the walk over their range takes
                    // long on a large store. Freezing and queueing the jobs
                    // under one store lock means no entry is applied in
                    // between, so each watcher's tail starts right after the
                    // frozen revision.
                    let (frozen, jobs) = {
                        let store = shared.store();
                        let frozen = store.freeze();
                        let jobs = lock(&entry.hub).catch_up_jobs(frozen.revision());
                        (frozen, jobs)
                    };
                    let read = tokio::task::spawn_blocking(move || {
                        jobs.iter().map(|job| job.run(&frozen)).collect::<Vec<_>>()
                    });
                    let Ok(results) = read.await else { break 'stream };
                    lock(&entry.hub).catch_up_done(results);
                }
            }
            shared.unregister_hub(hub_id);
            metrics.watchers.fetch_sub(watchers as i64, Ordering::Relaxed);
            metrics.watch_streams.fetch_sub(1, Ordering::Relaxed);
        });
        Ok(GrpcResponse::new(Box::pin(ReceiverStream::new(receiver))))
    }
}

/// Applies one client request to the stream's hub.
fn handle(api: &Api, caller: &Caller, entry: &HubEntry, request: WatchRequest) -> Result<(), Status> {
    let store = api.shared.store();
    let mut hub = lock(&entry.hub);
    match request.request_union {
        Some(RequestUnion::CreateRequest(create)) => {
            let create = convert::watch_create(create)?;
            let permitted = match caller {
                Caller::Server => Ok(()),
                Caller::Client(user) => {
                    store
                        .auth()
                        .check_range(user.as_deref(), Access::Read, &create.key, &create.range_end)
                }
            };
            // A refusal is queued as a cancel response by the hub.
            match permitted {
                Ok(()) => {
                    let _ = hub.create(&store, &create);
                }
                Err(error) => hub.refuse(&store, &error),
            }
        }
        Some(RequestUnion::CancelRequest(cancel)) => {
            hub.cancel(&store, cancel.watch_id);
        }
        Some(RequestUnion::ProgressRequest(_)) => hub.request_progress(),
        None => {}
    }
    Ok(())
}
