//! A provided-buffer ring: the receive buffers a worker lends the kernel. A multishot receive picks one only
//! when bytes arrive, so an idle connection holds none; the driver copies the bytes out and gives the buffer
//! straight back.
//!
//! Memory layout (`io_uring_buf_ring`): `entries` descriptors of 16 bytes (address, length, id), page
//! aligned; the kernel takes descriptors at its head and we publish returned ones at the tail, a u16 kept in
//! the first descriptor's spare field. The buffers are one allocation of `entries * size` bytes, buffer `id`
//! at `id * size`; it is zeroed memory from the allocator (fresh pages), so a buffer costs resident memory only
//! once the kernel has written to it.

use std::alloc::{self, Layout};
use std::io;
use std::ptr::NonNull;
use std::sync::atomic::{AtomicU16, Ordering};

use io_uring::types::BufRingEntry;
use io_uring::IoUring;

/// The buffer group id the worker's receives select from.
pub const GROUP: u16 = 0;

/// The ring of descriptors and the buffers they describe.
#[derive(Debug)]
pub struct BufRing {
    /// The descriptors (page-aligned, `entries` of them).
    ring: NonNull<BufRingEntry>,
    ring_layout: Layout,
    /// The buffers, `entries * size` bytes.
    data: NonNull<u8>,
    data_layout: Layout,
    entries: u16,
    size: u32,
    /// Our copy of the tail: descriptors published to the kernel so far (wrapping).
    tail: u16,
}

// SAFETY: the ring's memory is owned by this value alone (the kernel reads it only through the ring it was
// registered with, which lives on the same worker thread); moving it to the worker's thread is sound.
unsafe impl Send for BufRing {}

impl BufRing {
    /// `entries` buffers (a power of two, at most 32768) of `size` bytes, every one given to the kernel.
    pub fn new(entries: u16, size: u32) -> io::Result<Self> {
        if !entries.is_power_of_two() || entries > 32768 || size == 0 {
            return Err(io::Error::new(io::ErrorKind::InvalidInput, "buffer ring: entries must be a power of two"));
        }
        let ring_layout = Layout::from_size_align(usize::from(entries) * std::mem::size_of::<BufRingEntry>(), 4096)
            .map_err(|e| io::Error::new(io::ErrorKind::InvalidInput, e))?;
        let data_len = usize::from(entries) * size as usize;
        let data_layout =
            Layout::from_size_align(data_len, 4096).map_err(|e| io::Error::new(io::ErrorKind::InvalidInput, e))?;
        // SAFETY: both layouts have a non-zero size (entries >= 1, size >= 1).
        let ring = unsafe { alloc::alloc_zeroed(ring_layout) };
        let Some(ring) = NonNull::new(ring.cast::<BufRingEntry>()) else { alloc::handle_alloc_error(ring_layout) };
        // SAFETY: as above. Zeroed, so every byte is initialised (and large zeroed allocations are fresh pages
        // that take no memory until written).
        let data = unsafe { alloc::alloc_zeroed(data_layout) };
        let Some(data) = NonNull::new(data) else { alloc::handle_alloc_error(data_layout) };
        let mut ring = BufRing { ring, ring_layout, data, data_layout, entries, size, tail: 0 };
        for id in 0..entries {
            ring.push(id);
        }
        ring.publish();
        Ok(ring)
    }

    /// Registers the ring with `uring` under [`GROUP`].
    pub fn register(&self, uring: &IoUring) -> io::Result<()> {
        // SAFETY: the descriptors live as long as `self`, which the driver keeps beside the ring and
        // unregisters (`unregister`) before freeing; they are page aligned as the kernel requires.
        unsafe { uring.submitter().register_buf_ring_with_flags(self.ring.as_ptr() as u64, self.entries, GROUP, 0) }
    }

    /// Unregisters the ring (before it is freed).
    pub fn unregister(&self, uring: &IoUring) {
        let _ = uring.submitter().unregister_buf_ring(GROUP);
    }

    /// The size of each buffer.
    pub fn buffer_size(&self) -> usize {
        self.size as usize
    }

