//! How a connection's bytes cross its socket: in the clear, or through a TLS session.
//!
//! This is the one piece in which a plain and a TLS connection differ. Everything above it (phases, HTTP,
//! the WebSocket core, the outbox, auth, limits) sees plaintext either way. The transport makes no socket
//! calls of its own: the worker reads and writes the socket and hands bytes through here, so an io_uring
//! driver can use the same transport with its own buffers.

use bytes::BytesMut;

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
    /// Where the incoming record stream stands, to know how much of a record rustls holds unfinished.
    records: RecordTracker,
}

/// Follows TLS record boundaries in the bytes fed (headers only; bodies are skipped), so that the partial
/// record rustls is holding can be counted in the worker's receive budget, as a partial HTTP head is.
#[derive(Debug, Default, Clone, Copy)]
struct RecordTracker {
    header: [u8; 5],
    /// Header bytes seen of the next record (0 to 4; a whole header moves on to its body).
    header_len: u8,
    /// Length of the record whose body is being received.
    body_len: u16,
    /// Body bytes of it still to come.
    body_left: u16,
}

impl RecordTracker {
    fn track(&mut self, mut bytes: &[u8]) {
        while !bytes.is_empty() {
            if self.body_left > 0 {
                let take = bytes.len().min(usize::from(self.body_left));
                // `take` is at most `body_left`, a u16.
                self.body_left -= take as u16;
                bytes = &bytes[take..];
                continue;
            }
            let at = usize::from(self.header_len);
            let take = bytes.len().min(5 - at);
            self.header[at..at + take].copy_from_slice(&bytes[..take]);
            bytes = &bytes[take..];
            if at + take == 5 {
                self.header_len = 0;
                self.body_len = u16::from_be_bytes([self.header[3], self.header[4]]);
                self.body_left = self.body_len;
            } else {
                // Less than a header's 5 bytes.
                self.header_len = (at + take) as u8;
            }
        }
    }

    /// Bytes of the record not yet complete (its header and the part of its body received).
    fn partial(&self) -> usize {
        if self.body_left > 0 {
            5 + usize::from(self.body_len - self.body_left)
        } else {
            usize::from(self.header_len)
        }
    }
}

/// What the first bytes on a TLS port were, when they were not a TLS handshake.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NotTls {
    /// An HTTP request in the clear (a client that used `http://` or `ws://` against the TLS port).
    PlainHttp,
}

impl TlsConn {
    /// A session that has seen nothing yet.
    pub fn new(session: TlsSession) -> Self {
        TlsConn { session, started: false, counted: false, notified: false, records: RecordTracker::default() }
    }

    /// Whether `first` (the first bytes a client sent on a TLS port) is a plain-text HTTP request rather than a
    /// TLS record (whose first byte is the handshake content type, 22).
    pub fn sniff(first: &[u8]) -> Option<NotTls> {
        let method = first.iter().take_while(|b| b.is_ascii_uppercase()).count();
        let is_http = method >= 3 && first.get(method).is_none_or(|&b| b == b' ');
        (first.first() != Some(&22) && is_http).then_some(NotTls::PlainHttp)
    }

    /// Feeds ciphertext read from the socket; the plaintext is appended to `plaintext`.
    pub fn feed(&mut self, ciphertext: &[u8], plaintext: &mut BytesMut) -> Result<usize, TlsError> {
        self.started |= !ciphertext.is_empty();
        self.records.track(ciphertext);
        self.session.feed(ciphertext, plaintext)
    }

    /// Ciphertext of an unfinished record that rustls is holding until the rest arrives.
    pub fn partial_record(&self) -> usize {
        self.records.partial()
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
    fn the_partial_record_is_followed_across_any_split() {
        let mut stream = vec![23, 3, 3, 0, 10];
        stream.extend([0xAA; 10]);
        stream.extend([23, 3, 3, 0x01, 0x00]);
        stream.extend([0xBB; 100]);
        for cut in 0..stream.len() {
            let mut t = RecordTracker::default();
            t.track(&stream[..cut]);
            let expected = if cut < 15 { cut % 15 } else { cut - 15 };
            assert_eq!(t.partial(), expected, "after {cut} bytes in one piece");
            let mut u = RecordTracker::default();
            for b in &stream[..cut] {
                u.track(std::slice::from_ref(b));
            }
            assert_eq!(u.partial(), expected, "after {cut} bytes one at a time");
        }
        let mut done = RecordTracker::default();
        done.track(&stream[..15]);
        assert_eq!(done.partial(), 0, "a complete record is not held");
    }

    #[test]
    fn plain_http_on_a_tls_port_is_told_from_a_client_hello() {
        assert_eq!(TlsConn::sniff(b"GET /sub/a HTTP/1.1\r\n"), Some(NotTls::PlainHttp));
        assert_eq!(TlsConn::sniff(b"POST"), Some(NotTls::PlainHttp));
        assert_eq!(TlsConn::sniff(&[22, 3, 1, 0, 200]), None);
        assert_eq!(TlsConn::sniff(b"\x00\x01garbage"), None);
        assert_eq!(TlsConn::sniff(b"GE"), None);
    }
}
