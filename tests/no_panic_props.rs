//! Input-driven parsers never panic: arbitrary bytes into the HTTP request parser, the client-side response
//! parser and the `/ws` JSON request parser give a value or a typed error, never a crash (STYLE: "no unwrap on
//! input-driven paths"; fuzz targets are the stronger form of this and are not set up yet).
use herald::control;
use herald::protocol::handshake;
use proptest::prelude::*;

/// Bytes that look like an HTTP request often enough to reach deep into the parser.
fn http_like() -> impl Strategy<Value = Vec<u8>> {
    let pieces = prop::sample::select(vec![
        &b"GET "[..],
        b"POST ",
        b"/echo",
        b"/sub/x",
        b" HTTP/1.1\r\n",
        b" HTTP/1.0\r\n",
        b"Host: a\r\n",
        b"Upgrade: websocket\r\n",
        b"Connection: Upgrade, keep-alive\r\n",
        b"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n",
        b"Sec-WebSocket-Version: 13\r\n",
        b"Content-Length: 5\r\n",
        b"Content-Length: -1\r\n",
        b"Transfer-Encoding: chunked\r\n",
        b"\r\n",
        b"\xff\xfe",
        b":",
        b" ",
    ]);
    prop_oneof![
        prop::collection::vec(pieces, 0..24).prop_map(|v| v.concat()),
        prop::collection::vec(any::<u8>(), 0..512),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(2000))]

    #[test]
    fn request_parsing_never_panics(buf in http_like(), max_head in 16usize..2048) {
        if let Ok(Some(head)) = handshake::parse_request(&buf, max_head) {
            prop_assert!(head.head_len <= buf.len());
            let _ = head.validate_upgrade();
            let _ = head.content_length();
            let _ = head.wants_close();
            let _ = head.wants_upgrade();
        }
    }

    #[test]
    fn response_parsing_never_panics(buf in http_like()) {
        let _ = handshake::parse_response(&buf, "dGhlIHNhbXBsZSBub25jZQ==", 4096);
    }

    #[test]
    fn control_parsing_never_panics(text in prop_oneof![
        any::<String>().prop_map(String::into_bytes),
        prop::collection::vec(any::<u8>(), 0..256),
        Just(br#"{"type":"publish","topic":"t","data":{"a":[1,2,{"b":null}]},"id":"x"}"#.to_vec()),
        "[a-z\"{}:,\\[\\] 0-9]{0,64}".prop_map(String::into_bytes),
    ]) {
        match control::parse_request(&text) {
            Ok(_) => {}
            Err(e) => {
                let mut out = Vec::new();
                control::write_error(&mut out, e.id.as_deref(), e.code, &e.message);
                prop_assert!(serde_json::from_slice::<serde_json::Value>(&out).is_ok(), "error reply is JSON");
            }
        }
    }
}
