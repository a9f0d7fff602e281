//! Protocol errors, each knowing the close code it puts on the wire (RFC 6455 section 7.4.1).
//!
//! Handshake errors (before the upgrade) live in [`super::handshake::HandshakeError`] and map to HTTP statuses.

use super::close::CloseCode;

/// A violation of RFC 6455 (or of a configured limit) by the peer, detected after the upgrade.
/// Fatal: the connection sends the close frame from [`ProtocolError::close_code`] and then ends.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum ProtocolError {
    /// A client sent a frame without a mask (5.1: the server MUST close).
    #[error("client frame is not masked")]
    UnmaskedClientFrame,
    /// A server sent a masked frame (5.1: the client MUST close).
    #[error("server frame is masked")]
    MaskedServerFrame,
    /// RSV1-3 set without a negotiated extension (5.2).
    #[error("reserved bits set: {0:#05b}")]
    ReservedBits(u8),
    /// Opcode 3-7 or 0xB-0xF (5.2).
    #[error("unknown opcode {0:#x}")]
    UnknownOpcode(u8),
    /// A control frame with FIN clear (5.5: control frames MUST NOT be fragmented).
    #[error("fragmented control frame")]
    FragmentedControl,
    /// A control frame with a payload over 125 bytes (5.5).
    #[error("control frame payload of {0} bytes exceeds 125")]
    ControlTooLong(u64),
    /// A continuation frame with no message in progress (5.4).
    #[error("continuation frame without a message in progress")]
    UnexpectedContinuation,
    /// A new text/binary frame while a fragmented message is still in progress (5.4).
    #[error("new data frame while a fragmented message is in progress")]
    ExpectedContinuation,
    /// A 64-bit length with the most significant bit set (5.2).
    #[error("payload length has the most significant bit set")]
    InvalidLength,
    /// Invalid UTF-8 in a text message (8.1) or in a close reason (5.5.1).
    #[error("invalid UTF-8")]
    InvalidUtf8,
    /// A close frame with a 1-byte payload (5.5.1: a body, if any, starts with a 2-byte code).
    #[error("close frame payload of 1 byte")]
    InvalidClosePayload,
    /// A compressed message (permessage-deflate) whose data is not valid DEFLATE, or that refers back into an
    /// earlier message after the client was asked for `client_no_context_takeover` (RFC 7692 section 7.2.2).
    #[error("invalid compressed data")]
    InvalidCompressed,
    /// A compressed message that inflates past `max_message_size` (a deflate bomb, or just a large message).
    #[error("inflated message exceeds the limit of {max} bytes")]
    InflatedTooLarge {
        /// The configured limit.
        max: u64,
    },
    /// A close code that may not be sent on the wire (7.4.1, 7.4.2).
    #[error("invalid close code {0}")]
    InvalidCloseCode(u16),
    /// One frame larger than `max_frame_size`.
    #[error("frame of {size} bytes exceeds the limit of {max}")]
    FrameTooLarge {
        /// The length announced by the frame header.
        size: u64,
        /// The configured limit.
        max: u64,
    },
    /// A message (all its fragments) larger than `max_message_size`.
    #[error("message of at least {size} bytes exceeds the limit of {max}")]
    MessageTooLarge {
        /// Bytes of the message known so far.
        size: u64,
        /// The configured limit.
        max: u64,
    },
}

impl ProtocolError {
    /// The close code this error puts on the wire: 1007 for bad UTF-8 and bad compressed data (the payload is
    /// inconsistent with the message), 1009 for size limits (of the inflated size too), 1002 otherwise.
    pub fn close_code(&self) -> CloseCode {
        match self {
            ProtocolError::InvalidUtf8 | ProtocolError::InvalidCompressed => CloseCode::INVALID_PAYLOAD,
            ProtocolError::FrameTooLarge { .. }
            | ProtocolError::MessageTooLarge { .. }
            | ProtocolError::InflatedTooLarge { .. } => CloseCode::TOO_BIG,
            _ => CloseCode::PROTOCOL_ERROR,
        }
    }
}
