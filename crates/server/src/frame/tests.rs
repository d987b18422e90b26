use bytes::{BufMut, Bytes, BytesMut};
use proptest::prelude::*;

use super::*;

const FRAME_BYTES_MAX_TEST: u32 = 4096;

fn encode(frame: &Frame) -> BytesMut {
    let mut buffer = BytesMut::new();
    Encoder::new(FRAME_BYTES_MAX_TEST).encode(frame, &mut buffer).unwrap();
    buffer
}

/// Decodes everything in `input` as a stream that then ends, the way the
/// codec drives the decoder.
fn decode_stream(input: &[u8], frame_bytes_max: u32) -> Result<Vec<Frame>, FrameError> {
    let mut decoder = Decoder::new(frame_bytes_max);
    let mut buffer = BytesMut::from(input);
    let mut frames = Vec::new();
    while let Some(frame) = decoder.decode(&mut buffer)? {
        frames.push(frame);
    }
    while let Some(frame) = decoder.decode_eof(&mut buffer)? {
        frames.push(frame);
    }
    Ok(frames)
}

fn sample_handshake() -> Handshake {
    Handshake {
        protocol_version: HANDSHAKE_PROTOCOL_VERSION,
        cluster_id: 0xc1,
        sender_member_id: 0xa,
        receiver_member_id: 0xb,
        sender_name: "member-a".to_owned(),
    }
}

#[test]
fn message_round_trips() {
    let frame = Frame::message(Bytes::from_static(b"accept 7"));
    let mut buffer = encode(&frame);
    assert_eq!(buffer.len(), HEADER_BYTES + 8);
    assert_eq!(&buffer[..4], b"SYNP");
    assert_eq!(buffer[4], FRAME_VERSION);
    assert_eq!(buffer[5], 0);
    assert_eq!(&buffer[6..10], &8u32.to_be_bytes());

    let mut decoder = Decoder::new(FRAME_BYTES_MAX_TEST);
    assert_eq!(decoder.decode(&mut buffer).unwrap(), Some(frame));
    assert!(buffer.is_empty());
    assert_eq!(decoder.decode(&mut buffer).unwrap(), None);
    assert_eq!(decoder.decode_eof(&mut buffer).unwrap(), None);
}

#[test]
fn empty_payload_round_trips() {
    let frame = Frame::message(Bytes::new());
    assert_eq!(decode_stream(&encode(&frame), 64).unwrap(), vec![frame]);
}

#[test]
fn handshake_round_trips_through_a_frame() {
    let handshake = sample_handshake();
    let frame = handshake.to_frame().unwrap();
    assert_eq!(frame.kind, FrameKind::Handshake);
    let buffer = encode(&frame);
    assert_eq!(buffer[5], 0b1);
    let frames = decode_stream(&buffer, FRAME_BYTES_MAX_TEST).unwrap();
    assert_eq!(frames.len(), 1);
    assert_eq!(Handshake::from_frame(&frames[0]).unwrap(), handshake);
}

#[test]
fn frames_arrive_one_byte_at_a_time() {
    let frames = vec![
        Frame::message(Bytes::from_static(b"first")),
        sample_handshake().to_frame().unwrap(),
        Frame::message(Bytes::new()),
        Frame::message(Bytes::from(vec![0xff; 300])),
    ];
    let mut wire = BytesMut::new();
    for frame in &frames {
        wire.extend_from_slice(&encode(frame));
    }

    let mut decoder = Decoder::new(FRAME_BYTES_MAX_TEST);
    let mut buffer = BytesMut::new();
    let mut decoded = Vec::new();
    for &byte in wire.iter() {
        buffer.put_u8(byte);
        while let Some(frame) = decoder.decode(&mut buffer).unwrap() {
            decoded.push(frame);
        }
    }
    assert_eq!(decoded, frames);
    assert!(buffer.is_empty());
}