    /// The first `len` bytes of buffer `id`, which a completion just said the kernel filled.
    pub fn filled(&self, id: u16, len: usize) -> &[u8] {
        let id = usize::from(id % self.entries);
        let len = len.min(self.size as usize);
        // SAFETY: `id < entries`, so the range `id*size .. id*size+len` lies within the `entries * size` bytes
        // allocated; the kernel wrote these bytes before posting the completion that names `id`, and does not
        // write buffer `id` again until `give_back` returns it to the ring.
        unsafe { std::slice::from_raw_parts(self.data.as_ptr().add(id * self.size as usize), len) }
    }

    /// Returns buffer `id` to the kernel (after its bytes were copied out).
    pub fn give_back(&mut self, id: u16) {
        self.push(id % self.entries);
        self.publish();
    }

    /// Writes the descriptor of buffer `id` at our tail (not yet visible to the kernel).
    fn push(&mut self, id: u16) {
        let slot = usize::from(self.tail & (self.entries - 1));
        // SAFETY: `slot < entries`: within the descriptor array. The kernel only reads descriptors between its
        // head and the published tail, and `slot` is at or past the published tail, so it is ours to write.
        let entry = unsafe { &mut *self.ring.as_ptr().add(slot) };
        // SAFETY: `id < entries`, so the address is within the buffers' allocation.
        let addr = unsafe { self.data.as_ptr().add(usize::from(id) * self.size as usize) };
        entry.set_addr(addr as u64);
        entry.set_len(self.size);
        entry.set_bid(id);
        self.tail = self.tail.wrapping_add(1);
    }

    /// Makes the descriptors written so far visible to the kernel.
    fn publish(&self) {
        // SAFETY: the tail field lies in the first descriptor, inside the ring allocation; the kernel reads it
        // concurrently, so it is written with a release store through an atomic view of the same u16.
        unsafe {
            let tail = BufRingEntry::tail(self.ring.as_ptr()) as *const AtomicU16;
            (*tail).store(self.tail, Ordering::Release);
        }
    }
}

impl Drop for BufRing {
    fn drop(&mut self) {
        // SAFETY: both were allocated in `new` with these layouts and are freed once. The driver unregisters
        // the ring from the kernel first (and a ring torn down with its io_uring no longer uses them).
        unsafe {
            alloc::dealloc(self.ring.as_ptr().cast(), self.ring_layout);
            alloc::dealloc(self.data.as_ptr(), self.data_layout);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_buffer_starts_in_the_ring_with_its_own_address() {
        let ring = BufRing::new(8, 1024).expect("ring");
        assert_eq!(ring.tail, 8);
        for slot in 0..8usize {
            // SAFETY: slot < entries.
            let e = unsafe { &*ring.ring.as_ptr().add(slot) };
            assert_eq!(e.bid() as usize, slot);
            assert_eq!(e.len(), 1024);
            assert_eq!(e.addr(), ring.data.as_ptr() as u64 + (slot as u64) * 1024);
        }
    }

    #[test]
    fn a_returned_buffer_is_published_at_the_tail_and_the_tail_wraps() {
        let mut ring = BufRing::new(4, 64).expect("ring");
        for round in 0..20u16 {
            ring.give_back(round % 4);
        }
        assert_eq!(ring.tail, 24);
        // SAFETY: reading our own tail field.
        let published =
            unsafe { (*(BufRingEntry::tail(ring.ring.as_ptr()) as *const AtomicU16)).load(Ordering::Acquire) };
        assert_eq!(published, 24);
        ring.tail = u16::MAX;
        ring.give_back(1);
        assert_eq!(ring.tail, 0, "the tail wraps like the kernel's u16");
    }

    #[test]
    fn filled_bytes_are_clamped_to_the_buffer() {
        let ring = BufRing::new(2, 16).expect("ring");
        assert_eq!(ring.filled(1, 100).len(), 16);
        assert_eq!(ring.filled(3, 4).len(), 4, "an id past the ring wraps instead of reading outside it");
    }

    #[test]
    fn sizes_that_are_not_a_power_of_two_are_refused() {
        assert!(BufRing::new(3, 16).is_err());
        assert!(BufRing::new(0, 16).is_err());
    }
}
