//! The fuzz targets' logic, as plain functions over `&[u8]` with no libfuzzer dependency.
//!
//! Each `fuzz_targets/<name>.rs` is a one-line wrapper around the function of the same name here, and the
//! main crate's `tests/fuzz_corpus.rs` includes this file (`#[path]`) and replays every committed corpus
//! file through the same functions on the stable toolchain, so the corpus guards every `cargo test`.
//!
//! Every function must accept any input without panicking; a panic (an `assert!` below included) is a
//! finding. The asserts state properties the sans-IO core promises in its docs: round trips, "any split of
//! the input gives the same result", bounded buffers, the documented close codes, nothing after a close.
//! Only crates the main crate already depends on are used (herald, bytes, base64, jsonwebtoken,
//! serde_json), so the stable test needs no new dependency.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine as _;
use bytes::{Bytes, BytesMut};
use herald::protocol::auth::policy::Need;
use herald::protocol::auth::session::parse_auth_message;
use herald::protocol::auth::{
    carrier, AuthError, AuthPolicy, Carrier, Carriers, ClaimRules, Denied, KeySet, Mode, Verifier, WorkerAuth,
};
use herald::protocol::close::{CloseCode, CloseFrame};
use herald::protocol::codec::{DecodeLimits, Decoder, Incoming};
use herald::protocol::conn::{ConnSettings, Connection, Event};
use herald::protocol::frame::{self, OpCode};
use herald::protocol::handshake::{self, HandshakeError, RequestHead};
use herald::protocol::Role;
use jsonwebtoken::Algorithm;
use serde_json::value::RawValue;

/// A target's entry point.
pub type Target = fn(&[u8]);

/// Every target, by the name of its `fuzz_targets/` file and corpus directory.
pub const TARGETS: &[(&str, Target)] = &[
    ("handshake_request", handshake_request),
    ("codec", codec),
    ("control", control),
    ("auth", auth),
    ("negotiate", negotiate),
    ("conn", conn),
];

/// The HS256 secret every auth target verifies with (the test fixture's secret).
pub const SECRET: &[u8] = b"test-secret-0123456789-abcdefghijklmnop";
/// The fixed Unix time tokens are judged at.
pub const NOW_UNIX: u64 = 1_800_000_000;
/// The base64url of `{"alg":"HS256","typ":"JWT"}`: the header of tokens the auth target signs itself.
const HS256_HEADER: &str = "eyJhbGciOiJIUzI1NiIsInR5cCI6IkpXVCJ9";

/// Close codes herald itself may put in a close frame (README "After the upgrade", close.rs, auth/mod.rs).
/// A close echoing the peer's own code is also allowed (RFC 6455 5.5.1); see [`conn`].
pub const DOCUMENTED_CLOSE_CODES: &[u16] = &[1000, 1001, 1002, 1003, 1007, 1008, 1009, 1011, 4401, 4403];

/// Reads a fuzz input front to back; every read past the end yields zeroes / empty slices.
struct Reader<'a> {
    data: &'a [u8],
}

impl<'a> Reader<'a> {
    fn new(data: &'a [u8]) -> Self {
        Reader { data }
    }

    fn is_empty(&self) -> bool {
        self.data.is_empty()
    }

    fn byte(&mut self) -> u8 {
        match self.data.split_first() {
            Some((&b, rest)) => {
                self.data = rest;
                b
            }
            None => 0,
        }
    }

    fn u16(&mut self) -> u16 {
        u16::from_be_bytes([self.byte(), self.byte()])
    }

    fn take(&mut self, n: usize) -> &'a [u8] {
        let (head, rest) = self.data.split_at(n.min(self.data.len()));
        self.data = rest;
        head
    }

    fn rest(&mut self) -> &'a [u8] {
        self.take(self.data.len())
    }
}

// ---------------------------------------------------------------------------------------------------------
// handshake_request: the HTTP request head parser and upgrade validation.
// ---------------------------------------------------------------------------------------------------------

