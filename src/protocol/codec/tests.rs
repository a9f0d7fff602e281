//! Unit tests for the decoder, with literal bytes, one rule each (RFC 6455 sections 5.1-5.5, 8.1).

use super::*;
use crate::protocol::close::CloseCode;
use crate::protocol::frame::{write_frame, write_header, write_masked_frame};

const MASK: [u8; 4] = [0x37, 0xfa, 0x21, 0x3d];
const LIMITS: DecodeLimits = DecodeLimits { max_frame_size: 1 << 20, max_message_size: 4 << 20 };

fn server() -> Decoder {
    Decoder::new(Role::Server, LIMITS)
}

/// A masked (client-to-server) frame.
fn masked(fin: bool, opcode: OpCode, payload: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    write_masked_frame(&mut out, fin, opcode, payload, MASK);
    out
}

/// Decodes `bytes` fed at once, until `Ok(None)` or an error.
fn decode_all(decoder: &mut Decoder, bytes: &[u8]) -> Result<Vec<Incoming>, ProtocolError> {
    let mut input = BytesMut::from(bytes);
    let mut out = Vec::new();
    while let Some(incoming) = decoder.decode(&mut input)? {
        out.push(incoming);
    }
    Ok(out)
}

/// Decodes `bytes` fed one byte at a time.
fn decode_bytewise(decoder: &mut Decoder, bytes: &[u8]) -> Result<Vec<Incoming>, ProtocolError> {
    let mut input = BytesMut::new();
    let mut out = Vec::new();
    for &byte in bytes {
        input.extend_from_slice(&[byte]);
        while let Some(incoming) = decoder.decode(&mut input)? {
            out.push(incoming);
        }
    }
    Ok(out)
}

fn text(s: &str) -> Incoming {
    Incoming::Text(Bytes::copy_from_slice(s.as_bytes()))
}

#[test]
fn decodes_masked_hello_from_rfc_section_5_7() {
    let bytes = [0x81, 0x85, 0x37, 0xfa, 0x21, 0x3d, 0x7f, 0x9f, 0x4d, 0x51, 0x58];
    assert_eq!(decode_all(&mut server(), &bytes), Ok(vec![text("Hello")]));
    assert_eq!(decode_bytewise(&mut server(), &bytes), Ok(vec![text("Hello")]));
}

#[test]
fn client_decodes_unmasked_fragmented_hello_and_ping_from_rfc_section_5_7() {
    let bytes = [
        0x01, 0x03, 0x48, 0x65, 0x6c, // "Hel"
        0x89, 0x05, 0x48, 0x65, 0x6c, 0x6c, 0x6f, // ping "Hello"
        0x80, 0x02, 0x6c, 0x6f, // "lo"
    ];
    let mut client = Decoder::new(Role::Client, LIMITS);
    let expected = vec![Incoming::Ping(Bytes::from_static(b"Hello")), text("Hello")];
    assert_eq!(decode_all(&mut client, &bytes), Ok(expected));
    assert!(client.is_idle());
}

#[test]
fn decodes_16_bit_and_64_bit_lengths() {
    for len in [126, 256, 65535, 65536, 70000] {
        let payload: Vec<u8> = (0..len).map(|i| i as u8).collect();
        let bytes = masked(true, OpCode::Binary, &payload);
        let got = decode_all(&mut server(), &bytes);
        assert_eq!(got, Ok(vec![Incoming::Binary(payload.into())]), "len {len}");
    }
}

#[test]
fn accepts_empty_messages() {
    let mut bytes = masked(true, OpCode::Text, b"");
    bytes.extend(masked(false, OpCode::Binary, b""));
    bytes.extend(masked(true, OpCode::Continuation, b""));
    let expected = vec![text(""), Incoming::Binary(Bytes::new())];
    assert_eq!(decode_all(&mut server(), &bytes), Ok(expected));
}

#[test]
fn rejects_unmasked_client_frame() {
    // Section 5.1: "The server MUST close the connection upon receiving a frame that is not masked."
    let mut bytes = Vec::new();
    write_frame(&mut bytes, OpCode::Text, b"Hello");
    assert_eq!(decode_all(&mut server(), &bytes), Err(ProtocolError::UnmaskedClientFrame));
}

