//! Topic-space limits across workers: `max_topics_per_worker` counts each worker's own topics (those with
//! local subscribers), and one `/ws` connection may create new topics only at `max_new_topics_per_second`.
mod support;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::{Duration, Instant};

use support::{connect, next_data, Server};
use tungstenite::Message;

/// Upgrades on `path` and returns the status, keeping the connection (and its subscription) in `keep`.
fn upgrade_status(server: &Server, keep: &mut Vec<TcpStream>, path: &str) -> u16 {
    let req = format!(
        "GET {path} HTTP/1.1\r\nHost: t\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
         Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n"
    );
    let mut s = TcpStream::connect(server.addr).expect("connect");
    s.set_read_timeout(Some(Duration::from_secs(5))).expect("timeout");
    s.write_all(req.as_bytes()).expect("write");
    let mut buf = [0u8; 512];
    let n = s.read(&mut buf).expect("read");
    let head = String::from_utf8_lossy(&buf[..n]).to_string();
    keep.push(s);
    head.split(' ').nth(1).and_then(|c| c.parse().ok()).expect("status")
}

/// The reply to one `/ws` request, as JSON.
fn reply(ws: &mut support::Client) -> serde_json::Value {
    match next_data(ws) {
        Message::Text(t) => serde_json::from_str(t.as_str()).expect("JSON"),
        other => panic!("expected text, got {other:?}"),
    }
}

/// With two workers and a cap of N, each worker holds N topics of its own: the topics another worker's
/// clients use (known here only from its interest announcements) do not use up this worker's room. Before
/// the fix the cap counted them, so the whole process held only N topics.
#[test]
fn each_worker_holds_its_own_cap_of_topics_whatever_the_others_hold() {
    const CAP: usize = 16;
    let cap = CAP.to_string();
    let server = Server::start(&["--workers", "2", "--max-topics-per-worker", &cap]);
    // 6 x CAP connections, each to its own topic, spread over the two workers by SO_REUSEPORT hashing: each
    // worker sees far more than CAP of them (all but certainly: a worker getting fewer than CAP of 96 has a
    // probability near 1e-11).
    let mut keep = Vec::new();
    let mut accepted = 0;
    let mut refused = 0;
    for i in 0..6 * CAP {
        match upgrade_status(&server, &mut keep, &format!("/sub/t{i}")) {
            101 => accepted += 1,
            503 => refused += 1,
            other => panic!("unexpected status {other}"),
        }
    }
    assert_eq!(accepted, 2 * CAP, "both workers fill up to the cap: {accepted} accepted, {refused} refused");
    for w in 0..2 {
        let held = server.wait_metric(&format!("herald_topics{{worker=\"{w}\"}}"), CAP as u64, Duration::from_secs(5));
        assert_eq!(held, CAP as u64, "worker {w} counts exactly its own topics");
    }
    let hits = "herald_limit_hits_total{limit=\"max_topics_per_worker\"}";
    assert_eq!(server.wait_metric(hits, refused as u64, Duration::from_secs(5)), refused as u64);
    // Each worker also knows the other's topics (for broadcast), beyond its own cap.
    let known = server.wait_metric("herald_topics_known", 4 * CAP as u64, Duration::from_secs(5));
    assert_eq!(known, 4 * CAP as u64, "each worker indexes its own topics and the other's");
}

/// A `/ws` connection may create `new_topics_burst` new topics at once and then `max_new_topics_per_second`;
/// past that, a subscribe to a topic the worker does not have yet gets `rate_limited` (counted), while
/// subscribing to a topic the worker already has is not limited.
#[test]
fn new_topics_past_the_per_connection_rate_are_refused_with_rate_limited() {
    let server = Server::start(&["--workers", "1", "--max-new-topics-per-second", "1", "--new-topics-burst", "3"]);
    let mut other = connect(&server.url("/ws"));
    other.send(Message::text(r#"{"type":"subscribe","topic":"shared","id":0}"#)).expect("send");
    assert_eq!(reply(&mut other)["type"], "ack");

    let mut ws = connect(&server.url("/ws"));
    let start = Instant::now();
    for i in 0..3 {
        ws.send(Message::text(format!(r#"{{"type":"subscribe","topic":"new{i}","id":{i}}}"#))).expect("send");
        assert_eq!(reply(&mut ws)["type"], "ack", "the burst covers new topic {i}");
    }
    let mut limited = 0;
    let mut acked = 0;
    for i in 3..9 {
        ws.send(Message::text(format!(r#"{{"type":"subscribe","topic":"new{i}","id":{i}}}"#))).expect("send");
        let r = reply(&mut ws);
        if r["type"] == "ack" {
            acked += 1;
        } else {
            assert_eq!(r["code"], "rate_limited", "{r}");
            assert_eq!(r["id"], i);
            limited += 1;
        }
    }
    // One token comes back per second: no more than that many of the six may have passed.
    let refilled = start.elapsed().as_secs() + 1;
    assert!(acked <= refilled, "{acked} new topics past the burst in {:?}", start.elapsed());
    assert!(limited > 0);
    ws.send(Message::text(r#"{"type":"subscribe","topic":"shared","id":"s"}"#)).expect("send");
    assert_eq!(reply(&mut ws)["type"], "ack", "a topic the worker already has is not a new one");
    let hits = "herald_limit_hits_total{limit=\"max_new_topics_per_second\"}";
    assert_eq!(server.wait_metric(hits, limited, Duration::from_secs(5)), limited, "every refusal is counted");
}
