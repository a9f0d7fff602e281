//! permessage-deflate (RFC 7692): the negotiation of `Sec-WebSocket-Extensions`, the message compressor and the
//! message inflater. No sockets, no clock: bytes in, bytes out.
//!
//! herald always answers `server_no_context_takeover` (section 7.1.1.1 lets a server add it unasked), so a
//! compressed message depends on nothing sent before it and one compressed frame serves every subscriber of a
//! broadcast. It always asks `client_no_context_takeover` (7.1.1.2 lets a server include it in any response),
//! so one inflater per worker, reset per message, serves every client. The window of the server's compressor
//! is the configured one, lowered to what the client asks with `server_max_window_bits`; 8 bits is declined,
//! since zlib makes 9-bit windows at the least (an offer declined this way leaves the next offer, or none).
//!
//! Invariants: no input panics; inflating never produces more than the caller's limit plus one chunk before
//! it stops with [`InflateError::TooLarge`], however small the compressed input (a deflate bomb costs the
//! limit, not its expansion).

use flate2::{Compress, Compression, Decompress, FlushCompress, FlushDecompress, Status};

use super::frame::{self, OpCode};

/// The extension token (RFC 7692 section 5).
pub const EXTENSION: &str = "permessage-deflate";

/// The 4 octets a sync flush ends with, stripped from each compressed message and appended before inflating
/// (RFC 7692 sections 7.2.1 and 7.2.2).
const TAIL: [u8; 4] = [0x00, 0x00, 0xff, 0xff];

/// The smallest window zlib's deflate makes (it turns 8 into 9, which a client limited to 8 cannot read).
pub const MIN_WINDOW_BITS: u8 = 9;
/// The largest window (32 KiB).
pub const MAX_WINDOW_BITS: u8 = 15;

/// What the server settles with one client.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Agreement {
    /// The window of the compressor for this client's messages: 9 to 15.
    pub server_window_bits: u8,
}

/// Picks the first acceptable permessage-deflate offer among the `Sec-WebSocket-Extensions` header values
/// (several headers, several offers per header, in the client's order of preference) and returns the
/// agreement and the response's extension value. `window_bits` is the most the server compresses with (9 to
/// 15). An offer is declined when a parameter is unknown, repeated, or has an invalid value (section 7: "the
/// server MUST decline an extension negotiation offer" then), or when it limits the server's window to 8 bits;
/// `None` when every offer is declined (the connection then goes uncompressed).
pub fn negotiate<'a>(values: impl IntoIterator<Item = &'a str>, window_bits: u8) -> Option<(Agreement, String)> {
    let ours = window_bits.clamp(MIN_WINDOW_BITS, MAX_WINDOW_BITS);
    for value in values {
        for offer in split_outside_quotes(value, b',') {
            let mut parts = split_outside_quotes(offer, b';').map(str::trim);
            if !parts.next().is_some_and(|name| name.eq_ignore_ascii_case(EXTENSION)) {
                continue;
            }
            if let Some(answer) = accept_offer(parts, ours) {
                return Some(answer);
            }
        }
    }
    None
}

/// The parameters of one offer (after its name), judged; `None` declines it.
fn accept_offer<'a>(params: impl Iterator<Item = &'a str>, ours: u8) -> Option<(Agreement, String)> {
    let (mut server_nct, mut client_nct, mut server_bits, mut client_bits) = (false, false, None, None);
    for param in params {
        let (name, value) = match param.split_once('=') {
            Some((n, v)) => (n.trim(), Some(unquote(v.trim())?)),
            None => (param.trim(), None),
        };
        // Section 7: "the server MUST decline an extension negotiation offer ... [that] includes an extension
        // parameter not defined for use in an offer, ... an extension parameter with an invalid value, ... multiple
        // extension parameters with the same name".
        let seen = match name.to_ascii_lowercase().as_str() {
            // 7.1.1.1 and 7.1.1.2: these "have no value".
            "server_no_context_takeover" if value.is_none() => std::mem::replace(&mut server_nct, true),
            "client_no_context_takeover" if value.is_none() => std::mem::replace(&mut client_nct, true),
            // 7.1.2.1: the offer's value is required, "a decimal integer value without leading zeros between 8 to
            // 15, inclusive".
            "server_max_window_bits" => server_bits.replace(window_value(value?)?).is_some(),
            // 7.1.2.2: "This parameter may have no value"; a value, if any, as above.
            "client_max_window_bits" => {
                let bits = match value {
                    Some(v) => Some(window_value(v)?),
                    None => None,
                };
                client_bits.replace(bits).is_some()
            }
            _ => return None,
        };
        if seen {
            return None;
        }
    }
    let server_window_bits = match server_bits {
        // zlib cannot keep to an 8-bit window: decline rather than send what the client cannot read.
        Some(8) => return None,
        Some(asked) => asked.min(ours),
        None => ours,
    };
    let mut answer = format!("{EXTENSION}; server_no_context_takeover; client_no_context_takeover");
    if server_bits.is_some() {
        // 7.1.2.1: a response to an offer with server_max_window_bits MUST carry it, at most the offered value.
        answer.push_str(&format!("; server_max_window_bits={server_window_bits}"));
    }
    // client_max_window_bits is not answered: the inflater reads any window, and with client_no_context_takeover
    // the client's window costs the server nothing. (7.1.2.2: without it in the offer it MUST NOT be answered.)
    Some((Agreement { server_window_bits }, answer))
}