#[test]
fn rejects_masked_server_frame() {
    // Section 5.1: "A client MUST close a connection if it detects a masked frame."
    let mut client = Decoder::new(Role::Client, LIMITS);
    let bytes = masked(true, OpCode::Text, b"Hello");
    assert_eq!(decode_all(&mut client, &bytes), Err(ProtocolError::MaskedServerFrame));
}

#[test]
fn rejects_reserved_bits() {
    // Section 5.2: RSV1-3 "MUST be 0 unless an extension is negotiated"; no extension is.
    for (byte, rsv) in [(0xC1u8, 0b100u8), (0xA1, 0b010), (0x91, 0b001), (0xF1, 0b111)] {
        assert_eq!(decode_all(&mut server(), &[byte]), Err(ProtocolError::ReservedBits(rsv)));
    }
}

#[test]
fn rejects_reserved_opcodes() {
    // Section 5.2: "If an unknown opcode is received, the receiving endpoint MUST _Fail the WebSocket
    // Connection_." Checked on the first byte alone.
    for opcode in [0x3u8, 0x7, 0xB, 0xF] {
        assert_eq!(decode_all(&mut server(), &[0x80 | opcode]), Err(ProtocolError::UnknownOpcode(opcode)));
    }
}

#[test]
fn rejects_fragmented_ping() {
    // Section 5.5: "Control frames themselves MUST NOT be fragmented."
    let bytes = masked(false, OpCode::Ping, b"x");
    assert_eq!(decode_all(&mut server(), &bytes), Err(ProtocolError::FragmentedControl));
}

#[test]
fn rejects_control_payload_over_125() {
    // Section 5.5: "All control frames MUST have a payload length of 125 bytes or less".
    let bytes = masked(true, OpCode::Ping, &[0; 126]);
    assert_eq!(decode_all(&mut server(), &bytes), Err(ProtocolError::ControlTooLong(126)));
    let bytes = masked(true, OpCode::Ping, &[0; 125]);
    assert_eq!(decode_all(&mut server(), &bytes), Ok(vec![Incoming::Ping(vec![0; 125].into())]));
}

#[test]
fn rejects_64_bit_length_with_msb_set() {
    // Section 5.2: "the most significant bit MUST be 0".
    let bytes = [0x82, 0xFF, 0x80, 0, 0, 0, 0, 0, 0, 1];
    assert_eq!(decode_all(&mut server(), &bytes), Err(ProtocolError::InvalidLength));
}

#[test]
fn rejects_continuation_without_start() {
    let bytes = masked(true, OpCode::Continuation, b"orphan");
    assert_eq!(decode_all(&mut server(), &bytes), Err(ProtocolError::UnexpectedContinuation));
}

#[test]
fn rejects_new_message_during_fragmentation() {
    // Section 5.4: "the fragments of one message MUST NOT be interleaved between the fragments of another
    // message unless an extension has been negotiated".
    let mut bytes = masked(false, OpCode::Text, b"first");
    bytes.extend(masked(true, OpCode::Binary, b"second"));
    assert_eq!(decode_all(&mut server(), &bytes), Err(ProtocolError::ExpectedContinuation));
}

#[test]
fn rejects_frame_over_limit_with_1009() {
    let limits = DecodeLimits { max_frame_size: 100, max_message_size: 1000 };
    // Only the header: the limit is checked before any payload arrives.
    let mut bytes = Vec::new();
    write_header(&mut bytes, true, OpCode::Binary, 101, Some(MASK));
    let err = decode_all(&mut Decoder::new(Role::Server, limits), &bytes).unwrap_err();
    assert_eq!(err, ProtocolError::FrameTooLarge { size: 101, max: 100 });
    assert_eq!(err.close_code(), CloseCode::TOO_BIG);
}

