//! herald: a thread-per-core WebSocket push and broadcast server.
//!
//! Crate map:
//! - [`protocol`]: the sans-IO RFC 6455 core (handshake, frames, UTF-8, close, ping/pong), both roles.
//!   No sockets, no threads, no clock reads: bytes and `now` in, events and bytes out.
//! - [`broker`]: topics, the per-worker topic index, and the cross-worker mesh.
//! - [`server`]: the I/O side: listeners, one loop per worker (epoll or io_uring), connections and outboxes.
//! - [`config`]: every setting, its default and its documentation, once.
//! - [`metrics`]: per-worker counters and the Prometheus text rendering.
//! - [`cluster`]: several nodes over Redis Pub/Sub: the RESP codec, the envelope, the bridge thread.
//! - [`tls`]: sans-IO TLS (rustls): certificate loading and a per-connection transport, bytes in and out.
#![deny(unsafe_code, missing_docs)]

pub mod broker;
pub mod cluster;
pub mod config;
pub mod control;
pub mod metrics;
pub mod protocol;
pub mod server;
pub mod tls;
