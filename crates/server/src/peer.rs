//! Peer transport: Paxos messages between members over TCP.
//!
//! Each member dials every other member and uses that connection only to
//! send; it reads only from connections others dialed to it. So there is one
//! connection per direction per pair, and no tie-breaking between two
//! simultaneous dials.
//!
//! A connection opens with a [`Handshake`] each way ([`crate::frame`]); a
//! peer from another cluster, an unknown member, or anything that is not a
//! synod peer is refused with one log line naming both sides' IDs, and the
//! connection is closed. After the handshake every frame's payload is a
//! [`Payload`]: a kind byte, then a Paxos message ([`synod_paxos::encode_message`])
//! or this member's client URL (so followers know where to forward writes),
//! or a snapshot request or chunk ([`crate::snapshot_transfer`]), whose bodies start
//! with their own encoding version.
//!
//! # Bounds and back-pressure
//!
//! - Outbound: one queue per peer of `peer_queue_messages_max` messages and
//!   [`queue_bytes_max`] bytes.
//!   **When it is full, new messages are dropped** (and counted): the core
//!   retransmits whatever matters, and a dead peer must not grow memory.
//! - Inbound: all readers share one queue of `inbound_queue_messages_max`
//!   messages into the core. **When it is full, readers wait**, stop reading
//!   their sockets, and TCP flow control slows the senders.
//! - Frames are at most `frame_bytes_max` bytes; a handshake must arrive
//!   within [`HANDSHAKE_TIMEOUT`], and at most [`PEER_HANDSHAKES_MAX`]
//!   connections wait for theirs (the oldest gives way to a new one). After
//!   its handshake a connection holds no such slot: there is one per member,
//!   a new one from the same member replaces the old, and one idle for
//!   [`PEER_IDLE_TIMEOUT`] is closed.
//! - A failed dial is retried after a back-off from [`DIAL_BACKOFF_MIN`],
//!   doubling up to [`DIAL_BACKOFF_MAX`].

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use bytes::{Buf, BufMut, Bytes, BytesMut};
use futures_util::{SinkExt, StreamExt};
use synod_paxos::{decode_message, encode_message, Ballot, Epoch, Instance, Message, NodeId};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;
use tokio_util::codec::Framed;
use tokio_util::sync::CancellationToken;
use tracing::Instrument;

use crate::frame::{Frame, FrameCodec, FrameKind, Handshake, LocalMember, HANDSHAKE_PROTOCOL_VERSION};
use crate::identity::Identity;
use crate::metrics::Metrics;
use crate::node::lock;
use crate::snapshot_transfer::{SnapshotChunk, SNAPSHOT_CHUNK_BYTES_MAX, SNAPSHOT_TRANSFER_BYTES_MAX};
use crate::tls::{peer_common_name, PeerTls};

/// A peer connection's bytes: plain TCP, or TLS over it.
trait PeerIo: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send {}
impl<T: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send> PeerIo for T {}
type PeerStream = Box<dyn PeerIo>;

/// The host part of a `HOST:PORT` peer address, as a TLS server name.
fn server_name(address: &str) -> Result<rustls::pki_types::ServerName<'static>, String> {
    let host = address.rsplit_once(':').map_or(address, |(host, _)| host);
    let host = host.trim_start_matches('[').trim_end_matches(']');
    rustls::pki_types::ServerName::try_from(host.to_string()).map_err(|error| format!("{address}: {error}"))
}

/// Accepted connections still in their handshake at once. When all are
/// taken, the oldest is closed to admit the new one: a stranger holding
/// sockets open cannot keep a member that redials out, since a member's
/// handshake takes a round trip and a stranger's lingers.
pub const PEER_HANDSHAKES_MAX: usize = 64;
/// A member's connection that brings nothing for this long is closed; a
/// live member sends lease renewals or their answers several times a second.
pub const PEER_IDLE_TIMEOUT: Duration = Duration::from_secs(30);
/// At most one warning about closed handshakes per this interval.
const EVICTION_WARNING_INTERVAL: Duration = Duration::from_secs(10);
/// Largest frame read before a connection's handshake is done, in bytes: a
/// handshake is under 300, and a stranger's first frame announcing more is
/// refused from its header, before any room is reserved for it.
pub const HANDSHAKE_FRAME_BYTES_MAX: u32 = 1_024;
/// How long a new connection may take to send its handshake.
pub const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(5);
/// First wait before re-dialing a peer.
pub const DIAL_BACKOFF_MIN: Duration = Duration::from_millis(50);
/// Longest wait before re-dialing a peer.
pub const DIAL_BACKOFF_MAX: Duration = Duration::from_secs(2);
/// Longest client URL announced, in bytes.
const CLIENT_URL_BYTES_MAX: usize = 1_024;

