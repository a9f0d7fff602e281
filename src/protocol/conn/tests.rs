//! Unit tests for the connection state machine, one rule each (RFC 6455 sections 5.1, 5.5, 7.1).
//!
//! [`Pair`] joins a client core and a server core back to back in memory with virtual time, as quinn's test
//! `Pair` does: what one side's `poll_control` hands out becomes the other side's input, data frames are
//! written by the test (as the I/O layer would), and time moves only when a test says so.

use std::time::{Duration, Instant};

use bytes::{Bytes, BytesMut};

use super::*;
use crate::protocol::codec::{DecodeLimits, Decoder, Incoming};
use crate::protocol::frame::write_masked_frame;

const LIMITS: DecodeLimits = DecodeLimits { max_frame_size: 1 << 20, max_message_size: 4 << 20 };
const CLOSE_TIMEOUT: Duration = Duration::from_secs(5);
/// The masking key of the data frames the tests write for the client (its core only masks control frames).
const MASK: [u8; 4] = [0x37, 0xfa, 0x21, 0x3d];

fn settings(role: Role, ping_interval: Option<Duration>, idle_timeout: Option<Duration>) -> ConnSettings {
    ConnSettings { role, limits: LIMITS, ping_interval, idle_timeout, close_timeout: CLOSE_TIMEOUT }
}

/// A client frame, masked as RFC 6455 section 5.3 requires.
fn client_frame(fin: bool, opcode: OpCode, payload: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    write_masked_frame(&mut out, fin, opcode, payload, MASK);
    out
}

/// A server frame (unmasked).
fn server_frame(opcode: OpCode, payload: &[u8]) -> Vec<u8> {
    frame::frame(opcode, payload).to_vec()
}

/// A close frame's body: the code, big-endian, then the reason.
fn close_body(code: u16, reason: &str) -> Vec<u8> {
    let mut body = code.to_be_bytes().to_vec();
    body.extend_from_slice(reason.as_bytes());
    body
}

fn text(s: &str) -> Event {
    Event::Message(Message::Text(Bytes::copy_from_slice(s.as_bytes())))
}

/// Decodes frames written by the other end with a bare decoder of `role` (checks masking as well as content).
fn decode_as(role: Role, frames: &[Bytes]) -> Vec<Incoming> {
    let mut decoder = Decoder::new(role, LIMITS);
    let mut input = BytesMut::new();
    for f in frames {
        input.extend_from_slice(f);
    }
    let mut out = Vec::new();
    while let Some(incoming) = decoder.decode(&mut input).expect("a well-formed frame") {
        out.push(incoming);
    }
    assert!(input.is_empty(), "trailing bytes: {input:?}");
    out
}

/// A client core and a server core joined in memory, with a virtual clock.
struct Pair {
    client: Connection,
    server: Connection,
    now: Instant,
    client_settings: ConnSettings,
    server_settings: ConnSettings,
    /// Bytes on their way to the server, not yet read by it.
    to_server: BytesMut,
    /// Bytes on their way to the client, not yet read by it.
    to_client: BytesMut,
}

impl Pair {
    /// A pair without timers (other than the close timeout).
    fn new() -> Pair {
        Pair::with_server_timers(None, None)
    }

    /// A pair whose server pings after `ping_interval` and closes after `idle_timeout`; the client has no timers,
    /// so that only the server's clock is under test.
    fn with_server_timers(ping_interval: Option<Duration>, idle_timeout: Option<Duration>) -> Pair {
        let now = Instant::now();
        let client_settings = settings(Role::Client, None, None);
        let server_settings = settings(Role::Server, ping_interval, idle_timeout);
        Pair {
            client: Connection::new(now, &client_settings, 0x5eed),
            server: Connection::new(now, &server_settings, 0),
            now,
            client_settings,
            server_settings,
            to_server: BytesMut::new(),
            to_client: BytesMut::new(),
        }
    }

    /// Writes a frame from the client's I/O layer to the server (data frames do not pass through the core).
    fn client_writes(&mut self, fin: bool, opcode: OpCode, payload: &[u8]) {
        self.to_server.extend_from_slice(&client_frame(fin, opcode, payload));
    }

    /// The server reads what has arrived: every event until `None`, control frames left in its core.
    fn server_reads(&mut self) -> Vec<Event> {
        let mut events = Vec::new();
        while let Some(event) = self.server.poll_message(self.now, &self.server_settings, &mut self.to_server) {
            events.push(event);
        }
        events
    }

    /// The client reads what has arrived, as [`Pair::server_reads`].
    fn client_reads(&mut self) -> Vec<Event> {
        let mut events = Vec::new();
        while let Some(event) = self.client.poll_message(self.now, &self.client_settings, &mut self.to_client) {
            events.push(event);
        }
        events
    }

    /// The server reads as the worker does: after each `Event::Control` its control frames are drained (with
    /// room) and sent, so replies keep the order of the frames that caused them.
    fn server_pumps(&mut self) -> (Vec<Event>, Vec<Bytes>) {
        let mut events = Vec::new();
        let mut sent = Vec::new();
        while let Some(event) = self.server.poll_message(self.now, &self.server_settings, &mut self.to_server) {
            if event == Event::Control {
                sent.extend(self.server_control(true));
            }
            events.push(event);
        }
        sent.extend(self.server_control(true));
        (events, sent)
    }

