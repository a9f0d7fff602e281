//! Frame opcodes and headers, and the frame encoder (RFC 6455 section 5.2).
//!
//! Server frames are unmasked, so a broadcast is encoded once and the same bytes go to every subscriber.
//! Encoders write into any [`bytes::BufMut`] (a `Vec<u8>`, or a `BytesMut` that coalesces many frames).

use bytes::{BufMut, BytesMut};

use super::mask::apply_mask;

/// The longest frame header: 2 bytes, 8 bytes of extended length, 4 bytes of mask.
pub const MAX_HEADER_LEN: usize = 14;

/// A frame opcode (RFC 6455 section 5.2).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[repr(u8)]
pub enum OpCode {
    /// 0x0: continuation of a fragmented message.
    Continuation = 0x0,
    /// 0x1: text data (UTF-8).
    Text = 0x1,
    /// 0x2: binary data.
    Binary = 0x2,
    /// 0x8: close.
    Close = 0x8,
    /// 0x9: ping.
    Ping = 0x9,
    /// 0xA: pong.
    Pong = 0xA,
}

impl OpCode {
    /// The opcode for a 4-bit value, or `None` for the reserved values 3-7 and 0xB-0xF.
    pub fn from_u8(value: u8) -> Option<OpCode> {
        // RFC 6455 section 5.2: "%x3-7 are reserved for further non-control frames", "%xB-F are reserved for
        // further control frames".
        match value {
            0x0 => Some(OpCode::Continuation),
            0x1 => Some(OpCode::Text),
            0x2 => Some(OpCode::Binary),
            0x8 => Some(OpCode::Close),
            0x9 => Some(OpCode::Ping),
            0xA => Some(OpCode::Pong),
            _ => None,
        }
    }

    /// Close, ping and pong are control opcodes (5.5).
    pub fn is_control(self) -> bool {
        // RFC 6455 section 5.5: "Control frames are identified by opcodes where the most significant bit of the
        // opcode is 1."
        (self as u8) & 0x8 != 0
    }
}

/// The number of header bytes a frame with this payload length takes.
pub fn header_len(payload_len: usize, masked: bool) -> usize {
    let extended = match payload_len {
        0..=125 => 0,
        126..=0xFFFF => 2,
        _ => 8,
    };
    2 + extended + if masked { 4 } else { 0 }
}

/// Writes a frame header: FIN, opcode, the shortest length encoding, and the mask key if any.
pub fn write_header<B: BufMut>(out: &mut B, fin: bool, opcode: OpCode, payload_len: usize, mask: Option<[u8; 4]>) {
    let fin_bit = if fin { 0x80 } else { 0 };
    let mask_bit = if mask.is_some() { 0x80 } else { 0 };
    out.put_u8(fin_bit | opcode as u8);
    // RFC 6455 section 5.2: "The length of the "Payload data", in bytes: if 0-125, that is the payload length.
    // If 126, the following 2 bytes interpreted as a 16-bit unsigned integer are the payload length. If 127, the
    // following 8 bytes interpreted as a 64-bit unsigned integer (the most significant bit MUST be 0) are the
    // payload length. ... the minimal number of bytes MUST be used to encode the length".
    match payload_len {
        0..=125 => out.put_u8(mask_bit | payload_len as u8),
        126..=0xFFFF => {
            out.put_u8(mask_bit | 126);
            out.put_u16(payload_len as u16);
        }
        _ => {
            out.put_u8(mask_bit | 127);
            out.put_u64(payload_len as u64);
        }
    }
    if let Some(mask) = mask {
        out.put_slice(&mask);
    }
}

/// Writes a whole unmasked frame with FIN set (the server's frames).
pub fn write_frame<B: BufMut>(out: &mut B, opcode: OpCode, payload: &[u8]) {
    write_header(out, true, opcode, payload.len(), None);
    out.put_slice(payload);
}

/// Writes a whole masked frame (the client's frames): header with `mask`, then the payload XORed with it.
pub fn write_masked_frame<B: BufMut>(out: &mut B, fin: bool, opcode: OpCode, payload: &[u8], mask: [u8; 4]) {
    write_header(out, fin, opcode, payload.len(), Some(mask));
    // `BufMut` cannot be read back, so mask through a stack buffer rather than in `out`.
    let mut scratch = [0u8; MASK_SCRATCH_LEN];
    for (i, piece) in payload.chunks(MASK_SCRATCH_LEN).enumerate() {
        let scratch = &mut scratch[..piece.len()];
        scratch.copy_from_slice(piece);
        apply_mask(scratch, mask, i * MASK_SCRATCH_LEN);
        out.put_slice(scratch);
    }
}

/// The stack buffer [`write_masked_frame`] masks through, a multiple of 4 so each piece starts on key octet 0.
const MASK_SCRATCH_LEN: usize = 4096;

