//! How a connection's bytes cross its socket: in the clear, or through a TLS session.
//!
//! This is the one piece in which a plain and a TLS connection differ. Everything above it (phases, HTTP,
//! the WebSocket core, the outbox, auth, limits) sees plaintext either way. The transport makes no socket
//! calls of its own: the worker reads and writes the socket and hands bytes through here, so an io_uring
//! driver can use the same transport with its own buffers.

use bytes::BytesMut;

use super::outbox::Outbox;
use crate::tls::{TlsError, TlsSession};

/// A connection's transport. `Plain` costs nothing: the box puts it in the null niche (one pointer wide).
#[derive(Debug, Default)]
pub enum Transport {
    /// Bytes go to the socket as they are.
    #[default]
    Plain,
    /// Bytes go through a TLS session.
    Tls(Box<TlsConn>),
}

/// A TLS connection's session and where it is in its life.
#[derive(Debug)]
pub struct TlsConn {
    /// The rustls session (bytes in, bytes out).
    pub session: TlsSession,
    /// Whether any ciphertext has been fed (the first byte tells TLS from plain HTTP).
    pub started: bool,
    /// Whether the end of the handshake (success or failure) has been counted.
    pub counted: bool,
    /// Whether our `close_notify` is queued.
    pub notified: bool,
}

/// Most pending ciphertext that a turn's frames are sealed behind rather than written after (see
/// [`TlsConn::joins_outbox`]). A peer that does not read keeps at most this much ciphertext besides what one
/// sealing of its outbox makes, as before.
pub const JOIN_PENDING: usize = 4096;

impl TlsConn {
    /// A session that has seen nothing yet.
    pub fn new(session: TlsSession) -> Self {
        TlsConn { session, started: false, counted: false, notified: false }
    }

    /// Whether the outbox should be sealed behind the ciphertext the session has pending, so both go out in one
    /// write: the pending records are few (at most [`JOIN_PENDING`] bytes, as the tickets after a handshake
    /// are), the handshake is over, and our `close_notify` is not among them (nothing may follow it).
    pub fn joins_outbox(&self, outbox: &Outbox) -> bool {
        !outbox.is_empty()
            && self.session.wants_write()
            && self.session.pending_tls() <= JOIN_PENDING
            && !self.notified
            && !self.session.is_handshaking()
    }

    /// Whether `first` (the first bytes a client sent on a TLS port) is a plain-text HTTP request (a client that
    /// used `http://` or `ws://`) rather than a TLS record (whose first byte is the handshake content type, 22).
    pub fn is_plain_http(first: &[u8]) -> bool {
        let method = first.iter().take_while(|b| b.is_ascii_uppercase()).count();
        method >= 3 && first.get(method).is_none_or(|&b| b == b' ')
    }

    /// Feeds ciphertext read from the socket; the plaintext is appended to `plaintext`.
    pub fn feed(&mut self, ciphertext: &[u8], plaintext: &mut BytesMut) -> Result<usize, TlsError> {
        self.started |= !ciphertext.is_empty();
        self.session.feed(ciphertext, plaintext)
    }
}

impl Transport {
    /// The TLS side, if any.
    pub fn tls(&self) -> Option<&TlsConn> {
        match self {
            Transport::Plain => None,
            Transport::Tls(t) => Some(t),
        }
    }

    /// The TLS side, if any.
    pub fn tls_mut(&mut self) -> Option<&mut TlsConn> {
        match self {
            Transport::Plain => None,
            Transport::Tls(t) => Some(t),
        }
    }

    /// Whether ciphertext (handshake records, sealed frames, an alert, `close_notify`) waits for the socket.
    pub fn wants_write(&self) -> bool {
        self.tls().is_some_and(|t| t.session.wants_write())
    }

    /// Whether the TLS handshake is still under way (false for plain connections).
    pub fn is_handshaking(&self) -> bool {
        self.tls().is_some_and(|t| t.session.is_handshaking())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_plain_transport_is_one_pointer_wide() {
        assert_eq!(std::mem::size_of::<Transport>(), std::mem::size_of::<usize>());
    }

    #[test]
    fn plain_http_on_a_tls_port_is_told_from_a_client_hello() {
        assert!(TlsConn::is_plain_http(b"GET /sub/a HTTP/1.1\r\n"));
        assert!(TlsConn::is_plain_http(b"POST"));
        assert!(!TlsConn::is_plain_http(&[22, 3, 1, 0, 200]));
        assert!(!TlsConn::is_plain_http(b"\x00\x01garbage"));
        assert!(!TlsConn::is_plain_http(b"GE"));
    }
}
