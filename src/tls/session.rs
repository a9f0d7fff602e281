//! [`TlsSession`]: one server-side TLS connection as a sans-IO transport over rustls' unbuffered
//! `UnbufferedServerConnection`, whose buffers are all the session's own and none is kept while idle.
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
//!    for an outbox whose first frame is partly written), into as few records as fit, 16 KiB of plaintext
//!    each, instead of one record per frame. On TLS 1.3 herald's record layer ([`Traffic`]) gathers the
//!    frames straight behind each record header and seals them in place; during the handshake and on TLS
//!    1.2 they are joined in a per-thread buffer for rustls, which encrypts one slice at a time. Seal only when
//!    [`TlsSession::pending_tls`] is (nearly) zero: a peer that does not read then leaves plaintext in the
//!    outbox, where the slow-consumer limits already apply, rather than ciphertext piling up here.
//! 3. **Ciphertext out.** While [`TlsSession::wants_write`], hand the records to the socket:
//!    [`TlsSession::write_tls_to`] with the socket as the `io::Write` makes one `write` of every pending
//!    record (they sit in one buffer, freed once written); [`TlsSession::drain_tls_into`] instead appends
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

use std::cell::RefCell;
use std::io::{self, IoSlice, Write};
use std::sync::Arc;

use bytes::{Bytes, BytesMut};
use rustls::server::UnbufferedServerConnection;
use rustls::unbuffered::{ConnectionState, EncodeError, EncryptError, InsufficientSizeError};
use rustls::{AlertDescription, HandshakeKind, ProtocolVersion, ServerConfig};

use super::traffic::{Opened, Traffic};
use super::{record, TlsError};

/// Largest plaintext in one record, and the most a record adds to it (header, content type, nonce, tag).
const MAX_FRAGMENT: usize = 16 * 1024;
const RECORD_OVERHEAD: usize = 64;

thread_local! {
    /// Where a turn's frames are joined before they are encrypted (rustls encrypts one slice at a time). One
    /// per worker thread, reused, so no connection holds it.
    static JOIN: RefCell<Vec<u8>> = const { RefCell::new(Vec::new()) };
}

/// One server-side TLS connection, bytes in and bytes out.
///
/// Built on rustls' unbuffered API, so every buffer is this struct's and none is kept while idle, where the
/// buffered `ServerConnection` keeps a 4 KiB read buffer for life. Once a TLS 1.3 handshake is done rustls
/// hands the traffic keys over and herald's own record layer ([`Traffic`]) seals and opens the records;
/// TLS 1.2 stays with rustls throughout.
pub struct TlsSession {
    state: State,
    /// Ciphertext received and not yet processed (an unfinished record); no allocation when empty.
    incoming: Vec<u8>,
    /// Ciphertext to send, from `sent` on; no allocation once everything is sent.
    outgoing: Vec<u8>,
    sent: usize,
    /// Plaintext sealed before the handshake completed; encrypted as soon as it does.
    early: Vec<u8>,
    /// `close` was asked for before application data could be sent.
    close_pending: bool,
    close_sent: bool,
    failed: bool,
    peer_closed: bool,
    /// The configuration lets rustls hand TLS 1.3 traffic keys over (`enable_secret_extraction`).
    handover: bool,
}

impl std::fmt::Debug for TlsSession {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TlsSession")
            .field("handshaking", &self.is_handshaking())
            .field("protocol_version", &self.protocol_version())
            .field("failed", &self.failed)
            .field("peer_closed", &self.peer_closed)
            .finish()
    }
}

/// Who runs the records: rustls (the handshake, and TLS 1.2 for good) or herald's TLS 1.3 record layer.
/// Both boxed, so the session is small and the handshake's state is freed once it is over.
enum State {
    Rustls(Box<UnbufferedServerConnection>),
    Traffic {
        traffic: Box<Traffic>,
        kind: Option<HandshakeKind>,
        http11: bool,
    },
    /// rustls could not hand over (it cannot happen with herald's configuration); the session failed.
    Gone,
}

/// The only ALPN protocol herald offers (`certs::server_config_with`).
const HTTP11: &[u8] = b"http/1.1";

/// What one step of the state machine asks for next.
enum Step {
    /// Call rustls again (more records, more output).
    Again,
    /// Nothing more until new input or new plaintext.
    Idle,
}

