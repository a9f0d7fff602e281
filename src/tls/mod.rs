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
