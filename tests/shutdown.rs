//! Graceful shutdown on SIGTERM: every WebSocket gets close 1001 after what was already queued for it, no new
//! connection is upgraded, and the process exits with status 0 as soon as its clients are gone.
mod support;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::{Duration, Instant};

use serde_json::{json, Value};
use support::{connect, expect_close, next_data, Client, HttpConn, Server};
use tungstenite::Message;

/// 5 tungstenite `/sub/{topic}` clients and one `/ws` client subscribed to `topic` (acked).
fn clients(server: &Server, topic: &str) -> (Vec<Client>, Client) {
    let subs = (0..5).map(|_| connect(&server.url(&format!("/sub/{topic}")))).collect();
    let mut ws = connect(&server.url("/ws"));
    ws.send(Message::text(format!(r#"{{"type":"subscribe","topic":"{topic}","id":1}}"#))).expect("send");
    assert_eq!(json_of(next_data(&mut ws)), json!({"type":"ack","id":1}));
    (subs, ws)
}

fn json_of(msg: Message) -> Value {
    match msg {
        Message::Text(t) => serde_json::from_str(t.as_str()).expect("JSON"),
        other => panic!("expected text, got {other:?}"),
    }
}

/// Tries an upgrade on a fresh connection; returns the first line of the answer, or why there was none.
fn try_upgrade(server: &Server) -> String {
    let mut s = match TcpStream::connect(server.addr) {
        Ok(s) => s,
        Err(e) => return format!("connect failed: {e}"),
    };
    s.set_read_timeout(Some(Duration::from_secs(5))).expect("timeout");
    let req = "GET /sub/t HTTP/1.1\r\nHost: test\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
               Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n";
    if let Err(e) = s.write_all(req.as_bytes()) {
        return format!("write failed: {e}");
    }
    let mut buf = Vec::new();
    match s.read_to_end(&mut buf) {
        Ok(_) if buf.is_empty() => "closed without an answer".to_owned(),
        Err(e) if buf.is_empty() => format!("read failed: {e}"),
        _ => String::from_utf8_lossy(&buf).lines().next().unwrap_or_default().to_owned(),
    }
}

fn close_code(ws: &mut Client) -> u16 {
    u16::from(expect_close(ws).0)
}

#[test]
fn sigterm_closes_every_websocket_with_1001_and_exits_zero() {
    // The drain may take up to 30 s; exiting within a few shows it ends when the clients are gone.
    let mut server = Server::start(&["--workers", "2", "--shutdown-timeout", "30s"]);
    let (mut subs, mut ws) = clients(&server, "t");
    let signalled = Instant::now();
    server.signal(libc::SIGTERM);
    for (i, sub) in subs.iter_mut().enumerate() {
        assert_eq!(close_code(sub), 1001, "/sub client {i}");
    }
    assert_eq!(close_code(&mut ws), 1001, "/ws client");
    // tungstenite has answered each close; hanging up ends each connection.
    drop(subs);
    drop(ws);
    let status = server.wait_exit(Duration::from_secs(5)).expect("herald still running 5 s after SIGTERM");
    assert_eq!(status.code(), Some(0), "exit status {status}");
    eprintln!("exited {:?} after SIGTERM", signalled.elapsed());
}

#[test]
fn no_connection_is_upgraded_after_sigterm() {
    let mut server = Server::start(&["--workers", "2", "--shutdown-timeout", "30s"]);
    let (mut subs, ws) = clients(&server, "t");
    server.signal(libc::SIGTERM);
    // A 1001 shows the shutdown has begun.
    assert_eq!(close_code(&mut subs[0]), 1001);
    for attempt in 0..5 {
        let answer = try_upgrade(&server);
        eprintln!("upgrade attempt {attempt} after SIGTERM: {answer}");
        assert!(!answer.starts_with("HTTP/1.1 101"), "upgraded after SIGTERM: {answer}");
    }
    drop(subs);
    drop(ws);
    let status = server.wait_exit(Duration::from_secs(5)).expect("herald still running 5 s after SIGTERM");
    assert_eq!(status.code(), Some(0));
    assert!(try_upgrade(&server).starts_with("connect failed"), "nothing listens once herald has exited");
}

/// Messages published before the signal, still queued on the server because their subscribers have not read
/// them yet, are all delivered before the 1001 close.
#[test]
fn messages_queued_before_sigterm_are_delivered_before_the_1001_close() {
    const COUNT: usize = 128;
    const SIZE: usize = 32 * 1024; // 4 MiB per subscriber: more than the socket buffers hold
    let mut server = Server::start(&["--workers", "2", "--shutdown-timeout", "30s", "--max-backpressure", "64MiB"]);
    let (mut subs, mut ws) = clients(&server, "q");
    // One keep-alive connection: one worker publishes everything, and each reply comes after the message has
    // been queued for that worker's subscribers and handed to the other worker.
    let mut http = HttpConn::open(server.addr);
    let probe = |http: &mut HttpConn| {
        let (status, _, body) = http.request("POST", "/publish/q", &[("Content-Type", "text/plain")], b"probe");
        assert_eq!(status, 200);
        serde_json::from_slice::<Value>(&body).expect("JSON reply")["subscribers"].as_u64().expect("count")
    };
    let mut probes = 1;
    while probe(&mut http) != 6 {
        probes += 1;
        assert!(probes < 2000, "the publishing worker never counted 6 subscribers");
        std::thread::sleep(Duration::from_millis(5));
    }
    let message = |i: usize| format!("{i:06}:{}", "m".repeat(SIZE - 7));
    for i in 0..COUNT {
        let (status, _, body) =
            http.request("POST", "/publish/q", &[("Content-Type", "text/plain")], message(i).as_bytes());
        assert_eq!(status, 200);
        assert_eq!(serde_json::from_slice::<Value>(&body).expect("JSON")["subscribers"], 6);
    }
    drop(http);
    server.signal(libc::SIGTERM);

    let signalled = Instant::now();
    for (s, sub) in subs.iter_mut().enumerate() {
        let mut got = 0;
        loop {
            match sub.read().unwrap_or_else(|e| panic!("/sub client {s} after {got} messages: {e}")) {
                Message::Text(t) if t.as_str() == "probe" => {}
                Message::Text(t) => {
                    assert!(t.as_str() == message(got), "/sub client {s}: message {got} wrong or out of order");
                    got += 1;
                }
                Message::Close(frame) => {
                    let code = frame.map(|f| u16::from(f.code));
                    assert_eq!((got, code), (COUNT, Some(1001)), "/sub client {s}: messages before the close");
                    break;
                }
                other => panic!("/sub client {s}: unexpected {other:?}"),
            }
        }
    }
    let mut got = 0;
    loop {
        match ws.read().unwrap_or_else(|e| panic!("/ws client after {got} messages: {e}")) {
            Message::Text(t) => {
                let v: Value = serde_json::from_str(t.as_str()).expect("envelope");
                if v["data"] == "probe" {
                    continue;
                }
                assert!(v == json!({"type":"message","topic":"q","data":message(got)}), "/ws message {got}");
                got += 1;
            }
            Message::Close(frame) => {
                assert_eq!((got, frame.map(|f| u16::from(f.code))), (COUNT, Some(1001)), "/ws client");
                break;
            }
            other => panic!("/ws client: unexpected {other:?}"),
        }
    }
    drop(subs);
    drop(ws);
    let status = server.wait_exit(Duration::from_secs(10)).expect("herald still running after SIGTERM");
    assert_eq!(status.code(), Some(0));
    eprintln!("drained {COUNT} x {SIZE} bytes to 6 clients and exited in {:?}", signalled.elapsed());
}

/// A publish that was answered 200 before the shutdown reaches every subscriber before its 1001, even while
/// publishing goes on right up to the signal, also for subscribers on another worker than the publisher.
#[test]
fn every_acknowledged_publish_is_delivered_before_the_1001_close() {
    for round in 0..40 {
        let mut server = Server::start(&["--workers", "2", "--shutdown-timeout", "30s"]);
        let (subs, ws) = clients(&server, "live");
        drop(ws);
        let mut http = HttpConn::open(server.addr);
        // The subscriber count in the reply to a publish, or None once publishing is refused or cut off.
        let count = |http: &mut HttpConn, body: &[u8]| {
            let (status, _, reply) =
                http.try_request("POST", "/publish/live", &[("Content-Type", "text/plain")], body).ok()?;
            (status == 200).then(|| serde_json::from_slice::<Value>(&reply).expect("JSON")["subscribers"].clone())
        };
        while count(&mut http, b"probe") != Some(json!(5)) {
            std::thread::sleep(Duration::from_millis(2));
        }
        let readers: Vec<_> = subs
            .into_iter()
            .map(|mut sub| {
                std::thread::spawn(move || {
                    let mut got = Vec::new();
                    loop {
                        match sub.read() {
                            Ok(Message::Text(t)) if t.as_str() != "probe" => {
                                got.push(t.as_str().parse::<u64>().expect("n"))
                            }
                            Ok(Message::Close(frame)) => return (got, frame.map(|f| u16::from(f.code))),
                            Ok(_) => {}
                            Err(e) => panic!("read: {e}"),
                        }
                    }
                })
            })
            .collect();
        let publisher = std::thread::spawn(move || {
            let mut acked = 0u64;
            // Publish until refused (draining) or cut off.
            while count(&mut http, acked.to_string().as_bytes()).is_some() {
                acked += 1;
            }
            acked
        });
        std::thread::sleep(Duration::from_millis(20 + 3 * (round % 10)));
        server.signal(libc::SIGTERM);
        let acked = publisher.join().expect("publisher");
        for (i, reader) in readers.into_iter().enumerate() {
            let (got, code) = reader.join().expect("reader");
            assert_eq!(code, Some(1001), "round {round}, subscriber {i}");
            let prefix = &got[..got.len().min(acked as usize)];
            assert!(prefix.iter().copied().eq(0..prefix.len() as u64), "round {round}, subscriber {i}: out of order");
            assert!(
                got.len() as u64 >= acked,
                "round {round}, subscriber {i}: messages {}..{acked} were acknowledged with 200 but not delivered \
                 before the 1001 close",
                got.len()
            );
        }
        assert_eq!(server.wait_exit(Duration::from_secs(5)).and_then(|s| s.code()), Some(0));
    }
}