/// A window-bits value: 8 to 15 without leading zeros.
fn window_value(v: &str) -> Option<u8> {
    match v.as_bytes() {
        [b @ b'8'..=b'9'] => Some(b - b'0'),
        [b'1', b @ b'0'..=b'5'] => Some(10 + b - b'0'),
        _ => None,
    }
}

/// A parameter value as a token, or a quoted string whose content must then be a token (RFC 6455 section 9.1);
/// `None` when it is neither.
fn unquote(v: &str) -> Option<&str> {
    let inner = match v.strip_prefix('"') {
        Some(rest) => rest.strip_suffix('"')?,
        None => v,
    };
    (!inner.is_empty() && inner.bytes().all(is_tchar)).then_some(inner)
}

/// RFC 7230 `tchar`.
fn is_tchar(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b)
}

/// Splits on `sep` where it is not inside a quoted string.
fn split_outside_quotes(s: &str, sep: u8) -> impl Iterator<Item = &str> {
    let mut start = 0;
    let mut quoted = false;
    let mut escaped = false;
    let mut cuts = Vec::new();
    for (i, &b) in s.as_bytes().iter().enumerate() {
        match b {
            _ if escaped => escaped = false,
            b'\\' if quoted => escaped = true,
            b'"' => quoted = !quoted,
            _ if b == sep && !quoted => {
                cuts.push(&s[start..i]);
                start = i + 1;
            }
            _ => {}
        }
    }
    cuts.push(&s[start..]);
    cuts.into_iter()
}

/// An error while inflating a message.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum InflateError {
    /// The inflated message is larger than the limit (close 1009).
    #[error("inflated message exceeds the limit of {max} bytes")]
    TooLarge {
        /// The limit.
        max: u64,
    },
    /// The compressed data is not valid DEFLATE (close 1007).
    #[error("invalid compressed data")]
    Invalid,
}

/// Inflates messages compressed without context takeover: one per worker serves every client, since it is
/// reset before each message. Holds about 40 KiB (zlib's state and a 32 KiB window).
pub struct Inflater {
    raw: Decompress,
}

impl std::fmt::Debug for Inflater {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Inflater").finish_non_exhaustive()
    }
}

impl Default for Inflater {
    fn default() -> Self {
        Self::new()
    }
}

/// Output grows by at most this much per step, so a bomb overshoots the limit by no more.
const INFLATE_STEP: usize = 64 * 1024;

impl Inflater {
    /// An inflater with a 15-bit window (it reads any smaller window too).
    pub fn new() -> Self {
        Inflater { raw: Decompress::new_with_window_bits(false, MAX_WINDOW_BITS) }
    }

    /// Inflates one message's payload (its frames' payloads joined, without the stripped tail). More than
    /// `max` bytes of output stops it with [`InflateError::TooLarge`] after at most `max` plus one step of
    /// output.
    pub fn inflate(&mut self, compressed: &[u8], max: u64) -> Result<Vec<u8>, InflateError> {
        self.raw.reset(false);
        let limit = usize::try_from(max).unwrap_or(usize::MAX);
        let mut out = Vec::with_capacity(compressed.len().saturating_mul(3).clamp(256, INFLATE_STEP).min(limit.max(1)));
        for input in [compressed, &TAIL[..]] {
            let mut used = 0;
            loop {
                if out.len() == out.capacity() {
                    if out.len() > limit {
                        return Err(InflateError::TooLarge { max });
                    }
                    // Room for one byte past the limit, so that going over it shows.
                    let room = out.len().clamp(256, INFLATE_STEP).min(limit.saturating_sub(out.len()) + 1);
                    out.reserve_exact(room);
                }
                let (before_in, before_out) = (self.raw.total_in(), out.len());
                let status = self
                    .raw
                    .decompress_vec(&input[used..], &mut out, FlushDecompress::Sync)
                    .map_err(|_| InflateError::Invalid)?;
                used += (self.raw.total_in() - before_in) as usize;
                if out.len() > limit {
                    return Err(InflateError::TooLarge { max });
                }
                let done = used == input.len() && out.len() < out.capacity();
                let stuck = self.raw.total_in() == before_in && out.len() == before_out && out.len() < out.capacity();
                if done || stuck || status == Status::StreamEnd {
                    break;
                }
            }
        }
        Ok(out)
    }
}