/// Parses the input as a request head (with a large and a small head limit) and checks what comes back.
pub fn handshake_request(data: &[u8]) {
    for max_head in [8192, 256] {
        check_request_head(data, max_head);
    }
}

fn check_request_head(data: &[u8], max_head: usize) {
    let head = match handshake::parse_request(data, max_head) {
        Ok(None) => {
            assert!(data.len() < max_head, "an incomplete head at the limit must be HeadTooLarge");
            return;
        }
        Err(e) => {
            check_error_response(&e);
            return;
        }
        Ok(Some(head)) => head,
    };
    assert!(head.head_len <= data.len().min(max_head), "head_len {} past the input or limit", head.head_len);
    assert!(head.headers.len() <= handshake::MAX_HEADERS);
    assert!(head.version <= 1);
    for (name, _) in &head.headers {
        assert_eq!(*name, name.to_ascii_lowercase(), "header names are lowercased");
    }
    // The head ends at its blank line: the same bytes alone parse to the same head.
    let again = handshake::parse_request(&data[..head.head_len], max_head);
    assert_eq!(again, Ok(Some(head.clone())), "the head alone parses differently");

    let _ = head.wants_upgrade();
    let _ = head.wants_close();
    if let Err(e) = head.content_length() {
        assert_eq!(e.status(), 400);
    }
    match head.validate_upgrade() {
        Ok(accept) => {
            let key = head.header("sec-websocket-key").expect("a validated upgrade has a key");
            assert_eq!(accept, handshake::accept_key(key));
            assert_eq!(accept.len(), 28, "base64 of a SHA-1");
            assert!(head.wants_upgrade(), "a valid upgrade wants an upgrade");
            let mut out = Vec::new();
            handshake::write_switching_protocols(&mut out, &accept, None);
            let accepted = handshake::parse_response(&out, key, 8192).expect("our own 101 is accepted");
            assert_eq!(accepted.map(|a| a.head_len), Some(out.len()));
        }
        Err(e) => {
            assert!(matches!(e.status(), 400 | 405 | 426), "validate_upgrade gave {e:?}");
            check_error_response(&e);
        }
    }
}

/// An error response must be a complete HTTP response our own client parser reads back as that status.
fn check_error_response(e: &HandshakeError) {
    assert!(matches!(e.status(), 400 | 405 | 426 | 431), "unexpected handshake error {e:?}");
    let mut out = Vec::new();
    e.write_response(&mut out);
    assert_eq!(handshake::parse_response(&out, "k", 8192), Err(HandshakeError::Refused(e.status())));
}

// ---------------------------------------------------------------------------------------------------------
// codec: the frame decoder and message reassembly, under arbitrary chunking.
// ---------------------------------------------------------------------------------------------------------

/// What decoding a stream produced: every message/control frame, then the error that stopped it (if any).
type Outcome = (Vec<Incoming>, Option<herald::protocol::error::ProtocolError>);

/// Input: `[flags][n][n chunk lengths][stream...]`. Decodes the stream whole and in chunks (lengths cycled;
/// 0 means one byte) and requires the same outcome (codec.rs: "correct on any split", "every split of a bad
/// stream gives the same error"), messages within the limits, and nothing held when idle.
pub fn codec(data: &[u8]) {
    let mut r = Reader::new(data);
    let flags = r.byte();
    let role = if flags & 1 == 0 { Role::Server } else { Role::Client };
    let limits = match (flags >> 1) & 3 {
        0 => DecodeLimits { max_frame_size: 64, max_message_size: 256 },
        1 => DecodeLimits { max_frame_size: 1024, max_message_size: 1024 },
        2 => DecodeLimits { max_frame_size: 125, max_message_size: 100_000 },
        _ => DecodeLimits { max_frame_size: 1 << 20, max_message_size: 1 << 22 },
    };
    let n = usize::from(r.byte() % 16);
    let chunks: Vec<usize> = r.take(n).iter().map(|&b| usize::from(b).max(1)).collect();
    let stream = r.rest();

    let whole = decode_chunked(role, limits, stream, &[]);
    let split = decode_chunked(role, limits, stream, &chunks);
    assert_eq!(whole, split, "chunking {chunks:?} changed the outcome");
    let bytewise = decode_chunked(role, limits, stream, &[1]);
    assert_eq!(whole, bytewise, "byte-at-a-time changed the outcome");
}