    /// Drains the server's control frames and sends them to the client; returns them.
    fn server_control(&mut self, pong_room: bool) -> Vec<Bytes> {
        let mut frames = Vec::new();
        while let Some(f) = self.server.poll_control(self.now, &self.server_settings, pong_room) {
            self.to_client.extend_from_slice(&f);
            frames.push(f);
        }
        frames
    }

    /// Drains the client's control frames and sends them to the server; returns them.
    fn client_control(&mut self, pong_room: bool) -> Vec<Bytes> {
        let mut frames = Vec::new();
        while let Some(f) = self.client.poll_control(self.now, &self.client_settings, pong_room) {
            self.to_server.extend_from_slice(&f);
            frames.push(f);
        }
        frames
    }

    /// Moves the virtual clock forward and lets both cores act on their timers.
    fn advance(&mut self, d: Duration) {
        self.now += d;
        self.client.handle_timeout(self.now, &self.client_settings);
        self.server.handle_timeout(self.now, &self.server_settings);
    }

    /// Moves the clock forward in steps of `step`, `n` times, returning the server's control frames after each.
    fn advance_steps(&mut self, step: Duration, n: usize) -> Vec<Vec<Bytes>> {
        (0..n)
            .map(|_| {
                self.advance(step);
                self.server_control(true)
            })
            .collect()
    }
}

// ---- ping and pong (5.5.2, 5.5.3) ----

#[test]
fn ping_is_answered_with_pong_carrying_the_same_payload() {
    // 5.5.2: "Upon receipt of a Ping frame, an endpoint MUST send a Pong frame in response". 5.5.3: "A Pong
    // frame sent in response to a Ping frame must have identical "Application data" as found in the message
    // body of the Ping frame being replied to."
    let mut pair = Pair::new();
    pair.client_writes(true, OpCode::Ping, b"Hello");
    assert_eq!(pair.server_reads(), [Event::Control]);
    assert!(pair.server.has_pending_control());
    let frames = pair.server_control(true);
    assert_eq!(frames, [Bytes::from_static(&[0x8A, 0x05, b'H', b'e', b'l', b'l', b'o'])]);
    assert!(!pair.server.has_pending_control());
    // The client's core takes the pong in silently.
    assert_eq!(pair.client_reads(), []);
    assert!(pair.to_client.is_empty());
}

#[test]
fn several_pings_with_room_get_a_pong_each_in_order() {
    let mut pair = Pair::new();
    pair.client_writes(true, OpCode::Ping, b"1");
    pair.client_writes(true, OpCode::Text, b"between");
    pair.client_writes(true, OpCode::Ping, b"2");
    pair.client_writes(true, OpCode::Ping, b"3");
    let (events, sent) = pair.server_pumps();
    assert_eq!(events, [Event::Control, text("between"), Event::Control, Event::Control]);
    let expected: Vec<_> = [b"1", b"2", b"3"].iter().map(|p| Incoming::Pong(Bytes::from_static(*p))).collect();
    assert_eq!(decode_as(Role::Client, &sent), expected);
}

#[test]
fn pings_without_pong_room_get_one_pong_for_the_latest_once_room_appears() {
    // 5.5.3: "If an endpoint receives a Ping frame and has not yet sent Pong frame(s) in response to previous
    // Ping frame(s), the endpoint MAY elect to send a Pong frame for only the most recently processed Ping
    // frame."
    let mut pair = Pair::new();
    for payload in [b"1", b"2", b"3"] {
        pair.client_writes(true, OpCode::Ping, payload);
    }
    let mut events = Vec::new();
    while let Some(event) = pair.server.poll_message(pair.now, &pair.server_settings, &mut pair.to_server) {
        events.push(event);
        assert_eq!(pair.server_control(false), Vec::<Bytes>::new(), "no pong without room");
    }
    assert_eq!(events, [Event::Control, Event::Control, Event::Control]);
    assert!(pair.server.has_pending_control());
    let sent = pair.server_control(true);
    assert_eq!(decode_as(Role::Client, &sent), [Incoming::Pong(Bytes::from_static(b"3"))]);
    assert!(!pair.server.has_pending_control());
    assert_eq!(pair.server_control(true), Vec::<Bytes>::new());
}

// ---- the close handshake (5.5.1, 7.1) ----

#[test]
fn peer_close_is_answered_with_its_code_and_ends_the_handshake() {
    // 5.5.1: "If an endpoint receives a Close frame and did not previously send a Close frame, the endpoint MUST
    // send a Close frame in response. (When sending a Close frame in response, the endpoint typically echos the
    // status code it received.)"
    let mut pair = Pair::new();
    pair.client_writes(true, OpCode::Close, &close_body(1000, "done"));
    assert_eq!(pair.server_reads(), []);
    assert!(!pair.server.can_send(), "no data frames after the peer's close is being answered");
    assert!(!pair.server.is_done(), "our answering close has not been handed out yet");
    assert_eq!(pair.server.ending(), Some(&Ending::PeerClosed(Some(CloseCode::NORMAL))));

    let frames = pair.server_control(true);
    assert_eq!(frames, [Bytes::from_static(&[0x88, 0x02, 0x03, 0xE8])]);
    assert!(pair.server.is_done());
    assert!(!pair.server.can_send());
    assert!(!pair.server.is_expired(pair.now), "the linger deadline is still ahead");
    assert_eq!(pair.server_control(true), Vec::<Bytes>::new(), "nothing after the close frame");
}