#[test]
fn bad_magic_is_rejected_from_the_first_four_bytes() {
    let mut buffer = BytesMut::from(&b"GET / HTTP/1.1\r\n"[..]);
    let error = Decoder::new(FRAME_BYTES_MAX_TEST).decode(&mut buffer).unwrap_err();
    assert!(matches!(error, FrameError::BadMagic { found } if &found == b"GET "));
    assert!(error.to_string().contains("not speaking the synod peer protocol"));

    let mut short = BytesMut::from(&b"GET"[..]);
    assert!(Decoder::new(FRAME_BYTES_MAX_TEST).decode(&mut short).unwrap().is_none());
}

#[test]
fn unsupported_version_is_rejected_before_the_rest_arrives() {
    let mut buffer = BytesMut::from(&b"SYNP\x02"[..]);
    let error = Decoder::new(FRAME_BYTES_MAX_TEST).decode(&mut buffer).unwrap_err();
    assert!(matches!(error, FrameError::UnsupportedVersion { found: 2 }));
    assert_eq!(
        error.to_string(),
        "unsupported frame version 2, this member reads version 1"
    );
}

#[test]
fn unknown_flags_are_rejected() {
    let mut buffer = encode(&Frame::message(Bytes::from_static(b"x")));
    buffer[5] = 0b1000_0000;
    let error = Decoder::new(FRAME_BYTES_MAX_TEST).decode(&mut buffer).unwrap_err();
    assert!(matches!(error, FrameError::UnknownFlags { flags: 0x80 }));
}

#[test]
fn oversize_length_is_rejected_before_reserving() {
    let mut buffer = BytesMut::with_capacity(16);
    buffer.put_slice(&MAGIC);
    buffer.put_u8(FRAME_VERSION);
    buffer.put_u8(0);
    buffer.put_u32(u32::MAX);
    let capacity_before = buffer.capacity();

    let error = Decoder::new(FRAME_BYTES_MAX_TEST).decode(&mut buffer).unwrap_err();
    assert!(matches!(
        error,
        FrameError::Oversize {
            frame_bytes,
            frame_bytes_max: FRAME_BYTES_MAX_TEST,
        } if frame_bytes == u64::from(u32::MAX) + HEADER_BYTES as u64
    ));
    assert_eq!(buffer.capacity(), capacity_before);
}

#[test]
fn frame_exactly_at_the_bound_is_accepted_and_one_byte_more_is_not() {
    let frame_bytes_max = 64;
    let payload_bytes_max = frame_bytes_max as usize - HEADER_BYTES;
    let encoder = Encoder::new(frame_bytes_max);

    let fits = Frame::message(Bytes::from(vec![7; payload_bytes_max]));
    let mut buffer = BytesMut::new();
    encoder.encode(&fits, &mut buffer).unwrap();
    assert_eq!(buffer.len(), frame_bytes_max as usize);
    assert_eq!(decode_stream(&buffer, frame_bytes_max).unwrap(), vec![fits]);

    let too_big = Frame::message(Bytes::from(vec![7; payload_bytes_max + 1]));
    let mut untouched = BytesMut::new();
    let error = encoder.encode(&too_big, &mut untouched).unwrap_err();
    assert!(matches!(
        error,
        FrameError::Oversize {
            frame_bytes: 65,
            frame_bytes_max: 64
        }
    ));
    assert!(untouched.is_empty());

    // A peer with a larger bound sends it anyway.
    let mut buffer = BytesMut::new();
    Encoder::new(65).encode(&too_big, &mut buffer).unwrap();
    assert!(matches!(
        decode_stream(&buffer, frame_bytes_max),
        Err(FrameError::Oversize { frame_bytes: 65, .. })
    ));
}

