//! [`Session`]: one client-side TLS connection, over rustls' unbuffered `UnbufferedClientConnection`, as
//! bytes in and bytes out. It owns no socket: [`Session::read`] pulls ciphertext from a source the caller
//! passes in (a socket `recv` in [`super::Stream`], a list of chunks in the tests), and sealed bytes wait in
//! the session until the caller writes them out ([`Session::write_tls_to`]).
//!
//! # The receive path, and what it copies
//!
//! [`Session::read`] lays the unfinished record kept from the last call at the front of a buffer the caller
//! lends (one per worker thread, so no connection holds it), asks the source to fill the rest, and runs the
//! record layer over it: every complete record is decrypted in place in that buffer, and its plaintext copied into
//! the caller's buffer. Only two things are kept in the session between calls: the unfinished record at the
//! end of a read (copied out of the lent buffer), and the part of a record's plaintext that did not fit
//! into the caller's buffer. Both are freed as soon as they are used up, so an idle connection with no
//! partial record holds no receive buffer at all (what rustls' buffered `ClientConnection` cannot do: it
//! keeps its own 4 KiB deframer buffer, reads at most 4 KiB per call, and moves what is left to the front
//! after every call).
//!
//! Who decrypts: rustls runs the handshake (and all of a TLS 1.2 connection); once a TLS 1.3 handshake is
//! done and rustls holds nothing, the session takes the traffic keys from it and opens and seals records
//! itself ([`Traffic`]), so that a record's plaintext is copied once, from where it was decrypted into the
//! caller's buffer. Through rustls 0.23's unbuffered API it would be copied twice: rustls copies every
//! decrypted record into a `Vec` of its own (an allocation per record) before `ReadTraffic` hands it out
//! (in-place `ReadTraffic` is a TODO in rustls). TLS 1.2 keeps that extra copy.
//!
//! # Invariants
//!
//! - rustls reassembles handshake messages in place, so the bytes it has not discarded must be offered
//!   again, at the front and in order, to the next `process_tls_records` call: `incoming` is exactly those
//!   bytes, whichever path (read or seal) calls rustls next.
//! - Plaintext leaves in order: the spill (the rest of a record) goes out before any later record.
//! - A TLS error is fatal and sticky, as in rustls: the alert rustls queued is moved to the outgoing bytes
//!   (flush them before closing the socket), and every later call returns the same error.

use std::io::{self, Write};

use herald::tls::session::{encode, encrypt};
use rustls::client::UnbufferedClientConnection;
use rustls::unbuffered::ConnectionState;
use rustls::{HandshakeKind, ProtocolVersion};

use super::traffic::Traffic;
use super::TlsFailure;

#[cfg(test)]
mod tests;

/// The most one TLS record takes on the wire (header, 16 KiB of plaintext, the largest expansion allowed).
pub const MAX_RECORD: usize = 5 + 16 * 1024 + 256;

/// Most plaintext accepted before the handshake completes (then writes would block), as rustls' buffered
/// connection's default limit.
const EARLY_MAX: usize = 64 * 1024;

/// Who runs the record layer.
enum Phase {
    /// rustls: the handshake, and all of a TLS 1.2 connection.
    Rustls(Box<UnbufferedClientConnection>),
    /// TLS 1.3 once the handshake is done: records opened and sealed by [`Traffic`].
    Traffic(Box<Traffic>),
    /// Only after a failed hand-over from rustls.
    Gone,
}

/// One client-side TLS connection, bytes in and bytes out.
pub struct Session {
    phase: Phase,
    /// What the handshake agreed, kept when rustls hands over.
    agreed: (Option<HandshakeKind>, Option<ProtocolVersion>),
    /// Ciphertext received and not discarded by rustls (an unfinished record); unallocated when empty.
    incoming: Vec<u8>,
    /// `incoming` may also hold whole records: the last read stopped on a full buffer.
    held_records: bool,
    /// Plaintext of a record that did not fit into the caller's buffer, from `spill_pos` on.
    spill: Vec<u8>,
    spill_pos: usize,
    /// Sealed bytes (handshake records, application data, alerts) to send, from `sent` on.
    outgoing: Vec<u8>,
    sent: usize,
    /// Plaintext written before application data could be sent; sealed as soon as it can be.
    early: Vec<u8>,
    /// The source ended or failed after some plaintext had been returned: reported by the next read.
    end: Option<io::Result<()>>,
    /// The server's `close_notify` arrived: no more plaintext will come.
    peer_closed: bool,
    /// The fatal error that ended the session.
    failed: Option<rustls::Error>,
}