fn decode_chunked(role: Role, limits: DecodeLimits, stream: &[u8], chunks: &[usize]) -> Outcome {
    let mut decoder = Decoder::new(role, limits);
    let mut input = BytesMut::new();
    let mut out = Vec::new();
    let mut pos = 0;
    let mut i = 0;
    while pos < stream.len() {
        let len = if chunks.is_empty() { stream.len() } else { chunks[i % chunks.len()] };
        i += 1;
        let end = (pos + len).min(stream.len());
        input.extend_from_slice(&stream[pos..end]);
        pos = end;
        loop {
            match decoder.decode(&mut input) {
                Ok(Some(incoming)) => {
                    check_incoming(&incoming, limits);
                    out.push(incoming);
                }
                Ok(None) => break,
                Err(e) => return (out, Some(e)),
            }
        }
        // The caller's buffer keeps at most a partial header or a partial control frame.
        assert!(input.len() <= frame::MAX_HEADER_LEN + 125, "{} bytes left in the input", input.len());
        // Reassembly memory grows with what arrived, within the message limit (Vec growth may double it).
        assert!(decoder.buffered() as u64 <= 2 * limits.max_message_size + 64, "buffered {}", decoder.buffered());
        if decoder.is_idle() {
            assert_eq!(decoder.buffered(), 0, "an idle decoder holds no buffer");
        }
    }
    (out, None)
}

fn check_incoming(incoming: &Incoming, limits: DecodeLimits) {
    match incoming {
        Incoming::Text(b) => {
            assert!(std::str::from_utf8(b).is_ok(), "text that is not UTF-8");
            assert!(b.len() as u64 <= limits.max_message_size);
        }
        Incoming::Binary(b) => assert!(b.len() as u64 <= limits.max_message_size),
        Incoming::Ping(b) | Incoming::Pong(b) => assert!(b.len() <= 125),
        Incoming::Close(Some(f)) => {
            assert!(f.code.is_sendable(), "received close code {} accepted", f.code.0);
            assert!(f.reason.len() <= 123);
        }
        Incoming::Close(None) => {}
        Incoming::Deflated { .. } => panic!("a compressed message from a decoder without permessage-deflate"),
    }
}

// ---------------------------------------------------------------------------------------------------------
// control: the `/ws` JSON control parser and the replies built from what it returns.
// ---------------------------------------------------------------------------------------------------------

/// A JSON object our writers built, as its raw members (no number range limits, unlike `Value`).
fn members(out: &[u8]) -> HashMap<String, Box<RawValue>> {
    serde_json::from_slice(out).expect("our writers build a JSON object")
}

fn string_member(m: &HashMap<String, Box<RawValue>>, key: &str) -> Option<String> {
    m.get(key).and_then(|raw| serde_json::from_str::<String>(raw.get()).ok())
}

