//! The first frame each way on a peer connection: who is speaking, for which
//! cluster, to whom.
//!
//! Members are configured by address, and addresses get reused: a member
//! restarted into another cluster, or a member of a test cluster left running
//! on the same ports, would otherwise deliver Paxos messages for the wrong
//! cluster. The handshake stops that before any message is read.
//!
//! # Payload layout
//!
//! Big-endian integers:
//!
//! | bytes | field                                       |
//! |------:|---------------------------------------------|
//! | 2     | protocol version ([`HANDSHAKE_PROTOCOL_VERSION`]) |
//! | 8     | cluster ID                                  |
//! | 8     | sender member ID                            |
//! | 8     | receiver member ID the sender expects        |
//! | 1     | sender name length, at most [`NAME_BYTES_MAX`] |
//! | n     | sender name, UTF-8                          |

use bytes::{BufMut, Bytes, BytesMut};

use super::{Frame, FrameKind};

/// Version of the peer protocol carried in frames (handshake and messages).
/// Bumped when the meaning of message payloads changes incompatibly.
pub const HANDSHAKE_PROTOCOL_VERSION: u16 = 1;

/// Longest sender name, in UTF-8 bytes; names are for logs and errors.
pub const NAME_BYTES_MAX: usize = 255;

// The name length travels in one byte.
const _: () = assert!(NAME_BYTES_MAX <= u8::MAX as usize);

/// Bytes before the name: version, three IDs, name length.
const FIXED_BYTES: usize = 2 + 8 + 8 + 8 + 1;

/// Identifies one end of a peer connection.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Handshake {
    /// Peer protocol version of the sender.
    pub protocol_version: u16,
    /// Cluster the sender belongs to.
    pub cluster_id: u64,
    /// The sender's member ID.
    pub sender_member_id: u64,
    /// The member the sender believes it has reached.
    pub receiver_member_id: u64,
    /// The sender's human-readable name, for logs and error messages.
    pub sender_name: String,
}

/// This member's identity, against which a peer's handshake is checked.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct LocalMember {
    /// The cluster this member belongs to.
    pub cluster_id: u64,
    /// This member's ID.
    pub member_id: u64,
}

/// Why a handshake was refused. All are fatal to the connection; IDs are
/// shown in hexadecimal, as etcd shows member IDs.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum HandshakeError {
    /// The first frame on the connection was not a handshake.
    #[error("expected a handshake as the first frame, received a {kind:?} frame")]
    NotAHandshake {
        /// Kind of the frame received instead.
        kind: FrameKind,
    },
    /// The payload does not have the handshake layout.
    #[error("malformed handshake of {payload_bytes} bytes: {reason}")]
    Malformed {
        /// Size of the payload received.
        payload_bytes: usize,
        /// What is wrong with it.
        reason: &'static str,
    },
    /// The sender name is not UTF-8.
    #[error("handshake sender name is not valid UTF-8")]
    NameNotUtf8,
    /// The local name is too long to send.
    #[error("member name of {name_bytes} bytes exceeds {NAME_BYTES_MAX} bytes")]
    NameTooLong {
        /// Length of the name in UTF-8 bytes.
        name_bytes: usize,
    },
    /// The peer speaks a protocol version this build does not.
    #[error("peer protocol version {found} is not supported, this member speaks version {HANDSHAKE_PROTOCOL_VERSION}")]
    UnsupportedProtocolVersion {
        /// The version the peer sent.
        found: u16,
    },
    /// The peer belongs to a different cluster.
    #[error("peer member {peer_member_id:x} belongs to cluster {peer_cluster_id:x}, but member {local_member_id:x} belongs to cluster {local_cluster_id:x}")]
    ClusterMismatch {
        /// Cluster ID the peer sent.
        peer_cluster_id: u64,
        /// Member ID the peer sent.
        peer_member_id: u64,
        /// This member's cluster ID.
        local_cluster_id: u64,
        /// This member's ID.
        local_member_id: u64,
    },
    /// The peer claims an ID that is not in this member's view of the
    /// membership.
    #[error("peer member {peer_member_id:x} ({peer_name:?}) is not a member of cluster {cluster_id:x} as known to member {local_member_id:x}")]
    UnknownMember {
        /// Member ID the peer sent.
        peer_member_id: u64,
        /// Name the peer sent.
        peer_name: String,
        /// The shared cluster ID.
        cluster_id: u64,
        /// This member's ID.
        local_member_id: u64,
    },
    /// The peer meant to reach another member: its address book is stale.
    #[error("peer member {peer_member_id:x} expected to reach member {expected_member_id:x}, but reached member {local_member_id:x}")]
    WrongReceiver {
        /// Member ID the peer sent.
        peer_member_id: u64,
        /// The receiver the peer expected.
        expected_member_id: u64,
        /// This member's ID.
        local_member_id: u64,
    },
    /// The connection loops back to this member, so its address is listed as
    /// a peer's.
    #[error("member {member_id:x} connected to itself")]
    SelfConnection {
        /// This member's ID.
        member_id: u64,
    },
}