impl std::fmt::Debug for Session {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let phase = match &self.phase {
            Phase::Rustls(conn) if conn.is_handshaking() => "handshake",
            Phase::Rustls(_) => "rustls",
            Phase::Traffic(_) => "traffic",
            Phase::Gone => "gone",
        };
        f.debug_struct("Session")
            .field("phase", &phase)
            .field("protocol_version", &self.protocol_version())
            .field("incoming", &self.incoming.len())
            .field("pending_tls", &(self.outgoing.len() - self.sent))
            .field("peer_closed", &self.peer_closed)
            .field("failed", &self.failed)
            .finish()
    }
}

/// Where one pass over the input stopped.
#[derive(Debug, Default)]
pub(super) struct Progress {
    /// Input bytes done with (to drop from the front).
    pub consumed: usize,
    /// Plaintext bytes written to the caller's buffer.
    pub written: usize,
    /// The application data passed in was sealed (otherwise the handshake is not done yet).
    pub sealed: bool,
    /// It stopped because the caller's buffer was full, maybe before whole records.
    pub full: bool,
    /// rustls reached the state in which application data is sent: nothing left for it to do.
    pub idle: bool,
}

impl Session {
    /// A session that will send its client hello on the first [`read`](Self::read) or
    /// [`seal`](Self::seal).
    pub fn new(conn: UnbufferedClientConnection) -> Session {
        Session {
            phase: Phase::Rustls(Box::new(conn)),
            agreed: (None, None),
            incoming: Vec::new(),
            held_records: false,
            spill: Vec::new(),
            spill_pos: 0,
            outgoing: Vec::new(),
            sent: 0,
            early: Vec::new(),
            end: None,
            peer_closed: false,
            failed: None,
        }
    }

    /// Reads plaintext into `out`, pulling ciphertext from `source` (which fills the slice it is given and
    /// returns how much it wrote, `Ok(0)` at the end of the stream, `WouldBlock` when it has nothing now)
    /// into `scratch`, a buffer the caller lends (grown here as needed, its contents not kept).
    ///
    /// Returns what a socket read would: `Ok(n)` with `n > 0` bytes of plaintext, `Ok(0)` at the end of the
    /// stream (the server's `close_notify`, or the source's end), `WouldBlock` when the source has nothing,
    /// the source's own errors, and TLS errors as `InvalidData` carrying a [`TlsFailure`] (the alert for
    /// the server is then queued: flush it).
    ///
    /// A read shorter than `out` means the source was drained, unless [`read_pending`](Self::read_pending)
    /// says the end of the stream (or an error) waits to be reported: as for a plain socket, the caller of
    /// an edge-triggered loop may stop reading there.
    pub fn read(
        &mut self,
        out: &mut [u8],
        scratch: &mut Vec<u8>,
        source: &mut dyn FnMut(&mut [u8]) -> io::Result<usize>,
    ) -> io::Result<usize> {
        if let Some(error) = &self.failed {
            return Err(tls_error(error.clone()));
        }
        let mut n = self.take_spill(out);
        loop {
            if n == out.len() {
                return Ok(n);
            }
            if let Some(end) = self.end.take() {
                if n > 0 {
                    self.end = Some(end);
                    return Ok(n);
                }
                return end.map(|()| 0);
            }
            if self.peer_closed {
                return Ok(n);
            }
            // New bytes go after the kept unfinished record, as much as the caller has room for (plaintext is
            // shorter than its records, so all of it fits), but at least a whole record.
            let held = self.incoming.len();
            let want = (out.len() - n).max(MAX_RECORD);
            if scratch.len() < held + want {
                scratch.resize(held + want, 0);
            }
            let (got, drained) = loop {
                match source(&mut scratch[held..held + want]) {
                    Ok(0) => {
                        self.end = Some(Ok(()));
                        break (0, true);
                    }
                    Ok(got) => break (got, got < want),
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => break (0, true),
                    Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                    Err(e) => {
                        self.end = Some(Err(e));
                        break (0, true);
                    }
                }
            };
            // Nothing new and no whole record kept: nothing to do.
            if got > 0 || self.held_records || self.is_handshaking() {
                let filled = held + got;
                scratch[..held].copy_from_slice(&self.incoming);
                let mut progress = Progress::default();
                if let Err(error) = self.records(&mut scratch[..filled], &mut out[n..], None, &mut progress) {
                    return Err(self.fail(error, &mut scratch[progress.consumed..filled]));
                }
                n += progress.written;
                self.held_records = progress.full;
                self.incoming.clear();
                if progress.consumed < filled && !self.peer_closed {
                    self.incoming.extend_from_slice(&scratch[progress.consumed..filled]);
                } else {
                    // No partial record (or nothing more will be read): give the buffer back.
                    self.incoming = Vec::new();
                }
            }
            if drained && n > 0 {
                return Ok(n);
            }
            if drained && self.end.is_none() && !self.peer_closed {
                return Err(io::ErrorKind::WouldBlock.into());
            }
        }
    }