#[test]
fn data_after_the_peer_close_is_not_delivered() {
    // 5.5.1: "The application MUST NOT send any more data frames after sending a Close frame", so nothing after
    // the close is data we may act on; frames before it in the same read still are.
    let mut pair = Pair::new();
    pair.client_writes(true, OpCode::Text, b"before");
    pair.client_writes(true, OpCode::Close, &close_body(1000, ""));
    pair.client_writes(true, OpCode::Text, b"after");
    pair.client_writes(true, OpCode::Ping, b"after");
    assert_eq!(pair.server_reads(), [text("before")]);
    assert!(pair.to_server.is_empty(), "the rest of the input is dropped");
    pair.client_writes(true, OpCode::Binary, b"later");
    assert_eq!(pair.server_reads(), []);
    let frames = pair.server_control(true);
    assert_eq!(decode_as(Role::Client, &frames).len(), 1, "only the answering close, no pong");
}

#[test]
fn empty_close_is_answered_with_an_empty_close() {
    // 5.5.1: the body is optional ("The Close frame MAY contain a body"); without a status code to echo, the
    // answer has no body either (1005 "MUST NOT be set as a status code in a Close control frame").
    let mut pair = Pair::new();
    pair.client_writes(true, OpCode::Close, b"");
    assert_eq!(pair.server_reads(), []);
    assert_eq!(pair.server.ending(), Some(&Ending::PeerClosed(None)));
    assert_eq!(pair.server_control(true), [Bytes::from_static(&[0x88, 0x00])]);
    assert!(pair.server.is_done());
}

#[test]
fn close_handshake_started_by_the_client_core_completes_on_both_sides() {
    let mut pair = Pair::new();
    pair.client.close(CloseCode::NORMAL, "bye");
    assert!(!pair.client.can_send());
    assert_eq!(pair.client_control(true).len(), 1);
    assert!(!pair.client.is_done(), "waiting for the server's close");

    assert_eq!(pair.server_reads(), []);
    assert_eq!(
        decode_as(Role::Client, &pair.server_control(true)),
        [Incoming::Close(Some(CloseFrame { code: CloseCode::NORMAL, reason: String::new() }))]
    );
    assert!(pair.server.is_done());

    assert_eq!(pair.client_reads(), []);
    assert!(pair.client.is_done());
    assert_eq!(pair.client.ending(), Some(&Ending::WeClosed(CloseCode::NORMAL)));
    assert_eq!(pair.client_control(true), Vec::<Bytes>::new(), "the server's close is not answered again");
}

#[test]
fn server_close_stops_sending_at_once_and_waits_for_the_peer_close() {
    // 5.5.1: "After sending a Close frame, the application MUST NOT send any more data frames." 7.1.2/7.1.1:
    // the connection is closed once a close has been both sent and received.
    let mut pair = Pair::new();
    pair.server.close(CloseCode::GOING_AWAY, "bye");
    assert!(!pair.server.can_send(), "can_send is false before the close frame is even handed out");
    assert_eq!(pair.server.ending(), Some(&Ending::WeClosed(CloseCode::GOING_AWAY)));

    let frames = pair.server_control(true);
    assert_eq!(frames, [Bytes::from_static(&[0x88, 0x05, 0x03, 0xE9, b'b', b'y', b'e'])]);
    assert_eq!(pair.server.state, State::CloseSent { deadline: pair.now + CLOSE_TIMEOUT });
    assert!(!pair.server.is_done());
    assert_eq!(pair.server_control(true), Vec::<Bytes>::new());

    // Data the client sent before it saw our close is discarded (5.5.1 lets it arrive), pings are not answered.
    pair.client_writes(true, OpCode::Text, b"late");
    pair.client_writes(true, OpCode::Ping, b"late");
    pair.advance(Duration::from_secs(1));
    assert_eq!(pair.server_reads(), []);
    assert!(!pair.server.is_done());
    assert_eq!(pair.server_control(true), Vec::<Bytes>::new());

    // The client core answers with the same code; the server is done once it arrives.
    assert_eq!(pair.client_reads(), []);
    assert_eq!(pair.client.ending(), Some(&Ending::PeerClosed(Some(CloseCode::GOING_AWAY))));
    let answer = pair.client_control(true);
    assert_eq!(
        decode_as(Role::Server, &answer),
        [Incoming::Close(Some(CloseFrame { code: CloseCode::GOING_AWAY, reason: String::new() }))]
    );
    assert_eq!(pair.server_reads(), []);
    assert!(pair.server.is_done());
    assert!(!pair.server.is_expired(pair.now));
    assert_eq!(pair.server.ending(), Some(&Ending::WeClosed(CloseCode::GOING_AWAY)));
}

