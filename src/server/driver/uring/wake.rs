//! The cross-worker wake for a uring worker: an eventfd the ring keeps a read armed on. A peer writes to it
//! (one system call per turn at most, as with epoll's `mio::Waker`); the read completes and the worker drains
//! its inbox in that turn. (`IORING_OP_MSG_RING` would need the peer to own a ring too; the bridge and signal
//! threads that also wake workers have none.)

use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};

use crate::broker::mesh::Wake;

/// An eventfd.
#[derive(Debug)]
pub struct EventFd(OwnedFd);

impl EventFd {
    /// A new eventfd (close-on-exec). It is left blocking on purpose: io_uring completes a read of a
    /// non-blocking file at once with EAGAIN instead of waiting for it to become readable, which would make
    /// the armed read spin. (A write blocks only if the counter nears 2^64, which wakes never approach.)
    pub fn new() -> io::Result<Self> {
        // SAFETY: eventfd takes no pointers; a negative return is an error, checked below.
        let fd = unsafe { libc::eventfd(0, libc::EFD_CLOEXEC) };
        if fd < 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: `fd` was just returned by eventfd, is open and owned by nothing else.
        Ok(EventFd(unsafe { OwnedFd::from_raw_fd(fd) }))
    }

    /// Its descriptor (for the ring's read).
    pub fn fd(&self) -> RawFd {
        self.0.as_raw_fd()
    }
}

impl Wake for EventFd {
    fn wake(&self) -> io::Result<()> {
        let one: u64 = 1;
        // SAFETY: writes the 8 bytes of `one`, which outlives the call, to our own descriptor.
        let n = unsafe { libc::write(self.fd(), (&one as *const u64).cast(), 8) };
        if n == 8 {
            return Ok(());
        }
        Err(io::Error::last_os_error())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_wake_is_readable_once_and_wakes_add_up() {
        let fd = EventFd::new().expect("eventfd");
        fd.wake().expect("wake");
        fd.wake().expect("wake");
        let mut count = 0u64;
        // SAFETY: reads 8 bytes into `count`.
        let n = unsafe { libc::read(fd.fd(), (&mut count as *mut u64).cast(), 8) };
        assert_eq!(n, 8);
        assert_eq!(count, 2);
        // SAFETY: polls our own descriptor with a zero timeout.
        let mut pfd = libc::pollfd { fd: fd.fd(), events: libc::POLLIN, revents: 0 };
        let ready = unsafe { libc::poll(&mut pfd, 1, 0) };
        assert_eq!(ready, 0, "a read takes every wake: nothing is left to read");
    }
}