    /// Whether a [`read`](Self::read) would return something without new input: plaintext kept from a
    /// record larger than the last read's room, the end of the stream or a source error not yet reported.
    pub fn read_pending(&self) -> bool {
        self.spill_pos < self.spill.len() || self.end.is_some() || self.peer_closed
    }

    /// Seals `data` into records, to be sent with [`write_tls_to`](Self::write_tls_to). Before the
    /// handshake completes the plaintext is kept and sealed as soon as it can be (behind the client's
    /// Finished), up to [`EARLY_MAX`] bytes. Returns how much of `data` was taken: all of it, or less (`0`
    /// when full) while the handshake is still under way.
    pub fn seal(&mut self, data: &[u8]) -> io::Result<usize> {
        if let Some(error) = &self.failed {
            return Err(tls_error(error.clone()));
        }
        if let Phase::Traffic(traffic) = &mut self.phase {
            if let Err(error) = traffic.seal(data, &mut self.outgoing) {
                return Err(self.fail(error, &mut []));
            }
            return Ok(data.len());
        }
        let data = if self.is_handshaking() {
            &data[..data.len().min(EARLY_MAX.saturating_sub(self.early.len()))]
        } else {
            data
        };
        // rustls must see the bytes it has not discarded again (handshake messages are joined in place).
        let mut input = std::mem::take(&mut self.incoming);
        let mut progress = Progress::default();
        if let Err(error) = self.records(&mut input, &mut [], Some(data), &mut progress) {
            return Err(self.fail(error, &mut input[progress.consumed..]));
        }
        input.drain(..progress.consumed);
        self.held_records = false;
        if !input.is_empty() {
            self.incoming = input;
        }
        if !progress.sealed {
            self.early.extend_from_slice(data);
        }
        Ok(data.len())
    }

    /// Whether sealed bytes wait to be sent.
    pub fn wants_write(&self) -> bool {
        self.sent < self.outgoing.len()
    }

    /// Writes waiting sealed bytes to `out` with one `write`; returns how many it took. Errors are `out`'s.
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

    /// Full or resumed handshake, once it is complete.
    pub fn handshake_kind(&self) -> Option<HandshakeKind> {
        match &self.phase {
            Phase::Rustls(conn) => conn.handshake_kind(),
            _ => self.agreed.0,
        }
    }

    /// The protocol version negotiated, once known.
    pub fn protocol_version(&self) -> Option<ProtocolVersion> {
        match &self.phase {
            Phase::Rustls(conn) => conn.protocol_version(),
            _ => self.agreed.1,
        }
    }

    /// Whether the handshake is still under way.
    pub fn is_handshaking(&self) -> bool {
        matches!(&self.phase, Phase::Rustls(conn) if conn.is_handshaking())
    }

    /// Whether records are opened and sealed here rather than by rustls (TLS 1.3 after the handshake).
    #[cfg(test)]
    pub fn own_record_layer(&self) -> bool {
        matches!(self.phase, Phase::Traffic(_))
    }