#[test]
fn corrupted_payload_fails_the_checksum() {
    let mut buffer = encode(&Frame::message(Bytes::from_static(b"promise")));
    let last = buffer.len() - 1;
    buffer[last] ^= 0x01;
    let error = Decoder::new(FRAME_BYTES_MAX_TEST).decode(&mut buffer).unwrap_err();
    assert!(matches!(error, FrameError::ChecksumMismatch { expected, actual } if expected != actual));
}

#[test]
fn flipped_kind_fails_the_checksum() {
    let mut buffer = encode(&Frame::message(Bytes::from_static(b"promise")));
    buffer[5] = FLAG_HANDSHAKE;
    let error = Decoder::new(FRAME_BYTES_MAX_TEST).decode(&mut buffer).unwrap_err();
    assert!(matches!(error, FrameError::ChecksumMismatch { .. }));
}

#[test]
fn stream_ending_inside_a_frame_is_truncated() {
    let whole = encode(&Frame::message(Bytes::from_static(b"chosen")));
    for cut in 1..whole.len() {
        let mut decoder = Decoder::new(FRAME_BYTES_MAX_TEST);
        let mut buffer = BytesMut::from(&whole[..cut]);
        assert_eq!(decoder.decode(&mut buffer).unwrap(), None, "cut at {cut}");
        let error = decoder.decode_eof(&mut buffer).unwrap_err();
        assert!(
            matches!(error, FrameError::Truncated { buffered_bytes } if buffered_bytes == cut),
            "cut at {cut}: {error}"
        );
    }
}

#[test]
fn partial_frame_reserves_room_for_the_rest_only() {
    let whole = encode(&Frame::message(Bytes::from(vec![1; 1000])));
    let mut buffer = BytesMut::from(&whole[..HEADER_BYTES]);
    assert_eq!(Decoder::new(FRAME_BYTES_MAX_TEST).decode(&mut buffer).unwrap(), None);
    assert!(buffer.capacity() >= whole.len());
    assert!(buffer.capacity() <= 2 * FRAME_BYTES_MAX_TEST as usize);
}

#[test]
#[should_panic(expected = "smaller than the 14-byte header")]
fn bound_below_a_header_is_a_configuration_error() {
    let _ = Decoder::new(13);
}

fn local() -> LocalMember {
    LocalMember {
        cluster_id: 0xc1,
        member_id: 0xb,
    }
}

#[test]
fn handshake_from_a_known_member_is_accepted() {
    sample_handshake().validate(local(), &[0xa, 0xb, 0xc]).unwrap();
    // The local member need not be in the list.
    sample_handshake().validate(local(), &[0xa]).unwrap();
}

#[test]
fn handshake_from_another_cluster_names_both_clusters() {
    let handshake = Handshake {
        cluster_id: 0xc2,
        ..sample_handshake()
    };
    let error = handshake.validate(local(), &[0xa, 0xb]).unwrap_err();
    assert_eq!(
        error,
        HandshakeError::ClusterMismatch {
            peer_cluster_id: 0xc2,
            peer_member_id: 0xa,
            local_cluster_id: 0xc1,
            local_member_id: 0xb,
        }
    );
    assert_eq!(
        error.to_string(),
        "peer member a belongs to cluster c2, but member b belongs to cluster c1"
    );
}

#[test]
fn handshake_from_an_unknown_member_names_it_and_the_local_member() {
    let handshake = Handshake {
        sender_member_id: 0xdead,
        sender_name: "stranger".to_owned(),
        ..sample_handshake()
    };
    let error = handshake.validate(local(), &[0xa, 0xb]).unwrap_err();
    assert_eq!(
        error.to_string(),
        "peer member dead (\"stranger\") is not a member of cluster c1 as known to member b"
    );
}

#[test]
fn handshake_for_another_receiver_is_refused() {
    let handshake = Handshake {
        receiver_member_id: 0xc,
        ..sample_handshake()
    };
    let error = handshake.validate(local(), &[0xa, 0xb, 0xc]).unwrap_err();
    assert_eq!(
        error.to_string(),
        "peer member a expected to reach member c, but reached member b"
    );
}

