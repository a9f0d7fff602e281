//! The incremental frame decoder: bytes in, messages and control frames out (RFC 6455 sections 5.2-5.5).
//!
//! Correct on any split of the byte stream (one byte at a time included). A single-frame message that is
//! wholly in the input is split off without a copy; fragments and partial payloads are unmasked and moved into
//! the decoder's message buffer as they arrive, so the input never has to hold a whole large frame, and text is
//! UTF-8-checked as it arrives, failing on the first bad fragment. Control frames may be interleaved with the
//! fragments of a message. Frame and message sizes are bounded by [`DecodeLimits`].
//!
//! Header checks run in a fixed order, each as soon as its bytes have arrived, so every split of a bad stream
//! gives the same error: reserved bits, unknown opcode, fragmented control frame, continuation without a
//! message / new message during one (first byte); mask bit for the role (second byte); then, once the length
//! is known, control payload over 125, 64-bit length with its top bit set, frame limit, message limit. Memory
//! grows only with bytes that have arrived, never with a length a header announces.

use bytes::{Buf, Bytes, BytesMut};

use super::close::CloseFrame;
use super::error::ProtocolError;
use super::frame::OpCode;
use super::mask::apply_mask;
use super::utf8::Utf8Validator;
use super::Role;

/// Size limits enforced while decoding.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DecodeLimits {
    /// Largest payload of one frame, in bytes; larger -> [`ProtocolError::FrameTooLarge`] (close 1009).
    pub max_frame_size: u64,
    /// Largest message (all fragments), in bytes; larger -> [`ProtocolError::MessageTooLarge`] (close 1009).
    pub max_message_size: u64,
}

/// What the decoder hands back: a whole data message, or one control frame.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Incoming {
    /// A complete text message, already checked to be valid UTF-8.
    Text(Bytes),
    /// A complete binary message.
    Binary(Bytes),
    /// A ping with its (at most 125-byte) payload.
    Ping(Bytes),
    /// A pong with its payload.
    Pong(Bytes),
    /// A close frame: `None` when it had no body. Code and reason are already validated.
    Close(Option<CloseFrame>),
    /// A complete message whose first frame had RSV1 set under permessage-deflate (RFC 7692 section 6): its
    /// payload still compressed (the tail not yet appended), text not yet checked. Only when
    /// [`Decoder::allow_compressed`] was called.
    Deflated {
        /// Whether it is a text message (checked for UTF-8 once inflated).
        text: bool,
        /// The compressed payload of all its frames.
        payload: Bytes,
    },
}

/// The incremental decoder. Small when idle: no buffer is held between messages.
#[derive(Debug)]
pub struct Decoder {
    role: Role,
    limits: DecodeLimits,
    /// The data message in progress (a fragment seen, or a single frame's payload partly arrived).
    message: Option<MessageKind>,
    /// Payload bytes announced by the headers of the message in progress (checked against the limit).
    message_len: u64,
    /// The unmasked payload of the message in progress; empty and without capacity when idle.
    buffer: BytesMut,
    /// Checks a text message in progress piece by piece.
    utf8: Utf8Validator,
    /// The data frame whose payload is being read, once its header has been consumed.
    frame: Option<PayloadState>,
    /// permessage-deflate is negotiated: RSV1 may mark the first frame of a data message.
    compressed_ok: bool,
    /// The message in progress is compressed (its first frame had RSV1).
    compressed: bool,
}

/// The type of the data message in progress.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum MessageKind {
    Text,
    Binary,
}

/// A data frame whose header is consumed and whose payload is partly read.
#[derive(Debug, Clone, Copy)]
struct PayloadState {
    fin: bool,
    mask: Option<[u8; 4]>,
    /// Payload bytes still to come.
    remaining: u64,
    /// Payload bytes already read (the masking offset).
    read: usize,
}