/// One unmasked FIN frame in a buffer of exactly its size (one allocation).
pub fn frame(opcode: OpCode, payload: &[u8]) -> bytes::Bytes {
    let mut out = BytesMut::with_capacity(header_len(payload.len(), false) + payload.len());
    write_frame(&mut out, opcode, payload);
    out.freeze()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn opcode_values_round_trip_and_reserved_are_none() {
        for op in [OpCode::Continuation, OpCode::Text, OpCode::Binary, OpCode::Close, OpCode::Ping, OpCode::Pong] {
            assert_eq!(OpCode::from_u8(op as u8), Some(op));
        }
        for reserved in [0x3, 0x4, 0x5, 0x6, 0x7, 0xB, 0xC, 0xD, 0xE, 0xF] {
            assert_eq!(OpCode::from_u8(reserved), None, "{reserved:#x}");
        }
    }

    #[test]
    fn only_close_ping_pong_are_control() {
        assert!(OpCode::Close.is_control() && OpCode::Ping.is_control() && OpCode::Pong.is_control());
        assert!(!OpCode::Continuation.is_control() && !OpCode::Text.is_control() && !OpCode::Binary.is_control());
    }

    #[test]
    fn header_len_uses_shortest_length_encoding() {
        assert_eq!(header_len(0, false), 2);
        assert_eq!(header_len(125, false), 2);
        assert_eq!(header_len(126, false), 4);
        assert_eq!(header_len(65535, false), 4);
        assert_eq!(header_len(65536, false), 10);
        assert_eq!(header_len(65536, true), MAX_HEADER_LEN);
        assert_eq!(header_len(5, true), 6);
    }

    #[test]
    fn unmasked_hello_as_in_rfc_section_5_7() {
        // RFC 6455 section 5.7: "A single-frame unmasked text message
        //   0x81 0x05 0x48 0x65 0x6c 0x6c 0x6f (contains "Hello")"
        assert_eq!(&frame(OpCode::Text, b"Hello")[..], [0x81, 0x05, 0x48, 0x65, 0x6c, 0x6c, 0x6f]);
    }

    #[test]
    fn masked_hello_as_in_rfc_section_5_7() {
        // "A single-frame masked text message
        //   0x81 0x85 0x37 0xfa 0x21 0x3d 0x7f 0x9f 0x4d 0x51 0x58 (contains "Hello")"
        let mut out = Vec::new();
        write_masked_frame(&mut out, true, OpCode::Text, b"Hello", [0x37, 0xfa, 0x21, 0x3d]);
        assert_eq!(out, [0x81, 0x85, 0x37, 0xfa, 0x21, 0x3d, 0x7f, 0x9f, 0x4d, 0x51, 0x58]);
    }

    #[test]
    fn fragmented_hello_as_in_rfc_section_5_7() {
        // "A fragmented unmasked text message
        //   0x01 0x03 0x48 0x65 0x6c (contains "Hel")
        //   0x80 0x02 0x6c 0x6f (contains "lo")"
        let mut out = Vec::new();
        write_header(&mut out, false, OpCode::Text, 3, None);
        out.extend_from_slice(b"Hel");
        write_header(&mut out, true, OpCode::Continuation, 2, None);
        out.extend_from_slice(b"lo");
        assert_eq!(out, [0x01, 0x03, 0x48, 0x65, 0x6c, 0x80, 0x02, 0x6c, 0x6f]);
    }

    #[test]
    fn ping_as_in_rfc_section_5_7() {
        // "Unmasked Ping request and masked Ping response
        //   0x89 0x05 0x48 0x65 0x6c 0x6c 0x6f (contains a body of "Hello" ...)"
        assert_eq!(&frame(OpCode::Ping, b"Hello")[..], [0x89, 0x05, 0x48, 0x65, 0x6c, 0x6c, 0x6f]);
    }

    #[test]
    fn sixteen_bit_length_as_in_rfc_section_5_7() {
        // "256 bytes binary message in a single unmasked frame
        //   0x82 0x7E 0x0100 [256 bytes of binary data]"
        let bytes = frame(OpCode::Binary, &[0xAB; 256]);
        assert_eq!(bytes.len(), 4 + 256);
        assert_eq!(&bytes[..4], [0x82, 0x7E, 0x01, 0x00]);
    }

    #[test]
    fn sixty_four_bit_length_as_in_rfc_section_5_7() {
        // "64KiB binary message in a single unmasked frame
        //   0x82 0x7F 0x0000000000010000 [65536 bytes of binary data]"
        let bytes = frame(OpCode::Binary, &[0; 65536]);
        assert_eq!(bytes.len(), 10 + 65536);
        assert_eq!(&bytes[..10], [0x82, 0x7F, 0, 0, 0, 0, 0, 1, 0, 0]);
    }

    #[test]
    fn frame_allocates_exactly_its_size() {
        let bytes = frame(OpCode::Text, b"abc");
        assert_eq!(bytes.len(), 5);
        let mut out = BytesMut::with_capacity(header_len(70000, false) + 70000);
        let cap = out.capacity();
        write_frame(&mut out, OpCode::Binary, &[1; 70000]);
        assert_eq!(out.len(), cap);
    }

    #[test]
    fn masked_frame_longer_than_scratch_buffer_is_masked_throughout() {
        let payload: Vec<u8> = (0..10_000u32).map(|i| i as u8).collect();
        let mask = [9, 8, 7, 6];
        let mut out = Vec::new();
        write_masked_frame(&mut out, true, OpCode::Binary, &payload, mask);
        let header = header_len(payload.len(), true);
        assert_eq!(&out[header - 4..header], mask);
        let mut body = out[header..].to_vec();
        apply_mask(&mut body, mask, 0);
        assert_eq!(body, payload);
    }
}