const PAYLOAD_MESSAGE: u8 = 1;
const PAYLOAD_CLIENT_URL: u8 = 2;
const PAYLOAD_SNAPSHOT_REQUEST: u8 = 3;
// Kind 4 carried a whole snapshot in one frame; it is no longer read.
const PAYLOAD_SNAPSHOT_CHUNK: u8 = 5;
const PAYLOAD_HASH_QUERY: u8 = 6;
const PAYLOAD_HASH_REPORT: u8 = 7;
/// Layout of the consistency check's query and report bodies: their first byte.
const HASH_ENCODING_VERSION: u8 = 1;
/// Hash query body: version, instance.
const HASH_QUERY_BYTES: usize = 1 + 8;
/// Hash report body: version, instance, known (0 or 1), hash (zero when unknown).
const HASH_REPORT_BYTES: usize = 1 + 8 + 1 + 8;
/// Layout of the snapshot request and chunk bodies: the first byte of each.
const SNAPSHOT_ENCODING_VERSION: u8 = 1;
/// Snapshot request body: version, instance, chunk index.
const SNAPSHOT_REQUEST_BYTES: usize = 1 + 8 + 4;
/// Snapshot chunk body before the chunk's bytes: version, instance, epoch
/// (three words), chunk index, chunk count, total bytes, checksum.
pub const SNAPSHOT_CHUNK_HEADER_BYTES: usize = 1 + 8 + 24 + 4 + 4 + 8 + 4;

/// What one frame after the handshake carries.
#[derive(Debug, PartialEq, Eq)]
pub enum Payload {
    /// A Paxos message.
    Message(Message),
    /// The sender's client URL.
    ClientUrl(String),
    /// The sender is behind every peer's log: it asks for chunk
    /// `chunk_index` of a state machine snapshot covering at least `instance`
    /// (for chunks after the first, the instance of the snapshot it is
    /// assembling).
    SnapshotRequest {
        /// The snapshot wanted (at least this instance).
        instance: Instance,
        /// The chunk wanted.
        chunk_index: u32,
    },
    /// One chunk of a state machine snapshot.
    SnapshotChunk(SnapshotChunk),
    /// The master's consistency check asks for the sender's state hash
    /// after applying `instance` (see `node/consistency.rs`).
    HashQuery {
        /// The instance compared.
        instance: Instance,
    },
    /// The answer to a [`Payload::HashQuery`]: the state hash after applying
    /// `instance`, or `None` when the sender no longer knows it.
    HashReport {
        /// The instance compared.
        instance: Instance,
        /// The sender's state hash there.
        hash: Option<u64>,
    },
}

/// What the core task receives from the peers.
#[derive(Debug)]
pub enum PeerInput {
    /// A Paxos message.
    Message(Message),
    /// A peer asks for a chunk of a snapshot of at least `instance`.
    SnapshotRequest {
        /// The snapshot wanted (at least this instance).
        instance: Instance,
        /// The chunk wanted.
        chunk_index: u32,
    },
    /// One chunk of a snapshot the core asked for.
    SnapshotChunk(SnapshotChunk),
    /// The master asks for this member's state hash after `instance`.
    HashQuery {
        /// The instance compared.
        instance: Instance,
    },
    /// A peer's state hash after `instance` (`None`: it does not know it).
    HashReport {
        /// The instance compared.
        instance: Instance,
        /// The peer's hash there.
        hash: Option<u64>,
    },
}

/// Why a frame's payload was refused: the connection is dropped.
#[derive(Debug, thiserror::Error)]
pub enum PayloadError {
    /// No bytes.
    #[error("empty payload")]
    Empty,
    /// A payload kind this build does not know.
    #[error("unknown payload kind {0}")]
    UnknownKind(u8),
    /// A client URL that is not UTF-8 or over its bound.
    #[error("bad client URL announcement")]
    BadClientUrl,
    /// A snapshot request or chunk of the wrong length.
    #[error("malformed snapshot payload")]
    BadSnapshot,
    /// A hash query or report of the wrong length or with a bad flag.
    #[error("malformed consistency check payload")]
    BadHash,
    /// A snapshot body encoding this build does not know.
    #[error("unknown snapshot encoding version {0}")]
    SnapshotVersion(u8),
    /// The Paxos message inside did not decode.
    #[error("undecodable Paxos message: {0}")]
    Message(#[from] synod_paxos::CodecError),
}

impl Payload {
    /// A frame payload carrying `message`.
    pub fn encode_message(message: &Message) -> Bytes {
        let encoded = encode_message(message);
        let mut buffer = BytesMut::with_capacity(1 + encoded.len());
        buffer.put_u8(PAYLOAD_MESSAGE);
        buffer.put_slice(&encoded);
        buffer.freeze()
    }

    /// A frame payload announcing this member's client URL.
    pub fn encode_client_url(url: &str) -> Bytes {
        let mut buffer = BytesMut::with_capacity(1 + url.len());
        buffer.put_u8(PAYLOAD_CLIENT_URL);
        buffer.put_slice(url.as_bytes());
        buffer.freeze()
    }

    /// A frame payload asking for chunk `chunk_index` of a snapshot of at least `instance`.
    pub fn encode_snapshot_request(instance: Instance, chunk_index: u32) -> Bytes {
        let mut buffer = BytesMut::with_capacity(1 + SNAPSHOT_REQUEST_BYTES);
        buffer.put_u8(PAYLOAD_SNAPSHOT_REQUEST);
        buffer.put_u8(SNAPSHOT_ENCODING_VERSION);
        buffer.put_u64(instance.0);
        buffer.put_u32(chunk_index);
        buffer.freeze()
    }

