//! One `SO_REUSEPORT` listening socket per worker, all bound to the same address (socket2).
//!
//! The kernel spreads incoming connections over the workers' sockets, so accepting needs no lock and no
//! hand-off between threads. With port 0 the first bind picks a free port and the others reuse it.

use std::io;
use std::net::SocketAddr;

use socket2::{Domain, Protocol, Socket, Type};

/// Listen backlog per worker socket (the kernel caps it at `net.core.somaxconn`).
pub const BACKLOG: i32 = 4096;

/// Binds `workers` non-blocking listeners on `addr` with `SO_REUSEPORT`, and returns them with the address
/// actually bound (the real port when `addr` has port 0).
pub fn bind_all(addr: SocketAddr, workers: usize) -> io::Result<(Vec<std::net::TcpListener>, SocketAddr)> {
    let first = bind_one(addr)?;
    let bound = first.local_addr()?;
    let mut all = vec![first];
    for _ in 1..workers {
        all.push(bind_one(bound)?);
    }
    Ok((all, bound))
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
    fn port_zero_gives_every_worker_the_same_real_port() {
        let (listeners, bound) = bind_all("127.0.0.1:0".parse().expect("addr"), 3).expect("bind");
        assert_ne!(bound.port(), 0);
        for l in &listeners {
            assert_eq!(l.local_addr().expect("addr"), bound);
        }
    }
}
