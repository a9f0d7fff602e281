//! One `SO_REUSEPORT` listening socket per worker, all bound to the same address (socket2).
//!
//! The kernel spreads incoming connections over the workers' sockets, so accepting needs no lock and no
//! hand-off between threads. With port 0 the first bind picks a free port and the others reuse it.
//!
//! `SO_REUSEPORT` would also let a second process of the same user join the group and silently take half the
//! connections. So the address is first claimed by a probe socket without `SO_REUSEPORT`: it fails with
//! "address already in use" while anything listens there, herald or not. The probe is closed just before the
//! workers' sockets bind (a window of microseconds in which another process could still slip in).

use std::io;
use std::net::SocketAddr;

use socket2::{Domain, Protocol, Socket, Type};

/// Listen backlog per worker socket (the kernel caps it at `net.core.somaxconn`).
pub const BACKLOG: i32 = 4096;

/// Binds `workers` non-blocking listeners on `addr` with `SO_REUSEPORT`, and returns them with the address
/// actually bound (the real port when `addr` has port 0).
pub fn bind_all(addr: SocketAddr, workers: usize) -> io::Result<(Vec<std::net::TcpListener>, SocketAddr)> {
    let addr = probe(addr)?;
    let first = bind_one(addr)?;
    let bound = first.local_addr()?;
    let mut all = vec![first];
    for _ in 1..workers {
        all.push(bind_one(bound)?);
    }
    Ok((all, bound))
}

/// Claims `addr` with a socket that cannot share it, and returns the address it got (the real port for port 0).
/// `SO_REUSEADDR` is set so that connections of an earlier run still in TIME_WAIT do not block a restart; a
/// listening socket still does.
fn probe(addr: SocketAddr) -> io::Result<SocketAddr> {
    let socket = Socket::new(Domain::for_address(addr), Type::STREAM, Some(Protocol::TCP))?;
    socket.set_reuse_address(true)?;
    socket.bind(&addr.into())?;
    socket.local_addr()?.as_socket().ok_or_else(|| io::Error::other("the probe socket has no IP address"))
}

fn bind_one(addr: SocketAddr) -> io::Result<std::net::TcpListener> {
    let socket = Socket::new(Domain::for_address(addr), Type::STREAM, Some(Protocol::TCP))?;
    socket.set_reuse_address(true)?;
    socket.set_reuse_port(true)?;
    socket.set_nonblocking(true)?;
    socket.set_nodelay(true)?;
    socket.bind(&addr.into())?;
    socket.listen(BACKLOG)?;
    Ok(socket.into())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_accepted_connection_inherits_tcp_nodelay_from_the_listener() {
        // The workers rely on this instead of a setsockopt per accepted connection.
        let (listeners, bound) = bind_all("127.0.0.1:0".parse().expect("addr"), 1).expect("bind");
        let listener = &listeners[0];
        listener.set_nonblocking(false).expect("blocking accept");
        let _client = std::net::TcpStream::connect(bound).expect("connect");
        let (accepted, _) = listener.accept().expect("accept");
        assert!(accepted.nodelay().expect("getsockopt"), "Nagle is off on the accepted socket");
    }

    #[test]
    fn port_zero_gives_every_worker_the_same_real_port() {
        let (listeners, bound) = bind_all("127.0.0.1:0".parse().expect("addr"), 3).expect("bind");
        assert_ne!(bound.port(), 0);
        for l in &listeners {
            assert_eq!(l.local_addr().expect("addr"), bound);
        }
    }

    #[test]
    fn an_address_already_listened_on_is_refused_even_with_reuseport() {
        let (_first, bound) = bind_all("127.0.0.1:0".parse().expect("addr"), 2).expect("bind");
        let err = bind_all(bound, 2).expect_err("a second set of listeners on the same address");
        assert_eq!(err.kind(), io::ErrorKind::AddrInUse);
    }

    #[test]
    fn an_address_whose_listeners_are_gone_can_be_bound_again() {
        let (first, bound) = bind_all("127.0.0.1:0".parse().expect("addr"), 2).expect("bind");
        drop(first);
        let (_again, rebound) = bind_all(bound, 2).expect("a restart binds the same address");
        assert_eq!(rebound, bound);
    }
}
