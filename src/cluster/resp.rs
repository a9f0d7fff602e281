//! A small RESP2 codec, sans-IO: bytes in, [`Value`]s out; commands out as bytes, many per buffer.
//!
//! Only what the bridge speaks: commands are arrays of bulk strings (`*N\r\n$len\r\narg\r\n...`), replies are
//! simple strings, errors, integers, bulk strings (or nil) and arrays. Decoding never copies a bulk string: a
//! complete value is split off the read buffer once and every bulk string is a slice of it. Two fast paths take
//! the bridge's bulk traffic without building values: [`take_integer`] (a PUBLISH's reply) and
//! [`take_message`] (a Pub/Sub message push, whose payload is the only piece split off).

use bytes::{Buf, Bytes, BytesMut};

/// A decoded RESP2 value.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Value {
    /// `+OK`
    Simple(Bytes),
    /// `-ERR ...`
    Error(Bytes),
    /// `:42`
    Integer(i64),
    /// `$3\r\nabc`
    Bulk(Bytes),
    /// `$-1` or `*-1`
    Nil,
    /// `*2\r\n...`
    Array(Vec<Value>),
}

impl Value {
    /// The bytes of a simple or bulk string.
    pub fn as_bytes(&self) -> Option<&Bytes> {
        match self {
            Value::Simple(b) | Value::Bulk(b) => Some(b),
            _ => None,
        }
    }
}