/// Parses the input as a `/ws` request; every reply and envelope built from the result must be a JSON
/// object that carries the id, topic and data through verbatim.
/// (At the default `limits.max_json_depth`, 64.)
pub fn control(data: &[u8]) {
    use herald::control::{self as c, ControlRequest};

    let parsed = c::parse_request(data, 64);
    let mut out = Vec::new();
    match &parsed {
        Ok(req) => {
            let (id, topic) = match req {
                ControlRequest::Subscribe { topic, id, .. } | ControlRequest::Unsubscribe { topic, id } => {
                    (id, Some(topic))
                }
                ControlRequest::Publish { topic, data, id, .. } => {
                    c::write_envelope_json(&mut out, topic, data);
                    let m = members(&out);
                    assert_eq!(string_member(&m, "topic").as_ref(), Some(topic));
                    assert_eq!(m.get("data").map(|d| d.get()), Some(data.get()), "data changed on its way");
                    out.clear();
                    (id, Some(topic))
                }
                ControlRequest::Auth { id, .. } => (id, None),
            };
            c::write_ack(&mut out, id.as_deref());
            let m = members(&out);
            assert_eq!(string_member(&m, "type").as_deref(), Some("ack"));
            assert_eq!(m.get("id").map(|i| i.get()), id.as_ref().map(|i| i.get()), "id not echoed verbatim");
            if let Some(topic) = topic {
                out.clear();
                c::write_envelope_text(&mut out, topic, topic);
                assert_eq!(string_member(&members(&out), "data").as_ref(), Some(topic));
            }
        }
        Err(e) => {
            assert!([c::INVALID_JSON, c::INVALID_REQUEST, c::UNKNOWN_TYPE].contains(&e.code), "code {}", e.code);
            e.write_reply(&mut out);
            let m = members(&out);
            assert_eq!(string_member(&m, "code").as_deref(), Some(e.code));
            assert_eq!(string_member(&m, "message").as_ref(), Some(&e.message));
            assert_eq!(m.get("id").map(|i| i.get()), e.id.as_ref().map(|i| i.get()), "id not echoed verbatim");
        }
    }
    // The binary envelope over the raw input bytes.
    out.clear();
    c::write_envelope_binary(&mut out, "t", data);
    let b64 = string_member(&members(&out), "data_b64").expect("data_b64 is a string");
    let decoded = base64::engine::general_purpose::STANDARD.decode(b64).expect("data_b64 is base64");
    assert_eq!(decoded, data);
    // The auth-message reader (auth message mode) over the same text: an auth message is also a control
    // request of type auth, with the same token.
    if let Some(msg) = parse_auth_message(data) {
        if let Ok(ControlRequest::Auth { token, .. }) = &parsed {
            assert_eq!(*token, msg.token);
        }
    }
}

// ---------------------------------------------------------------------------------------------------------
// auth: token carriers and verification, with a fixed HS256 key and a fixed `now`.
// ---------------------------------------------------------------------------------------------------------

fn verifier(leeway: u64) -> Verifier {
    let mut keys = KeySet::new();
    keys.add_secret(SECRET, &[Algorithm::HS256]).expect("fixed secret");
    let rules = ClaimRules { issuers: vec![], audiences: vec![], leeway, max_token_size: 4096 };
    Verifier::new(Arc::new(keys), rules)
}

/// A token over `claims` (any bytes) signed with [`SECRET`], so that fuzzed claims reach the claim checks.
pub fn sign_claims(claims: &[u8]) -> String {
    let mut token = format!("{HS256_HEADER}.{}", URL_SAFE_NO_PAD.encode(claims));
    let key = jsonwebtoken::EncodingKey::from_secret(SECRET);
    let sig = jsonwebtoken::crypto::sign(token.as_bytes(), &key, Algorithm::HS256).expect("HMAC never fails");
    token.push('.');
    token.push_str(&sig);
    token
}

