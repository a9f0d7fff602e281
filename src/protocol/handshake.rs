//! HTTP/1.1 request parsing and the WebSocket opening handshake (RFC 6455 section 4), both roles.
//!
//! The server side parses a request head with `httparse` (bounded: head size and header count), decides
//! whether it is a valid upgrade, computes `Sec-WebSocket-Accept`, and writes the 101 or an error response.
//! Routing (which path is which endpoint) is the server's business, not this module's. The client side
//! builds the upgrade request and checks the 101 response. No sockets here.
//!
//! Invariants: no input panics (peer bytes only ever produce a [`HandshakeError`]); the parser never looks
//! past `max_head` bytes, so a slow client cannot make it re-scan an unbounded buffer; responses are written
//! by appending to a caller-owned `Vec<u8>`.

use base64::engine::general_purpose::STANDARD;
use base64::Engine as _;
use sha1::{Digest, Sha1};

/// Most headers accepted in one request head; more -> 431.
pub const MAX_HEADERS: usize = 64;

/// The GUID appended to the client's key before hashing (RFC 6455 section 1.3).
const WS_GUID: &[u8] = b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11";

/// An error before the upgrade; each maps to an HTTP status.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum HandshakeError {
    /// Malformed HTTP, or a missing/invalid upgrade header (400). The string says which.
    #[error("bad request: {0}")]
    BadRequest(&'static str),
    /// An upgrade attempted with a method other than GET (405).
    #[error("method not allowed")]
    MethodNotAllowed,
    /// `Sec-WebSocket-Version` is not 13 (426, answered with `Sec-WebSocket-Version: 13`).
    #[error("unsupported WebSocket version")]
    UnsupportedVersion,
    /// The request head is larger than the limit, or has more than [`MAX_HEADERS`] headers (431).
    #[error("request header fields too large")]
    HeadTooLarge,
    /// Client side: the server's response was not a valid 101 (status given, 0 when unparseable).
    #[error("upgrade refused or invalid response (status {0})")]
    Refused(u16),
}

impl HandshakeError {
    /// The HTTP status for this error.
    ///
    /// [`HandshakeError::Refused`] is a client-side error that a server never sends; it maps to 502 (the
    /// peer gave an invalid or unwanted response), and the peer's own status stays in the variant.
    pub fn status(&self) -> u16 {
        match self {
            HandshakeError::BadRequest(_) => 400,
            HandshakeError::MethodNotAllowed => 405,
            HandshakeError::UnsupportedVersion => 426,
            HandshakeError::HeadTooLarge => 431,
            HandshakeError::Refused(_) => 502,
        }
    }

    /// Writes the full error response (status line, `Content-Type: text/plain`, `Content-Length`,
    /// `Connection: close`, `Allow: GET` for 405, `Sec-WebSocket-Version: 13` for 426, and a one-line body).
    pub fn write_response(&self, out: &mut Vec<u8>) {
        let extra: &[(&str, &str)] = match self {
            HandshakeError::MethodNotAllowed => &[("Allow", "GET")],
            HandshakeError::UnsupportedVersion => &[("Sec-WebSocket-Version", "13")],
            _ => &[],
        };
        let body = format!("{self}\n");
        write_response_with_headers(out, self.status(), extra, "text/plain", body.as_bytes(), true);
    }
}

/// The request method, as far as herald cares.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Method {
    /// GET
    Get,
    /// POST
    Post,
    /// HEAD
    Head,
    /// Anything else (kept for the 405 answer).
    Other(String),
}

impl Method {
    /// Maps a request-line method token (case-sensitive, RFC 9110 9.1).
    fn from_token(token: &str) -> Method {
        match token {
            "GET" => Method::Get,
            "POST" => Method::Post,
            "HEAD" => Method::Head,
            other => Method::Other(other.to_owned()),
        }
    }
}