#[test]
fn handshake_from_itself_is_refused() {
    let handshake = Handshake {
        sender_member_id: 0xb,
        ..sample_handshake()
    };
    assert_eq!(
        handshake.validate(local(), &[0xa, 0xb]).unwrap_err(),
        HandshakeError::SelfConnection { member_id: 0xb }
    );
}

#[test]
fn handshake_with_another_protocol_version_is_refused() {
    let handshake = Handshake {
        protocol_version: 2,
        ..sample_handshake()
    };
    let expected = HandshakeError::UnsupportedProtocolVersion { found: 2 };
    assert_eq!(handshake.validate(local(), &[0xa]).unwrap_err(), expected);
    // Decoding stops at the version: a later version may change the layout.
    let payload = handshake.encode().unwrap();
    assert_eq!(Handshake::decode(&payload[..2]).unwrap_err(), expected);
}

#[test]
fn message_frame_where_a_handshake_belongs_is_refused() {
    let frame = Frame::message(sample_handshake().encode().unwrap());
    assert_eq!(
        Handshake::from_frame(&frame).unwrap_err(),
        HandshakeError::NotAHandshake {
            kind: FrameKind::Message
        }
    );
}

#[test]
fn malformed_handshakes_are_refused() {
    let payload = sample_handshake().encode().unwrap();
    for cut in 0..payload.len() {
        assert!(
            matches!(
                Handshake::decode(&payload[..cut]),
                Err(HandshakeError::Malformed { .. })
            ),
            "cut at {cut}"
        );
    }
    let mut trailing = payload.to_vec();
    trailing.push(0);
    assert!(matches!(
        Handshake::decode(&trailing),
        Err(HandshakeError::Malformed {
            reason: "bytes follow the name",
            ..
        })
    ));
    let mut not_utf8 = payload.to_vec();
    let last = not_utf8.len() - 1;
    not_utf8[last] = 0xff;
    assert_eq!(Handshake::decode(&not_utf8).unwrap_err(), HandshakeError::NameNotUtf8);
}

#[test]
fn overlong_name_is_refused_when_encoding() {
    let handshake = Handshake {
        sender_name: "n".repeat(NAME_BYTES_MAX + 1),
        ..sample_handshake()
    };
    assert_eq!(
        handshake.encode().unwrap_err(),
        HandshakeError::NameTooLong { name_bytes: 256 }
    );
    let longest = Handshake {
        sender_name: "n".repeat(NAME_BYTES_MAX),
        ..sample_handshake()
    };
    let payload = longest.encode().unwrap();
    assert_eq!(Handshake::decode(&payload).unwrap(), longest);
}

fn arbitrary_frame() -> impl Strategy<Value = Frame> {
    (any::<bool>(), proptest::collection::vec(any::<u8>(), 0..512)).prop_map(|(handshake, payload)| Frame {
        kind: if handshake {
            FrameKind::Handshake
        } else {
            FrameKind::Message
        },
        payload: Bytes::from(payload),
    })
}

