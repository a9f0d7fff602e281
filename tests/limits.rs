//! Per-worker and per-connection limits not covered elsewhere: the topic cap.
mod support;

use support::{connect, next_data, raw_exchange, Server};
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
