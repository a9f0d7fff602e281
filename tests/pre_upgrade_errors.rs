//! Every refusal before the upgrade gets its exact HTTP status (and the headers that status requires), is
//! counted in metrics, and leaves the server serving: routing (404/405), the upgrade headers (400/426), the
//! head size (431), topic names (400), connection limits (503), `POST /publish` bodies (411/413), and the
//! handshake timeout against a slowloris client.
mod support;

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::{Duration, Instant};

use support::{connect, parse_response, raw_exchange, read_head, Server};

/// A valid `Sec-WebSocket-Key` (the one from RFC 6455 section 1.3).
const KEY: &str = "dGhlIHNhbXBsZSBub25jZQ==";

/// A complete, valid upgrade request for `path`, with `extra` header lines (each ending in CRLF) added.
fn upgrade_request(path: &str, extra: &str) -> String {
    format!(
        "GET {path} HTTP/1.1\r\nHost: test\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
         Sec-WebSocket-Key: {KEY}\r\nSec-WebSocket-Version: 13\r\n{extra}\r\n"
    )
}

/// Sends `request` and returns (status, head) of the answer, reading only up to the end of the head (a 101
/// leaves the connection open, so reading to EOF would wait).
fn head_of(addr: SocketAddr, request: &[u8]) -> (u16, String) {
    let mut s = TcpStream::connect(addr).expect("connect");
    s.set_read_timeout(Some(Duration::from_secs(5))).expect("timeout");
    // The server may answer (and close) before the whole request is written, e.g. on an oversized head.
    let _ = s.write_all(request);
    let (status, head, _) = parse_response(&read_head(&mut s));
    (status, head)
}

/// The value of header `name` (ASCII case-insensitive) in a response head, if present.
fn header<'a>(head: &'a str, name: &str) -> Option<&'a str> {
    head.lines().skip(1).find_map(|line| {
        let (n, v) = line.split_once(':')?;
        n.trim().eq_ignore_ascii_case(name).then(|| v.trim())
    })
}