/// A frame header parsed (and checked) from the front of the input, not yet consumed.
#[derive(Debug, Clone, Copy)]
struct Header {
    fin: bool,
    opcode: OpCode,
    mask: Option<[u8; 4]>,
    /// Header bytes: 2 to 14.
    len: usize,
    /// Payload bytes, at most `max_frame_size`.
    payload_len: usize,
    /// RSV1 set on the first frame of a data message, with permessage-deflate negotiated.
    compressed: bool,
}

/// RFC 6455 section 5.5: "All control frames MUST have a payload length of 125 bytes or less".
const MAX_CONTROL_PAYLOAD: u64 = 125;

impl Decoder {
    /// A decoder for `role` (a server expects masked frames, a client unmasked ones).
    pub fn new(role: Role, limits: DecodeLimits) -> Self {
        Decoder {
            role,
            limits,
            message: None,
            message_len: 0,
            buffer: BytesMut::new(),
            utf8: Utf8Validator::new(),
            frame: None,
            compressed_ok: false,
            compressed: false,
        }
    }

    /// permessage-deflate is negotiated: from now on RSV1 on the first frame of a data message marks it
    /// compressed, and such messages come out as [`Incoming::Deflated`].
    pub fn allow_compressed(&mut self) {
        self.compressed_ok = true;
    }

    /// Changes the size limits from the next frame header on (e.g. tighter before authentication).
    pub fn set_limits(&mut self, limits: DecodeLimits) {
        self.limits = limits;
    }

    /// The size limits in force.
    pub fn limits(&self) -> DecodeLimits {
        self.limits
    }

    /// Consumes bytes from the front of `input` and returns the next message or control frame, or `Ok(None)`
    /// when more bytes are needed (then every byte that can be consumed has been: a partial header or a
    /// partial control frame may stay in `input`). Call again until `Ok(None)`. An error is fatal: the
    /// decoder must not be used after it.
    pub fn decode(&mut self, input: &mut BytesMut) -> Result<Option<Incoming>, ProtocolError> {
        loop {
            if let Some(frame) = self.frame {
                if !self.read_payload(frame, input)? {
                    return Ok(None);
                }
                if frame.fin {
                    return self.finish_message().map(Some);
                }
                continue;
            }

            let Some(header) = self.parse_header(input)? else {
                return Ok(None);
            };
            let total = header.len + header.payload_len;

            if header.opcode.is_control() {
                // Control frames are at most 14 + 125 bytes: wait for the whole frame, then split it off.
                if input.len() < total {
                    return Ok(None);
                }
                input.advance(header.len);
                let payload = take_payload(input, header.payload_len, header.mask);
                return control(header.opcode, payload).map(Some);
            }

            if self.message.is_none() && header.fin && input.len() >= total {
                // Fast path: a whole single-frame message is in the input; unmask it in place, no copy.
                input.advance(header.len);
                let payload = take_payload(input, header.payload_len, header.mask);
                if header.compressed {
                    let text = header.opcode == OpCode::Text;
                    return Ok(Some(Incoming::Deflated { text, payload: payload.freeze() }));
                }
                return match header.opcode {
                    OpCode::Text => {
                        std::str::from_utf8(&payload).map_err(|_| ProtocolError::InvalidUtf8)?;
                        Ok(Some(Incoming::Text(payload.freeze())))
                    }
                    _ => Ok(Some(Incoming::Binary(payload.freeze()))),
                };
            }

            input.advance(header.len);
            match header.opcode {
                OpCode::Text => self.message = Some(MessageKind::Text),
                OpCode::Binary => self.message = Some(MessageKind::Binary),
                _ => {}
            }
            if header.opcode != OpCode::Continuation {
                self.compressed = header.compressed;
            }
            self.message_len = self.message_len.saturating_add(header.payload_len as u64);
            self.frame = Some(PayloadState {
                fin: header.fin,
                mask: header.mask,
                remaining: header.payload_len as u64,
                read: 0,
            });
        }
    }

    /// Bytes of memory held for the message being reassembled (the buffer's capacity; 0 while idle).
    pub fn buffered(&self) -> usize {
        self.buffer.capacity()
    }

    /// Whether no message is in progress (no fragment or partial payload held), so the caller may give its
    /// buffers back to a pool.
    pub fn is_idle(&self) -> bool {
        self.message.is_none() && self.frame.is_none()
    }