/// Input: `[flags][rest]`. Flag bit 0 clear: `rest` is an upgrade request head whose token (from the
/// carriers) is verified and run through the upgrade policy. Bit 0 set: `rest` is a claims JSON, signed with
/// the fixed key and verified, so every claim path is reached. Bits 1-2 pick the mode, bit 3 the leeway.
pub fn auth(data: &[u8]) {
    let mut r = Reader::new(data);
    let flags = r.byte();
    let rest = r.rest();
    let leeway = if flags & 8 == 0 { 0 } else { 60 };
    let v = verifier(leeway);
    if flags & 1 != 0 {
        let token = sign_claims(rest);
        match v.verify(&token, NOW_UNIX) {
            Ok(verified) => assert!(verified.expires > NOW_UNIX, "an expired token verified"),
            Err(e) => assert!(
                !matches!(e, AuthError::BadSignature | AuthError::UnknownKey | AuthError::AlgorithmNotAllowed),
                "a token signed with the key was refused as {e:?}"
            ),
        }
        // The same claims with a flipped signature byte never verify.
        let mut forged = token.into_bytes();
        let last = forged.len() - 2;
        forged[last] = if forged[last] == b'A' { b'B' } else { b'A' };
        let forged = String::from_utf8(forged).expect("ascii");
        assert!(v.verify(&forged, NOW_UNIX).is_err(), "a forged signature verified");
        return;
    }
    // Any raw text as a token: never a panic, never accepted unless it is really signed.
    if let Ok(text) = std::str::from_utf8(rest) {
        let _ = v.verify(text, NOW_UNIX);
    }
    let Ok(Some(head)) = handshake::parse_request(rest, 8192) else { return };
    let carriers = Carriers::default();
    let found = carriers.find(&head);
    if let Some((token, c)) = found {
        assert!(!token.is_empty());
        assert!(token.len() <= head.head_len, "a token longer than the head");
        let _ = carrier::origin_ok(&head, &["https://ok.example".to_owned()], Some(c));
    }
    let mode = match (flags >> 1) & 3 {
        0 => Mode::None,
        1 => Mode::Handshake,
        2 => Mode::Message,
        _ => Mode::PerMessage,
    };
    let policy = AuthPolicy::new(mode, v, carriers, vec![], None, Duration::from_secs(5));
    let mut mem = WorkerAuth::new(16);
    let now = Instant::now();
    let topic = head.query.as_deref().unwrap_or("news");
    for need in [Need::Connect, Need::Subscribe(topic), Need::Publish(topic)] {
        match policy.check_upgrade(&head, need, true, now, NOW_UNIX, &mut mem) {
            Ok(admitted) => check_subprotocol_offered(&head, admitted.subprotocol),
            Err(d) => {
                assert!(matches!(d.status(), 401 | 403));
                let _ = d.www_authenticate();
            }
        }
        // A second decision answered from the token cache is the same decision.
        let again = policy.check_upgrade(&head, need, true, now, NOW_UNIX, &mut mem);
        let first = policy.check_upgrade(&head, need, true, now, NOW_UNIX, &mut WorkerAuth::new(0));
        assert_eq!(
            again.map(|a| a.subprotocol).map_err(denied_kind),
            first.map(|a| a.subprotocol).map_err(denied_kind)
        );
    }
    let _ = policy.check_http_publish(&head, topic, NOW_UNIX, &mut mem);
}

fn denied_kind(d: Denied) -> u16 {
    d.status()
}

/// RFC 6455 4.1: a server may only answer with a subprotocol the client offered.
fn check_subprotocol_offered(head: &RequestHead, chosen: Option<&str>) {
    if let Some(p) = chosen {
        let offered = head.headers_named("sec-websocket-protocol").flat_map(|v| v.split(',')).any(|o| o.trim() == p);
        assert!(offered, "answered subprotocol {p:?} the client did not offer");
    }
}

// ---------------------------------------------------------------------------------------------------------
// negotiate: the opening handshake in both roles, subprotocol and extension headers.
// ---------------------------------------------------------------------------------------------------------

/// Keeps bytes that may appear in a header value we write (visible ASCII and space, no CR/LF).
fn header_value(bytes: &[u8]) -> String {
    bytes.iter().filter(|b| (0x20..0x7f).contains(*b)).map(|&b| char::from(b)).collect::<String>().trim().to_owned()
}

/// Keeps RFC 9110 token characters (header names, subprotocol names).
fn token(bytes: &[u8]) -> String {
    bytes
        .iter()
        .filter(|b| b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(b))
        .map(|&b| char::from(b))
        .collect()
}