impl Handshake {
    /// The payload bytes of this handshake.
    pub fn encode(&self) -> Result<Bytes, HandshakeError> {
        let name = self.sender_name.as_bytes();
        let name_bytes = u8::try_from(name.len())
            .ok()
            .filter(|_| name.len() <= NAME_BYTES_MAX)
            .ok_or(HandshakeError::NameTooLong { name_bytes: name.len() })?;
        let mut buffer = BytesMut::with_capacity(FIXED_BYTES + name.len());
        buffer.put_u16(self.protocol_version);
        buffer.put_u64(self.cluster_id);
        buffer.put_u64(self.sender_member_id);
        buffer.put_u64(self.receiver_member_id);
        buffer.put_u8(name_bytes);
        buffer.put_slice(name);
        Ok(buffer.freeze())
    }

    /// Parses a handshake payload. The protocol version is checked first,
    /// because a later version may lay out the rest differently.
    pub fn decode(payload: &[u8]) -> Result<Self, HandshakeError> {
        let malformed = |reason| HandshakeError::Malformed {
            payload_bytes: payload.len(),
            reason,
        };
        let mut reader = Reader { remaining: payload };
        let protocol_version = reader
            .u16()
            .ok_or_else(|| malformed("shorter than the protocol version"))?;
        if protocol_version != HANDSHAKE_PROTOCOL_VERSION {
            return Err(HandshakeError::UnsupportedProtocolVersion {
                found: protocol_version,
            });
        }
        let (Some(cluster_id), Some(sender_member_id), Some(receiver_member_id), Some(name_bytes)) =
            (reader.u64(), reader.u64(), reader.u64(), reader.u8())
        else {
            return Err(malformed("shorter than the fixed fields"));
        };
        let name = reader
            .take(usize::from(name_bytes))
            .ok_or_else(|| malformed("shorter than the name length it declares"))?;
        if !reader.remaining.is_empty() {
            return Err(malformed("bytes follow the name"));
        }
        let sender_name = std::str::from_utf8(name)
            .map_err(|_| HandshakeError::NameNotUtf8)?
            .to_owned();
        Ok(Handshake {
            protocol_version,
            cluster_id,
            sender_member_id,
            receiver_member_id,
            sender_name,
        })
    }

    /// This handshake as the frame that opens a connection.
    pub fn to_frame(&self) -> Result<Frame, HandshakeError> {
        Ok(Frame {
            kind: FrameKind::Handshake,
            payload: self.encode()?,
        })
    }

    /// Reads the handshake from the first frame of a connection.
    pub fn from_frame(frame: &Frame) -> Result<Self, HandshakeError> {
        if frame.kind != FrameKind::Handshake {
            return Err(HandshakeError::NotAHandshake { kind: frame.kind });
        }
        Handshake::decode(&frame.payload)
    }

    /// Accepts a peer's handshake only if it comes from another member of
    /// this member's cluster and was meant for this member.
    ///
    /// `member_ids` is this member's current view of the membership; it may
    /// or may not include `local.member_id`.
    pub fn validate(&self, local: LocalMember, member_ids: &[u64]) -> Result<(), HandshakeError> {
        if self.protocol_version != HANDSHAKE_PROTOCOL_VERSION {
            return Err(HandshakeError::UnsupportedProtocolVersion {
                found: self.protocol_version,
            });
        }
        if self.cluster_id != local.cluster_id {
            return Err(HandshakeError::ClusterMismatch {
                peer_cluster_id: self.cluster_id,
                peer_member_id: self.sender_member_id,
                local_cluster_id: local.cluster_id,
                local_member_id: local.member_id,
            });
        }
        if self.sender_member_id == local.member_id {
            return Err(HandshakeError::SelfConnection {
                member_id: local.member_id,
            });
        }
        if !member_ids.contains(&self.sender_member_id) {
            return Err(HandshakeError::UnknownMember {
                peer_member_id: self.sender_member_id,
                peer_name: self.sender_name.clone(),
                cluster_id: local.cluster_id,
                local_member_id: local.member_id,
            });
        }
        if self.receiver_member_id != local.member_id {
            return Err(HandshakeError::WrongReceiver {
                peer_member_id: self.sender_member_id,
                expected_member_id: self.receiver_member_id,
                local_member_id: local.member_id,
            });
        }
        Ok(())
    }
}

/// Reads big-endian fields off a slice, returning `None` instead of
/// panicking when it runs out.
struct Reader<'a> {
    remaining: &'a [u8],
}

impl<'a> Reader<'a> {
    fn take(&mut self, count: usize) -> Option<&'a [u8]> {
        if self.remaining.len() < count {
            return None;
        }
        let (taken, rest) = self.remaining.split_at(count);
        self.remaining = rest;
        Some(taken)
    }

    fn array<const N: usize>(&mut self) -> Option<[u8; N]> {
        self.take(N)?.try_into().ok()
    }

    fn u8(&mut self) -> Option<u8> {
        self.array::<1>().map(|[byte]| byte)
    }

    fn u16(&mut self) -> Option<u16> {
        self.array().map(u16::from_be_bytes)
    }

    fn u64(&mut self) -> Option<u64> {
        self.array().map(u64::from_be_bytes)
    }
}
