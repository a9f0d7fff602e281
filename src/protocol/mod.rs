//! The sans-IO WebSocket core (RFC 6455), for both roles.
//!
//! Everything here takes bytes (and, where time matters, a `now: Instant` passed in by the caller) and hands
//! back events and bytes to send. Nothing here opens a socket, spawns a thread or reads the clock, so the
//! epoll backend, a future io_uring backend and loadgen's client side all drive the same code, and tests drive
//! it in memory with virtual time.
//!
//! - [`handshake`]: HTTP/1.1 request parsing, upgrade validation, responses; the client side too.
//! - [`frame`]: opcodes, frame headers, encoding.
//! - [`mask`]: the masking XOR.
//! - [`codec`]: the incremental decoder: bytes -> frames -> messages, with size limits.
//! - [`utf8`]: incremental UTF-8 validation across fragments.
//! - [`close`]: close codes and close frames.
//! - [`conn`]: the per-connection state machine (ping/pong, close handshake, timeouts).
//! - [`deflate`]: permessage-deflate (RFC 7692): negotiation, the message compressor and inflater.
//! - [`error`]: protocol errors and the close code each one puts on the wire.
//! - [`auth`]: JWT verification, token carriers, grants and per-connection auth state (unix time passed in).
//! - [`proxy`]: the client address behind a proxy: PROXY protocol headers, `X-Forwarded-For`, `Forwarded`.

pub mod auth;
pub mod close;
pub mod codec;
pub mod conn;
pub mod deflate;
pub mod error;
pub mod frame;
pub mod handshake;
pub mod mask;
pub mod proxy;
pub mod utf8;

/// Which end of the connection this core plays. Servers expect masked frames and send unmasked ones;
/// clients do the opposite (RFC 6455 section 5.1).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    /// Accepts connections: incoming frames must be masked, outgoing frames are not.
    Server,
    /// Opens connections: incoming frames must not be masked, outgoing frames are.
    Client,
}
