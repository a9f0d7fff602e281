//! A connection's queue of outbound frames, written with one vectored write per loop turn.
//!
//! The queue holds references to shared, immutable buffers (a broadcast batch is one `Bytes` shared by every
//! subscriber), so queuing costs a refcount bump. [`Outbox::write_to`] sends as much as fits in one `writev`
//! of up to [`IOV_MAX`] buffers, resuming mid-buffer after a partial write. The byte count is what the
//! `max_backpressure` cap is checked against; the cap's policy is the caller's (see `server::conn`).

use std::collections::VecDeque;
use std::io::{self, IoSlice, Write};

use bytes::{Buf, Bytes};

/// Most buffers handed to one `writev` (Linux's `IOV_MAX`).
pub const IOV_MAX: usize = 1024;

/// Queued outbound frames. Holds no allocation while empty.
#[derive(Debug, Default)]
pub struct Outbox {
    queue: VecDeque<Bytes>,
    bytes: usize,
}

impl Outbox {
    /// Queues a buffer (an empty one is ignored).
    pub fn push(&mut self, frames: Bytes) {
        if frames.is_empty() {
            return;
        }
        self.bytes += frames.len();
        self.queue.push_back(frames);
    }

    /// Bytes queued and not yet written.
    pub fn len_bytes(&self) -> usize {
        self.bytes
    }

    /// Whether nothing is queued.
    pub fn is_empty(&self) -> bool {
        self.bytes == 0
    }

    /// Whether queuing `more` bytes would take the queue past `cap`.
    pub fn would_exceed(&self, more: usize, cap: usize) -> bool {
        self.bytes + more > cap
    }

    /// One vectored write of everything queued (up to [`IOV_MAX`] buffers). Returns the bytes written;
    /// `WouldBlock` and other errors come back as they are. Written bytes leave the queue, a partly written
    /// buffer keeps its unwritten tail at the front.
    pub fn write_to<W: Write>(&mut self, w: &mut W) -> io::Result<usize> {
        if self.queue.is_empty() {
            return Ok(0);
        }
        let n = if self.queue.len() == 1 {
            w.write(&self.queue[0])?
        } else {
            let mut slices: [IoSlice<'_>; 64] = [IoSlice::new(&[]); 64];
            if self.queue.len() <= slices.len() {
                for (slot, b) in slices.iter_mut().zip(self.queue.iter()) {
                    *slot = IoSlice::new(b);
                }
                w.write_vectored(&slices[..self.queue.len()])?
            } else {
                let big: Vec<IoSlice<'_>> = self.queue.iter().take(IOV_MAX).map(|b| IoSlice::new(b)).collect();
                w.write_vectored(&big)?
            }
        };
        self.consume(n);
        Ok(n)
    }

    /// The queued buffers, oldest first (at most [`IOV_MAX`]): what a submitted write is built from. The
    /// queue keeps them until [`Outbox::consume`] says they are written.
    pub fn queued(&self) -> impl Iterator<Item = &Bytes> {
        self.queue.iter().take(IOV_MAX)
    }

    /// Takes `n` written bytes off the front of the queue (after a write that completed later, as io_uring's).
    pub fn consume(&mut self, mut n: usize) {
        n = n.min(self.bytes);
        self.bytes -= n;
        while n > 0 {
            let Some(front) = self.queue.front_mut() else { break };
            if n >= front.len() {
                n -= front.len();
                self.queue.pop_front();
            } else {
                front.advance(n);
                n = 0;
            }
        }
    }

    /// Gives the queue's memory back if it is empty (called from the worker's idle sweep, not per write, so a
    /// busy subscriber keeps its small queue instead of allocating it again for every message).
    pub fn release_if_empty(&mut self) {
        if self.queue.is_empty() && self.queue.capacity() > 0 {
            self.queue = VecDeque::new();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A writer that takes at most `limit` bytes per call and records how many calls it got.
    struct Trickle {
        data: Vec<u8>,
        limit: usize,
        calls: usize,
    }

    impl Write for Trickle {
        fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
            self.write_vectored(&[IoSlice::new(buf)])
        }
        fn write_vectored(&mut self, bufs: &[IoSlice<'_>]) -> io::Result<usize> {
            self.calls += 1;
            if self.limit == 0 {
                return Err(io::ErrorKind::WouldBlock.into());
            }
            let mut left = self.limit;
            let mut n = 0;
            for b in bufs {
                let take = b.len().min(left);
                self.data.extend_from_slice(&b[..take]);
                left -= take;
                n += take;
                if left == 0 {
                    break;
                }
            }
            Ok(n)
        }
        fn flush(&mut self) -> io::Result<()> {
            Ok(())
        }
    }

    #[test]
    fn everything_queued_goes_out_in_one_vectored_write() {
        let mut out = Outbox::default();
        for i in 0..100u8 {
            out.push(Bytes::from(vec![i; 10]));
        }
        let mut w = Trickle { data: Vec::new(), limit: usize::MAX, calls: 0 };
        assert_eq!(out.write_to(&mut w).expect("write"), 1000);
        assert_eq!(w.calls, 1);
        assert!(out.is_empty());
    }

    #[test]
    fn partial_writes_resume_mid_buffer_in_order() {
        let mut out = Outbox::default();
        let mut expected = Vec::new();
        for i in 0..50u8 {
            let b: Vec<u8> = (0..(i as usize % 7 + 1)).map(|j| i.wrapping_mul(31).wrapping_add(j as u8)).collect();
            expected.extend_from_slice(&b);
            out.push(Bytes::from(b));
        }
        let mut w = Trickle { data: Vec::new(), limit: 3, calls: 0 };
        while !out.is_empty() {
            out.write_to(&mut w).expect("write");
        }
        assert_eq!(w.data, expected);
        assert_eq!(out.len_bytes(), 0);
    }

    #[test]
    fn would_block_keeps_everything_queued() {
        let mut out = Outbox::default();
        out.push(Bytes::from_static(b"abc"));
        let mut w = Trickle { data: Vec::new(), limit: 0, calls: 0 };
        let err = out.write_to(&mut w).expect_err("would block");
        assert_eq!(err.kind(), io::ErrorKind::WouldBlock);
        assert_eq!(out.len_bytes(), 3);
    }

    #[test]
    fn the_cap_is_checked_against_queued_bytes() {
        let mut out = Outbox::default();
        out.push(Bytes::from(vec![0; 900]));
        assert!(!out.would_exceed(100, 1000));
        assert!(out.would_exceed(101, 1000));
    }
}
