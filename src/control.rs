//! The `/ws` JSON control protocol: parsing client requests and building replies and delivery envelopes.
//!
//! Sans-IO like [`crate::protocol`]: text in, JSON text out; framing and routing are the caller's. An envelope
//! is built once per publish (never per subscriber) and then framed once.
//!
//! Client to server: `{"type":"subscribe","topic":"t","id":1}`, `{"type":"unsubscribe","topic":"t","id":1}`,
//! `{"type":"publish","topic":"t","data":<any JSON>,"id":2}`, and `{"type":"auth","token":"<jwt>","id":3}` (first
//! message in auth message mode, or a token refresh in any mode). With per-message auth, subscribe and publish
//! carry `"token":"<jwt>"` too. Replies: `{"type":"ack","id":1}` or
//! `{"type":"error","id":1,"code":"...","message":"..."}`; `id` is optional, any JSON value, echoed verbatim.
//! Delivery: `{"type":"message","topic":"t","data":...}` (or `"data_b64":"..."` for binary raw publishes).
//!
//! `data` and `id` are kept as their raw JSON text and never built into values. serde_json skips a raw value
//! without recursing and without its 128-level limit, so nesting is bounded here instead: a request whose
//! `data` or `id` nests deeper than `limits.max_json_depth` is refused ([`json_depth_exceeds`], a byte scan),
//! and no subscriber's parser is ever handed a document deeper than that.

use base64::engine::general_purpose::STANDARD;
use base64::Engine as _;
use serde::de::IgnoredAny;
use serde::{Deserialize, Deserializer};
use serde_json::error::Category;
use serde_json::value::RawValue;

/// A request from a `/ws` client.
#[derive(Debug)]
pub enum ControlRequest {
    /// Subscribe this connection to `topic`.
    Subscribe {
        /// The topic name, not yet validated against the topic rules.
        topic: String,
        /// The request's own token (per-message auth).
        token: Option<String>,
        /// The request id, echoed in the reply.
        id: Option<Box<RawValue>>,
    },
    /// Unsubscribe this connection from `topic`.
    Unsubscribe {
        /// The topic name.
        topic: String,
        /// The request id.
        id: Option<Box<RawValue>>,
    },
    /// Publish `data` (any JSON value, kept as its exact text) to `topic`.
    Publish {
        /// The topic name.
        topic: String,
        /// The payload's JSON text.
        data: Box<RawValue>,
        /// The request's own token (per-message auth).
        token: Option<String>,
        /// The request id.
        id: Option<Box<RawValue>>,
    },
    /// Authenticate (or refresh) the connection with `token`.
    Auth {
        /// The token.
        token: String,
        /// The request id.
        id: Option<Box<RawValue>>,
    },
}

/// A request that could not be understood; answered with an error reply, the connection stays open.
#[derive(Debug)]
pub struct ControlError {
    /// The request id, when it could be read.
    pub id: Option<Box<RawValue>>,
    /// Machine-readable code: `invalid_json`, `invalid_request` (not an object, missing/mistyped field),
    /// `unknown_type`.
    pub code: &'static str,
    /// Human-readable detail.
    pub message: String,
    /// The request was refused because `data` or `id` nests deeper than the configured depth (a limit hit).
    pub too_deep: bool,
}