    /// A frame payload carrying one snapshot chunk.
    pub fn encode_snapshot_chunk(chunk: &SnapshotChunk) -> Bytes {
        let mut buffer = BytesMut::with_capacity(1 + SNAPSHOT_CHUNK_HEADER_BYTES + chunk.bytes.len());
        buffer.put_u8(PAYLOAD_SNAPSHOT_CHUNK);
        buffer.put_u8(SNAPSHOT_ENCODING_VERSION);
        buffer.put_u64(chunk.instance.0);
        buffer.put_u64(chunk.epoch.0.round);
        buffer.put_u64(chunk.epoch.0.incarnation);
        buffer.put_u64(chunk.epoch.0.node.0);
        buffer.put_u32(chunk.chunk_index);
        buffer.put_u32(chunk.chunk_count);
        buffer.put_u64(chunk.total_bytes);
        buffer.put_u32(chunk.crc32c);
        buffer.put_slice(&chunk.bytes);
        buffer.freeze()
    }

    /// A frame payload asking for the receiver's state hash after `instance`.
    pub fn encode_hash_query(instance: Instance) -> Bytes {
        let mut buffer = BytesMut::with_capacity(1 + HASH_QUERY_BYTES);
        buffer.put_u8(PAYLOAD_HASH_QUERY);
        buffer.put_u8(HASH_ENCODING_VERSION);
        buffer.put_u64(instance.0);
        buffer.freeze()
    }

    /// A frame payload reporting this member's state hash after `instance`.
    pub fn encode_hash_report(instance: Instance, hash: Option<u64>) -> Bytes {
        let mut buffer = BytesMut::with_capacity(1 + HASH_REPORT_BYTES);
        buffer.put_u8(PAYLOAD_HASH_REPORT);
        buffer.put_u8(HASH_ENCODING_VERSION);
        buffer.put_u64(instance.0);
        buffer.put_u8(u8::from(hash.is_some()));
        buffer.put_u64(hash.unwrap_or(0));
        buffer.freeze()
    }

    /// Decodes a frame payload, refusing anything malformed or over `message_bytes_max` bytes.
    pub fn decode(payload: Bytes, message_bytes_max: usize) -> Result<Payload, PayloadError> {
        let Some(&kind) = payload.first() else {
            return Err(PayloadError::Empty);
        };
        let body = payload.slice(1..);
        match kind {
            PAYLOAD_MESSAGE => Ok(Payload::Message(decode_message(&body, message_bytes_max)?)),
            PAYLOAD_CLIENT_URL => {
                if body.len() > CLIENT_URL_BYTES_MAX {
                    return Err(PayloadError::BadClientUrl);
                }
                let url = std::str::from_utf8(&body).map_err(|_| PayloadError::BadClientUrl)?;
                Ok(Payload::ClientUrl(url.to_string()))
            }
            PAYLOAD_SNAPSHOT_REQUEST => {
                if body.len() != SNAPSHOT_REQUEST_BYTES {
                    return Err(PayloadError::BadSnapshot);
                }
                let mut reader = &body[..];
                let version = reader.get_u8();
                if version != SNAPSHOT_ENCODING_VERSION {
                    return Err(PayloadError::SnapshotVersion(version));
                }
                Ok(Payload::SnapshotRequest {
                    instance: Instance(reader.get_u64()),
                    chunk_index: reader.get_u32(),
                })
            }
            PAYLOAD_SNAPSHOT_CHUNK => decode_snapshot_chunk(body),
            PAYLOAD_HASH_QUERY | PAYLOAD_HASH_REPORT => decode_hash(kind, &body),
            kind => Err(PayloadError::UnknownKind(kind)),
        }
    }
}

/// Reads a hash query or report body, refusing any other length, version or
/// flag.
fn decode_hash(kind: u8, body: &[u8]) -> Result<Payload, PayloadError> {
    let expected = if kind == PAYLOAD_HASH_QUERY {
        HASH_QUERY_BYTES
    } else {
        HASH_REPORT_BYTES
    };
    if body.len() != expected {
        return Err(PayloadError::BadHash);
    }
    let mut reader = body;
    if reader.get_u8() != HASH_ENCODING_VERSION {
        return Err(PayloadError::BadHash);
    }
    let instance = Instance(reader.get_u64());
    if kind == PAYLOAD_HASH_QUERY {
        return Ok(Payload::HashQuery { instance });
    }
    let hash = match (reader.get_u8(), reader.get_u64()) {
        (1, hash) => Some(hash),
        (0, 0) => None,
        _ => return Err(PayloadError::BadHash),
    };
    Ok(Payload::HashReport { instance, hash })
}

/// Reads a chunk body, checking every bound before anything is kept: the
/// chunk's bytes are a slice of the frame, never a new allocation.
fn decode_snapshot_chunk(body: Bytes) -> Result<Payload, PayloadError> {
    if body.len() < SNAPSHOT_CHUNK_HEADER_BYTES {
        return Err(PayloadError::BadSnapshot);
    }
    let mut reader = &body[..SNAPSHOT_CHUNK_HEADER_BYTES];
    let version = reader.get_u8();
    if version != SNAPSHOT_ENCODING_VERSION {
        return Err(PayloadError::SnapshotVersion(version));
    }
    let instance = Instance(reader.get_u64());
    let round = reader.get_u64();
    let incarnation = reader.get_u64();
    let node = NodeId(reader.get_u64());
    let chunk_index = reader.get_u32();
    let chunk_count = reader.get_u32();
    let total_bytes = reader.get_u64();
    let crc32c = reader.get_u32();
    let bytes = body.slice(SNAPSHOT_CHUNK_HEADER_BYTES..);
    let consistent = chunk_index < chunk_count
        && u64::from(chunk_count) <= total_bytes.max(1)
        && total_bytes <= SNAPSHOT_TRANSFER_BYTES_MAX
        && bytes.len() <= SNAPSHOT_CHUNK_BYTES_MAX
        && bytes.len() as u64 <= total_bytes;
    if !consistent {
        return Err(PayloadError::BadSnapshot);
    }
    Ok(Payload::SnapshotChunk(SnapshotChunk {
        instance,
        epoch: Epoch(Ballot::new(round, incarnation, node)),
        chunk_index,
        chunk_count,
        total_bytes,
        crc32c,
        bytes,
    }))
}

/// Where the transport reports what it learns.
pub trait PeerEvents: Send + Sync + 'static {
    /// A peer announced its client URL.
    fn client_url(&self, peer: NodeId, url: String);
}

