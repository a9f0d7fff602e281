//! The worker's TLS side: giving a connection accepted on a TLS port its session, counting how handshakes
//! end, sealing a turn's output and writing the records, `close_notify`, alerts, and certificate reloads.
//!
//! The session itself ([`crate::tls::TlsSession`]) is sans-IO; this is where its bytes meet the socket. A TLS
//! connection reads ciphertext into the worker's scratch buffer and decrypts it into its read buffer, then
//! everything above (HTTP, the WebSocket core, limits) runs as for a plain one. On the way out, what the
//! connection queued in the turn is sealed in one go (few records, not one per frame) once the previous
//! records are written (`Worker::write_queued`), so ciphertext never piles up.

use std::io::Write;

use bytes::BytesMut;

use super::conn::{Conn, PEER_EOF, SENDING};
use super::transport::{TlsConn, Transport};
use super::worker::{mark_dirty, Worker};
use crate::broker::index::ConnKey;
use crate::broker::mesh::CertUpdate;
use crate::metrics::{Counters, Metric};
use crate::tls::{TlsError, TlsSession};

/// Why a TLS connection is ended before its time.
#[derive(Debug)]
pub(super) enum Failure {
    /// A TLS protocol error (its alert is queued).
    Tls(TlsError),
    /// The client spoke plain HTTP to the TLS port.
    PlainHttp,
}

/// What a plain-HTTP client on the TLS port is told (in the clear: it speaks nothing else).
const PLAIN_HTTP_ON_TLS: &str = "this port speaks TLS: use https:// or wss://";

impl Worker {
    /// The transport of a connection just accepted: a fresh TLS session on a TLS port. `None` when the
    /// session cannot be set up (logged and counted; the connection is dropped).
    pub(super) fn new_transport(&mut self, tls: bool) -> Option<Transport> {
        let Some(config) = self.tls_config.as_ref().filter(|_| tls) else { return Some(Transport::Plain) };
        match TlsSession::new(config.clone()) {
            Ok(session) => Some(Transport::Tls(Box::new(TlsConn::new(session)))),
            Err(e) => {
                tracing::warn!(worker = self.id, "TLS session setup failed: {e}");
                self.metrics.inc(Metric::TlsOther);
                None
            }
        }
    }

    /// After ciphertext was fed: counts a handshake that just completed, and queues the connection for this
    /// turn's flush when the session has records to send (handshake messages, tickets). Returns true when the
    /// connection is gone.
    pub(super) fn after_tls_read(&mut self, key: ConnKey) -> bool {
        let Some(conn) = self.conns.get_mut(key) else { return true };
        let Some(tls) = conn.transport.tls_mut() else { return false };
        if !tls.counted && !tls.session.is_handshaking() {
            tls.counted = true;
            self.metrics.inc(Metric::TlsOk);
            self.metrics.inc(match tls.session.handshake_kind() {
                Some(rustls::HandshakeKind::Resumed) => Metric::TlsResumed,
                _ => Metric::TlsFull,
            });
            if tls.session.protocol_version() == Some(rustls::ProtocolVersion::TLSv1_2) {
                self.metrics.inc(Metric::Tls12);
            } else {
                self.metrics.inc(Metric::Tls13);
            }
        }
        if tls.session.wants_write() {
            mark_dirty(conn, key, &mut self.dirty);
        }
        false
    }

    /// Ends a TLS connection that failed: counts why, sends the alert rustls queued (or, to a plain-HTTP
    /// client, a plain 400), and closes.
    pub(super) fn end_tls(&mut self, key: ConnKey, failure: Failure) {
        let Some(conn) = self.conns.get_mut(key) else { return };
        match failure {
            Failure::PlainHttp => {
                count_handshake_end(conn, &mut self.metrics, Metric::TlsNotTls);
                // From here on it is a plain connection that gets one answer and a lingering close.
                conn.transport = Transport::Plain;
                self.metrics.sub(Metric::TlsOpen, 1);
                let mut out = Vec::with_capacity(192);
                let body = format!("{PLAIN_HTTP_ON_TLS}\n");
                crate::protocol::handshake::write_response(&mut out, 400, "text/plain", body.as_bytes(), true);
                self.metrics.inc(Metric::Failed400);
                self.finish_with(key, out, true);
            }
            Failure::Tls(e) => {
                let handshaking = conn.transport.is_handshaking();
                if handshaking {
                    count_handshake_end(conn, &mut self.metrics, Metric::tls_failure(e.reason()));
                } else {
                    self.metrics.inc(Metric::TlsErrors);
                }
                tracing::debug!(worker = self.id, key, peer = %conn.ip, handshaking, "TLS failed: {e}");
                if let Some(tls) = conn.transport.tls_mut().filter(|_| conn.flags & SENDING == 0) {
                    // The alert goes out best effort; the client learns why, the worker does not wait (nor
                    // writes past a send still in flight, which the alert would cut into).
                    write_all_now(&mut tls.session, &mut conn.stream);
                }
                let _ = conn.stream.shutdown(std::net::Shutdown::Write);
                self.close_now(key);
            }
        }
    }