/// A parsed request head, owned (one small allocation per request, never per message).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RequestHead {
    /// The method.
    pub method: Method,
    /// The path, without the query string (e.g. `/sub/news`).
    pub path: String,
    /// The raw query string after `?`, if any.
    pub query: Option<String>,
    /// The HTTP minor version: 1 for HTTP/1.1, 0 for HTTP/1.0 (nothing else is accepted).
    pub version: u8,
    /// Bytes taken by the head, up to and including the blank line; a body starts here.
    pub head_len: usize,
    /// Every header, names lowercased, values as sent (invalid UTF-8 values -> 400).
    pub headers: Vec<(String, String)>,
}

impl RequestHead {
    /// The first header of that (lowercase) name.
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.iter().find(|(n, _)| n == name).map(|(_, v)| v.as_str())
    }

    /// Every value of the headers of that (lowercase) name, in order.
    pub fn headers_named<'a>(&'a self, name: &'a str) -> impl Iterator<Item = &'a str> + 'a {
        self.headers.iter().filter(move |(n, _)| n == name).map(|(_, v)| v.as_str())
    }

    /// Whether any header of that (lowercase) name, read as a comma-separated list, holds `token`
    /// (ASCII case-insensitive), as `Connection` and `Upgrade` are read.
    pub fn has_token(&self, name: &str, token: &str) -> bool {
        self.headers_named(name).any(|v| list_has_token(v, token))
    }

    /// Whether the client asks for a WebSocket (an `Upgrade` header naming websocket, or a
    /// `Sec-WebSocket-Key`): such a request is then validated with [`RequestHead::validate_upgrade`].
    pub fn wants_upgrade(&self) -> bool {
        self.has_token("upgrade", "websocket") || self.header("sec-websocket-key").is_some()
    }

    /// `Content-Length`, if present. Invalid or duplicated-and-different -> 400; `Transfer-Encoding` (chunked
    /// bodies are not supported) -> 400.
    pub fn content_length(&self) -> Result<Option<u64>, HandshakeError> {
        if self.header("transfer-encoding").is_some() {
            return Err(HandshakeError::BadRequest("chunked bodies are not supported"));
        }
        let mut length = None;
        // RFC 9110 8.6: a list of identical values (in one field or repeated fields) may be accepted as
        // that one value; anything else is unrecoverable.
        for item in self.headers_named("content-length").flat_map(|v| v.split(',')) {
            let item = item.trim();
            if item.is_empty() || !item.bytes().all(|b| b.is_ascii_digit()) {
                return Err(HandshakeError::BadRequest("invalid Content-Length"));
            }
            let n: u64 = item.parse().map_err(|_| HandshakeError::BadRequest("invalid Content-Length"))?;
            match length {
                Some(prev) if prev != n => return Err(HandshakeError::BadRequest("conflicting Content-Length values")),
                _ => length = Some(n),
            }
        }
        Ok(length)
    }

    /// Whether the client asked to close after this response (`Connection: close`, or HTTP/1.0).
    pub fn wants_close(&self) -> bool {
        self.version == 0 || self.has_token("connection", "close")
    }

    /// Checks an upgrade request (RFC 6455 4.2.1): GET (else 405); `Upgrade: websocket` and `Connection`
    /// containing the `upgrade` token, case-insensitive (else 400); a `Sec-WebSocket-Key` that is base64 of
    /// 16 bytes (else 400); `Sec-WebSocket-Version: 13` (else 426). Returns the `Sec-WebSocket-Accept` value.
    ///
    /// Also 400: HTTP/1.0, a missing `Host`, a repeated `Sec-WebSocket-Key`, a missing
    /// `Sec-WebSocket-Version`.
    pub fn validate_upgrade(&self) -> Result<String, HandshakeError> {
        // 4.2.1 (1): "An HTTP/1.1 or higher GET request".
        if self.method != Method::Get {
            return Err(HandshakeError::MethodNotAllowed);
        }
        if self.version < 1 {
            return Err(HandshakeError::BadRequest("WebSocket upgrade requires HTTP/1.1"));
        }
        // 4.2.1 (2): "A |Host| header field containing the server's authority."
        if self.header("host").is_none() {
            return Err(HandshakeError::BadRequest("missing Host header"));
        }
        // 4.2.1 (3): "An |Upgrade| header field containing the value "websocket", treated as an ASCII
        // case-insensitive value."
        if !self.has_token("upgrade", "websocket") {
            return Err(HandshakeError::BadRequest("missing Upgrade: websocket"));
        }
        // 4.2.1 (4): "A |Connection| header field that includes the token "Upgrade", treated as an ASCII
        // case-insensitive value."
        if !self.has_token("connection", "upgrade") {
            return Err(HandshakeError::BadRequest("missing Connection: upgrade"));
        }
        // 4.2.1 (5): "A |Sec-WebSocket-Key| header field with a base64-encoded value that, when decoded,
        // is 16 bytes in length." 11.3.1: it "MUST NOT appear more than once in an HTTP request."
        let mut keys = self.headers_named("sec-websocket-key");
        let key = keys.next().ok_or(HandshakeError::BadRequest("missing Sec-WebSocket-Key"))?;
        if keys.next().is_some() {
            return Err(HandshakeError::BadRequest("repeated Sec-WebSocket-Key"));
        }
        if !is_valid_key(key) {
            return Err(HandshakeError::BadRequest("invalid Sec-WebSocket-Key"));
        }
        // 4.2.1 (6): "A |Sec-WebSocket-Version| header field, with a value of 13." 4.4: otherwise answer
        // with the versions we support (426 + `Sec-WebSocket-Version: 13`).
        match self.header("sec-websocket-version") {
            None => return Err(HandshakeError::BadRequest("missing Sec-WebSocket-Version")),
            Some("13") => {}
            Some(_) => return Err(HandshakeError::UnsupportedVersion),
        }
        Ok(accept_key(key))
    }
}