/// Bytes of payloads queued for one peer before new ones are dropped, at
/// least: [`queue_bytes_max`] raises it to four of the largest frames.
pub const PEER_QUEUE_BYTES_MAX: usize = 64 << 20;

/// The byte bound of one peer's queue for frames of at most `frame_bytes_max`.
pub fn queue_bytes_max(frame_bytes_max: u32) -> usize {
    PEER_QUEUE_BYTES_MAX.max(4 * frame_bytes_max as usize)
}

/// One peer's outbound queue: bounded in messages by the channel and in
/// bytes by `bytes` (what is queued and not yet taken by the dialer).
#[derive(Debug)]
struct PeerQueue {
    sender: mpsc::Sender<Bytes>,
    bytes: Arc<std::sync::atomic::AtomicUsize>,
    bytes_max: usize,
}

/// The sending side, used by the core task.
#[derive(Debug)]
pub struct PeerSender {
    queues: HashMap<NodeId, PeerQueue>,
    metrics: Arc<Metrics>,
}

impl PeerSender {
    /// Queues `message` for `to`; drops it if that peer's queue is full.
    pub fn send(&self, to: NodeId, message: &Message) {
        self.send_payload(to, Payload::encode_message(message));
    }

    /// Queues an encoded payload for `to`; drops it if that peer's queue is
    /// full, in messages or in bytes.
    pub fn send_payload(&self, to: NodeId, payload: Bytes) {
        let Some(queue) = self.queues.get(&to) else {
            return;
        };
        let length = payload.len();
        let queued = queue.bytes.fetch_add(length, Ordering::Relaxed);
        if queued + length > queue.bytes_max || queue.sender.try_send(payload).is_err() {
            queue.bytes.fetch_sub(length, Ordering::Relaxed);
            self.metrics.peer_messages_dropped.fetch_add(1, Ordering::Relaxed);
        }
    }
}

/// Settings of the transport.
#[derive(Clone, Debug)]
pub struct TransportConfig {
    /// Largest frame read or written, in bytes.
    pub frame_bytes_max: u32,
    /// Largest Paxos message decoded, in bytes.
    pub message_bytes_max: usize,
    /// Messages queued per peer before new ones are dropped (Paxos retransmits).
    pub peer_queue_messages_max: usize,
    /// This member's client URL, announced to each peer.
    pub client_url: String,
    /// TLS between members (`--peer-cert-file` and friends); `None` for plain TCP.
    pub tls: Option<PeerTls>,
}

/// Starts dialing every peer and accepting on `listener`. Messages received go
/// to `inbound`; everything stops when `shutdown` is cancelled.
pub fn start(
    identity: &Identity,
    listener: TcpListener,
    config: TransportConfig,
    inbound: mpsc::Sender<(NodeId, PeerInput)>,
    events: Arc<dyn PeerEvents>,
    metrics: Arc<Metrics>,
    shutdown: CancellationToken,
) -> PeerSender {
    let local = LocalMember {
        cluster_id: identity.cluster_id,
        member_id: identity.member_id,
    };
    let member_ids: Arc<[u64]> = identity.members.iter().map(|member| member.id).collect();
    let mut queues = HashMap::new();
    for peer in identity.members.iter().filter(|member| member.id != identity.member_id) {
        let (sender, receiver) = mpsc::channel(config.peer_queue_messages_max);
        let bytes = Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let bytes_max = queue_bytes_max(config.frame_bytes_max);
        queues.insert(
            NodeId(peer.id),
            PeerQueue {
                sender,
                bytes: bytes.clone(),
                bytes_max,
            },
        );
        let dialer = Dialer {
            local,
            member_ids: member_ids.clone(),
            name: identity.name.clone(),
            peer_id: peer.id,
            peer_name: peer.name.clone(),
            address: peer.peer_address.clone(),
            config: config.clone(),
        };
        tokio::spawn(dialer.run(receiver, bytes, shutdown.clone()).in_current_span());
    }
    let names: Arc<HashMap<u64, String>> = identity
        .members
        .iter()
        .map(|member| (member.id, member.name.clone()))
        .collect::<HashMap<_, _>>()
        .into();
    let acceptor = Acceptor {
        local,
        member_ids,
        names,
        name: identity.name.clone(),
        config,
        inbound,
        events,
        slots: std::sync::Mutex::new(Slots::default()),
    };
    tokio::spawn(acceptor.run(listener, shutdown).in_current_span());
    PeerSender { queues, metrics }
}

