//! [`Stream`]: one connection's byte stream, the socket and for `wss://` the TLS [`Session`] on it, read and
//! written as plaintext either way (non-blocking, `WouldBlock` as from a socket).
//!
//! For TLS, ciphertext is received into a buffer each worker thread owns (the scratch, sized to the
//! caller's read), decrypted there in place and the plaintext copied into the caller's buffer; see
//! [`Session`] for what a connection keeps between reads (nothing, when idle with no partial record).
//! Sealed bytes are written out at once, as far as the socket takes them.

use std::cell::RefCell;
use std::io::{self, Read, Write};
use std::os::fd::AsRawFd;

use mio::net::TcpStream;

use super::session::Session;
use crate::sys;

thread_local! {
    /// Where ciphertext is received and decrypted, one per worker thread, reused by all its connections.
    static SCRATCH: RefCell<Vec<u8>> = const { RefCell::new(Vec::new()) };
}

/// One connection's byte stream: the socket, and for `wss://` the TLS session on it. Reads and writes
/// plaintext either way; non-blocking, `WouldBlock` as from a socket.
#[derive(Debug)]
pub struct Stream {
    /// The socket (registered with the worker's poll; connect state and descriptor come from it).
    pub sock: TcpStream,
    tls: Option<Box<Session>>,
}

impl Stream {
    /// A plain stream, or a TLS one with `session`.
    pub fn new(sock: TcpStream, session: Option<Session>) -> Stream {
        Stream { sock, tls: session.map(Box::new) }
    }

    /// The TLS session, for `wss://`.
    pub fn session(&self) -> Option<&Session> {
        self.tls.as_deref()
    }

    /// Whether sealed bytes wait for the socket.
    pub fn tls_pending(&self) -> bool {
        self.tls.as_ref().is_some_and(|t| t.wants_write())
    }

    /// Whether a read would return something without the socket becoming readable again: for TLS,
    /// plaintext kept from a record larger than the last read's room, or an end of the stream not yet
    /// reported. Never for a plain stream.
    pub fn read_pending(&self) -> bool {
        self.tls.as_ref().is_some_and(|t| t.read_pending())
    }

    /// Reads plaintext into `buf`. With `stamped`, socket reads ask for the kernel's receive timestamp, and
    /// the newest one seen comes back with the bytes (CLOCK_REALTIME ns). `Ok((0, _))` is the end of the
    /// stream. A read shorter than `buf` means the socket had nothing more, for TLS as for plain text,
    /// unless [`read_pending`](Self::read_pending).
    pub fn read_stamped(&mut self, buf: &mut [u8], stamped: bool) -> io::Result<(usize, Option<u64>)> {
        let Stream { sock, tls } = self;
        let Some(tls) = tls else {
            return if stamped {
                sys::recv_timestamped(sock.as_raw_fd(), buf)
            } else {
                sock.read(buf).map(|n| (n, None))
            };
        };
        // Handshake messages left over from an earlier turn go first.
        flush_tls(tls, sock)?;
        let mut stamp = None;
        let mut recv = |into: &mut [u8]| -> io::Result<usize> {
            if !stamped {
                return sock.read(into);
            }
            let (n, newest) = sys::recv_timestamped(sock.as_raw_fd(), into)?;
            if newest.is_some() {
                stamp = newest;
            }
            Ok(n)
        };
        let read = SCRATCH.with(|scratch| tls.read(buf, &mut scratch.borrow_mut(), &mut recv));
        match read {
            Ok(n) => {
                // Our Finished, a key update: out at once.
                flush_tls(tls, sock)?;
                Ok((n, stamp))
            }
            Err(e) => {
                // Best effort: the alert queued for the server.
                let _ = flush_tls(tls, sock);
                Err(e)
            }
        }
    }

    /// Writes out sealed bytes waiting for the socket. `Ok(true)`: none left.
    pub fn flush_tls(&mut self) -> io::Result<bool> {
        match &mut self.tls {
            Some(tls) => flush_tls(tls, &mut self.sock),
            None => Ok(true),
        }
    }
}

/// Writes sealed bytes until none are left (`Ok(true)`) or the socket is full (`Ok(false)`).
fn flush_tls(tls: &mut Session, sock: &mut TcpStream) -> io::Result<bool> {
    while tls.wants_write() {
        match tls.write_tls_to(sock) {
            Ok(0) => return Err(io::ErrorKind::WriteZero.into()),
            Ok(_) => {}
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok(false),
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(true)
}

impl Read for Stream {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        self.read_stamped(buf, false).map(|(n, _)| n)
    }
}

impl Write for Stream {
    /// Plain: one socket write. TLS: while sealed bytes still wait for the socket, no more plaintext is taken
    /// (`WouldBlock`, so that backpressure works as on a plain socket); otherwise all of `buf` is sealed and
    /// written out as far as the socket takes it (during the handshake it is kept, up to a limit, and sent
    /// behind the client's Finished).
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let Stream { sock, tls } = self;
        let Some(tls) = tls else { return sock.write(buf) };
        if !flush_tls(tls, sock)? {
            return Err(io::ErrorKind::WouldBlock.into());
        }
        let sealed = tls.seal(buf);
        // The client hello, the records, or the alert for a failure.
        let flushed = flush_tls(tls, sock);
        let n = sealed?;
        flushed?;
        if n == 0 && !buf.is_empty() {
            // The limit on plaintext held during the handshake: wait for the handshake to move on.
            return Err(io::ErrorKind::WouldBlock.into());
        }
        Ok(n)
    }

    fn flush(&mut self) -> io::Result<()> {
        match self.flush_tls()? {
            true => Ok(()),
            false => Err(io::ErrorKind::WouldBlock.into()),
        }
    }
}
