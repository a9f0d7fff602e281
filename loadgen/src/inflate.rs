//! permessage-deflate (RFC 7692) on loadgen's side (`--compress`): the offer a connection makes, the check of
//! the server's answer, and the inflating of compressed messages.
//!
//! loadgen offers what browsers offer (`permessage-deflate; client_max_window_bits`) and sends uncompressed
//! (a client may always do so). A server that answers with `server_no_context_takeover` compresses every
//! message on its own, so one inflater per worker, reset before each message, serves all its connections; a
//! server that keeps its context gets an inflater per connection, never reset. Every message is inflated
//! whole, as a browser would (its CPU shows in loadgen's), into a scratch buffer on the stack: only its first
//! bytes (the payload header) are kept, and its length counted.

use flate2::{Decompress, FlushDecompress, Status};

/// The `Sec-WebSocket-Extensions` value loadgen offers: a browser's.
pub const OFFER: &str = "permessage-deflate; client_max_window_bits";

/// RFC 7692 section 7.2.2: the sender strips these four bytes from each message; the receiver appends them.
const TAIL: [u8; 4] = [0x00, 0x00, 0xFF, 0xFF];

/// The inflater's window: 15 bits reads anything a server may send with a smaller window.
const WINDOW_BITS: u8 = 15;

/// What the server agreed to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Agreement {
    /// The server compresses each message on its own (`server_no_context_takeover`).
    pub no_context_takeover: bool,
}

/// An extension answer the client must fail the connection over (RFC 7692 section 5).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ExtensionError {
    /// An extension loadgen did not offer.
    #[error("the server answered with extension {0:?}, which was not offered")]
    NotOffered(String),
    /// A parameter that is unknown, repeated, or has an invalid value.
    #[error("invalid permessage-deflate parameter {0:?} in the server's answer")]
    BadParameter(String),
    /// permessage-deflate accepted more than once.
    #[error("permessage-deflate answered more than once")]
    Repeated,
}

/// Reads the server's `Sec-WebSocket-Extensions` values: `Ok(None)` when it did not accept permessage-deflate
/// (loadgen then runs uncompressed), `Err` for an answer the client must fail the connection over.
pub fn agreement<'a>(
    values: impl IntoIterator<Item = &'a str>,
    offered: bool,
) -> Result<Option<Agreement>, ExtensionError> {
    let mut agreed = None;
    for extension in values.into_iter().flat_map(|v| v.split(',')) {
        let mut parts = extension.split(';').map(str::trim);
        let name = parts.next().unwrap_or("");
        if name.is_empty() {
            continue;
        }
        if !offered || !name.eq_ignore_ascii_case("permessage-deflate") {
            return Err(ExtensionError::NotOffered(name.to_owned()));
        }
        if agreed.is_some() {
            return Err(ExtensionError::Repeated);
        }
        let mut a = Agreement { no_context_takeover: false };
        let mut seen: Vec<String> = Vec::new();
        for param in parts.filter(|p| !p.is_empty()) {
            let (key, value) = match param.split_once('=') {
                Some((k, v)) => (k.trim().to_ascii_lowercase(), Some(v.trim().trim_matches('"'))),
                None => (param.to_ascii_lowercase(), None),
            };
            let bad = || ExtensionError::BadParameter(param.to_owned());
            if seen.contains(&key) {
                return Err(bad());
            }
            match (key.as_str(), value) {
                ("server_no_context_takeover", None) => a.no_context_takeover = true,
                ("client_no_context_takeover", None) => {}
                ("server_max_window_bits" | "client_max_window_bits", Some(v)) => {
                    if !matches!(v.parse::<u8>(), Ok(8..=15)) {
                        return Err(bad());
                    }
                }
                _ => return Err(bad()),
            }
            seen.push(key);
        }
        agreed = Some(a);
    }
    Ok(agreed)
}

/// The compressed data of a message was not valid DEFLATE.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid compressed data")]
pub struct InflateError;

/// Inflates whole messages, keeping their first bytes. About 40 KiB (zlib-rs state and a 32 KiB window).
pub struct MessageInflater {
    raw: Decompress,
}

impl std::fmt::Debug for MessageInflater {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MessageInflater").finish_non_exhaustive()
    }
}

impl Default for MessageInflater {
    fn default() -> Self {
        MessageInflater { raw: Decompress::new_with_window_bits(false, WINDOW_BITS) }
    }
}