proptest! {
    #[test]
    fn any_frames_round_trip_in_any_chunking(
        frames in proptest::collection::vec(arbitrary_frame(), 0..8),
        chunk_bytes in 1usize..64,
    ) {
        let mut wire = BytesMut::new();
        let encoder = Encoder::new(FRAME_BYTES_MAX_TEST);
        for frame in &frames {
            encoder.encode(frame, &mut wire).unwrap();
        }
        let mut decoder = Decoder::new(FRAME_BYTES_MAX_TEST);
        let mut buffer = BytesMut::new();
        let mut decoded = Vec::new();
        for chunk in wire.chunks(chunk_bytes) {
            buffer.extend_from_slice(chunk);
            while let Some(frame) = decoder.decode(&mut buffer).unwrap() {
                decoded.push(frame);
            }
        }
        prop_assert_eq!(decoder.decode_eof(&mut buffer).unwrap(), None);
        prop_assert_eq!(decoded, frames);
    }

    #[test]
    fn random_bytes_never_panic_or_overallocate(
        input in proptest::collection::vec(any::<u8>(), 0..2048),
        frame_bytes_max in (HEADER_BYTES as u32)..1024,
        start_with_magic in any::<bool>(),
    ) {
        let mut input = input;
        if start_with_magic && input.len() >= 6 {
            // Reach the length and checksum checks, not just the magic check.
            input[..4].copy_from_slice(&MAGIC);
            input[4] = FRAME_VERSION;
            input[5] &= FLAGS_KNOWN;
        }
        let mut decoder = Decoder::new(frame_bytes_max);
        let mut buffer = BytesMut::from(input.as_slice());
        let capacity_bound = 2 * (frame_bytes_max as usize).max(input.len());
        loop {
            let result = decoder.decode(&mut buffer);
            prop_assert!(buffer.capacity() <= capacity_bound);
            match result {
                Ok(Some(frame)) => prop_assert!(frame.frame_bytes() <= u64::from(frame_bytes_max)),
                Ok(None) | Err(_) => break,
            }
        }
        let _ = decoder.decode_eof(&mut buffer);
        prop_assert!(buffer.capacity() <= capacity_bound);
    }

    #[test]
    fn truncated_frames_are_never_accepted(
        frame in arbitrary_frame(),
        cut_fraction in 0.0f64..1.0,
    ) {
        let whole = encode(&frame);
        let cut = ((whole.len() as f64) * cut_fraction) as usize;
        prop_assume!(cut > 0 && cut < whole.len());
        prop_assert!(
            matches!(
                decode_stream(&whole[..cut], FRAME_BYTES_MAX_TEST),
                Err(FrameError::Truncated { buffered_bytes }) if buffered_bytes == cut
            ),
            "cut {} of {}", cut, whole.len()
        );
    }

    #[test]
    fn a_flipped_bit_is_always_detected(
        frame in arbitrary_frame(),
        bit_index in any::<prop::sample::Index>(),
    ) {
        let mut wire = encode(&frame);
        let bit = bit_index.index(wire.len() * 8);
        wire[bit / 8] ^= 1 << (bit % 8);
        let result = decode_stream(&wire, FRAME_BYTES_MAX_TEST);
        prop_assert!(result.is_err(), "bit {} flipped went unnoticed: {:?}", bit, result);
    }

    #[test]
    fn random_handshake_payloads_never_panic(
        payload in proptest::collection::vec(any::<u8>(), 0..400),
        start_with_version in any::<bool>(),
    ) {
        let mut payload = payload;
        if start_with_version && payload.len() >= 2 {
            payload[..2].copy_from_slice(&HANDSHAKE_PROTOCOL_VERSION.to_be_bytes());
        }
        if let Ok(handshake) = Handshake::decode(&payload) {
            let encoded = handshake.encode().unwrap();
            prop_assert_eq!(encoded.as_ref(), payload.as_slice());
        }
    }

    #[test]
    fn any_handshake_round_trips(
        cluster_id in any::<u64>(),
        sender_member_id in any::<u64>(),
        receiver_member_id in any::<u64>(),
        sender_name in "\\PC{0,60}",
    ) {
        prop_assume!(sender_name.len() <= NAME_BYTES_MAX);
        let handshake = Handshake {
            protocol_version: HANDSHAKE_PROTOCOL_VERSION,
            cluster_id,
            sender_member_id,
            receiver_member_id,
            sender_name,
        };
        let frame = handshake.to_frame().unwrap();
        let frames = decode_stream(&encode(&frame), FRAME_BYTES_MAX_TEST).unwrap();
        prop_assert_eq!(Handshake::from_frame(&frames[0]).unwrap(), handshake);
    }
}

