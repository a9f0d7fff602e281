//! herald's `/ws` JSON protocol, client side (`--protocol json`): the requests loadgen sends, the replies
//! and deliveries it reads, and how a payload header travels inside a JSON string.
//!
//! Client to server: `{"type":"subscribe","topic":"t","id":1}`, `{"type":"publish","topic":"t","data":"..."}`
//! and, for the `message` auth carrier, `{"type":"auth","token":"..."}`; with `--auth-per-message` the
//! subscribe and publish requests carry `"token":"..."` too. Server to client: `{"type":"ack",...}`,
//! `{"type":"error",...,"code":"...","message":"..."}`, deliveries
//! `{"type":"message","topic":"t","data":<the published JSON, verbatim>}`, and, from a node of a herald
//! cluster that knows it missed messages of a topic, gap notices `{"type":"gap","topic":"t"}`.
//!
//! A published `data` is a JSON string of `--size` ASCII bytes: the header ([`crate::plan::payload::Header`])
//! as 40 lowercase hex digits (publisher 8, sequence 16, timestamp 16), then `x` padding. The receive path
//! uses no JSON parser: a delivery on topic `t` starts with a fixed envelope head ([`envelope_head`]), so the
//! header is at a known offset; anything else is classified by scanning its first bytes ([`incoming`]).
//!
//! Pure functions over bytes: no sockets, no clock.

use crate::plan::payload::Header;

/// Hex digits of an encoded header: the smallest JSON payload.
pub const HEADER_HEX_LEN: usize = 40;

/// Payload bytes of each data frame the scanner hands back on a JSON connection (the most it can): the
/// envelope head and the encoded header must fit in it.
pub const PREFIX_LEN: usize = 125;

/// Lowercase hex digits.
const HEX: &[u8; 16] = b"0123456789abcdef";

/// Maps an ASCII byte to its hex value, or 0xFF.
const UNHEX: [u8; 256] = {
    let mut t = [0xFFu8; 256];
    let mut i = 0;
    while i < 10 {
        t[b'0' as usize + i] = i as u8;
        i += 1;
    }
    let mut i = 0;
    while i < 6 {
        t[b'a' as usize + i] = 10 + i as u8;
        t[b'A' as usize + i] = 10 + i as u8;
        i += 1;
    }
    t
};

/// Writes `value` as `out.len()` hex digits, most significant first.
fn put_hex(out: &mut [u8], mut value: u64) {
    for b in out.iter_mut().rev() {
        *b = HEX[(value & 0xF) as usize];
        value >>= 4;
    }
}

/// Reads hex digits as a number, or `None` if one is not a hex digit.
#[inline]
fn get_hex(digits: &[u8]) -> Option<u64> {
    let mut v = 0u64;
    let mut bad = 0u8;
    for &d in digits {
        let n = UNHEX[usize::from(d)];
        bad |= n;
        v = (v << 4) | u64::from(n & 0xF);
    }
    // Any 0xFF sets the high bits; valid nibbles never do.
    (bad & 0xF0 == 0).then_some(v)
}

/// Writes `h` as [`HEADER_HEX_LEN`] hex digits into the front of `buf`.
///
/// # Panics
/// If `buf` is shorter than [`HEADER_HEX_LEN`] (a caller bug: sizes are validated at start).
pub fn write_header(buf: &mut [u8], h: Header) {
    put_hex(&mut buf[0..8], u64::from(h.publisher));
    put_hex(&mut buf[8..24], h.seq);
    put_hex(&mut buf[24..40], h.sent_ns);
}

/// Reads a header from the front of a JSON payload's string content, or `None` if it is too short or not hex.
#[inline]
pub fn read_header(data: &[u8]) -> Option<Header> {
    let d = data.get(..HEADER_HEX_LEN)?;
    let publisher = u32::try_from(get_hex(&d[0..8])?).ok()?;
    Some(Header { publisher, seq: get_hex(&d[8..24])?, sent_ns: get_hex(&d[24..40])? })
}