#[test]
fn server_close_without_an_answer_expires_after_close_timeout() {
    let mut pair = Pair::new();
    pair.server.close(CloseCode::GOING_AWAY, "bye");
    assert_eq!(pair.server_control(true).len(), 1);
    let sent_at = pair.now;

    pair.advance(CLOSE_TIMEOUT - Duration::from_millis(1));
    assert!(!pair.server.is_done());
    assert!(!pair.server.is_expired(pair.now));

    pair.advance(Duration::from_millis(1));
    assert_eq!(pair.now, sent_at + CLOSE_TIMEOUT);
    assert!(pair.server.is_expired(pair.now));
    assert!(pair.server.is_done());
    assert_eq!(pair.server.ending(), Some(&Ending::WeClosed(CloseCode::GOING_AWAY)));
}

#[test]
fn closes_that_cross_complete_the_handshake_on_both_sides() {
    // 7.1.1 / 5.5.1: both ends may send a close at once; each then has sent and received one.
    let mut pair = Pair::new();
    pair.client.close(CloseCode::NORMAL, "client");
    pair.server.close(CloseCode::GOING_AWAY, "server");
    pair.client_control(true);
    pair.server_control(true);
    assert_eq!(pair.server_reads(), []);
    assert_eq!(pair.client_reads(), []);
    assert!(pair.server.is_done() && pair.client.is_done());
    assert_eq!(pair.server_control(true), Vec::<Bytes>::new(), "no second close");
    assert_eq!(pair.client_control(true), Vec::<Bytes>::new(), "no second close");
}

#[test]
fn peer_close_arriving_before_ours_is_handed_out_makes_ours_the_last() {
    let mut pair = Pair::new();
    pair.server.close(CloseCode::GOING_AWAY, "bye");
    pair.client_writes(true, OpCode::Close, &close_body(1000, ""));
    assert_eq!(pair.server_reads(), []);
    let frames = pair.server_control(true);
    assert_eq!(
        decode_as(Role::Client, &frames),
        [Incoming::Close(Some(CloseFrame { code: CloseCode::GOING_AWAY, reason: "bye".to_owned() }))]
    );
    assert!(pair.server.is_done(), "both closes are through: no wait for another");
}

#[test]
fn close_is_ignored_once_a_close_is_under_way() {
    let mut pair = Pair::new();
    pair.server.close(CloseCode::GOING_AWAY, "first");
    pair.server.close(CloseCode::NORMAL, "second");
    assert_eq!(pair.server.ending(), Some(&Ending::WeClosed(CloseCode::GOING_AWAY)));
    assert_eq!(pair.server_control(true).len(), 1);
    pair.server.close(CloseCode::NORMAL, "third");
    assert_eq!(pair.server_control(true), Vec::<Bytes>::new());
}

// ---- failing the connection (7.1.7) ----

#[test]
fn unmasked_client_frame_fails_with_1002_and_nothing_after_it_is_delivered() {
    // 5.1: "The server MUST close the connection upon receiving a frame that is not masked. In this case, a
    // server MAY send a Close frame with a status code of 1002 (protocol error)". 7.1.7: "An endpoint MUST NOT
    // continue to attempt to process data (including a responding Close frame) from the remote endpoint after
    // being instructed to _Fail the WebSocket Connection_."
    let mut pair = Pair::new();
    pair.client_writes(true, OpCode::Text, b"valid");
    pair.to_server.extend_from_slice(&server_frame(OpCode::Text, b"unmasked"));
    pair.client_writes(true, OpCode::Text, b"valid after");
    pair.client_writes(true, OpCode::Ping, b"p");
    assert_eq!(pair.server_reads(), [text("valid")]);
    assert_eq!(pair.server.ending(), Some(&Ending::Failed(ProtocolError::UnmaskedClientFrame)));
    assert!(!pair.server.can_send());

    pair.client_writes(true, OpCode::Text, b"next read");
    assert_eq!(pair.server_reads(), []);
    let frames = pair.server_control(true);
    assert_eq!(
        decode_as(Role::Client, &frames),
        [Incoming::Close(Some(CloseFrame {
            code: CloseCode::PROTOCOL_ERROR,
            reason: ProtocolError::UnmaskedClientFrame.to_string()
        }))]
    );
    assert!(pair.server.is_done(), "a failed connection does not wait for the peer's close");
    assert_eq!(pair.server_control(true), Vec::<Bytes>::new());
}

#[test]
fn invalid_utf8_fails_with_1007() {
    // 8.1: "When an endpoint is to interpret a byte stream as UTF-8 but finds that the byte stream is not, in
    // fact, a valid UTF-8 stream, that endpoint MUST _Fail the WebSocket Connection_." 7.4.1: 1007 "indicates
    // that an endpoint is terminating the connection because it has received data within a message that was not
    // consistent with the type of the message (e.g., non-UTF-8 [RFC3629] data within a text message)."
    let mut pair = Pair::new();
    pair.client_writes(true, OpCode::Text, b"ok \xCE\xBA");
    pair.client_writes(true, OpCode::Text, b"bad \xC0\xAF");
    pair.client_writes(true, OpCode::Text, b"valid after");
    assert_eq!(pair.server_reads(), [text("ok \u{3ba}")]);
    assert_eq!(pair.server.ending(), Some(&Ending::Failed(ProtocolError::InvalidUtf8)));
    let frames = pair.server_control(true);
    assert_eq!(
        decode_as(Role::Client, &frames),
        [Incoming::Close(Some(CloseFrame { code: CloseCode::INVALID_PAYLOAD, reason: "invalid UTF-8".to_owned() }))]
    );
    assert!(pair.server.is_done());
}

