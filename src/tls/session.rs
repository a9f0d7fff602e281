//! [`TlsSession`]: one server-side TLS connection as a sans-IO transport over `rustls::ServerConnection`.
//!
//! The session owns no socket and reads no clock. The driver (the mio worker today, an io_uring driver
//! later) moves bytes between the socket and the session, and between the session and the HTTP/WebSocket
//! core. Everything here is synchronous and bounded by its input.
//!
//! # Call order
//!
//! Each loop turn, for a connection whose socket is readable and/or has output queued:
//!
//! 1. **Bytes in.** Read what the socket has, then [`TlsSession::feed`] it whole. `feed` runs rustls over
//!    every byte and appends the decrypted application data to the caller's plaintext buffer (the
//!    connection's read buffer), which then goes to the HTTP/WebSocket core exactly as plain-text bytes do.
//!    During the handshake `feed` yields no plaintext but queues handshake records to send.
//! 2. **Plaintext in.** What the core queued for this connection during the turn (outbox frames, an HTTP
//!    response, a close frame) is sealed in one call, [`TlsSession::seal`] (or [`TlsSession::seal_slices`]
//!    for an outbox whose first frame is partly written). One call lets rustls pack all of it into as few
//!    records as fit, 16 KiB of plaintext each, instead of one record per frame. Seal only when
//!    [`TlsSession::pending_tls`] is (nearly) zero: a peer that does not read then leaves plaintext in the
//!    outbox, where the slow-consumer limits already apply, rather than ciphertext piling up here.
//! 3. **Ciphertext out.** While [`TlsSession::wants_write`], hand the records to the socket:
//!    [`TlsSession::write_tls_to`] with the socket as the `io::Write` makes one `writev` of up to 64
//!    records straight from rustls' buffers (no copy); [`TlsSession::drain_tls_into`] instead appends
//!    everything to a buffer the caller owns (an io_uring driver submits that buffer and gets it back on
//!    completion). Stop on `WouldBlock` and retry when the socket is writable.
//! 4. **Closing.** [`TlsSession::peer_closed`] turns true once the peer's `close_notify` arrived (after which
//!    `feed` ignores further bytes). To close, [`TlsSession::close`] queues our `close_notify`; flush it (step
//!    3) before shutting the socket.
//!
//! # Errors
//!
//! A TLS protocol error is fatal and sticky, as in rustls. `feed` returns it as [`TlsError::Protocol`], which
//! tells the alert that was queued for the peer. The alert is still sendable: flush (step 3) and then close
//! the socket. Every later `feed` or `seal` returns [`TlsError::Failed`].

use std::io::{self, BufRead, IoSlice, Write};
use std::sync::Arc;

use bytes::{Bytes, BytesMut};
use rustls::{AlertDescription, HandshakeKind, ProtocolVersion, ServerConfig, ServerConnection};

use super::{record, TlsError};

/// One server-side TLS connection, bytes in and bytes out.
pub struct TlsSession {
    conn: ServerConnection,
    /// Ciphertext rustls queued before a fatal error (ending with the alert), moved here so the alert can be
    /// read; written out before anything rustls still holds. Empty (no allocation) on every healthy path.
    spill: Vec<u8>,
    spill_sent: usize,
    failed: bool,
    peer_closed: bool,
}

impl std::fmt::Debug for TlsSession {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TlsSession")
            .field("handshaking", &self.conn.is_handshaking())
            .field("protocol_version", &self.conn.protocol_version())
            .field("failed", &self.failed)
            .field("peer_closed", &self.peer_closed)
            .finish()
    }
}

impl TlsSession {
    /// A new server-side session awaiting the client hello.
    ///
    /// rustls' own cap on unsent ciphertext is lifted: the caller bounds it by sealing only when
    /// [`pending_tls`](Self::pending_tls) is (nearly) zero, so a turn's output is never cut short.
    pub fn new(config: Arc<ServerConfig>) -> Result<Self, TlsError> {
        let mut conn = ServerConnection::new(config).map_err(TlsError::Setup)?;
        conn.set_buffer_limit(None);
        Ok(Self { conn, spill: Vec::new(), spill_sent: 0, failed: false, peer_closed: false })
    }

