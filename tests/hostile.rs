//! Hostile and broken clients. Each attack runs on the same worker as a well-behaved publisher and subscriber
//! streaming a numbered sequence alongside (the "control" streams): the attack must be answered or shed, and
//! the control subscriber must get every message, in order, without a stall.
mod support;

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::os::fd::AsRawFd;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use support::{client_frame, wait_until, RawWs, Server};

/// Longest a control message may take from publish to delivery while an attack runs. Normal latency on
/// loopback is well under a millisecond; the defects this suite guards against stalled a worker for seconds.
const STALL: Duration = Duration::from_secs(1);

/// What the control subscriber saw.
#[derive(Debug)]
struct ControlReport {
    sent: u64,
    received: u64,
    out_of_order: u64,
    worst_latency: Duration,
}

/// A publisher on `/pub/control` sending a numbered message every 2 ms and a raw subscriber on `/sub/control`
/// checking each one, both on their own threads until [`Control::finish`].
struct Control {
    stop: Arc<AtomicBool>,
    publisher: JoinHandle<u64>,
    subscriber: JoinHandle<(u64, u64, Duration)>,
}

impl Control {
    fn start(addr: SocketAddr) -> Control {
        let base = Instant::now();
        let stop = Arc::new(AtomicBool::new(false));
        let mut sub = RawWs::connect(addr, "/sub/control");
        sub.stream.set_read_timeout(Some(Duration::from_secs(15))).expect("timeout");
        let mut publisher = RawWs::connect(addr, "/pub/control");
        let stop_pub = stop.clone();
        let publisher = std::thread::spawn(move || {
            let mut seq = 0u64;
            // At least 50 (100 ms' worth), however quickly the attack is over.
            while seq < 50 || !stop_pub.load(Ordering::Relaxed) {
                seq += 1;
                let sent_at = base.elapsed().as_micros() as u64;
                let mut payload = seq.to_be_bytes().to_vec();
                payload.extend_from_slice(&sent_at.to_be_bytes());
                publisher.stream.write_all(&client_frame(0x82, &payload, [9, 8, 7, 6])).expect("control publish");
                std::thread::sleep(Duration::from_millis(2));
            }
            // The last one says how many there were.
            let mut payload = u64::MAX.to_be_bytes().to_vec();
            payload.extend_from_slice(&seq.to_be_bytes());
            publisher.stream.write_all(&client_frame(0x82, &payload, [9, 8, 7, 6])).expect("control publish");
            seq
        });
        let subscriber = std::thread::spawn(move || {
            let (mut received, mut out_of_order, mut worst) = (0u64, 0u64, Duration::ZERO);
            loop {
                let (b0, payload) = sub.read_frame();
                assert_eq!(b0, 0x82, "control messages are binary");
                let seq = u64::from_be_bytes(payload[..8].try_into().expect("seq"));
                let second = u64::from_be_bytes(payload[8..16].try_into().expect("time"));
                if seq == u64::MAX {
                    return (received, out_of_order, worst);
                }
                received += 1;
                if seq != received {
                    out_of_order += 1;
                }
                let latency = base.elapsed().saturating_sub(Duration::from_micros(second));
                worst = worst.max(latency);
            }
        });
        Control { stop, publisher, subscriber }
    }

    fn finish(self) -> ControlReport {
        self.stop.store(true, Ordering::Relaxed);
        let sent = self.publisher.join().expect("control publisher");
        let (received, out_of_order, worst_latency) = self.subscriber.join().expect("control subscriber");
        ControlReport { sent, received, out_of_order, worst_latency }
    }

    /// Finishes and asserts that the control streams were unharmed.
    fn assert_unharmed(self) {
        let report = self.finish();
        assert!(report.sent > 0, "{report:?}");
        assert_eq!(report.received, report.sent, "no control message is lost: {report:?}");
        assert_eq!(report.out_of_order, 0, "control messages stay in order: {report:?}");
        assert!(report.worst_latency < STALL, "the worker never stalls: {report:?}");
    }
}

/// `/healthz` answers within 2 s.
fn healthz_answers(addr: SocketAddr) -> bool {
    let Ok(mut s) = TcpStream::connect(addr) else { return false };
    s.set_read_timeout(Some(Duration::from_secs(2))).expect("timeout");
    if s.write_all(b"GET /healthz HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n").is_err() {
        return false;
    }
    let mut buf = Vec::new();
    let _ = s.read_to_end(&mut buf);
    buf.starts_with(b"HTTP/1.1 200")
}