    /// The suite the records are sealed with, once handed over.
    #[cfg(test)]
    pub fn traffic_suite(&self) -> Option<rustls::CipherSuite> {
        match &self.phase {
            Phase::Traffic(traffic) => Some(traffic.suite()),
            _ => None,
        }
    }

    /// Bytes of memory held for received data between reads (an unfinished record, unread plaintext).
    #[cfg(test)]
    pub fn input_held(&self) -> usize {
        self.incoming.capacity() + self.spill.capacity()
    }

    /// Copies kept plaintext into `out`; returns how much.
    fn take_spill(&mut self, out: &mut [u8]) -> usize {
        let rest = &self.spill[self.spill_pos..];
        if rest.is_empty() {
            return 0;
        }
        let n = rest.len().min(out.len());
        out[..n].copy_from_slice(&rest[..n]);
        self.spill_pos += n;
        if self.spill_pos == self.spill.len() {
            self.spill = Vec::new();
            self.spill_pos = 0;
        }
        n
    }

    /// Runs the record layer over `input` (see [`process`](Self::process) and [`Traffic::open`]); once rustls
    /// has finished a TLS 1.3 handshake with nothing held, hands the connection over to [`Traffic`].
    fn records(
        &mut self,
        input: &mut [u8],
        out: &mut [u8],
        app: Option<&[u8]>,
        progress: &mut Progress,
    ) -> Result<(), rustls::Error> {
        match &mut self.phase {
            Phase::Traffic(traffic) => {
                if traffic.open(input, out, &mut self.spill, &mut self.outgoing, progress)? {
                    self.peer_closed = true;
                }
                if let Some(data) = app {
                    traffic.seal(data, &mut self.outgoing)?;
                    progress.sealed = true;
                }
                Ok(())
            }
            Phase::Rustls(_) => {
                self.process(input, out, app, progress)?;
                if progress.idle && progress.consumed == input.len() {
                    self.hand_over()?;
                }
                Ok(())
            }
            Phase::Gone => Err(rustls::Error::General("the connection was lost in the hand-over".into())),
        }
    }

    /// TLS 1.3 after the handshake: takes the traffic secrets from rustls and opens and seals records here
    /// from now on. Called only when rustls is idle (nothing to send, no plaintext queued) and holds nothing
    /// of the input (no handshake message half joined in it), so nothing it knew is lost.
    fn hand_over(&mut self) -> Result<(), rustls::Error> {
        let Phase::Rustls(conn) = &self.phase else { return Ok(()) };
        if conn.is_handshaking()
            || conn.protocol_version() != Some(ProtocolVersion::TLSv1_3)
            || !self.early.is_empty()
            || self.peer_closed
        {
            return Ok(());
        }
        self.agreed = (conn.handshake_kind(), conn.protocol_version());
        let Phase::Rustls(conn) = std::mem::replace(&mut self.phase, Phase::Gone) else { return Ok(()) };
        let (secrets, kernel) = conn.dangerous_into_kernel_connection()?;
        self.phase = Phase::Traffic(Box::new(Traffic::new(secrets, kernel)?));
        Ok(())
    }

