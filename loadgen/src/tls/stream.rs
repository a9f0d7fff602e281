//! [`Stream`]: one connection's byte stream, the socket and for `wss://` the TLS session on it, read and
//! written as plaintext either way (non-blocking, `WouldBlock` as from a socket).

use std::io::{self, Read, Write};
use std::os::fd::AsRawFd;

use mio::net::TcpStream;
use rustls::ClientConnection;

use super::TlsFailure;
use crate::sys;

/// One connection's byte stream: the socket, and for `wss://` the TLS session on it. Reads and writes
/// plaintext either way; non-blocking, `WouldBlock` as from a socket.
#[derive(Debug)]
pub struct Stream {
    /// The socket (registered with the worker's poll; connect state and descriptor come from it).
    pub sock: TcpStream,
    pub(super) tls: Option<Box<ClientConnection>>,
}

impl Stream {
    /// A plain stream, or a TLS one with `session`.
    pub fn new(sock: TcpStream, session: Option<ClientConnection>) -> Stream {
        Stream { sock, tls: session.map(Box::new) }
    }

    /// Whether this is a TLS stream.
    pub fn is_tls(&self) -> bool {
        self.tls.is_some()
    }

    /// Whether sealed bytes wait for the socket.
    pub fn tls_pending(&self) -> bool {
        self.tls.as_ref().is_some_and(|t| t.wants_write())
    }

    /// Reads plaintext into `buf`. With `stamped`, socket reads ask for the kernel's receive timestamp, and
    /// the newest one seen comes back with the bytes (CLOCK_REALTIME ns). `Ok((0, _))` is the end of the
    /// stream. A plaintext read shorter than `buf` says nothing about the socket for TLS: read until
    /// `WouldBlock`.
    pub fn read_stamped(&mut self, buf: &mut [u8], stamped: bool) -> io::Result<(usize, Option<u64>)> {
        let Stream { sock, tls } = self;
        let Some(tls) = tls else {
            return if stamped {
                sys::recv_timestamped(sock.as_raw_fd(), buf)
            } else {
                sock.read(buf).map(|n| (n, None))
            };
        };
        let mut stamp = None;
        // Handshake messages left over from an earlier turn go first.
        flush_tls(tls, sock)?;
        loop {
            match tls.reader().read(buf) {
                Ok(n) => return Ok((n, stamp)),
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
                Err(e) if e.kind() == io::ErrorKind::UnexpectedEof => return Ok((0, stamp)),
                Err(e) => return Err(e),
            }
            let mut source = Source { sock, stamped, stamp: &mut stamp };
            match tls.read_tls(&mut source) {
                Ok(0) => return Ok((0, stamp)),
                Ok(_) => {}
                Err(e) => return Err(e),
            }
            if let Err(e) = tls.process_new_packets() {
                // Best effort: the alert rustls queued for the server.
                let _ = tls.write_tls(sock);
                return Err(io::Error::new(io::ErrorKind::InvalidData, TlsFailure(e)));
            }
            flush_tls(tls, sock)?;
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
fn flush_tls(tls: &mut ClientConnection, sock: &mut TcpStream) -> io::Result<bool> {
    while tls.wants_write() {
        match tls.write_tls(sock) {
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
    /// written out as far as the socket takes it.
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let Stream { sock, tls } = self;
        let Some(tls) = tls else { return sock.write(buf) };
        if !flush_tls(tls, sock)? {
            return Err(io::ErrorKind::WouldBlock.into());
        }
        let n = tls.writer().write(buf)?;
        if n == 0 && !buf.is_empty() {
            // rustls' buffer limit (plaintext held during the handshake): wait for the handshake to move on.
            return Err(io::ErrorKind::WouldBlock.into());
        }
        flush_tls(tls, sock)?;
        Ok(n)
    }

    fn flush(&mut self) -> io::Result<()> {
        match self.flush_tls()? {
            true => Ok(()),
            false => Err(io::ErrorKind::WouldBlock.into()),
        }
    }
}

/// The socket as rustls' ciphertext source, keeping the newest kernel receive timestamp.
struct Source<'a> {
    sock: &'a mut TcpStream,
    stamped: bool,
    stamp: &'a mut Option<u64>,
}

impl Read for Source<'_> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        if !self.stamped {
            return self.sock.read(buf);
        }
        let (n, stamp) = sys::recv_timestamped(self.sock.as_raw_fd(), buf)?;
        if stamp.is_some() {
            *self.stamp = stamp;
        }
        Ok(n)
    }
}