/// Input: `[nonce 16][host len][host][path len][path][headers...][0xff][server response...]`.
///
/// Client role: our upgrade request with fuzzed host, path and extra headers (subprotocols, extensions)
/// must pass our own server's validation, with the accept key our client expects; the server's answer
/// (auth off, or a subprotocol bearer token) is a 101 our client accepts, with only an offered subprotocol
/// and no extension (herald negotiates none). Then the fuzzed tail is read as a server response by the
/// client parser.
pub fn negotiate(data: &[u8]) {
    let mut r = Reader::new(data);
    let mut nonce = [0u8; 16];
    for b in &mut nonce {
        *b = r.byte();
    }
    let key = handshake::client_key(nonce);
    let host_len = usize::from(r.byte() % 64);
    let host = token(r.take(host_len));
    let host = if host.is_empty() { "localhost".to_owned() } else { host };
    let path_len = usize::from(r.byte() % 64);
    let path = format!("/{}", token(r.take(path_len)));
    let mut extra: Vec<(String, String)> = Vec::new();
    while !r.is_empty() && extra.len() < 8 {
        let kind = r.byte();
        if kind == 0xff {
            break;
        }
        let len = usize::from(r.byte());
        let value = header_value(r.take(len));
        let name = match kind % 4 {
            0 => "Sec-WebSocket-Protocol".to_owned(),
            1 => "Sec-WebSocket-Extensions".to_owned(),
            2 => "Origin".to_owned(),
            _ => {
                let n = token(value.as_bytes());
                if n.is_empty() || n.eq_ignore_ascii_case("sec-websocket-key") {
                    continue;
                }
                format!("X-{n}")
            }
        };
        extra.push((name, value));
    }
    let extra_refs: Vec<(&str, &str)> = extra.iter().map(|(n, v)| (n.as_str(), v.as_str())).collect();
    let mut request = Vec::new();
    handshake::write_client_request(&mut request, &host, &path, &key, &extra_refs);
    if request.len() <= 8192 {
        let head = handshake::parse_request(&request, 8192)
            .expect("our client's request parses")
            .expect("our client's request is complete");
        assert_eq!(head.head_len, request.len());
        let accept = head.validate_upgrade().expect("our client's request is a valid upgrade");
        assert_eq!(accept, handshake::accept_key(&key));

        // The server's side of the negotiation: auth off, then a bearer subprotocol under handshake auth.
        let policies = [AuthPolicy::off(), {
            let carriers = Carriers { enabled: vec![Carrier::Subprotocol], cookie_name: "c".to_owned() };
            AuthPolicy::new(Mode::Handshake, verifier(0), carriers, vec![], None, Duration::from_secs(5))
        }];
        for policy in &policies {
            let mut mem = WorkerAuth::new(0);
            let Ok(admitted) = policy.check_upgrade(&head, Need::Connect, true, Instant::now(), NOW_UNIX, &mut mem)
            else {
                continue;
            };
            check_subprotocol_offered(&head, admitted.subprotocol);
            let mut response = Vec::new();
            handshake::write_switching_protocols(&mut response, &accept, admitted.subprotocol);
            assert!(!String::from_utf8_lossy(&response).to_ascii_lowercase().contains("sec-websocket-extensions"));
            let accepted = handshake::parse_response(&response, &key, 8192)
                .expect("our server's 101 is accepted by our client")
                .expect("complete");
            assert_eq!(accepted.head_len, response.len());
            assert_eq!(accepted.protocol.as_deref(), admitted.subprotocol);
        }
    }

    // The client parser over an arbitrary server response.
    let tail = r.rest();
    match handshake::parse_response(tail, &key, 4096) {
        Ok(Some(accepted)) => {
            assert!(accepted.head_len <= tail.len());
            // Accepted only with the right accept key somewhere in the head.
            let accept = handshake::accept_key(&key);
            let head = &tail[..accepted.head_len];
            assert!(head.windows(accept.len()).any(|w| w == accept.as_bytes()), "accepted without the accept key");
        }
        Ok(None) => assert!(tail.len() < 4096),
        Err(e) => assert!(matches!(e, HandshakeError::Refused(_) | HandshakeError::HeadTooLarge), "{e:?}"),
    }
}

// ---------------------------------------------------------------------------------------------------------
// conn: one server Connection driven by interleaved input bytes, time steps and outbound sends.
// ---------------------------------------------------------------------------------------------------------

