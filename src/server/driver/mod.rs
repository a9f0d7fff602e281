//! How a worker waits and moves bytes: the two drivers, and the port through which the worker's state asks
//! them for I/O.
//!
//! The worker's state ([`super::worker::Worker`]) owns and decides: connections, protocol state, the topic
//! index, outboxes, timers, the mesh and metrics. It never waits and makes no read, write or accept call of
//! its own. It says "read what `key` has into this buffer", "send what `key` has queued", "this socket was
//! accepted", "`key` is closing", through [`Io`], and the driver turns that into system calls:
//!
//! - [`epoll`]: a `mio` loop. Readiness first, then `accept`/`read`/`writev` at once; a send's bytes leave
//!   the outbox when the call returns.
//! - [`uring`]: an io_uring ring. Multishot accept and receive complete into the ring's own buffers; a turn's
//!   sends are submitted together and their bytes leave the outbox when they complete.
//!
//! Each driver's loop calls the same state methods in the same order: `begin_turn`, then accepts, reads and
//! write completions as they come, then `end_turn` (mesh, index flush, the turn's writes, timers, drain).

pub mod epoll;
pub mod uring;

use std::io;
use std::net::TcpStream;

use super::outbox::Outbox;
use crate::broker::index::ConnKey;
use crate::tls::TlsSession;

/// The driver's side of a worker, as the state sees it.
#[derive(Debug)]
pub enum Io {
    /// The `mio` (epoll) driver.
    Epoll(epoll::EpollIo),
    /// The io_uring driver.
    Uring(Box<uring::UringIo>),
}

impl Io {
    /// Reads what `key`'s socket has into `buf`: `Ok(0)` at the peer's EOF, `WouldBlock` when nothing is there.
    #[inline]
    pub fn read(&mut self, key: ConnKey, stream: &TcpStream, buf: &mut [u8]) -> io::Result<usize> {
        match self {
            Io::Epoll(e) => e.read(key, stream, buf),
            Io::Uring(u) => u.read(key, stream, buf),
        }
    }

    /// Sends what `outbox` holds (one vectored write). Returns the bytes written now, or `WouldBlock` when
    /// the socket is full or the bytes were handed to the kernel to complete later (then `SENDING` is set).
    ///
    /// `fin_follows`: these are the connection's last bytes, and the worker shuts the socket down for writing as
    /// soon as they are all written. The drivers then send them with `MSG_MORE`, so the kernel holds the
    /// last segment back and the FIN that `shutdown` adds rides in it: one packet, not two (the FIN would
    /// otherwise follow alone, a few microseconds later, and cost both ends a segment).
    #[inline]
    pub fn send_outbox(
        &mut self,
        key: ConnKey,
        stream: &TcpStream,
        outbox: &mut Outbox,
        flags: &mut u16,
        fin_follows: bool,
    ) -> io::Result<usize> {
        match self {
            Io::Epoll(e) => e.send_outbox(key, stream, outbox, flags, fin_follows),
            Io::Uring(u) => u.send_outbox(key, stream, outbox, flags, fin_follows),
        }
    }

    /// Sends the ciphertext `session` has sealed, as [`Io::send_outbox`] does the plain bytes.
    #[inline]
    pub fn send_ciphertext(
        &mut self,
        key: ConnKey,
        stream: &TcpStream,
        session: &mut TlsSession,
        flags: &mut u16,
        fin_follows: bool,
    ) -> io::Result<usize> {
        match self {
            Io::Epoll(e) => e.send_ciphertext(key, stream, session, flags, fin_follows),
            Io::Uring(u) => u.send_ciphertext(key, stream, session, flags, fin_follows),
        }
    }

    /// The last send would have blocked: come back when the socket has room (`WRITE_WAIT`).
    pub fn wait_writable(&mut self, key: ConnKey, stream: &TcpStream, flags: &mut u16) {
        match self {
            Io::Epoll(e) => e.wait_writable(key, stream, flags),
            Io::Uring(u) => u.wait_writable(key, stream, flags),
        }
    }

    /// Everything queued is written: stop watching for room.
    pub fn write_drained(&mut self, key: ConnKey, stream: &TcpStream, flags: &mut u16) {
        match self {
            Io::Epoll(e) => e.write_drained(key, stream, flags),
            Io::Uring(u) => u.write_drained(key, stream, flags),
        }
    }

    /// A socket was accepted and stored under `key`: start watching it.
    pub fn admitted(&mut self, key: ConnKey, stream: &TcpStream) -> io::Result<()> {
        match self {
            Io::Epoll(e) => e.admitted(key, stream),
            Io::Uring(u) => u.admitted(key, stream),
        }
    }

    /// `key` is being dropped (its socket closes right after this): stop watching it.
    pub fn closing(&mut self, key: ConnKey, stream: &TcpStream) {
        match self {
            Io::Epoll(e) => e.closing(key, stream),
            Io::Uring(u) => u.closing(key, stream),
        }
    }

    /// Shutdown: accept nothing more (the listeners close).
    pub fn stop_accepting(&mut self) {
        match self {
            Io::Epoll(e) => e.stop_accepting(),
            Io::Uring(u) => u.stop_accepting(),
        }
    }
}

/// The flags of a send (both drivers): `MSG_MORE` too when the connection's FIN follows it (see
/// [`Io::send_outbox`]).
pub(super) fn send_flags(fin_follows: bool) -> i32 {
    if fin_follows {
        libc::MSG_NOSIGNAL | libc::MSG_MORE
    } else {
        libc::MSG_NOSIGNAL
    }
}
