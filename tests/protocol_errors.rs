//! After the upgrade, every violation of RFC 6455 (and of the configured size limits) fails the connection
//! with its exact close code: 1002 for protocol errors, 1007 for invalid UTF-8, 1009 for size limits. The
//! server then closes the TCP connection without waiting for the peer, and counts the close code it sent. A
//! clean close from the client is echoed and the TCP connection closed.
mod support;

use std::time::Duration;

use support::{RawWs, Server};

/// How long a test waits for the server to close TCP after its close frame.
const CLOSE_WAIT: Duration = Duration::from_secs(1);

/// An upgraded `/echo` connection whose reads give up after 2 s (a missing close fails fast, not after 10 s).
fn echo_client(server: &Server) -> RawWs {
    let raw = RawWs::connect(server.addr, "/echo");
    raw.stream.set_read_timeout(Some(Duration::from_secs(2))).expect("timeout");
    raw
}

/// Sends `frames` (first byte, payload, masked) on a fresh `/echo` connection and checks that the server
/// answers with a close frame carrying `code` and then closes the TCP connection.
fn assert_fails_with(server: &Server, frames: &[(u8, &[u8], bool)], code: u16, what: &str) {
    let mut raw = echo_client(server);
    for (b0, payload, masked) in frames {
        raw.send_frame(*b0, payload, *masked);
    }
    let (b0, payload) = raw.read_frame();
    assert_eq!(b0, 0x88, "{what}: expected a close frame first, got opcode byte {b0:#04x}");
    assert!(payload.len() >= 2, "{what}: close frame without a code");
    let got = u16::from_be_bytes([payload[0], payload[1]]);
    assert_eq!(got, code, "{what}: close reason {:?}", String::from_utf8_lossy(&payload[2..]));
    assert!(
        std::str::from_utf8(&payload[2..]).is_ok(),
        "{what}: the server's own close reason must be UTF-8 (RFC 6455 5.5.1)"
    );
    // Section 7.1.1: "the server SHOULD close the underlying TCP connection first".
    assert!(raw.closed_within(CLOSE_WAIT), "{what}: TCP still open {CLOSE_WAIT:?} after the close frame");
}

/// Close payload: code (big-endian) and reason bytes.
fn close_payload(code: u16, reason: &[u8]) -> Vec<u8> {
    let mut p = code.to_be_bytes().to_vec();
    p.extend_from_slice(reason);
    p
}

// ---- framing ----------------------------------------------------------------------------------------------

/// RFC 6455 section 5.1: "The server MUST close the connection upon receiving a frame that is not masked. In
/// this case, a server MAY send a Close frame with a status code of 1002 (protocol error)".
#[test]
fn rejects_unmasked_client_frame() {
    let server = Server::start(&["--workers", "1"]);
    assert_fails_with(&server, &[(0x81, b"hi", false)], 1002, "unmasked text");
    assert_fails_with(&server, &[(0x89, b"", false)], 1002, "unmasked ping");
}

/// RFC 6455 section 5.2: "RSV1, RSV2, RSV3: ... MUST be 0 unless an extension is negotiated that defines
/// meanings for non-zero values. If a nonzero value is received and none of the negotiated extensions
/// defines the meaning of such a nonzero value, the receiving endpoint MUST _Fail the WebSocket Connection_."
#[test]
fn rejects_reserved_bits() {
    let server = Server::start(&["--workers", "1"]);
    for b0 in [0xC1u8, 0xA1, 0x91, 0xF1, 0xC9] {
        assert_fails_with(&server, &[(b0, b"x", true)], 1002, &format!("first byte {b0:#04x}"));
    }
}

/// RFC 6455 section 5.2: "If an unknown opcode is received, the receiving endpoint MUST _Fail the WebSocket
/// Connection_." Opcodes 3-7 and 0xB-0xF are reserved.
#[test]
fn rejects_reserved_opcodes() {
    let server = Server::start(&["--workers", "1"]);
    for op in (0x3u8..=0x7).chain(0xB..=0xF) {
        assert_fails_with(&server, &[(0x80 | op, b"", true)], 1002, &format!("opcode {op:#x}"));
    }
}

/// RFC 6455 section 5.5: "Control frames themselves MUST NOT be fragmented."
#[test]
fn rejects_fragmented_ping() {
    let server = Server::start(&["--workers", "1"]);
    assert_fails_with(&server, &[(0x09, b"half", true)], 1002, "ping with FIN clear");
}

