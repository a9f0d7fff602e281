//! permessage-deflate (RFC 7692) end to end: negotiation as a browser offers it, compressed and plain
//! subscribers of one topic, compress-once, inbound compressed messages on /pub and /echo, the deflate bomb.
//!
//! tungstenite 0.26 has no permessage-deflate, so the client side is done here by hand with flate2 (a raw
//! DEFLATE stream, the `00 00 ff ff` tail stripped and appended as RFC 7692 section 7.2 says).

mod support;

use std::io::Write;
use std::net::{SocketAddr, TcpStream};
use std::time::Duration;

use flate2::{Compress, Compression, Decompress, FlushCompress, FlushDecompress};
use support::{client_frame, wait_until, FrameReader, Server};

const BROWSER_OFFER: &str = "permessage-deflate; client_max_window_bits";
const ANSWER: &str = "permessage-deflate; server_no_context_takeover; client_no_context_takeover";
const KEY: [u8; 4] = [0x11, 0x22, 0x33, 0x44];

/// Upgrades on `path` offering `extensions` (if any); returns the connection and the answered extensions.
fn upgrade(addr: SocketAddr, path: &str, extensions: Option<&str>) -> (FrameReader, Option<String>) {
    let mut stream = TcpStream::connect(addr).expect("connect");
    stream.set_read_timeout(Some(Duration::from_secs(10))).expect("timeout");
    let offer = extensions.map(|e| format!("Sec-WebSocket-Extensions: {e}\r\n")).unwrap_or_default();
    let req = format!(
        "GET {path} HTTP/1.1\r\nHost: test\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
         Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n{offer}\r\n"
    );
    stream.write_all(req.as_bytes()).expect("write");
    let mut buf = support::read_head(&mut stream);
    let end = buf.windows(4).position(|w| w == b"\r\n\r\n").expect("closed during handshake") + 4;
    let head = String::from_utf8_lossy(&buf[..end]).to_string();
    assert!(head.starts_with("HTTP/1.1 101"), "{head}");
    let answered = head
        .lines()
        .find_map(|l| l.split_once(':').filter(|(n, _)| n.eq_ignore_ascii_case("sec-websocket-extensions")))
        .map(|(_, v)| v.trim().to_owned());
    let rest = buf.split_off(end);
    (FrameReader::new(support::RawWs { stream, buf: rest }), answered)
}

/// A message compressed as a client without context takeover sends it (tail stripped).
fn deflate(payload: &[u8]) -> Vec<u8> {
    let mut c = Compress::new(Compression::new(6), false);
    deflate_with(&mut c, payload)
}

/// A message compressed with `c`, keeping its context (sync flush, tail stripped).
fn deflate_with(c: &mut Compress, payload: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(payload.len() / 64 + 1024);
    let start = c.total_in();
    loop {
        let used = (c.total_in() - start) as usize;
        c.compress_vec(&payload[used..], &mut out, FlushCompress::Sync).expect("compress");
        if (c.total_in() - start) as usize == payload.len() && out.len() < out.capacity() {
            break;
        }
        out.reserve(out.capacity());
    }
    assert!(out.ends_with(&[0, 0, 0xff, 0xff]));
    out.truncate(out.len() - 4);
    out
}

/// Inflates one server message (no context takeover: a fresh stream each time).
fn inflate(body: &[u8]) -> Vec<u8> {
    let mut d = Decompress::new(false);
    let mut input = body.to_vec();
    input.extend_from_slice(&[0, 0, 0xff, 0xff]);
    let mut out = Vec::with_capacity(body.len() * 8 + 1024);
    loop {
        let used = d.total_in() as usize;
        d.decompress_vec(&input[used..], &mut out, FlushDecompress::Sync).expect("valid deflate from the server");
        if d.total_in() as usize == input.len() && out.len() < out.capacity() {
            return out;
        }
        out.reserve(out.capacity());
    }
}

/// The payload of the next data frame, inflated if RSV1 says it is compressed; and whether it was.
fn next_message(r: &mut FrameReader) -> (Vec<u8>, bool) {
    let (b0, payload) = r.next_frame().expect("a frame");
    assert_eq!(b0 & 0x80, 0x80, "server messages are single frames");
    if b0 & 0x40 != 0 {
        (inflate(&payload), true)
    } else {
        (payload, false)
    }
}

/// A JSON message of about `n` bytes, compressible like real push payloads.
fn json(seq: usize, n: usize) -> String {
    let mut s = format!("{{\"seq\":{seq},\"items\":[");
    let mut i = 0;
    while s.len() < n {
        s.push_str(&format!(
            "{{\"id\":{i},\"symbol\":\"HRLD\",\"price\":{}.{},\"side\":\"buy\"}},",
            100 + i % 7,
            i % 10
        ));
        i += 1;
    }
    s.push_str("{}]}");
    s
}