/// Whether a comma-separated header list holds `token`, ASCII case-insensitive.
fn list_has_token(list: &str, token: &str) -> bool {
    list.split(',').any(|t| t.trim().eq_ignore_ascii_case(token))
}

/// Whether `key` is canonical base64 of exactly 16 bytes (always 24 characters, ending in `==`).
fn is_valid_key(key: &str) -> bool {
    let mut decoded = [0u8; 18];
    key.len() == 24 && matches!(STANDARD.decode_slice(key, &mut decoded), Ok(16))
}

/// Maps an `httparse` error to ours: too many headers is 431, everything else 400.
fn request_parse_error(e: httparse::Error) -> HandshakeError {
    match e {
        httparse::Error::TooManyHeaders => HandshakeError::HeadTooLarge,
        httparse::Error::Version => HandshakeError::BadRequest("unsupported HTTP version"),
        httparse::Error::HeaderName => HandshakeError::BadRequest("invalid header name"),
        httparse::Error::HeaderValue => HandshakeError::BadRequest("invalid header value"),
        httparse::Error::Token => HandshakeError::BadRequest("invalid method"),
        _ => HandshakeError::BadRequest("malformed request head"),
    }
}

/// Parses a request head from the front of `buf`. `Ok(None)`: incomplete, read more (but if `buf` already
/// holds `max_head` bytes without a complete head, that is [`HandshakeError::HeadTooLarge`]). Malformed -> 400.
pub fn parse_request(buf: &[u8], max_head: usize) -> Result<Option<RequestHead>, HandshakeError> {
    // Never scan past the limit: a head that does not end within `max_head` bytes is too large anyway.
    let window = &buf[..buf.len().min(max_head)];
    let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
    let mut req = httparse::Request::new(&mut headers);
    let head_len = match req.parse(window).map_err(request_parse_error)? {
        httparse::Status::Complete(n) => n,
        httparse::Status::Partial if buf.len() >= max_head => return Err(HandshakeError::HeadTooLarge),
        httparse::Status::Partial => return Ok(None),
    };
    // A complete parse always fills method, path and version.
    let (Some(method), Some(target), Some(version)) = (req.method, req.path, req.version) else {
        return Err(HandshakeError::BadRequest("malformed request line"));
    };
    let (path, query) = match target.split_once('?') {
        Some((path, query)) => (path.to_owned(), Some(query.to_owned())),
        None => (target.to_owned(), None),
    };
    let mut owned = Vec::with_capacity(req.headers.len());
    for h in req.headers.iter() {
        let value =
            std::str::from_utf8(h.value).map_err(|_| HandshakeError::BadRequest("header value is not valid UTF-8"))?;
        owned.push((h.name.to_ascii_lowercase(), value.to_owned()));
    }
    Ok(Some(RequestHead { method: Method::from_token(method), path, query, version, head_len, headers: owned }))
}