fn setsockopt_int(s: &TcpStream, level: i32, name: i32, value: i32) {
    // SAFETY: setsockopt(2) on a descriptor this stream owns, with a pointer to a live i32 and its exact size.
    #[allow(unsafe_code)]
    let rc = unsafe {
        libc::setsockopt(
            s.as_raw_fd(),
            level,
            name,
            (&value as *const i32).cast(),
            std::mem::size_of::<i32>() as libc::socklen_t,
        )
    };
    assert_eq!(rc, 0, "setsockopt {level}/{name}");
}

/// Sends `bytes` and the FIN in the same TCP segment: with the socket corked, the data waits in the send
/// queue, and the shutdown sets FIN on that unsent segment and pushes it.
fn send_with_fin(s: &TcpStream, bytes: &[u8]) {
    setsockopt_int(s, libc::IPPROTO_TCP, libc::TCP_CORK, 1);
    (&*s).write_all(bytes).expect("write");
    s.shutdown(std::net::Shutdown::Write).expect("shutdown");
}

/// Sends `bytes`, then resets the connection at once (SO_LINGER with a zero timeout makes close send RST).
fn send_then_reset(s: TcpStream, bytes: &[u8]) {
    (&s).write_all(bytes).expect("write");
    let linger = libc::linger { l_onoff: 1, l_linger: 0 };
    // SAFETY: setsockopt(2) on a descriptor this stream owns, with a pointer to a live linger and its size.
    #[allow(unsafe_code)]
    let rc = unsafe {
        libc::setsockopt(
            s.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_LINGER,
            (&linger as *const libc::linger).cast(),
            std::mem::size_of::<libc::linger>() as libc::socklen_t,
        )
    };
    assert_eq!(rc, 0, "SO_LINGER");
    drop(s);
}

/// The control streams hold three connections (publisher, subscriber, and the scrape itself).
const CONTROL_CONNS: u64 = 3;

/// Within 3 s, every connection but the control streams' is released.
fn assert_only_the_control_connections_remain(server: &Server) {
    let released = wait_until(Duration::from_secs(3), || server.metric("herald_connections_open") == CONTROL_CONNS);
    assert!(released, "open connections: {}", server.metric("herald_connections_open"));
}

/// Defect 1 of the hardening issue: a client that sends part of a request head with the FIN in the same
/// segment, in a loop, must not keep a slot until `handshake_timeout`: each connection is released as soon as
/// its EOF is seen.
#[test]
fn a_partial_head_sent_with_the_fin_releases_the_slot_at_once() {
    let server = Server::start(&["--workers", "1", "--handshake-timeout", "60s"]);
    let control = Control::start(server.addr);
    for _ in 0..200 {
        let s = TcpStream::connect(server.addr).expect("connect");
        send_with_fin(&s, b"GET /sub/news HTTP/1.1\r\nHost: t\r\n");
    }
    assert_only_the_control_connections_remain(&server);
    control.assert_unharmed();
}

/// The same with a reset instead of a FIN.
#[test]
fn a_partial_head_followed_by_a_reset_releases_the_slot_at_once() {
    let server = Server::start(&["--workers", "1", "--handshake-timeout", "60s"]);
    let control = Control::start(server.addr);
    for _ in 0..200 {
        let s = TcpStream::connect(server.addr).expect("connect");
        send_then_reset(s, b"GET /sub/news HTTP/1.1\r\nHost: t\r\n");
    }
    assert_only_the_control_connections_remain(&server);
    control.assert_unharmed();
}

/// On `/sub`, a pong followed by the FIN in one segment releases the WebSocket at once, not at the next ping.
#[test]
fn a_pong_sent_with_the_fin_releases_the_websocket_at_once() {
    let server = Server::start(&["--workers", "1", "--ping-interval", "60s", "--idle-timeout", "120s"]);
    let control = Control::start(server.addr);
    for _ in 0..50 {
        let ws = RawWs::connect(server.addr, "/sub/news");
        send_with_fin(&ws.stream, &client_frame(0x8A, b"", [1, 2, 3, 4]));
    }
    assert_only_the_control_connections_remain(&server);
    control.assert_unharmed();
}

