//! The opening handshake cross-checked against tungstenite 0.26, an independent RFC 6455 implementation.
//!
//! Both directions run in memory: tungstenite's client against herald's server side
//! (`parse_request` + `validate_upgrade` + `write_switching_protocols`), and herald's client side
//! (`write_client_request` + `parse_response`) against tungstenite's server. No sockets.

// tungstenite's `Callback` fixes the closure's error type (`ErrorResponse`, a large `http::Response`).
#![allow(clippy::result_large_err)]

use std::cell::RefCell;
use std::io::{self, Cursor, Read, Write};
use std::rc::Rc;

use herald::protocol::handshake::{
    accept_key, client_key, parse_request, parse_response, write_client_request, write_switching_protocols,
    ClientAccepted, HandshakeError, Method,
};
use tungstenite::handshake::derive_accept_key;
use tungstenite::handshake::server::{ErrorResponse, Request, Response};
use tungstenite::http::{StatusCode, Uri};
use tungstenite::{ClientRequestBuilder, HandshakeError as TungsteniteHandshakeError, Message};

const MAX_HEAD: usize = 8192;

/// herald's server side behind a `Read + Write` stream: it records what the client writes and, once a
/// full request head has arrived, answers it the way herald's server does. `after_101` is appended to
/// the 101 (frames the server sends right away, to check that the client finds the end of the head).
#[derive(Default)]
struct HeraldServerStream {
    request: Vec<u8>,
    response: Cursor<Vec<u8>>,
    answered: bool,
    after_101: Vec<u8>,
}

impl HeraldServerStream {
    fn answer(&mut self) -> io::Result<()> {
        let head = match parse_request(&self.request, MAX_HEAD) {
            Ok(Some(head)) => head,
            Ok(None) => return Err(io::ErrorKind::WouldBlock.into()),
            Err(e) => panic!("herald rejected tungstenite's request head: {e}"),
        };
        assert_eq!(head.head_len, self.request.len(), "tungstenite sends no body");
        let accept = head.validate_upgrade().unwrap_or_else(|e| panic!("herald refused tungstenite's upgrade: {e}"));
        // Like herald's server: pick the first subprotocol offered.
        let protocol = head.header("sec-websocket-protocol").and_then(|list| list.split(',').next()).map(str::trim);
        let mut out = Vec::new();
        write_switching_protocols(&mut out, &accept, protocol);
        out.extend_from_slice(&self.after_101);
        self.response = Cursor::new(out);
        self.answered = true;
        Ok(())
    }
}

impl Read for HeraldServerStream {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        if !self.answered {
            self.answer()?;
        }
        self.response.read(buf)
    }
}

