//! Incremental UTF-8 validation across fragments (RFC 6455 section 8.1), failing on the first invalid byte
//! sequence rather than at the end of the message.
//!
//! The bulk of each piece goes through [`std::str::from_utf8`]. Its error tells apart an invalid sequence
//! (`error_len() == Some(_)`) from a code point cut short by the end of the input (`None`); the standard
//! library checks every byte as it goes, including the restricted second bytes after 0xE0, 0xED, 0xF0 and 0xF4,
//! so a `None` tail is always a valid prefix. Only that tail (at most 3 bytes) is carried to the next piece.

/// Validates a text message fed in arbitrary pieces. Keeps at most 3 bytes of an incomplete code point.
#[derive(Debug, Default, Clone)]
pub struct Utf8Validator {
    /// The start of a code point cut short by the end of the previous piece; always a valid prefix.
    tail: [u8; 4],
    /// How many bytes of `tail` are in use (0 to 3).
    tail_len: u8,
}

/// The input so far can never become valid UTF-8.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("invalid UTF-8")]
pub struct Utf8Error;

/// The length of the code point that starts with `lead`, for a lead byte `from_utf8` has accepted as a prefix.
fn code_point_len(lead: u8) -> usize {
    match lead {
        0x00..=0x7F => 1,
        0xC2..=0xDF => 2,
        0xE0..=0xEF => 3,
        // 0xF0..=0xF4 in practice: other values never pass `from_utf8` as a prefix.
        _ => 4,
    }
}

impl Utf8Validator {
    /// A validator at the start of a message.
    pub fn new() -> Self {
        Self::default()
    }

    /// Feeds the next piece. Fails as soon as the bytes seen so far cannot be a prefix of valid UTF-8
    /// (an incomplete code point at the end of `bytes` is fine and is completed by the next piece).
    pub fn feed(&mut self, bytes: &[u8]) -> Result<(), Utf8Error> {
        let mut rest = bytes;
        if self.tail_len > 0 {
            rest = self.complete_tail(rest)?;
            if self.tail_len > 0 {
                // `rest` ran out before the code point was complete.
                return Ok(());
            }
        }
        match std::str::from_utf8(rest) {
            Ok(_) => Ok(()),
            Err(e) if e.error_len().is_some() => Err(Utf8Error),
            Err(e) => {
                let tail = rest.get(e.valid_up_to()..).ok_or(Utf8Error)?;
                self.store_tail(tail)
            }
        }
    }

    /// Ends the message: fails if a code point is left incomplete. Resets the validator for the next message.
    pub fn finish(&mut self) -> Result<(), Utf8Error> {
        let incomplete = self.tail_len != 0;
        self.tail_len = 0;
        if incomplete {
            Err(Utf8Error)
        } else {
            Ok(())
        }
    }