/// A WebSocket whose peer closes with a data frame and the FIN together is released, in every phase.
#[test]
fn a_message_sent_with_the_fin_releases_the_websocket_at_once() {
    let server = Server::start(&["--workers", "1"]);
    let control = Control::start(server.addr);
    for _ in 0..50 {
        let ws = RawWs::connect(server.addr, "/echo");
        send_with_fin(&ws.stream, &client_frame(0x81, b"bye", [1, 2, 3, 4]));
    }
    assert_only_the_control_connections_remain(&server);
    control.assert_unharmed();
}

/// Starts a client that sends pings as fast as it can and never reads; returns its stop flag and thread.
fn ping_flood(addr: SocketAddr, path: &str) -> (Arc<AtomicBool>, JoinHandle<u64>) {
    let ws = RawWs::connect(addr, path);
    setsockopt_int(&ws.stream, libc::SOL_SOCKET, libc::SO_RCVBUF, 4096);
    ws.stream.set_write_timeout(Some(Duration::from_millis(100))).expect("timeout");
    let stop = Arc::new(AtomicBool::new(false));
    let stop2 = stop.clone();
    let ping = client_frame(0x89, &[0x55; 125], [1, 2, 3, 4]);
    let mut batch = Vec::new();
    for _ in 0..64 {
        batch.extend_from_slice(&ping);
    }
    let thread = std::thread::spawn(move || {
        let mut stream = ws.stream;
        let mut sent = 0u64;
        while !stop2.load(Ordering::Relaxed) {
            match stream.write(&batch) {
                Ok(n) => sent += n as u64,
                Err(_) => std::thread::sleep(Duration::from_millis(5)),
            }
        }
        sent
    });
    (stop, thread)
}

/// Defect 2: a client that sends pings and never reads fills its socket; its pending pong must wait for
/// writability like any other byte, without the worker spinning or its flush list growing.
#[test]
fn a_ping_flood_from_a_client_that_never_reads_does_not_stall_the_worker() {
    let server = Server::start(&["--workers", "1", "--max-backpressure", "64KiB"]);
    let control = Control::start(server.addr);
    let (stop, flood) = ping_flood(server.addr, "/echo");
    std::thread::sleep(Duration::from_secs(2));
    assert!(healthz_answers(server.addr), "/healthz answers during the flood");
    let rss_before = server.rss_kib();
    std::thread::sleep(Duration::from_secs(1));
    let rss_after = server.rss_kib();
    assert!(rss_after < rss_before + 8 * 1024, "memory does not grow: {rss_before} -> {rss_after} KiB");
    stop.store(true, Ordering::Relaxed);
    let sent = flood.join().expect("flood");
    assert!(sent > 64 * 1024, "the flood filled the socket ({sent} bytes sent)");
    control.assert_unharmed();
}

/// Defect 2, from a well-behaved client: a slow subscriber under `slow_consumer = "drop"` whose queue is full
/// sends one keep-alive ping; the worker goes on serving everyone else.
#[test]
fn one_ping_from_a_slow_subscriber_with_a_full_queue_does_not_stall_the_worker() {
    let server = Server::start(&["--workers", "1", "--max-backpressure", "64KiB", "--slow-consumer", "drop"]);
    let control = Control::start(server.addr);
    let mut slow = RawWs::connect(server.addr, "/sub/flood");
    setsockopt_int(&slow.stream, libc::SOL_SOCKET, libc::SO_RCVBUF, 4096);
    let mut publisher = RawWs::connect(server.addr, "/pub/flood");
    let message = client_frame(0x82, &[0xAB; 1024], [5, 6, 7, 8]);
    let drops_before = server.metric("herald_backpressure_drops_total");
    for _ in 0..4096 {
        publisher.stream.write_all(&message).expect("publish");
    }
    let dropped =
        wait_until(Duration::from_secs(5), || server.metric("herald_backpressure_drops_total") > drops_before);
    assert!(dropped, "the slow subscriber's queue is full");
    slow.send_frame(0x89, b"keep-alive", true);
    std::thread::sleep(Duration::from_secs(1));
    assert!(healthz_answers(server.addr), "/healthz answers");
    control.assert_unharmed();
    drop(slow);
}