impl TlsSession {
    /// A new server-side session awaiting the client hello.
    pub fn new(config: Arc<ServerConfig>) -> Result<Self, TlsError> {
        let handover = config.enable_secret_extraction;
        let conn = UnbufferedServerConnection::new(config).map_err(TlsError::Setup)?;
        Ok(Self {
            handover,
            state: State::Rustls(Box::new(conn)),
            incoming: Vec::new(),
            outgoing: Vec::new(),
            sent: 0,
            early: Vec::new(),
            close_pending: false,
            close_sent: false,
            failed: false,
            peer_closed: false,
        })
    }

    /// Runs rustls over all of `ciphertext` (bytes read from the socket) and appends the decrypted
    /// application data to `plaintext`. Returns how many plaintext bytes were appended.
    ///
    /// Records may be split anywhere across calls; a partial record waits here for the rest. Bytes after
    /// the peer's `close_notify` are ignored. On a protocol error the alert for the peer is queued (see
    /// [`TlsError::Protocol`]) and plaintext decrypted before the error stays in `plaintext`.
    pub fn feed(&mut self, ciphertext: &[u8], plaintext: &mut BytesMut) -> Result<usize, TlsError> {
        if self.failed {
            return Err(TlsError::Failed);
        }
        let start = plaintext.len();
        if matches!(self.state, State::Traffic { .. }) {
            if !self.peer_closed {
                self.open(ciphertext, plaintext)?;
            }
            return Ok(plaintext.len() - start);
        }
        if !self.peer_closed {
            self.incoming.extend_from_slice(ciphertext);
        }
        let result = self.drive(plaintext, None);
        if self.incoming.is_empty() {
            // No partial record: give the buffer back.
            self.incoming = Vec::new();
        }
        result?;
        Ok(plaintext.len() - start)
    }

    /// Encrypts a whole turn's queued frames in one go, so they share records (16 KiB of plaintext each).
    /// Before the handshake completes the plaintext is kept and sent once it does. Returns the number of
    /// plaintext bytes taken (always all of them).
    pub fn seal(&mut self, frames: &[Bytes]) -> Result<usize, TlsError> {
        let slices: Vec<IoSlice<'_>> = frames.iter().map(|f| IoSlice::new(f)).collect();
        self.seal_slices(&slices)
    }

    /// [`seal`](Self::seal) for borrowed slices: an outbox whose first frame is partly consumed, or frames
    /// that are not `Bytes`.
    pub fn seal_slices(&mut self, slices: &[IoSlice<'_>]) -> Result<usize, TlsError> {
        if self.failed {
            return Err(TlsError::Failed);
        }
        let total: usize = slices.iter().map(|s| s.len()).sum();
        if total == 0 {
            return Ok(0);
        }
        if let State::Traffic { traffic, .. } = &mut self.state {
            let sealed = traffic.seal(&mut self.outgoing, slices);
            return match sealed {
                Ok(()) => Ok(total),
                Err(error) => Err(self.fail(error)),
            };
        }
        JOIN.with(|join| {
            let mut join = join.borrow_mut();
            join.clear();
            for s in slices {
                join.extend_from_slice(s);
            }
            self.drive(&mut BytesMut::new(), Some(&join))
        })?;
        Ok(total)
    }

    /// The session as an `io::Write` that seals: `outbox.write_to(&mut tls.sealer())` moves a whole outbox
    /// (one `write_vectored` of its frames) into records, and the outbox drops exactly what was taken, as it
    /// does after a `writev` to a plain socket. Errors come back as `io::ErrorKind::InvalidData`.
    pub fn sealer(&mut self) -> Sealer<'_> {
        Sealer(self)
    }

    /// Queues our `close_notify` (once the handshake is done, if it is not yet). Flush it with
    /// [`write_tls_to`](Self::write_tls_to) before closing the socket.
    pub fn close(&mut self) {
        if self.failed || self.close_sent {
            return;
        }
        self.close_pending = true;
        if let State::Traffic { traffic, .. } = &mut self.state {
            self.close_sent = true;
            if let Err(error) = traffic.close_notify(&mut self.outgoing) {
                let _ = self.fail(error);
            }
            return;
        }
        let _ = self.drive(&mut BytesMut::new(), None);
    }