    /// Runs rustls over all of `ciphertext` (bytes read from the socket) and appends the decrypted
    /// application data to `plaintext`. Returns how many plaintext bytes were appended.
    ///
    /// Records may be split anywhere across calls; a partial record waits inside rustls for the rest. Bytes
    /// after the peer's `close_notify` are ignored. On a protocol error the alert for the peer is queued
    /// (see [`TlsError::Protocol`]) and plaintext decrypted before the error stays in `plaintext`.
    pub fn feed(&mut self, mut ciphertext: &[u8], plaintext: &mut BytesMut) -> Result<usize, TlsError> {
        if self.failed {
            return Err(TlsError::Failed);
        }
        let start = plaintext.len();
        while !ciphertext.is_empty() && !self.peer_closed {
            match self.conn.read_tls(&mut ciphertext) {
                // `close_notify` already received: nothing more is read.
                Ok(0) => break,
                Ok(_) => {}
                // Only "plaintext buffer full", which draining below after every step prevents.
                Err(e) => return Err(TlsError::Backpressure(e.to_string())),
            }
            let state = match self.conn.process_new_packets() {
                Ok(state) => state,
                Err(error) => {
                    self.take_plaintext(plaintext);
                    return Err(self.fail(error));
                }
            };
            if state.plaintext_bytes_to_read() > 0 {
                self.take_plaintext(plaintext);
            }
            if state.peer_has_closed() {
                self.peer_closed = true;
            }
        }
        Ok(plaintext.len() - start)
    }

    /// Appends every decrypted byte rustls holds to `plaintext`; returns how many. [`feed`](Self::feed)
    /// already does this; it is here for a caller that feeds through another path.
    pub fn take_plaintext(&mut self, plaintext: &mut BytesMut) -> usize {
        let start = plaintext.len();
        let mut reader = self.conn.reader();
        // One copy per received record, straight from rustls' buffer into the caller's; nothing is zeroed.
        // `WouldBlock` (nothing more for now) and `Ok(empty)` (after close_notify) both end the loop; an
        // unexpected-EOF error is `feed`'s business, not this one's.
        while let Ok(chunk) = reader.fill_buf() {
            if chunk.is_empty() {
                break;
            }
            let n = chunk.len();
            plaintext.extend_from_slice(chunk);
            reader.consume(n);
        }
        plaintext.len() - start
    }

    /// Encrypts a whole turn's queued frames in one go, so rustls coalesces them into as few records as fit
    /// (16 KiB of plaintext each). Before the handshake completes the plaintext is buffered and sent once it
    /// does. Returns the number of plaintext bytes taken (always all of them).
    pub fn seal(&mut self, frames: &[Bytes]) -> Result<usize, TlsError> {
        let mut slices: Vec<IoSlice<'_>> = frames.iter().map(|f| IoSlice::new(f)).collect();
        self.seal_all(&mut slices)
    }