/// Appends `s` as a JSON string literal.
fn push_str(out: &mut Vec<u8>, s: &str) {
    serde_json::to_writer(&mut *out, s).expect("bug: a str always serializes into a Vec");
}

/// The start of every delivery on `topic`, up to and including the opening quote of its `data` string:
/// `{"type":"message","topic":"<topic>","data":"` (herald's exact bytes).
pub fn envelope_head(topic: &str) -> Vec<u8> {
    let mut out = br#"{"type":"message","topic":"#.to_vec();
    push_str(&mut out, topic);
    out.extend_from_slice(br#","data":""#);
    out
}

/// `{"type":"subscribe","topic":"<topic>","id":1}`, with `"token"` when given (per-message auth).
pub fn subscribe_request(topic: &str, token: Option<&str>) -> Vec<u8> {
    let mut out = br#"{"type":"subscribe","topic":"#.to_vec();
    push_str(&mut out, topic);
    out.extend_from_slice(br#","id":1"#);
    if let Some(token) = token {
        out.extend_from_slice(br#","token":"#);
        push_str(&mut out, token);
    }
    out.push(b'}');
    out
}

/// `{"type":"auth","token":"<token>"}`: the first message of the `message` auth carrier.
pub fn auth_message(token: &str) -> Vec<u8> {
    let mut out = br#"{"type":"auth","token":"#.to_vec();
    push_str(&mut out, token);
    out.push(b'}');
    out
}

/// One publisher's publish request, built once: only the header digits change from message to message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PublishTemplate {
    bytes: Vec<u8>,
    /// Where the header digits start.
    at: usize,
}

impl PublishTemplate {
    /// `{"type":"publish","topic":"<topic>"[,"token":"<token>"],"data":"<size bytes>"}`; `size` is at least
    /// [`HEADER_HEX_LEN`] (validated with the plan).
    pub fn new(topic: &str, size: usize, token: Option<&str>) -> PublishTemplate {
        let mut bytes = br#"{"type":"publish","topic":"#.to_vec();
        push_str(&mut bytes, topic);
        if let Some(token) = token {
            bytes.extend_from_slice(br#","token":"#);
            push_str(&mut bytes, token);
        }
        bytes.extend_from_slice(br#","data":""#);
        let at = bytes.len();
        bytes.resize(at + size.max(HEADER_HEX_LEN), b'x');
        bytes.extend_from_slice(br#""}"#);
        PublishTemplate { bytes, at }
    }

    /// The request carrying `h`.
    pub fn fill(&mut self, h: Header) -> &[u8] {
        write_header(&mut self.bytes[self.at..], h);
        &self.bytes
    }

    /// The request's length in bytes.
    pub fn len(&self) -> usize {
        self.bytes.len()
    }
}

/// What a text message from the server is, judged from its first bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Incoming<'a> {
    /// A delivery; the bytes from the first byte of its `data` string on (possibly cut short).
    Message(&'a [u8]),
    /// An `ack` reply.
    Ack,
    /// An `error` reply; its `code`, if it is among the first bytes.
    Error(&'a [u8]),
    /// A cluster's gap notice: messages of the topic were lost between nodes (counted, not a message).
    Gap,
    /// Anything else (not JSON, another type, `data` that is not a string).
    Other,
}

/// Classifies a message from its first bytes. `head` is the [`envelope_head`] expected on this connection:
/// when the message starts with it (every delivery from herald on the right topic), that is one comparison.
#[inline]
pub fn incoming<'a>(prefix: &'a [u8], head: &[u8]) -> Incoming<'a> {
    if !head.is_empty() {
        if let Some(data) = prefix.strip_prefix(head) {
            return Incoming::Message(data);
        }
    }
    // The other common case: a publisher's stream of acks, as herald writes them.
    if let Some(rest) = prefix.strip_prefix(br#"{"type":"ack""#) {
        if matches!(rest.first(), Some(b',' | b'}')) {
            return Incoming::Ack;
        }
    }
    incoming_slow(prefix)
}

/// [`incoming`] for anything else: find the fields by name.
#[cold]
fn incoming_slow(prefix: &[u8]) -> Incoming<'_> {
    let Some(kind) = string_field(prefix, b"type") else { return Incoming::Other };
    let kind = &kind[..kind.iter().position(|&b| b == b'"').unwrap_or(kind.len())];
    match kind {
        b"message" => string_field(prefix, b"data").map_or(Incoming::Other, Incoming::Message),
        b"ack" => Incoming::Ack,
        b"gap" => Incoming::Gap,
        b"error" => {
            let code = string_field(prefix, b"code").unwrap_or(b"");
            Incoming::Error(&code[..code.iter().position(|&b| b == b'"').unwrap_or(0)])
        }
        _ => Incoming::Other,
    }
}

/// The bytes after the opening quote of the string value of the first `"name"` key in `buf` (to the end of
/// `buf`: the caller cuts at the closing quote if it needs to), or `None`. Whitespace around the colon is
/// allowed. Topic names cannot contain quotes, so a key cannot be confused with the topic's value.
fn string_field<'a>(buf: &'a [u8], name: &[u8]) -> Option<&'a [u8]> {
    let mut from = 0;
    while from < buf.len() {
        let at = from + find(&buf[from..], name)?;
        from = at + name.len();
        if at == 0 || buf[at - 1] != b'"' || buf.get(from) != Some(&b'"') {
            continue;
        }
        let rest = skip_ws(&buf[from + 1..]);
        let Some(rest) = rest.strip_prefix(b":") else { continue };
        let rest = skip_ws(rest);
        return rest.strip_prefix(b"\"");
    }
    None
}

fn skip_ws(b: &[u8]) -> &[u8] {
    let n = b.iter().take_while(|c| matches!(c, b' ' | b'\t' | b'\n' | b'\r')).count();
    &b[n..]
}

/// The position of `needle` (non-empty) in `hay`.
fn find(hay: &[u8], needle: &[u8]) -> Option<usize> {
    hay.windows(needle.len()).position(|w| w == needle)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::{json, Value};

    const H: Header = Header { publisher: 0xDEAD_BEEF, seq: 0x0123_4567_89AB_CDEF, sent_ns: u64::MAX - 7 };

    #[test]
    fn header_round_trips_through_hex_digits() {
        let mut buf = [0u8; HEADER_HEX_LEN];
        for h in [H, Header { publisher: 0, seq: 0, sent_ns: 0 }, Header { seq: u64::MAX, ..H }] {
            write_header(&mut buf, h);
            assert!(buf.iter().all(u8::is_ascii_hexdigit), "{buf:?}");
            assert_eq!(read_header(&buf), Some(h));
        }
        write_header(&mut buf, H);
        assert_eq!(&buf[..8], b"deadbeef");
        assert_eq!(read_header(&buf[..39]), None, "too short");
        buf[20] = b'g';
        assert_eq!(read_header(&buf), None, "not hex");
        buf[20] = b'"';
        assert_eq!(read_header(&buf), None);
    }

    #[test]
    fn publish_request_is_valid_json_with_the_header_in_data() {
        let mut t = PublishTemplate::new("lg1-0", 64, None);
        let text = t.fill(H).to_vec();
        let v: Value = serde_json::from_slice(&text).expect("valid JSON");
        assert_eq!(v["type"], "publish");
        assert_eq!(v["topic"], "lg1-0");
        assert!(v.get("token").is_none());
        let data = v["data"].as_str().expect("a string");
        assert_eq!(data.len(), 64);
        assert_eq!(read_header(data.as_bytes()), Some(H));
        assert!(data[HEADER_HEX_LEN..].bytes().all(|b| b == b'x'));
        assert_eq!(t.len(), text.len());
        // Refilling changes only the digits.
        let next = Header { seq: H.seq + 1, ..H };
        let v: Value = serde_json::from_slice(t.fill(next)).expect("valid JSON");
        assert_eq!(read_header(v["data"].as_str().expect("data").as_bytes()), Some(next));
    }

    #[test]
    fn per_message_token_goes_into_subscribe_and_publish() {
        let v: Value = serde_json::from_slice(&subscribe_request("t", Some("a.b.c"))).expect("JSON");
        assert_eq!(v, json!({"type":"subscribe","topic":"t","id":1,"token":"a.b.c"}));
        let v: Value = serde_json::from_slice(&subscribe_request("t", None)).expect("JSON");
        assert_eq!(v, json!({"type":"subscribe","topic":"t","id":1}));
        let v: Value = serde_json::from_slice(PublishTemplate::new("t", 40, Some("a.b.c")).fill(H)).expect("JSON");
        assert_eq!(v["token"], "a.b.c");
        let v: Value = serde_json::from_slice(&auth_message("q\"uote")).expect("JSON, escaped");
        assert_eq!(v, json!({"type":"auth","token":"q\"uote"}));
    }

    /// herald's envelope writer, as its `control` module builds it.
    fn herald_envelope(topic: &str, data: &str) -> Vec<u8> {
        let mut out = Vec::new();
        herald::control::write_envelope_json(
            &mut out,
            topic,
            &serde_json::value::RawValue::from_string(data.to_owned()).expect("raw"),
        );
        out
    }

    #[test]
    fn delivery_is_found_by_its_fixed_envelope_head() {
        let mut t = PublishTemplate::new("news", 50, None);
        let request: Value = serde_json::from_slice(t.fill(H)).expect("JSON");
        let data = serde_json::to_string(&request["data"]).expect("data");
        let envelope = herald_envelope("news", &data);
        let head = envelope_head("news");
        assert!(envelope.starts_with(&head), "herald's envelope starts with the head loadgen expects");
        let prefix = &envelope[..envelope.len().min(PREFIX_LEN)];
        match incoming(prefix, &head) {
            Incoming::Message(d) => assert_eq!(read_header(d), Some(H)),
            other => panic!("{other:?}"),
        }
        // Another topic's delivery (or another server's spacing) is still found, by scanning.
        match incoming(prefix, &envelope_head("other")) {
            Incoming::Message(d) => assert_eq!(read_header(d), Some(H)),
            other => panic!("{other:?}"),
        }
        let spaced = br#"{ "type" : "message", "topic": "news", "data" : "deadbeef"}"#;
        assert_eq!(incoming(spaced, &head), Incoming::Message(b"deadbeef\"}"));
    }

    #[test]
    fn replies_are_told_from_deliveries() {
        let head = envelope_head("t");
        assert_eq!(incoming(br#"{"type":"ack","id":1}"#, &head), Incoming::Ack);
        assert_eq!(incoming(br#"{"type":"ack"}"#, &head), Incoming::Ack);
        assert_eq!(incoming(br#"{"type":"ack"}"#, b""), Incoming::Ack);
        let mut err = Vec::new();
        herald::control::write_error(&mut err, None, "forbidden", "not allowed \"here\"");
        assert_eq!(incoming(&err, &head), Incoming::Error(b"forbidden"));
        assert_eq!(incoming(br#"{"type":"error","id":1"#, &head), Incoming::Error(b""), "code cut off");
        assert_eq!(incoming(b"not json", &head), Incoming::Other);
        assert_eq!(incoming(br#"{"type":"message","topic":"t","data":{"a":1}}"#, &head), Incoming::Other);
        assert_eq!(incoming(br#"{"type":"pong"}"#, &head), Incoming::Other);
        assert_eq!(incoming(br#"{"type":"gap","topic":"t"}"#, &head), Incoming::Gap, "a cluster's gap notice");
        assert_eq!(incoming(br#"{ "type" : "gap", "topic": "other"}"#, &head), Incoming::Gap);
        assert_eq!(incoming(b"", &head), Incoming::Other);
    }

    #[test]
    fn envelope_head_and_header_fit_the_scanner_prefix_for_long_default_topics() {
        // The default prefix is `lg<pid>-`: pids have at most 7 digits, topic numbers at most 10.
        let head = envelope_head("lg4194304-4294967295");
        assert!(head.len() + HEADER_HEX_LEN <= PREFIX_LEN, "{}", head.len());
    }
}
