//! The peer wire format: length-prefixed, checksummed frames over TCP.
//!
//! Members exchange Paxos messages over plain TCP. A stream of bytes is cut
//! into frames here; what a payload means is decided elsewhere, so the payload
//! is opaque [`Bytes`]. The first frame in each direction is a [`Handshake`]
//! so that a member never feeds a message from another cluster, or from a
//! stranger, into its consensus state.
//!
//! # Format
//!
//! Every frame is a fixed [`HEADER_BYTES`]-byte header followed by the payload.
//! Integers are big-endian.
//!
//! | offset | bytes | field    | meaning                                                        |
//! |-------:|------:|----------|----------------------------------------------------------------|
//! | 0      | 4     | magic    | [`MAGIC`], `"SYNP"`: rejects anything that is not a synod peer   |
//! | 4      | 1     | version  | [`FRAME_VERSION`]: layout of the rest of the frame              |
//! | 5      | 1     | flags    | bit 0 set: a handshake frame; every other bit must be zero      |
//! | 6      | 4     | length   | payload bytes; header + payload never exceeds `frame_bytes_max` |
//! | 10     | 4     | checksum | CRC32C of bytes 4..10 (version, flags, length) then the payload  |
//! | 14     | length| payload  | opaque                                                          |
//!
//! The checksum covers version, flags and length as well as the payload, so a
//! flipped bit in the header is caught as surely as one in the payload.
//!
//! # Bounds and failure
//!
//! The [`Decoder`] checks each header field as soon as its bytes have arrived,
//! and rejects a length over `frame_bytes_max` before it reserves any room for
//! the payload: a hostile or confused peer can make it buffer at most one
//! frame of at most `frame_bytes_max` bytes. Every error is fatal to the
//! connection: the decoder does not resynchronise, the caller closes the
//! stream and the peer reconnects and handshakes again.

mod codec;
mod handshake;

pub use codec::FrameCodec;
pub use handshake::{Handshake, HandshakeError, LocalMember, HANDSHAKE_PROTOCOL_VERSION, NAME_BYTES_MAX};

use bytes::{Buf, BufMut, Bytes, BytesMut};

/// First four bytes of every frame.
pub const MAGIC: [u8; 4] = *b"SYNP";

/// The only frame layout this build reads and writes.
pub const FRAME_VERSION: u8 = 1;

/// Size of the fixed header in front of every payload.
pub const HEADER_BYTES: usize = 14;

/// A default for `frame_bytes_max`: room for a batch of several client
/// requests at etcd's 1.5 MiB request limit.
pub const FRAME_BYTES_MAX_DEFAULT: u32 = 8 * 1024 * 1024;

const MAGIC_END: usize = 4;
const VERSION_OFFSET: usize = 4;
const FLAGS_OFFSET: usize = 5;
const LENGTH_OFFSET: usize = 6;
const CHECKSUM_OFFSET: usize = 10;

/// Flag bit marking a handshake frame.
const FLAG_HANDSHAKE: u8 = 0b0000_0001;

/// Flag bits this version understands; any other bit set is an error rather
/// than silently ignored, because a newer peer that sets one expects it to
/// change how the frame is read.
const FLAGS_KNOWN: u8 = FLAG_HANDSHAKE;

/// What a frame carries, recorded in its flags.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum FrameKind {
    /// A consensus message, encoded by the layer above.
    Message,
    /// A [`Handshake`]: the first frame each way on a new connection.
    Handshake,
}

impl FrameKind {
    fn flags(self) -> u8 {
        match self {
            FrameKind::Message => 0,
            FrameKind::Handshake => FLAG_HANDSHAKE,
        }
    }

    fn from_flags(flags: u8) -> Result<Self, FrameError> {
        if flags & !FLAGS_KNOWN != 0 {
            return Err(FrameError::UnknownFlags { flags });
        }
        Ok(if flags & FLAG_HANDSHAKE != 0 {
            FrameKind::Handshake
        } else {
            FrameKind::Message
        })
    }
}

/// One unit of the peer stream.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Frame {
    /// Whether the payload is a handshake or a consensus message.
    pub kind: FrameKind,
    /// Opaque to this layer.
    pub payload: Bytes,
}

impl Frame {
    /// A frame carrying a consensus message.
    pub fn message(payload: Bytes) -> Self {
        Frame {
            kind: FrameKind::Message,
            payload,
        }
    }

    /// Bytes this frame occupies on the wire, header included.
    pub fn frame_bytes(&self) -> u64 {
        HEADER_BYTES as u64 + self.payload.len() as u64
    }
}

