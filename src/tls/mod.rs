//! TLS for herald's listeners (`wss://`, `https://`), as a sans-IO transport below the connection logic.
//!
//! rustls (with its `ring` provider) does the protocol; this module owns only bytes. Nothing here opens a
//! socket, spawns a thread or reads the clock, so the mio workers and a future io_uring driver drive the same
//! code, and tests drive it in memory against a real `rustls::ClientConnection`.
//!
//! - [`certs`]: `cert_file` + `key_file` (PEM) -> a checked `rustls::ServerConfig` (TLS 1.3 and 1.2, ALPN
//!   `http/1.1`, session tickets), with errors that name the file.
//! - [`session`]: [`TlsSession`], one connection: ciphertext in, plaintext out, a turn's frames sealed into
//!   few records, ciphertext out for one `writev` or a caller-owned buffer.
//! - [`record`]: reading TLS record headers (which alert was sent; record counts for tests and metrics).
//!
//! # How the worker will use it (design note; not wired yet)
//!
//! **Where it sits.** `server::conn::Conn` gains one field, `transport: Transport`, with
//! `enum Transport { Plain, Tls(Box<TlsSession>) }`. The box makes the enum one pointer wide with `Plain` in
//! the null niche: a plain connection pays 8 bytes in `Conn` and no heap. A `TlsSession` is ~1.2 KB
//! (`rustls::ServerConnection` is 1168 B) plus rustls' heap buffers. Everything above the transport (phases,
//! HTTP parsing, the WebSocket core, outbox, auth, limits) is shared: a TLS connection differs only in how
//! bytes cross the socket. The listener that accepted the socket decides the variant in `admit`.
//!
//! **Read path.** `read_conn` reads the socket as today, but for `Tls` into a per-worker scratch buffer
//! (ciphertext is dead once fed), then `session.feed(&scratch[..n], &mut conn.rbuf)`; from there `process`
//! runs unchanged on `rbuf`. `feed` returning 0 plaintext bytes is normal (handshake records, a partial
//! record). After `feed`, if `session.wants_write()` (handshake messages, tickets, an alert) the connection is
//! marked dirty so this turn's flush sends them. `Err(TlsError::Protocol)`: count the reason, flush the alert,
//! close. `peer_closed()` is treated like EOF (`PEER_EOF`). `rbuf` keeps its pool discipline: plaintext is
//! what the receive-memory accounting counts; ciphertext is never held beyond rustls' partial record.
//!
//! **Write path.** `flush_conn` for `Tls`: if `session.pending_tls()` is below a watermark (0 or one record),
//! `conn.outbox.write_to(&mut session.sealer())` moves the whole turn's queue (one `write_vectored` of up to
//! `IOV_MAX` frames) into records, so a fan-out turn of many small frames is one or a few records, and the
//! outbox's byte count drops as if written; then `session.write_tls_to(&mut conn.stream)` until `WouldBlock`
//! or `!wants_write()`: each call is one `writev` of up to 64 records from rustls' buffers. `WRITE_WAIT` and
//! the WRITABLE interest then follow `session.wants_write()` as well as the outbox. Backpressure stays where
//! it is: a peer that stops reading leaves plaintext in the outbox (never more than one turn of ciphertext
//! in rustls), so `max_backpressure`, read pausing and slow-consumer eviction keep working unchanged. The close
//! path calls `session.close()` before the socket's `shutdown(Write)` and flushes the `close_notify` first.
//!
//! **Buffers.** The buffered rustls API owns its ciphertext buffers: records are allocated when sealed and
//! freed when written, so an idle TLS connection holds no output buffer and the mio path needs no output pool.
//! The per-worker pool the issue asks for is for the io_uring driver (`drain_tls_into` into a pooled
//! `Vec<u8>` that the ring owns until the write completes, given back on completion) and for the read
//! scratch. To check against the 4 KiB-per-idle-connection target: rustls keeps a deframer buffer and chunk
//! queues per connection; measure with the 19,000-connection run. If they stay allocated while idle, the
//! fallback is rustls' `UnbufferedServerConnection`, where the caller owns every buffer (pooled) and the same
//! `TlsSession` API can sit on top of it.
//!
//! **Timeouts.** The TLS handshake runs inside `Phase::Http { deadline }`: the deadline set in `admit` from
//! `handshake_timeout` covers TCP accept -> TLS handshake -> HTTP upgrade, so a stalled or slowloris TLS client
//! is closed by the same `tick` sweep as a slow HTTP head (on timeout, close without an HTTP 408: a TLS client
//! that never finished the handshake cannot read one). `TlsSession` reads no clock.
//!
//! **Metrics** (per-worker counters, as the rest): `herald_tls_handshakes_total{result}` with `ok` and each
//! `TlsError::reason()` plus `timeout` and `eof` (the client vanished mid-handshake), counted when
//! `is_handshaking()` turns false or the connection ends during it; `herald_tls_connections` (gauge);
//! `herald_tls_protocol_total{version}` from `protocol_version()`; `herald_tls_resumed_total` /
//! `herald_tls_full_total` from `handshake_kind()`; `herald_tls_cert_reloads_total{result}`.
//!
//! **Reload.** `certs::load_certified_key` redoes the file checks; the new `Arc<CertifiedKey>` goes into a
//! fresh `server_config_with(.., same ticketer, ..)`, and each worker swaps its `Arc<ServerConfig>` for new
//! accepts (existing sessions keep theirs). Reusing the ticketer keeps clients' tickets valid across a reload.

pub mod certs;
pub mod record;
pub mod session;

#[cfg(test)]
mod tests;
#[cfg(test)]
mod testutil;

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