    /// Whether ciphertext (handshake records, sealed data, an alert, `close_notify`) waits to be sent.
    pub fn wants_write(&self) -> bool {
        self.sent < self.outgoing.len()
    }

    /// How many bytes of ciphertext wait to be sent.
    pub fn pending_tls(&self) -> usize {
        self.outgoing.len() - self.sent
    }

    /// Writes pending ciphertext to `out` with one `write` (one system call when `out` is a socket). Returns
    /// the bytes written; call again while [`wants_write`](Self::wants_write) and `out` accepts more. Errors
    /// are `out`'s own (`WouldBlock` included).
    pub fn write_tls_to(&mut self, out: &mut dyn Write) -> io::Result<usize> {
        if !self.wants_write() {
            return Ok(0);
        }
        let n = out.write(&self.outgoing[self.sent..])?;
        self.sent += n;
        if self.sent == self.outgoing.len() {
            // All out: an idle connection keeps no output buffer.
            self.outgoing = Vec::new();
            self.sent = 0;
        }
        Ok(n)
    }

    /// Appends all pending ciphertext to `out`, a buffer the caller owns (pooled, or handed to io_uring until
    /// the write completes). Returns the bytes appended.
    pub fn drain_tls_into(&mut self, out: &mut Vec<u8>) -> usize {
        let n = self.pending_tls();
        out.extend_from_slice(&self.outgoing[self.sent..]);
        self.outgoing = Vec::new();
        self.sent = 0;
        n
    }

    /// Whether the handshake is still under way (true from creation until the handshake completes).
    pub fn is_handshaking(&self) -> bool {
        match &self.state {
            State::Rustls(conn) => conn.is_handshaking(),
            State::Traffic { .. } | State::Gone => false,
        }
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
        match &self.state {
            State::Rustls(conn) => conn.protocol_version(),
            State::Traffic { .. } => Some(ProtocolVersion::TLSv1_3),
            State::Gone => None,
        }
    }

    /// Full or resumed handshake, once the handshake is complete.
    pub fn handshake_kind(&self) -> Option<HandshakeKind> {
        match &self.state {
            State::Rustls(conn) => conn.handshake_kind(),
            State::Traffic { kind, .. } => *kind,
            State::Gone => None,
        }
    }

    /// The ALPN protocol agreed, if the client offered one.
    pub fn alpn_protocol(&self) -> Option<&[u8]> {
        match &self.state {
            State::Rustls(conn) => conn.alpn_protocol(),
            State::Traffic { http11, .. } => http11.then_some(HTTP11),
            State::Gone => None,
        }
    }

    /// Herald's TLS 1.3 record layer, once the handshake handed over to it (tests set its limits).
    #[cfg(test)]
    pub(crate) fn traffic_mut(&mut self) -> Option<&mut Traffic> {
        match &mut self.state {
            State::Traffic { traffic, .. } => Some(traffic),
            _ => None,
        }
    }

    /// Memory held for input: an unfinished record (what a slow or stalled client makes the server keep).
    pub fn input_held(&self) -> usize {
        self.incoming.capacity()
    }

