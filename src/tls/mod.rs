//! TLS for herald's listeners (`wss://`, `https://`), as a sans-IO transport below the connection logic.
//!
//! rustls (with its `ring` provider) does the protocol; this module owns only bytes. Nothing here opens a
//! socket, spawns a thread or reads the clock.
//!
//! - [`certs`]: `cert_file` + `key_file` (PEM) -> a checked `rustls::ServerConfig` (TLS 1.3 and 1.2, ALPN
//!   `http/1.1`, session tickets), with errors that name the file.

pub mod certs;

#[cfg(test)]
mod testutil;

pub use certs::{server_config, CertError};
