//! The cross-worker wake for a uring worker: an eventfd the ring keeps a read armed on. A peer writes to it
//! (one system call per turn at most, as with epoll's `mio::Waker`); the read completes and the worker drains
//! its inbox in that turn. (`IORING_OP_MSG_RING` would need the peer to own a ring too; the bridge and signal
//! threads that also wake workers have none.)

use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};

use crate::broker::mesh::Wake;

/// A non-blocking eventfd.
#[derive(Debug)]
pub struct EventFd(OwnedFd);

impl EventFd {
    /// A new eventfd (non-blocking, close-on-exec).
    pub fn new() -> io::Result<Self> {
        // SAFETY: eventfd takes no pointers; a negative return is an error, checked below.
        let fd = unsafe { libc::eventfd(0, libc::EFD_NONBLOCK | libc::EFD_CLOEXEC) };
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
        let e = io::Error::last_os_error();
        // A full counter (EAGAIN) already means "wake up".
        if e.kind() == io::ErrorKind::WouldBlock {
            Ok(())
        } else {
            Err(e)
        }
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
        // SAFETY: as above.
        let n = unsafe { libc::read(fd.fd(), (&mut count as *mut u64).cast(), 8) };
        assert_eq!(n, -1, "nothing more to read: it is non-blocking");
    }
}