    /// [`seal`](Self::seal) for borrowed slices: an outbox whose first frame is partly consumed, or frames
    /// that are not `Bytes`.
    pub fn seal_slices(&mut self, slices: &[IoSlice<'_>]) -> Result<usize, TlsError> {
        let mut slices = slices.to_vec();
        self.seal_all(&mut slices)
    }

    /// Hands all of `slices` to rustls in one `write_vectored`: rustls fragments the concatenation, so
    /// frames share records. (`slices` is scratch: it is advanced as rustls takes bytes.)
    fn seal_all(&mut self, slices: &mut [IoSlice<'_>]) -> Result<usize, TlsError> {
        if self.failed {
            return Err(TlsError::Failed);
        }
        let total: usize = slices.iter().map(|s| s.len()).sum();
        let mut rest = slices;
        let mut writer = self.conn.writer();
        let mut taken = 0;
        while taken < total {
            // With no buffer limit one call takes everything; the loop only guards against a short write.
            match writer.write_vectored(rest) {
                Ok(0) => return Err(TlsError::Backpressure("rustls took no plaintext".into())),
                Ok(n) => {
                    taken += n;
                    IoSlice::advance_slices(&mut rest, n);
                }
                Err(e) => return Err(TlsError::Backpressure(e.to_string())),
            }
        }
        Ok(total)
    }

    /// The session as an `io::Write` that seals: `outbox.write_to(&mut tls.sealer())` moves a whole outbox
    /// (one `write_vectored` of its frames) into records, and the outbox drops exactly what was taken, as it
    /// does after a `writev` to a plain socket. Errors come back as `io::ErrorKind::InvalidData`.
    pub fn sealer(&mut self) -> Sealer<'_> {
        Sealer(self)
    }

    /// Queues our `close_notify`. Flush it with [`write_tls_to`](Self::write_tls_to) before closing the socket.
    pub fn close(&mut self) {
        if !self.failed {
            self.conn.send_close_notify();
        }
    }

    /// Whether ciphertext (handshake records, sealed data, an alert, `close_notify`) waits to be sent.
    pub fn wants_write(&self) -> bool {
        self.spill_sent < self.spill.len() || self.conn.wants_write()
    }

    /// How many bytes of ciphertext wait to be sent.
    pub fn pending_tls(&mut self) -> usize {
        let spilled = self.spill.len() - self.spill_sent;
        if self.failed {
            return spilled;
        }
        // With no new input, `process_new_packets` only reports the state.
        spilled + self.conn.process_new_packets().map_or(0, |state| state.tls_bytes_to_write())
    }

    /// Writes pending ciphertext to `out` with one `write_vectored` (up to 64 records: one `writev` when `out`
    /// is a socket). Returns the bytes written; call again while [`wants_write`](Self::wants_write) and `out`
    /// accepts more. Errors are `out`'s own (`WouldBlock` included).
    pub fn write_tls_to(&mut self, out: &mut dyn Write) -> io::Result<usize> {
        if self.spill_sent < self.spill.len() {
            let n = out.write(&self.spill[self.spill_sent..])?;
            self.spill_sent += n;
            if self.spill_sent == self.spill.len() {
                self.spill = Vec::new();
                self.spill_sent = 0;
            }
            return Ok(n);
        }
        self.conn.write_tls(out)
    }

    /// Appends all pending ciphertext to `out`, a buffer the caller owns (pooled, or handed to io_uring until
    /// the write completes). Returns the bytes appended.
    pub fn drain_tls_into(&mut self, out: &mut Vec<u8>) -> usize {
        let start = out.len();
        while self.wants_write() {
            // Writing into a Vec cannot fail.
            if matches!(self.write_tls_to(out), Ok(0) | Err(_)) {
                break;
            }
        }
        out.len() - start
    }

    /// Whether the handshake is still under way (true from creation until the handshake completes).
    pub fn is_handshaking(&self) -> bool {
        self.conn.is_handshaking()
    }

    /// Whether the peer's `close_notify` has arrived.
    pub fn peer_closed(&self) -> bool {
        self.peer_closed
    }

    /// Whether a fatal error ended the session (its alert may still be waiting to be sent).
    pub fn is_failed(&self) -> bool {
        self.failed
    }

    /// The negotiated protocol version, once known.
    pub fn protocol_version(&self) -> Option<ProtocolVersion> {
        self.conn.protocol_version()
    }

    /// Full or resumed handshake, once the handshake is complete.
    pub fn handshake_kind(&self) -> Option<HandshakeKind> {
        self.conn.handshake_kind()
    }

    /// The ALPN protocol agreed, if the client offered one.
    pub fn alpn_protocol(&self) -> Option<&[u8]> {
        self.conn.alpn_protocol()
    }

    /// The SNI host name the client sent, if any.
    pub fn server_name(&self) -> Option<&str> {
        self.conn.server_name()
    }

    /// Marks the session failed, moves the queued ciphertext (ending with the alert) to `spill` so the alert
    /// can be identified, and builds the error.
    fn fail(&mut self, error: rustls::Error) -> TlsError {
        self.failed = true;
        let mut out = std::mem::take(&mut self.spill);
        while self.conn.wants_write() {
            if matches!(self.conn.write_tls(&mut out), Ok(0) | Err(_)) {
                break;
            }
        }
        let alert = match error {
            // rustls answers a peer's fatal alert with nothing.
            rustls::Error::AlertReceived(_) => AlertSent::None,
            _ => record::last_alert(&out),
        };
        self.spill = out;
        self.spill_sent = 0;
        TlsError::Protocol { error, alert }
    }
}

/// [`TlsSession::sealer`]: plaintext written here is sealed into records (all of each call, in one go).
#[derive(Debug)]
pub struct Sealer<'a>(&'a mut TlsSession);

impl Write for Sealer<'_> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.write_vectored(&[IoSlice::new(buf)])
    }

    fn write_vectored(&mut self, bufs: &[IoSlice<'_>]) -> io::Result<usize> {
        self.0.seal_slices(bufs).map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e))
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

/// The alert a fatal error put on the wire, as far as it can be read from the record.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum AlertSent {
    /// A plaintext alert record (before the handshake keys): its description.
    Plain(AlertDescription),
    /// An alert inside an encrypted record (after the handshake keys were in use): opaque on the wire.
    Encrypted,
    /// No alert was queued (the peer's own fatal alert ended the session, or nothing could be sent).
    None,
}