/// Why a byte stream is not a valid sequence of frames. All are fatal to the
/// connection.
#[derive(Debug, thiserror::Error)]
pub enum FrameError {
    /// The stream does not start like a synod peer frame: wrong port, another
    /// protocol, or lost framing.
    #[error("bad frame magic {found:02x?}, expected {MAGIC:02x?}: the peer is not speaking the synod peer protocol")]
    BadMagic {
        /// The four bytes found where the magic belongs.
        found: [u8; 4],
    },
    /// The peer runs a build with a frame layout this one cannot read.
    #[error("unsupported frame version {found}, this member reads version {FRAME_VERSION}")]
    UnsupportedVersion {
        /// The version byte received.
        found: u8,
    },
    /// Flag bits this version does not know are set.
    #[error("unknown frame flags {flags:#010b}, this member knows {FLAGS_KNOWN:#010b}")]
    UnknownFlags {
        /// The flags byte received.
        flags: u8,
    },
    /// A frame longer than the configured bound, refused before any room is
    /// reserved for it.
    #[error("frame of {frame_bytes} bytes exceeds frame_bytes_max {frame_bytes_max}")]
    Oversize {
        /// Header plus payload bytes the frame declares or holds.
        frame_bytes: u64,
        /// The configured bound.
        frame_bytes_max: u32,
    },
    /// The frame was damaged in transit or written by a broken peer.
    #[error("frame checksum mismatch: header says {expected:#010x}, contents hash to {actual:#010x}")]
    ChecksumMismatch {
        /// Checksum carried in the header.
        expected: u32,
        /// Checksum computed over what arrived.
        actual: u32,
    },
    /// The stream ended part way through a frame.
    #[error("peer stream ended {buffered_bytes} bytes into a frame")]
    Truncated {
        /// Bytes of the incomplete frame that had arrived.
        buffered_bytes: usize,
    },
    /// Reading or writing the underlying stream failed.
    #[error("peer stream I/O failed: {0}")]
    Io(#[from] std::io::Error),
}

/// CRC32C over version, flags and length (header bytes 4..10), then the payload.
fn checksum(header_covered: &[u8], payload: &[u8]) -> u32 {
    debug_assert_eq!(header_covered.len(), CHECKSUM_OFFSET - VERSION_OFFSET);
    crc32c::crc32c_append(crc32c::crc32c(header_covered), payload)
}

/// Checks `frame_bytes_max` once, where it is configured: a bound smaller than
/// a header could never admit a frame.
fn assert_frame_bytes_max(frame_bytes_max: u32) {
    assert!(
        frame_bytes_max as usize >= HEADER_BYTES,
        "frame_bytes_max {frame_bytes_max} is smaller than the {HEADER_BYTES}-byte header"
    );
}

/// Writes frames, refusing any that the peer's decoder would refuse.
#[derive(Clone, Copy, Debug)]
pub struct Encoder {
    frame_bytes_max: u32,
}

impl Encoder {
    /// An encoder that refuses frames longer than `frame_bytes_max` bytes,
    /// header included. Panics if the bound cannot hold a header.
    pub fn new(frame_bytes_max: u32) -> Self {
        assert_frame_bytes_max(frame_bytes_max);
        Encoder { frame_bytes_max }
    }

    /// The bound this encoder enforces.
    pub fn frame_bytes_max(&self) -> u32 {
        self.frame_bytes_max
    }

    /// Appends `frame` to `buffer`. On error `buffer` is unchanged.
    pub fn encode(&self, frame: &Frame, buffer: &mut BytesMut) -> Result<(), FrameError> {
        let frame_bytes = frame.frame_bytes();
        if frame_bytes > u64::from(self.frame_bytes_max) {
            return Err(FrameError::Oversize {
                frame_bytes,
                frame_bytes_max: self.frame_bytes_max,
            });
        }
        let length = u32::try_from(frame.payload.len()).expect("a payload within frame_bytes_max fits in u32");

        let mut covered = [0u8; CHECKSUM_OFFSET - VERSION_OFFSET];
        covered[0] = FRAME_VERSION;
        covered[1] = frame.kind.flags();
        covered[2..].copy_from_slice(&length.to_be_bytes());

        let start_bytes = buffer.len();
        buffer.reserve(HEADER_BYTES + frame.payload.len());
        buffer.put_slice(&MAGIC);
        buffer.put_slice(&covered);
        buffer.put_u32(checksum(&covered, &frame.payload));
        buffer.put_slice(&frame.payload);
        debug_assert_eq!(buffer.len() - start_bytes, HEADER_BYTES + frame.payload.len());
        Ok(())
    }
}

/// Cuts frames out of a byte buffer that fills up as bytes arrive.
///
/// Pure: it never touches a socket, so it is driven the same way by the tokio
/// codec, by tests and by a simulator.
#[derive(Clone, Copy, Debug)]
pub struct Decoder {
    frame_bytes_max: u32,
}

impl Decoder {
    /// A decoder that refuses frames longer than `frame_bytes_max` bytes,
    /// header included. Panics if the bound cannot hold a header.
    pub fn new(frame_bytes_max: u32) -> Self {
        assert_frame_bytes_max(frame_bytes_max);
        Decoder { frame_bytes_max }
    }