/// Reads HTTP responses (by `Content-Length`) until `count` have arrived; returns how many had status 200.
fn read_responses(stream: &mut TcpStream, count: usize) -> usize {
    let mut buf = Vec::new();
    let mut chunk = vec![0u8; 1 << 16];
    let (mut seen, mut ok, mut start) = (0, 0, 0);
    while seen < count {
        let head_end = loop {
            if let Some(p) = buf[start..].windows(4).position(|w| w == b"\r\n\r\n") {
                break start + p + 4;
            }
            let n = stream.read(&mut chunk).expect("read responses");
            assert!(n > 0, "closed after {seen} responses");
            buf.extend_from_slice(&chunk[..n]);
        };
        let head = String::from_utf8_lossy(&buf[start..head_end]).to_ascii_lowercase();
        let len: usize = head
            .lines()
            .find_map(|l| l.strip_prefix("content-length:"))
            .and_then(|v| v.trim().parse().ok())
            .expect("content-length");
        while buf.len() < head_end + len {
            let n = stream.read(&mut chunk).expect("read body");
            assert!(n > 0, "closed in a body");
            buf.extend_from_slice(&chunk[..n]);
        }
        if head.starts_with("http/1.1 200") {
            ok += 1;
        }
        seen += 1;
        start = head_end + len;
        if start > 1 << 20 {
            buf.drain(..start);
            start = 0;
        }
    }
    ok
}

/// Defect 3: pipelined requests from a client that never reads stop being served once its queued responses
/// pass `max_backpressure` (the request bytes wait in the socket), and every one is answered once it reads.
#[test]
fn pipelined_requests_from_a_client_that_never_reads_are_bounded_by_max_backpressure() {
    let cap = 256 * 1024;
    let server = Server::start(&["--workers", "1", "--max-backpressure", "256KiB"]);
    let control = Control::start(server.addr);
    let rss_before = server.rss_kib();
    let requests = 5000;
    // 5,000 responses of about 6 KiB: far more than the socket buffers of both ends hold.
    let mut client = TcpStream::connect(server.addr).expect("connect");
    let pipelined = b"GET /metrics HTTP/1.1\r\nHost: t\r\n\r\n".repeat(requests);
    let writer = {
        let mut w = client.try_clone().expect("clone");
        std::thread::spawn(move || w.write_all(&pipelined).is_ok())
    };
    std::thread::sleep(Duration::from_secs(2));
    let queued = server.metric("herald_outbox_bytes");
    let rss_after = server.rss_kib();
    assert!(queued <= 3 * cap as u64, "queued responses stay near the cap: {queued} bytes");
    assert!(rss_after < rss_before + 24 * 1024, "memory stays bounded: {rss_before} -> {rss_after} KiB");
    assert!(server.metric("herald_read_pauses_total") > 0, "the pause is counted");
    control.assert_unharmed();
    client.set_read_timeout(Some(Duration::from_secs(20))).expect("timeout");
    assert_eq!(read_responses(&mut client, requests), requests, "every request is answered once the client reads");
    assert!(writer.join().expect("writer"), "the client could send everything once it read");
}