    /// Parses and checks the header at the front of `input` without consuming it, or `Ok(None)` if it has not
    /// all arrived. Checks run in a fixed order, each as soon as its bytes are there, so any split of the input
    /// gives the same error.
    fn parse_header(&self, input: &[u8]) -> Result<Option<Header>, ProtocolError> {
        let Some(&first) = input.first() else {
            return Ok(None);
        };
        // Section 5.2: "RSV1, RSV2, RSV3: 1 bit each. MUST be 0 unless an extension is negotiated that defines
        // meanings for non-zero values. If a nonzero value is received and none of the negotiated extensions
        // defines the meaning of such a nonzero value, the receiving endpoint MUST _Fail the WebSocket
        // Connection_."
        // RFC 7692 section 6: with permessage-deflate, RSV1 is the "Per-Message Compressed" bit, and "An endpoint
        // MUST NOT set the "Per-Message Compressed" bit of control frames and non-first fragments of a data
        // message": on those it stays an error, as are RSV2 and RSV3.
        let rsv = (first >> 4) & 0x7;
        let first_data_frame = matches!(first & 0x0F, 0x1 | 0x2);
        let compressed = rsv == 0b100 && self.compressed_ok && first_data_frame;
        if rsv != 0 && !compressed {
            return Err(ProtocolError::ReservedBits(rsv));
        }
        // Section 5.2: "If an unknown opcode is received, the receiving endpoint MUST _Fail the WebSocket
        // Connection_."
        let opcode = OpCode::from_u8(first & 0x0F).ok_or(ProtocolError::UnknownOpcode(first & 0x0F))?;
        let fin = first & 0x80 != 0;
        // Section 5.5: "Control frames MAY be injected in the middle of a fragmented message. Control frames
        // themselves MUST NOT be fragmented."
        if opcode.is_control() && !fin {
            return Err(ProtocolError::FragmentedControl);
        }
        // Section 5.4: a fragmented message is "a single frame with the FIN bit clear and an opcode other than
        // 0, followed by zero or more frames with the FIN bit clear and the opcode set to 0, and terminated by a
        // single frame with the FIN bit set and an opcode of 0"; "the fragments of one message MUST NOT be
        // interleaved between the fragments of another message".
        match (opcode, self.message) {
            (OpCode::Continuation, None) => return Err(ProtocolError::UnexpectedContinuation),
            (OpCode::Text | OpCode::Binary, Some(_)) => return Err(ProtocolError::ExpectedContinuation),
            _ => {}
        }

        let Some(&second) = input.get(1) else {
            return Ok(None);
        };
        // Section 5.1: "The server MUST close the connection upon receiving a frame that is not masked", and
        // "A client MUST close a connection if it detects a masked frame."
        let masked = second & 0x80 != 0;
        match (self.role, masked) {
            (Role::Server, false) => return Err(ProtocolError::UnmaskedClientFrame),
            (Role::Client, true) => return Err(ProtocolError::MaskedServerFrame),
            _ => {}
        }

        let (payload_len, mut len) = match second & 0x7F {
            126 => match input.get(2..4) {
                Some(&[a, b]) => (u64::from(u16::from_be_bytes([a, b])), 4),
                _ => return Ok(None),
            },
            127 => match input.get(2..10).and_then(|b| <[u8; 8]>::try_from(b).ok()) {
                Some(bytes) => (u64::from_be_bytes(bytes), 10),
                None => return Ok(None),
            },
            short => (u64::from(short), 2),
        };
        // Section 5.5: "All control frames MUST have a payload length of 125 bytes or less".
        if opcode.is_control() && payload_len > MAX_CONTROL_PAYLOAD {
            return Err(ProtocolError::ControlTooLong(payload_len));
        }
        // Section 5.2: "If 127, the following 8 bytes interpreted as a 64-bit unsigned integer (the most
        // significant bit MUST be 0) are the payload length."
        if payload_len >> 63 != 0 {
            return Err(ProtocolError::InvalidLength);
        }
        // Section 10.4: "implementations will likely want to impose implementation-specific limits on frame size
        // and the total message size after reassembly from multiple frames".
        let too_large = ProtocolError::FrameTooLarge { size: payload_len, max: self.limits.max_frame_size };
        if payload_len > self.limits.max_frame_size {
            return Err(too_large);
        }
        let payload_len = usize::try_from(payload_len).map_err(|_| too_large)?;
        if !opcode.is_control() {
            let size = self.message_len.saturating_add(payload_len as u64);
            if size > self.limits.max_message_size {
                return Err(ProtocolError::MessageTooLarge { size, max: self.limits.max_message_size });
            }
        }

        let mask = if masked {
            match input.get(len..len + 4) {
                Some(&[a, b, c, d]) => {
                    len += 4;
                    Some([a, b, c, d])
                }
                _ => return Ok(None),
            }
        } else {
            None
        };
        Ok(Some(Header { fin, opcode, mask, len, payload_len, compressed }))
    }