/// Parses one text message from a `/ws` client.
///
/// Unknown fields are ignored, and fields that a request type does not use (`data` on a subscribe) are
/// ignored too. `"id": null` is an id (echoed as `null`); a missing `id` is none. A `data` or `id` with arrays
/// and objects nested more than `max_depth` deep is an `invalid_request` (an `id` that deep is not echoed).
pub fn parse_request(text: &[u8], max_depth: usize) -> Result<ControlRequest, ControlError> {
    // serde's derived struct also accepts a JSON array (fields by position); a request must be an object.
    if first_non_whitespace(text) != Some(b'{') {
        return Err(match serde_json::from_slice::<IgnoredAny>(text) {
            Ok(_) => invalid_request(None, "a request must be a JSON object".to_owned()),
            Err(e) => invalid_json(&e),
        });
    }
    let wire: WireRequest = match serde_json::from_slice(text) {
        Ok(wire) => wire,
        Err(e) if e.classify() == Category::Data => {
            // Valid JSON of the wrong shape: still echo the id if it can be read on its own.
            let id = serde_json::from_slice::<WireId>(text).ok().and_then(|w| w.id);
            let id = id.filter(|id| !json_depth_exceeds(id.get(), max_depth));
            return Err(invalid_request(id, e.to_string()));
        }
        Err(e) => return Err(invalid_json(&e)),
    };
    let WireRequest { kind, topic, data, id, token } = wire;
    if id.as_deref().is_some_and(|id| json_depth_exceeds(id.get(), max_depth)) {
        return Err(too_deep(None, "id", max_depth));
    }
    if data.as_deref().is_some_and(|data| json_depth_exceeds(data.get(), max_depth)) {
        return Err(too_deep(id, "data", max_depth));
    }
    let Some(kind) = kind else {
        return Err(invalid_request(id, "missing field `type`".to_owned()));
    };
    let kind = match kind.as_str() {
        "subscribe" => Kind::Subscribe,
        "unsubscribe" => Kind::Unsubscribe,
        "publish" => Kind::Publish,
        "auth" => {
            return match token {
                Some(token) => Ok(ControlRequest::Auth { token, id }),
                None => Err(invalid_request(id, "missing field `token`".to_owned())),
            }
        }
        _ => {
            return Err(ControlError {
                id,
                code: UNKNOWN_TYPE,
                message: "unknown type: expected subscribe, unsubscribe, publish or auth".to_owned(),
                too_deep: false,
            })
        }
    };
    let Some(topic) = topic else {
        return Err(invalid_request(id, "missing field `topic`".to_owned()));
    };
    Ok(match kind {
        Kind::Subscribe => ControlRequest::Subscribe { topic, token, id },
        Kind::Unsubscribe => ControlRequest::Unsubscribe { topic, id },
        Kind::Publish => match data {
            Some(data) => ControlRequest::Publish { topic, data, token, id },
            None => return Err(invalid_request(id, "missing field `data`".to_owned())),
        },
    })
}

/// Error code: the text is not JSON (or not UTF-8).
pub const INVALID_JSON: &str = "invalid_json";
/// Error code: JSON, but not a request (not an object, a missing or mistyped field).
pub const INVALID_REQUEST: &str = "invalid_request";
/// Error code: `type` names no known request.
pub const UNKNOWN_TYPE: &str = "unknown_type";

/// The request kinds, once `type` is known.
enum Kind {
    Subscribe,
    Unsubscribe,
    Publish,
}

/// The wire shape of a request. Every field is optional here so that each absence gets its own error.
#[derive(Deserialize)]
struct WireRequest {
    #[serde(rename = "type")]
    kind: Option<String>,
    topic: Option<String>,
    #[serde(default, deserialize_with = "present_raw")]
    data: Option<Box<RawValue>>,
    #[serde(default, deserialize_with = "present_raw")]
    id: Option<Box<RawValue>>,
    token: Option<String>,
}

/// Just the id, read on its own when the full request has the wrong shape.
#[derive(Deserialize)]
struct WireId {
    #[serde(default, deserialize_with = "present_raw")]
    id: Option<Box<RawValue>>,
}

/// A present field is `Some`, even when it is `null` (plain `Option` would turn `null` into `None`).
fn present_raw<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Box<RawValue>>, D::Error> {
    Box::<RawValue>::deserialize(d).map(Some)
}

/// Whether the JSON text `json` nests arrays and objects more than `max` deep (`1` is depth 0, `[1]` and `{}`
/// depth 1). A byte scan that builds nothing: brackets inside strings are skipped, and the scan stops at the
/// first bracket past `max`. `json` is expected to be valid JSON; for anything else the answer is meaningless
/// but the scan still ends without panicking.
pub fn json_depth_exceeds(json: &str, max: usize) -> bool {
    let mut depth = 0usize;
    let mut in_string = false;
    let mut escaped = false;
    for &b in json.as_bytes() {
        if in_string {
            // Multi-byte UTF-8 sequences are all bytes >= 0x80, so they never look like `"` or `\`.
            match (escaped, b) {
                (true, _) => escaped = false,
                (false, b'\\') => escaped = true,
                (false, b'"') => in_string = false,
                _ => {}
            }
            continue;
        }
        match b {
            b'"' => in_string = true,
            b'[' | b'{' => {
                depth += 1;
                if depth > max {
                    return true;
                }
            }
            b']' | b'}' => depth = depth.saturating_sub(1),
            _ => {}
        }
    }
    false
}

