//! The masking XOR of RFC 6455 section 5.3: the one place allowed to be clever about speed.
//!
//! Masking is a byte-wise XOR with a 4-byte key repeated over the payload, so it is its own inverse. The key is
//! rotated by the position within the payload, which lets a payload that arrives in pieces be unmasked piece by
//! piece. The bulk of the work is done 8 bytes at a time through `u64` XORs on unaligned chunks (safe code: the
//! compiler turns the `from_ne_bytes`/`to_ne_bytes` pairs into plain loads and stores, and vectorises the loop).

/// XORs `buf` in place with `mask`, where `buf` starts `offset` bytes into the masked payload (so a payload that
/// arrives in pieces can be unmasked piece by piece). Applying it twice gives the input back.
pub fn apply_mask(buf: &mut [u8], mask: [u8; 4], offset: usize) {
    // RFC 6455 section 5.3: "Octet i of the transformed data ("transformed-octet-i") is the XOR of octet i of
    // the original data ("original-octet-i") with octet at index i modulo 4 of the masking key".
    // `buf[0]` is payload octet `offset`, so it takes key octet `offset % 4`.
    let shift = offset % 4;
    let key = [mask[shift], mask[(shift + 1) % 4], mask[(shift + 2) % 4], mask[(shift + 3) % 4]];
    let wide = u64::from_ne_bytes([key[0], key[1], key[2], key[3], key[0], key[1], key[2], key[3]]);

    let mut chunks = buf.chunks_exact_mut(8);
    for chunk in &mut chunks {
        let mut word = [0u8; 8];
        word.copy_from_slice(chunk);
        chunk.copy_from_slice(&(u64::from_ne_bytes(word) ^ wide).to_ne_bytes());
    }
    // Every full chunk is 8 bytes, a multiple of 4, so the tail starts at key octet 0 again.
    for (i, byte) in chunks.into_remainder().iter_mut().enumerate() {
        *byte ^= key[i % 4];
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The byte-at-a-time definition from RFC 6455 section 5.3, for comparison.
    fn mask_naive(buf: &mut [u8], mask: [u8; 4], offset: usize) {
        for (i, byte) in buf.iter_mut().enumerate() {
            *byte ^= mask[(offset + i) % 4];
        }
    }

    #[test]
    fn masks_hello_as_in_rfc_section_5_7() {
        // RFC 6455 section 5.7: "A single-frame masked text message
        //   0x81 0x85 0x37 0xfa 0x21 0x3d 0x7f 0x9f 0x4d 0x51 0x58 (contains "Hello")"
        let mut payload = *b"Hello";
        apply_mask(&mut payload, [0x37, 0xfa, 0x21, 0x3d], 0);
        assert_eq!(payload, [0x7f, 0x9f, 0x4d, 0x51, 0x58]);
    }

    #[test]
    fn masking_twice_is_identity() {
        let original: Vec<u8> = (0..=255u8).cycle().take(1000).collect();
        let mut buf = original.clone();
        apply_mask(&mut buf, [1, 2, 3, 4], 0);
        assert_ne!(buf, original);
        apply_mask(&mut buf, [1, 2, 3, 4], 0);
        assert_eq!(buf, original);
    }

    #[test]
    fn matches_bytewise_definition_for_every_length_and_offset() {
        let mask = [0xde, 0xad, 0xbe, 0xef];
        for len in 0..40 {
            for offset in 0..9 {
                let original: Vec<u8> = (0..len as u8).collect();
                let mut fast = original.clone();
                let mut slow = original.clone();
                apply_mask(&mut fast, mask, offset);
                mask_naive(&mut slow, mask, offset);
                assert_eq!(fast, slow, "len {len} offset {offset}");
            }
        }
    }

    #[test]
    fn masking_in_pieces_equals_masking_whole() {
        let mask = [0x11, 0x22, 0x33, 0x44];
        let original: Vec<u8> = (0..100u8).collect();
        let mut whole = original.clone();
        apply_mask(&mut whole, mask, 0);
        let mut pieces = original.clone();
        let mut at = 0;
        for len in [1, 3, 7, 8, 13, 68] {
            apply_mask(&mut pieces[at..at + len], mask, at);
            at += len;
        }
        assert_eq!(at, 100);
        assert_eq!(pieces, whole);
    }
}
