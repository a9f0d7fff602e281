//! Unit tests for the handshake: literal requests and responses, one rule per test.

use super::*;

const MAX: usize = 8192;

/// The upgrade request of RFC 6455 section 1.3 (with a query string added).
const SAMPLE: &[u8] = b"GET /chat?room=1 HTTP/1.1\r\n\
Host: server.example.com\r\n\
Upgrade: websocket\r\n\
Connection: Upgrade\r\n\
Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\
Origin: http://example.com\r\n\
Sec-WebSocket-Protocol: chat, superchat\r\n\
Sec-WebSocket-Version: 13\r\n\r\n";

fn parse(buf: &[u8]) -> RequestHead {
    parse_request(buf, MAX).expect("valid head").expect("complete head")
}

/// SAMPLE with one header line replaced (`from` -> `to`; `to` may be empty to drop the line).
fn sample_with(from: &str, to: &str) -> Vec<u8> {
    let text = std::str::from_utf8(SAMPLE).expect("ascii");
    assert!(text.contains(from), "bug: {from:?} not in SAMPLE");
    text.replacen(from, to, 1).into_bytes()
}

fn upgrade_error(buf: &[u8]) -> HandshakeError {
    parse(buf).validate_upgrade().expect_err("upgrade must be refused")
}

#[test]
fn accept_key_matches_rfc6455_sample() {
    // RFC 6455 1.3: "dGhlIHNhbXBsZSBub25jZQ==" -> "s3pPLMBiTxaQ9kYGzzhZRbK+xOo=".
    assert_eq!(accept_key("dGhlIHNhbXBsZSBub25jZQ=="), "s3pPLMBiTxaQ9kYGzzhZRbK+xOo=");
}

#[test]
fn valid_upgrade_yields_accept_key() {
    let head = parse(SAMPLE);
    assert!(head.wants_upgrade());
    assert_eq!(head.validate_upgrade(), Ok("s3pPLMBiTxaQ9kYGzzhZRbK+xOo=".to_owned()));
    assert_eq!(head.head_len, SAMPLE.len());
}

#[test]
fn splits_path_and_query_at_first_question_mark() {
    let head = parse(SAMPLE);
    assert_eq!(head.method, Method::Get);
    assert_eq!(head.path, "/chat");
    assert_eq!(head.query.as_deref(), Some("room=1"));
    let head = parse(b"GET /a/b HTTP/1.1\r\nHost: h\r\n\r\n");
    assert_eq!((head.path.as_str(), head.query), ("/a/b", None));
    let head = parse(b"GET /p?x=1?y HTTP/1.1\r\nHost: h\r\n\r\n");
    assert_eq!((head.path.as_str(), head.query.as_deref()), ("/p", Some("x=1?y")));
    let head = parse(b"GET /p? HTTP/1.1\r\nHost: h\r\n\r\n");
    assert_eq!(head.query.as_deref(), Some(""));
}

#[test]
fn lowercases_header_names_and_keeps_values() {
    let req = b"POST /publish HTTP/1.1\r\nHOST: Example.COM\r\nX-Token: AbC\r\n\r\nbody";
    let head = parse(req);
    assert_eq!(head.method, Method::Post);
    assert_eq!(head.header("host"), Some("Example.COM"));
    assert_eq!(head.header("x-token"), Some("AbC"));
    assert_eq!(head.header("X-Token"), None, "lookups take lowercase names");
    assert_eq!(&req[head.head_len..], b"body", "the body starts after the blank line");
}

#[test]
fn maps_methods() {
    let head = parse(b"HEAD / HTTP/1.1\r\nHost: h\r\n\r\n");
    assert_eq!(head.method, Method::Head);
    let head = parse(b"DELETE / HTTP/1.1\r\nHost: h\r\n\r\n");
    assert_eq!(head.method, Method::Other("DELETE".to_owned()));
}

#[test]
fn every_proper_prefix_of_a_valid_request_is_incomplete() {
    for len in 0..SAMPLE.len() {
        assert_eq!(parse_request(&SAMPLE[..len], MAX), Ok(None), "prefix of {len} bytes");
    }
    assert!(parse_request(SAMPLE, MAX).expect("valid").is_some());
}

#[test]
fn partial_head_at_the_limit_is_too_large() {
    // 4.2.1 leaves limits to the server; herald answers 431 once `max_head` bytes hold no full head.
    let limit = SAMPLE.len() - 1;
    assert_eq!(parse_request(&SAMPLE[..limit - 1], limit), Ok(None));
    assert_eq!(parse_request(&SAMPLE[..limit], limit), Err(HandshakeError::HeadTooLarge));
    assert_eq!(parse_request(SAMPLE, limit), Err(HandshakeError::HeadTooLarge));
    // Exactly at the limit is fine.
    assert!(parse_request(SAMPLE, SAMPLE.len()).expect("fits").is_some());
}