struct Dialer {
    local: LocalMember,
    member_ids: Arc<[u64]>,
    name: String,
    peer_id: u64,
    peer_name: String,
    address: String,
    config: TransportConfig,
}

impl Dialer {
    async fn run(
        self,
        mut queue: mpsc::Receiver<Bytes>,
        queued_bytes: Arc<std::sync::atomic::AtomicUsize>,
        shutdown: CancellationToken,
    ) {
        // Every payload taken off the queue leaves its byte count.
        let taken = |payload: Bytes| {
            queued_bytes.fetch_sub(payload.len(), Ordering::Relaxed);
            payload
        };
        let mut backoff = DIAL_BACKOFF_MIN;
        let mut last_error = String::new();
        loop {
            let connection = tokio::select! {
                _ = shutdown.cancelled() => return,
                connection = self.connect() => connection,
            };
            match connection {
                Ok(mut framed) => {
                    tracing::info!(peer = %self.peer_name, address = %self.address, "connected to peer");
                    backoff = DIAL_BACKOFF_MIN;
                    last_error.clear();
                    let error = loop {
                        let payload = tokio::select! {
                            _ = shutdown.cancelled() => return,
                            payload = queue.recv() => payload,
                        };
                        let Some(payload) = payload.map(taken) else { return };
                        if let Err(error) = framed.feed(Frame::message(payload)).await {
                            break error.to_string();
                        }
                        // Send everything already queued before one flush.
                        let mut failed = None;
                        while let Ok(payload) = queue.try_recv().map(taken) {
                            if let Err(error) = framed.feed(Frame::message(payload)).await {
                                failed = Some(error.to_string());
                                break;
                            }
                        }
                        if let Some(error) = failed {
                            break error;
                        }
                        if let Err(error) = framed.flush().await {
                            break error.to_string();
                        }
                    };
                    tracing::info!(peer = %self.peer_name, %error, "lost connection to peer; redialing");
                }
                Err(error) => {
                    if error != last_error {
                        tracing::warn!(peer = %self.peer_name, address = %self.address, %error, "cannot reach peer; retrying with back-off");
                        last_error = error;
                    }
                }
            }
            tokio::select! {
                _ = shutdown.cancelled() => return,
                _ = tokio::time::sleep(backoff) => {}
            }
            backoff = (backoff * 2).min(DIAL_BACKOFF_MAX);
        }
    }

    async fn connect(&self) -> Result<Framed<PeerStream, FrameCodec>, String> {
        let stream = tokio::time::timeout(HANDSHAKE_TIMEOUT, TcpStream::connect(&self.address))
            .await
            .map_err(|_| "connect timed out".to_string())?
            .map_err(|error| error.to_string())?;
        let _ = stream.set_nodelay(true);
        let stream: PeerStream = match &self.config.tls {
            None => Box::new(stream),
            Some(tls) => {
                let name = server_name(&self.address)?;
                let stream = tokio::time::timeout(HANDSHAKE_TIMEOUT, tls.connector.connect(name, stream))
                    .await
                    .map_err(|_| "no TLS handshake within the timeout".to_string())?
                    .map_err(|error| format!("TLS handshake: {error}"))?;
                // The certificate chains to the CA and is valid for the
                // address; it must also name the member dialed.
                let named = peer_common_name(stream.get_ref().1);
                if named.as_deref() != Some(self.peer_name.as_str()) {
                    return Err(format!(
                        "the certificate at {} names {named:?}, not member {}",
                        self.address, self.peer_name
                    ));
                }
                Box::new(stream)
            }
        };
        let mut framed = Framed::new(stream, FrameCodec::new(HANDSHAKE_FRAME_BYTES_MAX));
        let hello = Handshake {
            protocol_version: HANDSHAKE_PROTOCOL_VERSION,
            cluster_id: self.local.cluster_id,
            sender_member_id: self.local.member_id,
            receiver_member_id: self.peer_id,
            sender_name: self.name.clone(),
        };
        let frame = hello.to_frame().map_err(|error| error.to_string())?;
        framed.send(frame).await.map_err(|error| error.to_string())?;
        let reply = tokio::time::timeout(HANDSHAKE_TIMEOUT, framed.next())
            .await
            .map_err(|_| "no handshake reply".to_string())?
            .ok_or_else(|| "peer closed the connection during the handshake".to_string())?
            .map_err(|error| error.to_string())?;
        let reply = Handshake::from_frame(&reply).map_err(|error| error.to_string())?;
        reply
            .validate(self.local, &self.member_ids)
            .map_err(|error| format!("refusing peer: {error}"))?;
        if reply.sender_member_id != self.peer_id {
            return Err(format!(
                "address {} answers as member {:x}, expected {:x}",
                self.address, reply.sender_member_id, self.peer_id
            ));
        }
        // Handshakes done: frames may now be as large as the transport allows.
        let mut framed = framed.map_codec(|_| FrameCodec::new(self.config.frame_bytes_max));
        let announce = Frame::message(Payload::encode_client_url(&self.config.client_url));
        framed.send(announce).await.map_err(|error| error.to_string())?;
        Ok(framed)
    }
}

