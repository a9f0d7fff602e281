//! Close codes and close frames (RFC 6455 sections 5.5.1 and 7.4).
//!
//! [`CloseCode`] is the number on the wire; [`CloseFrame`] is a received or sent close frame's content.
//! The close *handshake state* lives in [`super::conn`].

use super::error::ProtocolError;

/// A close status code (RFC 6455 section 7.4).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct CloseCode(pub u16);

impl CloseCode {
    /// 1000: normal closure.
    pub const NORMAL: CloseCode = CloseCode(1000);
    /// 1001: going away (server shutdown, idle timeout).
    pub const GOING_AWAY: CloseCode = CloseCode(1001);
    /// 1002: protocol error.
    pub const PROTOCOL_ERROR: CloseCode = CloseCode(1002);
    /// 1003: unsupported data.
    pub const UNSUPPORTED: CloseCode = CloseCode(1003);
    /// 1007: invalid payload data (bad UTF-8).
    pub const INVALID_PAYLOAD: CloseCode = CloseCode(1007);
    /// 1008: policy violation (e.g. slow consumer).
    pub const POLICY: CloseCode = CloseCode(1008);
    /// 1009: message too big.
    pub const TOO_BIG: CloseCode = CloseCode(1009);
    /// 1011: internal error.
    pub const INTERNAL: CloseCode = CloseCode(1011);

    /// Whether a peer may send this code on the wire: 1000-1003, 1007-1014, and 3000-4999 (7.4.1, 7.4.2, and
    /// the IANA registry of section 11.7). 1004-1006 and 1015 are reserved and never sent; 0-999, 1016-2999 and
    /// 5000+ are not used.
    pub fn is_sendable(self) -> bool {
        // RFC 6455 section 7.4.1 defines 1000-1003 and 1007-1011; 1012 (service restart), 1013 (try again later)
        // and 1014 (bad gateway) were added to the IANA "WebSocket Close Code Number Registry" (section 11.7)
        // later, so peers may send them. Autobahn 7.9.1-7.9.9 send 0, 999, 1004, 1005, 1006, 1016, 1100, 2000
        // and 2999, and expect 1002 for each. 1004 is reserved, and 1005, 1006 and 1015 "MUST NOT be set as a
        // status code in a Close control frame by an endpoint". Section 7.4.2: "0-999: Status codes in the range
        // 0-999 are not used", 1000-2999 are for the protocol, "3000-3999" for libraries and frameworks,
        // "4000-4999" for private use.
        matches!(self.0, 1000..=1003 | 1007..=1014 | 3000..=4999)
    }
}

/// The body of a close frame: a code and a UTF-8 reason (at most 123 bytes, so the payload fits in 125).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CloseFrame {
    /// The status code.
    pub code: CloseCode,
    /// The reason, valid UTF-8, at most 123 bytes.
    pub reason: String,
}

impl CloseFrame {
    /// Parses a received close payload: empty -> `Ok(None)`; 1 byte -> error; otherwise a sendable code and a
    /// valid UTF-8 reason (else `InvalidCloseCode` / `InvalidUtf8`).
    pub fn parse(payload: &[u8]) -> Result<Option<CloseFrame>, ProtocolError> {
        // RFC 6455 section 5.5.1: "If there is a body, the first two bytes of the body MUST be a 2-byte unsigned
        // integer (in network byte order) representing a status code".
        let (code, reason) = match payload {
            [] => return Ok(None),
            [_] => return Err(ProtocolError::InvalidClosePayload),
            [hi, lo, reason @ ..] => (CloseCode(u16::from_be_bytes([*hi, *lo])), reason),
        };
        if !code.is_sendable() {
            return Err(ProtocolError::InvalidCloseCode(code.0));
        }
        // Section 5.5.1: "the data [after the code] ... is not guaranteed to be human readable [but is] encoded
        // as UTF-8"; section 8.1 makes invalid UTF-8 a failure.
        let reason = std::str::from_utf8(reason).map_err(|_| ProtocolError::InvalidUtf8)?;
        Ok(Some(CloseFrame { code, reason: reason.to_owned() }))
    }

    /// Appends the payload (code, big-endian, then the reason truncated to 123 bytes at a char boundary).
    pub fn encode_payload(&self, out: &mut Vec<u8>) {
        // RFC 6455 section 5.5: "All control frames MUST have a payload length of 125 bytes or less".
        let mut end = self.reason.len().min(MAX_REASON_LEN);
        while !self.reason.is_char_boundary(end) {
            end -= 1;
        }
        out.reserve(2 + end);
        out.extend_from_slice(&self.code.0.to_be_bytes());
        out.extend_from_slice(&self.reason.as_bytes()[..end]);
    }
}