/// The configured limits of the stateful target, and the tighter pre-auth ones it may switch to.
const CONN_LIMITS: DecodeLimits = DecodeLimits { max_frame_size: 4096, max_message_size: 16384 };
const CONN_PREAUTH_LIMITS: DecodeLimits = DecodeLimits { max_frame_size: 256, max_message_size: 256 };
/// The masking key of frames the harness builds for the client.
const CLIENT_MASK: [u8; 4] = [0x12, 0x34, 0x56, 0x78];

/// What the harness has seen go out on the wire, server to client.
struct Wire {
    /// Every frame handed out (control frames from the core, data frames the harness queued).
    out: BytesMut,
    /// Whether a close frame has gone out.
    closed: bool,
    /// How many close frames went out.
    closes: usize,
}

/// Input: a sequence of ops, each `[op][args...]`:
/// 0 raw input bytes `[len][bytes]`; 1 a well-formed masked client frame `[hdr][len][payload]`;
/// 2 a time step `[n]` (n*50 ms, or n s when n >= 200); 3 an outbound data send `[len][bytes]` (only while
/// `can_send`, as the I/O layer does); 4 our close `[code index][reason len][reason]`; 5 drain control frames
/// `[pong_room]`; 6 switch between pre-auth and configured limits.
///
/// After every op: no panic; the caller's input holds at most a partial header or control frame; reassembly
/// memory within the configured message limit; delivered messages within the limits; every close we send has
/// a documented code (or echoes the peer's); nothing, data or control, goes out after our close frame; and
/// the whole outbound stream decodes cleanly as a client would read it.
pub fn conn(data: &[u8]) {
    let settings = ConnSettings {
        role: Role::Server,
        limits: CONN_LIMITS,
        ping_interval: Some(Duration::from_secs(10)),
        idle_timeout: Some(Duration::from_secs(60)),
        close_timeout: Duration::from_secs(5),
    };
    let start = Instant::now();
    let mut now = start;
    let mut conn = Connection::new(now, &settings, 7);
    let mut input = BytesMut::new();
    let mut wire = Wire { out: BytesMut::new(), closed: false, closes: 0 };
    let mut r = Reader::new(data);
    let mut limits = CONN_LIMITS;

    for _ in 0..4096 {
        if r.is_empty() {
            break;
        }
        match r.byte() % 7 {
            0 => {
                let len = usize::from(r.byte());
                input.extend_from_slice(r.take(len));
                pump(&mut conn, now, &settings, &mut input, &mut wire, limits);
            }
            1 => {
                let hdr = r.byte();
                let opcode =
                    [OpCode::Continuation, OpCode::Text, OpCode::Binary, OpCode::Close, OpCode::Ping, OpCode::Pong]
                        [usize::from(hdr % 6)];
                let fin = hdr & 0x80 != 0 || opcode.is_control();
                let len = if hdr & 0x40 != 0 { usize::from(r.u16()) } else { usize::from(r.byte()) };
                let payload = r.take(len);
                frame::write_masked_frame(&mut input, fin, opcode, payload, CLIENT_MASK);
                pump(&mut conn, now, &settings, &mut input, &mut wire, limits);
            }
            2 => {
                let n = r.byte();
                now += if n >= 200 {
                    Duration::from_secs(u64::from(n - 199))
                } else {
                    Duration::from_millis(50 * u64::from(n))
                };
                let due = conn.poll_timeout(&settings);
                conn.handle_timeout(now, &settings);
                if let Some(due) = due {
                    assert!(due >= start, "a deadline before the connection started");
                }
            }
            3 => {
                let len = usize::from(r.byte());
                let payload = r.take(len);
                if conn.can_send() {
                    assert!(!wire.closed, "can_send after our close frame went out");
                    frame::write_frame(&mut wire.out, OpCode::Binary, payload);
                }
            }
            4 => {
                let codes = [1000, 1001, 1008, 1011, 4401, 4403];
                let code = CloseCode(codes[usize::from(r.byte()) % codes.len()]);
                let len = usize::from(r.byte());
                let reason = String::from_utf8_lossy(r.take(len)).into_owned();
                conn.close(code, &reason);
                assert!(!conn.can_send(), "can_send right after close()");
            }
            5 => {
                let pong_room = r.byte() & 1 == 0;
                drain_control(&mut conn, now, &settings, &mut wire, pong_room);
            }
            _ => {
                limits = if limits == CONN_LIMITS { CONN_PREAUTH_LIMITS } else { CONN_LIMITS };
                conn.set_limits(limits);
            }
        }
        assert!(conn.buffered() as u64 <= 2 * CONN_LIMITS.max_message_size + 64, "buffered {}", conn.buffered());
        if wire.closed {
            assert!(!conn.can_send(), "can_send after our close frame went out");
        }
    }
    drain_control(&mut conn, now, &settings, &mut wire, true);
    check_wire(&wire);
}