    /// With `proxy_protocol` on a TLS port, the PROXY header was read in the clear; what followed it in the
    /// read buffer is the start of the TLS handshake, decrypted here. Returns false when there is nothing
    /// (more) to process now.
    pub(super) fn feed_after_proxy(&mut self, key: ConnKey) -> bool {
        let Some(conn) = self.conns.get_mut(key) else { return false };
        let Some(tls) = conn.transport.tls_mut() else { return true };
        let raw = std::mem::take(&mut conn.rbuf);
        let mut plain = BytesMut::new();
        let fed = tls.feed(&raw, &mut plain);
        conn.rbuf = plain;
        if let Err(e) = fed {
            self.end_tls(key, Failure::Tls(e));
            return false;
        }
        let peer_closed = tls.session.peer_closed();
        if self.after_tls_read(key) {
            return false;
        }
        if peer_closed {
            if let Some(conn) = self.conns.get_mut(key) {
                conn.flags |= PEER_EOF;
            }
        }
        self.conns.get(key).is_some_and(|c| !c.rbuf.is_empty())
    }

    /// Before a TLS connection's write side is shut down: queues our `close_notify` (once) and writes it.
    /// Returns false when the connection was closed by a failed write.
    pub(super) fn say_close_notify(&mut self, key: ConnKey) -> bool {
        let Some(conn) = self.conns.get_mut(key) else { return false };
        let Some(tls) = conn.transport.tls_mut() else { return true };
        if tls.notified || tls.session.is_failed() {
            return true;
        }
        tls.notified = true;
        tls.session.close();
        self.write_queued(key)
    }

    /// A connection is being dropped: a TLS handshake still under way ends here (the client left, or was
    /// closed for a limit or a timeout already counted), and the TLS gauge goes down.
    pub(super) fn tls_gone(&mut self, key: ConnKey) {
        let Some(conn) = self.conns.get_mut(key) else { return };
        if let Transport::Tls(_) = conn.transport {
            count_handshake_end(conn, &mut self.metrics, Metric::TlsEof);
            self.metrics.sub(Metric::TlsOpen, 1);
        }
    }

    /// Puts a reloaded certificate in force for new handshakes (connections keep the session they have).
    pub(super) fn take_certificate(&mut self, update: CertUpdate) {
        let counter = match update {
            CertUpdate::New(config) => {
                if self.tls_config.is_some() {
                    self.tls_config = Some(config);
                }
                Metric::TlsReloadOk
            }
            CertUpdate::Failed => Metric::TlsReloadFailed,
        };
        // Every worker hears of a reload; it is counted once.
        if self.id == 0 {
            self.metrics.inc(counter);
        }
    }
}

/// Counts how a TLS handshake ended with `metric`, once, if `conn` is a TLS connection still handshaking.
pub(super) fn count_handshake_end(conn: &mut Conn, metrics: &mut Counters, metric: Metric) {
    if let Some(tls) = conn.transport.tls_mut() {
        if !tls.counted && tls.session.is_handshaking() {
            tls.counted = true;
            metrics.inc(metric);
        }
    }
}

/// A last answer written straight to the socket, best effort, just before the connection is dropped (a 408
/// or 503): in the clear, or sealed with our `close_notify` after it. Nothing is sent to a TLS client still
/// in its handshake (it could not read it).
pub(super) fn write_last_words(conn: &mut Conn, words: &[u8]) {
    if conn.flags & SENDING != 0 {
        // A send is in flight (uring): these bytes would cut into it.
        return;
    }
    match &mut conn.transport {
        Transport::Plain => {
            let _ = conn.stream.write(words);
        }
        Transport::Tls(tls) => {
            if tls.session.is_handshaking() || tls.session.is_failed() {
                return;
            }
            if tls.session.sealer().write_all(words).is_ok() {
                tls.session.close();
                tls.notified = true;
                write_all_now(&mut tls.session, &mut conn.stream);
            }
        }
    }
}

/// A TLS connection about to say its last: seals what its outbox holds (the close frame, the last HTTP
/// answer) and queues `close_notify` behind it, so the next write sends both. Returns false when sealing
/// failed (the session is broken: close). Plain connections, and a session that has already said it or
/// cannot, are left as they are.
pub(super) fn seal_last_words(conn: &mut Conn) -> bool {
    let Some(tls) = conn.transport.tls_mut() else { return true };
    if tls.notified || tls.session.is_failed() || tls.session.is_handshaking() || conn.flags & SENDING != 0 {
        return true;
    }
    if conn.outbox.write_to(&mut tls.session.sealer()).is_err() {
        return false;
    }
    tls.notified = true;
    tls.session.close();
    true
}

/// Writes what the session has queued, until it is empty or the socket takes no more.
fn write_all_now(session: &mut TlsSession, out: &mut dyn Write) {
    while session.wants_write() {
        if !matches!(session.write_tls_to(out), Ok(n) if n > 0) {
            break;
        }
    }
}
