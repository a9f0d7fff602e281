//! The epoll driver: a `mio` loop per worker. It waits for readiness, accepts what the listeners have, reads
//! what is readable and writes what became writable, all through the worker's state; sends made by the state
//! go out at once with one `writev` (or wait for the WRITABLE edge when the socket is full).

use std::io::{self, Read, Write};
use std::net::TcpStream;
use std::os::fd::AsRawFd;

use mio::net::TcpListener;
use mio::unix::SourceFd;
use mio::{Events, Interest, Poll, Registry, Token};
use socket2::SockRef;

use super::Io;
use crate::broker::index::ConnKey;
use crate::server::conn::{PEER_HUP, WRITE_WAIT};
use crate::server::outbox::Outbox;
use crate::server::worker::{Listeners, Worker};
use crate::tls::TlsSession;

/// The main listener's token.
pub const LISTENER: Token = Token(usize::MAX - 1);
/// The mesh waker's token.
pub const WAKER: Token = Token(usize::MAX - 2);
/// The TLS listener's token (when TLS has a listener of its own beside the plain one).
pub const TLS_LISTENER: Token = Token(usize::MAX - 3);

/// The epoll driver's side of a worker: the poll's registry and the listening sockets.
#[derive(Debug)]
pub struct EpollIo {
    registry: Registry,
    /// The main listener and the TLS one beside it; `None` once shutdown began.
    listeners: [Option<TcpListener>; 2],
    /// Whether the main listener speaks TLS.
    main_tls: bool,
}

impl EpollIo {
    /// Registers the listeners with `poll` (the mesh waker is registered already, as [`WAKER`]).
    pub fn new(poll: &Poll, listeners: Listeners) -> io::Result<Self> {
        let mut main = TcpListener::from_std(listeners.main);
        poll.registry().register(&mut main, LISTENER, Interest::READABLE)?;
        let tls = match listeners.tls {
            Some(l) => {
                let mut l = TcpListener::from_std(l);
                poll.registry().register(&mut l, TLS_LISTENER, Interest::READABLE)?;
                Some(l)
            }
            None => None,
        };
        Ok(EpollIo {
            registry: poll.registry().try_clone()?,
            listeners: [Some(main), tls],
            main_tls: listeners.main_tls,
        })
    }

    pub(super) fn read(&mut self, _key: ConnKey, stream: &TcpStream, buf: &mut [u8]) -> io::Result<usize> {
        (&mut &*stream).read(buf)
    }

    pub(super) fn send_outbox(
        &mut self,
        _key: ConnKey,
        stream: &TcpStream,
        outbox: &mut Outbox,
        _flags: &mut u16,
        fin_follows: bool,
    ) -> io::Result<usize> {
        if fin_follows {
            outbox.write_to(&mut LastWords(SockRef::from(stream)))
        } else {
            outbox.write_to(&mut &*stream)
        }
    }

    pub(super) fn send_ciphertext(
        &mut self,
        _key: ConnKey,
        stream: &TcpStream,
        session: &mut TlsSession,
        _flags: &mut u16,
        fin_follows: bool,
    ) -> io::Result<usize> {
        if fin_follows {
            session.write_tls_to(&mut LastWords(SockRef::from(stream)))
        } else {
            session.write_tls_to(&mut &*stream)
        }
    }

    pub(super) fn wait_writable(&mut self, key: ConnKey, stream: &TcpStream, flags: &mut u16) {
        if *flags & WRITE_WAIT == 0 {
            *flags |= WRITE_WAIT;
            let interest = Interest::READABLE | Interest::WRITABLE;
            let _ = self.registry.reregister(&mut SourceFd(&stream.as_raw_fd()), Token(key), interest);
        }
    }

    pub(super) fn write_drained(&mut self, key: ConnKey, stream: &TcpStream, flags: &mut u16) {
        if *flags & WRITE_WAIT != 0 {
            *flags &= !WRITE_WAIT;
            let _ = self.registry.reregister(&mut SourceFd(&stream.as_raw_fd()), Token(key), Interest::READABLE);
        }
    }

    pub(super) fn admitted(&mut self, key: ConnKey, stream: &TcpStream) -> io::Result<()> {
        self.registry.register(&mut SourceFd(&stream.as_raw_fd()), Token(key), Interest::READABLE)
    }

    /// Nothing to do: the socket is closed right after this, and closing a socket's only descriptor takes it
    /// out of the epoll set by itself (herald never duplicates a connection's descriptor). An explicit
    /// `EPOLL_CTL_DEL` was one system call per connection for nothing.
    pub(super) fn closing(&mut self, _key: ConnKey, _stream: &TcpStream) {}

    pub(super) fn stop_accepting(&mut self) {
        for mut listener in self.listeners.iter_mut().filter_map(Option::take) {
            let _ = self.registry.deregister(&mut listener);
        }
    }
}

/// A connection's last bytes, sent with `MSG_MORE`: the kernel keeps the last (partial) segment back until the
/// `shutdown` that follows, which puts the FIN in it and pushes it out (`tcp_send_fin`). Only for bytes that a
/// shutdown or a close follows at once: nothing else would push them.
struct LastWords<'a>(SockRef<'a>);

impl Write for LastWords<'_> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.0.send_with_flags(buf, super::send_flags(true))
    }

    fn write_vectored(&mut self, bufs: &[io::IoSlice<'_>]) -> io::Result<usize> {
        self.0.send_vectored_with_flags(bufs, super::send_flags(true))
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

/// Runs `worker`'s loop on `poll` until it has drained after a shutdown request.
pub fn run(mut worker: Worker, mut poll: Poll) -> io::Result<()> {
    let mut events = Events::with_capacity(1024);
    loop {
        let timeout = worker.poll_timeout();
        if let Err(e) = poll.poll(&mut events, Some(timeout)) {
            if e.kind() != io::ErrorKind::Interrupted {
                return Err(e);
            }
        }
        worker.begin_turn();
        for event in events.iter() {
            match event.token() {
                LISTENER => accept_all(&mut worker, 0),
                TLS_LISTENER => accept_all(&mut worker, 1),
                WAKER => {}
                Token(key) => {
                    if event.is_read_closed() || event.is_error() {
                        // The peer's FIN or reset came, perhaps with the last data in the same segment: no
                        // further edge will come, so this connection is read to the end from now on.
                        if let Some(conn) = worker.conns.get_mut(key) {
                            conn.flags |= PEER_HUP;
                        }
                    }
                    if event.is_readable() || event.is_read_closed() || event.is_error() {
                        worker.read_conn(key);
                    }
                    if event.is_writable() {
                        worker.flush_conn(key);
                    }
                }
            }
        }
        if worker.end_turn() {
            return Ok(());
        }
    }
}

/// Accepts what listener `which` (0 main, 1 TLS) has waiting.
fn accept_all(worker: &mut Worker, which: usize) {
    loop {
        let Io::Epoll(io) = &mut worker.io else { return };
        let tls = which == 1 || io.main_tls;
        let Some(listener) = &io.listeners[which] else { return };
        match listener.accept() {
            Ok((stream, addr)) => {
                worker.admit(stream.into(), addr.ip(), tls);
            }
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => return,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => {
                // EMFILE/ENFILE and the like: leave the rest in the backlog until a slot frees up.
                tracing::warn!(worker = worker.id, "accept failed: {e}");
                return;
            }
        }
    }
}
