//! Keepalive and idle timers after the upgrade: a quiet connection is pinged every `ping_interval`; one that
//! sends nothing back (not even a pong) for `idle_timeout` is closed with 1001 "idle timeout"; one that
//! answers stays open. A server-initiated close waits for the peer's close frame (up to `close_timeout`) and
//! then closes TCP.
mod support;

use std::io::{ErrorKind, Read};
use std::time::{Duration, Instant};

use support::{connect, next_data, RawWs, Server};
use tungstenite::Message;

/// Short timers so that the whole file runs in about two seconds.
const TIMERS: [&str; 6] = ["--workers", "1", "--ping-interval", "200ms", "--idle-timeout", "700ms"];

/// An upgraded `/echo` connection that never answers anything on its own.
fn silent_client(server: &Server) -> RawWs {
    let raw = RawWs::connect(server.addr, "/echo");
    raw.stream.set_read_timeout(Some(Duration::from_secs(3))).expect("timeout");
    raw
}

/// Reads frames until the server's close frame; returns (pings seen before it, close payload, when it came).
fn read_until_close(raw: &mut RawWs) -> (usize, Vec<u8>, Instant) {
    let mut pings = 0;
    loop {
        let (b0, payload) = raw.read_frame();
        match b0 {
            0x89 => pings += 1,
            0x88 => return (pings, payload, Instant::now()),
            other => panic!("unexpected frame {other:#04x} ({} bytes) before the close", payload.len()),
        }
    }
}

/// Whether the connection stays silent (no bytes, no EOF) for `duration`. Bytes arriving are a failure (the
/// callers expect nothing: no frame after a close frame, no ping on a busy connection).
fn stays_silent_for(raw: &mut RawWs, duration: Duration) -> bool {
    assert!(raw.buf.is_empty(), "unexpected buffered bytes: {:?}", raw.buf);
    raw.stream.set_read_timeout(Some(duration)).expect("timeout");
    let mut chunk = [0u8; 256];
    match raw.stream.read(&mut chunk) {
        Ok(0) => false,
        Ok(n) => panic!("{n} unexpected bytes: {:?}", &chunk[..n]),
        Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => true,
        Err(_) => false,
    }
}

/// RFC 6455 section 5.5.2: "A Ping frame MAY be sent after the connection is established"; section 7.4.1:
/// 1001 "indicates that an endpoint is 'going away'". A peer that never answers the pings is closed once
/// `idle_timeout` passes without input.
#[test]
fn unanswered_pings_end_in_close_1001_idle_timeout() {
    let server = Server::start(&TIMERS);
    let mut raw = silent_client(&server);
    let start = Instant::now();
    let (pings, payload, at) = read_until_close(&mut raw);
    let elapsed = at - start;
    // Pings at about 200, 400 and 600 ms (timer resolution 100 ms): at least two before the 700 ms deadline.
    assert!(pings >= 2, "only {pings} ping(s) in {elapsed:?}");
    let mut expected = 1001u16.to_be_bytes().to_vec();
    expected.extend_from_slice(b"idle timeout");
    assert_eq!(payload, expected, "close payload {:?}", String::from_utf8_lossy(&payload));
    assert!(elapsed >= Duration::from_millis(650), "closed after {elapsed:?}, before idle_timeout");
    assert!(elapsed < Duration::from_millis(1500), "closed only after {elapsed:?}");
    assert_eq!(server.metric("herald_close_codes_sent_total{code=\"1001\"}"), 1);
}

/// RFC 6455 section 5.5.2: "Upon receipt of a Ping frame, an endpoint MUST send a Pong frame in response";
/// a pong is input, so a peer that answers its pings is never idle. tungstenite answers pings on its next
/// `read`.
#[test]
fn answered_pings_keep_connection_open_past_idle_timeout() {
    let server = Server::start(&TIMERS);
    let mut ws = connect(&server.url("/echo"));
    ws.get_mut().set_read_timeout(Some(Duration::from_millis(50))).expect("timeout");
    let start = Instant::now();
    let mut pings = 0;
    while start.elapsed() < Duration::from_millis(1500) {
        match ws.read() {
            Ok(Message::Ping(_)) => pings += 1,
            Ok(other) => panic!("unexpected {other:?} after {:?}", start.elapsed()),
            Err(tungstenite::Error::Io(e)) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {}
            Err(e) => panic!("connection failed after {:?}: {e}", start.elapsed()),
        }
    }
    assert!(pings >= 4, "only {pings} pings in 1.5 s with a 200 ms interval");
    ws.get_mut().set_read_timeout(Some(Duration::from_secs(2))).expect("timeout");
    ws.send(Message::text("still open")).expect("send");
    assert_eq!(next_data(&mut ws), Message::text("still open"));
    assert_eq!(server.metric("herald_close_codes_sent_total{code=\"1001\"}"), 0);
}