/// `base64(sha1(key + "258EAFA5-E914-47DA-95CA-C5AB0DC85B11"))` (RFC 6455 4.2.2).
pub fn accept_key(key: &str) -> String {
    let mut sha1 = Sha1::new();
    sha1.update(key.as_bytes());
    sha1.update(WS_GUID);
    STANDARD.encode(sha1.finalize())
}

/// Writes `101 Switching Protocols` with the accept key and, if given, the chosen subprotocol.
pub fn write_switching_protocols(out: &mut Vec<u8>, accept: &str, protocol: Option<&str>) {
    write_switching_protocols_with(out, accept, protocol, None);
}

/// [`write_switching_protocols`], plus the accepted extensions (`Sec-WebSocket-Extensions`, e.g. the answer of
/// [`super::deflate::negotiate`]) when given.
pub fn write_switching_protocols_with(
    out: &mut Vec<u8>,
    accept: &str,
    protocol: Option<&str>,
    extensions: Option<&str>,
) {
    out.extend_from_slice(b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n");
    push_header(out, "Sec-WebSocket-Accept", accept);
    if let Some(protocol) = protocol {
        push_header(out, "Sec-WebSocket-Protocol", protocol);
    }
    if let Some(extensions) = extensions {
        push_header(out, "Sec-WebSocket-Extensions", extensions);
    }
    out.extend_from_slice(b"\r\n");
}

/// Writes a complete HTTP/1.1 response with `Content-Length` (plus `Connection: close` when `close`).
pub fn write_response(out: &mut Vec<u8>, status: u16, content_type: &str, body: &[u8], close: bool) {
    write_response_with_headers(out, status, &[], content_type, body, close);
}

/// [`write_response`] with extra headers after `Content-Length` (e.g. `Allow`, `Retry-After`,
/// `WWW-Authenticate`). Header names and values are the caller's and must not contain CR or LF.
pub fn write_response_with_headers(
    out: &mut Vec<u8>,
    status: u16,
    extra: &[(&str, &str)],
    content_type: &str,
    body: &[u8],
    close: bool,
) {
    out.extend_from_slice(b"HTTP/1.1 ");
    push_decimal(out, u64::from(status));
    out.push(b' ');
    out.extend_from_slice(reason_phrase(status).as_bytes());
    out.extend_from_slice(b"\r\n");
    push_header(out, "Content-Type", content_type);
    out.extend_from_slice(b"Content-Length: ");
    push_decimal(out, body.len() as u64);
    out.extend_from_slice(b"\r\n");
    for (name, value) in extra {
        push_header(out, name, value);
    }
    if close {
        out.extend_from_slice(b"Connection: close\r\n");
    }
    out.extend_from_slice(b"\r\n");
    out.extend_from_slice(body);
}

/// The standard reason phrase for a status herald uses ("OK", "Not Found", ...; "Unknown" otherwise).
pub fn reason_phrase(status: u16) -> &'static str {
    match status {
        101 => "Switching Protocols",
        200 => "OK",
        202 => "Accepted",
        204 => "No Content",
        400 => "Bad Request",
        401 => "Unauthorized",
        403 => "Forbidden",
        404 => "Not Found",
        405 => "Method Not Allowed",
        408 => "Request Timeout",
        411 => "Length Required",
        413 => "Content Too Large",
        415 => "Unsupported Media Type",
        426 => "Upgrade Required",
        429 => "Too Many Requests",
        431 => "Request Header Fields Too Large",
        500 => "Internal Server Error",
        502 => "Bad Gateway",
        503 => "Service Unavailable",
        _ => "Unknown",
    }
}

/// Appends `name: value\r\n`.
fn push_header(out: &mut Vec<u8>, name: &str, value: &str) {
    debug_assert!(!name.contains(['\r', '\n']) && !value.contains(['\r', '\n']), "bug: CR/LF in header {name:?}");
    out.extend_from_slice(name.as_bytes());
    out.extend_from_slice(b": ");
    out.extend_from_slice(value.as_bytes());
    out.extend_from_slice(b"\r\n");
}