/// The longest reason that fits in a close frame: 125 payload bytes minus the 2-byte code.
pub const MAX_REASON_LEN: usize = 123;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn valid_close_codes_match_autobahn_7_7() {
        for code in [1000, 1001, 1002, 1003, 1007, 1008, 1009, 1010, 1011, 3000, 3999, 4000, 4999] {
            assert!(CloseCode(code).is_sendable(), "{code}");
        }
    }

    /// 1012 (service restart), 1013 (try again later) and 1014 (bad gateway) are in the IANA "WebSocket Close
    /// Code Number Registry" (RFC 6455 section 11.7); a peer may send them like any code of section 7.4.1.
    #[test]
    fn iana_registered_close_codes_1012_to_1014_are_accepted() {
        for code in [1012u16, 1013, 1014] {
            assert!(CloseCode(code).is_sendable(), "{code}");
            let payload = [&code.to_be_bytes()[..], b"restart"].concat();
            let frame = CloseFrame::parse(&payload).expect("a registered code parses");
            assert_eq!(frame, Some(CloseFrame { code: CloseCode(code), reason: "restart".to_owned() }));
        }
    }

    /// Exactly the codes Autobahn 7.9.1-7.9.9 send (the kosoku 0.1.0 case file `case7_9_X.py`), plus 1015
    /// (7.4.1: "MUST NOT be set as a status code in a Close control frame") and the 7.13 codes 5000 and 65535.
    #[test]
    fn invalid_close_codes_match_autobahn_7_9_and_7_13() {
        let invalid = [0, 999, 1004, 1005, 1006, 1015, 1016, 1100, 2000, 2999, 5000, 65535];
        for code in invalid {
            assert!(!CloseCode(code).is_sendable(), "{code}");
        }
    }

    #[test]
    fn empty_close_payload_has_no_body() {
        assert_eq!(CloseFrame::parse(&[]), Ok(None));
    }

    #[test]
    fn close_with_one_byte_payload_is_protocol_error() {
        assert_eq!(CloseFrame::parse(&[0x03]), Err(ProtocolError::InvalidClosePayload));
    }

    #[test]
    fn invalid_close_code_rejected() {
        assert_eq!(CloseFrame::parse(&[0x03, 0xED]), Err(ProtocolError::InvalidCloseCode(1005)));
        assert_eq!(CloseFrame::parse(&[0x00, 0x00]), Err(ProtocolError::InvalidCloseCode(0)));
    }

    #[test]
    fn close_reason_must_be_utf8() {
        // Autobahn 7.5.1: code 1000 then "κόσμε" followed by 0xED 0xA0 0x80 (a surrogate).
        let mut payload = vec![0x03, 0xE8];
        payload.extend_from_slice(b"\xCE\xBA\xE1\xBD\xB9\xCF\x83\xCE\xBC\xCE\xB5\xED\xA0\x80edited");
        assert_eq!(CloseFrame::parse(&payload), Err(ProtocolError::InvalidUtf8));
    }

    #[test]
    fn parses_code_and_reason() {
        let frame = CloseFrame::parse(b"\x03\xE8bye").expect("valid");
        assert_eq!(frame, Some(CloseFrame { code: CloseCode::NORMAL, reason: "bye".to_owned() }));
    }

    #[test]
    fn encode_then_parse_round_trips() {
        let frame = CloseFrame { code: CloseCode(4321), reason: "done".to_owned() };
        let mut out = Vec::new();
        frame.encode_payload(&mut out);
        assert_eq!(out, b"\x10\xE1done");
        assert_eq!(CloseFrame::parse(&out), Ok(Some(frame)));
    }

    #[test]
    fn encode_truncates_reason_to_123_bytes_on_char_boundary() {
        // 61 two-byte chars = 122 bytes, then a 2-byte char that would end at byte 124.
        let reason: String = "é".repeat(70);
        let frame = CloseFrame { code: CloseCode::GOING_AWAY, reason };
        let mut out = Vec::new();
        frame.encode_payload(&mut out);
        assert_eq!(out.len(), 2 + 122);
        assert!(std::str::from_utf8(&out[2..]).is_ok());

        let frame = CloseFrame { code: CloseCode::GOING_AWAY, reason: "x".repeat(500) };
        let mut out = Vec::new();
        frame.encode_payload(&mut out);
        assert_eq!(out.len(), 125);
    }
}
