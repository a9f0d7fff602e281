//! TLS record framing, read only: walking the 5-byte record headers of a ciphertext stream.
//!
//! rustls does all real record processing. This exists to tell which alert a fatal error queued (a plaintext
//! alert record is readable) and for tests and metrics that count records on the wire.

use rustls::AlertDescription;

use super::session::AlertSent;

/// The TLS record header is 5 bytes: content type, legacy version (2), length (2).
pub const HEADER_LEN: usize = 5;

/// Record content type `alert`.
pub const CONTENT_ALERT: u8 = 21;
/// Record content type `handshake`.
pub const CONTENT_HANDSHAKE: u8 = 22;
/// Record content type `application_data` (in TLS 1.3 every encrypted record has this outer type).
pub const CONTENT_APPLICATION_DATA: u8 = 23;

/// One record seen in a byte stream.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Record<'a> {
    /// The (outer) content type.
    pub content_type: u8,
    /// The record body (ciphertext for protected records).
    pub body: &'a [u8],
}

/// The complete records at the start of `stream`, in order; a trailing partial record is not returned.
pub fn records(stream: &[u8]) -> impl Iterator<Item = Record<'_>> {
    let mut rest = stream;
    std::iter::from_fn(move || {
        if rest.len() < HEADER_LEN {
            return None;
        }
        let len = usize::from(u16::from_be_bytes([rest[3], rest[4]]));
        let end = HEADER_LEN + len;
        let body = rest.get(HEADER_LEN..end)?;
        let record = Record { content_type: rest[0], body };
        rest = &rest[end..];
        Some(record)
    })
}

/// What the last record of `stream` says about the alert that was queued with it.
pub(crate) fn last_alert(stream: &[u8]) -> AlertSent {
    match records(stream).last() {
        Some(Record { content_type: CONTENT_ALERT, body: [_level, description] }) => {
            AlertSent::Plain(AlertDescription::from(*description))
        }
        // A longer alert record is a TLS 1.2 encrypted alert; TLS 1.3 hides alerts in application_data.
        Some(Record { content_type: CONTENT_ALERT | CONTENT_APPLICATION_DATA, .. }) => AlertSent::Encrypted,
        _ => AlertSent::None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn records_walks_headers_and_stops_before_a_partial_record() {
        let stream = [23, 3, 3, 0, 2, 0xaa, 0xbb, 21, 3, 3, 0, 2, 2, 40, 23, 3, 3, 0, 9, 1];
        let seen: Vec<_> = records(&stream).collect();
        assert_eq!(seen.len(), 2);
        assert_eq!(seen[0].content_type, 23);
        assert_eq!(seen[0].body, &[0xaa, 0xbb]);
        assert_eq!(seen[1].body, &[2, 40]);
    }

    #[test]
    fn a_plain_alert_record_is_read_and_an_opaque_one_is_reported_encrypted() {
        assert_eq!(last_alert(&[21, 3, 3, 0, 2, 2, 40]), AlertSent::Plain(AlertDescription::HandshakeFailure));
        assert_eq!(last_alert(&[23, 3, 3, 0, 3, 1, 2, 3]), AlertSent::Encrypted);
        assert_eq!(last_alert(&[22, 3, 3, 0, 1, 1]), AlertSent::None);
        assert_eq!(last_alert(&[]), AlertSent::None);
    }
}