/// Appends `n` in decimal without allocating.
fn push_decimal(out: &mut Vec<u8>, mut n: u64) {
    let mut digits = [0u8; 20];
    let mut i = digits.len();
    loop {
        i -= 1;
        digits[i] = b'0' + (n % 10) as u8;
        n /= 10;
        if n == 0 {
            break;
        }
    }
    out.extend_from_slice(&digits[i..]);
}

/// Client side: a `Sec-WebSocket-Key` from 16 caller-supplied random bytes (the core draws no randomness).
pub fn client_key(nonce: [u8; 16]) -> String {
    STANDARD.encode(nonce)
}

/// Client side: writes the upgrade request for `path` on `host`, with `key` and any extra headers.
pub fn write_client_request(out: &mut Vec<u8>, host: &str, path: &str, key: &str, extra: &[(&str, &str)]) {
    out.extend_from_slice(b"GET ");
    out.extend_from_slice(path.as_bytes());
    out.extend_from_slice(b" HTTP/1.1\r\n");
    push_header(out, "Host", host);
    out.extend_from_slice(b"Upgrade: websocket\r\nConnection: Upgrade\r\n");
    push_header(out, "Sec-WebSocket-Key", key);
    out.extend_from_slice(b"Sec-WebSocket-Version: 13\r\n");
    for (name, value) in extra {
        push_header(out, name, value);
    }
    out.extend_from_slice(b"\r\n");
}

/// Client side: a parsed, accepted 101 response.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClientAccepted {
    /// Bytes taken by the response head; frames start here.
    pub head_len: usize,
    /// The subprotocol the server chose, if any.
    pub protocol: Option<String>,
}

/// Client side: parses the server's response. `Ok(None)`: incomplete. A non-101 status ->
/// `Refused(status)`; a 101 whose `Sec-WebSocket-Accept` does not match `accept_key(key)` -> `Refused(101)`.
///
/// A 101 without `Upgrade: websocket` or without `Connection: upgrade` is also `Refused(101)` (RFC 6455
/// 4.1, the client MUST _Fail the WebSocket Connection_); an unparseable response is `Refused(0)`.
pub fn parse_response(buf: &[u8], key: &str, max_head: usize) -> Result<Option<ClientAccepted>, HandshakeError> {
    let window = &buf[..buf.len().min(max_head)];
    let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
    let mut res = httparse::Response::new(&mut headers);
    let head_len = match res.parse(window) {
        Ok(httparse::Status::Complete(n)) => n,
        Ok(httparse::Status::Partial) if buf.len() >= max_head => return Err(HandshakeError::HeadTooLarge),
        Ok(httparse::Status::Partial) => return Ok(None),
        Err(httparse::Error::TooManyHeaders) => return Err(HandshakeError::HeadTooLarge),
        Err(_) => return Err(HandshakeError::Refused(0)),
    };
    let code = res.code.unwrap_or(0);
    if code != 101 {
        return Err(HandshakeError::Refused(code));
    }
    let refused = HandshakeError::Refused(101);
    let values = |name: &'static str| {
        res.headers
            .iter()
            .filter(move |h| h.name.eq_ignore_ascii_case(name))
            .map(|h| std::str::from_utf8(h.value).unwrap_or(""))
    };
    if !values("upgrade").any(|v| list_has_token(v, "websocket"))
        || !values("connection").any(|v| list_has_token(v, "upgrade"))
    {
        return Err(refused);
    }
    let expected = accept_key(key);
    if values("sec-websocket-accept").next() != Some(expected.as_str()) {
        return Err(refused);
    }
    let protocol = match res.headers.iter().find(|h| h.name.eq_ignore_ascii_case("sec-websocket-protocol")) {
        Some(h) => Some(std::str::from_utf8(h.value).map_err(|_| refused)?.to_owned()),
        None => None,
    };
    Ok(Some(ClientAccepted { head_len, protocol }))
}

#[cfg(test)]
mod tests;