mod over_tokio {
    use futures_util::{SinkExt, StreamExt};
    use tokio::io::AsyncWriteExt;
    use tokio_util::codec::Framed;

    use super::*;

    const FRAME_BYTES_MAX_STREAM: u32 = 2 * 1024 * 1024;

    #[tokio::test]
    async fn members_handshake_then_exchange_messages() {
        // A small pipe forces partial reads and writes.
        let (a_stream, b_stream) = tokio::io::duplex(256);
        let mut a = Framed::new(a_stream, FrameCodec::new(FRAME_BYTES_MAX_STREAM));
        let mut b = Framed::new(b_stream, FrameCodec::new(FRAME_BYTES_MAX_STREAM));
        let members = [0xa, 0xb];

        let a_hello = sample_handshake();
        let b_hello = Handshake {
            sender_member_id: 0xb,
            receiver_member_id: 0xa,
            sender_name: "member-b".to_owned(),
            ..sample_handshake()
        };
        let large = Bytes::from(vec![0x5a; 1024 * 1024]);

        let a_side = async {
            a.send(a_hello.to_frame().unwrap()).await.unwrap();
            let reply = a.next().await.unwrap().unwrap();
            Handshake::from_frame(&reply)
                .unwrap()
                .validate(
                    LocalMember {
                        cluster_id: 0xc1,
                        member_id: 0xa,
                    },
                    &members,
                )
                .unwrap();
            a.send(Frame::message(Bytes::from_static(b"prepare"))).await.unwrap();
            a.send(Frame::message(large.clone())).await.unwrap();
            a.next().await.unwrap().unwrap()
        };
        let b_side = async {
            let hello = b.next().await.unwrap().unwrap();
            Handshake::from_frame(&hello)
                .unwrap()
                .validate(local(), &members)
                .unwrap();
            b.send(b_hello.to_frame().unwrap()).await.unwrap();
            let first = b.next().await.unwrap().unwrap();
            let second = b.next().await.unwrap().unwrap();
            b.send(Frame::message(Bytes::from_static(b"promise"))).await.unwrap();
            (first, second)
        };
        let (reply, (first, second)) = tokio::join!(a_side, b_side);
        assert_eq!(first.payload.as_ref(), b"prepare");
        assert_eq!(second.payload, large);
        assert_eq!(reply.payload.as_ref(), b"promise");
    }

    #[tokio::test]
    async fn oversize_frame_is_refused_by_the_sender() {
        let (a_stream, _b_stream) = tokio::io::duplex(256);
        let mut a = Framed::new(a_stream, FrameCodec::new(64));
        let error = a.send(Frame::message(Bytes::from(vec![0; 64]))).await.unwrap_err();
        assert!(matches!(error, FrameError::Oversize { .. }));
    }

    #[tokio::test]
    async fn peer_closing_mid_frame_reports_truncation() {
        let (mut a_stream, b_stream) = tokio::io::duplex(256);
        let mut b = Framed::new(b_stream, FrameCodec::new(FRAME_BYTES_MAX_STREAM));
        let whole = encode(&Frame::message(Bytes::from_static(b"accepted")));
        a_stream.write_all(&whole[..10]).await.unwrap();
        drop(a_stream);
        let error = b.next().await.unwrap().unwrap_err();
        assert!(matches!(error, FrameError::Truncated { buffered_bytes: 10 }));
    }

    #[tokio::test]
    async fn stranger_speaking_http_is_refused() {
        let (mut a_stream, b_stream) = tokio::io::duplex(256);
        let mut b = Framed::new(b_stream, FrameCodec::new(FRAME_BYTES_MAX_STREAM));
        a_stream.write_all(b"GET /health HTTP/1.1\r\n\r\n").await.unwrap();
        let error = b.next().await.unwrap().unwrap_err();
        assert!(matches!(error, FrameError::BadMagic { .. }));
    }
}