    /// Moves the payload bytes available in `input` into the message buffer, unmasking them and checking text
    /// as they come. Returns whether the frame's payload is complete (and clears `self.frame` if so).
    fn read_payload(&mut self, mut frame: PayloadState, input: &mut BytesMut) -> Result<bool, ProtocolError> {
        // `remaining` is at most `max_frame_size`, which fitted in a `usize` when the header was parsed.
        let available = usize::try_from(frame.remaining).map_or(input.len(), |rest| rest.min(input.len()));
        if available > 0 {
            let start = self.buffer.len();
            // Grows only by what has arrived, never by what the header announced.
            self.buffer.extend_from_slice(&input[..available]);
            input.advance(available);
            let piece = &mut self.buffer[start..];
            if let Some(mask) = frame.mask {
                apply_mask(piece, mask, frame.read);
            }
            if self.message == Some(MessageKind::Text) && !self.compressed {
                // Section 8.1: invalid UTF-8 MUST fail the connection; fail on the first bad piece.
                self.utf8.feed(piece).map_err(|_| ProtocolError::InvalidUtf8)?;
            }
            frame.read += available;
            frame.remaining -= available as u64;
        }
        if frame.remaining == 0 {
            self.frame = None;
            Ok(true)
        } else {
            self.frame = Some(frame);
            Ok(false)
        }
    }

    /// Hands back the message in progress after its FIN frame, leaving the decoder idle.
    fn finish_message(&mut self) -> Result<Incoming, ProtocolError> {
        let kind = self.message.take();
        self.message_len = 0;
        // Leaves an empty buffer without capacity: nothing is held while idle.
        let payload = std::mem::take(&mut self.buffer).freeze();
        if std::mem::take(&mut self.compressed) {
            return Ok(Incoming::Deflated { text: kind == Some(MessageKind::Text), payload });
        }
        match kind {
            Some(MessageKind::Text) => {
                self.utf8.finish().map_err(|_| ProtocolError::InvalidUtf8)?;
                Ok(Incoming::Text(payload))
            }
            _ => Ok(Incoming::Binary(payload)),
        }
    }
}

/// Splits `len` payload bytes off the front of `input` and unmasks them in place.
fn take_payload(input: &mut BytesMut, len: usize, mask: Option<[u8; 4]>) -> BytesMut {
    let mut payload = input.split_to(len);
    if let Some(mask) = mask {
        apply_mask(&mut payload, mask, 0);
    }
    payload
}

/// Turns a whole control frame into its [`Incoming`], checking a close body.
fn control(opcode: OpCode, payload: BytesMut) -> Result<Incoming, ProtocolError> {
    match opcode {
        OpCode::Ping => Ok(Incoming::Ping(payload.freeze())),
        OpCode::Pong => Ok(Incoming::Pong(payload.freeze())),
        // Section 5.5.1: a close body is a 2-byte code and a UTF-8 reason.
        _ => CloseFrame::parse(&payload).map(Incoming::Close),
    }
}

#[cfg(test)]
mod tests;
