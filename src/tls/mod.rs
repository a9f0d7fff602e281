//! TLS for herald's listeners (`wss://`, `https://`), as a sans-IO transport below the connection logic.
//!
//! rustls (with its `ring` provider) does the protocol; this module owns only bytes. Nothing here opens a
//! socket, spawns a thread or reads the clock, so the mio workers and a future io_uring driver drive the same
//! code, and tests drive it in memory against a real `rustls::ClientConnection`.
//!
//! - [`certs`]: `cert_file` + `key_file` (PEM) -> a checked `rustls::ServerConfig` (TLS 1.3 and 1.2, ALPN
//!   `http/1.1`, session tickets), with errors that name the file.
//! - [`session`]: [`TlsSession`], one connection: ciphertext in, plaintext out, a turn's frames sealed into
//!   few records, ciphertext out for one `write` or a caller-owned buffer.
//! - [`traffic`]: herald's own TLS 1.3 record layer, which takes over from rustls once a handshake is done
//!   (rustls keeps the key schedule): a turn's frames are gathered straight into one record and sealed in
//!   place.
//! - [`record`]: reading TLS record headers (which alert was sent; record counts for tests and metrics).
//!
//! # How the worker uses it
//!
//! **Where it sits.** `server::conn::Conn` has one field for it, `transport: server::transport::Transport`
//! (`Plain`, or `Tls(Box<TlsConn>)`): one pointer wide with `Plain` in the null niche, so a plain connection
//! pays 8 bytes and no heap. Everything above the transport (phases, HTTP parsing, the WebSocket core,
//! outbox, auth, limits) is shared; the listener that accepted the socket decides the variant
//! (`server::worker::admit`), and `server::secure` holds the worker's TLS side.
//!
//! **Read path.** `read_conn` reads ciphertext into a per-worker scratch buffer and feeds it to the session,
//! which appends plaintext to the connection's (pooled) read buffer; `process` then runs unchanged. The first
//! bytes are sniffed: plain HTTP on the TLS port gets a plain 400 saying so. A protocol error counts its
//! reason, sends the alert and closes; `close_notify` from the peer is EOF. With `proxy_protocol`, the PROXY
//! header is read in the clear first and what follows it is fed to the session.
//!
//! **Write path.** `Worker::write_queued`: for a TLS connection, pending records are written first
//! (`write_tls_to`: one `write` of all of them); only when none are pending is the whole outbox sealed
//! (`outbox.write_to(&mut sealer())`: one `write_vectored` of up to `IOV_MAX` frames, so a fan-out turn of many small frames becomes one or a few
//! records). A peer that stops reading therefore leaves plaintext in the outbox, where `max_backpressure`,
//! read pausing and the slow-consumer policy apply unchanged. WRITABLE interest follows the outbox and the
//! pending records. Before the write side is shut down, `close_notify` is queued and flushed.
//!
//! **Buffers.** The session is built on rustls' unbuffered API, so every buffer is the session's: an
//! unfinished incoming record (counted in the worker's receive budget), the records waiting for the socket
//! (one buffer per turn, freed once written) and plaintext sealed before the handshake ended. None is kept
//! while idle. An idle established TLS 1.3 session is its traffic keys and rustls' key schedule (about
//! 2.2 KB; the connection costs 2.7 KB in all); rustls' buffered `ServerConnection` kept 7.5 KB (a 4 KiB read buffer for
//! life); tuning.md has the figures. `drain_tls_into` is for the io_uring driver (a pooled buffer the ring
//! owns until the write completes).
//!
//! **Timeouts.** The TLS handshake runs inside `Phase::Http { deadline }`: `handshake_timeout` covers TCP
//! accept -> TLS handshake -> HTTP upgrade, so a stalled or slowloris TLS client is closed by the same `tick`
//! sweep as a slow HTTP head, without an HTTP 408 (it could not read one). `TlsSession` reads no clock.
//!
//! **Metrics:** `herald_tls_handshakes_total{result}` (`ok`, each [`TlsError::reason`], `timeout`, `eof`,
//! `not_tls`, `refused`), `herald_tls_connections` (gauge), `herald_tls_protocol_total{version}`,
//! `herald_tls_sessions_total{kind=full|resumed}`, `herald_tls_errors_total` (after the handshake),
//! `herald_tls_cert_reloads_total{result}`.
//!
//! **Reload.** On SIGHUP `server::ServerHandle::cert_reloader` redoes the file checks and builds a fresh
//! configuration with the same ticketer (clients' tickets stay valid); every worker swaps it in for new
//! accepts, existing sessions keep theirs. A failed reload keeps the old certificate and is counted.

pub mod certs;
pub mod random;
pub mod record;
pub mod session;
pub mod traffic;

#[cfg(test)]
mod tests;
#[cfg(test)]
mod testutil;
#[cfg(test)]
mod traffic_tests;

pub use certs::{server_config, CertError};
pub use session::{AlertSent, Sealer, TlsSession};

/// Why a [`TlsSession`] could not go on.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    /// A TLS protocol error: fatal for this connection. `alert` says what was queued for the peer; flush it
    /// with [`TlsSession::write_tls_to`] before closing the socket.
    #[error("TLS error: {error} (alert sent: {alert:?})")]
    Protocol {
        /// rustls' description of the failure; [`TlsError::reason`] condenses it for metrics.
        error: rustls::Error,
        /// The alert queued for the peer.
        alert: AlertSent,
    },
    /// The session already failed; nothing more is processed.
    #[error("TLS session already failed")]
    Failed,
    /// rustls refused to buffer more (cannot happen while the caller drains as documented).
    #[error("TLS buffer refused data: {0}")]
    Backpressure(String),
    /// rustls could not create the connection from the configuration.
    #[error("TLS session setup: {0}")]
    Setup(rustls::Error),
}

impl TlsError {
    /// A short, fixed label for metrics (`herald_tls_handshakes_total{result=...}` and the like).
    pub fn reason(&self) -> &'static str {
        use rustls::Error as E;
        match self {
            TlsError::Protocol { error, .. } => match error {
                E::InvalidMessage(_) => "invalid_message",
                E::PeerIncompatible(_) => "incompatible",
                E::PeerMisbehaved(_) => "misbehaved",
                E::NoApplicationProtocol => "no_alpn",
                E::AlertReceived(_) => "alert_received",
                E::DecryptError => "decrypt_error",
                E::InappropriateMessage { .. } | E::InappropriateHandshakeMessage { .. } => "unexpected_message",
                _ => "other",
            },
            TlsError::Failed => "failed",
            TlsError::Backpressure(_) => "backpressure",
            TlsError::Setup(_) => "setup",
        }
    }
}