struct Acceptor {
    local: LocalMember,
    member_ids: Arc<[u64]>,
    /// Every member's name, by ID: what a peer's certificate must name.
    names: Arc<HashMap<u64, String>>,
    name: String,
    config: TransportConfig,
    inbound: mpsc::Sender<(NodeId, PeerInput)>,
    events: Arc<dyn PeerEvents>,
    slots: std::sync::Mutex<Slots>,
}

/// Who holds the accepted connections: those still in their handshake, in
/// arrival order, and one per member after it.
#[derive(Default)]
struct Slots {
    next_id: u64,
    handshaking: std::collections::VecDeque<(u64, CancellationToken)>,
    members: HashMap<u64, (u64, CancellationToken)>,
    evicted: u64,
    warned_at: Option<std::time::Instant>,
}

impl Slots {
    /// A slot for a new connection, closing the oldest handshake if all are taken.
    fn admit(&mut self) -> (u64, CancellationToken) {
        if self.handshaking.len() >= PEER_HANDSHAKES_MAX {
            if let Some((_, oldest)) = self.handshaking.pop_front() {
                oldest.cancel();
                self.evicted += 1;
                if self
                    .warned_at
                    .is_none_or(|at| at.elapsed() >= EVICTION_WARNING_INTERVAL)
                {
                    tracing::warn!(
                        closed = self.evicted,
                        limit = PEER_HANDSHAKES_MAX,
                        "peer connections that did not finish their handshake closed to make room"
                    );
                    self.warned_at = Some(std::time::Instant::now());
                    self.evicted = 0;
                }
            }
        }
        self.next_id += 1;
        let token = CancellationToken::new();
        self.handshaking.push_back((self.next_id, token.clone()));
        (self.next_id, token)
    }

    /// Connection `id` finished its handshake as `member`: it leaves the
    /// handshake queue and replaces that member's previous connection.
    fn handshake_done(&mut self, id: u64, member: u64) {
        let Some(at) = self.handshaking.iter().position(|(held, _)| *held == id) else {
            return;
        };
        let (_, token) = self.handshaking.remove(at).expect("the position is in the queue");
        if let Some((_, previous)) = self.members.insert(member, (id, token)) {
            previous.cancel();
        }
    }

    /// Connection `id` ended.
    fn release(&mut self, id: u64) {
        self.handshaking.retain(|(held, _)| *held != id);
        self.members.retain(|_, (held, _)| *held != id);
    }
}