/// RFC 6455 section 5.5: "All control frames MUST have a payload length of 125 bytes or less".
#[test]
fn rejects_ping_over_125_bytes() {
    let server = Server::start(&["--workers", "1"]);
    assert_fails_with(&server, &[(0x89, &[b'p'; 126], true)], 1002, "126-byte ping");
    // 125 bytes is the largest allowed: answered with a pong carrying the same payload.
    let mut raw = echo_client(&server);
    raw.send_frame(0x89, &[b'p'; 125], true);
    assert_eq!(raw.read_frame(), (0x8A, vec![b'p'; 125]));
}

/// RFC 6455 section 5.4: a fragmented message starts with "a single frame with the FIN bit clear and an
/// opcode other than 0"; a continuation frame with no message in progress breaks that.
#[test]
fn rejects_continuation_without_message() {
    let server = Server::start(&["--workers", "1"]);
    assert_fails_with(&server, &[(0x80, b"orphan", true)], 1002, "FIN continuation, nothing started");
    assert_fails_with(&server, &[(0x00, b"orphan", true)], 1002, "continuation, nothing started");
    // After a complete message (echoed), there is again nothing to continue.
    let mut raw = echo_client(&server);
    raw.send_frame(0x81, b"done", true);
    assert_eq!(raw.read_frame(), (0x81, b"done".to_vec()));
    raw.send_frame(0x80, b"more", true);
    assert_eq!(raw.read_close_code(), Some(1002), "continuation after a whole message");
    assert!(raw.closed_within(CLOSE_WAIT));
}

/// RFC 6455 section 5.4: "The fragments of one message MUST NOT be interleaved between the fragments of
/// another message unless an extension has been negotiated that can interpret the interleaving."
#[test]
fn rejects_new_data_frame_during_fragmented_message() {
    let server = Server::start(&["--workers", "1"]);
    assert_fails_with(&server, &[(0x01, b"a", true), (0x81, b"b", true)], 1002, "text during text");
    assert_fails_with(&server, &[(0x02, b"a", true), (0x01, b"b", true)], 1002, "text during binary");
}

// ---- UTF-8 ------------------------------------------------------------------------------------------------

/// RFC 6455 section 8.1: "When an endpoint is to interpret a byte stream as UTF-8 but finds that the byte
/// stream is not, in fact, a valid UTF-8 stream, that endpoint MUST _Fail the WebSocket Connection_."; section
/// 7.4.1: 1007 "indicates that an endpoint is terminating the connection because it has received data within a
/// message that was not consistent with the type of the message (e.g., non-UTF-8 [RFC3629] data within a
/// text message)."
#[test]
fn rejects_invalid_utf8_text_with_1007() {
    let server = Server::start(&["--workers", "1"]);
    for (bad, what) in [
        (&b"\xFF"[..], "0xFF"),
        (b"\xC3\x28", "bad continuation byte"),
        (b"\xC0\x80", "overlong NUL"),
        (b"\xED\xA0\x80", "UTF-16 surrogate"),
        (b"\xF4\x90\x80\x80", "above U+10FFFF"),
        (b"ok\xE2\x82", "truncated at the end of the message"),
    ] {
        assert_fails_with(&server, &[(0x81, bad, true)], 1007, what);
    }
}

/// Section 8.1 again: the server fails on the first fragment that cannot be valid UTF-8, without waiting for
/// the end of the message (the final fragment is never sent here).
#[test]
fn rejects_invalid_utf8_in_a_fragment_before_the_message_ends() {
    let server = Server::start(&["--workers", "1"]);
    assert_fails_with(&server, &[(0x01, b"ok\xFF", true)], 1007, "bad first fragment");
    assert_fails_with(
        &server,
        &[(0x01, "h\u{e9}llo".as_bytes(), true), (0x00, b"\xC0\x80", true)],
        1007,
        "bad second fragment",
    );
    // A code point split across fragments is valid: "€" is E2 82 AC.
    let mut raw = echo_client(&server);
    raw.send_frame(0x01, b"\xE2\x82", true);
    raw.send_frame(0x80, b"\xAC", true);
    assert_eq!(raw.read_frame(), (0x81, "\u{20ac}".as_bytes().to_vec()), "split code point is reassembled");
}