    /// Runs rustls' state machine over `incoming` until it needs more input: decrypted data goes to
    /// `plaintext`, records to send go to `outgoing`, and once application data may be sent, what waits
    /// (`early`, then `app`, then a pending `close_notify`) is encrypted.
    fn drive(&mut self, plaintext: &mut BytesMut, app: Option<&[u8]>) -> Result<(), TlsError> {
        let State::Rustls(conn) = &mut self.state else { return Err(TlsError::Failed) };
        let mut app = app;
        let mut established = false;
        // Processed input is dropped once at the end (draining after each record would move the rest of a
        // large read again for every small record in it).
        let mut consumed = 0;
        let result = loop {
            let status = conn.process_tls_records(&mut self.incoming[consumed..]);
            let discard = status.discard;
            let step = match status.state {
                Err(error) => Err(error),
                Ok(ConnectionState::ReadTraffic(mut records)) => {
                    let mut result = Ok(Step::Again);
                    while let Some(record) = records.next_record() {
                        match record {
                            Ok(record) => plaintext.extend_from_slice(record.payload),
                            Err(e) => {
                                result = Err(e);
                                break;
                            }
                        }
                    }
                    result
                }
                Ok(ConnectionState::EncodeTlsData(mut data)) => {
                    encode(&mut self.outgoing, |buf| data.encode(buf)).map(|()| Step::Again)
                }
                Ok(ConnectionState::TransmitTlsData(transmit)) => {
                    // The records are in `outgoing`, which the caller sends in order.
                    transmit.done();
                    Ok(Step::Again)
                }
                Ok(ConnectionState::WriteTraffic(mut traffic)) => {
                    let mut result: Result<(), rustls::Error> = Ok(());
                    if !self.early.is_empty() {
                        let early = std::mem::take(&mut self.early);
                        result = encrypt(&mut self.outgoing, &early, |p, b| traffic.encrypt(p, b));
                    }
                    if let (Some(data), Ok(_)) = (app.take(), &result) {
                        result = encrypt(&mut self.outgoing, data, |p, b| traffic.encrypt(p, b));
                    }
                    if self.close_pending && !self.close_sent && result.is_ok() {
                        self.close_sent = true;
                        result = encrypt(&mut self.outgoing, &[], |_, b| traffic.queue_close_notify(b));
                    }
                    established = true;
                    result.map(|()| Step::Idle)
                }
                Ok(ConnectionState::PeerClosed) => {
                    self.peer_closed = true;
                    Ok(Step::Again)
                }
                Ok(ConnectionState::Closed) => {
                    self.peer_closed = true;
                    Ok(Step::Idle)
                }
                Ok(ConnectionState::BlockedHandshake) => Ok(Step::Idle),
                // Early data is not enabled (ServerConfig::max_early_data_size is 0), and later states are
                // not ours to act on.
                Ok(_) => Ok(Step::Idle),
            };
            consumed += discard;
            match step {
                Ok(Step::Again) => {}
                Ok(Step::Idle) => break Ok(()),
                Err(error) => break Err(error),
            }
        };
        self.incoming.drain(..consumed);
        if let Err(error) = result {
            return Err(self.fail(error));
        }
        if let Some(data) = app {
            // Still handshaking: kept until application data may be sent.
            self.early.extend_from_slice(data);
        }
        if established && self.handover {
            self.hand_over()?;
        }
        Ok(())
    }

    /// Once a TLS 1.3 handshake is done and rustls has nothing of its own left to send, takes the traffic
    /// keys from rustls and runs the records with [`Traffic`] from here on.
    fn hand_over(&mut self) -> Result<(), TlsError> {
        let State::Rustls(conn) = &self.state else { return Ok(()) };
        if conn.is_handshaking() || conn.protocol_version() != Some(ProtocolVersion::TLSv1_3) {
            return Ok(());
        }
        let kind = conn.handshake_kind();
        let http11 = conn.alpn_protocol() == Some(HTTP11);
        let State::Rustls(conn) = std::mem::replace(&mut self.state, State::Gone) else { return Ok(()) };
        let traffic =
            conn.dangerous_into_kernel_connection().and_then(|(secrets, kernel)| Traffic::new(secrets, kernel));
        match traffic {
            Ok(traffic) => {
                self.state = State::Traffic { traffic: Box::new(traffic), kind, http11 };
                Ok(())
            }
            Err(error) => {
                self.failed = true;
                self.incoming = Vec::new();
                Err(TlsError::Protocol { error, alert: AlertSent::None })
            }
        }
    }

    /// [`feed`](Self::feed) for herald's record layer: records are opened straight from `ciphertext` when
    /// nothing is left over from the last read, and only a partial record at the end is kept.
    fn open(&mut self, ciphertext: &[u8], plaintext: &mut BytesMut) -> Result<(), TlsError> {
        let State::Traffic { traffic, .. } = &mut self.state else { return Err(TlsError::Failed) };
        let result = if self.incoming.is_empty() {
            let (used, result) = traffic.open(ciphertext, plaintext, &mut self.outgoing);
            if matches!(result, Ok(Opened::More)) {
                self.incoming.extend_from_slice(&ciphertext[used..]);
            }
            result
        } else {
            self.incoming.extend_from_slice(ciphertext);
            let (used, result) = traffic.open(&self.incoming, plaintext, &mut self.outgoing);
            self.incoming.drain(..used);
            result
        };
        match result {
            Ok(Opened::More) => {}
            Ok(Opened::PeerClosed) => {
                self.peer_closed = true;
                self.incoming = Vec::new();
            }
            Err(failure) => return Err(self.fail_traffic(failure.error, failure.alert)),
        }
        if self.incoming.is_empty() {
            self.incoming = Vec::new();
        }
        Ok(())
    }