#[test]
fn protocol_error_drops_a_pending_pong() {
    // The failure's close frame is the last frame; a pong still waiting for room is not sent after it.
    let mut pair = Pair::new();
    pair.client_writes(true, OpCode::Ping, b"p");
    pair.client_writes(true, OpCode::Continuation, b"orphan");
    let mut events = Vec::new();
    while let Some(e) = pair.server.poll_message(pair.now, &pair.server_settings, &mut pair.to_server) {
        events.push(e);
    }
    assert_eq!(events, [Event::Control]);
    let frames = pair.server_control(true);
    assert_eq!(
        decode_as(Role::Client, &frames),
        [Incoming::Close(Some(CloseFrame {
            code: CloseCode::PROTOCOL_ERROR,
            reason: ProtocolError::UnexpectedContinuation.to_string()
        }))]
    );
}

#[test]
fn protocol_error_while_our_close_is_out_ends_without_another_close() {
    let mut pair = Pair::new();
    pair.server.close(CloseCode::GOING_AWAY, "bye");
    assert_eq!(pair.server_control(true).len(), 1);
    pair.to_server.extend_from_slice(&server_frame(OpCode::Close, &close_body(1000, "")));
    assert_eq!(pair.server_reads(), []);
    assert_eq!(pair.server.ending(), Some(&Ending::Failed(ProtocolError::UnmaskedClientFrame)));
    assert!(pair.server.is_done());
    assert_eq!(pair.server_control(true), Vec::<Bytes>::new(), "one close frame only");
}

// ---- timers ----

#[test]
fn ping_is_sent_after_ping_interval_of_silence_and_not_again_before_another() {
    let mut pair = Pair::with_server_timers(Some(Duration::from_secs(3)), Some(Duration::from_secs(10)));
    let second = Duration::from_secs(1);
    let ping: Vec<Bytes> = vec![Bytes::from_static(&[0x89, 0x00])];
    let none: Vec<Bytes> = Vec::new();
    // t = 1 .. 9 s
    let sent = pair.advance_steps(second, 9);
    let expected = [&none, &none, &ping, &none, &none, &ping, &none, &none, &ping];
    assert_eq!(sent.iter().collect::<Vec<_>>(), expected);

    // The client core, read without draining in between, answers only the latest ping (5.5.3); the pong is
    // input, and input resets both clocks.
    assert_eq!(pair.client_reads(), [Event::Control, Event::Control, Event::Control]);
    let pongs = pair.client_control(true);
    assert_eq!(decode_as(Role::Server, &pongs), [Incoming::Pong(Bytes::new())]);
    assert_eq!(pair.server_reads(), []);
    // Input at t = 9 s: the next ping is due at 12 s, the idle close at 19 s.
    let sent = pair.advance_steps(second, 3);
    assert_eq!(sent, [none.clone(), none.clone(), ping.clone()]);
}

#[test]
fn input_resets_the_idle_clock() {
    let mut pair = Pair::with_server_timers(Some(Duration::from_secs(3)), Some(Duration::from_secs(10)));
    pair.advance(Duration::from_secs(3));
    assert_eq!(pair.server_control(true).len(), 1, "the ping");
    pair.advance(Duration::from_secs(1));
    // The client answers at t = 4 s.
    assert_eq!(pair.client_reads(), [Event::Control]);
    assert_eq!(pair.client_control(true).len(), 1);
    assert_eq!(pair.server_reads(), []);

    // t = 13.999 s: 9.999 s since the pong; open.
    pair.advance(Duration::from_millis(9_999));
    pair.server_control(true);
    assert!(pair.server.can_send());
    // t = 14 s: 10 s of silence.
    pair.advance(Duration::from_millis(1));
    assert!(!pair.server.can_send());
    assert_eq!(pair.server.ending(), Some(&Ending::WeClosed(CloseCode::GOING_AWAY)));
}

#[test]
fn idle_timeout_closes_with_1001_idle_timeout() {
    // 7.4.1: "1001 indicates that an endpoint is "going away"".
    let mut pair = Pair::with_server_timers(Some(Duration::from_secs(3)), Some(Duration::from_secs(10)));
    let sent = pair.advance_steps(Duration::from_secs(1), 9);
    assert_eq!(sent.iter().filter(|f| !f.is_empty()).count(), 3, "pings at 3, 6 and 9 s");
    assert!(pair.server.can_send());

    pair.advance(Duration::from_secs(1));
    assert!(!pair.server.can_send());
    let frames = pair.server_control(true);
    assert_eq!(
        decode_as(Role::Client, &frames),
        [Incoming::Close(Some(CloseFrame { code: CloseCode::GOING_AWAY, reason: "idle timeout".to_owned() }))]
    );
    assert_eq!(pair.server.state, State::CloseSent { deadline: pair.now + CLOSE_TIMEOUT });
}

#[test]
fn idle_timeout_alone_closes_without_pings() {
    let mut pair = Pair::with_server_timers(None, Some(Duration::from_secs(10)));
    let sent = pair.advance_steps(Duration::from_secs(1), 10);
    assert!(sent[..9].iter().all(Vec::is_empty));
    assert_eq!(
        decode_as(Role::Client, &sent[9]),
        [Incoming::Close(Some(CloseFrame { code: CloseCode::GOING_AWAY, reason: "idle timeout".to_owned() }))]
    );
}