// ---- close frames -----------------------------------------------------------------------------------------

/// RFC 6455 section 5.5.1: "If there is a body, the first two bytes of the body MUST be a 2-byte unsigned
/// integer (in network byte order) representing a status code".
#[test]
fn rejects_close_with_one_byte_payload() {
    let server = Server::start(&["--workers", "1"]);
    assert_fails_with(&server, &[(0x88, b"\x03", true)], 1002, "1-byte close body");
}

/// RFC 6455 section 7.4.1: 1005 and 1006 "MUST NOT be set as a status code in a Close control frame by an
/// endpoint" (1015 likewise); section 7.4.2: "0-999: Status codes in the range 0-999 are not used." Codes
/// 1004 and 1016-2999 are reserved and 5000+ undefined (Autobahn case 7.9).
#[test]
fn rejects_close_with_invalid_code() {
    let server = Server::start(&["--workers", "1"]);
    for code in [0u16, 999, 1004, 1005, 1006, 1015, 1016, 2999, 5000, 65535] {
        assert_fails_with(&server, &[(0x88, &close_payload(code, b""), true)], 1002, &format!("code {code}"));
    }
}

/// 1012 (service restart), 1013 (try again later) and 1014 (bad gateway) are registered in the IANA "WebSocket
/// Close Code Number Registry" (RFC 6455 section 11.7): a client may send them, and the server answers with a
/// normal close handshake echoing the code, not with 1002.
#[test]
fn close_with_iana_registered_codes_1012_to_1014_is_echoed() {
    let server = Server::start(&["--workers", "1"]);
    for code in [1012u16, 1013, 1014] {
        let mut raw = echo_client(&server);
        raw.send_frame(0x88, &close_payload(code, b"later"), true);
        let (b0, payload) = raw.read_frame();
        assert_eq!(b0, 0x88, "code {code}: a close frame comes back");
        assert_eq!(payload.get(..2), Some(&code.to_be_bytes()[..]), "code {code} is echoed, not refused with 1002");
        assert!(raw.closed_within(CLOSE_WAIT), "code {code}: TCP still open after the close handshake");
    }
}

/// RFC 6455 section 5.5.1: the close reason's data "is not guaranteed to be human readable" but it MUST be
/// UTF-8 ("the body MAY contain UTF-8-encoded data"); Autobahn 7.5.1 expects 1007 for an invalid reason.
#[test]
fn rejects_close_reason_with_invalid_utf8_with_1007() {
    let server = Server::start(&["--workers", "1"]);
    assert_fails_with(&server, &[(0x88, &close_payload(1000, b"bye\xFF"), true)], 1007, "bad close reason");
}

/// RFC 6455 section 5.5.1: "If an endpoint receives a Close frame and did not previously send a Close frame,
/// the endpoint MUST send a Close frame in response. (When sending a Close frame in response, the endpoint
/// typically echos the status code it received.)" Section 7.1.1: "the server SHOULD close the underlying TCP
/// connection first".
#[test]
fn close_reply_echoes_code_and_closes_tcp() {
    let server = Server::start(&["--workers", "1"]);
    for code in [1000u16, 1001, 3000, 4999] {
        let mut raw = echo_client(&server);
        raw.send_frame(0x88, &close_payload(code, b"bye"), true);
        let (b0, payload) = raw.read_frame();
        assert_eq!(b0, 0x88, "code {code}: a close frame comes back");
        assert_eq!(payload.get(..2), Some(&code.to_be_bytes()[..]), "code {code} is echoed");
        assert!(raw.closed_within(CLOSE_WAIT), "code {code}: TCP still open after the close handshake");
    }
    // An empty close is answered with an empty close: there is no code to echo.
    let mut raw = echo_client(&server);
    raw.send_frame(0x88, b"", true);
    assert_eq!(raw.read_frame(), (0x88, Vec::new()), "reply to an empty close");
    assert!(raw.closed_within(CLOSE_WAIT), "TCP still open after an empty close");
}

/// RFC 6455 section 5.5.1: "After sending a Close frame, the endpoint MUST NOT send any more data frames";
/// and data after the peer's close is not acted on: a message sent after the close gets no echo.
#[test]
fn data_after_client_close_is_not_echoed() {
    let server = Server::start(&["--workers", "1"]);
    let mut raw = echo_client(&server);
    raw.send_frame(0x88, &close_payload(1000, b""), true);
    raw.send_frame(0x81, b"too late", true);
    assert_eq!(raw.read_frame(), (0x88, close_payload(1000, b"")));
    assert!(raw.closed_within(CLOSE_WAIT), "TCP still open, or more frames after the close");
}