/// Compresses messages without context takeover, with one window size and level: reset before each message,
/// so its output depends on that message alone and is the same for every client with that window.
pub struct Compressor {
    raw: Compress,
}

impl std::fmt::Debug for Compressor {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Compressor").finish_non_exhaustive()
    }
}

impl Compressor {
    /// A compressor at `level` (0 to 9) with a window of `window_bits` (9 to 15).
    pub fn new(level: u32, window_bits: u8) -> Self {
        let bits = window_bits.clamp(MIN_WINDOW_BITS, MAX_WINDOW_BITS);
        Compressor { raw: Compress::new_with_window_bits(Compression::new(level.min(9)), false, bits) }
    }

    /// Appends `payload` compressed as one permessage-deflate message (sync flush, tail stripped) to `out`.
    pub fn compress(&mut self, payload: &[u8], out: &mut Vec<u8>) {
        self.raw.reset();
        let start = out.len();
        out.reserve(payload.len() / 2 + 64);
        let mut used = 0;
        loop {
            if out.len() == out.capacity() {
                out.reserve(out.capacity().max(64));
            }
            let before = self.raw.total_in();
            // Compression of valid input into a Vec with room cannot fail; a failure would only ever mean a bug,
            // and leaves whatever was written (the caller then sends the message plain, being no smaller).
            if self.raw.compress_vec(&payload[used..], out, FlushCompress::Sync).is_err() {
                out.truncate(start);
                out.extend_from_slice(payload);
                return;
            }
            used += (self.raw.total_in() - before) as usize;
            // Done once all input is taken and the flush fitted (room was left over).
            if used == payload.len() && out.len() < out.capacity() && out[start..].ends_with(&TAIL) {
                break;
            }
        }
        out.truncate(out.len() - TAIL.len());
    }
}

/// What compressing a batch did, for the metrics.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct BatchStats {
    /// Messages sent compressed.
    pub compressed: u64,
    /// Messages sent plain (under `min_size`, or no smaller compressed).
    pub plain: u64,
    /// Payload bytes of the compressed messages before compression.
    pub bytes_before: u64,
    /// Their payload bytes after compression.
    pub bytes_after: u64,
}

/// Writes one server frame (unmasked, FIN) for `payload` into `out`: compressed with RSV1 set when the payload
/// has at least `min_size` bytes and compressing makes the frame smaller, plain otherwise.
pub fn write_message(
    out: &mut Vec<u8>,
    opcode: OpCode,
    payload: &[u8],
    compressor: &mut Compressor,
    min_size: usize,
    stats: &mut BatchStats,
) {
    if payload.len() >= min_size {
        let start = out.len();
        let mut body = Vec::new();
        compressor.compress(payload, &mut body);
        if body.len() < payload.len() {
            frame::write_header(out, true, opcode, body.len(), None);
            // RFC 7692 section 6: the "Per-Message Compressed" bit is RSV1 of the first frame.
            out[start] |= 0x40;
            out.extend_from_slice(&body);
            stats.compressed += 1;
            stats.bytes_before += payload.len() as u64;
            stats.bytes_after += body.len() as u64;
            return;
        }
    }
    frame::write_frame(out, opcode, payload);
    stats.plain += 1;
}

/// The compressed form of a batch of server frames (unmasked, FIN set, as the broker frames them): each data
/// message compressed on its own by [`write_message`], anything else copied. Frames that cannot be parsed (not
/// ours) are copied as they are.
pub fn compress_batch(frames: &[u8], compressor: &mut Compressor, min_size: usize, stats: &mut BatchStats) -> Vec<u8> {
    let mut out = Vec::with_capacity(frames.len());
    let mut rest = frames;
    while let Some((opcode, header, len)) = parse_server_frame(rest) {
        let payload = &rest[header..header + len];
        match opcode {
            Some(op @ (OpCode::Text | OpCode::Binary)) if rest[0] & 0xF0 == 0x80 => {
                write_message(&mut out, op, payload, compressor, min_size, stats)
            }
            _ => out.extend_from_slice(&rest[..header + len]),
        }
        rest = &rest[header + len..];
    }
    out.extend_from_slice(rest);
    out
}

/// The opcode, header length and payload length of the unmasked frame at the front of `buf`, if it is whole.
fn parse_server_frame(buf: &[u8]) -> Option<(Option<OpCode>, usize, usize)> {
    let (&first, &second) = (buf.first()?, buf.get(1)?);
    if second & 0x80 != 0 {
        return None;
    }
    let (len, header): (usize, usize) = match second & 0x7F {
        126 => (usize::from(u16::from_be_bytes([*buf.get(2)?, *buf.get(3)?])), 4),
        127 => (usize::try_from(u64::from_be_bytes(buf.get(2..10)?.try_into().ok()?)).ok()?, 10),
        short => (usize::from(short), 2),
    };
    (buf.len() >= header.checked_add(len)?).then_some((OpCode::from_u8(first & 0x0F), header, len))
}

#[cfg(test)]
mod tests;
