//! Publish sources outside the WebSocket connections. `POST /publish/{topic}`: the body's Content-Type says
//! what it is (JSON reaches `/ws` subscribers as the value itself, text as a string, anything else as base64),
//! a JSON body must be valid JSON, and `Expect: 100-continue` is answered once the head is accepted. Sources
//! outside the workers (a Redis bridge later) enter through `ExternalPublisher`, which hands each publish to one
//! worker; that worker frames it and delivers it exactly as if one of its own connections had published,
//! including to subscribers on the other workers.
mod support;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::Duration;

use base64::engine::general_purpose::STANDARD;
use base64::Engine as _;
use bytes::Bytes;
use clap::Parser;
use herald::broker::mesh::ExternalPublish;
use herald::config::{Cli, Config};
use serde_json::{json, Value};
use support::{connect, next_data, read_head, Client, HttpConn, Server};
use tungstenite::Message;

#[test]
fn an_outside_source_reaches_subscribers_on_every_worker() {
    let cli = Cli::try_parse_from(["herald", "--listen", "127.0.0.1:0", "--workers", "2", "--no-pin"]).expect("args");
    let server = herald::server::start(Config::from_cli(&cli).expect("config")).expect("start");
    let url = format!("ws://{}/sub/ext", server.local_addr());
    let mut subs: Vec<_> = (0..8).map(|_| connect(&url)).collect();
    let mut publisher = server.external_publisher();

    // Probe until every subscriber has one (interest reaches the other worker within a loop turn).
    let mut seen = vec![false; subs.len()];
    for s in &subs {
        s.get_ref().set_nonblocking(true).expect("nonblocking");
    }
    for _ in 0..2000 {
        publisher
            .publish(ExternalPublish { topic: "ext".into(), text: true, payload: Bytes::from_static(b"probe") })
            .expect("workers running");
        std::thread::sleep(std::time::Duration::from_millis(2));
        for (i, s) in subs.iter_mut().enumerate() {
            while let Ok(m) = s.read() {
                if m == Message::text("probe") {
                    seen[i] = true;
                }
            }
        }
        if seen.iter().all(|&x| x) {
            break;
        }
    }
    assert!(seen.iter().all(|&x| x), "not every subscriber was reached by the probes: {seen:?}");
    for s in &subs {
        s.get_ref().set_nonblocking(false).expect("blocking");
    }

    for i in 0..200u32 {
        let payload = Bytes::from(i.to_be_bytes().to_vec());
        publisher.publish(ExternalPublish { topic: "ext".into(), text: false, payload }).expect("workers running");
    }
    for (n, s) in subs.iter_mut().enumerate() {
        let mut expected = 0u32;
        while expected < 200 {
            match next_data(s) {
                Message::Text(t) if t.as_str() == "probe" => continue,
                Message::Binary(b) => {
                    assert_eq!(b.as_ref(), expected.to_be_bytes(), "subscriber {n}: message {expected}");
                    expected += 1;
                }
                other => panic!("subscriber {n}: unexpected {other:?}"),
            }
        }
    }
    server.shutdown();
    drop(subs);
    server.join().expect("clean exit");
}