/// Feeds the input to the connection as the I/O layer does: poll until `None`, draining control frames
/// whenever one is ready.
fn pump(
    conn: &mut Connection,
    now: Instant,
    settings: &ConnSettings,
    input: &mut BytesMut,
    wire: &mut Wire,
    limits: DecodeLimits,
) {
    // Each event consumes at least one frame, so this ends; the bound only guards the harness itself.
    for _ in 0..100_000 {
        match conn.poll_message(now, settings, input) {
            None => break,
            Some(Event::Message(m)) => {
                let max = limits.max_message_size.max(CONN_LIMITS.max_message_size);
                assert!(m.payload().len() as u64 <= max, "message of {} bytes delivered", m.payload().len());
                assert!(!wire.closed, "a message delivered after our close frame went out");
            }
            Some(Event::Control) => drain_control(conn, now, settings, wire, true),
        }
    }
    assert!(input.len() <= frame::MAX_HEADER_LEN + 125, "{} bytes left in the input", input.len());
}

fn drain_control(conn: &mut Connection, now: Instant, settings: &ConnSettings, wire: &mut Wire, pong_room: bool) {
    for _ in 0..8 {
        let Some(out) = conn.poll_control(now, settings, pong_room) else { return };
        assert!(!wire.closed, "a frame handed out after our close frame: {out:?}");
        check_server_frame(conn, &out, wire);
        wire.out.extend_from_slice(&out);
    }
    panic!("poll_control never ran dry");
}

/// A frame from the server core: one whole unmasked control frame; a close carries a documented code.
fn check_server_frame(conn: &Connection, out: &Bytes, wire: &mut Wire) {
    let mut decoder = Decoder::new(Role::Client, CONN_LIMITS);
    let mut buf = BytesMut::from(&out[..]);
    let frame = decoder.decode(&mut buf).expect("our frame decodes").expect("our frame is whole");
    assert!(buf.is_empty(), "more than one frame handed out at once");
    match frame {
        Incoming::Close(close) => {
            wire.closed = true;
            wire.closes += 1;
            if let Some(CloseFrame { code, .. }) = close {
                let echo =
                    matches!(conn.ending(), Some(herald::protocol::conn::Ending::PeerClosed(Some(c))) if *c == code);
                assert!(
                    DOCUMENTED_CLOSE_CODES.contains(&code.0) || echo,
                    "close code {} is not documented (ending {:?})",
                    code.0,
                    conn.ending()
                );
            }
        }
        Incoming::Ping(_) | Incoming::Pong(_) => {}
        other => panic!("the core handed out a data frame: {other:?}"),
    }
}

/// The whole server-to-client stream, read as a client: valid frames, one close at most, and it is last.
fn check_wire(wire: &Wire) {
    assert!(wire.closes <= 1, "{} close frames sent", wire.closes);
    let mut decoder = Decoder::new(Role::Client, DecodeLimits { max_frame_size: 1 << 20, max_message_size: 1 << 20 });
    let mut buf = wire.out.clone();
    let mut seen_close = false;
    while let Some(frame) = decoder.decode(&mut buf).expect("the outbound stream decodes") {
        assert!(!seen_close, "a frame after the close frame: {frame:?}");
        seen_close = matches!(frame, Incoming::Close(_));
    }
    assert!(buf.is_empty(), "a partial frame on the wire");
}
