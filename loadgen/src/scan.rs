//! The client's receive fast path: finds server frames in a read buffer in place, without copying payloads or
//! allocating per message.
//!
//! herald's [`herald::protocol::codec::Decoder`] hands back each message as `Bytes`, which costs an allocation
//! or a refcount per message; at millions of deliveries per second that is most of a core. A load generator
//! only needs each data message's first bytes (the payload header of [`crate::plan::payload`]) and its
//! length, plus whole control frames (to answer pings and closes). So this scanner walks the frames of a
//! buffer, hands each one to a callback with at most `prefix` payload bytes, skips the rest of the payload
//! (also across reads), and keeps an incomplete header (at most [`CARRY_MAX`] bytes) for the next read.
//!
//! With permessage-deflate negotiated ([`Scanner::enable_deflate`]), a compressed message (RSV1 on its first
//! frame) is not skipped: its frames' payloads are collected (across reads) and handed back whole, once, as
//! [`Frame::Deflated`], for the caller to inflate.
//!
//! It applies the same header checks as the `Decoder` in client role, with herald's own [`ProtocolError`]
//! variants: a masked server frame, reserved bits, unknown opcodes, a fragmented or over-long control frame,
//! a continuation without a message or a new message during one, a 64-bit length with its top bit set. It does
//! not validate UTF-8 in text messages, nor limit message sizes (loadgen only reads their first bytes). The
//! tests check it against the `Decoder` on random frame sequences split at random points.

use herald::protocol::error::ProtocolError;
use herald::protocol::frame::OpCode;

/// The largest incomplete frame start kept between reads: a full header and a whole control payload.
pub const CARRY_MAX: usize = 14 + 125;

/// The most buffer capacity a connection keeps for collecting compressed messages between them.
const DEFLATED_KEEP: usize = 64 * 1024;

/// RFC 6455 section 5.5: "All control frames MUST have a payload length of 125 bytes or less".
const MAX_CONTROL_PAYLOAD: u64 = 125;