#[test]
fn huge_header_is_431() {
    let mut req = b"GET / HTTP/1.1\r\nHost: h\r\nX-Big: ".to_vec();
    req.extend(std::iter::repeat_n(b'a', MAX));
    req.extend_from_slice(b"\r\n\r\n");
    let err = parse_request(&req, MAX).expect_err("too large");
    assert_eq!(err, HandshakeError::HeadTooLarge);
    assert_eq!(err.status(), 431);
}

#[test]
fn too_many_headers_is_431() {
    let mut req = b"GET / HTTP/1.1\r\nHost: h\r\n".to_vec();
    for i in 0..MAX_HEADERS {
        req.extend_from_slice(format!("X-H{i}: v\r\n").as_bytes());
    }
    req.extend_from_slice(b"\r\n");
    assert_eq!(parse_request(&req, MAX), Err(HandshakeError::HeadTooLarge));
}

#[test]
fn malformed_heads_are_400() {
    let cases: &[&[u8]] = &[
        b"GET / HTTP/2.0\r\nHost: h\r\n\r\n",
        b"GET / FTP/1.1\r\n\r\n",
        b"GET  / HTTP/1.1\r\n\r\n",
        b"GET / HTTP/1.1\r\nBad Name: v\r\n\r\n",
        b"GET / HTTP/1.1\r\nX: a\x01b\r\n\r\n",
        b"G(T / HTTP/1.1\r\n\r\n",
    ];
    for case in cases {
        let err = parse_request(case, MAX).expect_err("malformed");
        assert_eq!(err.status(), 400, "{:?}: {err:?}", String::from_utf8_lossy(case));
    }
}

#[test]
fn non_utf8_header_value_is_400() {
    let err = parse_request(b"GET / HTTP/1.1\r\nHost: h\r\nX: caf\xe9\r\n\r\n", MAX).expect_err("bad");
    assert_eq!(err, HandshakeError::BadRequest("header value is not valid UTF-8"));
}

#[test]
fn upgrade_without_upgrade_header_is_400() {
    let err = upgrade_error(&sample_with("Upgrade: websocket\r\n", ""));
    assert_eq!(err.status(), 400);
    let err = upgrade_error(&sample_with("Upgrade: websocket", "Upgrade: h2c"));
    assert_eq!(err, HandshakeError::BadRequest("missing Upgrade: websocket"));
}

#[test]
fn upgrade_without_connection_upgrade_is_400() {
    let err = upgrade_error(&sample_with("Connection: Upgrade", "Connection: keep-alive"));
    assert_eq!(err, HandshakeError::BadRequest("missing Connection: upgrade"));
}

#[test]
fn connection_is_a_case_insensitive_token_list() {
    // 4.2.1 (4): a Connection header that *includes* the token "Upgrade" (Firefox sends this one).
    for value in ["keep-alive, Upgrade", "UPGRADE", "upgrade ,close", "x,\tUpgrade"] {
        let req = sample_with("Connection: Upgrade", &format!("Connection: {value}"));
        assert!(parse(&req).validate_upgrade().is_ok(), "{value}");
    }
    let req = sample_with("Connection: Upgrade", "Connection: Upgraded");
    assert!(parse(&req).validate_upgrade().is_err());
    let req = sample_with("Upgrade: websocket", "Upgrade: WebSocket");
    assert!(parse(&req).validate_upgrade().is_ok(), "Upgrade is case-insensitive too");
}

#[test]
fn bad_key_is_400() {
    for key in [
        "",
        "dGhlIHNhbXBsZSBub25jZQ",
        "dGhlIHNhbXBsZSBub25jZQ=",
        "c2hvcnQ=",
        "dGhlIHNhbXBsZSBub25jZR==",
        "*GhlIHNhbXBsZSBub25jZQ==",
    ] {
        let req = sample_with("dGhlIHNhbXBsZSBub25jZQ==", key);
        assert_eq!(upgrade_error(&req), HandshakeError::BadRequest("invalid Sec-WebSocket-Key"), "{key:?}");
    }
    let err = upgrade_error(&sample_with("Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n", ""));
    assert_eq!(err, HandshakeError::BadRequest("missing Sec-WebSocket-Key"));
}

#[test]
fn repeated_key_is_400() {
    // 11.3.1: Sec-WebSocket-Key "MUST NOT appear more than once in an HTTP request".
    let req = sample_with("Origin", "Sec-WebSocket-Key: AAAAAAAAAAAAAAAAAAAAAA==\r\nOrigin");
    assert_eq!(upgrade_error(&req), HandshakeError::BadRequest("repeated Sec-WebSocket-Key"));
}