fn compressing_server(extra: &[&str]) -> Server {
    let mut args = vec!["--compression", "true"];
    args.extend_from_slice(extra);
    Server::start(&args)
}

#[test]
fn a_browser_style_offer_gets_both_no_context_takeover_parameters() {
    let server = compressing_server(&["--workers", "1"]);
    let (_, answered) = upgrade(server.addr, "/echo", Some(BROWSER_OFFER));
    assert_eq!(answered.as_deref(), Some(ANSWER));
    // A window limit asked by the client is honoured and answered.
    let (_, answered) = upgrade(server.addr, "/sub/t", Some("permessage-deflate; server_max_window_bits=10"));
    assert_eq!(answered, Some(format!("{ANSWER}; server_max_window_bits=10")));
    // An offer herald declines (an 8-bit window) leaves the connection uncompressed, not refused.
    let (_, answered) = upgrade(server.addr, "/echo", Some("permessage-deflate; server_max_window_bits=8"));
    assert_eq!(answered, None);
}

#[test]
fn compression_is_not_offered_unless_enabled() {
    let server = Server::start(&["--workers", "1"]);
    let (_, answered) = upgrade(server.addr, "/echo", Some(BROWSER_OFFER));
    assert_eq!(answered, None);
}

#[test]
fn compressed_and_plain_subscribers_get_every_message_byte_exact() {
    // Two workers: subscribers on both, so cross-worker batches are compressed by the receiving worker too.
    let server = compressing_server(&["--workers", "2"]);
    let mut subs: Vec<(FrameReader, bool)> = (0..8)
        .map(|i| {
            let compressed = i % 2 == 0;
            let (r, answered) = upgrade(server.addr, "/sub/prices", compressed.then_some(BROWSER_OFFER));
            assert_eq!(answered.is_some(), compressed);
            (r, compressed)
        })
        .collect();
    let mut ws = upgrade(server.addr, "/ws", Some(BROWSER_OFFER)).0;
    ws.stream.write_all(&client_frame(0x81, br#"{"type":"subscribe","topic":"prices"}"#, KEY)).expect("subscribe");
    assert!(next_message(&mut ws).0.starts_with(b"{\"type\":\"ack\""));
    assert!(wait_until(Duration::from_secs(5), || server.metric("herald_subscriptions") == 9));
    // A publisher that compresses its own messages (/pub), and small ones under min_size.
    let (mut publisher, answered) = upgrade(server.addr, "/pub/prices", Some(BROWSER_OFFER));
    assert!(answered.is_some());
    let messages: Vec<String> = (0..40).map(|i| json(i, if i % 4 == 0 { 40 } else { 1024 + i * 10 })).collect();
    for (i, m) in messages.iter().enumerate() {
        let frame = if i % 2 == 0 {
            client_frame(0x81 | 0x40, &deflate(m.as_bytes()), KEY)
        } else {
            client_frame(0x81, m.as_bytes(), KEY)
        };
        publisher.stream.write_all(&frame).expect("publish");
    }
    let mut saw_compressed = false;
    for (r, compressed) in &mut subs {
        for m in &messages {
            let (payload, was) = next_message(r);
            assert_eq!(payload, m.as_bytes());
            assert!(*compressed || !was, "a plain subscriber never gets RSV1");
            // Messages under min_size go plain even to compressed subscribers.
            assert!(!was || m.len() >= 256);
            saw_compressed |= was;
        }
    }
    assert!(saw_compressed);
    for m in &messages {
        let (envelope, _) = next_message(&mut ws);
        let v: serde_json::Value = serde_json::from_slice(&envelope).expect("envelope JSON");
        assert_eq!(v["data"].as_str(), Some(m.as_str()));
    }
    assert!(server.metric("herald_compression_bytes_total{stage=\"after\"}") > 0);
}

#[test]
fn a_batch_is_compressed_once_per_worker_whatever_the_number_of_subscribers() {
    let server = compressing_server(&["--workers", "1"]);
    let payload = json(0, 2048);
    let batches_for = |topic: &str, subscribers: usize| {
        let mut subs: Vec<FrameReader> =
            (0..subscribers).map(|_| upgrade(server.addr, &format!("/sub/{topic}"), Some(BROWSER_OFFER)).0).collect();
        let _plain = upgrade(server.addr, &format!("/sub/{topic}"), None).0;
        let before = server.metric("herald_compression_batches_total");
        let (status, _, _) =
            server.http("POST", &format!("/publish/{topic}"), &[("Content-Type", "text/plain")], payload.as_bytes());
        assert_eq!(status, 200);
        for r in &mut subs {
            assert_eq!(next_message(r), (payload.as_bytes().to_vec(), true));
        }
        server.wait_metric("herald_compression_batches_total", before + 1, Duration::from_secs(2)) - before
    };
    assert_eq!(batches_for("one", 1), 1);
    assert_eq!(batches_for("many", 50), 1);
}

#[test]
fn echo_answers_compressed_when_negotiated() {
    let server = compressing_server(&["--workers", "1"]);
    let (mut r, _) = upgrade(server.addr, "/echo", Some(BROWSER_OFFER));
    let big = json(1, 4096);
    r.stream.write_all(&client_frame(0x81 | 0x40, &deflate(big.as_bytes()), KEY)).expect("send");
    assert_eq!(next_message(&mut r), (big.into_bytes(), true));
    r.stream.write_all(&client_frame(0x82, b"tiny", KEY)).expect("send");
    assert_eq!(next_message(&mut r), (b"tiny".to_vec(), false));
}

#[test]
fn a_client_streaming_many_compressed_messages_gets_each_one_back() {
    let server = compressing_server(&["--workers", "1"]);
    let (mut r, _) = upgrade(server.addr, "/echo", Some("permessage-deflate; client_no_context_takeover"));
    for i in 0..200 {
        let m = json(i, 300 + i * 37);
        // Fragmented in three: RSV1 on the first frame only.
        let body = deflate(m.as_bytes());
        let (a, rest) = body.split_at(body.len() / 3);
        let (b, c) = rest.split_at(rest.len() / 2);
        let mut frames = client_frame(0x01 | 0x40, a, KEY);
        frames.extend(client_frame(0x00, b, KEY));
        frames.extend(client_frame(0x80, c, KEY));
        r.stream.write_all(&frames).expect("send");
        assert_eq!(next_message(&mut r).0, m.as_bytes());
    }
}

#[test]
fn a_client_that_keeps_its_context_after_being_asked_not_to_is_closed_with_1007() {
    // herald answers client_no_context_takeover to every offer (RFC 7692 7.1.1.2 allows it), so one inflater,
    // reset per message, serves every client. A client that refers back into an earlier message anyway gets
    // a clean 1007, never wrong data.
    let server = compressing_server(&["--workers", "1"]);
    let (mut r, answered) = upgrade(server.addr, "/echo", Some(BROWSER_OFFER));
    assert_eq!(answered.as_deref(), Some(ANSWER));
    let mut c = Compress::new(Compression::new(6), false);
    let m = json(7, 1000);
    r.stream.write_all(&client_frame(0x81 | 0x40, &deflate_with(&mut c, m.as_bytes()), KEY)).expect("send");
    assert_eq!(next_message(&mut r).0, m.as_bytes());
    r.stream.write_all(&client_frame(0x81 | 0x40, &deflate_with(&mut c, m.as_bytes()), KEY)).expect("send");
    let (b0, payload) = r.next_frame().expect("close");
    assert_eq!((b0, u16::from_be_bytes([payload[0], payload[1]])), (0x88, 1007));
    drop(r); // counted when the connection goes
    assert!(wait_until(Duration::from_secs(2), || server.metric("herald_inflate_errors_total") == 1));
}

#[test]
fn a_deflate_bomb_is_closed_with_1009_and_memory_stays_flat() {
    let server = compressing_server(&["--workers", "1"]);
    // 256 MiB of zeros compresses to about 256 KiB: far under max_message_size (1 MiB) on the wire.
    let bomb = deflate(&vec![0u8; 256 << 20]);
    assert!(bomb.len() < 512 * 1024, "{}", bomb.len());
    let frame = client_frame(0x82 | 0x40, &bomb, KEY);
    let before = server.rss_peak_kib();
    for path in ["/echo", "/pub/bomb", "/ws"] {
        let (mut r, _) = upgrade(server.addr, path, Some(BROWSER_OFFER));
        r.stream.write_all(&frame).expect("send bomb");
        let (b0, payload) = r.next_frame().expect("close");
        assert_eq!((b0, u16::from_be_bytes([payload[0], payload[1]])), (0x88, 1009), "{path}");
    }
    let grown = server.rss_peak_kib().saturating_sub(before);
    // Inflating stops one step past the 1 MiB limit; a full inflation would have taken 256 MiB.
    assert!(grown < 16 * 1024, "peak RSS grew by {grown} KiB");
    assert!(wait_until(Duration::from_secs(2), || server.metric("herald_inflate_errors_total") == 3));
}

#[test]
fn rsv1_without_negotiation_is_a_protocol_error() {
    let server = compressing_server(&["--workers", "1"]);
    let (mut r, answered) = upgrade(server.addr, "/echo", None);
    assert_eq!(answered, None);
    r.stream.write_all(&client_frame(0x81 | 0x40, &deflate(b"hello"), KEY)).expect("send");
    let (b0, payload) = r.next_frame().expect("close");
    assert_eq!((b0, u16::from_be_bytes([payload[0], payload[1]])), (0x88, 1002));
}