impl Write for HeraldServerStream {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        if self.answered {
            // Frames after the handshake are not the subject here.
            return Ok(buf.len());
        }
        self.request.extend_from_slice(buf);
        Ok(buf.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

/// A stream that reads from fixed bytes and records what is written (shared, so it outlives a failed
/// handshake that consumes the stream).
struct ScriptedStream {
    input: Cursor<Vec<u8>>,
    output: Rc<RefCell<Vec<u8>>>,
}

impl Read for ScriptedStream {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        self.input.read(buf)
    }
}

impl Write for ScriptedStream {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.output.borrow_mut().extend_from_slice(buf);
        Ok(buf.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

/// Runs tungstenite's client handshake for `request` against herald's server side.
fn tungstenite_client_against_herald(
    request: ClientRequestBuilder,
    after_101: &[u8],
) -> (tungstenite::WebSocket<HeraldServerStream>, tungstenite::handshake::client::Response) {
    let stream = HeraldServerStream { after_101: after_101.to_vec(), ..Default::default() };
    let mut result = tungstenite::client(request, stream);
    loop {
        match result {
            Ok(done) => return done,
            Err(TungsteniteHandshakeError::Interrupted(mid)) => result = mid.handshake(),
            Err(TungsteniteHandshakeError::Failure(e)) => {
                panic!("tungstenite refused herald's 101: {e}")
            }
        }
    }
}

fn builder(uri: &str) -> ClientRequestBuilder {
    ClientRequestBuilder::new(uri.parse::<Uri>().expect("valid uri"))
}

#[test]
fn accept_key_agrees_with_tungstenite() {
    let keys = [
        "dGhlIHNhbXBsZSBub25jZQ==".to_owned(),
        client_key([0; 16]),
        client_key([0xff; 16]),
        client_key(*b"0123456789abcdef"),
        tungstenite::handshake::client::generate_key(),
    ];
    for key in keys {
        assert_eq!(accept_key(&key), derive_accept_key(key.as_bytes()), "{key}");
    }
}

#[test]
fn herald_accepts_tungstenite_client_request() {
    let (ws, response) = tungstenite_client_against_herald(builder("ws://localhost:9001/sub/news?since=42"), b"");
    assert_eq!(response.status(), StatusCode::SWITCHING_PROTOCOLS);
    // tungstenite checked the accept key itself; check the request herald saw as well.
    let head = parse_request(&ws.get_ref().request, MAX_HEAD).expect("valid").expect("complete");
    assert_eq!(head.method, Method::Get);
    assert_eq!(head.path, "/sub/news");
    assert_eq!(head.query.as_deref(), Some("since=42"));
    assert_eq!(head.header("host"), Some("localhost:9001"));
    let key = head.header("sec-websocket-key").expect("tungstenite sends a key");
    assert_eq!(head.validate_upgrade(), Ok(derive_accept_key(key.as_bytes())));
    assert_eq!(
        response.headers().get("sec-websocket-accept").and_then(|v| v.to_str().ok()),
        Some(accept_key(key).as_str())
    );
}

#[test]
fn tungstenite_client_accepts_herald_subprotocol_choice() {
    let request = builder("ws://127.0.0.1:9001/ws").with_sub_protocol("herald.v1").with_sub_protocol("other");
    let (_, response) = tungstenite_client_against_herald(request, b"");
    assert_eq!(response.headers().get("sec-websocket-protocol").and_then(|v| v.to_str().ok()), Some("herald.v1"));
}

#[test]
fn tungstenite_client_reads_frames_right_after_herald_101() {
    // An unmasked server text frame "hi" in the same read as the 101: the head must end exactly there.
    let (mut ws, _) = tungstenite_client_against_herald(builder("ws://localhost/ws"), b"\x81\x02hi");
    match ws.read().expect("frame after the 101") {
        Message::Text(text) => assert_eq!(text.as_str(), "hi"),
        other => panic!("unexpected message {other:?}"),
    }
}

/// Runs tungstenite's server handshake over herald's client request; returns what the server wrote and
/// whether it accepted.
fn tungstenite_server_answers<F>(request: &[u8], callback: F) -> (Vec<u8>, bool)
where
    F: FnOnce(&Request, Response) -> Result<Response, ErrorResponse>,
{
    let output = Rc::new(RefCell::new(Vec::new()));
    let stream = ScriptedStream { input: Cursor::new(request.to_vec()), output: Rc::clone(&output) };
    let accepted = tungstenite::accept_hdr(stream, callback).is_ok();
    let written = output.borrow().clone();
    (written, accepted)
}

#[test]
fn tungstenite_server_accepts_herald_client_request() {
    let key = client_key(*b"herald-loadgen-1");
    let mut request = Vec::new();
    write_client_request(&mut request, "localhost:9001", "/sub/news?since=1", &key, &[("Origin", "http://localhost")]);
    let (response, accepted) = tungstenite_server_answers(&request, |req: &Request, resp: Response| {
        assert_eq!(req.uri().path(), "/sub/news");
        assert_eq!(req.uri().query(), Some("since=1"));
        assert_eq!(req.headers().get("origin").and_then(|v| v.to_str().ok()), Some("http://localhost"));
        Ok(resp)
    });
    assert!(accepted, "tungstenite refused: {}", String::from_utf8_lossy(&response));
    let accepted = parse_response(&response, &key, MAX_HEAD).expect("valid 101").expect("complete");
    assert_eq!(accepted, ClientAccepted { head_len: response.len(), protocol: None });
}

#[test]
fn herald_client_reads_tungstenite_subprotocol_choice() {
    let key = client_key([9; 16]);
    let mut request = Vec::new();
    write_client_request(&mut request, "h", "/ws", &key, &[("Sec-WebSocket-Protocol", "herald.v1")]);
    let (response, accepted) = tungstenite_server_answers(&request, |_: &Request, mut resp: Response| {
        let value = "herald.v1".parse().expect("header value");
        resp.headers_mut().insert("Sec-WebSocket-Protocol", value);
        Ok(resp)
    });
    assert!(accepted);
    let accepted = parse_response(&response, &key, MAX_HEAD).expect("valid 101").expect("complete");
    assert_eq!(accepted.protocol.as_deref(), Some("herald.v1"));
}

#[test]
fn herald_client_refuses_101_for_another_key() {
    let mut request = Vec::new();
    write_client_request(&mut request, "h", "/ws", &client_key([1; 16]), &[]);
    let (response, accepted) = tungstenite_server_answers(&request, |_: &Request, resp: Response| Ok(resp));
    assert!(accepted);
    assert_eq!(parse_response(&response, &client_key([2; 16]), MAX_HEAD), Err(HandshakeError::Refused(101)));
}

#[test]
fn herald_client_reports_tungstenite_rejection_status() {
    let key = client_key([3; 16]);
    let mut request = Vec::new();
    write_client_request(&mut request, "h", "/private", &key, &[]);
    let (response, accepted) = tungstenite_server_answers(&request, |_: &Request, _: Response| {
        let mut reject = ErrorResponse::new(Some("forbidden\n".to_owned()));
        *reject.status_mut() = StatusCode::FORBIDDEN;
        Err(reject)
    });
    assert!(!accepted);
    assert_eq!(parse_response(&response, &key, MAX_HEAD), Err(HandshakeError::Refused(403)));
}

#[test]
fn herald_client_waits_for_the_whole_tungstenite_101() {
    let key = client_key([4; 16]);
    let mut request = Vec::new();
    write_client_request(&mut request, "h", "/ws", &key, &[]);
    let (response, _) = tungstenite_server_answers(&request, |_: &Request, resp: Response| Ok(resp));
    for len in 0..response.len() {
        assert_eq!(parse_response(&response[..len], &key, MAX_HEAD), Ok(None), "prefix of {len} bytes");
    }
}