#[test]
fn post_upgrade_is_405_with_allow_get() {
    let req = sample_with("GET /chat", "POST /chat");
    let head = parse(&req);
    assert!(head.wants_upgrade());
    let err = head.validate_upgrade().expect_err("POST");
    assert_eq!(err, HandshakeError::MethodNotAllowed);
    let mut out = Vec::new();
    err.write_response(&mut out);
    let text = String::from_utf8(out).expect("ascii");
    assert!(text.starts_with("HTTP/1.1 405 Method Not Allowed\r\n"), "{text}");
    assert!(text.contains("\r\nAllow: GET\r\n"), "{text}");
    assert!(text.contains("\r\nConnection: close\r\n"), "{text}");
}

#[test]
fn version_8_is_426_with_version_13_header() {
    let err = upgrade_error(&sample_with("Version: 13", "Version: 8"));
    assert_eq!(err, HandshakeError::UnsupportedVersion);
    let mut out = Vec::new();
    err.write_response(&mut out);
    let text = String::from_utf8(out).expect("ascii");
    assert!(text.starts_with("HTTP/1.1 426 Upgrade Required\r\n"), "{text}");
    assert!(text.contains("\r\nSec-WebSocket-Version: 13\r\n"), "{text}");
}

#[test]
fn missing_version_is_400() {
    let err = upgrade_error(&sample_with("Sec-WebSocket-Version: 13\r\n", ""));
    assert_eq!(err, HandshakeError::BadRequest("missing Sec-WebSocket-Version"));
}

#[test]
fn upgrade_needs_host_and_http11() {
    let err = upgrade_error(&sample_with("Host: server.example.com\r\n", ""));
    assert_eq!(err, HandshakeError::BadRequest("missing Host header"));
    let err = upgrade_error(&sample_with("HTTP/1.1", "HTTP/1.0"));
    assert_eq!(err.status(), 400);
}

#[test]
fn plain_requests_do_not_want_upgrade() {
    let head = parse(b"GET /metrics HTTP/1.1\r\nHost: h\r\nConnection: keep-alive\r\n\r\n");
    assert!(!head.wants_upgrade());
    assert!(!head.wants_close());
    let head = parse(b"GET / HTTP/1.1\r\nHost: h\r\nSec-WebSocket-Key: x\r\n\r\n");
    assert!(head.wants_upgrade(), "a key alone asks for an upgrade");
}

#[test]
fn wants_close_on_connection_close_or_http10() {
    assert!(parse(b"GET / HTTP/1.1\r\nHost: h\r\nConnection: Keep-Alive, Close\r\n\r\n").wants_close());
    assert!(parse(b"GET / HTTP/1.0\r\n\r\n").wants_close());
}

#[test]
fn content_length_cases() {
    let cl = |extra: &str| {
        let req = format!("POST /p HTTP/1.1\r\nHost: h\r\n{extra}\r\n");
        parse(req.as_bytes()).content_length()
    };
    assert_eq!(cl(""), Ok(None));
    assert_eq!(cl("Content-Length: 0\r\n"), Ok(Some(0)));
    assert_eq!(cl("Content-Length: 42\r\n"), Ok(Some(42)));
    assert_eq!(cl("Content-Length: 42\r\ncontent-length: 42\r\n"), Ok(Some(42)));
    assert_eq!(cl("Content-Length: 42, 42\r\n"), Ok(Some(42)));
    let bad = |extra: &str| cl(extra).expect_err(extra).status();
    assert_eq!(bad("Content-Length: 42\r\nContent-Length: 43\r\n"), 400);
    assert_eq!(bad("Content-Length: 1, 2\r\n"), 400);
    assert_eq!(bad("Content-Length: abc\r\n"), 400);
    assert_eq!(bad("Content-Length: +5\r\n"), 400);
    assert_eq!(bad("Content-Length: -1\r\n"), 400);
    assert_eq!(bad("Content-Length: \r\n"), 400);
    assert_eq!(bad("Content-Length: 99999999999999999999999\r\n"), 400);
    assert_eq!(
        cl("Transfer-Encoding: chunked\r\n"),
        Err(HandshakeError::BadRequest("chunked bodies are not supported"))
    );
    assert_eq!(bad("Transfer-Encoding: chunked\r\nContent-Length: 5\r\n"), 400);
}

#[test]
fn writes_switching_protocols() {
    let mut out = Vec::new();
    write_switching_protocols(&mut out, "s3pPLMBiTxaQ9kYGzzhZRbK+xOo=", None);
    assert_eq!(
        out,
        b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
Sec-WebSocket-Accept: s3pPLMBiTxaQ9kYGzzhZRbK+xOo=\r\n\r\n"
    );
    out.clear();
    write_switching_protocols(&mut out, "x", Some("chat"));
    assert!(out.ends_with(b"Sec-WebSocket-Accept: x\r\nSec-WebSocket-Protocol: chat\r\n\r\n"));
}