    /// Runs rustls over `input` (the bytes it has not discarded yet, then new ones) until it needs more
    /// input, or `out` is full: complete records are decrypted in place in `input`, application data is
    /// copied to `out` (what does not fit to the spill), handshake records and alerts to send go to
    /// `outgoing`, and once application data may be sent, `early` and then `app` are sealed.
    /// `progress` says how far it got, also when it fails.
    fn process(
        &mut self,
        input: &mut [u8],
        out: &mut [u8],
        app: Option<&[u8]>,
        progress: &mut Progress,
    ) -> Result<(), rustls::Error> {
        let Session { phase, outgoing, early, spill, peer_closed, .. } = self;
        let Phase::Rustls(conn) = phase else {
            return Err(rustls::Error::General("bug: rustls called after the hand-over".into()));
        };
        let mut app = app;
        loop {
            if !out.is_empty() && progress.written == out.len() {
                // The caller's buffer is full: the rest waits in `incoming` for the next read.
                progress.full = true;
                break;
            }
            let status = conn.process_tls_records(&mut input[progress.consumed..]);
            let mut discard = status.discard;
            let state = match status.state {
                Ok(state) => state,
                Err(error) => {
                    progress.consumed += discard;
                    return Err(error);
                }
            };
            let more = match state {
                ConnectionState::ReadTraffic(mut traffic) => {
                    while let Some(record) = traffic.next_record() {
                        let record = record?;
                        discard += record.discard;
                        let room = &mut out[progress.written..];
                        let take = record.payload.len().min(room.len());
                        room[..take].copy_from_slice(&record.payload[..take]);
                        progress.written += take;
                        spill.extend_from_slice(&record.payload[take..]);
                    }
                    // With no whole record left, rustls would only say so (application data leaves
                    // nothing to send): spare the call, once per read. The handshake and sealing are
                    // always left to rustls.
                    app.is_some() || conn.is_handshaking() || whole_record_at(&input[progress.consumed + discard..])
                }
                ConnectionState::EncodeTlsData(mut data) => {
                    encode(outgoing, |buf| data.encode(buf))?;
                    true
                }
                ConnectionState::TransmitTlsData(mut transmit) => {
                    // The records are in `outgoing`, which the caller sends in order. Plaintext written
                    // during the handshake goes right behind the client's Finished when it may.
                    if let Some(mut traffic) = transmit.may_encrypt_app_data() {
                        if !early.is_empty() {
                            let early = std::mem::take(early);
                            encrypt(outgoing, &early, |p, b| traffic.encrypt(p, b))?;
                        }
                    }
                    transmit.done();
                    true
                }
                ConnectionState::WriteTraffic(mut traffic) => {
                    progress.idle = true;
                    if !early.is_empty() {
                        let early = std::mem::take(early);
                        encrypt(outgoing, &early, |p, b| traffic.encrypt(p, b))?;
                    }
                    if let Some(data) = app.take() {
                        if !data.is_empty() {
                            encrypt(outgoing, data, |p, b| traffic.encrypt(p, b))?;
                        }
                        progress.sealed = true;
                    }
                    false
                }
                ConnectionState::PeerClosed => {
                    *peer_closed = true;
                    true
                }
                ConnectionState::Closed => {
                    *peer_closed = true;
                    false
                }
                // BlockedHandshake: more input needed. Early data (ReadEarlyData) is a server's; later
                // states are not ours to act on.
                _ => false,
            };
            progress.consumed += discard;
            if !more {
                break;
            }
        }
        Ok(())
    }

    /// Marks the session failed, moves the alert rustls queued behind any unsent output, and builds the
    /// error to return. `input` is what rustls has not discarded of the input it failed on.
    ///
    /// rustls is asked once, not until it has nothing more: after a fatal error its queue holds the alert
    /// alone, and a second call would deframe again, either the same bad record (a second alert, which
    /// rustls asserts against) or, given an empty buffer, handshake messages it had joined in the old one
    /// (a panic inside rustls). The one call gets the same input, so that it is safe whatever is queued.
    fn fail(&mut self, error: rustls::Error, input: &mut [u8]) -> io::Error {
        if self.failed.is_none() {
            match &mut self.phase {
                Phase::Rustls(conn) => {
                    if let Ok(ConnectionState::EncodeTlsData(mut data)) = conn.process_tls_records(input).state {
                        // Nothing to do if it does not encode: the alert is best effort.
                        let _ = encode(&mut self.outgoing, |buf| data.encode(buf));
                    }
                }
                Phase::Traffic(traffic) => traffic.seal_alert(&error, &mut self.outgoing),
                Phase::Gone => {}
            }
            self.failed = Some(error.clone());
            self.incoming = Vec::new();
            self.spill = Vec::new();
            self.spill_pos = 0;
            self.early = Vec::new();
        }
        tls_error(error)
    }
}

/// Whether `bytes` start with a whole record, or with a header rustls must judge (a length no record may
/// have).
fn whole_record_at(bytes: &[u8]) -> bool {
    match bytes {
        [_, _, _, hi, lo, rest @ ..] => {
            let len = usize::from(u16::from_be_bytes([*hi, *lo]));
            rest.len() >= len || len > MAX_RECORD - 5
        }
        _ => false,
    }
}

/// A TLS error as the `io::Error` a [`super::Stream`] returns.
fn tls_error(error: rustls::Error) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, TlsFailure(error))
}
