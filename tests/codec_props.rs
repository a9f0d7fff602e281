//! Property tests for the frame codec: encode/decode round trips, split invariance, masking, hostile input,
//! and a cross-check against tungstenite's frame encoder and parser.

use bytes::{Bytes, BytesMut};
use herald::protocol::codec::{DecodeLimits, Decoder, Incoming};
use herald::protocol::error::ProtocolError;
use herald::protocol::frame::{write_frame, write_masked_frame, OpCode};
use herald::protocol::mask::apply_mask;
use herald::protocol::Role;
use proptest::prelude::*;
use proptest::sample::Index;
use proptest::test_runner::FileFailurePersistence;

const LIMITS: DecodeLimits = DecodeLimits { max_frame_size: 1 << 20, max_message_size: 1 << 22 };

/// One data message as a client would send it: fragmented at `cuts`, with pings injected before fragments.
#[derive(Debug, Clone)]
struct Message {
    text: bool,
    payload: Vec<u8>,
    /// Fragment boundaries, as indices into `payload`.
    cuts: Vec<Index>,
    /// `pings[i]`, if any, goes just before fragment `i` (before the first one: between messages).
    pings: Vec<Option<Vec<u8>>>,
    mask: [u8; 4],
}

/// A payload of a length in `len`, cheap to generate (a seeded pattern rather than one strategy per byte).
fn large_payload(len: std::ops::Range<usize>) -> impl Strategy<Value = Vec<u8>> {
    (len, any::<u8>()).prop_map(|(len, seed)| (0..len).map(|i| (i as u8).wrapping_mul(seed | 1) ^ seed).collect())
}

/// Payloads around the 7-bit, 16-bit and 64-bit length encodings.
fn any_length_payload() -> impl Strategy<Value = Vec<u8>> {
    prop_oneof![prop::collection::vec(any::<u8>(), 0..130), large_payload(65_530..65_540), large_payload(0..70_000),]
}

/// Failing seeds are kept next to this file (integration tests have no `lib.rs` for proptest to find).
fn config(cases: u32) -> ProptestConfig {
    ProptestConfig {
        cases,
        failure_persistence: Some(Box::new(FileFailurePersistence::Direct("tests/codec_props.proptest-regressions"))),
        ..ProptestConfig::default()
    }
}

fn message() -> impl Strategy<Value = Message> {
    let payload = prop_oneof![
        4 => any::<String>().prop_map(|s| (true, s.into_bytes())),
        4 => prop::collection::vec(any::<u8>(), 0..600).prop_map(|b| (false, b)),
        // Now and then something past the 16-bit length encoding.
        1 => large_payload(65_530..65_600).prop_map(|b| (false, b)),
    ];
    let pings = prop::collection::vec(prop::option::weighted(0.3, prop::collection::vec(any::<u8>(), 0..=125)), 0..5);
    (payload, prop::collection::vec(any::<Index>(), 0..5), pings, any::<[u8; 4]>())
        .prop_map(|((text, payload), cuts, pings, mask)| Message { text, payload, cuts, pings, mask })
}

/// The wire bytes of `messages` (masked, client to server) and the events a decoder should yield for them.
fn encode(messages: &[Message]) -> (Vec<u8>, Vec<Incoming>) {
    let mut wire = Vec::new();
    let mut events = Vec::new();
    for m in messages {
        let mut cuts: Vec<usize> = m.cuts.iter().map(|i| i.index(m.payload.len() + 1)).collect();
        cuts.push(0);
        cuts.push(m.payload.len());
        cuts.sort_unstable();
        let fragments: Vec<&[u8]> = cuts.windows(2).map(|w| &m.payload[w[0]..w[1]]).collect();
        for (i, fragment) in fragments.iter().enumerate() {
            if let Some(Some(ping)) = m.pings.get(i) {
                write_masked_frame(&mut wire, true, OpCode::Ping, ping, m.mask);
                events.push(Incoming::Ping(Bytes::copy_from_slice(ping)));
            }
            let opcode = match (i, m.text) {
                (0, true) => OpCode::Text,
                (0, false) => OpCode::Binary,
                _ => OpCode::Continuation,
            };
            let fin = i + 1 == fragments.len();
            write_masked_frame(&mut wire, fin, opcode, fragment, m.mask);
        }
        let payload = Bytes::copy_from_slice(&m.payload);
        events.push(if m.text { Incoming::Text(payload) } else { Incoming::Binary(payload) });
    }
    (wire, events)
}

/// Feeds `wire` in chunks of the given sizes (cycled; the whole stream at once if empty). Returns the events up
/// to the first error, and that error.
fn feed(role: Role, limits: DecodeLimits, wire: &[u8], chunks: &[usize]) -> (Vec<Incoming>, Option<ProtocolError>) {
    let mut decoder = Decoder::new(role, limits);
    let mut input = BytesMut::new();
    let mut events = Vec::new();
    let mut rest = wire;
    let mut sizes = chunks.iter().copied().cycle();
    while !rest.is_empty() {
        let n = sizes.next().unwrap_or(rest.len()).clamp(1, rest.len());
        input.extend_from_slice(&rest[..n]);
        rest = &rest[n..];
        loop {
            match decoder.decode(&mut input) {
                Ok(Some(event)) => events.push(event),
                Ok(None) => break,
                Err(e) => return (events, Some(e)),
            }
        }
    }
    (events, None)
}

