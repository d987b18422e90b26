//! Adapts the pure [`Decoder`] and [`Encoder`] to `tokio_util::codec`, so a
//! TCP stream becomes a `Stream` of frames and a `Sink` for frames via
//! `tokio_util::codec::Framed`.

use bytes::BytesMut;

use super::{Decoder, Encoder, Frame, FrameError};

/// A `tokio_util` codec for peer frames with one `frame_bytes_max` for both
/// directions.
#[derive(Clone, Copy, Debug)]
pub struct FrameCodec {
    decoder: Decoder,
    encoder: Encoder,
}

impl FrameCodec {
    /// A codec that reads and writes frames of at most `frame_bytes_max`
    /// bytes, header included. Panics if the bound cannot hold a header.
    pub fn new(frame_bytes_max: u32) -> Self {
        FrameCodec {
            decoder: Decoder::new(frame_bytes_max),
            encoder: Encoder::new(frame_bytes_max),
        }
    }
}

impl tokio_util::codec::Decoder for FrameCodec {
    type Item = Frame;
    type Error = FrameError;

    fn decode(&mut self, buffer: &mut BytesMut) -> Result<Option<Frame>, FrameError> {
        self.decoder.decode(buffer)
    }

    /// Reports a partial frame at end of stream as [`FrameError::Truncated`]
    /// rather than a generic I/O error.
    fn decode_eof(&mut self, buffer: &mut BytesMut) -> Result<Option<Frame>, FrameError> {
        self.decoder.decode_eof(buffer)
    }
}

impl tokio_util::codec::Encoder<Frame> for FrameCodec {
    type Error = FrameError;

    fn encode(&mut self, frame: Frame, buffer: &mut BytesMut) -> Result<(), FrameError> {
        self.encoder.encode(&frame, buffer)
    }
}