    /// Extends the carried tail with the first bytes of `bytes`; returns what is left of `bytes`.
    /// On return `tail_len` is 0 if the code point was completed, else `bytes` was used up.
    fn complete_tail<'a>(&mut self, bytes: &'a [u8]) -> Result<&'a [u8], Utf8Error> {
        let have = usize::from(self.tail_len);
        let need = code_point_len(self.tail[0]).saturating_sub(have);
        let take = need.min(bytes.len());
        let mut joined = self.tail;
        joined[have..have + take].copy_from_slice(&bytes[..take]);
        match std::str::from_utf8(&joined[..have + take]) {
            Ok(_) => {
                self.tail_len = 0;
                Ok(&bytes[take..])
            }
            Err(e) if e.error_len().is_some() => Err(Utf8Error),
            Err(_) => {
                // Still a valid prefix, and `take < need`, so `bytes` is exhausted.
                self.tail = joined;
                self.tail_len = (have + take) as u8;
                Ok(&bytes[take..])
            }
        }
    }

    fn store_tail(&mut self, tail: &[u8]) -> Result<(), Utf8Error> {
        // A prefix that `from_utf8` calls incomplete is 1 to 3 bytes long.
        if tail.is_empty() || tail.len() > 3 {
            return Err(Utf8Error);
        }
        self.tail[..tail.len()].copy_from_slice(tail);
        self.tail_len = tail.len() as u8;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn feed_all(pieces: &[&[u8]]) -> Result<(), Utf8Error> {
        let mut v = Utf8Validator::new();
        for piece in pieces {
            v.feed(piece)?;
        }
        v.finish()
    }

    #[test]
    fn accepts_code_point_split_across_every_boundary() {
        // U+1F600 (4 bytes), U+20AC (3 bytes), U+00E9 (2 bytes), ASCII.
        let text = "a\u{1F600}b\u{20AC}\u{E9}z".as_bytes();
        for cut1 in 0..=text.len() {
            for cut2 in cut1..=text.len() {
                let pieces = [&text[..cut1], &text[cut1..cut2], &text[cut2..]];
                assert_eq!(feed_all(&pieces), Ok(()), "cuts {cut1} {cut2}");
            }
        }
    }

    #[test]
    fn accepts_one_byte_at_a_time() {
        let text = "κόσμε \u{10FFFF}\u{FFFF}".as_bytes();
        let pieces: Vec<&[u8]> = text.chunks(1).collect();
        assert_eq!(feed_all(&pieces), Ok(()));
    }

    #[test]
    fn fails_fast_on_invalid_byte() {
        // RFC 6455 section 8.1: "When an endpoint is to interpret a byte stream as UTF-8 but finds that the byte
        // stream is not, in fact, a valid UTF-8 stream, that endpoint MUST _Fail the WebSocket Connection_."
        let mut v = Utf8Validator::new();
        assert_eq!(v.feed(b"ok\xFF"), Err(Utf8Error));
    }

    #[test]
    fn fails_fast_on_surrogate_prefix() {
        // 0xED 0xA0 starts U+D800, a surrogate: invalid before the third byte arrives (Autobahn 6.x fail-fast).
        let mut v = Utf8Validator::new();
        assert_eq!(v.feed(b"\xED\xA0"), Err(Utf8Error));
        let mut v = Utf8Validator::new();
        assert_eq!(v.feed(b"\xED"), Ok(()));
        assert_eq!(v.feed(b"\xA0"), Err(Utf8Error));
    }

    #[test]
    fn fails_fast_on_code_point_above_10ffff() {
        let mut v = Utf8Validator::new();
        assert_eq!(v.feed(b"\xF4\x90"), Err(Utf8Error));
        let mut v = Utf8Validator::new();
        assert_eq!(v.feed(b"\xF4"), Ok(()));
        assert_eq!(v.feed(b"\x90"), Err(Utf8Error));
    }

    #[test]
    fn fails_fast_on_overlong_lead_bytes() {
        for lead in [0xC0u8, 0xC1, 0xF5, 0xFF] {
            let mut v = Utf8Validator::new();
            assert_eq!(v.feed(&[lead]), Err(Utf8Error), "lead {lead:#x}");
        }
        let mut v = Utf8Validator::new();
        assert_eq!(v.feed(b"\xE0\x80"), Err(Utf8Error));
        let mut v = Utf8Validator::new();
        assert_eq!(v.feed(b"\xF0\x80"), Err(Utf8Error));
    }

    #[test]
    fn fails_fast_when_continuation_byte_is_missing() {
        let mut v = Utf8Validator::new();
        assert_eq!(v.feed(b"\xE2\x82"), Ok(()));
        assert_eq!(v.feed(b"A"), Err(Utf8Error));
    }

    #[test]
    fn finish_rejects_incomplete_code_point_and_resets() {
        let mut v = Utf8Validator::new();
        assert_eq!(v.feed(b"abc\xF0\x9F\x98"), Ok(()));
        assert_eq!(v.finish(), Err(Utf8Error));
        assert_eq!(v.feed(b"fresh"), Ok(()));
        assert_eq!(v.finish(), Ok(()));
    }

    #[test]
    fn empty_pieces_change_nothing() {
        let mut v = Utf8Validator::new();
        assert_eq!(v.feed(b""), Ok(()));
        assert_eq!(v.feed(b"\xC3"), Ok(()));
        assert_eq!(v.feed(b""), Ok(()));
        assert_eq!(v.feed(b"\xA9"), Ok(()));
        assert_eq!(v.finish(), Ok(()));
    }

    #[test]
    fn agrees_with_std_on_every_two_byte_sequence_split_in_two() {
        for a in 0..=255u8 {
            for b in 0..=255u8 {
                let bytes = [a, b, b'x'];
                let whole = std::str::from_utf8(&bytes).is_ok();
                let mut v = Utf8Validator::new();
                let split = v.feed(&bytes[..1]).and_then(|()| v.feed(&bytes[1..])).and_then(|()| v.finish());
                assert_eq!(split.is_ok(), whole, "{a:#x} {b:#x}");
            }
        }
    }
}