/// Why a byte stream is not RESP2 (the connection is then dropped).
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum RespError {
    /// An unknown type byte, a bad length or a missing CRLF.
    #[error("malformed RESP: {0}")]
    Malformed(&'static str),
    /// A bulk string or array larger than the decoder accepts, or nested too deep.
    #[error("RESP value too large or too deep")]
    TooLarge,
}

/// Arrays nest at most this deep (Pub/Sub replies nest one level).
const MAX_DEPTH: usize = 8;
/// Most elements in one array.
const MAX_ARRAY: i64 = 1 << 20;

/// Decodes one value from the front of `buf`, removing its bytes; `Ok(None)` while it is incomplete.
/// Bulk strings longer than `max_bulk` are refused.
pub fn decode(buf: &mut BytesMut, max_bulk: usize) -> Result<Option<Value>, RespError> {
    let Some(end) = scan(buf, 0, max_bulk, 0)? else { return Ok(None) };
    let frame = buf.split_to(end).freeze();
    let mut pos = 0;
    Ok(Some(build(&frame, &mut pos)))
}

/// The line starting at `pos` (without CRLF) and the position after it, or `None` when incomplete.
fn line(buf: &[u8], pos: usize) -> Result<Option<(&[u8], usize)>, RespError> {
    let rest = buf.get(pos..).unwrap_or(&[]);
    match rest.iter().position(|&b| b == b'\n') {
        None if rest.len() > 64 * 1024 => Err(RespError::Malformed("line too long")),
        None => Ok(None),
        Some(0) => Err(RespError::Malformed("bare LF")),
        Some(i) if rest[i - 1] != b'\r' => Err(RespError::Malformed("LF without CR")),
        Some(i) => Ok(Some((&rest[..i - 1], pos + i + 1))),
    }
}

fn int(text: &[u8]) -> Result<i64, RespError> {
    const BAD: RespError = RespError::Malformed("bad integer");
    let (negative, digits) = match text.split_first() {
        Some((b'-', rest)) => (true, rest),
        _ => (false, text),
    };
    if digits.is_empty() {
        return Err(BAD);
    }
    let mut v: i64 = 0;
    for &d in digits {
        if !d.is_ascii_digit() {
            return Err(BAD);
        }
        let d = i64::from(d - b'0');
        v = v.checked_mul(10).and_then(|v| if negative { v.checked_sub(d) } else { v.checked_add(d) }).ok_or(BAD)?;
    }
    Ok(v)
}

/// Takes one integer reply (`:N\r\n`) off the front of `buf`; `Ok(None)` when `buf` does not start with a
/// complete one (then [`decode`] takes what is there).
pub fn take_integer(buf: &mut BytesMut) -> Result<Option<i64>, RespError> {
    if buf.first() != Some(&b':') {
        return Ok(None);
    }
    let Some((text, next)) = line(buf, 1)? else { return Ok(None) };
    let n = int(text)?;
    buf.advance(next);
    Ok(Some(n))
}

/// Takes one Pub/Sub message push, `*3` of `verb`, channel and payload, off the front of `buf`: the channel is
/// copied into `channel`, the payload split off without a copy. `Ok(None)` when `buf` does not start with a
/// complete push of `verb` (then [`decode`] takes what is there, and refuses what is malformed or too large).
pub fn take_message(
    buf: &mut BytesMut,
    verb: &[u8],
    max_bulk: usize,
    channel: &mut Vec<u8>,
) -> Result<Option<Bytes>, RespError> {
    if !buf.starts_with(b"*3\r\n") {
        return Ok(None);
    }
    let Some((v0, v1, at)) = bulk_at(buf, 4, max_bulk)? else { return Ok(None) };
    if buf[v0..v1] != *verb {
        return Ok(None);
    }
    let Some((c0, c1, at)) = bulk_at(buf, at, max_bulk)? else { return Ok(None) };
    let Some((p0, p1, end)) = bulk_at(buf, at, max_bulk)? else { return Ok(None) };
    channel.clear();
    channel.extend_from_slice(&buf[c0..c1]);
    buf.advance(p0);
    let payload = buf.split_to(p1 - p0).freeze();
    buf.advance(end - p1);
    Ok(Some(payload))
}

/// The bulk string at `pos`: (start and end of its bytes, position after its CRLF); `None` when it is incomplete,
/// not a bulk string, nil, too large or without its CRLF (cases [`decode`] sorts out).
fn bulk_at(buf: &[u8], pos: usize, max_bulk: usize) -> Result<Option<(usize, usize, usize)>, RespError> {
    if buf.get(pos) != Some(&b'$') {
        return Ok(None);
    }
    let Some((text, next)) = line(buf, pos + 1)? else { return Ok(None) };
    let Ok(len) = usize::try_from(int(text)?) else { return Ok(None) };
    if len > max_bulk {
        return Ok(None);
    }
    let end = next + len;
    if buf.len() < end + 2 || buf[end..end + 2] != *b"\r\n" {
        return Ok(None);
    }
    Ok(Some((next, end, end + 2)))
}

/// Where the complete value starting at `pos` ends, or `None` when more bytes are needed.
fn scan(buf: &[u8], pos: usize, max_bulk: usize, depth: usize) -> Result<Option<usize>, RespError> {
    let Some(&kind) = buf.get(pos) else { return Ok(None) };
    let Some((text, next)) = line(buf, pos + 1)? else { return Ok(None) };
    match kind {
        b'+' | b'-' => Ok(Some(next)),
        b':' => int(text).map(|_| Some(next)),
        b'$' => {
            let len = int(text)?;
            if len == -1 {
                return Ok(Some(next));
            }
            let len = usize::try_from(len).map_err(|_| RespError::Malformed("negative length"))?;
            if len > max_bulk {
                return Err(RespError::TooLarge);
            }
            let end = next + len + 2;
            if buf.len() < end {
                return Ok(None);
            }
            if &buf[end - 2..end] != b"\r\n" {
                return Err(RespError::Malformed("bulk string without CRLF"));
            }
            Ok(Some(end))
        }
        b'*' => {
            let n = int(text)?;
            if n == -1 {
                return Ok(Some(next));
            }
            if !(0..=MAX_ARRAY).contains(&n) || depth >= MAX_DEPTH {
                return Err(if n < 0 { RespError::Malformed("negative length") } else { RespError::TooLarge });
            }
            let mut at = next;
            for _ in 0..n {
                match scan(buf, at, max_bulk, depth + 1)? {
                    Some(e) => at = e,
                    None => return Ok(None),
                }
            }
            Ok(Some(at))
        }
        _ => Err(RespError::Malformed("unknown type byte")),
    }
}

/// Builds the value at `pos` of a frame that [`scan`] found complete and well-formed.
fn build(frame: &Bytes, pos: &mut usize) -> Value {
    let kind = frame[*pos];
    let start = *pos + 1;
    let nl = start + frame[start..].iter().position(|&b| b == b'\n').unwrap_or(0);
    let text = &frame[start..nl.saturating_sub(1)];
    *pos = nl + 1;
    let n = int(text).unwrap_or(-1);
    match kind {
        b'+' => Value::Simple(frame.slice(start..nl - 1)),
        b'-' => Value::Error(frame.slice(start..nl - 1)),
        b':' => Value::Integer(n),
        b'$' if n < 0 => Value::Nil,
        b'$' => {
            let len = n as usize;
            let v = Value::Bulk(frame.slice(*pos..*pos + len));
            *pos += len + 2;
            v
        }
        b'*' if n < 0 => Value::Nil,
        _ => Value::Array((0..n).map(|_| build(frame, pos)).collect()),
    }
}

/// Appends one command, each argument given as the concatenation of its parts (so a PUBLISH's channel and
/// payload are written straight from their pieces, never assembled first).
pub fn command(out: &mut BytesMut, args: &[&[&[u8]]]) {
    push_len(out, b'*', args.len());
    for parts in args {
        push_len(out, b'$', parts.iter().map(|p| p.len()).sum());
        for p in *parts {
            out.extend_from_slice(p);
        }
        out.extend_from_slice(b"\r\n");
    }
}

/// Appends a command of plain arguments.
pub fn command_args(out: &mut BytesMut, args: &[&[u8]]) {
    push_len(out, b'*', args.len());
    for a in args {
        push_len(out, b'$', a.len());
        out.extend_from_slice(a);
        out.extend_from_slice(b"\r\n");
    }
}

fn push_len(out: &mut BytesMut, kind: u8, n: usize) {
    let mut digits = [0u8; 20];
    let mut i = digits.len();
    let mut v = n;
    loop {
        i -= 1;
        digits[i] = b'0' + (v % 10) as u8;
        v /= 10;
        if v == 0 {
            break;
        }
    }
    out.reserve(3 + digits.len() - i);
    out.extend_from_slice(&[kind]);
    out.extend_from_slice(&digits[i..]);
    out.extend_from_slice(b"\r\n");
}

#[cfg(test)]
mod tests {
    use super::*;

    fn all(bytes: &[u8]) -> Vec<Value> {
        let mut buf = BytesMut::from(bytes);
        let mut out = Vec::new();
        while let Some(v) = decode(&mut buf, 1 << 20).expect("valid RESP") {
            out.push(v);
        }
        assert!(buf.is_empty(), "every byte consumed");
        out
    }

    #[test]
    fn decodes_every_reply_type_the_bridge_meets() {
        let got = all(b"+OK\r\n-ERR no\r\n:12\r\n$3\r\nabc\r\n$-1\r\n*3\r\n$7\r\nmessage\r\n$2\r\nch\r\n$0\r\n\r\n");
        assert_eq!(
            got,
            vec![
                Value::Simple(Bytes::from_static(b"OK")),
                Value::Error(Bytes::from_static(b"ERR no")),
                Value::Integer(12),
                Value::Bulk(Bytes::from_static(b"abc")),
                Value::Nil,
                Value::Array(vec![
                    Value::Bulk(Bytes::from_static(b"message")),
                    Value::Bulk(Bytes::from_static(b"ch")),
                    Value::Bulk(Bytes::new()),
                ]),
            ]
        );
    }

    #[test]
    fn a_value_split_anywhere_waits_for_the_rest_and_then_decodes_the_same() {
        let whole = b"*3\r\n$7\r\nmessage\r\n$5\r\nnews!\r\n$4\r\n\r\n\x00\xff\r\n:7\r\n";
        let expected = all(whole);
        for cut in 0..whole.len() {
            let mut buf = BytesMut::from(&whole[..cut]);
            let mut got = Vec::new();
            while let Some(v) = decode(&mut buf, 1 << 20).expect("valid prefix") {
                got.push(v);
            }
            buf.extend_from_slice(&whole[cut..]);
            while let Some(v) = decode(&mut buf, 1 << 20).expect("valid") {
                got.push(v);
            }
            assert_eq!(got, expected, "cut at {cut}");
        }
    }

    #[test]
    fn malformed_and_oversized_input_is_refused_not_waited_for() {
        for bad in [&b"?x\r\n"[..], b"$abc\r\n", b":1\n", b"$3\r\nabcXY", b"*-2\r\n"] {
            assert!(decode(&mut BytesMut::from(bad), 100).is_err(), "{bad:?}");
        }
        assert_eq!(decode(&mut BytesMut::from(&b"$101\r\n"[..]), 100), Err(RespError::TooLarge));
        let deep = b"*1\r\n".repeat(20);
        assert_eq!(decode(&mut BytesMut::from(&deep[..]), 100), Err(RespError::TooLarge));
    }

    #[test]
    fn commands_are_arrays_of_bulk_strings_and_pipeline_into_one_buffer() {
        let mut out = BytesMut::new();
        command(&mut out, &[&[b"PUBLISH"], &[b"herald:", b"t"], &[b"\x00hi"]]);
        command_args(&mut out, &[b"PING"]);
        assert_eq!(&out[..], b"*3\r\n$7\r\nPUBLISH\r\n$8\r\nherald:t\r\n$3\r\n\x00hi\r\n*1\r\n$4\r\nPING\r\n");
        let back = all(&out);
        assert_eq!(back.len(), 2, "a command is itself valid RESP");
    }

    #[test]
    fn the_fast_paths_take_integers_and_message_pushes_and_leave_the_rest_to_decode() {
        let mut buf = BytesMut::from(&b":1\r\n:-20\r\n+OK\r\n:3"[..]);
        assert_eq!(take_integer(&mut buf), Ok(Some(1)));
        assert_eq!(take_integer(&mut buf), Ok(Some(-20)));
        assert_eq!(take_integer(&mut buf), Ok(None), "not an integer");
        assert_eq!(decode(&mut buf, 100), Ok(Some(Value::Simple(Bytes::from_static(b"OK")))));
        assert_eq!(take_integer(&mut buf), Ok(None), "incomplete");
        assert!(take_integer(&mut BytesMut::from(&b":1x\r\n"[..])).is_err());
        assert!(take_integer(&mut BytesMut::from(&b":99999999999999999999\r\n"[..])).is_err(), "overflow");

        let mut channel = Vec::new();
        let push =
            b"*3\r\n$7\r\nmessage\r\n$2\r\nch\r\n$4\r\n\x00\r\n\xff\r\n*3\r\n$9\r\nsubscribe\r\n$1\r\nx\r\n:1\r\n";
        let mut buf = BytesMut::from(&push[..]);
        let payload = take_message(&mut buf, b"message", 100, &mut channel).expect("valid");
        assert_eq!((payload, &channel[..]), (Some(Bytes::from_static(b"\x00\r\n\xff")), &b"ch"[..]));
        assert_eq!(take_message(&mut buf, b"message", 100, &mut channel), Ok(None), "another push");
        assert!(matches!(decode(&mut buf, 100), Ok(Some(Value::Array(_)))));
        assert!(buf.is_empty());
        assert_eq!(take_message(&mut BytesMut::from(&push[..30]), b"message", 100, &mut channel), Ok(None));
        assert_eq!(take_message(&mut BytesMut::from(&push[..]), b"message", 3, &mut channel), Ok(None), "too large");
    }

    proptest::proptest! {
        /// A message push split anywhere is taken whole or not at all, and taken it is what decode reads.
        #[test]
        fn take_message_agrees_with_decode(channel in proptest::collection::vec(proptest::num::u8::ANY, 0..20), payload in proptest::collection::vec(proptest::num::u8::ANY, 0..60), cut in 0usize..120) {
            let mut whole = BytesMut::new();
            command_args(&mut whole, &[b"smessage", &channel, &payload]);
            let cut = cut.min(whole.len());
            let mut part = BytesMut::from(&whole[..cut]);
            let mut got = Vec::new();
            let taken = take_message(&mut part, b"smessage", 1 << 20, &mut got).expect("valid prefix");
            if cut == whole.len() {
                proptest::prop_assert_eq!(taken, Some(Bytes::copy_from_slice(&payload)));
                proptest::prop_assert_eq!(&got, &channel);
                proptest::prop_assert!(part.is_empty());
            } else {
                proptest::prop_assert_eq!(taken, None);
                proptest::prop_assert_eq!(part.len(), cut, "nothing consumed");
            }
        }
    }

    proptest::proptest! {
        /// Any command encodes to RESP that decodes back to the same arguments.
        #[test]
        fn encoded_commands_decode_to_their_arguments(args in proptest::collection::vec(proptest::collection::vec(proptest::num::u8::ANY, 0..40), 1..6)) {
            let mut out = BytesMut::new();
            let refs: Vec<&[u8]> = args.iter().map(|a| a.as_slice()).collect();
            command_args(&mut out, &refs);
            let v = decode(&mut out, 1 << 20).expect("valid").expect("complete");
            let expected = Value::Array(args.iter().map(|a| Value::Bulk(Bytes::copy_from_slice(a))).collect());
            proptest::prop_assert_eq!(v, expected);
        }
    }
}