impl MessageInflater {
    /// Inflates one message's payload (its frames' payloads joined), after a reset when `reset` (no context
    /// takeover). Copies the first inflated bytes into `head`; returns the inflated length and the bytes copied.
    pub fn inflate(&mut self, compressed: &[u8], reset: bool, head: &mut [u8]) -> Result<(u64, usize), InflateError> {
        if reset {
            self.raw.reset(false);
        }
        let mut scratch = [0u8; 16 * 1024];
        let (mut total, mut kept) = (0u64, 0usize);
        for input in [compressed, &TAIL[..]] {
            let mut used = 0usize;
            loop {
                let (before_in, before_out) = (self.raw.total_in(), self.raw.total_out());
                let status = self
                    .raw
                    .decompress(&input[used..], &mut scratch, FlushDecompress::Sync)
                    .map_err(|_| InflateError)?;
                let consumed = (self.raw.total_in() - before_in) as usize;
                let produced = (self.raw.total_out() - before_out) as usize;
                used += consumed;
                let take = produced.min(head.len() - kept);
                head[kept..kept + take].copy_from_slice(&scratch[..take]);
                kept += take;
                total += produced as u64;
                let done = used == input.len() && produced < scratch.len();
                if done || (consumed == 0 && produced == 0) || status == Status::StreamEnd {
                    break;
                }
            }
        }
        Ok((total, kept))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use flate2::{Compress, Compression, FlushCompress};

    /// A message compressed as a server without context takeover sends it: raw DEFLATE, sync-flushed, tail cut.
    fn deflate(c: &mut Compress, payload: &[u8], reset: bool) -> Vec<u8> {
        if reset {
            c.reset();
        }
        let mut out = Vec::with_capacity(payload.len() + 64);
        c.compress_vec(payload, &mut out, FlushCompress::Sync).expect("compress");
        assert!(out.ends_with(&TAIL));
        out.truncate(out.len() - 4);
        out
    }

    fn message(n: usize, seed: u8) -> Vec<u8> {
        let json = b"{\"id\":1,\"price\":\"10.5\"}";
        (0..n).map(|i| json[i % json.len()].wrapping_add(seed * u8::from(i % 97 == 0))).collect()
    }

    #[test]
    fn inflates_independent_messages_with_one_reset_inflater() {
        let mut c = Compress::new_with_window_bits(Compression::new(6), false, 15);
        let mut inflater = MessageInflater::default();
        for (n, seed) in [(1024, 1), (40_000, 2), (0, 3), (5, 4)] {
            let payload = message(n, seed);
            let mut head = [0u8; 20];
            let (len, kept) = inflater.inflate(&deflate(&mut c, &payload, true), true, &mut head).expect("valid");
            assert_eq!(len, n as u64);
            assert_eq!(&head[..kept], &payload[..n.min(20)]);
        }
    }

    #[test]
    fn inflates_a_context_takeover_stream_without_reset() {
        let mut c = Compress::new_with_window_bits(Compression::new(6), false, 15);
        let mut inflater = MessageInflater::default();
        for seed in 0..5 {
            let payload = message(3000, seed);
            let mut head = [0u8; 30];
            let (len, kept) = inflater.inflate(&deflate(&mut c, &payload, false), false, &mut head).expect("valid");
            assert_eq!((len, &head[..kept]), (3000, &payload[..30]));
        }
    }

    #[test]
    fn rejects_invalid_data() {
        let mut head = [0u8; 20];
        assert_eq!(MessageInflater::default().inflate(&[0xFF; 16], true, &mut head), Err(InflateError));
    }

    #[test]
    fn reads_the_servers_answer() {
        let herald =
            "permessage-deflate; server_no_context_takeover; client_no_context_takeover; client_max_window_bits=15";
        assert_eq!(agreement([herald], true), Ok(Some(Agreement { no_context_takeover: true })));
        assert_eq!(agreement(["permessage-deflate"], true), Ok(Some(Agreement { no_context_takeover: false })));
        assert_eq!(agreement([], true), Ok(None));
        assert_eq!(
            agreement(["permessage-deflate"], false),
            Err(ExtensionError::NotOffered("permessage-deflate".into()))
        );
        assert_eq!(
            agreement(["x-webkit-deflate-frame"], true),
            Err(ExtensionError::NotOffered("x-webkit-deflate-frame".into()))
        );
        assert!(matches!(
            agreement(["permessage-deflate; server_max_window_bits=7"], true),
            Err(ExtensionError::BadParameter(_))
        ));
        assert!(matches!(agreement(["permessage-deflate; mystery"], true), Err(ExtensionError::BadParameter(_))));
        assert_eq!(agreement(["permessage-deflate, permessage-deflate"], true), Err(ExtensionError::Repeated));
    }
}