// ---- size limits ------------------------------------------------------------------------------------------

/// RFC 6455 section 7.4.1: 1009 "indicates that an endpoint is terminating the connection because it has
/// received a message that is too big for it to process." The default `max_message_size` is 1 MiB.
#[test]
fn message_over_default_max_message_size_in_one_frame_is_1009() {
    let server = Server::start(&["--workers", "1"]);
    let payload = vec![0x5Au8; 1024 * 1024 + 1];
    assert_fails_with(&server, &[(0x82, &payload, true)], 1009, "1 MiB + 1 in one frame");
}

#[test]
fn message_over_default_max_message_size_in_fragments_is_1009() {
    let server = Server::start(&["--workers", "1"]);
    let half = vec![0x5Au8; 512 * 1024];
    assert_fails_with(
        &server,
        &[(0x02, &half, true), (0x00, &half, true), (0x80, b"!", true)],
        1009,
        "512 KiB + 512 KiB + 1 in fragments",
    );
    // Exactly 1 MiB in the same fragments is accepted and echoed whole.
    let mut raw = echo_client(&server);
    raw.send_frame(0x02, &half, true);
    raw.send_frame(0x80, &half, true);
    let (b0, echoed) = raw.read_frame();
    assert_eq!((b0, echoed.len()), (0x82, 1024 * 1024), "a message of exactly max_message_size");
}

/// `max_frame_size` bounds each frame on its own; the message limit still bounds the sum.
#[test]
fn frame_over_max_frame_size_is_1009() {
    let server = Server::start(&["--workers", "1", "--max-frame-size", "64KiB", "--max-message-size", "1MiB"]);
    assert_fails_with(&server, &[(0x82, &vec![1u8; 64 * 1024 + 1], true)], 1009, "64 KiB + 1 frame");
    assert_fails_with(
        &server,
        &[(0x02, &vec![1u8; 1000], true), (0x80, &vec![1u8; 64 * 1024 + 1], true)],
        1009,
        "oversized continuation",
    );
    // A frame of exactly the limit passes, and so do three of them as fragments of one 192 KiB message.
    let mut raw = echo_client(&server);
    let frame = vec![2u8; 64 * 1024];
    raw.send_frame(0x82, &frame, true);
    assert_eq!(raw.read_frame(), (0x82, frame.clone()));
    raw.send_frame(0x02, &frame, true);
    raw.send_frame(0x00, &frame, true);
    raw.send_frame(0x80, &frame, true);
    let (b0, echoed) = raw.read_frame();
    assert_eq!((b0, echoed.len()), (0x82, 3 * 64 * 1024));
}

// ---- metrics ----------------------------------------------------------------------------------------------

/// Every close frame the server sends is counted by its code.
#[test]
fn close_codes_sent_are_counted() {
    let server = Server::start(&["--workers", "1"]);
    assert_fails_with(&server, &[(0x81, b"x", false)], 1002, "unmasked");
    assert_fails_with(&server, &[(0x83, b"", true)], 1002, "opcode 3");
    assert_fails_with(&server, &[(0x81, b"\xFF", true)], 1007, "bad UTF-8");
    assert_fails_with(&server, &[(0x82, &vec![0u8; 1024 * 1024 + 1], true)], 1009, "too big");
    let mut raw = echo_client(&server);
    raw.send_frame(0x88, &close_payload(1000, b""), true);
    assert_eq!(raw.read_close_code(), Some(1000));
    assert!(raw.closed_within(CLOSE_WAIT));
    assert_eq!(server.metric("herald_close_codes_sent_total{code=\"1002\"}"), 2);
    assert_eq!(server.metric("herald_close_codes_sent_total{code=\"1007\"}"), 1);
    assert_eq!(server.metric("herald_close_codes_sent_total{code=\"1009\"}"), 1);
    assert_eq!(server.metric("herald_close_codes_sent_total{code=\"1000\"}"), 1);
    assert_eq!(server.metric("herald_close_codes_sent_total{code=\"1001\"}"), 0);
}