#[test]
fn poll_timeout_is_the_earliest_deadline_of_the_state() {
    {
        // No timers: nothing to wake for while open.
        let pair = Pair::new();
        assert_eq!(pair.server.poll_timeout(&pair.server_settings), None);
    }
    {
        let pair = Pair::with_server_timers(None, Some(Duration::from_secs(10)));
        assert_eq!(pair.server.poll_timeout(&pair.server_settings), Some(pair.now + Duration::from_secs(10)));
        let pair = Pair::with_server_timers(Some(Duration::from_secs(3)), None);
        assert_eq!(pair.server.poll_timeout(&pair.server_settings), Some(pair.now + Duration::from_secs(3)));
        let pair = Pair::with_server_timers(Some(Duration::from_secs(30)), Some(Duration::from_secs(10)));
        assert_eq!(pair.server.poll_timeout(&pair.server_settings), Some(pair.now + Duration::from_secs(10)));
    }

    // Open: the ping deadline first, then (after the ping) the next one, pushed back by input.
    let mut pair = Pair::with_server_timers(Some(Duration::from_secs(3)), Some(Duration::from_secs(10)));
    let start = pair.now;
    let deadline = |pair: &Pair| pair.server.poll_timeout(&pair.server_settings);
    assert_eq!(deadline(&pair), Some(start + Duration::from_secs(3)));
    pair.advance(Duration::from_secs(3));
    assert_eq!(deadline(&pair), Some(start + Duration::from_secs(6)));
    pair.advance(Duration::from_secs(1));
    pair.client_writes(true, OpCode::Text, b"hi");
    assert_eq!(pair.server_reads(), [text("hi")]);
    assert_eq!(deadline(&pair), Some(start + Duration::from_secs(7)));
    // Pings at 7 and 10 s put the next one at 13 s, before the idle close at 14 s.
    pair.advance(Duration::from_secs(3));
    pair.advance(Duration::from_secs(3));
    assert_eq!(deadline(&pair), Some(start + Duration::from_secs(13)));
    pair.advance(Duration::from_secs(3));
    assert_eq!(deadline(&pair), Some(start + Duration::from_secs(14)), "idle (14 s) before the next ping (16 s)");

    // CloseSent: the close deadline, whatever the timers.
    pair.server.close(CloseCode::NORMAL, "");
    pair.server_control(true);
    let sent_at = pair.now;
    assert_eq!(deadline(&pair), Some(sent_at + CLOSE_TIMEOUT));
    pair.advance(Duration::from_secs(1));
    assert_eq!(deadline(&pair), Some(sent_at + CLOSE_TIMEOUT));

    // Done: the linger deadline, counted from the peer's close.
    pair.client_writes(true, OpCode::Close, &close_body(1000, ""));
    assert_eq!(pair.server_reads(), []);
    assert!(pair.server.is_done());
    assert_eq!(deadline(&pair), Some(pair.now + CLOSE_TIMEOUT));
}

#[test]
fn poll_timeout_after_answering_a_close_is_the_linger_deadline() {
    let mut pair = Pair::with_server_timers(Some(Duration::from_secs(3)), Some(Duration::from_secs(10)));
    pair.advance(Duration::from_secs(1));
    pair.client_writes(true, OpCode::Close, b"");
    assert_eq!(pair.server_reads(), []);
    pair.server_control(true);
    assert_eq!(pair.server.poll_timeout(&pair.server_settings), Some(pair.now + CLOSE_TIMEOUT));
    pair.advance(CLOSE_TIMEOUT);
    assert!(pair.server.is_expired(pair.now));
}

#[test]
fn no_ping_or_idle_close_once_a_close_is_under_way() {
    let mut pair = Pair::with_server_timers(Some(Duration::from_secs(3)), Some(Duration::from_secs(10)));
    pair.server.close(CloseCode::NORMAL, "");
    pair.server_control(true);
    for sent in pair.advance_steps(Duration::from_secs(1), 4) {
        assert_eq!(sent, Vec::<Bytes>::new());
    }
    assert_eq!(pair.server.ending(), Some(&Ending::WeClosed(CloseCode::NORMAL)));
}

// ---- the client role (5.3) ----

#[test]
fn client_control_frames_are_masked_with_a_fresh_key_each() {
    // 5.3: "The masking key is a 32-bit value chosen at random by the client. When preparing a masked frame, the
    // client MUST pick a fresh masking key from the set of allowed 32-bit values."
    let mut pair = Pair::new();
    for payload in [b"a", b"b", b"c", b"d"] {
        pair.to_client.extend_from_slice(&server_frame(OpCode::Ping, payload));
    }
    let mut frames = Vec::new();
    while let Some(event) = pair.client.poll_message(pair.now, &pair.client_settings, &mut pair.to_client) {
        assert_eq!(event, Event::Control);
        frames.extend(pair.client_control(true));
    }
    pair.client.close(CloseCode::NORMAL, "");
    frames.extend(pair.client_control(true));
    assert_eq!(frames.len(), 5);

    for f in &frames {
        assert_eq!(f[1] & 0x80, 0x80, "mask bit set: {f:?}");
    }
    let keys: Vec<&[u8]> = frames.iter().map(|f| &f[2..6]).collect();
    for (i, a) in keys.iter().enumerate() {
        for b in &keys[i + 1..] {
            assert_ne!(a, b, "a key was reused");
        }
    }
    let mut expected: Vec<_> =
        [b"a", b"b", b"c", b"d"].iter().map(|p| Incoming::Pong(Bytes::from_static(*p))).collect();
    expected.push(Incoming::Close(Some(CloseFrame { code: CloseCode::NORMAL, reason: String::new() })));
    assert_eq!(decode_as(Role::Server, &frames), expected);
    // And the server core takes them as they are.
    assert_eq!(pair.server_reads(), []);
    assert_eq!(pair.server.ending(), Some(&Ending::PeerClosed(Some(CloseCode::NORMAL))));
}

