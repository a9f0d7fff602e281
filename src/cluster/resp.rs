//! A small RESP2 codec, sans-IO: bytes in, [`Value`]s out; commands out as bytes, many per buffer.
//!
//! Only what the bridge speaks: commands are arrays of bulk strings (`*N\r\n$len\r\narg\r\n...`), replies are
//! simple strings, errors, integers, bulk strings (or nil) and arrays. Decoding never copies a bulk string: a
//! complete value is split off the read buffer once and every bulk string is a slice of it.

use bytes::{Bytes, BytesMut};

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
    std::str::from_utf8(text).ok().and_then(|s| s.parse().ok()).ok_or(RespError::Malformed("bad integer"))
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
