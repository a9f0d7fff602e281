//! The `/ws` JSON control protocol over a real socket: requests are acked or answered with a coded error (the
//! request id echoed either way, the connection kept open), deliveries come as envelopes, and the JSON and raw
//! endpoints meet on the same topics.
mod support;

use std::io::Write;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use base64::engine::general_purpose::STANDARD;
use base64::Engine as _;
use serde_json::{json, Value};
use support::{client_frame, connect, next_data, wait_until, Client, FrameReader, RawWs, Server};
use tungstenite::Message;

const KEY: [u8; 4] = [0x0b, 0xad, 0xf0, 0x0d];

/// Sends one text message and returns the next data message, parsed as JSON.
fn request(ws: &mut Client, text: &str) -> Value {
    ws.send(Message::text(text)).expect("send");
    next_json(ws)
}

fn next_json(ws: &mut Client) -> Value {
    match next_data(ws) {
        Message::Text(t) => serde_json::from_str(t.as_str()).unwrap_or_else(|e| panic!("not JSON ({e}): {t}")),
        other => panic!("expected a text message, got {other:?}"),
    }
}

/// The connection still answers: a fresh subscribe is acked.
fn assert_still_open(ws: &mut Client) {
    assert_eq!(
        request(ws, r#"{"type":"subscribe","topic":"still-open","id":"alive?"}"#),
        json!({"type":"ack","id":"alive?"}),
        "the connection must stay open after an error reply"
    );
}

/// Asserts an error reply with `code`, echoing `id` (`None`: no `id` key), then that the connection is open.
fn assert_error_reply(ws: &mut Client, text: &str, code: &str, id: Option<Value>) {
    let reply = request(ws, text);
    assert_eq!(reply["type"], "error", "{text} -> {reply}");
    assert_eq!(reply["code"], code, "{text} -> {reply}");
    assert!(reply["message"].as_str().is_some_and(|m| !m.is_empty()), "a human-readable message: {reply}");
    assert_eq!(reply.get("id").cloned(), id, "{text} -> {reply}");
    assert_still_open(ws);
}

#[test]
fn requests_are_acked_with_their_id_echoed() {
    let server = Server::start(&["--workers", "1"]);
    let mut ws = connect(&server.url("/ws"));
    assert_eq!(request(&mut ws, r#"{"type":"subscribe","topic":"t","id":1}"#), json!({"type":"ack","id":1}));
    assert_eq!(
        request(&mut ws, r#"{"type":"unsubscribe","topic":"t","id":"req-2"}"#),
        json!({"type":"ack","id":"req-2"})
    );
    assert_eq!(
        request(&mut ws, r#"{"type":"publish","topic":"t","data":"x","id":{"n":[3]}}"#),
        json!({"type":"ack","id":{"n":[3]}})
    );
    assert_eq!(request(&mut ws, r#"{"type":"subscribe","topic":"t"}"#), json!({"type":"ack"}), "no id, no id key");
    assert_eq!(request(&mut ws, r#"{"type":"subscribe","topic":"t","id":null}"#), json!({"type":"ack","id":null}));
}

#[test]
fn text_that_is_not_json_gets_invalid_json() {
    let server = Server::start(&["--workers", "1"]);
    let mut ws = connect(&server.url("/ws"));
    assert_error_reply(&mut ws, "{\"type\":\"subscribe\",", "invalid_json", None);
    assert_error_reply(&mut ws, "subscribe me", "invalid_json", None);
}

#[test]
fn unknown_type_gets_unknown_type_with_the_id() {
    let server = Server::start(&["--workers", "1"]);
    let mut ws = connect(&server.url("/ws"));
    assert_error_reply(&mut ws, r#"{"type":"subscribe-all","topic":"t","id":5}"#, "unknown_type", Some(json!(5)));
    assert_error_reply(&mut ws, r#"{"type":"SUBSCRIBE","topic":"t","id":"s"}"#, "unknown_type", Some(json!("s")));
}

#[test]
fn missing_topic_gets_invalid_request_with_the_id() {
    let server = Server::start(&["--workers", "1"]);
    let mut ws = connect(&server.url("/ws"));
    assert_error_reply(&mut ws, r#"{"type":"subscribe","id":9}"#, "invalid_request", Some(json!(9)));
    assert_error_reply(&mut ws, r#"{"type":"publish","data":1,"id":"p"}"#, "invalid_request", Some(json!("p")));
    assert_error_reply(&mut ws, r#"{"type":"publish","topic":"t","id":10}"#, "invalid_request", Some(json!(10)));
    assert_error_reply(&mut ws, r#"["subscribe","t"]"#, "invalid_request", None);
}

#[test]
fn invalid_topic_name_gets_invalid_topic_with_the_id() {
    let server = Server::start(&["--workers", "1"]);
    let mut ws = connect(&server.url("/ws"));
    assert_error_reply(&mut ws, r#"{"type":"subscribe","topic":"a/b","id":1}"#, "invalid_topic", Some(json!(1)));
    assert_error_reply(&mut ws, r#"{"type":"subscribe","topic":"","id":2}"#, "invalid_topic", Some(json!(2)));
    let long = "x".repeat(129);
    let text = format!(r#"{{"type":"subscribe","topic":"{long}","id":3}}"#);
    assert_error_reply(&mut ws, &text, "invalid_topic", Some(json!(3)));
    assert_error_reply(
        &mut ws,
        r#"{"type":"publish","topic":"sp ace","data":0,"id":4}"#,
        "invalid_topic",
        Some(json!(4)),
    );
}

/// Raw subscribers, JSON subscribers and a raw publisher of one topic on two workers, probed until every
/// subscriber has seen a probe. Returns (server, raw subscriber, JSON subscriber, publisher).
fn mixed_topic(topic: &str) -> (Server, FrameReader, Client, RawWs) {
    let server = Server::start(&["--workers", "2"]);
    let raw = FrameReader::new(RawWs::connect(server.addr, &format!("/sub/{topic}")));
    let mut json_sub = connect(&server.url("/ws"));
    let sub = format!(r#"{{"type":"subscribe","topic":"{topic}","id":0}}"#);
    assert_eq!(request(&mut json_sub, &sub), json!({"type":"ack","id":0}));
    let mut publisher = RawWs::connect(server.addr, &format!("/pub/{topic}"));
    // Probe until both subscribers have seen one, reading each on its own thread meanwhile.
    let seen = Arc::new(AtomicUsize::new(0));
    let raw_probe = {
        let seen = seen.clone();
        let mut raw = raw;
        std::thread::spawn(move || {
            let frame = raw.next_frame().expect("raw probe");
            assert_eq!(frame, (0x81, b"probe".to_vec()));
            seen.fetch_add(1, Ordering::SeqCst);
            raw
        })
    };
    let json_probe = {
        let seen = seen.clone();
        let name = topic.to_owned();
        std::thread::spawn(move || {
            let envelope = next_json(&mut json_sub);
            assert_eq!(envelope, json!({"type":"message","topic":name,"data":"probe"}));
            seen.fetch_add(1, Ordering::SeqCst);
            json_sub
        })
    };
    let probed = wait_until(Duration::from_secs(10), || {
        publisher.send_frame(0x81, b"probe", true);
        std::thread::sleep(Duration::from_millis(5));
        seen.load(Ordering::SeqCst) == 2
    });
    assert!(probed, "only {} of 2 subscribers saw a probe", seen.load(Ordering::SeqCst));
    let mut raw = raw_probe.join().expect("raw probe thread");
    let mut json_sub = json_probe.join().expect("json probe thread");
    // Skip the probes still on their way; the marker ends them.
    publisher.send_frame(0x81, b"marker", true);
    while raw.next_frame().expect("raw marker") != (0x81, b"marker".to_vec()) {}
    while next_json(&mut json_sub)["data"] != "marker" {}
    (server, raw, json_sub, publisher)
}

#[test]
fn raw_text_publish_reaches_ws_subscribers_as_a_data_string_envelope() {
    let (_server, mut raw, mut json_sub, mut publisher) = mixed_topic("t");
    let text = "say \"hi\"\n\tnaïve ☃ 𝄞 \\ end";
    publisher.send_frame(0x81, text.as_bytes(), true);
    assert_eq!(next_json(&mut json_sub), json!({"type":"message","topic":"t","data":text}));
    assert_eq!(raw.next_frame().expect("raw"), (0x81, text.as_bytes().to_vec()), "raw subscribers get it as sent");
}

#[test]
fn raw_binary_publish_reaches_ws_subscribers_as_base64() {
    let (_server, mut raw, mut json_sub, mut publisher) = mixed_topic("bin");
    let payload: Vec<u8> = (0..=255u8).rev().chain(0..=255u8).collect();
    publisher.send_frame(0x82, &payload, true);
    let envelope = next_json(&mut json_sub);
    assert_eq!(envelope["type"], "message");
    assert_eq!(envelope["topic"], "bin");
    assert!(envelope.get("data").is_none(), "binary goes in data_b64, not data: {envelope}");
    let b64 = envelope["data_b64"].as_str().expect("data_b64 is a string");
    assert_eq!(b64, STANDARD.encode(&payload), "standard base64 with padding");
    assert_eq!(raw.next_frame().expect("raw"), (0x82, payload));
}

/// A `/ws` publish reaches raw subscribers as a text frame holding exactly the JSON text of `data`, as the
/// client wrote it (whitespace included), and `/ws` subscribers as an envelope around that same text.
#[test]
fn ws_publish_reaches_raw_subscribers_as_the_exact_json_text_of_data() {
    let (server, mut raw, mut json_sub, _publisher) = mixed_topic("j");
    // Both subscribers' interest was announced to every worker before the probes; the worker taking this new
    // connection processes its inbox in the turn that upgrades it, before it can read the first publish.
    let mut ws = connect(&server.url("/ws"));
    assert_eq!(
        request(&mut ws, r#"{"type":"publish","topic":"j","data":{"a":[1,2]},"id":7}"#),
        json!({"type":"ack","id":7})
    );
    assert_eq!(raw.next_frame().expect("raw"), (0x81, br#"{"a":[1,2]}"#.to_vec()));
    assert_eq!(next_json(&mut json_sub), json!({"type":"message","topic":"j","data":{"a":[1,2]}}));
    assert_eq!(
        request(&mut ws, r#"{"type":"publish","topic":"j","data": { "b" : [ 1.50, "x" ] } ,"id":8}"#),
        json!({"type":"ack","id":8})
    );
    assert_eq!(raw.next_frame().expect("raw"), (0x81, br#"{ "b" : [ 1.50, "x" ] }"#.to_vec()), "verbatim");
    match next_data(&mut json_sub) {
        Message::Text(t) => {
            assert_eq!(t.as_str(), r#"{"type":"message","topic":"j","data":{ "b" : [ 1.50, "x" ] }}"#)
        }
        other => panic!("expected text, got {other:?}"),
    }
}

#[test]
fn subscribe_past_max_subscriptions_gets_too_many_subscriptions() {
    let server = Server::start(&["--workers", "1", "--max-subscriptions", "2"]);
    let mut ws = connect(&server.url("/ws"));
    assert_eq!(request(&mut ws, r#"{"type":"subscribe","topic":"a","id":1}"#), json!({"type":"ack","id":1}));
    assert_eq!(request(&mut ws, r#"{"type":"subscribe","topic":"b","id":2}"#), json!({"type":"ack","id":2}));
    let reply = request(&mut ws, r#"{"type":"subscribe","topic":"c","id":3}"#);
    assert_eq!(
        (&reply["type"], &reply["code"], &reply["id"]),
        (&json!("error"), &json!("too_many_subscriptions"), &json!(3))
    );
    assert_eq!(
        server.wait_metric("herald_limit_hits_total{limit=\"max_subscriptions\"}", 1, Duration::from_secs(2)),
        1
    );
    assert_eq!(
        request(&mut ws, r#"{"type":"subscribe","topic":"a","id":4}"#),
        json!({"type":"ack","id":4}),
        "subscribing again to a held topic takes no new slot"
    );
    assert_eq!(request(&mut ws, r#"{"type":"unsubscribe","topic":"b","id":5}"#), json!({"type":"ack","id":5}));
    assert_eq!(
        request(&mut ws, r#"{"type":"subscribe","topic":"c","id":6}"#),
        json!({"type":"ack","id":6}),
        "an unsubscribe frees a slot"
    );
    // The refused subscription never delivered anything; the granted ones do.
    let mut publisher = connect(&server.url("/ws"));
    for topic in ["b", "c"] {
        let text = format!(r#"{{"type":"publish","topic":"{topic}","data":"to {topic}"}}"#);
        assert_eq!(request(&mut publisher, &text), json!({"type":"ack"}));
    }
    assert_eq!(next_json(&mut ws), json!({"type":"message","topic":"c","data":"to c"}));
}

#[test]
fn unsubscribe_stops_delivery() {
    let server = Server::start(&["--workers", "1"]);
    let mut ws = connect(&server.url("/ws"));
    assert_eq!(request(&mut ws, r#"{"type":"subscribe","topic":"t","id":1}"#), json!({"type":"ack","id":1}));
    assert_eq!(request(&mut ws, r#"{"type":"subscribe","topic":"end","id":2}"#), json!({"type":"ack","id":2}));
    // A raw subscriber of "t" witnesses that the server has handled each publish to "t".
    let mut witness = FrameReader::new(RawWs::connect(server.addr, "/sub/t"));
    let mut publisher = RawWs::connect(server.addr, "/pub/t");
    publisher.send_frame(0x81, b"before", true);
    assert_eq!(next_json(&mut ws), json!({"type":"message","topic":"t","data":"before"}));
    assert_eq!(witness.next_frame().expect("witness"), (0x81, b"before".to_vec()));

    assert_eq!(request(&mut ws, r#"{"type":"unsubscribe","topic":"t","id":3}"#), json!({"type":"ack","id":3}));
    publisher.send_frame(0x81, b"after", true);
    assert_eq!(witness.next_frame().expect("witness"), (0x81, b"after".to_vec()));
    let mut end_pub = RawWs::connect(server.addr, "/pub/end");
    end_pub.stream.write_all(&client_frame(0x81, b"done", KEY)).expect("publish");
    assert_eq!(
        next_json(&mut ws),
        json!({"type":"message","topic":"end","data":"done"}),
        "nothing from t after the unsubscribe"
    );
}

/// A binary message well within `max_message_size` reaches an idle `/ws` subscriber although its base64
/// envelope (4/3 of the payload) is larger than the default 1 MiB `max_backpressure`.
#[test]
fn large_binary_publish_reaches_an_idle_ws_subscriber_as_base64() {
    let server = Server::start(&["--workers", "1"]);
    let mut json_sub = connect(&server.url("/ws"));
    assert_eq!(request(&mut json_sub, r#"{"type":"subscribe","topic":"big","id":1}"#), json!({"type":"ack","id":1}));
    let mut publisher = RawWs::connect(server.addr, "/pub/big");
    let payload: Vec<u8> = (0..800 * 1024).map(|i| (i % 256) as u8).collect();
    publisher.send_frame(0x82, &payload, true);
    match json_sub.read().expect("read") {
        Message::Text(t) => {
            let envelope: Value = serde_json::from_str(t.as_str()).expect("envelope");
            assert_eq!(envelope["data_b64"].as_str().map(|s| s.len()), Some(STANDARD.encode(&payload).len()));
            assert_eq!(envelope["data_b64"], STANDARD.encode(&payload));
        }
        other => panic!("expected the envelope, got {other:?}"),
    }
}

/// `depth` nested arrays around `1`: `nested(2)` is `[[1]]`.
fn nested(depth: usize) -> String {
    format!("{}1{}", "[".repeat(depth), "]".repeat(depth))
}

/// `limits.max_json_depth` (default 64) caps how deeply a request's `data` and `id` nest, so `/ws` subscribers'
/// parsers are never handed a 100,000-deep document. Deeper gets an `invalid_request` reply and nothing is
/// published; the connection stays open.
#[test]
fn data_and_id_nested_past_max_json_depth_get_invalid_request_and_are_not_published() {
    let server = Server::start(&["--workers", "1"]);
    let mut sub = connect(&server.url("/ws"));
    assert_eq!(request(&mut sub, r#"{"type":"subscribe","topic":"deep","id":1}"#), json!({"type":"ack","id":1}));
    let mut publisher = connect(&server.url("/ws"));

    let publish = |data: &str, id: &str| format!(r#"{{"type":"publish","topic":"deep","data":{data},"id":{id}}}"#);
    assert_error_reply(&mut publisher, &publish(&nested(65), "2"), "invalid_request", Some(json!(2)));
    assert_error_reply(&mut publisher, &publish(&nested(100_000), "3"), "invalid_request", Some(json!(3)));
    assert_error_reply(&mut publisher, &publish("4", &nested(65)), "invalid_request", None);
    let deep_object = format!("{}1{}", r#"{"a":"#.repeat(65), "}".repeat(65));
    assert_error_reply(&mut publisher, &publish(&deep_object, "5"), "invalid_request", Some(json!(5)));
    // Brackets inside strings are text, not nesting.
    let brackets = format!("\"{}\"", "[".repeat(1000));
    assert_eq!(request(&mut publisher, &publish(&brackets, "6")), json!({"type":"ack","id":6}));
    assert_eq!(
        request(&mut publisher, &publish(&nested(64), &nested(64))),
        json!({"type":"ack","id":nested_value(64)})
    );

    // The subscriber got exactly the accepted publishes, in order.
    assert_eq!(next_json(&mut sub), json!({"type":"message","topic":"deep","data":"[".repeat(1000)}));
    assert_eq!(next_json(&mut sub), json!({"type":"message","topic":"deep","data":nested_value(64)}));
    assert_eq!(server.wait_metric("herald_limit_hits_total{limit=\"max_json_depth\"}", 4, Duration::from_secs(2)), 4);
}

/// `nested(depth)` as a JSON value.
fn nested_value(depth: usize) -> Value {
    (0..depth).fold(json!(1), |inner, _| json!([inner]))
}