fn first_non_whitespace(text: &[u8]) -> Option<u8> {
    text.iter().copied().find(|b| !matches!(b, b' ' | b'\t' | b'\n' | b'\r'))
}

fn invalid_json(e: &serde_json::Error) -> ControlError {
    ControlError { id: None, code: INVALID_JSON, message: e.to_string(), too_deep: false }
}

fn invalid_request(id: Option<Box<RawValue>>, message: String) -> ControlError {
    ControlError { id, code: INVALID_REQUEST, message, too_deep: false }
}

fn too_deep(id: Option<Box<RawValue>>, field: &str, max_depth: usize) -> ControlError {
    let message = format!("`{field}` nests arrays and objects more than {max_depth} deep (limits.max_json_depth)");
    ControlError { id, code: INVALID_REQUEST, message, too_deep: true }
}

/// Writes `{"type":"ack","id":<id>}` (no `id` key when `id` is `None`).
///
/// Like every writer here, it appends to `out`.
pub fn write_ack(out: &mut Vec<u8>, id: Option<&RawValue>) {
    out.extend_from_slice(br#"{"type":"ack""#);
    push_id(out, id);
    out.push(b'}');
}

/// Writes `{"type":"error","id":<id>,"code":"<code>","message":"<message>"}` (message JSON-escaped).
pub fn write_error(out: &mut Vec<u8>, id: Option<&RawValue>, code: &str, message: &str) {
    out.extend_from_slice(br#"{"type":"error""#);
    push_id(out, id);
    out.extend_from_slice(br#","code":"#);
    push_json_str(out, code);
    out.extend_from_slice(br#","message":"#);
    push_json_str(out, message);
    out.push(b'}');
}

impl ControlError {
    /// Writes this error as an error reply ([`write_error`]).
    pub fn write_reply(&self, out: &mut Vec<u8>) {
        write_error(out, self.id.as_deref(), self.code, &self.message);
    }
}

/// The delivery envelope for a `/ws` publish: `{"type":"message","topic":"<topic>","data":<data>}`, with
/// `data` copied verbatim. (A publish itself is answered with [`write_ack`].)
pub fn write_envelope_json(out: &mut Vec<u8>, topic: &str, data: &RawValue) {
    push_envelope_head(out, topic);
    out.extend_from_slice(br#","data":"#);
    out.extend_from_slice(data.get().as_bytes());
    out.push(b'}');
}

/// The delivery envelope for a raw text publish: `data` is the text as a JSON string.
pub fn write_envelope_text(out: &mut Vec<u8>, topic: &str, text: &str) {
    push_envelope_head(out, topic);
    out.extend_from_slice(br#","data":"#);
    push_json_str(out, text);
    out.push(b'}');
}

/// The delivery envelope for a raw binary publish: `data_b64` is the payload in standard base64.
pub fn write_envelope_binary(out: &mut Vec<u8>, topic: &str, payload: &[u8]) {
    push_envelope_head(out, topic);
    out.extend_from_slice(br#","data_b64":""#);
    let start = out.len();
    let len = base64::encoded_len(payload.len(), true).expect("bug: payload too large for base64");
    out.resize(start + len, 0);
    let written = STANDARD.encode_slice(payload, &mut out[start..]).expect("bug: buffer sized by encoded_len");
    out.truncate(start + written);
    out.extend_from_slice(br#""}"#);
}

/// Appends `{"type":"message","topic":"<topic>"` (the caller closes the object).
fn push_envelope_head(out: &mut Vec<u8>, topic: &str) {
    out.extend_from_slice(br#"{"type":"message","topic":"#);
    push_json_str(out, topic);
}

/// Appends `,"id":<id>` when there is an id; the id is already JSON text.
fn push_id(out: &mut Vec<u8>, id: Option<&RawValue>) {
    if let Some(id) = id {
        out.extend_from_slice(br#","id":"#);
        out.extend_from_slice(id.get().as_bytes());
    }
}

/// Appends `s` as a JSON string literal, escaped.
fn push_json_str(out: &mut Vec<u8>, s: &str) {
    serde_json::to_writer(&mut *out, s).expect("bug: a str always serializes into a Vec");
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::{json, Value};

    /// The default `limits.max_json_depth`.
    const DEPTH: usize = 64;

    fn parse_ok(text: &str) -> ControlRequest {
        parse_request(text.as_bytes(), DEPTH).expect("valid request")
    }

    fn parse_err(text: &[u8]) -> ControlError {
        parse_request(text, DEPTH).expect_err("invalid request")
    }

    fn id_text(id: &Option<Box<RawValue>>) -> Option<&str> {
        id.as_deref().map(RawValue::get)
    }

    fn written(write: impl FnOnce(&mut Vec<u8>)) -> Value {
        let mut out = Vec::new();
        write(&mut out);
        serde_json::from_slice(&out).expect("writers produce valid JSON")
    }

    #[test]
    fn parses_subscribe_with_numeric_id() {
        match parse_ok(r#"{"type":"subscribe","topic":"news","id":1}"#) {
            ControlRequest::Subscribe { topic, id, .. } => {
                assert_eq!(topic, "news");
                assert_eq!(id_text(&id), Some("1"));
            }
            other => panic!("unexpected {other:?}"),
        }
    }

    #[test]
    fn parses_unsubscribe_with_string_id_and_no_id() {
        match parse_ok(r#" {"id":"a\"b","topic":"news","type":"unsubscribe"} "#) {
            ControlRequest::Unsubscribe { topic, id } => {
                assert_eq!(topic, "news");
                assert_eq!(id_text(&id), Some(r#""a\"b""#), "the id is kept as its exact text");
            }
            other => panic!("unexpected {other:?}"),
        }
        match parse_ok(r#"{"type":"unsubscribe","topic":"t"}"#) {
            ControlRequest::Unsubscribe { id, .. } => assert!(id.is_none()),
            other => panic!("unexpected {other:?}"),
        }
    }

    #[test]
    fn publish_keeps_data_text_verbatim() {
        let text = r#"{"type":"publish","topic":"t","data":{"b": [1, 2.50, "x"]},"id":[1]}"#;
        match parse_ok(text) {
            ControlRequest::Publish { topic, data, id, .. } => {
                assert_eq!(topic, "t");
                assert_eq!(data.get(), r#"{"b": [1, 2.50, "x"]}"#);
                assert_eq!(id_text(&id), Some("[1]"));
            }
            other => panic!("unexpected {other:?}"),
        }
    }

    #[test]
    fn publish_of_null_is_data_not_missing() {
        match parse_ok(r#"{"type":"publish","topic":"t","data":null,"id":null}"#) {
            ControlRequest::Publish { data, id, .. } => {
                assert_eq!(data.get(), "null");
                assert_eq!(id_text(&id), Some("null"));
            }
            other => panic!("unexpected {other:?}"),
        }
    }

    #[test]
    fn ignores_unknown_fields() {
        let req = parse_ok(r#"{"type":"subscribe","topic":"t","extra":{"deep":[1]},"data":5}"#);
        assert!(matches!(req, ControlRequest::Subscribe { .. }));
    }

    #[test]
    fn not_json_is_invalid_json() {
        for text in [&b"{"[..], b"", b"nope", b"{\"type\":\"subscribe\"} x", b"{\"type\":\"\xff\"}"] {
            let err = parse_err(text);
            assert_eq!(err.code, INVALID_JSON, "{:?}", String::from_utf8_lossy(text));
            assert!(err.id.is_none());
        }
    }

    #[test]
    fn non_object_is_invalid_request() {
        for text in [r#"["subscribe","t"]"#, "42", r#""subscribe""#, "null"] {
            assert_eq!(parse_err(text.as_bytes()).code, INVALID_REQUEST, "{text}");
        }
    }

    #[test]
    fn missing_fields_are_invalid_request_and_keep_the_id() {
        for text in
            [r#"{"topic":"t","id":7}"#, r#"{"type":"subscribe","id":7}"#, r#"{"type":"publish","topic":"t","id":7}"#]
        {
            let err = parse_err(text.as_bytes());
            assert_eq!(err.code, INVALID_REQUEST, "{text}");
            assert_eq!(id_text(&err.id), Some("7"), "{text}");
        }
    }

    #[test]
    fn mistyped_field_is_invalid_request_and_keeps_the_id() {
        let err = parse_err(br#"{"type":"subscribe","topic":5,"id":"req-1"}"#);
        assert_eq!(err.code, INVALID_REQUEST);
        assert_eq!(id_text(&err.id), Some(r#""req-1""#));
        let err = parse_err(br#"{"type":["publish"],"topic":"t","data":1}"#);
        assert_eq!((err.code, err.id.is_none()), (INVALID_REQUEST, true));
    }

    #[test]
    fn unknown_type_is_unknown_type_and_keeps_the_id() {
        let err = parse_err(br#"{"type":"Subscribe","topic":"t","id":3}"#);
        assert_eq!(err.code, UNKNOWN_TYPE);
        assert_eq!(id_text(&err.id), Some("3"));
    }

    #[test]
    fn ack_echoes_id_or_omits_it() {
        let id = RawValue::from_string(r#"{"n":1}"#.to_owned()).expect("json");
        assert_eq!(written(|o| write_ack(o, Some(&id))), json!({"type":"ack","id":{"n":1}}));
        let mut out = Vec::new();
        write_ack(&mut out, None);
        assert_eq!(out, br#"{"type":"ack"}"#);
    }

    #[test]
    fn error_reply_escapes_message() {
        let id = RawValue::from_string("\"x\"".to_owned()).expect("json");
        let msg = "bad \"topic\"\n\tat \\ é \u{1}";
        assert_eq!(
            written(|o| write_error(o, Some(&id), INVALID_REQUEST, msg)),
            json!({"type":"error","id":"x","code":"invalid_request","message":msg})
        );
        let err = parse_err(b"[]");
        assert_eq!(
            written(|o| err.write_reply(o)),
            json!({"type":"error","code":"invalid_request","message":err.message})
        );
    }

    #[test]
    fn json_envelope_copies_data_verbatim() {
        let data = RawValue::from_string(r#"{"price": 1.50}"#.to_owned()).expect("json");
        let mut out = Vec::new();
        write_envelope_json(&mut out, "ticks/\"eur\"", &data);
        assert_eq!(out, br#"{"type":"message","topic":"ticks/\"eur\"","data":{"price": 1.50}}"#);
        assert_eq!(
            serde_json::from_slice::<Value>(&out).expect("json"),
            json!({"type":"message","topic":"ticks/\"eur\"","data":{"price":1.50}})
        );
    }

    #[test]
    fn text_envelope_escapes_quotes_newlines_and_unicode() {
        let text = "say \"hi\"\r\nnaïve ☃ \u{7f} \u{0} 𝄞";
        assert_eq!(written(|o| write_envelope_text(o, "t", text)), json!({"type":"message","topic":"t","data":text}));
    }

    #[test]
    fn binary_envelope_is_standard_base64() {
        let payload = [0u8, 1, 2, 0xfb, 0xff, 0xfe];
        assert_eq!(
            written(|o| write_envelope_binary(o, "bin", &payload)),
            json!({"type":"message","topic":"bin","data_b64":"AAEC+//+"})
        );
        let mut out = b"keep".to_vec();
        write_envelope_binary(&mut out, "t", b"");
        assert_eq!(out, br#"keep{"type":"message","topic":"t","data_b64":""}"#, "writers append");
    }

    #[test]
    fn envelope_of_parsed_publish_round_trips() {
        let text = r#"{"type":"publish","topic":"a/b","data":[true,{"k":"v\u00e9"}]}"#;
        let ControlRequest::Publish { topic, data, .. } = parse_ok(text) else {
            panic!("publish expected");
        };
        assert_eq!(
            written(|o| write_envelope_json(o, &topic, &data)),
            json!({"type":"message","topic":"a/b","data":[true,{"k":"vé"}]})
        );
    }

    fn nested(depth: usize) -> String {
        format!("{}1{}", "[".repeat(depth), "]".repeat(depth))
    }

    fn publish_text(data: &str, id: &str) -> String {
        format!(r#"{{"type":"publish","topic":"t","data":{data},"id":{id}}}"#)
    }

    #[test]
    fn json_depth_counts_nested_arrays_and_objects_outside_strings() {
        for (json, depth) in [
            ("1", 0),
            ("\"[{\"", 0),
            ("[]", 1),
            ("{}", 1),
            (r#"{"a":[1,{"b":null}],"c":[]}"#, 3),
            (r#"["\"[[", "\\", {"k]":"}\\\"{"}]"#, 2),
            ("[[[\"é\"]]]", 3),
        ] {
            assert!(!json_depth_exceeds(json, depth), "{json} is {depth} deep");
            if depth > 0 {
                assert!(json_depth_exceeds(json, depth - 1), "{json} is more than {} deep", depth - 1);
            }
        }
    }

    /// `limits.max_json_depth`: `data` nested exactly the limit deep is published, one level more is an
    /// `invalid_request` that still echoes the id.
    #[test]
    fn data_nested_past_max_depth_is_invalid_request_with_the_id() {
        match parse_ok(&publish_text(&nested(DEPTH), "1")) {
            ControlRequest::Publish { data, .. } => assert_eq!(data.get(), nested(DEPTH)),
            other => panic!("unexpected {other:?}"),
        }
        let err = parse_err(publish_text(&nested(DEPTH + 1), "1").as_bytes());
        assert_eq!((err.code, err.too_deep, id_text(&err.id)), (INVALID_REQUEST, true, Some("1")));
        assert!(err.message.contains("`data`") && err.message.contains("64"), "{}", err.message);
        let object = format!("{}1{}", r#"{"k":"#.repeat(DEPTH + 1), "}".repeat(DEPTH + 1));
        assert!(parse_err(publish_text(&object, "1").as_bytes()).too_deep, "objects count like arrays");
    }

    /// serde_json skips a raw value without its 128-level recursion limit, so before the depth check a
    /// 100,000-deep `data` parsed fine and was published as it was.
    #[test]
    fn data_100000_deep_is_refused_without_building_it() {
        let err = parse_err(publish_text(&nested(100_000), "7").as_bytes());
        assert_eq!((err.code, err.too_deep, id_text(&err.id)), (INVALID_REQUEST, true, Some("7")));
    }

    #[test]
    fn id_nested_past_max_depth_is_invalid_request_and_not_echoed() {
        assert!(parse_request(publish_text("1", &nested(DEPTH)).as_bytes(), DEPTH).is_ok());
        for text in [
            publish_text("1", &nested(DEPTH + 1)),
            format!(r#"{{"type":"subscribe","topic":"t","id":{}}}"#, nested(100_000)),
        ] {
            let err = parse_err(text.as_bytes());
            assert_eq!((err.code, err.too_deep, err.id.is_none()), (INVALID_REQUEST, true, true));
        }
        // A request of the wrong shape echoes its id only when the id is within the limit.
        let wrong_shape = |id: &str| format!(r#"{{"type":"subscribe","topic":5,"id":{id}}}"#);
        assert_eq!(id_text(&parse_err(wrong_shape(&nested(DEPTH)).as_bytes()).id), Some(nested(DEPTH).as_str()));
        assert!(parse_err(wrong_shape(&nested(DEPTH + 1)).as_bytes()).id.is_none());
    }

    #[test]
    fn the_depth_limit_is_the_callers() {
        assert!(parse_request(publish_text(&nested(3), "1").as_bytes(), 3).is_ok());
        assert!(parse_request(publish_text(&nested(4), "1").as_bytes(), 3).is_err());
        assert!(parse_request(publish_text("[]", "1").as_bytes(), 0).is_err());
        assert!(parse_request(publish_text("\"x\"", "1").as_bytes(), 0).is_ok());
    }
}
