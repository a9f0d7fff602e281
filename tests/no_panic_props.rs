//! Input-driven parsers never panic: arbitrary bytes into the HTTP request parser, the client-side response
//! parser, the `/ws` JSON request parser, the token carriers, the JWT verifier and the auth message give a
//! value or a typed error, never a crash (STYLE: "no unwrap on
//! input-driven paths"; fuzz targets are the stronger form of this and are not set up yet).
use std::sync::Arc;
use std::time::Instant;

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine as _;
use herald::control;
use herald::protocol::auth::policy::Need;
use herald::protocol::auth::session::parse_auth_message;
use herald::protocol::auth::{AuthPolicy, Carriers, ClaimRules, KeySet, Mode, Verifier, WorkerAuth};
use herald::protocol::handshake;
use proptest::prelude::*;

/// Strings shaped like JWTs often enough to get past the first checks: three base64url parts whose first two
/// decode to JSON-ish text, or arbitrary text.
fn token_like() -> impl Strategy<Value = String> {
    let json_ish = "[a-zA-Z\\\"{}:,\\[\\] 0-9.-]{0,80}";
    prop_oneof![
        (json_ish, json_ish, "[A-Za-z0-9_-]{0,90}").prop_map(|(h, c, sig)| format!(
            "{}.{}.{}",
            URL_SAFE_NO_PAD.encode(h),
            URL_SAFE_NO_PAD.encode(c),
            sig
        )),
        (prop::sample::select(vec!["HS256", "RS256", "ES256", "EdDSA", "none", "HS512", "x"]), json_ish).prop_map(
            |(alg, c)| format!(
                "{}.{}.c2ln",
                URL_SAFE_NO_PAD.encode(format!("{{\"alg\":\"{alg}\",\"kid\":\"rsa-1\"}}")),
                URL_SAFE_NO_PAD.encode(c)
            )
        ),
        any::<String>(),
    ]
}

fn policy() -> AuthPolicy {
    let mut keys = KeySet::new();
    keys.add_secret(b"secret", &[jsonwebtoken::Algorithm::HS256]).expect("secret");
    keys.add_jwks(include_bytes!("fixtures/auth/jwks.json")).expect("jwks");
    let rules = ClaimRules { issuers: vec!["i".into()], audiences: vec![], leeway: 30, max_token_size: 4096 };
    AuthPolicy::new(
        Mode::Handshake,
        Verifier::new(Arc::new(keys), rules),
        Carriers::default(),
        vec!["https://a.example".into()],
        None,
        std::time::Duration::from_secs(5),
    )
}

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
        // A small depth limit, so that generated brackets reach the depth check too.
        match control::parse_request(&text, 2) {
            Ok(_) => {}
            Err(e) => {
                let mut out = Vec::new();
                control::write_error(&mut out, e.id.as_deref(), e.code, &e.message);
                prop_assert!(serde_json::from_slice::<serde_json::Value>(&out).is_ok(), "error reply is JSON");
            }
        }
    }

    #[test]
    fn token_verification_never_panics(token in token_like(), unix in any::<u64>()) {
        let _ = policy().verify(&token, unix, &mut WorkerAuth::default());
    }

    #[test]
    fn upgrade_auth_decisions_never_panic(
        header in prop::sample::select(vec!["Authorization", "X-Auth-Token", "Cookie", "Sec-WebSocket-Protocol", "Origin"]),
        value in "[ -~]{0,120}",
        query in "[ -~&=]{0,60}",
    ) {
        let req = format!(
            "GET /sub/news?{} HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
             Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n{header}: {value}\r\n\r\n",
            query.replace(' ', "")
        );
        if let Ok(Some(head)) = handshake::parse_request(req.as_bytes(), 8192) {
            let p = policy();
            let mut interner = WorkerAuth::default();
            for need in [Need::Connect, Need::Subscribe("news"), Need::Publish("news")] {
                if let Err(denied) = p.check_upgrade(&head, need, false, Instant::now(), 1_800_000_000, &mut interner) {
                    prop_assert!(matches!(denied.status(), 401 | 403));
                }
            }
            let _ = p.check_http_publish(&head, "news", 1_800_000_000, &mut interner);
        }
    }

    #[test]
    fn auth_message_parsing_never_panics(text in prop_oneof![
        prop::collection::vec(any::<u8>(), 0..256),
        "[a-z\"{}:,\\[\\] 0-9]{0,64}".prop_map(String::into_bytes),
        Just(br#"{"type":"auth","token":"a.b.c"}"#.to_vec()),
    ]) {
        let _ = parse_auth_message(&text);
    }
}