impl Acceptor {
    async fn run(self, listener: TcpListener, shutdown: CancellationToken) {
        let this = Arc::new(self);
        loop {
            let accepted = tokio::select! {
                _ = shutdown.cancelled() => return,
                accepted = listener.accept() => accepted,
            };
            let (stream, address) = match accepted {
                Ok(accepted) => accepted,
                Err(error) => {
                    tracing::warn!(%error, "peer accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            };
            let (id, slot) = lock(&this.slots).admit();
            let this = this.clone();
            let shutdown = shutdown.clone();
            tokio::spawn(
                async move {
                    tokio::select! {
                        _ = shutdown.cancelled() => {}
                        _ = slot.cancelled() => {}
                        result = this.serve(stream, address, id) => {
                            if let Err(error) = result {
                                tracing::warn!(%address, %error, "closing peer connection");
                            }
                        }
                    }
                    lock(&this.slots).release(id);
                }
                .in_current_span(),
            );
        }
    }

    async fn serve(&self, stream: TcpStream, address: SocketAddr, id: u64) -> Result<(), String> {
        let _ = stream.set_nodelay(true);
        // With TLS, the common name of the certificate the peer presented
        // (`None` inside if it presented none).
        let (stream, certificate_name): (PeerStream, Option<Option<String>>) = match &self.config.tls {
            None => (Box::new(stream), None),
            Some(tls) => {
                let stream = tokio::time::timeout(HANDSHAKE_TIMEOUT, tls.acceptor.accept(stream))
                    .await
                    .map_err(|_| "no TLS handshake within the timeout".to_string())?
                    .map_err(|error| format!("TLS handshake: {error}"))?;
                let named = peer_common_name(stream.get_ref().1);
                (Box::new(stream), Some(named))
            }
        };
        let mut framed = Framed::new(stream, FrameCodec::new(HANDSHAKE_FRAME_BYTES_MAX));
        let first = tokio::time::timeout(HANDSHAKE_TIMEOUT, framed.next())
            .await
            .map_err(|_| "no handshake within the timeout".to_string())?
            .ok_or_else(|| "closed before the handshake".to_string())?
            .map_err(|error| format!("bad first frame: {error}"))?;
        let hello = Handshake::from_frame(&first).map_err(|error| error.to_string())?;
        if let Err(error) = hello.validate(self.local, &self.member_ids) {
            return Err(format!("refusing peer: {error}"));
        }
        if let (Some(named), Some(tls)) = (&certificate_name, &self.config.tls) {
            let claimed = self.names.get(&hello.sender_member_id);
            if tls.client_cert_auth && named.as_ref() != claimed {
                return Err(format!(
                    "refusing peer: it claims to be member {} but its certificate names {named:?}",
                    claimed.map_or("?", String::as_str)
                ));
            }
        }
        let reply = Handshake {
            protocol_version: HANDSHAKE_PROTOCOL_VERSION,
            cluster_id: self.local.cluster_id,
            sender_member_id: self.local.member_id,
            receiver_member_id: hello.sender_member_id,
            sender_name: self.name.clone(),
        };
        framed
            .send(reply.to_frame().map_err(|error| error.to_string())?)
            .await
            .map_err(|error| error.to_string())?;
        let peer = NodeId(hello.sender_member_id);
        lock(&self.slots).handshake_done(id, hello.sender_member_id);
        tracing::debug!(%address, peer = %hello.sender_name, "peer connection accepted");
        // Only a member gets past its handshake: its frames may now be as
        // large as the transport allows.
        let mut framed = framed.map_codec(|_| FrameCodec::new(self.config.frame_bytes_max));
        loop {
            let Ok(frame) = tokio::time::timeout(PEER_IDLE_TIMEOUT, framed.next()).await else {
                return Err(format!("{} sent nothing for {PEER_IDLE_TIMEOUT:?}", hello.sender_name));
            };
            let Some(frame) = frame else { break };
            let frame = frame.map_err(|error| format!("from {}: {error}", hello.sender_name))?;
            if frame.kind != FrameKind::Message {
                return Err(format!("{} sent a second handshake", hello.sender_name));
            }
            let input = match Payload::decode(frame.payload, self.config.message_bytes_max) {
                Ok(Payload::Message(message)) => PeerInput::Message(message),
                Ok(Payload::ClientUrl(url)) => {
                    self.events.client_url(peer, url);
                    continue;
                }
                Ok(Payload::SnapshotRequest { instance, chunk_index }) => {
                    PeerInput::SnapshotRequest { instance, chunk_index }
                }
                Ok(Payload::SnapshotChunk(chunk)) => PeerInput::SnapshotChunk(chunk),
                Ok(Payload::HashQuery { instance }) => PeerInput::HashQuery { instance },
                Ok(Payload::HashReport { instance, hash }) => PeerInput::HashReport { instance, hash },
                Err(error) => return Err(format!("from {}: {error}", hello.sender_name)),
            };
            if self.inbound.send((peer, input)).await.is_err() {
                return Ok(());
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_largest_handshake_fits_the_bound_before_handshakes() {
        let hello = Handshake {
            protocol_version: HANDSHAKE_PROTOCOL_VERSION,
            cluster_id: u64::MAX,
            sender_member_id: u64::MAX,
            receiver_member_id: u64::MAX,
            sender_name: "n".repeat(crate::frame::NAME_BYTES_MAX),
        };
        let frame = hello.to_frame().expect("a handshake frame");
        assert!(frame.frame_bytes() <= u64::from(HANDSHAKE_FRAME_BYTES_MAX));
        let mut buffer = bytes::BytesMut::new();
        let mut codec = FrameCodec::new(HANDSHAKE_FRAME_BYTES_MAX);
        tokio_util::codec::Encoder::encode(&mut codec, frame, &mut buffer).expect("encodes");
        // A first frame announcing more is refused from its header alone.
        let big = Frame::message(Bytes::from(vec![0u8; 4_096]));
        let mut wide = bytes::BytesMut::new();
        tokio_util::codec::Encoder::encode(&mut FrameCodec::new(1 << 20), big, &mut wide).expect("encodes");
        wide.truncate(crate::frame::HEADER_BYTES);
        assert!(tokio_util::codec::Decoder::decode(&mut codec, &mut wide).is_err());
    }

    #[test]
    fn a_peer_queue_is_bounded_in_bytes() {
        let (sender, mut receiver) = mpsc::channel(1_000);
        let bytes = Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let metrics = Arc::new(Metrics::default());
        let peers = PeerSender {
            queues: HashMap::from([(
                NodeId(2),
                PeerQueue {
                    sender,
                    bytes: bytes.clone(),
                    bytes_max: 1_000,
                },
            )]),
            metrics: metrics.clone(),
        };
        for _ in 0..3 {
            peers.send_payload(NodeId(2), Bytes::from(vec![0u8; 400]));
        }
        assert_eq!(bytes.load(Ordering::Relaxed), 800, "the third would pass 1,000 bytes");
        assert_eq!(metrics.peer_messages_dropped.load(Ordering::Relaxed), 1);
        let taken = receiver.try_recv().expect("queued");
        bytes.fetch_sub(taken.len(), Ordering::Relaxed);
        peers.send_payload(NodeId(2), Bytes::from(vec![0u8; 400]));
        assert_eq!(bytes.load(Ordering::Relaxed), 800, "room again once one left");
        assert_eq!(queue_bytes_max(16 << 20), 64 << 20);
        assert_eq!(queue_bytes_max(32 << 20), 128 << 20);
    }

    #[test]
    fn hash_queries_and_reports_round_trip_and_malformed_ones_are_refused() {
        let query = Payload::encode_hash_query(Instance(42));
        assert_eq!(
            Payload::decode(query.clone(), 1 << 20).unwrap(),
            Payload::HashQuery { instance: Instance(42) }
        );
        for hash in [Some(7), Some(0), None] {
            let report = Payload::encode_hash_report(Instance(9), hash);
            assert_eq!(
                Payload::decode(report, 1 << 20).unwrap(),
                Payload::HashReport {
                    instance: Instance(9),
                    hash
                }
            );
        }
        let report = Payload::encode_hash_report(Instance(9), Some(7)).to_vec();
        let mut bad_flag = report.clone();
        bad_flag[10] = 2;
        let mut unknown_with_hash = report.clone();
        unknown_with_hash[10] = 0;
        let mut bad_version = query.to_vec();
        bad_version[1] = 9;
        for bad in [
            bad_flag,
            unknown_with_hash,
            bad_version,
            report[..report.len() - 1].to_vec(),
            query[..5].to_vec(),
            [query.to_vec(), vec![0]].concat(),
        ] {
            assert!(
                matches!(Payload::decode(Bytes::from(bad), 1 << 20), Err(PayloadError::BadHash)),
                "refused"
            );
        }
    }

    #[test]
    fn payloads_round_trip_and_garbage_is_refused() {
        let message = Message::Probe;
        let bytes = Payload::encode_message(&message);
        assert_eq!(Payload::decode(bytes, 1 << 20).unwrap(), Payload::Message(message));
        let bytes = Payload::encode_client_url("http://127.0.0.1:2379");
        assert_eq!(
            Payload::decode(bytes, 1 << 20).unwrap(),
            Payload::ClientUrl("http://127.0.0.1:2379".into())
        );
        assert!(Payload::decode(Bytes::new(), 1 << 20).is_err());
        assert!(Payload::decode(Bytes::from_static(&[9, 1, 2]), 1 << 20).is_err());
        assert!(Payload::decode(Bytes::from_static(&[1, 1, 200]), 1 << 20).is_err());
        assert!(Payload::decode(Bytes::from_static(&[2, 0xff, 0xfe]), 1 << 20).is_err());
        let bytes = Payload::encode_snapshot_request(Instance(4), 3);
        assert_eq!(
            Payload::decode(bytes, 1 << 20).unwrap(),
            Payload::SnapshotRequest {
                instance: Instance(4),
                chunk_index: 3
            }
        );
        assert!(Payload::decode(Bytes::from_static(&[3, 1]), 1 << 20).is_err());
        assert!(Payload::decode(Bytes::from_static(&[3, 0, 0, 0, 0, 0, 0, 0, 4]), 1 << 20).is_err());
        assert!(Payload::decode(Bytes::from_static(&[4, 1, 2, 3]), 1 << 20).is_err());
        assert!(Payload::decode(Bytes::from_static(&[5, 1, 2, 3]), 1 << 20).is_err());
    }

    fn chunk() -> SnapshotChunk {
        let bytes = Bytes::from_static(b"state");
        SnapshotChunk {
            instance: Instance(9),
            epoch: Epoch(Ballot::new(3, 2, NodeId(1))),
            chunk_index: 1,
            chunk_count: 3,
            total_bytes: 12,
            crc32c: crc32c::crc32c(&bytes),
            bytes,
        }
    }

    #[test]
    fn snapshot_chunks_round_trip() {
        let bytes = Payload::encode_snapshot_chunk(&chunk());
        assert_eq!(
            Payload::decode(bytes, 1 << 20).unwrap(),
            Payload::SnapshotChunk(chunk())
        );
        let mut request = Payload::encode_snapshot_request(Instance(4), 0).to_vec();
        request[1] = 2;
        assert!(matches!(
            Payload::decode(Bytes::from(request), 1 << 20),
            Err(PayloadError::SnapshotVersion(2))
        ));
    }

    #[test]
    fn inconsistent_snapshot_chunks_are_refused() {
        let refused = |change: fn(&mut SnapshotChunk)| {
            let mut chunk = chunk();
            change(&mut chunk);
            Payload::decode(Payload::encode_snapshot_chunk(&chunk), 1 << 20).is_err()
        };
        assert!(refused(|chunk| chunk.chunk_index = 3));
        assert!(refused(|chunk| chunk.chunk_count = 0));
        assert!(refused(|chunk| chunk.chunk_count = 13));
        assert!(refused(|chunk| chunk.total_bytes = 4));
        assert!(refused(|chunk| chunk.total_bytes = SNAPSHOT_TRANSFER_BYTES_MAX + 1));
        let mut oversized = chunk();
        oversized.bytes = Bytes::from(vec![0; SNAPSHOT_CHUNK_BYTES_MAX + 1]);
        oversized.total_bytes = SNAPSHOT_TRANSFER_BYTES_MAX;
        assert!(Payload::decode(Payload::encode_snapshot_chunk(&oversized), 1 << 30).is_err());
        let mut version = Payload::encode_snapshot_chunk(&chunk()).to_vec();
        version[1] = 9;
        assert!(Payload::decode(Bytes::from(version), 1 << 20).is_err());
        let whole = Payload::encode_snapshot_chunk(&chunk());
        for length in 0..=SNAPSHOT_CHUNK_HEADER_BYTES {
            assert!(Payload::decode(whole.slice(..length), 1 << 20).is_err());
        }
    }

    proptest::proptest! {
        #[test]
        fn arbitrary_payloads_never_panic(bytes in proptest::collection::vec(proptest::num::u8::ANY, 0..128)) {
            let _ = Payload::decode(Bytes::from(bytes), 1 << 20);
        }
    }
}