#[test]
fn client_fails_on_a_masked_server_frame() {
    // 5.1: "A client MUST close a connection if it detects a masked frame."
    let mut pair = Pair::new();
    pair.to_client.extend_from_slice(&client_frame(true, OpCode::Text, b"masked"));
    assert_eq!(pair.client_reads(), []);
    assert_eq!(pair.client.ending(), Some(&Ending::Failed(ProtocolError::MaskedServerFrame)));
    let frames = pair.client_control(true);
    assert_eq!(
        decode_as(Role::Server, &frames),
        [Incoming::Close(Some(CloseFrame {
            code: CloseCode::PROTOCOL_ERROR,
            reason: ProtocolError::MaskedServerFrame.to_string()
        }))]
    );
}

// ---- messages ----

#[test]
fn message_split_across_many_inputs_is_delivered_once() {
    // A fragmented message with a ping between its fragments (5.4: "Control frames ... MAY be injected in the
    // middle of a fragmented message"), fed one byte per read.
    let mut bytes = client_frame(false, OpCode::Text, b"Hel");
    bytes.extend(client_frame(true, OpCode::Ping, b"p"));
    bytes.extend(client_frame(false, OpCode::Continuation, b"lo, "));
    bytes.extend(client_frame(true, OpCode::Continuation, "w\u{f6}rld".as_bytes()));
    let mut pair = Pair::new();
    let mut events = Vec::new();
    for (i, byte) in bytes.iter().enumerate() {
        pair.to_server.extend_from_slice(&[*byte]);
        let (got, _) = pair.server_pumps();
        events.extend(got);
        if (5..bytes.len() - 1).contains(&i) {
            assert!(pair.server.is_receiving(), "mid-message at byte {i}");
        }
    }
    assert_eq!(events, [Event::Control, text("Hello, w\u{f6}rld")]);
    assert!(!pair.server.is_receiving());
    assert_eq!(decode_as(Role::Client, &[pair.to_client.split().freeze()]), [Incoming::Pong(Bytes::from_static(b"p"))]);
}

#[test]
fn binary_message_is_delivered_as_binary() {
    let mut pair = Pair::new();
    pair.client_writes(true, OpCode::Binary, &[0, 0xFF, 0x80]);
    let events = pair.server_reads();
    assert_eq!(events, [Event::Message(Message::Binary(Bytes::from_static(&[0, 0xFF, 0x80])))]);
    let Event::Message(msg) = &events[0] else { unreachable!() };
    assert_eq!(msg.opcode(), OpCode::Binary);
    assert_eq!(&msg.payload()[..], [0, 0xFF, 0x80]);
}

#[test]
fn nothing_after_a_peer_close_that_crosses_ours_is_acted_on() {
    // 5.5.1 / 7.1.7: once the peer's close is in, what follows it is not processed, even when our own close was
    // queued first: a bad frame after it must not turn our close into a failure.
    let mut pair = Pair::new();
    pair.server.close(CloseCode::GOING_AWAY, "bye");
    pair.client_writes(true, OpCode::Close, &close_body(1000, ""));
    pair.to_server.extend_from_slice(&server_frame(OpCode::Text, b"unmasked"));
    assert_eq!(pair.server_reads(), []);
    assert!(pair.to_server.is_empty(), "the rest of the input is dropped");
    assert_eq!(pair.server.ending(), Some(&Ending::WeClosed(CloseCode::GOING_AWAY)));
    let frames = pair.server_control(true);
    assert_eq!(
        decode_as(Role::Client, &frames),
        [Incoming::Close(Some(CloseFrame { code: CloseCode::GOING_AWAY, reason: "bye".to_owned() }))]
    );
    assert!(pair.server.is_done());
}

#[test]
fn close_reason_is_truncated_to_fit_a_control_frame() {
    // 5.5: "All control frames MUST have a payload length of 125 bytes or less".
    let mut pair = Pair::new();
    pair.server.close(CloseCode::GOING_AWAY, &"x".repeat(300));
    let frames = pair.server_control(true);
    assert_eq!(frames[0].len(), 2 + 125);
    assert_eq!(pair.client_reads(), []);
    assert_eq!(pair.client.ending(), Some(&Ending::PeerClosed(Some(CloseCode::GOING_AWAY))));
}