    /// Marks a session on herald's record layer failed and queues the alert owed (encrypted, as every TLS
    /// 1.3 alert after the handshake).
    fn fail_traffic(&mut self, error: rustls::Error, alert: Option<AlertDescription>) -> TlsError {
        if self.failed {
            return TlsError::Failed;
        }
        self.failed = true;
        self.incoming = Vec::new();
        let mut sent = AlertSent::None;
        if let (Some(description), State::Traffic { traffic, .. }) = (alert, &mut self.state) {
            if traffic.alert(&mut self.outgoing, description).is_ok() {
                sent = AlertSent::Encrypted;
            }
        }
        TlsError::Protocol { error, alert: sent }
    }

    /// Marks the session failed, queues the alert rustls prepared behind any unsent output, and builds the
    /// error (which tells which alert, as far as the record shows it).
    fn fail(&mut self, error: rustls::Error) -> TlsError {
        if self.failed {
            return TlsError::Failed;
        }
        let State::Rustls(conn) = &mut self.state else {
            return self.fail_traffic(error, Some(AlertDescription::InternalError));
        };
        self.failed = true;
        let before = self.outgoing.len();
        // After a fatal error rustls hands out what the failing call queued (the alert) before it looks at the
        // input again, so it is asked exactly once. Once more would deframe the bad bytes again (a second
        // fatal alert: rustls' debug assertion). And it is given the unprocessed input, not an empty
        // buffer: it may still hold the rest of a record it had started on (more handshake messages behind
        // the one that failed) as positions in that input, and indexed past an empty buffer (a panic, which
        // the release build turns into an abort).
        let status = conn.process_tls_records(&mut self.incoming);
        if let Ok(ConnectionState::EncodeTlsData(mut data)) = status.state {
            let _ = encode(&mut self.outgoing, |buf| data.encode(buf));
        }
        self.incoming = Vec::new();
        let alert = match error {
            // rustls answers a peer's fatal alert with nothing.
            rustls::Error::AlertReceived(_) => AlertSent::None,
            _ => record::last_alert(&self.outgoing[before..]),
        };
        TlsError::Protocol { error, alert }
    }
}

/// Appends one handshake record (or alert) from rustls to `out`, growing it to the size rustls asks for.
/// (loadgen's unbuffered client uses it too.)
pub fn encode(
    out: &mut Vec<u8>,
    mut encode: impl FnMut(&mut [u8]) -> Result<usize, EncodeError>,
) -> Result<(), rustls::Error> {
    let start = out.len();
    let mut room = 2048;
    loop {
        out.resize(start + room, 0);
        match encode(&mut out[start..]) {
            Ok(n) => {
                out.truncate(start + n);
                return Ok(());
            }
            Err(EncodeError::InsufficientSize(InsufficientSizeError { required_size })) if required_size > room => {
                room = required_size;
            }
            Err(e) => {
                out.truncate(start);
                return Err(rustls::Error::General(format!("encoding a TLS record: {e}")));
            }
        }
    }
}

/// Appends the records of `data` (or a `close_notify`) to `out`: room is made for every record's overhead,
/// then rustls encrypts straight into it. (loadgen's unbuffered client uses it too.)
pub fn encrypt(
    out: &mut Vec<u8>,
    data: &[u8],
    mut encrypt: impl FnMut(&[u8], &mut [u8]) -> Result<usize, EncryptError>,
) -> Result<(), rustls::Error> {
    let start = out.len();
    let mut room = data.len() + (data.len() / MAX_FRAGMENT + 1) * RECORD_OVERHEAD;
    loop {
        out.resize(start + room, 0);
        match encrypt(data, &mut out[start..]) {
            Ok(n) => {
                out.truncate(start + n);
                return Ok(());
            }
            Err(EncryptError::InsufficientSize(InsufficientSizeError { required_size })) if required_size > room => {
                room = required_size;
            }
            Err(e) => {
                out.truncate(start);
                return Err(rustls::Error::General(format!("encrypting TLS records: {e}")));
            }
        }
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