#[test]
fn writes_switching_protocols_with_the_accepted_extension() {
    let mut out = Vec::new();
    write_switching_protocols_with(&mut out, "x", None, Some("permessage-deflate; server_no_context_takeover"));
    assert!(out.ends_with(
        b"Sec-WebSocket-Accept: x\r\nSec-WebSocket-Extensions: permessage-deflate; server_no_context_takeover\r\n\r\n"
    ));
}

#[test]
fn writes_response_with_length_and_optional_close() {
    let mut out = Vec::new();
    write_response(&mut out, 200, "application/json", b"{}", false);
    assert_eq!(out, b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: 2\r\n\r\n{}");
    out.clear();
    write_response(&mut out, 204, "text/plain", b"", true);
    assert_eq!(
        out,
        b"HTTP/1.1 204 No Content\r\nContent-Type: text/plain\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
    );
}

#[test]
fn error_response_body_is_the_message() {
    let mut out = Vec::new();
    HandshakeError::BadRequest("missing Host header").write_response(&mut out);
    let text = String::from_utf8(out).expect("ascii");
    let body = "bad request: missing Host header\n";
    assert!(text.starts_with("HTTP/1.1 400 Bad Request\r\nContent-Type: text/plain\r\n"), "{text}");
    assert!(text.contains(&format!("Content-Length: {}\r\n", body.len())), "{text}");
    assert!(text.ends_with(&format!("\r\n\r\n{body}")), "{text}");
}

#[test]
fn reason_phrases_cover_herald_statuses() {
    for status in [101, 200, 204, 400, 401, 403, 404, 405, 408, 411, 413, 426, 429, 431, 500, 503] {
        assert_ne!(reason_phrase(status), "Unknown", "{status}");
    }
    assert_eq!(reason_phrase(299), "Unknown");
}

#[test]
fn client_request_round_trips_through_our_parser() {
    let key = client_key([7; 16]);
    let mut out = Vec::new();
    write_client_request(
        &mut out,
        "localhost:9001",
        "/sub/news?since=3",
        &key,
        &[("Sec-WebSocket-Protocol", "herald")],
    );
    let head = parse(&out);
    assert_eq!(head.validate_upgrade(), Ok(accept_key(&key)));
    assert_eq!(head.path, "/sub/news");
    assert_eq!(head.header("sec-websocket-protocol"), Some("herald"));
    assert_eq!(head.head_len, out.len());
}

fn response_101(key: &str, protocol: Option<&str>) -> Vec<u8> {
    let mut out = Vec::new();
    write_switching_protocols(&mut out, &accept_key(key), protocol);
    out
}

#[test]
fn client_accepts_matching_101_and_reports_tail_offset() {
    let key = client_key([1; 16]);
    let mut resp = response_101(&key, Some("herald"));
    let head_len = resp.len();
    resp.extend_from_slice(b"\x81\x02hi");
    let accepted = parse_response(&resp, &key, MAX).expect("valid").expect("complete");
    assert_eq!(accepted, ClientAccepted { head_len, protocol: Some("herald".to_owned()) });
    for len in 0..head_len {
        assert_eq!(parse_response(&resp[..len], &key, MAX), Ok(None), "prefix of {len} bytes");
    }
}

#[test]
fn client_refuses_wrong_accept_or_missing_upgrade() {
    let key = client_key([1; 16]);
    let other = response_101(&client_key([2; 16]), None);
    assert_eq!(parse_response(&other, &key, MAX), Err(HandshakeError::Refused(101)));
    let no_accept = b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\r\n";
    assert_eq!(parse_response(no_accept, &key, MAX), Err(HandshakeError::Refused(101)));
    let good = String::from_utf8(response_101(&key, None)).expect("ascii");
    let no_upgrade = good.replace("Upgrade: websocket\r\n", "");
    assert_eq!(parse_response(no_upgrade.as_bytes(), &key, MAX), Err(HandshakeError::Refused(101)));
}

#[test]
fn client_reports_non_101_status_and_garbage() {
    let mut resp = Vec::new();
    HandshakeError::UnsupportedVersion.write_response(&mut resp);
    assert_eq!(parse_response(&resp, "k", MAX), Err(HandshakeError::Refused(426)));
    assert_eq!(parse_response(b"\x00garbage\r\n\r\n", "k", MAX), Err(HandshakeError::Refused(0)));
    let resp = response_101("k", None);
    assert_eq!(parse_response(&resp, "k", 10), Err(HandshakeError::HeadTooLarge));
}
