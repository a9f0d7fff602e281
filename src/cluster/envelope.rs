//! The compact binary envelope a message crosses Redis in: origin node, sequence number, kind, payload.
//!
//! Layout (18 bytes, then the payload as published):
//! `version (1) | kind (1) | origin node id (8, big-endian) | sequence (8, big-endian) | payload`.
//! The topic is the Redis channel's name (after the prefix), so it is not repeated here. The sequence number
//! counts the origin's messages of one topic from 1: a receiver that sees it jump knows messages were lost.

/// The envelope version this build writes and reads.
pub const VERSION: u8 = 1;
/// Header length.
pub const HEADER: usize = 18;

/// What the payload is, so the receiving node frames it as the origin would have.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// A text message (raw `/pub` text, `POST` text).
    Text,
    /// A binary message.
    Binary,
    /// A JSON value (`/ws` publish `data`, `POST` with `application/json`): `/ws` subscribers get it as the
    /// value, raw subscribers as text.
    Json,
    /// A stall probe of the origin's own link (never delivered to clients).
    Probe,
}

impl Kind {
    fn byte(self) -> u8 {
        match self {
            Kind::Text => 1,
            Kind::Binary => 2,
            Kind::Json => 3,
            Kind::Probe => 4,
        }
    }
    fn of(b: u8) -> Option<Kind> {
        Some(match b {
            1 => Kind::Text,
            2 => Kind::Binary,
            3 => Kind::Json,
            4 => Kind::Probe,
            _ => return None,
        })
    }
}

/// A decoded envelope header (the payload follows it).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Header {
    /// The payload's kind.
    pub kind: Kind,
    /// The publishing node.
    pub origin: u64,
    /// Its sequence number for this topic.
    pub seq: u64,
}

/// Why bytes on a herald channel are not an envelope this build reads.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum EnvelopeError {
    /// Shorter than the header.
    #[error("envelope shorter than its header")]
    Short,
    /// Another version, or an unknown kind.
    #[error("unknown envelope version or kind")]
    Unknown,
}

impl Header {
    /// The header's bytes.
    pub fn encode(&self) -> [u8; HEADER] {
        let mut out = [0u8; HEADER];
        out[0] = VERSION;
        out[1] = self.kind.byte();
        out[2..10].copy_from_slice(&self.origin.to_be_bytes());
        out[10..18].copy_from_slice(&self.seq.to_be_bytes());
        out
    }

    /// Reads the header at the front of `bytes`; the payload is `&bytes[HEADER..]`.
    pub fn decode(bytes: &[u8]) -> Result<Header, EnvelopeError> {
        if bytes.len() < HEADER {
            return Err(EnvelopeError::Short);
        }
        let kind = Kind::of(bytes[1]).filter(|_| bytes[0] == VERSION).ok_or(EnvelopeError::Unknown)?;
        let mut origin = [0u8; 8];
        origin.copy_from_slice(&bytes[2..10]);
        let mut seq = [0u8; 8];
        seq.copy_from_slice(&bytes[10..18]);
        Ok(Header { kind, origin: u64::from_be_bytes(origin), seq: u64::from_be_bytes(seq) })
    }
}

/// What a receiver makes of a sequence number, given the last one it saw from that origin for that topic.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Order {
    /// The next one (or the first seen): deliver.
    InOrder,
    /// Messages in between were lost: deliver, and tell the subscribers.
    Gap,
}

/// Checks `seq` against `last` (None: nothing seen yet). A sequence restarting at 1 is an origin that forgot
/// an idle topic's counter, not a loss.
pub fn check(last: Option<u64>, seq: u64) -> Order {
    match last {
        None => Order::InOrder,
        Some(l) if seq == l.wrapping_add(1) || seq == 1 => Order::InOrder,
        Some(_) => Order::Gap,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_header_reads_back_as_written() {
        for kind in [Kind::Text, Kind::Binary, Kind::Json, Kind::Probe] {
            let h = Header { kind, origin: 0x0123_4567_89ab_cdef, seq: u64::MAX - 3 };
            let mut bytes = h.encode().to_vec();
            bytes.extend_from_slice(b"payload");
            assert_eq!(Header::decode(&bytes), Ok(h));
            assert_eq!(&bytes[HEADER..], b"payload");
        }
    }

    #[test]
    fn short_or_foreign_bytes_are_not_envelopes() {
        assert_eq!(Header::decode(&[VERSION, 1, 0]), Err(EnvelopeError::Short));
        let mut other = Header { kind: Kind::Text, origin: 1, seq: 1 }.encode();
        other[0] = 9;
        assert_eq!(Header::decode(&other), Err(EnvelopeError::Unknown));
        let mut kind = Header { kind: Kind::Text, origin: 1, seq: 1 }.encode();
        kind[1] = 0;
        assert_eq!(Header::decode(&kind), Err(EnvelopeError::Unknown));
    }

    #[test]
    fn a_jump_in_the_sequence_is_a_gap_and_the_next_number_or_a_restart_is_not() {
        assert_eq!(check(None, 17), Order::InOrder, "the first message seen");
        assert_eq!(check(Some(4), 5), Order::InOrder);
        assert_eq!(check(Some(4), 7), Order::Gap, "5 and 6 were lost");
        assert_eq!(check(Some(4), 4), Order::Gap, "a repeat is not in order");
        assert_eq!(check(Some(40), 1), Order::InOrder, "the origin restarted the topic's count");
    }
}