/// Retries an upgrade on `path` until it gets a 101 or `timeout` passes (slots are freed asynchronously).
/// Returns the upgraded stream, if any, and how many attempts were refused with 503 on the way.
fn upgrade_succeeds_within(addr: SocketAddr, path: &str, timeout: Duration) -> (Option<TcpStream>, u64) {
    let deadline = Instant::now() + timeout;
    let mut refused = 0;
    loop {
        let mut s = TcpStream::connect(addr).expect("connect");
        s.set_read_timeout(Some(Duration::from_secs(5))).expect("timeout");
        let _ = s.write_all(upgrade_request(path, "").as_bytes());
        let mut buf = Vec::new();
        let mut chunk = [0u8; 1024];
        while !buf.windows(4).any(|w| w == b"\r\n\r\n") {
            match s.read(&mut chunk) {
                Ok(0) | Err(_) => break,
                Ok(n) => buf.extend_from_slice(&chunk[..n]),
            }
        }
        if buf.starts_with(b"HTTP/1.1 101 ") {
            return (Some(s), refused);
        }
        if buf.starts_with(b"HTTP/1.1 503 ") {
            refused += 1;
        }
        if Instant::now() >= deadline {
            return (None, refused);
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

// ---- routing ----------------------------------------------------------------------------------------------

#[test]
fn unknown_path_is_404() {
    let server = Server::start(&["--workers", "1"]);
    let (status, _, _) = server.http("GET", "/no/such/path", &[], b"");
    assert_eq!(status, 404, "plain GET of an unknown path");
    // An upgrade attempt on an unknown path is not a WebSocket endpoint either.
    let (status, _) = head_of(server.addr, upgrade_request("/nope", "").as_bytes());
    assert_eq!(status, 404, "upgrade on an unknown path");
    assert_eq!(server.metric("herald_handshakes_failed_total{status=\"404\"}"), 2);
}

/// RFC 6455 section 4.2.1: the opening handshake is "An HTTP/1.1 or higher GET request"; RFC 9110 section
/// 15.5.6: "The origin server MUST generate an Allow header field in a 405 response containing a list of the
/// target resource's currently supported methods."
#[test]
fn post_upgrade_to_echo_is_405_with_allow_get() {
    let server = Server::start(&["--workers", "1"]);
    let request = format!(
        "POST /echo HTTP/1.1\r\nHost: test\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
         Sec-WebSocket-Key: {KEY}\r\nSec-WebSocket-Version: 13\r\nContent-Length: 0\r\n\r\n"
    );
    let (status, head, _) = raw_exchange(server.addr, request.as_bytes());
    assert_eq!(status, 405, "{head}");
    assert_eq!(header(&head, "Allow"), Some("GET"), "{head}");
}

/// RFC 9110 section 15.5.6 (as above): every 405 carries `Allow`, not only the ones for upgrade requests.
#[test]
fn every_405_names_the_allowed_methods_in_allow() {
    let server = Server::start(&["--workers", "1"]);
    let mut missing = Vec::new();
    for (method, path, allowed) in
        [("POST", "/echo", "GET"), ("POST", "/healthz", "GET"), ("GET", "/publish/t", "POST")]
    {
        let (status, head, _) = server.http(method, path, &[], b"");
        assert_eq!(status, 405, "{method} {path}: {head}");
        if header(&head, "Allow") != Some(allowed) {
            missing.push(format!("{method} {path}: want Allow: {allowed}, got {:?}", header(&head, "Allow")));
        }
    }
    assert!(missing.is_empty(), "405 without the right Allow header:\n{}", missing.join("\n"));
}

/// RFC 6455 section 4.2.1 (3), (4): the request needs `Upgrade: websocket` and `Connection: Upgrade`; "If
/// the server, while reading the handshake, finds that the client did not send a handshake that matches the
/// description below ..., the server MUST stop processing the client's handshake and return an HTTP response
/// with an appropriate error code (such as 400 Bad Request)."
#[test]
fn get_echo_without_upgrade_headers_is_400() {
    let server = Server::start(&["--workers", "1"]);
    let (status, head, _) = server.http("GET", "/echo", &[], b"");
    assert_eq!(status, 400, "{head}");
    // Only one of the two headers is not enough either.
    let no_connection = format!(
        "GET /echo HTTP/1.1\r\nHost: test\r\nUpgrade: websocket\r\nSec-WebSocket-Key: {KEY}\r\n\
         Sec-WebSocket-Version: 13\r\n\r\n"
    );
    assert_eq!(head_of(server.addr, no_connection.as_bytes()).0, 400, "without Connection: Upgrade");
    let no_upgrade = format!(
        "GET /echo HTTP/1.1\r\nHost: test\r\nConnection: Upgrade\r\nSec-WebSocket-Key: {KEY}\r\n\
         Sec-WebSocket-Version: 13\r\n\r\n"
    );
    assert_eq!(head_of(server.addr, no_upgrade.as_bytes()).0, 400, "without Upgrade: websocket");
}

/// RFC 6455 section 4.2.1 (5): "A |Sec-WebSocket-Key| header field with a base64-encoded value that, when
/// decoded, is 16 bytes in length."
#[test]
fn missing_or_invalid_sec_websocket_key_is_400() {
    let server = Server::start(&["--workers", "1"]);
    let missing = "GET /echo HTTP/1.1\r\nHost: test\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
                   Sec-WebSocket-Version: 13\r\n\r\n";
    assert_eq!(head_of(server.addr, missing.as_bytes()).0, 400, "missing key");
    for bad in [
        "",                             // empty
        "not base64!",                  // not base64
        "AAAAAAAAAAAAAAAAAAAA",         // base64 of 15 bytes
        "AAAAAAAAAAAAAAAAAAAAAAAAAA==", // base64 of 19 bytes
    ] {
        let request = format!(
            "GET /echo HTTP/1.1\r\nHost: test\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
             Sec-WebSocket-Key: {bad}\r\nSec-WebSocket-Version: 13\r\n\r\n"
        );
        assert_eq!(head_of(server.addr, request.as_bytes()).0, 400, "key {bad:?}");
    }
    assert_eq!(server.metric("herald_handshakes_failed_total{status=\"400\"}"), 5);
    assert_eq!(server.metric("herald_upgrades_total"), 0);
}

/// RFC 6455 section 4.4: "If this version does not match a version understood by the server, the server MUST
/// abort the WebSocket handshake described in this section and instead send an appropriate HTTP error code
/// (such as 426 Upgrade Required) and a |Sec-WebSocket-Version| header field indicating the version(s) the
/// server is capable of understanding."
#[test]
fn version_8_is_426_with_sec_websocket_version_13() {
    let server = Server::start(&["--workers", "1"]);
    let request = format!(
        "GET /echo HTTP/1.1\r\nHost: test\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
         Sec-WebSocket-Key: {KEY}\r\nSec-WebSocket-Version: 8\r\n\r\n"
    );
    let (status, head, _) = raw_exchange(server.addr, request.as_bytes());
    assert_eq!(status, 426, "{head}");
    assert_eq!(header(&head, "Sec-WebSocket-Version"), Some("13"), "{head}");
    assert_eq!(server.metric("herald_handshakes_failed_total{status=\"426\"}"), 1);
}

// ---- request head size ------------------------------------------------------------------------------------

/// RFC 6585 section 5: 431 "indicates that the server is unwilling to process the request because its header
/// fields are too large". The default `max_request_head` is 8 KiB.
#[test]
fn request_head_over_8_kib_is_431() {
    let server = Server::start(&["--workers", "1"]);
    let big = upgrade_request("/echo", &format!("X-Pad: {}\r\n", "a".repeat(9000)));
    let (status, head) = head_of(server.addr, big.as_bytes());
    assert_eq!(status, 431, "{head}");
    // Just under the limit is still fine.
    let fits = upgrade_request("/echo", &format!("X-Pad: {}\r\n", "a".repeat(7800)));
    assert!(fits.len() < 8192);
    assert_eq!(head_of(server.addr, fits.as_bytes()).0, 101, "a {}-byte head", fits.len());
    assert_eq!(server.metric("herald_handshakes_failed_total{status=\"431\"}"), 1);
}

#[test]
fn request_head_over_configured_max_request_head_is_431() {
    let server = Server::start(&["--workers", "1", "--max-request-head", "1KiB"]);
    let over = upgrade_request("/echo", &format!("X-Pad: {}\r\n", "a".repeat(1100)));
    assert_eq!(head_of(server.addr, over.as_bytes()).0, 431, "a {}-byte head", over.len());
    let fits = upgrade_request("/echo", &format!("X-Pad: {}\r\n", "a".repeat(700)));
    assert!(fits.len() < 1024);
    assert_eq!(head_of(server.addr, fits.as_bytes()).0, 101, "a {}-byte head", fits.len());
}

#[test]
fn more_than_64_headers_is_431() {
    let server = Server::start(&["--workers", "1"]);
    let extra: String = (0..64).map(|i| format!("X-H{i}: v\r\n")).collect();
    let request = upgrade_request("/echo", &extra); // 6 + 64 headers, well under 8 KiB
    assert!(request.len() < 8192);
    assert_eq!(head_of(server.addr, request.as_bytes()).0, 431);
}

// ---- topics -----------------------------------------------------------------------------------------------

/// Topic names are 1 to 128 bytes of `A-Z a-z 0-9 . _ : -`; anything else is refused before the upgrade.
#[test]
fn invalid_topic_is_400() {
    let server = Server::start(&["--workers", "1"]);
    let long = format!("/sub/{}", "a".repeat(129));
    for path in ["/sub/bad%20topic", "/sub/", long.as_str(), "/pub/bad%20topic", "/pub/", "/sub/a/b"] {
        let (status, head) = head_of(server.addr, upgrade_request(path, "").as_bytes());
        assert_eq!(status, 400, "{path}: {head}");
    }
    // The longest valid name is accepted.
    let longest = format!("/sub/{}", "a".repeat(128));
    assert_eq!(head_of(server.addr, upgrade_request(&longest, "").as_bytes()).0, 101, "128-byte topic");
    let (status, _, _) = server.http("POST", "/publish/bad%20topic", &[], b"x");
    assert_eq!(status, 400, "POST /publish with a bad topic");
}

// ---- connection limits ------------------------------------------------------------------------------------

#[test]
fn over_max_connections_is_503_until_a_slot_frees() {
    let server = Server::start(&["--workers", "2", "--max-connections", "3"]);
    let mut held: Vec<_> = (0..3).map(|_| connect(&server.url("/echo"))).collect();
    let (status, head, _) = raw_exchange(server.addr, upgrade_request("/echo", "").as_bytes());
    assert_eq!(status, 503, "4th connection: {head}");

    let mut first = held.remove(0);
    first.close(None).expect("close");
    while first.read().is_ok() {}
    drop(first);
    let (fresh, mut refused) = upgrade_succeeds_within(server.addr, "/echo", Duration::from_secs(2));
    assert!(fresh.is_some(), "no upgrade succeeded after a slot was freed");
    drop(fresh);
    drop(held);
    let deadline = Instant::now() + Duration::from_secs(2);
    let metrics = loop {
        // The scrape itself needs a slot; retry while the others are being released.
        let (status, _, body) = server.http("GET", "/metrics", &[], b"");
        if status == 200 {
            break String::from_utf8(body).expect("utf-8");
        }
        assert_eq!(status, 503);
        refused += 1;
        assert!(Instant::now() < deadline, "metrics never answered");
        std::thread::sleep(Duration::from_millis(20));
    };
    let expected = format!("herald_connections_rejected_total{{reason=\"max_connections\"}} {}\n", 1 + refused);
    assert!(metrics.contains(&expected), "want {expected:?} in:\n{metrics}");
}

#[test]
fn over_max_connections_per_ip_is_503() {
    let server = Server::start(&["--workers", "2", "--max-connections-per-ip", "2"]);
    let held: Vec<_> = (0..2).map(|_| connect(&server.url("/echo"))).collect();
    let (status, head, _) = raw_exchange(server.addr, upgrade_request("/echo", "").as_bytes());
    assert_eq!(status, 503, "3rd connection from 127.0.0.1: {head}");
    let (status, _, _) = server.http("GET", "/healthz", &[], b"");
    assert_eq!(status, 503, "plain HTTP counts against the per-IP limit too");
    drop(held);
    let (fresh, mut refused) = upgrade_succeeds_within(server.addr, "/echo", Duration::from_secs(2));
    assert!(fresh.is_some(), "no upgrade succeeded after the held connections closed");
    drop(fresh);
    let deadline = Instant::now() + Duration::from_secs(2);
    loop {
        match server.http("GET", "/healthz", &[], b"").0 {
            200 => break,
            503 => refused += 1,
            other => panic!("healthz answered {other}"),
        }
        assert!(Instant::now() < deadline, "healthz never answered 200");
        std::thread::sleep(Duration::from_millis(20));
    }
    assert_eq!(server.metric("herald_connections_rejected_total{reason=\"max_connections_per_ip\"}"), 2 + refused);
}

// ---- POST /publish bodies ---------------------------------------------------------------------------------

#[test]
fn publish_body_over_max_message_size_is_413() {
    let server = Server::start(&["--workers", "1", "--max-message-size", "1KiB"]);
    let ct = [("Content-Type", "application/octet-stream")];
    let (status, head, _) = server.http("POST", "/publish/t", &ct, &[7u8; 1025]);
    assert_eq!(status, 413, "{head}");
    let (status, head, _) = server.http("POST", "/publish/t", &ct, &[7u8; 1024]);
    assert_eq!(status, 200, "a body of exactly max_message_size: {head}");
    assert_eq!(server.metric("herald_handshakes_failed_total{status=\"413\"}"), 1);
}

/// RFC 9110 section 15.5.12: 411 Length Required "indicates that the server refuses to accept the request
/// without a defined Content-Length".
#[test]
fn publish_without_content_length_is_411() {
    let server = Server::start(&["--workers", "1"]);
    let request = b"POST /publish/t HTTP/1.1\r\nHost: test\r\nConnection: close\r\n\r\n";
    let (status, head, _) = raw_exchange(server.addr, request);
    assert_eq!(status, 411, "{head}");
}

// ---- handshake timeout ------------------------------------------------------------------------------------

/// Reads until EOF (or reset); returns when it happened, or None if the connection outlived `timeout`.
/// Any bytes the server sends (an error response) are ignored.
fn eof_within(s: &mut TcpStream, timeout: Duration) -> Option<Instant> {
    let deadline = Instant::now() + timeout;
    let mut chunk = [0u8; 1024];
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return None;
        }
        s.set_read_timeout(Some(left)).expect("timeout");
        match s.read(&mut chunk) {
            Ok(0) => return Some(Instant::now()),
            Ok(_) => continue,
            Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => return Some(Instant::now()),
            Err(_) => return None,
        }
    }
}

#[test]
fn partial_request_head_is_dropped_after_handshake_timeout() {
    let server = Server::start(&["--workers", "1", "--handshake-timeout", "300ms"]);
    let mut s = TcpStream::connect(server.addr).expect("connect");
    let start = Instant::now();
    s.write_all(b"GET /echo HTTP/1.1\r\nHost: test\r\n").expect("write");
    let closed = eof_within(&mut s, Duration::from_millis(1500)).expect("still open after 1.5 s");
    let elapsed = closed - start;
    assert!(elapsed >= Duration::from_millis(250), "closed after {elapsed:?}, before the timeout");
    assert_eq!(server.metric("herald_connections_rejected_total{reason=\"handshake_timeout\"}"), 1);
}

/// The deadline runs from accept, not from the last byte: trickling a head one byte at a time (slowloris)
/// does not keep the connection alive.
#[test]
fn slowloris_trickle_does_not_extend_handshake_timeout() {
    let server = Server::start(&["--workers", "1", "--handshake-timeout", "300ms"]);
    let mut s = TcpStream::connect(server.addr).expect("connect");
    let start = Instant::now();
    let head = b"GET /echo HTTP/1.1\r\nHost: test\r\nX-Slow: aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa";
    let mut closed_at = None;
    for byte in head.iter() {
        if s.write_all(&[*byte]).is_err() {
            closed_at = Some(Instant::now());
            break;
        }
        if let Some(t) = eof_within(&mut s, Duration::from_millis(50)) {
            closed_at = Some(t);
            break;
        }
        assert!(start.elapsed() < Duration::from_millis(1500), "slowloris kept the connection for 1.5 s");
    }
    let closed = closed_at.expect("the whole head was trickled without a disconnect");
    assert!(closed - start < Duration::from_millis(1500), "closed after {:?}", closed - start);
    assert_eq!(server.metric("herald_connections_rejected_total{reason=\"handshake_timeout\"}"), 1);
}

// ---- robustness -------------------------------------------------------------------------------------------

#[test]
fn flood_of_500_bad_requests_leaves_server_healthy() {
    let server = Server::start(&["--workers", "2"]);
    let bad_key = "GET /echo HTTP/1.1\r\nHost: t\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
                   Sec-WebSocket-Key: short\r\nSec-WebSocket-Version: 13\r\n\r\n";
    let bad_version = upgrade_request("/echo", "").replace("Version: 13", "Version: 8");
    let cases: Vec<(Vec<u8>, u16)> = vec![
        (b"\x16\x03\x01\x00\xa5\x01\x00\x00\xa1\x03\x03garbage\r\n\r\n".to_vec(), 400),
        (b"GET / HTTP/9.9\r\n\r\n".to_vec(), 400),
        (bad_key.as_bytes().to_vec(), 400),
        (b"GET /nope HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n".to_vec(), 404),
        (bad_version.into_bytes(), 426),
        (upgrade_request("/echo", "").replace("GET", "BREW").into_bytes(), 405),
        (upgrade_request("/sub/bad%20topic", "").into_bytes(), 400),
    ];
    let addr = server.addr;
    std::thread::scope(|scope| {
        for t in 0..10 {
            let cases = &cases;
            scope.spawn(move || {
                for i in 0..50 {
                    let (request, expected) = &cases[(t * 50 + i) % cases.len()];
                    let (status, head, _) = raw_exchange(addr, request);
                    assert_eq!(status, *expected, "request {:?}: {head}", String::from_utf8_lossy(request));
                }
            });
        }
    });
    // Healthy, and every one of the 500 connections has been released (the probe itself is the only one).
    let deadline = Instant::now() + Duration::from_secs(2);
    loop {
        let (status, _, body) = server.http("GET", "/healthz", &[], b"");
        assert_eq!(status, 200);
        let body = String::from_utf8(body).expect("utf-8");
        if body.contains("\"connections\":1}") {
            break;
        }
        assert!(Instant::now() < deadline, "connections not released: {body}");
        std::thread::sleep(Duration::from_millis(20));
    }
    let mut ws = connect(&server.url("/echo"));
    ws.send(tungstenite::Message::text("still here")).expect("send");
    assert_eq!(support::next_data(&mut ws), tungstenite::Message::text("still here"));
}

/// A client that started a request but did not finish it in time is told 408 before the connection goes.
#[test]
fn unfinished_request_gets_408_before_the_disconnect() {
    let server = Server::start(&["--workers", "1", "--handshake-timeout", "300ms"]);
    let mut s = TcpStream::connect(server.addr).expect("connect");
    s.set_read_timeout(Some(Duration::from_secs(3))).expect("timeout");
    s.write_all(b"GET /healthz HTTP/1.1\r\nHost: te").expect("write");
    let mut got = Vec::new();
    let _ = s.read_to_end(&mut got);
    assert!(got.starts_with(b"HTTP/1.1 408 "), "got {:?}", String::from_utf8_lossy(&got));
}