#[test]
fn tighter_limits_apply_to_the_next_message_and_can_be_lifted_again() {
    // Used before authentication: a client that has not proven who it is may not make the server buffer much.
    let small = DecodeLimits { max_frame_size: 16, max_message_size: 16 };
    let mut pair = Pair::new();
    pair.server.set_limits(small);
    pair.client_writes(true, OpCode::Text, b"short");
    assert_eq!(pair.server_reads(), [text("short")]);
    pair.server.set_limits(LIMITS);
    let long = "a".repeat(100);
    pair.client_writes(true, OpCode::Text, long.as_bytes());
    assert_eq!(pair.server_reads(), [text(&long)], "lifted");
    pair.server.set_limits(small);
    pair.client_writes(true, OpCode::Text, long.as_bytes());
    let _ = pair.server_reads();
    let frames = pair.server_control(true);
    assert_eq!(frames.first().map(|f| (f[0], u16::from_be_bytes([f[2], f[3]]))), Some((0x88, 1009)));
}

// --- permessage-deflate (RFC 7692) ---

/// A client frame with RSV1 set (the "Per-Message Compressed" bit) on top of `client_frame`.
fn rsv1(mut frame: Vec<u8>) -> Vec<u8> {
    frame[0] |= 0x40;
    frame
}

fn deflated(payload: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    crate::protocol::deflate::Compressor::new(6, 15).compress(payload, &mut out);
    out
}

/// A server core with permessage-deflate negotiated, fed `input`; its events, and the close code it sends.
fn server_with_deflate(negotiated: bool, input: &[u8]) -> (Vec<Event>, Option<u16>) {
    let now = Instant::now();
    let s = settings(Role::Server, None, None);
    let mut conn = Connection::new(now, &s, 1);
    if negotiated {
        conn.set_deflate(crate::protocol::deflate::Agreement { server_window_bits: 15 });
    }
    let mut inflater = crate::protocol::deflate::Inflater::new();
    let mut buf = BytesMut::from(input);
    let mut events = Vec::new();
    while let Some(e) = conn.poll_message_inflating(now, &s, &mut buf, Some(&mut inflater)) {
        events.push(e);
    }
    let close = conn.poll_control(now, &s, true).map(|f| u16::from_be_bytes([f[2], f[3]]));
    (events, close)
}

#[test]
fn a_compressed_text_message_is_inflated_when_deflate_was_negotiated() {
    let frame = rsv1(client_frame(true, OpCode::Text, &deflated(b"Hello, deflate")));
    assert_eq!(server_with_deflate(true, &frame), (vec![text("Hello, deflate")], None));
}

#[test]
fn a_compressed_message_in_fragments_is_inflated_whole() {
    let body = deflated("fragmented ".repeat(50).as_bytes());
    let (a, b) = body.split_at(body.len() / 2);
    let mut input = rsv1(client_frame(false, OpCode::Text, a));
    input.extend(client_frame(true, OpCode::Continuation, b));
    assert_eq!(server_with_deflate(true, &input), (vec![text(&"fragmented ".repeat(50))], None));
}

#[test]
fn uncompressed_messages_still_pass_when_deflate_was_negotiated() {
    assert_eq!(server_with_deflate(true, &client_frame(true, OpCode::Text, b"plain")), (vec![text("plain")], None));
}

#[test]
fn rsv1_without_negotiation_fails_with_1002() {
    let frame = rsv1(client_frame(true, OpCode::Text, &deflated(b"x")));
    assert_eq!(server_with_deflate(false, &frame), (vec![], Some(1002)));
}

#[test]
fn rsv1_on_a_control_frame_or_a_continuation_fails_with_1002() {
    assert_eq!(server_with_deflate(true, &rsv1(client_frame(true, OpCode::Ping, b""))), (vec![], Some(1002)));
    let mut input = client_frame(false, OpCode::Text, b"a");
    input.extend(rsv1(client_frame(true, OpCode::Continuation, b"b")));
    assert_eq!(server_with_deflate(true, &input), (vec![], Some(1002)));
}

#[test]
fn rsv2_and_rsv3_stay_errors_with_deflate() {
    let mut frame = client_frame(true, OpCode::Text, b"x");
    frame[0] |= 0x20;
    assert_eq!(server_with_deflate(true, &frame), (vec![], Some(1002)));
}

#[test]
fn invalid_compressed_data_fails_with_1007() {
    let frame = rsv1(client_frame(true, OpCode::Binary, &[0xff, 0xff, 0xff]));
    assert_eq!(server_with_deflate(true, &frame), (vec![], Some(1007)));
}

#[test]
fn compressed_text_that_inflates_to_invalid_utf8_fails_with_1007() {
    let frame = rsv1(client_frame(true, OpCode::Text, &deflated(&[0xc3, 0x28])));
    assert_eq!(server_with_deflate(true, &frame), (vec![], Some(1007)));
}

#[test]
fn a_deflate_bomb_fails_with_1009_against_the_inflated_size() {
    // 8 MiB of zeros, about 8 KiB compressed: under max_message_size (4 MiB) on the wire, over it inflated.
    let body = deflated(&vec![0u8; 8 << 20]);
    assert!((body.len() as u64) < LIMITS.max_frame_size);
    let frame = rsv1(client_frame(true, OpCode::Binary, &body));
    assert_eq!(server_with_deflate(true, &frame), (vec![], Some(1009)));
}