/// A `/ws` client subscribed to `topic` (one worker, so the subscription is live for every publish).
fn ws_subscriber(server: &Server, topic: &str) -> Client {
    let mut ws = connect(&server.url("/ws"));
    ws.send(Message::text(format!(r#"{{"type":"subscribe","topic":"{topic}","id":1}}"#))).expect("send");
    assert_eq!(next_json(&mut ws), json!({"type":"ack","id":1}));
    ws
}

fn next_json(ws: &mut Client) -> Value {
    match next_data(ws) {
        Message::Text(t) => serde_json::from_str(t.as_str()).unwrap_or_else(|e| panic!("not JSON ({e}): {t}")),
        other => panic!("expected a text message, got {other:?}"),
    }
}

/// POSTs `body` as `content_type` on a keep-alive connection and returns (status, response body as text).
fn post(http: &mut HttpConn, topic: &str, content_type: &str, body: &[u8]) -> (u16, String) {
    let (status, _, reply) =
        http.request("POST", &format!("/publish/{topic}"), &[("Content-Type", content_type)], body);
    (status, String::from_utf8_lossy(&reply).into_owned())
}

/// The README's table: a JSON body reaches `/ws` subscribers as the JSON value itself, a text body as a
/// string, and anything else as standard base64 in `data_b64`.
#[test]
fn http_publish_reaches_ws_subscribers_as_json_value_text_string_or_base64() {
    let server = Server::start(&["--workers", "1"]);
    let mut sub = ws_subscriber(&server, "kinds");
    let mut http = HttpConn::open(server.addr);
    let bytes: Vec<u8> = vec![0, 1, 0xfe, 0xff];
    let posts: [(&str, &[u8]); 5] = [
        ("application/json", br#"{"k":[1,2.50,"x"]}"#),
        ("Application/JSON; charset=utf-8", b" [true, null]\n"),
        ("text/plain", br#"{"k":[1,2]}"#),
        ("application/octet-stream", &bytes),
        ("", b"no type"),
    ];
    for (content_type, body) in posts {
        assert_eq!(post(&mut http, "kinds", content_type, body).0, 200, "{content_type}");
    }
    let envelope = |data: (&str, Value)| {
        let mut e = json!({"type":"message","topic":"kinds"});
        e[data.0] = data.1;
        e
    };
    for (i, data) in [
        ("data", json!({"k":[1,2.50,"x"]})),
        ("data", json!([true, null])),
        ("data", json!(r#"{"k":[1,2]}"#)),
        ("data_b64", json!(STANDARD.encode(&bytes))),
        ("data_b64", json!(STANDARD.encode(b"no type"))),
    ]
    .into_iter()
    .enumerate()
    {
        assert_eq!(next_json(&mut sub), envelope(data), "post {i}: {:?}", posts[i].0);
    }
}

/// A body sent as `application/json` must be JSON (no more than `limits.max_json_depth` deep): otherwise 400
/// with the reason, and nothing is published.
#[test]
fn http_publish_of_a_json_body_that_is_not_json_is_400_with_the_reason() {
    let server = Server::start(&["--workers", "1"]);
    let mut sub = ws_subscriber(&server, "strict");
    let nested = |depth: usize| format!("{}1{}", "[".repeat(depth), "]".repeat(depth));
    for (body, why) in [
        (&b"{\"k\":"[..], "not valid JSON"),
        (b"", "not valid JSON"),
        (b"hello", "not valid JSON"),
        (br#"{"a":1} {"b":2}"#, "not valid JSON"),
        (b"\"\xff\"", "not valid UTF-8"),
        (nested(65).as_bytes(), "max_json_depth"),
        (nested(100_000).as_bytes(), "max_json_depth"),
    ] {
        let (status, reply) = post(&mut HttpConn::open(server.addr), "strict", "application/json", body);
        assert_eq!(status, 400, "{:?}", String::from_utf8_lossy(&body[..body.len().min(40)]));
        assert!(reply.contains(why), "reason {reply:?} should say {why:?}");
    }
    let mut http = HttpConn::open(server.addr);
    assert_eq!(post(&mut http, "strict", "application/json", nested(64).as_bytes()).0, 200);
    let deep: Value = serde_json::from_str(&nested(64)).expect("64 deep parses");
    assert_eq!(next_json(&mut sub), json!({"type":"message","topic":"strict","data":deep}), "only the valid one");
    assert_eq!(server.metric("herald_limit_hits_total{limit=\"max_json_depth\"}"), 2);
}

/// RFC 9110 section 10.1.1: a server that receives `Expect: 100-continue` "ought to" send 100 (Continue)
/// before reading the content, unless it answers with a final status at once (here 413 for a body over
/// `max_message_size`, or 400 for a bad topic, and then it sends no 100).
#[test]
fn expect_100_continue_is_answered_once_the_head_is_accepted_and_not_when_refused() {
    let server = Server::start(&["--workers", "1"]);
    let mut sub = ws_subscriber(&server, "slow");
    let head = |topic: &str, len: usize| {
        format!(
            "POST /publish/{topic} HTTP/1.1\r\nHost: test\r\nContent-Type: application/json\r\n\
             Content-Length: {len}\r\nExpect: 100-continue\r\n\r\n"
        )
    };
    let open = || {
        let s = TcpStream::connect(server.addr).expect("connect");
        s.set_read_timeout(Some(Duration::from_secs(3))).expect("timeout");
        s
    };

    let mut s = open();
    s.write_all(head("slow", 7).as_bytes()).expect("head");
    assert_eq!(String::from_utf8_lossy(&read_head(&mut s)), "HTTP/1.1 100 Continue\r\n\r\n", "before the body");
    s.write_all(br#"{"a":1}"#).expect("body");
    let response = String::from_utf8_lossy(&read_head(&mut s)).into_owned();
    assert!(response.starts_with("HTTP/1.1 200 "), "then the final response, and only one 100: {response:?}");
    assert_eq!(next_json(&mut sub), json!({"type":"message","topic":"slow","data":{"a":1}}));

    for (request, status) in [(head("slow", 1024 * 1024 + 1), "413"), (head("bad!topic", 7), "400")] {
        let mut s = open();
        s.write_all(request.as_bytes()).expect("head");
        let mut response = Vec::new();
        let _ = s.read_to_end(&mut response);
        let response = String::from_utf8_lossy(&response);
        assert!(response.starts_with(&format!("HTTP/1.1 {status} ")), "no 100 before a refusal: {response:?}");
        assert!(!response.contains("100 Continue"), "{response:?}");
    }
}