    /// The bound this decoder enforces.
    pub fn frame_bytes_max(&self) -> u32 {
        self.frame_bytes_max
    }

    /// Takes the next whole frame off the front of `buffer`.
    ///
    /// Returns `Ok(None)` when more bytes are needed; the bytes stay in
    /// `buffer`, and room for the rest of the frame is reserved once its
    /// length has passed the bound. Header fields are checked as soon as they
    /// have arrived, so garbage or an oversize length fails without waiting
    /// for the rest.
    pub fn decode(&mut self, buffer: &mut BytesMut) -> Result<Option<Frame>, FrameError> {
        let Some(header) = self.check_header(buffer)? else {
            return Ok(None);
        };
        let frame_bytes = HEADER_BYTES + header.payload_bytes;
        if buffer.len() < frame_bytes {
            buffer.reserve(frame_bytes - buffer.len());
            return Ok(None);
        }

        let mut frame_buffer = buffer.split_to(frame_bytes);
        let covered = &frame_buffer[VERSION_OFFSET..CHECKSUM_OFFSET];
        let actual = checksum(covered, &frame_buffer[HEADER_BYTES..]);
        if actual != header.checksum {
            return Err(FrameError::ChecksumMismatch {
                expected: header.checksum,
                actual,
            });
        }
        frame_buffer.advance(HEADER_BYTES);
        Ok(Some(Frame {
            kind: header.kind,
            payload: frame_buffer.freeze(),
        }))
    }

    /// Like [`Decoder::decode`], for when the stream has ended: leftover bytes
    /// that do not make a whole frame are [`FrameError::Truncated`].
    pub fn decode_eof(&mut self, buffer: &mut BytesMut) -> Result<Option<Frame>, FrameError> {
        match self.decode(buffer)? {
            Some(frame) => Ok(Some(frame)),
            None if buffer.is_empty() => Ok(None),
            None => Err(FrameError::Truncated {
                buffered_bytes: buffer.len(),
            }),
        }
    }

    /// Validates whatever part of the header has arrived; `None` until the
    /// whole header is there.
    fn check_header(&self, buffer: &[u8]) -> Result<Option<Header>, FrameError> {
        if buffer.len() < MAGIC_END {
            return Ok(None);
        }
        let mut found = [0u8; 4];
        found.copy_from_slice(&buffer[..MAGIC_END]);
        if found != MAGIC {
            return Err(FrameError::BadMagic { found });
        }

        let Some(&version) = buffer.get(VERSION_OFFSET) else {
            return Ok(None);
        };
        if version != FRAME_VERSION {
            return Err(FrameError::UnsupportedVersion { found: version });
        }

        let Some(&flags) = buffer.get(FLAGS_OFFSET) else {
            return Ok(None);
        };
        let kind = FrameKind::from_flags(flags)?;

        let Some(length_bytes) = buffer.get(LENGTH_OFFSET..CHECKSUM_OFFSET) else {
            return Ok(None);
        };
        let payload_bytes = read_u32(length_bytes);
        let frame_bytes = HEADER_BYTES as u64 + u64::from(payload_bytes);
        if frame_bytes > u64::from(self.frame_bytes_max) {
            return Err(FrameError::Oversize {
                frame_bytes,
                frame_bytes_max: self.frame_bytes_max,
            });
        }

        let Some(checksum_bytes) = buffer.get(CHECKSUM_OFFSET..HEADER_BYTES) else {
            return Ok(None);
        };
        Ok(Some(Header {
            kind,
            // Within frame_bytes_max, itself a u32, so it fits in usize.
            payload_bytes: payload_bytes as usize,
            checksum: read_u32(checksum_bytes),
        }))
    }
}

/// The fields of a header that passed every check that needs no payload.
struct Header {
    kind: FrameKind,
    payload_bytes: usize,
    checksum: u32,
}

fn read_u32(bytes: &[u8]) -> u32 {
    let mut array = [0u8; 4];
    array.copy_from_slice(bytes);
    u32::from_be_bytes(array)
}

#[cfg(test)]
mod tests;