/// Slowloris: clients trickling a request head byte by byte each hold only what they sent, not a read buffer
/// (2,000 of them once held 57 MB), and are dropped at `handshake_timeout` with 408.
#[test]
fn trickling_request_heads_hold_only_what_they_sent() {
    let server = Server::start(&["--workers", "1", "--handshake-timeout", "4s"]);
    let control = Control::start(server.addr);
    let clients = 500u64;
    let mut trickling: Vec<TcpStream> = (0..clients)
        .map(|_| {
            let mut s = TcpStream::connect(server.addr).expect("connect");
            s.write_all(b"GET /sub/news HTTP/1.1\r\nX-Pad: ").expect("write");
            s
        })
        .collect();
    for round in 0..5 {
        for s in &mut trickling {
            s.write_all(&[b'a' + round]).expect("trickle");
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    std::thread::sleep(Duration::from_millis(200));
    let held = server.metric("herald_receive_buffer_bytes");
    assert!(held <= clients * 256, "{clients} partial heads hold {held} bytes");
    control.assert_unharmed();
    let mut first = trickling.swap_remove(0);
    first.set_read_timeout(Some(Duration::from_secs(10))).expect("timeout");
    let mut answer = Vec::new();
    let _ = first.read_to_end(&mut answer);
    assert!(answer.starts_with(b"HTTP/1.1 408"), "{}", String::from_utf8_lossy(&answer));
}

/// Churn after the upgrade: WebSockets that subscribe and vanish with a reset are released at once.
#[test]
fn websockets_that_reset_after_the_upgrade_are_released_at_once() {
    let server = Server::start(&["--workers", "1"]);
    let control = Control::start(server.addr);
    for i in 0..100 {
        let ws = RawWs::connect(server.addr, &format!("/sub/churn{}", i % 10));
        send_then_reset(ws.stream, &client_frame(0x81, b"last words", [1, 2, 3, 4]));
    }
    assert_only_the_control_connections_remain(&server);
    assert!(
        wait_until(Duration::from_secs(2), || server.metric("herald_subscriptions") == 1),
        "their subscriptions are gone (the control subscriber's remains)"
    );
    control.assert_unharmed();
}

/// Partial messages: publishers that each send most of a large message and stall cannot make the worker hold
/// more than `max_receive_memory`; the largest holders are closed with 1008 and everyone else carries on.
#[test]
fn stalled_partial_messages_are_bounded_by_the_receive_budget() {
    let server = Server::start(&["--workers", "1", "--max-message-size", "64KiB", "--max-receive-memory", "1MiB"]);
    let control = Control::start(server.addr);
    let frame = client_frame(0x82, &vec![7u8; 60 * 1024], [1, 2, 3, 4]);
    let mut stalled: Vec<RawWs> = (0..40)
        .map(|_| {
            let mut ws = RawWs::connect(server.addr, "/pub/partial");
            ws.stream.write_all(&frame[..frame.len() - 1024]).expect("write");
            ws
        })
        .collect();
    std::thread::sleep(Duration::from_millis(500));
    let held = server.metric("herald_receive_buffer_bytes");
    assert!(held <= 1024 * 1024, "the worker holds {held} bytes of partial messages");
    assert!(server.metric("herald_limit_hits_total{limit=\"max_receive_memory\"}") > 0);
    let closed = stalled
        .iter_mut()
        .map(|ws| close_code_within(ws, Duration::from_millis(200)))
        .filter(|c| *c == Some(1008))
        .count();
    assert!(closed >= 20, "{closed} of 40 were closed with 1008");
    control.assert_unharmed();
}

/// The code of a close frame that arrives within `timeout`, if one does (nothing else is expected).
fn close_code_within(ws: &mut RawWs, timeout: Duration) -> Option<u16> {
    ws.stream.set_read_timeout(Some(timeout)).expect("timeout");
    let mut buf = [0u8; 256];
    match ws.stream.read(&mut buf) {
        Ok(n) if n >= 4 && buf[0] == 0x88 => Some(u16::from_be_bytes([buf[2], buf[3]])),
        _ => None,
    }
}

/// Topic creation: one `/ws` client subscribing to new topics as fast as it can gets `rate_limited` past its
/// burst, holds at most `max_subscriptions`, and leaves room for everyone else's topics.
#[test]
fn a_client_creating_topics_as_fast_as_it_can_is_rate_limited() {
    let server = Server::start(&[
        "--workers",
        "1",
        "--max-topics-per-worker",
        "1000",
        "--max-new-topics-per-second",
        "20",
        "--new-topics-burst",
        "20",
    ]);
    let control = Control::start(server.addr);
    let mut ws = support::connect(&server.url("/ws"));
    for i in 0..500 {
        let req = format!(r#"{{"type":"subscribe","topic":"flood{i}","id":{i}}}"#);
        ws.send(tungstenite::Message::text(req)).expect("send");
    }
    let (mut acked, mut limited) = (0, 0);
    for _ in 0..500 {
        let reply: serde_json::Value = match support::next_data(&mut ws) {
            tungstenite::Message::Text(t) => serde_json::from_str(t.as_str()).expect("JSON"),
            other => panic!("expected text, got {other:?}"),
        };
        match (reply["type"].as_str(), reply["code"].as_str()) {
            (Some("ack"), _) => acked += 1,
            (Some("error"), Some("rate_limited")) => limited += 1,
            other => panic!("unexpected reply {other:?}: {reply}"),
        }
    }
    assert!(acked <= 128, "{acked} topics created in one burst");
    assert!(limited >= 300, "{limited} refused with rate_limited");
    assert!(server.metric("herald_topics") <= 130, "the worker's topics stay bounded");
    let mut other = support::connect(&server.url("/ws"));
    other.send(tungstenite::Message::text(r#"{"type":"subscribe","topic":"mine","id":1}"#)).expect("send");
    let reply = support::next_data(&mut other);
    assert!(reply.to_text().expect("text").contains("\"ack\""), "another client still creates topics: {reply:?}");
    control.assert_unharmed();
}