/// One frame, as the scanner hands it to the callback.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Frame<'a> {
    /// A data frame. `opcode` is Text or Binary for the first frame of a message, Continuation after.
    /// `prefix` holds the first `min(len, prefix)` payload bytes.
    Data {
        /// The frame's opcode.
        opcode: OpCode,
        /// FIN bit: the last frame of its message.
        fin: bool,
        /// Payload length of this frame.
        len: u64,
        /// The start of the payload.
        prefix: &'a [u8],
    },
    /// A ping with its whole payload.
    Ping(&'a [u8]),
    /// A pong with its whole payload.
    Pong(&'a [u8]),
    /// A close frame with its whole payload (code and reason, unvalidated).
    Close(&'a [u8]),
    /// A whole compressed message (permessage-deflate): its frames' payloads joined, still compressed.
    Deflated {
        /// Text or Binary: the opcode of its first frame.
        opcode: OpCode,
        /// The compressed bytes, without the `00 00 ff ff` tail the sender stripped.
        payload: &'a [u8],
    },
}

/// Scanning state of one connection between reads.
#[derive(Debug, Clone)]
pub struct Scanner {
    /// Payload bytes of data frames hand back at most this many bytes.
    prefix: usize,
    /// Payload bytes of the current frame still to skip.
    skip: u64,
    /// A fragmented message is in progress (a data frame without FIN was seen).
    in_message: bool,
    /// The incomplete start of the next frame, moved to the front of the next read.
    carry: [u8; CARRY_MAX],
    carry_len: u8,
    /// permessage-deflate was negotiated: RSV1 marks a compressed message.
    deflate: bool,
    /// The message in progress is compressed: its payload bytes go to `deflated`.
    compressed: bool,
    /// The current frame's payload (what `skip` counts down) is being collected into `deflated`.
    collecting: bool,
    /// The frame being collected is the message's last.
    collect_fin: bool,
    /// The opcode of the compressed message in progress.
    deflated_opcode: OpCode,
    /// The compressed message collected so far.
    deflated: Vec<u8>,
}

impl Scanner {
    /// A scanner handing back up to `prefix` payload bytes of each data frame (at most 125).
    pub fn new(prefix: usize) -> Scanner {
        Scanner {
            prefix: prefix.min(125),
            skip: 0,
            in_message: false,
            carry: [0; CARRY_MAX],
            carry_len: 0,
            deflate: false,
            compressed: false,
            collecting: false,
            collect_fin: false,
            deflated_opcode: OpCode::Binary,
            deflated: Vec::new(),
        }
    }

    /// permessage-deflate was negotiated: messages with RSV1 set are handed back whole as [`Frame::Deflated`].
    pub fn enable_deflate(&mut self) {
        self.deflate = true;
    }

    /// The most payload bytes a data frame hands back.
    pub fn prefix(&self) -> usize {
        self.prefix
    }

    /// Bytes kept from the previous read; the caller puts them at the front of the next buffer it scans.
    pub fn carry(&self) -> &[u8] {
        &self.carry[..usize::from(self.carry_len)]
    }

    /// Scans `buf`, which must start with [`Scanner::carry`] followed by the new bytes. Calls `on_frame`
    /// for every frame whose header (and prefix, or whole control payload) is complete, and keeps the
    /// incomplete rest for next time. Returns the number of frames seen. An error is fatal for the
    /// connection (the frames before it were handed back).
    #[inline]
    pub fn scan<F: FnMut(Frame<'_>)>(&mut self, buf: &[u8], mut on_frame: F) -> Result<usize, ProtocolError> {
        let mut pos = 0usize;
        let mut frames = 0usize;
        let end = buf.len();
        loop {
            if self.skip > 0 {
                let take = ((end - pos) as u64).min(self.skip) as usize;
                if self.collecting {
                    self.deflated.extend_from_slice(&buf[pos..pos + take]);
                }
                pos += take;
                self.skip -= take as u64;
                if self.skip > 0 {
                    break;
                }
            }
            if self.collecting {
                self.collecting = false;
                if self.collect_fin {
                    self.compressed = false;
                    on_frame(Frame::Deflated { opcode: self.deflated_opcode, payload: &self.deflated });
                    frames += 1;
                    self.deflated.clear();
                    if self.deflated.capacity() > DEFLATED_KEEP {
                        // One large message must not pin its size on an idle connection.
                        self.deflated = Vec::new();
                    }
                }
            }
            let rest = &buf[pos..];
            if rest.len() < 2 {
                break;
            }
            // Fast path: a whole short unfragmented text or binary frame, the common case of a broadcast.
            let (b0, b1) = (rest[0], rest[1]);
            if (b0 == 0x82 || b0 == 0x81) && b1 < 126 && !self.in_message && rest.len() >= 2 + usize::from(b1) {
                let len = usize::from(b1);
                let opcode = if b0 == 0x82 { OpCode::Binary } else { OpCode::Text };
                on_frame(Frame::Data {
                    opcode,
                    fin: true,
                    len: len as u64,
                    prefix: &rest[2..2 + len.min(self.prefix)],
                });
                frames += 1;
                pos += 2 + len;
                continue;
            }
            let rsv = (b0 >> 4) & 0x7;
            let opcode = OpCode::from_u8(b0 & 0x0F);
            // RFC 7692 section 6: RSV1 marks a compressed message, on its first frame only.
            let rsv1 = self.deflate && rsv == 4 && matches!(opcode, Some(OpCode::Text | OpCode::Binary));
            if rsv != 0 && !rsv1 {
                return Err(ProtocolError::ReservedBits(rsv));
            }
            let opcode = opcode.ok_or(ProtocolError::UnknownOpcode(b0 & 0x0F))?;
            let fin = b0 & 0x80 != 0;
            let control = opcode.is_control();
            if control && !fin {
                return Err(ProtocolError::FragmentedControl);
            }
            match (opcode, self.in_message) {
                (OpCode::Continuation, false) => return Err(ProtocolError::UnexpectedContinuation),
                (OpCode::Text | OpCode::Binary, true) => return Err(ProtocolError::ExpectedContinuation),
                _ => {}
            }
            // RFC 6455 section 5.1: "A client MUST close a connection if it detects a masked frame."
            if b1 & 0x80 != 0 {
                return Err(ProtocolError::MaskedServerFrame);
            }
            let (len, header) = match b1 & 0x7F {
                126 => match rest.get(2..4) {
                    Some(&[a, b]) => (u64::from(u16::from_be_bytes([a, b])), 4),
                    _ => break,
                },
                127 => match rest.get(2..10).and_then(|b| <[u8; 8]>::try_from(b).ok()) {
                    Some(bytes) => (u64::from_be_bytes(bytes), 10),
                    None => break,
                },
                short => (u64::from(short), 2),
            };
            if control && len > MAX_CONTROL_PAYLOAD {
                return Err(ProtocolError::ControlTooLong(len));
            }
            if len >> 63 != 0 {
                return Err(ProtocolError::InvalidLength);
            }
            if opcode != OpCode::Continuation && !control {
                self.compressed = rsv1;
                self.deflated_opcode = opcode;
            }
            if self.compressed && !control {
                if rest.len() < header {
                    break;
                }
                // Collected by the skip step at the top of the loop, handed back once the message is whole.
                self.in_message = !fin;
                self.collecting = true;
                self.collect_fin = fin;
                self.skip = len;
                pos += header;
                continue;
            }
            // Control frames are handed back whole; data frames with their prefix.
            let want = if control { len as usize } else { len.min(self.prefix as u64) as usize };
            if rest.len() < header + want {
                break;
            }
            let body = &rest[header..header + want];
            on_frame(match opcode {
                OpCode::Ping => Frame::Ping(body),
                OpCode::Pong => Frame::Pong(body),
                OpCode::Close => Frame::Close(body),
                _ => Frame::Data { opcode, fin, len, prefix: body },
            });
            frames += 1;
            if !control {
                self.in_message = !fin;
            }
            let avail = (rest.len() - header) as u64;
            let taken = len.min(avail);
            pos += header + taken as usize;
            self.skip = len - taken;
        }
        let tail = &buf[pos..];
        debug_assert!(tail.len() <= CARRY_MAX, "bug: incomplete frame start longer than a header and control payload");
        let keep = tail.len().min(CARRY_MAX);
        self.carry[..keep].copy_from_slice(&tail[..keep]);
        self.carry_len = keep as u8;
        Ok(frames)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use bytes::BytesMut;
    use herald::protocol::codec::{DecodeLimits, Decoder, Incoming};
    use herald::protocol::frame::{write_frame, write_header};
    use herald::protocol::Role;

    /// What both decoders agree on: each data message's opcode, length and first bytes; control payloads.
    #[derive(Debug, PartialEq, Eq)]
    enum Seen {
        Message { text: bool, len: u64, prefix: Vec<u8> },
        Ping(Vec<u8>),
        Pong(Vec<u8>),
        Close(Vec<u8>),
    }

    /// Feeds `stream` to a scanner in the given chunk sizes, reassembling messages from their frames.
    fn scan_all(stream: &[u8], chunks: &[usize], prefix: usize) -> Result<Vec<Seen>, ProtocolError> {
        let mut scanner = Scanner::new(prefix);
        let mut out = Vec::new();
        let mut current: Option<(bool, u64, Vec<u8>)> = None;
        let mut at = 0;
        let mut sizes = chunks.iter().cycle();
        while at < stream.len() {
            let n = (*sizes.next().expect("chunk sizes")).clamp(1, stream.len() - at);
            let mut buf = scanner.carry().to_vec();
            buf.extend_from_slice(&stream[at..at + n]);
            at += n;
            scanner.scan(&buf, |f| match f {
                Frame::Data { opcode, fin, len, prefix: p } => {
                    // A message's first bytes may be spread over its first fragments.
                    let entry = current.get_or_insert((opcode == OpCode::Text, 0, Vec::new()));
                    entry.1 += len;
                    let room = prefix.saturating_sub(entry.2.len());
                    entry.2.extend_from_slice(&p[..p.len().min(room)]);
                    if fin {
                        let (text, len, prefix) = current.take().expect("message");
                        out.push(Seen::Message { text, len, prefix });
                    }
                }
                Frame::Ping(p) => out.push(Seen::Ping(p.to_vec())),
                Frame::Pong(p) => out.push(Seen::Pong(p.to_vec())),
                Frame::Close(p) => out.push(Seen::Close(p.to_vec())),
                Frame::Deflated { .. } => panic!("a compressed message without permessage-deflate negotiated"),
            })?;
        }
        Ok(out)
    }

    fn decode_all(stream: &[u8], prefix: usize) -> Result<Vec<Seen>, ProtocolError> {
        let limits = DecodeLimits { max_frame_size: u64::MAX >> 1, max_message_size: u64::MAX >> 1 };
        let mut decoder = Decoder::new(Role::Client, limits);
        let mut input = BytesMut::from(stream);
        let mut out = Vec::new();
        while let Some(msg) = decoder.decode(&mut input)? {
            let first = |b: &[u8]| b[..b.len().min(prefix)].to_vec();
            out.push(match msg {
                Incoming::Text(b) => Seen::Message { text: true, len: b.len() as u64, prefix: first(&b) },
                Incoming::Binary(b) => Seen::Message { text: false, len: b.len() as u64, prefix: first(&b) },
                // Never here: this decoder is not told that permessage-deflate was negotiated.
                Incoming::Deflated { text, payload } => {
                    Seen::Message { text, len: payload.len() as u64, prefix: first(&payload) }
                }
                Incoming::Ping(b) => Seen::Ping(b.to_vec()),
                Incoming::Pong(b) => Seen::Pong(b.to_vec()),
                Incoming::Close(c) => {
                    let mut v = Vec::new();
                    if let Some(c) = c {
                        v.extend_from_slice(&c.code.0.to_be_bytes());
                        v.extend_from_slice(c.reason.as_bytes());
                    }
                    Seen::Close(v)
                }
            });
        }
        Ok(out)
    }

    /// A small deterministic generator (xorshift), so the random cases need no extra crate.
    struct Rng(u64);
    impl Rng {
        fn next(&mut self) -> u64 {
            self.0 ^= self.0 << 13;
            self.0 ^= self.0 >> 7;
            self.0 ^= self.0 << 17;
            self.0
        }
        fn below(&mut self, n: u64) -> u64 {
            self.next() % n
        }
    }

    /// A random valid server stream: single-frame and fragmented messages with pings interleaved.
    fn random_stream(rng: &mut Rng) -> Vec<u8> {
        let mut out = Vec::new();
        for _ in 0..rng.below(12) + 1 {
            let len = match rng.below(4) {
                0 => rng.below(20),
                1 => rng.below(130),
                2 => 126 + rng.below(70_000),
                _ => 20 + rng.below(50),
            } as usize;
            let payload: Vec<u8> = (0..len).map(|i| ((i as u8).wrapping_mul(31) ^ 0x41) & 0x7F).collect();
            let opcode = if rng.below(2) == 0 { OpCode::Text } else { OpCode::Binary };
            let pieces = if len > 2 && rng.below(3) == 0 { 1 + rng.below(3) as usize } else { 0 };
            if pieces == 0 {
                write_frame(&mut out, opcode, &payload);
            } else {
                let cut = len / (pieces + 1);
                let mut at = 0;
                for i in 0..=pieces {
                    let end = if i == pieces { len } else { at + cut };
                    let op = if i == 0 { opcode } else { OpCode::Continuation };
                    write_header(&mut out, i == pieces, op, end - at, None);
                    out.extend_from_slice(&payload[at..end]);
                    at = end;
                    if rng.below(3) == 0 {
                        write_frame(&mut out, OpCode::Ping, b"hi");
                    }
                }
            }
        }
        write_frame(&mut out, OpCode::Close, &[0x03, 0xE8, b'o', b'k']);
        out
    }

    #[test]
    fn agrees_with_herald_decoder_on_random_streams_and_splits() {
        let mut rng = Rng(0x9E37_79B9_7F4A_7C15);
        for case in 0..300 {
            let stream = random_stream(&mut rng);
            let expected = decode_all(&stream, 20).expect("valid stream");
            let chunks: Vec<usize> = (0..5).map(|_| 1 + rng.below(300) as usize).collect();
            let got = scan_all(&stream, &chunks, 20).expect("scanner accepts a valid stream");
            assert_eq!(got, expected, "case {case}, chunks {chunks:?}");
            let whole = scan_all(&stream, &[stream.len()], 20).expect("whole");
            assert_eq!(whole, expected, "case {case} in one piece");
        }
    }

    #[test]
    fn byte_at_a_time_gives_the_same_frames() {
        let mut rng = Rng(42);
        let stream = random_stream(&mut rng);
        assert_eq!(scan_all(&stream, &[1], 20).unwrap(), decode_all(&stream, 20).unwrap());
    }

    #[test]
    fn rejects_masked_server_frame() {
        // RFC 6455 section 5.1: "A client MUST close a connection if it detects a masked frame."
        let stream = [0x82, 0x81, 1, 2, 3, 4, 5];
        assert_eq!(scan_all(&stream, &[7], 20), Err(ProtocolError::MaskedServerFrame));
    }

    #[test]
    fn rejects_what_the_decoder_rejects() {
        let cases: [(&[u8], ProtocolError); 6] = [
            (&[0xC2, 0x00], ProtocolError::ReservedBits(4)),
            (&[0x83, 0x00], ProtocolError::UnknownOpcode(3)),
            (&[0x09, 0x00], ProtocolError::FragmentedControl),
            (&[0x89, 0x7E, 0x00, 0x7E], ProtocolError::ControlTooLong(126)),
            (&[0x80, 0x00], ProtocolError::UnexpectedContinuation),
            (&[0x02, 0x00, 0x82, 0x00], ProtocolError::ExpectedContinuation),
        ];
        for (bytes, err) in cases {
            assert_eq!(scan_all(bytes, &[bytes.len()], 20), Err(err.clone()), "{bytes:x?}");
            assert_eq!(decode_all(bytes, 20), Err(err), "decoder agrees on {bytes:x?}");
        }
    }

    /// A compressed message of `pieces` frames (RSV1 on the first), with a ping between frames.
    fn compressed_message(out: &mut Vec<u8>, opcode: OpCode, body: &[u8], pieces: usize) {
        let cut = body.len() / pieces;
        for i in 0..pieces {
            let (from, to) = (i * cut, if i + 1 == pieces { body.len() } else { (i + 1) * cut });
            let start = out.len();
            write_header(out, i + 1 == pieces, if i == 0 { opcode } else { OpCode::Continuation }, to - from, None);
            if i == 0 {
                out[start] |= 0x40;
            }
            out.extend_from_slice(&body[from..to]);
            if i + 1 < pieces {
                write_frame(out, OpCode::Ping, b"p");
            }
        }
    }

    #[test]
    fn with_deflate_hands_back_each_compressed_message_whole_however_it_is_split() {
        let mut stream = Vec::new();
        let big: Vec<u8> = (0..70_000u32).map(|i| (i % 251) as u8).collect();
        compressed_message(&mut stream, OpCode::Text, &big, 3);
        write_frame(&mut stream, OpCode::Binary, b"plain message in between");
        compressed_message(&mut stream, OpCode::Binary, b"small", 1);
        compressed_message(&mut stream, OpCode::Binary, b"", 1);
        for chunk in [1, 7, 300, 4096, stream.len()] {
            let mut scanner = Scanner::new(20);
            scanner.enable_deflate();
            let mut seen = Vec::new();
            let mut at = 0;
            while at < stream.len() {
                let n = chunk.min(stream.len() - at);
                let mut buf = scanner.carry().to_vec();
                buf.extend_from_slice(&stream[at..at + n]);
                at += n;
                scanner
                    .scan(&buf, |f| match f {
                        Frame::Deflated { opcode, payload } => seen.push(format!("{opcode:?} {}", payload.len())),
                        Frame::Data { len, fin: true, .. } => seen.push(format!("plain {len}")),
                        Frame::Ping(_) => seen.push("ping".into()),
                        other => panic!("unexpected {other:?}"),
                    })
                    .expect("valid stream");
            }
            assert_eq!(seen, ["ping", "ping", "Text 70000", "plain 24", "Binary 5", "Binary 0"], "chunks of {chunk}");
        }
    }

    #[test]
    fn with_deflate_rsv1_on_a_continuation_or_control_frame_is_still_an_error() {
        for bytes in [&[0x01, 0x00, 0xC0, 0x00][..], &[0xC9, 0x00][..]] {
            let mut scanner = Scanner::new(20);
            scanner.enable_deflate();
            assert_eq!(scanner.scan(bytes, |_| {}), Err(ProtocolError::ReservedBits(4)), "{bytes:x?}");
        }
    }

    #[test]
    fn carry_never_exceeds_header_plus_control_payload() {
        let mut stream = Vec::new();
        write_frame(&mut stream, OpCode::Ping, &[7; 125]);
        let mut scanner = Scanner::new(20);
        assert_eq!(scanner.scan(&stream[..stream.len() - 1], |_| {}), Ok(0));
        assert_eq!(scanner.carry().len(), stream.len() - 1);
        let mut next = scanner.carry().to_vec();
        next.push(stream[stream.len() - 1]);
        let mut pings = 0;
        assert_eq!(scanner.scan(&next, |f| pings += usize::from(matches!(f, Frame::Ping(p) if p.len() == 125))), Ok(1));
        assert_eq!(pings, 1);
        assert!(scanner.carry().is_empty());
    }
}