#[test]
fn rejects_message_over_limit_across_fragments() {
    let limits = DecodeLimits { max_frame_size: 100, max_message_size: 150 };
    let mut decoder = Decoder::new(Role::Server, limits);
    let mut bytes = masked(false, OpCode::Binary, &[1; 100]);
    write_header(&mut bytes, true, OpCode::Continuation, 51, Some(MASK));
    let err = decode_all(&mut decoder, &bytes).unwrap_err();
    assert_eq!(err, ProtocolError::MessageTooLarge { size: 151, max: 150 });
    assert_eq!(err.close_code(), CloseCode::TOO_BIG);
}

#[test]
fn message_at_exact_limit_is_accepted() {
    let limits = DecodeLimits { max_frame_size: 100, max_message_size: 150 };
    let mut bytes = masked(false, OpCode::Binary, &[1; 100]);
    bytes.extend(masked(true, OpCode::Continuation, &[2; 50]));
    let got = decode_all(&mut Decoder::new(Role::Server, limits), &bytes).expect("within limits");
    assert_eq!(got.len(), 1);
}

#[test]
fn lying_length_does_not_allocate_announced_size() {
    let limits = DecodeLimits { max_frame_size: u64::MAX >> 1, max_message_size: u64::MAX >> 1 };
    let mut decoder = Decoder::new(Role::Server, limits);
    let mut bytes = Vec::new();
    write_header(&mut bytes, true, OpCode::Binary, 1 << 40, Some(MASK));
    bytes.extend_from_slice(&[0; 10]);
    assert_eq!(decode_all(&mut decoder, &bytes), Ok(vec![]));
    assert!(!decoder.is_idle());
    assert!(decoder.buffer.capacity() < 1 << 20);
}

#[test]
fn accepts_ping_between_fragments() {
    // Section 5.5: "Control frames MAY be injected in the middle of a fragmented message."
    let mut bytes = masked(false, OpCode::Text, b"Hel");
    bytes.extend(masked(true, OpCode::Ping, b"p"));
    bytes.extend(masked(false, OpCode::Continuation, b"l"));
    bytes.extend(masked(true, OpCode::Pong, b""));
    bytes.extend(masked(true, OpCode::Continuation, b"o"));
    let expected = vec![Incoming::Ping(Bytes::from_static(b"p")), Incoming::Pong(Bytes::new()), text("Hello")];
    assert_eq!(decode_all(&mut server(), &bytes), Ok(expected.clone()));
    assert_eq!(decode_bytewise(&mut server(), &bytes), Ok(expected));
}

#[test]
fn fails_fast_on_invalid_utf8_in_first_fragment() {
    // Section 8.1: a non-UTF-8 text payload MUST fail the connection; Autobahn 6.x expects it to fail on the
    // first fragment, before the message is complete.
    let bytes = masked(false, OpCode::Text, b"ok\xED\xA0\x80");
    assert_eq!(decode_all(&mut server(), &bytes), Err(ProtocolError::InvalidUtf8));
}

#[test]
fn fails_fast_on_invalid_utf8_in_partial_single_frame() {
    let bytes = masked(true, OpCode::Text, b"\xF4\x90\x80\x80 and more to come");
    assert_eq!(decode_all(&mut server(), &bytes[..8]), Err(ProtocolError::InvalidUtf8));
}

#[test]
fn rejects_text_ending_mid_code_point() {
    let mut bytes = masked(false, OpCode::Text, b"\xE2\x82");
    bytes.extend(masked(true, OpCode::Continuation, b""));
    assert_eq!(decode_all(&mut server(), &bytes), Err(ProtocolError::InvalidUtf8));
}

#[test]
fn accepts_code_point_split_across_fragments() {
    let mut bytes = masked(false, OpCode::Text, b"\xE2");
    bytes.extend(masked(false, OpCode::Continuation, b"\x82"));
    bytes.extend(masked(true, OpCode::Continuation, b"\xAC"));
    assert_eq!(decode_all(&mut server(), &bytes), Ok(vec![text("\u{20AC}")]));
}

