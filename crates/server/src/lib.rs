//! The synod server process: the peer transport between members and, later,
//! the etcd-compatible client API.
//!
//! The consensus core (`synod-paxos`) does no I/O; this crate owns the sockets
//! and turns bytes into the core's inputs and the core's outputs into bytes.
//!
//! # Layout
//!
//! - [`frame`]: the peer wire format. Bytes become [`frame::Frame`]s (magic,
//!   version, flags, length, CRC32C, opaque payload) with a pure incremental
//!   [`frame::Decoder`]; the first frame each way is a [`frame::Handshake`]
//!   that proves both ends belong to the same cluster. [`frame::FrameCodec`]
//!   adapts the decoder to `tokio_util::codec::Framed` for TCP streams.
//!
//! **The frame layer never allocates more than `frame_bytes_max` for one
//! frame, whatever the peer sends, and never panics on any input.**

#![deny(missing_docs)]

pub mod frame;