/// Pings go only to an otherwise quiet connection, and data from the peer counts as activity: a client that
/// sends a message every 100 ms (under the 200 ms ping interval) and never answers anything gets its echoes
/// and no ping, and is not closed as idle.
#[test]
fn client_data_resets_ping_and_idle_timers() {
    let server = Server::start(&TIMERS);
    let mut raw = silent_client(&server);
    let start = Instant::now();
    let mut n = 0;
    while start.elapsed() < Duration::from_millis(1200) {
        let msg = format!("tick {n}");
        raw.send_frame(0x81, msg.as_bytes(), true);
        assert_eq!(raw.read_frame(), (0x81, msg.into_bytes()), "after {:?}", start.elapsed());
        n += 1;
        std::thread::sleep(Duration::from_millis(100));
    }
    // About 120 ms after the last message: still under the ping interval, so nothing may be waiting.
    assert!(stays_silent_for(&mut raw, Duration::from_millis(20)), "closed while sending every 100 ms");
}

/// RFC 6455 section 7.1.1: "the server SHOULD close the underlying TCP connection first" once the close
/// handshake is complete, i.e. after "sending and receiving a Close message"; section 5.5.1: after sending a
/// Close frame, the endpoint waits for the peer's. The server does not drop the connection right after its
/// own close frame, and does close it once the client's close arrives.
#[test]
fn server_close_waits_for_client_close_then_closes_tcp() {
    let server = Server::start(&TIMERS);
    let mut raw = silent_client(&server);
    let (_, payload, _) = read_until_close(&mut raw);
    assert_eq!(payload.get(..2), Some(&1001u16.to_be_bytes()[..]));
    assert!(stays_silent_for(&mut raw, Duration::from_millis(300)), "TCP closed before the client's close");
    let sent = Instant::now();
    raw.send_frame(0x88, &1001u16.to_be_bytes(), true);
    assert!(raw.closed_within(Duration::from_secs(1)), "TCP still open 1 s after the client's close frame");
    let took = sent.elapsed();
    assert!(took < Duration::from_millis(250), "TCP closed {took:?} after the client's close frame");
}

/// `close_timeout` bounds the wait: a peer that never answers the server's close is dropped after it.
#[test]
fn unanswered_server_close_is_dropped_after_close_timeout() {
    let mut args = TIMERS.to_vec();
    args.extend(["--close-timeout", "300ms"]);
    let server = Server::start(&args);
    let mut raw = silent_client(&server);
    let (_, payload, at) = read_until_close(&mut raw);
    assert_eq!(payload.get(..2), Some(&1001u16.to_be_bytes()[..]));
    assert!(raw.closed_within(Duration::from_millis(1500)), "TCP still open 1.5 s after an unanswered close");
    let waited = at.elapsed();
    assert!(waited >= Duration::from_millis(250), "dropped after {waited:?}, before close_timeout");
}

/// The timer looks at a connection when one of its deadlines is due, not at every connection on every tick:
/// 200 upgraded connections whose next deadline (a ping every 5 s) is far off cost the timer nothing in a
/// second (a sweep of all of them every 100 ms would be 2000 looks), while one that never finishes its
/// request is still closed at `handshake_timeout`. (Each upgraded connection is looked at once when its
/// handshake deadline, which the upgrade made moot, comes up: the test waits that out first.)
#[test]
fn idle_connections_cost_the_timer_nothing_until_a_deadline_is_due() {
    let server = Server::start(&["--workers", "1", "--ping-interval", "5s", "--handshake-timeout", "500ms"]);
    let idle: Vec<RawWs> = (0..200).map(|_| RawWs::connect(server.addr, "/echo")).collect();
    std::thread::sleep(Duration::from_millis(800));
    let before = server.metric("herald_timer_checks_total");
    std::thread::sleep(Duration::from_secs(1));
    let looked = server.metric("herald_timer_checks_total") - before;
    assert!(looked < 20, "the timer looked at idle connections {looked} times in a second");
    let mut stalled = std::net::TcpStream::connect(server.addr).expect("connect");
    std::io::Write::write_all(&mut stalled, b"GET /echo HTTP/1.1\r\n").expect("half a request");
    stalled.set_read_timeout(Some(Duration::from_secs(3))).expect("timeout");
    let started = Instant::now();
    let mut answer = Vec::new();
    let _ = stalled.read_to_end(&mut answer);
    assert!(answer.starts_with(b"HTTP/1.1 408"), "{}", String::from_utf8_lossy(&answer));
    assert!(started.elapsed() < Duration::from_millis(1500), "closed after {:?}", started.elapsed());
    assert!(server.metric("herald_timer_checks_total") > before + looked, "the stalled request was looked at");
    drop(idle);
}