#[test]
fn close_with_one_byte_payload_is_protocol_error() {
    let bytes = masked(true, OpCode::Close, &[0x03]);
    let err = decode_all(&mut server(), &bytes).unwrap_err();
    assert_eq!(err, ProtocolError::InvalidClosePayload);
    assert_eq!(err.close_code(), CloseCode::PROTOCOL_ERROR);
}

#[test]
fn invalid_close_code_rejected() {
    let bytes = masked(true, OpCode::Close, &[0x03, 0xEE]); // 1006
    assert_eq!(decode_all(&mut server(), &bytes), Err(ProtocolError::InvalidCloseCode(1006)));
}

#[test]
fn decodes_close_frames() {
    let mut bytes = masked(true, OpCode::Close, b"");
    bytes.extend(masked(true, OpCode::Close, b"\x03\xE8bye"));
    let expected = vec![
        Incoming::Close(None),
        Incoming::Close(Some(CloseFrame { code: CloseCode::NORMAL, reason: "bye".to_owned() })),
    ];
    assert_eq!(decode_all(&mut server(), &bytes), Ok(expected));
}

#[test]
fn partial_control_frame_stays_in_input() {
    let bytes = masked(true, OpCode::Ping, b"abcdef");
    let mut decoder = server();
    let mut input = BytesMut::from(&bytes[..bytes.len() - 1]);
    assert_eq!(decoder.decode(&mut input), Ok(None));
    assert_eq!(input.len(), bytes.len() - 1);
    input.extend_from_slice(&bytes[bytes.len() - 1..]);
    assert_eq!(decoder.decode(&mut input), Ok(Some(Incoming::Ping(Bytes::from_static(b"abcdef")))));
    assert!(input.is_empty());
}

#[test]
fn partial_data_payload_is_consumed_from_input() {
    let bytes = masked(true, OpCode::Binary, &[7; 1000]);
    let mut decoder = server();
    let mut input = BytesMut::from(&bytes[..500]);
    assert_eq!(decoder.decode(&mut input), Ok(None));
    assert!(input.is_empty());
    assert!(!decoder.is_idle());
    input.extend_from_slice(&bytes[500..]);
    assert_eq!(decoder.decode(&mut input), Ok(Some(Incoming::Binary(vec![7; 1000].into()))));
    assert!(decoder.is_idle());
}

#[test]
fn idle_decoder_holds_no_buffer() {
    let mut bytes = masked(false, OpCode::Binary, &[1; 5000]);
    bytes.extend(masked(true, OpCode::Continuation, &[2; 5000]));
    let mut decoder = server();
    assert_eq!(decode_bytewise(&mut decoder, &bytes).map(|v| v.len()), Ok(1));
    assert!(decoder.is_idle());
    assert_eq!(decoder.buffer.capacity(), 0);
}

#[test]
fn single_frame_in_input_is_not_copied() {
    let bytes = masked(true, OpCode::Binary, &[3; 300]);
    let mut input = BytesMut::from(&bytes[..]);
    let start = input.as_ptr() as usize;
    let Ok(Some(Incoming::Binary(payload))) = server().decode(&mut input) else {
        panic!("expected a binary message");
    };
    assert_eq!(payload.as_ptr() as usize, start + header_len_for(300));
}

fn header_len_for(len: usize) -> usize {
    crate::protocol::frame::header_len(len, true)
}

#[test]
fn many_fragments_are_unbounded_in_count() {
    // Autobahn 9.3.1 sends 65536 fragments of one message; only sizes are limited.
    let mut bytes = masked(false, OpCode::Binary, b"a");
    for _ in 0..65534 {
        bytes.extend(masked(false, OpCode::Continuation, b"b"));
    }
    bytes.extend(masked(true, OpCode::Continuation, b"c"));
    let got = decode_all(&mut server(), &bytes).expect("valid");
    let [Incoming::Binary(payload)] = &got[..] else {
        panic!("expected one message");
    };
    assert_eq!(payload.len(), 65536);
}

#[test]
fn decoder_is_small() {
    // One per connection: keep it within two cache lines.
    assert!(std::mem::size_of::<Decoder>() <= 128, "{}", std::mem::size_of::<Decoder>());
}
