//! Per-worker and per-connection limits not covered elsewhere: the topic cap, and the receive memory budget.
mod support;

use std::time::Duration;

use support::{client_frame, connect, next_data, raw_exchange, RawWs, Server};
use tungstenite::Message;

/// Upgrades on `path` and returns the status, keeping the connection (and so its subscription) in `keep`.
fn upgrade_status(server: &Server, keep: &mut Vec<std::net::TcpStream>, path: &str) -> u16 {
    let req = format!(
        "GET {path} HTTP/1.1\r\nHost: t\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
         Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n"
    );
    let mut s = std::net::TcpStream::connect(server.addr).expect("connect");
    s.set_read_timeout(Some(std::time::Duration::from_secs(5))).expect("timeout");
    std::io::Write::write_all(&mut s, req.as_bytes()).expect("write");
    let mut buf = [0u8; 512];
    let n = std::io::Read::read(&mut s, &mut buf).expect("read");
    let head = String::from_utf8_lossy(&buf[..n]).to_string();
    keep.push(s);
    head.split(' ').nth(1).and_then(|c| c.parse().ok()).expect("status")
}

/// `max_topics_per_worker` bounds the topic index: a subscription to a new topic past it is refused (503
/// before an upgrade, `too_many_topics` on `/ws`), while existing topics still take subscribers; the hit is
/// counted.
#[test]
fn topics_past_the_per_worker_cap_are_refused_and_counted() {
    let server = Server::start(&["--workers", "1", "--max-topics-per-worker", "2"]);
    let mut keep = Vec::new();
    assert_eq!(upgrade_status(&server, &mut keep, "/sub/a"), 101);
    assert_eq!(upgrade_status(&server, &mut keep, "/sub/b"), 101);
    assert_eq!(upgrade_status(&server, &mut keep, "/sub/c"), 503, "a third topic is refused");
    assert_eq!(upgrade_status(&server, &mut keep, "/sub/a"), 101, "an existing topic takes more subscribers");

    let mut ws = connect(&server.url("/ws"));
    ws.send(Message::text(r#"{"type":"subscribe","topic":"d","id":7}"#)).expect("send");
    let reply: serde_json::Value = match next_data(&mut ws) {
        Message::Text(t) => serde_json::from_str(t.as_str()).expect("JSON"),
        other => panic!("expected text, got {other:?}"),
    };
    assert_eq!(reply["type"], "error");
    assert_eq!(reply["code"], "too_many_topics");
    assert_eq!(reply["id"], 7);
    assert_eq!(server.metric("herald_limit_hits_total{limit=\"max_topics_per_worker\"}"), 2);
    let (status, _, _) = raw_exchange(server.addr, b"GET /healthz HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n");
    assert_eq!(status, 200, "the server keeps serving");
}

/// `max_receive_memory` bounds what one worker holds for partly received messages across all its
/// connections: clients that each stay under `max_message_size` but together pass the budget lose the
/// connections holding the most (close 1008, counted), and the others finish their messages normally.
#[test]
fn half_sent_messages_past_the_worker_budget_close_the_largest_holders() {
    let server = Server::start(&["--workers", "1", "--max-message-size", "64KiB", "--max-receive-memory", "256KiB"]);
    let payload = vec![0x42u8; 60 * 1024];
    let frame = client_frame(0x82, &payload, [1, 2, 3, 4]);
    let head_len = frame.len() - payload.len();
    let cut = head_len + 50 * 1024; // each client sends 50 KiB of its 60 KiB message, then waits
    let mut clients: Vec<RawWs> = (0..8).map(|_| RawWs::connect(server.addr, "/echo")).collect();
    for ws in &mut clients {
        std::io::Write::write_all(&mut ws.stream, &frame[..cut]).expect("write");
        std::thread::sleep(Duration::from_millis(20));
    }
    std::thread::sleep(Duration::from_millis(300));
    let mut closed = 0;
    let mut open = Vec::new();
    for mut ws in clients {
        ws.stream.set_read_timeout(Some(Duration::from_millis(300))).expect("timeout");
        let mut byte = [0u8; 1];
        match std::io::Read::read(&mut ws.stream, &mut byte) {
            Err(e) if matches!(e.kind(), std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut) => {
                open.push(ws)
            }
            _ => {
                ws.buf.push(byte[0]);
                ws.stream.set_read_timeout(Some(Duration::from_secs(5))).expect("timeout");
                assert_eq!(ws.read_close_code(), Some(1008), "closed for the budget, with 1008");
                closed += 1;
            }
        }
    }
    // 8 x 50 KiB cannot fit in 256 KiB; each connection holds at most about 100 KiB, so at least 2 stay.
    assert!((3..=6).contains(&closed), "{closed} of 8 closed");
    assert_eq!(server.metric("herald_limit_hits_total{limit=\"max_receive_memory\"}"), closed as u64);
    for mut ws in open {
        std::io::Write::write_all(&mut ws.stream, &frame[cut..]).expect("finish the message");
        ws.stream.set_read_timeout(Some(Duration::from_secs(5))).expect("timeout");
        let (b0, echoed) = ws.read_frame();
        assert_eq!((b0, echoed.len()), (0x82, payload.len()), "a survivor's message completes and is echoed");
    }
    let mut fresh = connect(&server.url("/echo"));
    fresh.send(Message::text("still serving")).expect("send");
    assert_eq!(next_data(&mut fresh), Message::text("still serving"));
}

/// The same budget covers request bodies still arriving: the largest holders get 503 before anything is
/// published.
#[test]
fn half_sent_post_bodies_past_the_worker_budget_get_503() {
    let server = Server::start(&["--workers", "1", "--max-message-size", "64KiB", "--max-receive-memory", "256KiB"]);
    let head = "POST /publish/t HTTP/1.1\r\nHost: t\r\nContent-Type: text/plain\r\nContent-Length: 61440\r\n\r\n";
    let body_part = vec![b'x'; 50 * 1024];
    let mut clients: Vec<std::net::TcpStream> = (0..8)
        .map(|_| {
            let mut s = std::net::TcpStream::connect(server.addr).expect("connect");
            std::io::Write::write_all(&mut s, head.as_bytes()).expect("head");
            std::io::Write::write_all(&mut s, &body_part).expect("body");
            std::thread::sleep(Duration::from_millis(20));
            s
        })
        .collect();
    std::thread::sleep(Duration::from_millis(300));
    let mut refused = 0;
    for s in &mut clients {
        s.set_read_timeout(Some(Duration::from_millis(300))).expect("timeout");
        let mut buf = [0u8; 256];
        if let Ok(n) = std::io::Read::read(s, &mut buf) {
            if n > 0 {
                let text = String::from_utf8_lossy(&buf[..n]);
                assert!(text.starts_with("HTTP/1.1 503") && text.contains("receive budget exceeded"), "{text}");
                refused += 1;
            }
        }
    }
    assert!((2..=6).contains(&refused), "{refused} of 8 refused");
    assert_eq!(server.metric("herald_limit_hits_total{limit=\"max_receive_memory\"}"), refused as u64);
    assert_eq!(server.metric("herald_publishes_total"), 0, "nothing half-received was published");
}

/// The worker's pool of spare read buffers grows under a burst (here 300 clients each holding half of an
/// 8 KiB POST body) and shrinks back to its idle size once the buffers go unused, so memory comes back after
/// load.
#[test]
fn the_read_buffer_pool_shrinks_back_after_a_burst() {
    let server = Server::start(&["--workers", "1"]);
    let body = vec![b'x'; 8192];
    let mut request =
        b"POST /publish/burst HTTP/1.1\r\nHost: t\r\nContent-Type: text/plain\r\nContent-Length: 8192\r\n\r\n".to_vec();
    request.extend_from_slice(&body);
    let half = request.len() / 2;
    let mut clients: Vec<std::net::TcpStream> = (0..300)
        .map(|_| {
            let mut s = std::net::TcpStream::connect(server.addr).expect("connect");
            s.set_read_timeout(Some(Duration::from_secs(5))).expect("timeout");
            std::io::Write::write_all(&mut s, &request[..half]).expect("write");
            s
        })
        .collect();
    std::thread::sleep(Duration::from_millis(300));
    for s in &mut clients {
        std::io::Write::write_all(s, &request[half..]).expect("write");
    }
    for s in &mut clients {
        let head = support::read_head(s);
        assert!(head.starts_with(b"HTTP/1.1 200"), "{}", String::from_utf8_lossy(&head));
    }
    let pooled = server.wait_metric("herald_read_buffers_pooled", 256, Duration::from_secs(2));
    assert_eq!(pooled, 256, "the burst's buffers are kept for reuse, up to the pool's bound");
    let idle = server.wait_metric("herald_read_buffers_pooled", 16, Duration::from_secs(15));
    assert_eq!(idle, 16, "unused spares are freed down to the idle size");
}