proptest! {
    #![proptest_config(config(256))]

    #[test]
    fn decoding_encoded_messages_gives_them_back(messages in prop::collection::vec(message(), 1..6)) {
        let (wire, expected) = encode(&messages);
        let (events, error) = feed(Role::Server, LIMITS, &wire, &[]);
        prop_assert_eq!(error, None);
        prop_assert_eq!(events, expected);
    }

    #[test]
    fn any_split_of_the_input_yields_the_same_events(
        messages in prop::collection::vec(message(), 1..4),
        chunks in prop::collection::vec(1usize..200, 1..8),
    ) {
        let (wire, expected) = encode(&messages);
        let (events, error) = feed(Role::Server, LIMITS, &wire, &chunks);
        prop_assert_eq!(error, None);
        prop_assert_eq!(&events, &expected);
    }

    #[test]
    fn masking_twice_is_identity(buf in prop::collection::vec(any::<u8>(), 0..300), mask in any::<[u8; 4]>(), offset in 0usize..16) {
        let mut twice = buf.clone();
        apply_mask(&mut twice, mask, offset);
        apply_mask(&mut twice, mask, offset);
        prop_assert_eq!(twice, buf);
    }

    #[test]
    fn masking_from_an_offset_equals_masking_whole_then_slicing(
        buf in prop::collection::vec(any::<u8>(), 0..300),
        mask in any::<[u8; 4]>(),
        at in any::<Index>(),
    ) {
        let at = at.index(buf.len() + 1);
        let mut whole = buf.clone();
        apply_mask(&mut whole, mask, 0);
        let mut tail = buf[at..].to_vec();
        apply_mask(&mut tail, mask, at);
        prop_assert_eq!(&tail[..], &whole[at..]);
    }

    #[test]
    fn random_bytes_never_panic_and_every_split_agrees(
        wire in prop::collection::vec(any::<u8>(), 0..400),
        chunks in prop::collection::vec(1usize..20, 1..6),
        client in any::<bool>(),
    ) {
        let role = if client { Role::Client } else { Role::Server };
        let limits = DecodeLimits { max_frame_size: 200, max_message_size: 300 };
        let whole = feed(role, limits, &wire, &[]);
        prop_assert_eq!(feed(role, limits, &wire, &chunks), whole.clone());
        prop_assert_eq!(feed(role, limits, &wire, &[1]), whole);
    }

    #[test]
    fn corrupted_streams_never_panic_and_every_split_agrees(
        messages in prop::collection::vec(message(), 1..4),
        flips in prop::collection::vec((any::<Index>(), any::<u8>()), 1..4),
        chunks in prop::collection::vec(1usize..50, 1..6),
    ) {
        let (mut wire, _) = encode(&messages);
        for (at, xor) in flips {
            let at = at.index(wire.len());
            wire[at] ^= xor;
        }
        let limits = DecodeLimits { max_frame_size: 70_000, max_message_size: 100_000 };
        let whole = feed(Role::Server, limits, &wire, &[]);
        prop_assert_eq!(feed(Role::Server, limits, &wire, &chunks), whole);
    }
}

mod tungstenite_cross_check {
    use super::*;
    use std::io::Cursor;
    use tungstenite::protocol::frame::coding::{Data, OpCode as TOpCode};
    use tungstenite::protocol::frame::{Frame, FrameHeader};

    proptest! {
        #![proptest_config(config(64))]

        #[test]
        fn tungstenite_client_frames_decode_with_ours(
            payload in any_length_payload(),
            mask in any::<[u8; 4]>(),
        ) {
            let header = FrameHeader { opcode: TOpCode::Data(Data::Binary), mask: Some(mask), ..FrameHeader::default() };
            let mut wire = Vec::new();
            Frame::from_payload(header, Bytes::from(payload.clone())).format(&mut wire).expect("format");
            let (events, error) = feed(Role::Server, LIMITS, &wire, &[]);
            prop_assert_eq!(error, None);
            prop_assert_eq!(events, vec![Incoming::Binary(payload.into())]);
        }

        #[test]
        fn our_server_frames_parse_with_tungstenite(payload in any_length_payload()) {
            let mut wire = Vec::new();
            write_frame(&mut wire, OpCode::Binary, &payload);
            let mut cursor = Cursor::new(&wire);
            let (header, len) = FrameHeader::parse(&mut cursor).expect("valid header").expect("complete header");
            prop_assert!(header.is_final);
            prop_assert_eq!(header.opcode, TOpCode::Data(Data::Binary));
            prop_assert_eq!(header.mask, None);
            prop_assert_eq!(len, payload.len() as u64);
            let at = cursor.position() as usize;
            prop_assert_eq!(&wire[at..], &payload[..]);
        }
    }
}
